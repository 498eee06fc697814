// epk/layers/linear.hpp — torch.nn.Linear on the last axis of any shape.
//
// For an input of shape [..., D] (R = numel/D rows of D), z_r = W h_r + b with
// W ∈ R^{O×D} row-major then b ∈ R^O in w.  It is bilinear in (W, h): along a step
// w + tΔ a polynomial input stays polynomial (one degree more), which is what makes
// ReLU networks piecewise polynomial in t.  The per-sample weight gradient is a sum
// over rows of outer products adj_r h_rᵀ.  Sums run in index order (j ascending, then
// + b), as network.hpp's MLP loops.
#pragma once

#include <cstddef>
#include <vector>

#include "epk/scalar.hpp"

namespace epk::layers {

struct linear_geometry {
    std::size_t rows, in, out;
    bool bias;
};

// z = W h (+ b when with_bias) for one sample; w points at W[0][0].
template <Real T>
void linear_apply(const linear_geometry& g, const T* w, const T* h, T* z, bool with_bias) {
    for (std::size_t r = 0; r < g.rows; ++r)
        for (std::size_t o = 0; o < g.out; ++o) {
            // z[o] = Σ_j W[o][j] h[j] (j ascending), then + b[o]
            const T* wr = w + o * g.in;
            const T* hr = h + r * g.in;
            T acc = wr[0] * hr[0];
            for (std::size_t j = 1; j < g.in; ++j) add_product(acc, wr[j], hr[j]);
            if (with_bias && g.bias) acc += w[g.out * g.in + o];
            z[r * g.out + o] = acc;
        }
}

// One sample's reverse step: gw += ∂/∂w of adjᵀz (dW[o][j] += adj[o] h[j], db[o] += adj[o]),
// adj_h = Wᵀ adj (o ascending).
template <Real T>
void linear_backward(const linear_geometry& g, const T* w, const T* h, const T* adj, T* adj_h, T* gw) {
    for (std::size_t r = 0; r < g.rows; ++r) {
        const T* ar = adj + r * g.out;
        const T* hr = h + r * g.in;
        for (std::size_t o = 0; o < g.out; ++o) {
            T* row = gw + o * g.in;
            for (std::size_t j = 0; j < g.in; ++j) add_product(row[j], ar[o], hr[j]);
            if (g.bias) gw[g.out * g.in + o] += ar[o];
        }
        for (std::size_t j = 0; j < g.in; ++j) {
            T acc = w[j] * ar[0];
            for (std::size_t o = 1; o < g.out; ++o) add_product(acc, w[o * g.in + j], ar[o]);
            adj_h[r * g.in + j] = acc;
        }
    }
}

}  // namespace epk::layers

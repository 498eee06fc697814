// epk/layers/pool2d.hpp — torch.nn.MaxPool2d and torch.nn.AvgPool2d (count_include_pad).
//
// Max pool: z[c, y, x] = h at the window's maximiser, the first maximal element in
// row-major order (torch's CPU kernel), padding −∞ (left out).  It selects, so its
// VJP sends the adjoint to the maximiser and its JVP reads the maximiser's tangent.
// Along a step it is piecewise polynomial: the maximiser changes where two window
// entries' polynomials cross (its switching functions are the differences h_k − h_max).
// Average pool: the window's sum (row-major, padding contributing zeros) divided by
// kh·kw — linear in h, polynomial along a step when its input is.
#pragma once

#include <cstddef>
#include <vector>

#include "epk/scalar.hpp"

namespace epk::layers {

struct pool_geometry {
    std::size_t C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw;
};

// Calls f(input index) for every in-bounds entry of the window of output (c, y, x), row-major.
template <class F>
void pool_window(const pool_geometry& g, std::size_t c, std::size_t y, std::size_t x, F&& f) {
    for (std::size_t ky = 0; ky < g.kh; ++ky) {
        const std::ptrdiff_t iy = static_cast<std::ptrdiff_t>(y * g.sh + ky * g.dh) - static_cast<std::ptrdiff_t>(g.ph);
        if (iy < 0 || iy >= static_cast<std::ptrdiff_t>(g.H)) continue;
        for (std::size_t kx = 0; kx < g.kw; ++kx) {
            const std::ptrdiff_t ix = static_cast<std::ptrdiff_t>(x * g.sw + kx * g.dw) - static_cast<std::ptrdiff_t>(g.pw);
            if (ix < 0 || ix >= static_cast<std::ptrdiff_t>(g.W)) continue;
            f((c * g.H + static_cast<std::size_t>(iy)) * g.W + static_cast<std::size_t>(ix));
        }
    }
}

// Calls f(i, j) for every pair i < j (in window order) of in-bounds entries of every window:
// a max pool's switching functions are the differences h_i − h_j (tree_segment.hpp).
template <class F>
void window_pairs(const pool_geometry& g, F&& f) {
    std::vector<std::size_t> win;
    for (std::size_t c = 0; c < g.C; ++c)
        for (std::size_t y = 0; y < g.Ho; ++y)
            for (std::size_t x = 0; x < g.Wo; ++x) {
                win.clear();
                pool_window(g, c, y, x, [&](std::size_t i) { win.push_back(i); });
                for (std::size_t p = 0; p < win.size(); ++p)
                    for (std::size_t q = p + 1; q < win.size(); ++q) f(win[p], win[q]);
            }
}

// The maximiser's input index of every output (torch's tie rule), one sample.
template <Real T>
void max_pool_argmax(const pool_geometry& g, const T* h, std::size_t* arg) {
    for (std::size_t c = 0; c < g.C; ++c)
        for (std::size_t y = 0; y < g.Ho; ++y)
            for (std::size_t x = 0; x < g.Wo; ++x) {
                bool first = true;
                std::size_t best = 0;
                pool_window(g, c, y, x, [&](std::size_t i) {
                    if (first || h[i] > h[best]) best = i;
                    first = false;
                });
                arg[(c * g.Ho + y) * g.Wo + x] = best;
            }
}

// Average pool's linear map, one sample: z = (Σ_window h) / (kh·kw).
template <Real T>
void avg_pool_apply(const pool_geometry& g, const T* h, T* z) {
    const T divisor = T(static_cast<double>(g.kh * g.kw));
    for (std::size_t c = 0; c < g.C; ++c)
        for (std::size_t y = 0; y < g.Ho; ++y)
            for (std::size_t x = 0; x < g.Wo; ++x) {
                T acc(0);
                pool_window(g, c, y, x, [&](std::size_t i) { acc += h[i]; });
                z[(c * g.Ho + y) * g.Wo + x] = acc / divisor;
            }
}

// Its transpose: adj_h[i] = Σ over windows containing i of adj / (kh·kw) (adj_h zeroed here).
template <Real T>
void avg_pool_backward(const pool_geometry& g, const T* adj, T* adj_h) {
    const T divisor = T(static_cast<double>(g.kh * g.kw));
    for (std::size_t e = 0; e < g.C * g.H * g.W; ++e) adj_h[e] = T(0);
    for (std::size_t c = 0; c < g.C; ++c)
        for (std::size_t y = 0; y < g.Ho; ++y)
            for (std::size_t x = 0; x < g.Wo; ++x) {
                const T a = adj[(c * g.Ho + y) * g.Wo + x] / divisor;
                pool_window(g, c, y, x, [&](std::size_t i) { adj_h[i] += a; });
            }
}

}  // namespace epk::layers

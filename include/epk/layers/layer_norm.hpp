// epk/layers/layer_norm.hpp — torch.nn.LayerNorm over the trailing normalized_shape.
//
// For each group x of n = prod(normalized_shape) entries:
//   μ = Σx/n,  d = x − μ,  v = Σd²/n (biased),  ρ = 1/√(v + ε),  x̂ = d·ρ,  y = x̂·γ + β.
// Analytic where v + ε > 0 (a division and a square root: networks with layer norm take
// the adaptive path).  Derivative rules, per group:
//   VJP:  ∂γ += dy·x̂,  ∂β += dy,  a = dy·γ,  dx = ρ·(a − mean(a) − x̂·mean(a·x̂))
//   JVP:  dd = dx − mean(dx),  dρ = −ρ³·mean(d·dd),  dx̂ = dd·ρ + d·dρ,  dy = dx̂·γ + x̂·dγ + dβ
#pragma once

#include <cstddef>
#include <vector>

#include "epk/scalar.hpp"

namespace epk::layers {

struct norm_geometry {
    std::size_t groups, n;
    bool affine, bias;
    double eps;
};

// The normalised group: x̂ and ρ (x̂ has n entries).
template <Real T>
T normalise_group(const norm_geometry& g, const T* x, T* xhat) {
    const T n = T(static_cast<double>(g.n));
    T sum = x[0];
    for (std::size_t j = 1; j < g.n; ++j) sum += x[j];
    const T mu = sum / n;
    T ss(0);
    for (std::size_t j = 0; j < g.n; ++j) {
        xhat[j] = x[j] - mu;
        add_product(ss, xhat[j], xhat[j]);
    }
    const T rho = T(1) / rm::sqrt(T(ss / n + T(g.eps)));
    for (std::size_t j = 0; j < g.n; ++j) xhat[j] = xhat[j] * rho;
    return rho;
}

// y = x̂·γ + β, one sample (w points at γ; β follows it).
template <Real T>
void layer_norm_forward(const norm_geometry& g, const T* w, const T* x, T* y) {
    for (std::size_t q = 0; q < g.groups; ++q) {
        T* yq = y + q * g.n;
        normalise_group(g, x + q * g.n, yq);
        if (!g.affine) continue;
        for (std::size_t j = 0; j < g.n; ++j) {
            yq[j] = yq[j] * w[j];
            if (g.bias) yq[j] += w[g.n + j];
        }
    }
}

template <Real T>
void layer_norm_backward(const norm_geometry& g, const T* w, const T* x, const T* dy, T* dx, T* gw) {
    std::vector<T> xhat(g.n), a(g.n);
    const T n = T(static_cast<double>(g.n));
    for (std::size_t q = 0; q < g.groups; ++q) {
        const T rho = normalise_group(g, x + q * g.n, xhat.data());
        const T* dyq = dy + q * g.n;
        T ma(0), max(0);
        for (std::size_t j = 0; j < g.n; ++j) {
            if (g.affine) {
                add_product(gw[j], dyq[j], xhat[j]);  // ∂γ
                if (g.bias) gw[g.n + j] += dyq[j];    // ∂β
            }
            a[j] = g.affine ? T(dyq[j] * w[j]) : dyq[j];
            ma += a[j];
            add_product(max, a[j], xhat[j]);
        }
        ma = ma / n;
        max = max / n;
        for (std::size_t j = 0; j < g.n; ++j) {
            T t = a[j] - ma;
            t -= xhat[j] * max;
            dx[q * g.n + j] = rho * t;
        }
    }
}

// (y, dy) from (x, dx) and the parameters' tangent v (v points at γ's tangent).
template <Real T>
void layer_norm_jvp(const norm_geometry& g, const T* w, const T* v, const T* x, const T* dx, T* y, T* dy) {
    std::vector<T> xhat(g.n), dd(g.n);
    const T n = T(static_cast<double>(g.n));
    for (std::size_t q = 0; q < g.groups; ++q) {
        const T* xq = x + q * g.n;
        const T* dxq = dx + q * g.n;
        const T rho = normalise_group(g, xq, xhat.data());
        T mdx = dxq[0];
        for (std::size_t j = 1; j < g.n; ++j) mdx += dxq[j];
        mdx = mdx / n;
        T cov(0);  // Σ d·dd, with d = x̂/ρ
        for (std::size_t j = 0; j < g.n; ++j) {
            dd[j] = dxq[j] - mdx;
            add_product(cov, T(xhat[j] / rho), dd[j]);
        }
        const T drho = -(rho * rho * rho) * (cov / n);
        for (std::size_t j = 0; j < g.n; ++j) {
            T dxh = dd[j] * rho;
            add_product(dxh, T(xhat[j] / rho), drho);
            T yj = xhat[j], dyj = dxh;
            if (g.affine) {
                yj = xhat[j] * w[j];
                dyj = dxh * w[j];
                add_product(dyj, xhat[j], v[j]);
                if (g.bias) {
                    yj += w[g.n + j];
                    dyj += v[g.n + j];
                }
            }
            y[q * g.n + j] = yj;
            dy[q * g.n + j] = dyj;
        }
    }
}

}  // namespace epk::layers

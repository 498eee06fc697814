// epk/layers/conv2d.hpp — torch.nn.Conv2d (zeros padding, stride, dilation, groups).
//
// For an input [C, H, W] and weight [O, C/G, kh, kw] (then bias [O]),
//   z[o, y, x] = Σ_{c, ky, kx} W[o, c, ky, kx] · h[g·C/G + c, y·s_h − p_h + ky·d_h, x·s_w − p_w + kx·d_w] + b[o]
// with g = o / (O/G), terms outside the input left out (zero padding).  Like linear it
// is bilinear in (W, h): a sum of products, polynomial along a training step when its
// input is.  The per-sample weight gradient is a sum over output positions of outer
// products of patches and output adjoints — what the structured path contracts.
// Sums run c, ky, kx ascending, then + b.
#pragma once

#include <cstddef>
#include <vector>

#include "epk/scalar.hpp"

namespace epk::layers {

struct conv_geometry {
    std::size_t C, H, W, O, Ho, Wo, groups, kh, kw, sh, sw, ph, pw, dh, dw;
    bool bias;
    std::size_t in_per_group() const { return C / groups; }
    std::size_t out_per_group() const { return O / groups; }
    std::size_t weight_count() const { return O * in_per_group() * kh * kw; }
};

// Calls f(weight index, input index) for every term of output (o, y, x), in summation order.
template <class F>
void conv_terms(const conv_geometry& g, std::size_t o, std::size_t y, std::size_t x, F&& f) {
    const std::size_t cg = g.in_per_group(), c0 = (o / g.out_per_group()) * cg;
    for (std::size_t c = 0; c < cg; ++c)
        for (std::size_t ky = 0; ky < g.kh; ++ky) {
            const std::ptrdiff_t iy = static_cast<std::ptrdiff_t>(y * g.sh + ky * g.dh) - static_cast<std::ptrdiff_t>(g.ph);
            if (iy < 0 || iy >= static_cast<std::ptrdiff_t>(g.H)) continue;
            for (std::size_t kx = 0; kx < g.kw; ++kx) {
                const std::ptrdiff_t ix =
                    static_cast<std::ptrdiff_t>(x * g.sw + kx * g.dw) - static_cast<std::ptrdiff_t>(g.pw);
                if (ix < 0 || ix >= static_cast<std::ptrdiff_t>(g.W)) continue;
                f(((o * cg + c) * g.kh + ky) * g.kw + kx,
                  ((c0 + c) * g.H + static_cast<std::size_t>(iy)) * g.W + static_cast<std::size_t>(ix));
            }
        }
}

// z = conv(W, h) (+ b when with_bias) for one sample.
template <Real T>
void conv_apply(const conv_geometry& g, const T* w, const T* h, T* z, bool with_bias) {
    for (std::size_t o = 0; o < g.O; ++o)
        for (std::size_t y = 0; y < g.Ho; ++y)
            for (std::size_t x = 0; x < g.Wo; ++x) {
                T acc(0);
                conv_terms(g, o, y, x, [&](std::size_t wi, std::size_t hi) { add_product(acc, w[wi], h[hi]); });
                if (with_bias && g.bias) acc += w[g.weight_count() + o];
                z[(o * g.Ho + y) * g.Wo + x] = acc;
            }
}

// One sample's reverse step: gw[wi] += adj·h[hi], gb[o] += adj; adj_h[hi] += W[wi]·adj
// (adj_h zeroed here first).
template <Real T>
void conv_backward(const conv_geometry& g, const T* w, const T* h, const T* adj, T* adj_h, T* gw) {
    for (std::size_t e = 0; e < g.C * g.H * g.W; ++e) adj_h[e] = T(0);
    for (std::size_t o = 0; o < g.O; ++o)
        for (std::size_t y = 0; y < g.Ho; ++y)
            for (std::size_t x = 0; x < g.Wo; ++x) {
                const T& a = adj[(o * g.Ho + y) * g.Wo + x];
                conv_terms(g, o, y, x, [&](std::size_t wi, std::size_t hi) {
                    add_product(gw[wi], a, h[hi]);
                    add_product(adj_h[hi], w[wi], a);
                });
                if (g.bias) gw[g.weight_count() + o] += a;
            }
}

// im2col's index map as runs: patch row k (group g's block, then c, ky, kx) reads, at the
// output positions p0 … p0+len−1 (y·Wo + x), the inputs src0 … src0+len−1; positions no run
// covers read padding (zero).  runs[start[k] … start[k+1]) are row k's.
struct index_run {
    std::size_t p0, src0, len;
};
struct patch_runs {
    std::vector<index_run> runs;
    std::vector<std::size_t> start;  // K + 1 entries
};

inline patch_runs conv_patch_runs(const conv_geometry& g) {
    const std::size_t Kg = g.in_per_group() * g.kh * g.kw, K = g.groups * Kg, pos = g.Ho * g.Wo;
    std::vector<std::ptrdiff_t> map(K * pos, -1);  // [k][p]
    for (std::size_t y = 0; y < g.Ho; ++y)
        for (std::size_t x = 0; x < g.Wo; ++x)
            for (std::size_t gi = 0; gi < g.groups; ++gi) {
                const std::size_t o = gi * g.out_per_group(), base = o * Kg, p = y * g.Wo + x;
                conv_terms(g, o, y, x, [&](std::size_t wi, std::size_t hi) {
                    map[(gi * Kg + wi - base) * pos + p] = static_cast<std::ptrdiff_t>(hi);
                });
            }
    patch_runs out;
    for (std::size_t k = 0; k < K; ++k) {
        out.start.push_back(out.runs.size());
        const std::size_t first = out.runs.size();
        for (std::size_t p = 0; p < pos; ++p) {
            const std::ptrdiff_t v = map[k * pos + p];
            if (v < 0) continue;
            const auto src = static_cast<std::size_t>(v);
            if (out.runs.size() > first) {
                index_run& u = out.runs.back();
                if (u.p0 + u.len == p && u.src0 + u.len == src) {
                    ++u.len;
                    continue;
                }
            }
            out.runs.push_back({p, src, 1});
        }
    }
    out.start.push_back(out.runs.size());
    return out;
}

}  // namespace epk::layers

// epk/bilinear.hpp — a bilinear node (conv2d, linear on any shape) as dense products.
//
// z = A(θ)h + b as products with the weight blocks A_g [Og × Kg] of w's layout (output-major,
// then the group's kernel entries):
//  * conv2d: the patches Xᵀ [K × (rows·pos)] (im2col of h transposed: one row per (group,
//    input channel of the group, ky, kx), one column per (sample, output position), zero where
//    the window leaves the input) give z[o ∈ g, (r, p)] = A_g · Xᵀ[g-block]; the transpose
//    (the input adjoint) is Aᵀ·D followed by the scatter-add of the same runs;
//  * linear on [rows, in]: the rows of h as they are, z[(r, p), o] = X[(r, p)]·Aᵀ.
// Used by the structured path kernel of trees (structured_tree.hpp) and by the Taylor walk
// of the cuts (tree_segment.hpp).  In double the products are gemm<double> (Eigen); in every
// other type gemm_reference, whose sums run k ascending as conv_apply / linear_apply's.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "epk/gemm.hpp"
#include "epk/layer_tree.hpp"

namespace epk::bilinear {

// A rows × cols matrix holding `data`.
template <class V>
matrix<V> with_data(std::size_t rows, std::size_t cols, std::vector<V> data) {
    matrix<V> m;
    m.rows = rows;
    m.cols = cols;
    m.data = std::move(data);
    return m;
}

// Shape of a bilinear node's products.
struct bilinear_shape {
    std::size_t pos = 0, O = 0, groups = 1, Kg = 0, weight_count = 0;
    bool bias = false, conv = false;
    layers::conv_geometry cg{};
    const layers::patch_runs* runs = nullptr;  // conv: the node's im2col runs
    std::size_t Og() const { return O / groups; }
    std::size_t K() const { return groups * Kg; }
    // Entry (o, p) of one sample's output: conv [O][pos], linear [pos][O].
    std::size_t out_index(std::size_t o, std::size_t p) const { return conv ? o * pos + p : p * O + o; }
};

inline bilinear_shape shape_of(const tree_node& n) {
    bilinear_shape s;
    if (n.spec.kind == layer_kind::conv2d) {
        s.cg = n.conv();
        s.conv = true;
        s.pos = s.cg.Ho * s.cg.Wo;
        s.O = s.cg.O;
        s.groups = s.cg.groups;
        s.Kg = s.cg.in_per_group() * s.cg.kh * s.cg.kw;
        s.weight_count = s.cg.weight_count();
        s.bias = s.cg.bias;
        s.runs = &n.patches;
    } else {
        const layers::linear_geometry g = n.linear();
        s.pos = g.rows;
        s.O = g.out;
        s.Kg = g.in;
        s.weight_count = g.out * g.in;
        s.bias = g.bias;
    }
    return s;
}

// Xᵀ [K × (R·pos)] of every row of h [R × in] (conv).
template <class V>
matrix<V> patches_t(const bilinear_shape& s, const matrix<V>& h) {
    const std::size_t Q = h.rows * s.pos;
    matrix<V> XT(s.K(), Q);
    for (std::size_t k = 0; k < s.K(); ++k) {
        V* row = &XT(k, 0);
        for (std::size_t u = s.runs->start[k]; u < s.runs->start[k + 1]; ++u) {
            const layers::index_run& run = s.runs->runs[u];
            for (std::size_t r = 0; r < h.rows; ++r) {
                const V* src = &h(r, run.src0);
                V* dst = row + r * s.pos + run.p0;
                for (std::size_t e = 0; e < run.len; ++e) dst[e] = src[e];
            }
        }
    }
    return XT;
}

// adj[c] += the scatter of Tᵀ's columns (c, ·) through the runs: T [K × (count·pos)] with
// leading dimension ld, adj [count × in] (conv; the transpose of patches_t).
template <Real T>
void add_patches_t(const bilinear_shape& s, const T* Tm, std::size_t ld, std::size_t count, T* adj,
                   std::size_t in_size) {
    // One adjoint row c at a time (it stays in L1); each entry still receives its terms in
    // k ascending order (for one k, distinct positions read distinct inputs).
    for (std::size_t c = 0; c < count; ++c) {
        T* const out = adj + c * in_size;
        for (std::size_t k = 0; k < s.K(); ++k) {
            const T* row = Tm + k * ld + c * s.pos;
            for (std::size_t u = s.runs->start[k]; u < s.runs->start[k + 1]; ++u) {
                const layers::index_run& run = s.runs->runs[u];
                const T* src = row + run.p0;
                T* dst = out + run.src0;
                for (std::size_t e = 0; e < run.len; ++e) dst[e] += src[e];
            }
        }
    }
}

// conv: Z [O × Q] = A(θ) · Xᵀ for the Q columns of XT starting at column q0 (ld = XT.cols),
// written at z with leading dimension ldz.
template <Real V>
void conv_products(const bilinear_shape& s, const matrix<V>& XT, std::size_t q0, std::size_t Q, const V* theta, V* z,
                   std::size_t ldz, gemm_counter* ctr) {
    for (std::size_t gi = 0; gi < s.groups; ++gi)
        gemm<V>(false, s.Og(), Q, s.Kg, theta + gi * s.Og() * s.Kg, s.Kg, &XT(gi * s.Kg, q0), XT.cols,
                z + gi * s.Og() * ldz, ldz, false, ctr);
}

// linear: Z [(rows) × O] = X · A(θ)ᵀ for X [rows × in].
template <Real V>
matrix<V> linear_products(const bilinear_shape& s, const V* X, std::size_t rows, const V* theta, gemm_counter* ctr) {
    matrix<V> z(rows, s.O);
    gemm<V>(true, rows, s.O, s.Kg, X, s.Kg, theta, s.Kg, z.data.data(), s.O, false, ctr);
    return z;
}

// conv: the input adjoint of `count` adjoint rows D [count × O·pos] with weights θ, added to
// adj [count × in]: Tm = Aᵀ (K × O, per group) · D (O × count·pos), then add_patches_t.
// Scratch that lives across calls (every entry it uses is written before it is read), so a
// sweep allocates it once.
template <Real T>
struct conv_adjoint {
    std::vector<T> D2, At, Tm;

    void apply(const bilinear_shape& s, const T* D, std::size_t count, const T* theta, T* adj, std::size_t in_size,
               gemm_counter* ctr) {
        const std::size_t n = count * s.pos, Og = s.Og(), K = s.K();
        if (D2.size() < s.O * n) D2.resize(s.O * n);
        if (At.size() < K * Og) At.resize(K * Og);
        if (Tm.size() < K * n) Tm.resize(K * n);
        // D2 [O × n]: column (c, p) of output o.
        for (std::size_t c = 0; c < count; ++c)
            for (std::size_t o = 0; o < s.O; ++o)
                std::copy(D + (c * s.O + o) * s.pos, D + (c * s.O + o + 1) * s.pos, D2.data() + o * n + c * s.pos);
        // Aᵀ [K × Og], rows k of group g: At[k][o'] = θ[g·Og + o'][k − g·Kg].
        for (std::size_t gi = 0; gi < s.groups; ++gi)
            for (std::size_t o = 0; o < Og; ++o)
                for (std::size_t k = 0; k < s.Kg; ++k) At[(gi * s.Kg + k) * Og + o] = theta[(gi * Og + o) * s.Kg + k];
        for (std::size_t gi = 0; gi < s.groups; ++gi)
            gemm<T>(false, s.Kg, n, Og, At.data() + gi * s.Kg * Og, Og, D2.data() + gi * Og * n, n, Tm.data() + gi * s.Kg * n,
                    n, false, ctr);
        add_patches_t(s, Tm.data(), n, count, adj, in_size);
    }
};

}  // namespace epk::bilinear

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
#include <cstdint>
#include <utility>
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

// X [(R·pos) × K] of every row of h [R × in] (conv): one row per (sample, output position),
// the patch of that position in Xᵀ's order (group, input channel of the group, ky, kx).
template <class V>
matrix<V> patches(const bilinear_shape& s, const matrix<V>& h) {
    const std::size_t K = s.K();
    matrix<V> X(h.rows * s.pos, K);
    for (std::size_t r = 0; r < h.rows; ++r) {
        V* const base = &X(r * s.pos, 0);
        for (std::size_t k = 0; k < K; ++k)
            for (std::size_t u = s.runs->start[k]; u < s.runs->start[k + 1]; ++u) {
                const layers::index_run& run = s.runs->runs[u];
                const V* src = &h(r, run.src0);
                V* dst = base + run.p0 * K + k;
                for (std::size_t e = 0; e < run.len; ++e) dst[e * K] = src[e];
            }
    }
    return X;
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

// conv: Z [O × Q] = A(θ) · Xᵀ for the Q rows of X [· × K] starting at x (leading dimension ldx).
template <Real V>
void conv_products_rows(const bilinear_shape& s, const V* x, std::size_t ldx, std::size_t Q, const V* theta, V* z,
                        std::size_t ldz, gemm_counter* ctr) {
    for (std::size_t gi = 0; gi < s.groups; ++gi)
        gemm<V>(true, s.Og(), Q, s.Kg, theta + gi * s.Og() * s.Kg, s.Kg, x + gi * s.Kg, ldx, z + gi * s.Og() * ldz, ldz,
                false, ctr);
}

// linear: Z [(rows) × O] = X · A(θ)ᵀ for X [rows × in].
template <Real V>
matrix<V> linear_products(const bilinear_shape& s, const V* X, std::size_t rows, const V* theta, gemm_counter* ctr) {
    matrix<V> z(rows, s.O);
    gemm<V>(true, rows, s.O, s.Kg, X, s.Kg, theta, s.Kg, z.data.data(), s.O, false, ctr);
    return z;
}

// adjT[pair_i[u]·ld + c] += Σ_(j < n) rows[j][pair_k[u]]·e[j·ld + c] for u < pairs, c < ld, the
// sum over j formed first, j ascending (double; src/sparse_double.cpp).
void sparse_adjoint_pairs_double(std::size_t ld, std::size_t n, const double* e, const double* const* rows,
                                 const std::uint32_t* pair_k, const std::uint32_t* pair_i, std::size_t pairs,
                                 double* adjT);

// conv: the input adjoint of `count` adjoint rows D [count × O·pos] with weights θ, added to
// adj [count × in]:
//   Tm = Aᵀ (K × O, per group) · D2 (O × pos·count),  D2[o][(p, c)] = D[c][o, p],
// then the scatter-add of Tm's rows through the im2col runs into adjT [in × count], and
// adj[c][i] += adjT[i][c].  With the rows c innermost a run of `len` positions is one
// contiguous block of len·count entries in both Tm and adjT.  Each adjT entry receives its
// terms in k ascending order, from zero.
// Scratch that lives across calls (every entry it uses is written before it is read), so a
// sweep allocates it once.
template <Real T>
struct conv_adjoint {
    std::vector<T> D2, At, Tm, adjT, e, e_acc;
    std::vector<const T*> theta_rows;
    // apply_sparse: per output position p, its (k, input index) pairs in k order, and where
    // each group's pairs begin ([p][g], groups + 1 entries per p); built for `pairs_of`.
    std::vector<std::uint32_t> pair_k, pair_i;
    std::vector<std::size_t> pair_start;
    const layers::patch_runs* pairs_of = nullptr;

    // The same sum as `apply` where D is mostly exact zeros: nz [O·pos] flags the (o, p) at
    // which some row's D is not zero; every other term is a product with zero and is left
    // out.  Per position p (ascending), per tap (k, i) of p: adjT[i][c] += Σ_o θ[o][k]·D[c][o, p]
    // over the flagged o (ascending, summed first); then adj[c][i] += adjT[i][c].
    void apply_sparse(const bilinear_shape& s, const T* D, std::size_t count, const T* theta, const unsigned char* nz,
                      T* adj, std::size_t in_size) {
        const std::size_t Og = s.Og(), G = s.groups, N = s.O * s.pos;
        if (pairs_of != s.runs) {
            std::vector<std::vector<std::pair<std::uint32_t, std::uint32_t>>> by_p(s.pos);
            for (std::size_t k = 0; k < s.K(); ++k)
                for (std::size_t u = s.runs->start[k]; u < s.runs->start[k + 1]; ++u) {
                    const layers::index_run& run = s.runs->runs[u];
                    for (std::size_t x = 0; x < run.len; ++x)
                        by_p[run.p0 + x].emplace_back(static_cast<std::uint32_t>(k), static_cast<std::uint32_t>(run.src0 + x));
                }
            pair_k.clear();
            pair_i.clear();
            pair_start.clear();
            for (std::size_t p = 0; p < s.pos; ++p) {  // by_p[p] is in k order
                std::size_t u = 0;
                for (std::size_t gi = 0; gi < G; ++gi) {
                    pair_start.push_back(pair_k.size());
                    for (; u < by_p[p].size() && by_p[p][u].first < (gi + 1) * s.Kg; ++u) {
                        pair_k.push_back(static_cast<std::uint32_t>(by_p[p][u].first - gi * s.Kg));
                        pair_i.push_back(by_p[p][u].second);
                    }
                }
                pair_start.push_back(pair_k.size());
            }
            pairs_of = s.runs;
        }
        // In double, rows of adjT padded to a multiple of 4 entries and the block 32-byte
        // aligned: sparse_adjoint_pairs_double updates a row in whole aligned 4-vectors.
        std::size_t ld = count;
        T* base = nullptr;
        if constexpr (std::is_same_v<T, double>) {
            ld = (count + 3) / 4 * 4;
            adjT.assign(in_size * ld + 4, T(0));
            base = adjT.data();
            while (reinterpret_cast<std::uintptr_t>(base) % 32 != 0) ++base;
        } else {
            adjT.assign(in_size * count, T(0));
            base = adjT.data();
        }
        // Per position p and group: the active outputs o (ascending) with their rows of θ and
        // their adjoints E[j][c] = D[c][o_j, p] (rows padded to ld with zeros), then for each of
        // p's taps (k, i): adjT[i][c] += Σ_j θ[o_j][k]·E[j][c], the sum over j formed first.
        e.assign(Og * ld, T(0));
        std::vector<const T*>& rows = theta_rows;
        rows.resize(Og);
        for (std::size_t p = 0; p < s.pos; ++p)
            for (std::size_t gi = 0; gi < G; ++gi) {
                std::size_t na = 0;
                for (std::size_t o = gi * Og; o < (gi + 1) * Og; ++o) {
                    if (!nz[o * s.pos + p]) continue;
                    rows[na] = theta + o * s.Kg;
                    T* ej = e.data() + na * ld;
                    for (std::size_t c = 0; c < count; ++c) ej[c] = D[c * N + o * s.pos + p];
                    ++na;
                }
                if (na == 0) continue;
                const std::size_t* ps = pair_start.data() + p * (G + 1) + gi;
                if constexpr (std::is_same_v<T, double>) {
                    sparse_adjoint_pairs_double(ld, na, e.data(), rows.data(), pair_k.data() + ps[0], pair_i.data() + ps[0],
                                                ps[1] - ps[0], base);
                } else {
                    std::vector<T>& acc = e_acc;
                    acc.resize(count);
                    for (std::size_t u = ps[0]; u < ps[1]; ++u) {
                        for (std::size_t c = 0; c < count; ++c) acc[c] = T(0);
                        for (std::size_t j = 0; j < na; ++j) {
                            const T& av = rows[j][pair_k[u]];
                            const T* ej = e.data() + j * ld;
                            for (std::size_t c = 0; c < count; ++c) add_product(acc[c], av, ej[c]);
                        }
                        T* dst = base + pair_i[u] * count;
                        for (std::size_t c = 0; c < count; ++c) dst[c] += acc[c];
                    }
                }
            }
        for (std::size_t c = 0; c < count; ++c) {
            T* out = adj + c * in_size;
            const T* src = base + c;
            for (std::size_t i = 0; i < in_size; ++i) out[i] += src[i * ld];
        }
    }

    void apply(const bilinear_shape& s, const T* D, std::size_t count, const T* theta, T* adj, std::size_t in_size,
               gemm_counter* ctr) {
        const std::size_t n = count * s.pos, Og = s.Og(), K = s.K();
        if (D2.size() < s.O * n) D2.resize(s.O * n);
        if (At.size() < K * Og) At.resize(K * Og);
        if (Tm.size() < K * n) Tm.resize(K * n);
        adjT.assign(in_size * count, T(0));
        for (std::size_t c = 0; c < count; ++c)
            for (std::size_t o = 0; o < s.O; ++o) {
                const T* src = D + (c * s.O + o) * s.pos;
                T* dst = D2.data() + o * n + c;
                for (std::size_t p = 0; p < s.pos; ++p) dst[p * count] = src[p];
            }
        // Aᵀ [K × Og], rows k of group g: At[k][o'] = θ[g·Og + o'][k − g·Kg].
        for (std::size_t gi = 0; gi < s.groups; ++gi)
            for (std::size_t o = 0; o < Og; ++o)
                for (std::size_t k = 0; k < s.Kg; ++k) At[(gi * s.Kg + k) * Og + o] = theta[(gi * Og + o) * s.Kg + k];
        for (std::size_t gi = 0; gi < s.groups; ++gi)
            gemm<T>(false, s.Kg, n, Og, At.data() + gi * s.Kg * Og, Og, D2.data() + gi * Og * n, n, Tm.data() + gi * s.Kg * n,
                    n, false, ctr);
        for (std::size_t k = 0; k < K; ++k) {
            const T* row = Tm.data() + k * n;
            for (std::size_t u = s.runs->start[k]; u < s.runs->start[k + 1]; ++u) {
                const layers::index_run& run = s.runs->runs[u];
                const T* src = row + run.p0 * count;
                T* dst = adjT.data() + run.src0 * count;
                for (std::size_t e = 0; e < run.len * count; ++e) dst[e] += src[e];
            }
        }
        for (std::size_t c = 0; c < count; ++c) {
            T* out = adj + c * in_size;
            const T* src = adjT.data() + c;
            for (std::size_t i = 0; i < in_size; ++i) out[i] += src[i * count];
        }
    }
};

}  // namespace epk::bilinear

// epk/structured_tree.hpp — the structured path kernel of a tree model (conv2d, pooling,
// residual, layer norm; layer_tree.hpp), the default path of compute_path_kernel for every
// model that is not a plain MLP (structured_kernel.hpp keeps the MLP's own factors).
//
// A bilinear node (conv2d, linear on any shape) computes z = A(θ)h + b, and its weight
// gradient for an output adjoint D is a sum over output positions p of outer products:
//   ∂⟨D, z⟩/∂θ[o][k] = Σ_p D[o, p] · X[p, k],   ∂/∂b[o] = Σ_p D[o, p],
// X the node's patches (conv: im2col of h, one row per output position, one column per
// (input channel of the group, ky, kx); linear: the rows of h).  So the integral of a test
// point's Jacobian over a step, restricted to the node, is one product per output c:
//   Ī_s(x)[c][θ_node] = Σ_q ω_q Σ_p D_q[c][·, p] X_q[p, ·]   = Dω (O × Q·pos) · X (Q·pos × K),
// the nodes q of the point's rule stacked along the inner dimension (Dω: the adjoints at the
// nodes scaled by ω_q).  The adjoints D_q come from one reverse sweep with C seeds per node,
// whose conv steps are products too: adj_h = col2im(Dᵀ (pos × O) · A(θ) (O × K)).  Every
// node t_q is at w + t_qΔ: A(w + tΔ)h = A(w)h + t·A(Δ)h (two products, rows scaled after),
// as the MLP's path does.  Layer norm's parameters (2n numbers) take their gradient from
// their unit per row.  Then, per test point, with the training side's per-sample gradients
// g_{i,s} (b × P, trained order: bit-identical to the unstructured path's) and r_s:
//   K_s(x, x_i) a_{i,s} = Ī[c] · g_i     (one product C × b × P)
//   Ī_s(x) r_s           = Ī[c] · r_s
//   K_s(x, x_i)[c][d]    = Ī[c] · J(x_i)[d]   (stored kernel steps: C × b·C × P)
// No Jacobian is formed at a node: only its integral Ī (C × P per test point, one point per
// work item), by products whose inner dimension is (nodes × positions).
//
// Magnitudes (the budget's path_magnitude, proofs-notes/008 §2 and 006): the forward error
// magnitude M and the tangent τ along |Δ| of tree_segment.hpp, with |A(w + tΔ)| ≤ |A(w)| +
// |A(Δ)| for t ∈ [0, 1], so τ here ≥ the unstructured path's; the bilinear steps are products
// in binary64, the rest per entry.  Smooth networks (layer norm, tanh, gelu, ...): the ladder of
// proofs-notes/010 per test point (ladder_point): rules of growing size integrated by these
// products, compared through the shares' scale; optimizer runs contract Ī with their shares
// (point_integral, called by structured_kernel.hpp's optimizer_step_structured).
//
// Arithmetic: the test side's products use gemm<T> (Eigen in double, the reference order in
// every other type); test points are independent work items and a point's rows go in fixed
// blocks, so results do not depend on the number of threads.  Agreement with the unstructured
// path is to rounding (tests/test_structured_tree.cpp), within the budget of both.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <span>
#include <optional>
#include <vector>

#include "epk/bilinear.hpp"
#include "epk/gemm.hpp"
#include "epk/layer_tree.hpp"
#include "epk/path_kernel.hpp"
#include "epk/tree_segment.hpp"

namespace epk {

namespace structured_tree {

inline constexpr std::size_t block_rows = 64;  // rule nodes of one test point per pass
// The sparse forms of a conv node's reverse sweep are taken when at most this fraction of
// its output adjoint's entries (r, o, p) is active (some seed's entry not an exact zero):
//  * the weight integral (gathered_weight_integral), over the block's rows;
//  * the input adjoint (conv_adjoint::apply_sparse), per row.
// Both compute the dense form's sums without the products with zero.  Measured on the CNN
// workload of bench/ (its conv before a max pool: 0.18 active; the others 0.4-1): the
// gathered integral pays from about 0.5 down, the sparse adjoint from about 0.4 down.  Tests
// set them to 0 (always dense) or 2 (always sparse); nothing else writes them.
inline double gathered_max_density = 0.5;
inline double sparse_adjoint_max_density = 0.3;

using bilinear::bilinear_shape;
using bilinear::conv_adjoint;
using bilinear::shape_of;
using bilinear::with_data;

// What the forward sweep keeps of one node for the reverse sweep (pre-order, as forward_node's tape).
template <Real T>
struct node_tape {
    matrix<T> input;                 // R × in_size
    matrix<T> X;                     // conv: the input's patches X, (R·pos) × K (linear: `input` itself)
    matrix<T> deriv;                 // activation: σ′(input)
    std::vector<std::size_t> arg;    // max pool: the maximisers, R × out_size
    matrix<T> theta;                 // bilinear, layer norm: its parameters w + t_rΔ, R × count
};

// Values of the rows flowing through the forward sweep, with one magnitude row for all of
// them (binary64): M and τ of tree_segment.hpp's pass taken entrywise over the rows' maxima —
// |h| → max_r |h_r|, |σ′|, |σ| → their maxima over the rows, a max pool's chosen entry → the
// largest M, τ in its window, |A(w + t_rΔ)| → |A(w)| + |A(Δ)|.  Every recurrence is monotone in
// these (sums and products of non-negative terms), so the row bounds every row's M and τ, and
// Σ_r |ω_r| τ_r ≤ (Σ_r |ω_r|) τ.  Layer norm's bound is not monotone in its input: with a layer
// norm the magnitude is taken per row (integrate_block).
template <Real T>
struct flow {
    matrix<T> h;
    std::vector<double> m, tau;
};

// Kinds whose magnitude rule is taken per row (tree_segment's pass at every row): layer norm
// (its bound is not monotone in its input) and the sequence layers.
inline bool is_row_magnitude_kind(layer_kind k) {
    return k == layer_kind::layer_norm || k == layer_kind::embedding || k == layer_kind::positional_embedding ||
           k == layer_kind::self_attention || k == layer_kind::select || k == layer_kind::mean_tokens;
}
inline bool needs_row_magnitudes(const layer_tree& tree) {
    for (const tree_node* n : tree_nodes(tree))
        if (is_row_magnitude_kind(n->spec.kind)) return true;
    return false;
}

// One block of rows of one test point: x at w + t_r Δ, weights ω_r.
template <Real T>
struct block_context {
    std::span<const T> w, delta, t, omega;
    std::span<const double> abs_plus, abs_delta;  // |w| + |Δ| and |Δ| (binary64)
    std::size_t C = 0, P = 0, R = 0;
    bool row_magnitudes = false;                 // a layer norm: magnitudes per row (tree_segment)
    std::vector<T>* ibar = nullptr;              // [C][P], accumulated
    std::vector<double>* magnitude = nullptr;    // [C], accumulated
    std::vector<double>* tangent = nullptr;      // [C], accumulated: the ladder's scale (rule_integral)
    T* scale = nullptr;                          // max over rows of a bound on |J| entries
    gemm_counter* ctr = nullptr;
    double* elementwise = nullptr;
    std::vector<node_tape<T>> tape;
    std::vector<T> dw, xg;                       // scratch of the reverse sweep (backward_node)
    std::vector<std::vector<std::uint32_t>> active;  // gathered_weight_integral's positions
    std::vector<unsigned char> nonzero;          // mark_nonzero
    std::vector<std::size_t> row_active;
    std::vector<std::uint64_t> bits;
    std::size_t tape_at = 0;                     // the tape entry of the node being reversed
    conv_adjoint<T> ca;
};

template <Real T>
flow<T> forward_node(block_context<T>& cx, const tree_node& n, flow<T> in);

template <Real T>
flow<T> forward_sequence(block_context<T>& cx, const std::vector<tree_node>& seq, flow<T> v) {
    for (const tree_node& n : seq) v = forward_node(cx, n, std::move(v));
    return v;
}

// max_r |v(r, e)| for every entry e (binary64).
template <Real T>
std::vector<double> row_max_abs(const matrix<T>& v) {
    std::vector<double> out(v.cols, 0.0);
    for (std::size_t r = 0; r < v.rows; ++r)
        for (std::size_t e = 0; e < v.cols; ++e) out[e] = std::max(out[e], std::abs(scalar_traits<T>::to_double(v(r, e))));
    return out;
}

// θ_r = w + t_rΔ on node n's parameters for every row r (R × count), into `theta`.
template <Real T>
const matrix<T>& parameters_at_rows(const block_context<T>& cx, const tree_node& n, matrix<T>& theta) {
    theta = matrix<T>(cx.R, n.count);
    for (std::size_t r = 0; r < cx.R; ++r)
        for (std::size_t k = 0; k < n.count; ++k) {
            T v = cx.w[n.offset + k];
            add_product(v, cx.t[r], cx.delta[n.offset + k]);
            theta(r, k) = v;
        }
    return theta;
}

// Ī[c][node n's parameters] += ω_r·gw (one row r, output c; gw has n.count entries), and the
// scale's max |gw|.
template <Real T>
void add_row_gradient(block_context<T>& cx, const tree_node& n, std::size_t r, std::size_t c, const T* gw) {
    T* dst = cx.ibar->data() + c * cx.P + n.offset;
    for (std::size_t k = 0; k < n.count; ++k) {
        add_product(dst[k], cx.omega[r], gw[k]);
        max_abs_into(*cx.scale, gw[k]);
    }
}

template <Real T>
flow<T> forward_node(block_context<T>& cx, const tree_node& n, flow<T> in) {
    const std::size_t R = cx.R, N = n.out_size;
    const bool mag = !cx.row_magnitudes;
    cx.tape.push_back({});
    const std::size_t me = cx.tape.size() - 1;
    // The reverse sweep reads the input of bilinear nodes and layer norms only.  (No entry is
    // pushed while `h` is in use: a residual, whose branches push, does not use it.)
    const layer_kind kind = n.spec.kind;
    const bool keep = kind == layer_kind::linear || kind == layer_kind::conv2d || kind == layer_kind::layer_norm ||
                      kind == layer_kind::embedding || kind == layer_kind::self_attention;
    if (mag && is_row_magnitude_kind(kind))
        throw usage_error("structured_tree: " + n.path + " needs magnitudes per row (needs_row_magnitudes)");
    if (keep) cx.tape[me].input = std::move(in.h);
    const matrix<T>& h = keep ? cx.tape[me].input : in.h;
    flow<T> out;
    out.h = matrix<T>(R, N);
    out.m.assign(N, 0.0);
    out.tau.assign(N, 0.0);
    switch (n.spec.kind) {
        case layer_kind::residual: {
            const flow<T> b = forward_sequence(cx, n.body, in), s = forward_sequence(cx, n.shortcut, std::move(in));
            for (std::size_t e = 0; e < out.h.data.size(); ++e) out.h.data[e] = b.h.data[e] + s.h.data[e];
            if (mag) {
                const std::vector<double> bh = row_max_abs(b.h), sh = row_max_abs(s.h);
                for (std::size_t e = 0; e < N; ++e) {
                    out.m[e] = b.m[e] + s.m[e] + bh[e] + sh[e];
                    out.tau[e] = b.tau[e] + s.tau[e];
                }
            }
            return out;
        }
        case layer_kind::linear:
        case layer_kind::conv2d: {
            const bilinear_shape s = shape_of(n);
            // Per row: A(w + tΔ)h + (b + tΔb), the row's parameters w_t formed first (as the
            // unstructured path's point_on_segment), one product per row.
            matrix<T>& theta = cx.tape[me].theta;
            theta = matrix<T>(R, n.count);
            for (std::size_t r = 0; r < R; ++r) {
                T* th = &theta(r, 0);
                for (std::size_t k = 0; k < n.count; ++k) {
                    th[k] = cx.w[n.offset + k];
                    add_product(th[k], cx.t[r], cx.delta[n.offset + k]);
                }
            }
            if (s.conv) {
                cx.tape[me].X = bilinear::patches(s, h);
                const matrix<T>& X = cx.tape[me].X;
                for (std::size_t r = 0; r < R; ++r)
                    bilinear::conv_products_rows<T>(s, &X(r * s.pos, 0), X.cols, s.pos, &theta(r, 0), &out.h(r, 0), s.pos,
                                                    cx.ctr);
            } else {
                for (std::size_t r = 0; r < R; ++r) {
                    const matrix<T> z = bilinear::linear_products<T>(s, &h(r, 0), s.pos, &theta(r, 0), cx.ctr);
                    std::copy(z.data.begin(), z.data.end(), &out.h(r, 0));
                }
            }
            if (s.bias)
                for (std::size_t r = 0; r < R; ++r)
                    for (std::size_t p = 0; p < s.pos; ++p)
                        for (std::size_t o = 0; o < s.O; ++o) out.h(r, s.out_index(o, p)) += theta(r, s.weight_count + o);
            *cx.elementwise += static_cast<double>(R * (n.count + N));
            if (!mag) return out;
            // M = |A|₊(M_h + |h|) + |b|₊, τ = |A|₊τ_h + |A(Δ)|(M_h + |h|) + |Δb|, |·|₊ = |w| + |Δ|.
            const std::vector<double> hmax = row_max_abs(h);
            matrix<double> mh(1, n.in_size), th(1, n.in_size);
            for (std::size_t e = 0; e < n.in_size; ++e) {
                mh.data[e] = in.m[e] + hmax[e];
                th.data[e] = in.tau[e];
            }
            const double* ap = cx.abs_plus.data() + n.offset;
            const double* ad = cx.abs_delta.data() + n.offset;
            std::vector<double> t1(N);
            if (s.conv) {
                const matrix<double> Xm = bilinear::patches_t(s, mh), Xt = bilinear::patches_t(s, th);
                bilinear::conv_products<double>(s, Xm, 0, s.pos, ap, out.m.data(), s.pos, nullptr);
                bilinear::conv_products<double>(s, Xt, 0, s.pos, ap, out.tau.data(), s.pos, nullptr);
                bilinear::conv_products<double>(s, Xm, 0, s.pos, ad, t1.data(), s.pos, nullptr);
            } else {
                const matrix<double> m0 = bilinear::linear_products<double>(s, mh.data.data(), s.pos, ap, nullptr);
                const matrix<double> t0 = bilinear::linear_products<double>(s, th.data.data(), s.pos, ap, nullptr);
                const matrix<double> d1 = bilinear::linear_products<double>(s, mh.data.data(), s.pos, ad, nullptr);
                out.m = m0.data;
                out.tau = t0.data;
                t1 = d1.data;
            }
            for (std::size_t p = 0; p < s.pos; ++p)
                for (std::size_t o = 0; o < s.O; ++o) {
                    const std::size_t e = s.out_index(o, p);
                    out.tau[e] += t1[e];
                    if (s.bias) {
                        out.m[e] += ap[s.weight_count + o];
                        out.tau[e] += ad[s.weight_count + o];
                    }
                }
            return out;
        }
        case layer_kind::max_pool2d: {
            const layers::pool_geometry g = n.pool();
            std::vector<std::size_t>& arg = cx.tape[me].arg;
            arg.resize(R * N);
            for (std::size_t r = 0; r < R; ++r) {
                layers::max_pool_argmax<T>(g, &h(r, 0), &arg[r * N]);
                for (std::size_t e = 0; e < N; ++e) out.h(r, e) = h(r, arg[r * N + e]);
            }
            if (mag)  // the rows' maximisers differ: the largest M, τ of the window
                for (std::size_t c = 0; c < g.C; ++c)
                    for (std::size_t y = 0; y < g.Ho; ++y)
                        for (std::size_t x = 0; x < g.Wo; ++x) {
                            const std::size_t e = (c * g.Ho + y) * g.Wo + x;
                            layers::pool_window(g, c, y, x, [&](std::size_t i) {
                                out.m[e] = std::max(out.m[e], in.m[i]);
                                out.tau[e] = std::max(out.tau[e], in.tau[i]);
                            });
                        }
            return out;
        }
        case layer_kind::avg_pool2d: {
            const layers::pool_geometry g = n.pool();
            for (std::size_t r = 0; r < R; ++r) layers::avg_pool_apply<T>(g, &h(r, 0), &out.h(r, 0));
            if (mag) {
                const std::vector<double> hmax = row_max_abs(h);
                std::vector<double> mh(n.in_size);
                for (std::size_t e = 0; e < n.in_size; ++e) mh[e] = in.m[e] + hmax[e];
                layers::avg_pool_apply<double>(g, mh.data(), out.m.data());
                layers::avg_pool_apply<double>(g, in.tau.data(), out.tau.data());
            }
            return out;
        }
        case layer_kind::layer_norm: {  // magnitudes per row (row_magnitudes)
            const layers::norm_geometry g = n.norm();
            const matrix<T>& theta = parameters_at_rows(cx, n, cx.tape[me].theta);
            for (std::size_t r = 0; r < R; ++r) {
                // theta.data.data() + r·count, not &theta(r, 0): without affine parameters (count 0) the
                // row is empty and indexing it binds a null reference (UBSan).
                layers::layer_norm_forward<T>(g, theta.data.data() + r * n.count, &h(r, 0), &out.h(r, 0));
            }
            return out;
        }
        case layer_kind::flatten:
            out.h.data = std::move(in.h.data);
            out.m = in.m;
            out.tau = in.tau;
            return out;
        // The sequence layers (magnitudes per row).  embedding: W[id] + t_rΔ[id]; positional:
        // h + (P + t_rΔP); attention: its unit at θ_r = w + t_rΔ (as layer norm); select and
        // mean_tokens: parameter-free.
        case layer_kind::embedding: {
            const layers::sequence_geometry g = n.sequence();
            for (std::size_t r = 0; r < R; ++r)
                for (std::size_t t = 0; t < g.T; ++t) {
                    const std::size_t at = n.offset + layers::token_at<T>(g, &h(r, 0), t) * g.D;
                    for (std::size_t d = 0; d < g.D; ++d) {
                        T v = cx.w[at + d];
                        add_product(v, cx.t[r], cx.delta[at + d]);
                        out.h(r, t * g.D + d) = v;
                    }
                }
            return out;
        }
        case layer_kind::positional_embedding:
            for (std::size_t r = 0; r < R; ++r)
                for (std::size_t e = 0; e < N; ++e) {
                    T v = cx.w[n.offset + e];
                    add_product(v, cx.t[r], cx.delta[n.offset + e]);
                    out.h(r, e) = h(r, e) + v;
                }
            return out;
        case layer_kind::self_attention: {
            const layers::attention_geometry g = n.attention();
            const matrix<T>& theta = parameters_at_rows(cx, n, cx.tape[me].theta);
            for (std::size_t r = 0; r < R; ++r) layers::attention_forward<T>(g, &theta(r, 0), &h(r, 0), &out.h(r, 0));
            return out;
        }
        case layer_kind::select:
            for (std::size_t r = 0; r < R; ++r) layers::select_apply<T>(n.sequence(), &h(r, 0), &out.h(r, 0));
            return out;
        case layer_kind::mean_tokens:
            for (std::size_t r = 0; r < R; ++r) layers::mean_tokens_apply<T>(n.sequence(), &h(r, 0), &out.h(r, 0));
            return out;
        default: {  // activations: M = |σ′|M + |σ|, τ = |σ′|τ
            const activation<T> act(n.spec);
            matrix<T>& dv = cx.tape[me].deriv;
            dv = matrix<T>(R, N);
            for (std::size_t e = 0; e < h.data.size(); ++e) {
                out.h.data[e] = act.value(h.data[e]);
                dv.data[e] = act.derivative_given_value(h.data[e], out.h.data[e]);
            }
            if (mag) {
                const std::vector<double> smax = row_max_abs(dv), ymax = row_max_abs(out.h);
                for (std::size_t e = 0; e < N; ++e) {
                    out.m[e] = smax[e] * in.m[e] + ymax[e];
                    out.tau[e] = smax[e] * in.tau[e];
                }
            }
            return out;
        }
    }
}

// Reverse sweep of one node for C adjoint rows per row (adj [(R·C) × out_size]): returns the
// adjoint of its input (empty when `need_input` is false) and adds the node's share of Ī.
template <Real T>
matrix<T> backward_node(block_context<T>& cx, const tree_node& n, std::size_t& at, matrix<T> adj,
                        bool need_input);

template <Real T>
matrix<T> backward_sequence(block_context<T>& cx, const std::vector<tree_node>& seq, std::size_t& at, matrix<T> adj,
                            bool top) {
    for (std::size_t k = seq.size(); k-- > 0;) adj = backward_node(cx, seq[k], at, std::move(adj), !(top && k == 0));
    return adj;
}

// cx.nonzero [R × N] := 1 where some seed's adjoint adj(r·C + c, e) is not zero (±0 are
// zero), cx.row_active[r] := the count per row.
template <Real T>
void mark_nonzero(block_context<T>& cx, const matrix<T>& adj, std::size_t N) {
    const std::size_t R = cx.R, C = cx.C;
    std::vector<unsigned char>& nz = cx.nonzero;
    nz.resize(R * N);
    cx.row_active.assign(R, 0);
    for (std::size_t r = 0; r < R; ++r) {
        unsigned char* f = nz.data() + r * N;
        if constexpr (std::is_same_v<T, double>) {  // OR of the bit patterns (one pass of integer ORs)
            std::vector<std::uint64_t>& bits = cx.bits;
            bits.assign(N, 0);
            for (std::size_t c = 0; c < C; ++c) {
                const double* a = &adj(r * C + c, 0);
                for (std::size_t e = 0; e < N; ++e) {
                    std::uint64_t u;
                    std::memcpy(&u, a + e, sizeof u);
                    bits[e] |= u;
                }
            }
            for (std::size_t e = 0; e < N; ++e) f[e] = static_cast<unsigned char>((bits[e] << 1) != 0);  // ±0: zero
        } else {
            for (std::size_t e = 0; e < N; ++e) {
                bool any = false;
                for (std::size_t c = 0; c < C && !any; ++c) any = adj(r * C + c, e) != T(0);
                f[e] = static_cast<unsigned char>(any);
            }
        }
        for (std::size_t e = 0; e < N; ++e) cx.row_active[r] += f[e];
    }
}

// A conv node's share of Ī when its output adjoint is mostly exact zeros (a max pool or a
// relu after it passes the adjoint to few positions): per output channel o, only the
// positions (r, p) where some seed's D_rc[o, p] ≠ 0 enter the sum, gathered —
//   Ī[·][o][·] += Dg_o (C × n_o) · Xg_o (n_o × Kg),  Dg_o[c][(r, p)] = ω_r D_rc[o, p],
// Xg_o the patches at those positions.  The omitted terms are products with an exact zero,
// so the sum is the dense one's (rounding apart: another association).  Also accumulates
// the scale and the bias as the dense path.  Returns false (nothing done) when more than
// gathered_max_density of the (r, o, p) are active: the dense product is then cheaper.
// Needs mark_nonzero's flags for `adj`.
template <Real T>
bool gathered_weight_integral(block_context<T>& cx, const tree_node& n, const bilinear_shape& s, const matrix<T>& adj,
                              const matrix<T>& h) {
    const std::size_t R = cx.R, C = cx.C, P = cx.P, O = s.O, pos = s.pos, Og = s.Og(), Kg = s.Kg, Q = R * pos;
    const node_tape<T>& tp = cx.tape[cx.tape_at];
    // Active positions per channel, (r, p) ascending.
    const std::size_t N = O * pos;
    const std::vector<unsigned char>& nz = cx.nonzero;
    std::size_t count = 0;
    for (std::size_t r = 0; r < R; ++r) count += cx.row_active[r];
    if (static_cast<double>(count) > gathered_max_density * static_cast<double>(O * Q)) return false;
    std::vector<std::vector<std::uint32_t>>& act = cx.active;
    act.resize(O);
    for (std::size_t o = 0; o < O; ++o) {
        act[o].clear();
        for (std::size_t r = 0; r < R; ++r) {
            const unsigned char* f = nz.data() + r * N + o * pos;
            for (std::size_t p = 0; p < pos; ++p)
                if (f[p]) act[o].push_back(static_cast<std::uint32_t>(r * pos + p));
        }
    }
    std::vector<T> dsum(R, T(0));
    std::vector<T>& Dg = cx.dw;
    std::vector<T>& Xg = cx.xg;
    std::vector<T> asum(C), bsum(C);
    for (std::size_t o = 0; o < O; ++o) {
        const std::vector<std::uint32_t>& L = act[o];
        const std::size_t no = L.size();
        std::fill(bsum.begin(), bsum.end(), T(0));
        if (no > 0) {
            if (Dg.size() < C * no) Dg.resize(C * no);
            if (Xg.size() < Kg * no) Xg.resize(Kg * no);
            // Dg [C × n_o]; Σ_p |D_rc[o, p]| per (r, c) (runs of equal r), Σ ω D per c.
            std::size_t j0 = 0;
            while (j0 < no) {
                const std::size_t r = L[j0] / pos;
                std::size_t j1 = j0;
                while (j1 < no && L[j1] / pos == r) ++j1;
                const T& om = cx.omega[r];
                for (std::size_t c = 0; c < C; ++c) {
                    const T* src = &adj(r * C + c, o * pos);
                    T* dst = Dg.data() + c * no;
                    T a(0), b(0);
                    for (std::size_t j = j0; j < j1; ++j) {
                        const T& v = src[L[j] - r * pos];
                        a += rm::abs(v);
                        dst[j] = om * v;
                        b += dst[j];
                    }
                    dsum[r] = rm::max(dsum[r], a);
                    bsum[c] += b;
                }
                j0 = j1;
            }
            // Xg [n_o × Kg]: the group's part of the patches at the active positions.
            const std::size_t k0 = (o / Og) * Kg;
            for (std::size_t j = 0; j < no; ++j) {
                const T* src = &tp.X(L[j], k0);
                std::copy(src, src + Kg, Xg.data() + j * Kg);
            }
            gemm<T>(false, C, Kg, no, Dg.data(), no, Xg.data(), Kg, cx.ibar->data() + n.offset + o * Kg, P, true, cx.ctr);
        }
        if (s.bias)
            for (std::size_t c = 0; c < C; ++c) cx.ibar->data()[c * P + n.offset + s.weight_count + o] += bsum[c];
        *cx.elementwise += static_cast<double>(no * (C + Kg));
    }
    for (std::size_t r = 0; r < R; ++r) {
        T xmax = s.bias ? T(1) : T(0);
        for (std::size_t e = 0; e < n.in_size; ++e) max_abs_into(xmax, h(r, e));
        max_abs_into(*cx.scale, T(dsum[r] * xmax));
    }
    *cx.elementwise += static_cast<double>(R * C * O * pos);
    return true;
}

// The dense share of a bilinear node in Ī (see the header comment).
template <Real T>
void dense_weight_integral(block_context<T>& cx, const tree_node& n, const bilinear_shape& s, const matrix<T>& adj,
                           const matrix<T>& h) {
    const std::size_t R = cx.R, C = cx.C, RC = R * C, P = cx.P;
    const node_tape<T>& tp = cx.tape[cx.tape_at];
    const std::size_t Q = R * s.pos;  // stacked (row, position)
    // Ī[c][o][k] += Σ_(r,p) ω_r D_rc[o, p] X[(r, p), k]: one product per group with rows
    // (c, o ∈ group) and inner dimension (r, p); the bias Σ_(r,p) ω_r D_rc[o, p].
    // Scale: |Σ_p D[o,p] X[p,k]| ≤ (Σ_p |D[o,p]|)·max|X|, the bias's Σ_p |D[o,p]|; the
    // patches hold input entries (and zeros), so max|X| ≤ max|h|.
    const std::size_t Og = s.Og(), G = s.groups;
    // Dw [C·O × Q], row (g, c, o') = (gi·C + c)·Og + o' (scratch: every entry is written)
    if (cx.dw.size() < C * s.O * Q) cx.dw.resize(C * s.O * Q);
    T* const Dw = cx.dw.data();
    std::vector<T> dsum(R, T(0)), bsum(C * s.O, T(0));  // per row max_(c,o) Σ_p |D|; per (c, o) Σ ω D
    const std::size_t so = s.conv ? s.pos : 1, sp = s.conv ? 1 : s.O;  // D[o, p] at o·so + p·sp
    // Per (c, o) the sums run over p ascending, four outputs at a time in local
    // accumulators (independent chains instead of one latency-bound chain after another).
    for (std::size_t r = 0; r < R; ++r)
        for (std::size_t c = 0; c < C; ++c) {
            const T& om = cx.omega[r];
            const T* src = &adj(r * C + c, 0);
            auto dst = [&](std::size_t o) { return Dw + (((o / Og) * C + c) * Og + o % Og) * Q + r * s.pos; };
            std::size_t o = 0;
            for (; o + 4 <= s.O; o += 4) {
                T s0(0), s1(0), s2(0), s3(0), b0(0), b1(0), b2(0), b3(0);
                T *d0 = dst(o), *d1 = dst(o + 1), *d2 = dst(o + 2), *d3 = dst(o + 3);
                const T *v0 = src + o * so, *v1 = src + (o + 1) * so, *v2 = src + (o + 2) * so,
                        *v3 = src + (o + 3) * so;
                for (std::size_t p = 0; p < s.pos; ++p) {
                    const std::size_t e = p * sp;
                    s0 += rm::abs(v0[e]);
                    s1 += rm::abs(v1[e]);
                    s2 += rm::abs(v2[e]);
                    s3 += rm::abs(v3[e]);
                    d0[p] = om * v0[e];
                    d1[p] = om * v1[e];
                    d2[p] = om * v2[e];
                    d3[p] = om * v3[e];
                    b0 += d0[p];
                    b1 += d1[p];
                    b2 += d2[p];
                    b3 += d3[p];
                }
                dsum[r] = rm::max(rm::max(dsum[r], rm::max(s0, s1)), rm::max(s2, s3));
                bsum[c * s.O + o] += b0;
                bsum[c * s.O + o + 1] += b1;
                bsum[c * s.O + o + 2] += b2;
                bsum[c * s.O + o + 3] += b3;
            }
            for (; o < s.O; ++o) {
                T sum(0), bs(0);
                T* d = dst(o);
                const T* v = src + o * so;
                for (std::size_t p = 0; p < s.pos; ++p) {
                    sum += rm::abs(v[p * sp]);
                    d[p] = om * v[p * sp];
                    bs += d[p];
                }
                dsum[r] = rm::max(dsum[r], sum);
                bsum[c * s.O + o] += bs;
            }
        }
    for (std::size_t r = 0; r < R; ++r) {
        T xmax = s.bias ? T(1) : T(0);
        for (std::size_t e = 0; e < n.in_size; ++e) max_abs_into(xmax, h(r, e));
        max_abs_into(*cx.scale, T(dsum[r] * xmax));
    }
    matrix<T> gi_out(C * Og, s.Kg);
    for (std::size_t gi = 0; gi < G; ++gi) {
        if (s.conv)  // B = the group's columns of the patches X, [Q × Kg]
            gemm<T>(false, C * Og, s.Kg, Q, Dw + gi * C * Og * Q, Q, &tp.X(0, gi * s.Kg), s.K(), gi_out.data.data(), s.Kg,
                    false, cx.ctr);
        else  // B = the rows of h, [Q × in]
            gemm<T>(false, C * Og, s.Kg, Q, Dw + gi * C * Og * Q, Q, h.data.data(), s.Kg, gi_out.data.data(), s.Kg,
                    false, cx.ctr);
        for (std::size_t c = 0; c < C; ++c) {
            T* dst = cx.ibar->data() + c * P + n.offset + gi * Og * s.Kg;
            const T* src = &gi_out(c * Og, 0);
            for (std::size_t e = 0; e < Og * s.Kg; ++e) dst[e] += src[e];
        }
    }
    if (s.bias)
        for (std::size_t c = 0; c < C; ++c)
            for (std::size_t o = 0; o < s.O; ++o) cx.ibar->data()[c * P + n.offset + s.weight_count + o] += bsum[c * s.O + o];
    *cx.elementwise += static_cast<double>(RC * s.O * s.pos + C * s.O * s.Kg);
}

template <Real T>
matrix<T> backward_node(block_context<T>& cx, const tree_node& n, std::size_t& at, matrix<T> adj,
                        bool need_input) {
    const std::size_t R = cx.R, C = cx.C, RC = R * C, P = cx.P;
    if (n.spec.kind == layer_kind::residual) {
        const matrix<T> as = backward_sequence(cx, n.shortcut, at, adj, false);
        matrix<T> ab = backward_sequence(cx, n.body, at, std::move(adj), false);
        --at;
        for (std::size_t e = 0; e < ab.data.size(); ++e) ab.data[e] += as.data[e];
        return ab;
    }
    const node_tape<T>& tp = cx.tape[--at];
    cx.tape_at = at;
    const matrix<T>& h = tp.input;
    switch (n.spec.kind) {
        case layer_kind::linear:
        case layer_kind::conv2d: {
            const bilinear_shape s = shape_of(n);
            if (s.conv) mark_nonzero(cx, adj, n.out_size);
            if (!(s.conv && gathered_weight_integral(cx, n, s, adj, h))) dense_weight_integral(cx, n, s, adj, h);
            if (!need_input) return {};
            // adj_h of row r with its parameters w + t_rΔ: conv Aᵀ·D then the runs' scatter-add,
            // linear D·A.
            matrix<T> prev(RC, n.in_size);
            for (std::size_t r = 0; r < R; ++r) {
                const T* Dr = &adj(r * C, 0);
                if (s.conv && static_cast<double>(cx.row_active[r]) <= sparse_adjoint_max_density * static_cast<double>(n.out_size))
                    cx.ca.apply_sparse(s, Dr, C, &tp.theta(r, 0), &cx.nonzero[r * n.out_size], &prev(r * C, 0), n.in_size);
                else if (s.conv)
                    cx.ca.apply(s, Dr, C, &tp.theta(r, 0), &prev(r * C, 0), n.in_size, cx.ctr);
                else  // rows (c, p) of D are [O]
                    gemm<T>(false, C * s.pos, s.K(), s.O, Dr, s.O, &tp.theta(r, 0), s.K(), &prev(r * C, 0), s.K(), false,
                            cx.ctr);
            }
            *cx.elementwise += static_cast<double>(RC * s.pos * s.K());
            return prev;
        }
        case layer_kind::layer_norm: {
            const layers::norm_geometry g = n.norm();
            matrix<T> prev(RC, n.in_size);
            std::vector<T> gw(n.count);
            for (std::size_t rc = 0; rc < RC; ++rc) {
                const std::size_t r = rc / C, c = rc % C;
                std::fill(gw.begin(), gw.end(), T(0));
                layers::layer_norm_backward<T>(g, tp.theta.data.data() + r * n.count, &h(r, 0), &adj(rc, 0), &prev(rc, 0), gw.data());
                add_row_gradient(cx, n, r, c, gw.data());
            }
            return prev;
        }
        case layer_kind::max_pool2d: {
            matrix<T> prev(RC, n.in_size);
            const std::size_t N = n.out_size;
            for (std::size_t rc = 0; rc < RC; ++rc) {
                const std::size_t* arg = &tp.arg[(rc / C) * N];
                for (std::size_t e = 0; e < N; ++e) prev(rc, arg[e]) += adj(rc, e);
            }
            return prev;
        }
        case layer_kind::avg_pool2d: {
            const layers::pool_geometry g = n.pool();
            matrix<T> prev(RC, n.in_size);
            for (std::size_t rc = 0; rc < RC; ++rc) layers::avg_pool_backward<T>(g, &adj(rc, 0), &prev(rc, 0));
            return prev;
        }
        case layer_kind::flatten: return with_data(RC, n.in_size, std::move(adj.data));
        case layer_kind::embedding: {
            // Sparse: only the rows of the sample's tokens.  J[c][W[v][d]] = Σ_{t: id_t = v} adj[t][d]
            // (positions t ascending), added once per distinct token v (its first position).
            const layers::sequence_geometry g = n.sequence();
            std::vector<std::size_t> ids(g.T);
            std::vector<T> row(g.D);
            for (std::size_t rc = 0; rc < RC; ++rc) {
                const std::size_t r = rc / C, c = rc % C;
                for (std::size_t t = 0; t < g.T; ++t) ids[t] = layers::token_at<T>(g, &h(r, 0), t);
                for (std::size_t t = 0; t < g.T; ++t) {
                    if (std::find(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(t), ids[t]) !=
                        ids.begin() + static_cast<std::ptrdiff_t>(t))
                        continue;
                    for (std::size_t d = 0; d < g.D; ++d) row[d] = adj(rc, t * g.D + d);
                    for (std::size_t u = t + 1; u < g.T; ++u)
                        if (ids[u] == ids[t])
                            for (std::size_t d = 0; d < g.D; ++d) row[d] += adj(rc, u * g.D + d);
                    T* dst = cx.ibar->data() + c * P + n.offset + ids[t] * g.D;
                    for (std::size_t d = 0; d < g.D; ++d) {
                        add_product(dst[d], cx.omega[r], row[d]);
                        max_abs_into(*cx.scale, row[d]);
                    }
                }
            }
            if (!need_input) return {};
            return matrix<T>(RC, n.in_size);  // token ids: no input adjoint
        }
        case layer_kind::positional_embedding:
            for (std::size_t rc = 0; rc < RC; ++rc) add_row_gradient(cx, n, rc / C, rc % C, &adj(rc, 0));  // J[c][P] = adj
            return adj;
        case layer_kind::self_attention: {
            const layers::attention_geometry g = n.attention();
            matrix<T> prev(RC, n.in_size);
            std::vector<T> gw(n.count);
            for (std::size_t r = 0; r < R; ++r) {  // one forward pass per row serves its C seeds
                const layers::attention_values<T> a = layers::attention_core<T>(g, &tp.theta(r, 0), &h(r, 0));
                for (std::size_t c = 0; c < C; ++c) {
                    std::fill(gw.begin(), gw.end(), T(0));
                    layers::attention_backward_from<T>(g, a, &tp.theta(r, 0), &h(r, 0), &adj(r * C + c, 0),
                                                       &prev(r * C + c, 0), gw.data());
                    add_row_gradient(cx, n, r, c, gw.data());
                }
            }
            return prev;
        }
        case layer_kind::select:
        case layer_kind::mean_tokens: {
            matrix<T> prev(RC, n.in_size);
            for (std::size_t rc = 0; rc < RC; ++rc) {
                if (n.spec.kind == layer_kind::select) layers::select_backward<T>(n.sequence(), &adj(rc, 0), &prev(rc, 0));
                else layers::mean_tokens_backward<T>(n.sequence(), &adj(rc, 0), &prev(rc, 0));
            }
            return prev;
        }
        default: {  // in place
            for (std::size_t rc = 0; rc < RC; ++rc) {
                const T* dv = &tp.deriv(rc / C, 0);
                T* a = &adj(rc, 0);
                for (std::size_t e = 0; e < n.in_size; ++e) a[e] = dv[e] * a[e];
            }
            return adj;
        }
    }
}

// Adds one block of a test point's rows into its Ī, magnitude and scale.
template <Real T>
void integrate_block(const layer_tree& tree, const tree_segment::analysis* an, block_context<T>& cx,
                     const matrix<T>& x_rows) {
    const std::size_t R = cx.R, C = cx.C;
    cx.tape.clear();
    flow<T> v{x_rows, std::vector<double>(x_rows.cols, 0.0), std::vector<double>(x_rows.cols, 0.0)};
    const flow<T> out = forward_sequence(cx, tree.layers, std::move(v));
    if (cx.row_magnitudes) {  // tree_segment's pass at every row's w + t_rΔ (binary64)
        std::vector<double> wt(cx.P), x(x_rows.cols);
        for (std::size_t j = 0; j < x_rows.cols; ++j) x[j] = scalar_traits<T>::to_double(x_rows(0, j));
        for (std::size_t r = 0; r < R; ++r) {
            for (std::size_t q = 0; q < cx.P; ++q) {
                T v = cx.w[q];
                add_product(v, cx.t[r], cx.delta[q]);
                wt[q] = scalar_traits<T>::to_double(v);
            }
            std::vector<double> jt;
            const std::vector<double> jm = tree_segment::jacobian_magnitude(*an, wt, x, cx.abs_delta, &jt);
            const double wq = std::abs(scalar_traits<T>::to_double(cx.omega[r]));
            for (std::size_t c = 0; c < C; ++c) {
                (*cx.magnitude)[c] += wq * jm[c];
                (*cx.tangent)[c] += wq * jt[c];
            }
        }
    } else {
        double wsum = 0;
        for (std::size_t r = 0; r < R; ++r) wsum += std::abs(scalar_traits<T>::to_double(cx.omega[r]));
        for (std::size_t c = 0; c < C; ++c) {
            (*cx.magnitude)[c] += wsum * out.tau[c];
            (*cx.tangent)[c] += wsum * out.tau[c];
        }
    }
    matrix<T> seed(R * C, C);
    for (std::size_t r = 0; r < R; ++r)
        for (std::size_t c = 0; c < C; ++c) seed(r * C + c, c) = T(1);
    std::size_t at = cx.tape.size();
    backward_sequence(cx, tree.layers, at, std::move(seed), true);
}

// One rule's Ī (C × P), magnitude and max |J|; `located` (ladder_point): the cuts' bound.
template <Real T>
struct rule_integral {
    std::vector<T> ibar;
    std::vector<double> magnitude;
    std::vector<double> tangent;  // the ladder's scale: t (tree_segment's magnitude_pass) per row, or the magnitude
    std::vector<double> step_tangent;  // forward mode: t with |Δ| for the second condition (012 §10)
    T scale = T(0), located = T(0);
};

// The smooth ladder of proofs-notes/010 §1 for one test point of a tree model: the cuts as
// segment_cuts finds them, then on each piece rules G_{n−1}, G_n, … integrated through the
// factors (`integrate`, with the shares' scale s for the magnitudes), G_{n_{k+1}} accepted when
// est_c = Σ_p |ΔĪ[c][p]|·s_p (≥ |ΔĪ·g_i| + |ΔĪ·r| summed: 010 §4's dense comparison) is
// ≤ τ·u·V₂_c; bisection and limits as adaptive_piece.  Fills ps's counters and per-output
// estimate; `start` carries the accepted size to the next step.
template <Real T, class Integrate>
rule_integral<T> ladder_point(const model_spec& m, const segment_structure& st, std::span<const T> w,
                              std::span<const T> delta, const matrix<T>& x1, const quadrature_options& qo,
                              std::span<const double> s, std::size_t& start, Integrate&& integrate,
                              detail::point_step<T>& ps, std::size_t vectors = 0, bool* refused = nullptr) {
    if (qo.first_nodes == 0 || qo.max_nodes < 2 * qo.first_nodes || qo.max_nodes > max_gauss_nodes)
        throw usage_error("quadrature_options: need 1 ≤ first_nodes and 2·first_nodes ≤ max_nodes ≤ 100000");
    const std::size_t C = m.output_dim(), P = w.size();
    const T u = scalar_traits<T>::unit_roundoff();
    const double tau = qo.tolerance_factor > 0 ? qo.tolerance_factor : st.default_tolerance;
    // Forward mode (`vectors` V > 0): the rules give Ī·v_k [C × V] instead of Ī [C × P] (012 §10);
    // not on steps with cuts (their location term needs max|J|): *refused, nothing integrated.
    const std::size_t W = vectors > 0 ? vectors : P;
    rule_integral<T> out;
    out.ibar.assign(C * W, T(0));
    out.magnitude.assign(C, 0.0);
    const std::vector<T> cuts = segment_cuts<T>(m, st, w, delta, x1, qo.kink_samples, &out.located);
    if (vectors > 0 && !cuts.empty()) {
        *refused = true;
        return out;
    }
    ps.cuts = cuts.size();
    ps.estimate_by_output.assign(C, T(0));
    std::vector<T> ends{T(0)};
    ends.insert(ends.end(), cuts.begin(), cuts.end());
    ends.push_back(T(1));
    auto rule_on = [&](const T& a, const T& b, std::size_t n) {
        const gauss_rule<T>& g = gauss_legendre<T>(n);
        const T len = b - a;
        std::vector<T> ts(n), ws(n);
        for (std::size_t q = 0; q < n; ++q) {
            ts[q] = a + len * g.nodes[q];
            ws[q] = len * g.weights[q];
        }
        ps.evaluations += n;
        return integrate(std::span<const T>(ts), std::span<const T>(ws), s);
    };
    // The step's check (012 §11): ∫J·Δ = f(w + Δ) − f(w) exactly, so the rules' Ī·Δ is compared
    // with the two ends' outputs; a mismatch above their rounding means every rule missed a
    // feature narrower than its nodes (both rungs of a ladder agreeing): the step is integrated
    // again on 2, 4, …, 64 equal pieces per interval until it passes; a mismatch left then is
    // added to the estimate (the budget) and the step marked not converged.
    const matrix<T> f0 = outputs<T>(m, w, x1), f1 = outputs<T>(m, detail::point_on_segment<T>(w, delta, T(1)), x1);
    std::vector<T> mismatch(C, T(0));
    bool margin = true;
    std::size_t accepted = 0;
    for (std::size_t parts = 1;; parts *= 2) {
        out.ibar.assign(C * W, T(0));
        out.magnitude.assign(C, 0.0);
        out.scale = T(0);
        out.step_tangent.assign(C, 0.0);
        ps.estimate_by_output.assign(C, T(0));
        ps.nodes = 0;
        ps.converged = true;
        margin = true;
        accepted = 0;
        // Pieces as a stack (bisected halves processed in order along the step).
        struct piece {
            T a, b;
            std::size_t depth, n;
        };
        std::vector<piece> todo;
        for (std::size_t e = ends.size() - 1; e-- > 0;)
            for (std::size_t k = parts; k-- > 0;) {  // each interval in `parts` equal pieces
                const T len = ends[e + 1] - ends[e];
                todo.push_back({k == 0 ? ends[e] : T(ends[e] + len * T(static_cast<double>(k)) / T(static_cast<double>(parts))),
                                k + 1 == parts ? ends[e + 1] : T(ends[e] + len * T(static_cast<double>(k + 1)) / T(static_cast<double>(parts))),
                                0, std::max<std::size_t>(2, start)});
            }
        while (!todo.empty()) {
            const piece pc = todo.back();
            todo.pop_back();
            std::size_t n_coarse = pc.n - 1, n_fine = pc.n, n_previous = 0;
            double ratio_previous = 0;
            bool have_previous = false;
            rule_integral<T> coarse = rule_on(pc.a, pc.b, n_coarse), fine = rule_on(pc.a, pc.b, n_fine);
            std::vector<T> est(C);
            for (;;) {
                double ratio = 0;
                bool ok = true;
                auto compare = [&](const T& err, const T& tol) {
                    if (!(err <= tol)) ok = false;
                    ratio = std::max(ratio, tol > T(0) ? scalar_traits<T>::to_double(T(err / tol))
                                                       : (err > T(0) ? std::numeric_limits<double>::infinity() : 0.0));
                };
                // First the shares at their rounding level (010 §4), then the step's own term at its
                // own (012 §8): |ΔĪ·Δ|_c ≤ τ·u·Σ_p|Ī_p·Δ_p| (forward mode: τ·u·t_c(|Δ|)), however
                // much the shares cancel in Δ.
                for (std::size_t c = 0; c < C && vectors > 0; ++c) {  // Σ_k |ΔĪ·v_k|; Σ_k ΔĪ·v_k = ΔĪ·Δ
                    T e(0), d(0);
                    for (std::size_t k = 0; k < W; ++k) {
                        const T diff = fine.ibar[c * W + k] - coarse.ibar[c * W + k];
                        e += rm::abs(diff);
                        d += diff;
                    }
                    compare(e, T(T(tau) * u * T(fine.tangent[c])));
                    compare(rm::abs(d), T(T(tau) * u * T(fine.step_tangent[c])));
                    est[c] = std::move(e);
                }
                for (std::size_t c = 0; c < C && vectors == 0; ++c) {
                    T e(0), d(0), v(0);
                    for (std::size_t p = 0; p < P; ++p) {
                        const T diff = fine.ibar[c * P + p] - coarse.ibar[c * P + p];
                        e += rm::abs(diff) * T(s[p]);
                        d += diff * delta[p];
                        v += rm::abs(T(fine.ibar[c * P + p] * delta[p]));
                    }
                    compare(e, T(T(tau) * u * T(fine.tangent[c])));
                    compare(rm::abs(d), T(T(tau) * u * v));
                    est[c] = std::move(e);
                }
                bool keep = ok;
                if (!ok) {
                    const std::size_t next = detail::ladder_next_size(ratio, have_previous, ratio_previous, n_previous, n_coarse, n_fine);
                    const bool room = ps.evaluations + next <= qo.max_evaluations;
                    if (next <= qo.max_nodes && room) {
                        have_previous = true;
                        n_previous = n_coarse;
                        ratio_previous = ratio;
                        n_coarse = n_fine;
                        coarse = std::move(fine);
                        n_fine = next;
                        fine = rule_on(pc.a, pc.b, n_fine);
                        continue;
                    }
                    if (pc.depth >= qo.max_depth || !room) {  // no finer rule allowed: the last one, its estimate
                        ps.converged = false;
                        keep = true;
                    } else {
                        const T mid = (pc.a + pc.b) / T(2);
                        const std::size_t n0 = std::max<std::size_t>(2, qo.first_nodes);
                        todo.push_back({mid, pc.b, pc.depth + 1, n0});
                        todo.push_back({pc.a, mid, pc.depth + 1, n0});
                    }
                }
                if (keep) {
                    for (std::size_t e = 0; e < out.ibar.size(); ++e) out.ibar[e] += fine.ibar[e];
                    for (std::size_t c = 0; c < C; ++c) {
                        out.magnitude[c] += fine.magnitude[c];
                        if (vectors > 0) out.step_tangent[c] += fine.step_tangent[c];
                        ps.estimate_by_output[c] += est[c];
                    }
                    out.scale = rm::max(out.scale, fine.scale);
                    ps.nodes += n_fine;
                    accepted = std::max(accepted, n_fine);
                    margin = margin && ok && ratio <= 0x1p-20;
                }
                break;
            }
        }
        bool ok = true;
        for (std::size_t c = 0; c < C; ++c) {
            T v(0), scale = rm::abs(f0(0, c)) + rm::abs(f1(0, c));
            if (vectors > 0) {
                for (std::size_t k = 0; k < W; ++k) v += out.ibar[c * W + k];
                scale += T(out.step_tangent[c]);
            } else {
                for (std::size_t p = 0; p < P; ++p) {
                    const T t = out.ibar[c * P + p] * delta[p];
                    v += t;
                    scale += rm::abs(t);
                }
            }
            mismatch[c] = rm::abs(T(v - T(f1(0, c) - f0(0, c))));
            if (!(mismatch[c] <= T(tau) * u * scale)) ok = false;
        }
        if (ok) break;
        if (parts >= 64) {
            ps.converged = false;
            for (std::size_t c = 0; c < C; ++c) ps.estimate_by_output[c] += mismatch[c];
            break;
        }
    }
    start = margin ? std::max<std::size_t>(2, accepted - 1) : std::max<std::size_t>(2, accepted);
    return out;
}

// What a step's test side needs of the whole run (compute_path_kernel_structured_tree and
// optimizer runs of tree models).
template <Real T>
struct step_context {
    const path_kernel_request<T>* rq;
    const segment_structure* st;
    const layer_tree* tree;
    const tree_segment::analysis* an;
    bool has_norm;
    std::span<const T> w, delta;
    std::span<const double> abs_plus, abs_delta;  // |w| + |Δ|, |Δ|
    std::span<const double> share_scale;         // the ladder's s (010 §1), when `ladder`
    bool ladder;
};

// Ī, its magnitude (with `abs_scale` for |Δ|) and max |J| on one rule at test point mm.
template <Real T>
rule_integral<T> integrate_rule(const step_context<T>& sc, std::size_t mm, std::span<const T> nodes,
                                std::span<const T> weights, std::span<const double> abs_scale, gemm_counter* ctr,
                                double& elementwise) {
    const std::size_t C = sc.rq->problem->model.output_dim(), P = sc.w.size(), D0 = sc.rq->x_test.cols;
    rule_integral<T> ri;
    ri.ibar.assign(C * P, T(0));
    ri.magnitude.assign(C, 0.0);
    ri.tangent.assign(C, 0.0);
    block_context<T> cx;
    cx.w = sc.w;
    cx.delta = sc.delta;
    cx.abs_plus = sc.abs_plus;
    cx.abs_delta = abs_scale;
    cx.row_magnitudes = sc.has_norm;
    cx.C = C;
    cx.P = P;
    cx.ibar = &ri.ibar;
    cx.magnitude = &ri.magnitude;
    cx.tangent = &ri.tangent;
    cx.scale = &ri.scale;
    cx.ctr = ctr;
    cx.elementwise = &elementwise;
    const std::size_t Q = nodes.size();
    for (std::size_t r0 = 0; r0 < Q; r0 += block_rows) {
        const std::size_t r1 = std::min(Q, r0 + block_rows);
        cx.R = r1 - r0;
        cx.t = nodes.subspan(r0, r1 - r0);
        cx.omega = weights.subspan(r0, r1 - r0);
        matrix<T> xr(cx.R, D0);
        for (std::size_t r = 0; r < cx.R; ++r)
            for (std::size_t j = 0; j < D0; ++j) xr(r, j) = sc.rq->x_test(mm, j);
        integrate_block<T>(*sc.tree, sc.an, cx, xr);
    }
    return ri;
}

// Test point mm's Ī_s (C × P) on its rule — the smooth ladder (ladder_point) or segment_rule's —
// with ps's counters, magnitude and estimate (`scale_l1` weighs the cut-location term).
template <Real T>
std::vector<T> point_integral(const step_context<T>& sc, std::size_t mm, std::size_t& start, const T& scale_l1,
                              detail::point_step<T>& ps, gemm_counter* ctr, double& elementwise) {
    const model_spec& model = sc.rq->problem->model;
    const matrix<T> x1 = gather_rows(sc.rq->x_test, std::vector<std::size_t>{mm});
    auto integrate = [&](std::span<const T> nodes, std::span<const T> weights, std::span<const double> abs_scale) {
        return integrate_rule<T>(sc, mm, nodes, weights, abs_scale, ctr, elementwise);
    };
    if (sc.ladder) {
        rule_integral<T> ri = ladder_point<T>(model, *sc.st, sc.w, sc.delta, x1, sc.rq->quadrature, sc.share_scale, start,
                                              integrate, ps);
        ps.magnitude = std::move(ri.magnitude);
        // A cut misplaced by δ changes Ī by at most δ·|J(t*+) − J(t*−)| ≤ 2δ·max|J| per entry.
        for (T& e : ps.estimate_by_output) e += T(2) * ri.located * ri.scale * scale_l1;
        return std::move(ri.ibar);
    }
    const step_rule<T> rule = segment_rule<T>(model, *sc.st, sc.w, sc.delta, x1, sc.rq->quadrature);
    ps.cuts = rule.cuts;
    ps.evaluations = rule.evaluations;
    ps.nodes = rule.nodes.size();
    ps.converged = rule.converged;
    rule_integral<T> ri = integrate(rule.nodes, rule.weights, sc.abs_delta);
    ps.magnitude = std::move(ri.magnitude);
    // The per-point adaptive rule (kinks behind a smooth layer) carries its own estimate.
    ps.estimate = rule.estimate_is_final ? rule.error_estimate : T(T(2) * rule.located * ri.scale);
    return std::move(ri.ibar);
}

// Whether forward mode is worth it: precisions whose products have no fast kernel (everything
// but float and double, whose blocked reverse sweeps run at gemm speed).
template <Real T>
constexpr bool forward_mode_pays() {
    return !std::is_same_v<T, double> && !std::is_same_v<T, float>;
}

// Forward mode for few shares (012 §10): at every node t_q of a rule, J(x; w + t_qΔ)·v_k for the
// rows v_k of `vectors` [V × P] by tree_jvp (one forward-mode pass per vector: V passes instead
// of C reverse sweeps), summed with the weights; the magnitudes per node by tree_segment's pass,
// with s (the budget's and the first condition's) and with |Δ| (the second condition's).
template <Real T>
rule_integral<T> integrate_vectors(const step_context<T>& sc, const matrix<T>& x1, const matrix<T>& vectors,
                                   std::span<const T> nodes, std::span<const T> weights, std::span<const double> abs_scale) {
    const std::size_t C = sc.rq->problem->model.output_dim(), V = vectors.rows, P = sc.w.size();
    rule_integral<T> ri;
    ri.ibar.assign(C * V, T(0));
    ri.magnitude.assign(C, 0.0);
    ri.tangent.assign(C, 0.0);
    ri.step_tangent.assign(C, 0.0);
    std::vector<double> x(x1.cols), wd(P);
    for (std::size_t j = 0; j < x1.cols; ++j) x[j] = scalar_traits<T>::to_double(x1(0, j));
    for (std::size_t q = 0; q < nodes.size(); ++q) {
        const std::vector<T> wt = detail::point_on_segment<T>(sc.w, sc.delta, nodes[q]);
        for (std::size_t k = 0; k < V; ++k) {
            const matrix<T> jv = tree_jvp<T>(*sc.tree, std::span<const T>(wt), x1, std::span<const T>(&vectors(k, 0), P)).second;
            for (std::size_t c = 0; c < C; ++c) add_product(ri.ibar[c * V + k], weights[q], jv(0, c));
        }
        for (std::size_t e = 0; e < P; ++e) wd[e] = scalar_traits<T>::to_double(wt[e]);
        std::vector<double> jt, jtd;
        const std::vector<double> jm = tree_segment::jacobian_magnitude(*sc.an, wd, x, abs_scale, &jt);
        tree_segment::jacobian_magnitude(*sc.an, wd, x, sc.abs_delta, &jtd);
        const double wq = std::abs(scalar_traits<T>::to_double(weights[q]));
        for (std::size_t c = 0; c < C; ++c) {
            ri.magnitude[c] += wq * jm[c];
            ri.tangent[c] += wq * jt[c];
            ri.step_tangent[c] += wq * jtd[c];
        }
    }
    return ri;
}

// Test point mm's Ī_s·v_k [C × V] on the smooth ladder in forward mode, or nothing when the
// step has cuts there (the caller integrates Ī instead).
template <Real T>
std::optional<std::vector<T>> point_vectors(const step_context<T>& sc, std::size_t mm, const matrix<T>& vectors,
                                            std::size_t& start, detail::point_step<T>& ps) {
    const matrix<T> x1 = gather_rows(sc.rq->x_test, std::vector<std::size_t>{mm});
    auto integrate = [&](std::span<const T> nodes, std::span<const T> weights, std::span<const double> abs_scale) {
        return integrate_vectors<T>(sc, x1, vectors, nodes, weights, abs_scale);
    };
    bool refused = false;
    std::size_t tried = start;
    rule_integral<T> ri = ladder_point<T>(sc.rq->problem->model, *sc.st, sc.w, sc.delta, x1, sc.rq->quadrature,
                                          sc.share_scale, tried, integrate, ps, vectors.rows, &refused);
    if (refused) return std::nullopt;
    start = tried;
    ps.magnitude = std::move(ri.magnitude);
    return std::move(ri.ibar);
}

}  // namespace structured_tree

// compute_path_kernel_structured for a tree model (see the header comment).
template <Real T>
path_kernel_result<T> compute_path_kernel_structured_tree(const path_kernel_request<T>& rq,
                                                          const std::function<void(std::size_t, std::size_t)>& progress = {}) {
    detail::validate_request<T>(rq);
    detail::require_plain_sgd<T>(rq);
    const training_problem<T>& pr = *rq.problem;
    const model_spec& model = pr.model;
    const sgd_schedule& sch = rq.schedule;
    if constexpr (std::is_same_v<T, double>) check_gemm_fast_supported();
    const segment_structure st = analyse_segment_structure(model);
    const layer_tree tree = compile_tree(model);
    const tree_segment::analysis an = tree_segment::analyse(model);
    const bool has_norm = structured_tree::needs_row_magnitudes(tree);
    path_kernel_result<T> res = detail::start_result<T>(rq);
    const std::size_t M = res.m, N = res.n, C = res.c, P = res.p;
    std::vector<matrix<T>> x_rows;
    for (std::size_t mm = 0; mm < M; ++mm) x_rows.push_back(gather_rows(rq.x_test, std::vector<std::size_t>{mm}));

    matrix<T> kernel_sum(rq.store_contributions ? 0 : M, C);
    std::vector<T> w = rq.w0;
    std::size_t next_kernel = 0;
    std::vector<std::size_t> rule_nodes(M, 0);
    std::vector<char> converged(M, 1);
    const quadrature_options& qo = rq.quadrature;
    const bool ladder = !st.piecewise_linear && !st.kinks_behind_smooth && qo.fixed_nodes == 0 &&
                        qo.composite == quadrature_options::simple_rule::none;
    std::vector<std::size_t> ladder_start(M);
    detail::point_sink<T> sink(rq, M, true);  // plain SGD: whole step blocks may be dealt
    for (std::size_t s = 0; s < sch.steps; ++s) {
        if (detail::point_sink<T>::block_starts(s)) std::fill(ladder_start.begin(), ladder_start.end(), qo.first_nodes > 3 ? qo.first_nodes - 1 : 2);
        if (!sink.takes_step(s)) {  // another rank's block (point_sink): follow the path only
            sink.skip_step(s, w, res, next_kernel, progress);
            sink.after_step(s, res, kernel_sum, rule_nodes, converged);
            continue;
        }
        // The training side, as the unstructured path: a_{i,s}, g_{i,s} (one vjp per row), Σ_i g_{i,s}.
        const detail::step_start<T> st0 = detail::begin_step<T>(rq, w, s, res);
        const std::vector<std::size_t>& batch = st0.batch;
        const std::size_t b = batch.size();
        const detail::step_gradients<T> grads = detail::training_gradients<T>(rq, w, st0, s, res);
        const matrix<T>& g = grads.g;
        const std::vector<T>& g_sum = grads.sum;
        double deviation = 0;
        std::vector<T> w_next = detail::next_point<T>(rq, w, st0.fp, st0.grad_out, st0.eta, s, deviation);
        detail::step_difference<T> sd = detail::difference_of_step<T>(w, w_next, g_sum, s, res, deviation);
        const std::span<const T> delta(sd.delta), rem(sd.rem), wv(w);
        std::vector<double> abs_plus(P), abs_delta(P);
        for (std::size_t q = 0; q < P; ++q) {
            abs_delta[q] = std::abs(scalar_traits<T>::to_double(sd.delta[q]));
            abs_plus[q] = std::abs(scalar_traits<T>::to_double(w[q])) + abs_delta[q];
        }
        const bool store_kernel = next_kernel < rq.kernel_steps.size() && rq.kernel_steps[next_kernel] == s;
        matrix<T> jac_train;  // [(b·C) × P]: J(x_i)[d] rows
        std::vector<T> kernel;
        if (store_kernel) {
            jac_train = matrix<T>(b * C, P);
            for (std::size_t k = 0; k < b; ++k) {
                const matrix<T> jk = jacobian<T>(model, w, gather_rows(pr.x, std::span<const std::size_t>(&batch[k], 1)));
                std::copy(jk.data.begin(), jk.data.end(), jac_train.data.begin() + static_cast<std::ptrdiff_t>(k * C * P));
            }
            kernel.assign(M * N * C * C, T(0));
        }

        std::vector<double> point_contribution(M, 0.0);
        std::vector<gemm_counter> counters(M);
        std::vector<double> elementwise(M, 0.0);
        // The smooth ladder (proofs-notes/010 §1, per test point here): rules compared through
        // the shares' scale s = Σ_i |g_i| + |r| (≥ |Δ|), which also scales the magnitudes.
        std::vector<double> share_scale;
        if (ladder) {
            share_scale.assign(P, 0.0);
            for (std::size_t k = 0; k < b; ++k)
                for (std::size_t q = 0; q < P; ++q) share_scale[q] += std::abs(scalar_traits<T>::to_double(g(k, q)));
            for (std::size_t q = 0; q < P; ++q) share_scale[q] += std::abs(scalar_traits<T>::to_double(sd.rem[q]));
        }
        const structured_tree::step_context<T> scx{&rq, &st, &tree, &an, has_norm, wv, delta, abs_plus, abs_delta,
                                                   share_scale, ladder};
        // Verify in a precision without fast products: the step's two shares (Σ_i g_i, r) by forward
        // mode at the nodes instead of Ī by C reverse sweeps (proofs-notes/012 §10).
        const bool forward = structured_tree::forward_mode_pays<T>() && ladder && has_norm && !rq.store_contributions &&
                             !store_kernel && rq.split_layers.empty() && !rq.split_steps && 4 <= C;
        matrix<T> vectors(forward ? 2 : 0, P);
        if (forward) {
            std::copy(g_sum.begin(), g_sum.end(), vectors.data.begin());
            std::copy(sd.rem.begin(), sd.rem.end(), vectors.data.begin() + static_cast<std::ptrdiff_t>(P));
        }
        auto process_point = [&](std::size_t mm) {
            if (!sink.owns(s, mm)) return;
            detail::point_step<T> ps;
            if (forward) {
                if (std::optional<std::vector<T>> v = structured_tree::point_vectors<T>(scx, mm, vectors, ladder_start[mm], ps)) {
                    ps.contribution.resize(C);  // the batch's sum as one column (no per-point contributions kept)
                    ps.remainder.resize(C);
                    for (std::size_t c = 0; c < C; ++c) {
                        ps.contribution[c] = (*v)[c * 2];
                        ps.remainder[c] = (*v)[c * 2 + 1];
                    }
                    sink.take(std::vector<std::size_t>{batch[0]}, mm, ps, sd.delta_l1, res, kernel_sum, rule_nodes, converged,
                              point_contribution[mm]);
                    return;
                }
                ps = detail::point_step<T>();
            }
            std::vector<T> ibar =
                structured_tree::point_integral<T>(scx, mm, ladder_start[mm], sd.delta_l1, ps, &counters[mm], elementwise[mm]);
            // Contractions with the training side: C × b, C × 1 and (stored steps) C × b·C products.
            matrix<T> contrib(C, b), rr(C, 1);
            gemm<T>(true, C, b, P, ibar.data(), P, g.data.data(), P, contrib.data.data(), b, false, &counters[mm]);
            gemm<T>(true, C, 1, P, ibar.data(), P, rem.data(), P, rr.data.data(), 1, false, &counters[mm]);
            ps.contribution = std::move(contrib.data);
            ps.remainder = std::move(rr.data);
            if (store_kernel) {
                matrix<T> kt(C, b * C);
                gemm<T>(true, C, b * C, P, ibar.data(), P, jac_train.data.data(), P, kt.data.data(), b * C, false,
                        &counters[mm]);
                for (std::size_t k = 0; k < b; ++k)
                    for (std::size_t c = 0; c < C; ++c)
                        for (std::size_t dd = 0; dd < C; ++dd)
                            kernel[((mm * N + batch[k]) * C + c) * C + dd] = kt(c, k * C + dd);
            }
            sink.take(batch, mm, ps, sd.delta_l1, res, kernel_sum, rule_nodes, converged, point_contribution[mm]);
        };
        detail::for_each_point_t<T>(M, rq.threads, process_point);
        for (std::size_t mm = 0; mm < M; ++mm) {
            res.gemm_flops += counters[mm].flops;
            res.gemm_seconds += counters[mm].seconds;
            res.elementwise_madds += elementwise[mm];
        }
        sink.end_of_step(s, sd, store_kernel, kernel, res);
        detail::end_step<T>(sd, point_contribution, store_kernel, kernel, s, next_kernel, w, w_next, res, progress);
        sink.after_step(s, res, kernel_sum, rule_nodes, converged);
    }
    detail::finish_result<T>(rq, w, kernel_sum, rule_nodes, converged, x_rows, res);
    return res;
}

}  // namespace epk

// epk/structured_kernel.hpp — the exact path kernel by per-layer factors and
// dense products (design.md §4), the default path of compute_path_kernel for
// MLPs; tree models (conv, pooling, residual, layer norm) take
// structured_tree.hpp's, which compute_path_kernel below dispatches to.
//
// For a dense layer l with input h_l and output z_l = W_l h_l + b_l, the
// Jacobian is a sum of outer products (network.hpp, layer_factors):
// ∂f_c/∂W_l[r][j] = δ_l[c][r]·h_l[j], ∂f_c/∂b_l[r] = δ_l[c][r].  So with
//   test side  (x, node t_q):   D_l(x, q) = δ_l(x; w_s(t_q))  [C × out_l],  h_l(x, q)  [in_l]
//   train side (x_i at w[s]):   e_{l,i} = δ_l(x_i; w[s])ᵀ a_{i,s}  [out_l],   h_{l,i}  [in_l]
// every quantity of path_kernel.hpp is a contraction of factors:
//   K_s(x, x_i) a_{i,s}   = Σ_q ω_q Σ_l (D_l(x,q) e_{l,i}) · (h_l(x,q)·h_{l,i} + [bias])
//   K_s(x, x_i)[c][d]     = Σ_q ω_q Σ_l (D_l(x,q)[c]·δ_l(x_i)[d]) · (h_l(x,q)·h_{l,i} + [bias])
//   Ī_s(x) r_s            = Σ_q ω_q Σ_l D_l(x,q) (R_l h_l(x,q) + r_{b,l})      (r_s in layer blocks)
// and each is a GEMM over many test rows (x, q) and training rows i at once,
// with inner dimensions the layer widths instead of P.  No C × P matrix is
// formed: smooth networks choose their adaptive rules through the same products
// (ladder_chunk, proofs-notes/010), and runs with momentum, weight decay or Adam
// contract their per-point shares through the factors (optimizer_step_structured).
//
// What is computed how (and therefore what is bit-for-bit identical to what):
//  * the training side — forward pass, coefficients a_{i,s}, adjoints e_{l,i},
//    the summed gradient Σ_i g_{i,s} and so r_s — uses the reference order
//    (gemm_reference): bit-identical to the unstructured path and the trainer;
//  * the test side — the factors at the nodes (forward with
//    W + tΔW = W·h + t·(ΔW·h), backward with C adjoint rows) and the
//    contractions — uses gemm<T>: Eigen in double (fused multiply-adds,
//    blocked sums), the reference order in every other type;
//  * test points are processed in fixed chunks of `chunk_points`, rows in
//    fixed blocks of at most `block_rows`, so results do not depend on the
//    number of threads.
// The two paths agree to rounding (tests/test_structured.cpp); the budget of
// proofs-notes/004 §5 covers both (proofs-notes/006).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <memory>
#include <optional>
#include <functional>
#include <span>
#include <type_traits>
#include <vector>

#include "epk/gemm.hpp"
#include "epk/path_kernel.hpp"
#include "epk/structured_tree.hpp"

namespace epk {

namespace structured {

inline constexpr std::size_t chunk_points = 8;  // test points per work item
inline constexpr std::size_t ladder_chunk_points = 16;  // the smooth ladder's (rows stacked per chunk)
inline constexpr std::size_t block_rows = 256;  // test rows (point, node) per product
// A chunk lies in one unit of a split computation (work_split.hpp).
static_assert(split_chunk_points % chunk_points == 0 && split_chunk_points % ladder_chunk_points == 0);

// Values of a batch of rows through the network, row r at w + t_r Δ (no t: at w).
template <Real T>
struct batch_pass {
    std::vector<matrix<T>> values;  // values[k] = input of layer k (values[0] = x), values.back() = outputs
    std::vector<matrix<T>> derivs;  // derivs[k] = σ′(values[k]) for an activation layer k (empty for linear)
};

// z = W·h (+ t·(ΔW·h)) + b (+ t·Δb), row by row; `fast`: gemm<T>, else the reference order
// (then, without t, bit-identical to network.hpp's forward()).
template <Real T>
batch_pass<T> forward_rows(const model_spec& m, const std::vector<linear_offsets>& offs, std::span<const T> w,
                           std::span<const T> delta, std::span<const T> t, matrix<T> x, bool fast,
                           gemm_counter* ctr) {
    batch_pass<T> bp;
    const std::size_t rows = x.rows;
    bp.values.push_back(std::move(x));
    bp.derivs.resize(m.layers.size());
    std::size_t li = 0;
    for (std::size_t k = 0; k < m.layers.size(); ++k) {
        const matrix<T>& h = bp.values.back();
        const layer_spec& l = m.layers[k];
        if (l.kind == layer_kind::linear) {
            const linear_offsets& o = offs[li++];
            matrix<T> z(rows, o.out);
            if (fast) gemm<T>(true, rows, o.out, o.in, h.data.data(), o.in, w.data() + o.weight, o.in, z.data.data(), o.out, false, ctr);
            else gemm_reference<T>(true, rows, o.out, o.in, h.data.data(), o.in, w.data() + o.weight, o.in, z.data.data(), o.out, false);
            if (!t.empty()) {
                matrix<T> dz(rows, o.out);
                if (fast) gemm<T>(true, rows, o.out, o.in, h.data.data(), o.in, delta.data() + o.weight, o.in, dz.data.data(), o.out, false, ctr);
                else gemm_reference<T>(true, rows, o.out, o.in, h.data.data(), o.in, delta.data() + o.weight, o.in, dz.data.data(), o.out, false);
                for (std::size_t r = 0; r < rows; ++r)
                    for (std::size_t c = 0; c < o.out; ++c) {
                        // z = W h + t·(ΔW h) + (b + t·Δb)
                        add_product(z(r, c), t[r], dz(r, c));
                        if (o.has_bias) {
                            T b = w[o.bias + c];
                            add_product(b, t[r], delta[o.bias + c]);
                            z(r, c) += b;
                        }
                    }
            } else if (o.has_bias) {
                for (std::size_t r = 0; r < rows; ++r)
                    for (std::size_t c = 0; c < o.out; ++c) z(r, c) += w[o.bias + c];
            }
            bp.values.push_back(std::move(z));
        } else {
            const activation<T> act(l);
            matrix<T> y(rows, h.cols), d(rows, h.cols);
            for (std::size_t e = 0; e < h.data.size(); ++e) {
                y.data[e] = act.value(h.data[e]);
                d.data[e] = act.derivative_given_value(h.data[e], y.data[e]);
            }
            bp.derivs[k] = std::move(d);
            bp.values.push_back(std::move(y));
        }
    }
    return bp;
}

// Reverse mode for `per_row` adjoint rows per batch row: adj [(rows·per_row) × C] at the
// outputs; returns, per linear layer, the adjoint of its output z_l [(rows·per_row) × out_l].
// Through a linear layer: adj·W (+ t·(adj·ΔW)); through an activation: adj ⊙ σ′.
template <Real T>
std::vector<matrix<T>> backward_rows(const model_spec& m, const std::vector<linear_offsets>& offs,
                                     std::span<const T> w, std::span<const T> delta, std::span<const T> t,
                                     const batch_pass<T>& bp, matrix<T> adj, std::size_t per_row, bool fast,
                                     gemm_counter* ctr) {
    std::vector<matrix<T>> out(offs.size());
    std::size_t li = offs.size();
    const std::size_t n = adj.rows;
    for (std::size_t k = m.layers.size(); k-- > 0;) {
        const layer_spec& l = m.layers[k];
        if (l.kind == layer_kind::linear) {
            const linear_offsets& o = offs[--li];
            if (li == 0) {  // nothing below needs an adjoint
                out[li] = std::move(adj);
                break;
            }
            matrix<T> prev(n, o.in);
            if (fast) gemm<T>(false, n, o.in, o.out, adj.data.data(), o.out, w.data() + o.weight, o.in, prev.data.data(), o.in, false, ctr);
            else gemm_reference<T>(false, n, o.in, o.out, adj.data.data(), o.out, w.data() + o.weight, o.in, prev.data.data(), o.in, false);
            if (!t.empty()) {
                matrix<T> dprev(n, o.in);
                if (fast) gemm<T>(false, n, o.in, o.out, adj.data.data(), o.out, delta.data() + o.weight, o.in, dprev.data.data(), o.in, false, ctr);
                else gemm_reference<T>(false, n, o.in, o.out, adj.data.data(), o.out, delta.data() + o.weight, o.in, dprev.data.data(), o.in, false);
                for (std::size_t r = 0; r < n; ++r)
                    for (std::size_t j = 0; j < o.in; ++j) add_product(prev(r, j), t[r / per_row], dprev(r, j));
            }
            out[li] = std::move(adj);
            adj = std::move(prev);
        } else {
            // adj_h = σ′(h) ⊙ adj
            const matrix<T>& d = bp.derivs[k];
            for (std::size_t r = 0; r < n; ++r)
                for (std::size_t j = 0; j < adj.cols; ++j) adj(r, j) = d(r / per_row, j) * adj(r, j);
        }
    }
    return out;
}

// The training side of one step at w[s]: per linear layer the batch's inputs
// h_{l,i} [b × in_l] and adjoints e_{l,i} = δ_l(x_i)ᵀ a_{i,s} [b × out_l]; for a
// stored kernel step also δ_l(x_i) itself [(b·C) × out_l].
template <Real T>
struct training_side {
    std::vector<matrix<T>> input, adjoint, delta;
};

// |W| + |ΔW|, |ΔW|, |b| + |Δb|, |Δb| per linear layer, in binary64 (the rounding scale).
// With `shares` (the smooth ladder's tolerance): Σ_i |g_{i,s}| + |r_s| per layer, the
// scale of the contracted quantities' rounding (abs_sw, abs_sb).
struct step_magnitudes {
    std::vector<matrix<double>> abs_w_plus, abs_dw, abs_sw;
    std::vector<std::vector<double>> abs_b_plus, abs_db, abs_sb;
};

template <Real T>
step_magnitudes make_step_magnitudes(const std::vector<linear_offsets>& offs, std::span<const T> w,
                                     std::span<const T> delta) {
    auto d = [](const T& v) { return std::abs(scalar_traits<T>::to_double(v)); };
    step_magnitudes sm;
    for (const linear_offsets& o : offs) {
        matrix<double> wp(o.out, o.in), dw(o.out, o.in);
        for (std::size_t e = 0; e < o.out * o.in; ++e) {
            dw.data[e] = d(delta[o.weight + e]);
            wp.data[e] = d(w[o.weight + e]) + dw.data[e];
        }
        std::vector<double> bp(o.out, 0.0), db(o.out, 0.0);
        if (o.has_bias)
            for (std::size_t q = 0; q < o.out; ++q) {
                db[q] = d(delta[o.bias + q]);
                bp[q] = d(w[o.bias + q]) + db[q];
            }
        sm.abs_w_plus.push_back(std::move(wp));
        sm.abs_dw.push_back(std::move(dw));
        sm.abs_b_plus.push_back(std::move(bp));
        sm.abs_db.push_back(std::move(db));
    }
    return sm;
}

// Per test point of a chunk: the step's sums.
template <Real T>
struct point_sums {
    std::vector<T> contribution;  // [C][b]: K_s(x, x_i) a_{i,s} for batch row i
    std::vector<T> kernel;        // [b][C][C] (stored kernel steps only)
    std::vector<T> remainder;     // [C]: Ī_s(x) r_s
    std::vector<double> magnitude;  // [C]: Σ_q |ω_q| Σ_p |J|_mag[c][p]·|Δ_p| (binary64)
    std::vector<double> share_magnitude;  // [C]: the same with Σ_i |g_i| + |r| for |Δ| (smooth ladder)
    T scale = T(0);               // max |J| entry over the nodes
    // Dense mode (optimizer runs): Ī itself, C × P, from the rows' factors — ω_q, and per
    // linear layer δ_l [C × out_l] and h_l [in_l] of each row, appended (finish_dense).
    matrix<T> integral;
    std::vector<T> vector_out;  // vector mode: [C][K], Ī·v_k for the rows of `vectors`
    std::vector<T> rows_omega;
    std::vector<std::vector<T>> rows_D, rows_H;
};

// Ī += Σ_rows ω_q δ_l(q)ᵀ ⊗ h_l(q) (+ ω_q δ_l(q) for the bias) from the rows kept in `ps`,
// one product per layer and output: [out × n]·[n × in].  The rows are then dropped.
template <Real T>
void finish_dense(const std::vector<linear_offsets>& offs, std::size_t C, std::size_t P, point_sums<T>& ps,
                  gemm_counter* ctr) {
    if (ps.integral.data.empty()) ps.integral = matrix<T>(C, P);
    const std::size_t n = ps.rows_omega.size();
    for (std::size_t l = 0; l < offs.size() && n > 0; ++l) {
        const linear_offsets& o = offs[l];
        std::vector<T> a(o.out * n);  // a[q][r] = ω_r δ_l(r)[c][q], one output c at a time
        for (std::size_t c = 0; c < C; ++c) {
            for (std::size_t r = 0; r < n; ++r) {
                const T* d = &ps.rows_D[l][(r * C + c) * o.out];
                for (std::size_t q = 0; q < o.out; ++q) a[q * n + r] = ps.rows_omega[r] * d[q];
            }
            gemm<T>(false, o.out, o.in, n, a.data(), n, ps.rows_H[l].data(), o.in, &ps.integral(c, o.weight), o.in, true, ctr);
            if (o.has_bias)
                for (std::size_t q = 0; q < o.out; ++q) {
                    T acc(0);
                    for (std::size_t r = 0; r < n; ++r) acc += a[q * n + r];
                    ps.integral(c, o.bias + q) += acc;
                }
        }
    }
    ps.rows_omega.clear();
    ps.rows_D.clear();
    ps.rows_H.clear();
}

// Rows whose contributions are contracted later, all at once (evaluate_rows): per linear
// layer their inputs h_l [rows × in_l] and adjoints D_l [(rows·C) × out_l], appended.
template <Real T>
struct contraction_stack {
    std::vector<std::vector<T>> H, D;
    std::vector<T> omega;
    std::vector<point_sums<T>*> target;
};

// One block of test rows; each row's sums are added into its target, rows ascending.
//
// Row r's sums go to *target[r].  Rows at their own nodes t[r] take W·h + t·(ΔW·h); rows
// that all share one node (the smooth ladder's) pass that node's parameters w_node =
// w + tΔ instead (t empty): one product per layer instead of two.
template <Real T>
void contract_block(const model_spec& m, const std::vector<linear_offsets>& offs, std::span<const T> w,
                    std::span<const T> delta, std::span<const T> rem, const training_side<T>& train,
                    const step_magnitudes& mag, const matrix<T>& x_rows, std::span<const T> t,
                    std::span<const T> omega, std::span<point_sums<T>* const> target, std::span<const T> w_node,
                    bool with_kernel, gemm_counter* ctr, double& elementwise, bool dense = false,
                    const matrix<T>* vectors = nullptr, contraction_stack<T>* stack = nullptr) {
    const std::size_t R = x_rows.rows, C = m.output_dim(), L = offs.size();
    const std::size_t b = train.input.empty() ? 0 : train.input[0].rows;
    const std::span<const T> wf = w_node.empty() ? w : w_node;
    const batch_pass<T> bp = forward_rows<T>(m, offs, wf, delta, t, x_rows, true, ctr);
    matrix<T> seed(R * C, C);
    for (std::size_t r = 0; r < R; ++r)
        for (std::size_t c = 0; c < C; ++c) seed(r * C + c, c) = T(1);
    const std::vector<matrix<T>> D = backward_rows<T>(m, offs, wf, delta, t, bp, std::move(seed), C, true, ctr);
    // Inputs of each linear layer within bp.values.
    std::vector<const matrix<T>*> H(L);
    {
        std::size_t li = 0;
        for (std::size_t k = 0; k < m.layers.size(); ++k)
            if (m.layers[k].kind == layer_kind::linear) H[li++] = &bp.values[k];
    }
    // max |J| entry per row: max_l max|δ_l| · max(max|h_l|, 1 if bias).
    for (std::size_t r = 0; r < R; ++r) {
        point_sums<T>& ps = *target[r];
        for (std::size_t l = 0; l < L; ++l) {
            T hmax = offs[l].has_bias ? T(1) : T(0), dmax(0);
            for (std::size_t j = 0; j < offs[l].in; ++j) max_abs_into(hmax, (*H[l])(r, j));
            for (std::size_t e = r * C * offs[l].out; e < (r + 1) * C * offs[l].out; ++e) max_abs_into(dmax, D[l].data[e]);
            max_abs_into(ps.scale, T(dmax * hmax));
        }
    }
    if (dense) {  // the rows' factors, kept for their targets' integrals (finish_dense)
        for (std::size_t r = 0; r < R; ++r) {
            point_sums<T>& ps = *target[r];
            ps.rows_omega.push_back(omega[r]);
            ps.rows_D.resize(L);
            ps.rows_H.resize(L);
            for (std::size_t l = 0; l < L; ++l) {
                const std::size_t co = C * offs[l].out;
                ps.rows_D[l].insert(ps.rows_D[l].end(), D[l].data.begin() + static_cast<std::ptrdiff_t>(r * co),
                                    D[l].data.begin() + static_cast<std::ptrdiff_t>((r + 1) * co));
                const T* h = &(*H[l])(r, 0);
                ps.rows_H[l].insert(ps.rows_H[l].end(), h, h + offs[l].in);
            }
        }
    } else {
        std::vector<matrix<T>> hdot(L);  // h_l(r)·h_{l,i} (+ 1): the contributions' and the kernel's
        if (b > 0 && stack != nullptr && !with_kernel) {  // contracted later, with the other rows
            stack->H.resize(L);
            stack->D.resize(L);
            for (std::size_t l = 0; l < L; ++l) {
                stack->H[l].insert(stack->H[l].end(), H[l]->data.begin(), H[l]->data.end());
                stack->D[l].insert(stack->D[l].end(), D[l].data.begin(), D[l].data.end());
            }
            stack->omega.insert(stack->omega.end(), omega.begin(), omega.end());
            stack->target.insert(stack->target.end(), target.begin(), target.end());
        } else if (b > 0) {  // (none in the optimizer runs' modes)
            // Contributions: val[(r,c), i] = Σ_l (D_l e_{l,i})[(r,c)] · (h_l(r)·h_{l,i} + [bias]).
            matrix<T> val(R * C, b), ddot(R * C, b);
            for (std::size_t l = 0; l < L; ++l) {
                const linear_offsets& o = offs[l];
                hdot[l] = matrix<T>(R, b);
                gemm<T>(true, R, b, o.in, H[l]->data.data(), o.in, train.input[l].data.data(), o.in, hdot[l].data.data(), b, false, ctr);
                if (o.has_bias)
                    for (T& v : hdot[l].data) v += T(1);
                gemm<T>(true, R * C, b, o.out, D[l].data.data(), o.out, train.adjoint[l].data.data(), o.out, ddot.data.data(), b, false, ctr);
                for (std::size_t r = 0; r < R; ++r)
                    for (std::size_t c = 0; c < C; ++c) {
                        T* vr = &val(r * C + c, 0);
                        const T* dr = &ddot(r * C + c, 0);
                        const T* hr = &hdot[l](r, 0);
                        for (std::size_t i = 0; i < b; ++i) add_product(vr[i], dr[i], hr[i]);
                    }
                elementwise += static_cast<double>(R * C * b);
            }
            for (std::size_t r = 0; r < R; ++r) {
                point_sums<T>& ps = *target[r];
                for (std::size_t c = 0; c < C; ++c)
                    for (std::size_t i = 0; i < b; ++i) add_product(ps.contribution[c * b + i], omega[r], val(r * C + c, i));
            }
            elementwise += static_cast<double>(R * C * b);
        }
        if (!rem.empty()) {
            // Remainder term: Σ_l D_l (R_l h_l + r_b).
            for (std::size_t l = 0; l < L; ++l) {
                const linear_offsets& o = offs[l];
                matrix<T> rh(R, o.out);
                gemm<T>(true, R, o.out, o.in, H[l]->data.data(), o.in, rem.data() + o.weight, o.in, rh.data.data(), o.out, false, ctr);
                if (o.has_bias)
                    for (std::size_t r = 0; r < R; ++r)
                        for (std::size_t q = 0; q < o.out; ++q) rh(r, q) += rem[o.bias + q];
                for (std::size_t r = 0; r < R; ++r) {
                    point_sums<T>& ps = *target[r];
                    for (std::size_t c = 0; c < C; ++c) {
                        T acc(0);
                        const T* dr = &D[l](r * C + c, 0);
                        for (std::size_t q = 0; q < o.out; ++q) add_product(acc, dr[q], rh(r, q));
                        add_product(ps.remainder[c], omega[r], acc);
                    }
                }
                elementwise += static_cast<double>(R * C * o.out);
            }
        }
        // Dense vectors v_k (optimizer runs, vector mode): J(x; w_t)·v_k = Σ_l D_l (V_{k,l} h_l + v_{k,b}).
        if (vectors != nullptr) {
            const std::size_t K = vectors->rows;
            for (std::size_t l = 0; l < L; ++l) {
                const linear_offsets& o = offs[l];
                for (std::size_t k = 0; k < K; ++k) {
                    const T* v = &(*vectors)(k, 0);
                    matrix<T> rh(R, o.out);
                    gemm<T>(true, R, o.out, o.in, H[l]->data.data(), o.in, v + o.weight, o.in, rh.data.data(), o.out, false, ctr);
                    if (o.has_bias)
                        for (std::size_t r = 0; r < R; ++r)
                            for (std::size_t q = 0; q < o.out; ++q) rh(r, q) += v[o.bias + q];
                    for (std::size_t r = 0; r < R; ++r) {
                        point_sums<T>& ps = *target[r];
                        for (std::size_t c = 0; c < C; ++c) {
                            T acc(0);
                            const T* dr = &D[l](r * C + c, 0);
                            for (std::size_t q = 0; q < o.out; ++q) add_product(acc, dr[q], rh(r, q));
                            add_product(ps.vector_out[c * K + k], omega[r], acc);
                        }
                    }
                }
                elementwise += static_cast<double>(R * C * o.out * K);
            }
        }
        // Stored kernel step: K[i][c][d] = Σ_q ω_q Σ_l (D_l(q)[c]·δ_l(x_i)[d]) (h_l(q)·h_{l,i} + [bias]).
        if (with_kernel) {
            matrix<T> kt(R * C, b * C), kv(R * C, b * C);
            for (std::size_t l = 0; l < L; ++l) {
                const linear_offsets& o = offs[l];
                gemm<T>(true, R * C, b * C, o.out, D[l].data.data(), o.out, train.delta[l].data.data(), o.out, kt.data.data(), b * C, false, ctr);
                for (std::size_t r = 0; r < R; ++r)
                    for (std::size_t c = 0; c < C; ++c)
                        for (std::size_t i = 0; i < b; ++i)
                            for (std::size_t d = 0; d < C; ++d) add_product(kv(r * C + c, i * C + d), kt(r * C + c, i * C + d), hdot[l](r, i));
            }
            for (std::size_t r = 0; r < R; ++r) {
                point_sums<T>& ps = *target[r];
                for (std::size_t c = 0; c < C; ++c)
                    for (std::size_t i = 0; i < b; ++i)
                        for (std::size_t d = 0; d < C; ++d) add_product(ps.kernel[(i * C + c) * C + d], omega[r], kv(r * C + c, i * C + d));
            }
        }
    }
    // Rounding scale (binary64): the forward error magnitude M and the tangent
    // magnitude V along |Δ|, with |W + tΔW| ≤ |W| + |ΔW| (t ∈ [0, 1]):
    //   linear:     M ← (|W|+|ΔW|)(M + |h|) + |b| + |Δb|,  V ← (|W|+|ΔW|) V + |ΔW| (M + |h|) + |Δb|
    //   activation: M ← |σ′| M + |σ(z)|,                    V ← |σ′| V
    // V at the outputs is Σ_l δmag_l·(|ΔW_l|(M_h + |h_l|) + |Δb_l|) ≥ the unstructured path's magnitude.
    {
        auto d = [](const T& v) { return std::abs(scalar_traits<T>::to_double(v)); };
        const std::size_t D0 = x_rows.cols;
        const bool shares = !mag.abs_sw.empty();
        matrix<double> M(R, D0), V(R, D0), a(R, D0), V2(shares ? R : 0, D0);
        std::size_t li = 0;
        for (std::size_t k = 0; k < m.layers.size(); ++k) {
            const layer_spec& l = m.layers[k];
            const matrix<T>& h = bp.values[k];
            if (l.kind == layer_kind::linear) {
                const linear_offsets& o = offs[li];
                a = matrix<double>(R, o.in);
                for (std::size_t e = 0; e < a.data.size(); ++e) a.data[e] = M.data[e] + d(h.data[e]);
                matrix<double> mz(R, o.out), vz(R, o.out);
                gemm<double>(true, R, o.out, o.in, a.data.data(), o.in, mag.abs_w_plus[li].data.data(), o.in, mz.data.data(), o.out, false);
                gemm<double>(true, R, o.out, o.in, a.data.data(), o.in, mag.abs_dw[li].data.data(), o.in, vz.data.data(), o.out, false);
                if (li > 0) gemm<double>(true, R, o.out, o.in, V.data.data(), o.in, mag.abs_w_plus[li].data.data(), o.in, vz.data.data(), o.out, true);
                if (o.has_bias)
                    for (std::size_t r = 0; r < R; ++r)
                        for (std::size_t q = 0; q < o.out; ++q) {
                            mz(r, q) += mag.abs_b_plus[li][q];
                            vz(r, q) += mag.abs_db[li][q];
                        }
                if (shares) {  // V2 as V with Σ_i|g_i| + |r| in place of |Δ|
                    matrix<double> v2(R, o.out);
                    gemm<double>(true, R, o.out, o.in, a.data.data(), o.in, mag.abs_sw[li].data.data(), o.in, v2.data.data(), o.out, false);
                    if (li > 0) gemm<double>(true, R, o.out, o.in, V2.data.data(), o.in, mag.abs_w_plus[li].data.data(), o.in, v2.data.data(), o.out, true);
                    if (o.has_bias)
                        for (std::size_t r = 0; r < R; ++r)
                            for (std::size_t q = 0; q < o.out; ++q) v2(r, q) += mag.abs_sb[li][q];
                    V2 = std::move(v2);
                }
                M = std::move(mz);
                V = std::move(vz);
                ++li;
            } else {
                const matrix<T>& dv = bp.derivs[k];
                const matrix<T>& y = bp.values[k + 1];
                for (std::size_t e = 0; e < M.data.size(); ++e) {
                    const double s = d(dv.data[e]);
                    M.data[e] = s * M.data[e] + d(y.data[e]);
                    V.data[e] = s * V.data[e];
                    if (shares) V2.data[e] = s * V2.data[e];
                }
            }
        }
        for (std::size_t r = 0; r < R; ++r) {
            point_sums<T>& ps = *target[r];
            const double wq = d(omega[r]);
            for (std::size_t c = 0; c < C; ++c) ps.magnitude[c] += wq * V(r, c);
            if (shares)
                for (std::size_t c = 0; c < C; ++c) ps.share_magnitude[c] += wq * V2(r, c);
        }
    }
}

// The stacked rows' contributions: val[(r,c), i] = Σ_l (D_l e_{l,i})[(r,c)]·(h_l(r)·h_{l,i} + [bias]),
// contract_block's products for every row of the stack at once (taller, so nearer DGEMM's rate),
// each row's ω·val added into its target, rows in stack order.
template <Real T>
void contract_stack(const std::vector<linear_offsets>& offs, std::size_t C, const training_side<T>& train,
                    const contraction_stack<T>& st, gemm_counter* ctr, double& elementwise) {
    const std::size_t R = st.omega.size(), L = offs.size();
    const std::size_t b = train.input.empty() ? 0 : train.input[0].rows;
    if (R == 0 || b == 0) return;
    matrix<T> val(R * C, b), ddot(R * C, b), hdot(R, b);
    for (std::size_t l = 0; l < L; ++l) {
        const linear_offsets& o = offs[l];
        gemm<T>(true, R, b, o.in, st.H[l].data(), o.in, train.input[l].data.data(), o.in, hdot.data.data(), b, false, ctr);
        if (o.has_bias)
            for (T& v : hdot.data) v += T(1);
        gemm<T>(true, R * C, b, o.out, st.D[l].data(), o.out, train.adjoint[l].data.data(), o.out, ddot.data.data(), b, false, ctr);
        for (std::size_t r = 0; r < R; ++r)
            for (std::size_t c = 0; c < C; ++c) {
                T* vr = &val(r * C + c, 0);
                const T* dr = &ddot(r * C + c, 0);
                const T* hr = &hdot(r, 0);
                for (std::size_t i = 0; i < b; ++i) add_product(vr[i], dr[i], hr[i]);
            }
        elementwise += static_cast<double>(R * C * b);
    }
    for (std::size_t r = 0; r < R; ++r) {
        point_sums<T>& ps = *st.target[r];
        for (std::size_t c = 0; c < C; ++c)
            for (std::size_t i = 0; i < b; ++i) add_product(ps.contribution[c * b + i], st.omega[r], val(r * C + c, i));
    }
    elementwise += static_cast<double>(R * C * b);
}

// The steps' training side (reference order, see the header comment).
template <Real T>
training_side<T> make_training_side(const model_spec& m, const std::vector<linear_offsets>& offs, std::span<const T> w,
                                    const batch_pass<T>& bp, const matrix<T>& coefficients, bool with_kernel) {
    training_side<T> ts;
    for (std::size_t k = 0; k < m.layers.size(); ++k)
        if (m.layers[k].kind == layer_kind::linear) ts.input.push_back(bp.values[k]);
    ts.adjoint = backward_rows<T>(m, offs, w, {}, {}, bp, coefficients, 1, false, nullptr);
    if (with_kernel) {
        const std::size_t b = coefficients.rows, C = coefficients.cols;
        matrix<T> seed(b * C, C);
        for (std::size_t i = 0; i < b; ++i)
            for (std::size_t c = 0; c < C; ++c) seed(i * C + c, c) = T(1);
        ts.delta = backward_rows<T>(m, offs, w, {}, {}, bp, std::move(seed), C, false, nullptr);
    }
    return ts;
}

// Σ_i g_{i,s} = Σ_i e_{l,i} ⊗ h_{l,i} (+ e_{l,i} for the bias), i ascending: the same
// sums in the same order as the unstructured path's per-sample vjp, so bit-identical.
template <Real T>
std::vector<T> summed_gradient(const std::vector<linear_offsets>& offs, const training_side<T>& ts, std::size_t p) {
    std::vector<T> g(p, T(0));
    for (std::size_t l = 0; l < offs.size(); ++l) {
        const linear_offsets& o = offs[l];
        const matrix<T>& e = ts.adjoint[l];
        const matrix<T>& h = ts.input[l];
        // i outermost so that rows stream; each entry still sums i ascending from 0.
        for (std::size_t i = 0; i < e.rows; ++i)
            for (std::size_t r = 0; r < o.out; ++r) {
                const T& er = e(i, r);
                T* row = g.data() + o.weight + r * o.in;
                const T* hi = &h(i, 0);
                for (std::size_t j = 0; j < o.in; ++j) add_product(row[j], er, hi[j]);
            }
        for (std::size_t r = 0; r < o.out; ++r) {
            if (o.has_bias) {
                T acc(0);
                for (std::size_t i = 0; i < e.rows; ++i) acc += e(i, r);
                g[o.bias + r] = acc;
            }
        }
    }
    return g;
}

// Σ_i |g_{i,s}| + |r_s| per layer block (binary64): the smooth ladder's tolerance scale.
template <Real T>
void add_share_magnitudes(const std::vector<linear_offsets>& offs, const training_side<T>& ts, std::span<const T> rem,
                          step_magnitudes& sm) {
    auto d = [](const T& v) { return std::abs(scalar_traits<T>::to_double(v)); };
    for (std::size_t l = 0; l < offs.size(); ++l) {
        const linear_offsets& o = offs[l];
        matrix<double> sw(o.out, o.in);
        std::vector<double> sb(o.out, 0.0);
        for (std::size_t e = 0; e < o.out * o.in; ++e) sw.data[e] = d(rem[o.weight + e]);
        if (o.has_bias)
            for (std::size_t r = 0; r < o.out; ++r) sb[r] = d(rem[o.bias + r]);
        const matrix<T>& e = ts.adjoint[l];
        const matrix<T>& h = ts.input[l];
        std::vector<double> hd(o.in);
        for (std::size_t i = 0; i < e.rows; ++i) {
            for (std::size_t j = 0; j < o.in; ++j) hd[j] = d(h(i, j));
            for (std::size_t r = 0; r < o.out; ++r) {
                const double er = d(e(i, r));
                double* row = &sw(r, 0);
                for (std::size_t j = 0; j < o.in; ++j) row[j] += er * hd[j];
                sb[r] += er;
            }
        }
        sm.abs_sw.push_back(std::move(sw));
        sm.abs_sb.push_back(std::move(sb));
    }
}

// Whether segment_cuts' level-crossing search (segment.hpp, sampled_cuts) can find anything
// for each row x of an MLP.  It sets targets only at relu / leaky relu units behind the first
// smooth layer and at smooth units whose input spans more than 32 over its samples.  Along
// w + tΔ, t ∈ [0, 1], with h(0), z(0) the values at t = 0 (binary64, from the rounded w, Δ, x):
//   linear:      sup_t |z(t) − z(0)| ≤ |ΔW|·|h(0)| + (|W| + |ΔW|)·R_h + |Δb|
//   activation:  R_h = sup_t |σ(z(t)) − σ(z(0))| ≤ min(Lip σ · sup_t |z(t) − z(0)|, sup σ − inf σ)
// and a unit's span over any samples is ≤ 2·sup_t |z(t) − z(0)|.  A row whose bound of the span
// is ≤ 30 at every searched unit (2 below 32: the bound's own rounding) gets no targets, and the
// search returns no cut for it: skipping it changes nothing.
template <Real T>
std::vector<char> level_search_needed(const model_spec& m, const segment_structure& st,
                                      const std::vector<linear_offsets>& offs, std::span<const T> w,
                                      const step_magnitudes& mag, const matrix<T>& x_rows) {
    const std::size_t R = x_rows.rows;
    std::vector<char> need(R, 0);
    if (st.piecewise_linear || st.first_smooth >= m.layers.size()) return need;
    for (std::size_t k = st.first_smooth; k < m.layers.size(); ++k)
        if (m.layers[k].kind == layer_kind::relu || m.layers[k].kind == layer_kind::leaky_relu) {
            need.assign(R, 1);  // kinks behind a smooth layer: always searched
            return need;
        }
    const batch_pass<T> bp = forward_rows<T>(m, offs, w, {}, {}, x_rows, true, nullptr);
    auto d = [](const T& v) { return std::abs(scalar_traits<T>::to_double(v)); };
    matrix<double> rh(R, x_rows.cols), z(R, x_rows.cols);
    std::size_t li = 0;
    for (std::size_t k = 0; k < m.layers.size(); ++k) {
        const layer_spec& l = m.layers[k];
        const matrix<T>& h = bp.values[k];
        if (l.kind == layer_kind::linear) {
            const linear_offsets& o = offs[li];
            matrix<double> a(R, o.in);
            for (std::size_t e = 0; e < a.data.size(); ++e) a.data[e] = d(h.data[e]);
            z = matrix<double>(R, o.out);
            gemm<double>(true, R, o.out, o.in, a.data.data(), o.in, mag.abs_dw[li].data.data(), o.in, z.data.data(), o.out, false);
            gemm<double>(true, R, o.out, o.in, rh.data.data(), o.in, mag.abs_w_plus[li].data.data(), o.in, z.data.data(), o.out, true);
            if (o.has_bias)
                for (std::size_t r = 0; r < R; ++r)
                    for (std::size_t q = 0; q < o.out; ++q) z(r, q) += mag.abs_db[li][q];
            ++li;
            continue;
        }
        double lip = 1, span = std::numeric_limits<double>::infinity();
        switch (l.kind) {
            case layer_kind::tanh: span = 2; break;
            case layer_kind::sigmoid: lip = 0.25; span = 1; break;
            case layer_kind::gelu: lip = 1.13; break;  // max gelu′ = 1.1289…
            case layer_kind::leaky_relu: lip = std::max(1.0, std::abs(l.negative_slope)); break;
            default: break;  // softplus, relu, identity: Lipschitz 1
        }
        if (k >= st.first_smooth && l.kind != layer_kind::identity)
            for (std::size_t r = 0; r < R; ++r)
                for (std::size_t j = 0; j < z.cols; ++j)
                    if (!(2 * z(r, j) <= 30)) need[r] = 1;  // (NaN: searched)
        rh = matrix<double>(R, z.cols);
        for (std::size_t e = 0; e < z.data.size(); ++e) rh.data[e] = std::min(lip * z.data[e], span);
    }
    return need;
}

// The smooth ladder: adaptive Gauss–Legendre through the factors, for a chunk of test points
// at once (smooth MLPs, proofs-notes/010).  Each test point's step is cut into pieces (the
// cuts segment_cuts finds: polynomial pattern changes before the first smooth layer, level
// crossings behind it); on each piece rules G_{n_1}, G_{n_2}, … are evaluated as rows of
// contract_block — rows that share a node share its parameters w + tΔ, one product per
// layer — and G_{n_{k+1}} is accepted once the quantities the step contributes, K_s(x, x_i)
// a_{i,s} for every batch row and Ī_s r_s, differ from G_{n_k}'s by at most τ·u·V₂ per output,
//   est_c = Σ_i |ΔK a_i|_c + |ΔĪ r|_c ≤ τ·u·V₂_c,
// V₂ = Σ_q |ω_q| Σ_p |J|_mag[c][p]·(Σ_i |g_{i,s}| + |r_s|)_p the rounding scale of those
// contractions.  est_c bounds the estimated quadrature error of the step's reconstruction term
// and of each contribution; it goes into the budget as it is.  No C × P Jacobian is formed.
// Sizes follow segment.hpp's adaptive_piece: a geometric rate measured from successive
// estimates predicts the next size; beyond max_nodes the piece is bisected.  A point starts at
// the size its last step accepted (`start`), so a run's steps mostly cost that rule and the one
// below it.
template <Real T>
struct ladder_outcome {  // one test point's step
    point_sums<T> sums;
    std::vector<T> estimate;  // [C]
    std::size_t nodes = 0, evaluations = 0, cuts = 0, accepted = 0;
    bool converged = true;
    bool margin = true;  // every piece accepted with est ≤ 2⁻²⁰·tol: the next step may start lower
    T located = T(0);
};

template <Real T>
struct ladder_piece {
    std::size_t point = 0;  // index within the chunk
    T a, b;
    std::size_t depth = 0, n_coarse = 0, n_fine = 0, n_previous = 0;
    double ratio_previous = 0;
    bool have_previous = false, done = false, converged = true, margin = false;
    std::unique_ptr<point_sums<T>> coarse, fine;
    std::vector<T> estimate;
};

template <Real T>
struct ladder_context {
    const model_spec* m;
    const std::vector<linear_offsets>* offs;
    const segment_structure* st;
    std::span<const T> w, delta, rem;
    const training_side<T>* train;
    const step_magnitudes* mag;
    const quadrature_options* qo;
    bool with_kernel;
    // Dense mode (optimizer runs, optimizer_kernel.hpp): each rule's Ī itself, compared through
    // share_scale = |Δ| + |ω| + |r| + Σ_i |φ_i| (P entries): est_c = Σ_p |ΔĪ[c][p]|·share_scale_p.
    bool dense = false;
    std::span<const double> share_scale;
    // Vector mode (optimizer runs with few shares): Ī·v_k for the rows v_k of `vectors`
    // [K × P], contracted row by row through the factors; the ladder compares Σ_k |ΔĪ·v_k|.
    const matrix<T>* vectors = nullptr;
    // Plain SGD: `vectors` holds Δ_s alone, and a rule is accepted only if also
    // |ΔĪ·Δ|_c ≤ τ·u·V_c (V: the magnitude with |Δ|) — the reconstruction's own term at its own
    // rounding level, however much the per-point contributions cancel (proofs-notes/010 §1).
    bool step_check = false;
};

// A row of a rule: node t, weight ω, the chunk's point, where its sums go.
template <Real T>
struct rule_row {
    T t, omega;
    std::size_t point;
    point_sums<T>* target;
};

// Evaluates rows through contract_block: rows at one node (ties kept in row order) that are at
// least `shared_node_rows` share that node's parameters w + tΔ; the others go in mixed blocks
// at their own t.  Blocks of at most block_rows.  Dense targets are finished (finish_dense).
inline constexpr std::size_t shared_node_rows = 4;
template <Real T>
void evaluate_rows(const ladder_context<T>& cx, const matrix<T>& x_chunk, std::vector<rule_row<T>> rows,
                   gemm_counter* ctr, double& elementwise) {
    const std::size_t D0 = x_chunk.cols;
    std::stable_sort(rows.begin(), rows.end(), [](const rule_row<T>& x, const rule_row<T>& y) { return x.t < y.t; });
    contraction_stack<T> stack;  // every row's contributions, contracted at the end in one set of products
    auto run = [&](std::size_t r0, std::size_t r1, const std::vector<rule_row<T>>& rs, std::span<const T> w_node) {
        matrix<T> xr(r1 - r0, D0);
        std::vector<T> om, t;
        std::vector<point_sums<T>*> target;
        for (std::size_t r = r0; r < r1; ++r) {
            for (std::size_t j = 0; j < D0; ++j) xr(r - r0, j) = x_chunk(rs[r].point, j);
            om.push_back(rs[r].omega);
            if (w_node.empty()) t.push_back(rs[r].t);
            target.push_back(rs[r].target);
        }
        contract_block<T>(*cx.m, *cx.offs, cx.w, cx.delta, cx.rem, *cx.train, *cx.mag, xr, t, om, target, w_node,
                          cx.with_kernel, ctr, elementwise, cx.dense, cx.vectors, &stack);
    };
    std::vector<rule_row<T>> mixed;
    for (std::size_t g0 = 0; g0 < rows.size();) {
        std::size_t g1 = g0 + 1;
        while (g1 < rows.size() && rows[g1].t == rows[g0].t) ++g1;
        if (g1 - g0 < shared_node_rows) {
            mixed.insert(mixed.end(), rows.begin() + static_cast<std::ptrdiff_t>(g0), rows.begin() + static_cast<std::ptrdiff_t>(g1));
        } else {
            const std::vector<T> wt = detail::point_on_segment<T>(cx.w, cx.delta, rows[g0].t);
            for (std::size_t r0 = g0; r0 < g1; r0 += block_rows) run(r0, std::min(g1, r0 + block_rows), rows, wt);
        }
        g0 = g1;
    }
    for (std::size_t r0 = 0; r0 < mixed.size(); r0 += block_rows) run(r0, std::min(mixed.size(), r0 + block_rows), mixed, {});
    contract_stack<T>(*cx.offs, cx.m->output_dim(), *cx.train, stack, ctr, elementwise);
    if (cx.dense)
        for (const rule_row<T>& r : rows)
            if (!r.target->rows_omega.empty()) finish_dense<T>(*cx.offs, cx.m->output_dim(), cx.w.size(), *r.target, ctr);
}

template <Real T>
std::vector<ladder_outcome<T>> ladder_chunk(const ladder_context<T>& cx, const matrix<T>& x_chunk,
                                            std::span<std::size_t> start, gemm_counter* ctr, double& elementwise) {
    const model_spec& m = *cx.m;
    const quadrature_options& qo = *cx.qo;
    const std::size_t R = x_chunk.rows, C = m.output_dim();
    const std::size_t b = cx.train->input.empty() ? 0 : cx.train->input[0].rows;
    const T u = scalar_traits<T>::unit_roundoff();
    const double tau = qo.tolerance_factor > 0 ? qo.tolerance_factor : cx.st->default_tolerance;
    if (qo.first_nodes == 0 || qo.max_nodes < 2 * qo.first_nodes || qo.max_nodes > max_gauss_nodes)
        throw usage_error("quadrature_options: need 1 ≤ first_nodes and 2·first_nodes ≤ max_nodes ≤ 100000");
    auto fresh = [&]() {
        auto ps = std::make_unique<point_sums<T>>();
        if (cx.dense) ps->integral = matrix<T>(C, cx.w.size());
        if (cx.vectors != nullptr) ps->vector_out.assign(C * cx.vectors->rows, T(0));
        ps->contribution.assign(C * b, T(0));
        if (cx.with_kernel) ps->kernel.assign(b * C * C, T(0));
        ps->remainder.assign(C, T(0));
        ps->magnitude.assign(C, 0.0);
        ps->share_magnitude.assign(C, 0.0);
        return ps;
    };
    std::vector<ladder_outcome<T>> out(R);
    std::vector<std::size_t> evaluations(R, 0);
    std::vector<ladder_piece<T>> pieces;
    // The cuts, as segment_cuts finds them (its level search only where it can find something).
    const std::vector<char> search = level_search_needed<T>(m, *cx.st, *cx.offs, cx.w, *cx.mag, x_chunk);
    for (std::size_t r = 0; r < R; ++r) {
        const matrix<T> x1 = gather_rows(x_chunk, std::vector<std::size_t>{r});
        const std::vector<T> cuts =
            segment_cuts<T>(m, *cx.st, cx.w, cx.delta, x1, search[r] ? qo.kink_samples : 0, &out[r].located);
        out[r].cuts = cuts.size();
        std::vector<T> ends{T(0)};
        ends.insert(ends.end(), cuts.begin(), cuts.end());
        ends.push_back(T(1));
        const std::size_t n = std::max<std::size_t>(2, start[r]);
        for (std::size_t e = 0; e + 1 < ends.size(); ++e) {
            ladder_piece<T> lp;
            lp.point = r;
            lp.a = ends[e];
            lp.b = ends[e + 1];
            lp.n_coarse = n - 1;
            lp.n_fine = n;
            pieces.push_back(std::move(lp));
        }
    }
    for (;;) {
        // This round's rules: both rungs of a new ladder, else its new finer rung.
        std::vector<rule_row<T>> rows;
        auto add_rule = [&](const ladder_piece<T>& lp, std::size_t n, point_sums<T>* target) {
            const gauss_rule<T>& g = gauss_legendre<T>(n);
            const T len = lp.b - lp.a;
            for (std::size_t q = 0; q < n; ++q) rows.push_back({lp.a + len * g.nodes[q], len * g.weights[q], lp.point, target});
            evaluations[lp.point] += n;
        };
        for (ladder_piece<T>& lp : pieces) {
            if (lp.done) continue;
            if (!lp.coarse) {
                lp.coarse = fresh();
                add_rule(lp, lp.n_coarse, lp.coarse.get());
            }
            lp.fine = fresh();
            add_rule(lp, lp.n_fine, lp.fine.get());
        }
        if (rows.empty()) break;
        evaluate_rows<T>(cx, x_chunk, std::move(rows), ctr, elementwise);
        // Compare each ladder's two rungs.
        std::vector<ladder_piece<T>> split;
        for (ladder_piece<T>& lp : pieces) {
            if (lp.done) continue;
            std::vector<T> est(C, T(0));
            double ratio = 0;
            bool ok = true;
            for (std::size_t c = 0; c < C; ++c) {
                T e(0);
                if (cx.dense) {  // Σ_p |ΔĪ[c][p]|·share_scale_p ≥ |ΔĪ·v|_c for every share v
                    const T* fi = &lp.fine->integral(c, 0);
                    const T* ci = &lp.coarse->integral(c, 0);
                    for (std::size_t p = 0; p < cx.w.size(); ++p) e += rm::abs(T(fi[p] - ci[p])) * T(cx.share_scale[p]);
                } else if (cx.vectors != nullptr && !cx.step_check) {
                    const std::size_t K = cx.vectors->rows;
                    for (std::size_t k = 0; k < K; ++k)
                        e += rm::abs(T(lp.fine->vector_out[c * K + k] - lp.coarse->vector_out[c * K + k]));
                } else {
                    e = rm::abs(T(lp.fine->remainder[c] - lp.coarse->remainder[c]));
                    for (std::size_t i = 0; i < b; ++i)
                        e += rm::abs(T(lp.fine->contribution[c * b + i] - lp.coarse->contribution[c * b + i]));
                }
                auto compare = [&](const T& err, const T& tol) {
                    if (!(err <= tol)) ok = false;
                    ratio = std::max(ratio, tol > T(0) ? scalar_traits<T>::to_double(T(err / tol))
                                                       : (err > T(0) ? std::numeric_limits<double>::infinity() : 0.0));
                };
                compare(e, T(T(tau) * u * T(lp.fine->share_magnitude[c])));
                if (cx.step_check)
                    compare(rm::abs(T(lp.fine->vector_out[c] - lp.coarse->vector_out[c])),
                            T(T(tau) * u * T(lp.fine->magnitude[c])));
                est[c] = std::move(e);
            }
            if (ok) {
                lp.done = true;
                lp.margin = ratio <= 0x1p-20;
                lp.estimate = std::move(est);
                continue;
            }
            const std::size_t next = detail::ladder_next_size(ratio, lp.have_previous, lp.ratio_previous, lp.n_previous,
                                                              lp.n_coarse, lp.n_fine);
            const bool room = evaluations[lp.point] + next <= qo.max_evaluations;
            if (next <= qo.max_nodes && room) {
                lp.have_previous = true;
                lp.n_previous = lp.n_coarse;
                lp.ratio_previous = ratio;
                lp.n_coarse = lp.n_fine;
                lp.coarse = std::move(lp.fine);
                lp.n_fine = next;
                continue;
            }
            if (lp.depth >= qo.max_depth || !room) {  // no finer rule allowed: the last one, its estimate
                lp.done = true;
                lp.converged = false;
                lp.estimate = std::move(est);
                continue;
            }
            const T mid = (lp.a + lp.b) / T(2);
            for (int half = 0; half < 2; ++half) {
                ladder_piece<T> h;
                h.point = lp.point;
                h.a = half == 0 ? lp.a : mid;
                h.b = half == 0 ? mid : lp.b;
                h.depth = lp.depth + 1;
                h.n_fine = std::max<std::size_t>(2, qo.first_nodes);
                h.n_coarse = h.n_fine - 1;
                split.push_back(std::move(h));
            }
            lp.done = true;
            lp.fine.reset();  // replaced by its halves
        }
        for (ladder_piece<T>& h : split) pieces.push_back(std::move(h));
    }
    // Each point: its pieces in order along the step, summed.
    std::stable_sort(pieces.begin(), pieces.end(), [](const ladder_piece<T>& x, const ladder_piece<T>& y) {
        return x.point < y.point || (x.point == y.point && x.a < y.a);
    });
    for (std::size_t r = 0; r < R; ++r) {
        out[r].sums = *fresh();
        out[r].estimate.assign(C, T(0));
        out[r].evaluations = evaluations[r];
    }
    for (const ladder_piece<T>& lp : pieces) {
        if (!lp.fine) continue;  // bisected
        ladder_outcome<T>& o = out[lp.point];
        point_sums<T>& s = o.sums;
        const point_sums<T>& f = *lp.fine;
        for (std::size_t e = 0; e < s.contribution.size(); ++e) s.contribution[e] += f.contribution[e];
        for (std::size_t e = 0; e < s.kernel.size(); ++e) s.kernel[e] += f.kernel[e];
        for (std::size_t e = 0; e < s.integral.data.size(); ++e) s.integral.data[e] += f.integral.data[e];
        for (std::size_t e = 0; e < s.vector_out.size(); ++e) s.vector_out[e] += f.vector_out[e];
        for (std::size_t c = 0; c < C; ++c) {
            s.remainder[c] += f.remainder[c];
            s.magnitude[c] += f.magnitude[c];
            s.share_magnitude[c] += f.share_magnitude[c];
            o.estimate[c] += lp.estimate[c];
        }
        s.scale = rm::max(s.scale, f.scale);
        o.nodes += lp.n_fine;
        o.accepted = std::max(o.accepted, lp.n_fine);
        o.converged = o.converged && lp.converged;
        o.margin = o.margin && lp.margin;
    }
    for (std::size_t r = 0; r < R; ++r) start[r] = out[r].margin ? std::max<std::size_t>(2, out[r].accepted - 1) : out[r].accepted;
    return out;
}

// Given rules (segment_rule: piecewise-linear networks, fixed and composite rules), each
// point's sums on its rule: one slot per point of the chunk.
template <Real T>
std::vector<point_sums<T>> rules_chunk(const ladder_context<T>& cx, const matrix<T>& x_chunk,
                                       std::span<const step_rule<T>> rules, gemm_counter* ctr, double& elementwise) {
    const std::size_t C = cx.m->output_dim();
    const std::size_t b = cx.train->input.empty() ? 0 : cx.train->input[0].rows;
    std::vector<point_sums<T>> sums(x_chunk.rows);
    std::vector<rule_row<T>> rows;
    for (std::size_t r = 0; r < x_chunk.rows; ++r) {
        point_sums<T>& ps = sums[r];
        if (cx.dense) ps.integral = matrix<T>(C, cx.w.size());
        if (cx.vectors != nullptr) ps.vector_out.assign(C * cx.vectors->rows, T(0));
        ps.contribution.assign(C * b, T(0));
        if (cx.with_kernel) ps.kernel.assign(b * C * C, T(0));
        ps.remainder.assign(C, T(0));
        ps.magnitude.assign(C, 0.0);
        ps.share_magnitude.assign(C, 0.0);
        for (std::size_t q = 0; q < rules[r].nodes.size(); ++q) rows.push_back({rules[r].nodes[q], rules[r].weights[q], r, &ps});
    }
    evaluate_rows<T>(cx, x_chunk, std::move(rows), ctr, elementwise);
    return sums;
}

}  // namespace structured

template <Real T>
path_kernel_result<T> compute_path_kernel_structured(const path_kernel_request<T>& rq,
                                                     const std::function<void(std::size_t, std::size_t)>& progress = {}) {
    detail::validate_request<T>(rq);
    detail::require_plain_sgd<T>(rq);
    const training_problem<T>& pr = *rq.problem;
    const model_spec& model = pr.model;
    const sgd_schedule& sch = rq.schedule;
    if constexpr (std::is_same_v<T, double>) check_gemm_fast_supported();
    const segment_structure st = analyse_segment_structure(model);
    const std::vector<linear_offsets> offs = parameter_offsets(model);
    path_kernel_result<T> res = detail::start_result<T>(rq);
    const std::size_t M = res.m, N = res.n, C = res.c, P = res.p, D0 = rq.x_test.cols;
    std::vector<matrix<T>> x_rows;
    for (std::size_t mm = 0; mm < M; ++mm) x_rows.push_back(gather_rows(rq.x_test, std::vector<std::size_t>{mm}));
    matrix<T> kernel_sum(rq.store_contributions ? 0 : M, C);
    std::vector<T> w = rq.w0;
    std::size_t next_kernel = 0;
    std::vector<std::size_t> rule_nodes(M, 0);
    std::vector<char> converged(M, 1);
    // Smooth networks under the adaptive rule: the ladder through the factors (ladder_chunk),
    // each point starting at the size its last step accepted.
    const quadrature_options& qo = rq.quadrature;
    const bool ladder = !st.piecewise_linear && !st.kinks_behind_smooth && qo.fixed_nodes == 0 &&
                        qo.composite == quadrature_options::simple_rule::none;
    const std::size_t chunk = ladder ? structured::ladder_chunk_points : structured::chunk_points;
    const std::size_t chunks = (M + chunk - 1) / chunk;
    std::vector<std::size_t> ladder_start(M);
    detail::point_sink<T> sink(rq, M, true);  // plain SGD: whole step blocks may be dealt
    for (std::size_t s = 0; s < sch.steps; ++s) {
        if (detail::point_sink<T>::block_starts(s)) std::fill(ladder_start.begin(), ladder_start.end(), qo.first_nodes > 3 ? qo.first_nodes - 1 : 2);
        if (!sink.takes_step(s)) {  // another rank's block (point_sink): follow the path only
            sink.skip_step(s, w, res, next_kernel, progress);
            sink.after_step(s, res, kernel_sum, rule_nodes, converged);
            continue;
        }
        const std::vector<std::size_t> batch = sch.batch(s);
        const std::size_t b = batch.size();
        const T eta(sch.learning_rates[s]);
        // Training side at w[s]: coefficients a_{i,s}, adjoints e_{l,i}, Σ_i g_{i,s}.
        structured::batch_pass<T> bp =
            structured::forward_rows<T>(model, offs, w, {}, {}, gather_rows(pr.x, batch), false, nullptr);
        res.losses.push_back(loss_value(pr.loss, bp.values.back(), pr.y, batch));
        const matrix<T> grad_out = output_gradient(pr.loss, bp.values.back(), pr.y, batch);
        matrix<T> a(b, C);
        for (std::size_t k = 0; k < b; ++k)
            for (std::size_t c = 0; c < C; ++c) {
                a(k, c) = -(eta * grad_out(k, c));
                if (rq.store_coefficients) res.coefficients[(s * N + batch[k]) * C + c] += a(k, c);
            }
        const bool store_kernel = next_kernel < rq.kernel_steps.size() && rq.kernel_steps[next_kernel] == s;
        const structured::training_side<T> train = structured::make_training_side<T>(model, offs, w, bp, a, store_kernel);
        const std::vector<T> g_sum = structured::summed_gradient<T>(offs, train, P);
        forward_pass<T> fp;  // the reference-order forward pass: bit-identical to forward(), the trainer's
        fp.values = std::move(bp.values);
        double deviation = 0;
        std::vector<T> w_next = detail::next_point<T>(rq, w, fp, grad_out, eta, s, deviation);
        detail::step_difference<T> sd = detail::difference_of_step<T>(w, w_next, g_sum, s, res, deviation);
        const std::span<const T> delta(sd.delta), rem(sd.rem), wv(w);
        structured::step_magnitudes mags = structured::make_step_magnitudes<T>(offs, wv, delta);
        if (ladder) structured::add_share_magnitudes<T>(offs, train, rem, mags);
        matrix<T> delta_row(1, P);
        std::copy(sd.delta.begin(), sd.delta.end(), delta_row.data.begin());
        const structured::ladder_context<T> lcx{&model, &offs, &st, wv, delta, rem, &train, &mags, &rq.quadrature,
                                                store_kernel, false, {}, &delta_row, true};

        // The rule of every test point (independent of the others); the smooth ladder finds
        // its rules chunk by chunk below.
        std::vector<step_rule<T>> rules(M);
        auto find_rule = [&](std::size_t mm) {
            if (sink.owns(s, mm)) rules[mm] = segment_rule<T>(model, st, wv, delta, x_rows[mm], rq.quadrature);
        };
        if (!ladder) detail::for_each_point_t<T>(M, rq.threads, find_rule);

        std::vector<double> point_contribution(M, 0.0);
        std::vector<gemm_counter> counters(chunks);
        std::vector<double> elementwise(chunks, 0.0);
        std::vector<T> kernel;
        if (store_kernel) kernel.assign(M * N * C * C, T(0));
        auto process_chunk = [&](std::size_t ch) {
            const std::size_t first = ch * chunk, last = std::min(M, first + chunk);
            if (!sink.owns(s, first)) return;  // a chunk lies in one unit (split_chunk_points is a multiple)
            if (ladder) {
                std::vector<std::size_t> idx;
                for (std::size_t mm = first; mm < last; ++mm) idx.push_back(mm);
                std::vector<structured::ladder_outcome<T>> lo = structured::ladder_chunk<T>(
                    lcx, gather_rows(rq.x_test, idx), std::span<std::size_t>(ladder_start).subspan(first, last - first),
                    &counters[ch], elementwise[ch]);
                for (std::size_t mm = first; mm < last; ++mm) {
                    structured::ladder_outcome<T>& o = lo[mm - first];
                    detail::point_step<T> ps;
                    ps.cuts = o.cuts;
                    ps.evaluations = o.evaluations;
                    ps.nodes = o.nodes;
                    ps.converged = o.converged;
                    // + a cut misplaced by δ: at most 2δ·max|J| per entry of Ī (segment_rule).
                    const T cut_term = T(2) * o.located * o.sums.scale * sd.delta_l1;
                    ps.estimate_by_output = std::move(o.estimate);
                    for (T& e : ps.estimate_by_output) e += cut_term;
                    ps.contribution = std::move(o.sums.contribution);
                    ps.remainder = std::move(o.sums.remainder);
                    ps.magnitude = std::move(o.sums.magnitude);
                    if (store_kernel)
                        for (std::size_t k = 0; k < b; ++k)
                            std::copy(o.sums.kernel.begin() + static_cast<std::ptrdiff_t>(k * C * C),
                                      o.sums.kernel.begin() + static_cast<std::ptrdiff_t>((k + 1) * C * C),
                                      kernel.begin() + static_cast<std::ptrdiff_t>((mm * N + batch[k]) * C * C));
                    sink.take(batch, mm, ps, sd.delta_l1, res, kernel_sum, rule_nodes, converged, point_contribution[mm]);
                }
                return;
            }
            std::vector<structured::point_sums<T>> sums(last - first);
            for (auto& ps : sums) {
                ps.contribution.assign(C * b, T(0));
                if (store_kernel) ps.kernel.assign(b * C * C, T(0));
                ps.remainder.assign(C, T(0));
                ps.magnitude.assign(C, 0.0);
            }
            // Rows (point, node) in order, in blocks of at most block_rows.
            std::vector<std::size_t> owner;
            std::vector<const T*> node, weight;
            for (std::size_t mm = first; mm < last; ++mm)
                for (std::size_t q = 0; q < rules[mm].nodes.size(); ++q) {
                    owner.push_back(mm);
                    node.push_back(&rules[mm].nodes[q]);
                    weight.push_back(&rules[mm].weights[q]);
                }
            for (std::size_t r0 = 0; r0 < owner.size(); r0 += structured::block_rows) {
                const std::size_t r1 = std::min(owner.size(), r0 + structured::block_rows);
                matrix<T> xr(r1 - r0, D0);
                std::vector<T> t, om;
                for (std::size_t r = r0; r < r1; ++r) {
                    for (std::size_t j = 0; j < D0; ++j) xr(r - r0, j) = rq.x_test(owner[r], j);
                    t.push_back(*node[r]);
                    om.push_back(*weight[r]);
                }
                std::vector<structured::point_sums<T>*> target;
                for (std::size_t r = r0; r < r1; ++r) target.push_back(&sums[owner[r] - first]);
                structured::contract_block<T>(model, offs, wv, delta, rem, train, mags, xr, t, om, target, {},
                                              store_kernel, &counters[ch], elementwise[ch]);
            }
            for (std::size_t mm = first; mm < last; ++mm) {
                structured::point_sums<T>& sum = sums[mm - first];
                const step_rule<T>& rule = rules[mm];
                detail::point_step<T> ps;
                ps.cuts = rule.cuts;
                ps.evaluations = rule.evaluations;
                ps.nodes = rule.nodes.size();
                ps.converged = rule.converged;
                // A cut misplaced by δ changes Ī by at most δ·|J(t*+) − J(t*−)| ≤ 2δ·max|J| per entry.
                ps.estimate = rule.estimate_is_final ? rule.error_estimate : T(T(2) * rule.located * sum.scale);
                ps.contribution = std::move(sum.contribution);
                ps.remainder = std::move(sum.remainder);
                ps.magnitude = std::move(sum.magnitude);
                if (store_kernel)
                    for (std::size_t k = 0; k < b; ++k)
                        std::copy(sum.kernel.begin() + static_cast<std::ptrdiff_t>(k * C * C),
                                  sum.kernel.begin() + static_cast<std::ptrdiff_t>((k + 1) * C * C),
                                  kernel.begin() + static_cast<std::ptrdiff_t>((mm * N + batch[k]) * C * C));
                sink.take(batch, mm, ps, sd.delta_l1, res, kernel_sum, rule_nodes, converged, point_contribution[mm]);
            }
        };
        detail::for_each_point_t<T>(chunks, rq.threads, process_chunk);
        for (std::size_t ch = 0; ch < chunks; ++ch) {
            res.gemm_flops += counters[ch].flops;
            res.gemm_seconds += counters[ch].seconds;
            res.elementwise_madds += elementwise[ch];
        }
        sink.end_of_step(s, sd, store_kernel, kernel, res);
        detail::end_step<T>(sd, point_contribution, store_kernel, kernel, s, next_kernel, w, w_next, res, progress);
        sink.after_step(s, res, kernel_sum, rule_nodes, converged);
    }
    detail::finish_result<T>(rq, w, kernel_sum, rule_nodes, converged, x_rows, res);
    return res;
}

// The test side of an optimizer run's step through the factors (MLPs; optimizer_kernel.hpp
// calls it): for every test point Ī_s(x) on its rule — the smooth ladder in dense mode, or
// segment_rule's — formed from the factors at the nodes (finish_dense), then one product
// [points·C × P]·[P × (K + 2)] against the shares φ_1..φ_K, ω_s and r_s.  `add(mm, ps)` takes
// each point's step record (from the worker threads; each point its own).  `start`: the
// ladder's sizes per point, carried over the steps.
template <Real T>
void optimizer_step_structured(const path_kernel_request<T>& rq, const segment_structure& st,
                               std::type_identity_t<std::span<const T>> w, std::type_identity_t<std::span<const T>> delta,
                               std::type_identity_t<std::span<const T>> rem,
                               const std::type_identity_t<std::vector<std::vector<T>>>& phi,
                               const std::type_identity_t<std::vector<T>>& omega, std::span<const double> scale,
                               const std::type_identity_t<T>& scale_l1, std::vector<std::size_t>& start, std::size_t step,
                               const std::type_identity_t<std::function<void(std::size_t, detail::point_step<T>&)>>& add,
                               std::type_identity_t<path_kernel_result<T>>& res) {
    const model_spec& model = rq.problem->model;
    const quadrature_options& qo = rq.quadrature;
    if constexpr (std::is_same_v<T, double>) check_gemm_fast_supported();
    const std::size_t M = rq.x_test.rows, C = model.output_dim(), P = w.size(), K = phi.size();
    // Split between processes (work_split.hpp): this process's units only.
    auto owns = [&](std::size_t mm) { return rq.split == nullptr || rq.split->owns(step, mm); };
    const bool ladder = !st.piecewise_linear && !st.kinks_behind_smooth && qo.fixed_nodes == 0 &&
                        qo.composite == quadrature_options::simple_rule::none;
    if (start.size() != M) start.assign(M, qo.first_nodes > 3 ? qo.first_nodes - 1 : 2);
    // The shares, ω and r as rows of one matrix [(K + 2) × P].
    matrix<T> shares(K + 2, P);
    for (std::size_t k = 0; k < K; ++k) std::copy(phi[k].begin(), phi[k].end(), shares.row(k).begin());
    std::copy(omega.begin(), omega.end(), shares.row(K).begin());
    std::copy(rem.begin(), rem.end(), shares.row(K + 1).begin());
    // The shares' [C × (K + 2)] products at a point into its step record.
    auto finish_point = [&](std::size_t mm, detail::point_step<T>& ps, const T* out) {
        ps.contribution.resize(C * K);
        ps.optimizer_term.resize(C);
        ps.remainder.resize(C);
        for (std::size_t c = 0; c < C; ++c) {
            const T* row = out + c * (K + 2);
            for (std::size_t k = 0; k < K; ++k) ps.contribution[c * K + k] = row[k];
            ps.optimizer_term[c] = row[K];
            ps.remainder[c] = row[K + 1];
        }
        add(mm, ps);
    };
    if (!model.is_mlp()) {  // tree models: Ī per point (structured_tree.hpp, point_integral), then the shares
        const layer_tree tree = compile_tree(model);
        const tree_segment::analysis an = tree_segment::analyse(model);
        const bool has_norm = structured_tree::needs_row_magnitudes(tree);
        std::vector<double> abs_plus(P);
        for (std::size_t q = 0; q < P; ++q)
            abs_plus[q] = std::abs(scalar_traits<T>::to_double(w[q])) + std::abs(scalar_traits<T>::to_double(delta[q]));
        // Magnitudes with 007's scale s in place of |Δ| (the optimizer budget's), and the ladder's s.
        const structured_tree::step_context<T> scx{&rq, &st, &tree, &an, has_norm, w, delta, abs_plus, scale, scale, ladder};
        // Few shares (verify) in a precision without fast products: J·v_k by forward mode at the
        // nodes, K + 2 passes instead of C reverse sweeps (proofs-notes/012 §10).
        std::vector<double> abs_delta;
        std::optional<structured_tree::step_context<T>> fcx;
        if (structured_tree::forward_mode_pays<T>() && ladder && has_norm && 2 * (K + 2) <= C) {
            abs_delta.resize(P);
            for (std::size_t q = 0; q < P; ++q) abs_delta[q] = std::abs(scalar_traits<T>::to_double(delta[q]));
            fcx.emplace(scx);
            fcx->abs_delta = abs_delta;
        }
        std::vector<gemm_counter> counters(M);
        std::vector<double> elementwise(M, 0.0);
        auto process_point = [&](std::size_t mm) {
            if (!owns(mm)) return;
            detail::point_step<T> ps;
            if (fcx) {
                if (std::optional<std::vector<T>> v = structured_tree::point_vectors<T>(*fcx, mm, shares, start[mm], ps)) {
                    finish_point(mm, ps, v->data());
                    return;
                }
                ps = detail::point_step<T>();
            }
            const std::vector<T> ibar =
                structured_tree::point_integral<T>(scx, mm, start[mm], scale_l1, ps, &counters[mm], elementwise[mm]);
            matrix<T> out(C, K + 2);
            gemm<T>(true, C, K + 2, P, ibar.data(), P, shares.data.data(), P, out.data.data(), K + 2, false, &counters[mm]);
            finish_point(mm, ps, out.data.data());
        };
        detail::for_each_point_t<T>(M, rq.threads, process_point);
        for (std::size_t mm = 0; mm < M; ++mm) {
            res.gemm_flops += counters[mm].flops;
            res.gemm_seconds += counters[mm].seconds;
            res.elementwise_madds += elementwise[mm];
        }
        return;
    }
    const std::vector<linear_offsets> offs = parameter_offsets(model);
    structured::step_magnitudes mags = structured::make_step_magnitudes<T>(offs, w, delta);
    for (const linear_offsets& o : offs) {  // the shares' scale in layer blocks
        matrix<double> sw(o.out, o.in);
        std::vector<double> sb(o.out, 0.0);
        std::copy(scale.begin() + static_cast<std::ptrdiff_t>(o.weight),
                  scale.begin() + static_cast<std::ptrdiff_t>(o.weight + o.out * o.in), sw.data.begin());
        if (o.has_bias) std::copy(scale.begin() + static_cast<std::ptrdiff_t>(o.bias),
                                  scale.begin() + static_cast<std::ptrdiff_t>(o.bias + o.out), sb.begin());
        mags.abs_sw.push_back(std::move(sw));
        mags.abs_sb.push_back(std::move(sb));
    }
    const structured::training_side<T> none;
    // Few shares (verify: the batch's, ω, r): contracted row by row (vector mode, (K + 2)·P per
    // node); many (per-point contributions): Ī formed (C·P per node) and one product at the end.
    const bool vector_mode = K + 2 <= C;
    const structured::ladder_context<T> cx{&model, &offs, &st, w, delta, {}, &none, &mags, &qo, false,
                                           !vector_mode, scale, vector_mode ? &shares : nullptr, false};
    std::vector<step_rule<T>> rules(M);
    if (!ladder) {
        std::vector<matrix<T>> x_rows;
        auto find_rule = [&](std::size_t mm) {
            if (!owns(mm)) return;
            rules[mm] = segment_rule<T>(model, st, w, delta, gather_rows(rq.x_test, std::vector<std::size_t>{mm}), qo);
        };
        detail::for_each_point_t<T>(M, rq.threads, find_rule);
    }
    // Chunks of the ladder's size: the final product [points·C × P]·[P × (K + 2)] is taller.
    const std::size_t chunk = structured::ladder_chunk_points, chunks = (M + chunk - 1) / chunk;
    std::vector<gemm_counter> counters(chunks);
    std::vector<double> elementwise(chunks, 0.0);
    auto process_chunk = [&](std::size_t ch) {
        const std::size_t first = ch * chunk, last = std::min(M, first + chunk);
        if (!owns(first)) return;  // a chunk lies in one unit (split_chunk_points is a multiple)
        std::vector<std::size_t> idx;
        for (std::size_t mm = first; mm < last; ++mm) idx.push_back(mm);
        const matrix<T> xc = gather_rows(rq.x_test, idx);
        std::vector<structured::ladder_outcome<T>> lo;
        if (ladder) {
            lo = structured::ladder_chunk<T>(cx, xc, std::span<std::size_t>(start).subspan(first, last - first),
                                             &counters[ch], elementwise[ch]);
        } else {
            std::vector<structured::point_sums<T>> sums = structured::rules_chunk<T>(
                cx, xc, std::span<const step_rule<T>>(rules).subspan(first, last - first), &counters[ch], elementwise[ch]);
            lo.resize(last - first);
            for (std::size_t mm = first; mm < last; ++mm) {
                structured::ladder_outcome<T>& o = lo[mm - first];
                const step_rule<T>& rule = rules[mm];
                o.sums = std::move(sums[mm - first]);
                o.cuts = rule.cuts;
                o.evaluations = rule.evaluations;
                o.nodes = rule.nodes.size();
                o.converged = rule.converged;
                o.located = rule.located;
            }
        }
        // Ī of the chunk's points stacked [(points·C) × P], against the shares (dense mode).
        const std::size_t n = last - first;
        matrix<T> out(n * C, K + 2);
        if (vector_mode) {
            for (std::size_t k = 0; k < n; ++k)
                std::copy(lo[k].sums.vector_out.begin(), lo[k].sums.vector_out.end(),
                          out.data.begin() + static_cast<std::ptrdiff_t>(k * C * (K + 2)));
        } else {
            matrix<T> stacked(n * C, P);
            for (std::size_t k = 0; k < n; ++k)
                std::copy(lo[k].sums.integral.data.begin(), lo[k].sums.integral.data.end(),
                          stacked.data.begin() + static_cast<std::ptrdiff_t>(k * C * P));
            gemm<T>(true, n * C, K + 2, P, stacked.data.data(), P, shares.data.data(), P, out.data.data(), K + 2, false,
                    &counters[ch]);
        }
        for (std::size_t mm = first; mm < last; ++mm) {
            structured::ladder_outcome<T>& o = lo[mm - first];
            detail::point_step<T> ps;
            ps.cuts = o.cuts;
            ps.evaluations = o.evaluations;
            ps.nodes = o.nodes;
            ps.converged = o.converged;
            ps.step = 0;
            // A cut misplaced by δ changes Ī by at most 2δ·max|J| per entry (segment_rule).
            const T cut_term = T(2) * o.located * o.sums.scale;
            if (ladder) {
                ps.estimate_by_output = std::move(o.estimate);
                for (T& e : ps.estimate_by_output) e += cut_term * scale_l1;
            } else {  // segment_rule's: the per-point adaptive rule (kinks behind a smooth layer) carries its own
                ps.estimate = rules[mm].estimate_is_final ? rules[mm].error_estimate : cut_term;
            }
            ps.magnitude = std::move(o.sums.share_magnitude);
            finish_point(mm, ps, &out((mm - first) * C, 0));
        }
    };
    detail::for_each_point_t<T>(chunks, rq.threads, process_chunk);
    for (std::size_t ch = 0; ch < chunks; ++ch) {
        res.gemm_flops += counters[ch].flops;
        res.gemm_seconds += counters[ch].seconds;
        res.elementwise_madds += elementwise[ch];
    }
}

// The exact path kernel: for plain SGD the structured path unless the request asks for the
// unstructured one; for any other optimizer (or a resumed run) optimizer_kernel.hpp's.
template <Real T>
path_kernel_result<T> compute_path_kernel(const path_kernel_request<T>& rq,
                                          const std::function<void(std::size_t, std::size_t)>& progress = {}) {
    if (uses_optimizer_state<T>(rq.schedule, rq.initial_state)) return compute_path_kernel_optimizer<T>(rq, progress);
    // The splits of the contributions are kept by the full-Jacobian paths.
    if (!rq.structured || !rq.split_layers.empty() || rq.split_steps)
        return compute_path_kernel_unstructured<T>(rq, progress);
    // Tree models (conv, pooling, residual, layer norm): structured_tree.hpp.
    return rq.problem->model.is_mlp() ? compute_path_kernel_structured<T>(rq, progress)
                                      : compute_path_kernel_structured_tree<T>(rq, progress);
}

}  // namespace epk

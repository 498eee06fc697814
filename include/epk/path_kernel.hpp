// epk/path_kernel.hpp — the exact path kernel of an SGD run, computed in one
// pass over the steps (memory does not grow with S).
//
// For step s with batch B_s, rate η_s and path w[s] → w[s+1] (Δ_s = w[s+1] − w[s]):
//
//   a_{i,s}  = −η_s ρ ∂ℓ/∂f(x_i; w[s])                 coefficient (C)
//   g_{i,s}  = J(x_i; w[s])ᵀ a_{i,s}                    training side (P)
//   r_s      = Δ_s − Σ_{i∈B_s} g_{i,s}                  remainder of the step (P)
//   Ī_s(x)   = ∫_0^1 J(x; w[s] + tΔ_s) dt               test side (C × P), segment.hpp
//   K_s(x, x_i) = Ī_s(x) J(x_i; w[s])ᵀ                  per-step kernel (C × C)
//
// and, exactly (fundamental theorem of calculus along each segment),
//
//   f(x; w[S]) = f(x; w[0]) + Σ_s Σ_{i∈B_s} K_s(x, x_i) a_{i,s} + Σ_s Ī_s(x) r_s.
//
// r_s is the rounding of the update when the path is trained here, and
// whatever the other trainer did differently for a recorded path; it is
// carried as its own term and reported, never hidden.  proofs-notes/004.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <exception>
#include <functional>
#include <optional>
#include <thread>
#include <span>
#include <utility>
#include <vector>

#include "epk/segment.hpp"
#include "epk/training.hpp"
#include "epk/work_split.hpp"

namespace epk {

template <Real T>
struct path_kernel_request {
    const training_problem<T>* problem = nullptr;
    sgd_schedule schedule;
    std::vector<T> w0;
    // Row s (1 ≤ s ≤ S) of a recorded path; empty: the path is trained here by SGD in T.
    std::function<std::vector<T>(std::size_t)> recorded_row;
    matrix<T> x_test;                       // M × D
    std::vector<std::size_t> kernel_steps;  // steps whose K_s is stored (ascending, < S)
    bool store_coefficients = false;        // keep a_{i,s} for every step (memory S·N·C)
    bool store_contributions = true;        // keep c(x_m, x_i) (memory M·N·C); reconstructions need neither
    // Splits of the contributions (epk explain; both need store_contributions and take the
    // full-Jacobian paths): `split_layers` = ascending parameter offsets 0 = b_0 < … < b_L = P,
    // the contribution of the parameters [b_l, b_{l+1}) kept per layer (memory M·N·C·L);
    // `split_steps`: each step's share kept (memory S·M·N·C).  They sum to the contributions
    // up to rounding.
    std::vector<std::size_t> split_layers;
    bool split_steps = false;
    quadrature_options quadrature;
    // Worker threads over the test points (0: hardware concurrency).  Each
    // test point's arithmetic is the same whatever the count, so results are
    // bit-for-bit identical to a single-threaded run.
    std::size_t threads = 0;
    // true: per-layer factors and dense products (structured_kernel.hpp, the default);
    // false: full C × P Jacobian integrals contracted entry by entry (the unstructured
    // reference path, kept for cross-checks and as the benchmarks' baseline).
    bool structured = true;
    // The optimizer's state before step 0 (a resumed run; fresh by default).  The
    // optimizer itself is schedule.optimizer; anything but plain SGD from a fresh start
    // takes optimizer_kernel.hpp's representation.
    optimizer_state<T> initial_state;
    // Shared between processes (work_split.hpp): this process takes the test side of its units
    // only, and rank 0 adds every rank's records.  Null or one rank: all of it here.
    const work_split* split = nullptr;
};

template <Real T>
struct path_kernel_result {
    std::size_t m = 0, n = 0, c = 0, p = 0, steps = 0;
    matrix<T> bias;                   // f(x; w[0])                         M × C
    matrix<T> outputs_final;          // f(x; w[S])                         M × C
    matrix<T> reconstruction;         // bias + Σ_s (Σ_i K_s a_i + Ī_s r_s)  M × C
    matrix<T> kernel_reconstruction;  // bias + Σ_i c(x, x_i) (+ optimizer_term) M × C
    matrix<T> remainder_term;         // Σ_s Ī_s r_s                        M × C
    matrix<T> optimizer_term;         // Σ_s Ī_s ω_s (weight decay, state before step 0;
                                      // optimizer_kernel.hpp), empty for plain SGD
    std::vector<T> contributions;     // c(x_m, x_i) = Σ_s K_s a_{i,s}      [M][N][C]
    std::vector<T> layer_contributions;  // split_layers: per parameter range  [M][N][C][L]
    std::vector<T> step_contributions;   // split_steps: per step              [S][M][N][C]
    std::vector<std::pair<std::size_t, std::vector<T>>> step_kernels;  // (s, [M][N][C][C])
    std::vector<T> coefficients;      // a_{i,s} summed over i's occurrences in B_s, [S][N][C] (if requested)
    matrix<T> quadrature_bound;       // Σ_s est_s(x)·‖Δ_s‖₁                 M × C
    matrix<double> forward_scale;     // forward_magnitude at w[0] plus at w[S]  M × C
    matrix<double> path_magnitude;    // Σ_s ∫ Σ_p |J|_mag[c][p]·|Δ_s[p]| dt ≥ Σ_s Σ_p |Ī_s Δ_s|  M × C
    std::vector<std::size_t> cuts;         // per test point, summed over steps
    std::vector<std::size_t> evaluations;  // Jacobians evaluated, per test point
    std::size_t max_rule_nodes = 0;        // most nodes in one segment's accepted rules
    std::size_t max_batch = 0;             // largest |B_s| (the per-step sum over the batch)
    bool quadrature_converged = true;
    T remainder_max_abs = T(0);       // max_s ‖r_s‖_∞
    T remainder_max_rel = T(0);       // max_s ‖r_s‖_∞ / ‖Δ_s‖_∞
    std::size_t remainder_worst_step = 0;
    // The recorded-path audit, one entry per step (binary64 summaries of T values):
    // ‖r_s‖_∞, ‖r_s‖_2, ‖Δ_s‖_∞, ‖w[s+1]‖_∞ and max_{m,c} |Ī_s(x_m) r_s|_c.
    // deviation_max_abs = ‖w[s+1] − (the declared optimizer's step from w[s], as the trainer
    // takes it)‖_∞: zero for a replayed path, what a recorded row does beyond the declared training.
    struct step_audit {
        double remainder_max_abs = 0, remainder_norm2 = 0, step_max_abs = 0, weight_max_abs = 0, contribution_max_abs = 0,
               deviation_max_abs = 0;
    };
    std::vector<step_audit> audit;
    std::vector<T> losses;            // L_s(w[s])
    // Work of the structured path's test side (zero for the unstructured path): the dense
    // products (flops, seconds summed over threads) and the multiply-adds outside them.
    double gemm_flops = 0, gemm_seconds = 0, elementwise_madds = 0;
};

// f_c(x) − f_c(x') contracted: Σ_p a[c][p] v[p], p ascending.
template <Real T>
std::vector<T> contract_rows(const matrix<T>& a, std::span<const T> v) {
    std::vector<T> out(a.rows, T(0));
    for (std::size_t c = 0; c < a.rows; ++c) {
        T acc(0);
        for (std::size_t q = 0; q < a.cols; ++q) add_product(acc, a(c, q), v[q]);
        out[c] = acc;
    }
    return out;
}

// contract_rows on each parameter range [b_l, b_{l+1}) of `bounds`, added at out[c·L + l].
template <Real T>
void contract_ranges(const matrix<T>& a, std::span<const T> v, const std::vector<std::size_t>& bounds, T* out) {
    const std::size_t L = bounds.size() - 1;
    for (std::size_t c = 0; c < a.rows; ++c)
        for (std::size_t l = 0; l < L; ++l) {
            T acc(0);
            for (std::size_t q = bounds[l]; q < bounds[l + 1]; ++q) add_product(acc, a(c, q), v[q]);
            out[c * L + l] = acc;
        }
}

// K_s(x, x') by full Jacobians: Ī(x) J(x'; w)ᵀ (C × C), sums over p ascending.
template <Real T>
matrix<T> step_kernel_from_jacobians(const matrix<T>& integral, const matrix<T>& jac_train) {
    matrix<T> k(integral.rows, jac_train.rows);
    for (std::size_t c = 0; c < integral.rows; ++c)
        for (std::size_t d = 0; d < jac_train.rows; ++d) {
            T acc(0);
            for (std::size_t q = 0; q < integral.cols; ++q) add_product(acc, integral(c, q), jac_train(d, q));
            k(c, d) = acc;
        }
    return k;
}

// K_s(x, x') by per-layer factors, the second, independent path: on the
// same nodes t_q and weights ω_q,
//   K[c][d] = Σ_q ω_q Σ_l (δ_l(x, t_q)[c]·δ_l(x')[d]) · (h_l(x, t_q)·h_l(x') + [l has bias])
// (network.hpp, layer_factors).  No C × P matrix is formed.
template <Real T>
matrix<T> step_kernel_from_factors(const model_spec& m, std::span<const T> w, std::span<const T> delta,
                                   std::span<const T> nodes, std::span<const T> weights, const matrix<T>& x1,
                                   const matrix<T>& x_train1) {
    const std::size_t c = m.output_dim();
    const auto offsets = parameter_offsets(m);
    const layer_factors<T> train = jacobian_factors<T>(m, w, x_train1);
    matrix<T> k(c, c);
    for (std::size_t q = 0; q < nodes.size(); ++q) {
        const layer_factors<T> test = jacobian_factors<T>(m, detail::point_on_segment<T>(w, delta, nodes[q]), x1);
        for (std::size_t l = 0; l < offsets.size(); ++l) {
            T hh(0);
            for (std::size_t j = 0; j < offsets[l].in; ++j) add_product(hh, test.input[l][j], train.input[l][j]);
            if (offsets[l].has_bias) hh += T(1);
            for (std::size_t a = 0; a < c; ++a)
                for (std::size_t b = 0; b < c; ++b) {
                    T dd(0);
                    for (std::size_t r = 0; r < offsets[l].out; ++r) add_product(dd, test.delta[l](a, r), train.delta[l](b, r));
                    k(a, b) += weights[q] * (dd * hh);
                }
        }
    }
    return k;
}

// The forward pass's rounding scale, per output (in binary64): with exact
// inputs, M_z = |W| M_h + |W||h| + |b| at a linear layer and
// M_h = |σ′(z)| M_z + |σ(z)| at an activation; the computed f differs from the
// exact one by at most about γ·u·M_f (proofs-notes/004 §5).  M_f ≥ |f|, and
// M_f ≫ |f| exactly when the output is a cancelling sum.
template <Real T>
std::vector<double> forward_magnitude(const model_spec& m, std::span<const T> w, const matrix<T>& x1) {
    if (!m.is_mlp()) {  // tree_segment.hpp, in binary64 from the rounded parameters and inputs
        std::vector<double> wd(w.size()), xd(x1.cols);
        for (std::size_t p = 0; p < w.size(); ++p) wd[p] = scalar_traits<T>::to_double(w[p]);
        for (std::size_t j = 0; j < x1.cols; ++j) xd[j] = scalar_traits<T>::to_double(x1(0, j));
        return tree_segment::forward_magnitude(tree_segment::analyse(m), wd, xd);
    }
    return forward_error_magnitude<T>(m, w, forward(m, w, x1));
}

namespace detail {
// Runs fn(0..count−1) on up to `threads` threads (0: hardware concurrency),
// each thread taking the next point not yet taken (points cost very different
// amounts: a test point's cuts), so fn(k) must not depend on the thread that
// runs it — every caller writes point k's results to slots of its own.  The
// first exception is rethrown and stops the handing out.  For mpfr_real the
// workers take the caller's working precision.
template <Real T, class Fn>
void for_each_point_t(std::size_t count, std::size_t threads, Fn& fn) {
    if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
    threads = std::min(threads, count);
    if (threads <= 1) {
        for (std::size_t k = 0; k < count; ++k) fn(k);
        return;
    }
    const long bits = scalar_traits<T>::mantissa_bits();
    std::vector<std::exception_ptr> errors(threads);
    std::atomic<std::size_t> next{0};
    auto work = [&](std::size_t tid) {
        try {
            std::optional<mpfr_precision_scope> scope;
            if constexpr (std::is_same_v<T, mpfr_real>) scope.emplace(bits);
            for (std::size_t k = next.fetch_add(1); k < count; k = next.fetch_add(1)) fn(k);
        } catch (...) {
            errors[tid] = std::current_exception();
            next.store(count);
        }
        if constexpr (std::is_same_v<T, mpfr_real>)
            if (tid != 0) mpfr_release_thread_caches();  // the thread ends: its MPFR caches with it
    };
    std::vector<std::thread> pool;
    for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(work, t);
    work(0);
    for (auto& th : pool) th.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}
}  // namespace detail

namespace detail {
// Δ_s = w[s+1] − w[s], r_s = Δ_s − Σ_i g_{i,s}, ‖Δ_s‖₁ and the step's audit
// entry; res.remainder_max_abs / _rel / _worst_step are updated.
template <Real T>
struct step_difference {
    std::vector<T> delta, rem;
    T delta_l1 = T(0);
    T rem_inf = T(0), delta_inf = T(0);  // ‖r_s‖_∞, ‖Δ_s‖_∞ (the result's remainder summaries)
    typename path_kernel_result<T>::step_audit audit;
};

// The remainder's summaries over the steps, step by step (in step order: the first largest wins).
template <Real T>
void add_remainder_summary(path_kernel_result<T>& res, std::size_t s, const T& rem_inf, const T& delta_inf) {
    if (rem_inf > res.remainder_max_abs) {
        res.remainder_max_abs = rem_inf;
        res.remainder_worst_step = s;
    }
    if (delta_inf > T(0)) res.remainder_max_rel = rm::max(res.remainder_max_rel, T(rem_inf / delta_inf));
}

template <Real T>
step_difference<T> difference_of_step(const std::vector<T>& w, const std::vector<T>& w_next,
                                      const std::vector<T>& g_sum, std::size_t s, path_kernel_result<T>& res,
                                      double deviation) {
    const std::size_t P = w.size();
    step_difference<T> sd;
    sd.delta.resize(P);
    sd.rem.resize(P);
    std::vector<T>& delta = sd.delta;
    std::vector<T>& rem = sd.rem;
    T& delta_l1 = sd.delta_l1;
    auto& au = sd.audit;
    T delta_inf(0), rem_inf(0);
    for (std::size_t q = 0; q < P; ++q) {
        delta[q] = w_next[q] - w[q];
        rem[q] = delta[q] - g_sum[q];
        delta_inf = rm::max(delta_inf, rm::abs(delta[q]));
        delta_l1 += rm::abs(delta[q]);
        rem_inf = rm::max(rem_inf, rm::abs(rem[q]));
    }
    sd.rem_inf = rem_inf;
    sd.delta_inf = delta_inf;
    add_remainder_summary(res, s, rem_inf, delta_inf);
    {
        T rem_sq(0), w_inf(0);
        for (std::size_t q = 0; q < P; ++q) {
            add_product(rem_sq, rem[q], rem[q]);
            max_abs_into(w_inf, w_next[q]);
        }
        au.remainder_max_abs = scalar_traits<T>::to_double(rem_inf);
        au.remainder_norm2 = std::sqrt(scalar_traits<T>::to_double(rem_sq));
        au.step_max_abs = scalar_traits<T>::to_double(delta_inf);
        au.weight_max_abs = scalar_traits<T>::to_double(w_inf);
        au.deviation_max_abs = deviation;
    }
    return sd;
}

// max_q |a_q − b_q| in binary64.
template <Real T>
double max_abs_difference(const std::vector<T>& a, const std::vector<T>& b) {
    T m(0);
    for (std::size_t q = 0; q < a.size(); ++q) m = rm::max(m, rm::abs(T(a[q] - b[q])));
    return scalar_traits<T>::to_double(m);
}

// The path's next point w[s+1]: recorded, or trained here exactly as train_sgd does
// (sgd_update from the batch's forward pass at w[s] and ∂L/∂f, which the caller has).
// `deviation` = ‖recorded w[s+1] − the trained step‖_∞ (0 for a replayed path): the audit's measure.
template <Real T>
std::vector<T> next_point(const path_kernel_request<T>& rq, const std::vector<T>& w, const forward_pass<T>& fp,
                          const matrix<T>& g_out, const T& eta, std::size_t s, double& deviation) {
    std::vector<T> w_pred = w;
    sgd_update<T>(*rq.problem, w_pred, fp, g_out, eta);
    deviation = 0;
    if (rq.recorded_row) {
        std::vector<T> w_next = rq.recorded_row(s + 1);
        if (w_next.size() != w.size()) throw usage_error("compute_path_kernel: recorded row has the wrong size");
        deviation = max_abs_difference(w_next, w_pred);
        return w_next;
    }
    return w_pred;
}

// The checks every path kernel computation starts with.
template <Real T>
void validate_request(const path_kernel_request<T>& rq) {
    if (rq.problem == nullptr) throw usage_error("compute_path_kernel: no problem");
    const training_problem<T>& pr = *rq.problem;
    rq.schedule.validate();
    check_optimizer_state<T>(rq.schedule.optimizer, rq.initial_state, rq.w0.size());
    if (rq.schedule.n_train != pr.x.rows) throw usage_error("compute_path_kernel: schedule is for a different training set");
    check_network_shapes(pr.model, rq.w0.size(), rq.x_test.cols);
    for (std::size_t k = 0; k < rq.kernel_steps.size(); ++k)
        if (rq.kernel_steps[k] >= rq.schedule.steps || (k > 0 && rq.kernel_steps[k] <= rq.kernel_steps[k - 1]))
            throw usage_error("compute_path_kernel: kernel steps must be ascending and < S");
}
// The structured and unstructured paths represent plain SGD (compute_path_kernel sends
// anything else to optimizer_kernel.hpp).
template <Real T>
void require_plain_sgd(const path_kernel_request<T>& rq) {
    if (uses_optimizer_state<T>(rq.schedule, rq.initial_state))
        throw usage_error("compute_path_kernel: this path represents plain SGD; use compute_path_kernel for " +
                          std::string(to_string(rq.schedule.optimizer.type)) + " with momentum, weight decay or state");
}
// The result's shapes and the bias f(x; w[0]), before the first step.
template <Real T>
path_kernel_result<T> start_result(const path_kernel_request<T>& rq) {
    const training_problem<T>& pr = *rq.problem;
    const model_spec& model = pr.model;
    const sgd_schedule& sch = rq.schedule;
    path_kernel_result<T> res;
    res.m = rq.x_test.rows;
    res.n = pr.x.rows;
    res.c = model.output_dim();
    res.p = rq.w0.size();
    res.steps = sch.steps;
    const std::size_t M = res.m, N = res.n, C = res.c;
    res.bias = outputs<T>(model, rq.w0, rq.x_test);
    res.reconstruction = res.bias;
    res.remainder_term = matrix<T>(M, C);
    // A split computation's per-point arrays are added on rank 0 only (point_sink).
    const bool adds = rq.split == nullptr || rq.split->rank == 0;
    if (rq.store_contributions && adds) res.contributions.assign(M * N * C, T(0));
    if (!rq.split_layers.empty()) {
        if (!rq.store_contributions || rq.split_layers.front() != 0 || rq.split_layers.back() != res.p ||
            !std::is_sorted(rq.split_layers.begin(), rq.split_layers.end()))
            throw usage_error("compute_path_kernel: split_layers must run from 0 to P, ascending, with contributions");
        if (adds) res.layer_contributions.assign(M * N * C * (rq.split_layers.size() - 1), T(0));
    }
    if (rq.split_steps) {
        if (!rq.store_contributions) throw usage_error("compute_path_kernel: split_steps needs the contributions");
        if (adds) res.step_contributions.assign(sch.steps * M * N * C, T(0));
    }
    res.quadrature_bound = matrix<T>(M, C);
    res.path_magnitude = matrix<double>(M, C);
    if (rq.store_coefficients) res.coefficients.assign(sch.steps * N * C, T(0));
    res.cuts.assign(M, 0);
    res.evaluations.assign(M, 0);
    res.max_batch = sch.batch_reader ? sch.batch_size : (sch.batches.empty() ? sch.n_train : 0);
    for (const auto& row : sch.batches) res.max_batch = std::max(res.max_batch, row.size());
    return res;
}

// After the last step (w = w[S]): f(x; w[S]), the forward scale, the kernel machine's
// reconstruction (from the contributions when kept, else from the per-step kernel_sum),
// the largest rule and whether every rule converged.
template <Real T>
void finish_result(const path_kernel_request<T>& rq, const std::vector<T>& w, const matrix<T>& kernel_sum,
                   const std::vector<std::size_t>& rule_nodes, const std::vector<char>& converged,
                   const std::vector<matrix<T>>& x_rows, path_kernel_result<T>& res) {
    const model_spec& model = rq.problem->model;
    const std::size_t M = res.m, N = res.n, C = res.c;
    for (std::size_t mm = 0; mm < M; ++mm) {
        res.max_rule_nodes = std::max(res.max_rule_nodes, rule_nodes[mm]);
        res.quadrature_converged = res.quadrature_converged && converged[mm] != 0;
    }
    res.outputs_final = outputs<T>(model, w, rq.x_test);
    res.forward_scale = matrix<double>(M, C);
    for (std::size_t mm = 0; mm < M; ++mm) {
        const std::vector<double> m0 = forward_magnitude<T>(model, rq.w0, x_rows[mm]);
        const std::vector<double> m1 = forward_magnitude<T>(model, w, x_rows[mm]);
        for (std::size_t c = 0; c < C; ++c) res.forward_scale(mm, c) = m0[c] + m1[c];
    }
    res.kernel_reconstruction = res.bias;
    for (std::size_t mm = 0; mm < M; ++mm)
        for (std::size_t c = 0; c < C; ++c) {
            if (!rq.store_contributions) {
                res.kernel_reconstruction(mm, c) += kernel_sum(mm, c);
                continue;
            }
            if (res.contributions.empty()) continue;  // a split computation's other ranks (start_result)
            for (std::size_t i = 0; i < N; ++i) res.kernel_reconstruction(mm, c) += res.contributions[(mm * N + i) * C + c];
        }
    if (!res.optimizer_term.data.empty())  // the optimizer's own term belongs to the kernel machine
        for (std::size_t e = 0; e < res.kernel_reconstruction.data.size(); ++e)
            res.kernel_reconstruction.data[e] += res.optimizer_term.data[e];
}

// What one step adds at one test point, computed by either path.
template <Real T>
struct point_step {
    std::size_t cuts = 0, evaluations = 0, nodes = 0;
    bool converged = true;
    std::vector<T> contribution;    // [C][b]: K_s(x, x_i) a_{i,s} for batch row i
    std::vector<T> remainder;       // [C]: Ī_s(x) r_s
    std::vector<T> optimizer_term;  // [C]: Ī_s(x) ω_s (optimizer_kernel.hpp; empty for plain SGD)
    std::vector<T> layer_contribution;  // [b][C][L] with split_layers: the contribution by parameter range
    std::size_t step = 0;
    std::vector<double> magnitude;  // [C]: the step's path magnitude
    T estimate = T(0);              // quadrature estimate of Ī's entries
    std::vector<T> estimate_by_output;  // [C], when set: the estimate of the step's terms
                                        // themselves (the smooth ladder), used instead of
                                        // estimate·‖Δ‖₁
};

// What the full-Jacobian paths (unstructured, optimizer_kernel.hpp) start each step
// with: the batch, the rate, the batch's forward pass at w[s] and ρ∂ℓ/∂f there (the loss
// L_s(w[s]) goes into res.losses).
template <Real T>
struct step_start {
    std::vector<std::size_t> batch;
    T eta;
    forward_pass<T> fp;
    matrix<T> grad_out;
};
template <Real T>
step_start<T> begin_step(const path_kernel_request<T>& rq, std::span<const T> w, std::size_t s,
                         path_kernel_result<T>& res) {
    const training_problem<T>& pr = *rq.problem;
    std::vector<std::size_t> batch = rq.schedule.batch(s);
    forward_pass<T> fp = forward(pr.model, w, gather_rows(pr.x, batch));
    res.losses.push_back(loss_value(pr.loss, fp.outputs(), pr.y, batch));
    matrix<T> grad_out = output_gradient(pr.loss, fp.outputs(), pr.y, batch);
    return {std::move(batch), T(rq.schedule.learning_rates[s]), std::move(fp), std::move(grad_out)};
}

// The training side of a plain-SGD step: a_{i,s} = −η ∂ℓ/∂f(x_i) (added to res.coefficients
// when stored), the per-sample gradients g_{i,s} = J(x_i)ᵀ a_{i,s} as the rows of `g` (one vjp
// per row; rows are independent, so any thread count) and their sum Σ_i g_{i,s}, i ascending —
// the trainer's arithmetic.
template <Real T>
struct step_gradients {
    matrix<T> g;         // b × P
    std::vector<T> sum;  // P
};
template <Real T>
step_gradients<T> training_gradients(const path_kernel_request<T>& rq, std::span<const T> w, const step_start<T>& st0,
                                     std::size_t s, path_kernel_result<T>& res) {
    const training_problem<T>& pr = *rq.problem;
    const std::size_t b = st0.batch.size(), C = res.c, N = res.n, P = res.p;
    step_gradients<T> out{matrix<T>(b, P), std::vector<T>(P, T(0))};
    auto sample_gradient = [&](std::size_t k) {
        matrix<T> a(1, C);
        for (std::size_t c = 0; c < C; ++c) a(0, c) = -(st0.eta * st0.grad_out(k, c));
        const std::vector<T> gk = vjp<T>(pr.model, w, gather_rows(pr.x, std::span<const std::size_t>(&st0.batch[k], 1)), a);
        std::copy(gk.begin(), gk.end(), out.g.row(k).begin());
    };
    for_each_point_t<T>(b, rq.threads, sample_gradient);
    for (std::size_t k = 0; k < b; ++k) {
        if (rq.store_coefficients)
            for (std::size_t c = 0; c < C; ++c)
                res.coefficients[(s * N + st0.batch[k]) * C + c] += -(st0.eta * st0.grad_out(k, c));
        for (std::size_t q = 0; q < P; ++q) out.sum[q] += out.g(k, q);
    }
    return out;
}

// A test point's step record from its segment integral: counters, estimate, magnitude.
template <Real T>
point_step<T> point_step_of(const segment_integral<T>& seg) {
    point_step<T> ps;
    ps.cuts = seg.cuts;
    ps.evaluations = seg.evaluations;
    ps.nodes = seg.nodes.size();
    ps.converged = seg.converged;
    ps.estimate = seg.error_estimate;
    ps.magnitude = seg.magnitude;
    return ps;
}

// Adds point mm's step into the result: the contributions (or the kernel machine's running
// sum), the remainder term, the reconstruction and the budget's terms, in one fixed order
// (batch rows ascending, then the remainder) for both paths.
template <Real T>
void add_point_step(const path_kernel_request<T>& rq, const std::vector<std::size_t>& batch, std::size_t mm,
                    const point_step<T>& ps, const T& delta_l1, path_kernel_result<T>& res, matrix<T>& kernel_sum,
                    std::vector<std::size_t>& rule_nodes, std::vector<char>& converged, double& point_contribution) {
    const std::size_t C = res.c, N = res.n, b = batch.size();
    res.cuts[mm] += ps.cuts;
    res.evaluations[mm] += ps.evaluations;
    rule_nodes[mm] = std::max(rule_nodes[mm], ps.nodes);
    if (!ps.converged) converged[mm] = 0;
    std::vector<T> step(C, T(0));
    const std::size_t M = res.m, L = rq.split_layers.empty() ? 0 : rq.split_layers.size() - 1;
    for (std::size_t k = 0; k < b; ++k) {
        T* out = rq.store_contributions ? &res.contributions[(mm * N + batch[k]) * C] : nullptr;
        for (std::size_t c = 0; c < C; ++c) {
            const T& ck = ps.contribution[c * b + k];
            if (out != nullptr) out[c] += ck;
            step[c] += ck;
            if (rq.split_steps) res.step_contributions[((ps.step * M + mm) * N + batch[k]) * C + c] += ck;
            for (std::size_t l = 0; l < L; ++l)
                res.layer_contributions[((mm * N + batch[k]) * C + c) * L + l] += ps.layer_contribution[(k * C + c) * L + l];
        }
    }
    if (!rq.store_contributions)  // the kernel machine's sum, step by step (no per-point contributions kept)
        for (std::size_t c = 0; c < C; ++c) kernel_sum(mm, c) += step[c];
    if (!ps.optimizer_term.empty())
        for (std::size_t c = 0; c < C; ++c) {
            res.optimizer_term(mm, c) += ps.optimizer_term[c];
            step[c] += ps.optimizer_term[c];
        }
    for (std::size_t c = 0; c < C; ++c) {
        const T& rr = ps.remainder[c];
        point_contribution = std::max(point_contribution, std::abs(scalar_traits<T>::to_double(rr)));
        res.remainder_term(mm, c) += rr;
        step[c] += rr;
        res.reconstruction(mm, c) += step[c];
        res.quadrature_bound(mm, c) += ps.estimate_by_output.empty() ? T(ps.estimate * delta_l1) : ps.estimate_by_output[c];
        res.path_magnitude(mm, c) += ps.magnitude[c];
    }
}

// The step's end: its audit entry (with the largest remainder effect on a test output), the
// stored kernel, the next point of the path, progress.
template <Real T>
void end_step(step_difference<T>& sd, const std::vector<double>& point_contribution, bool store_kernel,
              std::vector<T>& kernel, std::size_t s, std::size_t& next_kernel, std::vector<T>& w, std::vector<T>& w_next,
              path_kernel_result<T>& res, const std::function<void(std::size_t, std::size_t)>& progress) {
    for (double v : point_contribution) sd.audit.contribution_max_abs = std::max(sd.audit.contribution_max_abs, v);
    res.audit.push_back(sd.audit);
    if (store_kernel) {
        res.step_kernels.emplace_back(s, std::move(kernel));
        ++next_kernel;
    }
    w = std::move(w_next);
    if (progress) progress(s + 1, res.steps);
}

// What one step added at one test point, kept for rank 0 when the work is split.
template <Real T>
struct point_record {
    std::size_t step = 0, point = 0;
    std::vector<std::size_t> columns;  // add_point_step's batch rows
    T delta_l1 = T(0);
    point_step<T> ps;
    std::vector<T> kernel;  // a stored step's K_s(x, ·) of this point: [N][C][C]
};

// What a step's training side gives rank 0 when whole step blocks are dealt (point_sink):
// the loss, the audit entry, the remainder's norms and the coefficients' rows of the step.
template <Real T>
struct step_record {
    std::size_t step = 0;
    T loss = T(0), rem_inf = T(0), delta_inf = T(0);
    typename path_kernel_result<T>::step_audit audit;
    std::vector<T> coefficients;  // [N][C] (when stored)
};

// Where the test side's point-steps go.  One process: straight into the result
// (add_point_step).  Split (work_split.hpp): kept, and every few rounds sent to rank 0, which
// adds every rank's records in (step, point) order — each test point's steps in the order one
// process adds them, so the sums are the same.  Threads take points: take() writes the
// point's own slot.
//
// Who takes what: test points' chunks interleaved over the ranks at every step (work_split::
// owns; every rank takes every step's training side), or — plain SGD, unless the blocks would
// balance worse than the chunks — whole step blocks dealt to the ranks: a rank takes the
// training side of its own steps only and follows the path over the others by the recorded row
// or the trainer's step (skip_step); the steps' own results reach rank 0 as step records.  Either
// way rank 0 adds the same records in the same order.
template <Real T>
class point_sink {
public:
    // `whole_steps`: the caller can skip steps (plain SGD: the path needs no optimizer state).
    point_sink(const path_kernel_request<T>& rq, std::size_t points, bool whole_steps = false)
        : rq_(rq), split_(rq.split != nullptr && rq.split->distributed() ? rq.split : nullptr),
          pending_(split_ ? points : 0) {
        if (split_ == nullptr) return;
        const std::size_t R = split_->ranks, S = rq.schedule.steps;
        // The records go to rank 0 every few rounds of R blocks (each rank's share of them), as
        // many as keep a rank's held records near 64 MiB — for verify usually only at the end:
        // ranks that are ahead or behind for a while even out instead of waiting for each other.
        {
            const training_problem<T>& pr = *rq.problem;
            const std::size_t C = pr.model.output_dim();
            const sgd_schedule& sch = rq.schedule;  // the largest batch (start_result's max_batch)
            std::size_t b = sch.batch_reader ? sch.batch_size : (sch.batches.empty() ? sch.n_train : 0);
            for (const auto& row : sch.batches) b = std::max(b, row.size());
            const bool columns = rq.store_contributions || !rq.split_layers.empty() || rq.split_steps;
            const double per_step = static_cast<double>(points) * static_cast<double>(C * (columns ? b : 1) + 3 * C + 12) * 8.0 / R;
            const double round = per_step * static_cast<double>(split_block_steps * R);
            const double rounds = std::max(1.0, std::floor(64.0 * 1024 * 1024 / std::max(round, 1.0)));
            exchange_steps_ = rounds * static_cast<double>(split_block_steps * R) >= static_cast<double>(S)
                                  ? S
                                  : split_block_steps * R * static_cast<std::size_t>(rounds);
        }
        const std::size_t blocks = (S + split_block_steps - 1) / split_block_steps;
        const std::size_t chunks = (points + split_chunk_points - 1) / split_chunk_points;
        // Whole blocks unless they would leave ranks idle for long: the share of the busiest
        // rank's time the others work, blocks against chunks (interleaving also repeats the
        // training side on every rank, so blocks win a tie and anything from 3/4 up).
        auto balance = [R](std::size_t units) {
            return static_cast<double>(units) / static_cast<double>(R * ((units + R - 1) / R));
        };
        by_blocks_ = whole_steps && (chunks < R || balance(blocks) >= balance(chunks) || balance(blocks) >= 0.75);
        // The blocks past the last whole round (blocks mod R of them) are not dealt whole, which
        // would leave R − (blocks mod R) ranks idle: every rank takes their training side and
        // their chunks are interleaved (when there are at least as many chunks as ranks).
        if (by_blocks_ && chunks >= R) first_shared_step_ = blocks / R * R * split_block_steps;
        if (by_blocks_) {
            rem_inf_.assign(S, T(0));
            delta_inf_.assign(S, T(0));
        }
    }

    bool split() const { return split_ != nullptr; }
    // Whether this process takes step s's training side (and the test side of its units there).
    bool takes_step(std::size_t s) const {
        return !by_blocks_ || shared_step(s) || (s / split_block_steps) % split_->ranks == split_->rank;
    }
    // Whether this process takes point `point`'s test side at step `step`.
    bool owns(std::size_t step, std::size_t point) const {
        if (split_ == nullptr) return true;
        return by_blocks_ && !shared_step(step) ? takes_step(step) : split_->owns(step, point);
    }
    // The smooth ladder restarts at every step block (work_split.hpp), split or not.
    static bool block_starts(std::size_t step) { return step % split_block_steps == 0; }

    void take(const std::vector<std::size_t>& columns, std::size_t mm, const point_step<T>& ps, const T& delta_l1,
              path_kernel_result<T>& res, matrix<T>& kernel_sum, std::vector<std::size_t>& rule_nodes,
              std::vector<char>& converged, double& point_contribution) {
        if (split_ == nullptr) {
            add_point_step<T>(rq_, columns, mm, ps, delta_l1, res, kernel_sum, rule_nodes, converged, point_contribution);
            return;
        }
        point_record<T> r;
        r.point = mm;
        r.columns = columns;
        r.delta_l1 = delta_l1;
        r.ps = ps;
        // Without per-point contributions (verify), add_point_step only sums the batch's columns,
        // 0 + c_1 + c_2 + … in column order: the owner sends that sum as one column, the same
        // value, instead of all of them.
        const std::size_t C = ps.remainder.size(), b = columns.size();
        if (!rq_.store_contributions && rq_.split_layers.empty() && !rq_.split_steps && b > 1 &&
            ps.contribution.size() == C * b) {
            std::vector<T> sum(C, T(0));
            for (std::size_t k = 0; k < b; ++k)
                for (std::size_t c = 0; c < C; ++c) sum[c] += ps.contribution[c * b + k];
            r.ps.contribution = std::move(sum);
            r.columns.resize(1);
        }
        pending_[mm].push_back(std::move(r));
    }

    // After the step's test side, before end_step takes the stored kernel: the step's records
    // (with their points' kernel rows) into the round.
    void end_of_step(std::size_t s, const step_difference<T>& sd, bool store_kernel, const std::vector<T>& kernel,
                     const path_kernel_result<T>& res) {
        if (split_ == nullptr) return;
        const std::size_t N = res.n, C = res.c;
        for (std::size_t mm = 0; mm < pending_.size(); ++mm) {
            for (std::size_t k = 0; k < pending_[mm].size(); ++k) {
                point_record<T>& r = pending_[mm][k];
                r.step = s;
                if (store_kernel && k == 0) {
                    const auto first = kernel.begin() + static_cast<std::ptrdiff_t>(mm * N * C * C);
                    r.kernel.assign(first, first + static_cast<std::ptrdiff_t>(N * C * C));
                }
                round_.push_back(std::move(r));
            }
            pending_[mm].clear();
        }
        if (!by_blocks_ || (shared_step(s) && split_->rank != 0)) return;  // a shared step's: rank 0's
        step_record<T> st;
        st.step = s;
        st.loss = res.losses.at(s);
        st.rem_inf = sd.rem_inf;
        st.delta_inf = sd.delta_inf;
        st.audit = sd.audit;
        if (rq_.store_coefficients)
            st.coefficients.assign(res.coefficients.begin() + static_cast<std::ptrdiff_t>(s * N * C),
                                   res.coefficients.begin() + static_cast<std::ptrdiff_t>((s + 1) * N * C));
        steps_.push_back(std::move(st));
    }

    // A step another rank takes: the path's next point — the recorded row, or the trainer's step
    // (next_point's, from the batch's forward pass at w[s]) — and the result's places for the
    // step, which rank 0 fills from the owner's records.
    void skip_step(std::size_t s, std::vector<T>& w, path_kernel_result<T>& res, std::size_t& next_kernel,
                   const std::function<void(std::size_t, std::size_t)>& progress) {
        const training_problem<T>& pr = *rq_.problem;
        if (rq_.recorded_row) {
            std::vector<T> w_next = rq_.recorded_row(s + 1);
            if (w_next.size() != w.size()) throw usage_error("compute_path_kernel: recorded row has the wrong size");
            w = std::move(w_next);
        } else {
            const std::vector<std::size_t> batch = rq_.schedule.batch(s);
            const forward_pass<T> fp = forward(pr.model, std::span<const T>(w), gather_rows(pr.x, batch));
            const matrix<T> g_out = output_gradient(pr.loss, fp.outputs(), pr.y, batch);
            sgd_update<T>(pr, w, fp, g_out, T(rq_.schedule.learning_rates[s]));
        }
        res.losses.push_back(T(0));
        res.audit.emplace_back();
        if (next_kernel < rq_.kernel_steps.size() && rq_.kernel_steps[next_kernel] == s) {
            res.step_kernels.emplace_back(s, std::vector<T>(split_->rank == 0 ? res.m * res.n * res.c * res.c : 0, T(0)));
            ++next_kernel;
        }
        if (progress) progress(s + 1, res.steps);
    }

    // After end_step (or skip_step): at an exchange (every few rounds), every rank's records to
    // rank 0, added there.
    void after_step(std::size_t s, path_kernel_result<T>& res, matrix<T>& kernel_sum, std::vector<std::size_t>& rule_nodes,
                    std::vector<char>& converged) {
        if (split_ == nullptr || ((s + 1) % exchange_steps_ != 0 && s + 1 != res.steps)) return;
        byte_writer out;
        out.put(steps_.size());
        for (const step_record<T>& st : steps_) {
            out.put(st.step);
            out.put_real(st.loss);
            out.put_real(st.rem_inf);
            out.put_real(st.delta_inf);
            const auto& a = st.audit;
            out.put_vector(std::vector<double>{a.remainder_max_abs, a.remainder_norm2, a.step_max_abs, a.weight_max_abs,
                                               a.contribution_max_abs, a.deviation_max_abs});
            out.put_vector(st.coefficients);
        }
        out.put(round_.size());
        for (const point_record<T>& r : round_) {
            out.put(r.step);
            out.put(r.point);
            out.put_vector(r.columns);
            out.put_real(r.delta_l1);
            out.put_vector(r.kernel);
            const point_step<T>& p = r.ps;
            out.put(p.cuts);
            out.put(p.evaluations);
            out.put(p.nodes);
            out.put(std::size_t{p.converged ? 1u : 0u});
            out.put(p.step);
            out.put_vector(p.contribution);
            out.put_vector(p.remainder);
            out.put_vector(p.optimizer_term);
            out.put_vector(p.layer_contribution);
            out.put_vector(p.magnitude);
            out.put_real(p.estimate);
            out.put_vector(p.estimate_by_output);
        }
        steps_.clear();
        round_.clear();
        const std::vector<std::vector<unsigned char>> all = split_->gather(std::move(out.bytes));
        if (split_->rank != 0) return;
        const std::size_t N = res.n, C = res.c;
        std::vector<point_record<T>> records;
        for (const std::vector<unsigned char>& bytes : all) {  // rank by rank; each rank's in its order
            byte_reader in(bytes.data(), bytes.size());
            const std::size_t step_count = in.get_size();
            for (std::size_t k = 0; k < step_count; ++k) {  // a step's results: each step has one owner
                const std::size_t step = in.get_size();
                if (step >= res.audit.size() || !by_blocks_)
                    throw usage_error("work_split: a rank's step record names no step of this computation");
                res.losses[step] = in.get_real<T>();
                rem_inf_[step] = in.get_real<T>();
                delta_inf_[step] = in.get_real<T>();
                const std::vector<double> a = in.get_vector<double>();
                if (a.size() != 6) throw usage_error("work_split: a rank's step record is malformed");
                auto& au = res.audit[step];
                au.remainder_max_abs = a[0];
                au.remainder_norm2 = a[1];
                au.step_max_abs = a[2];
                au.weight_max_abs = a[3];
                au.contribution_max_abs = std::max(au.contribution_max_abs, a[4]);
                au.deviation_max_abs = a[5];
                const std::vector<T> coefficients = in.get_vector<T>();
                if (!coefficients.empty()) {
                    if (coefficients.size() != N * C || !rq_.store_coefficients)
                        throw usage_error("work_split: a rank's step record is malformed");
                    std::copy(coefficients.begin(), coefficients.end(),
                              res.coefficients.begin() + static_cast<std::ptrdiff_t>(step * N * C));
                }
            }
            const std::size_t count = in.get_size();
            for (std::size_t k = 0; k < count; ++k) {
                point_record<T> r;
                r.step = in.get_size();
                r.point = in.get_size();
                r.columns = in.get_vector<std::size_t>();
                r.delta_l1 = in.get_real<T>();
                r.kernel = in.get_vector<T>();
                point_step<T>& p = r.ps;
                p.cuts = in.get_size();
                p.evaluations = in.get_size();
                p.nodes = in.get_size();
                p.converged = in.get_size() != 0;
                p.step = in.get_size();
                p.contribution = in.get_vector<T>();
                p.remainder = in.get_vector<T>();
                p.optimizer_term = in.get_vector<T>();
                p.layer_contribution = in.get_vector<T>();
                p.magnitude = in.get_vector<double>();
                p.estimate = in.get_real<T>();
                p.estimate_by_output = in.get_vector<T>();
                if (r.point >= res.m || r.step >= res.audit.size())
                    throw usage_error("work_split: a rank's record names no point or step of this computation");
                records.push_back(std::move(r));
            }
            if (!in.done()) throw usage_error("work_split: a rank's records have trailing bytes");
        }
        // One (step, point)'s records all come from its owner, in its order: a stable sort keeps it.
        std::stable_sort(records.begin(), records.end(), [](const point_record<T>& a, const point_record<T>& b) {
            return a.step != b.step ? a.step < b.step : a.point < b.point;
        });
        for (const point_record<T>& r : records) {
            double contribution = 0;
            add_point_step<T>(rq_, r.columns, r.point, r.ps, r.delta_l1, res, kernel_sum, rule_nodes, converged, contribution);
            res.audit[r.step].contribution_max_abs = std::max(res.audit[r.step].contribution_max_abs, contribution);
            if (r.kernel.empty()) continue;
            for (auto& [step, kern] : res.step_kernels)
                if (step == r.step)
                    std::copy(r.kernel.begin(), r.kernel.end(), kern.begin() + static_cast<std::ptrdiff_t>(r.point * N * C * C));
        }
        if (by_blocks_ && s + 1 == res.steps) {  // the remainder's summaries over all steps, in step order
            res.remainder_max_abs = T(0);
            res.remainder_max_rel = T(0);
            res.remainder_worst_step = 0;
            for (std::size_t k = 0; k < res.steps; ++k) add_remainder_summary(res, k, rem_inf_[k], delta_inf_[k]);
        }
    }

private:
    const path_kernel_request<T>& rq_;
    const work_split* split_;
    bool by_blocks_ = false;
    std::size_t exchange_steps_ = 1;  // the records go to rank 0 after every this many steps (and the last)
    std::size_t first_shared_step_ = static_cast<std::size_t>(-1);  // whole blocks: every rank takes the steps from here on
    bool shared_step(std::size_t s) const { return s >= first_shared_step_; }
    std::vector<std::vector<point_record<T>>> pending_;  // this step's, per point
    std::vector<point_record<T>> round_;                 // this round's, in (step, point) order
    std::vector<step_record<T>> steps_;                  // this round's steps (whole blocks dealt)
    std::vector<T> rem_inf_, delta_inf_;                 // rank 0: every step's (whole blocks dealt)
};
}  // namespace detail

template <Real T>
path_kernel_result<T> compute_path_kernel_unstructured(const path_kernel_request<T>& rq,
                                          const std::function<void(std::size_t, std::size_t)>& progress = {}) {
    detail::validate_request<T>(rq);
    detail::require_plain_sgd<T>(rq);
    const training_problem<T>& pr = *rq.problem;
    const model_spec& model = pr.model;
    const sgd_schedule& sch = rq.schedule;

    const segment_structure st = analyse_segment_structure(model);
    path_kernel_result<T> res = detail::start_result<T>(rq);
    const std::size_t M = res.m, N = res.n, C = res.c;
    std::vector<matrix<T>> x_rows;
    for (std::size_t mm = 0; mm < M; ++mm) x_rows.push_back(gather_rows(rq.x_test, std::vector<std::size_t>{mm}));

    matrix<T> kernel_sum(rq.store_contributions ? 0 : M, C);  // Σ_s Σ_i K_s a_{i,s} without contributions
    std::vector<T> w = rq.w0;
    std::size_t next_kernel = 0;
    std::vector<std::size_t> rule_nodes(M, 0);
    std::vector<char> converged(M, 1);
    detail::point_sink<T> sink(rq, M, true);  // plain SGD: whole step blocks may be dealt
    for (std::size_t s = 0; s < sch.steps; ++s) {
        if (!sink.takes_step(s)) {  // another rank's block (point_sink): follow the path only
            sink.skip_step(s, w, res, next_kernel, progress);
            sink.after_step(s, res, kernel_sum, rule_nodes, converged);
            continue;
        }
        // Coefficients a_{i,s} = −η ρ ∂ℓ/∂f at w[s], and the training side g_{i,s}.
        const detail::step_start<T> st0 = detail::begin_step<T>(rq, w, s, res);
        const std::vector<std::size_t>& batch = st0.batch;
        const T& eta = st0.eta;
        const forward_pass<T>& fp = st0.fp;
        const matrix<T>& grad_out = st0.grad_out;
        const detail::step_gradients<T> grads = detail::training_gradients<T>(rq, w, st0, s, res);
        const matrix<T>& g = grads.g;
        double deviation = 0;
        std::vector<T> w_next = detail::next_point<T>(rq, w, fp, grad_out, eta, s, deviation);
        detail::step_difference<T> sd = detail::difference_of_step<T>(w, w_next, grads.sum, s, res, deviation);
        const std::vector<T>& delta = sd.delta;
        const std::vector<T>& rem = sd.rem;
        const T& delta_l1 = sd.delta_l1;
        std::vector<double> point_contribution(M, 0.0);  // per test point: threads write their own slot

        const bool store_kernel = next_kernel < rq.kernel_steps.size() && rq.kernel_steps[next_kernel] == s;
        std::vector<matrix<T>> jac_train;
        std::vector<T> kernel;
        if (store_kernel) {
            for (std::size_t k = 0; k < batch.size(); ++k)
                jac_train.push_back(jacobian<T>(model, w, gather_rows(pr.x, std::span<const std::size_t>(&batch[k], 1))));
            kernel.assign(M * N * C * C, T(0));
        }
        auto process_point = [&](std::size_t mm) {
            if (!sink.owns(s, mm)) return;
            const segment_integral<T> seg = integrate_segment<T>(model, st, w, delta, x_rows[mm], rq.quadrature);
            detail::point_step<T> ps = detail::point_step_of<T>(seg);
            ps.contribution.resize(C * batch.size());
            ps.step = s;
            const std::size_t L = rq.split_layers.empty() ? 0 : rq.split_layers.size() - 1;
            ps.layer_contribution.resize(batch.size() * C * L);
            for (std::size_t k = 0; k < batch.size(); ++k) {
                if (L > 0) contract_ranges<T>(seg.value, g.row(k), rq.split_layers, &ps.layer_contribution[k * C * L]);
                const std::vector<T> ck = contract_rows<T>(seg.value, g.row(k));
                for (std::size_t c = 0; c < C; ++c) ps.contribution[c * batch.size() + k] = ck[c];
                if (store_kernel) {
                    const matrix<T> kk = step_kernel_from_jacobians<T>(seg.value, jac_train[k]);
                    std::copy(kk.data.begin(), kk.data.end(), kernel.begin() + static_cast<std::ptrdiff_t>((mm * N + batch[k]) * C * C));
                }
            }
            ps.remainder = contract_rows<T>(seg.value, rem);
            sink.take(batch, mm, ps, delta_l1, res, kernel_sum, rule_nodes, converged, point_contribution[mm]);
        };
        detail::for_each_point_t<T>(M, rq.threads, process_point);
        sink.end_of_step(s, sd, store_kernel, kernel, res);
        detail::end_step<T>(sd, point_contribution, store_kernel, kernel, s, next_kernel, w, w_next, res, progress);
        sink.after_step(s, res, kernel_sum, rule_nodes, converged);
    }
    detail::finish_result<T>(rq, w, kernel_sum, rule_nodes, converged, x_rows, res);
    return res;
}

// The residual budget of proofs-notes/004 §5, per (test point, output):
//   quadrature_bound + slack·γ·u·(forward_scale + path_magnitude),
//   forward_scale = M_f(x; w[0]) + M_f(x; w[S]) (forward_magnitude, ≥ |f|),
//   γ = P + S + n_nodes + B_max + Σ_l (in_l + out_l) + 10·(activation layers) + 8
// (B_max: the per-step sum over the batch, proofs-notes/006 §3).
template <Real T>
matrix<double> reconstruction_budget(const path_kernel_result<T>& r, const model_spec& m) {
    const double u = scalar_traits<T>::to_double(scalar_traits<T>::unit_roundoff());
    double gamma = static_cast<double>(r.p + r.steps + r.max_rule_nodes + r.max_batch) + 8;
    if (m.is_mlp()) {
        for (const linear_offsets& o : parameter_offsets(m)) gamma += static_cast<double>(o.in + o.out);
        for (const layer_spec& l : m.layers)
            if (l.kind != layer_kind::linear) gamma += 10;
    } else {
        gamma += tree_segment::analyse(m).chain;  // proofs-notes/008 §3
    }
    matrix<double> b(r.m, r.c);
    for (std::size_t i = 0; i < r.m; ++i)
        for (std::size_t c = 0; c < r.c; ++c) {
            const double scale = r.forward_scale(i, c) + r.path_magnitude(i, c);
            b(i, c) = scalar_traits<T>::to_double(r.quadrature_bound(i, c)) + 1.05 * gamma * u * scale;
        }
    return b;
}

}  // namespace epk

#include "epk/optimizer_kernel.hpp"   // momentum, weight decay, Adam: their own representation
#include "epk/structured_kernel.hpp"  // compute_path_kernel: the structured path, or this file's

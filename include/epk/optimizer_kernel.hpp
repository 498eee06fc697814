// epk/optimizer_kernel.hpp — the exact representation of a run trained with momentum,
// weight decay, Adam or AdamW (proofs-notes/007).
//
// The optimizer's update at step s is linear in the gradients it has seen, given the
// run's history: with ĝ_{i,s} = J(x_i; w[s])ᵀ ρ∂ℓ/∂f (training point i's share of
// ∇L_s; zero when i ∉ B_s) it splits exactly, in real arithmetic, as
//
//   update_s = Σ_i φ_{i,s} + ω_s
//
//   SGD    b_{i,s} = ĝ_{i,s} at the run's first step, else μ b_{i,s−1} + (1 − τ) ĝ_{i,s}
//          φ_{i,s} = −η_s (ĝ_{i,s} + μ b_{i,s})  (nesterov),  −η_s b_{i,s}  (else),  −η_s ĝ_{i,s}  (μ = 0)
//   Adam   m_{i,s} = β₁ m_{i,s−1} + (1 − β₁) ĝ_{i,s}   (as the lerp m + (1 − β₁)(ĝ − m))
//   AdamW  φ_{i,s} = −(η_s / c₁) m_{i,s} ⊘ (√v̂_s / √c₂ + ε)
//
// and ω_s, the optimizer's own term, follows the same recursions with input λ w[s]
// (SGD's and Adam's weight_decay) started from the state before step 0 (a resumed run),
// plus −η_s λ w[s] for AdamW's decoupled decay.  v̂_s (and c₁, c₂) are the optimizer's:
// computed from the whole batch's gradients, they make Adam's φ linear in ĝ only given the
// history.  Then, exactly, along the path's straight segments,
//
//   f(x; w[S]) = f(x; w[0]) + Σ_s Σ_i Ī_s(x) φ_{i,s} + Σ_s Ī_s(x) ω_s + Σ_s Ī_s(x) r_s,
//   r_s = Δ_s − Σ_i φ_{i,s} − ω_s
//
// (r_s: rounding of the trained update, or what a recording trainer did differently).
// Per-training-point contributions c(x, x_i) = Σ_s Ī_s(x) φ_{i,s} stay defined; they need
// one P-vector of optimizer memory per training point seen so far (μ ≠ 0 or Adam), which
// is only kept when contributions are asked for — the reconstruction alone needs the
// optimizer's own state.  Test side: Ī_s(x) through the per-layer factors at the nodes of
// each point's rule (the smooth ladder for smooth networks), contracted with every share by
// dense products (structured_kernel.hpp, optimizer_step_structured; tree models by
// structured_tree.hpp's point_integral); with the splits of the contributions, per test point
// from full Jacobians (segment.hpp).  Per-step kernels K_s are not returned: with memory the
// representation pairs Ī_s with gradients of earlier steps (proofs-notes/007 §4).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "epk/path_kernel.hpp"

namespace epk {

namespace detail {

// The audit's deviation of a step, discounted by what rounding in the gradients can do to it
// (proofs-notes/012 §5, §9): coordinate p's deviation d_p = |w_rec[s+1] − w_pred|_p is measured
// against u·(‖w[s+1]‖_∞ + a_p), a_p the step's first-order sensitivity to a gradient error of
// one unit of the gradients' scale Ĝ: returned as max_p d_p·‖w[s+1]‖_∞/(‖w[s+1]‖_∞ + a_p), so
// that the audit's units (deviation/(u·‖w[s+1]‖_∞)) keep their meaning.  A heuristic
// allowance, as the audit's limit.
template <Real T, class Allowance>
double discounted_deviation(const std::vector<T>& w_next, const std::vector<T>& w_pred, Allowance&& allowance) {
    double wn = 0;
    for (const T& x : w_next) wn = std::max(wn, std::abs(scalar_traits<T>::to_double(x)));
    double worst = 0;
    for (std::size_t p = 0; p < w_next.size(); ++p) {
        const double d = std::abs(scalar_traits<T>::to_double(T(w_next[p] - w_pred[p])));
        if (std::isnan(d)) return d;
        const double a = allowance(p);
        worst = std::max(worst, wn > 0 ? d * (wn / (wn + a)) : d / (1 + a));
    }
    return worst;
}

// Adam/AdamW (012 §5): Adam divides by √v̂ + ε, so a rounding error δ in the gradients moves
// coordinate p of the step by up to η·δ·(1/(√v̂_p + ε) + |m̂_p|/(√v̂_p + ε)²) ≤ 2η·δ/(√v̂_p + ε)
// to first order (|m̂_p| ≤ √v̂_p up to β's weights) — a factor 1/ε for a gradient that is zero
// but for rounding (attention's key bias: softmax is shift invariant): a_p = 2η·Ĝ/(√v̂_p + ε).
template <Real T>
double adam_discounted_deviation(const optimizer_spec& opt, const optimizer_state<T>& st, const T& eta,
                                 double gradient_scale, const std::vector<T>& w_next, const std::vector<T>& w_pred) {
    const std::vector<T>& v = opt.amsgrad ? st.max_exp_avg_sq : st.exp_avg_sq;
    const double correction = 1.0 - scalar_traits<T>::to_double(st.beta2_power);
    const double lr = std::abs(scalar_traits<T>::to_double(eta));
    return discounted_deviation<T>(w_next, w_pred, [&](std::size_t p) {
        const double vhat = correction > 0 ? std::max(0.0, scalar_traits<T>::to_double(v[p])) / correction : 0.0;
        return 2 * lr * gradient_scale / (std::sqrt(vhat) + opt.eps);
    });
}

// SGD with momentum (012 §9): the buffer b_s = μ b_{s−1} + (1 − τ) ĝ_s carries every earlier
// step's gradient error, so a rounding error of one unit of Ĝ_j at every step j ≤ s moves the
// step by η·B_s, B_s = μ B_{s−1} + Ĝ_s (η·(Ĝ_s + μ B_s) with Nesterov; η·Ĝ_s without momentum):
// a_p = that, the same for every coordinate.  `buffer_scale` carries B over the steps.
template <Real T>
double sgd_discounted_deviation(const optimizer_spec& opt, const T& eta, double gradient_scale, double& buffer_scale,
                                const std::vector<T>& w_next, const std::vector<T>& w_pred) {
    buffer_scale = opt.momentum * buffer_scale + gradient_scale;
    const double lr = std::abs(scalar_traits<T>::to_double(eta));
    const double a = opt.momentum == 0 ? lr * gradient_scale
                     : opt.nesterov    ? lr * (gradient_scale + opt.momentum * buffer_scale)
                                       : lr * buffer_scale;
    return discounted_deviation<T>(w_next, w_pred, [a](std::size_t) { return a; });
}


// The training side of the split, one source per training point (or one for the whole
// batch when contributions are not kept) plus the optimizer's own term.
template <Real T>
class update_split {
public:
    update_split(const optimizer_spec& o, std::size_t n, std::size_t p, bool per_point, const optimizer_state<T>& initial)
        : o_(o), p_(p), per_point_(per_point), memory_(!(o.type == optimizer_spec::kind::sgd && o.momentum == 0)),
          acc_(per_point ? n : 1) {
        if (o.type == optimizer_spec::kind::sgd) own_ = initial.momentum_buffer;
        else own_ = initial.exp_avg;
        if (memory_ && own_.empty()) own_.assign(p, T(0));
    }

    // Sources after step s: ascending point indices (per point) or {0} (the batch).
    const std::vector<std::size_t>& sources() const { return active_; }
    const std::vector<std::vector<T>>& phi() const { return phi_; }  // per source, P entries
    const std::vector<T>& omega() const { return omega_; }

    // Step s: inputs ĝ_k for the batch rows, w[s], η, and the optimizer's state `after` its
    // step (v̂, c₁, c₂ for Adam); `first` = no step taken before this one.
    void step(const std::vector<std::size_t>& batch, const std::vector<std::vector<T>>& grads, std::span<const T> w,
              const T& eta, const optimizer_state<T>& after, bool first) {
        const std::size_t P = p_;
        // Inputs this step, by source.
        std::vector<std::pair<std::size_t, const std::vector<T>*>> in;
        std::vector<T> batch_sum;
        std::vector<std::vector<T>> repeated;  // a point that occurs more than once: its ĝ summed in batch order
        if (per_point_) {
            for (std::size_t k = 0; k < batch.size(); ++k) in.emplace_back(batch[k], &grads[k]);
            std::stable_sort(in.begin(), in.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
            repeated.reserve(in.size());
            std::size_t kept = 0;
            for (std::size_t k = 0; k < in.size(); ++k) {
                if (kept > 0 && in[kept - 1].first == in[k].first) {
                    if (repeated.empty() || in[kept - 1].second != &repeated.back()) {
                        repeated.push_back(*in[kept - 1].second);
                        in[kept - 1].second = &repeated.back();
                    }
                    for (std::size_t q = 0; q < P; ++q) repeated.back()[q] += (*in[k].second)[q];
                } else {
                    in[kept++] = in[k];
                }
            }
            in.resize(kept);
        } else {
            batch_sum.assign(P, T(0));
            for (const auto& g : grads)
                for (std::size_t q = 0; q < P; ++q) batch_sum[q] += g[q];
            in.emplace_back(0, &batch_sum);
        }
        if (memory_) {  // a source stays once seen: its buffer decays but is never exactly zero
            for (const auto& [i, g] : in)
                if (acc_[i].empty()) {
                    acc_[i].assign(P, T(0));
                    active_.push_back(i);
                }
            std::sort(active_.begin(), active_.end());
        } else {  // memoryless SGD: this step's batch, nothing carried over
            active_.clear();
            for (const auto& src : in) active_.push_back(src.first);
        }
        const T lambda(o_.weight_decay);
        const bool l2 = o_.weight_decay != 0 && o_.type != optimizer_spec::kind::adamw;
        std::vector<T> own_in(P, T(0));
        if (l2)
            for (std::size_t q = 0; q < P; ++q) own_in[q] = lambda * w[q];
        // Adam: the step's denominators √v̂/√c₂ + ε, once for every source.
        std::optional<adam_scale<T>> scale;
        std::vector<T> denom;
        if (o_.type != optimizer_spec::kind::sgd) {
            scale.emplace(o_, after, eta);
            const std::vector<T>& v = o_.amsgrad ? after.max_exp_avg_sq : after.exp_avg_sq;
            denom.resize(P);
            for (std::size_t q = 0; q < P; ++q) denom[q] = scale->denominator(v[q]);
        }
        // Per source: its input this step (zero when absent from the batch).
        std::size_t next = 0;
        phi_.assign(active_.size(), std::vector<T>());
        const std::vector<T> zero(P, T(0));
        std::vector<T> no_buffer;
        for (std::size_t a = 0; a < active_.size(); ++a) {
            const std::size_t i = active_[a];
            while (next < in.size() && in[next].first < i) ++next;
            const std::vector<T>& d = (next < in.size() && in[next].first == i) ? *in[next].second : zero;
            phi_[a] = advance(memory_ ? acc_[i] : no_buffer, d, eta, scale, denom, first);
        }
        omega_ = advance(own_, own_in, eta, scale, denom, first);
        if (o_.type == optimizer_spec::kind::adamw && o_.weight_decay != 0) {
            const T el = eta * lambda;
            for (std::size_t q = 0; q < P; ++q) omega_[q] = omega_[q] - el * w[q];
        }
    }

    // Σ_sources φ + ω, sources ascending then ω: the optimizer's update as the split sums it.
    std::vector<T> total() const {
        std::vector<T> t(p_, T(0));
        for (const auto& v : phi_)
            for (std::size_t q = 0; q < p_; ++q) t[q] += v[q];
        for (std::size_t q = 0; q < p_; ++q) t[q] += omega_[q];
        return t;
    }

private:
    // One source's recursion with input d; returns its share of the update.
    std::vector<T> advance(std::vector<T>& acc, const std::vector<T>& d, const T& eta,
                           const std::optional<adam_scale<T>>& scale, const std::vector<T>& denom, bool first) const {
        const std::size_t P = p_;
        std::vector<T> out(P);
        if (o_.type == optimizer_spec::kind::sgd) {
            if (o_.momentum == 0) {
                for (std::size_t q = 0; q < P; ++q) out[q] = -(eta * d[q]);
                return out;
            }
            const T mu(o_.momentum), one_minus_tau = T(1) - T(o_.dampening);
            for (std::size_t q = 0; q < P; ++q) {
                momentum_update<T>(acc[q], d[q], mu, one_minus_tau, first);
                out[q] = -(eta * momentum_direction<T>(d[q], acc[q], mu, o_.nesterov));
            }
            return out;
        }
        // Adam/AdamW: the optimizer's own c₁, c₂ and v̂ after its step (adam_scale, the denominators).
        const T one_minus_b1 = T(1) - T(o_.beta1);
        for (std::size_t q = 0; q < P; ++q) {
            first_moment_update<T>(acc[q], d[q], one_minus_b1);
            out[q] = -scale->step(acc[q], denom[q]);
        }
        return out;
    }

    const optimizer_spec& o_;
    std::size_t p_;
    bool per_point_, memory_;
    std::vector<std::vector<T>> acc_;  // per source: b or m (empty: not seen yet; unused when memoryless)
    std::vector<T> own_;               // the optimizer term's b or m
    std::vector<std::size_t> active_;
    std::vector<std::vector<T>> phi_;
    std::vector<T> omega_;
};
}  // namespace detail

template <Real T>
path_kernel_result<T> compute_path_kernel_optimizer(const path_kernel_request<T>& rq,
                                                    const std::function<void(std::size_t, std::size_t)>& progress = {}) {
    detail::validate_request<T>(rq);
    if (!rq.kernel_steps.empty())
        throw usage_error("compute_path_kernel: per-step kernels K_s are defined for plain SGD; with " +
                          std::string(to_string(rq.schedule.optimizer.type)) +
                          (rq.schedule.optimizer.momentum != 0 ? " with momentum" : "") +
                          " the representation pairs each step's test side with earlier steps' gradients "
                          "(proofs-notes/007): ask for contributions instead");
    const training_problem<T>& pr = *rq.problem;
    const model_spec& model = pr.model;
    const sgd_schedule& sch = rq.schedule;
    const optimizer_spec& opt = sch.optimizer;
    check_optimizer_state<T>(opt, rq.initial_state, rq.w0.size());

    const segment_structure st = analyse_segment_structure(model);
    path_kernel_result<T> res = detail::start_result<T>(rq);
    const std::size_t M = res.m, N = res.n, C = res.c, P = res.p;
    res.optimizer_term = matrix<T>(M, C);
    std::vector<matrix<T>> x_rows;
    for (std::size_t mm = 0; mm < M; ++mm) x_rows.push_back(gather_rows(rq.x_test, std::vector<std::size_t>{mm}));

    matrix<T> kernel_sum(rq.store_contributions ? 0 : M, C);
    std::vector<T> w = rq.w0;
    std::size_t next_kernel = 0, most_sources = 0;
    std::vector<std::size_t> rule_nodes(M, 0);
    std::vector<char> converged(M, 1);
    // The test side through the per-layer factors (the splits of the contributions keep the
    // full Jacobians): optimizer_step_structured, structured_kernel.hpp.
    const bool structured = rq.structured && rq.split_layers.empty() && !rq.split_steps;
    std::vector<std::size_t> ladder_start;
    optimizer_state<T> state = rq.initial_state;  // the optimizer along this path, from its gradients
    double gradient_scale = 0;                     // Ĝ: max over steps so far of Σ_i ‖ĝ_{i,s}‖_∞ (Adam's audit)
    double buffer_scale = 0;                       // B_s: the momentum buffer's gradient scale (SGD's audit)
    detail::update_split<T> split(opt, N, P, rq.store_contributions, rq.initial_state);
    detail::point_sink<T> sink(rq, M);
    for (std::size_t s = 0; s < sch.steps; ++s) {
        if (detail::point_sink<T>::block_starts(s)) ladder_start.clear();  // the ladder restarts (work_split.hpp)
        const detail::step_start<T> st0 = detail::begin_step<T>(rq, w, s, res);
        const std::vector<std::size_t>& batch = st0.batch;
        const T& eta = st0.eta;
        const forward_pass<T>& fp = st0.fp;
        const matrix<T>& grad_out = st0.grad_out;
        // ĝ_{i,s} per batch row (ρ∂ℓ/∂f pulled back through J(x_i; w[s])).
        std::vector<std::vector<T>> grads(batch.size());
        for (std::size_t k = 0; k < batch.size(); ++k) {
            matrix<T> gk(1, C);
            for (std::size_t c = 0; c < C; ++c) {
                gk(0, c) = grad_out(k, c);
                if (rq.store_coefficients) res.coefficients[(s * N + batch[k]) * C + c] += -(eta * grad_out(k, c));
            }
            grads[k] = vjp<T>(model, w, gather_rows(pr.x, std::span<const std::size_t>(&batch[k], 1)), gk);
        }
        // The optimizer's step from the batch gradient, exactly as train_sgd takes it.
        const bool first = state.steps == 0;
        std::vector<T> w_pred = w;
        optimizer_update<T>(pr, sch, state, w_pred, fp, grad_out, eta);
        split.step(batch, grads, w, eta, state, first);
        std::vector<T> w_next = w_pred;
        double deviation = 0;  // ‖recorded row − the optimizer's step‖_∞ (Adam: discounted, below)
        if (rq.recorded_row) {
            w_next = rq.recorded_row(s + 1);
            if (w_next.size() != w.size()) throw usage_error("compute_path_kernel: recorded row has the wrong size");
            double gs = 0;  // Ĝ_s = Σ_i ‖ĝ_{i,s}‖_∞: the scale of the batch gradient's rounding
            for (const std::vector<T>& gk : grads) {
                T m(0);
                for (const T& v : gk) max_abs_into(m, v);
                gs += scalar_traits<T>::to_double(m);
            }
            if (opt.type == optimizer_spec::kind::sgd) {
                deviation = detail::sgd_discounted_deviation<T>(opt, eta, gs, buffer_scale, w_next, w_pred);
            } else {
                gradient_scale = std::max(gradient_scale, gs);
                deviation = detail::adam_discounted_deviation<T>(opt, state, eta, gradient_scale, w_next, w_pred);
            }
        }
        detail::step_difference<T> sd = detail::difference_of_step<T>(w, w_next, split.total(), s, res, deviation);
        const std::vector<T>& delta = sd.delta;
        const std::vector<T>& rem = sd.rem;

        // |Δ| + Σ|φ_i| + |ω| + |r|: what the reconstruction's sums and the remainder's rounding scale with.
        const auto& sources = split.sources();
        const auto& phi = split.phi();
        const std::vector<T>& omega = split.omega();
        most_sources = std::max(most_sources, sources.size());
        std::vector<double> scale(P);
        T scale_l1(0);
        for (std::size_t q = 0; q < P; ++q) {
            T a = rm::abs(delta[q]) + rm::abs(omega[q]) + rm::abs(rem[q]);
            for (const auto& v : phi) a += rm::abs(v[q]);
            scale[q] = scalar_traits<T>::to_double(a);
            scale_l1 += a;
        }
        const std::vector<std::size_t> columns = rq.store_contributions ? sources : std::vector<std::size_t>(sources.size(), 0);
        std::vector<double> point_contribution(M, 0.0);
        std::vector<T> no_kernel;
        if (structured) {  // through the factors (structured_kernel.hpp); resolved when instantiated
            const std::function<void(std::size_t, detail::point_step<T>&)> add = [&](std::size_t mm, detail::point_step<T>& ps) {
                ps.step = s;
                sink.take(columns, mm, ps, scale_l1, res, kernel_sum, rule_nodes, converged, point_contribution[mm]);
            };
            optimizer_step_structured(rq, st, std::span<const T>(w), std::span<const T>(delta), std::span<const T>(rem),
                                      phi, omega, std::span<const double>(scale), scale_l1, ladder_start, s, add, res);
            sink.end_of_step(s, sd, false, no_kernel, res);
            detail::end_step<T>(sd, point_contribution, false, no_kernel, s, next_kernel, w, w_next, res, progress);
            sink.after_step(s, res, kernel_sum, rule_nodes, converged);
            continue;
        }
        auto process_point = [&](std::size_t mm) {
            if (!sink.owns(s, mm)) return;
            const segment_integral<T> seg = integrate_segment<T>(model, st, w, delta, x_rows[mm], rq.quadrature);
            detail::point_step<T> ps = detail::point_step_of<T>(seg);
            ps.magnitude = detail::magnitude_at_nodes<T>(model, w, delta, x_rows[mm], seg.nodes, seg.weights, scale);
            const std::size_t b = sources.size();
            ps.contribution.resize(C * b);
            ps.step = s;
            const std::size_t L = rq.split_layers.empty() ? 0 : rq.split_layers.size() - 1;
            ps.layer_contribution.resize(b * C * L);
            for (std::size_t k = 0; k < b; ++k) {
                if (L > 0) contract_ranges<T>(seg.value, phi[k], rq.split_layers, &ps.layer_contribution[k * C * L]);
                const std::vector<T> ck = contract_rows<T>(seg.value, phi[k]);
                for (std::size_t c = 0; c < C; ++c) ps.contribution[c * b + k] = ck[c];
            }
            ps.optimizer_term = contract_rows<T>(seg.value, omega);
            ps.remainder = contract_rows<T>(seg.value, rem);
            sink.take(columns, mm, ps, scale_l1, res, kernel_sum, rule_nodes, converged, point_contribution[mm]);
        };
        detail::for_each_point_t<T>(M, rq.threads, process_point);
        sink.end_of_step(s, sd, false, no_kernel, res);
        detail::end_step<T>(sd, point_contribution, false, no_kernel, s, next_kernel, w, w_next, res, progress);
        sink.after_step(s, res, kernel_sum, rule_nodes, converged);
    }
    // γ's per-step sum: the sources, the optimizer term and the remainder (proofs-notes/007 §3).
    res.max_batch = std::max(res.max_batch, most_sources + 2);
    detail::finish_result<T>(rq, w, kernel_sum, rule_nodes, converged, x_rows, res);
    return res;
}

}  // namespace epk

// epk/optimizer.hpp — the updates of torch.optim.SGD (momentum, dampening,
// nesterov, weight_decay), torch.optim.Adam and torch.optim.AdamW (betas, eps,
// weight_decay, amsgrad), in any precision, element by element in the order
// torch's single-tensor ("for-loop") implementation applies them.  train_sgd
// (training.hpp) runs them; optimizer_kernel.hpp splits their updates into
// per-training-point shares with the same arithmetic (proofs-notes/007).
//
// With g = ∇_w L_s(w[s]) (training.hpp, loss_gradient) and hyper-parameters as
// binary64 values carried into T:
//
// SGD   d = g + λ·w                                         (λ = weight_decay; skipped when 0)
//       b = d at the first step, else b ← μ·b + (1 − τ)·d   (μ = momentum, τ = dampening; skipped when μ = 0)
//       d = d + μ·b (nesterov) or d = b                     (when μ ≠ 0)
//       w ← w − η·d
// Adam  g ← g + λ·w                                          (Adam's weight_decay; skipped when 0)
// AdamW w ← w·(1 − η·λ)                                      (decoupled decay, before the moments)
//       m ← m + (1 − β₁)·(g − m)                            (torch's lerp_(g, 1 − β₁))
//       v ← β₂·v + (1 − β₂)·g·g
//       v̂max ← max(v̂max, v)                                 (amsgrad)
//       c₁ = 1 − β₁^t, c₂ = 1 − β₂^t                         (t = step count from 1)
//       w ← w − (η / c₁)·m / (√v / √c₂ + ε)                  (√v̂max with amsgrad)
// torch 1.x computed m ← β₁·m + (1 − β₁)·g instead of the lerp; the two differ
// by rounding only (a few units of u in m).
#pragma once

#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "epk/error.hpp"
#include "epk/model_spec.hpp"
#include "epk/scalar.hpp"

namespace epk {

// The optimizer's state between steps (torch's state_dict entries).
template <Real T>
struct optimizer_state {
    std::size_t steps = 0;                 // steps taken
    std::vector<T> momentum_buffer;        // SGD with momentum (empty before the first step)
    std::vector<T> exp_avg, exp_avg_sq;    // Adam/AdamW m, v
    std::vector<T> max_exp_avg_sq;         // amsgrad
    T beta1_power = T(1), beta2_power = T(1);  // β₁^t, β₂^t, one product per step
};

// x^n by repeated squaring: ⌈log₂ n⌉ + popcount(n) products in T, so a resumed run's
// β^t costs nothing however large t is.  (optimizer_step then multiplies once per step.)
template <Real T>
T power_by_squaring(T x, std::size_t n) {
    T r(1);
    while (n != 0) {
        if (n & 1u) r = r * x;
        n >>= 1;
        if (n != 0) x = x * x;
    }
    return r;
}

// The state of a run resumed after `steps` steps, from its recorded buffers (empty when
// the optimizer has none): β₁^t and β₂^t follow from t.
template <Real T>
optimizer_state<T> resumed_state(const optimizer_spec& o, std::size_t steps, std::vector<T> momentum_buffer,
                                 std::vector<T> exp_avg, std::vector<T> exp_avg_sq, std::vector<T> max_exp_avg_sq) {
    optimizer_state<T> st;
    st.steps = steps;
    st.momentum_buffer = std::move(momentum_buffer);
    st.exp_avg = std::move(exp_avg);
    st.exp_avg_sq = std::move(exp_avg_sq);
    st.max_exp_avg_sq = std::move(max_exp_avg_sq);
    if (o.type != optimizer_spec::kind::sgd && steps != 0) {
        st.beta1_power = power_by_squaring<T>(T(o.beta1), steps);
        st.beta2_power = power_by_squaring<T>(T(o.beta2), steps);
    }
    return st;
}

// usage_error unless `st` is a state optimizer_step can continue from: fresh (no step
// taken, no buffers), or after ≥ 1 step with exactly the buffers the optimizer keeps, of
// length P (SGD: momentum_buffer iff momentum ≠ 0; Adam/AdamW: exp_avg and exp_avg_sq,
// and max_exp_avg_sq iff amsgrad; the squares ≥ 0).
template <Real T>
void check_optimizer_state(const optimizer_spec& o, const optimizer_state<T>& st, std::size_t P) {
    auto need = [](bool ok, const char* what) {
        if (!ok) throw usage_error(std::string("optimizer state: ") + what);
    };
    const bool resumed = st.steps != 0;
    auto sized = [&](const std::vector<T>& v, bool wanted) { return wanted ? (resumed ? v.size() == P : v.empty()) : v.empty(); };
    const bool sgd = o.type == optimizer_spec::kind::sgd;
    need(sized(st.momentum_buffer, sgd && o.momentum != 0), "momentum_buffer must have P entries exactly when SGD with momentum has taken a step");
    need(sized(st.exp_avg, !sgd) && sized(st.exp_avg_sq, !sgd), "exp_avg and exp_avg_sq must have P entries exactly when Adam has taken a step");
    need(sized(st.max_exp_avg_sq, !sgd && o.amsgrad), "max_exp_avg_sq must have P entries exactly when amsgrad Adam has taken a step");
    for (const T& v : st.exp_avg_sq) need(v >= T(0), "exp_avg_sq must be >= 0");
    for (const T& v : st.max_exp_avg_sq) need(v >= T(0), "max_exp_avg_sq must be >= 0");
}

// The pieces of optimizer_step's arithmetic that optimizer_kernel.hpp applies again to each
// training point's share: one expression each, so the split uses exactly the optimizer's.
// SGD's buffer: d at the first step, else μ·b + (1 − τ)·d; the step's direction.
template <Real T>
void momentum_update(T& b, const T& d, const T& mu, const T& one_minus_tau, bool first) {
    b = first ? d : T(mu * b + one_minus_tau * d);
}
template <Real T>
T momentum_direction(const T& d, const T& b, const T& mu, bool nesterov) {
    return nesterov ? T(d + mu * b) : b;
}
// Adam's first moment, torch's lerp_(g, 1 − β₁).
template <Real T>
void first_moment_update(T& m, const T& g, const T& one_minus_b1) {
    m = m + one_minus_b1 * T(g - m);
}
// Adam's step after its t-th update: step_size = η/c₁ and the denominator √v̂/√c₂ + ε.
template <Real T>
struct adam_scale {
    T step_size, c2_sqrt, eps;
    adam_scale(const optimizer_spec& o, const optimizer_state<T>& st, const T& eta)
        : step_size(eta / T(T(1) - st.beta1_power)), c2_sqrt(rm::sqrt(T(T(1) - st.beta2_power))), eps(o.eps) {}
    T denominator(const T& v_hat) const { return rm::sqrt(v_hat) / c2_sqrt + eps; }
    T step(const T& m, const T& denom) const { return step_size * T(m / denom); }
};

// One update in place: w ← w + (the optimizer's step for gradient g at rate η).
template <Real T>
void optimizer_step(const optimizer_spec& o, optimizer_state<T>& st, std::vector<T>& w, std::span<const T> g,
                    const T& eta) {
    const std::size_t P = w.size();
    if (g.size() != P) throw usage_error("optimizer_step: gradient size != P");
    const T lambda(o.weight_decay);
    if (o.type == optimizer_spec::kind::sgd) {
        const T mu(o.momentum), one_minus_tau = T(1) - T(o.dampening);
        const bool first = st.steps == 0;
        if (o.momentum != 0 && first) st.momentum_buffer.assign(P, T(0));
        for (std::size_t p = 0; p < P; ++p) {
            T d = g[p];
            if (o.weight_decay != 0) d = d + lambda * w[p];
            if (o.momentum != 0) {
                T& b = st.momentum_buffer[p];
                momentum_update<T>(b, d, mu, one_minus_tau, first);
                d = momentum_direction<T>(d, b, mu, o.nesterov);
            }
            w[p] = w[p] - eta * d;
        }
        ++st.steps;
        return;
    }
    const T b1(o.beta1), b2(o.beta2);
    if (st.steps == 0) {
        st.exp_avg.assign(P, T(0));
        st.exp_avg_sq.assign(P, T(0));
        if (o.amsgrad) st.max_exp_avg_sq.assign(P, T(0));
    }
    ++st.steps;
    // c₁ = 1 − β₁^t, c₂ = 1 − β₂^t with β^t as a running product in T (torch evaluates the
    // power in binary64: equal to rounding, t·u relative at worst).
    st.beta1_power = st.beta1_power * b1;
    st.beta2_power = st.beta2_power * b2;
    const adam_scale<T> scale(o, st, eta);
    const T one_minus_b1 = T(1) - b1, one_minus_b2 = T(1) - b2;
    const bool adamw = o.type == optimizer_spec::kind::adamw;
    const T decay = T(1) - eta * lambda;
    for (std::size_t p = 0; p < P; ++p) {
        T gp = g[p];
        if (adamw) {
            if (o.weight_decay != 0) w[p] = w[p] * decay;
        } else if (o.weight_decay != 0) {
            gp = gp + lambda * w[p];
        }
        T& m = st.exp_avg[p];
        T& v = st.exp_avg_sq[p];
        first_moment_update<T>(m, gp, one_minus_b1);
        v = b2 * v + one_minus_b2 * T(gp * gp);
        T vv = v;
        if (o.amsgrad) {
            st.max_exp_avg_sq[p] = rm::max(st.max_exp_avg_sq[p], v);
            vv = st.max_exp_avg_sq[p];
        }
        w[p] = w[p] - scale.step(m, scale.denominator(vv));
    }
}

}  // namespace epk

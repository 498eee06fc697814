// epk/optimizer.hpp — the updates of torch.optim.SGD (momentum, dampening,
// nesterov, weight_decay), torch.optim.Adam and torch.optim.AdamW (betas, eps,
// weight_decay, amsgrad), in any precision, element by element in the order
// torch's single-tensor ("for-loop") implementation applies them.  Groundwork
// of issue 7: the training loop, trace format version 2 and the kernel
// representation for these optimizers come next (README, "Roadmap").
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
                b = first ? d : T(mu * b + one_minus_tau * d);
                d = o.nesterov ? T(d + mu * b) : b;
            }
            w[p] = w[p] - eta * d;
        }
        ++st.steps;
        return;
    }
    const T b1(o.beta1), b2(o.beta2), eps(o.eps);
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
    const T c1 = T(1) - st.beta1_power, c2 = T(1) - st.beta2_power;
    const T step_size = eta / c1, c2_sqrt = rm::sqrt(c2);
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
        m = m + one_minus_b1 * T(gp - m);
        v = b2 * v + one_minus_b2 * T(gp * gp);
        T vv = v;
        if (o.amsgrad) {
            st.max_exp_avg_sq[p] = rm::max(st.max_exp_avg_sq[p], v);
            vv = st.max_exp_avg_sq[p];
        }
        const T denom = rm::sqrt(vv) / c2_sqrt + eps;
        w[p] = w[p] - step_size * T(m / denom);
    }
}

}  // namespace epk

// torch.optim's SGD (momentum, dampening, nesterov, weight decay), Adam and
// AdamW (include/epk/optimizer.hpp) against closed forms and against the
// update rules written out independently here, in binary64 against long double
// and MPFR.  Issue 7's groundwork: nothing outside the tests uses them yet.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "epk/mpfr_real.hpp"
#include "epk/optimizer.hpp"

namespace {

using epk::optimizer_spec;
using epk::optimizer_state;
using kind = optimizer_spec::kind;

optimizer_spec gen_spec() {
    optimizer_spec o;
    o.type = *rc::gen::element(kind::sgd, kind::adam, kind::adamw);
    o.weight_decay = *rc::gen::element(0.0, 1e-4, 0.01, 0.1);
    if (o.type == kind::sgd) {
        o.momentum = *rc::gen::element(0.0, 0.5, 0.9, 0.99);
        o.nesterov = o.momentum > 0 && *rc::gen::arbitrary<bool>();
        o.dampening = o.nesterov ? 0.0 : *rc::gen::element(0.0, 0.1, 0.5);
    } else {
        o.beta1 = *rc::gen::element(0.0, 0.5, 0.9);
        o.beta2 = *rc::gen::element(0.9, 0.99, 0.999);
        o.eps = *rc::gen::element(1e-8, 1e-6, 1e-3);
        o.amsgrad = *rc::gen::arbitrary<bool>();
    }
    return o;
}

// The update rules written out a second time, vector by vector, in long double (the
// reference of the parity property below).
struct reference_optimizer {
    optimizer_spec o;
    std::size_t t = 0;
    std::vector<long double> buf, m, v, vmax;

    void step(std::vector<long double>& w, const std::vector<long double>& g, long double lr) {
        const std::size_t n = w.size();
        ++t;
        const long double wd = o.weight_decay;
        if (o.type == kind::sgd) {
            std::vector<long double> d(n);
            for (std::size_t i = 0; i < n; ++i) d[i] = g[i] + wd * w[i];
            if (o.momentum != 0) {
                if (t == 1) buf = d;
                else
                    for (std::size_t i = 0; i < n; ++i) buf[i] = o.momentum * buf[i] + (1 - o.dampening) * d[i];
                for (std::size_t i = 0; i < n; ++i) d[i] = o.nesterov ? d[i] + o.momentum * buf[i] : buf[i];
            }
            for (std::size_t i = 0; i < n; ++i) w[i] -= lr * d[i];
            return;
        }
        if (t == 1) {
            m.assign(n, 0);
            v.assign(n, 0);
            vmax.assign(n, 0);
        }
        std::vector<long double> gg = g;
        if (o.type == kind::adamw)
            for (std::size_t i = 0; i < n; ++i) w[i] *= 1 - lr * wd;
        else
            for (std::size_t i = 0; i < n; ++i) gg[i] += wd * w[i];
        const long double c1 = 1 - std::pow(static_cast<long double>(o.beta1), static_cast<long double>(t));
        const long double c2 = 1 - std::pow(static_cast<long double>(o.beta2), static_cast<long double>(t));
        for (std::size_t i = 0; i < n; ++i) {
            m[i] = o.beta1 * m[i] + (1 - o.beta1) * gg[i];
            v[i] = o.beta2 * v[i] + (1 - o.beta2) * gg[i] * gg[i];
            vmax[i] = std::max(vmax[i], v[i]);
            const long double vhat = (o.amsgrad ? vmax[i] : v[i]) / c2;
            w[i] -= lr * (m[i] / c1) / (std::sqrt(vhat) + o.eps);
        }
    }
};

// Parity: 40 steps of random gradients (entries ~1, so √v ≫ ε and nothing is
// ill-conditioned), binary64 against the long-double reference: within
// 64·t·u·(|w₀| + Σ_t η·|step|) — each step's few roundings, accumulated
// (every rule here is non-expansive in w up to the factor 1 − ηλ ≤ 1).
RC_GTEST_PROP(Optimizer, DoubleMatchesAnIndependentLongDoubleReference, ()) {
    const optimizer_spec o = gen_spec();
    o.validate();
    const std::size_t n = *rc::gen::inRange<std::size_t>(1, 20), steps = 40;
    std::mt19937_64 rng(*rc::gen::arbitrary<std::uint64_t>());
    std::uniform_real_distribution<double> dist(-1, 1);
    const double lr = *rc::gen::element(1e-3, 0.01, 0.1);
    std::vector<double> w(n);
    for (double& x : w) x = dist(rng);
    std::vector<long double> wr(w.begin(), w.end());
    optimizer_state<double> st;
    reference_optimizer ref;
    ref.o = o;
    double scale = 0;
    for (double x : w) scale = std::max(scale, std::abs(x));
    for (std::size_t s = 0; s < steps; ++s) {
        std::vector<double> g(n);
        for (double& x : g) x = dist(rng);
        epk::optimizer_step<double>(o, st, w, g, lr);
        ref.step(wr, std::vector<long double>(g.begin(), g.end()), lr);
        // |step| ≤ η·2/(1 − μ) (SGD: the buffer and Nesterov's extra term, |g| ≤ 1 plus decay)
        // or η·4/((1 − β₁)·√(1 − β₂)) (Adam: |m̂|/√v̂ with the bias corrections).
        scale += lr * (o.type == kind::sgd ? 2.0 / (1.0 - o.momentum) * (1 + scale * o.weight_decay)
                                           : 4.0 / ((1.0 - o.beta1) * std::sqrt(1.0 - o.beta2)));
    }
    RC_ASSERT(st.steps == steps);
    const double tol = 64.0 * steps * 0x1p-53 * scale;
    for (std::size_t i = 0; i < n; ++i) RC_ASSERT(std::abs(static_cast<long double>(w[i]) - wr[i]) <= tol);
}

// Adam with a constant gradient g and no decay: m_t = g(1 − β₁^t) and v_t = g²(1 − β₂^t),
// so every step moves w by exactly η·g/(|g| + ε) — in MPFR-160, to its rounding.
TEST(Optimizer, AdamOnAConstantGradientStepsByEtaGOverAbsGPlusEps) {
    epk::mpfr_precision_scope scope(160);
    using R = epk::mpfr_real;
    for (const bool amsgrad : {false, true}) {
        optimizer_spec o;
        o.type = kind::adam;
        o.amsgrad = amsgrad;
        o.beta1 = 0.9;
        o.beta2 = 0.999;
        o.eps = 1e-3;
        const std::vector<R> g{R(0.5), R(-2.0), R(1e-3)};
        std::vector<R> w{R(1), R(2), R(3)};
        const std::vector<R> w0 = w;
        optimizer_state<R> st;
        const R eta(0.01);
        const int steps = 25;
        for (int s = 0; s < steps; ++s) epk::optimizer_step<R>(o, st, w, g, eta);
        for (std::size_t i = 0; i < w.size(); ++i) {
            const R expected = w0[i] - R(steps) * eta * g[i] / (epk::rm::abs(g[i]) + R(o.eps));
            EXPECT_LT(std::abs(R(w[i] - expected).to_double()), 1e-40) << i;
        }
    }
}

// SGD with momentum μ and dampening τ on a constant gradient g: b_1 = g and
// b_t = μ b_{t−1} + (1 − τ) g, so b_t = g (μ^{t−1} + (1 − τ)(1 − μ^{t−1})/(1 − μ)); Nesterov
// steps by g + μ b_t.  Weight decay alone (g = 0, no momentum): w_t = w_0 (1 − ηλ)^t.
TEST(Optimizer, SgdMomentumAndDecayClosedForms) {
    epk::mpfr_precision_scope scope(160);
    using R = epk::mpfr_real;
    for (const bool nesterov : {false, true}) {
        optimizer_spec o;
        o.momentum = 0.9;
        o.dampening = nesterov ? 0.0 : 0.25;
        o.nesterov = nesterov;
        const R g(0.75), eta(0.1), mu(o.momentum), one_tau = R(1) - R(o.dampening);
        std::vector<R> w{R(1)};
        optimizer_state<R> st;
        R expected(1), mu_pow(1);  // μ^{t−1}
        for (int t = 1; t <= 30; ++t) {
            epk::optimizer_step<R>(o, st, w, std::vector<R>{g}, eta);
            const R b = g * (mu_pow + one_tau * (R(1) - mu_pow) / (R(1) - mu));
            expected = expected - eta * (nesterov ? R(g + mu * b) : b);
            mu_pow = mu_pow * mu;
        }
        EXPECT_LT(std::abs(R(w[0] - expected).to_double()), 1e-40) << "nesterov " << nesterov;
    }
    for (const kind k : {kind::sgd, kind::adamw}) {
        optimizer_spec o;
        o.type = k;
        o.weight_decay = 0.05;
        const R eta(0.1);
        std::vector<R> w{R(2), R(-3)};
        optimizer_state<R> st;
        for (int t = 0; t < 20; ++t) epk::optimizer_step<R>(o, st, w, std::vector<R>{R(0), R(0)}, eta);
        R f(1);
        for (int t = 0; t < 20; ++t) f = f * (R(1) - eta * R(o.weight_decay));
        EXPECT_LT(std::abs(R(w[0] - R(2) * f).to_double()), 1e-40);
        EXPECT_LT(std::abs(R(w[1] + R(3) * f).to_double()), 1e-40);
    }
}

TEST(Optimizer, ValidateRefusesWhatTorchRefuses) {
    optimizer_spec o;
    o.nesterov = true;
    EXPECT_THROW(o.validate(), epk::usage_error);  // nesterov without momentum
    o.momentum = 0.9;
    o.dampening = 0.1;
    EXPECT_THROW(o.validate(), epk::usage_error);  // nesterov with dampening
    o.dampening = 0;
    EXPECT_NO_THROW(o.validate());
    optimizer_spec a;
    a.type = kind::adam;
    a.beta1 = 1.0;
    EXPECT_THROW(a.validate(), epk::usage_error);
    a.beta1 = 0.9;
    a.weight_decay = -1;
    EXPECT_THROW(a.validate(), epk::usage_error);
    a.weight_decay = 0;
    a.momentum = 0.5;
    EXPECT_THROW(a.validate(), epk::usage_error);  // an SGD field on Adam
    a.momentum = 0;
    a.eps = std::nan("");
    EXPECT_THROW(a.validate(), epk::usage_error);
}

}  // namespace

// Momentum, weight decay, Adam and AdamW: training with the optimizer against
// reference formulas written here independently (the updates unrolled into
// explicit sums over past gradients), and the exact representation of
// optimizer_kernel.hpp (proofs-notes/007): residual within the budget, the split
// of every update exact to rounding, per-point contributions that add up.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <cmath>
#include <random>

#include "epk/optimizer_kernel.hpp"
#include "support/kernel_checks.hpp"

namespace {

using epk::layer_kind;
using epk::matrix;
using epk::mpfr_real;
using epk::optimizer_spec;
using epk::path_kernel_result;
using epk::scalar_traits;
using kind = optimizer_spec::kind;
using namespace epk::testing;

template <class T>
double to_d(const T& v) { return scalar_traits<T>::to_double(v); }

observed_ratio seen_double, seen_mpfr, seen_recorded, seen_split;

// Any optimizer but plain SGD, with torch's rules (optimizer_spec::validate).
optimizer_spec gen_optimizer() {
    epk::optimizer_spec o;
    o.type = *rc::gen::element(kind::sgd, kind::sgd, kind::adam, kind::adamw);
    if (o.type == kind::sgd) {
        o.momentum = *rc::gen::element(0.0, 0.5, 0.9);
        o.nesterov = o.momentum != 0 && *rc::gen::arbitrary<bool>();
        o.dampening = o.nesterov ? 0.0 : *rc::gen::element(0.0, 0.3);
        o.weight_decay = *rc::gen::element(0.0, 1e-3, 0.1);
        if (o.momentum == 0 && o.weight_decay == 0) o.weight_decay = 0.01;  // not plain SGD
    } else {
        const auto betas = *rc::gen::element(std::pair{0.9, 0.999}, std::pair{0.5, 0.9}, std::pair{0.0, 0.99});
        o.beta1 = betas.first;
        o.beta2 = betas.second;
        o.eps = *rc::gen::element(1e-8, 1e-3);
        o.weight_decay = *rc::gen::element(0.0, 0.01, 0.1);
        o.amsgrad = *rc::gen::arbitrary<bool>();
    }
    o.validate();
    return o;
}

std::string describe(const optimizer_spec& o) {
    std::ostringstream os;
    os << epk::to_string(o.type) << " mu=" << o.momentum << " tau=" << o.dampening << " nesterov=" << o.nesterov
       << " wd=" << o.weight_decay << " betas=" << o.beta1 << "," << o.beta2 << " eps=" << o.eps << " amsgrad=" << o.amsgrad;
    return os.str();
}

// A random run with a random optimizer; Adam's steps move every weight by about η, so
// its rates stay ≤ 0.1.  SGD's up to max_sgd_lr: the MPFR properties keep it ≤ 0.5, as
// a smooth unit swept far by a rate-2 step needs thousands of adaptive nodes at 256 bits
// (one such case took 2 minutes; the kernel's cost, not its correctness).
kernel_case gen_optimizer_case(double max_sgd_lr = 2.0) {
    const optimizer_spec o = gen_optimizer();
    kernel_case kc = gen_kernel_case(*rc::gen::arbitrary<bool>(), 3, 6, o.type == kind::sgd ? max_sgd_lr : 0.1);
    kc.schedule.optimizer = o;
    RC_TAG(epk::to_string(o.type));
    return kc;
}

// ---------------------------------------------------------------- training parity

// The reference: every update written out as a sum over the gradients seen so far,
// with explicit powers (no running buffer), in T.
//   SGD:   d_s = g_s + λ w_s;  b_s = Σ_{s'≤s} μ^{s−s'} c_{s'} d_{s'}, c_0 = 1, c_{s'>0} = 1 − τ;
//          u_s = d_s + μ b_s (nesterov) or b_s (μ ≠ 0) or d_s;  w_{s+1} = w_s − η_s u_s
//   Adam:  d_s = g_s (+ λ w_s);  m_s = Σ (1 − β₁) β₁^{s−s'} d_{s'};  v_s = Σ (1 − β₂) β₂^{s−s'} d_{s'}²;
//          v̂_s = max_{s'≤s} v_{s'} (amsgrad) or v_s;  AdamW first w ← (1 − η_s λ) w;
//          w_{s+1} = w − η_s/(1 − β₁^{s+1}) · m_s / (√v̂_s / √(1 − β₂^{s+1}) + ε)
template <class T>
std::vector<T> reference_training(const epk::training_problem<T>& pr, std::vector<T> w, const epk::sgd_schedule& sch) {
    const optimizer_spec& o = sch.optimizer;
    const std::size_t P = w.size();
    std::vector<std::vector<T>> d_hist;
    std::vector<T> vmax(P, T(0));
    auto pw = [](double x, std::size_t n) {
        T r(1);
        for (std::size_t k = 0; k < n; ++k) r *= T(x);
        return r;
    };
    for (std::size_t s = 0; s < sch.steps; ++s) {
        const T eta(sch.learning_rates[s]);
        std::vector<T> g = epk::loss_gradient<T>(pr, w, sch.batch(s));
        const bool l2 = o.type != kind::adamw && o.weight_decay != 0;
        for (std::size_t p = 0; p < P; ++p)
            if (l2) g[p] += T(o.weight_decay) * w[p];
        d_hist.push_back(g);
        std::vector<T> next(P);
        for (std::size_t p = 0; p < P; ++p) {
            if (o.type == kind::sgd) {
                T u = d_hist[s][p];
                if (o.momentum != 0) {
                    T b(0);
                    for (std::size_t q = 0; q <= s; ++q) b += pw(o.momentum, s - q) * (q == 0 ? T(1) : T(1) - T(o.dampening)) * d_hist[q][p];
                    u = o.nesterov ? T(d_hist[s][p] + T(o.momentum) * b) : b;
                }
                next[p] = w[p] - eta * u;
            } else {
                T m(0), v(0);
                for (std::size_t q = 0; q <= s; ++q) {
                    m += (T(1) - T(o.beta1)) * pw(o.beta1, s - q) * d_hist[q][p];
                    v += (T(1) - T(o.beta2)) * pw(o.beta2, s - q) * d_hist[q][p] * d_hist[q][p];
                }
                if (o.amsgrad) {
                    vmax[p] = std::max(vmax[p], v);
                    v = vmax[p];
                }
                T base = w[p];
                if (o.type == kind::adamw) base = (T(1) - eta * T(o.weight_decay)) * w[p];
                const T c1 = T(1) - pw(o.beta1, s + 1), c2 = T(1) - pw(o.beta2, s + 1);
                next[p] = base - eta / c1 * m / (epk::rm::sqrt(v) / epk::rm::sqrt(c2) + T(o.eps));
            }
        }
        w = std::move(next);
    }
    return w;
}

// In MPFR-200 the optimizer's buffers and the unrolled sums agree to rounding: a
// formula mistake (a power off by one, a bias correction, nesterov's extra term, the
// decay's place) shows up at the size of an update.  Tolerance: 2⁻¹⁶⁰·(1 + |w|),
// 40 bits of room for the few-step sums' rounding and conditioning.
RC_GTEST_PROP(OptimizerTraining, MatchesUnrolledReferenceFormulas, ()) {
    const kernel_case kc = gen_optimizer_case(0.5);
    RC_PRE(tame_run(kc));
    epk::mpfr_precision_scope scope(200);
    const auto pr = convert_problem<mpfr_real>(kc.rp.problem);
    const auto w0 = convert_vector<mpfr_real>(kc.rp.w);
    const auto a = epk::train_sgd<mpfr_real>(pr, w0, kc.schedule);
    const auto b = reference_training<mpfr_real>(pr, w0, kc.schedule);
    for (std::size_t p = 0; p < a.size(); ++p) {
        const double diff = std::abs(to_d(mpfr_real(a[p] - b[p])));
        if (!(diff <= 0x1p-160 * (1 + std::abs(to_d(b[p])))))
            RC_LOG() << describe(kc.schedule.optimizer) << " p=" << p << " diff " << diff << "\n";
        RC_ASSERT(diff <= 0x1p-160 * (1 + std::abs(to_d(b[p]))));
    }
}

// And a run that is not plain SGD really differs from plain SGD (the optimizer is used).
TEST(OptimizerTraining, TheOptimizerIsUsed) {
    const epk::model_spec m = epk::make_mlp(3, {5}, 2, layer_kind::tanh);
    kernel_case kc = fixed_case(m, {epk::loss_kind::cross_entropy, epk::reduction_kind::mean}, 8, 4, {0.1, 0.1, 0.1}, 2);
    const auto plain = epk::train_sgd<double>(kc.rp.problem, kc.rp.w, kc.schedule);
    for (kind k : {kind::sgd, kind::adam, kind::adamw}) {
        kc.schedule.optimizer = optimizer_spec{};
        kc.schedule.optimizer.type = k;
        if (k == kind::sgd) kc.schedule.optimizer.momentum = 0.9;
        const auto w = epk::train_sgd<double>(kc.rp.problem, kc.rp.w, kc.schedule);
        double diff = 0;
        for (std::size_t p = 0; p < w.size(); ++p) diff = std::max(diff, std::abs(w[p] - plain[p]));
        EXPECT_GT(diff, 1e-4) << epk::to_string(k);
    }
}

// A run resumed after K steps from the optimizer's recorded state continues as the
// uninterrupted run: SGD to the bit; Adam to rounding (β^t by squaring instead of the
// running product: relative 2⁻⁵⁰ in c₁, c₂ for these few steps).
TEST(OptimizerTraining, ResumedRunContinuesTheUninterruptedOne) {
    const epk::model_spec m = epk::make_mlp(3, {6}, 2, layer_kind::gelu);
    const kernel_case kc0 = fixed_case(m, {epk::loss_kind::mse, epk::reduction_kind::mean}, 8, 7,
                                       {0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05}, 2);
    for (kind k : {kind::sgd, kind::adam, kind::adamw}) {
        kernel_case kc = kc0;
        kc.schedule.optimizer.type = k;
        kc.schedule.optimizer.weight_decay = 0.05;
        if (k == kind::sgd) {
            kc.schedule.optimizer.momentum = 0.9;
            kc.schedule.optimizer.nesterov = true;
        } else {
            kc.schedule.optimizer.amsgrad = k == kind::adam;
        }
        const std::size_t K = 3;
        epk::optimizer_state<double> st;
        std::vector<double> w = kc.rp.w;
        for (std::size_t s = 0; s < K; ++s) {
            const auto g = epk::loss_gradient<double>(kc.rp.problem, w, kc.schedule.batch(s));
            epk::optimizer_step<double>(kc.schedule.optimizer, st, w, g, kc.schedule.learning_rates[s]);
        }
        const auto whole = epk::train_sgd<double>(kc.rp.problem, kc.rp.w, kc.schedule);
        epk::sgd_schedule rest = kc.schedule;
        rest.steps -= K;
        rest.learning_rates.erase(rest.learning_rates.begin(), rest.learning_rates.begin() + K);
        const auto resumed_state = epk::resumed_state<double>(kc.schedule.optimizer, K, st.momentum_buffer, st.exp_avg,
                                                              st.exp_avg_sq, st.max_exp_avg_sq);
        const auto resumed = epk::train_sgd<double>(kc.rp.problem, w, rest, {}, resumed_state);
        for (std::size_t p = 0; p < w.size(); ++p) {
            if (k == kind::sgd) EXPECT_EQ(resumed[p], whole[p]) << p;
            else EXPECT_NEAR(resumed[p], whole[p], 1e-13 * (1 + std::abs(whole[p]))) << epk::to_string(k) << " " << p;
        }
        // The resumed run's kernel representation is exact too (the state before step 0
        // enters the optimizer term).
        kernel_case kr = kc;
        kr.schedule = rest;
        kr.rp.w = w;
        const epk::training_problem<double>& pr = kr.rp.problem;
        epk::path_kernel_request<double> rq;
        rq.problem = &pr;
        rq.schedule = rest;
        rq.w0 = w;
        rq.initial_state = resumed_state;
        rq.x_test = kr.x_test;
        const auto r = epk::compute_path_kernel<double>(rq);
        const auto budget = epk::reconstruction_budget(r, m);
        double term = 0;
        for (std::size_t e = 0; e < budget.data.size(); ++e) {
            EXPECT_LE(std::abs(r.outputs_final.data[e] - r.reconstruction.data[e]), budget.data[e]);
            term = std::max(term, std::abs(r.optimizer_term.data[e]));
        }
        EXPECT_GT(term, 0.0) << "the recorded state and the decay act through the optimizer term";
        for (std::size_t e = 0; e < r.outputs_final.data.size(); ++e)
            EXPECT_EQ(r.outputs_final.data[e], epk::outputs<double>(m, resumed, kr.x_test).data[e]);
    }
}

TEST(OptimizerTraining, ImpossibleStatesAreRefused) {
    epk::optimizer_spec o;
    o.momentum = 0.9;
    epk::optimizer_state<double> st;
    st.steps = 2;  // resumed, but no momentum buffer
    EXPECT_THROW(epk::check_optimizer_state<double>(o, st, 4), epk::usage_error);
    st.momentum_buffer.assign(3, 0.0);  // wrong length
    EXPECT_THROW(epk::check_optimizer_state<double>(o, st, 4), epk::usage_error);
    st.momentum_buffer.assign(4, 0.0);
    EXPECT_NO_THROW(epk::check_optimizer_state<double>(o, st, 4));
    o = optimizer_spec{};
    o.type = kind::adam;
    epk::optimizer_state<double> sa;
    sa.steps = 1;
    sa.exp_avg.assign(4, 0.0);
    sa.exp_avg_sq.assign(4, -1.0);  // negative second moment
    EXPECT_THROW(epk::check_optimizer_state<double>(o, sa, 4), epk::usage_error);
    EXPECT_EQ(epk::power_by_squaring<double>(0.9, 0), 1.0);
    EXPECT_NEAR(epk::power_by_squaring<double>(0.999, 1000000), std::pow(0.999, 1000000), 1e-12 * std::pow(0.999, 1000000));
}

// ---------------------------------------------------------------- the representation

// f(x; w[S]) − reconstruction within the budget of proofs-notes/004 §5 as extended by
// 007 §3, for every optimizer, trained here.
RC_GTEST_PROP(OptimizerKernelDouble, ResidualWithinBudget, ()) {
    const kernel_case kc = gen_optimizer_case();
    check_residual_within_budget<double>(kc, seen_double);
}

RC_GTEST_PROP(OptimizerKernelMpfr, ResidualWithinBudget, ()) {
    const kernel_case kc = gen_optimizer_case(0.5);
    epk::mpfr_precision_scope scope(*rc::gen::element(64L, 128L, 256L));
    check_residual_within_budget<mpfr_real>(kc, seen_mpfr);
}

// The split is exact: on a path trained here in MPFR-256 the remainder r_s = Δ_s − Σ_i φ_{i,s}
// − ω_s is rounding of the update (≤ 2⁻²⁰⁰ of it: 56 bits for the sums' length and
// cancellation in these small runs) — were a φ or ω wrong, r_s would be of the update's size.
// Per-point contributions add up: bias + Σ_i c(x, x_i) + optimizer term = the kernel
// machine, and the kernel machine plus the remainder term = the reconstruction, to the
// budget; keeping no contributions (one source for the batch) gives the same
// reconstruction to the budget.
RC_GTEST_PROP(OptimizerKernelMpfr, SplitIsExactAndContributionsAddUp, ()) {
    const kernel_case kc = gen_optimizer_case(0.5);
    RC_PRE(tame_run(kc));
    epk::mpfr_precision_scope scope(256);
    const path_kernel_result<mpfr_real> r = run_kernel<mpfr_real>(kc);
    RC_PRE(all_finite(r));
    if (!(to_d(r.remainder_max_rel) <= 0x1p-200))
        RC_LOG() << describe(kc.schedule.optimizer) << " remainder/update " << to_d(r.remainder_max_rel) << "\n";
    RC_ASSERT(to_d(r.remainder_max_rel) <= 0x1p-200);
    const matrix<double> budget = epk::reconstruction_budget(r, kc.rp.problem.model);
    const std::size_t N = r.n, C = r.c;
    for (std::size_t mm = 0; mm < r.m; ++mm)
        for (std::size_t c = 0; c < C; ++c) {
            mpfr_real machine = r.bias(mm, c);
            for (std::size_t i = 0; i < N; ++i) machine += r.contributions[(mm * N + i) * C + c];
            machine += r.optimizer_term(mm, c);
            const double e1 = std::abs(to_d(mpfr_real(machine - r.kernel_reconstruction(mm, c))));
            const double e2 = std::abs(to_d(mpfr_real(r.kernel_reconstruction(mm, c) + r.remainder_term(mm, c) - r.reconstruction(mm, c))));
            RC_ASSERT(e1 <= budget(mm, c));
            RC_ASSERT(e2 <= budget(mm, c));
        }
    // One source for the whole batch instead of one per training point.
    const epk::training_problem<mpfr_real> pr = convert_problem<mpfr_real>(kc.rp.problem);
    epk::path_kernel_request<mpfr_real> rq;
    rq.problem = &pr;
    rq.schedule = kc.schedule;
    rq.w0 = convert_vector<mpfr_real>(kc.rp.w);
    rq.x_test = convert_matrix<mpfr_real>(kc.x_test);
    rq.store_contributions = false;
    const path_kernel_result<mpfr_real> a = epk::compute_path_kernel<mpfr_real>(rq);
    const matrix<double> ba = epk::reconstruction_budget(a, kc.rp.problem.model);
    for (std::size_t e = 0; e < budget.data.size(); ++e) {
        const double d = std::abs(to_d(mpfr_real(a.reconstruction.data[e] - r.reconstruction.data[e])));
        seen_split.record(d / (budget.data[e] + ba.data[e]), 0, kc.describe() + " " + describe(kc.schedule.optimizer));
        RC_ASSERT(d <= budget.data[e] + ba.data[e]);
        RC_ASSERT(a.outputs_final.data[e] == r.outputs_final.data[e]);
    }
}

// A path recorded by another trainer (here: each row rounded to binary32, as a float32
// PyTorch run records it): the remainder carries the difference, the residual stays
// within the budget, and the kernel machine alone misses exactly the remainder term.
RC_GTEST_PROP(OptimizerKernelDouble, RecordedFloat32PathResidualWithinBudget, ()) {
    const kernel_case kc = gen_optimizer_case();
    RC_PRE(tame_run(kc));
    const epk::training_problem<double>& pr = kc.rp.problem;
    std::vector<std::vector<double>> rows{kc.rp.w};
    for (double& v : rows[0]) v = static_cast<double>(static_cast<float>(v));
    epk::train_sgd<double>(pr, rows[0], kc.schedule, [&](std::size_t, const std::vector<double>& w, const double&) {
        std::vector<double> r(w.size());
        for (std::size_t p = 0; p < w.size(); ++p) r[p] = static_cast<double>(static_cast<float>(w[p]));
        rows.push_back(r);
    });
    epk::path_kernel_request<double> rq;
    rq.problem = &pr;
    rq.schedule = kc.schedule;
    rq.w0 = rows[0];
    rq.recorded_row = [&](std::size_t s) { return rows[s]; };
    rq.x_test = kc.x_test;
    const auto r = epk::compute_path_kernel<double>(rq);
    RC_PRE(all_finite(r));
    const auto budget = epk::reconstruction_budget(r, kc.rp.problem.model);
    for (std::size_t e = 0; e < budget.data.size(); ++e) {
        const double res = std::abs(r.outputs_final.data[e] - r.reconstruction.data[e]);
        seen_recorded.record(res / budget.data[e], 0, kc.describe() + " " + describe(kc.schedule.optimizer));
        RC_ASSERT(res <= budget.data[e]);
        const double miss = r.outputs_final.data[e] - r.kernel_reconstruction.data[e];
        RC_ASSERT(std::abs(miss - r.remainder_term.data[e]) <= 2 * budget.data[e]);
    }
}

// The structured test side of optimizer runs against the per-point Jacobians
// (support/kernel_checks.hpp, check_structured_optimizer), every optimizer and activation.
observed_ratio seen_structured_recon, seen_structured_contrib;

RC_GTEST_PROP(OptimizerStructuredDouble, AgreesWithUnstructured, ()) {
    check_structured_optimizer<double>(gen_optimizer_case(0.5), seen_structured_recon, seen_structured_contrib);
}

// MPFR: rates ≤ 0.2 (a rate-0.5 smooth step costs the per-point path hundreds of adaptive
// nodes at 128 bits: minutes for a hundred cases, the reference's cost, not the property's).
RC_GTEST_PROP(OptimizerStructuredMpfr, AgreesWithUnstructured, ()) {
    const kernel_case kc = gen_optimizer_case(0.2);
    epk::mpfr_precision_scope scope(*rc::gen::element(64L, 128L));
    check_structured_optimizer<mpfr_real>(kc, seen_structured_recon, seen_structured_contrib);
}

// Bit-identical for any thread count, both modes, double and MPFR; an AdamW tanh run.
TEST(OptimizerStructured, ThreadsChangeNoBit) {
    const epk::model_spec m = epk::make_mlp(4, {7, 5}, 3, layer_kind::tanh);
    kernel_case kc = fixed_case(m, {epk::loss_kind::cross_entropy, epk::reduction_kind::mean}, 23, 5, {0.05, 0.05, 0.05}, 23);
    kc.schedule.optimizer.type = kind::adamw;
    kc.schedule.optimizer.weight_decay = 0.01;
    kc.schedule.optimizer.validate();
    for (const bool contributions : {false, true}) {
        const auto a = run_optimizer<double>(kc, true, contributions, 1), b = run_optimizer<double>(kc, true, contributions, 3);
        EXPECT_EQ(a.reconstruction.data, b.reconstruction.data);
        EXPECT_EQ(a.contributions, b.contributions);
        EXPECT_EQ(a.optimizer_term.data, b.optimizer_term.data);
        EXPECT_GT(a.gemm_flops, 0);
    }
    epk::mpfr_precision_scope scope(96);
    const auto p1 = run_optimizer<mpfr_real>(kc, true, true, 1), p2 = run_optimizer<mpfr_real>(kc, true, true, 2);
    for (std::size_t e = 0; e < p1.contributions.size(); ++e) EXPECT_TRUE(p1.contributions[e] == p2.contributions[e]);
}

// The audit's allowance for SGD with momentum (proofs-notes/012 §9), by hand: the buffer scale
// B_s = μB_{s−1} + Ĝ_s, the allowance a = η·B_s (η·(Ĝ_s + μB_s) with Nesterov, η·Ĝ_s without
// momentum), and the deviation d discounted to d·‖w‖/(‖w‖ + a).
TEST(OptimizerKernel, SgdAuditAllowanceFollowsTheBuffer) {
    const std::vector<double> w_next{2.0, -4.0}, w_pred{2.0 + 1e-12, -4.0};  // ‖w‖∞ = 4
    const double d = w_pred[0] - w_next[0];
    epk::optimizer_spec o;
    o.momentum = 0.9;
    double b = 0;
    const double d1 = epk::detail::sgd_discounted_deviation<double>(o, 0.5, 10.0, b, w_next, w_pred);  // B = 10, a = 5
    EXPECT_DOUBLE_EQ(b, 10.0);
    EXPECT_NEAR(d1, d * 4.0 / 9.0, 1e-26);
    const double d2 = epk::detail::sgd_discounted_deviation<double>(o, 0.5, 2.0, b, w_next, w_pred);  // B = 11, a = 5.5
    EXPECT_DOUBLE_EQ(b, 11.0);
    EXPECT_NEAR(d2, d * 4.0 / 9.5, 1e-26);
    o.nesterov = true;
    b = 10.0;  // B = 9 + 2 = 11, a = 0.5·(2 + 9.9) = 5.95
    EXPECT_NEAR(epk::detail::sgd_discounted_deviation<double>(o, 0.5, 2.0, b, w_next, w_pred), d * 4.0 / 9.95, 1e-26);
    o.nesterov = false;
    o.momentum = 0;
    b = 0;  // a = 0.5·2 = 1
    EXPECT_NEAR(epk::detail::sgd_discounted_deviation<double>(o, 0.5, 2.0, b, w_next, w_pred), d * 4.0 / 5.0, 1e-26);
    // A NaN in the recorded row is not discounted away.
    const std::vector<double> bad{2.0, std::nan("")};
    EXPECT_TRUE(std::isnan(epk::detail::sgd_discounted_deviation<double>(o, 0.5, 2.0, b, bad, w_pred)));
}

TEST(OptimizerKernel, PerStepKernelsAreRefusedWithAReason) {
    const epk::model_spec m = epk::make_mlp(3, {4}, 2, layer_kind::relu);
    kernel_case kc = fixed_case(m, {epk::loss_kind::cross_entropy, epk::reduction_kind::mean}, 6, 2, {0.1, 0.1}, 2);
    kc.schedule.optimizer.type = kind::adamw;
    try {
        run_kernel<double>(kc, 1, {0});
        FAIL() << "no error";
    } catch (const epk::usage_error& e) {
        EXPECT_NE(std::string(e.what()).find("per-step kernels K_s are defined for plain SGD"), std::string::npos) << e.what();
    }
    // And the plain-SGD paths refuse an optimizer they do not represent.
    const epk::training_problem<double>& pr = kc.rp.problem;
    epk::path_kernel_request<double> rq;
    rq.problem = &pr;
    rq.schedule = kc.schedule;
    rq.w0 = kc.rp.w;
    rq.x_test = kc.x_test;
    EXPECT_THROW(epk::compute_path_kernel_structured<double>(rq), epk::usage_error);
    EXPECT_THROW(epk::compute_path_kernel_unstructured<double>(rq), epk::usage_error);
}

// Plain SGD written as an optimizer with momentum 0 and no decay is plain SGD: the same
// (structured) path, no optimizer term, bit-identical results.
TEST(OptimizerKernel, PlainSgdIsUnchanged) {
    const epk::model_spec m = epk::make_mlp(4, {6, 5}, 3, layer_kind::tanh);
    kernel_case kc = fixed_case(m, {epk::loss_kind::cross_entropy, epk::reduction_kind::sum}, 9, 3, {0.2, 0.3, 0.1}, 3);
    const auto a = run_kernel<double>(kc);
    kc.schedule.optimizer.dampening = 0.5;  // no effect without momentum
    const auto b = run_kernel<double>(kc);
    EXPECT_TRUE(a.optimizer_term.data.empty());
    EXPECT_EQ(a.reconstruction.data, b.reconstruction.data);
    EXPECT_EQ(a.contributions, b.contributions);
}

TEST(Report, PrintObservedRatios) {
    seen_structured_recon.print("structured optimizer: reconstruction difference / sum of budgets");
    seen_structured_contrib.print("structured optimizer: contribution difference / normwise tolerance");
    seen_double.print("double: residual / budget, every optimizer");
    seen_mpfr.print("mpfr 64/128/256: residual / budget, every optimizer");
    seen_recorded.print("double, float32-recorded path: residual / budget");
    seen_split.print("mpfr256: per-point vs batch-source reconstruction difference / sum of budgets");
}

}  // namespace

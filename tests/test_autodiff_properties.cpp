// Property tests of the autodiff core over random architectures
// (1–4 linear layers, widths 1–16, every activation, both losses and
// reductions).  Bounds: proofs-notes/001-rounding-bounds.md.
// Reproduce a failure with RC_PARAMS="reproduce=..." as RapidCheck prints.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "epk/rounding_bound.hpp"
#include "support/generators.hpp"

using namespace epk;
using epk::testing::gen_problem;

namespace {

// m in γ_m for ⟨t, Σ_i J_iᵀ v_i⟩ vs ⟨J t, v⟩: the longest chain of roundings
// any term of either evaluation can see (proofs-notes/001 §3).
double bilinear_sum_length(const model_spec& m, std::size_t batch) {
    double len = static_cast<double>(m.parameter_count() + batch * m.output_dim() + batch);
    const auto w = m.widths();
    for (std::size_t k = 0; k + 1 < w.size(); ++k) len += 2.0 * static_cast<double>(w[k] + w[k + 1] + 2);
    return len;
}

double gamma(double k, double u) { return k * u / (1 - k * u); }

template <Real T>
void check_forward_reverse(const epk::testing::random_problem& rp) {
    const auto& pr = rp.problem;
    const std::size_t p = pr.model.parameter_count(), c = pr.model.output_dim();
    // Random tangent t ∈ R^P and cotangent v ∈ R^{B×C}, multiples of 1/16.
    std::vector<double> t(p);
    for (double& x : t) x = *rc::gen::inRange(-16, 17) / 16.0;
    matrix<double> v(pr.x.rows, c);
    for (double& x : v.data) x = *rc::gen::inRange(-16, 17) / 16.0;

    const auto wT = epk::testing::convert_vector<T>(rp.w);
    const auto tT = epk::testing::convert_vector<T>(t);
    const matrix<T> xT = convert_matrix<T>(pr.x), vT = convert_matrix<T>(v);
    const std::vector<T> g = vjp<T>(pr.model, wT, xT, vT);
    T reverse(0);
    for (std::size_t k = 0; k < p; ++k) reverse += tT[k] * g[k];
    const matrix<T> jt = jvp<T>(pr.model, wT, xT, tT);
    T forward_(0);
    for (std::size_t k = 0; k < jt.data.size(); ++k) forward_ += jt.data[k] * vT.data[k];

    const double u = scalar_traits<T>::to_double(scalar_traits<T>::unit_roundoff());
    const double scale = bilinear_magnitude(pr.model, rp.w, pr.x, t, v);
    const double budget = 2 * gamma(bilinear_sum_length(pr.model, pr.x.rows), u) * scale * first_order_slack;
    const double diff = std::abs(scalar_traits<T>::to_double(T(reverse - forward_)));
    RC_TAG(diff <= budget / 64 ? "well inside budget" : "near budget");
    if (!(diff <= budget)) {
        RC_FAIL(rp.describe() + ": |<t,J'v> - <Jt,v>| = " + std::to_string(diff) + " > budget " +
                std::to_string(budget) + " (scale " + std::to_string(scale) + ", u " + std::to_string(u) + ")");
    }
}

}  // namespace

// ⟨t, Jᵀv⟩ = ⟨Jt, v⟩ in double, within 2 γ_m · Σ|terms|.
RC_GTEST_PROP(Autodiff, ForwardAndReverseModeAgreeInDouble, ()) {
    check_forward_reverse<double>(gen_problem());
}

// The same identity in MPFR at a random precision 24..300 bits: the budget
// scales with that precision's u.
RC_GTEST_PROP(Autodiff, ForwardAndReverseModeAgreeInMpfrAtRandomPrecision, ()) {
    const auto bits = *rc::gen::inRange(24, 301);
    mpfr_precision_scope scope(bits);
    check_forward_reverse<mpfr_real>(gen_problem(3, 8));
}

// The double gradient of the batch loss agrees with an MPFR-256
// recomputation within the running error bound, entry by entry.
RC_GTEST_PROP(Autodiff, DoubleGradientWithinRunningBoundOfMpfr256, ()) {
    const auto rp = gen_problem();
    const gradient_bound gb = loss_gradient_with_bound(rp.problem, rp.w, rp.batch);
    RC_PRE(!gb.near_kink);  // the bound is for a fixed activation pattern
    mpfr_precision_scope scope(256);
    const auto pr = epk::testing::convert_problem<mpfr_real>(rp.problem);
    const auto w = epk::testing::convert_vector<mpfr_real>(rp.w);
    const std::vector<mpfr_real> ref = loss_gradient<mpfr_real>(pr, w, rp.batch);
    double worst_ratio = 0;
    std::size_t worst = 0;
    for (std::size_t k = 0; k < ref.size(); ++k) {
        const double err = std::abs((mpfr_real(gb.gradient[k]) - ref[k]).to_double());
        const double ratio = gb.bound[k] > 0 ? err / gb.bound[k] : (err == 0 ? 0 : INFINITY);
        if (ratio > worst_ratio) { worst_ratio = ratio; worst = k; }
    }
    RC_TAG(worst_ratio < 0.01 ? "error < 1% of bound" : "error >= 1% of bound");
    if (!(worst_ratio <= 1))
        RC_FAIL(rp.describe() + ": gradient entry " + std::to_string(worst) + " error/bound = " +
                std::to_string(worst_ratio));
}

// Central differences in MPFR-256 with h = 2^-60 agree with forward and
// reverse mode to 1e-30 (truncation h²/6·|L'''| ≈ 1e-37·|L'''|, rounding
// 2^-256·|L|/h ≈ 1e-59), away from kinks.
RC_GTEST_PROP(Autodiff, CentralDifferencesInMpfr256MatchAutodiff, ()) {
    const auto rp = gen_problem(3, 8);
    const auto& pr0 = rp.problem;
    RC_PRE(epk::testing::min_kink_distance(pr0.model, rp.w, gather_rows(pr0.x, rp.batch)) > 1e-12);
    mpfr_precision_scope scope(256);
    const auto pr = epk::testing::convert_problem<mpfr_real>(pr0);
    const auto w = epk::testing::convert_vector<mpfr_real>(rp.w);
    std::vector<mpfr_real> v(w.size());
    for (auto& x : v) x = mpfr_real(*rc::gen::inRange(-16, 17) / 16.0);
    const mpfr_real h = mpfr_real(0x1p-60);
    std::vector<mpfr_real> wp(w), wm(w);
    for (std::size_t k = 0; k < w.size(); ++k) {
        wp[k] = w[k] + h * v[k];
        wm[k] = w[k] - h * v[k];
    }
    // Loss: FD vs ⟨∇L, v⟩ (reverse mode).
    mpfr_real lp, lm;
    loss_gradient<mpfr_real>(pr, wp, rp.batch, &lp);
    loss_gradient<mpfr_real>(pr, wm, rp.batch, &lm);
    const mpfr_real fd = (lp - lm) / (mpfr_real(2) * h);
    const std::vector<mpfr_real> g = loss_gradient<mpfr_real>(pr, w, rp.batch);
    mpfr_real ad(0);
    for (std::size_t k = 0; k < g.size(); ++k) ad += g[k] * v[k];
    const double tol = 1e-30 * (1 + std::abs(ad.to_double()));
    RC_ASSERT(std::abs((fd - ad).to_double()) <= tol);
    // Outputs: FD vs J v (forward mode).
    const matrix<mpfr_real> xb = gather_rows(pr.x, rp.batch);
    const matrix<mpfr_real> fp = outputs<mpfr_real>(pr.model, wp, xb), fm = outputs<mpfr_real>(pr.model, wm, xb);
    const matrix<mpfr_real> jv = jvp<mpfr_real>(pr.model, w, xb, v);
    for (std::size_t k = 0; k < jv.data.size(); ++k) {
        const mpfr_real fdk = (fp.data[k] - fm.data[k]) / (mpfr_real(2) * h);
        RC_ASSERT(std::abs((fdk - jv.data[k]).to_double()) <= 1e-30 * (1 + std::abs(jv.data[k].to_double())));
    }
}

// Each Jacobian row is bit-for-bit the VJP with that unit cotangent (the
// same sequence of operations), and J t equals the forward mode to the
// bilinear budget.
RC_GTEST_PROP(Autodiff, JacobianRowsAreUnitVjps, ()) {
    const auto rp = gen_problem(3, 8);
    const auto& m = rp.problem.model;
    const matrix<double> x1 = gather_rows(rp.problem.x, std::vector<std::size_t>{0});
    const matrix<double> jac = jacobian<double>(m, rp.w, x1);
    const std::size_t c = m.output_dim();
    for (std::size_t q = 0; q < c; ++q) {
        matrix<double> e(1, c);
        e(0, q) = 1;
        const std::vector<double> g = vjp<double>(m, rp.w, x1, e);
        for (std::size_t k = 0; k < g.size(); ++k) RC_ASSERT(jac(q, k) == g[k]);
    }
}

// The exact path kernel in float128 and MPFR (128 and 512 bits): residual
// within budget over random runs, the two kernel paths agree, and the
// precision ladder — p and p+64 bits agree to about p bits (proofs-notes/004).
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "support/kernel_checks.hpp"

namespace {

using epk::mpfr_real;
using namespace epk::testing;

observed_ratio seen_f128, seen_mpfr128, seen_mpfr512;

RC_GTEST_PROP(PathKernelFloat128, AnyActivationResidualWithinBudget, ()) {
    check_residual_within_budget<epk::float128>(gen_kernel_case(false, 3, 6), seen_f128);
}
RC_GTEST_PROP(PathKernelMpfr128, AnyActivationResidualWithinBudget, ()) {
    epk::mpfr_precision_scope scope(128);
    check_residual_within_budget<mpfr_real>(gen_kernel_case(false, 3, 6), seen_mpfr128);
}
RC_GTEST_PROP(PathKernelMpfr512, AnyActivationResidualWithinBudget, ()) {
    epk::mpfr_precision_scope scope(512);
    // Steps up to lr 2 here (lr 8 in the other precisions): a 512-bit adaptive rule
    // on a smooth net swept far past its bends needs minutes, not seconds.
    check_residual_within_budget<mpfr_real>(gen_kernel_case(*rc::gen::arbitrary<bool>(), 2, 5, 2.0), seen_mpfr512);
}

// Precision ladder (MPFR's tgeneric idea): the whole pipeline — training,
// breakpoints, quadrature, contractions — at p and at p + 64 bits; the
// contributions and reconstructions agree to about p bits of their scale.
RC_GTEST_PROP(PrecisionLadder, PAndPPlus64AgreeToAboutPBits, ()) {
    const kernel_case kc = gen_kernel_case(*rc::gen::arbitrary<bool>(), 2, 5, 2.0);
    const long p = *rc::gen::element(64L, 113L, 200L);
    RC_PRE(tame_run(kc));
    epk::path_kernel_result<mpfr_real> lo, hi;
    {
        epk::mpfr_precision_scope scope(p);
        lo = run_kernel<mpfr_real>(kc);
    }
    epk::mpfr_precision_scope scope(p + 64);
    hi = run_kernel<mpfr_real>(kc);
    RC_PRE(all_finite(hi));
    double scale = 0;  // the terms' scale: |f| and the path magnitude
    for (std::size_t e = 0; e < hi.outputs_final.data.size(); ++e)
        scale = std::max(scale, hi.forward_scale.data[e] + hi.path_magnitude.data[e]);
    double worst = 0;
    for (std::size_t e = 0; e < hi.contributions.size(); ++e)
        worst = std::max(worst, std::abs(mpfr_real(epk::testing::exact_mpfr(lo.contributions[e]) - hi.contributions[e]).to_double()));
    for (std::size_t e = 0; e < hi.reconstruction.data.size(); ++e)
        worst = std::max(worst, std::abs(mpfr_real(epk::testing::exact_mpfr(lo.reconstruction.data[e]) - hi.reconstruction.data[e]).to_double()));
    // "About p bits": within 2^-(p-16) of the scale — 16 bits for the sums'
    // lengths, the quadrature tolerance τ and the training's amplification
    // over ≤ 4 steps (proofs-notes/004 §7).
    RC_ASSERT(worst <= std::ldexp(scale, -static_cast<int>(p - 16)));
}

RC_GTEST_PROP(TwoPaths, FactorsAndFullJacobiansAgreeMpfr128, ()) {
    const kernel_case kc = gen_kernel_case(false, 3, 6);
    epk::mpfr_precision_scope scope(128);
    const auto& m = kc.rp.problem.model;
    const auto pr = convert_problem<mpfr_real>(kc.rp.problem);
    const std::vector<mpfr_real> w = convert_vector<mpfr_real>(kc.rp.w);
    std::vector<mpfr_real> w1 = w;
    epk::sgd_step<mpfr_real>(pr, w1, kc.schedule.batch(0), mpfr_real(kc.schedule.learning_rates[0]));
    std::vector<mpfr_real> delta(w.size());
    for (std::size_t q = 0; q < w.size(); ++q) delta[q] = w1[q] - w[q];
    const auto st = epk::analyse_segment_structure(m);
    const auto x1 = epk::gather_rows(epk::convert_matrix<mpfr_real>(kc.x_test), std::vector<std::size_t>{0});
    const auto seg = epk::integrate_segment<mpfr_real>(m, st, w, delta, x1, {});
    for (std::size_t i = 0; i < pr.x.rows; ++i) {
        const auto xi = epk::gather_rows(pr.x, std::vector<std::size_t>{i});
        const auto ji = epk::jacobian<mpfr_real>(m, w, xi);
        const auto kj = epk::step_kernel_from_jacobians<mpfr_real>(seg.value, ji);
        const auto kf = epk::step_kernel_from_factors<mpfr_real>(m, w, delta, seg.nodes, seg.weights, x1, xi);
        const auto scale = two_path_scale<mpfr_real>(m, w, delta, seg.nodes, seg.weights, x1, xi);
        for (std::size_t e = 0; e < kj.data.size(); ++e) {
            const double mag = scale.data[e];
            const double bound = 2.0 * static_cast<double>(w.size() + seg.nodes.size() + 64) * std::ldexp(1.0, -128) * mag;
            RC_ASSERT(std::abs(mpfr_real(kj.data[e] - kf.data[e]).to_double()) <= bound);
        }
    }
}

TEST(Report, PrintObservedRatios) {
    seen_f128.print("float128");
    seen_mpfr128.print("mpfr:128");
    seen_mpfr512.print("mpfr:512");
}

}  // namespace

// The structured path kernel (structured_kernel.hpp) against the unstructured
// one (path_kernel.hpp) and the fast GEMM against the reference order
// (proofs-notes/006): equal to rounding, the training side bit-identical,
// results independent of the number of threads, chunks and row blocks.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <random>

#include "epk/gemm.hpp"
#include "support/kernel_checks.hpp"

namespace {

using epk::layer_kind;
using epk::matrix;
using epk::mpfr_real;
using epk::path_kernel_result;
using epk::scalar_traits;
using namespace epk::testing;

template <class T>
double to_d(const T& v) { return scalar_traits<T>::to_double(v); }

// Largest |a − b| / tol seen, per label (printed at the end).
observed_ratio seen_recon_double, seen_contrib_double, seen_recon_mpfr, seen_contrib_mpfr, seen_recon_float,
    seen_gemm;

// γ of the budget (path_kernel.hpp, reconstruction_budget) for a run.
template <class T>
double budget_gamma(const path_kernel_result<T>& r, const epk::model_spec& m) {
    double g = static_cast<double>(r.p + r.steps + r.max_rule_nodes + r.max_batch) + 8;
    for (const auto& o : epk::parameter_offsets(m)) g += static_cast<double>(o.in + o.out);
    for (const auto& l : m.layers)
        if (l.kind != layer_kind::linear) g += 10;
    return g;
}

// The two paths on one run.
//  * training side: losses, coefficients and the per-step remainder audit bit-identical
//    (the structured path sums the same products in the same order);
//  * the rule: the same cuts at every test point;
//  * reconstruction and remainder term: |structured − unstructured| ≤ the sum of the two
//    budgets (each is within its budget of the exact value: proofs-notes/004 §5, 006);
//  * contributions and stored kernels, entry by entry, within
//    γ·u·(max |entry| + max path magnitude) — normwise: each contribution's terms are
//    bounded by the test side's |J| times the training side's |g_i|, of the size of the
//    path magnitude for a step and of |c| after the steps, unless per-sample gradients
//    cancel, which these small random runs do not do by more than a few bits (the
//    observed worst is printed).
template <class T>
void check_paths_agree(const kernel_case& kc, observed_ratio& seen_recon, observed_ratio& seen_contrib) {
    RC_PRE(tame_run(kc));
    const std::vector<std::size_t> steps{0};
    const auto s = run_kernel<T>(kc, 1, steps, {}, true, true);
    const auto u = run_kernel<T>(kc, 1, steps, {}, true, false);
    RC_PRE(all_finite(s) && all_finite(u));
    const epk::model_spec& m = kc.rp.problem.model;
    const double unit = to_d(scalar_traits<T>::unit_roundoff());
    for (std::size_t e = 0; e < s.losses.size(); ++e) RC_ASSERT(s.losses[e] == u.losses[e]);
    for (std::size_t e = 0; e < s.coefficients.size(); ++e) RC_ASSERT(s.coefficients[e] == u.coefficients[e]);
    RC_ASSERT(s.audit.size() == u.audit.size());
    for (std::size_t e = 0; e < s.audit.size(); ++e) {
        RC_ASSERT(s.audit[e].remainder_max_abs == u.audit[e].remainder_max_abs);
        RC_ASSERT(s.audit[e].remainder_norm2 == u.audit[e].remainder_norm2);
    }
    RC_ASSERT(s.cuts == u.cuts);
    // Both paths train the path themselves from the batch's forward pass (sgd_update): the
    // same w[S] as train_sgd, so the same f(x; w[S]) to the bit.
    {
        const epk::training_problem<T> pr = convert_problem<T>(kc.rp.problem);
        const std::vector<T> wS = epk::train_sgd<T>(pr, convert_vector<T>(kc.rp.w), kc.schedule);
        const matrix<T> fS = epk::outputs<T>(pr.model, wS, convert_matrix<T>(kc.x_test));
        for (std::size_t e = 0; e < fS.data.size(); ++e) {
            RC_ASSERT(s.outputs_final.data[e] == fS.data[e]);
            RC_ASSERT(u.outputs_final.data[e] == fS.data[e]);
        }
    }
    const matrix<double> bs = epk::reconstruction_budget(s, m), bu = epk::reconstruction_budget(u, m);
    for (std::size_t e = 0; e < bs.data.size(); ++e) {
        RC_PRE(std::isfinite(bs.data[e]) && std::isfinite(bu.data[e]));
        const double tol = bs.data[e] + bu.data[e];
        const double d = std::abs(to_d(T(s.reconstruction.data[e] - u.reconstruction.data[e])));
        const double dr = std::abs(to_d(T(s.remainder_term.data[e] - u.remainder_term.data[e])));
        seen_recon.record(d / tol, d / (unit * (s.forward_scale.data[e] + s.path_magnitude.data[e])), kc.describe());
        RC_ASSERT(d <= tol);
        RC_ASSERT(dr <= tol);
        // The structured magnitude bounds |W + tΔW| by |W| + |ΔW|: never smaller, but for the
        // rounding of w + tΔ in T and of the binary64 sums that compute magnitudes (relative
        // 16·u_T + 1e-10: magnitudes are scales, needed to a digit or two).
        RC_ASSERT(s.path_magnitude.data[e] >= u.path_magnitude.data[e] * (1 - 16 * unit - 1e-10));
    }
    double mag = 0, cmax = 0, kmax = 0;
    for (double v : s.path_magnitude.data) mag = std::max(mag, v);
    for (const T& v : u.contributions) cmax = std::max(cmax, std::abs(to_d(v)));
    const double gamma = budget_gamma(s, m);
    const double tol_c = gamma * unit * (cmax + mag);
    for (std::size_t e = 0; e < s.contributions.size(); ++e) {
        const double d = std::abs(to_d(T(s.contributions[e] - u.contributions[e])));
        seen_contrib.record(d / tol_c, d / (unit * (cmax + mag)), kc.describe());
        RC_ASSERT(d <= tol_c);
    }
    RC_ASSERT(s.step_kernels.size() == 1 && u.step_kernels.size() == 1);
    const auto& ks = s.step_kernels[0].second;
    const auto& ku = u.step_kernels[0].second;
    RC_ASSERT(ks.size() == ku.size());
    for (const T& v : ku) kmax = std::max(kmax, std::abs(to_d(v)));
    for (std::size_t e = 0; e < ks.size(); ++e)
        RC_ASSERT(std::abs(to_d(T(ks[e] - ku[e]))) <= gamma * unit * (kmax + mag));
}

RC_GTEST_PROP(StructuredDouble, PiecewiseLinearAgreesWithUnstructured, ()) {
    check_paths_agree<double>(gen_kernel_case(true), seen_recon_double, seen_contrib_double);
}
RC_GTEST_PROP(StructuredDouble, AnyActivationAgreesWithUnstructured, ()) {
    check_paths_agree<double>(gen_kernel_case(false, 3, 6, 2.0), seen_recon_double, seen_contrib_double);
}
RC_GTEST_PROP(StructuredFloat, AnyActivationAgreesWithUnstructured, ()) {
    check_paths_agree<float>(gen_kernel_case(false, 3, 6, 2.0), seen_recon_float, seen_recon_float);
}
RC_GTEST_PROP(StructuredMpfr128, AnyActivationAgreesWithUnstructured, ()) {
    epk::mpfr_precision_scope scope(128);
    check_paths_agree<mpfr_real>(gen_kernel_case(*rc::gen::arbitrary<bool>(), 2, 5, 2.0), seen_recon_mpfr, seen_contrib_mpfr);
}

// The fast double GEMM against the reference order: every entry within the
// dot-product bound γ_k·Σ_p |a_ip||b_pj| (γ_k = k·u/(1 − k·u)) of it — any order
// of summation, fused or not, meets it (Higham, Accuracy and Stability, §3.1).
RC_GTEST_PROP(Gemm, FastDoubleWithinTheDotProductBoundOfTheReference, ()) {
    const auto m = *rc::gen::inRange<std::size_t>(1, 40);
    const auto n = *rc::gen::inRange<std::size_t>(1, 40);
    const auto k = *rc::gen::inRange<std::size_t>(0, 300);
    const bool bt = *rc::gen::arbitrary<bool>();
    const bool acc = *rc::gen::arbitrary<bool>();
    const std::size_t pad = *rc::gen::inRange<std::size_t>(0, 3);  // leading dimensions larger than the rows
    std::mt19937_64 rng(*rc::gen::arbitrary<std::uint64_t>());
    std::uniform_real_distribution<double> dist(-1, 1);
    const std::size_t lda = k + pad, ldb = (bt ? k : n) + pad, ldc = n + pad;
    std::vector<double> a(m * lda), b((bt ? n : k) * ldb), c0(m * ldc);
    for (double& v : a) v = dist(rng);
    for (double& v : b) v = dist(rng) * std::ldexp(1.0, static_cast<int>(rng() % 21) - 10);
    for (double& v : c0) v = dist(rng);
    std::vector<double> fast = c0, ref = c0;
    epk::gemm<double>(bt, m, n, k, a.data(), lda, b.data(), ldb, fast.data(), ldc, acc);
    epk::gemm_reference<double>(bt, m, n, k, a.data(), lda, b.data(), ldb, ref.data(), ldc, acc);
    const double u = 0x1p-53, gk = static_cast<double>(k + 1) * u / (1 - static_cast<double>(k + 1) * u);
    for (std::size_t i = 0; i < m; ++i)
        for (std::size_t j = 0; j < ldc; ++j) {
            if (j >= n) {  // the padding is never written
                RC_ASSERT(fast[i * ldc + j] == c0[i * ldc + j]);
                continue;
            }
            double mag = acc ? std::abs(c0[i * ldc + j]) : 0.0;
            for (std::size_t p = 0; p < k; ++p) mag += std::abs(a[i * lda + p] * (bt ? b[j * ldb + p] : b[p * ldb + j]));
            const double d = std::abs(fast[i * ldc + j] - ref[i * ldc + j]);
            // Both are within γ_{k+1}·mag of the exact sum (k products, plus C when accumulating).
            if (mag > 0) seen_gemm.record(d / (2 * gk * mag), d / (u * mag), "");
            RC_ASSERT(d <= 2 * gk * mag);
        }
}

// The rule a segment integral reports is the rule it used: Σ_q ω_q J(x; w + t_q Δ)
// over its nodes is its value (to rounding) and the weights sum to 1 — also when
// a piece stops refining (max_nodes / max_depth reached), where the structured
// path evaluates its factors on exactly these nodes.
RC_GTEST_PROP(SegmentRule, ReportedNodesAreTheRuleUsed, ()) {
    const kernel_case kc = gen_kernel_case(false, 3, 6, 8.0);
    const epk::model_spec& m = kc.rp.problem.model;
    const std::vector<double>& w = kc.rp.w;
    std::vector<double> delta(w.size());
    for (double& d : delta) d = *rc::gen::inRange(-64, 65) / 16.0;  // large steps: pieces that stop refining
    epk::quadrature_options qo;
    qo.max_nodes = *rc::gen::element<std::size_t>(8, 16, 128);
    qo.max_depth = *rc::gen::element<std::size_t>(0, 1, 12);
    const epk::segment_structure st = epk::analyse_segment_structure(m);
    const matrix<double> x1 = epk::gather_rows(kc.x_test, std::vector<std::size_t>{0});
    const auto seg = epk::integrate_segment<double>(m, st, w, delta, x1, qo);
    RC_ASSERT(seg.nodes.size() == seg.weights.size());
    double wsum = 0;
    for (double v : seg.weights) wsum += v;
    RC_ASSERT(std::abs(wsum - 1) <= 1e-12);
    matrix<double> again(seg.value.rows, seg.value.cols);
    for (std::size_t q = 0; q < seg.nodes.size(); ++q) {
        const matrix<double> j = epk::jacobian<double>(m, epk::detail::point_on_segment<double>(w, delta, seg.nodes[q]), x1);
        for (std::size_t e = 0; e < j.data.size(); ++e) again.data[e] += seg.weights[q] * j.data[e];
    }
    const double scale = std::max(seg.scale, 1e-300);
    for (std::size_t e = 0; e < again.data.size(); ++e)
        RC_ASSERT(std::abs(again.data[e] - seg.value.data[e]) <= 1e-12 * scale);
}

// More test points than a chunk and more rows than a block: the structured path
// gives the same bits for 1, 2 and 3 threads, and agrees with the unstructured
// path to rounding (a 300-node fixed rule puts 300 rows on each test point).
TEST(Structured, ChunksBlocksAndThreadsChangeNoBit) {
    const epk::model_spec m = epk::make_mlp(4, {7, 5}, 3, layer_kind::tanh);
    kernel_case kc = fixed_case(m, {epk::loss_kind::cross_entropy, epk::reduction_kind::mean}, 23, 5, {0.3, 0.7}, 23);
    ASSERT_GT(kc.x_test.rows, epk::structured::chunk_points * 2);
    epk::quadrature_options qo;
    qo.fixed_nodes = 300;
    ASSERT_GT(qo.fixed_nodes, epk::structured::block_rows);
    const auto a = run_kernel<double>(kc, 1, {1}, qo);
    const auto b = run_kernel<double>(kc, 2, {1}, qo);
    const auto c = run_kernel<double>(kc, 3, {1}, qo);
    EXPECT_EQ(a.reconstruction.data, b.reconstruction.data);
    EXPECT_EQ(a.reconstruction.data, c.reconstruction.data);
    EXPECT_EQ(a.contributions, b.contributions);
    EXPECT_EQ(a.contributions, c.contributions);
    EXPECT_EQ(a.step_kernels.at(0).second, c.step_kernels.at(0).second);
    EXPECT_EQ(a.path_magnitude.data, c.path_magnitude.data);
    const auto u = run_kernel<double>(kc, 1, {1}, qo, false, false);
    const matrix<double> ba = epk::reconstruction_budget(a, m), bu = epk::reconstruction_budget(u, m);
    double worst = 0;
    for (std::size_t e = 0; e < ba.data.size(); ++e) {
        EXPECT_LE(std::abs(a.reconstruction.data[e] - u.reconstruction.data[e]), ba.data[e] + bu.data[e]);
        worst = std::max(worst, std::abs(a.reconstruction.data[e] - u.reconstruction.data[e]));
    }
    double cmax = 0, cd = 0, mag = 0;
    for (std::size_t e = 0; e < a.contributions.size(); ++e) {
        cmax = std::max(cmax, std::abs(u.contributions[e]));
        cd = std::max(cd, std::abs(a.contributions[e] - u.contributions[e]));
    }
    for (double v : a.path_magnitude.data) mag = std::max(mag, v);
    std::printf("[chunks/blocks] reconstruction differs by %.3g, contributions by %.3g (max |c| %.3g)\n", worst, cd, cmax);
    EXPECT_LE(cd, budget_gamma(a, m) * 0x1p-53 * (cmax + mag));
    EXPECT_GT(a.gemm_flops, 0);
    EXPECT_EQ(u.gemm_flops, 0);
    epk::mpfr_precision_scope scope(96);
    const auto p1 = run_kernel<mpfr_real>(kc, 1, {}, qo), p2 = run_kernel<mpfr_real>(kc, 2, {}, qo);
    for (std::size_t e = 0; e < p1.contributions.size(); ++e) EXPECT_TRUE(p1.contributions[e] == p2.contributions[e]);
    for (std::size_t e = 0; e < p1.reconstruction.data.size(); ++e) EXPECT_TRUE(p1.reconstruction.data[e] == p2.reconstruction.data[e]);
}

// The smooth ladder (structured_kernel.hpp, ladder_chunk): a tanh net under the default
// adaptive rule.  Results do not depend on the thread count (fixed chunks; a point's rules
// depend on that point only), in double and MPFR; the stored kernel step too.
TEST(Structured, SmoothLadderThreadsChangeNoBit) {
    const epk::model_spec m = epk::make_mlp(4, {7, 5}, 3, layer_kind::tanh);
    kernel_case kc = fixed_case(m, {epk::loss_kind::cross_entropy, epk::reduction_kind::mean}, 23, 5, {0.3, 0.7}, 23);
    ASSERT_GT(kc.x_test.rows, epk::structured::ladder_chunk_points);
    const auto a = run_kernel<double>(kc, 1, {1});
    const auto b = run_kernel<double>(kc, 2, {1});
    const auto c = run_kernel<double>(kc, 3, {1});
    EXPECT_EQ(a.reconstruction.data, b.reconstruction.data);
    EXPECT_EQ(a.reconstruction.data, c.reconstruction.data);
    EXPECT_EQ(a.contributions, c.contributions);
    EXPECT_EQ(a.step_kernels.at(0).second, b.step_kernels.at(0).second);
    EXPECT_EQ(a.quadrature_bound.data, c.quadrature_bound.data);
    EXPECT_EQ(a.evaluations, c.evaluations);
    EXPECT_GT(a.gemm_flops, 0);
    epk::mpfr_precision_scope scope(96);
    const auto p1 = run_kernel<mpfr_real>(kc, 1), p3 = run_kernel<mpfr_real>(kc, 3);
    for (std::size_t e = 0; e < p1.contributions.size(); ++e) EXPECT_TRUE(p1.contributions[e] == p3.contributions[e]);
    for (std::size_t e = 0; e < p1.reconstruction.data.size(); ++e) EXPECT_TRUE(p1.reconstruction.data[e] == p3.reconstruction.data[e]);
    EXPECT_EQ(p1.evaluations, p3.evaluations);
}

// The ladder's sizes: each point's accepted rule is at most its evaluations, a big step takes
// more nodes than a small one, and with max_nodes too small for a big step the pieces are
// bisected — the results then still agree with the unstructured adaptive rule (which bisects
// too) within the sum of the budgets.
TEST(Structured, SmoothLadderGrowsAndBisects) {
    const epk::model_spec m = epk::make_mlp(3, {6, 6}, 2, layer_kind::tanh);
    const epk::loss_spec loss{epk::loss_kind::mse, epk::reduction_kind::sum};
    const kernel_case small = fixed_case(m, loss, 6, 11, {0.001}, 4);
    const kernel_case big = fixed_case(m, loss, 6, 11, {3.0}, 4);
    const auto rs = run_kernel<double>(small), rb = run_kernel<double>(big);
    ASSERT_TRUE(all_finite(rb));
    EXPECT_LT(rs.max_rule_nodes, rb.max_rule_nodes);
    epk::quadrature_options qo;
    qo.first_nodes = 2;
    qo.max_nodes = 4;
    const auto s = run_kernel<double>(big, 1, {}, qo), u = run_kernel<double>(big, 1, {}, qo, false, false);
    std::size_t most = 0;
    for (std::size_t k = 0; k < s.evaluations.size(); ++k) most = std::max(most, s.evaluations[k]);
    EXPECT_GT(s.max_rule_nodes, qo.max_nodes) << "a big step on at most 4 nodes per piece is cut into pieces";
    const matrix<double> bs = epk::reconstruction_budget(s, m), bu = epk::reconstruction_budget(u, m);
    for (std::size_t e = 0; e < bs.data.size(); ++e)
        EXPECT_LE(std::abs(s.reconstruction.data[e] - u.reconstruction.data[e]), bs.data[e] + bu.data[e]);
    EXPECT_TRUE(s.quadrature_converged);
    EXPECT_GT(most, s.max_rule_nodes);
}

// What the ladder's estimate means (proofs-notes/010 §2): per output, the sum over steps of
// est_c bounds — as an estimate, not a proof — the quadrature error of the accepted rules in
// the step terms.  Checked in MPFR-160 against a 40-node rule (its error far below 2^-160 on
// these small steps): |ladder − reference| ≤ quadrature_bound + the rounding of both.
TEST(Structured, SmoothLadderEstimateCoversTheQuadratureError) {
    epk::mpfr_precision_scope scope(160);
    for (const layer_kind act : {layer_kind::tanh, layer_kind::sigmoid, layer_kind::softplus, layer_kind::gelu}) {
        const epk::model_spec m = epk::make_mlp(3, {5, 4}, 2, act);
        const kernel_case kc = fixed_case(m, {epk::loss_kind::cross_entropy, epk::reduction_kind::mean}, 8, 3, {0.5, 0.5, 0.5}, 5);
        const auto s = run_kernel<mpfr_real>(kc);
        epk::quadrature_options ref;
        ref.fixed_nodes = 40;
        const auto r = run_kernel<mpfr_real>(kc, 1, {}, ref);
        double worst = 0;
        for (std::size_t e = 0; e < s.reconstruction.data.size(); ++e) {
            const double d = std::abs(to_d(mpfr_real(s.reconstruction.data[e] - r.reconstruction.data[e])));
            const double bound = to_d(s.quadrature_bound.data[e]) + 1e4 * 0x1p-160 * (1 + s.path_magnitude.data[e]);
            worst = std::max(worst, d / bound);
            EXPECT_LE(d, bound) << epk::to_string(act) << " entry " << e;
        }
        std::printf("[ladder estimate, %s] worst |error| / (estimate + rounding) %.3g, most nodes %zu\n",
                    std::string(epk::to_string(act)).c_str(), worst, s.max_rule_nodes);
    }
}

// A recorded path (rounded to binary32): the remainder term, computed from the
// factors, equals the unstructured one to rounding and still closes the gap.
TEST(Structured, RecordedPathRemainderMatchesUnstructured) {
    const epk::model_spec m = epk::make_mlp(5, {8, 8}, 3, layer_kind::relu);
    kernel_case kc = fixed_case(m, {epk::loss_kind::cross_entropy, epk::reduction_kind::mean}, 12, 3, {0.5, 0.5, 0.5, 0.5}, 4);
    const epk::training_problem<double>& pr = kc.rp.problem;
    std::vector<std::vector<double>> rows{kc.rp.w};
    epk::train_sgd<double>(pr, kc.rp.w, kc.schedule, [&](std::size_t, const std::vector<double>& w, const double&) {
        std::vector<double> r(w.size());
        for (std::size_t p = 0; p < w.size(); ++p) r[p] = static_cast<double>(static_cast<float>(w[p]));
        rows.push_back(r);
    });
    auto run = [&](bool structured) {
        epk::path_kernel_request<double> rq;
        rq.problem = &pr;
        rq.schedule = kc.schedule;
        rq.w0 = rows[0];
        rq.recorded_row = [&](std::size_t s) { return rows[s]; };
        rq.x_test = kc.x_test;
        rq.structured = structured;
        return epk::compute_path_kernel<double>(rq);
    };
    const auto s = run(true), u = run(false);
    const matrix<double> bs = epk::reconstruction_budget(s, m), bu = epk::reconstruction_budget(u, m);
    double rem = 0;
    for (std::size_t e = 0; e < s.remainder_term.data.size(); ++e) {
        rem = std::max(rem, std::abs(s.remainder_term.data[e]));
        EXPECT_LE(std::abs(s.outputs_final.data[e] - s.reconstruction.data[e]), bs.data[e]);
        EXPECT_LE(std::abs(s.remainder_term.data[e] - u.remainder_term.data[e]), bs.data[e] + bu.data[e]);
    }
    EXPECT_GT(rem, 1e-9);  // binary32 rows: a real remainder, not rounding of double
}

class Report : public ::testing::Environment {
   public:
    void TearDown() override {
        seen_recon_double.print("double: reconstruction difference / sum of budgets");
        seen_contrib_double.print("double: contribution difference / normwise tolerance");
        seen_recon_float.print("float: difference / tolerance");
        seen_recon_mpfr.print("mpfr128: reconstruction difference / sum of budgets");
        seen_contrib_mpfr.print("mpfr128: contribution difference / normwise tolerance");
        seen_gemm.print("fast GEMM: difference / 2 gamma_k sum|ab|");
    }
};
const auto* report = ::testing::AddGlobalTestEnvironment(new Report);

}  // namespace

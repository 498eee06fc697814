// The structured path kernel of tree models (structured_tree.hpp: conv as products of patches
// and output adjoints, the rule's nodes stacked in the inner dimension) against the
// unstructured full-Jacobian path (path_kernel.hpp), over random small CNNs and ResNets:
//  - training side (losses, coefficients, the remainder audit) and the cuts bit-identical;
//  - reconstruction and remainder term within the sum of the two budgets;
//  - contributions and a stored kernel step within γ·u·(max |entry| + max path magnitude)
//    (the bound test_structured.cpp states for MLPs: both sum the same terms in other orders);
//  - the structured path magnitude never below the unstructured one (it majorises |A(w + tΔ)|
//    by |A(w)| + |A(Δ)| and takes the rows' maxima, structured_tree.hpp);
// and, on fixed models, that the thread count and the row blocks change no bit.  The sparse
// forms of the conv nodes' reverse sweep (structured_tree.hpp) are forced on and off too.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <cmath>
#include <cstdio>

#include "epk/path_kernel.hpp"
#include "epk/training.hpp"
#include "support/cnn_generators.hpp"
#include "support/kernel_checks.hpp"

namespace {

using namespace epk;
using namespace epk::testing;
using namespace epk::testing::cnn;

template <class T>
double to_d(const T& v) { return scalar_traits<T>::to_double(v); }

observed_ratio seen_recon_pl, seen_contrib_pl, seen_recon_smooth, seen_contrib_smooth, seen_fixed;

// A random CNN / ResNet problem: N 3-5 images, cross-entropy, S 1-2 full-batch steps, M 2.
kernel_case gen_tree_case(bool piecewise_linear, bool allow_norm) {
    kernel_case kc;
    const model_spec m = gen_cnn(piecewise_linear, allow_norm);
    kc.rp.problem.model = m;
    kc.rp.problem.loss = {loss_kind::cross_entropy, reduction_kind::mean};
    const std::size_t n = *rc::gen::inRange<std::size_t>(3, 6), c = m.output_dim();
    auto values = [](std::size_t k, double scale) {
        std::vector<double> v(k);
        for (double& e : v) e = *rc::gen::inRange(-64, 65) / 64.0 * scale + 1.0 / 977.0;
        return v;
    };
    kc.rp.problem.x = matrix<double>(n, m.input_dim);
    kc.rp.problem.x.data = values(n * m.input_dim, 1.0);
    for (std::size_t i = 0; i < n; ++i)
        kc.rp.problem.y.labels.push_back(*rc::gen::inRange<std::int64_t>(0, static_cast<std::int64_t>(c)));
    kc.rp.w = values(m.parameter_count(), 0.4);
    kc.schedule.steps = *rc::gen::inRange<std::size_t>(1, 3);
    kc.schedule.n_train = n;
    const double lr = piecewise_linear ? *rc::gen::element(0.05, 0.2, 0.5) : *rc::gen::element(0.05, 0.2);
    kc.schedule.learning_rates.assign(kc.schedule.steps, lr);
    kc.x_test = matrix<double>(2, m.input_dim);
    kc.x_test.data = values(2 * m.input_dim, 1.0);
    return kc;
}

template <class T>
double tree_gamma(const path_kernel_result<T>& r, const model_spec& m) {
    return static_cast<double>(r.p + r.steps + r.max_rule_nodes + r.max_batch) + 8 + tree_segment::analyse(m).chain;
}

template <class T>
void check_paths_agree(const kernel_case& kc, const quadrature_options& qo, observed_ratio& seen_recon,
                       observed_ratio& seen_contrib) {
    RC_PRE(tame_run(kc));
    const auto s = run_kernel<T>(kc, 1, {0}, qo, true, true);
    const auto u = run_kernel<T>(kc, 1, {0}, qo, true, false);
    RC_PRE(all_finite(s) && all_finite(u));
    const model_spec& m = kc.rp.problem.model;
    const double unit = to_d(scalar_traits<T>::unit_roundoff());
    RC_ASSERT(s.losses.size() == u.losses.size());
    for (std::size_t e = 0; e < s.losses.size(); ++e) RC_ASSERT(s.losses[e] == u.losses[e]);
    for (std::size_t e = 0; e < s.coefficients.size(); ++e) RC_ASSERT(s.coefficients[e] == u.coefficients[e]);
    RC_ASSERT(s.audit.size() == u.audit.size());
    for (std::size_t e = 0; e < s.audit.size(); ++e) {
        RC_ASSERT(s.audit[e].remainder_max_abs == u.audit[e].remainder_max_abs);
        RC_ASSERT(s.audit[e].remainder_norm2 == u.audit[e].remainder_norm2);
    }
    RC_ASSERT(s.cuts == u.cuts);
    for (std::size_t e = 0; e < s.outputs_final.data.size(); ++e) RC_ASSERT(s.outputs_final.data[e] == u.outputs_final.data[e]);
    RC_ASSERT(s.gemm_flops > 0);
    const matrix<double> bs = reconstruction_budget(s, m), bu = reconstruction_budget(u, m);
    for (std::size_t e = 0; e < bs.data.size(); ++e) {
        RC_PRE(std::isfinite(bs.data[e]) && std::isfinite(bu.data[e]));
        const double tol = bs.data[e] + bu.data[e];
        const double d = std::abs(to_d(T(s.reconstruction.data[e] - u.reconstruction.data[e])));
        const double dr = std::abs(to_d(T(s.remainder_term.data[e] - u.remainder_term.data[e])));
        seen_recon.record(d / tol, d / (unit * (s.forward_scale.data[e] + s.path_magnitude.data[e])), kc.describe());
        RC_ASSERT(d <= tol);
        RC_ASSERT(dr <= tol);
        // Its own residual within its own budget (a fixed rule is not exact across kinks and
        // carries no estimate: there both paths make the same quadrature error).
        if (qo.fixed_nodes == 0) RC_ASSERT(std::abs(to_d(T(s.outputs_final.data[e] - s.reconstruction.data[e]))) <= bs.data[e]);
        RC_ASSERT(s.path_magnitude.data[e] >= u.path_magnitude.data[e] * (1 - 16 * unit - 1e-10));
    }
    double mag = 0, cmax = 0, kmax = 0;
    for (double v : s.path_magnitude.data) mag = std::max(mag, v);
    for (const T& v : u.contributions) cmax = std::max(cmax, std::abs(to_d(v)));
    const double gamma = tree_gamma(s, m);
    const double tol_c = gamma * unit * (cmax + mag);
    RC_ASSERT(s.contributions.size() == u.contributions.size());
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
    for (std::size_t e = 0; e < ks.size(); ++e) RC_ASSERT(std::abs(to_d(T(ks[e] - ku[e]))) <= gamma * unit * (kmax + mag));
}

// Sets the densities below which structured_tree.hpp takes its sparse forms (the gathered
// weight integral, the sparse input adjoint) for one scope: 0 forces the dense forms, 2 the
// sparse ones on every conv node.
struct sparse_forms {
    double gathered = structured_tree::gathered_max_density, adjoint = structured_tree::sparse_adjoint_max_density;
    sparse_forms(double g, double a) {
        structured_tree::gathered_max_density = g;
        structured_tree::sparse_adjoint_max_density = a;
    }
    ~sparse_forms() {
        structured_tree::gathered_max_density = gathered;
        structured_tree::sparse_adjoint_max_density = adjoint;
    }
    sparse_forms(const sparse_forms&) = delete;
    sparse_forms& operator=(const sparse_forms&) = delete;
};

}  // namespace

// The sparse forms of the conv nodes' reverse sweep (products with exact zeros left out),
// each forced on or off: the same agreement with the unstructured path as the default.
RC_GTEST_PROP(StructuredTree, SparseFormsAgreeWithUnstructured, ()) {
    const double g = *rc::gen::element(0.0, 2.0), a = *rc::gen::element(0.0, 2.0);
    const sparse_forms forced(g, a);
    check_paths_agree<double>(gen_tree_case(true, false), {}, seen_recon_pl, seen_contrib_pl);
}

// Exact rules on the pieces between the cuts: the rows of structured_tree.hpp.
RC_GTEST_PROP(StructuredTree, PiecewiseLinearAgreesWithUnstructured, ()) {
    check_paths_agree<double>(gen_tree_case(true, false), {}, seen_recon_pl, seen_contrib_pl);
}
// Smooth networks: the adaptive search's Ī, contracted by products.
RC_GTEST_PROP(StructuredTree, SmoothAgreesWithUnstructured, ()) {
    check_paths_agree<double>(gen_tree_case(false, true), {}, seen_recon_smooth, seen_contrib_smooth);
}
// A fixed rule on any network (layer norm included): the rows, with per-row magnitudes for layer norm.
RC_GTEST_PROP(StructuredTree, FixedRuleAgreesWithUnstructured, ()) {
    quadrature_options qo;
    qo.fixed_nodes = *rc::gen::inRange<std::size_t>(1, 7);
    check_paths_agree<double>(gen_tree_case(*rc::gen::arbitrary<bool>(), true), qo, seen_fixed, seen_fixed);
}

namespace {

// Fixed models: a ReLU ResNet with max pool (the bench's shape, smaller), a tanh ResNet with a
// strided grouped projection, a layer norm net with a linear on [C, H, W]'s last axis.
std::vector<model_spec> fixed_models() {
    layer_spec leaky = simple(layer_kind::leaky_relu);
    leaky.negative_slope = 0.125;
    return {
        image_model({1, 6, 6}, {conv(4, 3, 1, 1), simple(layer_kind::relu), pool(layer_kind::max_pool2d, 2),
                                residual({conv(4, 3, 1, 1), simple(layer_kind::relu), conv(4, 3, 1, 1)}, {}),
                                pool(layer_kind::avg_pool2d, 2, 1), simple(layer_kind::flatten), linear(3)}),
        image_model({2, 5, 5}, {conv(4, 3, 1, 1, 1, 2), simple(layer_kind::tanh),
                                residual({conv(2, 3, 2, 1), leaky, conv(2, 3, 1, 1)}, {conv(2, 1, 2, 0)}),
                                simple(layer_kind::flatten), linear(3, false)}),
        image_model({2, 3, 4}, {linear(5), norm({3, 5}), simple(layer_kind::gelu), conv(2, 2, 1, 0, 2),
                                simple(layer_kind::flatten), linear(2)}),
    };
}

kernel_case fixed_tree_case(const model_spec& m, std::uint64_t seed) {
    return fixed_case(m, {loss_kind::cross_entropy, reduction_kind::mean}, 5, seed, {0.4, 0.3}, 5);
}

}  // namespace

// Bit-identical for 1, 2 and 3 threads, with a rule of 150 nodes (three blocks of rows), in
// double and MPFR-96; and the rows path against the unstructured one on the same rule.
// Optimizer runs of tree models through point_integral (proofs-notes/010 §4): momentum,
// Nesterov with decay, Adam, AdamW on random piecewise-linear and smooth (layer norm) nets.
observed_ratio seen_opt_recon, seen_opt_contrib;
RC_GTEST_PROP(StructuredTree, OptimizerAgreesWithUnstructured, ()) {
    kernel_case kc = gen_tree_case(*rc::gen::arbitrary<bool>(), true);
    epk::optimizer_spec& o = kc.schedule.optimizer;
    switch (*rc::gen::inRange(0, 4)) {
        case 0: o.momentum = 0.9; break;
        case 1: o.momentum = 0.9; o.nesterov = true; o.weight_decay = 0.01; break;
        case 2: o.type = epk::optimizer_spec::kind::adam; o.weight_decay = 0.01; break;
        default: o.type = epk::optimizer_spec::kind::adamw; o.weight_decay = 0.01; break;
    }
    if (o.type != epk::optimizer_spec::kind::sgd)
        for (double& r : kc.schedule.learning_rates) r = 0.01;
    o.validate();
    RC_PRE(tame_run(kc));
    check_structured_optimizer<double>(kc, seen_opt_recon, seen_opt_contrib);
}

TEST(StructuredTree, ThreadsAndBlocksChangeNoBit) {
    quadrature_options qo;
    qo.fixed_nodes = 150;
    ASSERT_GT(qo.fixed_nodes, 2 * structured_tree::block_rows);
    for (const model_spec& m : fixed_models()) {
        const kernel_case kc = fixed_tree_case(m, 5);
        const auto a = run_kernel<double>(kc, 1, {1}, qo);
        const auto b = run_kernel<double>(kc, 2, {1}, qo);
        const auto c = run_kernel<double>(kc, 3, {1}, qo);
        EXPECT_EQ(a.reconstruction.data, b.reconstruction.data);
        EXPECT_EQ(a.reconstruction.data, c.reconstruction.data);
        EXPECT_EQ(a.contributions, b.contributions);
        EXPECT_EQ(a.contributions, c.contributions);
        EXPECT_EQ(a.step_kernels.at(0).second, c.step_kernels.at(0).second);
        EXPECT_EQ(a.path_magnitude.data, c.path_magnitude.data);
        EXPECT_GT(a.gemm_flops, 0);
        {  // the sparse forms forced on every conv node: no bit depends on the threads either
            const sparse_forms forced(2, 2);
            const auto a2 = run_kernel<double>(kc, 1, {1}, qo), c2 = run_kernel<double>(kc, 3, {1}, qo);
            EXPECT_EQ(a2.reconstruction.data, c2.reconstruction.data);
            EXPECT_EQ(a2.contributions, c2.contributions);
            EXPECT_EQ(a2.step_kernels.at(0).second, c2.step_kernels.at(0).second);
        }
        const auto u = run_kernel<double>(kc, 1, {1}, qo, false, false);
        EXPECT_EQ(u.gemm_flops, 0);
        const matrix<double> ba = reconstruction_budget(a, m), bu = reconstruction_budget(u, m);
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
        std::printf("[tree threads/blocks] reconstruction differs by %.3g, contributions by %.3g (max |c| %.3g)\n",
                    worst, cd, cmax);
        EXPECT_LE(cd, tree_gamma(a, m) * 0x1p-53 * (cmax + mag));
        mpfr_precision_scope scope(96);
        quadrature_options q2;
        q2.fixed_nodes = 70;
        const auto p1 = run_kernel<mpfr_real>(kc, 1, {}, q2), p2 = run_kernel<mpfr_real>(kc, 2, {}, q2);
        for (std::size_t e = 0; e < p1.contributions.size(); ++e) EXPECT_TRUE(p1.contributions[e] == p2.contributions[e]);
        for (std::size_t e = 0; e < p1.reconstruction.data.size(); ++e)
            EXPECT_TRUE(p1.reconstruction.data[e] == p2.reconstruction.data[e]);
    }
}

// MPFR-128, the fixed models with their exact / adaptive rules: the structured path (its
// default forms, and the sparse forms forced) within its budget and within the two budgets of
// the unstructured one.
TEST(StructuredTree, Mpfr128AgreesWithUnstructured) {
    mpfr_precision_scope scope(128);
    for (const model_spec& m : fixed_models()) {
        for (const double forced_density : {-1.0, 2.0}) {  // the default forms; the sparse forms forced
            const kernel_case kc = fixed_tree_case(m, 9);
            const sparse_forms forced(forced_density < 0 ? structured_tree::gathered_max_density : forced_density,
                                      forced_density < 0 ? structured_tree::sparse_adjoint_max_density : forced_density);
            const auto s = run_kernel<mpfr_real>(kc, 1, {0}, {}, false, true);
            const auto u = run_kernel<mpfr_real>(kc, 1, {0}, {}, false, false);
            const matrix<double> bs = reconstruction_budget(s, m), bu = reconstruction_budget(u, m);
            for (std::size_t e = 0; e < bs.data.size(); ++e) {
                EXPECT_LE(std::abs(to_d(mpfr_real(s.outputs_final.data[e] - s.reconstruction.data[e]))), bs.data[e]);
                EXPECT_LE(std::abs(to_d(mpfr_real(s.reconstruction.data[e] - u.reconstruction.data[e]))), bs.data[e] + bu.data[e]);
                EXPECT_LT(bs.data[e], 1e-25);
            }
            double cmax = 0, mag = 0;
            for (const mpfr_real& v : u.contributions) cmax = std::max(cmax, std::abs(to_d(v)));
            for (double v : s.path_magnitude.data) mag = std::max(mag, v);
            const double tol = tree_gamma(s, m) * 0x1p-128 * (cmax + mag);
            for (std::size_t e = 0; e < s.contributions.size(); ++e)
                EXPECT_LE(std::abs(to_d(mpfr_real(s.contributions[e] - u.contributions[e]))), tol);
            const auto& ks = s.step_kernels.at(0).second;
            const auto& ku = u.step_kernels.at(0).second;
            double kmax = 0;
            for (const mpfr_real& v : ku) kmax = std::max(kmax, std::abs(to_d(v)));
            for (std::size_t e = 0; e < ks.size(); ++e)
                EXPECT_LE(std::abs(to_d(mpfr_real(ks[e] - ku[e]))), tree_gamma(s, m) * 0x1p-128 * (kmax + mag));
        }
    }
}

TEST(StructuredTree, ObservedRatios) {
    seen_opt_recon.print("optimizer runs: reconstruction difference / sum of budgets");
    seen_opt_contrib.print("optimizer runs: contribution difference / normwise tolerance");
    seen_recon_pl.print("tree reconstruction (piecewise linear), |s − u| / (budget_s + budget_u)");
    seen_contrib_pl.print("tree contributions (piecewise linear), |s − u| / (γu(max|c| + magnitude))");
    seen_recon_smooth.print("tree reconstruction (smooth), |s − u| / (budget_s + budget_u)");
    seen_contrib_smooth.print("tree contributions (smooth), |s − u| / (γu(max|c| + magnitude))");
    seen_fixed.print("tree, fixed rules: reconstruction and contributions");
}

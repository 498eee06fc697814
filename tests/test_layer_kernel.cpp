// The exact path kernel of tree models (conv, pooling, residual, layer norm; tree_segment.hpp,
// proofs-notes/008) over random small CNNs and ResNets trained a few steps:
//  - the reconstruction f(x; w_0) + Σ contributions + optimizer term + remainder misses
//    f(x; w_S) by no more than the documented budget, in double and MPFR-128, with plain SGD
//    and with momentum;
//  - piecewise-linear networks (relu, leaky relu, identity, max/avg pool, conv, residual):
//    every change of the activation pattern — a relu's sign, a max pool's maximiser — seen on a
//    fine grid of the step lies within one grid cell of a cut that segment_cuts found.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "epk/engine.hpp"
#include "epk/segment.hpp"
#include "epk/trace.hpp"
#include "support/cnn_generators.hpp"

using namespace epk;
using namespace epk::testing::cnn;

namespace {

std::vector<double> gen_values(std::size_t n, double scale) {
    std::vector<double> v(n);
    for (double& e : v) e = *rc::gen::inRange(-64, 65) / 64.0 * scale + 1.0 / 977.0;
    return v;
}

// A replayed trace of a random CNN: N 3-5 images, C 2-3 classes, S 1-3 full-batch steps.
trace gen_cnn_trace(bool piecewise_linear, bool momentum) {
    trace t;
    t.model = gen_cnn(piecewise_linear, !piecewise_linear);
    const std::size_t n = *rc::gen::inRange<std::size_t>(3, 6), c = t.model.output_dim();
    const std::size_t p = t.model.parameter_count();
    std::vector<std::size_t> shape{n};
    for (std::size_t d : t.model.sample_shape()) shape.push_back(d);
    t.x_train = make_real_array(npy_dtype::f8, shape, gen_values(n * t.model.input_dim, 1.0));
    std::vector<std::int64_t> labels(n);
    for (auto& l : labels) l = *rc::gen::inRange<std::int64_t>(0, static_cast<std::int64_t>(c));
    t.y_train = make_int_array({n}, labels);
    t.init_params = make_real_array(npy_dtype::f8, {p}, gen_values(p, 0.4));
    shape[0] = 2;
    t.x_test = make_real_array(npy_dtype::f8, shape, gen_values(2 * t.model.input_dim, 1.0));
    t.optimizer.steps = *rc::gen::inRange<std::size_t>(1, 4);
    // Rates up to 0.5 for piecewise-linear networks (many kinks per step, all found as polynomial
    // roots); smooth and mixed ones keep 0.05-0.2: a kink behind a smooth layer is found by
    // sampling (proofs-notes/008 §2), and a large step with many such kinks can exhaust the
    // sampler's budget, after which the adaptive rule refines up to max_evaluations per segment —
    // a cost (minutes per case), not a wrong result (the run says it did not converge).
    t.optimizer.learning_rate = piecewise_linear ? *rc::gen::element(0.05, 0.2, 0.5) : *rc::gen::element(0.05, 0.2);
    if (momentum) t.optimizer.rule.momentum = 0.9;
    validate_trace(t, "random");
    return t;
}

void check_within_budget(const trace& t, const char* precision) {
    kernel_options o;
    o.threads = 1;
    if (std::getenv("EPK_TEST_SHOW_CASES") != nullptr)  // which case a slow run is on
        std::fprintf(stderr, "case: lr %g momentum %g steps %zu\n%s", t.optimizer.learning_rate,
                     t.optimizer.rule.momentum, t.optimizer.steps, manifest_text(t).c_str());
    if (const char* dir = std::getenv("EPK_TEST_DUMP_DIR")) {  // the case as a trace directory
        std::filesystem::remove_all(dir);
        write_trace(dir, t);
    }
    const kernel_report r = compute_kernel(t, parse_precision(precision), o);
    if (!(r.ok && r.residual_max_over_budget <= 1)) {
        RC_FAIL(std::string(precision) + ": residual " + std::to_string(r.residual_max_abs) + " = " +
                std::to_string(r.residual_max_over_budget) + " of the budget; model " + manifest_text(t));
    }
    RC_TAG(r.residual_max_over_budget < 1e-3 ? "residual < 1e-3 budget" : "residual near budget");
}

}  // namespace

#ifdef EPK_LAYER_KERNEL_MPFR  // test_layer_kernel_mpfr
RC_GTEST_PROP(TreeKernel, ResidualWithinBudgetMpfr, ()) {
    const bool pl = *rc::gen::arbitrary<bool>();
    check_within_budget(gen_cnn_trace(pl, *rc::gen::arbitrary<bool>()), "mpfr:128");
}
#else
RC_GTEST_PROP(TreeKernel, ResidualWithinBudgetDouble, ()) {
    const bool pl = *rc::gen::arbitrary<bool>();
    check_within_budget(gen_cnn_trace(pl, *rc::gen::arbitrary<bool>()), "double");
}

namespace {

// The activation pattern of x at w: every relu's input sign and every max pool's maximiser.
std::vector<std::size_t> pattern(const model_spec& m, std::span<const double> w, const matrix<double>& x1) {
    const layer_tree t = compile_tree(m);
    const std::vector<const tree_node*> nodes = tree_nodes(t);
    std::vector<matrix<double>> tape;
    tree_forward<double>(t, w, x1, &tape);
    std::vector<std::size_t> out;
    for (std::size_t k = 0; k < nodes.size(); ++k) {
        const tree_node& n = *nodes[k];
        if (n.spec.kind == layer_kind::relu || n.spec.kind == layer_kind::leaky_relu) {
            for (double v : tape[k].data) out.push_back(v > 0 ? 1 : 0);
        } else if (n.spec.kind == layer_kind::max_pool2d) {
            std::vector<std::size_t> arg(n.out_size);
            layers::max_pool_argmax<double>(n.pool(), tape[k].data.data(), arg.data());
            out.insert(out.end(), arg.begin(), arg.end());
        }
    }
    return out;
}

}  // namespace

RC_GTEST_PROP(TreeKernel, EveryPatternChangeLiesOnACut, ()) {
    const model_spec m = gen_cnn(true, false);
    const std::size_t p = m.parameter_count();
    const std::vector<double> w = gen_values(p, 0.5), delta = gen_values(p, *rc::gen::element(0.1, 1.0, 4.0));
    matrix<double> x1(1, m.input_dim);
    x1.data = gen_values(m.input_dim, 1.0);
    const segment_structure st = analyse_segment_structure(m);
    RC_ASSERT(st.piecewise_linear);
    const std::vector<double> cuts = segment_cuts<double>(m, st, w, delta, x1, 0);
    const std::size_t grid = 400;
    std::vector<double> wt(p);
    auto at = [&](double t) {
        for (std::size_t k = 0; k < p; ++k) wt[k] = w[k] + t * delta[k];
        return pattern(m, wt, x1);
    };
    std::vector<std::size_t> prev = at(0);
    for (std::size_t g = 1; g <= grid; ++g) {
        const double t0 = double(g - 1) / grid, t1 = double(g) / grid;
        std::vector<std::size_t> cur = at(t1);
        if (cur != prev) {
            const bool found = std::any_of(cuts.begin(), cuts.end(), [&](double c) { return c >= t0 - 1e-9 && c <= t1 + 1e-9; });
            if (!found) RC_FAIL("pattern changes in [" + std::to_string(t0) + ", " + std::to_string(t1) + "] with no cut; " + std::to_string(cuts.size()) + " cuts");
        }
        prev = std::move(cur);
    }
    RC_TAG(cuts.empty() ? "no cut" : cuts.size() < 5 ? "1-4 cuts" : "5+ cuts");
}
#endif

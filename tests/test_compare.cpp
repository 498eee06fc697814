// epk compare's methods (engine.hpp, compare_trace) on networks where their
// error is known: a single linear layer has a constant Jacobian (every method
// is exact); a deep linear network has a Jacobian linear in t along each step
// (midpoint, trapezoid and every Gauss rule are exact, the per-step tangent
// kernel is not); ReLU networks with big steps (only the exact kernel is).
#include <gtest/gtest.h>

#include <random>

#include "epk/engine.hpp"
#include "epk/training.hpp"

namespace {

using epk::layer_kind;

epk::trace make_trace(const epk::model_spec& m, std::size_t n, std::size_t steps, double lr, std::uint64_t seed) {
    epk::trace t;
    t.model = m;
    t.loss = {epk::loss_kind::mse, epk::reduction_kind::mean};
    t.optimizer.learning_rate = lr;
    t.optimizer.steps = steps;
    std::mt19937_64 rng(seed);
    auto draw = [&](std::size_t count, int range, double scale) {
        std::vector<double> v(count);
        for (double& x : v) x = static_cast<double>(static_cast<int>(rng() % (2 * range + 1)) - range) / scale;
        return v;
    };
    t.x_train = epk::make_real_array(epk::npy_dtype::f8, {n, m.input_dim}, draw(n * m.input_dim, 128, 64.0));
    t.y_train = epk::make_real_array(epk::npy_dtype::f8, {n, m.output_dim()}, draw(n * m.output_dim(), 32, 32.0));
    t.x_test = epk::make_real_array(epk::npy_dtype::f8, {3, m.input_dim}, draw(3 * m.input_dim, 128, 64.0));
    t.init_params = epk::make_real_array(epk::npy_dtype::f8, {m.parameter_count()}, epk::torch_default_init(m, seed));
    epk::validate_trace(t, "in-memory");
    return t;
}

double error_of(const epk::comparison& c, const std::string& name) {
    for (const auto& m : c.methods)
        if (m.name == name) return m.error_max_abs;
    ADD_FAILURE() << "no method " << name;
    return 0;
}

const std::vector<std::string> all_methods{"exact",    "tangent_per_step", "ntk_init", "linearized",
                                           "midpoint", "trapezoid",        "gauss:1",  "gauss:3"};

TEST(Compare, OneLinearLayerEveryMethodIsExact) {
    epk::model_spec m = epk::make_mlp(4, {}, 3, layer_kind::identity);
    const epk::trace t = make_trace(m, 8, 6, 0.2, 1);
    const epk::comparison c = epk::compare_trace(t, epk::parse_precision("double"), all_methods);
    for (const auto& r : c.methods) EXPECT_LT(r.error_max_abs, 1e-13) << r.name;
}

TEST(Compare, DeepLinearNetworkRulesExactTangentNot) {
    // J(x; w + tΔ) is linear in t for two linear layers: any rule with ≥ 1 node
    // placed symmetrically (midpoint, trapezoid, Gauss) integrates it exactly;
    // the left end does not.
    epk::model_spec m = epk::make_mlp(4, {5}, 3, layer_kind::identity);
    const epk::trace t = make_trace(m, 8, 6, 0.3, 2);
    const epk::comparison c = epk::compare_trace(t, epk::parse_precision("long-double"), all_methods);
    for (const char* exact : {"exact", "midpoint", "trapezoid", "gauss:1", "gauss:3"}) EXPECT_LT(error_of(c, exact), 1e-15) << exact;
    EXPECT_GT(error_of(c, "tangent_per_step"), 1e-6);
    EXPECT_GT(error_of(c, "ntk_init"), 1e-6);
}

TEST(Compare, ReluBigStepsOnlyTheExactKernelIsExact) {
    epk::model_spec m = epk::make_mlp(4, {12, 12}, 3, layer_kind::relu);
    const epk::trace t = make_trace(m, 10, 8, 1.0, 3);
    const epk::comparison c = epk::compare_trace(t, epk::parse_precision("double"), all_methods);
    EXPECT_LT(error_of(c, "exact"), 1e-13);
    for (const char* name : {"tangent_per_step", "ntk_init", "linearized", "midpoint", "trapezoid", "gauss:3"})
        EXPECT_GT(error_of(c, name), 1e3 * error_of(c, "exact")) << name;
}

TEST(Compare, TangentErrorShrinksLikeTheStepAtFixedTrainingTime) {
    // Fixed training time η·S: halving η (doubling S) halves the per-step
    // tangent kernel's total error (each step O(η²), S = T/η steps).
    epk::model_spec m = epk::make_mlp(3, {6}, 2, layer_kind::tanh);
    const epk::trace t1 = make_trace(m, 6, 10, 0.1, 4), t2 = make_trace(m, 6, 20, 0.05, 4);
    const double e1 = error_of(epk::compare_trace(t1, epk::parse_precision("double"), {"tangent_per_step"}), "tangent_per_step");
    const double e2 = error_of(epk::compare_trace(t2, epk::parse_precision("double"), {"tangent_per_step"}), "tangent_per_step");
    std::printf("[tangent] eta 0.1: %.3e, eta 0.05: %.3e, ratio %.3f (theory 2)\n", e1, e2, e1 / e2);
    EXPECT_GT(e1 / e2, 1.6);
    EXPECT_LT(e1 / e2, 2.5);
}

TEST(Compare, MethodNames) {
    EXPECT_EQ(epk::parse_methods("exact,gauss:12").size(), 2u);
    EXPECT_THROW(epk::parse_methods("exact,simpson"), epk::input_error);
    EXPECT_THROW(epk::parse_methods("gauss:0"), epk::input_error);
    EXPECT_THROW(epk::parse_methods("gauss:x"), epk::input_error);
    EXPECT_THROW(epk::parse_methods(""), epk::input_error);
    EXPECT_THROW(epk::parse_methods("exact,"), epk::input_error);
}

}  // namespace

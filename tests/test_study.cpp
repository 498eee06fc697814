// epk study (include/epk/study.hpp): the fitting helpers on exact laws, the
// composite rules' exact error ratios on a network whose step integrand is a
// quadratic, and every order the study claims (proofs-notes/005, "The study")
// measured inside its band on small runs of two data sets.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "epk/engine.hpp"
#include "epk/error.hpp"
#include "epk/study.hpp"
#include "epk/svg_plot.hpp"
#include "epk/training.hpp"

namespace {

namespace fs = std::filesystem;

TEST(StudyFit, PowerAndGeometricLawsRecovered) {
    std::vector<double> x, y, g;
    for (double v : {1.0, 2.0, 4.0, 8.0, 16.0}) {
        x.push_back(v);
        y.push_back(3.0 * std::pow(v, -1.5));
        g.push_back(2.0 * std::pow(0.3, v));
    }
    EXPECT_NEAR(epk::fit_power(x, y), -1.5, 1e-12);
    EXPECT_NEAR(epk::fit_geometric(x, g), 0.3, 1e-12);
    // Points at or below the floor are left out: a flat rounding floor does not bend the fit.
    std::vector<double> yf = y;
    yf.push_back(1e-16);
    std::vector<double> xf = x;
    xf.push_back(32.0);
    EXPECT_NEAR(epk::fit_power(xf, yf, 1e-14), -1.5, 1e-12);
    EXPECT_TRUE(std::isnan(epk::fit_power({1.0}, {1.0})));
    EXPECT_TRUE(std::isnan(epk::fit_power({1.0, 2.0}, {0.0, 0.0})));
}

TEST(StudySweeps, Names) {
    EXPECT_EQ(epk::parse_sweeps("step_size,width,step_size").size(), 2u);
    EXPECT_THROW(epk::parse_sweeps("step_size,bogus"), epk::input_error);
    EXPECT_THROW(epk::parse_sweeps(""), epk::input_error);
    EXPECT_THROW(epk::parse_sweeps("width,"), epk::input_error);
}

epk::trace linear_trace(std::size_t hidden_layers, std::uint64_t seed) {
    std::vector<std::size_t> hidden(hidden_layers, 5);
    epk::trace t;
    t.model = epk::make_mlp(4, hidden, 3, epk::layer_kind::identity);
    t.loss = {epk::loss_kind::mse, epk::reduction_kind::mean};
    t.optimizer.learning_rate = 0.3;
    t.optimizer.steps = 5;
    std::mt19937_64 rng(seed);
    auto draw = [&](std::size_t count) {
        std::vector<double> v(count);
        for (double& e : v) e = static_cast<double>(static_cast<int>(rng() % 257) - 128) / 64.0;
        return v;
    };
    t.x_train = epk::make_real_array(epk::npy_dtype::f8, {8, 4}, draw(32));
    t.y_train = epk::make_real_array(epk::npy_dtype::f8, {8, 3}, draw(24));
    t.x_test = epk::make_real_array(epk::npy_dtype::f8, {3, 4}, draw(12));
    t.init_params = epk::make_real_array(epk::npy_dtype::f8, {t.model.parameter_count()}, epk::torch_default_init(t.model, seed));
    epk::validate_trace(t, "in-memory");
    return t;
}

TEST(StudyRules, CompositeRulesOnAQuadraticIntegrand) {
    // Three linear layers: along each step φ'(t) = J(w + tΔ)Δ is a quadratic in t with a
    // constant second derivative, so the composite midpoint rule's error is exactly
    // −h²/24·∫φ‴ and the trapezoid's +h²/12·∫φ‴, entry by entry and step by step:
    // midpoint:1 / midpoint:2 = 4, trapezoid:1 / midpoint:1 = 2, trapezoid:1 / trapezoid:4 = 16,
    // and 2-point Gauss is exact.
    for (std::uint64_t seed = 1; seed <= 6; ++seed) {
        const epk::trace t = linear_trace(2, seed);
        const epk::comparison c = epk::compare_trace(t, epk::parse_precision("long-double"),
                                                     {"midpoint", "midpoint:2", "trapezoid", "trapezoid:4", "gauss:2", "exact"});
        auto err = [&](const char* name) {
            for (const auto& m : c.methods)
                if (m.name == name) return m.error_max_abs;
            return -1.0;
        };
        ASSERT_GT(err("midpoint"), 1e-10) << "seed " << seed << ": the integrand must be curved for the test to mean anything";
        EXPECT_NEAR(err("midpoint") / err("midpoint:2"), 4.0, 1e-6) << "seed " << seed;
        EXPECT_NEAR(err("trapezoid") / err("midpoint"), 2.0, 1e-6) << "seed " << seed;
        EXPECT_NEAR(err("trapezoid") / err("trapezoid:4"), 16.0, 1e-5) << "seed " << seed;
        EXPECT_LT(err("gauss:2"), 1e-6 * err("midpoint") + 1e-15) << "seed " << seed;
        EXPECT_LT(err("exact"), 1e-15) << "seed " << seed;
    }
}

void print_orders(const epk::study_result& r, const std::string& label) {
    std::printf("[%s] %zu runs in %.1f s\n", label.c_str(), r.rows.size(), r.seconds);
    for (const auto& q : r.orders)
        std::printf("  %-10s %-17s measured %8.3g  theory %-10s band [%g, %g]  fitted on %zu runs  %s\n", q.sweep.c_str(),
                    q.method.c_str(), q.measured, q.theory_text.c_str(), q.low, q.high, q.points, q.within ? "ok" : "OUTSIDE");
}

void expect_all_within(const epk::study_result& r, std::size_t min_points) {
    ASSERT_FALSE(r.orders.empty());
    for (const auto& q : r.orders) {
        EXPECT_TRUE(q.within) << q.sweep << "/" << q.method << ": measured " << q.measured << " outside [" << q.low << ", "
                              << q.high << "]";
        EXPECT_GE(q.points, min_points) << q.sweep << "/" << q.method << ": too few runs above the rounding floor";
    }
}

TEST(StudyOrders, EveryClaimWithinItsBandOnDigits) {
    epk::study_options o;
    o.quick = true;
    const epk::study_result r = epk::run_study(o);
    print_orders(r, "digits, quick");
    // Every sweep contributes at least one order; each order is fitted on ≥ 3 runs.
    for (const std::string& sweep : epk::study_sweeps()) {
        if (sweep == "depth") continue;  // descriptive only
        bool found = false;
        for (const auto& q : r.orders) found = found || q.sweep == sweep;
        EXPECT_TRUE(found) << sweep;
    }
    expect_all_within(r, 3);
}

TEST(StudyOrders, StepSizeNodesAndPrecisionOnIris) {
    // The same claims on another data set (4 features, 3 classes, raw centimetres).
    epk::study_options o;
    o.quick = true;
    o.data = "iris";
    o.sweeps = {"step_size", "nodes", "nodes_relu", "precision"};
    const epk::study_result r = epk::run_study(o);
    print_orders(r, "iris, quick");
    expect_all_within(r, 3);
}

TEST(StudyOutput, WritesCsvReportAndPlotsAtomically) {
    epk::study_options o;
    o.quick = true;
    o.sweeps = {"step_size", "drift"};
    const epk::study_result r = epk::run_study(o);
    const fs::path dir = fs::temp_directory_path() / ("epk-study-test-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    epk::write_study(r, o, dir);
    std::ifstream csv(dir / "runs.csv");
    std::string line;
    std::size_t lines = 0;
    std::getline(csv, line);
    EXPECT_EQ(line, "sweep,method,precision,activation,parameter,value,width,depth,steps,n_train,seed,lr,error,scale,seconds");
    while (std::getline(csv, line)) ++lines;
    EXPECT_EQ(lines, r.rows.size());
    for (const char* f : {"orders.csv", "report.md", "step_size.svg", "drift.svg"}) EXPECT_TRUE(fs::exists(dir / f)) << f;
    EXPECT_FALSE(fs::exists(dir / "width.svg"));
    std::stringstream svg;
    svg << std::ifstream(dir / "step_size.svg").rdbuf();
    EXPECT_EQ(svg.str().rfind("<svg ", 0), 0u);
    EXPECT_NE(svg.str().find("tangent_per_step"), std::string::npos);
    EXPECT_NE(svg.str().find("</svg>"), std::string::npos);
    // A second write into the now non-empty directory is refused and changes nothing.
    EXPECT_THROW(epk::write_study(r, o, dir), epk::input_error);
    std::size_t files = 0;
    for (const auto& e : fs::directory_iterator(dir)) files += e.is_regular_file() ? 1 : 0;
    EXPECT_EQ(files, 5u);  // runs.csv, orders.csv, report.md, two plots
    fs::remove_all(dir);
}

TEST(SvgPlot, NothingDrawableStillAValidDocument) {
    epk::plot_spec p;
    p.title = "a < b & c";
    p.series.push_back({"zeros", {1, 2}, {0, 0}, false});
    const std::string s = epk::render_svg(p);
    EXPECT_NE(s.find("no drawable points"), std::string::npos);
    EXPECT_NE(s.find("a &lt; b &amp; c"), std::string::npos);
    EXPECT_EQ(s.find("<polyline"), std::string::npos);
}

}  // namespace

// The recorded-path audit (kernel_report::audit, proofs-notes/004 §3) and
// `epk check` (include/epk/check.hpp): float32-recorded paths audited at float32
// rounding level and reconstructed exactly once the remainder is included; an
// altered step found; other implementations' arrays compared entry by entry;
// bad result files refused with the file named.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <unistd.h>

#include "epk/check.hpp"
#include "epk/engine.hpp"
#include "epk/error.hpp"
#include "epk/training.hpp"

namespace {

namespace fs = std::filesystem;

epk::trace make_trace(epk::layer_kind act, std::size_t steps, double lr, std::uint64_t seed) {
    epk::trace t;
    t.model = epk::make_mlp(4, {8}, 3, act);
    t.loss = {epk::loss_kind::cross_entropy, epk::reduction_kind::mean};
    t.optimizer.learning_rate = lr;
    t.optimizer.steps = steps;
    std::mt19937_64 rng(seed);
    auto draw = [&](std::size_t count) {
        std::vector<double> v(count);
        for (double& e : v) e = static_cast<double>(static_cast<int>(rng() % 257) - 128) / 64.0;
        return v;
    };
    const std::size_t n = 12;
    t.x_train = epk::make_real_array(epk::npy_dtype::f8, {n, 4}, draw(n * 4));
    std::vector<std::int64_t> labels(n);
    for (auto& l : labels) l = static_cast<std::int64_t>(rng() % 3);
    t.y_train = epk::make_int_array({n}, labels);
    t.x_test = epk::make_real_array(epk::npy_dtype::f8, {3, 4}, draw(12));
    t.init_params = epk::make_real_array(epk::npy_dtype::f8, {t.model.parameter_count()}, epk::torch_default_init(t.model, seed));
    epk::validate_trace(t, "in-memory");
    return t;
}

// The path trained in float32 and recorded as a float32 params.npy.
epk::trace float32_recorded(const epk::trace& t) {
    epk::trace r = epk::replay_trace(t, epk::parse_precision("float"));
    r.params->dtype = epk::npy_dtype::f4;  // every value is a binary32 number
    for (double v : r.params->real) EXPECT_EQ(static_cast<double>(static_cast<float>(v)), v);
    return r;
}

TEST(Audit, Float32RecordedPathAtFloat32RoundingAndExactWithTheRemainder) {
    const epk::layer_kind acts[] = {epk::layer_kind::tanh, epk::layer_kind::relu, epk::layer_kind::sigmoid};
    double worst_units = 0;
    for (std::uint64_t seed = 1; seed <= 12; ++seed) {
        const epk::trace t = float32_recorded(make_trace(acts[seed % 3], 8, 0.5, seed));
        for (const char* prec : {"double", "mpfr:128"}) {
            const epk::kernel_report k = epk::compute_kernel(t, epk::parse_precision(prec), {});
            ASSERT_EQ(k.path_precision, "float32");
            EXPECT_EQ(k.recording_unit_roundoff, 0x1p-24);
            ASSERT_EQ(k.audit.size(), 8u);
            // Remainders: present (the float32 rounding of every step) and at its level.
            EXPECT_GT(k.remainder_max_abs, 0.0);
            EXPECT_LE(k.deviation_max_over_recording_u, 2.0) << "seed " << seed << " " << prec;
            worst_units = std::max(worst_units, k.deviation_max_over_recording_u);
            for (const auto& a : k.audit) {
                EXPECT_LE(a.remainder_max_abs, a.remainder_norm2 * (1 + 1e-12));
                EXPECT_LE(a.over_recording_u, k.deviation_max_over_recording_u);
            }
            // With the remainder the reconstruction is exact to the working precision; without it
            // it misses by the float32 rounding of the path.
            EXPECT_TRUE(k.ok) << "seed " << seed << " " << prec;
            EXPECT_LE(k.residual_max_abs, 64 * k.unit_roundoff_value * 10);
            EXPECT_GT(k.kernel_residual_max_abs, 1e-11) << "seed " << seed;
            EXPECT_LT(k.kernel_residual_max_abs, 1e-4) << "seed " << seed;
        }
    }
    std::printf("[audit] float32-recorded paths: remainder at most %.2f u32 * max|w|\n", worst_units);
}

TEST(Audit, AnAlteredStepIsFoundAndTheReconstructionStaysExact) {
    epk::trace t = epk::replay_trace(make_trace(epk::layer_kind::tanh, 6, 0.5, 7), epk::parse_precision("double"));
    const std::size_t P = t.model.parameter_count();
    // Nudge w[3]: steps 2 and 3 are no longer gradient steps.
    for (std::size_t q = 0; q < P; ++q) t.params->real[3 * P + q] *= 1 + 1e-6;
    const epk::kernel_report k = epk::compute_kernel(t, epk::parse_precision("double"), {});
    EXPECT_EQ(k.path_precision, "float64");
    ASSERT_GE(k.worst_steps.size(), 2u);
    EXPECT_EQ(std::min(k.worst_steps[0], k.worst_steps[1]), 2u);
    EXPECT_EQ(std::max(k.worst_steps[0], k.worst_steps[1]), 3u);
    EXPECT_GT(k.audit[2].over_recording_u, 1e6);
    EXPECT_LT(k.audit[0].over_recording_u, 4.0);
    EXPECT_GT(k.audit[2].contribution_max_abs, 1e-9);
    EXPECT_TRUE(k.ok);  // the remainder is a term of the reconstruction
    EXPECT_GT(k.kernel_residual_max_abs, 1e-9);
}

// The strict verdict (judge_audit): d_s = w[s+1] − the declared optimizer's step.
TEST(Audit, AReplayedPathHasNoDeviationAndIsExplained) {
    const epk::trace t = make_trace(epk::layer_kind::tanh, 6, 0.5, 3);  // init_params only: replayed
    const epk::kernel_report k = epk::compute_kernel(t, epk::parse_precision("double"), {});
    for (const auto& a : k.audit) EXPECT_EQ(a.deviation_max_abs, 0.0);
    EXPECT_TRUE(epk::judge_audit(k).explained);
}

TEST(Audit, MisdescribedRunsAreUnexplainedAndNameTheStep) {
    const epk::precision dbl = epk::parse_precision("double");
    for (std::uint64_t seed = 1; seed <= 6; ++seed) {
        const epk::trace rec = epk::replay_trace(make_trace(epk::layer_kind::relu, 6, 0.5, seed), dbl);
        {
            const epk::audit_verdict v = epk::judge_audit(epk::audit_trace(rec, dbl));
            EXPECT_TRUE(v.explained) << v.units;
            EXPECT_LE(v.units, 4.0);
        }
        // The learning rate off by 1 %: every step is off by about 1 % of itself.
        epk::trace lr = rec;
        lr.optimizer.learning_rate *= 1.01;
        const epk::kernel_report k = epk::audit_trace(lr, dbl);
        const epk::audit_verdict v = epk::judge_audit(k);
        EXPECT_FALSE(v.explained);
        EXPECT_GT(v.units, 1e6);
        EXPECT_NEAR(v.relative, 0.01 / 1.01, 2e-3) << "seed " << seed;
        const std::string msg = epk::unexplained_steps_message("RUN", k);
        EXPECT_NE(msg.find("RUN: the recorded path is not the declared training: step " + std::to_string(v.worst_step)),
                  std::string::npos)
            << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos);
        // One step shrunk (a clipped step): that step, and no earlier one, is the worst.
        epk::trace clip = rec;
        const std::size_t P = clip.model.parameter_count();
        std::vector<double>& w = clip.params->real;
        for (std::size_t q = 0; q < P; ++q) w[4 * P + q] = w[3 * P + q] + 0.9 * (w[4 * P + q] - w[3 * P + q]);
        const epk::kernel_report kc = epk::audit_trace(clip, dbl);
        const epk::audit_verdict vc = epk::judge_audit(kc);
        EXPECT_FALSE(vc.explained);
        EXPECT_TRUE(vc.worst_step == 3 || vc.worst_step == 4) << vc.worst_step;
        for (std::size_t s = 0; s < 3; ++s) EXPECT_LE(kc.audit[s].over_recording_u, 4.0);
        // The audit alone gives the numbers of the full computation.
        const epk::kernel_report full = epk::compute_kernel(clip, dbl, {});
        ASSERT_EQ(full.audit.size(), kc.audit.size());
        for (std::size_t s = 0; s < kc.audit.size(); ++s)
            EXPECT_EQ(full.audit[s].deviation_max_abs, kc.audit[s].deviation_max_abs);
    }
}

// An AdamW run recorded in double: the per-point split of its update sums shares that can be
// much larger than the step (m_i / √v̂ under cancellation), so r_s = Δ_s − Σ_i φ_i may be well
// above u·‖w‖ while the run is exactly the declared one: the verdict is on d_s, not r_s.
TEST(Audit, AnAdamRunWithPerPointSharesIsExplained) {
    const epk::precision dbl = epk::parse_precision("double");
    for (std::uint64_t seed = 1; seed <= 6; ++seed) {
        epk::trace t = make_trace(epk::layer_kind::tanh, 5, 0.1, seed);
        t.optimizer.rule.type = epk::optimizer_spec::kind::adamw;
        t.optimizer.rule.weight_decay = 0.01;
        t.optimizer.rule.beta1 = 0.8;
        t.optimizer.rule.beta2 = 0.99;
        t.optimizer.rule.amsgrad = seed % 2 == 0;
        const epk::trace rec = epk::replay_trace(t, dbl);
        epk::kernel_options o;
        o.contributions = true;
        o.coefficients = true;
        const epk::kernel_report k = epk::compute_kernel(rec, dbl, o);
        EXPECT_TRUE(epk::judge_audit(k).explained) << "seed " << seed << ": " << epk::judge_audit(k).units;
        EXPECT_TRUE(k.ok);
        // Declared as plain SGD, the same rows are not explained.
        epk::trace sgd = rec;
        sgd.optimizer.rule = epk::optimizer_spec{};
        EXPECT_FALSE(epk::judge_audit(epk::audit_trace(sgd, dbl)).explained) << "seed " << seed;
    }
}

// A double-recorded path audited in float: the comparison is at float's rounding level.
TEST(Audit, ACoarserWorkingPrecisionSetsTheLevel) {
    const epk::trace rec = epk::replay_trace(make_trace(epk::layer_kind::sigmoid, 6, 0.5, 5), epk::parse_precision("double"));
    const epk::kernel_report k = epk::audit_trace(rec, epk::parse_precision("float"));
    const epk::audit_verdict v = epk::judge_audit(k);
    EXPECT_TRUE(v.explained) << v.units;
    EXPECT_GT(v.units, 0.0);
}

// explain's splits: by layer and by step they add up to the contributions, which are the
// full-Jacobian path's own.
TEST(Explain, SplitsByLayerAndStepAddUpToTheContributions) {
    const epk::precision dbl = epk::parse_precision("double");
    std::vector<epk::trace> traces;
    traces.push_back(epk::replay_trace(make_trace(epk::layer_kind::relu, 5, 0.5, 11), dbl));
    {
        epk::trace t = make_trace(epk::layer_kind::tanh, 4, 0.05, 12);
        t.optimizer.rule.type = epk::optimizer_spec::kind::adamw;
        traces.push_back(t);
    }
    for (const epk::trace& t : traces) {
        epk::kernel_options plain;
        plain.structured = false;
        const epk::kernel_report ref = epk::compute_kernel(t, dbl, plain);
        epk::kernel_options o;
        o.split_layers = true;
        o.split_steps = true;
        const epk::kernel_report k = epk::compute_kernel(t, dbl, o);
        const std::size_t L = k.layer_paths.size(), S = k.steps, M = k.outputs_final.rows, NC = k.n_train * k.classes;
        ASSERT_EQ(L, 2u);
        EXPECT_EQ(k.layer_paths[0], "layers[0] linear");
        ASSERT_EQ(k.layer_contributions.size(), M * NC * L);
        ASSERT_EQ(k.step_contributions.size(), S * M * NC);
        EXPECT_EQ(k.contributions, ref.contributions);  // the same arithmetic as the full-Jacobian path
        double scale = 0;
        for (double v : k.contributions) scale = std::max(scale, std::abs(v));
        ASSERT_GT(scale, 0.0);
        for (std::size_t e = 0; e < M * NC; ++e) {
            double by_layer = 0, by_step = 0;
            for (std::size_t l = 0; l < L; ++l) by_layer += k.layer_contributions[e * L + l];
            for (std::size_t s = 0; s < S; ++s) by_step += k.step_contributions[s * M * NC + e];
            EXPECT_NEAR(by_layer, k.contributions[e], 1e-13 * scale) << e;
            EXPECT_NEAR(by_step, k.contributions[e], 1e-13 * scale) << e;
        }
    }
}

// epk's own arrays as another implementation would hand them over.
std::vector<epk::check_file> files_from(const epk::kernel_report& k, std::size_t m, std::size_t n, std::size_t c,
                                        std::size_t s) {
    std::vector<epk::check_file> f;
    auto add = [&](const std::string& q, std::vector<std::size_t> shape, const std::vector<double>& v, std::size_t step = 0) {
        f.push_back({q + ".npy", q, step, epk::make_real_array(epk::npy_dtype::f8, std::move(shape), v)});
    };
    add("outputs_final", {m, c}, k.outputs_final.values);
    add("bias", {m, c}, k.outputs_initial.values);
    add("reconstruction", {m, c}, k.kernel_reconstruction.values);
    add("remainder", {m, c}, k.remainder_term.values);
    add("contributions", {m, n, c}, k.contributions);
    add("coefficients", {s, n, c}, k.coefficients);
    for (const auto& [step, kern] : k.step_kernels) add("kernel_step", {m, n, c, c}, kern, step);
    return f;
}

TEST(Check, OwnArraysAgreeAPerturbedEntryIsFound) {
    const epk::trace t = make_trace(epk::layer_kind::relu, 5, 1.0, 3);
    epk::kernel_options o;
    o.coefficients = true;
    o.kernel_steps = {1, 4};
    const epk::kernel_report k = epk::compute_kernel(t, epk::parse_precision("double"), o);
    std::vector<epk::check_file> f = files_from(k, 3, 12, 3, 5);
    const epk::check_report same = epk::check_against(t, "in-memory", epk::parse_precision("double"), f, 0.0);
    EXPECT_TRUE(same.ok);
    ASSERT_EQ(same.results.size(), f.size());
    for (const auto& r : same.results) EXPECT_EQ(r.max_abs_error, 0.0) << r.quantity;

    // One contribution off by 1e-7 relative: found, at its index.
    epk::check_file& contrib = f[4];
    const std::size_t flat = (2 * 12 + 7) * 3 + 1;  // [2, 7, 1]
    contrib.data.real[flat] += 1e-7 * same.results[4].reference_max_abs;
    const epk::check_report off = epk::check_against(t, "in-memory", epk::parse_precision("double"), f, 1e-10);
    EXPECT_FALSE(off.ok);
    const epk::check_result& r = off.results[4];
    EXPECT_FALSE(r.within);
    EXPECT_NEAR(r.max_relative_error, 1e-7, 1e-9);
    ASSERT_FALSE(r.worst.empty());
    EXPECT_EQ(r.worst[0].index, (std::vector<std::size_t>{2, 7, 1}));
    for (std::size_t q = 0; q < off.results.size(); ++q)
        if (q != 4) {
            EXPECT_TRUE(off.results[q].within) << off.results[q].quantity;
        }
    EXPECT_TRUE(epk::check_against(t, "in-memory", epk::parse_precision("double"), f, 1e-6).ok);
    // A higher-precision reference: double's arrays agree to rounding.
    EXPECT_TRUE(epk::check_against(t, "in-memory", epk::parse_precision("mpfr:128"), files_from(k, 3, 12, 3, 5), 1e-13).ok);
}

TEST(Check, ShapesAndStepsMustMatchTheTrace) {
    const epk::trace t = make_trace(epk::layer_kind::tanh, 4, 0.5, 5);
    const epk::precision d = epk::parse_precision("double");
    auto one = [](const std::string& q, std::vector<std::size_t> shape, std::size_t step = 0) {
        std::size_t size = 1;
        for (std::size_t e : shape) size *= e;
        return std::vector<epk::check_file>{
            {q + ".npy", q, step, epk::make_real_array(epk::npy_dtype::f8, std::move(shape), std::vector<double>(size, 0.0))}};
    };
    EXPECT_THROW(epk::check_against(t, "in-memory", d, one("contributions", {3, 11, 3}), 1e-10), epk::input_error);
    EXPECT_THROW(epk::check_against(t, "in-memory", d, one("outputs_final", {3, 3, 1}), 1e-10), epk::input_error);
    EXPECT_THROW(epk::check_against(t, "in-memory", d, one("kernel_step", {3, 12, 3, 3}, 4), 1e-10), epk::input_error);
    EXPECT_THROW(epk::check_against(t, "in-memory", d, one("bias", {3, 3}), -1.0), epk::input_error);
    EXPECT_NO_THROW(epk::check_against(t, "in-memory", d, one("kernel_step", {3, 12, 3, 3}, 3), 1e-10));
}

TEST(Check, BadResultFilesAreRefusedNamingTheFile) {
    const fs::path dir = fs::temp_directory_path() / ("epk-check-test-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    auto write = [&](const std::string& name, const epk::npy_array& a) {
        epk::write_npy(dir / name, a);
        return (dir / name).string();
    };
    auto message = [](const std::vector<std::string>& paths) {
        try {
            epk::load_check_files(paths);
        } catch (const epk::input_error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    const std::string good = write("bias.npy", epk::make_real_array(epk::npy_dtype::f8, {2, 2}, {1, 2, 3, 4}));
    EXPECT_EQ(epk::load_check_files({good}).size(), 1u);
    const std::string unknown = write("bias2.npy", epk::make_real_array(epk::npy_dtype::f8, {2, 2}, {1, 2, 3, 4}));
    EXPECT_NE(message({unknown}).find("bias2.npy: unknown result file name"), std::string::npos);
    fs::remove(unknown);
    const std::string nan = write("remainder.npy", epk::make_real_array(epk::npy_dtype::f8, {2}, {1, std::nan("")}));
    EXPECT_NE(message({nan}).find("remainder.npy: NaN"), std::string::npos);
    fs::remove(nan);
    const std::string ints = write("coefficients.npy", epk::make_int_array({2}, {1, 2}));
    EXPECT_NE(message({ints}).find("coefficients.npy: must be float32 or float64"), std::string::npos);
    fs::remove(ints);
    const std::string pred = write("predictions.npy", epk::make_real_array(epk::npy_dtype::f4, {1}, {1}));
    const std::string outs = write("outputs_final.npy", epk::make_real_array(epk::npy_dtype::f4, {1}, {1}));
    EXPECT_NE(message({dir.string()}).find("same quantity"), std::string::npos);
    fs::remove(pred);
    EXPECT_EQ(epk::load_check_files({dir.string()}).size(), 2u);  // bias.npy, outputs_final.npy
    for (const char* name : {"kernel_step_.npy", "kernel_step_01.npy", "kernel_step_x.npy", "kernel_step_-1.npy"}) {
        const std::string p = write(name, epk::make_real_array(epk::npy_dtype::f8, {1}, {1}));
        EXPECT_NE(message({p}).find("unknown result file name"), std::string::npos) << name;
        fs::remove(p);
    }
    EXPECT_NE(message({(dir / "missing.npy").string()}).find("missing.npy: cannot open"), std::string::npos);
    EXPECT_NE(message({}).find("--against"), std::string::npos);
    fs::remove_all(dir);
    fs::create_directories(dir);
    EXPECT_NE(message({dir.string()}).find("no .npy file"), std::string::npos);
    fs::remove_all(dir);
    (void)outs;
}

}  // namespace

// Training: initialisation, minibatches, the engine's replay, and the
// double-vs-MPFR-256 trajectory bound of proofs-notes/002.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include "epk/engine.hpp"
#include "epk/rounding_bound.hpp"
#include "support/generators.hpp"

using namespace epk;

namespace {

training_problem<double> small_problem(layer_kind act, loss_kind loss, std::uint64_t seed, std::size_t n = 12) {
    training_problem<double> pr{make_mlp(4, {6, 5}, 3, act), {loss, reduction_kind::mean}, matrix<double>(n, 4), {}};
    std::mt19937_64 rng(seed);
    for (double& v : pr.x.data) v = static_cast<double>(static_cast<int>(rng() % 129) - 64) / 32.0;
    for (std::size_t i = 0; i < n; ++i) pr.y.labels.push_back(static_cast<std::int64_t>(rng() % 3));
    pr.y.values = matrix<double>(n, 3);
    for (double& v : pr.y.values.data) v = static_cast<double>(static_cast<int>(rng() % 33) - 16) / 16.0;
    return pr;
}


double max_abs_diff(const std::vector<double>& a, const std::vector<mpfr_real>& b) {
    double m = 0;
    for (std::size_t k = 0; k < a.size(); ++k) m = std::max(m, std::abs((mpfr_real(a[k]) - b[k]).to_double()));
    return m;
}

}  // namespace

TEST(Init, TorchDefaultUniformBoundsAndFloat32Values) {
    const model_spec m = make_mlp(64, {32}, 10, layer_kind::relu);
    const auto w = torch_default_init(m, 42);
    ASSERT_EQ(w.size(), m.parameter_count());
    const auto offsets = parameter_offsets(m);
    for (const auto& o : offsets) {
        const double bound = 1 / std::sqrt(static_cast<double>(o.in));
        double lo = 0, hi = 0;
        for (std::size_t k = o.weight; k < o.bias + o.out; ++k) {
            EXPECT_LE(std::abs(w[k]), static_cast<float>(bound));
            EXPECT_EQ(w[k], static_cast<double>(static_cast<float>(w[k])));
            lo = std::min(lo, w[k]);
            hi = std::max(hi, w[k]);
        }
        EXPECT_LT(lo, -0.9 * bound);  // the draws fill the interval
        EXPECT_GT(hi, 0.9 * bound);
    }
    EXPECT_EQ(torch_default_init(m, 42), w);
    EXPECT_NE(torch_default_init(m, 43), w);
}

TEST(Minibatches, EpochsArePermutationsAndSeedsReproduce) {
    const auto b = make_minibatches(10, 3, 7, 5);
    ASSERT_EQ(b.size(), 7u);
    // Epoch = 3 batches of 3 (one index dropped), all distinct.
    for (std::size_t e = 0; e + 3 <= b.size(); e += 3) {
        std::set<std::size_t> seen;
        for (std::size_t s = e; s < e + 3; ++s)
            for (std::size_t i : b[s]) {
                EXPECT_LT(i, 10u);
                EXPECT_TRUE(seen.insert(i).second);
            }
    }
    EXPECT_EQ(make_minibatches(10, 3, 7, 5), b);
    EXPECT_NE(make_minibatches(10, 3, 7, 6), b);
    EXPECT_THROW(make_minibatches(10, 11, 1, 0), usage_error);
    EXPECT_THROW(make_minibatches(10, 0, 1, 0), usage_error);
}

// Trajectory: e_{s+1} ≤ ℓ_s + ‖e_s − η(∇L(a) − ∇L(b))‖ is exact bookkeeping;
// the test checks the recursion e_{s+1} ≤ bound(ℓ_s) + (1 + η Λ_s) e_s with
// ℓ_s the rigorous one-step rounding bound (proofs-notes/002) and Λ_s the
// gradient's Lipschitz ratio along the actual error, measured in MPFR.
TEST(Trajectory, DoubleAgreesWithMpfr256WithinAccumulatedStepBounds) {
    for (layer_kind act : {layer_kind::tanh, layer_kind::relu, layer_kind::gelu, layer_kind::softplus}) {
        for (loss_kind loss : {loss_kind::cross_entropy, loss_kind::mse}) {
            const auto pr = small_problem(act, loss, 17);
            const std::size_t steps = 25;
            const double eta = 0.25;
            std::vector<std::size_t> batch(pr.x.rows);
            std::iota(batch.begin(), batch.end(), std::size_t{0});
            std::vector<double> wd = torch_default_init(pr.model, 9);
            mpfr_precision_scope scope(256);
            const auto prR = epk::testing::convert_problem<mpfr_real>(pr);
            std::vector<mpfr_real> wr(wd.begin(), wd.end());
            double bound = 0, worst_local_ratio = 0;
            for (std::size_t s = 0; s < steps; ++s) {
                const gradient_bound gb = loss_gradient_with_bound(pr, wd, batch);
                ASSERT_FALSE(gb.near_kink) << "step " << s;
                // Local: one double step from wd against the exact step from wd.
                double local = 0;
                for (std::size_t k = 0; k < wd.size(); ++k)
                    local = std::max(local, (eta * gb.bound[k] + 0x1p-53 * (std::abs(eta * gb.gradient[k]) +
                                                                           std::abs(wd[k] - eta * gb.gradient[k]))) *
                                                first_order_slack);
                std::vector<mpfr_real> wd_exact(wd.begin(), wd.end());
                sgd_step<mpfr_real>(prR, wd_exact, batch, mpfr_real(eta));
                // Amplification along the actual error: Λ = ‖∇L(a) − ∇L(b)‖∞ / ‖a − b‖∞.
                const std::vector<mpfr_real> wdR(wd.begin(), wd.end());
                const double e_s = max_abs_diff(wd, wr);
                double lambda = 0;
                if (e_s > 0) {
                    const auto ga = loss_gradient<mpfr_real>(prR, wdR, batch);
                    const auto gb2 = loss_gradient<mpfr_real>(prR, wr, batch);
                    double dg = 0;
                    for (std::size_t k = 0; k < ga.size(); ++k) dg = std::max(dg, std::abs((ga[k] - gb2[k]).to_double()));
                    lambda = dg / e_s;
                }
                sgd_step<double>(pr, wd, batch, eta);
                sgd_step<mpfr_real>(prR, wr, batch, mpfr_real(eta));
                const double local_err = max_abs_diff(wd, wd_exact);
                EXPECT_LE(local_err, local) << to_string(act) << " step " << s;
                worst_local_ratio = std::max(worst_local_ratio, local_err / local);
                bound = local + (1 + eta * lambda) * bound;
                const double e = max_abs_diff(wd, wr);
                EXPECT_LE(e, bound) << to_string(act) << "/" << to_string(loss) << " step " << s;
            }
            std::printf("%-9s %-13s after %zu steps: |w_double - w_mpfr256| = %.3e, bound %.3e, worst local error/bound %.3f\n",
                        std::string(to_string(act)).c_str(), std::string(to_string(loss)).c_str(), steps,
                        max_abs_diff(wd, wr), bound, worst_local_ratio);
        }
    }
}

namespace {
trace engine_trace(bool minibatch, bool per_step_rates) {
    trace t;
    t.model = make_mlp(4, {5}, 3, layer_kind::tanh);
    t.loss = {loss_kind::cross_entropy, reduction_kind::sum};
    t.optimizer.learning_rate = 0.2;
    t.optimizer.steps = 6;
    const auto pr = small_problem(layer_kind::tanh, loss_kind::cross_entropy, 3, 8);
    t.x_train = make_real_array(npy_dtype::f8, {8, 4}, pr.x.data);
    t.y_train = make_int_array({8}, pr.y.labels);
    t.init_params = make_real_array(npy_dtype::f8, {t.model.parameter_count()}, torch_default_init(t.model, 1));
    if (minibatch) {
        std::vector<std::int64_t> flat;
        for (const auto& row : make_minibatches(8, 3, 6, 2))
            for (std::size_t i : row) flat.push_back(static_cast<std::int64_t>(i));
        t.batches = make_int_array({6, 3}, flat);
    }
    if (per_step_rates) t.learning_rates = make_real_array(npy_dtype::f8, {6}, {0.5, 0.4, 0.3, 0.2, 0.1, 0.05});
    return t;
}
}  // namespace

TEST(Engine, ReplayInDoubleMatchesTheDirectTrainingLoop) {
    for (bool mb : {false, true})
        for (bool rates : {false, true}) {
            const trace t = engine_trace(mb, rates);
            const trace r = replay_trace(t, parse_precision("double"));
            ASSERT_TRUE(r.params.has_value());
            ASSERT_FALSE(r.init_params.has_value());
            // Direct loop with the same batches and rates.
            training_problem<double> pr{t.model, t.loss, matrix<double>(8, 4), {}};
            pr.x.data = t.x_train.real;
            pr.y.labels = t.y_train.integer;
            std::vector<double> w = t.init_params->real;
            const std::size_t p = w.size();
            for (std::size_t s = 0; s < t.steps(); ++s) {
                std::vector<std::size_t> b;
                if (t.batches) for (std::size_t j = 0; j < 3; ++j) b.push_back(static_cast<std::size_t>(t.batches->integer[s * 3 + j]));
                else for (std::size_t j = 0; j < 8; ++j) b.push_back(j);
                sgd_step<double>(pr, w, b, t.learning_rate(s));
                for (std::size_t k = 0; k < p; ++k) ASSERT_EQ(r.params->real[(s + 1) * p + k], w[k]);
            }
            // A recorded path's last row is what evaluate uses.
            const evaluation ev = evaluate_trace(r, parse_precision("double"));
            EXPECT_TRUE(ev.recorded_path);
            const evaluation ev2 = evaluate_trace(t, parse_precision("double"));
            EXPECT_FALSE(ev2.recorded_path);
            EXPECT_EQ(ev.outputs_final.values, ev2.outputs_final.values);
            EXPECT_EQ(ev2.losses.size(), t.steps());
        }
}

TEST(Engine, EveryPrecisionReplaysToTheSameNetworkWithinItsRoundoff) {
    const trace t = engine_trace(true, true);
    const evaluation ref = evaluate_trace(t, parse_precision("mpfr:300"));
    for (const char* p : {"float", "double", "long-double", "float128", "mpfr:64", "mpfr:128"}) {
        const evaluation ev = evaluate_trace(t, parse_precision(p));
        double worst = 0, scale = 0;
        for (std::size_t k = 0; k < ev.outputs_final.values.size(); ++k) {
            worst = std::max(worst, std::abs(ev.outputs_final.values[k] - ref.outputs_final.values[k]));
            scale = std::max(scale, std::abs(ref.outputs_final.values[k]));
        }
        // A loose sanity bound here (the rigorous one is the trajectory test):
        // agreement to within 10^4 u of the output scale, or binary64 rounding
        // of the printed value for types finer than double.
        const double tol = std::max(1e4 * ev.unit_roundoff_value, 0x1p-52) * scale;
        EXPECT_LE(worst, tol) << p;
        std::printf("%-12s max |f - f_mpfr300| = %.3e (u = %.3e)\n", p, worst, ev.unit_roundoff_value);
    }
}

TEST(Engine, PrecisionNames) {
    EXPECT_EQ(parse_precision("mpfr:77").name(), "mpfr:77");
    EXPECT_EQ(parse_precision("long-double").bits, 64);
    for (const char* bad : {"mpfr:1", "mpfr:100001", "mpfr:", "mpfr:12x", "quad", "", "Double"})
        EXPECT_THROW(parse_precision(bad), input_error) << bad;
}

// The path kernel shared between "ranks" (epk/work_split.hpp): R threads of one process, each
// with its own work_split and a gather through shared memory, compute the kernel of a trace;
// rank 0's report must equal the single-process report bit for bit — every value and every
// decimal digit — for R = 2 and 3, on MLPs (structured, smooth ladder, optimizer kernel, the
// unstructured path), a tree model and the transformer fixtures, in double, float and MPFR.
// The MPI build runs the same through mpirun (tests/mpi/run_mpi_tests.sh).
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "epk/engine.hpp"
#include "epk/model_spec.hpp"
#include "epk/training.hpp"
#include "epk/work_split.hpp"

namespace {

using namespace epk;

// R ranks' gathers through shared memory: every rank hands in its bytes; when all have, rank 0
// gets them all.
class shared_world {
public:
    explicit shared_world(std::size_t ranks) : slots_(ranks) {}
    std::vector<std::vector<unsigned char>> gather(std::size_t rank, std::vector<unsigned char> bytes) {
        std::unique_lock<std::mutex> lock(m_);
        slots_[rank] = std::move(bytes);
        const std::size_t generation = generation_;
        if (++arrived_ == slots_.size()) {
            ready_ = std::move(slots_);
            slots_.assign(ready_.size(), {});
            arrived_ = 0;
            ++generation_;
            cv_.notify_all();
        } else {
            cv_.wait(lock, [&] { return generation_ != generation; });
        }
        ++gathers_;
        return rank == 0 ? ready_ : std::vector<std::vector<unsigned char>>{};
    }
    std::size_t gathers() const { return gathers_; }

private:
    std::mutex m_;
    std::condition_variable cv_;
    std::vector<std::vector<unsigned char>> slots_, ready_;
    std::size_t arrived_ = 0, generation_ = 0, gathers_ = 0;
};

// compute_kernel on R threads as R ranks; rank 0's report.
kernel_report split_kernel(const trace& t, const precision& p, const kernel_options& o, std::size_t ranks,
                           std::size_t* gathers = nullptr) {
    shared_world world(ranks);
    std::vector<work_split> splits(ranks);
    std::vector<kernel_report> reports(ranks);
    std::vector<std::exception_ptr> errors(ranks);
    std::vector<std::thread> threads;
    for (std::size_t r = 0; r < ranks; ++r) {
        splits[r].rank = r;
        splits[r].ranks = ranks;
        splits[r].gather = [&world, r](std::vector<unsigned char> b) { return world.gather(r, std::move(b)); };
        threads.emplace_back([&, r] {
            try {
                set_active_work_split(&splits[r]);
                reports[r] = compute_kernel(t, p, o);
                set_active_work_split(nullptr);
            } catch (...) {
                errors[r] = std::current_exception();
            }
            mpfr_release_thread_caches();  // the thread ends: its MPFR caches with it (as the engine's workers)
        });
    }
    for (auto& th : threads) th.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
    if (gathers) *gathers = world.gathers();
    return reports[0];
}

void expect_same_table(const real_table& a, const real_table& b, const std::string& what) {
    EXPECT_EQ(a.rows, b.rows) << what;
    EXPECT_EQ(a.cols, b.cols) << what;
    ASSERT_EQ(a.values.size(), b.values.size()) << what;
    if (!a.values.empty())  // (memcmp of an empty table's null data is undefined)
        EXPECT_EQ(std::memcmp(a.values.data(), b.values.data(), a.values.size() * sizeof(double)), 0) << what;
    EXPECT_EQ(a.decimal, b.decimal) << what << " (all the digits of the working precision)";
}

void expect_same_values(const std::vector<double>& a, const std::vector<double>& b, const std::string& what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    for (std::size_t e = 0; e < a.size(); ++e)
        if (std::memcmp(&a[e], &b[e], sizeof(double)) != 0) {
            ADD_FAILURE() << what << "[" << e << "]: " << a[e] << " vs " << b[e];
            return;
        }
}

// Everything a command writes from the report.
void expect_same_report(const kernel_report& one, const kernel_report& split, const std::string& what) {
    expect_same_table(one.outputs_initial, split.outputs_initial, what + ": bias");
    expect_same_table(one.outputs_final, split.outputs_final, what + ": outputs_final");
    expect_same_table(one.reconstruction, split.reconstruction, what + ": reconstruction");
    expect_same_table(one.kernel_reconstruction, split.kernel_reconstruction, what + ": kernel_reconstruction");
    expect_same_table(one.remainder_term, split.remainder_term, what + ": remainder");
    expect_same_table(one.optimizer_term, split.optimizer_term, what + ": optimizer_term");
    expect_same_table(one.residual, split.residual, what + ": residual");
    expect_same_values(one.budget, split.budget, what + ": budget");
    expect_same_values(one.quadrature_estimate, split.quadrature_estimate, what + ": quadrature estimate");
    expect_same_values(one.contributions, split.contributions, what + ": contributions");
    expect_same_values(one.coefficients, split.coefficients, what + ": coefficients");
    expect_same_values(one.losses, split.losses, what + ": losses");
    EXPECT_EQ(one.breakpoints, split.breakpoints) << what;
    EXPECT_EQ(one.evaluations, split.evaluations) << what;
    EXPECT_EQ(one.quadrature_converged, split.quadrature_converged) << what;
    EXPECT_EQ(one.ok, split.ok) << what;
    ASSERT_EQ(one.step_kernels.size(), split.step_kernels.size()) << what;
    for (std::size_t k = 0; k < one.step_kernels.size(); ++k) {
        EXPECT_EQ(one.step_kernels[k].first, split.step_kernels[k].first) << what;
        expect_same_values(one.step_kernels[k].second, split.step_kernels[k].second, what + ": kernel_step");
    }
    ASSERT_EQ(one.audit.size(), split.audit.size()) << what;
    for (std::size_t s = 0; s < one.audit.size(); ++s) {
        const auto& a = one.audit[s];
        const auto& b = split.audit[s];
        const std::vector<double> x{a.remainder_max_abs, a.remainder_norm2, a.relative, a.deviation_max_abs,
                                    a.deviation_relative, a.over_recording_u, a.contribution_max_abs};
        const std::vector<double> y{b.remainder_max_abs, b.remainder_norm2, b.relative, b.deviation_max_abs,
                                    b.deviation_relative, b.over_recording_u, b.contribution_max_abs};
        expect_same_values(x, y, what + ": audit step " + std::to_string(s));
    }
    EXPECT_EQ(one.remainder_max_abs, split.remainder_max_abs) << what;
    EXPECT_EQ(one.remainder_max_rel, split.remainder_max_rel) << what;
    EXPECT_EQ(one.remainder_worst_step, split.remainder_worst_step) << what;
    EXPECT_EQ(one.worst_steps, split.worst_steps) << what;
}

// An MLP trace: N 24 rows of 4 features, M test points, S full-batch or minibatch steps.
trace mlp_trace(layer_kind act, std::size_t m, std::size_t steps, double lr, std::uint64_t seed, bool minibatch) {
    trace t;
    t.model = make_mlp(4, {6}, 3, act);
    t.loss = {loss_kind::cross_entropy, reduction_kind::mean};
    t.optimizer.learning_rate = lr;
    t.optimizer.steps = steps;
    std::mt19937_64 rng(seed);
    auto draw = [&](std::size_t count) {
        std::vector<double> v(count);
        for (double& e : v) e = static_cast<double>(static_cast<int>(rng() % 257) - 128) / 64.0;
        return v;
    };
    const std::size_t n = 24;
    t.x_train = make_real_array(npy_dtype::f8, {n, 4}, draw(n * 4));
    std::vector<std::int64_t> labels(n);
    for (auto& l : labels) l = static_cast<std::int64_t>(rng() % 3);
    t.y_train = make_int_array({n}, labels);
    t.x_test = make_real_array(npy_dtype::f8, {m, 4}, draw(m * 4));
    t.init_params = make_real_array(npy_dtype::f8, {t.model.parameter_count()}, torch_default_init(t.model, seed));
    if (minibatch) {
        std::vector<std::int64_t> rows;
        for (std::size_t s = 0; s < steps; ++s)
            for (std::size_t k = 0; k < 6; ++k) rows.push_back(static_cast<std::int64_t>((s * 7 + k * 5) % n));
        t.batches = make_int_array({steps, 6}, rows);
    }
    validate_trace(t, "in-memory");
    return t;
}

void expect_split_equals_one(const trace& t, const char* prec, const kernel_options& o, const std::string& what) {
    const precision p = parse_precision(prec);
    const kernel_report one = compute_kernel(t, p, o);
    for (std::size_t ranks : {2, 3}) {
        std::size_t gathers = 0;
        const kernel_report split = split_kernel(t, p, o, ranks, &gathers);
        EXPECT_TRUE(gathers >= ranks && gathers % ranks == 0) << what << ": " << gathers;  // every rank at every exchange
        expect_same_report(one, split, what + " " + prec + ", " + std::to_string(ranks) + " ranks");
    }
}

TEST(WorkSplit, MlpKernelOfEveryPathIsTheSingleProcessKernel) {
    // 37 test points: chunks of 16, 16 and 5; 20 steps: blocks of 8, 8 and 4.
    struct config {
        layer_kind act;
        const char* optimizer;
        bool structured;
    };
    const config configs[] = {{layer_kind::tanh, "sgd", true},      {layer_kind::relu, "sgd", true},
                              {layer_kind::gelu, "momentum", true}, {layer_kind::sigmoid, "adamw", true},
                              {layer_kind::tanh, "sgd", false},     {layer_kind::relu, "momentum", false}};
    std::uint64_t seed = 5;
    for (const config& c : configs) {
        const bool minibatch = seed % 2 == 0;
        trace t = mlp_trace(c.act, 37, 20, 0.3, seed++, minibatch);
        if (std::string(c.optimizer) == "momentum") t.optimizer.rule.momentum = 0.9;
        if (std::string(c.optimizer) == "adamw") {
            t.optimizer.rule.type = optimizer_spec::kind::adamw;
            t.optimizer.rule.weight_decay = 0.01;
            t.optimizer.learning_rate = 0.01;
        }
        kernel_options o;
        o.threads = 2;
        o.structured = c.structured;
        if (std::string(c.optimizer) == "sgd") o.kernel_steps = {0, 9, 19};
        o.coefficients = true;
        const std::string what = std::string(to_string(c.act)) + " " + c.optimizer + (c.structured ? "" : " unstructured");
        expect_split_equals_one(t, "double", o, what + " (kernel)");
        kernel_options v;  // verify: no per-point contributions
        v.contributions = false;
        v.threads = 1;
        v.structured = c.structured;
        expect_split_equals_one(t, "double", v, what + " (verify)");
    }
}

// 40 steps (5 blocks) and 2 ranks, or 10 test points (one chunk) and 3: whole step blocks are
// dealt (point_sink), each rank following the path over the others' blocks by the recorded row
// or the trainer's step; replayed and recorded paths, stored kernels and coefficients.
TEST(WorkSplit, WholeStepBlocksDealtGiveTheSingleProcessKernel) {
    std::uint64_t seed = 17;
    for (layer_kind act : {layer_kind::tanh, layer_kind::relu}) {
        for (bool recorded : {false, true}) {
            trace t = mlp_trace(act, 10, 40, 0.3, seed++, true);
            if (recorded) t = replay_trace(t, parse_precision("double"));
            for (bool structured : {true, false}) {
                kernel_options o;
                o.threads = 2;
                o.structured = structured;
                o.coefficients = true;
                o.kernel_steps = {3, 8, 39};
                expect_split_equals_one(t, "double", o,
                                        std::string(to_string(act)) + (recorded ? " recorded" : " replayed") +
                                            (structured ? "" : " unstructured"));
            }
        }
    }
    // 10 steps (2 blocks) and 40 points (3 chunks): 3 ranks interleave the chunks instead.
    trace few = mlp_trace(layer_kind::tanh, 40, 10, 0.3, seed++, true);
    kernel_options k;
    k.coefficients = true;
    k.kernel_steps = {2, 9};
    expect_split_equals_one(few, "double", k, "tanh sgd, 2 blocks, 3 chunks");
    const trace cnn = read_trace(std::string(EPK_FIXTURES_DIR) + "/torch_resnet_v3");
    kernel_options o;
    o.coefficients = true;
    expect_split_equals_one(cnn, "double", o, "torch_resnet_v3 (whole blocks when 3 ranks share its one chunk)");
}

TEST(WorkSplit, OtherPrecisionsCarryEveryDigit) {
    const trace t = mlp_trace(layer_kind::tanh, 20, 10, 0.3, 41, true);
    kernel_options o;
    o.threads = 1;
    for (const char* prec : {"float", "long-double", "float128", "mpfr:96"}) expect_split_equals_one(t, prec, o, "tanh sgd");
}

TEST(WorkSplit, TreeModelsAndTransformersAreTheSingleProcessKernel) {
    const std::string fixtures = EPK_FIXTURES_DIR;
    for (const char* name : {"torch_resnet_v3", "torch_transformer_sgd", "torch_transformer_causal"}) {
        const trace t = read_trace(fixtures + "/" + name);
        kernel_options o;
        o.threads = 2;
        expect_split_equals_one(t, "double", o, name);
    }
}

TEST(WorkSplit, BytesCarryValuesExactly) {
    {
        mpfr_precision_scope scope(150);
        std::vector<mpfr_real> v{mpfr_real(0.1), mpfr_real(-3.0) / mpfr_real(7.0), mpfr_real(0.0), -mpfr_real(0.0),
                                 mpfr_real(1e300) * mpfr_real(1e300), -(mpfr_real(1e300) * mpfr_real(1e300)),
                                 mpfr_real(0.0) / mpfr_real(0.0), mpfr_real(std::ldexp(1.0, -1000)) / mpfr_real(3.0)};
        byte_writer w;
        w.put_vector(v);
        byte_reader r(w.bytes.data(), w.bytes.size());
        const std::vector<mpfr_real> back = r.get_vector<mpfr_real>();
        EXPECT_TRUE(r.done());
        ASSERT_EQ(back.size(), v.size());
        for (std::size_t k = 0; k < v.size(); ++k) {
            if (mpfr_nan_p(v[k].get())) {
                EXPECT_TRUE(mpfr_nan_p(back[k].get()));
                continue;
            }
            EXPECT_TRUE(mpfr_equal_p(v[k].get(), back[k].get()) || (mpfr_zero_p(v[k].get()) && mpfr_zero_p(back[k].get())))
                << k;
            EXPECT_EQ(mpfr_signbit(v[k].get()), mpfr_signbit(back[k].get())) << k;
            EXPECT_EQ(mpfr_get_prec(back[k].get()), 150) << k;
        }
        // A truncated record is an error, not a read past the end.
        byte_reader cut(w.bytes.data(), w.bytes.size() - 3);
        EXPECT_THROW(cut.get_vector<mpfr_real>(), usage_error);
    }
    {
        const float128 x = float128(1) / float128(3);
        const long double y = 1.0L / 3.0L;
        byte_writer w;
        w.put_real(x);
        w.put_real(y);
        byte_reader r(w.bytes.data(), w.bytes.size());
        EXPECT_TRUE(r.get_real<float128>() == x);
        EXPECT_EQ(r.get_real<long double>(), y);
        EXPECT_TRUE(r.done());
    }
}

}  // namespace

// google-benchmark cases of the pieces behind bench/run.sh's table: the two
// GEMMs, one MPFR multiply-add, and one step of the structured and the
// unstructured path kernel on a 64-128-128-10 ReLU MLP (20 test points,
// batch 100).  `epk-microbench --benchmark_filter=...` runs a subset.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "epk/gemm.hpp"
#include "epk/mpfr_real.hpp"
#include "epk/path_kernel.hpp"

namespace {

std::vector<double> random_vector(std::size_t n, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> d(-1, 1);
    std::vector<double> v(n);
    for (double& x : v) x = d(rng);
    return v;
}

void BM_GemmFastDouble(benchmark::State& state) {
    const auto n = static_cast<std::size_t>(state.range(0));
    const auto a = random_vector(n * n, 1), b = random_vector(n * n, 2);
    std::vector<double> c(n * n);
    for (auto _ : state) {
        epk::gemm<double>(false, n, n, n, a.data(), n, b.data(), n, c.data(), n, false);
        benchmark::DoNotOptimize(c.data());
    }
    state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(n * n * n), benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_GemmFastDouble)->Arg(128)->Arg(256)->Arg(512)->Unit(benchmark::kMillisecond);

void BM_GemmReferenceDouble(benchmark::State& state) {
    const auto n = static_cast<std::size_t>(state.range(0));
    const auto a = random_vector(n * n, 1), b = random_vector(n * n, 2);
    std::vector<double> c(n * n);
    for (auto _ : state) {
        epk::gemm_reference<double>(true, n, n, n, a.data(), n, b.data(), n, c.data(), n, false);
        benchmark::DoNotOptimize(c.data());
    }
    state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(n * n * n), benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_GemmReferenceDouble)->Arg(128)->Unit(benchmark::kMillisecond);

void BM_MpfrMultiplyAdd(benchmark::State& state) {
    epk::mpfr_precision_scope scope(state.range(0));
    const std::size_t n = 4096;
    std::vector<epk::mpfr_real> a, b, c;
    const auto va = random_vector(n, 3), vb = random_vector(n, 4);
    for (std::size_t i = 0; i < n; ++i) {
        a.emplace_back(va[i]);
        b.emplace_back(vb[i]);
        c.emplace_back(0.0);
    }
    for (auto _ : state)
        for (std::size_t i = 0; i < n; ++i) epk::add_product(c[i], a[i], b[i]);
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}
BENCHMARK(BM_MpfrMultiplyAdd)->Arg(256);

// One SGD step's path kernel on a 64-128-128-10 ReLU net: 200 training rows,
// batch 100, 20 test points (state.range(0): 1 = structured, 0 = unstructured).
template <class T>
void path_kernel_step(benchmark::State& state, long mpfr_bits) {
    std::optional<epk::mpfr_precision_scope> scope;
    if (mpfr_bits > 0) scope.emplace(mpfr_bits);
    const epk::model_spec m = epk::make_mlp(64, {128, 128}, 10, epk::layer_kind::relu);
    const std::size_t n = 200, mt = 20;
    epk::training_problem<T> pr{m, {epk::loss_kind::cross_entropy, epk::reduction_kind::mean}, epk::matrix<T>(n, 64), {}};
    const auto x = random_vector(n * 64, 5);
    for (std::size_t e = 0; e < x.size(); ++e) pr.x.data[e] = T(0.5 + 0.5 * x[e]);
    for (std::size_t i = 0; i < n; ++i) pr.y.labels.push_back(static_cast<std::int64_t>(i % 10));
    epk::path_kernel_request<T> rq;
    rq.problem = &pr;
    rq.schedule.steps = 1;
    rq.schedule.n_train = n;
    rq.schedule.learning_rates = {0.05};
    std::vector<std::size_t> batch(100);
    for (std::size_t i = 0; i < batch.size(); ++i) batch[i] = 2 * i;
    rq.schedule.batches = {batch};
    for (double v : epk::torch_default_init(m, 7)) rq.w0.push_back(T(v));
    rq.x_test = epk::matrix<T>(mt, 64);
    for (std::size_t e = 0; e < rq.x_test.data.size(); ++e) rq.x_test.data[e] = pr.x.data[e + 64 * 100];
    rq.threads = 1;
    rq.structured = state.range(0) == 1;
    for (auto _ : state) {
        auto r = epk::compute_path_kernel<T>(rq);
        benchmark::DoNotOptimize(r.reconstruction.data.data());
    }
}
void BM_PathKernelStepDouble(benchmark::State& state) { path_kernel_step<double>(state, 0); }
BENCHMARK(BM_PathKernelStepDouble)->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond);
void BM_PathKernelStepMpfr256(benchmark::State& state) { path_kernel_step<epk::mpfr_real>(state, 256); }
BENCHMARK(BM_PathKernelStepMpfr256)->Arg(1)->Unit(benchmark::kMillisecond);

}  // namespace

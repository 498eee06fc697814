// epk-bench: the measurements behind bench/run.sh, taken in one process so
// that every ratio compares figures measured in the same run.
//
//   epk-bench TRACE [--precision P] [--threads T] [--steps S] [--naive-steps K]
//                   [--gemm-size N] [--memory-only]
//
// Prints one JSON object:
//   structured      the structured path kernel (structured_kernel.hpp) over the first S
//                   steps (default: all): wall seconds, the products' flops and thread
//                   seconds (GFLOP/s per thread), multiply-adds outside them, residual
//   naive           the unstructured full-Jacobian path over the first K steps (K = 0: skipped)
//                   and the structured path over the same K steps: their ratio
//   dgemm           (double) Eigen's GEMM on N × N × N with T concurrent products: GFLOP/s
//                   per thread, the same build and flags as the structured path's products
//   madd            (mpfr) one multiply-add (epk::add_product) in ns, on 64 Ki-element
//                   arrays; the structured path's multiply-adds × that time against its
//                   wall time on one thread
//   peak_rss_kib    getrusage's maximum resident set size of this process
// --memory-only: only the structured run and the peak RSS (run.sh runs it for S and 4S
// in separate processes: a process's peak never goes down).
// --reconstruction-only: no per-point contributions (what `epk verify` computes; for momentum
// and Adam-type runs one share for the batch instead of one per training point).
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "epk/engine.hpp"
#include "epk/error.hpp"
#include "epk/gemm.hpp"
#include "epk/mpfr_real.hpp"
#include "epk/trace.hpp"

namespace {

using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

long peak_rss_kib() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

// The trace's first k steps (a prefix of its schedule and, if recorded, of its path).
epk::trace first_steps(const epk::trace& t, std::size_t k) {
    epk::trace out = t;
    out.optimizer.steps = k;
    if (out.batches) {
        const std::size_t b = out.batches->shape[1];
        out.batches->shape[0] = k;
        if (!out.batches->source) out.batches->integer.resize(k * b);
    }
    if (out.learning_rates) {
        out.learning_rates->shape[0] = k;
        out.learning_rates->real.resize(k);
    }
    if (out.params) {
        const std::size_t p = out.params->shape[1];
        out.params->shape[0] = k + 1;
        if (!out.params->source) out.params->real.resize((k + 1) * p);
    }
    return out;
}

// Aggregate GFLOP/s per thread of `threads` concurrent N × N × N products, best of 3.
double dgemm_gflops_per_thread(std::size_t n, std::size_t threads) {
    std::vector<std::vector<double>> a(threads), b(threads), c(threads);
    std::mt19937_64 rng(1);
    std::uniform_real_distribution<double> d(-1, 1);
    for (std::size_t t = 0; t < threads; ++t) {
        a[t].resize(n * n);
        b[t].resize(n * n);
        c[t].assign(n * n, 0.0);
        for (double& v : a[t]) v = d(rng);
        for (double& v : b[t]) v = d(rng);
    }
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = clock_type::now();
        std::vector<std::thread> pool;
        for (std::size_t t = 0; t < threads; ++t)
            pool.emplace_back([&, t] { epk::gemm<double>(false, n, n, n, a[t].data(), n, b[t].data(), n, c[t].data(), n, false); });
        for (auto& th : pool) th.join();
        const double s = seconds_since(t0);
        best = std::max(best, 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / s / 1e9);
    }
    return best;
}

// ns per add_product(acc, a, b) in the working MPFR precision: c[i] += a[i]·b[i] over
// 65 536-element arrays, repeated (operands scattered on the heap like a matrix's).
double mpfr_ns_per_madd() {
    const std::size_t n = 1 << 16;
    std::vector<epk::mpfr_real> a, b, c;
    std::mt19937_64 rng(2);
    std::uniform_real_distribution<double> d(-1, 1);
    for (std::size_t i = 0; i < n; ++i) {
        a.emplace_back(d(rng));
        b.emplace_back(d(rng));
        c.emplace_back(0.0);
    }
    double best = 1e300;
    for (int rep = 0; rep < 5; ++rep) {
        const auto t0 = clock_type::now();
        for (std::size_t i = 0; i < n; ++i) epk::add_product(c[i], a[i], b[i]);
        best = std::min(best, seconds_since(t0) / static_cast<double>(n) * 1e9);
    }
    return best;
}

struct run_figures {
    double seconds = 0;
    epk::kernel_report report;
};

run_figures run(const epk::trace& t, const epk::precision& p, std::size_t threads, bool structured,
                bool contributions = true) {
    epk::kernel_options o;
    o.threads = threads;
    o.contributions = contributions;
    o.structured = structured;
    const auto t0 = clock_type::now();
    run_figures f;
    f.report = epk::compute_kernel(t, p, o);
    f.seconds = seconds_since(t0);
    return f;
}

int main_impl(int argc, char** argv) {
    if (argc < 2) throw epk::usage_error("usage: epk-bench TRACE [--precision P] [--threads T] [--steps S] [--naive-steps K] [--gemm-size N] [--memory-only] [--reconstruction-only]");
    std::string trace_dir = argv[1], precision = "double";
    std::size_t threads = 2, steps = 0, naive_steps = 0, gemm_size = 1024;
    bool memory_only = false, contributions = true;
    for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw epk::usage_error("epk-bench: " + a + " needs a value");
            return argv[++i];
        };
        if (a == "--precision") precision = value();
        else if (a == "--threads") threads = std::stoul(value());
        else if (a == "--steps") steps = std::stoul(value());
        else if (a == "--naive-steps") naive_steps = std::stoul(value());
        else if (a == "--gemm-size") gemm_size = std::stoul(value());
        else if (a == "--memory-only") memory_only = true;
        else if (a == "--reconstruction-only") contributions = false;
        else throw epk::usage_error("epk-bench: unknown option " + a);
    }
    const epk::precision p = epk::parse_precision(precision);
    const epk::trace full = epk::read_trace(trace_dir);
    if (steps == 0 || steps > full.steps()) steps = full.steps();
    epk::trace prefix;  // only when fewer steps are asked for: no second copy of the trace otherwise
    if (steps < full.steps()) prefix = first_steps(full, steps);
    const epk::trace& t = steps < full.steps() ? prefix : full;
    nlohmann::json j;
    j["trace"] = trace_dir;
    j["precision"] = p.name();
    j["threads"] = threads;
    j["steps"] = steps;
    j["parameters"] = t.init_params ? t.init_params->shape[0] : t.params->shape[1];
    j["gemm_isa"] = epk::gemm_fast_isa();

    j["contributions"] = contributions;
    const run_figures s = run(t, p, threads, true, contributions);
    const auto& r = s.report;
    j["structured"] = {{"seconds", s.seconds},
                       {"seconds_per_step", s.seconds / static_cast<double>(steps)},
                       {"gemm_flops", r.gemm_flops},
                       {"gemm_thread_seconds", r.gemm_seconds},
                       {"gemm_gflops_per_thread", r.gemm_seconds > 0 ? r.gemm_flops / r.gemm_seconds / 1e9 : 0.0},
                       {"elementwise_madds", r.elementwise_madds},
                       {"residual_max_abs", r.residual_max_abs},
                       {"residual_over_u", r.residual_max_over_u},
                       {"ok", r.ok}};
    if (!memory_only) {
        if (naive_steps > 0) {
            const epk::trace tk = first_steps(full, std::min(naive_steps, full.steps()));
            const run_figures n = run(tk, p, threads, false, contributions);
            const run_figures sk = run(tk, p, threads, true, contributions);
            j["naive"] = {{"steps", tk.steps()},
                          {"seconds", n.seconds},
                          {"structured_seconds_same_steps", sk.seconds},
                          {"ratio", n.seconds / sk.seconds},
                          {"reconstructions_differ_by", [&] {
                               double d = 0;
                               for (std::size_t e = 0; e < n.report.reconstruction.values.size(); ++e)
                                   d = std::max(d, std::abs(n.report.reconstruction.values[e] - sk.report.reconstruction.values[e]));
                               return d;
                           }()}};
        }
        if (p.name() == "double") {
            const double g = dgemm_gflops_per_thread(gemm_size, threads);
            j["dgemm"] = {{"size", gemm_size}, {"threads", threads}, {"gflops_per_thread", g}};
            if (r.gemm_seconds > 0) j["fraction_of_dgemm"] = r.gemm_flops / r.gemm_seconds / 1e9 / g;
        }
        if (p.name().rfind("mpfr", 0) == 0) {
            epk::mpfr_precision_scope scope(p.bits);
            const double ns = mpfr_ns_per_madd();
            const double madds = r.gemm_flops / 2 + r.elementwise_madds;
            j["madd"] = {{"ns", ns}, {"structured_madds", madds},
                         {"cost_over_madds", s.seconds * static_cast<double>(threads) / (madds * ns * 1e-9)},
                         {"products_cost_over_madds", r.gemm_seconds / (r.gemm_flops / 2 * ns * 1e-9)}};
        }
    }
    j["peak_rss_kib"] = peak_rss_kib();
    std::cout << j.dump() << "\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    epk::keep_freed_memory();
    try {
        return main_impl(argc, argv);
    } catch (const epk::input_error& e) {
        std::cerr << "epk-bench: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "epk-bench: " << e.what() << "\n";
        return 2;
    }
}

// Precision parsing and dispatch to the per-scalar instantiations.
#include <malloc.h>
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "epk/engine.hpp"
#include "epk/segment.hpp"
#include "epk/error.hpp"
#include "epk/mpfr_real.hpp"

namespace epk::detail {
#define EPK_DECLARE_ENGINE(NAME)                                                                \
    trace replay_trace_##NAME(const trace& t, std::vector<double>* l, const progress_fn& p);   \
    evaluation evaluate_trace_##NAME(const trace& t, const progress_fn& p);                   \
    kernel_report compute_kernel_##NAME(const trace& t, const kernel_options& o, const progress_fn& p);         \
    comparison compare_trace_##NAME(const trace& t, const std::vector<std::string>& m, const progress_fn& p);
EPK_DECLARE_ENGINE(float)
EPK_DECLARE_ENGINE(double)
EPK_DECLARE_ENGINE(long_double)
EPK_DECLARE_ENGINE(float128)
EPK_DECLARE_ENGINE(mpfr)
#undef EPK_DECLARE_ENGINE
}  // namespace epk::detail

namespace epk {

std::string precision::name() const {
    switch (k) {
        case kind::float32: return "float";
        case kind::float64: return "double";
        case kind::long_double: return "long-double";
        case kind::float128: return "float128";
        case kind::mpfr: return "mpfr:" + std::to_string(bits);
    }
    return "?";
}

precision parse_precision(const std::string& text) {
    if (text == "float") return {precision::kind::float32, 24};
    if (text == "double") return {precision::kind::float64, 53};
    if (text == "long-double") return {precision::kind::long_double, 64};
    if (text == "float128") return {precision::kind::float128, 113};
    if (text.rfind("mpfr:", 0) == 0) {
        const std::string digits = text.substr(5);
        long bits = 0;
        const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), bits);
        if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size())
            throw input_error("--precision", "'" + text + "': mpfr:BITS needs an integer number of bits");
        if (bits < mpfr_real::min_bits || bits > mpfr_real::max_bits)
            throw input_error("--precision", "'" + text + "': mpfr bits must be between 2 and 100000");
        return {precision::kind::mpfr, bits};
    }
    throw input_error("--precision", "unknown precision '" + text +
                                         "' (known: float, double, long-double, float128, mpfr:BITS)");
}

namespace {
// Calls f_float, f_double, ... through one switch; sets the MPFR working
// precision for the duration of the call.
template <class Fn>
auto dispatch(const precision& p, Fn&& fn) {
    switch (p.k) {
        case precision::kind::float32: return fn(0);
        case precision::kind::float64: return fn(1);
        case precision::kind::long_double: return fn(2);
        case precision::kind::float128: return fn(3);
        case precision::kind::mpfr: {
            mpfr_precision_scope scope(p.bits);
            return fn(4);
        }
    }
    throw usage_error("unknown precision kind");
}
}  // namespace

trace replay_trace(const trace& t, const precision& p, std::vector<double>* losses, const progress_fn& progress) {
    return dispatch(p, [&](int which) {
        switch (which) {
            case 0: return detail::replay_trace_float(t, losses, progress);
            case 1: return detail::replay_trace_double(t, losses, progress);
            case 2: return detail::replay_trace_long_double(t, losses, progress);
            case 3: return detail::replay_trace_float128(t, losses, progress);
            default: return detail::replay_trace_mpfr(t, losses, progress);
        }
    });
}

evaluation evaluate_trace(const trace& t, const precision& p, const progress_fn& progress) {
    return dispatch(p, [&](int which) {
        switch (which) {
            case 0: return detail::evaluate_trace_float(t, progress);
            case 1: return detail::evaluate_trace_double(t, progress);
            case 2: return detail::evaluate_trace_long_double(t, progress);
            case 3: return detail::evaluate_trace_float128(t, progress);
            default: return detail::evaluate_trace_mpfr(t, progress);
        }
    });
}

kernel_report compute_kernel(const trace& t, const precision& p, const kernel_options& o, const progress_fn& progress) {
    return dispatch(p, [&](int which) {
        switch (which) {
            case 0: return detail::compute_kernel_float(t, o, progress);
            case 1: return detail::compute_kernel_double(t, o, progress);
            case 2: return detail::compute_kernel_long_double(t, o, progress);
            case 3: return detail::compute_kernel_float128(t, o, progress);
            default: return detail::compute_kernel_mpfr(t, o, progress);
        }
    });
}

audit_verdict judge_audit(const kernel_report& k) {
    audit_verdict v;
    v.units = k.deviation_max_over_recording_u;
    // NaN is not at the rounding level.
    v.explained = k.deviation_max_over_recording_u <= audit_rounding_units;
    if (!k.worst_steps.empty()) {
        v.worst_step = k.worst_steps.front();
        v.relative = k.audit[v.worst_step].deviation_relative;
    }
    return v;
}

std::string unexplained_steps_message(const std::string& name, const kernel_report& k) {
    const audit_verdict v = judge_audit(k);
    std::size_t above = 0;
    for (const auto& a : k.audit) above += a.over_recording_u <= audit_rounding_units ? 0 : 1;
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "%s: the recorded path is not the declared training: step %zu differs from a step of %s on this "
                  "model, loss and batch by %.3g units u_rec*max|w[s+1]| (limit %g; %.3g of the step; %zu of %zu "
                  "steps above the limit) -- gradient clipping, a learning-rate schedule left out, a layer dropped "
                  "or changed, another batch?",
                  name.c_str(), v.worst_step, k.optimizer.c_str(), v.units, audit_rounding_units, v.relative, above,
                  k.audit.size());
    return buf;
}

kernel_report audit_trace(const trace& t, const precision& p, std::size_t threads, const progress_fn& progress) {
    kernel_options o;
    o.audit_only = true;
    o.contributions = false;
    o.threads = threads;
    return compute_kernel(t, p, o, progress);
}

const std::vector<std::string>& default_methods() {
    static const std::vector<std::string> m{"exact",    "tangent_per_step", "ntk_init", "linearized",
                                            "midpoint", "trapezoid",        "gauss:2",  "gauss:8"};
    return m;
}

std::vector<std::string> parse_methods(const std::string& list) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start <= list.size()) {
        const std::size_t comma = list.find(',', start);
        const std::string name = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        bool known = name == "exact" || name == "tangent_per_step" || name == "ntk_init" || name == "linearized" ||
                     name == "midpoint" || name == "trapezoid";
        const std::size_t colon = name.find(':');
        const std::string family = name.substr(0, colon);
        if (colon != std::string::npos && (family == "gauss" || family == "midpoint" || family == "trapezoid")) {
            const std::string digits = name.substr(colon + 1);
            std::size_t n = 0;
            const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
            known = !digits.empty() && ec == std::errc() && end == digits.data() + digits.size() && n >= 1 && n <= 1000;
        }
        if (!known)
            throw input_error("--methods", "unknown method '" + name +
                                               "' (known: exact, tangent_per_step, ntk_init, linearized, midpoint[:N], "
                                               "trapezoid[:N], gauss:N with 1 <= N <= 1000)");
        out.push_back(name);
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

comparison compare_trace(const trace& t, const precision& p, const std::vector<std::string>& methods,
                         const progress_fn& progress) {
    return dispatch(p, [&](int which) {
        switch (which) {
            case 0: return detail::compare_trace_float(t, methods, progress);
            case 1: return detail::compare_trace_double(t, methods, progress);
            case 2: return detail::compare_trace_long_double(t, methods, progress);
            case 3: return detail::compare_trace_float128(t, methods, progress);
            default: return detail::compare_trace_mpfr(t, methods, progress);
        }
    });
}

std::size_t test_point_count(const trace& t) {
    return t.x_test ? t.x_test->shape[0] : std::min<std::size_t>(10, t.n_train());
}

double memory_estimate(const trace& t, const precision& p, const kernel_options& o, bool kernel) {
    // Bytes per number: the hardware types' sizes; an mpfr_real is a small struct plus its limbs.
    double scalar = 8;
    switch (p.k) {
        case precision::kind::float32: scalar = 4; break;
        case precision::kind::float64: scalar = 8; break;
        case precision::kind::long_double:
        case precision::kind::float128: scalar = 16; break;
        case precision::kind::mpfr: scalar = 32 + 8 * std::ceil(static_cast<double>(p.bits) / 64); break;
    }
    const double N = static_cast<double>(t.n_train()), C = static_cast<double>(t.model.output_dim());
    const double P = static_cast<double>(t.model.parameter_count()), S = static_cast<double>(t.steps());
    const double M = static_cast<double>(test_point_count(t));
    const double B = t.batches ? static_cast<double>(t.batches->shape[1]) : N;
    double widths = static_cast<double>(t.model.input_dim);
    for (const auto& l : t.model.layers) widths += static_cast<double>(l.kind == layer_kind::linear ? l.out_features : 0);
    // Forward and backward over a batch: pre-activations, activations and their adjoints.
    double numbers = 4 * B * widths + 4 * P;
    if (kernel) {
        const double ks = static_cast<double>(o.kernel_steps.size());
        const optimizer_spec& opt = t.optimizer.rule;
        if (!t.optimizer.plain()) {
            // optimizer_kernel.hpp: per source (a training point seen so far, or the batch) its
            // optimizer memory and its share φ; the optimizer's state and term; per thread one
            // test point's integral and its rules (as the unstructured path).
            const bool memory = !(opt.type == optimizer_spec::kind::sgd && opt.momentum == 0);
            const double sources = o.contributions ? (memory ? N : B) : 1;
            numbers += B * P + sources * P * (memory ? 2 : 1) + 12 * P;
            const double threads = static_cast<double>(o.threads > 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency()));
            numbers += threads * 3 * C * P;
        } else if (o.structured) {
            // structured_kernel.hpp: the batch's layer inputs and adjoints (C adjoints per sample
            // for a stored kernel step); per thread one block of ≤ 256 test rows — its factors
            // [rows × widths], [rows·C × widths], the contraction buffers [rows·C × B] (and
            // [rows·C × B·C] for a stored step); the step's vectors (w, Δ, r, Σg, magnitudes).
            const double threads = static_cast<double>(o.threads > 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency()));
            const double rows = 256;
            numbers += 2 * B * widths + (ks > 0 ? B * C * widths : 0) + 10 * P;
            numbers += threads * rows * (3 * widths + 2 * C * widths + 3 * C * B + (ks > 0 ? 2 * C * B * C : 0));
            if (!analyse_segment_structure(t.model).piecewise_linear && o.quadrature.fixed_nodes == 0 &&
                o.quadrature.composite == quadrature_options::simple_rule::none)
                numbers += threads * 3 * C * P;  // smooth networks: the node search forms Ī per test point
            if (ks > 0) numbers += ks * M * N * C * C;
        } else {
            numbers += B * P;                                   // g_{i,s}, one P-vector per sample
            numbers += 3 * C * P;                               // one test point's integral (and its rules), per thread
            if (ks > 0) numbers += B * C * P + ks * M * N * C * C;  // training Jacobians; the kernels
        }
        if (o.contributions) numbers += M * N * C;
        if (o.coefficients) numbers += S * N * C;
        // explain's splits (twice: the working values and their binary64 copies).
        if (o.split_layers) numbers += (1 + 8 / scalar) * M * N * C * static_cast<double>(t.model.layers.size() + 1);
        if (o.split_steps) numbers += (1 + 8 / scalar) * S * M * N * C;
        // The report holds binary64 copies of the result arrays as well.
        numbers += (8 / scalar) * ((o.contributions ? M * N * C : 0) + (o.coefficients ? S * N * C : 0) + ks * M * N * C * C);
    }
    return numbers * scalar;
}

double memory_limit_bytes() {
    double gib = 1;
    if (const char* env = std::getenv("EPK_MEMORY_LIMIT_GIB"); env != nullptr && *env != 0) {
        char* end = nullptr;
        const double v = std::strtod(env, &end);
        if (end == env || *end != 0 || !(v > 0) || !std::isfinite(v))
            throw input_error("EPK_MEMORY_LIMIT_GIB", "must be a positive number of GiB, found '" + std::string(env) + "'");
        gib = v;
    }
    return gib * 1024 * 1024 * 1024;
}

void check_memory(const trace& t, const precision& p, const kernel_options& o, bool kernel, const std::string& name) {
    const double need = memory_estimate(t, p, o, kernel), limit = memory_limit_bytes();
    if (need > limit) {
        char msg[320];
        std::snprintf(msg, sizeof msg,
                      "this computation would need about %.3g GiB in %s (limit %.3g GiB): fewer test points, kernel "
                      "steps or training points, a smaller batch, or set EPK_MEMORY_LIMIT_GIB",
                      need / (1024.0 * 1024 * 1024), p.name().c_str(), limit / (1024.0 * 1024 * 1024));
        throw input_error(name, msg);
    }
}

std::string describe_optimizer(const trace& t) {
    const optimizer_spec& o = t.optimizer.rule;
    std::vector<std::string> parts;
    auto num = [](double v) {
        char b[32];
        std::snprintf(b, sizeof b, "%.6g", v);
        return std::string(b);
    };
    if (o.type == optimizer_spec::kind::sgd) {
        if (o.momentum != 0) parts.push_back("momentum " + num(o.momentum));
        if (o.dampening != 0 && o.momentum != 0) parts.push_back("dampening " + num(o.dampening));
        if (o.nesterov) parts.push_back("nesterov");
    } else {
        parts.push_back("betas " + num(o.beta1) + " " + num(o.beta2));
        parts.push_back("eps " + num(o.eps));
    }
    if (o.weight_decay != 0) parts.push_back("weight_decay " + num(o.weight_decay));
    if (o.amsgrad) parts.push_back("amsgrad");
    if (t.optimizer.initial_step != 0) parts.push_back("resumed after " + std::to_string(t.optimizer.initial_step) + " steps");
    std::string out(to_string(o.type));
    for (std::size_t k = 0; k < parts.size(); ++k) out += (k == 0 ? " (" : ", ") + parts[k];
    return parts.empty() ? out : out + ")";
}

void keep_freed_memory() {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest allowed threshold on 64-bit
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace epk

#include "epk/check.hpp"
#include "epk/work_split.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <numeric>

#include "epk/error.hpp"
#include "epk/file_io.hpp"

namespace epk {
namespace {

namespace fs = std::filesystem;

const char* known_names =
    "outputs_final.npy, predictions.npy, bias.npy, outputs_initial.npy, reconstruction.npy, contributions.npy, "
    "coefficients.npy, remainder.npy, optimizer_term.npy, kernel_step_<s>.npy";

// The quantity a file name stands for; false when the name is not one of known_names.
bool quantity_of(const std::string& name, std::string& quantity, std::size_t& step) {
    static const std::map<std::string, std::string> fixed{
        {"outputs_final.npy", "outputs_final"}, {"predictions.npy", "outputs_final"},
        {"bias.npy", "bias"},                   {"outputs_initial.npy", "bias"},
        {"reconstruction.npy", "reconstruction"}, {"contributions.npy", "contributions"},
        {"coefficients.npy", "coefficients"},   {"remainder.npy", "remainder"},
        {"optimizer_term.npy", "optimizer_term"}};
    if (const auto it = fixed.find(name); it != fixed.end()) {
        quantity = it->second;
        return true;
    }
    const std::string prefix = "kernel_step_", suffix = ".npy";
    if (name.size() <= prefix.size() + suffix.size() || name.rfind(prefix, 0) != 0 ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
        return false;
    const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    if (digits.size() > 1 && digits[0] == '0') return false;  // kernel_step_05.npy is not a name epk writes
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
    if (ec != std::errc() || end != digits.data() + digits.size()) return false;
    quantity = "kernel_step";
    return true;
}

check_file load_one(const fs::path& file) {
    const std::string shown = file.string();
    check_file f;
    f.path = shown;
    if (!quantity_of(file.filename().string(), f.quantity, f.step))
        throw input_error(shown, std::string("unknown result file name (known: ") + known_names + ")");
    f.data = read_npy(file);
    if (!f.data.is_real()) throw input_error(shown, "must be float32 or float64 (found an integer array)");
    for (std::size_t e = 0; e < f.data.real.size(); ++e)
        if (!std::isfinite(f.data.real[e]))
            throw input_error(shown, "NaN or infinity at element " + std::to_string(e) + " (every value must be finite)");
    return f;
}

double max_abs_of(const std::vector<double>& v) {
    double m = 0;
    for (double x : v) m = std::max(m, std::abs(x));
    return m;
}

std::string key_of(const check_file& f) {
    return f.quantity == "kernel_step" ? "kernel_step_" + std::to_string(f.step) : f.quantity;
}

std::vector<std::size_t> unravel(std::size_t flat, const std::vector<std::size_t>& shape) {
    std::vector<std::size_t> index(shape.size());
    for (std::size_t d = shape.size(); d-- > 0;) {
        index[d] = flat % shape[d];
        flat /= shape[d];
    }
    return index;
}

}  // namespace

std::vector<check_file> load_check_files(const std::vector<std::string>& paths) {
    if (paths.empty()) throw input_error("--against", "give at least one .npy file or directory");
    std::vector<check_file> out;
    std::map<std::string, std::string> seen;  // quantity key → file
    auto add = [&](check_file f) {
        const std::string key = key_of(f);
        if (const auto it = seen.find(key); it != seen.end())
            throw input_error(f.path, "names the same quantity as " + it->second + " (" + key + ")");
        seen[key] = f.path;
        out.push_back(std::move(f));
    };
    for (const std::string& p : paths) {
        const fs::path path(p);
        std::error_code ec;
        const fs::file_status st = fs::status(path, ec);
        if (ec || !fs::exists(st)) throw input_error(p, "cannot open (does not exist)");
        if (fs::is_directory(st)) {
            std::vector<fs::path> files;
            for (const auto& e : fs::directory_iterator(path, ec))
                if (e.path().extension() == ".npy") files.push_back(e.path());
            if (ec) throw input_error(p, "cannot read the directory (" + ec.message() + ")");
            std::sort(files.begin(), files.end());
            if (files.empty()) throw input_error(p, "the directory holds no .npy file");
            for (const fs::path& f : files) add(load_one(f));
        } else {
            add(load_one(path));
        }
    }
    return out;
}

check_report check_against(const trace& t, const std::string& trace_name, const precision& p,
                           const std::vector<check_file>& files, double tolerance, std::size_t threads,
                           const progress_fn& progress) {
    if (!(tolerance >= 0) || !std::isfinite(tolerance))
        throw input_error("--tolerance", "must be a finite number >= 0");
    const std::size_t M = test_point_count(t);
    const std::size_t N = t.n_train(), C = t.model.output_dim(), S = t.steps();
    kernel_options o;
    o.threads = threads;
    o.contributions = false;  // only when a contributions file asks for them
    for (const check_file& f : files) {
        std::vector<std::size_t> expected;
        if (f.quantity == "contributions") expected = {M, N, C};
        else if (f.quantity == "coefficients") expected = {S, N, C};
        else if (f.quantity == "kernel_step") expected = {M, N, C, C};
        else expected = {M, C};
        const bool plain = t.optimizer.plain();
        if (f.quantity == "kernel_step" && !plain)
            throw input_error(f.path, "per-step kernels K_s are defined for plain SGD; this trace's optimizer is " +
                                          describe_optimizer(t) + " (proofs-notes/007 §4): check contributions instead");
        if (f.quantity == "optimizer_term" && plain)
            throw input_error(f.path, "plain SGD has no optimizer term (weight decay, momentum or Adam state)");
        if (f.quantity == "kernel_step" && f.step >= S)
            throw input_error(f.path, "step " + std::to_string(f.step) + " is not a step of the trace (it has " +
                                          std::to_string(S) + " steps: 0.." + std::to_string(S == 0 ? 0 : S - 1) + ")");
        if (f.data.shape != expected)
            throw input_error(f.path, "shape " + shape_text(f.data.shape) + " does not match the trace: expected " +
                                          shape_text(expected) + " for " + f.quantity + " (M = " + std::to_string(M) +
                                          " test points, N = " + std::to_string(N) + ", C = " + std::to_string(C) +
                                          ", S = " + std::to_string(S) + ")");
        if (f.quantity == "kernel_step") o.kernel_steps.push_back(f.step);
        if (f.quantity == "coefficients") o.coefficients = true;
        if (f.quantity == "contributions") o.contributions = true;
    }
    std::sort(o.kernel_steps.begin(), o.kernel_steps.end());
    check_memory(t, p, o, true, trace_name);

    check_report rep;
    rep.tolerance = tolerance;
    rep.reference = compute_kernel(t, p, o, progress);
    if (!is_output_rank()) return rep;  // a split computation's results are rank 0's (work_split.hpp)
    const kernel_report& k = rep.reference;
    rep.ok = k.ok;
    for (const check_file& f : files) {
        const std::vector<double>* ref = nullptr;
        if (f.quantity == "outputs_final") ref = &k.outputs_final.values;
        else if (f.quantity == "bias") ref = &k.outputs_initial.values;
        else if (f.quantity == "reconstruction") ref = &k.kernel_reconstruction.values;
        else if (f.quantity == "remainder") ref = &k.remainder_term.values;
        else if (f.quantity == "optimizer_term") ref = &k.optimizer_term.values;
        else if (f.quantity == "contributions") ref = &k.contributions;
        else if (f.quantity == "coefficients") ref = &k.coefficients;
        else
            for (const auto& [s, kern] : k.step_kernels)
                if (s == f.step) ref = &kern;
        if (ref == nullptr || ref->size() != f.data.real.size())
            throw usage_error("check_against: reference for " + f.path + " missing");  // not reachable
        check_result r;
        r.path = f.path;
        r.quantity = key_of(f);
        r.shape = f.data.shape;
        std::vector<std::size_t> order(ref->size());
        std::iota(order.begin(), order.end(), std::size_t{0});
        auto diff = [&](std::size_t e) { return std::abs(f.data.real[e] - (*ref)[e]); };
        for (std::size_t e = 0; e < ref->size(); ++e) {
            r.max_abs_error = std::max(r.max_abs_error, diff(e));
            r.reference_max_abs = std::max(r.reference_max_abs, std::abs((*ref)[e]));
        }
        // The remainder is a rounding-level term of the outputs: it is measured against their scale.
        r.relative_to = r.quantity == "remainder" ? "max|outputs_final|" : "max|" + r.quantity + "|";
        const double scale = r.quantity == "remainder" ? max_abs_of(k.outputs_final.values) : r.reference_max_abs;
        r.max_relative_error = scale > 0 ? r.max_abs_error / scale : r.max_abs_error;
        r.within = r.max_relative_error <= tolerance;
        const std::size_t shown = std::min<std::size_t>(3, order.size());
        std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(shown), order.end(),
                          [&](std::size_t a, std::size_t b) { return diff(a) > diff(b) || (diff(a) == diff(b) && a < b); });
        for (std::size_t q = 0; q < shown; ++q)
            r.worst.push_back({unravel(order[q], r.shape), f.data.real[order[q]], (*ref)[order[q]]});
        rep.ok = rep.ok && r.within;
        rep.results.push_back(std::move(r));
    }
    return rep;
}

}  // namespace epk

// epk study: sweeps over the engine's compare/kernel entry points (precision-agnostic; no
// heavy templates here).  What each sweep measures and why: proofs-notes/005, "The study".
#include "epk/study.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <random>
#include <sstream>

#include "epk/dataset.hpp"
#include "epk/engine.hpp"
#include "epk/error.hpp"
#include "epk/svg_plot.hpp"
#include "epk/trace.hpp"
#include "epk/training.hpp"

namespace epk {
namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

const std::vector<std::string> all_sweeps{"step_size", "nodes", "nodes_relu", "steps", "width", "depth", "precision", "drift"};

// One training configuration: an MLP on the first n_train rows of a seeded shuffle
// of the data, full-batch SGD, cross-entropy (mean); the next `n_test` rows are the test points.
struct run_config {
    std::vector<std::size_t> hidden{16};
    layer_kind activation = layer_kind::tanh;
    double lr = 0.5;
    std::size_t steps = 10;
    std::size_t n_train = 32, n_test = 4;
    std::uint64_t seed = 1;
};

trace make_study_trace(const dataset& d, const run_config& c) {
    if (c.n_train + c.n_test > d.rows)
        throw input_error(d.name, "the study needs " + std::to_string(c.n_train + c.n_test) + " rows, the data set has " +
                                      std::to_string(d.rows));
    if (d.classes < 2) throw input_error(d.name, "the study needs at least two classes");
    std::vector<std::size_t> order(d.rows);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::mt19937_64 rng(c.seed ^ 0x57d1ULL);
    for (std::size_t i = d.rows; i-- > 1;) std::swap(order[i], order[std::uniform_int_distribution<std::size_t>(0, i)(rng)]);
    trace t;
    t.model = make_mlp(d.features, c.hidden, d.classes, c.activation);
    t.loss = {loss_kind::cross_entropy, reduction_kind::mean};
    t.optimizer.learning_rate = c.lr;
    t.optimizer.steps = c.steps;
    auto rows_of = [&](std::size_t from, std::size_t count) {
        std::vector<double> v;
        for (std::size_t k = from; k < from + count; ++k)
            for (std::size_t j = 0; j < d.features; ++j) v.push_back(d.x[order[k] * d.features + j]);
        return v;
    };
    t.x_train = make_real_array(npy_dtype::f8, {c.n_train, d.features}, rows_of(0, c.n_train));
    std::vector<std::int64_t> labels;
    for (std::size_t k = 0; k < c.n_train; ++k) labels.push_back(d.labels[order[k]]);
    t.y_train = make_int_array({c.n_train}, labels);
    t.x_test = make_real_array(npy_dtype::f8, {c.n_test, d.features}, rows_of(c.n_train, c.n_test));
    t.init_params = make_real_array(npy_dtype::f8, {t.model.parameter_count()}, torch_default_init(t.model, c.seed));
    validate_trace(t, d.name);
    return t;
}

// Every feature mapped onto [0, 1] (min–max over the whole data set; a constant feature
// becomes 0), so that the sweeps' step sizes mean the same on any data set.
void rescale_features(dataset& d) {
    for (std::size_t j = 0; j < d.features; ++j) {
        double lo = std::numeric_limits<double>::infinity(), hi = -lo;
        for (std::size_t i = 0; i < d.rows; ++i) {
            lo = std::min(lo, d.x[i * d.features + j]);
            hi = std::max(hi, d.x[i * d.features + j]);
        }
        for (std::size_t i = 0; i < d.rows; ++i) {
            double& v = d.x[i * d.features + j];
            v = hi > lo ? (v - lo) / (hi - lo) : 0.0;
        }
    }
}

double max_abs(const std::vector<double>& v) {
    double m = 0;
    for (double x : v) m = std::max(m, std::abs(x));
    return m;
}

struct sweep_context {
    const dataset& data;
    const study_options& opt;
    const std::function<void(const std::string&)>& progress;
    std::vector<study_row>& rows;
    std::size_t done = 0, total = 0;

    void say(const std::string& what) {
        ++done;
        if (progress) progress("[" + std::to_string(done) + "/" + std::to_string(total) + "] " + what);
    }

    study_row base(const std::string& sweep, const run_config& c, const std::string& parameter, double value) const {
        study_row r;
        r.sweep = sweep;
        r.activation = std::string(to_string(c.activation));
        r.parameter = parameter;
        r.value = value;
        r.width = c.hidden.empty() ? 0 : c.hidden.front();
        r.depth = c.hidden.size();
        r.steps = c.steps;
        r.n_train = c.n_train;
        r.lr = c.lr;
        r.seed = c.seed;
        return r;
    }

    // Every method on one configuration, in double: one row per method.  With
    // `value_from_method`, a method "gauss:4" is recorded as method "gauss" at value 4
    // (the swept quantity is the rule's node or panel count).
    void compare(const std::string& sweep, const run_config& c, const std::string& parameter, double value,
                 const std::vector<std::string>& methods, bool value_from_method = false) {
        const trace t = make_study_trace(data, c);
        const comparison cmp = compare_trace(t, parse_precision("double"), methods);
        const double scale = max_abs(cmp.outputs_final.values);
        for (const method_result& m : cmp.methods) {
            study_row r = base(sweep, c, parameter, value);
            r.method = m.name;
            if (value_from_method) {
                const std::size_t colon = m.name.find(':');
                r.method = m.name.substr(0, colon);
                r.value = colon == std::string::npos ? 0 : std::stod(m.name.substr(colon + 1));
            }
            r.precision = cmp.precision_name;
            r.error = m.error_max_abs;
            r.scale = scale;
            r.seconds = m.seconds;
            rows.push_back(std::move(r));
        }
    }
};

// ------------------------------------------------------------------ the sweeps

// Step size at fixed training time T = η·S (full batch): the per-step tangent kernel's
// error is O(η), midpoint and trapezoid O(η²), 2-point Gauss O(η⁴); ntk_init does not vanish.
void sweep_step_size(sweep_context& cx, bool plan) {
    const double T = 2.0;
    std::vector<double> etas{0.25, 0.125, 0.0625, 0.03125, 0.015625};
    if (cx.opt.quick) etas.resize(4);
    if (plan) { cx.total += etas.size(); return; }
    for (double eta : etas) {
        run_config c;
        c.lr = eta;
        c.steps = static_cast<std::size_t>(std::llround(T / eta));
        if (cx.opt.quick) c.n_train = 16;
        char what[96];
        std::snprintf(what, sizeof what, "step_size eta=%g steps=%zu", eta, c.steps);
        cx.say(what);
        cx.compare("step_size", c, "eta", eta,
                   {"exact", "tangent_per_step", "midpoint", "trapezoid", "gauss:2", "ntk_init", "linearized"});
    }
}

// Nodes per step on a smooth net with big steps: composite midpoint/trapezoid O(n⁻²),
// n-point Gauss geometric.  On a ReLU net (nodes_relu) the integrand jumps at kinks: O(n⁻¹).
void sweep_nodes(sweep_context& cx, bool plan, bool relu) {
    const std::string sweep = relu ? "nodes_relu" : "nodes";
    if (plan) { cx.total += 1; return; }
    run_config c;
    c.activation = relu ? layer_kind::relu : layer_kind::tanh;
    c.hidden = {16, 16};
    c.lr = 2.0;
    c.steps = 4;
    if (cx.opt.quick) c.n_train = 16;
    cx.say(sweep + " (one run, every rule)");
    std::vector<std::string> methods{"exact"};
    const std::vector<std::size_t> panels = cx.opt.quick ? std::vector<std::size_t>{1, 2, 4, 8, 16}
                                                         : std::vector<std::size_t>{1, 2, 4, 8, 16, 32, 64};
    for (std::size_t n : panels) {
        methods.push_back("midpoint:" + std::to_string(n));
        methods.push_back("trapezoid:" + std::to_string(n));
    }
    const std::size_t max_gauss = relu ? 64 : 12;
    for (std::size_t n = 1; n <= max_gauss; n = relu ? 2 * n : n + 1) methods.push_back("gauss:" + std::to_string(n));
    cx.compare(sweep, c, "nodes", 0, methods, true);
}

// Number of steps at a fixed small step: the tangent kernel's error adds up step by
// step (O(S)); ntk_init's grows like the drift times the path length (O(S²)) early on.
void sweep_steps(sweep_context& cx, bool plan) {
    std::vector<std::size_t> steps{1, 2, 4, 8, 16, 32};
    if (cx.opt.quick) steps.resize(5);
    if (plan) { cx.total += steps.size(); return; }
    for (std::size_t s : steps) {
        run_config c;
        c.lr = 0.02;
        c.steps = s;
        if (cx.opt.quick) c.n_train = 16;
        cx.say("steps S=" + std::to_string(s));
        cx.compare("steps", c, "steps", static_cast<double>(s), {"exact", "tangent_per_step", "midpoint", "ntk_init", "linearized"});
    }
}

// Width of one hidden layer, standard parameterisation with η = η₀·16/width (so the
// function moves by O(1) whatever the width): the lazy approximations improve with width.
void sweep_width(sweep_context& cx, bool plan) {
    std::vector<std::size_t> widths{16, 32, 64, 128, 256, 512, 1024};
    if (cx.opt.quick) widths = {32, 64, 128, 256};
    // Each width is a different random network: three seeds each, fitted on their geometric mean.
    const std::vector<std::uint64_t> seeds{1, 2, 3};
    if (plan) { cx.total += widths.size() * seeds.size(); return; }
    for (std::size_t w : widths)
        for (std::uint64_t seed : seeds) {
            run_config c;
            c.hidden = {w};
            c.lr = 1.0 * 16.0 / static_cast<double>(w);
            c.steps = 10;
            c.n_test = 8;
            c.seed = seed;
            cx.say("width " + std::to_string(w) + " seed " + std::to_string(seed));
            cx.compare("width", c, "width", static_cast<double>(w), {"exact", "tangent_per_step", "ntk_init", "linearized"});
        }
}

// Depth (hidden layers of 16, tanh): descriptive, no order is claimed.
void sweep_depth(sweep_context& cx, bool plan) {
    const std::size_t max_depth = cx.opt.quick ? 3 : 4;
    if (plan) { cx.total += max_depth; return; }
    for (std::size_t depth = 1; depth <= max_depth; ++depth) {
        run_config c;
        c.hidden.assign(depth, 16);
        c.lr = 0.5;
        c.steps = 10;
        if (cx.opt.quick) c.n_train = 16;
        cx.say("depth " + std::to_string(depth));
        cx.compare("depth", c, "depth", static_cast<double>(depth),
                   {"exact", "tangent_per_step", "midpoint", "gauss:2", "ntk_init", "linearized"});
    }
}

const std::vector<std::string>& precision_ladder(bool quick) {
    static const std::vector<std::string> full{"float",   "double",   "long-double", "float128", "mpfr:32",  "mpfr:48",
                                               "mpfr:80", "mpfr:96",  "mpfr:128",    "mpfr:160", "mpfr:192", "mpfr:256"};
    static const std::vector<std::string> small{"float", "double", "long-double", "float128", "mpfr:96", "mpfr:160"};
    return quick ? small : full;
}

run_config precision_config(bool quick) {
    run_config c;
    c.lr = 0.5;
    c.steps = quick ? 6 : 10;
    if (quick) c.n_train = 12, c.n_test = 2;
    return c;
}

// The same run replayed and kernelised in each precision: residual ∝ u (slope 1).
void sweep_precision(sweep_context& cx, bool plan) {
    const auto& ladder = precision_ladder(cx.opt.quick);
    if (plan) { cx.total += ladder.size(); return; }
    const run_config c = precision_config(cx.opt.quick);
    const trace t = make_study_trace(cx.data, c);
    for (const std::string& name : ladder) {
        cx.say("precision " + name);
        kernel_options ko;
        ko.threads = cx.opt.threads;
        const auto start = clock_type::now();
        const kernel_report k = compute_kernel(t, parse_precision(name), ko);
        study_row r = cx.base("precision", c, "unit_roundoff", k.unit_roundoff_value);
        r.method = "exact";
        r.precision = k.precision_name;
        r.error = k.residual_max_abs;
        r.scale = max_abs(k.outputs_final.values);
        r.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
        cx.rows.push_back(std::move(r));
    }
}

// A float32 training path against the exact one (replayed in mpfr:128), step by step:
// outputs and per-step kernels, both evaluated in double on each path.
void sweep_drift(sweep_context& cx, bool plan) {
    if (plan) { cx.total += 2; return; }
    run_config c = precision_config(cx.opt.quick);
    c.steps = cx.opt.quick ? 10 : 30;
    const trace t = make_study_trace(cx.data, c);
    cx.say("drift: replay in float and in mpfr:128");
    const auto start = clock_type::now();
    const trace lo = replay_trace(t, parse_precision("float"));
    const trace hi = replay_trace(t, parse_precision("mpfr:128"));
    cx.say("drift: outputs and kernels on both paths, every step");
    const precision dbl = parse_precision("double");
    kernel_options ko;
    ko.threads = cx.opt.threads;
    for (std::size_t s = 0; s < c.steps; ++s) ko.kernel_steps.push_back(s);
    const kernel_report klo = compute_kernel(lo, dbl, ko), khi = compute_kernel(hi, dbl, ko);
    const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    const std::size_t P = t.model.parameter_count();
    for (std::size_t s = 0; s <= c.steps; ++s) {
        // f(x; w_s) on each path: the path cut after step s, evaluated in double.
        auto prefix = [&](const trace& full) {
            trace p = full;
            std::vector<double> rows(full.params->real.begin(), full.params->real.begin() + static_cast<std::ptrdiff_t>((s + 1) * P));
            p.params = make_real_array(npy_dtype::f8, {s + 1, P}, std::move(rows));
            p.optimizer.steps = s;
            return evaluate_trace(p, dbl).outputs_final.values;
        };
        const std::vector<double> flo = prefix(lo), fhi = prefix(hi);
        double d = 0;
        for (std::size_t e = 0; e < flo.size(); ++e) d = std::max(d, std::abs(flo[e] - fhi[e]));
        study_row r = cx.base("drift", c, "step", static_cast<double>(s));
        r.method = "outputs";
        r.precision = "float";
        r.error = d;
        r.scale = max_abs(fhi);
        r.seconds = seconds;
        cx.rows.push_back(r);
        if (s < c.steps) {
            const std::vector<double>& a = klo.step_kernels[s].second;
            const std::vector<double>& b = khi.step_kernels[s].second;
            double dk = 0;
            for (std::size_t e = 0; e < a.size(); ++e) dk = std::max(dk, std::abs(a[e] - b[e]));
            r.method = "kernel";
            r.error = dk;
            r.scale = max_abs(b);
            cx.rows.push_back(r);
        }
    }
}

void run_sweep(sweep_context& cx, const std::string& name, bool plan) {
    if (name == "step_size") sweep_step_size(cx, plan);
    else if (name == "nodes") sweep_nodes(cx, plan, false);
    else if (name == "nodes_relu") sweep_nodes(cx, plan, true);
    else if (name == "steps") sweep_steps(cx, plan);
    else if (name == "width") sweep_width(cx, plan);
    else if (name == "depth") sweep_depth(cx, plan);
    else if (name == "precision") sweep_precision(cx, plan);
    else if (name == "drift") sweep_drift(cx, plan);
}

// ------------------------------------------------------------------ fitted orders

struct law {
    std::string sweep, method, kind;
    double theory;       // NaN when theory gives a range (theory_text)
    double low, high;    // the band the measured order must fall in
    std::string theory_text, why;
};

// The claims: theory and the band the measured order must fall in (proofs-notes/005, "The study").
const std::vector<law>& laws() {
    constexpr double range = std::numeric_limits<double>::quiet_NaN();
    static const std::vector<law> l{
        {"step_size", "tangent_per_step", "power", 1, 0.8, 1.2, "1", "per step ½ΔᵀHΔ = O(η²), S = T/η steps"},
        {"step_size", "midpoint", "power", 2, 1.7, 2.3, "2", "per step O(η³) (φ‴/24), S = T/η steps"},
        {"step_size", "trapezoid", "power", 2, 1.7, 2.3, "2", "per step O(η³) (φ‴/12), S = T/η steps"},
        {"step_size", "gauss:2", "power", 4, 3.4, 4.6, "4", "2-point Gauss: per step O(η⁵), S = T/η steps"},
        {"step_size", "ntk_init", "power", 0, -0.3, 0.3, "0", "J's drift over a fixed training time does not vanish"},
        {"nodes", "midpoint", "power", -2, -2.3, -1.7, "-2", "composite midpoint, smooth integrand: O(n⁻²)"},
        {"nodes", "trapezoid", "power", -2, -2.3, -1.7, "-2", "composite trapezoid, smooth integrand: O(n⁻²)"},
        {"nodes", "gauss", "geometric", range, 0, 0.5, "rate < 1", "analytic integrand: error ∝ ρ⁻²ⁿ, geometric"},
        {"nodes_relu", "midpoint", "power", -1, -1.5, -0.6, "-1", "integrand jumps at kinks: O(n⁻¹)"},
        {"nodes_relu", "trapezoid", "power", -1, -1.5, -0.6, "-1", "integrand jumps at kinks: O(n⁻¹)"},
        {"nodes_relu", "gauss", "power", -1, -1.5, -0.6, "-1", "integrand jumps at kinks: O(n⁻¹), not geometric"},
        {"steps", "tangent_per_step", "power", 1, 0.7, 1.3, "1", "S steps of O(η²) each (while ‖∇L‖ stays put)"},
        {"steps", "ntk_init", "power", 2, 1.6, 2.4, "2", "J's drift O(sη) times step O(η), summed: O(S²η²)"},
        {"width", "tangent_per_step", "power", range, -2.3, -1.3, "-2 … -1.5",
         "standard param., η ∝ 1/width: hidden layer moves O(width^-3/2)"},
        {"width", "ntk_init", "power", range, -2.3, -1.3, "-2 … -1.5",
         "standard param., η ∝ 1/width: hidden layer moves O(width^-3/2)"},
        {"width", "linearized", "power", range, -2.3, -1.3, "-2 … -1.5",
         "standard param., η ∝ 1/width: hidden layer moves O(width^-3/2)"},
        {"precision", "exact", "power", 1, 0.9, 1.1, "1", "first-order rounding: residual ≤ γ·u·magnitudes"},
        {"drift", "outputs", "power", range, 0.3, 1.3, "0.5 … 1", "u₃₂ per step, propagated: random walk to linear"},
        {"drift", "kernel", "power", range, 0.3, 1.3, "0.5 … 1", "kernels follow the parameters' drift"},
    };
    return l;
}

}  // namespace

const std::vector<std::string>& study_sweeps() { return all_sweeps; }

std::vector<std::string> parse_sweeps(const std::string& list) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (true) {
        const std::size_t comma = list.find(',', start);
        const std::string name = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (std::find(all_sweeps.begin(), all_sweeps.end(), name) == all_sweeps.end())
            throw input_error("--sweeps", "unknown sweep '" + name +
                                              "' (known: step_size, nodes, nodes_relu, steps, width, depth, precision, drift)");
        if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

namespace {
double fit(const std::vector<double>& x, const std::vector<double>& y, double floor, bool log_x) {
    std::vector<double> u, v;
    for (std::size_t k = 0; k < x.size() && k < y.size(); ++k) {
        if (!(y[k] > floor) || !std::isfinite(y[k]) || !std::isfinite(x[k]) || (log_x && !(x[k] > 0))) continue;
        u.push_back(log_x ? std::log(x[k]) : x[k]);
        v.push_back(std::log(y[k]));
    }
    if (u.size() < 2) return std::numeric_limits<double>::quiet_NaN();
    const double n = static_cast<double>(u.size());
    const double mu = std::accumulate(u.begin(), u.end(), 0.0) / n, mv = std::accumulate(v.begin(), v.end(), 0.0) / n;
    double sxy = 0, sxx = 0;
    for (std::size_t k = 0; k < u.size(); ++k) {
        sxy += (u[k] - mu) * (v[k] - mv);
        sxx += (u[k] - mu) * (u[k] - mu);
    }
    return sxx > 0 ? sxy / sxx : std::numeric_limits<double>::quiet_NaN();
}
}  // namespace

double fit_power(const std::vector<double>& x, const std::vector<double>& y, double floor) {
    return fit(x, y, floor, true);
}
double fit_geometric(const std::vector<double>& x, const std::vector<double>& y, double floor) {
    return std::exp(fit(x, y, floor, false));
}

std::vector<std::pair<double, double>> aggregate_runs(const std::vector<study_row>& rows, const std::string& sweep,
                                                      const std::string& method) {
    std::map<double, std::pair<double, std::size_t>> acc;  // value → (Σ log error, count); zero errors kept as zero
    std::map<double, bool> zero;
    for (const study_row& r : rows) {
        if (r.sweep != sweep || r.method != method) continue;
        auto& [sum, count] = acc[r.value];
        if (r.error > 0) sum += std::log(r.error);
        else zero[r.value] = true;
        ++count;
    }
    std::vector<std::pair<double, double>> out;
    for (const auto& [value, sc] : acc)
        out.emplace_back(value, zero.count(value) ? 0.0 : std::exp(sc.first / static_cast<double>(sc.second)));
    return out;
}

std::vector<study_order> fit_orders(const std::vector<study_row>& rows) {
    std::vector<study_order> out;
    for (const law& l : laws()) {
        const auto runs = aggregate_runs(rows, l.sweep, l.method);
        if (runs.empty()) continue;
        // The rounding floor: 100 times the exact kernel's largest error in the same sweep
        // (points below it measure rounding, not the method).
        double exact_max = 0;
        for (const study_row& r : rows)
            if (r.sweep == l.sweep && r.method == "exact" && l.sweep != "precision") exact_max = std::max(exact_max, r.error);
        const double floor = 100 * exact_max;
        std::vector<double> x, y;
        for (const auto& [value, error] : runs) {
            x.push_back(value);
            y.push_back(error);
        }
        study_order o;
        o.sweep = l.sweep;
        o.method = l.method;
        for (const study_row& r : rows)
            if (r.sweep == l.sweep) { o.parameter = r.parameter; break; }
        o.law = l.kind;
        o.theory = l.theory;
        o.low = l.low;
        o.high = l.high;
        o.why = l.why;
        o.theory_text = l.theory_text;
        for (double v : y) o.points += v > floor ? 1 : 0;
        o.measured = l.kind == "power" ? fit_power(x, y, floor) : fit_geometric(x, y, floor);
        o.within = std::isfinite(o.measured) && o.measured >= l.low && o.measured <= l.high;
        out.push_back(std::move(o));
    }
    return out;
}

study_result run_study(const study_options& o, const std::function<void(const std::string&)>& progress) {
    const auto start = clock_type::now();
    dataset d = (o.data == "digits" || o.data == "iris") ? embedded_dataset(o.data) : read_csv_dataset(fs::path(o.data));
    rescale_features(d);
    // Checked before any run: the largest configuration uses 32 training and 8 test rows.
    if (d.rows < 40) throw input_error(o.data, "the study needs at least 40 rows, the data set has " + std::to_string(d.rows));
    if (d.classes < 2) throw input_error(o.data, "the study needs at least two classes");
    const std::vector<std::string> sweeps = o.sweeps.empty() ? all_sweeps : o.sweeps;
    study_result r;
    sweep_context cx{d, o, progress, r.rows};
    for (const std::string& s : sweeps) run_sweep(cx, s, true);
    for (const std::string& s : sweeps) run_sweep(cx, s, false);
    r.orders = fit_orders(r.rows);
    r.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    return r;
}

namespace {

std::string g17(double v) {
    char b[40];
    std::snprintf(b, sizeof b, "%.17g", v);
    return b;
}
std::string g6(double v) {
    char b[40];
    std::snprintf(b, sizeof b, "%.6g", v);
    return b;
}
std::string g3(double v) {
    if (!std::isfinite(v)) return "n/a";
    char b[40];
    std::snprintf(b, sizeof b, "%.3g", v);
    return b;
}
std::string csv_field(const std::string& s) {
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string o = "\"";
    for (char c : s) o += c == '"' ? std::string("\"\"") : std::string(1, c);
    return o + "\"";
}

struct plot_layout {
    std::string sweep, title, x_label, y_label;
    bool log_x = true;
};

const std::vector<plot_layout>& layouts() {
    static const std::vector<plot_layout> l{
        {"step_size", "Error at fixed training time T = eta*S (tanh, one hidden layer of 16)", "step size eta", "max |reconstruction - f(x; w_S)|"},
        {"nodes", "Fixed rules along each step, smooth net (tanh, 4 big steps)", "nodes (Gauss) or panels", "max |reconstruction - f(x; w_S)|"},
        {"nodes_relu", "Fixed rules along each step, ReLU net (4 big steps)", "nodes (Gauss) or panels", "max |reconstruction - f(x; w_S)|"},
        {"steps", "Error against the number of steps (eta = 0.02)", "steps S", "max |reconstruction - f(x; w_S)|"},
        {"width", "Lazy approximations against width (eta = 16/width; mean of 3 seeds)", "hidden width", "max |reconstruction - f(x; w_S)|"},
        {"depth", "Error against depth (hidden layers of 16, tanh)", "hidden layers", "max |reconstruction - f(x; w_S)|", false},
        {"precision", "Exact kernel residual against the unit roundoff", "unit roundoff u", "max |f(x; w_S) - reconstruction|"},
        {"drift", "float32 training path against the exact path", "step s", "max |float32 - exact|"},
    };
    return l;
}

plot_spec plot_of(const plot_layout& lay, const std::vector<study_row>& rows) {
    plot_spec p;
    p.title = lay.title;
    p.x_label = lay.x_label;
    p.y_label = lay.y_label;
    p.log_x = lay.log_x;
    std::vector<std::string> methods;
    for (const study_row& r : rows)
        if (r.sweep == lay.sweep && std::find(methods.begin(), methods.end(), r.method) == methods.end())
            methods.push_back(r.method);
    const std::vector<study_order> orders = fit_orders(rows);
    for (const std::string& m : methods) {
        plot_series s;
        s.name = m;
        for (const study_order& q : orders)
            if (q.sweep == lay.sweep && q.method == m && std::isfinite(q.measured)) {
                char b[48];
                std::snprintf(b, sizeof b, q.law == "geometric" ? " (rate %.2g)" : " (order %.2f)", q.measured);
                s.name += b;
            }
        for (const auto& [value, error] : aggregate_runs(rows, lay.sweep, m)) {
            s.x.push_back(value);
            s.y.push_back(error);
        }
        p.series.push_back(std::move(s));
    }
    if (lay.sweep == "nodes" || lay.sweep == "nodes_relu") {  // the exact kernel as a level line
        double lo = 0, hi = 0, exact = 0;
        for (const study_row& r : rows) {
            if (r.sweep != lay.sweep) continue;
            if (r.method == "exact") exact = r.error;
            else if (r.value > 0) lo = lo == 0 ? r.value : std::min(lo, r.value), hi = std::max(hi, r.value);
        }
        p.series.erase(std::remove_if(p.series.begin(), p.series.end(), [](const plot_series& s) { return s.name == "exact"; }),
                       p.series.end());
        if (exact > 0 && hi > 0) p.series.push_back({"exact (breakpoints)", {lo, hi}, {exact, exact}, true});
    }
    if (lay.sweep == "drift") {  // a line of slope 1 through the outputs' first point
        const auto runs = aggregate_runs(rows, "drift", "outputs");
        for (const auto& [value, error] : runs)
            if (value > 0 && error > 0) {
                const double last = runs.back().first;
                p.series.push_back({"proportional to s", {value, last}, {error, error * last / value}, true});
                break;
            }
    }
    if (lay.sweep == "precision") {  // the reference line u·max|f|
        plot_series ref;
        ref.name = "u * max|f|";
        ref.dashed = true;
        for (const study_row& r : rows)
            if (r.sweep == "precision") {
                ref.x.push_back(r.value);
                ref.y.push_back(r.value * r.scale);
            }
        p.series.push_back(std::move(ref));
    }
    return p;
}

std::string report_text(const study_result& r, const study_options& o) {
    std::ostringstream m;
    m << "# epk study\n\n"
      << "Data: " << o.data << (o.quick ? " (quick sweeps)" : "") << ". " << r.rows.size() << " measurements in "
      << g3(r.seconds) << " s. Every network is an MLP trained by full-batch SGD with cross-entropy (mean) on the first "
      << "rows of a seeded shuffle; the errors are max |reconstruction - f(x; w_S)| over the test points and outputs, "
      << "in double unless the sweep is over precision. The theory and the bands are in proofs-notes/005-approximations.md; "
      << "runs.csv has every run, orders.csv this table.\n\n";
    m << "## Fitted orders\n\n"
      << "| sweep | method | law | measured | theory | band | runs fitted | within band | why |\n"
      << "|---|---|---|---|---|---|---|---|---|\n";
    for (const study_order& q : r.orders) {
        m << "| " << q.sweep << " | " << q.method << " | "
          << (q.law == "power" ? "error ∝ " + q.parameter + "^order" : "error ∝ rate^" + q.parameter) << " | "
          << g3(q.measured) << " | " << q.theory_text << " | [" << g3(q.low) << ", " << g3(q.high) << "] | " << q.points
          << " | " << (q.within ? "yes" : "**no**") << " | " << q.why << " |\n";
    }
    // Per-sweep tables of the raw errors (methods as columns).
    for (const plot_layout& lay : layouts()) {
        std::vector<std::string> methods;
        std::vector<double> values;
        for (const study_row& row : r.rows) {
            if (row.sweep != lay.sweep) continue;
            if (std::find(methods.begin(), methods.end(), row.method) == methods.end()) methods.push_back(row.method);
            if (std::find(values.begin(), values.end(), row.value) == values.end()) values.push_back(row.value);
        }
        if (methods.empty()) continue;
        std::sort(values.begin(), values.end());
        m << "\n## " << lay.sweep << "\n\n" << lay.title << " — `" << lay.sweep << ".svg`.\n\n| "
          << (lay.sweep == "precision" ? "precision | u" : [&] {
                 for (const study_row& row : r.rows) if (row.sweep == lay.sweep) return row.parameter;
                 return std::string("value");
             }());
        for (const std::string& meth : methods) m << " | " << meth;
        m << " |\n|---|";
        if (lay.sweep == "precision") m << "---|";
        for (std::size_t k = 0; k < methods.size(); ++k) m << "---|";
        m << "\n";
        for (double v : values) {
            if (lay.sweep == "nodes" || lay.sweep == "nodes_relu") {
                if (v == 0) continue;  // the exact row (no node count)
            }
            std::string prec;
            for (const study_row& row : r.rows)
                if (row.sweep == lay.sweep && row.value == v) { prec = row.precision; break; }
            m << "| " << (lay.sweep == "precision" ? prec + " | " : "") << g3(v);
            for (const std::string& meth : methods) {
                std::string cell = "";
                for (const auto& [value, error] : aggregate_runs(r.rows, lay.sweep, meth))
                    if (value == v) cell = g3(error);
                m << " | " << cell;
            }
            m << " |\n";
        }
        if (lay.sweep == "nodes" || lay.sweep == "nodes_relu")
            for (const study_row& row : r.rows)
                if (row.sweep == lay.sweep && row.method == "exact")
                    m << "\nThe exact kernel (breakpoints and adaptive rules) on the same run: " << g3(row.error) << ".\n";
    }
    return m.str();
}

}  // namespace

void write_study(const study_result& r, const study_options& o, const fs::path& dir) {
    std::vector<std::pair<std::string, std::vector<unsigned char>>> files;
    auto add = [&files](const std::string& name, const std::string& text) {
        files.emplace_back(name, std::vector<unsigned char>(text.begin(), text.end()));
    };
    std::ostringstream csv;
    csv << "sweep,method,precision,activation,parameter,value,width,depth,steps,n_train,seed,lr,error,scale,seconds\n";
    for (const study_row& q : r.rows)
        csv << csv_field(q.sweep) << ',' << csv_field(q.method) << ',' << csv_field(q.precision) << ','
            << csv_field(q.activation) << ',' << csv_field(q.parameter) << ',' << g17(q.value) << ',' << q.width << ','
            << q.depth << ',' << q.steps << ',' << q.n_train << ',' << q.seed << ',' << g17(q.lr) << ',' << g17(q.error) << ','
            << g17(q.scale) << ',' << g17(q.seconds) << '\n';
    add("runs.csv", csv.str());
    std::ostringstream ord;
    ord << "sweep,method,parameter,law,measured,theory,low,high,points,within\n";
    for (const study_order& q : r.orders)
        ord << q.sweep << ',' << q.method << ',' << q.parameter << ',' << q.law << ',' << g6(q.measured) << ','
            << csv_field(q.theory_text) << ',' << g6(q.low) << ',' << g6(q.high) << ',' << q.points << ','
            << (q.within ? "yes" : "no") << '\n';
    add("orders.csv", ord.str());
    add("report.md", report_text(r, o));
    for (const plot_layout& lay : layouts()) {
        const bool present = std::any_of(r.rows.begin(), r.rows.end(), [&](const study_row& q) { return q.sweep == lay.sweep; });
        if (present) add(lay.sweep + ".svg", render_svg(plot_of(lay, r.rows)));
    }
    write_directory(dir, files);
}

}  // namespace epk

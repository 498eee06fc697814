// Template bodies behind engine.hpp; included only by src/engine_<type>.cpp,
// each of which instantiates them for one scalar type.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <functional>

#include "epk/engine.hpp"
#include "epk/path_kernel.hpp"
#include "epk/training.hpp"

namespace epk::detail {

template <Real T>
matrix<T> to_matrix(const npy_array& a) {
    const std::size_t rows = a.shape.empty() ? 1 : a.shape[0];
    std::size_t cols = 1;  // [N, D] or [N, *input_shape]: one flattened sample per row (C order)
    for (std::size_t k = 1; k < a.shape.size(); ++k) cols *= a.shape[k];
    matrix<T> m(rows, cols);
    if (!a.is_real()) {  // token ids (<i8): the integers, exact in every type (ids < 2^24 ≤ float's)
        for (std::size_t i = 0; i < a.integer.size(); ++i) {
            m.data[i] = T(static_cast<double>(a.integer[i]));
            if (scalar_traits<T>::to_double(m.data[i]) != static_cast<double>(a.integer[i]))
                throw usage_error("token id " + std::to_string(a.integer[i]) + " is not exact in " +
                                  scalar_traits<T>::name() + " (use a wider precision)");
        }
        return m;
    }
    for (std::size_t i = 0; i < a.real.size(); ++i) m.data[i] = T(a.real[i]);
    return m;
}

// Row r of a [rows, P] array (params.npy may stay on disk: real_rows reads one row);
// a [P] array (init_params.npy) is its own row 0.
template <Real T>
std::vector<T> row_of(const npy_array& a, std::size_t r) {
    const std::vector<double> v = a.shape.size() == 1 ? real_rows(a, 0, a.shape[0]) : real_rows(a, r, 1);
    std::vector<T> w;
    w.reserve(v.size());
    for (double x : v) w.push_back(T(x));
    return w;
}

template <Real T>
training_problem<T> make_problem(const trace& t) {
    training_problem<T> pr{t.model, t.loss, to_matrix<T>(t.x_train), {}};
    if (t.loss.kind == loss_kind::cross_entropy) pr.y.labels = t.y_train.integer;
    else {
        pr.y.values = to_matrix<T>(t.y_train);
        pr.y.values.cols = t.model.output_dim();
        pr.y.values.rows = t.n_train();
    }
    return pr;
}

inline sgd_schedule make_schedule(const trace& t) {
    sgd_schedule s;
    s.steps = t.steps();
    s.n_train = t.n_train();
    s.optimizer = t.optimizer.rule;
    for (std::size_t k = 0; k < s.steps; ++k) s.learning_rates.push_back(t.learning_rate(k));
    if (t.batches && t.batches->source) {  // batches.npy on disk: one row per step, read when needed
        const npy_array batches = *t.batches;
        s.batch_size = batches.shape[1];
        s.batch_reader = [batches](std::size_t k) {
            const std::vector<std::int64_t> row = integer_rows(batches, k, 1);
            return std::vector<std::size_t>(row.begin(), row.end());
        };
    } else if (t.batches) {
        const std::size_t b = t.batches->shape[1];
        for (std::size_t k = 0; k < s.steps; ++k) {
            std::vector<std::size_t> row(b);
            for (std::size_t j = 0; j < b; ++j) row[j] = static_cast<std::size_t>(t.batches->integer[k * b + j]);
            s.batches.push_back(std::move(row));
        }
    }
    return s;
}

template <Real T>
std::vector<T> initial_parameters(const trace& t) {
    return t.init_params ? row_of<T>(*t.init_params, 0) : row_of<T>(*t.params, 0);
}

// The optimizer's state before step 0: fresh, or a resumed run's recorded buffers.
template <Real T>
optimizer_state<T> initial_optimizer_state(const trace& t) {
    auto buffer = [](const std::optional<npy_array>& a) { return a ? row_of<T>(*a, 0) : std::vector<T>(); };
    return resumed_state<T>(t.optimizer.rule, t.optimizer.initial_step, buffer(t.init_momentum_buffer),
                            buffer(t.init_exp_avg), buffer(t.init_exp_avg_sq), buffer(t.init_max_exp_avg_sq));
}

template <Real T>
trace replay_trace_t(const trace& t, std::vector<double>* losses, const progress_fn& progress) {
    const training_problem<T> pr = make_problem<T>(t);
    const sgd_schedule sch = make_schedule(t);
    std::vector<T> w = initial_parameters<T>(t);
    const std::size_t p = w.size();
    std::vector<double> rows;
    rows.reserve((sch.steps + 1) * p);
    for (const T& v : w) rows.push_back(scalar_traits<T>::to_double(v));
    if (losses) losses->clear();
    train_sgd<T>(pr, w, sch, [&](std::size_t s, const std::vector<T>& ws, const T& loss) {
        for (const T& v : ws) rows.push_back(scalar_traits<T>::to_double(v));
        if (losses) losses->push_back(scalar_traits<T>::to_double(loss));
        if (progress) progress(s + 1, sch.steps);
    }, initial_optimizer_state<T>(t));
    trace out = t;
    out.init_params.reset();
    // A float path is written as float32: every value is a binary32 number, and the dtype tells
    // the recorded-path audit the precision the path was taken in.
    out.params = make_real_array(std::is_same_v<T, float> ? npy_dtype::f4 : npy_dtype::f8, {sch.steps + 1, p}, std::move(rows));
    return out;
}

template <Real T>
real_table make_table(const matrix<T>& m) {
    real_table t{m.rows, m.cols, {}, {}};
    for (const T& v : m.data) {
        t.values.push_back(scalar_traits<T>::to_double(v));
        t.decimal.push_back(scalar_traits<T>::to_string(v));
    }
    return t;
}

template <Real T>
matrix<T> test_inputs(const trace& t, std::string& name) {
    if (t.x_test) {
        name = "x_test";
        return to_matrix<T>(*t.x_test);
    }
    const std::size_t m = test_point_count(t);
    std::vector<std::size_t> idx(m);
    for (std::size_t i = 0; i < m; ++i) idx[i] = i;
    name = "x_train[0:" + std::to_string(m) + "]";
    return gather_rows(to_matrix<T>(t.x_train), idx);
}

template <Real T>
evaluation evaluate_trace_t(const trace& t, const progress_fn& progress) {
    evaluation ev;
    ev.precision_name = scalar_traits<T>::name();
    ev.unit_roundoff = scalar_traits<T>::to_string(scalar_traits<T>::unit_roundoff());
    ev.unit_roundoff_value = scalar_traits<T>::to_double(scalar_traits<T>::unit_roundoff());
    ev.steps = t.steps();
    ev.recorded_path = t.params.has_value();
    const matrix<T> xt = test_inputs<T>(t, ev.test_points);
    const std::vector<T> w0 = initial_parameters<T>(t);
    ev.outputs_initial = make_table(outputs<T>(t.model, w0, xt));
    std::vector<T> wf;
    if (t.params) {
        wf = row_of<T>(*t.params, t.steps());
    } else {
        const training_problem<T> pr = make_problem<T>(t);
        const sgd_schedule sch = make_schedule(t);
        wf = train_sgd<T>(pr, w0, sch, [&](std::size_t s, const std::vector<T>&, const T& loss) {
            ev.losses.push_back(scalar_traits<T>::to_double(loss));
            if (progress) progress(s + 1, sch.steps);
        }, initial_optimizer_state<T>(t));
    }
    ev.outputs_final = make_table(outputs<T>(t.model, wf, xt));
    for (const T& v : wf) ev.final_parameters.push_back(scalar_traits<T>::to_double(v));
    return ev;
}

template <Real T>
kernel_report compute_kernel_t(const trace& t, const kernel_options& o, const progress_fn& progress) {
    const training_problem<T> pr = make_problem<T>(t);
    path_kernel_request<T> rq;
    rq.problem = &pr;
    rq.schedule = make_schedule(t);
    rq.w0 = initial_parameters<T>(t);
    rq.initial_state = initial_optimizer_state<T>(t);
    if (t.params) rq.recorded_row = [&t](std::size_t s) { return row_of<T>(*t.params, s); };
    kernel_report rep;
    rq.x_test = test_inputs<T>(t, rep.test_points);
    if (o.audit_only) {
        rq.x_test = matrix<T>(0, rq.x_test.cols);
        rep.test_points = "none (audit only)";
    }
    rq.kernel_steps = o.kernel_steps;
    rq.store_coefficients = o.coefficients;
    rq.store_contributions = o.contributions;
    rq.quadrature = o.quadrature;
    rq.threads = o.threads;
    rq.structured = o.structured;
    rq.split_steps = o.split_steps;
    rq.split = active_work_split();
    if (o.split_layers) {  // the parameter ranges of the layers that have parameters, in layout order
        std::vector<const tree_node*> nodes;
        const layer_tree tree = compile_tree(t.model);
        for (const tree_node* n : tree_nodes(tree))
            if (n->count > 0) nodes.push_back(n);
        std::sort(nodes.begin(), nodes.end(), [](const tree_node* a, const tree_node* b) { return a->offset < b->offset; });
        rq.split_layers.push_back(0);
        for (const tree_node* n : nodes) {
            if (n->offset != rq.split_layers.back()) throw usage_error("compute_kernel: layer parameters are not contiguous");
            rq.split_layers.push_back(n->offset + n->count);
            rep.layer_paths.push_back(n->path + " " + std::string(to_string(n->spec.kind)));
        }
    }
    const path_kernel_result<T> r = compute_path_kernel<T>(rq, progress);
    rep.gemm_flops = r.gemm_flops;
    rep.gemm_seconds = r.gemm_seconds;
    rep.elementwise_madds = r.elementwise_madds;

    rep.precision_name = scalar_traits<T>::name();
    const T u = scalar_traits<T>::unit_roundoff();
    rep.unit_roundoff = scalar_traits<T>::to_string(u);
    rep.unit_roundoff_value = scalar_traits<T>::to_double(u);
    rep.steps = t.steps();
    rep.n_train = t.n_train();
    rep.classes = r.c;
    rep.recorded_path = t.params.has_value();
    rep.outputs_initial = make_table(r.bias);
    rep.outputs_final = make_table(r.outputs_final);
    rep.reconstruction = make_table(r.reconstruction);
    rep.kernel_reconstruction = make_table(r.kernel_reconstruction);
    rep.remainder_term = make_table(r.remainder_term);
    if (!r.optimizer_term.data.empty()) rep.optimizer_term = make_table(r.optimizer_term);
    rep.optimizer = describe_optimizer(t);
    matrix<T> residual(r.m, r.c);
    for (std::size_t e = 0; e < residual.data.size(); ++e) residual.data[e] = r.outputs_final.data[e] - r.reconstruction.data[e];
    rep.residual = make_table(residual);
    rep.budget = reconstruction_budget(r, t.model).data;
    for (const T& q : r.quadrature_bound.data) rep.quadrature_estimate.push_back(scalar_traits<T>::to_double(q));
    rep.breakpoints = r.cuts;
    rep.evaluations = r.evaluations;
    rep.quadrature_converged = r.quadrature_converged;
    rep.ok = true;
    for (std::size_t e = 0; e < residual.data.size(); ++e) {
        const double res = std::abs(rep.residual.values[e]);
        // NaN fails; so does a budget that is not finite (magnitudes past binary64's range on a
        // diverged run): such a run cannot be certified.
        if (!(res <= rep.budget[e]) || !std::isfinite(rep.budget[e])) rep.ok = false;
        const double over = res / rep.budget[e];
        if (res > rep.residual_max_abs || e == 0) {
            rep.residual_max_abs = res;
            rep.worst_point = e / r.c;
            rep.worst_output = e % r.c;
        }
        if (over > rep.residual_max_over_budget) rep.residual_max_over_budget = over;
    }
    rep.residual_max_over_u = rep.residual_max_abs / rep.unit_roundoff_value;
    rep.remainder_max_abs = scalar_traits<T>::to_double(r.remainder_max_abs);
    rep.remainder_max_rel = scalar_traits<T>::to_double(r.remainder_max_rel);
    rep.remainder_worst_step = r.remainder_worst_step;
    if (t.params) {
        const bool f4 = t.params->dtype == npy_dtype::f4;
        rep.path_precision = f4 ? "float32" : "float64";
        rep.recording_unit_roundoff = f4 ? 0x1p-24 : 0x1p-53;
    } else {
        rep.path_precision = rep.precision_name;
        rep.recording_unit_roundoff = rep.unit_roundoff_value;
    }
    for (std::size_t s = 0; s < r.audit.size(); ++s) {
        const auto& a = r.audit[s];
        kernel_report::step_audit row;
        row.step = s;
        row.remainder_max_abs = a.remainder_max_abs;
        row.remainder_norm2 = a.remainder_norm2;
        row.relative = a.step_max_abs > 0 ? a.remainder_max_abs / a.step_max_abs : 0.0;
        row.deviation_max_abs = a.deviation_max_abs;
        row.deviation_relative = a.step_max_abs > 0 ? a.deviation_max_abs / a.step_max_abs : 0.0;
        // The rounding level of the comparison: the coarser of the recorded path's precision and
        // the working precision (epk's own step is rounded in the latter).
        const double unit = std::max(rep.recording_unit_roundoff, rep.unit_roundoff_value) * a.weight_max_abs;
        // NaN stays NaN (and fails the verdict).
        row.over_recording_u = unit > 0 ? a.deviation_max_abs / unit : (a.deviation_max_abs > 0 ? HUGE_VAL : a.deviation_max_abs);
        row.contribution_max_abs = a.contribution_max_abs;
        rep.deviation_max_over_recording_u = std::isnan(row.over_recording_u)
                                                ? row.over_recording_u
                                                : std::max(rep.deviation_max_over_recording_u, row.over_recording_u);
        rep.audit.push_back(row);
    }
    {
        std::vector<std::size_t> order(rep.audit.size());
        std::iota(order.begin(), order.end(), std::size_t{0});
        const std::size_t k = std::min<std::size_t>(5, order.size());
        std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(),
                          [&](std::size_t a, std::size_t b) {
                              return rep.audit[a].over_recording_u > rep.audit[b].over_recording_u ||
                                     (rep.audit[a].over_recording_u == rep.audit[b].over_recording_u && a < b);
                          });
        rep.worst_steps.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k));
    }
    for (std::size_t e = 0; e < r.outputs_final.data.size(); ++e)
        rep.kernel_residual_max_abs = std::max(
            rep.kernel_residual_max_abs,
            std::abs(scalar_traits<T>::to_double(T(r.outputs_final.data[e] - r.kernel_reconstruction.data[e]))));
    for (const T& v : r.layer_contributions) rep.layer_contributions.push_back(scalar_traits<T>::to_double(v));
    for (const T& v : r.step_contributions) rep.step_contributions.push_back(scalar_traits<T>::to_double(v));
    rep.contributions.reserve(r.contributions.size());
    for (const T& v : r.contributions) rep.contributions.push_back(scalar_traits<T>::to_double(v));
    for (const auto& [s, k] : r.step_kernels) {
        std::vector<double> kd;
        kd.reserve(k.size());
        for (const T& v : k) kd.push_back(scalar_traits<T>::to_double(v));
        rep.step_kernels.emplace_back(s, std::move(kd));
    }
    for (const T& v : r.coefficients) rep.coefficients.push_back(scalar_traits<T>::to_double(v));
    for (const T& l : r.losses) rep.losses.push_back(scalar_traits<T>::to_double(l));
    return rep;
}

template <Real T>
matrix<T> linearized_outputs(const training_problem<T>& pr, const sgd_schedule& sch, const std::vector<T>& w0,
                             const matrix<T>& xt, optimizer_state<T> state) {
    // f_lin(x; w) = f(x; w_0) + J(x; w_0)(w − w_0); the run's optimizer on L(f_lin) over the
    // same batches and rates (plain SGD: w − η g, as always).
    const matrix<T> f0 = outputs<T>(pr.model, w0, pr.x);
    std::vector<T> w = w0;
    for (std::size_t s = 0; s < sch.steps; ++s) {
        const std::vector<std::size_t> batch = sch.batch(s);
        std::vector<T> v(w.size());
        for (std::size_t q = 0; q < w.size(); ++q) v[q] = w[q] - w0[q];
        const matrix<T> xb = gather_rows(pr.x, batch);
        matrix<T> fb = jvp<T>(pr.model, w0, xb, v);
        for (std::size_t k = 0; k < batch.size(); ++k)
            for (std::size_t c = 0; c < fb.cols; ++c) fb(k, c) = f0(batch[k], c) + fb(k, c);
        const matrix<T> g_out = output_gradient(pr.loss, fb, pr.y, batch);
        const std::vector<T> g = vjp<T>(pr.model, w0, xb, g_out);
        const T eta(sch.learning_rates[s]);
        if (uses_optimizer_state<T>(sch, state)) optimizer_step<T>(sch.optimizer, state, w, g, eta);
        else
            for (std::size_t q = 0; q < w.size(); ++q) w[q] = w[q] - eta * g[q];
    }
    std::vector<T> v(w.size());
    for (std::size_t q = 0; q < w.size(); ++q) v[q] = w[q] - w0[q];
    matrix<T> out = jvp<T>(pr.model, w0, xt, v);
    const matrix<T> ft0 = outputs<T>(pr.model, w0, xt);
    for (std::size_t e = 0; e < out.data.size(); ++e) out.data[e] = ft0.data[e] + out.data[e];
    return out;
}

// b + J(x; w_0)·Σ_s Σ_i J(x_i; w_0)ᵀ a_{i,s}, a from the true path (a kernel machine:
// no step remainder).  With any other optimizer, Σ_s of the updates the optimizer makes
// from the gradients J(x_i; w_0)ᵀ ρ∂ℓ/∂f (its own state; weight decay from the true w[s]).
template <Real T>
matrix<T> ntk_init_outputs(const training_problem<T>& pr, const sgd_schedule& sch, const std::vector<T>& w0,
                           const std::function<std::vector<T>(std::size_t)>& recorded, const matrix<T>& xt,
                           const optimizer_state<T>& initial) {
    const std::size_t P = w0.size();
    const bool plain = !uses_optimizer_state<T>(sch, initial);
    optimizer_state<T> path_state = initial, init_state = initial;
    std::vector<T> w = w0, total(P, T(0));
    for (std::size_t s = 0; s < sch.steps; ++s) {
        const std::vector<std::size_t> batch = sch.batch(s);
        const T eta(sch.learning_rates[s]);
        const matrix<T> xb = gather_rows(pr.x, batch);
        const forward_pass<T> fp = forward(pr.model, std::span<const T>(w), xb);
        const matrix<T> g_out = output_gradient(pr.loss, fp.outputs(), pr.y, batch);
        if (plain) {
            matrix<T> a = g_out;
            for (T& v : a.data) v = -(eta * v);
            const std::vector<T> g_init = vjp<T>(pr.model, w0, xb, a);  // Σ_i J(x_i; w_0)ᵀ a_i
            for (std::size_t q = 0; q < P; ++q) total[q] += g_init[q];
        } else {
            const std::vector<T> g_init = vjp<T>(pr.model, w0, xb, g_out);
            std::vector<T> u = w;
            optimizer_step<T>(sch.optimizer, init_state, u, g_init, eta);
            for (std::size_t q = 0; q < P; ++q) total[q] += u[q] - w[q];
        }
        if (s + 1 == sch.steps) break;
        if (recorded) w = recorded(s + 1);
        else optimizer_update<T>(pr, sch, path_state, w, fp, g_out, eta);
    }
    matrix<T> out = jvp<T>(pr.model, w0, xt, total);
    const matrix<T> ft0 = outputs<T>(pr.model, w0, xt);
    for (std::size_t e = 0; e < out.data.size(); ++e) out.data[e] = ft0.data[e] + out.data[e];
    return out;
}

template <Real T>
comparison compare_trace_t(const trace& t, const std::vector<std::string>& methods, const progress_fn& progress) {
    const training_problem<T> pr = make_problem<T>(t);
    comparison cmp;
    const matrix<T> xt = test_inputs<T>(t, cmp.test_points);
    cmp.precision_name = scalar_traits<T>::name();
    cmp.unit_roundoff = scalar_traits<T>::to_string(scalar_traits<T>::unit_roundoff());
    cmp.unit_roundoff_value = scalar_traits<T>::to_double(scalar_traits<T>::unit_roundoff());
    cmp.steps = t.steps();
    cmp.recorded_path = t.params.has_value();
    const sgd_schedule sch = make_schedule(t);
    const std::vector<T> w0 = initial_parameters<T>(t);
    std::function<std::vector<T>(std::size_t)> recorded;
    if (t.params) recorded = [&t](std::size_t s) { return row_of<T>(*t.params, s); };
    // f(x; w[S]) on the path.
    std::vector<T> wf = w0;
    if (t.params) wf = row_of<T>(*t.params, t.steps());
    else wf = train_sgd<T>(pr, w0, sch, {}, initial_optimizer_state<T>(t));
    const matrix<T> f_final = outputs<T>(t.model, wf, xt);
    cmp.outputs_final = make_table(f_final);
    std::size_t done = 0;
    for (const std::string& name : methods) {
        const auto start = std::chrono::steady_clock::now();
        matrix<T> rec;
        if (name == "linearized") {
            rec = linearized_outputs<T>(pr, sch, w0, xt, initial_optimizer_state<T>(t));
        } else if (name == "ntk_init") {
            rec = ntk_init_outputs<T>(pr, sch, w0, recorded, xt, initial_optimizer_state<T>(t));
        } else {
            path_kernel_request<T> rq;
            rq.problem = &pr;
            rq.schedule = sch;
            rq.w0 = w0;
            rq.initial_state = initial_optimizer_state<T>(t);
            rq.recorded_row = recorded;
            rq.x_test = xt;
            rq.store_contributions = false;
            rq.split = active_work_split();
            using rule = quadrature_options::simple_rule;
            const std::size_t colon = name.find(':');
            const std::string family = name.substr(0, colon);
            const std::size_t n = colon == std::string::npos ? 1 : std::stoul(name.substr(colon + 1));
            if (name == "tangent_per_step") rq.quadrature.composite = rule::left;
            else if (family == "midpoint") rq.quadrature.composite = rule::midpoint;
            else if (family == "trapezoid") rq.quadrature.composite = rule::trapezoid;
            else if (family == "gauss") rq.quadrature.fixed_nodes = n;
            rq.quadrature.panels = n;
            // exact: as verify (with the step remainder); the others are kernel machines
            // b + Σ_s Σ_i K̃_s(x, x_i) a_{i,s}, as an independent implementation computes them.
            path_kernel_result<T> r = compute_path_kernel<T>(rq);
            rec = name == "exact" ? std::move(r.reconstruction) : std::move(r.kernel_reconstruction);
        }
        method_result mr;
        mr.name = name;
        mr.reconstruction = make_table(rec);
        for (std::size_t e = 0; e < rec.data.size(); ++e)
            mr.error_max_abs = std::max(mr.error_max_abs, std::abs(scalar_traits<T>::to_double(T(rec.data[e] - f_final.data[e]))));
        mr.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        cmp.methods.push_back(std::move(mr));
        if (progress) progress(++done, methods.size());
    }
    return cmp;
}

}  // namespace epk::detail

// Instantiates the engine for one scalar type T under the suffix NAME.
#define EPK_INSTANTIATE_ENGINE(T, NAME)                                                                        \
    namespace epk::detail {                                                                                    \
    trace replay_trace_##NAME(const trace& t, std::vector<double>* l, const progress_fn& p) {                 \
        return replay_trace_t<T>(t, l, p);                                                                     \
    }                                                                                                          \
    evaluation evaluate_trace_##NAME(const trace& t, const progress_fn& p) { return evaluate_trace_t<T>(t, p); } \
    kernel_report compute_kernel_##NAME(const trace& t, const kernel_options& o, const progress_fn& p) {        \
        return compute_kernel_t<T>(t, o, p);                                                                   \
    }                                                                                                          \
    comparison compare_trace_##NAME(const trace& t, const std::vector<std::string>& m, const progress_fn& p) { \
        return compare_trace_t<T>(t, m, p);                                                                    \
    }                                                                                                          \
    }

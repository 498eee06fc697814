// The JSON of the command line's reports (include/epk/report_json.hpp).
#include "epk/report_json.hpp"

#include <algorithm>
#include <numeric>

#include "epk/error.hpp"

namespace epk {

nlohmann::json table_json(const real_table& t) {
    nlohmann::json rows = nlohmann::json::array();
    for (std::size_t r = 0; r < t.rows; ++r)
        rows.push_back(std::vector<double>(t.values.begin() + static_cast<std::ptrdiff_t>(r * t.cols),
                                           t.values.begin() + static_cast<std::ptrdiff_t>((r + 1) * t.cols)));
    return rows;
}
nlohmann::json table_decimal_json(const real_table& t) {
    nlohmann::json rows = nlohmann::json::array();
    for (std::size_t r = 0; r < t.rows; ++r)
        rows.push_back(std::vector<std::string>(t.decimal.begin() + static_cast<std::ptrdiff_t>(r * t.cols),
                                                t.decimal.begin() + static_cast<std::ptrdiff_t>((r + 1) * t.cols)));
    return rows;
}

// The keys predict and verify share.
void put_outputs_json(nlohmann::json& j, const std::string& precision_name, double u, const std::string& u_decimal,
                      std::size_t steps, bool recorded, const std::string& test_points, const real_table& initial,
                      const real_table& final_, bool decimals) {
    j["precision"] = precision_name;
    j["unit_roundoff"] = u;
    j["unit_roundoff_decimal"] = u_decimal;
    j["steps"] = steps;
    j["path"] = recorded ? "recorded" : "replayed";
    j["test_points"] = test_points;
    j["outputs_initial"] = table_json(initial);
    j["outputs_final"] = table_json(final_);
    if (decimals) {
        j["outputs_initial_decimal"] = table_decimal_json(initial);
        j["outputs_final_decimal"] = table_decimal_json(final_);
    }
}


// The audit's summary as it appears in every command's JSON.
nlohmann::json audit_summary_json(const kernel_report& k) {
    const audit_verdict v = judge_audit(k);
    return {{"path_precision", k.path_precision},
            {"recording_unit_roundoff", k.recording_unit_roundoff},
            {"deviation_max_over_recording_u", k.deviation_max_over_recording_u},
            {"at_rounding_level", v.explained},
            {"rounding_level_units", audit_rounding_units},
            {"worst_step", v.worst_step},
            {"worst_step_relative_to_step", v.relative},
            {"worst_steps", k.worst_steps}};
}


nlohmann::json vector_rows(const std::vector<double>& v, std::size_t cols) {
    nlohmann::json rows = nlohmann::json::array();
    for (std::size_t r = 0; r * cols < v.size(); ++r)
        rows.push_back(std::vector<double>(v.begin() + static_cast<std::ptrdiff_t>(r * cols),
                                           v.begin() + static_cast<std::ptrdiff_t>((r + 1) * cols)));
    return rows;
}


nlohmann::json audit_json(const kernel_report& k) {
    nlohmann::json a = audit_summary_json(k);
    a["residual_with_remainder_max_abs"] = k.residual_max_abs;
    a["residual_without_remainder_max_abs"] = k.kernel_residual_max_abs;
    nlohmann::json steps = nlohmann::json::array();
    for (const auto& s : k.audit)
        steps.push_back({{"step", s.step},
                         {"remainder_max_abs", s.remainder_max_abs},
                         {"remainder_norm2", s.remainder_norm2},
                         {"relative_to_step", s.relative},
                         {"deviation_max_abs", s.deviation_max_abs},
                         {"deviation_relative_to_step", s.deviation_relative},
                         {"over_recording_u", s.over_recording_u},
                         {"contribution_max_abs", s.contribution_max_abs}});
    a["steps"] = steps;
    return a;
}


nlohmann::json kernel_report_json(const kernel_report& k, const precision& p) {
    nlohmann::json j;
    put_outputs_json(j, k.precision_name, k.unit_roundoff_value, k.unit_roundoff, k.steps, k.recorded_path,
                     k.test_points, k.outputs_initial, k.outputs_final, p.bits > 53);
    j["reconstruction"] = table_json(k.reconstruction);
    j["kernel_reconstruction"] = table_json(k.kernel_reconstruction);
    j["remainder_term"] = table_json(k.remainder_term);
    j["optimizer"] = k.optimizer;
    if (k.optimizer_term.rows > 0) j["optimizer_term"] = table_json(k.optimizer_term);
    j["residual"] = table_json(k.residual);
    j["budget"] = vector_rows(k.budget, k.classes);
    j["quadrature_error_estimate"] = vector_rows(k.quadrature_estimate, k.classes);
    j["quadrature_converged"] = k.quadrature_converged;
    j["breakpoints"] = k.breakpoints;
    j["jacobian_evaluations"] = k.evaluations;
    j["residual_max_abs"] = k.residual_max_abs;
    j["residual_max_over_u"] = k.residual_max_over_u;
    j["residual_max_over_budget"] = k.residual_max_over_budget;
    j["worst"] = {{"point", k.worst_point}, {"output", k.worst_output}};
    j["remainder_max"] = k.remainder_max_abs;
    j["remainder_max_relative"] = k.remainder_max_rel;
    j["remainder_worst_step"] = k.remainder_worst_step;
    j["losses"] = k.losses;
    j["ok"] = k.ok;
    j["audit"] = audit_json(k);
    if (p.bits > 53) {
        j["reconstruction_decimal"] = table_decimal_json(k.reconstruction);
        j["residual_decimal"] = table_decimal_json(k.residual);
    }
    return j;
}


nlohmann::json verify_json(const kernel_report& k, const precision& p, bool allow_unexplained) {
    nlohmann::json j = kernel_report_json(k, p);
    const bool explained = judge_audit(k).explained;
    j["residual_within_budget"] = k.ok;
    j["path_explained"] = explained;
    j["ok"] = k.ok && (explained || allow_unexplained);
    return j;
}

nlohmann::json predict_json(const evaluation& ev, const kernel_report* audit, const precision& p,
                            bool allow_unexplained) {
    nlohmann::json j;
    put_outputs_json(j, ev.precision_name, ev.unit_roundoff_value, ev.unit_roundoff, ev.steps, ev.recorded_path,
                     ev.test_points, ev.outputs_initial, ev.outputs_final, p.bits > 53);
    if (!ev.losses.empty()) j["losses"] = ev.losses;
    bool ok = true;
    if (audit) {
        const bool explained = judge_audit(*audit).explained;
        j["audit"] = audit_summary_json(*audit);
        j["path_explained"] = explained;
        ok = explained || allow_unexplained;
    }
    j["ok"] = ok;
    return j;
}

nlohmann::json check_json(const check_report& r, const std::string& trace_name, double tolerance,
                          bool allow_unexplained) {
    const bool explained = judge_audit(r.reference).explained;
    nlohmann::json j;
    j["trace"] = trace_name;
    j["precision"] = r.reference.precision_name;
    j["tolerance"] = tolerance;
    j["reference_ok"] = r.reference.ok;
    j["reference_residual_max_abs"] = r.reference.residual_max_abs;
    j["files_within_tolerance"] = r.ok;
    j["path_explained"] = explained;
    j["audit"] = audit_summary_json(r.reference);
    j["ok"] = r.ok && (explained || allow_unexplained);
    nlohmann::json fs_json = nlohmann::json::array();
    for (const auto& c : r.results) {
        nlohmann::json worst = nlohmann::json::array();
        for (const auto& w : c.worst) worst.push_back({{"index", w.index}, {"theirs", w.theirs}, {"epk", w.reference}});
        fs_json.push_back({{"file", c.path}, {"quantity", c.quantity}, {"shape", c.shape},
                           {"max_abs_error", c.max_abs_error}, {"reference_max_abs", c.reference_max_abs},
                           {"max_relative_error", c.max_relative_error}, {"relative_to", c.relative_to},
                           {"within", c.within}, {"worst", worst}});
    }
    j["files"] = fs_json;
    return j;
}

nlohmann::json explain_json(const kernel_report& k, const trace& t, std::size_t top) {
    const std::size_t M = k.outputs_final.rows, C = k.classes, N = k.n_train;
    if (k.contributions.size() != M * N * C) throw usage_error("explain_json: the report holds no contributions");
    const bool labels = t.y_train.shape.size() == 1 && t.y_train.dtype == npy_dtype::i8 && t.y_train.integer.size() == N;
    nlohmann::json points = nlohmann::json::array();
    for (std::size_t m = 0; m < M; ++m) {
        const double* f = &k.outputs_final.values[m * C];
        const std::size_t c = static_cast<std::size_t>(std::max_element(f, f + C) - f);
        std::vector<std::size_t> order(N);
        std::iota(order.begin(), order.end(), std::size_t{0});
        auto v = [&](std::size_t i) { return k.contributions[(m * N + i) * C + c]; };
        // Largest first; equal contributions by ascending index.
        std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return v(a) > v(b); });
        const std::size_t L = k.layer_paths.size(), S = k.steps;
        const bool by_layer = L > 0 && k.layer_contributions.size() == M * N * C * L;
        const bool by_step = S > 0 && k.step_contributions.size() == S * M * N * C;
        auto entry = [&](std::size_t i) {
            nlohmann::json e{{"train_index", i}, {"contribution", v(i)}};
            if (labels) e["label"] = t.y_train.integer.at(i);
            if (by_layer) {
                nlohmann::json layers = nlohmann::json::array();  // in parameter-layout order
                for (std::size_t l = 0; l < L; ++l)
                    layers.push_back({{"layer", k.layer_paths[l]},
                                      {"contribution", k.layer_contributions[((m * N + i) * C + c) * L + l]}});
                e["layers"] = layers;
            }
            if (by_step) {
                std::vector<double> steps(S);
                for (std::size_t s = 0; s < S; ++s) steps[s] = k.step_contributions[((s * M + m) * N + i) * C + c];
                e["steps"] = steps;
            }
            return e;
        };
        nlohmann::json pro = nlohmann::json::array(), con = nlohmann::json::array();
        for (std::size_t r = 0; r < N && pro.size() < top && v(order[r]) > 0; ++r) pro.push_back(entry(order[r]));
        for (std::size_t r = N; r-- > 0 && con.size() < top && v(order[r]) < 0;) con.push_back(entry(order[r]));
        const double bias = k.outputs_initial.values[m * C + c];
        const double kernel_sum = k.kernel_reconstruction.values[m * C + c] - bias;
        nlohmann::json p{{"test_point", m},
                         {"predicted_class", c},
                         {"output", f[c]},
                         {"bias", bias},
                         {"training_points", kernel_sum},
                         {"optimizer_term", k.optimizer_term.rows ? k.optimizer_term.values[m * C + c] : 0.0},
                         {"remainder", k.remainder_term.values[m * C + c]},
                         {"reconstruction", k.reconstruction.values[m * C + c]},
                         {"proponents", pro},
                         {"opponents", con}};
        points.push_back(p);
    }
    nlohmann::json j;
    j["precision"] = k.precision_name;
    j["steps"] = k.steps;
    j["n_train"] = N;
    j["top"] = top;
    j["optimizer"] = k.optimizer;
    j["residual_max_abs"] = k.residual_max_abs;
    j["residual_within_budget"] = k.ok;
    j["audit"] = audit_summary_json(k);
    j["points"] = points;
    return j;
}

}  // namespace epk

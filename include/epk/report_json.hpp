// epk/report_json.hpp — the JSON the command line prints (`--json`), built in one place so
// that the CLI and the Python bindings (python/) give the same keys and the same numbers.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "epk/check.hpp"
#include "epk/engine.hpp"
#include "epk/trace.hpp"

namespace epk {

nlohmann::json table_json(const real_table& t);          // rows of binary64 values
nlohmann::json table_decimal_json(const real_table& t);  // rows of decimal strings (every digit)
nlohmann::json vector_rows(const std::vector<double>& v, std::size_t cols);

// The keys predict and verify share.
void put_outputs_json(nlohmann::json& j, const std::string& precision_name, double u, const std::string& u_decimal,
                      std::size_t steps, bool recorded, const std::string& test_points, const real_table& initial,
                      const real_table& final_, bool decimals);

// The recorded-path audit: its summary (every command) and in full (verify, kernel's audit.json).
nlohmann::json audit_summary_json(const kernel_report& k);
nlohmann::json audit_json(const kernel_report& k);

// verify's report without the verdict keys, and with them: residual_within_budget,
// path_explained and ok (= both, or allow_unexplained for the second).
nlohmann::json kernel_report_json(const kernel_report& k, const precision& p);
nlohmann::json verify_json(const kernel_report& k, const precision& p, bool allow_unexplained);

// predict: the outputs, and for a recorded path the audit's summary (`audit` is null for a
// replayed trace), path_explained and ok.
nlohmann::json predict_json(const evaluation& ev, const kernel_report* audit, const precision& p,
                            bool allow_unexplained);

// check: per file the errors and worst entries, the reference's own verdict, the audit.
nlohmann::json check_json(const check_report& r, const std::string& trace_name, double tolerance,
                          bool allow_unexplained);

// explain: for each test point, the training points that pushed its predicted class (the
// argmax of f(x; w_S)) most (proponents) and most against it (opponents), top `top` each by
// their contribution c(x, x_i) to that output, with their labels (cross_entropy traces), and
// the split of f(x; w_S) into f(x; w_0), Σ_i c(x, x_i), the optimizer term and the remainder.
// `k` must hold the contributions (kernel_options::contributions); each listed training point
// also gets `layers` {path: share} and `steps` [share per step] when `k` holds those splits.
nlohmann::json explain_json(const kernel_report& k, const trace& t, std::size_t top);

}  // namespace epk

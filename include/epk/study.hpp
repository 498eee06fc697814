// epk/study.hpp — `epk study`: how far each cheaper rule is from the exact
// path kernel, and how that gap scales (step size, quadrature nodes, number of
// steps, width, depth, precision), with orders fitted against theory
// (proofs-notes/005-approximations.md, "What the study measures").
#pragma once

#include <filesystem>
#include <functional>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace epk {

struct study_options {
    std::string data = "digits";      // an embedded data set (digits, iris) or a CSV file
    bool quick = false;               // smaller sweeps (a minute; what the tests run)
    std::vector<std::string> sweeps;  // empty = every sweep (study_sweeps())
    std::size_t threads = 0;          // kernel threads over test points; 0 = all cores
};

// One measured run: a method on one network/trace configuration.
struct study_row {
    std::string sweep, method, precision, activation;
    std::string parameter;  // the swept quantity: eta, nodes, steps, width, depth, unit_roundoff, step
    double value = 0;       // its value in this run
    std::size_t width = 0, depth = 0, steps = 0, n_train = 0;
    std::uint64_t seed = 1;  // data split and initialisation; sweeps over random networks repeat seeds
    double lr = 0;
    double error = 0;       // max |reconstruction − f(x; w_S)| (precision: the exact residual; drift: the drift)
    double scale = 0;       // max |f(x; w_S)| over the test points
    double seconds = 0;
};

// error ≈ C·value^order ("power") or C·rate^value ("geometric": `measured` is the rate).
struct study_order {
    std::string sweep, method, parameter, law;
    double measured = std::numeric_limits<double>::quiet_NaN();
    double theory = std::numeric_limits<double>::quiet_NaN();
    double low = 0, high = 0;  // the stated band for `measured`
    std::size_t points = 0;    // runs used in the fit (those above the rounding floor)
    bool within = false;
    std::string theory_text;   // "1", "-2 … -1.5" (theory gives a range), "rate < 1"
    std::string why;           // the theory in one line
};

struct study_result {
    std::vector<study_row> rows;
    std::vector<study_order> orders;
    double seconds = 0;
};

// step_size, nodes, nodes_relu, steps, width, depth, precision, drift.
const std::vector<std::string>& study_sweeps();
// "step_size,width" → names; input_error("--sweeps", rule) on an unknown or empty one.
std::vector<std::string> parse_sweeps(const std::string& list);

// Runs the sweeps; `progress` receives one line per run ("[3/41] step_size eta=0.125").
study_result run_study(const study_options& o, const std::function<void(const std::string&)>& progress = {});

// Least-squares slope of log(y) against log(x) (power) or against x (geometric: returns
// exp(slope)), over the points with y > floor.  NaN with fewer than two points.
double fit_power(const std::vector<double>& x, const std::vector<double>& y, double floor = 0);
double fit_geometric(const std::vector<double>& x, const std::vector<double>& y, double floor = 0);

// The runs of one sweep and method as (value, geometric mean of the error over seeds),
// ascending in value.
std::vector<std::pair<double, double>> aggregate_runs(const std::vector<study_row>& rows, const std::string& sweep,
                                                      const std::string& method);

// The fitted orders of the sweeps present in `rows` (the table of run_study), each on
// aggregate_runs above the sweep's rounding floor (100 × the exact kernel's largest error).
std::vector<study_order> fit_orders(const std::vector<study_row>& rows);

// Writes runs.csv, orders.csv, report.md and one SVG plot per sweep into `dir`
// (created; it must not exist or be empty).  Atomic: a temporary sibling renamed.
void write_study(const study_result& r, const study_options& o, const std::filesystem::path& dir);

}  // namespace epk

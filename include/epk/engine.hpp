// epk/engine.hpp — precision-agnostic entry points used by the CLI.
//
// Each function runs its computation in the scalar type named by a
// `precision`; the heavy template code is instantiated once per scalar in
// its own translation unit (src/engine_<type>.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "epk/quadrature_options.hpp"
#include "epk/trace.hpp"

namespace epk {

struct precision {
    enum class kind { float32, float64, long_double, float128, mpfr };
    kind k = kind::float64;
    long bits = 53;  // significand bits (mpfr: as requested)

    std::string name() const;  // "float", "double", "long-double", "float128", "mpfr:256"
};

// "float" | "double" | "long-double" | "float128" | "mpfr:BITS" (2 ≤ BITS ≤ 100000).
// Throws input_error("--precision", rule) otherwise.
precision parse_precision(const std::string& text);

// A matrix of results: binary64 values and, for every entry, the decimal
// string with all the digits of the working precision.
struct real_table {
    std::size_t rows = 0, cols = 0;
    std::vector<double> values;
    std::vector<std::string> decimal;
};

using progress_fn = std::function<void(std::size_t done, std::size_t total)>;

// The test points every command evaluates at: the rows of x_test.npy, else the first
// min(10, N) training rows.  Their number M.
std::size_t test_point_count(const trace& t);

// Replays S steps of SGD from the trace's initial parameters (init_params.npy
// or params.npy row 0) in precision p.  Returns the same trace with
// params.npy = the replayed path (each row rounded to binary64; float32 for p = float, whose rows are binary32 numbers) and no
// init_params.  `losses` receives L_s(w[s]) for s = 0..S−1.
trace replay_trace(const trace& t, const precision& p, std::vector<double>* losses = nullptr,
                   const progress_fn& progress = {});

struct evaluation {
    std::string precision_name;
    std::string unit_roundoff;   // decimal
    double unit_roundoff_value = 0;
    std::size_t steps = 0;
    bool recorded_path = false;  // params.npy present (else replayed from init_params)
    std::string test_points;     // "x_test" or "x_train[0:M]"
    real_table outputs_initial;  // f(x; w[0])
    real_table outputs_final;    // f(x; w[S])
    std::vector<double> losses;  // L_s(w[s]), s = 0..S−1 (replayed runs only)
    std::vector<double> final_parameters;  // w[S] rounded to binary64
};

// Network outputs at the test points (x_test, else the first ≤ 10 training
// points) before and after training, in precision p.  A trace with only
// init_params is replayed; a recorded path's last row is used as is.
evaluation evaluate_trace(const trace& t, const precision& p, const progress_fn& progress = {});

// ------------------------------------------------------------------ kernel

struct kernel_options {
    std::vector<std::size_t> kernel_steps;  // steps whose K_s is returned (ascending, < S)
    bool coefficients = false;              // return a_{i,s} for every step
    bool contributions = true;              // return c(x_m, x_i) (memory M·N·C)
    quadrature_options quadrature;
    std::size_t threads = 0;  // over test points; 0 = all cores (results identical for any count)
    bool structured = true;   // false: the unstructured full-Jacobian path (path_kernel.hpp), for cross-checks
    bool audit_only = false;  // no test points: the training side of every step and the recorded-path audit only
    // explain's splits of the contributions (the full-Jacobian paths): by layer, by step.
    bool split_layers = false, split_steps = false;
};

// The trace's optimizer in one line: "sgd", "sgd (momentum 0.9, nesterov, weight_decay 0.001)",
// "adamw (betas 0.9 0.999, eps 1e-08, weight_decay 0.01, amsgrad)", "… resumed after 40 steps".
std::string describe_optimizer(const trace& t);

// The exact path kernel of a trace at its test points (x_test, else the
// first ≤ 10 training points), in precision p: path_kernel.hpp.  Values are
// rounded to binary64 (tables also carry all the digits as decimals).
struct kernel_report {
    std::string precision_name;
    std::string unit_roundoff;  // decimal
    double unit_roundoff_value = 0;
    std::size_t steps = 0, n_train = 0, classes = 0;
    bool recorded_path = false;
    std::string test_points;
    real_table outputs_initial;        // b(x) = f(x; w[0])                M × C
    real_table outputs_final;          // f(x; w[S])                       M × C
    real_table reconstruction;         // b + Σ_s Σ_i K_s a_i + Σ_s Ī_s r_s M × C
    real_table kernel_reconstruction;  // b + Σ_i c(x, x_i)                M × C
    real_table remainder_term;         // Σ_s Ī_s r_s                      M × C
    // Σ_s Ī_s ω_s: the optimizer's own term (weight decay, a resumed run's state;
    // proofs-notes/007), M × C; empty (0 × 0) for plain SGD, which has none.
    real_table optimizer_term;
    std::string optimizer;             // e.g. "sgd (momentum 0.9, nesterov, weight_decay 0.001)"
    real_table residual;               // outputs_final − reconstruction   M × C
    std::vector<double> budget;        // documented residual budget       M × C
    std::vector<double> quadrature_estimate;  // Σ_s est_s·‖Δ_s‖₁          M × C
    std::vector<std::size_t> breakpoints;     // per test point, all steps
    std::vector<std::size_t> evaluations;     // Jacobians evaluated, per test point
    bool quadrature_converged = true;
    double residual_max_abs = 0, residual_max_over_u = 0, residual_max_over_budget = 0;
    std::size_t worst_point = 0, worst_output = 0;
    bool ok = false;                   // every |residual| ≤ budget
    double remainder_max_abs = 0, remainder_max_rel = 0;
    std::size_t remainder_worst_step = 0;
    // Recorded-path audit: per step, the remainder r_s = Δ_s − Σ_i J(x_i; w_s)ᵀ a_{i,s} between
    // the path's step and the exact gradient step recomputed in this precision.
    // And the deviation d_s = w[s+1] − (the declared optimizer's step from w[s], taken as epk's
    // trainer takes it in this precision): zero for a replayed path; for a recorded one, what
    // the recorded row did beyond the declared training.  The verdict (judge_audit) is on d_s.
    struct step_audit {
        std::size_t step = 0;
        double remainder_max_abs = 0;     // ‖r_s‖_∞
        double remainder_norm2 = 0;       // ‖r_s‖_2
        double relative = 0;              // ‖r_s‖_∞ / ‖Δ_s‖_∞
        double deviation_max_abs = 0;     // ‖d_s‖_∞
        double deviation_relative = 0;    // ‖d_s‖_∞ / ‖Δ_s‖_∞
        double over_recording_u = 0;      // ‖d_s‖_∞ / (max(u_rec, u) · ‖w[s+1]‖_∞), u the working precision's
        double contribution_max_abs = 0;  // max over test points and outputs of |Ī_s r_s|
    };
    std::vector<step_audit> audit;
    std::string path_precision;            // "float32"/"float64" (recorded params.npy) or the working precision (replayed)
    double recording_unit_roundoff = 0;    // u_rec: unit roundoff of path_precision
    double deviation_max_over_recording_u = 0;
    std::vector<std::size_t> worst_steps;  // up to 5 steps, largest over_recording_u first
    double kernel_residual_max_abs = 0;    // max |f(x; w_S) − kernel_reconstruction|: without the remainder
    std::vector<double> contributions;  // c(x_m, x_i)  [M][N][C]
    std::vector<double> layer_contributions;  // split_layers: [M][N][C][L], L = layer_paths.size()
    std::vector<std::string> layer_paths;     // the layers with parameters, e.g. "layers[0] linear"
    std::vector<double> step_contributions;   // split_steps: [S][M][N][C]
    std::vector<std::pair<std::size_t, std::vector<double>>> step_kernels;  // (s, [M][N][C][C])
    std::vector<double> coefficients;    // a_{i,s}, [S][N][C] (when requested)
    std::vector<double> losses;          // L_s(w[s])
    // The structured path's test-side work: dense products (flops, seconds summed over
    // threads) and multiply-adds outside them; zero on the unstructured path.
    double gemm_flops = 0, gemm_seconds = 0, elementwise_madds = 0;
};

kernel_report compute_kernel(const trace& t, const precision& p, const kernel_options& o,
                             const progress_fn& progress = {});

// ------------------------------------------------------------------ the audit's verdict

// A recorded step is "at the rounding level of the recorded path" when its deviation
// ‖d_s‖∞ = ‖w[s+1] − (the declared optimizer's step from w[s])‖∞ is at most this many
// units u_rec·‖w[s+1]‖∞ (proofs-notes/004 §8: measured 0.5–3.8 units on PyTorch float32 and
// float64 runs; a misdescribed run — clipping, a schedule left out, another model — is off by
// orders of magnitude more).
inline constexpr double audit_rounding_units = 32.0;

struct audit_verdict {
    bool explained = true;      // every step within audit_rounding_units
    double units = 0;           // max_s ‖d_s‖∞ / (u_rec·‖w[s+1]‖∞)
    std::size_t worst_step = 0; // the step attaining it
    double relative = 0;        // that step's ‖d_s‖∞ / ‖Δ_s‖∞
};
audit_verdict judge_audit(const kernel_report& k);

// The one-line reason a strict command fails: "NAME: the recorded path is not the declared
// training: step 17 ... (limit 32 units); ..." (no trailing newline).
std::string unexplained_steps_message(const std::string& name, const kernel_report& k);

// The audit alone (compute_kernel with audit_only): the training side of every step, no test
// point; the same numbers as compute_kernel's audit.
kernel_report audit_trace(const trace& t, const precision& p, std::size_t threads = 0, const progress_fn& progress = {});

// ------------------------------------------------------------------ memory

// The path kernel allocates and frees block-sized buffers (megabytes) every step;
// glibc's malloc by default hands such blocks back to the kernel (mmap, trimming), so
// every step would pay fresh page faults.  Keeps freed memory in the process instead
// (mallopt: no mmap below 32 MiB, no trimming below 1 GiB); the peak is unchanged.  Programs call
// it once at start (the CLI and epk-bench do); a library user may or may not.
void keep_freed_memory();

// What the largest computation on this trace needs, in bytes, estimated from the shapes
// before any work: per-sample gradients and batch activations (the path kernel), the
// result arrays (contributions [M,N,C], the coefficients [S,N,C] and every listed step's
// kernel [M,N,C,C] when `kernel`; else only the batch activations of training).
double memory_estimate(const trace& t, const precision& p, const kernel_options& o, bool kernel);

// The limit: EPK_MEMORY_LIMIT_GIB from the environment (a positive number), else 1 GiB.
double memory_limit_bytes();

// Throws input_error(name, rule) when memory_estimate exceeds memory_limit_bytes(), so that
// no input can make epk allocate more than the limit by surprise.
void check_memory(const trace& t, const precision& p, const kernel_options& o, bool kernel, const std::string& name);

// ------------------------------------------------------------------ compare

// The exact kernel against the cheaper rules people use (design.md §1):
//   exact             the exact path kernel (as verify)
//   tangent_per_step  K_s ≈ J(x; w_s) J(x_i; w_s)ᵀ (the step's left end)
//   ntk_init          K_s ≈ J(x; w_0) J(x_i; w_0)ᵀ, contracted with the true a_{i,s}
//   linearized        the model linearised at w_0, trained by the same SGD on the same batches
//   midpoint, trapezoid, gauss:N   fixed rules along each step, no breakpoints
// Each method's test side also carries the step remainder r_s (zero in exact arithmetic).
struct method_result {
    std::string name;
    real_table reconstruction;  // M × C
    double error_max_abs = 0;   // max |reconstruction − f(x; w[S])|
    double seconds = 0;
};

struct comparison {
    std::string precision_name;
    double unit_roundoff_value = 0;
    std::string unit_roundoff;
    std::size_t steps = 0;
    bool recorded_path = false;
    std::string test_points;
    real_table outputs_final;
    std::vector<method_result> methods;
};

// "exact,tangent_per_step,gauss:4" → names; input_error("--methods", rule) on an unknown one.
std::vector<std::string> parse_methods(const std::string& list);
const std::vector<std::string>& default_methods();

comparison compare_trace(const trace& t, const precision& p, const std::vector<std::string>& methods,
                         const progress_fn& progress = {});

}  // namespace epk

// epk/check.hpp — `epk check`: another implementation's results, as .npy files in
// the shapes `epk kernel` writes, against epk's exact path kernel of the same trace.
//
// Recognised file names (M test points, N training points, C outputs, S steps):
//   outputs_final.npy | predictions.npy   [M, C]      f(x; w_S)
//   bias.npy | outputs_initial.npy        [M, C]      f(x; w_0)
//   reconstruction.npy                    [M, C]      f(x; w_0) + Σ_i c(x, x_i)  (the kernel machine)
//   contributions.npy                     [M, N, C]   c(x, x_i) = Σ_s K_s(x, x_i) a_{i,s}
//   coefficients.npy                      [S, N, C]   a_{i,s}
//   remainder.npy                         [M, C]      Σ_s Ī_s r_s
//   kernel_step_<s>.npy                   [M, N, C, C] K_s(x_m, x_i)
// float32 or float64 arrays; every value finite.  Errors are relative to max|epk's array|,
// except remainder.npy (a rounding-level term of the outputs), relative to max|f(x; w_S)|.  Anything else is an input_error
// naming the file and the rule.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

#include "epk/engine.hpp"
#include "epk/npy.hpp"
#include "epk/trace.hpp"

namespace epk {

struct check_file {
    std::string path;      // as given (or dir/name)
    std::string quantity;  // outputs_final, bias, reconstruction, contributions, coefficients, remainder, kernel_step
    std::size_t step = 0;  // kernel_step only
    npy_array data;
};

// Files or directories (every *.npy inside, sorted by name; other files are ignored).
// Throws input_error for a missing path, an unknown name, a non-real dtype, a NaN or
// infinity, a file named twice (predictions.npy and outputs_final.npy count as one),
// or an empty list.
std::vector<check_file> load_check_files(const std::vector<std::string>& paths);

struct check_entry {
    std::vector<std::size_t> index;
    double theirs = 0, reference = 0;
};

struct check_result {
    std::string path, quantity;
    std::vector<std::size_t> shape;
    double max_abs_error = 0;       // max |theirs − epk|
    double reference_max_abs = 0;   // max |epk|
    double max_relative_error = 0;  // max_abs_error / the array's scale (= max_abs_error when that is 0)
    std::string relative_to;        // the scale: max|epk's array|, or max|f(x; w_S)| for the remainder
    bool within = false;            // max_relative_error ≤ tolerance
    std::vector<check_entry> worst; // up to 3 entries, largest |theirs − epk| first
};

struct check_report {
    kernel_report reference;  // epk's exact kernel of the trace (reference.ok: its own residual is within budget)
    double tolerance = 0;
    std::vector<check_result> results;
    bool ok = false;          // every result within tolerance and the reference verified
};

// Computes what the files need (the listed steps' kernels, the coefficients) and compares.
// Throws input_error (naming the file) when a file's shape is not the one epk's arrays have,
// or a kernel step is not below S; refuses before any work (naming trace_name) when the
// reference would need more memory than memory_limit_bytes() (engine.hpp).
check_report check_against(const trace& t, const std::string& trace_name, const precision& p,
                           const std::vector<check_file>& files, double tolerance, std::size_t threads = 0,
                           const progress_fn& progress = {});

}  // namespace epk

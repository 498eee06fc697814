// epk/trace.hpp — training traces, docs/trace-format.md (version 3; versions 1
// and 2 read as before).
//
// Contract of read_trace: either returns a trace every field of which obeys
// the spec (shapes agree with the manifest, indices in range, no NaN/inf in
// real arrays, labels in [0, C), exactly the optimizer fields versions 1 and 2
// know, with torch's validation rules; a recorded optimizer state present
// exactly when the optimizer and optimizer.initial_step call for it), or
// throws input_error whose file() is the offending file's path
// (e.g. "run/x_train.npy" or "run/manifest.json") and whose rule() says which
// rule of the spec it breaks.
//
// Contract of write_trace: writes into a staging directory beside `dir` and
// renames it into place, so a failure leaves nothing behind.  `dir` must not
// exist or be an empty directory.  Output bytes are a pure function of the
// trace (write -> read -> write is byte-identical).  The manifest says version 1,
// in exactly version 1's bytes, for plain SGD from a fresh start
// (optimizer.rule.is_plain_sgd(), initial_step 0, no recorded state); otherwise
// version 2 with every field of the optimizer's kind written out; a model that is not an
// MLP (version 3's layers) makes it version 3, every layer field written out.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "epk/model_spec.hpp"
#include "epk/npy.hpp"

namespace epk {

struct trace {
    model_spec model;
    loss_spec loss;
    sgd_spec optimizer;  // optimizer.steps is S

    npy_array x_train;                      // [N, D] or [N, *input_shape]
    npy_array y_train;                      // [N] i8 (cross_entropy) or [N, C] / [N] real (mse)
    std::optional<npy_array> params;        // [S+1, P]
    std::optional<npy_array> init_params;   // [P]
    std::optional<npy_array> batches;       // [S, B] i8
    std::optional<npy_array> learning_rates;// [S] f8
    std::optional<npy_array> x_test;        // [M, D] or [M, *input_shape]
    // Version 2, optional: the optimizer's state before step 0 (a run resumed from a
    // checkpoint), torch's state_dict names; optimizer.initial_step is its step count.
    // <f4 or <f8, [P], finite; read_trace guarantees each is present exactly when
    // initial_step >= 1 and the optimizer keeps that state (momentum buffer: SGD with
    // momentum != 0; exp_avg, exp_avg_sq: Adam/AdamW; max_exp_avg_sq: amsgrad).
    std::optional<npy_array> init_momentum_buffer;  // [P] SGD with momentum
    std::optional<npy_array> init_exp_avg;          // [P] Adam/AdamW m
    std::optional<npy_array> init_exp_avg_sq;       // [P] Adam/AdamW v (≥ 0)
    std::optional<npy_array> init_max_exp_avg_sq;   // [P] amsgrad (≥ 0)

    std::size_t n_train() const { return x_train.shape.at(0); }
    std::size_t steps() const { return optimizer.steps; }
    double learning_rate(std::size_t s) const;  // learning_rates[s] or the manifest's constant
};

// Manifest <-> JSON text.  parse_manifest fills model/loss/optimizer of `out`.
void parse_manifest(const std::string& text, const std::string& name, trace& out);
std::string manifest_text(const trace& t);  // deterministic, ends with '\n'

// Check a fully populated trace against every rule of the spec.  `dir_name`
// prefixes the file names in error messages.  read_trace calls it.
void validate_trace(const trace& t, const std::string& dir_name);

// params.npy and batches.npy files larger than stream_threshold_bytes() (EPK_STREAM_MIB,
// default 64 MiB) are not loaded: the header and every value are checked as always, in
// blocks, and the path kernel reads one row per step (npy.hpp, open_npy / real_rows /
// integer_rows), so a trace's memory does not grow with S.
trace read_trace(const std::filesystem::path& dir);
std::uintmax_t stream_threshold_bytes();
// The same from the files' bytes (name → contents, e.g. "x_train.npy"); messages name
// dir_name/file.  What read_trace and the trace fuzz target (fuzz/) use.  A file named in
// `on_disk` (params.npy, batches.npy) and absent from `files` is opened there (open_npy).
trace parse_trace(const std::map<std::string, std::string>& files, const std::string& dir_name,
                  const std::map<std::string, std::filesystem::path>* on_disk = nullptr);
void write_trace(const std::filesystem::path& dir, const trace& t);

// The output-directory checks write_trace makes first (dir absent or an empty
// directory, its parent an existing directory), as input_error(dir, rule);
// lets a caller refuse before doing expensive work.
void check_trace_output_dir(const std::filesystem::path& dir);

// Writes `files` (name, bytes) into a new directory `dir` the same way
// write_trace does: staging directory beside it, then rename; nothing is
// left behind on failure.  `dir` must not exist or be an empty directory.
void write_directory(const std::filesystem::path& dir,
                     const std::vector<std::pair<std::string, std::vector<unsigned char>>>& files);

}  // namespace epk

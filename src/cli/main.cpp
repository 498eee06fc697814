// epk — command-line tool.  Exit status: 0 success, 1 a check failed,
// 2 bad input (one line on stderr naming the file or option and the rule;
// nothing written), 3 internal error.
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <optional>
#include <sstream>
#include <string>
#include <unistd.h>

#include "args.hpp"
#include "../certify.hpp"
#include "epk/check.hpp"
#include "epk/dataset.hpp"
#include "epk/engine.hpp"
#include "epk/error.hpp"
#include "epk/file_io.hpp"
#include "epk/npy.hpp"
#include "epk/report_json.hpp"
#include "epk/study.hpp"
#include "epk/trace.hpp"
#include "epk/training.hpp"
#include "epk/work_split.hpp"
#ifdef EPK_HAVE_MPI
#include "mpi_runtime.hpp"
#endif

namespace fs = std::filesystem;
using epk::cli::args;
using epk::cli::parse_args;
using epk::audit_json;
using epk::audit_summary_json;
using epk::kernel_report_json;
using epk::put_outputs_json;
using epk::table_json;

namespace {

constexpr const char* version_text = "epk 0.1.0";

constexpr const char* help_text = R"(epk — the exact path kernel, verified in any precision

usage: epk COMMAND [OPTIONS]

commands
  demo                       train an MLP on the embedded digits and write it exactly as a
                             kernel machine, in double and in mpfr:256  [--precision P]
                             [--cnn: a small ReLU CNN with a residual block instead]
  train --out DIR [OPTIONS]  train a network and write a trace (spec: docs/trace-format.md)
      --data NAME|FILE.csv   digits (default) | iris | a CSV file (last column = integer label;
                             its features standardised with the training rows' mean and
                             standard deviation) | modadd:P[:FRACTION]: tokens [a, b, P] of
                             all P² pairs labelled (a + b) mod P, a seeded FRACTION (0.3) of
                             them for training, the rest test points (needs --model, e.g.
                             examples/models/modadd-transformer.json)
      --no-scale             keep a CSV's features as they are
      --n-train N            training rows (default: min(500, rows - n-test))
      --n-test M             held-out rows written as x_test.npy (default: min(100, rows/5))
      --model FILE.json      the layers, as a version 3 manifest's model (a list of layers, or
                             {"input_shape": [1, 8, 8], "layers": [...]}; docs/trace-format.md):
                             conv2d, pooling, residual, layer_norm, embedding,
                             self_attention, ... instead of an MLP; the digits are [1, 8, 8]
                             images to a list starting with a conv or pool
      --hidden LIST          hidden widths, e.g. 32,16 (default 32; empty = no hidden layer)
      --activation NAME      relu leaky_relu tanh sigmoid softplus gelu identity (default tanh)
      --negative-slope A     leaky_relu slope (default 0.01)
      --no-bias              linear layers without bias
      --loss NAME            cross_entropy (default) | mse (one-hot targets)
      --reduction NAME       mean (default) | sum
      --steps S              optimizer steps (default 100)
      --lr ETA               learning rate (default 0.1)
      --optimizer NAME       sgd (default) | adam | adamw: torch.optim's SGD, Adam, AdamW
      --momentum M           sgd: momentum (default 0)
      --dampening T          sgd: dampening (default 0)
      --nesterov             sgd: Nesterov momentum (needs --momentum > 0, --dampening 0)
      --weight-decay L       weight decay (default 0; adamw 0.01, as in torch)
      --betas B1,B2          adam/adamw: moment decay rates, each in [0, 1) (default 0.9,0.999)
      --eps E                adam/adamw: denominator term (default 1e-8)
      --amsgrad              adam/adamw: the AMSGrad variant
      --lr-decay G           per-step rates eta*G^s, written as learning_rates.npy (default: constant)
      --batch-size B         minibatch size, 0 = full batch (default 0)
      --seed K               seeds the row split, the initialisation and the batches (default 0)
      --init-only            write init_params.npy only (a trace to be replayed) instead of params.npy
      --precision P          working precision of the training (default double)
  replay TRACE --out DIR     replay the trace's SGD from its initial parameters and write the
                             replayed path as params.npy  [--precision P]
  predict TRACE              network outputs at the test points before and after training
                             [--precision P] [--json] [--threads N] [--allow-unexplained-steps]
  verify TRACE               the exact path kernel's reconstruction of f(x; w[S]) at the test
                             points, its residual and budget; exit 1 if a residual exceeds
                             its budget  [--precision P] [--json] [--threads N]
                             [--unstructured] [--allow-unexplained-steps]
  kernel TRACE --out DIR     write bias.npy [M,C], contributions.npy [M,N,C], coefficients.npy
                             [S,N,C], remainder.npy, outputs_final.npy and
                             kernel_step_<s>.npy [M,N,C,C] for the
                             steps in --steps LIST (e.g. 0,5,10-12 or all)
                             and audit.json  [--precision P] [--threads N] [--unstructured]
                             [--allow-unexplained-steps]
  certify TRACE              rigorous enclosures (Arb ball arithmetic) of f(x; w[0]), f(x; w[S]),
                             the reconstruction, remainder and optimizer terms and the residual
                             (every layer kind but the sequence layers, every optimizer; a replayed
                             trace is trained in balls);
                             exit 0 when every residual enclosure contains 0 and every width is
                             at most --max-width (relative; default 2^-(bits-40)), 1 otherwise or
                             when the trace is outside what certify covers (the reason is
                             printed)  [--bits P (default 256)] [--json] [--contributions]
                             [--max-width W] [--threads N]
  compare TRACE              the exact kernel against the per-step tangent kernel, the NTK at
                             initialisation, the linearised model and fixed rules along each
                             step: each reconstruction's error  [--methods LIST] [--precision P]
                             [--json]   (LIST of exact tangent_per_step ntk_init linearized
                             midpoint[:N] trapezoid[:N] gauss:N; N panels or nodes per step)
  study [--out DIR]          sweep step size, nodes, steps, width, depth and precision; write
                             runs.csv, orders.csv, report.md (fitted orders against theory)
                             and one SVG plot per sweep to DIR (default epk-study)
                             [--quick] [--sweeps LIST] [--data NAME|FILE.csv] [--threads N]
                             (LIST of step_size nodes nodes_relu steps width depth precision drift)
  check TRACE --against FILE...
                             another implementation's results (.npy files or directories in the
                             shapes epk kernel writes: outputs_final/predictions, bias,
                             reconstruction, contributions, coefficients, remainder,
                             kernel_step_<s>) against epk's exact kernel: max absolute and
                             relative error, worst entries; exit 0 within --tolerance T
                             (default 1e-10, relative to max|epk's array|; the remainder to
                             max|f(x; w[S])|), 1 outside, 2 bad input
                             [--precision P] [--threads N] [--json] [--allow-unexplained-steps]
  explain TRACE              for each test point, the training points that pushed its predicted
                             class most and most against it (their contributions c(x, x_i)),
                             and f(x; w[S]) split into f(x; w[0]), the training points, the
                             optimizer term and the remainder, each listed contribution split
                             over the layers (--no-layers: not; the split takes the full-Jacobian
                             path) and with --by-step over the steps  [--top K] [--json | --csv]
                             [--precision P] [--threads N] [--allow-unexplained-steps]
  help, --help               this text
  version, --version         the version

precision P: float | double | long-double | float128 | mpfr:BITS (2 <= BITS <= 100000)
--unstructured: full C x P Jacobian integrals contracted entry by entry instead of per-layer
  factors and dense products (the default); slow, for cross-checks (README, "Performance")
--allow-unexplained-steps: predict, verify, kernel and check audit a recorded path (params.npy)
  step by step against the declared training; a step further from it than 32 units of
  rounding (gradient clipping, a schedule left out, a layer dropped...) fails the command
  (exit 1, one line naming the step, kernel writes nothing) unless this flag is given
exit status: 0 success, 1 a check failed, 2 bad input (nothing written), 3 internal error
)";

// Progress on stderr: a rewritten line on a terminal, a few lines otherwise.
epk::progress_fn make_progress(const std::string& label) {
    const bool tty = isatty(STDERR_FILENO) != 0;
    return [label, tty, last = std::size_t{0}](std::size_t done, std::size_t total) mutable {
        if (total == 0) return;
        const std::size_t pct = done * 100 / total;
        if (tty) {
            std::fprintf(stderr, "\r  %s: step %zu/%zu", label.c_str(), done, total);
            if (done == total) std::fprintf(stderr, "\n");
        } else if (pct / 25 != last / 25 || done == total) {
            std::fprintf(stderr, "  %s: step %zu/%zu\n", label.c_str(), done, total);
        }
        std::fflush(stderr);
        last = pct;
    };
}

std::string shape_string(const epk::model_spec& m) {
    if (!m.is_mlp()) {  // version 3: the input shape, the top-level layers, the output width
        std::string s;
        for (std::size_t d : m.sample_shape()) s += (s.empty() ? "" : "x") + std::to_string(d);
        for (const auto& l : m.layers) s += " " + std::string(epk::to_string(l.kind));
        return s + " -> " + std::to_string(m.output_dim());
    }
    std::string s = std::to_string(m.input_dim);
    std::string act;
    for (const auto& l : m.layers) {
        if (l.kind == epk::layer_kind::linear) {
            s += '-';
            s += std::to_string(l.out_features);
        }
        else if (act.empty()) act = std::string(epk::to_string(l.kind));
    }
    return s + (act.empty() ? "" : " " + act);
}

std::size_t argmax_row(const epk::real_table& t, std::size_t r) {
    std::size_t best = 0;
    for (std::size_t c = 1; c < t.cols; ++c)
        if (t.values[r * t.cols + c] > t.values[r * t.cols + best]) best = c;
    return best;
}

// ---------------------------------------------------------------- train

struct built_run {
    epk::trace trace;               // with init_params (not yet trained)
    std::vector<std::int64_t> test_labels;
    bool standardised = false;      // a CSV's features scaled to mean 0, sd 1 over the training rows
};

// --optimizer and its hyper-parameters, with torch's defaults and checks (the trace
// format's, docs/trace-format.md "optimizer"): input_error naming the option otherwise.
epk::optimizer_spec optimizer_of(const args& a) {
    using kind = epk::optimizer_spec::kind;
    epk::optimizer_spec o;
    const std::string name = a.get("optimizer", "sgd");
    if (name == "sgd") o.type = kind::sgd;
    else if (name == "adam") o.type = kind::adam;
    else if (name == "adamw") o.type = kind::adamw;
    else throw epk::input_error("--optimizer", "unknown optimizer '" + name + "' (known: sgd, adam, adamw)");
    const bool sgd = o.type == kind::sgd;
    for (const char* opt : {"momentum", "dampening"})
        if (!sgd && a.has(opt)) throw epk::input_error(std::string("--") + opt, "is an sgd option, not of " + name);
    if (!sgd && a.flags.count("nesterov")) throw epk::input_error("--nesterov", "is an sgd option, not of " + name);
    for (const char* opt : {"betas", "eps"})
        if (sgd && a.has(opt)) throw epk::input_error(std::string("--") + opt, "is an adam/adamw option, not of sgd");
    if (sgd && a.flags.count("amsgrad")) throw epk::input_error("--amsgrad", "is an adam/adamw option, not of sgd");
    const auto non_negative = [&](const char* opt, double fallback) {
        const double v = a.get_real(opt, fallback);
        if (!(v >= 0)) throw epk::input_error(std::string("--") + opt, "must be >= 0, found " + a.get(opt, ""));
        return v;
    };
    o.weight_decay = non_negative("weight-decay", o.type == kind::adamw ? 0.01 : 0.0);
    if (sgd) {
        o.momentum = non_negative("momentum", 0.0);
        o.dampening = a.get_real("dampening", 0.0);
        o.nesterov = a.flags.count("nesterov") != 0;
        if (o.nesterov && !(o.momentum > 0 && o.dampening == 0))
            throw epk::input_error("--nesterov", "requires --momentum > 0 and --dampening 0");
    } else {
        if (a.has("betas")) {
            const std::string text = a.get("betas", "");
            const std::size_t comma = text.find(',');
            double b[2] = {0, 0};
            const std::string part[2] = {text.substr(0, comma), comma == std::string::npos ? "" : text.substr(comma + 1)};
            for (int k = 0; k < 2; ++k) {
                const auto [end, ec] = std::from_chars(part[k].data(), part[k].data() + part[k].size(), b[k]);
                if (comma == std::string::npos || part[k].empty() || ec != std::errc() ||
                    end != part[k].data() + part[k].size() || !(b[k] >= 0 && b[k] < 1))
                    throw epk::input_error("--betas", "'" + text + "' is not two numbers B1,B2 in [0, 1)");
            }
            o.beta1 = b[0];
            o.beta2 = b[1];
        }
        o.eps = non_negative("eps", 1e-8);
        o.amsgrad = a.flags.count("amsgrad") != 0;
    }
    return o;
}

std::string optimizer_text(const epk::optimizer_spec& o) {
    std::ostringstream s;
    if (o.type == epk::optimizer_spec::kind::sgd) {
        s << "SGD";
        if (o.momentum != 0) s << ", momentum " << o.momentum << (o.nesterov ? " (nesterov)" : "");
        if (o.momentum != 0 && o.dampening != 0) s << ", dampening " << o.dampening;
    } else {
        s << (o.type == epk::optimizer_spec::kind::adam ? "Adam" : "AdamW") << ", betas (" << o.beta1 << ", "
          << o.beta2 << "), eps " << o.eps << (o.amsgrad ? ", amsgrad" : "");
    }
    if (o.weight_decay != 0) s << ", weight decay " << o.weight_decay;
    return s.str();
}

// --model FILE.json: a layer list as in a version 3 manifest's "model" — either the list of
// layers or {"input_shape": [...], "layers": [...]} — read by the manifest reader (its rules and
// messages, naming FILE).  Without input_shape the samples are vectors of the data set's width,
// or its images when it has them (digits: [1, 8, 8]) and the first layer is a conv or a pool;
// with it, its product must be that width.
epk::model_spec model_from_file(const std::string& file, const epk::dataset& d) {
    const std::string text = epk::read_file_capped(file, std::uintmax_t{16} << 20);
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        std::string what = e.what();
        std::replace(what.begin(), what.end(), '\n', ' ');
        throw epk::input_error(file, "not valid JSON: " + what);
    }
    nlohmann::json model = j.is_array() ? nlohmann::json{{"layers", j}} : j;
    if (!model.is_object()) throw epk::input_error(file, "must be a list of layers or {\"input_shape\": ..., \"layers\": [...]}");
    if (d.vocabulary > 0 && !model.contains("input_dtype")) model["input_dtype"] = "int64";  // token ids
    if (!model.contains("input_shape") && !model.contains("input_dim")) {
        // The digits are 1×8×8 images to a model that starts with a convolution or a pool.
        bool image = false;
        if (d.image_shape.size() == 3 && model.contains("layers") && model["layers"].is_array() &&
            !model["layers"].empty() && model["layers"][0].is_object() && model["layers"][0].contains("type") &&
            model["layers"][0]["type"].is_string())
            if (const auto k = epk::parse_layer_type(model["layers"][0]["type"].get<std::string>()))
                image = *k == epk::layer_kind::conv2d || *k == epk::layer_kind::max_pool2d ||
                        *k == epk::layer_kind::avg_pool2d;
        model["input_shape"] = image ? d.image_shape : std::vector<std::size_t>{d.features};
    }
    nlohmann::json manifest = {{"format", "epk-trace"}, {"version", 3}, {"model", model},
                               {"loss", {{"type", "cross_entropy"}, {"reduction", "mean"}}},
                               {"optimizer", {{"type", "sgd"}, {"learning_rate", 0.1}, {"steps", 1}}}};
    epk::trace t;
    epk::parse_manifest(manifest.dump(), file, t);
    if (t.model.input_dim != d.features)
        throw epk::input_error(file, "input_shape " + epk::shape_string(t.model.sample_shape()) + " has " +
                                         std::to_string(t.model.input_dim) + " entries but the data have " +
                                         std::to_string(d.features) + " features");
    if (d.vocabulary > 0 && !t.model.tokens)
        throw epk::input_error(file, "the data are token ids (" + d.name + "): the model must have input_dtype int64");
    if (d.vocabulary == 0 && t.model.tokens)
        throw epk::input_error(file, "the model reads token ids (input_dtype int64) but the data " + d.name +
                                         " are real features (token data: --data modadd:P)");
    if (d.vocabulary > 0 && t.model.layers[0].num_embeddings < d.vocabulary)
        throw epk::input_error(file, "layers[0].num_embeddings is " + std::to_string(t.model.layers[0].num_embeddings) +
                                         " but the data's tokens run to " + std::to_string(d.vocabulary - 1) +
                                         " (vocabulary " + std::to_string(d.vocabulary) + ")");
    if (t.model.output_dim() != d.classes)
        throw epk::input_error(file, "the model's output has " + std::to_string(t.model.output_dim()) +
                                         " entries but the data have " + std::to_string(d.classes) + " classes");
    return t.model;
}

built_run build_training_trace(const args& a) {
    const std::string data = a.get("data", "digits");
    const bool modadd = data.rfind("modadd:", 0) == 0;
    epk::dataset d = modadd                                  ? epk::parse_modadd_argument(data)
                     : (data == "digits" || data == "iris") ? epk::embedded_dataset(data)
                                                             : epk::read_csv_dataset(fs::path(data));
    const std::uint64_t seed = a.get_count("seed", 0, 0, UINT64_MAX);
    // modadd: the first round(FRACTION·P²) shuffled pairs train (at least 1, at most P² − 1);
    // the test points are the rest, the first --n-test of them (default 100).
    const std::size_t split =
        std::clamp<std::size_t>(static_cast<std::size_t>(std::llround(d.train_fraction * static_cast<double>(d.rows))), 1,
                                d.rows - 1);
    if (modadd && a.has("n-train"))
        throw epk::input_error("--n-train", "modadd's split is its FRACTION (--data modadd:P:FRACTION)");
    if (modadd && !a.has("model"))
        throw epk::input_error("--data " + data, "token data need --model FILE.json (a model that begins with an "
                                                 "embedding, e.g. examples/models/modadd-transformer.json)");
    const std::size_t n_test = modadd ? a.get_count("n-test", std::min<std::size_t>(100, d.rows - split), 0, d.rows - split)
                                      : a.get_count("n-test", std::min<std::size_t>(100, d.rows / 5), 0, d.rows - 1);
    const std::size_t n_train =
        modadd ? split : a.get_count("n-train", std::min<std::size_t>(500, d.rows - n_test), 1, d.rows - n_test);
    const auto hidden = a.get_count_list("hidden", {32}, 1, 1u << 16);
    const std::string act_name = a.get("activation", "tanh");
    const auto act = epk::parse_layer_kind(act_name);
    if (!act || *act == epk::layer_kind::linear)
        throw epk::input_error("--activation", "unknown activation '" + act_name +
                                                   "' (known: relu leaky_relu tanh sigmoid softplus gelu identity)");
    const double slope = a.get_real("negative-slope", 0.01);
    const std::string loss_name = a.get("loss", "cross_entropy");
    const auto loss = epk::parse_loss_kind(loss_name);
    if (!loss) throw epk::input_error("--loss", "unknown loss '" + loss_name + "' (known: cross_entropy, mse)");
    const std::string red_name = a.get("reduction", "mean");
    const auto red = epk::parse_reduction_kind(red_name);
    if (!red) throw epk::input_error("--reduction", "unknown reduction '" + red_name + "' (known: mean, sum)");
    const std::size_t steps = a.get_count("steps", 100, 0, 10'000'000);
    const double lr = a.get_real("lr", 0.1);
    const double decay = a.get_real("lr-decay", 1.0);
    const std::size_t batch = a.get_count("batch-size", 0, 0, n_train);
    if (d.classes < 2 && *loss == epk::loss_kind::cross_entropy)
        throw epk::input_error(data, "cross_entropy needs at least two classes");

    // Rows: a seeded Fisher–Yates shuffle, then n_train for training, n_test held out.
    std::vector<std::size_t> order(d.rows);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::mt19937_64 rng(seed ^ 0x5eed5a1175ULL);
    for (std::size_t i = d.rows; i-- > 1;) std::swap(order[i], order[std::uniform_int_distribution<std::size_t>(0, i)(rng)]);

    // A CSV's features are standardised with the training rows' mean and standard deviation
    // (population; a constant feature is only centred), unless --no-scale; the embedded sets
    // are kept as they are (digits already in [0, 1]).
    const bool csv = !modadd && !(data == "digits" || data == "iris");
    if (csv && !a.flags.count("no-scale")) {
        for (std::size_t j = 0; j < d.features; ++j) {
            double mean = 0, var = 0;
            for (std::size_t k = 0; k < n_train; ++k) mean += d.x[order[k] * d.features + j];
            mean /= static_cast<double>(n_train);
            for (std::size_t k = 0; k < n_train; ++k) {
                const double e = d.x[order[k] * d.features + j] - mean;
                var += e * e;
            }
            const double sd = std::sqrt(var / static_cast<double>(n_train));
            const double div = sd > 0 ? sd : 1.0;
            for (std::size_t r = 0; r < d.rows; ++r) d.x[r * d.features + j] = (d.x[r * d.features + j] - mean) / div;
        }
    }
    built_run run;
    run.standardised = csv && !a.flags.count("no-scale");
    epk::trace& t = run.trace;
    if (a.has("model")) {
        for (const char* mlp_only : {"hidden", "activation", "negative-slope"})
            if (a.has(mlp_only))
                throw epk::input_error(std::string("--") + mlp_only, "is an MLP option; --model gives the layers");
        if (a.flags.count("no-bias")) throw epk::input_error("--no-bias", "is an MLP option; --model gives the layers");
        t.model = model_from_file(a.get("model", ""), d);
    } else {
        std::vector<std::size_t> hidden_sz(hidden.begin(), hidden.end());
        t.model = epk::make_mlp(d.features, hidden_sz, d.classes, *act, slope, !a.flags.count("no-bias"));
    }
    std::vector<std::size_t> sample = t.model.sample_shape();
    const auto shape_of = [&](std::size_t rows) {
        std::vector<std::size_t> shape{rows};
        shape.insert(shape.end(), sample.begin(), sample.end());
        return shape;
    };
    t.loss = {*loss, *red};
    t.optimizer.learning_rate = lr;
    t.optimizer.steps = steps;
    t.optimizer.rule = optimizer_of(a);
    auto rows_of = [&](std::size_t from, std::size_t count) {
        std::vector<double> v;
        for (std::size_t k = from; k < from + count; ++k)
            for (std::size_t j = 0; j < d.features; ++j) v.push_back(d.x[order[k] * d.features + j]);
        return v;
    };
    const auto x_array = [&](std::size_t from, std::size_t count) {
        if (d.vocabulary == 0) return epk::make_real_array(epk::npy_dtype::f8, shape_of(count), rows_of(from, count));
        const std::vector<double> v = rows_of(from, count);
        return epk::make_int_array(shape_of(count), std::vector<std::int64_t>(v.begin(), v.end()));
    };
    t.x_train = x_array(0, n_train);
    std::vector<std::int64_t> labels;
    for (std::size_t k = 0; k < n_train; ++k) labels.push_back(d.labels[order[k]]);
    if (*loss == epk::loss_kind::cross_entropy) {
        t.y_train = epk::make_int_array({n_train}, labels);
    } else {
        std::vector<double> onehot(n_train * d.classes, 0.0);
        for (std::size_t k = 0; k < n_train; ++k) onehot[k * d.classes + static_cast<std::size_t>(labels[k])] = 1.0;
        t.y_train = epk::make_real_array(epk::npy_dtype::f8, {n_train, d.classes}, std::move(onehot));
    }
    if (n_test > 0) {
        t.x_test = x_array(n_train, n_test);
        for (std::size_t k = n_train; k < n_train + n_test; ++k) run.test_labels.push_back(d.labels[order[k]]);
    }
    if (batch > 0 && batch < n_train) {
        const auto b = epk::make_minibatches(n_train, batch, steps, seed ^ 0xba7c4e5ULL);
        std::vector<std::int64_t> flat;
        for (const auto& row : b)
            for (std::size_t i : row) flat.push_back(static_cast<std::int64_t>(i));
        t.batches = epk::make_int_array({steps, batch}, std::move(flat));
    }
    if (a.has("lr-decay")) {
        std::vector<double> rates(steps);
        for (std::size_t s = 0; s < steps; ++s) rates[s] = lr * std::pow(decay, static_cast<double>(s));
        t.learning_rates = epk::make_real_array(epk::npy_dtype::f8, {steps}, std::move(rates));
    }
    t.init_params = epk::make_real_array(epk::npy_dtype::f8, {t.model.parameter_count()},
                                         epk::torch_default_init(t.model, seed));
    return run;
}

std::string accuracy_text(const epk::real_table& out, const std::vector<std::int64_t>& labels) {
    std::size_t hit = 0;
    for (std::size_t r = 0; r < out.rows; ++r) hit += static_cast<std::int64_t>(argmax_row(out, r)) == labels[r];
    return std::to_string(hit) + "/" + std::to_string(out.rows);
}

int cmd_train(int argc, char** argv) {
    const args a = parse_args(argc, argv,
                              {"out", "data", "model", "n-train", "n-test", "hidden", "activation", "negative-slope", "loss",
                               "reduction", "steps", "lr", "lr-decay", "batch-size", "seed", "precision", "optimizer",
                               "momentum", "dampening", "weight-decay", "betas", "eps"},
                              {"no-bias", "init-only", "nesterov", "amsgrad", "no-scale"}, 0, 0);
    if (!a.has("out")) throw epk::input_error("epk train", "--out DIR is required");
    const fs::path out = a.get("out", "");
    const epk::precision p = epk::parse_precision(a.get("precision", "double"));
    built_run run = build_training_trace(a);
    epk::validate_trace(run.trace, out.string());
    epk::check_trace_output_dir(out);

    const epk::evaluation ev = epk::evaluate_trace(run.trace, p, make_progress("training in " + p.name()));
    epk::trace written = run.trace;
    if (!a.flags.count("init-only")) written = epk::replay_trace(run.trace, p);
    epk::write_trace(out, written);

    const epk::trace& t = run.trace;
    std::cout << "trained " << shape_string(t.model) << " (P = " << t.model.parameter_count() << ") with "
              << epk::to_string(t.loss.kind) << "/" << epk::to_string(t.loss.reduction) << ", " << t.steps()
              << " steps of " << optimizer_text(t.optimizer.rule) << " (lr " << t.optimizer.learning_rate << ", "
              << (t.batches ? "batch " + std::to_string(t.batches->shape[1]) : std::string("full batch")) << ") in "
              << p.name() << "\n";
    if (run.standardised)
        std::cout << "  features standardised: mean 0, standard deviation 1 over the training rows (--no-scale: raw)\n";
    if (!ev.losses.empty())
        std::cout << "  training loss " << ev.losses.front() << " -> " << ev.losses.back() << " (last step)\n";
    if (t.x_test && !run.test_labels.empty())
        std::cout << "  held-out accuracy " << accuracy_text(ev.outputs_final, run.test_labels) << "\n";
    std::cout << "wrote " << out.string() << " ("
              << (a.flags.count("init-only") ? "init_params.npy" : "params.npy [" + std::to_string(t.steps() + 1) +
                                                                       ", " +
                                                                       std::to_string(t.model.parameter_count()) + "]")
              << ")\n";
    return 0;
}

// ---------------------------------------------------------------- replay

int cmd_replay(int argc, char** argv) {
    const args a = parse_args(argc, argv, {"out", "precision"}, {}, 1, 1);
    if (!a.has("out")) throw epk::input_error("epk replay", "--out DIR is required");
    const fs::path out = a.get("out", "");
    const epk::precision p = epk::parse_precision(a.get("precision", "double"));
    const epk::trace t = epk::read_trace(a.positional[0]);
    epk::check_memory(t, p, {}, false, a.positional[0]);
    epk::check_trace_output_dir(out);
    const epk::trace r = epk::replay_trace(t, p, nullptr, make_progress("replaying in " + p.name()));
    if (t.params) {
        double worst = 0;
        for (std::size_t s = 0; s <= t.steps(); ++s) {  // row by row: params.npy may stay on disk
            const std::vector<double> a = epk::real_rows(*t.params, s, 1), b = epk::real_rows(*r.params, s, 1);
            for (std::size_t k = 0; k < a.size(); ++k) worst = std::max(worst, std::abs(a[k] - b[k]));
        }
        std::cout << "max |replayed - recorded| over all " << t.steps() + 1 << " rows: " << worst << "\n";
    }
    epk::write_trace(out, r);
    std::cout << "wrote " << out.string() << " (replayed in " << p.name() << ")\n";
    return 0;
}

// ---------------------------------------------------------------- predict

// ---------------------------------------------------------------- the audit's verdict

using epk::audit_rounding_units;

// Strict commands (verify, kernel, check, predict): a recorded path that is not the declared
// training is a failed check (exit 1) unless --allow-unexplained-steps; either way one line on
// stderr names the worst step.  Returns true when the command must fail.
constexpr const char* allow_unexplained = "allow-unexplained-steps";
bool unexplained_fails(const args& a, const epk::kernel_report& k, const std::string& name) {
    if (epk::judge_audit(k).explained) return false;
    const bool allowed = a.flags.count(allow_unexplained) != 0;
    std::fprintf(stderr, "epk %s: %s%s\n", a.command.c_str(), allowed ? "note: " : "FAILED: ",
                 (epk::unexplained_steps_message(name, k) +
                  (allowed ? " (accepted: --allow-unexplained-steps)" : "; --allow-unexplained-steps accepts it"))
                     .c_str());
    return !allowed;
}

// One line for the text output: "recorded-path audit: 0.62 units (limit 32) at step 3: at the rounding level".
std::string audit_summary_line(const epk::kernel_report& k) {
    const epk::audit_verdict v = epk::judge_audit(k);
    char buf[256];
    std::snprintf(buf, sizeof buf, "recorded-path audit (%s path): max remainder %.3g units u_rec*max|w| at step %zu (limit %g): %s",
                  k.path_precision.c_str(), v.units, v.worst_step, audit_rounding_units,
                  v.explained ? "the recorded steps are the declared training" : "NOT the declared training");
    return buf;
}

// ---------------------------------------------------------------- predict

int cmd_predict(int argc, char** argv) {
    const args a = parse_args(argc, argv, {"precision", "threads"}, {"json", allow_unexplained}, 1, 1);
    const epk::precision p = epk::parse_precision(a.get("precision", "double"));
    const std::size_t threads = a.get_count("threads", 0, 0, 1024);
    const epk::trace t = epk::read_trace(a.positional[0]);
    epk::check_memory(t, p, {}, false, a.positional[0]);
    const bool json = a.flags.count("json") != 0;
    const epk::evaluation ev = epk::evaluate_trace(t, p, json ? epk::progress_fn{} : make_progress("replaying in " + p.name()));
    // A recorded path is audited (the training side of every step): its last row is only the
    // declared network's prediction if the rows are the declared training.  A replayed trace is
    // the declared training by construction.
    std::optional<epk::kernel_report> audit;
    if (t.params) audit = epk::audit_trace(t, p, threads, json ? epk::progress_fn{} : make_progress("auditing the recorded path"));
    const bool ok = !audit || epk::judge_audit(*audit).explained || a.flags.count(allow_unexplained) != 0;
    if (json) {
        std::cout << epk::predict_json(ev, audit ? &*audit : nullptr, p, a.flags.count(allow_unexplained) != 0).dump(2)
                  << "\n";
        std::cout.flush();
        if (audit) unexplained_fails(a, *audit, a.positional[0]);
        return ok ? 0 : 1;
    }
    std::cout << "trace " << a.positional[0] << ": " << shape_string(t.model) << ", " << ev.steps << " steps, "
              << (ev.recorded_path ? "recorded path (params.npy)" : "replayed from init_params.npy") << "\n"
              << "precision " << ev.precision_name << " (u = " << ev.unit_roundoff_value << "), test points "
              << ev.test_points << "\n";
    if (audit) std::cout << audit_summary_line(*audit) << "\n";
    std::cout << "\n";
    std::printf("%6s  %9s  %s\n", "point", "argmax", "f(x; w[S])");
    for (std::size_t r = 0; r < ev.outputs_final.rows; ++r) {
        std::printf("%6zu  %9zu ", r, argmax_row(ev.outputs_final, r));
        for (std::size_t c = 0; c < ev.outputs_final.cols; ++c)
            std::printf(" %+.6e", ev.outputs_final.values[r * ev.outputs_final.cols + c]);
        std::printf("\n");
    }
    std::fflush(stdout);
    if (audit) unexplained_fails(a, *audit, a.positional[0]);
    return ok ? 0 : 1;
}

// ---------------------------------------------------------------- verify

// "3", "0,5,9", "10-19", "all" → ascending unique steps < S.
std::vector<std::size_t> parse_steps(const std::string& text, std::size_t steps) {
    std::vector<std::size_t> out;
    auto number = [&](const std::string& item) {
        std::size_t v = 0;
        const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
        if (item.empty() || ec != std::errc() || end != item.data() + item.size())
            throw epk::input_error("--steps", "'" + text + "': expected a list like 0,5,10-12 or 'all'");
        if (v >= steps)
            throw epk::input_error("--steps", "step " + item + " is out of range (the trace has " + std::to_string(steps) +
                                                  " steps, numbered from 0)");
        return v;
    };
    if (text == "all") {
        for (std::size_t s = 0; s < steps; ++s) out.push_back(s);
        return out;
    }
    std::stringstream ss(text);
    std::string item;
    while (std::getline(ss, item, ',')) {
        const auto dash = item.find('-');
        if (dash == std::string::npos) {
            out.push_back(number(item));
        } else {
            const std::size_t lo = number(item.substr(0, dash)), hi = number(item.substr(dash + 1));
            if (hi < lo) throw epk::input_error("--steps", "'" + item + "': a range must be ascending");
            for (std::size_t s = lo; s <= hi; ++s) out.push_back(s);
        }
    }
    if (out.empty() || text.back() == ',') throw epk::input_error("--steps", "'" + text + "': empty list item");
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

// max_c |v[r][c]|
double row_max_abs(const std::vector<double>& v, std::size_t r, std::size_t cols) {
    double m = 0;
    for (std::size_t c = 0; c < cols; ++c) m = std::max(m, std::abs(v[r * cols + c]));
    return m;
}

void print_audit(const epk::kernel_report& k) {
    if (k.optimizer_term.rows == 0)
        std::printf("recorded-path audit (%s path, u_rec = %.3g): step remainder r_s = dw_s - sum_i J_i^T a_i\n",
                    k.path_precision.c_str(), k.recording_unit_roundoff);
    else
        std::printf("recorded-path audit (%s path, u_rec = %.3g): step remainder r_s = dw_s - (%s's update from "
                    "epk's gradients and state)\n",
                    k.path_precision.c_str(), k.recording_unit_roundoff, k.optimizer.c_str());
    std::printf("  max |r_s| = %.3e (%.3g of the step) = %.2f u_rec*max|w[s+1]|: %s\n", k.remainder_max_abs,
                k.remainder_max_rel, k.deviation_max_over_recording_u,
                k.deviation_max_over_recording_u <= audit_rounding_units
                    ? "at the rounding level of the recorded path"
                    : "ABOVE the rounding level of the recorded path (the recorded steps are not plain SGD steps "
                      "of this loss in this precision)");
    std::printf("  %5s %12s %12s %12s %14s\n", "step", "max|r_s|", "|r_s|_2", "/u_rec|w|", "max|I_s r_s|");
    for (std::size_t s : k.worst_steps) {
        const auto& a = k.audit[s];
        std::printf("  %5zu %12.3e %12.3e %12.2f %14.3e\n", s, a.remainder_max_abs, a.remainder_norm2, a.over_recording_u,
                    a.contribution_max_abs);
    }
    // The remainder term's total effect on each test point (max over outputs; all of them in --json).
    const std::size_t shown = std::min<std::size_t>(k.remainder_term.rows, 8);
    std::printf("  remainder term sum_s I_s r_s at each test point (max over outputs):");
    for (std::size_t r = 0; r < shown; ++r) {
        double m = 0;
        for (std::size_t c = 0; c < k.remainder_term.cols; ++c)
            m = std::max(m, std::abs(k.remainder_term.values[r * k.remainder_term.cols + c]));
        std::printf(" %.2e", m);
    }
    std::printf("%s\n", shown < k.remainder_term.rows ? " ..." : "");
    std::printf("  reconstruction misses f(x; w[S]) by %.3e with the remainder term, %.3e without it\n",
                k.residual_max_abs, k.kernel_residual_max_abs);
    if (k.optimizer_term.rows > 0) {
        double m = 0;
        for (double v : k.optimizer_term.values) m = std::max(m, std::abs(v));
        std::printf("  optimizer term sum_s I_s w_s (weight decay, state before step 0): max %.3e (proofs-notes/007)\n", m);
    }
    std::printf("\n");
}

void print_verify_table(const epk::kernel_report& k) {
    const std::size_t C = k.classes;
    std::printf("%5s %5s  %-24s %-24s %10s %8s %9s %10s %6s %7s\n", "point", "class", "f_c(x; w[S])", "reconstruction",
                "max|res|", "/u", "/budget", "quad.est", "kinks", "J evals");
    for (std::size_t r = 0; r < k.outputs_final.rows; ++r) {
        const std::size_t c = argmax_row(k.outputs_final, r), e = r * C + c;
        double res = 0, ratio = 0;
        for (std::size_t d = 0; d < C; ++d) {
            res = std::max(res, std::abs(k.residual.values[r * C + d]));
            ratio = std::max(ratio, std::abs(k.residual.values[r * C + d]) / k.budget[r * C + d]);
        }
        std::printf("%5zu %5zu  %-24.17g %-24.17g %10.3e %8.1f %9.2e %10.2e %6zu %7zu\n", r, c, k.outputs_final.values[e],
                    k.reconstruction.values[e], res, res / k.unit_roundoff_value, ratio,
                    row_max_abs(k.quadrature_estimate, r, C), k.breakpoints[r], k.evaluations[r]);
    }
}

int cmd_verify(int argc, char** argv) {
    const args a = parse_args(argc, argv, {"precision", "threads"}, {"json", "unstructured", allow_unexplained}, 1, 1);
    const epk::precision p = epk::parse_precision(a.get("precision", "double"));
    epk::kernel_options o;
    o.threads = a.get_count("threads", 0, 0, 1024);
    o.structured = a.flags.count("unstructured") == 0;
    o.contributions = false;  // the reconstruction and the audit need no per-point contributions
    const epk::trace t = epk::read_trace(a.positional[0]);
    epk::check_memory(t, p, o, true, a.positional[0]);
    const bool json = a.flags.count("json") != 0;
    const epk::kernel_report k =
        epk::compute_kernel(t, p, o, json ? epk::progress_fn{} : make_progress("exact path kernel in " + p.name()));
    if (!epk::is_output_rank()) return 0;  // under mpirun: rank 0 reports
    const bool explained = epk::judge_audit(k).explained;
    // ok: every residual within its budget, and the recorded path is the declared training
    // (or --allow-unexplained-steps).
    const bool ok = k.ok && (explained || a.flags.count(allow_unexplained) != 0);
    if (json) {
        std::cout << epk::verify_json(k, p, a.flags.count(allow_unexplained) != 0).dump(2) << "\n";
        std::cout.flush();
        unexplained_fails(a, k, a.positional[0]);
        return ok ? 0 : 1;
    }
    std::cout << "trace " << a.positional[0] << ": " << shape_string(t.model) << ", " << k.steps << " steps, "
              << (k.recorded_path ? "recorded path (params.npy)" : "replayed from init_params.npy") << ", optimizer "
              << k.optimizer << "\n"
              << "precision " << k.precision_name << " (u = " << k.unit_roundoff_value << "), test points "
              << k.test_points << "\n\n";
    print_audit(k);
    print_verify_table(k);
    std::printf("\nmax |f(x; w[S]) - reconstruction| = %.3e = %.1f u (point %zu, output %zu); max residual/budget = %.3g\n",
                k.residual_max_abs, k.residual_max_over_u, k.worst_point, k.worst_output, k.residual_max_over_budget);
    if (!k.quadrature_converged) std::printf("note: some segment did not meet the quadrature tolerance (its estimate is in the budget)\n");
    std::printf("%s\n", !k.ok ? "FAILED: some residual exceeds its budget"
                         : !ok ? "FAILED: the recorded path is not the declared training (the audit above)"
                         : k.optimizer_term.rows > 0 ? "OK: every residual is within its budget (proofs-notes/004, 007)"
                                                     : "OK: every residual is within its budget (proofs-notes/004)");
    std::fflush(stdout);
    unexplained_fails(a, k, a.positional[0]);
    return ok ? 0 : 1;
}

// ---------------------------------------------------------------- certify

nlohmann::json ball_json(const epk::ball_table& t, std::size_t e) {
    return {{"mid", t.mid[e]}, {"rad", t.rad[e]}};
}

// [rows][cols] of {"mid", "rad"}; contributions: [M][N][C] (rows = M·N).
nlohmann::json table_json(const epk::ball_table& t, std::size_t per_point = 1) {
    nlohmann::json out = nlohmann::json::array();
    for (std::size_t r = 0; r < t.rows; r += per_point) {
        nlohmann::json point = nlohmann::json::array();
        for (std::size_t i = r; i < r + per_point; ++i) {
            nlohmann::json row = nlohmann::json::array();
            for (std::size_t c = 0; c < t.cols; ++c) row.push_back(ball_json(t, i * t.cols + c));
            point.push_back(std::move(row));
        }
        out.push_back(per_point == 1 ? point[0] : point);
    }
    return out;
}

int cmd_certify(int argc, char** argv) {
    const args a = parse_args(argc, argv, {"bits", "threads", "max-width"}, {"json", "contributions"}, 1, 1);
    epk::certify_options o;
    o.bits = static_cast<long>(a.get_count("bits", 256, 64, 100000));
    o.threads = a.get_count("threads", 0, 0, 1024);
    o.contributions = a.flags.count("contributions") != 0;
    if (a.has("max-width")) {
        o.max_width = a.get_real("max-width", 0);
        if (!(o.max_width > 0)) throw epk::input_error("--max-width", "must be a positive number");
    }
    if (!epk::certify_available())
        throw epk::usage_error("epk certify: this build has no Arb (install libflint-arb-dev and rebuild)");
    const epk::trace t = epk::read_trace(a.positional[0]);
    if (const double need = epk::certify_memory_estimate(t, o), limit = epk::memory_limit_bytes(); need > limit) {
        char msg[320];
        std::snprintf(msg, sizeof msg,
                      "certify would need about %.3g GiB of balls at %ld bits (limit %.3g GiB): fewer test points, "
                      "training points or bits, no --contributions, or set EPK_MEMORY_LIMIT_GIB",
                      need / (1024.0 * 1024 * 1024), o.bits, limit / (1024.0 * 1024 * 1024));
        throw epk::input_error(a.positional[0], msg);
    }
    const bool json = a.flags.count("json") != 0;
    const epk::certify_report r =
        epk::certify_trace(t, o, json ? epk::progress_fn{} : make_progress("certify at " + std::to_string(o.bits) + " bits"));
    if (json) {
        nlohmann::json j;
        j["trace"] = a.positional[0];
        j["bits"] = r.bits;
        j["certified"] = r.certified;
        j["supported"] = r.supported;
        j["reason"] = r.reason;
        j["seconds"] = r.seconds;
        if (r.supported) {
            j["path"] = r.path_note;
            j["optimizer"] = r.optimizer;
            j["test_points"] = r.test_points_name;
            j["max_width"] = r.max_width;
            j["widest_relative_width"] = r.widest;
            j["widest_quantity"] = r.widest_quantity;
            j["pieces"] = r.pieces;
            j["pattern_changes"] = r.kinks;
            j["enclosed_intervals"] = r.enclosed_intervals;
            j["gauss_nodes"] = r.smooth_nodes;
            j["outputs_initial"] = table_json(r.outputs_initial);
            j["outputs_final"] = table_json(r.outputs_final);
            j["reconstruction"] = table_json(r.reconstruction);
            j["optimizer_term"] = table_json(r.optimizer_term);
            j["remainder_term"] = table_json(r.remainder_term);
            j["residual"] = table_json(r.residual);
            if (o.contributions) j["contributions"] = table_json(r.contributions, r.n_train);
        }
        std::cout << j.dump(2) << "\n";
        return r.certified ? 0 : 1;
    }
    std::cout << "trace " << a.positional[0] << ": " << shape_string(t.model) << ", " << r.steps << " steps, optimizer "
              << r.optimizer << "\n";
    if (!r.supported) {
        std::cout << "NOT CERTIFIED: " << r.reason << "\n";
        return 1;
    }
    std::cout << r.path_note << "\n"
              << "ball arithmetic (Arb) at " << r.bits << " bits, test points " << r.test_points_name << "\n\n";
    std::printf("%-17s %14s %14s\n", "enclosure", "max radius", "contains 0");
    auto row = [&](const char* name, const epk::ball_table& tb, bool zero) {
        double mr = 0;
        for (double v : tb.rad_value) mr = std::max(mr, v);
        std::printf("%-17s %14.3e %14s\n", name, mr, zero ? (tb.contains_zero_everywhere ? "yes (all)" : "NO") : "");
    };
    row("outputs_initial", r.outputs_initial, false);
    row("outputs_final", r.outputs_final, false);
    row("reconstruction", r.reconstruction, false);
    row("remainder_term", r.remainder_term, false);
    row("optimizer_term", r.optimizer_term, false);
    row("residual", r.residual, true);
    if (o.contributions) row("contributions", r.contributions, false);
    const std::size_t m = r.widest_point;
    std::printf("\nwidest relative width %.3e (%s, test point %zu); asked for <= %.3e\n", r.widest,
                r.widest_quantity.c_str(), m, r.max_width);
    if (r.smooth_nodes > 0)
        std::printf("segments: %zu pieces, %zu Gauss nodes with analytic error bounds, %zu pattern changes isolated, "
                    "%zu intervals enclosed; %.1f s\n",
                    r.pieces, r.smooth_nodes, r.kinks, r.enclosed_intervals, r.seconds);
    else
        std::printf("segments: %zu pieces integrated exactly, %zu pattern changes isolated, %zu intervals enclosed; %.1f s\n",
                    r.pieces, r.kinks, r.enclosed_intervals, r.seconds);
    std::cout << "test point " << m << ", output 0: f(x; w[S]) in [" << r.outputs_final.mid[m * r.classes] << " +/- "
              << r.outputs_final.rad[m * r.classes] << "]\n"
              << "                  residual in [" << r.residual.mid[m * r.classes] << " +/- "
              << r.residual.rad[m * r.classes] << "]\n";
    std::cout << (r.certified ? "CERTIFIED: every residual enclosure contains 0 and every width is within --max-width "
                                "(proofs-notes/011)"
                              : "NOT CERTIFIED: " + r.reason)
              << "\n";
    return r.certified ? 0 : 1;
}

// ---------------------------------------------------------------- kernel

int cmd_kernel(int argc, char** argv) {
    const args a = parse_args(argc, argv, {"out", "steps", "precision", "threads"}, {"unstructured", allow_unexplained}, 1, 1);
    if (!a.has("out")) throw epk::input_error("epk kernel", "--out DIR is required");
    const fs::path out = a.get("out", "");
    const epk::precision p = epk::parse_precision(a.get("precision", "double"));
    const epk::trace t = epk::read_trace(a.positional[0]);
    epk::kernel_options o;
    o.threads = a.get_count("threads", 0, 0, 1024);
    o.structured = a.flags.count("unstructured") == 0;
    o.coefficients = true;
    if (a.has("steps")) {
        if (!t.optimizer.plain())
            throw epk::input_error("--steps", "per-step kernels K_s are defined for plain SGD; " + a.positional[0] +
                                                  " was trained with " + epk::describe_optimizer(t) +
                                                  ", whose updates pair each step with earlier steps' gradients "
                                                  "(proofs-notes/007 §4): use contributions.npy");
        o.kernel_steps = parse_steps(a.get("steps", ""), t.steps());
    }
    const std::size_t m = epk::test_point_count(t);
    const std::size_t n = t.n_train(), c = t.model.output_dim();
    epk::check_memory(t, p, o, true, a.positional[0]);  // before any work
    epk::check_trace_output_dir(out);
    const epk::kernel_report k = epk::compute_kernel(t, p, o, make_progress("exact path kernel in " + p.name()));
    if (!epk::is_output_rank()) return 0;  // under mpirun: rank 0 writes
    // A path that is not the declared training gets no kernel written (its arrays would
    // describe a training that did not happen), unless --allow-unexplained-steps.
    if (unexplained_fails(a, k, a.positional[0])) return 1;

    std::vector<std::pair<std::string, std::vector<unsigned char>>> files;
    auto add = [&](const std::string& name, std::vector<std::size_t> shape, std::vector<double> v) {
        files.emplace_back(name, epk::serialize_npy(epk::make_real_array(epk::npy_dtype::f8, std::move(shape), std::move(v))));
    };
    add("bias.npy", {m, c}, k.outputs_initial.values);
    add("contributions.npy", {m, n, c}, k.contributions);
    add("remainder.npy", {m, c}, k.remainder_term.values);
    if (k.optimizer_term.rows > 0) add("optimizer_term.npy", {m, c}, k.optimizer_term.values);
    add("outputs_final.npy", {m, c}, k.outputs_final.values);
    add("coefficients.npy", {t.steps(), n, c}, k.coefficients);
    for (const auto& [s, kern] : k.step_kernels) add("kernel_step_" + std::to_string(s) + ".npy", {m, n, c, c}, kern);
    {
        nlohmann::json summary;
        summary["trace"] = a.positional[0];
        summary["precision"] = k.precision_name;
        summary["residual_max_abs"] = k.residual_max_abs;
        summary["residual_within_budget"] = k.ok;
        summary["optimizer"] = k.optimizer;
        summary["audit"] = audit_json(k);
        const std::string text = summary.dump(2) + "\n";
        files.emplace_back("audit.json", std::vector<unsigned char>(text.begin(), text.end()));
    }
    epk::write_directory(out, files);
    std::cout << "exact path kernel of " << a.positional[0] << " in " << k.precision_name << ": " << m
              << " test points x " << n << " training points, " << k.steps << " steps\n"
              << "  max |f(x; w[S]) - reconstruction| = " << k.residual_max_abs << " (" << k.residual_max_over_u
              << " u), " << (k.ok ? "within" : "OUTSIDE") << " budget\n"
              << "wrote " << out.string() << ": bias.npy [" << m << ", " << c << "], contributions.npy [" << m << ", "
              << n << ", " << c << "], coefficients.npy [" << t.steps() << ", " << n << ", " << c
              << "], remainder.npy, outputs_final.npy" << (k.optimizer_term.rows > 0 ? ", optimizer_term.npy" : "");
    for (const auto& sk : k.step_kernels) std::cout << ", kernel_step_" << sk.first << ".npy";
    std::cout << ", audit.json\n" << audit_summary_line(k) << "\n";
    return k.ok ? 0 : 1;
}

// ---------------------------------------------------------------- explain

int cmd_explain(int argc, char** argv) {
    const args a = parse_args(argc, argv, {"top", "precision", "threads"},
                              {"json", "csv", "unstructured", "no-layers", "by-step", allow_unexplained}, 1, 1);
    if (a.flags.count("json") && a.flags.count("csv")) throw epk::input_error("--csv", "give --json or --csv, not both");
    const std::size_t top = a.get_count("top", 5, 1, 1u << 20);
    const epk::precision p = epk::parse_precision(a.get("precision", "double"));
    const epk::trace t = epk::read_trace(a.positional[0]);
    epk::kernel_options o;
    o.threads = a.get_count("threads", 0, 0, 1024);
    o.structured = a.flags.count("unstructured") == 0;
    o.split_layers = a.flags.count("no-layers") == 0;
    o.split_steps = a.flags.count("by-step") != 0;
    epk::check_memory(t, p, o, true, a.positional[0]);
    const bool quiet = a.flags.count("json") || a.flags.count("csv");
    const epk::kernel_report k =
        epk::compute_kernel(t, p, o, quiet ? epk::progress_fn{} : make_progress("exact path kernel in " + p.name()));
    if (unexplained_fails(a, k, a.positional[0])) return 1;
    const nlohmann::json j = epk::explain_json(k, t, top);
    if (a.flags.count("json")) {
        std::cout << j.dump(2) << "\n";
    } else if (a.flags.count("csv")) {
        std::cout << "test_point,predicted_class,kind,rank,train_index,train_label,contribution\n";
        for (const auto& pt : j["points"]) {
            for (const char* kind : {"proponent", "opponent"}) {
                std::size_t rank = 0;
                for (const auto& e : pt[std::string(kind) + "s"]) {
                    std::printf("%zu,%zu,%s,%zu,%zu,%s,%.17g\n", pt["test_point"].get<std::size_t>(),
                                pt["predicted_class"].get<std::size_t>(), kind, ++rank, e["train_index"].get<std::size_t>(),
                                e.contains("label") ? std::to_string(e["label"].get<std::int64_t>()).c_str() : "",
                                e["contribution"].get<double>());
                }
            }
        }
    } else {
        std::cout << "trace " << a.positional[0] << ": " << shape_string(t.model) << ", " << k.steps << " steps, "
                  << k.n_train << " training points, optimizer " << k.optimizer << "; precision " << k.precision_name
                  << ", max |f(x; w[S]) - reconstruction| = " << k.residual_max_abs << "\n"
                  << "f_c(x; w[S]) = f_c(x; w[0]) + sum_i c(x, x_i)_c + optimizer term + remainder, c the predicted class;"
                  << " the " << top << " training points pushing c most and most against it\n";
        for (const auto& pt : j["points"]) {
            std::printf("\ntest point %zu: class %zu, f = %.6g = %.6g (f(x; w[0])) %+.6g (training points) %+.3g (optimizer) "
                        "%+.2g (remainder)\n",
                        pt["test_point"].get<std::size_t>(), pt["predicted_class"].get<std::size_t>(), pt["output"].get<double>(),
                        pt["bias"].get<double>(), pt["training_points"].get<double>(), pt["optimizer_term"].get<double>(),
                        pt["remainder"].get<double>());
            for (const char* kind : {"proponents", "opponents"}) {
                std::printf("  %-11s", kind);
                if (pt[kind].empty()) std::printf(" (none)");
                for (const auto& e : pt[kind]) {
                    std::printf(" #%zu", e["train_index"].get<std::size_t>());
                    if (e.contains("label")) std::printf(" (y=%lld)", static_cast<long long>(e["label"].get<std::int64_t>()));
                    std::printf(" %+.3g", e["contribution"].get<double>());
                }
                std::printf("\n");
                for (const auto& e : pt[kind]) {  // the splits, one line per listed point
                    if (e.contains("layers")) {
                        std::printf("    #%-5zu by layer:", e["train_index"].get<std::size_t>());
                        for (const auto& l : e["layers"])
                            std::printf(" %s %+.3g", l["layer"].get<std::string>().c_str(), l["contribution"].get<double>());
                        std::printf("\n");
                    }
                    if (e.contains("steps")) {
                        std::printf("    #%-5zu by step: ", e["train_index"].get<std::size_t>());
                        for (const auto& share : e["steps"]) std::printf(" %+.2g", share.get<double>());
                        std::printf("\n");
                    }
                }
            }
        }
    }
    return k.ok ? 0 : 1;
}

// ---------------------------------------------------------------- compare

int cmd_compare(int argc, char** argv) {
    const args a = parse_args(argc, argv, {"precision", "methods"}, {"json"}, 1, 1);
    const epk::precision p = epk::parse_precision(a.get("precision", "double"));
    const std::vector<std::string> methods =
        a.has("methods") ? epk::parse_methods(a.get("methods", "")) : epk::default_methods();
    const epk::trace t = epk::read_trace(a.positional[0]);
    {
        epk::kernel_options o;
        o.contributions = false;
        epk::check_memory(t, p, o, true, a.positional[0]);
    }
    const bool json = a.flags.count("json") != 0;
    const epk::comparison cmp = epk::compare_trace(t, p, methods, json ? epk::progress_fn{} : make_progress("methods"));
    if (!epk::is_output_rank()) return 0;  // under mpirun: rank 0 reports
    if (json) {
        nlohmann::json j;
        j["precision"] = cmp.precision_name;
        j["unit_roundoff"] = cmp.unit_roundoff_value;
        j["unit_roundoff_decimal"] = cmp.unit_roundoff;
        j["steps"] = cmp.steps;
        j["path"] = cmp.recorded_path ? "recorded" : "replayed";
        j["test_points"] = cmp.test_points;
        j["outputs_final"] = table_json(cmp.outputs_final);
        nlohmann::json ms = nlohmann::json::object();
        for (const auto& m : cmp.methods)
            ms[m.name] = {{"reconstruction", table_json(m.reconstruction)}, {"error_max_abs", m.error_max_abs},
                          {"seconds", m.seconds}};
        j["methods"] = ms;
        std::cout << j.dump(2) << "\n";
        return 0;
    }
    double scale = 0;
    for (double v : cmp.outputs_final.values) scale = std::max(scale, std::abs(v));
    std::cout << "trace " << a.positional[0] << ": " << shape_string(t.model) << ", " << cmp.steps << " steps, "
              << (cmp.recorded_path ? "recorded path" : "replayed") << "; precision " << cmp.precision_name
              << "; test points " << cmp.test_points << " (max |f(x; w[S])| = " << scale << ")\n\n";
    std::printf("%-18s %14s %14s %9s\n", "method", "max|f - rec|", "relative", "seconds");
    for (const auto& m : cmp.methods)
        std::printf("%-18s %14.3e %14.3e %9.2f\n", m.name.c_str(), m.error_max_abs,
                    scale > 0 ? m.error_max_abs / scale : 0.0, m.seconds);
    return 0;
}

// ---------------------------------------------------------------- check

int cmd_check(int argc, char** argv) {
    // --against takes every following argument up to the next option (and may be repeated).
    std::vector<std::string> against;
    std::vector<char*> rest{argv[0], argv[1]};
    bool any_against = false;
    for (int i = 2; i < argc; ++i) {
        const std::string s = argv[i];
        if (s == "--against") {
            any_against = true;
            while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) against.emplace_back(argv[++i]);
        } else if (s.rfind("--against=", 0) == 0) {
            any_against = true;
            against.push_back(s.substr(10));
        } else {
            rest.push_back(argv[i]);
        }
    }
    const args a = parse_args(static_cast<int>(rest.size()), rest.data(), {"precision", "tolerance", "threads"},
                              {"json", allow_unexplained}, 1, 1);
    if (!any_against || against.empty()) throw epk::input_error("--against", "give the .npy files or directories to check");
    const epk::precision p = epk::parse_precision(a.get("precision", "double"));
    const double tolerance = a.get_real("tolerance", 1e-10);
    if (tolerance < 0) throw epk::input_error("--tolerance", "must be >= 0");
    const std::size_t threads = a.get_count("threads", 0, 0, 1024);
    const epk::trace t = epk::read_trace(a.positional[0]);
    const std::vector<epk::check_file> files = epk::load_check_files(against);
    const bool json = a.flags.count("json") != 0;
    const epk::check_report r =
        epk::check_against(t, a.positional[0], p, files, tolerance, threads, json ? epk::progress_fn{} : make_progress("exact path kernel in " + p.name()));
    if (!epk::is_output_rank()) return 0;  // under mpirun: rank 0 reports
    // The files may agree with epk and still describe a training that did not happen.
    const bool explained = epk::judge_audit(r.reference).explained;
    const bool ok = r.ok && (explained || a.flags.count(allow_unexplained) != 0);
    if (json) {
        std::cout << epk::check_json(r, a.positional[0], tolerance, a.flags.count(allow_unexplained) != 0).dump(2) << "\n";
        std::cout.flush();
        unexplained_fails(a, r.reference, a.positional[0]);
        return ok ? 0 : 1;
    }
    std::cout << "epk check " << a.positional[0] << ": " << r.results.size() << " file(s) against the exact path kernel in "
              << r.reference.precision_name << " (tolerance " << tolerance << ", relative to max|epk's array|; the remainder to max|f(x; w[S])|)\n"
              << "reference: max |f(x; w[S]) - reconstruction| = " << r.reference.residual_max_abs << ", "
              << (r.reference.ok ? "within its budget" : "OUTSIDE its budget (the reference itself is not verified)")
              << "\n" << audit_summary_line(r.reference) << "\n\n";
    int width = 20;
    for (const auto& c : r.results) width = std::max(width, static_cast<int>(c.path.size()));
    std::printf("%-*s %-16s %12s %12s %12s\n", width, "file", "quantity", "max|diff|", "max|epk|", "relative");
    for (const auto& c : r.results) {
        std::printf("%-*s %-16s %12.3e %12.3e %12.3e  %s\n", width, c.path.c_str(), c.quantity.c_str(), c.max_abs_error,
                    c.reference_max_abs, c.max_relative_error, c.within ? "ok" : "OUTSIDE");
        if (!c.within)
            for (const auto& w : c.worst) {
                std::string idx;
                for (std::size_t d = 0; d < w.index.size(); ++d) {
                    if (d > 0) idx += ',';
                    idx += std::to_string(w.index[d]);
                }
                std::printf("    [%s]  theirs %.17g  epk %.17g  diff %.3e\n", idx.c_str(), w.theirs, w.reference,
                            std::abs(w.theirs - w.reference));
            }
    }
    std::printf("%s\n", !r.ok ? "FAILED: some array is outside the tolerance"
                         : !ok ? "FAILED: the arrays match, but the recorded path is not the declared training"
                               : "OK: every array within tolerance");
    std::fflush(stdout);
    unexplained_fails(a, r.reference, a.positional[0]);
    return ok ? 0 : 1;
}

// ---------------------------------------------------------------- study

int cmd_study(int argc, char** argv) {
    const args a = parse_args(argc, argv, {"out", "sweeps", "data", "threads"}, {"quick"}, 0, 0);
    epk::study_options o;
    o.quick = a.flags.count("quick") != 0;
    o.data = a.get("data", "digits");
    if (a.has("sweeps")) o.sweeps = epk::parse_sweeps(a.get("sweeps", ""));
    o.threads = a.get_count("threads", 0, 0, 1024);
    const fs::path out = a.get("out", "epk-study");
    epk::check_trace_output_dir(out);  // before minutes of work
    // The header goes out with the first progress line, once the data set has been read.
    bool started = false;
    const epk::study_result r = epk::run_study(o, [&](const std::string& line) {
        if (!started)
            std::fprintf(stderr, "epk study: %s sweeps on %s, writing %s\n", o.quick ? "quick" : "default", o.data.c_str(),
                         out.string().c_str());
        started = true;
        std::fprintf(stderr, "  %s\n", line.c_str());
        std::fflush(stderr);
    });
    epk::write_study(r, o, out);
    std::printf("%-11s %-17s %-9s %10s %-10s %-16s %s\n", "sweep", "method", "law", "measured", "theory", "band", "within");
    for (const epk::study_order& q : r.orders) {
        char band[48];
        std::snprintf(band, sizeof band, "[%.3g, %.3g]", q.low, q.high);
        std::printf("%-11s %-17s %-9s %10.3g %-10s %-16s %s\n", q.sweep.c_str(), q.method.c_str(), q.law.c_str(),
                    q.measured, q.theory_text.c_str(), band, q.within ? "yes" : "NO");
    }
    std::printf("\n%zu runs in %.1f s; wrote %s/{runs.csv, orders.csv, report.md, *.svg}\n", r.rows.size(), r.seconds,
                out.string().c_str());
    return 0;
}

// ---------------------------------------------------------------- demo

int cmd_demo(int argc, char** argv) {
    const args a = parse_args(argc, argv, {"precision"}, {"cnn"}, 0, 0);
    const epk::precision hi = epk::parse_precision(a.get("precision", "mpfr:256"));
    const epk::precision lo = epk::parse_precision("double");
    const bool cnn = a.flags.count("cnn") != 0;
    // The demo's run: digits, 64-16-10 tanh, 200 training digits, 30 SGD steps of batch 20; or
    // (--cnn) a small ReLU CNN with a residual block on 1x8x8 digits, 100 digits, 40 steps.
    std::string model_file;
    if (cnn) {
        char name[] = "/tmp/epk-demo-cnn-XXXXXX";
        const int fd = mkstemp(name);
        if (fd < 0) throw std::runtime_error("demo: cannot create a temporary file");
        const std::string spec =
            R"({"input_shape": [1, 8, 8], "layers": [)"
            R"({"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}, {"type": "relu"},)"
            R"({"type": "max_pool2d", "kernel_size": 2},)"
            R"({"type": "residual", "body": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},)"
            R"({"type": "relu"}], "shortcut": []},)"
            R"({"type": "flatten"}, {"type": "linear", "out_features": 10}]})";
        const bool written = write(fd, spec.data(), spec.size()) == static_cast<ssize_t>(spec.size());
        close(fd);
        model_file = name;
        if (!written) throw std::runtime_error("demo: cannot write a temporary file");
    }
    std::vector<const char*> demo_argv{"epk", "train", "--n-test", "100", "--seed", "1", "--out", "-"};
    if (cnn) {
        for (const char* o : {"--model", model_file.c_str(), "--n-train", "100", "--steps", "40", "--lr", "1",
                              "--batch-size", "20"})
            demo_argv.push_back(o);
    } else {
        for (const char* o : {"--n-train", "200", "--hidden", "16", "--activation", "tanh", "--steps", "30", "--lr",
                              "0.5", "--batch-size", "20"})
            demo_argv.push_back(o);
    }
    const args da = parse_args(static_cast<int>(demo_argv.size()), const_cast<char**>(demo_argv.data()),
                               {"out", "model", "n-train", "n-test", "hidden", "activation", "steps", "lr", "batch-size",
                                "seed"},
                               {}, 0, 0);
    const built_run run = build_training_trace(da);
    if (cnn) std::remove(model_file.c_str());
    const epk::trace& t = run.trace;
    const std::size_t shown = cnn ? 2 : 4;  // held-out digits whose kernel expansion is computed
    std::cout << "epk demo: " << (cnn ? "a CNN with a residual block" : "an MLP")
              << " trained by SGD on the embedded 8x8 digits, written exactly as a kernel machine\n"
              << "  f(x; w[S]) = f(x; w[0]) + sum_s sum_i K_s(x, x_i) a_{i,s}   (exact path kernel)\n"
              << "  model " << shape_string(t.model) << " (P = " << t.model.parameter_count()
              << "), cross_entropy/mean, " << t.n_train() << " training digits, " << t.steps()
              << " steps of batch " << t.batches->shape[1] << ", lr " << t.optimizer.learning_rate << "\n\n";

    const epk::evaluation d = epk::evaluate_trace(t, lo);
    std::cout << "training in double: loss " << d.losses.front() << " -> " << d.losses.back()
              << ", held-out accuracy " << accuracy_text(d.outputs_final, run.test_labels) << "\n\n";

    // The kernel at the first few held-out digits, in double and in `hi`.
    epk::trace kt = t;
    const std::size_t width = t.model.input_dim;
    std::vector<double> rows(t.x_test->real.begin(), t.x_test->real.begin() + static_cast<std::ptrdiff_t>(shown * width));
    std::vector<std::size_t> shape = t.x_test->shape;
    shape[0] = shown;
    kt.x_test = epk::make_real_array(epk::npy_dtype::f8, shape, std::move(rows));
    auto secs = [](auto x, auto y) { return std::chrono::duration<double>(y - x).count(); };
    const auto t0 = std::chrono::steady_clock::now();
    const epk::kernel_report kd = epk::compute_kernel(kt, lo, {}, make_progress("exact path kernel in " + lo.name()));
    const auto t1 = std::chrono::steady_clock::now();
    const epk::kernel_report kh = epk::compute_kernel(kt, hi, {}, make_progress("exact path kernel in " + hi.name()));
    const auto t2 = std::chrono::steady_clock::now();

    std::printf("\nthe network's output for the predicted class c, and its kernel reconstruction\n");
    std::printf("%-10s %5s %5s %4s  %-22s %-22s %10s %7s %8s\n", "precision", "digit", "label", "c", "f_c(x; w[S])",
                "reconstruction", "max|res|", "res/u", "seconds");
    for (const auto* k : {&kd, &kh}) {
        for (std::size_t r = 0; r < shown; ++r) {
            const std::size_t c = argmax_row(k->outputs_final, r), e = r * k->classes + c;
            double res = 0;
            for (std::size_t q = 0; q < k->classes; ++q) res = std::max(res, std::abs(k->residual.values[r * k->classes + q]));
            std::printf("%-10s %5zu %5lld %4zu  %-22.16f %-22.16f %10.2e %7.1f %8s\n", r == 0 ? k->precision_name.c_str() : "",
                        r, static_cast<long long>(run.test_labels[r]), c, k->outputs_final.values[e],
                        k->reconstruction.values[e], res, res / k->unit_roundoff_value,
                        r == 0 ? (std::to_string(secs(k == &kd ? t0 : t1, k == &kd ? t1 : t2)).substr(0, 5)).c_str() : "");
        }
    }
    double dout = 0;
    for (std::size_t e = 0; e < kd.outputs_final.values.size(); ++e)
        dout = std::max(dout, std::abs(kd.outputs_final.values[e] - kh.outputs_final.values[e]));
    std::printf("\n%s: max |f(x) - reconstruction| = %.2e (%.1f u); %s: %.2e (%.1f u); both %s\n",
                kd.precision_name.c_str(), kd.residual_max_abs, kd.residual_max_over_u, kh.precision_name.c_str(),
                kh.residual_max_abs, kh.residual_max_over_u,
                kd.ok && kh.ok ? "within their budgets" : "NOT within their budgets");
    std::printf("the double run itself differs from the %s run by %.2e in f (rounding along %zu steps)\n",
                kh.precision_name.c_str(), dout, t.steps());
    std::printf("f(x) in %s, all digits: %s\n", kh.precision_name.c_str(),
                kh.outputs_final.decimal[argmax_row(kh.outputs_final, 0)].c_str());

    // Which training digits made the prediction: c(x, x_i)_c = sum_s K_s(x, x_i) a_{i,s}, class c.
    std::printf("\nthe training digits #i (label) that contribute most to each predicted class, c(x, x_i) in %s:\n",
                kh.precision_name.c_str());
    const std::size_t n = kh.n_train, C = kh.classes;
    for (std::size_t r = 0; r < shown; ++r) {
        const std::size_t c = argmax_row(kh.outputs_final, r);
        std::vector<std::size_t> idx(n);
        std::iota(idx.begin(), idx.end(), std::size_t{0});
        auto contrib = [&](std::size_t i) { return kh.contributions[(r * n + i) * C + c]; };
        std::stable_sort(idx.begin(), idx.end(), [&](std::size_t x, std::size_t y) { return contrib(x) > contrib(y); });
        std::printf("  digit %zu (label %lld): f_%zu = %+.3f = bias %+.3f, plus %+.3f from %zu training digits; top:", r,
                    static_cast<long long>(run.test_labels[r]), c, kh.outputs_final.values[r * C + c],
                    kh.outputs_initial.values[r * C + c],
                    kh.outputs_final.values[r * C + c] - kh.outputs_initial.values[r * C + c], n);
        for (std::size_t k = 0; k < 3; ++k)
            std::printf(" #%zu (%lld) %+.3f%s", idx[k], static_cast<long long>(t.y_train.integer[idx[k]]), contrib(idx[k]),
                        k < 2 ? "," : "");
        std::printf("; most against: #%zu (%lld) %+.3f\n", idx.back(),
                    static_cast<long long>(t.y_train.integer[idx.back()]), contrib(idx.back()));
    }
    std::printf("\nnext: epk verify / epk kernel on your own trace (README), proofs-notes/004 for the guarantees\n");
    return kd.ok && kh.ok ? 0 : 1;
}

int run(int argc, char** argv) {
    const std::string cmd = argc > 1 ? argv[1] : "";
    if (cmd.empty() || cmd == "help" || cmd == "--help" || cmd == "-h") {
        std::cout << help_text;
        return cmd.empty() ? 2 : 0;
    }
    if (cmd == "version" || cmd == "--version") {
        std::cout << version_text << "\n";
        return 0;
    }
    if (const epk::work_split* split = epk::active_work_split(); split != nullptr && split->distributed() &&
        cmd != "verify" && cmd != "kernel" && cmd != "check" && cmd != "compare")
        throw epk::input_error("epk " + cmd, "runs in one process; under mpirun with more than one rank, use verify, "
                                             "kernel, check or compare");
    if (cmd == "train") return cmd_train(argc, argv);
    if (cmd == "replay") return cmd_replay(argc, argv);
    if (cmd == "predict") return cmd_predict(argc, argv);
    if (cmd == "demo") return cmd_demo(argc, argv);
    if (cmd == "verify") return cmd_verify(argc, argv);
    if (cmd == "certify") return cmd_certify(argc, argv);
    if (cmd == "kernel") return cmd_kernel(argc, argv);
    if (cmd == "compare") return cmd_compare(argc, argv);
    if (cmd == "study") return cmd_study(argc, argv);
    if (cmd == "check") return cmd_check(argc, argv);
    if (cmd == "explain") return cmd_explain(argc, argv);
    throw epk::input_error("'" + cmd + "'", "unknown command (see epk help)");
}

std::string one_line(std::string s) {
    std::replace(s.begin(), s.end(), '\n', ' ');
    return s;
}

}  // namespace

int main(int argc, char** argv) {
    epk::keep_freed_memory();
#ifdef EPK_HAVE_MPI
    epk::cli::mpi_session mpi(&argc, &argv);
#endif
    // One line on stderr; under mpirun with several ranks, naming the rank, and the job ends.
    auto fail = [&](const std::string& line, int code) {
#ifdef EPK_HAVE_MPI
        if (mpi.ranks() > 1) mpi.fail(line, code);
#endif
        std::cerr << "epk: " << line << "\n";
        return code;
    };
    try {
        const int rc = run(argc, argv);
        return epk::is_output_rank() ? rc : 0;  // rank 0's verdict is the job's
    } catch (const epk::input_error& e) {
        return fail("error: " + one_line(e.what()), 2);
    } catch (const epk::usage_error& e) {
        return fail("error: " + one_line(e.what()), 2);
    } catch (const std::bad_alloc&) {
        return fail("error: out of memory", 3);
    } catch (const std::exception& e) {
        return fail("internal error: " + one_line(e.what()), 3);
    }
}

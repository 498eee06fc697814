// src/trace.cpp — training traces, spec/trace-format.md version 1 (see epk/trace.hpp).
//
// Contract: parse_manifest accepts exactly what version 1 defines and rejects
// by name every layer type, loss, optimizer and optimizer/loss/layer field it
// does not implement; validate_trace checks every array against the manifest;
// read_trace = parse + load + validate; write_trace validates, serializes in
// memory, writes into a staging directory beside the target and renames it
// into place, so that a failure leaves nothing behind.  Only input_error and
// usage_error escape (filesystem calls use error_code overloads).
#include "epk/trace.hpp"
#include "epk/file_io.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <string_view>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>
#include <system_error>
#include <utility>
#include <vector>

#include "epk/error.hpp"

namespace epk {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr std::uintmax_t max_manifest_bytes = std::uintmax_t{16} << 20;  // 16 MiB

std::string one_line(std::string s) {
    for (char& c : s)
        if (c == '\n' || c == '\r') c = ' ';
    return s;
}


// ---------------------------------------------------------------- manifest

class manifest_reader {
public:
    explicit manifest_reader(const std::string& name) : name_(name) {}

    [[noreturn]] void fail(const std::string& rule) const { throw input_error(name_, rule); }

    const json& member(const json& obj, const char* key, const std::string& where) const {
        const auto it = obj.find(key);
        if (it == obj.end()) fail("missing field '" + where + key + "'");
        return *it;
    }
    const json& object(const json& obj, const char* key, const std::string& where) const {
        const json& v = member(obj, key, where);
        if (!v.is_object()) fail("'" + where + key + "' must be a JSON object");
        return v;
    }
    std::string string(const json& v, const std::string& what) const {
        if (!v.is_string()) fail("'" + what + "' must be a string");
        return v.get<std::string>();
    }
    // A JSON integer (not 64.0) >= lo, as size_t.
    std::size_t integer(const json& v, const std::string& what, std::size_t lo) const {
        if (v.is_number_unsigned()) {
            const auto u = v.get<std::uint64_t>();
            if (u < lo) fail("'" + what + "' must be >= " + std::to_string(lo) + ", found " + std::to_string(u));
            return static_cast<std::size_t>(u);
        }
        if (v.is_number_integer())  // negative (non-negative ones are number_unsigned)
            fail("'" + what + "' must be >= " + std::to_string(lo) + ", found " + std::to_string(v.get<std::int64_t>()));
        fail("'" + what + "' must be an integer");
    }
    double finite_number(const json& v, const std::string& what) const {
        if (!v.is_number()) fail("'" + what + "' must be a number");
        const double d = v.get<double>();  // integers convert exactly up to 2^53, else correctly rounded
        if (!std::isfinite(d)) fail("'" + what + "' must be finite");
        return d;
    }
    bool boolean(const json& v, const std::string& what) const {
        if (!v.is_boolean()) fail("'" + what + "' must be true or false");
        return v.get<bool>();
    }

private:
    const std::string& name_;
};

model_spec parse_model(const manifest_reader& r, const json& m) {
    model_spec model;
    model.input_dim = r.integer(r.member(m, "input_dim", "model."), "model.input_dim", 1);
    const json& layers = r.member(m, "layers", "model.");
    if (!layers.is_array()) r.fail("'model.layers' must be an array");
    if (layers.empty()) r.fail("'model.layers' must not be empty");

    std::size_t width = model.input_dim;
    std::size_t params = 0;
    for (std::size_t k = 0; k < layers.size(); ++k) {
        const std::string where = "layers[" + std::to_string(k) + "]";
        const json& l = layers[k];
        if (!l.is_object()) r.fail(where + " must be a JSON object");
        const std::string type = r.string(r.member(l, "type", where + "."), where + ".type");
        const auto kind = parse_layer_kind(type);
        if (!kind) r.fail("unknown layer type '" + type + "' (" + where + ")");
        layer_spec spec;
        spec.kind = *kind;
        for (const auto& [key, value] : l.items()) {
            const std::string field = where + "." + key;
            if (key == "type") continue;
            if (*kind == layer_kind::linear && key == "out_features") {
                spec.out_features = r.integer(value, field, 1);
            } else if (*kind == layer_kind::linear && key == "bias") {
                spec.bias = r.boolean(value, field);
            } else if (*kind == layer_kind::linear && key == "in_features") {
                const std::size_t in = r.integer(value, field, 1);
                if (in != width)
                    r.fail("'" + field + "' is " + std::to_string(in) + " but the width flowing into it is " +
                           std::to_string(width));
            } else if (*kind == layer_kind::leaky_relu && key == "negative_slope") {
                spec.negative_slope = r.finite_number(value, field);
            } else if (*kind == layer_kind::gelu && key == "approximate") {
                const std::string a = r.string(value, field);
                if (a != "none")
                    r.fail("gelu approximate '" + a + "' is not implemented in trace format version 1 (" + where +
                           ")");
            } else if (*kind != layer_kind::linear && key == "inplace") {
                r.boolean(value, field);  // no effect on the values
            } else {
                r.fail("unknown field '" + key + "' in " + where + " (" + type + ")");
            }
        }
        if (*kind == layer_kind::linear) {
            if (spec.out_features == 0) r.fail("missing field '" + where + ".out_features'");
            std::size_t block = 0;
            if (__builtin_mul_overflow(spec.out_features, width, &block) ||
                (spec.bias && __builtin_add_overflow(block, spec.out_features, &block)) ||
                __builtin_add_overflow(params, block, &params) || params > (std::size_t{1} << 53))
                r.fail("model has too many parameters");
            width = spec.out_features;
        }
        model.layers.push_back(spec);
    }
    if (model.linear_layer_count() == 0) r.fail("model needs at least one linear layer");
    return model;
}

loss_spec parse_loss(const manifest_reader& r, const json& l) {
    loss_spec loss;
    const std::string type = r.string(r.member(l, "type", "loss."), "loss.type");
    const auto kind = parse_loss_kind(type);
    if (!kind) r.fail("unknown loss '" + type + "' (allowed: cross_entropy, mse)");
    loss.kind = *kind;
    for (const auto& [key, value] : l.items()) {
        if (key == "type") continue;
        if (key == "reduction") {
            const std::string red = r.string(value, "loss.reduction");
            const auto rk = parse_reduction_kind(red);
            if (!rk) r.fail("unknown loss reduction '" + red + "' (allowed: mean, sum)");
            loss.reduction = *rk;
        } else {
            r.fail("loss field '" + key + "' is not implemented in trace format version 1");
        }
    }
    return loss;
}

sgd_spec parse_optimizer(const manifest_reader& r, const json& o) {
    sgd_spec opt;
    opt.learning_rate = std::numeric_limits<double>::quiet_NaN();
    const std::string type = r.string(r.member(o, "type", "optimizer."), "optimizer.type");
    if (type != "sgd") r.fail("optimizer '" + type + "' is not implemented in trace format version 1");
    bool have_steps = false;
    for (const auto& [key, value] : o.items()) {
        if (key == "type") continue;
        if (key == "steps") {
            opt.steps = r.integer(value, "optimizer.steps", 0);
            have_steps = true;
        } else if (key == "learning_rate") {
            opt.learning_rate = r.finite_number(value, "optimizer.learning_rate");
        } else {
            r.fail("optimizer field '" + key + "' is not implemented in trace format version 1");
        }
    }
    if (!have_steps) r.fail("missing field 'optimizer.steps'");
    return opt;
}

// ---------------------------------------------------------------- validation

class array_checker {
public:
    array_checker(const npy_array& a, std::string name) : a_(a), name_(std::move(name)) {
        // An in-memory array whose payload disagrees with its shape is a bug of
        // the caller, not bad input.
        std::size_t n = 1;
        for (std::size_t d : a.shape)
            if (__builtin_mul_overflow(n, d, &n)) throw usage_error(name_ + ": shape overflows");
        if (!a.source && (a.is_real() ? a.real.size() : a.integer.size()) != n)
            throw usage_error(name_ + ": payload size does not match the shape");
    }
    [[noreturn]] void fail(const std::string& rule) const { throw input_error(name_, rule); }

    void require_real() const {
        if (!a_.is_real()) fail("dtype must be <f4 or <f8, found " + std::string(to_string(a_.dtype)));
    }
    void require_dtype(npy_dtype d) const {
        if (a_.dtype != d)
            fail("dtype must be " + std::string(to_string(d)) + ", found " + std::string(to_string(a_.dtype)));
    }
    void require_shape(const std::vector<std::size_t>& expected, const std::string& why) const {
        if (a_.shape != expected)
            fail("shape " + shape_text(a_.shape) + " disagrees with " + why + ": expected " + shape_text(expected));
    }
    void require_ndim(std::size_t n, const std::string& what) const {
        if (a_.shape.size() != n)
            fail("expected a " + std::to_string(n) + "-d array " + what + ", found shape " + shape_text(a_.shape));
    }
    void require_finite() const {
        if (a_.source) {  // on disk: row blocks of at most 1 Mi values
            std::size_t width = a_.size() / std::max<std::size_t>(1, a_.shape.empty() ? 1 : a_.shape[0]);
            const std::size_t rows = a_.shape.empty() ? 1 : a_.shape[0];
            const std::size_t step = std::max<std::size_t>(1, (std::size_t{1} << 20) / std::max<std::size_t>(1, width));
            for (std::size_t r = 0; r < rows; r += step) {
                const std::vector<double> v = real_rows(a_, r, std::min(step, rows - r));
                for (std::size_t i = 0; i < v.size(); ++i)
                    if (!std::isfinite(v[i])) fail("NaN or infinity at element " + std::to_string(r * width + i));
            }
            return;
        }
        for (std::size_t i = 0; i < a_.real.size(); ++i)
            if (!std::isfinite(a_.real[i])) fail("NaN or infinity at element " + std::to_string(i));
    }

private:
    const npy_array& a_;
    std::string name_;
};

std::string file_in(const std::string& dir_name, const char* file) { return (fs::path(dir_name) / file).string(); }

// ---------------------------------------------------------------- writing

std::string unique_suffix() {
    static std::atomic<unsigned> counter{0};
    const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    return std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
           std::to_string(static_cast<unsigned long long>(now) & 0xffffffffULL);
}

// Errors name `shown` (the file's final place), not the staging path.
void write_bytes(const fs::path& file, const std::string& shown, const char* data, std::size_t size) {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    if (!out) throw input_error(shown, "cannot write");
    out.write(data, static_cast<std::streamsize>(size));
    out.close();
    if (!out) throw input_error(shown, "cannot write");
}

fs::path target_of(const fs::path& dir) { return dir.has_filename() ? dir : dir.parent_path(); }  // "out/" -> "out"
fs::path parent_of(const fs::path& target) {
    const fs::path parent = target.parent_path();
    return parent.empty() ? fs::path(".") : parent;
}

}  // namespace

double trace::learning_rate(std::size_t s) const {
    if (learning_rates) {
        if (s >= learning_rates->real.size()) throw usage_error("trace::learning_rate: step out of range");
        return learning_rates->real[s];
    }
    return optimizer.learning_rate;
}

void parse_manifest(const std::string& text, const std::string& name, trace& out) {
    json doc;
    try {
        doc = json::parse(text);
    } catch (const json::exception& e) {
        throw input_error(name, "not valid JSON: " + one_line(e.what()));
    }
    const manifest_reader r(name);
    if (!doc.is_object()) r.fail("the manifest must be a JSON object");
    const json& format = r.member(doc, "format", "");
    if (!format.is_string() || format.get<std::string>() != "epk-trace")
        r.fail("'format' must be \"epk-trace\", found " + one_line(format.dump()));
    const json& version = r.member(doc, "version", "");
    if (!version.is_number_integer()) r.fail("'version' must be an integer, found " + one_line(version.dump()));
    if (!(version.is_number_unsigned() && version.get<std::uint64_t>() == 1))
        r.fail("version " + version.dump() + " is not supported (this reader implements version 1)");

    model_spec model = parse_model(r, r.object(doc, "model", ""));
    loss_spec loss = parse_loss(r, r.object(doc, "loss", ""));
    sgd_spec opt = parse_optimizer(r, r.object(doc, "optimizer", ""));
    out.model = std::move(model);
    out.loss = loss;
    out.optimizer = opt;
}

std::string manifest_text(const trace& t) {
    using ojson = nlohmann::ordered_json;
    ojson layers = ojson::array();
    for (const auto& l : t.model.layers) {
        ojson j;
        j["type"] = std::string(to_string(l.kind));
        if (l.kind == layer_kind::linear) {
            j["out_features"] = l.out_features;
            j["bias"] = l.bias;
        } else if (l.kind == layer_kind::leaky_relu) {
            if (!std::isfinite(l.negative_slope)) throw usage_error("manifest_text: negative_slope is not finite");
            j["negative_slope"] = l.negative_slope;
        }
        layers.push_back(std::move(j));
    }
    ojson doc;
    doc["format"] = "epk-trace";
    doc["version"] = 1;
    doc["model"]["input_dim"] = t.model.input_dim;
    doc["model"]["layers"] = std::move(layers);
    doc["loss"]["type"] = std::string(to_string(t.loss.kind));
    doc["loss"]["reduction"] = std::string(to_string(t.loss.reduction));
    doc["optimizer"]["type"] = "sgd";
    if (!std::isnan(t.optimizer.learning_rate)) {  // NaN = absent (learning_rates.npy carries the rates)
        if (!std::isfinite(t.optimizer.learning_rate))
            throw usage_error("manifest_text: learning_rate is not finite");
        doc["optimizer"]["learning_rate"] = t.optimizer.learning_rate;
    }
    doc["optimizer"]["steps"] = t.optimizer.steps;
    return doc.dump(2) + "\n";
}

void validate_trace(const trace& t, const std::string& dir_name) {
    const std::string manifest = file_in(dir_name, "manifest.json");
    const model_spec& m = t.model;

    // The manifest half (a trace built in memory has not been through parse_manifest).
    if (m.input_dim == 0) throw input_error(manifest, "'model.input_dim' must be >= 1");
    if (m.layers.empty()) throw input_error(manifest, "'model.layers' must not be empty");
    {
        std::size_t width = m.input_dim, p = 0;
        for (std::size_t k = 0; k < m.layers.size(); ++k) {
            const auto& l = m.layers[k];
            if (l.kind == layer_kind::leaky_relu && !std::isfinite(l.negative_slope))
                throw input_error(manifest, "'layers[" + std::to_string(k) + "].negative_slope' must be finite");
            if (l.kind != layer_kind::linear) continue;
            if (l.out_features == 0)
                throw input_error(manifest, "'layers[" + std::to_string(k) + "].out_features' must be >= 1");
            std::size_t block = 0;
            if (__builtin_mul_overflow(l.out_features, width, &block) ||
                (l.bias && __builtin_add_overflow(block, l.out_features, &block)) ||
                __builtin_add_overflow(p, block, &p) || p > (std::size_t{1} << 53))
                throw input_error(manifest, "model has too many parameters");
            width = l.out_features;
        }
    }
    if (m.linear_layer_count() == 0) throw input_error(manifest, "model needs at least one linear layer");
    if (!std::isnan(t.optimizer.learning_rate) && !std::isfinite(t.optimizer.learning_rate))
        throw input_error(manifest, "'optimizer.learning_rate' must be finite");
    if (t.optimizer.steps == std::numeric_limits<std::size_t>::max())
        throw input_error(manifest, "'optimizer.steps' is too large");

    const std::size_t D = m.input_dim, C = m.output_dim(), P = m.parameter_count(), S = t.optimizer.steps;

    // x_train [N, D]
    const array_checker xc(t.x_train, file_in(dir_name, "x_train.npy"));
    xc.require_real();
    xc.require_ndim(2, "[N, D]");
    const std::size_t N = t.x_train.shape[0];
    if (N == 0) xc.fail("N must be >= 1, found shape " + shape_text(t.x_train.shape));
    if (t.x_train.shape[1] != D)
        xc.fail("shape " + shape_text(t.x_train.shape) + " disagrees with the manifest: model.input_dim is " +
                std::to_string(D));
    xc.require_finite();

    // y_train
    const array_checker yc(t.y_train, file_in(dir_name, "y_train.npy"));
    if (t.loss.kind == loss_kind::cross_entropy) {
        if (t.y_train.dtype != npy_dtype::i8)
            yc.fail("cross_entropy labels must have dtype <i8, found " + std::string(to_string(t.y_train.dtype)));
        yc.require_shape({N}, "x_train.npy (N labels)");
        for (std::size_t i = 0; i < N; ++i) {
            const std::int64_t y = t.y_train.integer[i];
            if (y < 0 || static_cast<std::uint64_t>(y) >= C)
                yc.fail("label " + std::to_string(y) + " at element " + std::to_string(i) + " is out of range [0, " +
                        std::to_string(C) + ")");
        }
    } else {
        if (!t.y_train.is_real())
            yc.fail("mse targets must have dtype <f4 or <f8, found " + std::string(to_string(t.y_train.dtype)));
        if (!(C == 1 && t.y_train.shape == std::vector<std::size_t>{N}))
            yc.require_shape({N, C}, "the manifest and x_train.npy ([N, C] targets)");
        yc.require_finite();
    }

    // params [S+1, P] / init_params [P]
    if (!t.params && !t.init_params)
        throw input_error(file_in(dir_name, "params.npy"),
                          "missing required file (a trace needs params.npy or init_params.npy)");
    if (t.params) {
        const array_checker pc(*t.params, file_in(dir_name, "params.npy"));
        pc.require_real();
        pc.require_shape({S + 1, P}, "the manifest ([steps + 1, parameter count])");
        pc.require_finite();
    }
    if (t.init_params) {
        const array_checker ic(*t.init_params, file_in(dir_name, "init_params.npy"));
        ic.require_real();
        ic.require_shape({P}, "the manifest ([parameter count])");
        ic.require_finite();
        if (t.params) {
            const std::vector<double> row0 = real_rows(*t.params, 0, 1);
            for (std::size_t i = 0; i < P; ++i)
                if (std::bit_cast<std::uint64_t>(t.init_params->real[i]) != std::bit_cast<std::uint64_t>(row0[i]))
                    ic.fail("init_params.npy disagrees with params.npy row 0 (first at element " + std::to_string(i) +
                            ")");
        }
    }

    // batches [S, B]
    if (t.batches) {
        const npy_array& b = *t.batches;
        const array_checker bc(b, file_in(dir_name, "batches.npy"));
        bc.require_dtype(npy_dtype::i8);
        bc.require_ndim(2, "[S, B]");
        if (b.shape[0] != S)
            bc.fail("shape " + shape_text(b.shape) + " disagrees with the manifest: optimizer.steps is " +
                    std::to_string(S));
        const std::size_t B = b.shape[1];
        if (B == 0) bc.fail("batch size B must be >= 1, found shape " + shape_text(b.shape));
        std::vector<std::size_t> seen_in_row(N, 0);  // row index + 1 of the last row that used the index
        std::vector<std::size_t> seen_at(N, 0);
        const std::size_t block = std::max<std::size_t>(1, (std::size_t{1} << 20) / B);  // rows per read (on disk)
        std::vector<std::int64_t> rows;
        for (std::size_t s = 0; s < S; ++s) {
            if (s % block == 0) rows = integer_rows(b, s, std::min(block, S - s));
            for (std::size_t j = 0; j < B; ++j) {
                const std::int64_t idx = rows[(s % block) * B + j];
                if (idx < 0 || static_cast<std::uint64_t>(idx) >= N)
                    bc.fail("index " + std::to_string(idx) + " at row " + std::to_string(s) + ", column " +
                            std::to_string(j) + " is out of range [0, " + std::to_string(N) + ")");
                const auto u = static_cast<std::size_t>(idx);
                if (seen_in_row[u] == s + 1)
                    bc.fail("row " + std::to_string(s) + " repeats index " + std::to_string(idx) + " (columns " +
                            std::to_string(seen_at[u]) + " and " + std::to_string(j) + ")");
                seen_in_row[u] = s + 1;
                seen_at[u] = j;
            }
        }
    }

    // learning_rates [S] <f8
    if (t.learning_rates) {
        const array_checker lc(*t.learning_rates, file_in(dir_name, "learning_rates.npy"));
        lc.require_dtype(npy_dtype::f8);
        lc.require_shape({S}, "the manifest ([optimizer.steps])");
        lc.require_finite();
    } else if (std::isnan(t.optimizer.learning_rate)) {
        throw input_error(manifest, "'optimizer.learning_rate' is required when learning_rates.npy is absent");
    }

    // x_test [M, D], same dtype as x_train
    if (t.x_test) {
        const npy_array& x = *t.x_test;
        const array_checker tc(x, file_in(dir_name, "x_test.npy"));
        tc.require_real();
        if (x.dtype != t.x_train.dtype)
            tc.fail("dtype " + std::string(to_string(x.dtype)) + " differs from x_train.npy's " +
                    std::string(to_string(t.x_train.dtype)));
        tc.require_ndim(2, "[M, D]");
        if (x.shape[0] == 0) tc.fail("M must be >= 1, found shape " + shape_text(x.shape));
        if (x.shape[1] != D)
            tc.fail("shape " + shape_text(x.shape) + " disagrees with the manifest: model.input_dim is " +
                    std::to_string(D));
        tc.require_finite();
    }
}

namespace {
constexpr const char* trace_npy_files[] = {"x_train.npy", "y_train.npy", "params.npy", "init_params.npy",
                                           "batches.npy", "learning_rates.npy", "x_test.npy"};
}

trace parse_trace(const std::map<std::string, std::string>& files, const std::string& dir_name,
                  const std::map<std::string, fs::path>* on_disk) {
    const auto path_of = [&](const std::string& file) { return (fs::path(dir_name) / file).string(); };
    trace t;
    const auto manifest = files.find("manifest.json");
    if (manifest == files.end()) throw input_error(path_of("manifest.json"), "missing required file");
    if (manifest->second.size() > max_manifest_bytes)
        throw input_error(path_of("manifest.json"), "file is larger than " + std::to_string(max_manifest_bytes >> 20) + " MiB");
    parse_manifest(manifest->second, path_of("manifest.json"), t);
    const auto load = [&](const char* file, bool required) -> std::optional<npy_array> {
        const auto it = files.find(file);
        if (it == files.end()) {
            if (required) throw input_error(path_of(file), "missing required file");
            return std::nullopt;
        }
        return parse_npy({reinterpret_cast<const unsigned char*>(it->second.data()), it->second.size()}, path_of(file));
    };
    t.x_train = *load("x_train.npy", true);
    t.y_train = *load("y_train.npy", true);
    const auto disk = [&](const char* file) -> const fs::path* {
        if (on_disk == nullptr || files.count(file) != 0) return nullptr;
        const auto it = on_disk->find(file);
        return it == on_disk->end() ? nullptr : &it->second;
    };
    if (const fs::path* p = disk("params.npy")) t.params = open_npy(*p, path_of("params.npy"));  // stays on disk
    else t.params = load("params.npy", false);
    t.init_params = load("init_params.npy", false);
    if (const fs::path* p = disk("batches.npy")) t.batches = open_npy(*p, path_of("batches.npy"));
    else t.batches = load("batches.npy", false);
    t.learning_rates = load("learning_rates.npy", false);
    t.x_test = load("x_test.npy", false);
    validate_trace(t, dir_name);
    return t;
}

std::uintmax_t stream_threshold_bytes() {
    double mib = 64;
    if (const char* env = std::getenv("EPK_STREAM_MIB"); env != nullptr && *env != 0) {
        char* end = nullptr;
        const double v = std::strtod(env, &end);
        if (end == env || *end != 0 || !(v >= 0) || !std::isfinite(v))
            throw input_error("EPK_STREAM_MIB", "must be a number of MiB >= 0, found '" + std::string(env) + "'");
        mib = v;
    }
    return static_cast<std::uintmax_t>(std::min(mib, 1e9) * 1024 * 1024);
}

trace read_trace(const fs::path& dir) {
    const std::string dir_name = dir.string();
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) throw input_error(dir_name, "not a trace directory");
    std::map<std::string, std::string> files;
    files["manifest.json"] = read_file_capped(dir / "manifest.json", max_manifest_bytes, "missing required file");
    std::map<std::string, fs::path> streamed;
    const std::uintmax_t stream_above = stream_threshold_bytes();
    for (const char* file : trace_npy_files) {
        const fs::path p = dir / file;
        const auto st = fs::symlink_status(p, ec);
        if (ec || !fs::exists(st)) continue;  // parse_trace names the missing required ones
        if ((std::string_view(file) == "params.npy" || std::string_view(file) == "batches.npy") && fs::is_regular_file(p, ec)) {
            const auto size = fs::file_size(p, ec);
            if (!ec && size > stream_above) {
                streamed[file] = p;
                continue;
            }
        }
        files[file] = read_file_capped(p, max_npy_file_bytes);
    }
    return parse_trace(files, dir_name, &streamed);
}

void check_trace_output_dir(const fs::path& dir) {
    const std::string dir_name = dir.string();
    std::error_code ec;
    const auto st = fs::status(dir, ec);
    if (fs::exists(st)) {
        if (!fs::is_directory(st)) throw input_error(dir_name, "output path exists and is not a directory");
        if (!fs::is_empty(dir, ec) || ec) throw input_error(dir_name, "output directory exists and is not empty");
        return;
    }
    const fs::path parent = parent_of(target_of(dir));
    if (!fs::is_directory(parent, ec))
        throw input_error(dir_name, "cannot write: parent directory " + parent.string() + " does not exist");
}

void write_trace(const fs::path& dir, const trace& t) {
    const std::string dir_name = dir.string();
    validate_trace(t, dir_name);

    check_trace_output_dir(dir);

    // Everything is serialized before the first byte reaches the disk.
    std::vector<std::pair<std::string, std::vector<unsigned char>>> files;
    files.emplace_back("x_train.npy", serialize_npy(t.x_train));
    files.emplace_back("y_train.npy", serialize_npy(t.y_train));
    if (t.params) files.emplace_back("params.npy", serialize_npy(*t.params));
    if (t.init_params) files.emplace_back("init_params.npy", serialize_npy(*t.init_params));
    if (t.batches) files.emplace_back("batches.npy", serialize_npy(*t.batches));
    if (t.learning_rates) files.emplace_back("learning_rates.npy", serialize_npy(*t.learning_rates));
    if (t.x_test) files.emplace_back("x_test.npy", serialize_npy(*t.x_test));
    const std::string manifest = manifest_text(t);
    files.emplace_back("manifest.json", std::vector<unsigned char>(manifest.begin(), manifest.end()));
    write_directory(dir, files);
}

void write_directory(const fs::path& dir, const std::vector<std::pair<std::string, std::vector<unsigned char>>>& files) {
    const std::string dir_name = dir.string();
    check_trace_output_dir(dir);
    std::error_code ec;
    const fs::path target = target_of(dir);
    const fs::path staging = parent_of(target) / (".epk-staging-" + target.filename().string() + "-" + unique_suffix());
    if (!fs::create_directory(staging, ec) || ec)
        throw input_error(dir_name, "cannot write: cannot create staging directory " + staging.string() +
                                        (ec ? " (" + ec.message() + ")" : std::string(" (exists)")));
    try {
        for (const auto& [file, bytes] : files)
            write_bytes(staging / file, file_in(dir_name, file.c_str()), reinterpret_cast<const char*>(bytes.data()),
                        bytes.size());
        // rename(2) atomically replaces an empty directory and fails on a non-empty one.
        fs::rename(staging, target, ec);
        if (ec) throw input_error(dir_name, "cannot write: cannot move the staging directory into place (" +
                                                one_line(ec.message()) + ")");
    } catch (...) {
        std::error_code ignored;
        fs::remove_all(staging, ignored);
        throw;
    }
}

}  // namespace epk

// src/trace.cpp — training traces, docs/trace-format.md version 3 (see epk/trace.hpp).
//
// Contract: parse_manifest accepts exactly what versions 1, 2 and 3 define (version 3's
// layers only in a manifest that says version 3) and
// rejects by name every layer type, loss, optimizer and optimizer/loss/layer
// field it does not implement; validate_trace checks every array (the recorded
// optimizer state included) against the manifest;
// read_trace = parse + load + validate; write_trace validates, serializes in
// memory, writes into a staging directory beside the target and renames it
// into place, so that a failure leaves nothing behind.  Only input_error and
// usage_error escape (filesystem calls use error_code overloads).
#include "epk/trace.hpp"
#include "epk/file_io.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
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

model_spec parse_model_v12(const manifest_reader& r, const json& m, std::uint64_t version) {
    model_spec model;
    for (const char* v3 : {"input_shape", "input_dtype"})
        if (m.contains(v3))
            r.fail(std::string("'model.") + v3 + "' needs trace format version 3 (the manifest says version " +
                   std::to_string(version) + ")");
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
        if (!kind) {
            if (const auto reason = refused_layer_reason(type); !reason.empty())
                r.fail(where + ": " + type + " is not supported: " + std::string(reason));
            if (parse_layer_type(type))
                r.fail("'" + where + ".type' " + type + " needs trace format version 3 (the manifest says version " +
                       std::to_string(version) + ")");
            r.fail("unknown layer type '" + type + "' (" + where + ")");
        }
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
                    r.fail("gelu approximate '" + a + "' is not implemented in trace format version 2 (" + where +
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


// Version 3: a tree of layers (docs/trace-format.md, "Layers").  Shapes are followed while
// reading, so a rule broken by a size names the layer's path.
class layer_reader {
public:
    explicit layer_reader(const manifest_reader& r) : r_(r) {}

    std::vector<layer_spec> sequence(const json& layers, const std::string& prefix, std::vector<std::size_t>& shape,
                                     std::size_t& params) const {
        if (!layers.is_array()) r_.fail("'" + prefix + "' must be an array");
        std::vector<layer_spec> out;
        for (std::size_t k = 0; k < layers.size(); ++k)
            out.push_back(layer(layers[k], prefix + "[" + std::to_string(k) + "]", shape, params));
        return out;
    }

private:
    const manifest_reader& r_;

    // A size of conv2d/pools: an integer or [h, w].
    std::array<std::size_t, 2> pair(const json& v, const std::string& what, std::size_t lo) const {
        if (v.is_array()) {
            if (v.size() != 2) r_.fail("'" + what + "' must be an integer or a list [h, w]");
            return {r_.integer(v[0], what + "[0]", lo), r_.integer(v[1], what + "[1]", lo)};
        }
        const std::size_t n = r_.integer(v, what, lo);
        return {n, n};
    }
    void require(bool ok, const std::string& field, const std::string& rule) const {
        if (!ok) r_.fail("'" + field + "' " + rule);
    }

    layer_spec layer(const json& l, const std::string& where, std::vector<std::size_t>& shape,
                     std::size_t& params) const {
        if (!l.is_object()) r_.fail(where + " must be a JSON object");
        const std::string type = r_.string(r_.member(l, "type", where + "."), where + ".type");
        if (const auto reason = refused_layer_reason(type); !reason.empty())
            r_.fail(where + ": " + type + " is not supported: " + std::string(reason));
        const auto kind = parse_layer_type(type);
        if (!kind) r_.fail("unknown layer type '" + type + "' (" + where + ")");
        layer_spec spec;
        spec.kind = *kind;
        const bool pool = *kind == layer_kind::max_pool2d || *kind == layer_kind::avg_pool2d;
        if (pool) spec.stride = {0, 0};  // = kernel_size
        bool have_out = false, have_kernel = false, have_normalized = false, have_body = false, have_vocab = false,
             have_heads = false;
        std::optional<std::size_t> in_features, in_channels;
        std::vector<std::pair<std::string, std::size_t>> kv_dims;  // self_attention's kdim / vdim when given
        for (const auto& [key, value] : l.items()) {
            const std::string field = where + "." + key;
            if (key == "type") continue;
            switch (*kind) {
                case layer_kind::linear:
                    if (key == "out_features") { spec.out_features = r_.integer(value, field, 1); have_out = true; continue; }
                    if (key == "bias") { spec.bias = r_.boolean(value, field); continue; }
                    if (key == "in_features") { in_features = r_.integer(value, field, 1); continue; }
                    break;
                case layer_kind::conv2d:
                    if (key == "out_channels") { spec.out_features = r_.integer(value, field, 1); have_out = true; continue; }
                    if (key == "in_channels") { in_channels = r_.integer(value, field, 1); continue; }
                    if (key == "kernel_size") { spec.kernel = pair(value, field, 1); have_kernel = true; continue; }
                    if (key == "stride") { spec.stride = pair(value, field, 1); continue; }
                    if (key == "padding") {
                        if (value.is_string()) {
                            const std::string p = value.get<std::string>();
                            require(p == "valid", field, "must be an integer, [h, w] or \"valid\" (padding \"same\" is not implemented: give the integer padding)");
                            spec.padding = {0, 0};
                        } else {
                            spec.padding = pair(value, field, 0);
                        }
                        continue;
                    }
                    if (key == "dilation") { spec.dilation = pair(value, field, 1); continue; }
                    if (key == "groups") { spec.groups = r_.integer(value, field, 1); continue; }
                    if (key == "bias") { spec.bias = r_.boolean(value, field); continue; }
                    if (key == "padding_mode") {
                        require(value.is_string() && value.get<std::string>() == "zeros", field,
                                "must be \"zeros\" (other padding modes are not implemented)");
                        continue;
                    }
                    break;
                case layer_kind::max_pool2d:
                case layer_kind::avg_pool2d:
                    if (key == "kernel_size") { spec.kernel = pair(value, field, 1); have_kernel = true; continue; }
                    if (key == "stride") { spec.stride = value.is_null() ? std::array<std::size_t, 2>{0, 0} : pair(value, field, 1); continue; }
                    if (key == "padding") { spec.padding = pair(value, field, 0); continue; }
                    if (key == "ceil_mode") { require(!r_.boolean(value, field), field, "must be false (ceil_mode is not implemented)"); continue; }
                    if (*kind == layer_kind::max_pool2d && key == "dilation") { spec.dilation = pair(value, field, 1); continue; }
                    if (*kind == layer_kind::max_pool2d && key == "return_indices") {
                        require(!r_.boolean(value, field), field, "must be false");
                        continue;
                    }
                    if (*kind == layer_kind::avg_pool2d && key == "count_include_pad") {
                        require(r_.boolean(value, field), field, "must be true (count_include_pad=False is not implemented)");
                        continue;
                    }
                    if (*kind == layer_kind::avg_pool2d && key == "divisor_override") {
                        require(value.is_null(), field, "must be null (divisor_override is not implemented)");
                        continue;
                    }
                    break;
                case layer_kind::flatten:
                    if (key == "start_dim") {
                        require(value.is_number_integer() && value.get<std::int64_t>() == 1, field, "must be 1 (flatten all but the batch axis)");
                        continue;
                    }
                    if (key == "end_dim") {
                        require(value.is_number_integer() && value.get<std::int64_t>() == -1, field, "must be -1 (flatten all but the batch axis)");
                        continue;
                    }
                    break;
                case layer_kind::layer_norm:
                    if (key == "normalized_shape") {
                        spec.normalized_shape.clear();
                        if (value.is_array()) {
                            require(!value.empty(), field, "must not be empty");
                            for (std::size_t a = 0; a < value.size(); ++a)
                                spec.normalized_shape.push_back(r_.integer(value[a], field + "[" + std::to_string(a) + "]", 1));
                        } else {
                            spec.normalized_shape.push_back(r_.integer(value, field, 1));
                        }
                        have_normalized = true;
                        continue;
                    }
                    if (key == "eps") {
                        spec.eps = r_.finite_number(value, field);
                        require(spec.eps >= 0, field, "must be >= 0");
                        continue;
                    }
                    if (key == "elementwise_affine") { spec.elementwise_affine = r_.boolean(value, field); continue; }
                    if (key == "bias") { spec.bias = r_.boolean(value, field); continue; }
                    break;
                case layer_kind::residual:
                    if (key == "body" || key == "shortcut") {
                        if (!value.is_array()) r_.fail("'" + field + "' must be an array");
                        have_body = have_body || key == "body";
                        continue;  // read below, in order: body's parameters come first
                    }
                    break;
                case layer_kind::embedding:
                    if (key == "num_embeddings") { spec.num_embeddings = r_.integer(value, field, 1); have_vocab = true; continue; }
                    if (key == "embedding_dim") { spec.out_features = r_.integer(value, field, 1); have_out = true; continue; }
                    if (key == "padding_idx" || key == "max_norm") {
                        require(value.is_null(), field, "must be null (" + key + " is not implemented)");
                        continue;
                    }
                    if (key == "scale_grad_by_freq" || key == "sparse") {
                        require(!r_.boolean(value, field), field, "must be false (" + key + " is not implemented)");
                        continue;
                    }
                    break;
                case layer_kind::self_attention:
                    if (key == "num_heads") { spec.num_heads = r_.integer(value, field, 1); have_heads = true; continue; }
                    if (key == "bias") { spec.bias = r_.boolean(value, field); continue; }
                    if (key == "causal") { spec.causal = r_.boolean(value, field); continue; }
                    if (key == "embed_dim") { in_features = r_.integer(value, field, 1); continue; }
                    if (key == "dropout") {
                        require(value.is_number() && value.get<double>() == 0, field, "must be 0 (attention dropout draws random masks that the trace does not record)");
                        continue;
                    }
                    if (key == "batch_first") { require(r_.boolean(value, field), field, "must be true (epk's samples are [T, D])"); continue; }
                    if (key == "add_bias_kv" || key == "add_zero_attn") {
                        require(!r_.boolean(value, field), field, "must be false (" + key + " is not implemented)");
                        continue;
                    }
                    if (key == "kdim" || key == "vdim") {  // null or embed_dim: the same width as the queries
                        if (!value.is_null()) kv_dims.push_back({field, r_.integer(value, field, 1)});
                        continue;
                    }
                    break;
                case layer_kind::select:
                    if (key == "index") {
                        if (!value.is_number_integer()) r_.fail("'" + field + "' must be an integer");
                        spec.index = value.get<std::int64_t>();
                        continue;
                    }
                    break;
                case layer_kind::positional_embedding:
                case layer_kind::mean_tokens:
                    break;
                case layer_kind::leaky_relu:
                    if (key == "negative_slope") { spec.negative_slope = r_.finite_number(value, field); continue; }
                    if (key == "inplace") { r_.boolean(value, field); continue; }
                    break;
                case layer_kind::gelu:
                    if (key == "approximate") {
                        const std::string a = r_.string(value, field);
                        if (a != "none") r_.fail("gelu approximate '" + a + "' is not implemented (" + where + ")");
                        continue;
                    }
                    [[fallthrough]];
                default:  // the other activations
                    if (key == "inplace") { r_.boolean(value, field); continue; }
                    break;
            }
            r_.fail("unknown field '" + key + "' in " + where + " (" + type + ")");
        }
        const std::string kname(to_string(*kind));
        if ((*kind == layer_kind::linear || *kind == layer_kind::conv2d) && !have_out)
            r_.fail("missing field '" + where + (*kind == layer_kind::linear ? ".out_features'" : ".out_channels'"));
        if ((*kind == layer_kind::conv2d || pool) && !have_kernel) r_.fail("missing field '" + where + ".kernel_size'");
        if (*kind == layer_kind::layer_norm && !have_normalized) r_.fail("missing field '" + where + ".normalized_shape'");
        if (*kind == layer_kind::embedding && !have_vocab) r_.fail("missing field '" + where + ".num_embeddings'");
        if (*kind == layer_kind::embedding && !have_out) r_.fail("missing field '" + where + ".embedding_dim'");
        if (*kind == layer_kind::self_attention && !have_heads) r_.fail("missing field '" + where + ".num_heads'");
        if (*kind == layer_kind::residual && !have_body) r_.fail("missing field '" + where + ".body'");
        if (in_features && !shape.empty() && *in_features != shape.back())
            r_.fail("'" + where + (*kind == layer_kind::self_attention ? ".embed_dim' is " : ".in_features' is ") +
                    std::to_string(*in_features) + " but the width flowing into it is " +
                    std::to_string(shape.back()));
        for (const auto& [field, d] : kv_dims)
            if (shape.size() == 2 && d != shape[1])
                r_.fail("'" + field + "' is " + std::to_string(d) + " but self-attention's keys and values have the width of "
                        "its input, " + std::to_string(shape[1]) + " (kdim/vdim other than embed_dim are not implemented)");
        if (in_channels && shape.size() == 3 && *in_channels != shape[0])
            r_.fail("'" + where + ".in_channels' is " + std::to_string(*in_channels) +
                    " but the channels flowing into it are " + std::to_string(shape[0]));
        if (*kind == layer_kind::residual) {
            std::vector<std::size_t> b = shape, sc = shape;
            spec.body = sequence(l.at("body"), where + ".body", b, params);
            if (spec.body.empty()) r_.fail("'" + where + ".body' must not be empty");
            if (const auto it = l.find("shortcut"); it != l.end()) spec.shortcut = sequence(*it, where + ".shortcut", sc, params);
            if (b != sc)
                r_.fail(where + ": residual branches end in different shapes: body " + shape_string(b) + ", shortcut " +
                        shape_string(sc));
            shape = b;
            return spec;
        }
        // One layer's shape and parameters.
        std::string error;
        std::vector<std::size_t> out = layer_output_shape(spec, shape, where, &error);
        if (out.empty()) r_.fail(error);
        std::size_t block = 0, numel = 1;
        for (std::size_t d : out)
            if (__builtin_mul_overflow(numel, d, &numel) || numel > (std::size_t{1} << 40))
                r_.fail(where + ": the value flowing out (" + shape_string(out) + ") is too large");
        if (!layer_parameter_count_checked(spec, shape, &block)) r_.fail("model has too many parameters");
        if (__builtin_add_overflow(params, block, &params) || params > (std::size_t{1} << 53))
            r_.fail("model has too many parameters");
        shape = std::move(out);
        return spec;
    }
};

model_spec parse_model_v3(const manifest_reader& r, const json& m) {
    model_spec model;
    for (const auto& [key, value] : m.items()) {
        (void)value;
        if (key != "input_dim" && key != "input_shape" && key != "layers" && key != "input_dtype")
            r.fail("unknown field 'model." + key + "'");
    }
    if (const auto it = m.find("input_dtype"); it != m.end()) {
        const std::string d = r.string(*it, "model.input_dtype");
        if (d != "float" && d != "int64") r.fail("'model.input_dtype' must be \"float\" or \"int64\", found \"" + d + "\"");
        model.tokens = d == "int64";
    }
    const bool has_dim = m.contains("input_dim"), has_shape = m.contains("input_shape");
    if (has_dim && has_shape) r.fail("give 'model.input_shape' or 'model.input_dim', not both");
    if (!has_dim && !has_shape) r.fail("missing field 'model.input_shape'");
    if (has_dim) {
        model.input_dim = r.integer(m.at("input_dim"), "model.input_dim", 1);
    } else {
        const json& s = m.at("input_shape");
        if (!s.is_array() || s.empty() || s.size() > 3)
            r.fail("'model.input_shape' must be a list of 1 to 3 sizes ([D] or [C, H, W])");
        std::size_t d = 1;
        for (std::size_t a = 0; a < s.size(); ++a) {
            model.input_shape.push_back(r.integer(s[a], "model.input_shape[" + std::to_string(a) + "]", 1));
            if (__builtin_mul_overflow(d, model.input_shape.back(), &d) || d > (std::size_t{1} << 40))
                r.fail("'model.input_shape' is too large");
        }
        model.input_dim = d;
        if (model.input_shape.size() == 1) model.input_shape.clear();  // [D] is input_dim D
    }
    const json& layers = r.member(m, "layers", "model.");
    if (!layers.is_array()) r.fail("'model.layers' must be an array");
    if (layers.empty()) r.fail("'model.layers' must not be empty");
    std::vector<std::size_t> shape = model.sample_shape();
    std::size_t params = 0;
    model.layers = layer_reader(r).sequence(layers, "layers", shape, params);
    const std::string e = check_model(model);
    if (!e.empty()) r.fail(e);
    return model;
}

model_spec parse_model(const manifest_reader& r, const json& m, std::uint64_t version) {
    return version >= 3 ? parse_model_v3(r, m) : parse_model_v12(r, m, version);
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
            r.fail("loss field '" + key + "' is not implemented in trace format version 2");
        }
    }
    return loss;
}

// Version 2's optimizer (a superset of version 1's plain SGD): torch.optim.SGD, Adam and
// AdamW with torch's defaults and validation rules, and the keys of a torch param_group
// that do not change the values (docs/trace-format.md, "optimizer").
constexpr std::size_t max_initial_step = std::size_t{1} << 53;

sgd_spec parse_optimizer(const manifest_reader& r, const json& o) {
    using kind = optimizer_spec::kind;
    sgd_spec opt;
    opt.learning_rate = std::numeric_limits<double>::quiet_NaN();
    optimizer_spec& rule = opt.rule;
    const std::string type = r.string(r.member(o, "type", "optimizer."), "optimizer.type");
    if (type == "sgd" || type == "SGD") rule.type = kind::sgd;
    else if (type == "adam" || type == "Adam") rule.type = kind::adam;
    else if (type == "adamw" || type == "AdamW") rule.type = kind::adamw;
    else
        r.fail("optimizer '" + type + "' is not implemented (trace format version 2 knows sgd, adam, adamw; "
               "torch's class names SGD, Adam, AdamW are accepted too)");
    const bool sgd = rule.type == kind::sgd;
    const std::string kind_name(to_string(rule.type));

    const auto field = [](const std::string& key) { return "optimizer." + key; };
    const auto found = [](const json& v) { return ", found " + one_line(v.dump()); };
    const auto non_negative = [&](const json& v, const std::string& key) {
        const double d = r.finite_number(v, field(key));
        if (!(d >= 0)) r.fail("'" + field(key) + "' must be finite and >= 0" + found(v));
        return d;
    };
    const auto beta = [&](const json& v, const std::string& name) {
        const double d = r.finite_number(v, name);
        if (!(d >= 0 && d < 1)) r.fail("'" + name + "' must be in [0, 1)" + found(v));
        return d;
    };
    const auto other_kind = [&](const std::string& key, const char* owner) {
        r.fail("'" + field(key) + "' is an option of " + owner + ", not of " + kind_name);
    };

    if (o.contains("lr") && o.contains("learning_rate"))
        r.fail("'optimizer.lr' and 'optimizer.learning_rate' are the same field (lr is torch's name); give one");
    if (!sgd && o.contains("betas") && (o.contains("beta1") || o.contains("beta2")))
        r.fail("'optimizer.betas' and 'optimizer.beta1'/'optimizer.beta2' are two forms of the same values; give one");

    bool have_steps = false, have_weight_decay = false, decoupled = rule.type == kind::adamw;
    for (const auto& [key, value] : o.items()) {
        if (key == "type") continue;
        if (key == "steps") {
            opt.steps = r.integer(value, "optimizer.steps", 0);
            have_steps = true;
        } else if (key == "learning_rate" || key == "lr") {
            opt.learning_rate = r.finite_number(value, field(key));
        } else if (key == "weight_decay") {
            rule.weight_decay = non_negative(value, key);
            have_weight_decay = true;
        } else if (key == "initial_step") {
            opt.initial_step = r.integer(value, "optimizer.initial_step", 0);
            if (opt.initial_step > max_initial_step) r.fail("'optimizer.initial_step' must be <= 2^53" + found(value));
        } else if (key == "maximize") {
            if (r.boolean(value, field(key))) r.fail("'optimizer.maximize' is true: maximize=true is not implemented");
        } else if (key == "foreach" || key == "capturable" || key == "differentiable" || key == "fused") {
            // torch's implementation choices: they change the rounding of an update, not its value.
            if (!value.is_boolean() && !value.is_null()) r.fail("'" + field(key) + "' must be true, false or null");
        } else if (key == "initial_lr") {
            (void)r.finite_number(value, field(key));  // an LR scheduler's record; learning_rate is the rate
        } else if (key == "momentum" || key == "dampening" || key == "nesterov") {
            if (!sgd) other_kind(key, "sgd");
            if (key == "momentum") rule.momentum = non_negative(value, key);
            else if (key == "dampening") rule.dampening = r.finite_number(value, field(key));
            else rule.nesterov = r.boolean(value, field(key));
        } else if (key == "betas" || key == "beta1" || key == "beta2" || key == "eps" || key == "amsgrad" ||
                   key == "decoupled_weight_decay") {
            if (sgd) other_kind(key, "adam and adamw");
            if (key == "betas") {
                if (!value.is_array() || value.size() != 2)
                    r.fail("'optimizer.betas' must be an array of two numbers [beta1, beta2]" + found(value));
                rule.beta1 = beta(value[0], "optimizer.betas[0]");
                rule.beta2 = beta(value[1], "optimizer.betas[1]");
            } else if (key == "beta1") {
                rule.beta1 = beta(value, "optimizer.beta1");
            } else if (key == "beta2") {
                rule.beta2 = beta(value, "optimizer.beta2");
            } else if (key == "eps") {
                rule.eps = non_negative(value, key);
            } else if (key == "amsgrad") {
                rule.amsgrad = r.boolean(value, field(key));
            } else {  // newer torch versions keep it in Adam's and AdamW's param_groups
                decoupled = r.boolean(value, field(key));
                if (!decoupled && rule.type == kind::adamw)
                    r.fail("'optimizer.decoupled_weight_decay' is false, but AdamW's weight decay is decoupled "
                           "(type adam is Adam)");
            }
        } else {
            r.fail("unknown optimizer field '" + key + "' (optimizer " + kind_name + ")");
        }
    }
    if (!have_steps) r.fail("missing field 'optimizer.steps'");
    // torch's defaults: AdamW's weight_decay is 0.01, Adam(decoupled_weight_decay=True) is AdamW.
    if (rule.type == kind::adamw && !have_weight_decay) rule.weight_decay = 0.01;
    if (decoupled) rule.type = kind::adamw;
    if (rule.nesterov && !(rule.momentum > 0 && rule.dampening == 0))
        r.fail("'optimizer.nesterov' requires 'optimizer.momentum' > 0 and 'optimizer.dampening' = 0");
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

// The optimizer half of the manifest rules, for a trace built in memory (parse_optimizer
// checks the same as it reads, naming the field as written).
void check_optimizer(const sgd_spec& opt, const std::string& manifest) {
    const optimizer_spec& o = opt.rule;
    const auto need = [&](bool ok, const std::string& rule) {
        if (!ok) throw input_error(manifest, rule);
    };
    const auto non_negative = [&](double v, const char* key) {
        need(std::isfinite(v) && v >= 0, std::string("'optimizer.") + key + "' must be finite and >= 0");
    };
    non_negative(o.weight_decay, "weight_decay");
    if (o.type == optimizer_spec::kind::sgd) {
        non_negative(o.momentum, "momentum");
        need(std::isfinite(o.dampening), "'optimizer.dampening' must be finite");
        need(!o.nesterov || (o.momentum > 0 && o.dampening == 0),
             "'optimizer.nesterov' requires 'optimizer.momentum' > 0 and 'optimizer.dampening' = 0");
        need(!o.amsgrad, "'optimizer.amsgrad' is an option of adam and adamw, not of sgd");
    } else {
        const std::string kind_name(to_string(o.type));
        need(std::isfinite(o.beta1) && o.beta1 >= 0 && o.beta1 < 1, "'optimizer.betas[0]' must be in [0, 1)");
        need(std::isfinite(o.beta2) && o.beta2 >= 0 && o.beta2 < 1, "'optimizer.betas[1]' must be in [0, 1)");
        non_negative(o.eps, "eps");
        need(o.momentum == 0, "'optimizer.momentum' is an option of sgd, not of " + kind_name);
        need(o.dampening == 0, "'optimizer.dampening' is an option of sgd, not of " + kind_name);
        need(!o.nesterov, "'optimizer.nesterov' is an option of sgd, not of " + kind_name);
    }
    need(opt.initial_step <= (std::size_t{1} << 53), "'optimizer.initial_step' must be <= 2^53");
}

// Version 1 describes plain SGD from a fresh start; anything else is written as version 2.
bool needs_version_2(const trace& t) {
    return !t.optimizer.plain() || t.init_momentum_buffer ||
           t.init_exp_avg || t.init_exp_avg_sq || t.init_max_exp_avg_sq;
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
    // Version 2 adds optimizer fields only; a version 1 manifest using them is read as
    // version 2 (docs/trace-format.md, "Versions").
    if (!(version.is_number_unsigned() && version.get<std::uint64_t>() >= 1 && version.get<std::uint64_t>() <= 3))
        r.fail("version " + version.dump() + " is not supported (this reader implements versions 1, 2 and 3)");

    model_spec model = parse_model(r, r.object(doc, "model", ""), version.get<std::uint64_t>());
    loss_spec loss = parse_loss(r, r.object(doc, "loss", ""));
    sgd_spec opt = parse_optimizer(r, r.object(doc, "optimizer", ""));
    out.model = std::move(model);
    out.loss = loss;
    out.optimizer = opt;
}

namespace {
using ojson = nlohmann::ordered_json;

// One layer of version 3, every field explicit, canonical names.
ojson layer_json_v3(const layer_spec& l) {
    ojson j;
    j["type"] = std::string(to_string(l.kind));
    const auto pair = [](const std::array<std::size_t, 2>& a) { return ojson::array({a[0], a[1]}); };
    const auto list = [](const std::vector<layer_spec>& ls) {
        ojson a = ojson::array();
        for (const auto& x : ls) a.push_back(layer_json_v3(x));
        return a;
    };
    switch (l.kind) {
        case layer_kind::linear: j["out_features"] = l.out_features; j["bias"] = l.bias; break;
        case layer_kind::conv2d:
            j["out_channels"] = l.out_features; j["kernel_size"] = pair(l.kernel); j["stride"] = pair(l.stride);
            j["padding"] = pair(l.padding); j["dilation"] = pair(l.dilation); j["groups"] = l.groups; j["bias"] = l.bias;
            break;
        case layer_kind::max_pool2d:
        case layer_kind::avg_pool2d:
            j["kernel_size"] = pair(l.kernel);
            j["stride"] = pair(l.stride[0] == 0 ? l.kernel : l.stride);
            j["padding"] = pair(l.padding);
            if (l.kind == layer_kind::max_pool2d) j["dilation"] = pair(l.dilation);
            break;
        case layer_kind::layer_norm:
            if (!std::isfinite(l.eps)) throw usage_error("manifest_text: layer_norm eps is not finite");
            j["normalized_shape"] = l.normalized_shape; j["eps"] = l.eps;
            j["elementwise_affine"] = l.elementwise_affine; j["bias"] = l.bias;
            break;
        case layer_kind::residual: j["body"] = list(l.body); j["shortcut"] = list(l.shortcut); break;
        case layer_kind::embedding: j["num_embeddings"] = l.num_embeddings; j["embedding_dim"] = l.out_features; break;
        case layer_kind::self_attention: j["num_heads"] = l.num_heads; j["bias"] = l.bias; j["causal"] = l.causal; break;
        case layer_kind::select: j["index"] = l.index; break;
        case layer_kind::leaky_relu:
            if (!std::isfinite(l.negative_slope)) throw usage_error("manifest_text: negative_slope is not finite");
            j["negative_slope"] = l.negative_slope;
            break;
        default: break;
    }
    return j;
}
}  // namespace

std::string manifest_text(const trace& t) {
    ojson layers = ojson::array();
    const bool v3 = !t.model.is_mlp();
    for (const auto& l : t.model.layers) {
        if (v3) {
            layers.push_back(layer_json_v3(l));
            continue;
        }
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
    const optimizer_spec& rule = t.optimizer.rule;
    const bool v2 = needs_version_2(t);
    ojson doc;
    doc["format"] = "epk-trace";
    doc["version"] = v3 ? 3 : v2 ? 2 : 1;
    if (t.model.tokens) {
        doc["model"]["input_shape"] = std::vector<std::size_t>{t.model.input_dim};
        doc["model"]["input_dtype"] = "int64";
    } else if (v3 && !t.model.input_shape.empty()) {
        doc["model"]["input_shape"] = t.model.input_shape;
    } else {
        doc["model"]["input_dim"] = t.model.input_dim;
    }
    doc["model"]["layers"] = std::move(layers);
    doc["loss"]["type"] = std::string(to_string(t.loss.kind));
    doc["loss"]["reduction"] = std::string(to_string(t.loss.reduction));
    ojson& o = doc["optimizer"];
    o["type"] = v2 ? std::string(to_string(rule.type)) : std::string("sgd");
    if (!std::isnan(t.optimizer.learning_rate)) {  // NaN = absent (learning_rates.npy carries the rates)
        if (!std::isfinite(t.optimizer.learning_rate))
            throw usage_error("manifest_text: learning_rate is not finite");
        o["learning_rate"] = t.optimizer.learning_rate;
    }
    o["steps"] = t.optimizer.steps;
    if (v2) {  // every field of the optimizer's kind, under its canonical name
        const auto finite = [](double v, const char* what) {
            if (!std::isfinite(v)) throw usage_error(std::string("manifest_text: ") + what + " is not finite");
            return v;
        };
        if (rule.type == optimizer_spec::kind::sgd) {
            o["momentum"] = finite(rule.momentum, "momentum");
            o["dampening"] = finite(rule.dampening, "dampening");
            o["nesterov"] = rule.nesterov;
            o["weight_decay"] = finite(rule.weight_decay, "weight_decay");
        } else {
            o["betas"] = ojson::array({finite(rule.beta1, "beta1"), finite(rule.beta2, "beta2")});
            o["eps"] = finite(rule.eps, "eps");
            o["weight_decay"] = finite(rule.weight_decay, "weight_decay");
            o["amsgrad"] = rule.amsgrad;
        }
        if (t.optimizer.initial_step > 0) o["initial_step"] = t.optimizer.initial_step;
    }
    return doc.dump(2) + "\n";
}

void validate_trace(const trace& t, const std::string& dir_name) {
    const std::string manifest = file_in(dir_name, "manifest.json");
    const model_spec& m = t.model;

    // The manifest half (a trace built in memory has not been through parse_manifest).
    if (m.input_dim == 0) throw input_error(manifest, "'model.input_dim' must be >= 1");
    if (m.layers.empty()) throw input_error(manifest, "'model.layers' must not be empty");
    if (!m.is_mlp()) {  // version 3
        if (const std::string e = check_model(m); !e.empty()) throw input_error(manifest, e);
    } else     {
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
    if (m.is_mlp() && m.linear_layer_count() == 0) throw input_error(manifest, "model needs at least one linear layer");
    if (!std::isnan(t.optimizer.learning_rate) && !std::isfinite(t.optimizer.learning_rate))
        throw input_error(manifest, "'optimizer.learning_rate' must be finite");
    if (t.optimizer.steps == std::numeric_limits<std::size_t>::max())
        throw input_error(manifest, "'optimizer.steps' is too large");
    check_optimizer(t.optimizer, manifest);

    const std::size_t D = m.input_dim, C = m.output_dim(), P = m.parameter_count(), S = t.optimizer.steps;

    // x_train [N, D], or [N, *input_shape] (version 3)
    const array_checker xc(t.x_train, file_in(dir_name, "x_train.npy"));
    // Token ids: <i8, each in [0, V) of the first layer (an embedding; check_model saw to that).
    const std::size_t vocabulary = m.tokens ? m.layers[0].num_embeddings : 0;
    const auto require_token_dtype = [&](const array_checker& c, const npy_array& a) {
        if (a.dtype != npy_dtype::i8)
            c.fail("dtype must be <i8 (token ids: the manifest's model.input_dtype is int64), found " +
                   std::string(to_string(a.dtype)));
    };
    const auto require_token_range = [&](const array_checker& c, const npy_array& a) {
        const std::size_t rows = a.shape.empty() ? 0 : a.shape[0];
        for (std::size_t r0 = 0; r0 < rows; r0 += 4096) {
            const std::size_t cnt = std::min<std::size_t>(4096, rows - r0);
            const std::vector<std::int64_t> v = integer_rows(a, r0, cnt);
            const std::size_t width = v.size() / cnt;
            for (std::size_t e = 0; e < v.size(); ++e)
                if (v[e] < 0 || static_cast<std::uint64_t>(v[e]) >= vocabulary)
                    c.fail("token id " + std::to_string(v[e]) + " at row " + std::to_string(r0 + e / width) +
                           ", position " + std::to_string(e % width) + " is out of range [0, " +
                           std::to_string(vocabulary) + ") (layers[0].num_embeddings)");
        }
    };
    if (m.tokens) require_token_dtype(xc, t.x_train);
    else xc.require_real();
    const std::vector<std::size_t> sample = m.sample_shape();
    const bool image = sample.size() > 1;
    xc.require_ndim(1 + sample.size(), image ? "[N, *input_shape]" : "[N, D]");
    const std::size_t N = t.x_train.shape[0];
    if (N == 0) xc.fail("N must be >= 1, found shape " + shape_text(t.x_train.shape));
    if (!std::equal(sample.begin(), sample.end(), t.x_train.shape.begin() + 1))
        xc.fail("shape " + shape_text(t.x_train.shape) + " disagrees with the manifest: model." +
                (image ? "input_shape is " + shape_string(sample) : "input_dim is " + std::to_string(D)));
    if (m.tokens) require_token_range(xc, t.x_train);
    else xc.require_finite();

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

    // The optimizer's recorded state before step 0 (version 2): [P] real arrays, each used
    // by the optimizer, present exactly when a resumed run (initial_step >= 1) needs it.
    {
        const optimizer_spec& o = t.optimizer.rule;
        const bool sgd = o.type == optimizer_spec::kind::sgd;
        const std::string kind_name(to_string(o.type));
        struct state_file {
            const char* name;
            const std::optional<npy_array>* array;
            bool non_negative;
            bool needed;
            std::string unused_because;  // why the optimizer has no use for it
        };
        const state_file files[] = {
            {"init_momentum_buffer.npy", &t.init_momentum_buffer, false, sgd && o.momentum != 0,
             sgd ? "optimizer.momentum is 0: SGD without momentum keeps no momentum buffer"
                 : "the momentum buffer is SGD's state, the optimizer is " + kind_name},
            {"init_exp_avg.npy", &t.init_exp_avg, false, !sgd, "exp_avg is Adam/AdamW state, the optimizer is sgd"},
            {"init_exp_avg_sq.npy", &t.init_exp_avg_sq, true, !sgd,
             "exp_avg_sq is Adam/AdamW state, the optimizer is sgd"},
            {"init_max_exp_avg_sq.npy", &t.init_max_exp_avg_sq, true, !sgd && o.amsgrad,
             sgd ? std::string("max_exp_avg_sq is Adam/AdamW state with amsgrad, the optimizer is sgd")
                 : "optimizer.amsgrad is false: max_exp_avg_sq is amsgrad's state"},
        };
        const std::size_t t0 = t.optimizer.initial_step;
        for (const state_file& f : files) {
            if (!f.array->has_value()) continue;
            const npy_array& a = **f.array;
            const array_checker sc(a, file_in(dir_name, f.name));
            if (!f.needed) sc.fail("not used by this optimizer (" + f.unused_because + ")");
            if (t0 == 0)
                sc.fail("a recorded optimizer state needs 'optimizer.initial_step' >= 1 (the steps taken before "
                        "it), found 0");
            sc.require_real();
            sc.require_shape({P}, "the manifest ([parameter count])");
            sc.require_finite();
            if (f.non_negative) {
                const std::vector<double> v = real_rows(a, 0, P);
                for (std::size_t i = 0; i < P; ++i)
                    if (v[i] < 0) {
                        char value[32];
                        std::snprintf(value, sizeof value, "%.17g", v[i]);
                        sc.fail("negative value " + std::string(value) + " at element " + std::to_string(i) +
                                " (a second moment is >= 0)");
                    }
            }
        }
        for (const state_file& f : files)
            if (t0 >= 1 && f.needed && !f.array->has_value())
                throw input_error(file_in(dir_name, f.name),
                                  "missing required file (optimizer.initial_step is " + std::to_string(t0) +
                                      ": a resumed " + kind_name + " run needs the optimizer's recorded state)");
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
        if (m.tokens) require_token_dtype(tc, x);
        else tc.require_real();
        if (x.dtype != t.x_train.dtype)
            tc.fail("dtype " + std::string(to_string(x.dtype)) + " differs from x_train.npy's " +
                    std::string(to_string(t.x_train.dtype)));
        tc.require_ndim(1 + sample.size(), image ? "[M, *input_shape]" : "[M, D]");
        if (x.shape[0] == 0) tc.fail("M must be >= 1, found shape " + shape_text(x.shape));
        if (!std::equal(sample.begin(), sample.end(), x.shape.begin() + 1))
            tc.fail("shape " + shape_text(x.shape) + " disagrees with the manifest: model." +
                    (image ? "input_shape is " + shape_string(sample) : "input_dim is " + std::to_string(D)));
        if (m.tokens) require_token_range(tc, x);
        else tc.require_finite();
    }
}

namespace {
constexpr const char* trace_npy_files[] = {
    "x_train.npy", "y_train.npy", "params.npy", "init_params.npy", "batches.npy", "learning_rates.npy", "x_test.npy",
    "init_momentum_buffer.npy", "init_exp_avg.npy", "init_exp_avg_sq.npy", "init_max_exp_avg_sq.npy"};
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
    t.init_momentum_buffer = load("init_momentum_buffer.npy", false);
    t.init_exp_avg = load("init_exp_avg.npy", false);
    t.init_exp_avg_sq = load("init_exp_avg_sq.npy", false);
    t.init_max_exp_avg_sq = load("init_max_exp_avg_sq.npy", false);
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
    if (t.init_momentum_buffer) files.emplace_back("init_momentum_buffer.npy", serialize_npy(*t.init_momentum_buffer));
    if (t.init_exp_avg) files.emplace_back("init_exp_avg.npy", serialize_npy(*t.init_exp_avg));
    if (t.init_exp_avg_sq) files.emplace_back("init_exp_avg_sq.npy", serialize_npy(*t.init_exp_avg_sq));
    if (t.init_max_exp_avg_sq) files.emplace_back("init_max_exp_avg_sq.npy", serialize_npy(*t.init_max_exp_avg_sq));
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

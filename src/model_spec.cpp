#include "epk/model_spec.hpp"

#include <algorithm>
#include <array>
#include <limits>
#include <cmath>
#include <functional>
#include <string>
#include <utility>

#include "epk/error.hpp"

namespace epk {

namespace {
constexpr std::array<std::pair<layer_kind, std::string_view>, 8> layer_names{{
    {layer_kind::linear, "linear"},
    {layer_kind::relu, "relu"},
    {layer_kind::leaky_relu, "leaky_relu"},
    {layer_kind::tanh, "tanh"},
    {layer_kind::sigmoid, "sigmoid"},
    {layer_kind::softplus, "softplus"},
    {layer_kind::gelu, "gelu"},
    {layer_kind::identity, "identity"},
}};
// Version 3's kinds: (kind, canonical name, torch's class name).
struct v3_name {
    layer_kind kind;
    std::string_view name, torch;
};
constexpr std::array<v3_name, 19> v3_names{{
    {layer_kind::linear, "linear", "Linear"},
    {layer_kind::relu, "relu", "ReLU"},
    {layer_kind::leaky_relu, "leaky_relu", "LeakyReLU"},
    {layer_kind::tanh, "tanh", "Tanh"},
    {layer_kind::sigmoid, "sigmoid", "Sigmoid"},
    {layer_kind::softplus, "softplus", "Softplus"},
    {layer_kind::gelu, "gelu", "GELU"},
    {layer_kind::identity, "identity", "Identity"},
    {layer_kind::conv2d, "conv2d", "Conv2d"},
    {layer_kind::max_pool2d, "max_pool2d", "MaxPool2d"},
    {layer_kind::avg_pool2d, "avg_pool2d", "AvgPool2d"},
    {layer_kind::flatten, "flatten", "Flatten"},
    {layer_kind::layer_norm, "layer_norm", "LayerNorm"},
    {layer_kind::residual, "residual", "Residual"},
    {layer_kind::embedding, "embedding", "Embedding"},
    {layer_kind::positional_embedding, "positional_embedding", "PositionalEmbedding"},
    {layer_kind::self_attention, "self_attention", "SelfAttention"},
    {layer_kind::select, "select", "Select"},
    {layer_kind::mean_tokens, "mean_tokens", "MeanTokens"},
}};
constexpr std::string_view batch_norm_reason =
    "batch norm in training mode couples the samples of a batch (f(x_i) depends on the other rows), so there is "
    "no per-sample kernel";
constexpr std::string_view dropout_reason = "dropout draws random masks that the trace does not record";
}  // namespace

std::string_view to_string(layer_kind k) {
    for (const auto& v : v3_names)
        if (v.kind == k) return v.name;
    return "?";
}
std::string_view torch_name(layer_kind k) {
    for (const auto& v : v3_names)
        if (v.kind == k) return v.torch;
    return "?";
}
std::optional<layer_kind> parse_layer_type(std::string_view name, bool* is_torch_name) {
    for (const auto& v : v3_names) {
        if (v.name == name || v.torch == name) {
            if (is_torch_name != nullptr) *is_torch_name = v.torch == name;
            return v.kind;
        }
    }
    if (name == "MultiheadAttention") {  // torch's module behind epk.torch.SelfAttention
        if (is_torch_name != nullptr) *is_torch_name = true;
        return layer_kind::self_attention;
    }
    return std::nullopt;
}
std::string_view refused_layer_reason(std::string_view name) {
    for (std::string_view n : {"batch_norm", "batch_norm1d", "batch_norm2d", "batch_norm3d", "BatchNorm1d",
                               "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"})
        if (n == name) return batch_norm_reason;
    for (std::string_view n : {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "Dropout",
                               "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"})
        if (n == name) return dropout_reason;
    return {};
}
bool layer_spec::is_activation() const {
    switch (kind) {
        case layer_kind::relu: case layer_kind::leaky_relu: case layer_kind::tanh: case layer_kind::sigmoid:
        case layer_kind::softplus: case layer_kind::gelu: case layer_kind::identity: return true;
        default: return false;
    }
}
std::string_view to_string(loss_kind k) { return k == loss_kind::cross_entropy ? "cross_entropy" : "mse"; }
std::string_view to_string(reduction_kind k) { return k == reduction_kind::mean ? "mean" : "sum"; }

std::string_view to_string(optimizer_spec::kind k) {
    switch (k) {
        case optimizer_spec::kind::sgd: return "sgd";
        case optimizer_spec::kind::adam: return "adam";
        case optimizer_spec::kind::adamw: return "adamw";
    }
    return "?";
}

void optimizer_spec::validate() const {
    auto need = [](bool ok, const std::string& what) {
        if (!ok) throw usage_error("optimizer: " + what);
    };
    need(std::isfinite(weight_decay) && weight_decay >= 0, "weight_decay must be finite and >= 0");
    if (type == kind::sgd) {
        need(std::isfinite(momentum) && momentum >= 0, "momentum must be finite and >= 0");
        need(std::isfinite(dampening), "dampening must be finite");
        need(!nesterov || (momentum > 0 && dampening == 0), "nesterov momentum requires a momentum and zero dampening");
        need(!amsgrad, "amsgrad is an Adam/AdamW option");
    } else {
        need(std::isfinite(beta1) && beta1 >= 0 && beta1 < 1, "beta1 must be in [0, 1)");
        need(std::isfinite(beta2) && beta2 >= 0 && beta2 < 1, "beta2 must be in [0, 1)");
        need(std::isfinite(eps) && eps >= 0, "eps must be finite and >= 0");
        need(momentum == 0 && dampening == 0 && !nesterov, "momentum, dampening and nesterov are SGD options");
    }
}

std::optional<layer_kind> parse_layer_kind(std::string_view name) {
    for (const auto& [kind, n] : layer_names)
        if (n == name) return kind;
    return std::nullopt;
}
std::optional<loss_kind> parse_loss_kind(std::string_view name) {
    if (name == "cross_entropy") return loss_kind::cross_entropy;
    if (name == "mse") return loss_kind::mse;
    return std::nullopt;
}
std::optional<reduction_kind> parse_reduction_kind(std::string_view name) {
    if (name == "mean") return reduction_kind::mean;
    if (name == "sum") return reduction_kind::sum;
    return std::nullopt;
}

bool is_piecewise_linear(layer_kind k) {
    return k == layer_kind::linear || k == layer_kind::relu || k == layer_kind::leaky_relu ||
           k == layer_kind::identity;
}

std::string shape_string(const std::vector<std::size_t>& shape) {
    std::string s = "[";
    for (std::size_t k = 0; k < shape.size(); ++k) s += (k ? ", " : "") + std::to_string(shape[k]);
    return s + "]";
}

namespace {
std::size_t product(const std::vector<std::size_t>& shape) {
    std::size_t n = 1;
    for (std::size_t d : shape)
        if (__builtin_mul_overflow(n, d, &n)) return std::numeric_limits<std::size_t>::max();
    return n;
}
constexpr std::size_t max_parameters = std::size_t{1} << 53;  // every index exact in binary64

// H' = ⌊(H + 2p − d(k−1) − 1)/s⌋ + 1 (torch), or 0 when the kernel does not fit.
std::size_t pooled_size(std::size_t h, std::size_t k, std::size_t s, std::size_t p, std::size_t d) {
    const std::size_t span = d * (k - 1) + 1;
    if (h + 2 * p < span) return 0;
    return (h + 2 * p - span) / s + 1;
}
}  // namespace

std::vector<std::size_t> layer_output_shape(const layer_spec& l, const std::vector<std::size_t>& in,
                                            const std::string& path, std::string* error) {
    auto fail = [&](const std::string& rule) {
        *error = path + ": " + rule;
        return std::vector<std::size_t>{};
    };
    const std::string name(to_string(l.kind));
    switch (l.kind) {
        case layer_kind::linear: {
            if (in.empty()) return fail("linear needs an input with at least one axis");
            if (l.out_features == 0) return fail("linear out_features must be >= 1");
            std::vector<std::size_t> out = in;
            out.back() = l.out_features;
            return out;
        }
        case layer_kind::conv2d:
        case layer_kind::max_pool2d:
        case layer_kind::avg_pool2d: {
            if (in.size() != 3)
                return fail(name + " needs a [C, H, W] input, found " + shape_string(in) +
                            " (give the model an input_shape [C, H, W])");
            const bool conv = l.kind == layer_kind::conv2d;
            if (conv && l.out_features == 0) return fail("conv2d out_channels must be >= 1");
            if (conv && l.groups == 0) return fail("conv2d groups must be >= 1");
            if (conv && (in[0] % l.groups != 0 || l.out_features % l.groups != 0))
                return fail("conv2d channels in (" + std::to_string(in[0]) + ") and out (" +
                            std::to_string(l.out_features) + ") must both be divisible by groups (" +
                            std::to_string(l.groups) + ")");
            std::vector<std::size_t> out{conv ? l.out_features : in[0], 0, 0};
            for (int a = 0; a < 2; ++a) {
                const std::size_t k = l.kernel[a], s = l.stride[a] == 0 ? k : l.stride[a];
                if (k == 0 || s == 0 || l.dilation[a] == 0)
                    return fail(name + " kernel_size, stride and dilation must be >= 1");
                if (k > (std::size_t{1} << 20) || l.padding[a] > (std::size_t{1} << 20) ||
                    l.dilation[a] > (std::size_t{1} << 20))
                    return fail(name + " kernel_size, padding and dilation must be <= 2^20");
                if (!conv && 2 * l.padding[a] > k)
                    return fail(name + " padding (" + std::to_string(l.padding[a]) +
                                ") must be at most half the kernel size (" + std::to_string(k) + ")");
                out[1 + a] = pooled_size(in[1 + a], k, s, l.padding[a], l.dilation[a]);
                // A max pool's window must see the input somewhere (padding is −∞): with dilation a
                // window can fall entirely on padding; torch would output −∞ there.
                if (l.kind == layer_kind::max_pool2d && l.dilation[a] > 1 && l.padding[a] > 0)
                    for (std::size_t y = 0; y < out[1 + a]; ++y) {
                        bool sees = false;
                        for (std::size_t kk = 0; kk < k && !sees; ++kk) {
                            const std::size_t pos = y * s + kk * l.dilation[a];
                            sees = pos >= l.padding[a] && pos < l.padding[a] + in[1 + a];
                        }
                        if (!sees)
                            return fail("max_pool2d window " + std::to_string(y) + " on axis " + std::to_string(a) +
                                        " lies entirely on padding (dilation " + std::to_string(l.dilation[a]) + ")");
                    }
                if (out[1 + a] == 0)
                    return fail(name + " kernel " + std::to_string(l.kernel[0]) + "x" + std::to_string(l.kernel[1]) +
                                (l.dilation[0] * l.dilation[1] != 1 ? " (dilated)" : "") +
                                " is larger than the padded input " + std::to_string(in[1] + 2 * l.padding[0]) + "x" +
                                std::to_string(in[2] + 2 * l.padding[1]) + " (a zero-size output)");
            }
            return out;
        }
        case layer_kind::flatten:
            return {product(in)};
        case layer_kind::layer_norm: {
            const auto& ns = l.normalized_shape;
            if (ns.empty()) return fail("layer_norm normalized_shape must not be empty");
            if (ns.size() > in.size() || !std::equal(ns.begin(), ns.end(), in.end() - static_cast<std::ptrdiff_t>(ns.size())))
                return fail("layer_norm normalized_shape " + shape_string(ns) + " is not a suffix of the incoming shape " +
                            shape_string(in));
            if (!std::isfinite(l.eps) || l.eps < 0) return fail("layer_norm eps must be finite and >= 0");
            return in;
        }
        case layer_kind::residual: {
            if (l.body.empty()) return fail("residual body must not be empty");
            std::vector<std::size_t> b = in, s = in;
            for (std::size_t k = 0; k < l.body.size(); ++k) {
                b = layer_output_shape(l.body[k], b, path + ".body[" + std::to_string(k) + "]", error);
                if (b.empty()) return {};
            }
            for (std::size_t k = 0; k < l.shortcut.size(); ++k) {
                s = layer_output_shape(l.shortcut[k], s, path + ".shortcut[" + std::to_string(k) + "]", error);
                if (s.empty()) return {};
            }
            if (b != s)
                return fail("residual branches end in different shapes: body " + shape_string(b) + ", shortcut " +
                            shape_string(s));
            return b;
        }
        case layer_kind::leaky_relu:
            if (!std::isfinite(l.negative_slope)) return fail("leaky_relu negative_slope must be finite");
            return in;
        case layer_kind::embedding:
            if (in.size() != 1)
                return fail("embedding must be the first layer: it reads token ids [T] (the model's input, input_dtype "
                            "int64), found " + shape_string(in));
            if (l.num_embeddings == 0 || l.out_features == 0)
                return fail("embedding num_embeddings and embedding_dim must be >= 1");
            return {in[0], l.out_features};
        case layer_kind::positional_embedding:
        case layer_kind::self_attention:
        case layer_kind::select:
        case layer_kind::mean_tokens: {
            if (in.size() != 2) return fail(name + " needs a sequence [T, D], found " + shape_string(in));
            if (l.kind == layer_kind::self_attention) {
                if (l.num_heads == 0) return fail("self_attention num_heads must be >= 1");
                if (in[1] % l.num_heads != 0)
                    return fail("self_attention embed_dim " + std::to_string(in[1]) + " is not divisible by num_heads " +
                                std::to_string(l.num_heads));
            }
            if (l.kind == layer_kind::select) {
                const auto T = static_cast<std::int64_t>(in[0]);
                if (l.index < -T || l.index >= T)
                    return fail("select index " + std::to_string(l.index) + " is out of range for " + std::to_string(T) +
                                " tokens (allowed " + std::to_string(-T) + " to " + std::to_string(T - 1) + ")");
            }
            if (l.kind == layer_kind::select || l.kind == layer_kind::mean_tokens) return {in[1]};
            return in;
        }
        default:
            return in;  // elementwise activations
    }
}

std::size_t layer_parameter_count(const layer_spec& l, const std::vector<std::size_t>& in) {
    switch (l.kind) {
        case layer_kind::linear: return l.out_features * in.back() + (l.bias ? l.out_features : 0);
        case layer_kind::conv2d:
            return l.out_features * (in[0] / l.groups) * l.kernel[0] * l.kernel[1] + (l.bias ? l.out_features : 0);
        case layer_kind::layer_norm: {
            std::size_t n = 1;
            for (std::size_t d : l.normalized_shape) n *= d;
            return l.elementwise_affine ? n * (l.bias ? 2 : 1) : 0;
        }
        case layer_kind::embedding: return l.num_embeddings * l.out_features;
        case layer_kind::positional_embedding: return in[0] * in[1];
        case layer_kind::self_attention: {
            const std::size_t D = in[1];
            return 4 * D * D + (l.bias ? 4 * D : 0);
        }
        case layer_kind::residual: {
            std::size_t p = 0;
            std::string err;
            std::vector<std::size_t> s = in;
            for (const auto& sub : l.body) { p += layer_parameter_count(sub, s); s = layer_output_shape(sub, s, "", &err); }
            s = in;
            for (const auto& sub : l.shortcut) { p += layer_parameter_count(sub, s); s = layer_output_shape(sub, s, "", &err); }
            return p;
        }
        default: return 0;
    }
}

bool layer_parameter_count_checked(const layer_spec& l, const std::vector<std::size_t>& in, std::size_t* count) {
    std::size_t a = 0, b = 0, extra = 0;  // count = a·b + extra, each step checked
    switch (l.kind) {
        case layer_kind::linear:
        case layer_kind::conv2d:
            a = l.out_features;
            b = l.kind == layer_kind::linear ? in.back() : (in[0] / l.groups) * l.kernel[0] * l.kernel[1];
            extra = l.bias ? l.out_features : 0;
            break;
        case layer_kind::embedding: a = l.num_embeddings; b = l.out_features; break;
        case layer_kind::self_attention: a = 4 * in[1]; b = in[1] + (l.bias ? 1 : 0); break;  // 4D² + 4D
        default: *count = layer_parameter_count(l, in); return true;
    }
    return !__builtin_mul_overflow(a, b, count) && !__builtin_add_overflow(*count, extra, count);
}

namespace {
// Walks a sequence: shapes, parameter counts with overflow checks.
bool walk_sequence(const std::vector<layer_spec>& layers, const std::string& prefix, std::vector<std::size_t>& shape,
                   std::size_t& params, std::string& error) {
    for (std::size_t k = 0; k < layers.size(); ++k) {
        const layer_spec& l = layers[k];
        const std::string path = prefix + "[" + std::to_string(k) + "]";
        // Sizes first (products below must not overflow).
        if (product(shape) > max_parameters) { error = path + ": the value flowing in is too large"; return false; }
        if (l.kind == layer_kind::residual) {
            std::vector<std::size_t> b = shape, s = shape;
            if (l.body.empty()) { error = path + ": residual body must not be empty"; return false; }
            if (!walk_sequence(l.body, path + ".body", b, params, error)) return false;
            if (!walk_sequence(l.shortcut, path + ".shortcut", s, params, error)) return false;
            if (b != s) {
                error = path + ": residual branches end in different shapes: body " + shape_string(b) + ", shortcut " +
                        shape_string(s);
                return false;
            }
            shape = b;
            continue;
        }
        std::vector<std::size_t> out = layer_output_shape(l, shape, path, &error);
        if (out.empty()) return false;
        if (product(out) > max_parameters) { error = path + ": the value flowing out is too large"; return false; }
        std::size_t block = 0;
        if (!layer_parameter_count_checked(l, shape, &block)) {
            error = "model has too many parameters";
            return false;
        }
        if (__builtin_add_overflow(params, block, &params) || params > max_parameters) {
            error = "model has too many parameters";
            return false;
        }
        shape = std::move(out);
    }
    return true;
}
}  // namespace

std::string check_model(const model_spec& m, std::vector<std::size_t>* output_shape, std::size_t* parameters) {
    std::vector<std::size_t> shape = m.sample_shape();
    if (shape.empty() || product(shape) == 0) return "model input_shape must have 1 to 3 axes, each >= 1";
    if (shape.size() > 3) return "model input_shape must have 1 to 3 axes, each >= 1";
    if (m.layers.empty()) return "'model.layers' must not be empty";
    // Token ids enter through an embedding, and only there.
    if (m.tokens && m.layers[0].kind != layer_kind::embedding)
        return "layers[0]: a model with input_dtype int64 (token ids) must begin with an embedding layer";
    if (m.tokens && shape.size() != 1) return "a model with input_dtype int64 needs input_shape [T]";
    if (!m.tokens && m.layers[0].kind == layer_kind::embedding)
        return "layers[0]: embedding needs token ids: give the model input_dtype int64";
    {
        std::string where;
        const std::function<bool(const std::vector<layer_spec>&, const std::string&)> stray =
            [&](const std::vector<layer_spec>& seq, const std::string& prefix) {
                for (std::size_t k = 0; k < seq.size(); ++k) {
                    const std::string path = prefix + "[" + std::to_string(k) + "]";
                    if (seq[k].kind == layer_kind::embedding && path != "layers[0]") { where = path; return true; }
                    if (stray(seq[k].body, path + ".body") || stray(seq[k].shortcut, path + ".shortcut")) return true;
                }
                return false;
            };
        if (stray(m.layers, "layers")) return where + ": embedding must be the first layer (it reads the token ids)";
    }
    std::size_t params = 0;
    std::string error;
    if (!walk_sequence(m.layers, "layers", shape, params, error)) return error;
    if (shape.size() != 1)
        return "the model's output must be a vector [C], found " + shape_string(shape) +
               " (end with flatten or a linear layer on a vector)";
    if (params == 0) return "model has no parameters";
    if (output_shape != nullptr) *output_shape = shape;
    if (parameters != nullptr) *parameters = params;
    return "";
}

std::vector<std::size_t> model_spec::sample_shape() const {
    return input_shape.empty() ? std::vector<std::size_t>{input_dim} : input_shape;
}

std::size_t token_id(double v, std::size_t vocabulary) {
    if (!(v >= 0) || v != std::floor(v) || v >= static_cast<double>(vocabulary))
        throw usage_error("token id " + std::to_string(v) + " is not an integer in [0, " + std::to_string(vocabulary) + ")");
    return static_cast<std::size_t>(v);
}

bool model_spec::is_mlp() const {
    if (tokens || input_shape.size() > 1) return false;
    for (const auto& l : layers)
        if (l.kind != layer_kind::linear && !l.is_activation()) return false;
    return true;
}

void model_spec::validate() const {
    if (input_dim == 0) throw usage_error("model: input_dim must be >= 1");
    if (is_mlp()) {
        bool any_linear = false;
        for (const auto& l : layers) {
            if (l.kind == layer_kind::linear) {
                any_linear = true;
                if (l.out_features == 0) throw usage_error("model: linear out_features must be >= 1");
            }
        }
        if (!any_linear) throw usage_error("model: needs at least one linear layer");
        return;
    }
    const std::string e = check_model(*this);
    if (!e.empty()) throw usage_error("model: " + e);
}

std::size_t model_spec::output_dim() const {
    if (!is_mlp()) {
        std::vector<std::size_t> out;
        if (!check_model(*this, &out).empty()) return 0;
        return out[0];
    }
    std::size_t c = 0;
    for (const auto& l : layers)
        if (l.kind == layer_kind::linear) c = l.out_features;
    return c;
}

std::vector<std::size_t> model_spec::widths() const {
    std::vector<std::size_t> w{input_dim};
    for (const auto& l : layers) w.push_back(l.kind == layer_kind::linear ? l.out_features : w.back());
    return w;
}

std::size_t model_spec::parameter_count() const {
    if (!is_mlp()) {
        std::size_t p = 0;
        if (!check_model(*this, nullptr, &p).empty()) return 0;
        return p;
    }
    std::size_t p = 0;
    std::size_t in = input_dim;
    for (const auto& l : layers) {
        if (l.kind != layer_kind::linear) continue;
        p += l.out_features * in + (l.bias ? l.out_features : 0);
        in = l.out_features;
    }
    return p;
}

std::size_t model_spec::linear_layer_count() const {
    std::size_t n = 0;
    for (const auto& l : layers) n += l.kind == layer_kind::linear ? 1 : 0;
    return n;
}

model_spec make_mlp(std::size_t input_dim, const std::vector<std::size_t>& hidden, std::size_t outputs,
                    layer_kind activation, double negative_slope, bool bias) {
    model_spec m;
    m.input_dim = input_dim;
    for (std::size_t h : hidden) {
        m.layers.push_back(layer_spec{.kind = layer_kind::linear, .out_features = h, .bias = bias});
        m.layers.push_back(layer_spec{.kind = activation, .negative_slope = negative_slope});
    }
    m.layers.push_back(layer_spec{.kind = layer_kind::linear, .out_features = outputs, .bias = bias});
    return m;
}

}  // namespace epk

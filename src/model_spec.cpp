#include "epk/model_spec.hpp"

#include <array>
#include <cmath>
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
}  // namespace

std::string_view to_string(layer_kind k) {
    for (const auto& [kind, name] : layer_names)
        if (kind == k) return name;
    return "?";
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

void model_spec::validate() const {
    if (input_dim == 0) throw usage_error("model: input_dim must be >= 1");
    bool any_linear = false;
    for (const auto& l : layers) {
        if (l.kind == layer_kind::linear) {
            any_linear = true;
            if (l.out_features == 0) throw usage_error("model: linear out_features must be >= 1");
        }
    }
    if (!any_linear) throw usage_error("model: needs at least one linear layer");
}

std::size_t model_spec::output_dim() const {
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
        m.layers.push_back({layer_kind::linear, h, bias, 0.01});
        m.layers.push_back({activation, 0, true, negative_slope});
    }
    m.layers.push_back({layer_kind::linear, outputs, bias, 0.01});
    return m;
}

}  // namespace epk

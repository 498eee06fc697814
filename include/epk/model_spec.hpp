// epk/model_spec.hpp — what a network, a loss and an optimizer *are*,
// independent of the scalar type.  These mirror the trace manifest
// (spec/trace-format.md) one to one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace epk {

enum class layer_kind { linear, relu, leaky_relu, tanh, sigmoid, softplus, gelu, identity };

struct layer_spec {
    layer_kind kind = layer_kind::identity;
    std::size_t out_features = 0;  // linear only
    bool bias = true;              // linear only
    double negative_slope = 0.01;  // leaky_relu only; the binary64 value from the manifest
};

struct model_spec {
    std::size_t input_dim = 0;
    std::vector<layer_spec> layers;

    // Throws usage_error when the spec is impossible (no linear layer, zero widths).
    void validate() const;
    // C: out_features of the last linear layer.
    std::size_t output_dim() const;
    // P: total parameter count, torch's parameters_to_vector order.
    std::size_t parameter_count() const;
    // Width of the value flowing *into* layer k (k = 0 .. layers.size()).
    std::vector<std::size_t> widths() const;
    std::size_t linear_layer_count() const;
};

enum class loss_kind { cross_entropy, mse };
enum class reduction_kind { mean, sum };

struct loss_spec {
    loss_kind kind = loss_kind::cross_entropy;
    reduction_kind reduction = reduction_kind::mean;
};

// The update rule: torch.optim.SGD (momentum, dampening, nesterov, weight_decay),
// torch.optim.Adam or torch.optim.AdamW (betas, eps, weight_decay, amsgrad), with
// torch's defaults (AdamW's weight_decay default 0.01 is the parser's business).
// The arithmetic is optimizer.hpp's; the kernel representation optimizer_kernel.hpp's.
struct optimizer_spec {
    enum class kind { sgd, adam, adamw };
    kind type = kind::sgd;
    double momentum = 0, dampening = 0, weight_decay = 0;  // SGD (weight_decay also Adam/AdamW)
    bool nesterov = false;
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // Adam/AdamW
    bool amsgrad = false;

    // torch's own checks: every value finite and ≥ 0, betas in [0, 1), nesterov only with
    // momentum > 0 and dampening 0; fields of the other kind at their defaults.
    // usage_error naming the field otherwise.
    void validate() const;
    // Plain SGD, w ← w − η·g: what trace format version 1 describes.
    bool is_plain_sgd() const { return type == kind::sgd && momentum == 0 && weight_decay == 0; }
};
std::string_view to_string(optimizer_spec::kind k);

struct sgd_spec {
    double learning_rate = 0.1;
    std::size_t steps = 0;
    optimizer_spec rule;           // plain SGD unless the manifest (version 2) says otherwise
    std::size_t initial_step = 0;  // steps the optimizer took before this trace (recorded state)
    // Plain SGD from a fresh start: the runs of trace format version 1, with per-step
    // kernels K_s and the structured path kernel.
    bool plain() const { return rule.is_plain_sgd() && initial_step == 0; }
};

// Names as in the manifest.  `parse_*` return nullopt on an unknown name.
std::string_view to_string(layer_kind k);
std::string_view to_string(loss_kind k);
std::string_view to_string(reduction_kind k);
std::optional<layer_kind> parse_layer_kind(std::string_view name);
std::optional<loss_kind> parse_loss_kind(std::string_view name);
std::optional<reduction_kind> parse_reduction_kind(std::string_view name);
bool is_piecewise_linear(layer_kind k);

// A plain MLP: linear(h1), act, linear(h2), act, ..., linear(C).
model_spec make_mlp(std::size_t input_dim, const std::vector<std::size_t>& hidden, std::size_t outputs,
                    layer_kind activation, double negative_slope = 0.01, bool bias = true);

}  // namespace epk

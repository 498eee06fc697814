// epk/model_spec.hpp — what a network, a loss and an optimizer *are*,
// independent of the scalar type.  These mirror the trace manifest
// (docs/trace-format.md) one to one.
//
// A model is a tree: a sequence of layers, where a `residual` layer holds two
// sequences (body, shortcut) whose outputs are added.  Versions 1 and 2 of the
// trace format describe MLPs (linear layers and elementwise activations on a
// vector); version 3 adds input_shape, conv2d, pooling, flatten, layer_norm and
// residual (layer_tree.hpp runs them; network.hpp keeps the MLP's own loops).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace epk {

enum class layer_kind {
    linear, relu, leaky_relu, tanh, sigmoid, softplus, gelu, identity,  // versions 1 and 2
    conv2d, max_pool2d, avg_pool2d, flatten, layer_norm, residual,      // version 3
    embedding, positional_embedding, self_attention, select, mean_tokens  // version 3, sequences
};

struct layer_spec {
    layer_kind kind = layer_kind::identity;
    std::size_t out_features = 0;  // linear: out_features; conv2d: out_channels
    bool bias = true;              // linear, conv2d, layer_norm (β)
    double negative_slope = 0.01;  // leaky_relu only; the binary64 value from the manifest
    // conv2d and the pools: [h, w]; stride 0 = kernel_size (the pools' default)
    std::array<std::size_t, 2> kernel{0, 0}, stride{1, 1}, padding{0, 0}, dilation{1, 1};
    std::size_t groups = 1;                   // conv2d
    std::vector<std::size_t> normalized_shape{};  // layer_norm
    double eps = 1e-5;                        // layer_norm
    bool elementwise_affine = true;           // layer_norm: γ (and β when bias)
    std::size_t num_embeddings = 0;           // embedding: V (embedding_dim is out_features)
    std::size_t num_heads = 0;                // self_attention
    bool causal = false;                      // self_attention: position i attends to j <= i
    std::int64_t index = -1;                  // select: the token (negative: from the end)
    std::vector<layer_spec> body{}, shortcut{};  // residual: body(x) + shortcut(x), [] = identity

    bool is_activation() const;  // elementwise: relu … identity
};

struct model_spec {
    std::size_t input_dim = 0;              // D = prod(input_shape)
    std::vector<std::size_t> input_shape;   // one sample's shape; empty = [input_dim] (versions 1-2)
    bool tokens = false;                    // input_dtype "int64": token ids, the first layer an embedding
    std::vector<layer_spec> layers;

    // Throws usage_error when the spec is impossible (check_model's rule).
    void validate() const;
    // C: the length of the output vector.
    std::size_t output_dim() const;
    // P: total parameter count, torch's parameters_to_vector order.
    std::size_t parameter_count() const;
    // Width of the value flowing *into* layer k (k = 0 .. layers.size()); MLPs only.
    std::vector<std::size_t> widths() const;
    std::size_t linear_layer_count() const;
    // The shape of one input sample ([input_dim] when input_shape is empty).
    std::vector<std::size_t> sample_shape() const;
    // A vector input and a flat sequence of linear layers and activations: the
    // networks of versions 1 and 2, run by network.hpp's own loops (and the
    // structured path kernel).  Anything else is run by layer_tree.hpp.
    bool is_mlp() const;
};

// The token id held by an input entry v (a real holding an integer): throws usage_error
// when v is not an integer in [0, vocabulary).
std::size_t token_id(double v, std::size_t vocabulary);

// The shape rule of every layer of `m` (docs/trace-format.md, "Layers"): "" when the model
// is possible, else the first broken rule, naming the layer by its path
// ("layers[3].body[2]: kernel 5x5 larger than the padded input 4x4").
// On success fills the output shape and P when asked.
std::string check_model(const model_spec& m, std::vector<std::size_t>* output_shape = nullptr,
                        std::size_t* parameters = nullptr);
// Parameters of one layer given the shape flowing into it (0 for unparameterised kinds);
// residual: its body's and shortcut's.  The shape must satisfy check_model.
std::size_t layer_parameter_count(const layer_spec& l, const std::vector<std::size_t>& in_shape);
// The same into *count, false when it overflows std::size_t (walk_sequence, the manifest reader).
bool layer_parameter_count_checked(const layer_spec& l, const std::vector<std::size_t>& in_shape, std::size_t* count);
// The shape leaving one layer, or "" and a rule in *error.
std::vector<std::size_t> layer_output_shape(const layer_spec& l, const std::vector<std::size_t>& in_shape,
                                            const std::string& path, std::string* error);
std::string shape_string(const std::vector<std::size_t>& shape);  // "[1, 8, 8]"

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
// torch's class name of a layer kind ("Conv2d"), for messages and --manifest-layers torch.
std::string_view torch_name(layer_kind k);
// A type name of version 3: the canonical name or torch's class name (and whether it was torch's).
std::optional<layer_kind> parse_layer_type(std::string_view name, bool* is_torch_name = nullptr);
// Layers that version 3 refuses on purpose, with the reason ("" when `name` is not one).
std::string_view refused_layer_reason(std::string_view name);

// A plain MLP: linear(h1), act, linear(h2), act, ..., linear(C).
model_spec make_mlp(std::size_t input_dim, const std::vector<std::size_t>& hidden, std::size_t outputs,
                    layer_kind activation, double negative_slope = 0.01, bool bias = true);

}  // namespace epk

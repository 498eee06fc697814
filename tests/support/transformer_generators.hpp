// Small random transformers for the sequence-layer properties (test_transformer): token ids
// [T] (T 2-5) into an embedding (V 3-8, D 4-16), an optional positional embedding, 1-2 blocks
// of residual (optional layer norm, self-attention with 1-4 heads dividing D, causal or not,
// with or without bias), an optional residual MLP block (relu or gelu), an optional final layer
// norm, then select (any valid index) or mean_tokens and a linear head (C 2-4).
#pragma once

#include <rapidcheck.h>

#include <functional>
#include <string>
#include <vector>

#include "epk/model_spec.hpp"
#include "support/cnn_generators.hpp"

namespace epk::testing::seq {

using cnn::linear;
using cnn::norm;
using cnn::residual;
using cnn::simple;

inline layer_spec embedding(std::size_t vocabulary, std::size_t dim) {
    layer_spec l;
    l.kind = layer_kind::embedding;
    l.num_embeddings = vocabulary;
    l.out_features = dim;
    return l;
}
inline layer_spec attention(std::size_t heads, bool causal, bool bias = true) {
    layer_spec l;
    l.kind = layer_kind::self_attention;
    l.num_heads = heads;
    l.causal = causal;
    l.bias = bias;
    return l;
}
inline layer_spec select(std::int64_t index) {
    layer_spec l;
    l.kind = layer_kind::select;
    l.index = index;
    return l;
}
inline model_spec token_model(std::size_t T, std::vector<layer_spec> layers) {
    model_spec m;
    m.tokens = true;
    m.input_dim = T;
    m.layers = std::move(layers);
    return m;
}

struct transformer_options {
    bool allow_relu = true;  // a ReLU MLP block (kinks behind attention)
};

inline model_spec gen_transformer(transformer_options o = {}) {
    const std::size_t T = *rc::gen::inRange<std::size_t>(2, 6), V = *rc::gen::inRange<std::size_t>(3, 9);
    const std::size_t H = *rc::gen::inRange<std::size_t>(1, 5);
    const std::size_t D = H * *rc::gen::inRange<std::size_t>(std::max<std::size_t>(1, (4 + H - 1) / H), 16 / H + 1);
    std::vector<layer_spec> layers{embedding(V, D)};
    if (*rc::gen::arbitrary<bool>()) layers.push_back(simple(layer_kind::positional_embedding));
    const int blocks = *rc::gen::inRange(1, 3);
    for (int b = 0; b < blocks; ++b) {
        std::vector<layer_spec> body;
        if (*rc::gen::arbitrary<bool>()) body.push_back(norm({D}));
        body.push_back(attention(*rc::gen::element<std::size_t>(1, H), *rc::gen::arbitrary<bool>(), *rc::gen::arbitrary<bool>()));
        layers.push_back(residual(std::move(body), {}));
    }
    if (*rc::gen::arbitrary<bool>()) {  // the MLP block
        std::vector<layer_spec> body;
        if (*rc::gen::arbitrary<bool>()) body.push_back(norm({D}));
        body.push_back(linear(*rc::gen::inRange<std::size_t>(2, 9)));
        body.push_back(simple(o.allow_relu && *rc::gen::arbitrary<bool>() ? layer_kind::relu : layer_kind::gelu));
        body.push_back(linear(D));
        layers.push_back(residual(std::move(body), {}));
    }
    if (*rc::gen::arbitrary<bool>()) layers.push_back(norm({D}));
    if (*rc::gen::arbitrary<bool>()) {
        const auto Ti = static_cast<std::int64_t>(T);
        layers.push_back(select(*rc::gen::inRange<std::int64_t>(-Ti, Ti)));
    } else {
        layers.push_back(simple(layer_kind::mean_tokens));
    }
    layers.push_back(linear(*rc::gen::inRange<std::size_t>(2, 5)));
    const model_spec m = token_model(T, std::move(layers));
    RC_ASSERT(check_model(m).empty());
    return m;
}

// Token rows [rows × T] with ids in [0, V).
inline std::vector<double> gen_tokens(const model_spec& m, std::size_t rows) {
    std::vector<double> x(rows * m.input_dim);
    const auto V = static_cast<int>(m.layers[0].num_embeddings);
    for (double& e : x) e = *rc::gen::inRange(0, V);
    return x;
}

inline std::string describe(const model_spec& m) {
    std::string s = "T " + std::to_string(m.input_dim) + ":";
    const std::function<void(const std::vector<layer_spec>&)> walk = [&](const std::vector<layer_spec>& seq) {
        for (const layer_spec& l : seq) {
            s += " " + std::string(to_string(l.kind));
            if (l.kind == layer_kind::self_attention)
                s += "(" + std::to_string(l.num_heads) + (l.causal ? ",causal" : "") + (l.bias ? "" : ",nobias") + ")";
            if (l.kind == layer_kind::embedding) s += "(" + std::to_string(l.num_embeddings) + "," + std::to_string(l.out_features) + ")";
            if (l.kind == layer_kind::select) s += "(" + std::to_string(l.index) + ")";
            if (l.kind == layer_kind::residual) {
                s += "[";
                walk(l.body);
                s += " ]";
            }
        }
    };
    walk(m.layers);
    return s;
}

}  // namespace epk::testing::seq

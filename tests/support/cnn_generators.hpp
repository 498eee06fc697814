// Small CNNs and ResNets for the layer-library properties (test_layers, test_layer_kernel).
#pragma once

#include <rapidcheck.h>

#include <algorithm>
#include <vector>

#include "epk/model_spec.hpp"

namespace epk::testing::cnn {


inline layer_spec conv(std::size_t out, std::size_t k, std::size_t s = 1, std::size_t p = 0, std::size_t d = 1,
                std::size_t groups = 1, bool bias = true) {
    layer_spec l;
    l.kind = layer_kind::conv2d;
    l.out_features = out;
    l.kernel = {k, k};
    l.stride = {s, s};
    l.padding = {p, p};
    l.dilation = {d, d};
    l.groups = groups;
    l.bias = bias;
    return l;
}
inline layer_spec pool(layer_kind kind, std::size_t k, std::size_t s = 0, std::size_t p = 0) {
    layer_spec l;
    l.kind = kind;
    l.kernel = {k, k};
    l.stride = {s, s};
    l.padding = {p, p};
    return l;
}
inline layer_spec simple(layer_kind kind) {
    layer_spec l;
    l.kind = kind;
    return l;
}
inline layer_spec linear(std::size_t out, bool bias = true) {
    layer_spec l;
    l.kind = layer_kind::linear;
    l.out_features = out;
    l.bias = bias;
    return l;
}
inline layer_spec norm(std::vector<std::size_t> shape, bool affine = true) {
    layer_spec l;
    l.kind = layer_kind::layer_norm;
    l.normalized_shape = std::move(shape);
    l.elementwise_affine = affine;
    return l;
}
inline layer_spec residual(std::vector<layer_spec> body, std::vector<layer_spec> shortcut) {
    layer_spec l;
    l.kind = layer_kind::residual;
    l.body = std::move(body);
    l.shortcut = std::move(shortcut);
    return l;
}
inline model_spec image_model(std::vector<std::size_t> shape, std::vector<layer_spec> layers) {
    model_spec m;
    m.input_shape = std::move(shape);
    m.input_dim = 1;
    for (std::size_t d : m.input_shape) m.input_dim *= d;
    m.layers = std::move(layers);
    return m;
}



// A random small CNN / ResNet on [c, h, h] (h 4-7) ending in flatten + linear 2-3.
inline model_spec gen_cnn(bool piecewise_linear = false, bool allow_norm = true) {
    const std::size_t c = *rc::gen::inRange<std::size_t>(1, 4), h = *rc::gen::inRange<std::size_t>(4, 8);
    std::vector<layer_spec> layers;
    std::size_t ch = c, size = h;
    const auto act = [piecewise_linear] {
        const layer_kind kinds[] = {layer_kind::relu, layer_kind::leaky_relu, layer_kind::identity, layer_kind::tanh,
                                    layer_kind::sigmoid, layer_kind::softplus, layer_kind::gelu};
        layer_spec a = simple(kinds[*rc::gen::inRange(0, piecewise_linear ? 3 : 7)]);
        a.negative_slope = 0.125;
        return a;
    };
    const int blocks = *rc::gen::inRange(1, 4);
    for (int b = 0; b < blocks; ++b) {
        const int what = *rc::gen::inRange(0, allow_norm ? 5 : 4);
        if (what == 0 || size < 3) {  // conv (+ activation)
            const std::size_t k = std::min<std::size_t>(size, *rc::gen::inRange<std::size_t>(1, 4));
            const std::size_t s = *rc::gen::inRange<std::size_t>(1, 3), p = *rc::gen::inRange<std::size_t>(0, 2);
            const std::size_t out = *rc::gen::inRange<std::size_t>(1, 4);
            const std::size_t groups = (ch % 2 == 0 && out % 2 == 0 && *rc::gen::arbitrary<bool>()) ? 2 : 1;
            layers.push_back(conv(out, k, s, p, 1, groups, *rc::gen::arbitrary<bool>()));
            ch = out;
            size = (size + 2 * p - k) / s + 1;
            layers.push_back(act());
        } else if (what == 1) {  // pooling
            const layer_kind kind = *rc::gen::arbitrary<bool>() ? layer_kind::max_pool2d : layer_kind::avg_pool2d;
            layers.push_back(pool(kind, 2, *rc::gen::inRange<std::size_t>(1, 3), *rc::gen::inRange<std::size_t>(0, 2)));
            const auto& l = layers.back();
            size = (size + 2 * l.padding[0] - 2) / l.stride[0] + 1;
        } else if (what == 2) {  // residual, identity shortcut: a same-size body
            layers.push_back(residual({conv(ch, 3, 1, 1), act(), conv(ch, 1)}, {}));
        } else if (what == 3) {  // residual with a strided projection
            const std::size_t out = *rc::gen::inRange<std::size_t>(1, 4);
            layers.push_back(residual({conv(out, 3, 2, 1), act(), conv(out, 3, 1, 1)}, {conv(out, 1, 2, 0)}));
            ch = out;
            size = (size - 1) / 2 + 1;
        } else {  // layer norm over [C, H, W] or [W], then an activation
            layers.push_back(*rc::gen::arbitrary<bool>() ? norm({ch, size, size}) : norm({size}, *rc::gen::arbitrary<bool>()));
            layers.push_back(act());
        }
    }
    layers.push_back(simple(layer_kind::flatten));
    layers.push_back(linear(*rc::gen::inRange<std::size_t>(2, 4)));
    const model_spec m = image_model({c, h, h}, std::move(layers));
    RC_ASSERT(check_model(m).empty());
    return m;
}

}  // namespace epk::testing::cnn

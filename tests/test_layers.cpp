// The layer library (layer_tree.hpp, epk/layers/) and trace format version 3's model part:
//  - forward semantics of each layer kind on small cases computed by hand (torch's rules:
//    conv index arithmetic, the max pool's first maximiser, padding counted by avg pool,
//    layer norm's biased variance);
//  - an MLP run through the tree equals network.hpp's own loops bit for bit;
//  - random CNNs/ResNets (channels 1-3, kernels 1-3, strides 1-2, padding, dilation, groups,
//    pooling, residual with and without projection, layer norm, every activation):
//    reverse and forward mode agree, the Jacobian's rows are the VJPs of e_q, and in MPFR at
//    256 bits central differences (h = 2^-100) match forward mode to 2^-150 relative;
//  - the manifest reader: round trips, torch class names, layer paths in errors, refusals.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <cmath>
#include <string>

#include "epk/engine.hpp"
#include "epk/mpfr_real.hpp"
#include "epk/network.hpp"
#include "epk/trace.hpp"
#include "support/cnn_generators.hpp"

using namespace epk;
using namespace epk::testing::cnn;


TEST(Layers, ConvForwardByHand) {
    // 1x3x3 input 1..9, one 2x2 kernel [[1, 2], [3, 4]], bias 0.5, stride 1, no padding.
    const model_spec m = image_model({1, 3, 3}, {conv(1, 2), simple(layer_kind::flatten)});
    ASSERT_EQ(m.parameter_count(), 5u);
    ASSERT_EQ(m.output_dim(), 4u);
    std::vector<double> w{1, 2, 3, 4, 0.5};
    matrix<double> x(1, 9);
    for (std::size_t e = 0; e < 9; ++e) x.data[e] = double(e + 1);
    const matrix<double> z = outputs<double>(m, w, x);
    // z[0,0] = 1·1 + 2·2 + 3·4 + 4·5 = 37, z[0,1] = 2+6+15+24 = 47, z[1,0] = 67, z[1,1] = 77
    EXPECT_EQ(z.data, (std::vector<double>{37.5, 47.5, 67.5, 77.5}));
}

TEST(Layers, ConvPaddingStrideDilationGroups) {
    // 2 channels 4x4, groups 2, 1 output channel per group, kernel 2 dilation 2, padding 1, stride 2.
    const model_spec m = image_model({2, 4, 4}, {conv(2, 2, 2, 1, 2, 2, false), simple(layer_kind::flatten)});
    // H' = ⌊(4 + 2 − 2·1 − 1)/2⌋ + 1 = 2
    ASSERT_EQ(m.output_dim(), 8u);
    ASSERT_EQ(m.parameter_count(), 8u);  // [2, 1, 2, 2]
    std::vector<double> w(8, 0.0);
    w[3] = 1;  // group 0: only the kernel's (1, 1) tap: reads h[c0, 2y+1, 2x+1]
    w[4] = 1;  // group 1: only the (0, 0) tap: reads h[c1, 2y−1, 2x−1] (padding at y or x = 0)
    matrix<double> x(1, 32);
    for (std::size_t e = 0; e < 32; ++e) x.data[e] = double(e);
    const matrix<double> z = outputs<double>(m, w, x);
    EXPECT_EQ(z.data, (std::vector<double>{5, 7, 13, 15, 0, 0, 0, 16 + 5}));
}

TEST(Layers, PoolsByHand) {
    // max pool ties go to the first maximiser (its tangent is read there); avg pool counts padding.
    const model_spec mx = image_model({1, 2, 2}, {pool(layer_kind::max_pool2d, 2), simple(layer_kind::flatten),
                                                  linear(1, false)});
    std::vector<double> w{1};
    matrix<double> x(1, 4);
    x.data = {3, 7, 7, 1};
    EXPECT_EQ(outputs<double>(mx, w, x).data, (std::vector<double>{7}));
    // ∂f/∂x goes to the first 7 only (row-major).
    const forward_pass<double> fp = forward<double>(mx, w, x);
    std::vector<double> g(1, 0.0);
    matrix<double> u(1, 1);
    u(0, 0) = 1;
    const matrix<double> adj_x = backward_accumulate<double>(mx, w, fp, u, g);
    EXPECT_EQ(adj_x.data, (std::vector<double>{0, 1, 0, 0}));

    // H' = ⌊(2 + 2 − 2)/2⌋ + 1 = 2: four windows, each one real entry and three zeros of
    // padding, divisor 4: (1, 2, 3, 4), read by a linear layer with weights (1, 10, 100, 1000).
    const model_spec av = image_model({1, 2, 2}, {pool(layer_kind::avg_pool2d, 2, 2, 1), simple(layer_kind::flatten),
                                                  linear(1, false)});
    ASSERT_EQ(av.parameter_count(), 4u);
    x.data = {4, 8, 12, 16};
    EXPECT_EQ(outputs<double>(av, std::vector<double>{1, 10, 100, 1000}, x).data, (std::vector<double>{4321}));
}

TEST(Layers, LayerNormByHand) {
    // x = (1, 2, 3, 4): μ = 2.5, v = 1.25; y = (x − μ)/√(v + ε)·γ + β with γ = 2, β = 1 (ε = 0).
    layer_spec ln = norm({4});
    ln.eps = 0;
    model_spec m;
    m.input_dim = 4;
    m.layers = {ln, linear(1, false)};
    ASSERT_FALSE(m.is_mlp());
    std::vector<double> w{2, 2, 2, 2, 1, 1, 1, 1, 1, 0, 0, 0};
    matrix<double> x(1, 4);
    x.data = {1, 2, 3, 4};
    const double y0 = (1 - 2.5) / std::sqrt(1.25) * 2 + 1;
    EXPECT_NEAR(outputs<double>(m, w, x)(0, 0), y0, 1e-15);
}

TEST(Layers, MlpThroughTheTreeIsBitIdentical) {
    // The same MLP run by network.hpp's loops and by the tree interpreter.
    model_spec m;
    m.input_dim = 5;
    m.layers = {linear(7), simple(layer_kind::tanh), linear(4, false), simple(layer_kind::relu), linear(3)};
    ASSERT_TRUE(m.is_mlp());
    const std::size_t p = m.parameter_count();
    std::vector<double> w(p), v(p);
    for (std::size_t k = 0; k < p; ++k) {
        w[k] = std::sin(1.7 * double(k) + 0.3) / 2;
        v[k] = std::cos(0.9 * double(k));
    }
    matrix<double> x(3, 5);
    for (std::size_t e = 0; e < x.data.size(); ++e) x.data[e] = std::cos(double(e) * 1.3);
    const layer_tree t = compile_tree(m);
    ASSERT_EQ(t.parameters, p);
    std::vector<matrix<double>> tape;
    const matrix<double> zt = tree_forward<double>(t, w, x, &tape);
    EXPECT_EQ(zt.data, outputs<double>(m, w, x).data);
    matrix<double> u(3, 3);
    for (std::size_t e = 0; e < u.data.size(); ++e) u.data[e] = double(e % 5) - 2;
    std::vector<double> gt(p, 0.0);
    tree_backward<double>(t, w, tape, u, gt);
    EXPECT_EQ(gt, vjp<double>(m, w, x, u));  // both: Σ_i in i order, each entry's sum j ascending
}

namespace {

template <Real T>
std::vector<T> random_vector(std::size_t n, double scale) {
    std::vector<T> v(n);
    for (T& e : v) e = T(*rc::gen::inRange(-64, 65) / 64.0 * scale);
    return v;
}

std::string describe(const model_spec& m) {
    trace t;
    t.model = m;
    t.optimizer.steps = 1;
    std::string s = manifest_text(t);
    const auto a = s.find("\"layers\"");
    return s.substr(a, std::min<std::size_t>(600, s.size() - a));
}

}  // namespace

// ⟨t, Jᵀu⟩ = ⟨J t, u⟩ in double (to 1e-10 of the magnitudes' scale), and the Jacobian's rows
// are the VJPs of e_q.
RC_GTEST_PROP(LayerTree, ReverseAndForwardModeAgree, ()) {
    const model_spec m = gen_cnn();
    const std::size_t p = m.parameter_count(), c = m.output_dim(), b = *rc::gen::inRange<std::size_t>(1, 4);
    const auto w = random_vector<double>(p, 0.5), t = random_vector<double>(p, 1.0);
    matrix<double> x(b, m.input_dim), u(b, c);
    x.data = random_vector<double>(x.data.size(), 1.0);
    u.data = random_vector<double>(u.data.size(), 1.0);
    const std::vector<double> g = vjp<double>(m, w, x, u);
    const matrix<double> jt = jvp<double>(m, w, x, t);
    double rev = 0, fwd = 0, scale = 0;
    for (std::size_t k = 0; k < p; ++k) { rev += t[k] * g[k]; scale += std::abs(t[k] * g[k]); }
    for (std::size_t k = 0; k < jt.data.size(); ++k) { fwd += jt.data[k] * u.data[k]; scale += std::abs(jt.data[k] * u.data[k]); }
    RC_ASSERT_FALSE(std::isnan(rev));
    if (!(std::abs(rev - fwd) <= 1e-10 * (1 + scale))) RC_FAIL(describe(m) + ": <t,J'u> = " + std::to_string(rev) + ", <Jt,u> = " + std::to_string(fwd));
    // J(x_0) rows vs VJP of e_q at x_0.
    matrix<double> x0(1, m.input_dim);
    for (std::size_t e = 0; e < m.input_dim; ++e) x0.data[e] = x(0, e);
    const matrix<double> jac = jacobian<double>(m, w, x0);
    for (std::size_t q = 0; q < c; ++q) {
        matrix<double> eq(1, c);
        eq(0, q) = 1;
        const std::vector<double> row = vjp<double>(m, w, x0, eq);
        for (std::size_t k = 0; k < p; ++k) RC_ASSERT(jac(q, k) == row[k]);
    }
}

// MPFR-256: (f(w + h v) − f(w − h v))/(2h) = J v + O(h²) with h = 2^-100: agreement to
// 2^-150 relative except where a kink (relu, max pool) lies within h of the point, which
// random data at these precisions does not hit.
RC_GTEST_PROP(LayerTree, MpfrFiniteDifferencesMatchForwardMode, ()) {
    mpfr_precision_scope scope(256);
    const model_spec m = gen_cnn();
    const std::size_t p = m.parameter_count();
    auto w = random_vector<mpfr_real>(p, 0.5);
    const auto v = random_vector<mpfr_real>(p, 1.0);
    for (std::size_t k = 0; k < p; ++k) w[k] += mpfr_real(1) / mpfr_real(double(977 + k));  // no exact zeros
    matrix<mpfr_real> x(1, m.input_dim);
    x.data = random_vector<mpfr_real>(m.input_dim, 1.0);
    for (auto& e : x.data) e += mpfr_real(1) / mpfr_real(3000);  // off the grid: no exact ties
    mpfr_real h(1);
    for (int k = 0; k < 100; ++k) h = h / mpfr_real(2);  // 2^-100, exactly
    std::vector<mpfr_real> wp(p), wm(p);
    for (std::size_t k = 0; k < p; ++k) { wp[k] = w[k] + h * v[k]; wm[k] = w[k] - h * v[k]; }
    const matrix<mpfr_real> fp = outputs<mpfr_real>(m, wp, x), fm = outputs<mpfr_real>(m, wm, x);
    const matrix<mpfr_real> jv = jvp<mpfr_real>(m, w, x, v);
    for (std::size_t q = 0; q < jv.data.size(); ++q) {
        const mpfr_real fd = (fp.data[q] - fm.data[q]) / (h + h);
        const double err = scalar_traits<mpfr_real>::to_double(rm::abs(fd - jv.data[q]));
        const double mag = 1 + scalar_traits<mpfr_real>::to_double(rm::abs(jv.data[q]));
        if (!(err <= std::ldexp(mag, -150))) RC_FAIL(describe(m) + ": output " + std::to_string(q) + " FD-JVP error " + std::to_string(err));
    }
}

// Round trip through the manifest, and the reader's rules with layer paths.
TEST(TraceV3, ManifestRoundTripAndTorchNames) {
    const std::string text = R"({"format": "epk-trace", "version": 3,
      "model": {"input_shape": [1, 8, 8], "layers": [
        {"type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3, "padding": 1, "padding_mode": "zeros"},
        {"type": "ReLU", "inplace": false}, {"type": "MaxPool2d", "kernel_size": 2, "stride": null, "ceil_mode": false},
        {"type": "residual", "body": [{"type": "conv2d", "out_channels": 4, "kernel_size": [3, 3], "padding": [1, 1]},
                                      {"type": "relu"}, {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}],
         "shortcut": []},
        {"type": "AvgPool2d", "kernel_size": 2, "count_include_pad": true}, {"type": "Flatten", "start_dim": 1, "end_dim": -1},
        {"type": "LayerNorm", "normalized_shape": [16], "eps": 1e-5},
        {"type": "Linear", "in_features": 16, "out_features": 10}]},
      "loss": {"type": "cross_entropy", "reduction": "mean"},
      "optimizer": {"type": "sgd", "learning_rate": 0.1, "steps": 2}})";
    trace t;
    parse_manifest(text, "m.json", t);
    EXPECT_FALSE(t.model.is_mlp());
    EXPECT_EQ(t.model.output_dim(), 10u);
    // conv 4·1·9+4, two convs 2·(4·4·9+4), layer norm 2·16, linear 16·10+10
    EXPECT_EQ(t.model.parameter_count(), 40u + 2 * 148u + 32u + 170u);
    const std::string back = manifest_text(t);
    EXPECT_NE(back.find("\"version\": 3"), std::string::npos);
    trace t2;
    parse_manifest(back, "back.json", t2);
    EXPECT_EQ(manifest_text(t2), back);
    EXPECT_EQ(t2.model.parameter_count(), t.model.parameter_count());
}

namespace {
std::string manifest_error(const std::string& model, int version = 3) {
    const std::string text = "{\"format\": \"epk-trace\", \"version\": " + std::to_string(version) + ", \"model\": " +
                             model +
                             ", \"loss\": {\"type\": \"cross_entropy\", \"reduction\": \"mean\"}, \"optimizer\": "
                             "{\"type\": \"sgd\", \"learning_rate\": 0.1, \"steps\": 2}}";
    trace t;
    try {
        parse_manifest(text, "m.json", t);
    } catch (const input_error& e) {
        return e.what();
    }
    return "accepted";
}
}  // namespace

TEST(TraceV3, BadModelsNameTheLayerAndTheRule) {
    const std::string img = R"("input_shape": [1, 4, 4], )";
    auto has = [](const std::string& msg, const std::string& needle) {
        return msg.find(needle) != std::string::npos ? ::testing::AssertionSuccess()
                                                     : ::testing::AssertionFailure() << msg;
    };
    EXPECT_TRUE(has(manifest_error("{" + img + R"("layers": [{"type": "conv2d", "out_channels": 2, "kernel_size": 5}, {"type": "flatten"}]})"),
                    "m.json: layers[0]: conv2d kernel 5x5 is larger than the padded input 4x4"));
    EXPECT_TRUE(has(manifest_error("{" + img + R"("layers": [{"type": "residual", "body": [{"type": "conv2d", "out_channels": 2, "kernel_size": 1}], "shortcut": []}, {"type": "flatten"}]})"),
                    "layers[0]: residual branches end in different shapes: body [2, 4, 4], shortcut [1, 4, 4]"));
    EXPECT_TRUE(has(manifest_error("{" + img + R"("layers": [{"type": "flatten"}, {"type": "layer_norm", "normalized_shape": [4]}, {"type": "linear", "out_features": 2}]})"),
                    "layers[1]: layer_norm normalized_shape [4] is not a suffix of the incoming shape [16]"));
    EXPECT_TRUE(has(manifest_error(R"({"input_shape": [3, 4, 4], "layers": [{"type": "conv2d", "out_channels": 2, "kernel_size": 1, "groups": 2}, {"type": "flatten"}]})"),
                    "layers[0]: conv2d channels in (3) and out (2) must both be divisible by groups (2)"));
    EXPECT_TRUE(has(manifest_error("{" + img + R"("layers": [{"type": "residual", "body": [{"type": "relu"}, {"type": "BatchNorm2d", "num_features": 1}]}, {"type": "flatten"}]})"),
                    "layers[0].body[1]: BatchNorm2d is not supported: batch norm in training mode couples the samples"));
    EXPECT_TRUE(has(manifest_error("{" + img + R"("layers": [{"type": "dropout", "p": 0.5}, {"type": "flatten"}]})"),
                    "layers[0]: dropout is not supported: dropout draws random masks that the trace does not record"));
    EXPECT_TRUE(has(manifest_error("{" + img + R"("layers": [{"type": "max_pool2d", "kernel_size": 2, "padding": 2}, {"type": "flatten"}]})"),
                    "layers[0]: max_pool2d padding (2) must be at most half the kernel size (2)"));
    EXPECT_TRUE(has(manifest_error("{" + img + R"("layers": [{"type": "conv2d", "out_channels": 2, "kernel_size": 1}]})"),
                    "the model's output must be a vector [C], found [2, 4, 4]"));
    EXPECT_TRUE(has(manifest_error(R"({"input_dim": 4, "input_shape": [4], "layers": [{"type": "linear", "out_features": 2}]})"),
                    "give 'model.input_shape' or 'model.input_dim', not both"));
    EXPECT_TRUE(has(manifest_error(R"({"input_dim": 4, "layers": [{"type": "conv2d", "out_channels": 2, "kernel_size": 1}]})", 2),
                    "'layers[0].type' conv2d needs trace format version 3 (the manifest says version 2)"));
    EXPECT_TRUE(has(manifest_error(R"({"input_dim": 4, "layers": [{"type": "Linear", "out_features": 2}]})", 1),
                    "'layers[0].type' Linear needs trace format version 3 (the manifest says version 1)"));
    EXPECT_TRUE(has(manifest_error(R"({"input_shape": [4], "layers": [{"type": "linear", "out_features": 2, "in_features": 3}]})"),
                    "'layers[0].in_features' is 3 but the width flowing into it is 4"));
    // A version 3 MLP is an MLP (network.hpp's loops, every command).
    trace t;
    parse_manifest(R"({"format": "epk-trace", "version": 3, "model": {"input_shape": [4], "layers": [{"type": "Linear", "out_features": 3}, {"type": "Tanh"}, {"type": "Linear", "out_features": 2}]}, "loss": {"type": "mse", "reduction": "sum"}, "optimizer": {"type": "sgd", "learning_rate": 0.1, "steps": 2}})",
                   "v3.json", t);
    EXPECT_TRUE(t.model.is_mlp());
    EXPECT_EQ(t.model.parameter_count(), 4u * 3 + 3 + 3 * 2 + 2);
}

// A trace written by PyTorch (tests/fixtures/make_torch_resnet_v3.py: conv, relu, max pool, a
// residual block with a strided projection, avg pool, flatten, layer norm, gelu, linear; SGD
// with momentum): epk's outputs at the recorded final parameters, and after replaying the
// training from the first row, equal torch's to 1e-12 relative, in double, long double and
// MPFR; the replayed path equals torch's recorded one to 1e-13.
TEST(TraceV3, TorchResNetPredictAndReplay) {
    const std::string dir = std::string(EPK_FIXTURES_DIR) + "/torch_resnet_v3";
    const trace t = read_trace(dir);
    const npy_array ref = read_npy(std::string(EPK_FIXTURES_DIR) + "/torch_resnet_v3_reference.npy");
    ASSERT_EQ(ref.shape, (std::vector<std::size_t>{5, 3}));
    double scale = 0;
    for (double v : ref.real) scale = std::max(scale, std::abs(v));
    for (const char* p : {"double", "long-double", "mpfr:128"}) {
        const evaluation ev = evaluate_trace(t, parse_precision(p));
        ASSERT_EQ(ev.outputs_final.values.size(), ref.real.size());
        for (std::size_t e = 0; e < ref.real.size(); ++e)
            EXPECT_LE(std::abs(ev.outputs_final.values[e] - ref.real[e]), 1e-12 * scale) << p << " entry " << e;
    }
    trace init = t;
    const std::size_t P = t.model.parameter_count();
    ASSERT_EQ(t.params->shape, (std::vector<std::size_t>{5, P}));
    init.init_params = make_real_array(npy_dtype::f8, {P}, std::vector<double>(t.params->real.begin(), t.params->real.begin() + static_cast<std::ptrdiff_t>(P)));
    init.params.reset();
    const trace replayed = replay_trace(init, parse_precision("double"));
    for (std::size_t e = 0; e < t.params->real.size(); ++e)
        EXPECT_LE(std::abs(replayed.params->real[e] - t.params->real[e]), 1e-13) << "params entry " << e;
    const evaluation ev = evaluate_trace(init, parse_precision("double"));
    for (std::size_t e = 0; e < ref.real.size(); ++e) EXPECT_LE(std::abs(ev.outputs_final.values[e] - ref.real[e]), 1e-12 * scale);
}

// tests/test_trace.cpp — trace directories and manifests (src/trace.cpp).
//
// Covers: write -> read -> write is byte-identical for a trace holding every
// optional file, and for version 2 traces of each optimizer with and without a
// recorded optimizer state (plain SGD is still written in version 1's bytes);
// manifest_text is deterministic and round-trips doubles; version 2's defaults
// and torch's param_group keys; every rejection class of docs/trace-format.md
// (version 2's optimizer fields and recorded-state files included) gives an
// input_error whose file() is the offending file and whose rule() names the
// rule; write_trace never leaves anything behind when it refuses or fails.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "epk/error.hpp"
#include "epk/npy.hpp"
#include "epk/trace.hpp"

namespace fs = std::filesystem;

namespace {

// A fresh, empty temporary directory, removed with everything in it.
class temp_dir {
public:
    temp_dir() {
        static std::mt19937_64 rng{std::random_device{}()};
        path_ = fs::temp_directory_path() /
                ("epk-test-trace-" + std::to_string(::getpid()) + "-" + std::to_string(rng()));
        fs::create_directories(path_);
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    const fs::path& path() const { return path_; }

private:
    fs::path path_;
};

std::vector<char> file_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void put_bytes(const fs::path& p, const std::vector<char>& b) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(b.data(), static_cast<std::streamsize>(b.size()));
}
std::set<std::string> listing(const fs::path& dir) {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
    return names;
}

// input_dim 3: linear(4), tanh, leaky_relu(0.2), linear(2); P = 16 + 10 = 26.
// N = 5, S = 3, B = 2, M = 2.  x arrays in f4, parameters in f8.
epk::trace sample_trace() {
    epk::trace t;
    t.model.input_dim = 3;
    t.model.layers = {{epk::layer_kind::linear, 4, true, 0.01},
                      {epk::layer_kind::tanh, 0, true, 0.01},
                      {epk::layer_kind::leaky_relu, 0, true, 0.2},
                      {epk::layer_kind::linear, 2, true, 0.01}};
    t.loss = {epk::loss_kind::cross_entropy, epk::reduction_kind::mean};
    t.optimizer.learning_rate = 0.1;
    t.optimizer.steps = 3;
    std::vector<double> x;
    for (int i = 0; i < 15; ++i) x.push_back(static_cast<float>(0.1 * i - 0.7));
    t.x_train = epk::make_real_array(epk::npy_dtype::f4, {5, 3}, x);
    t.y_train = epk::make_int_array({5}, {0, 1, 1, 0, 1});
    const std::size_t P = t.model.parameter_count();
    std::vector<double> params;
    for (std::size_t s = 0; s < 4; ++s)
        for (std::size_t i = 0; i < P; ++i) params.push_back(std::sin(1.0 + static_cast<double>(i)) / (1.0 + s));
    t.params = epk::make_real_array(epk::npy_dtype::f8, {4, P}, params);
    t.init_params = epk::make_real_array(epk::npy_dtype::f8, {P}, std::vector<double>(params.begin(), params.begin() + P));
    t.batches = epk::make_int_array({3, 2}, {0, 1, 2, 3, 4, 0});
    t.learning_rates = epk::make_real_array(epk::npy_dtype::f8, {3}, {0.1, 0.05, 1.0 / 3.0});
    t.x_test = epk::make_real_array(epk::npy_dtype::f4, {2, 3}, {0.5, -0.25, 1, 2, 3, 4});
    return t;
}

// Optimizers of version 2 (every field away from its default where it has one).
epk::optimizer_spec sgd_nesterov() {
    epk::optimizer_spec o;
    o.momentum = 0.9;
    o.nesterov = true;
    o.weight_decay = 1e-4;
    return o;
}
epk::optimizer_spec sgd_damped() {
    epk::optimizer_spec o;
    o.momentum = 0.5;
    o.dampening = 0.1;
    return o;
}
epk::optimizer_spec sgd_decay_only() {  // no momentum: no state even when resumed
    epk::optimizer_spec o;
    o.weight_decay = 0.01;
    return o;
}
epk::optimizer_spec adam() {
    epk::optimizer_spec o;
    o.type = epk::optimizer_spec::kind::adam;
    o.beta1 = 0.8;
    o.beta2 = 0.99;
    o.eps = 1e-6;
    o.weight_decay = 0.001;
    return o;
}
epk::optimizer_spec adamw_amsgrad() {
    epk::optimizer_spec o;
    o.type = epk::optimizer_spec::kind::adamw;
    o.weight_decay = 0.05;
    o.amsgrad = true;
    return o;
}

// sample_trace with optimizer `rule`; resumed after `initial_step` steps with the state the
// rule keeps (exp_avg_sq in f4, the others in f8), or fresh.
epk::trace v2_trace(const epk::optimizer_spec& rule, std::size_t initial_step) {
    epk::trace t = sample_trace();
    t.optimizer.rule = rule;
    t.optimizer.initial_step = initial_step;
    if (initial_step == 0) return t;
    const std::size_t P = t.model.parameter_count();
    const auto values = [&](double scale, bool non_negative) {
        std::vector<double> v;
        for (std::size_t i = 0; i < P; ++i)
            v.push_back(static_cast<float>(scale * (non_negative ? 1.0 + std::sin(double(i)) : std::cos(double(i)))));
        return v;
    };
    if (rule.type == epk::optimizer_spec::kind::sgd) {
        if (rule.momentum != 0) t.init_momentum_buffer = epk::make_real_array(epk::npy_dtype::f8, {P}, values(0.01, false));
    } else {
        t.init_exp_avg = epk::make_real_array(epk::npy_dtype::f8, {P}, values(0.02, false));
        t.init_exp_avg_sq = epk::make_real_array(epk::npy_dtype::f4, {P}, values(1e-4, true));
        if (rule.amsgrad) t.init_max_exp_avg_sq = epk::make_real_array(epk::npy_dtype::f8, {P}, values(2e-4, true));
    }
    return t;
}

void expect_same_rule(const epk::optimizer_spec& a, const epk::optimizer_spec& b) {
    EXPECT_EQ(a.type, b.type);
    EXPECT_EQ(a.momentum, b.momentum);
    EXPECT_EQ(a.dampening, b.dampening);
    EXPECT_EQ(a.nesterov, b.nesterov);
    EXPECT_EQ(a.weight_decay, b.weight_decay);
    EXPECT_EQ(a.beta1, b.beta1);
    EXPECT_EQ(a.beta2, b.beta2);
    EXPECT_EQ(a.eps, b.eps);
    EXPECT_EQ(a.amsgrad, b.amsgrad);
}

// A valid trace on disk, to be damaged one file at a time.
class TraceDir : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = tmp_.path() / "run";
        epk::write_trace(dir_, sample_trace());
    }
    fs::path file(const char* name) const { return dir_ / name; }
    void rewrite(const epk::trace& t) const {
        fs::remove_all(dir_);
        epk::write_trace(dir_, t);
    }
    void put_npy(const char* name, const epk::npy_array& a) const { epk::write_npy(file(name), a); }
    void edit_manifest(const std::function<void(nlohmann::json&)>& edit) const {
        std::ifstream in(file("manifest.json"));
        nlohmann::json j = nlohmann::json::parse(in);
        edit(j);
        std::ofstream(file("manifest.json"), std::ios::trunc) << j.dump();
    }
    // read_trace must throw input_error naming `name` with `rule` in its rule().
    void expect_rejected(const char* name, const std::string& rule) const {
        try {
            epk::read_trace(dir_);
            ADD_FAILURE() << "accepted; expected " << name << ": ..." << rule << "...";
        } catch (const epk::input_error& e) {
            EXPECT_EQ(e.file(), (dir_ / name).string()) << e.what();
            EXPECT_NE(e.rule().find(rule), std::string::npos) << e.what();
            EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
        }
    }
    temp_dir tmp_;
    fs::path dir_;
};

const char* const all_files[] = {"manifest.json",   "x_train.npy", "y_train.npy",        "params.npy",
                                 "init_params.npy", "batches.npy", "learning_rates.npy", "x_test.npy"};

}  // namespace

TEST(Trace, WriteReadWriteIsByteIdentical) {
    temp_dir tmp;
    const fs::path a = tmp.path() / "a", b = tmp.path() / "b";
    const epk::trace t = sample_trace();
    epk::write_trace(a, t);
    const epk::trace r = epk::read_trace(a);
    epk::write_trace(b, r);
    EXPECT_EQ(listing(a), std::set<std::string>(std::begin(all_files), std::end(all_files)));
    EXPECT_EQ(listing(b), listing(a));
    for (const char* f : all_files) EXPECT_EQ(file_bytes(a / f), file_bytes(b / f)) << f;
    EXPECT_EQ(listing(tmp.path()), (std::set<std::string>{"a", "b"}));  // no staging left over

    EXPECT_EQ(r.model.parameter_count(), 26u);
    EXPECT_EQ(r.model.layers.at(2).negative_slope, 0.2);
    EXPECT_EQ(r.x_train.dtype, epk::npy_dtype::f4);
    EXPECT_EQ(r.x_train.real, t.x_train.real);
    EXPECT_EQ(r.params->real, t.params->real);
    EXPECT_EQ(r.batches->integer, t.batches->integer);
    EXPECT_EQ(r.learning_rate(2), 1.0 / 3.0);
    EXPECT_EQ(r.steps(), 3u);
    EXPECT_EQ(r.n_train(), 5u);
}

// A params.npy above the streaming threshold (EPK_STREAM_MIB; 0 here) stays on
// disk: its values are read row by row, equal to the loaded ones, and a streamed trace
// writes the same bytes.  A value changed to NaN is still found, with the same message.
TEST(Trace, StreamedParamsReadRowByRowAndWriteTheSameBytes) {
    temp_dir tmp;
    const fs::path a = tmp.path() / "a", b = tmp.path() / "b";
    const epk::trace t = sample_trace();
    epk::write_trace(a, t);
    const epk::trace loaded = epk::read_trace(a);
    ASSERT_EQ(setenv("EPK_STREAM_MIB", "0", 1), 0);
    const epk::trace streamed = epk::read_trace(a);
    EXPECT_FALSE(loaded.params->source);
    ASSERT_TRUE(streamed.params->source);
    EXPECT_TRUE(streamed.params->real.empty());
    const std::size_t rows = streamed.params->shape[0], P = streamed.params->shape[1];
    for (std::size_t s = 0; s < rows; ++s) {
        const std::vector<double> row = epk::real_rows(*streamed.params, s, 1);
        EXPECT_EQ(row, std::vector<double>(loaded.params->real.begin() + static_cast<std::ptrdiff_t>(s * P),
                                           loaded.params->real.begin() + static_cast<std::ptrdiff_t>((s + 1) * P)));
    }
    EXPECT_EQ(epk::real_rows(*streamed.params, 1, rows - 1).size(), (rows - 1) * P);
    EXPECT_THROW((void)epk::real_rows(*streamed.params, rows, 1), epk::usage_error);
    epk::write_trace(b, streamed);
    for (const char* f : all_files) EXPECT_EQ(file_bytes(a / f), file_bytes(b / f)) << f;
    // A NaN in the last row: found by the block scan, element index in the whole array.
    epk::trace bad = loaded;
    bad.params->real.back() = std::nan("");
    const fs::path c = tmp.path() / "c";
    fs::create_directory(c);
    for (const char* f : all_files)
        if (std::string(f) != "params.npy") fs::copy_file(a / f, c / f);
    epk::write_npy(c / "params.npy", *bad.params);
    std::string streamed_msg, loaded_msg;
    try { (void)epk::read_trace(c); } catch (const epk::input_error& e) { streamed_msg = e.what(); }
    unsetenv("EPK_STREAM_MIB");
    try { (void)epk::read_trace(c); } catch (const epk::input_error& e) { loaded_msg = e.what(); }
    EXPECT_FALSE(loaded_msg.empty());
    EXPECT_EQ(streamed_msg, loaded_msg);
    EXPECT_NE(loaded_msg.find("NaN or infinity at element " + std::to_string(rows * P - 1)), std::string::npos) << loaded_msg;
    // A bad threshold is refused, naming the variable.
    ASSERT_EQ(setenv("EPK_STREAM_MIB", "lots", 1), 0);
    EXPECT_THROW((void)epk::read_trace(a), epk::input_error);
    unsetenv("EPK_STREAM_MIB");
}

TEST(Trace, MinimalTraceAndEmptyTargetDirectory) {
    temp_dir tmp;
    epk::trace t = sample_trace();
    t.params.reset();
    t.batches.reset();
    t.learning_rates.reset();
    t.x_test.reset();
    t.loss = {epk::loss_kind::mse, epk::reduction_kind::sum};
    t.y_train = epk::make_real_array(epk::npy_dtype::f8, {5, 2}, std::vector<double>(10, 0.5));
    fs::create_directory(tmp.path() / "empty");
    epk::write_trace(tmp.path() / "empty", t);
    EXPECT_EQ(listing(tmp.path() / "empty"),
              (std::set<std::string>{"manifest.json", "x_train.npy", "y_train.npy", "init_params.npy"}));
    const epk::trace r = epk::read_trace(tmp.path() / "empty");
    EXPECT_EQ(r.loss.kind, epk::loss_kind::mse);
    EXPECT_EQ(r.loss.reduction, epk::reduction_kind::sum);
    EXPECT_FALSE(r.params.has_value());
    EXPECT_EQ(r.learning_rate(1), 0.1);
    EXPECT_EQ(listing(tmp.path()), std::set<std::string>{"empty"});
}

TEST(Trace, ManifestTextIsDeterministicAndRoundTrips) {
    epk::trace t = sample_trace();
    t.optimizer.learning_rate = 0.1 + 0.2;  // 0.30000000000000004
    t.model.layers[2].negative_slope = 1e-300;
    const std::string text = epk::manifest_text(t);
    EXPECT_EQ(text.back(), '\n');
    const auto format_at = text.find("\"format\""), version_at = text.find("\"version\""),
               model_at = text.find("\"model\""), loss_at = text.find("\"loss\""), opt_at = text.find("\"optimizer\"");
    EXPECT_LT(format_at, version_at);
    EXPECT_LT(version_at, model_at);
    EXPECT_LT(model_at, loss_at);
    EXPECT_LT(loss_at, opt_at);
    EXPECT_LT(text.find("\"learning_rate\""), text.find("\"steps\""));
    EXPECT_NE(text.find("      {\n        \"type\": \"linear\",\n        \"out_features\": 4,\n        \"bias\": true\n      }"),
              std::string::npos)
        << text;
    epk::trace u;
    epk::parse_manifest(text, "m.json", u);
    EXPECT_EQ(u.optimizer.learning_rate, 0.1 + 0.2);
    EXPECT_EQ(u.model.layers[2].negative_slope, 1e-300);
    EXPECT_EQ(u.model.parameter_count(), t.model.parameter_count());
    EXPECT_EQ(epk::manifest_text(u), text);

    // Defaults, in_features, inplace and gelu approximate='none' are accepted.
    epk::trace d;
    epk::parse_manifest(R"({"format": "epk-trace", "version": 1, "comment": "ignored",
        "model": {"input_dim": 2, "layers": [{"type": "linear", "out_features": 3, "in_features": 2},
                  {"type": "relu", "inplace": false}, {"type": "leaky_relu"}, {"type": "gelu", "approximate": "none"},
                  {"type": "linear", "out_features": 1, "bias": false}]},
        "loss": {"type": "mse"}, "optimizer": {"type": "sgd", "steps": 0, "learning_rate": 1}})",
                        "m.json", d);
    EXPECT_EQ(d.loss.reduction, epk::reduction_kind::mean);
    EXPECT_TRUE(d.model.layers[0].bias);
    EXPECT_FALSE(d.model.layers[4].bias);
    EXPECT_EQ(d.model.layers[2].negative_slope, 0.01);
    EXPECT_EQ(d.optimizer.learning_rate, 1.0);
    EXPECT_EQ(d.model.parameter_count(), 2u * 3 + 3 + 3);
}

TEST(Trace, ManifestRejections) {
    const auto rule_of = [](const std::string& text) -> std::string {
        epk::trace t;
        try {
            epk::parse_manifest(text, "m.json", t);
        } catch (const epk::input_error& e) {
            EXPECT_EQ(e.file(), "m.json");
            EXPECT_EQ(e.rule().find('\n'), std::string::npos) << e.rule();
            return e.rule();
        }
        return "<accepted>";
    };
    const auto with = [](const std::string& model, const std::string& loss, const std::string& opt,
                         const std::string& head = R"("format": "epk-trace", "version": 1)") {
        return "{" + head + R"(, "model": )" + model + R"(, "loss": )" + loss + R"(, "optimizer": )" + opt + "}";
    };
    const std::string model = R"({"input_dim": 2, "layers": [{"type": "linear", "out_features": 2}]})";
    const std::string loss = R"({"type": "cross_entropy", "reduction": "mean"})";
    const std::string opt = R"({"type": "sgd", "learning_rate": 0.1, "steps": 3})";
    ASSERT_EQ(rule_of(with(model, loss, opt)), "<accepted>");

    const std::vector<std::pair<std::string, std::string>> cases = {
        {"{\"format\": \"epk-trace\",\n", "not valid JSON"},
        {"[1, 2]", "must be a JSON object"},
        {with(model, loss, opt, R"("format": "npz", "version": 1)"), "'format' must be \"epk-trace\""},
        {with(model, loss, opt, R"("version": 1)"), "missing field 'format'"},
        {with(model, loss, opt, R"("format": "epk-trace", "version": 4)"),
         "version 4 is not supported (this reader implements versions 1, 2 and 3)"},
        {with(model, loss, opt, R"("format": "epk-trace", "version": 0)"), "version 0 is not supported"},
        {with(model, loss, opt, R"("format": "epk-trace", "version": -1)"), "version -1 is not supported"},
        {with(model, loss, opt, R"("format": "epk-trace", "version": 1.0)"), "'version' must be an integer"},
        {with(R"({"input_dim": 64.0, "layers": [{"type": "linear", "out_features": 2}]})", loss, opt),
         "'model.input_dim' must be an integer"},
        {with(R"({"input_dim": 0, "layers": [{"type": "linear", "out_features": 2}]})", loss, opt),
         "'model.input_dim' must be >= 1"},
        {with(R"({"input_dim": 2, "layers": []})", loss, opt), "must not be empty"},
        {with(R"({"input_dim": 2, "layers": [{"type": "tanh"}]})", loss, opt), "at least one linear layer"},
        {with(R"({"input_dim": 2, "layers": [{"type": "linear", "out_features": 2}, {"type": "relu"},
              {"type": "linear", "out_features": 2}, {"type": "dropout", "p": 0.5}]})",
              loss, opt),
         "layers[3]: dropout is not supported: dropout draws random masks that the trace does not record"},
        {with(R"({"input_dim": 2, "layers": [{"type": "linear", "out_features": -1}]})", loss, opt),
         "'layers[0].out_features' must be >= 1"},
        {with(R"({"input_dim": 2, "layers": [{"type": "linear"}]})", loss, opt), "missing field 'layers[0].out_features'"},
        {with(R"({"input_dim": 2, "layers": [{"type": "linear", "out_features": 2, "in_features": 3}]})", loss, opt),
         "'layers[0].in_features' is 3"},
        {with(R"({"input_dim": 2, "layers": [{"type": "linear", "out_features": 2, "bias": 1}]})", loss, opt),
         "'layers[0].bias' must be true or false"},
        {with(R"({"input_dim": 2, "layers": [{"type": "linear", "out_features": 2, "dtype": "f4"}]})", loss, opt),
         "unknown field 'dtype' in layers[0] (linear)"},
        {with(R"({"input_dim": 2, "layers": [{"type": "linear", "out_features": 2}, {"type": "gelu", "approximate": "tanh"}]})",
              loss, opt),
         "gelu approximate 'tanh' is not implemented"},
        {with(R"({"input_dim": 2, "layers": [{"type": "linear", "out_features": 2}, {"type": "softplus", "beta": 2}]})",
              loss, opt),
         "unknown field 'beta' in layers[1] (softplus)"},
        {with(R"({"input_dim": 2, "layers": [{"type": "linear", "out_features": 2}, {"type": "leaky_relu", "negative_slope": "x"}]})",
              loss, opt),
         "'layers[1].negative_slope' must be a number"},
        {with(R"({"input_dim": 2, "layers": [{"type": "linear", "out_features": 2}, {"type": "leaky_relu", "negative_slope": 1e999}]})",
              loss, opt),
         "not valid JSON: "},
        {with(model, R"({"type": "nll_loss"})", opt), "unknown loss 'nll_loss'"},
        {with(model, R"({"type": "mse", "reduction": "none"})", opt), "unknown loss reduction 'none'"},
        {with(model, R"({"type": "cross_entropy", "label_smoothing": 0.1})", opt),
         "loss field 'label_smoothing' is not implemented in trace format version 2"},
        {with(model, loss, R"({"type": "rmsprop", "learning_rate": 0.1, "steps": 3})"),
         "optimizer 'rmsprop' is not implemented (trace format version 2 knows sgd, adam, adamw"},
        {with(model, loss, R"({"type": "sgd", "learning_rate": 0.1, "steps": 3, "beta1": 0.9})"),
         "'optimizer.beta1' is an option of adam and adamw, not of sgd"},
        {with(model, loss, R"({"type": "sgd", "learning_rate": 0.1, "steps": 3.0})"),
         "'optimizer.steps' must be an integer"},
        {with(model, loss, R"({"type": "sgd", "learning_rate": 0.1, "steps": -1})"), "'optimizer.steps' must be >= 0"},
        {with(model, loss, R"({"type": "sgd", "learning_rate": 0.1})"), "missing field 'optimizer.steps'"},
        {with(model, loss, R"({"type": "sgd", "learning_rate": "0.1", "steps": 1})"),
         "'optimizer.learning_rate' must be a number"},
        {with(R"({"input_dim": 4294967296, "layers": [{"type": "linear", "out_features": 4294967296}]})", loss, opt),
         "too many parameters"},
        {"{\"format\": \"epk-trace\", \"version\": 1}", "missing field 'model'"},
    };
    for (const auto& [text, rule] : cases) EXPECT_NE(rule_of(text).find(rule), std::string::npos) << rule_of(text);
}

TEST_F(TraceDir, AcceptsTheUndamagedTrace) { EXPECT_NO_THROW(epk::read_trace(dir_)); }

TEST_F(TraceDir, WrongMagic) {
    auto b = file_bytes(file("x_train.npy"));
    b[0] = 'P';
    put_bytes(file("x_train.npy"), b);
    expect_rejected("x_train.npy", "not a .npy file (bad magic)");
}

TEST_F(TraceDir, UnknownDtype) {
    auto b = file_bytes(file("params.npy"));
    const std::string s(b.begin(), b.end());
    b[s.find("<f8")] = '>';
    put_bytes(file("params.npy"), b);
    expect_rejected("params.npy", "unsupported dtype '>f8' (allowed: <f4, <f8, <i8)");
}

TEST_F(TraceDir, ShapeDisagreesWithManifest) {
    put_npy("x_train.npy", epk::make_real_array(epk::npy_dtype::f4, {5, 4}, std::vector<double>(20, 0.0)));
    expect_rejected("x_train.npy", "model.input_dim is 3");
}

TEST_F(TraceDir, ParamsShapeDisagreesWithManifest) {
    put_npy("params.npy", epk::make_real_array(epk::npy_dtype::f8, {3, 26}, std::vector<double>(78, 0.0)));
    expect_rejected("params.npy", "expected (4, 26)");
}

TEST_F(TraceDir, InitParamsShape) {
    put_npy("init_params.npy", epk::make_real_array(epk::npy_dtype::f8, {25}, std::vector<double>(25, 0.0)));
    expect_rejected("init_params.npy", "expected (26,)");
}

TEST_F(TraceDir, LabelsShape) {
    put_npy("y_train.npy", epk::make_int_array({4}, {0, 1, 1, 0}));
    expect_rejected("y_train.npy", "expected (5,)");
}

TEST_F(TraceDir, IndexOutOfRange) {
    put_npy("batches.npy", epk::make_int_array({3, 2}, {0, 1, 2, 5, 4, 0}));
    expect_rejected("batches.npy", "index 5 at row 1, column 1 is out of range [0, 5)");
}

TEST_F(TraceDir, NegativeIndex) {
    put_npy("batches.npy", epk::make_int_array({3, 2}, {0, 1, 2, 3, -1, 0}));
    expect_rejected("batches.npy", "index -1 at row 2, column 0 is out of range");
}

TEST_F(TraceDir, RepeatedIndex) {
    put_npy("batches.npy", epk::make_int_array({3, 2}, {0, 1, 3, 3, 4, 0}));
    expect_rejected("batches.npy", "row 1 repeats index 3");
}

TEST_F(TraceDir, BatchesShapeAndDtype) {
    put_npy("batches.npy", epk::make_int_array({2, 2}, {0, 1, 2, 3}));
    expect_rejected("batches.npy", "optimizer.steps is 3");
    put_npy("batches.npy", epk::make_int_array({3, 0}, {}));
    expect_rejected("batches.npy", "B must be >= 1");
    put_npy("batches.npy", epk::make_real_array(epk::npy_dtype::f8, {3, 1}, {0, 1, 2}));
    expect_rejected("batches.npy", "dtype must be <i8, found <f8");
}

TEST_F(TraceDir, NanInParams) {
    auto p = epk::read_npy(file("params.npy"));
    p.real[30] = std::numeric_limits<double>::quiet_NaN();
    put_npy("params.npy", p);
    expect_rejected("params.npy", "NaN or infinity at element 30");
}

TEST_F(TraceDir, InfinityInXTrain) {
    auto x = epk::read_npy(file("x_train.npy"));
    x.real[7] = -std::numeric_limits<double>::infinity();
    put_npy("x_train.npy", x);
    expect_rejected("x_train.npy", "NaN or infinity at element 7");
}

TEST_F(TraceDir, NanInOtherRealArrays) {
    auto x = epk::read_npy(file("x_test.npy"));
    x.real[1] = std::numeric_limits<double>::quiet_NaN();
    put_npy("x_test.npy", x);
    expect_rejected("x_test.npy", "NaN or infinity at element 1");
    fs::remove(file("x_test.npy"));
    put_npy("learning_rates.npy",
            epk::make_real_array(epk::npy_dtype::f8, {3}, {0.1, std::numeric_limits<double>::infinity(), 0.1}));
    expect_rejected("learning_rates.npy", "NaN or infinity at element 1");
}

TEST_F(TraceDir, UnknownLayer) {
    edit_manifest([](nlohmann::json& j) { j["model"]["layers"][1]["type"] = "swish"; });
    expect_rejected("manifest.json", "unknown layer type 'swish' (layers[1])");
    edit_manifest([](nlohmann::json& j) { j["model"]["layers"][1]["type"] = "dropout"; });
    expect_rejected("manifest.json", "layers[1]: dropout is not supported: dropout draws random masks that the trace does not record");
}

TEST_F(TraceDir, UnknownLoss) {
    edit_manifest([](nlohmann::json& j) { j["loss"]["type"] = "hinge"; });
    expect_rejected("manifest.json", "unknown loss 'hinge'");
}

TEST_F(TraceDir, UnknownOptimizer) {
    edit_manifest([](nlohmann::json& j) { j["optimizer"]["type"] = "rmsprop"; });
    expect_rejected("manifest.json", "optimizer 'rmsprop' is not implemented (trace format version 2 knows sgd, adam, adamw");
    edit_manifest([](nlohmann::json& j) { j["optimizer"]["type"] = "ADAM"; });  // names are case-sensitive
    expect_rejected("manifest.json", "optimizer 'ADAM' is not implemented");
}

TEST_F(TraceDir, UnknownOptimizerField) {
    for (const char* field : {"betas", "eps", "amsgrad", "beta2", "decoupled_weight_decay"}) {
        edit_manifest([&](nlohmann::json& j) {
            j["optimizer"] = {{"type", "sgd"}, {"learning_rate", 0.1}, {"steps", 3}, {field, 0}};
        });
        expect_rejected("manifest.json", std::string("'optimizer.") + field + "' is an option of adam and adamw, not of sgd");
    }
    for (const char* type : {"adam", "adamw"})
        for (const char* field : {"momentum", "dampening", "nesterov"}) {
            edit_manifest([&](nlohmann::json& j) {
                j["optimizer"] = {{"type", type}, {"learning_rate", 0.1}, {"steps", 3}, {field, 0}};
            });
            expect_rejected("manifest.json", std::string("'optimizer.") + field + "' is an option of sgd, not of " + type);
        }
    edit_manifest([](nlohmann::json& j) {
        j["optimizer"] = {{"type", "sgd"}, {"learning_rate", 0.1}, {"steps", 3}, {"clip_grad_norm", 1.0}};
    });
    expect_rejected("manifest.json", "unknown optimizer field 'clip_grad_norm' (optimizer sgd)");
}

// Version 2 is read; a version 1 manifest with version 2's fields is read as version 2;
// other versions are rejected.
TEST_F(TraceDir, Versions) {
    edit_manifest([](nlohmann::json& j) { j["version"] = 2; });
    EXPECT_NO_THROW(epk::read_trace(dir_));
    edit_manifest([](nlohmann::json& j) {
        j["version"] = 1;
        j["optimizer"]["momentum"] = 0.9;
    });
    const epk::trace t = epk::read_trace(dir_);
    EXPECT_EQ(t.optimizer.rule.momentum, 0.9);
    EXPECT_NE(epk::manifest_text(t).find("\"version\": 2"), std::string::npos);
    // Version 3 reads every version 2 manifest; an MLP is written back as version 1 or 2.
    edit_manifest([](nlohmann::json& j) { j["version"] = 3; });
    EXPECT_NE(epk::manifest_text(epk::read_trace(dir_)).find("\"version\": 2"), std::string::npos);
    edit_manifest([](nlohmann::json& j) { j["version"] = 4; });
    expect_rejected("manifest.json", "version 4 is not supported (this reader implements versions 1, 2 and 3)");
}

TEST_F(TraceDir, TrailingBytes) {
    auto b = file_bytes(file("y_train.npy"));
    b.push_back('\0');
    put_bytes(file("y_train.npy"), b);
    expect_rejected("y_train.npy", "trailing bytes after data");
}

TEST_F(TraceDir, TruncatedFile) {
    auto b = file_bytes(file("params.npy"));
    b.pop_back();
    put_bytes(file("params.npy"), b);
    expect_rejected("params.npy", "truncated: header promises 832 bytes of data, file has 831");
    put_bytes(file("params.npy"), std::vector<char>(b.begin(), b.begin() + 40));
    expect_rejected("params.npy", "truncated");
}

TEST_F(TraceDir, MissingRequiredFiles) {
    fs::remove(file("y_train.npy"));
    expect_rejected("y_train.npy", "missing required file");
    fs::remove(file("x_train.npy"));
    expect_rejected("x_train.npy", "missing required file");
    fs::remove(file("manifest.json"));
    expect_rejected("manifest.json", "missing required file");
}

TEST_F(TraceDir, NeitherParamsNorInitParams) {
    fs::remove(file("params.npy"));
    EXPECT_NO_THROW(epk::read_trace(dir_));
    fs::remove(file("init_params.npy"));
    expect_rejected("params.npy", "a trace needs params.npy or init_params.npy");
}

TEST_F(TraceDir, InitParamsDisagreeWithParams) {
    auto p = epk::read_npy(file("init_params.npy"));
    p.real[3] = std::nextafter(p.real[3], 2.0);
    put_npy("init_params.npy", p);
    expect_rejected("init_params.npy", "init_params.npy disagrees with params.npy row 0");
}

TEST_F(TraceDir, LabelOutOfRange) {
    put_npy("y_train.npy", epk::make_int_array({5}, {0, 1, 2, 0, 1}));
    expect_rejected("y_train.npy", "label 2 at element 2 is out of range [0, 2)");
    put_npy("y_train.npy", epk::make_real_array(epk::npy_dtype::f8, {5}, {0, 1, 1, 0, 1}));
    expect_rejected("y_train.npy", "cross_entropy labels must have dtype <i8, found <f8");
}

TEST_F(TraceDir, MseTargets) {
    edit_manifest([](nlohmann::json& j) { j["loss"]["type"] = "mse"; });
    expect_rejected("y_train.npy", "mse targets must have dtype <f4 or <f8, found <i8");
    put_npy("y_train.npy", epk::make_real_array(epk::npy_dtype::f4, {5}, {0, 1, 1, 0, 1}));
    expect_rejected("y_train.npy", "expected (5, 2)");
    put_npy("y_train.npy", epk::make_real_array(epk::npy_dtype::f4, {5, 2}, std::vector<double>(10, 0.5)));
    EXPECT_NO_THROW(epk::read_trace(dir_));
}

TEST_F(TraceDir, LearningRatesMustBeF8) {
    put_npy("learning_rates.npy", epk::make_real_array(epk::npy_dtype::f4, {3}, {0.5, 0.25, 0.125}));
    expect_rejected("learning_rates.npy", "dtype must be <f8, found <f4");
    put_npy("learning_rates.npy", epk::make_real_array(epk::npy_dtype::f8, {4}, {0.5, 0.25, 0.125, 1}));
    expect_rejected("learning_rates.npy", "expected (3,)");
}

TEST_F(TraceDir, LearningRateRequiredWithoutLearningRates) {
    edit_manifest([](nlohmann::json& j) { j["optimizer"].erase("learning_rate"); });
    const epk::trace t = epk::read_trace(dir_);
    EXPECT_TRUE(std::isnan(t.optimizer.learning_rate));
    EXPECT_EQ(t.learning_rate(1), 0.05);
    EXPECT_EQ(epk::manifest_text(t).find("learning_rate"), std::string::npos);
    fs::remove(file("learning_rates.npy"));
    expect_rejected("manifest.json", "'optimizer.learning_rate' is required when learning_rates.npy is absent");
}

TEST_F(TraceDir, XTestDtypeAndShape) {
    put_npy("x_test.npy", epk::make_real_array(epk::npy_dtype::f8, {2, 3}, std::vector<double>(6, 0.0)));
    expect_rejected("x_test.npy", "dtype <f8 differs from x_train.npy's <f4");
    put_npy("x_test.npy", epk::make_real_array(epk::npy_dtype::f4, {0, 3}, {}));
    expect_rejected("x_test.npy", "M must be >= 1");
    put_npy("x_test.npy", epk::make_real_array(epk::npy_dtype::f4, {6}, std::vector<double>(6, 0.0)));
    expect_rejected("x_test.npy", "expected a 2-d array");
}

TEST_F(TraceDir, IntegerGivenAsFloat) {
    edit_manifest([](nlohmann::json& j) { j["model"]["layers"][0]["out_features"] = 4.0; });
    expect_rejected("manifest.json", "'layers[0].out_features' must be an integer");
}

TEST_F(TraceDir, NotValidJson) {
    put_bytes(file("manifest.json"), {'{', '\n', '"', 'a'});
    expect_rejected("manifest.json", "not valid JSON: ");
}

TEST(Trace, NotATraceDirectory) {
    temp_dir tmp;
    for (const fs::path& p : {tmp.path() / "nope", tmp.path() / "file"}) {
        if (p.filename() == "file") std::ofstream(p) << "x";
        try {
            epk::read_trace(p);
            ADD_FAILURE();
        } catch (const epk::input_error& e) {
            EXPECT_EQ(e.file(), p.string());
            EXPECT_EQ(e.rule(), "not a trace directory");
        }
    }
}

TEST(Trace, WriteIntoNonEmptyDirectoryWritesNothing) {
    temp_dir tmp;
    const fs::path out = tmp.path() / "out";
    fs::create_directory(out);
    std::ofstream(out / "keep.txt") << "precious";
    try {
        epk::write_trace(out, sample_trace());
        ADD_FAILURE() << "wrote into a non-empty directory";
    } catch (const epk::input_error& e) {
        EXPECT_EQ(e.file(), out.string());
        EXPECT_EQ(e.rule(), "output directory exists and is not empty");
    }
    EXPECT_EQ(listing(out), std::set<std::string>{"keep.txt"});
    EXPECT_EQ(listing(tmp.path()), std::set<std::string>{"out"});

    std::ofstream(tmp.path() / "plain") << "x";
    EXPECT_THROW(epk::write_trace(tmp.path() / "plain", sample_trace()), epk::input_error);
    EXPECT_THROW(epk::write_trace(tmp.path() / "missing" / "out", sample_trace()), epk::input_error);
    EXPECT_EQ(listing(tmp.path()), (std::set<std::string>{"out", "plain"}));

    // The same checks, made up front.
    EXPECT_THROW(epk::check_trace_output_dir(out), epk::input_error);
    EXPECT_THROW(epk::check_trace_output_dir(tmp.path() / "plain"), epk::input_error);
    try {
        epk::check_trace_output_dir(tmp.path() / "missing" / "out");
        ADD_FAILURE();
    } catch (const epk::input_error& e) {
        EXPECT_EQ(e.file(), (tmp.path() / "missing" / "out").string());
        EXPECT_NE(e.rule().find("parent directory"), std::string::npos);
    }
    EXPECT_NO_THROW(epk::check_trace_output_dir(tmp.path() / "new"));
    fs::create_directory(tmp.path() / "new");
    EXPECT_NO_THROW(epk::check_trace_output_dir(tmp.path() / "new"));
    epk::write_trace(tmp.path() / "new/", sample_trace());  // a trailing separator is fine
    EXPECT_EQ(listing(tmp.path()), (std::set<std::string>{"new", "out", "plain"}));
    EXPECT_NO_THROW(epk::read_trace(tmp.path() / "new"));
}

TEST(Trace, WriteOfAnInvalidTraceWritesNothing) {
    temp_dir tmp;
    const fs::path out = tmp.path() / "out";
    const std::vector<std::pair<std::function<void(epk::trace&)>, std::string>> breakages = {
        {[](epk::trace& t) { t.params->real[5] = std::numeric_limits<double>::infinity(); }, "params.npy"},
        {[](epk::trace& t) { t.batches->integer[0] = 99; }, "batches.npy"},
        {[](epk::trace& t) { t.y_train.integer[0] = 2; }, "y_train.npy"},
        {[](epk::trace& t) { t.x_test->dtype = epk::npy_dtype::f8; }, "x_test.npy"},
        {[](epk::trace& t) { t.model.layers.back().out_features = 3; }, "params.npy"},
        {[](epk::trace& t) { t.model.layers = {{epk::layer_kind::tanh, 0, true, 0.01}}; }, "manifest.json"},
        {[](epk::trace& t) {
             t.learning_rates.reset();
             t.optimizer.learning_rate = std::numeric_limits<double>::quiet_NaN();
         },
         "manifest.json"},
    };
    for (const auto& [breakage, name] : breakages) {
        epk::trace t = sample_trace();
        breakage(t);
        try {
            epk::write_trace(out, t);
            ADD_FAILURE() << "wrote an invalid trace; expected a complaint about " << name;
        } catch (const epk::input_error& e) {
            EXPECT_EQ(e.file(), (out / name).string()) << e.what();
        }
        EXPECT_TRUE(fs::is_empty(tmp.path())) << name;
    }
    // An array whose payload disagrees with its own shape is a caller bug.
    epk::trace t = sample_trace();
    t.x_train.real.pop_back();
    EXPECT_THROW(epk::write_trace(out, t), epk::usage_error);
    EXPECT_TRUE(fs::is_empty(tmp.path()));
}

// ---------------------------------------------------------------- version 2

// Plain SGD from a fresh start is still written as version 1, in exactly version 1's bytes
// (what epk wrote before version 2), whatever an in-memory rule holds that plain SGD ignores.
TEST(TraceV2, PlainSgdIsWrittenAsVersion1Bytes) {
    epk::trace t = sample_trace();
    const std::string v1 = R"({
  "format": "epk-trace",
  "version": 1,
  "model": {
    "input_dim": 3,
    "layers": [
      {
        "type": "linear",
        "out_features": 4,
        "bias": true
      },
      {
        "type": "tanh"
      },
      {
        "type": "leaky_relu",
        "negative_slope": 0.2
      },
      {
        "type": "linear",
        "out_features": 2,
        "bias": true
      }
    ]
  },
  "loss": {
    "type": "cross_entropy",
    "reduction": "mean"
  },
  "optimizer": {
    "type": "sgd",
    "learning_rate": 0.1,
    "steps": 3
  }
}
)";
    EXPECT_EQ(epk::manifest_text(t), v1);
    t.optimizer.rule.dampening = 0.3;  // no effect without momentum
    t.optimizer.rule.momentum = -0.0;
    EXPECT_EQ(epk::manifest_text(t), v1);
    // A version 2 manifest of plain SGD reads back to the same trace and is written as version 1.
    epk::trace u;
    epk::parse_manifest(R"({"format": "epk-trace", "version": 2, "model": {"input_dim": 3, "layers": [
        {"type": "linear", "out_features": 4}, {"type": "tanh"}, {"type": "leaky_relu", "negative_slope": 0.2},
        {"type": "linear", "out_features": 2}]}, "loss": {"type": "cross_entropy"},
        "optimizer": {"type": "SGD", "lr": 0.1, "steps": 3, "momentum": 0, "dampening": 0, "nesterov": false,
                      "weight_decay": 0, "maximize": false, "foreach": null, "differentiable": false, "fused": null}})",
                        "m.json", u);
    EXPECT_EQ(epk::manifest_text(u), v1);
    // Any one of momentum, weight decay, another type, initial_step or a state file makes it version 2.
    const std::vector<std::function<void(epk::trace&)>> v2_makers = {
        [](epk::trace& x) { x.optimizer.rule.momentum = 0.1; },
        [](epk::trace& x) { x.optimizer.rule.weight_decay = 1e-300; },
        [](epk::trace& x) { x.optimizer.rule.type = epk::optimizer_spec::kind::adam; },
        [](epk::trace& x) { x.optimizer.initial_step = 1; },
        [](epk::trace& x) { x.init_exp_avg = epk::make_real_array(epk::npy_dtype::f8, {26}, std::vector<double>(26, 0)); },
    };
    for (const auto& make : v2_makers) {
        epk::trace x = sample_trace();
        make(x);
        EXPECT_NE(epk::manifest_text(x).find("\"version\": 2,"), std::string::npos) << epk::manifest_text(x);
    }
}

// The canonical version 2 text: every field of the optimizer's kind, in a fixed order.
TEST(TraceV2, ManifestTextWritesEveryFieldOfTheKind) {
    epk::trace t = v2_trace(adamw_amsgrad(), 7);
    std::string text = epk::manifest_text(t);
    EXPECT_NE(text.find("  \"version\": 2,\n"), std::string::npos) << text;
    EXPECT_NE(text.find(R"(  "optimizer": {
    "type": "adamw",
    "learning_rate": 0.1,
    "steps": 3,
    "betas": [
      0.9,
      0.999
    ],
    "eps": 1e-08,
    "weight_decay": 0.05,
    "amsgrad": true,
    "initial_step": 7
  }
})"),
              std::string::npos)
        << text;
    t = v2_trace(sgd_damped(), 0);
    text = epk::manifest_text(t);
    EXPECT_NE(text.find(R"(  "optimizer": {
    "type": "sgd",
    "learning_rate": 0.1,
    "steps": 3,
    "momentum": 0.5,
    "dampening": 0.1,
    "nesterov": false,
    "weight_decay": 0.0
  }
})"),
              std::string::npos)
        << text;
    EXPECT_EQ(text.find("initial_step"), std::string::npos);
    EXPECT_EQ(text.find("betas"), std::string::npos);
    // Non-finite values in memory are a caller bug.
    t.optimizer.rule.momentum = std::numeric_limits<double>::infinity();
    EXPECT_THROW((void)epk::manifest_text(t), epk::usage_error);
}

// write -> read -> write is byte-identical for each optimizer, fresh and resumed, and the
// trace read back holds the same rule, initial step and state.
TEST(TraceV2, WriteReadWriteIsByteIdentical) {
    const std::vector<std::pair<const char*, epk::optimizer_spec>> rules = {
        {"sgd_nesterov", sgd_nesterov()}, {"sgd_damped", sgd_damped()}, {"sgd_decay_only", sgd_decay_only()},
        {"adam", adam()},                 {"adamw_amsgrad", adamw_amsgrad()}};
    for (const auto& [name, rule] : rules) {
        for (const std::size_t initial_step : {std::size_t{0}, std::size_t{7}}) {
            SCOPED_TRACE(std::string(name) + ", initial_step " + std::to_string(initial_step));
            temp_dir tmp;
            const fs::path a = tmp.path() / "a", b = tmp.path() / "b";
            const epk::trace t = v2_trace(rule, initial_step);
            epk::write_trace(a, t);
            const epk::trace r = epk::read_trace(a);
            epk::write_trace(b, r);
            EXPECT_EQ(listing(b), listing(a));
            for (const auto& f : listing(a)) EXPECT_EQ(file_bytes(a / f), file_bytes(b / f)) << f;
            const auto manifest = nlohmann::json::parse(std::string(file_bytes(a / "manifest.json").data(),
                                                                    file_bytes(a / "manifest.json").size()));
            EXPECT_EQ(manifest["version"], 2);
            expect_same_rule(r.optimizer.rule, rule);
            EXPECT_EQ(r.optimizer.initial_step, initial_step);
            EXPECT_EQ(r.optimizer.learning_rate, 0.1);
            const std::pair<const char*, const std::optional<epk::npy_array> epk::trace::*> state[] = {
                {"init_momentum_buffer.npy", &epk::trace::init_momentum_buffer},
                {"init_exp_avg.npy", &epk::trace::init_exp_avg},
                {"init_exp_avg_sq.npy", &epk::trace::init_exp_avg_sq},
                {"init_max_exp_avg_sq.npy", &epk::trace::init_max_exp_avg_sq}};
            for (const auto& [file, member] : state) {
                EXPECT_EQ(listing(a).count(file), (t.*member).has_value() ? 1u : 0u) << file;
                ASSERT_EQ((r.*member).has_value(), (t.*member).has_value()) << file;
                if (!(t.*member)) continue;
                EXPECT_EQ((r.*member)->dtype, (t.*member)->dtype) << file;
                EXPECT_EQ((r.*member)->real, (t.*member)->real) << file;
            }
        }
    }
    // Resumed Adam keeps m and v; amsgrad adds v̂max; SGD with momentum the buffer; SGD without none.
    EXPECT_TRUE(v2_trace(adam(), 7).init_exp_avg_sq.has_value());
    EXPECT_FALSE(v2_trace(adam(), 7).init_max_exp_avg_sq.has_value());
    EXPECT_TRUE(v2_trace(adamw_amsgrad(), 7).init_max_exp_avg_sq.has_value());
    EXPECT_TRUE(v2_trace(sgd_damped(), 7).init_momentum_buffer.has_value());
    EXPECT_FALSE(v2_trace(sgd_decay_only(), 7).init_momentum_buffer.has_value());
}

namespace {
epk::trace parsed(const std::string& optimizer, int version = 2) {
    epk::trace t;
    epk::parse_manifest(R"({"format": "epk-trace", "version": )" + std::to_string(version) +
                            R"(, "model": {"input_dim": 2, "layers": [{"type": "linear", "out_features": 2}]},
        "loss": {"type": "cross_entropy"}, "optimizer": )" + optimizer + "}",
                        "m.json", t);
    return t;
}
}  // namespace

TEST(TraceV2, DefaultsSynonymsAndTorchParamGroups) {
    using kind = epk::optimizer_spec::kind;
    // AdamW: torch's defaults, weight_decay 0.01.
    for (const char* type : {"adamw", "AdamW"}) {
        const epk::trace t = parsed(std::string(R"({"type": ")") + type + R"(", "learning_rate": 0.001, "steps": 4})");
        const epk::optimizer_spec& o = t.optimizer.rule;
        EXPECT_EQ(o.type, kind::adamw);
        EXPECT_EQ(o.weight_decay, 0.01);
        EXPECT_EQ(o.beta1, 0.9);
        EXPECT_EQ(o.beta2, 0.999);
        EXPECT_EQ(o.eps, 1e-8);
        EXPECT_FALSE(o.amsgrad);
        EXPECT_EQ(t.optimizer.initial_step, 0u);
        EXPECT_EQ(t.optimizer.learning_rate, 0.001);
        EXPECT_EQ(t.optimizer.steps, 4u);
    }
    // Adam: weight_decay 0.
    for (const char* type : {"adam", "Adam"}) {
        const epk::trace t = parsed(std::string(R"({"type": ")") + type + R"(", "learning_rate": 0.001, "steps": 4})");
        EXPECT_EQ(t.optimizer.rule.type, kind::adam);
        EXPECT_EQ(t.optimizer.rule.weight_decay, 0.0);
        EXPECT_EQ(t.optimizer.rule.eps, 1e-8);
    }
    // SGD: torch's name, lr, every default 0 / false; integers are numbers.
    {
        const epk::trace t = parsed(R"({"type": "SGD", "lr": 0.05, "steps": 1})");
        const epk::optimizer_spec& o = t.optimizer.rule;
        EXPECT_EQ(o.type, kind::sgd);
        EXPECT_EQ(t.optimizer.learning_rate, 0.05);
        EXPECT_EQ(o.momentum, 0.0);
        EXPECT_EQ(o.dampening, 0.0);
        EXPECT_FALSE(o.nesterov);
        EXPECT_EQ(o.weight_decay, 0.0);
        EXPECT_TRUE(o.is_plain_sgd());
        EXPECT_EQ(parsed(R"({"type": "sgd", "lr": 1, "steps": 1, "momentum": 1})").optimizer.rule.momentum, 1.0);
    }
    // beta1 / beta2 separately, each defaulting.
    {
        const epk::trace t = parsed(R"({"type": "adam", "lr": 0.1, "steps": 1, "beta1": 0.5})");
        EXPECT_EQ(t.optimizer.rule.beta1, 0.5);
        EXPECT_EQ(t.optimizer.rule.beta2, 0.999);
        EXPECT_EQ(parsed(R"({"type": "adam", "lr": 0.1, "steps": 1, "beta2": 0})").optimizer.rule.beta2, 0.0);
    }
    // dict(opt.param_groups[0]) minus 'params', as torch 2.x holds it.
    {
        const epk::trace t = parsed(R"({"type": "SGD", "steps": 2, "lr": 0.1, "momentum": 0.9, "dampening": 0,
            "weight_decay": 0.0005, "nesterov": true, "maximize": false, "foreach": null, "differentiable": false,
            "fused": null, "initial_lr": 0.2})");
        EXPECT_EQ(t.optimizer.rule.momentum, 0.9);
        EXPECT_TRUE(t.optimizer.rule.nesterov);
        EXPECT_EQ(t.optimizer.rule.weight_decay, 0.0005);
        EXPECT_EQ(t.optimizer.learning_rate, 0.1);  // not initial_lr
    }
    {
        const epk::trace t = parsed(R"({"type": "AdamW", "steps": 2, "lr": 0.001, "betas": [0.9, 0.95], "eps": 1e-08,
            "weight_decay": 0.1, "amsgrad": true, "maximize": false, "foreach": true, "capturable": false,
            "differentiable": false, "fused": false, "decoupled_weight_decay": true, "initial_step": 12})");
        const epk::optimizer_spec& o = t.optimizer.rule;
        EXPECT_EQ(o.type, kind::adamw);
        EXPECT_EQ(o.beta2, 0.95);
        EXPECT_EQ(o.weight_decay, 0.1);
        EXPECT_TRUE(o.amsgrad);
        EXPECT_EQ(t.optimizer.initial_step, 12u);
    }
    // Adam(decoupled_weight_decay=True) is AdamW's update, with Adam's default weight decay 0.
    {
        const epk::trace t = parsed(R"({"type": "Adam", "steps": 2, "lr": 0.001, "decoupled_weight_decay": true})");
        EXPECT_EQ(t.optimizer.rule.type, kind::adamw);
        EXPECT_EQ(t.optimizer.rule.weight_decay, 0.0);
        EXPECT_EQ(parsed(R"({"type": "Adam", "steps": 2, "lr": 1, "decoupled_weight_decay": false})").optimizer.rule.type,
                  kind::adam);
    }
    // Version 1 with version 2's fields is read as version 2 (and written as version 2).
    {
        const epk::trace t = parsed(R"({"type": "adam", "lr": 0.1, "steps": 1})", 1);
        EXPECT_EQ(t.optimizer.rule.type, kind::adam);
        EXPECT_NE(epk::manifest_text(t).find("\"version\": 2"), std::string::npos);
    }
    // manifest_text of what was read reads back to the same text.
    for (const char* o : {R"({"type": "AdamW", "lr": 0.001, "steps": 4, "beta1": 0.5, "initial_step": 3})",
                          R"({"type": "SGD", "lr": 0.001, "steps": 4, "momentum": 0.25, "dampening": -1})"}) {
        const std::string text = epk::manifest_text(parsed(o));
        epk::trace again;
        epk::parse_manifest(text, "again.json", again);
        EXPECT_EQ(epk::manifest_text(again), text);
    }
}

TEST(TraceV2, OptimizerRejectionsNameTheField) {
    const auto rule_of = [](const std::string& optimizer) -> std::string {
        try {
            (void)parsed(optimizer);
        } catch (const epk::input_error& e) {
            EXPECT_EQ(e.file(), "m.json");
            EXPECT_EQ(e.rule().find('\n'), std::string::npos) << e.rule();
            return e.rule();
        }
        return "<accepted>";
    };
    const std::vector<std::pair<std::string, std::string>> cases = {
        {R"({"type": "sgd", "lr": 0.1, "learning_rate": 0.1, "steps": 1})",
         "'optimizer.lr' and 'optimizer.learning_rate' are the same field"},
        {R"({"type": "sgd", "lr": "0.1", "steps": 1})", "'optimizer.lr' must be a number"},
        {R"({"type": "adam", "lr": 0.1, "steps": 1, "betas": [0.9, 0.99], "beta1": 0.9})",
         "'optimizer.betas' and 'optimizer.beta1'/'optimizer.beta2' are two forms of the same values"},
        {R"({"type": "adam", "lr": 0.1, "steps": 1, "beta2": 0.9, "betas": [0.9, 0.99]})", "two forms of the same values"},
        {R"({"type": "adam", "lr": 0.1, "steps": 1, "betas": 0.9})",
         "'optimizer.betas' must be an array of two numbers [beta1, beta2], found 0.9"},
        {R"({"type": "adam", "lr": 0.1, "steps": 1, "betas": [0.9, 0.99, 0.5]})", "'optimizer.betas' must be an array of two"},
        {R"({"type": "adam", "lr": 0.1, "steps": 1, "betas": [0.9, 1.0]})", "'optimizer.betas[1]' must be in [0, 1), found 1.0"},
        {R"({"type": "adam", "lr": 0.1, "steps": 1, "betas": [-0.1, 0.9]})", "'optimizer.betas[0]' must be in [0, 1)"},
        {R"({"type": "adam", "lr": 0.1, "steps": 1, "betas": ["0.9", 0.9]})", "'optimizer.betas[0]' must be a number"},
        {R"({"type": "adamw", "lr": 0.1, "steps": 1, "beta1": 1})", "'optimizer.beta1' must be in [0, 1), found 1"},
        {R"({"type": "adamw", "lr": 0.1, "steps": 1, "beta2": -0.0001})", "'optimizer.beta2' must be in [0, 1)"},
        {R"({"type": "sgd", "lr": 0.1, "steps": 1, "momentum": -0.5})",
         "'optimizer.momentum' must be finite and >= 0, found -0.5"},
        {R"({"type": "adamw", "lr": 0.1, "steps": 1, "weight_decay": -1})", "'optimizer.weight_decay' must be finite and >= 0"},
        {R"({"type": "sgd", "lr": 0.1, "steps": 1, "weight_decay": -1e-300})", "'optimizer.weight_decay' must be finite and >= 0"},
        {R"({"type": "adam", "lr": 0.1, "steps": 1, "eps": -1e-8})", "'optimizer.eps' must be finite and >= 0"},
        {R"({"type": "sgd", "lr": 0.1, "steps": 1, "dampening": "x"})", "'optimizer.dampening' must be a number"},
        {R"({"type": "sgd", "lr": 0.1, "steps": 1, "nesterov": true})",
         "'optimizer.nesterov' requires 'optimizer.momentum' > 0 and 'optimizer.dampening' = 0"},
        {R"({"type": "sgd", "lr": 0.1, "steps": 1, "nesterov": true, "momentum": 0.9, "dampening": 0.1})",
         "'optimizer.nesterov' requires 'optimizer.momentum' > 0"},
        {R"({"type": "sgd", "lr": 0.1, "steps": 1, "nesterov": 1, "momentum": 0.9})", "'optimizer.nesterov' must be true or false"},
        {R"({"type": "adam", "lr": 0.1, "steps": 1, "amsgrad": "false"})", "'optimizer.amsgrad' must be true or false"},
        {R"({"type": "adam", "lr": 0.1, "steps": 1, "maximize": true})",
         "'optimizer.maximize' is true: maximize=true is not implemented"},
        {R"({"type": "sgd", "lr": 0.1, "steps": 1, "maximize": null})", "'optimizer.maximize' must be true or false"},
        {R"({"type": "sgd", "lr": 0.1, "steps": 1, "foreach": "yes"})", "'optimizer.foreach' must be true, false or null"},
        {R"({"type": "adam", "lr": 0.1, "steps": 1, "fused": 0})", "'optimizer.fused' must be true, false or null"},
        {R"({"type": "adam", "lr": 0.1, "steps": 1, "capturable": []})", "'optimizer.capturable' must be true, false or null"},
        {R"({"type": "adam", "lr": 0.1, "steps": 1, "differentiable": "no"})",
         "'optimizer.differentiable' must be true, false or null"},
        {R"({"type": "sgd", "lr": 0.1, "steps": 1, "initial_lr": "x"})", "'optimizer.initial_lr' must be a number"},
        {R"({"type": "sgd", "lr": 0.1, "steps": 1, "initial_step": -1})", "'optimizer.initial_step' must be >= 0, found -1"},
        {R"({"type": "sgd", "lr": 0.1, "steps": 1, "initial_step": 2.0})", "'optimizer.initial_step' must be an integer"},
        {R"({"type": "sgd", "lr": 0.1, "steps": 1, "initial_step": 1152921504606846976})",
         "'optimizer.initial_step' must be <= 2^53"},
        {R"({"type": "AdamW", "lr": 0.1, "steps": 1, "decoupled_weight_decay": false})",
         "'optimizer.decoupled_weight_decay' is false, but AdamW's weight decay is decoupled"},
        {R"({"type": "Adam", "lr": 0.1, "steps": 1, "decoupled_weight_decay": "true"})",
         "'optimizer.decoupled_weight_decay' must be true or false"},
        {R"({"type": "adam", "lr": 0.1, "steps": 1, "momentum": 0.9})", "'optimizer.momentum' is an option of sgd, not of adam"},
        {R"({"type": "AdamW", "lr": 0.1, "steps": 1, "nesterov": false})", "'optimizer.nesterov' is an option of sgd, not of adamw"},
        {R"({"type": "SGD", "lr": 0.1, "steps": 1, "betas": [0.9, 0.99]})", "'optimizer.betas' is an option of adam and adamw, not of sgd"},
        {R"({"type": "sgd", "lr": 0.1, "steps": 1, "amsgrad": false})", "'optimizer.amsgrad' is an option of adam and adamw, not of sgd"},
        {R"({"type": "sgd", "lr": 0.1, "steps": 1, "eps": 1e-8})", "'optimizer.eps' is an option of adam and adamw, not of sgd"},
        {R"({"type": "adam", "lr": 0.1, "steps": 1, "rho": 0.9})", "unknown optimizer field 'rho' (optimizer adam)"},
        {R"({"type": "adagrad", "lr": 0.1, "steps": 1})", "optimizer 'adagrad' is not implemented"},
        {R"({"type": "sgdw", "lr": 0.1, "steps": 1})", "optimizer 'sgdw' is not implemented"},
        {R"({"type": 5, "lr": 0.1, "steps": 1})", "'optimizer.type' must be a string"},
        {R"({"lr": 0.1, "steps": 1})", "missing field 'optimizer.type'"},
        {R"({"type": "adam", "lr": 0.1})", "missing field 'optimizer.steps'"},
    };
    for (const auto& [optimizer, rule] : cases) {
        const std::string got = rule_of(optimizer);
        EXPECT_NE(got.find(rule), std::string::npos) << optimizer << "\n  gave: " << got << "\n  expected: " << rule;
    }
    // The same checks in a manifest marked version 1.
    try {
        (void)parsed(R"({"type": "sgd", "lr": 0.1, "steps": 1, "momentum": -1})", 1);
        ADD_FAILURE() << "accepted";
    } catch (const epk::input_error& e) {
        EXPECT_NE(e.rule().find("'optimizer.momentum' must be finite and >= 0"), std::string::npos) << e.what();
    }
}

// The recorded optimizer state: present exactly when initial_step >= 1 and the optimizer
// keeps it; [P], real, finite, second moments >= 0; errors name the file.
TEST_F(TraceDir, RecordedStateIsRequiredWhenResumed) {
    rewrite(v2_trace(adam(), 7));
    EXPECT_NO_THROW(epk::read_trace(dir_));
    fs::remove(file("init_exp_avg_sq.npy"));
    expect_rejected("init_exp_avg_sq.npy",
                    "missing required file (optimizer.initial_step is 7: a resumed adam run needs the optimizer's "
                    "recorded state)");
    rewrite(v2_trace(adam(), 7));
    fs::remove(file("init_exp_avg.npy"));
    expect_rejected("init_exp_avg.npy", "missing required file (optimizer.initial_step is 7");
    rewrite(v2_trace(adamw_amsgrad(), 1));
    EXPECT_NO_THROW(epk::read_trace(dir_));
    fs::remove(file("init_max_exp_avg_sq.npy"));
    expect_rejected("init_max_exp_avg_sq.npy", "missing required file (optimizer.initial_step is 1: a resumed adamw run");
    rewrite(v2_trace(sgd_nesterov(), 7));
    EXPECT_NO_THROW(epk::read_trace(dir_));
    fs::remove(file("init_momentum_buffer.npy"));
    expect_rejected("init_momentum_buffer.npy", "missing required file (optimizer.initial_step is 7: a resumed sgd run");
    // SGD without momentum keeps no state: resumed, it needs none.
    rewrite(v2_trace(sgd_decay_only(), 7));
    EXPECT_NO_THROW(epk::read_trace(dir_));
    // A resumed trace marked version 1 is read as version 2.
    rewrite(v2_trace(adam(), 7));
    edit_manifest([](nlohmann::json& j) { j["version"] = 1; });
    EXPECT_EQ(epk::read_trace(dir_).optimizer.initial_step, 7u);
}

TEST_F(TraceDir, RecordedStateNeedsInitialStep) {
    rewrite(v2_trace(adam(), 7));
    edit_manifest([](nlohmann::json& j) { j["optimizer"]["initial_step"] = 0; });
    expect_rejected("init_exp_avg.npy",
                    "a recorded optimizer state needs 'optimizer.initial_step' >= 1 (the steps taken before it), found 0");
    edit_manifest([](nlohmann::json& j) { j["optimizer"].erase("initial_step"); });
    expect_rejected("init_exp_avg.npy", "needs 'optimizer.initial_step' >= 1");
    rewrite(v2_trace(sgd_damped(), 3));
    edit_manifest([](nlohmann::json& j) { j["optimizer"].erase("initial_step"); });
    expect_rejected("init_momentum_buffer.npy", "needs 'optimizer.initial_step' >= 1");
}

TEST_F(TraceDir, RecordedStateTheOptimizerHasNoUseFor) {
    const std::size_t P = 26;
    const epk::npy_array zeros = epk::make_real_array(epk::npy_dtype::f8, {P}, std::vector<double>(P, 0.0));
    // A plain version 1 trace with Adam's state.
    put_npy("init_exp_avg.npy", zeros);
    expect_rejected("init_exp_avg.npy", "not used by this optimizer (exp_avg is Adam/AdamW state, the optimizer is sgd)");
    fs::remove(file("init_exp_avg.npy"));
    put_npy("init_max_exp_avg_sq.npy", zeros);
    expect_rejected("init_max_exp_avg_sq.npy", "not used by this optimizer (max_exp_avg_sq is Adam/AdamW state");
    // SGD without momentum, resumed, with a momentum buffer.
    rewrite(v2_trace(sgd_decay_only(), 7));
    put_npy("init_momentum_buffer.npy", zeros);
    expect_rejected("init_momentum_buffer.npy",
                    "not used by this optimizer (optimizer.momentum is 0: SGD without momentum keeps no momentum buffer)");
    // SGD with momentum and Adam's state.
    rewrite(v2_trace(sgd_damped(), 7));
    put_npy("init_exp_avg_sq.npy", zeros);
    expect_rejected("init_exp_avg_sq.npy", "not used by this optimizer (exp_avg_sq is Adam/AdamW state, the optimizer is sgd)");
    // Adam with SGD's state, and without amsgrad with amsgrad's.
    rewrite(v2_trace(adam(), 7));
    put_npy("init_momentum_buffer.npy", zeros);
    expect_rejected("init_momentum_buffer.npy",
                    "not used by this optimizer (the momentum buffer is SGD's state, the optimizer is adam)");
    fs::remove(file("init_momentum_buffer.npy"));
    put_npy("init_max_exp_avg_sq.npy", zeros);
    expect_rejected("init_max_exp_avg_sq.npy",
                    "not used by this optimizer (optimizer.amsgrad is false: max_exp_avg_sq is amsgrad's state)");
}

TEST_F(TraceDir, RecordedStateArrays) {
    const std::size_t P = 26;
    rewrite(v2_trace(adamw_amsgrad(), 7));
    const auto exp_avg_sq = epk::read_npy(file("init_exp_avg_sq.npy"));
    EXPECT_EQ(exp_avg_sq.dtype, epk::npy_dtype::f4);
    put_npy("init_exp_avg_sq.npy", epk::make_real_array(epk::npy_dtype::f8, {P + 1}, std::vector<double>(P + 1, 0.0)));
    expect_rejected("init_exp_avg_sq.npy", "shape (27,) disagrees with the manifest ([parameter count]): expected (26,)");
    put_npy("init_exp_avg_sq.npy", epk::make_real_array(epk::npy_dtype::f8, {1, P}, std::vector<double>(P, 0.0)));
    expect_rejected("init_exp_avg_sq.npy", "expected (26,)");
    put_npy("init_exp_avg_sq.npy", epk::make_int_array({P}, std::vector<std::int64_t>(P, 0)));
    expect_rejected("init_exp_avg_sq.npy", "dtype must be <f4 or <f8, found <i8");
    auto v = exp_avg_sq;
    v.real[2] = -0.5;
    put_npy("init_exp_avg_sq.npy", v);
    expect_rejected("init_exp_avg_sq.npy", "negative value -0.5 at element 2 (a second moment is >= 0)");
    v.real[2] = std::numeric_limits<double>::quiet_NaN();
    put_npy("init_exp_avg_sq.npy", v);
    expect_rejected("init_exp_avg_sq.npy", "NaN or infinity at element 2");
    put_npy("init_exp_avg_sq.npy", exp_avg_sq);
    EXPECT_NO_THROW(epk::read_trace(dir_));

    auto mx = epk::read_npy(file("init_max_exp_avg_sq.npy"));
    mx.real[25] = -1e-300;
    put_npy("init_max_exp_avg_sq.npy", mx);
    expect_rejected("init_max_exp_avg_sq.npy", "negative value -1e-300 at element 25");
    // v̂max need not be >= v elementwise (a trace may come from a run whose state was edited).
    mx.real.assign(P, 0.0);
    put_npy("init_max_exp_avg_sq.npy", mx);
    EXPECT_NO_THROW(epk::read_trace(dir_));

    // m has any sign; but it is finite.
    auto m = epk::read_npy(file("init_exp_avg.npy"));
    EXPECT_LT(*std::min_element(m.real.begin(), m.real.end()), 0.0);
    m.real[0] = std::numeric_limits<double>::infinity();
    put_npy("init_exp_avg.npy", m);
    expect_rejected("init_exp_avg.npy", "NaN or infinity at element 0");

    rewrite(v2_trace(sgd_nesterov(), 7));
    auto b = epk::read_npy(file("init_momentum_buffer.npy"));
    b.real[5] = std::numeric_limits<double>::quiet_NaN();
    put_npy("init_momentum_buffer.npy", b);
    expect_rejected("init_momentum_buffer.npy", "NaN or infinity at element 5");
    put_bytes(file("init_momentum_buffer.npy"), {'x'});
    expect_rejected("init_momentum_buffer.npy", "not a .npy file (bad magic)");
}

// An in-memory trace whose optimizer breaks a rule is refused by write_trace, naming the
// manifest or the state file, and nothing is written.
TEST(TraceV2, WriteOfAnInvalidOptimizerWritesNothing) {
    temp_dir tmp;
    const fs::path out = tmp.path() / "out";
    using kind = epk::optimizer_spec::kind;
    const std::vector<std::tuple<std::function<void(epk::trace&)>, std::string, std::string>> breakages = {
        {[](epk::trace& t) { t.optimizer.rule.momentum = -1; }, "manifest.json", "'optimizer.momentum' must be finite and >= 0"},
        {[](epk::trace& t) { t.optimizer.rule.weight_decay = std::nan(""); }, "manifest.json", "'optimizer.weight_decay'"},
        {[](epk::trace& t) { t.optimizer.rule.dampening = std::numeric_limits<double>::infinity(); }, "manifest.json",
         "'optimizer.dampening' must be finite"},
        {[](epk::trace& t) { t.optimizer.rule.nesterov = true; }, "manifest.json", "'optimizer.nesterov' requires"},
        {[](epk::trace& t) { t.optimizer.rule.amsgrad = true; }, "manifest.json", "'optimizer.amsgrad' is an option of adam"},
        {[](epk::trace& t) { t.optimizer.rule.type = kind::adam; t.optimizer.rule.beta2 = 1.0; }, "manifest.json",
         "'optimizer.betas[1]' must be in [0, 1)"},
        {[](epk::trace& t) { t.optimizer.rule.type = kind::adamw; t.optimizer.rule.eps = -1; }, "manifest.json",
         "'optimizer.eps' must be finite and >= 0"},
        {[](epk::trace& t) { t.optimizer.rule.type = kind::adam; t.optimizer.rule.momentum = 0.9; }, "manifest.json",
         "'optimizer.momentum' is an option of sgd, not of adam"},
        {[](epk::trace& t) { t.optimizer.initial_step = (std::size_t{1} << 53) + 1; }, "manifest.json",
         "'optimizer.initial_step' must be <= 2^53"},
        {[](epk::trace& t) { t.optimizer.rule = adam(); t.optimizer.initial_step = 2; }, "init_exp_avg.npy", "missing required file"},
        {[](epk::trace& t) {
             t = v2_trace(adam(), 2);
             t.optimizer.initial_step = 0;
         },
         "init_exp_avg.npy", "needs 'optimizer.initial_step' >= 1"},
        {[](epk::trace& t) {
             t = v2_trace(sgd_damped(), 2);
             t.init_momentum_buffer->real[0] = std::nan("");
         },
         "init_momentum_buffer.npy", "NaN or infinity at element 0"},
    };
    for (const auto& [breakage, name, rule] : breakages) {
        epk::trace t = sample_trace();
        breakage(t);
        try {
            epk::write_trace(out, t);
            ADD_FAILURE() << "wrote an invalid trace; expected " << name << ": " << rule;
        } catch (const epk::input_error& e) {
            EXPECT_EQ(e.file(), (out / name).string()) << e.what();
            EXPECT_NE(e.rule().find(rule), std::string::npos) << e.what();
        }
        EXPECT_TRUE(fs::is_empty(tmp.path())) << name;
    }
}

// tests/test_trace.cpp — trace directories and manifests (src/trace.cpp).
//
// Covers: write -> read -> write is byte-identical for a trace holding every
// optional file; manifest_text is deterministic and round-trips doubles;
// every rejection class of spec/trace-format.md gives an input_error whose
// file() is the offending file and whose rule() names the rule; write_trace
// never leaves anything behind when it refuses or fails.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
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

// A valid trace on disk, to be damaged one file at a time.
class TraceDir : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = tmp_.path() / "run";
        epk::write_trace(dir_, sample_trace());
    }
    fs::path file(const char* name) const { return dir_ / name; }
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
        {with(model, loss, opt, R"("format": "epk-trace", "version": 2)"),
         "version 2 is not supported (this reader implements version 1)"},
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
         "unknown layer type 'dropout' (layers[3])"},
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
         "loss field 'label_smoothing' is not implemented in trace format version 1"},
        {with(model, loss, R"({"type": "adam", "learning_rate": 0.1, "steps": 3})"),
         "optimizer 'adam' is not implemented in trace format version 1"},
        {with(model, loss, R"({"type": "sgd", "learning_rate": 0.1, "steps": 3, "momentum": 0.9})"),
         "optimizer field 'momentum' is not implemented in trace format version 1"},
        {with(model, loss, R"({"type": "sgd", "learning_rate": 0.1, "steps": 3, "weight_decay": 0})"),
         "optimizer field 'weight_decay' is not implemented"},
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
    edit_manifest([](nlohmann::json& j) { j["model"]["layers"][1]["type"] = "dropout"; });
    expect_rejected("manifest.json", "unknown layer type 'dropout' (layers[1])");
}

TEST_F(TraceDir, UnknownLoss) {
    edit_manifest([](nlohmann::json& j) { j["loss"]["type"] = "hinge"; });
    expect_rejected("manifest.json", "unknown loss 'hinge'");
}

TEST_F(TraceDir, UnknownOptimizer) {
    edit_manifest([](nlohmann::json& j) { j["optimizer"]["type"] = "adam"; });
    expect_rejected("manifest.json", "optimizer 'adam' is not implemented in trace format version 1");
}

TEST_F(TraceDir, UnknownOptimizerField) {
    for (const char* field : {"momentum", "weight_decay", "nesterov", "dampening", "betas"}) {
        edit_manifest([&](nlohmann::json& j) {
            j["optimizer"].erase("momentum");
            j["optimizer"].erase("weight_decay");
            j["optimizer"].erase("nesterov");
            j["optimizer"].erase("dampening");
            j["optimizer"][field] = 0;
        });
        expect_rejected("manifest.json",
                        std::string("optimizer field '") + field + "' is not implemented in trace format version 1");
    }
}

TEST_F(TraceDir, VersionTwo) {
    edit_manifest([](nlohmann::json& j) { j["version"] = 2; });
    expect_rejected("manifest.json", "version 2 is not supported (this reader implements version 1)");
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

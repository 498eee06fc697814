// `epk certify` (src/certify.hpp, proofs-notes/011): on random small piecewise-linear MLPs
// trained by SGD (recorded binary64 paths with big steps, so that patterns change inside
// segments), every enclosure contains the MPFR-1024 value of the same quantity (epk's own
// path kernel at 1024 bits), the identity's residual encloses 0, widths fall like 2^-P from
// 128 to 512 bits, and a contribution moved by one unit in its P-th bit is caught.  What
// certify does not cover is refused with the layer or optimizer named.
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>

#include "../src/certify.hpp"
#include "epk/engine.hpp"
#include "epk/mpfr_real.hpp"
#include "epk/trace.hpp"
#include "epk/training.hpp"
#include "support/cnn_generators.hpp"

namespace {

struct certify_case {
    epk::trace rec;     // recorded binary64 path
    epk::trace replay;  // the same run with init_params.npy only (trained by whoever reads it)
    std::string text;
};

// Replaces every kink of a random tree by a smooth layer: relu → tanh, leaky_relu → gelu,
// max_pool2d → avg_pool2d (the shapes stay).
void smooth_out(std::vector<epk::layer_spec>& layers) {
    for (epk::layer_spec& l : layers) {
        if (l.kind == epk::layer_kind::relu) l.kind = epk::layer_kind::tanh;
        else if (l.kind == epk::layer_kind::leaky_relu) l.kind = epk::layer_kind::gelu;
        else if (l.kind == epk::layer_kind::max_pool2d) l.kind = epk::layer_kind::avg_pool2d;
        smooth_out(l.body);
        smooth_out(l.shortcut);
    }
}

// Piecewise-linear networks, or (smooth) networks of tanh, sigmoid, softplus, gelu, identity:
// MLPs, or (tree) small CNNs / ResNets of conv2d, max and average pools, residual blocks,
// flatten and linear (tests/support/cnn_generators.hpp).
// mixed: every activation (kinks after smooth layers and the reverse; trees with max pools).
certify_case gen_case(bool smooth = false, bool tree = false, bool mixed = false) {
    static const std::vector<epk::layer_kind> kinked{epk::layer_kind::relu, epk::layer_kind::leaky_relu,
                                                     epk::layer_kind::identity};
    static const std::vector<epk::layer_kind> smooth_acts{epk::layer_kind::tanh, epk::layer_kind::sigmoid,
                                                          epk::layer_kind::softplus, epk::layer_kind::gelu,
                                                          epk::layer_kind::identity};
    std::vector<epk::layer_kind> all = kinked;
    all.insert(all.end(), smooth_acts.begin(), smooth_acts.end() - 1);
    const std::vector<epk::layer_kind>& acts = mixed ? all : smooth ? smooth_acts : kinked;
    epk::trace t;
    epk::model_spec& m = t.model;
    if (tree) {
        m = epk::testing::cnn::gen_cnn(!smooth && !mixed, smooth || mixed);  // layer norm: smooth (011 §13)
        if (smooth && !mixed) smooth_out(m.layers);
    } else {
        m.input_dim = *rc::gen::inRange<std::size_t>(1, 5);
        const auto linear = *rc::gen::weightedElement<std::size_t>({{1, 1}, {4, 2}, {4, 3}});
        for (std::size_t k = 0; k < linear; ++k) {
            m.layers.push_back({epk::layer_kind::linear, *rc::gen::inRange<std::size_t>(1, 7), *rc::gen::arbitrary<bool>(), 0.01});
            if (k + 1 < linear) {
                if ((smooth || mixed) && *rc::gen::weightedElement<int>({{2, 0}, {1, 1}})) {  // a layer norm (011 §13)
                    m.layers.push_back(epk::testing::cnn::norm({m.layers.back().out_features}, *rc::gen::arbitrary<bool>()));
                    m.layers.back().bias = *rc::gen::arbitrary<bool>();
                }
                epk::layer_spec a{*rc::gen::elementOf(acts), 0, true, 0.01};
                if (a.kind == epk::layer_kind::leaky_relu) a.negative_slope = *rc::gen::element(0.01, 0.2, -0.5);
                m.layers.push_back(a);
            }
        }
    }
    const std::size_t C = m.output_dim(), N = *rc::gen::inRange<std::size_t>(2, 7), D = m.input_dim;
    const bool ce = C >= 2 && *rc::gen::arbitrary<bool>();
    t.loss = {ce ? epk::loss_kind::cross_entropy : epk::loss_kind::mse,
              *rc::gen::arbitrary<bool>() ? epk::reduction_kind::mean : epk::reduction_kind::sum};
    t.optimizer.steps = *rc::gen::inRange<std::size_t>(1, 5);
    // Smooth: big steps of diverging runs put the activations' complex singularities within
    // 1e-5 of the segment, which certify refuses after its bisection budget (proofs-notes/011 §7).
    // Trees: a diverging CNN run (parameters of 1e87 after three steps of lr 0.5 under mse,
    // 7e17 after four of lr 0.2) has so many pattern changes per segment, or (smooth) so many
    // bisections before §7's refusal, that a case takes minutes: rates ≤ 0.2, 0.05 under mse.
    t.optimizer.learning_rate = tree              ? (ce ? *rc::gen::element(0.05, 0.2) : 0.05)
                                : smooth || mixed ? *rc::gen::element(0.05, 0.2, 0.5)
                                         : *rc::gen::element(0.05, 0.5, 2.0);
    const std::uint64_t seed = *rc::gen::arbitrary<std::uint32_t>();
    std::mt19937_64 rng(seed);
    auto draw = [&](std::size_t count, double scale) {
        std::vector<double> v(count);
        for (double& e : v) e = static_cast<double>(static_cast<int>(rng() % 257) - 128) / scale;
        return v;
    };
    std::vector<std::size_t> shape{N};  // [N, D] or [N, c, h, w]
    for (const std::size_t d : m.sample_shape()) shape.push_back(d);
    t.x_train = epk::make_real_array(epk::npy_dtype::f8, shape, draw(N * D, 64.0));
    if (ce) {
        std::vector<std::int64_t> labels(N);
        for (auto& l : labels) l = static_cast<std::int64_t>(rng() % C);
        t.y_train = epk::make_int_array({N}, labels);
    } else {
        t.y_train = epk::make_real_array(epk::npy_dtype::f8, {N, C}, draw(N * C, 64.0));
    }
    shape[0] = 2;
    t.x_test = epk::make_real_array(epk::npy_dtype::f8, shape, draw(2 * D, 64.0));
    if (N >= 3 && *rc::gen::arbitrary<bool>()) {  // minibatches of 2
        std::vector<std::int64_t> b;
        for (std::size_t s = 0; s < t.optimizer.steps; ++s) {
            b.push_back(static_cast<std::int64_t>(rng() % N));
            b.push_back(static_cast<std::int64_t>((b.back() + 1 + rng() % (N - 1)) % N));
        }
        t.batches = epk::make_int_array({t.optimizer.steps, 2}, b);
    }
    const std::size_t P = m.parameter_count();
    t.init_params = epk::make_real_array(epk::npy_dtype::f8, {P}, epk::torch_default_init(m, seed));
    // The optimizer (proofs-notes/007): plain SGD half the time, else SGD with momentum,
    // dampening, nesterov and weight decay, Adam or AdamW (amsgrad), sometimes resumed from a
    // recorded state.
    const auto kind = *rc::gen::weightedElement<int>({{4, 0}, {2, 1}, {1, 2}, {1, 3}});
    epk::optimizer_spec& o = t.optimizer.rule;
    std::string opt = "sgd";
    if (kind == 1) {
        o.momentum = *rc::gen::element(0.0, 0.5, 0.9);
        o.nesterov = o.momentum != 0 && *rc::gen::arbitrary<bool>();
        o.dampening = o.momentum != 0 && !o.nesterov ? *rc::gen::element(0.0, 0.1) : 0.0;
        o.weight_decay = *rc::gen::element(0.0, 0.01, 0.1);
        opt = "sgd momentum " + std::to_string(o.momentum) + (o.nesterov ? " nesterov" : "") + " dampening " +
              std::to_string(o.dampening) + " wd " + std::to_string(o.weight_decay);
    } else if (kind >= 2) {
        o.type = kind == 2 ? epk::optimizer_spec::kind::adam : epk::optimizer_spec::kind::adamw;
        o.weight_decay = *rc::gen::element(0.0, 0.01, 0.1);
        o.amsgrad = *rc::gen::arbitrary<bool>();
        o.eps = *rc::gen::element(1e-8, 1e-3);
        t.optimizer.learning_rate /= 10;  // Adam's steps are about lr per coordinate
        opt = std::string(kind == 2 ? "adam" : "adamw") + (o.amsgrad ? " amsgrad" : "") + " wd " + std::to_string(o.weight_decay);
    }
    if (kind != 0 && *rc::gen::weightedElement<int>({{3, 0}, {1, 1}})) {  // resumed after a few steps
        t.optimizer.initial_step = *rc::gen::inRange<std::size_t>(1, 4);
        auto state = [&](bool square) {
            std::vector<double> v = draw(P, 512.0);
            if (square)
                for (double& e : v) e *= e;
            return epk::make_real_array(epk::npy_dtype::f8, {P}, v);
        };
        if (kind == 1 && o.momentum != 0) t.init_momentum_buffer = state(false);
        if (kind >= 2) {
            t.init_exp_avg = state(false);
            t.init_exp_avg_sq = state(true);
            if (o.amsgrad) t.init_max_exp_avg_sq = state(true);
        }
        opt += ", resumed at " + std::to_string(t.optimizer.initial_step);
    }
    epk::validate_trace(t, "in-memory");
    RC_CLASSIFY(kind == 0, "plain sgd");
    RC_CLASSIFY(kind == 1, "sgd with momentum or decay");
    RC_CLASSIFY(kind >= 2, "adam/adamw");
    RC_CLASSIFY(t.optimizer.initial_step > 0, "resumed");
    bool norm = false;
    for (const epk::layer_spec& l : m.layers) norm = norm || l.kind == epk::layer_kind::layer_norm;
    RC_CLASSIFY(norm, "layer norm");
    certify_case c;
    c.replay = t;
    c.rec = epk::replay_trace(t, epk::parse_precision("double"));
    c.text = (tree ? epk::manifest_text(t) : std::string()) + "layers " + std::to_string(m.layers.size()) + ", C " + std::to_string(C) + ", N " + std::to_string(N) +
             ", S " + std::to_string(t.optimizer.steps) + ", lr " + std::to_string(t.optimizer.learning_rate) + ", seed " +
             std::to_string(seed) + ", " + opt;
    return c;
}

// Which case a slow run is on (EPK_TEST_SHOW_CASES=1), and the case as a trace directory
// (EPK_TEST_DUMP_DIR=DIR, the last case generated).
void show(const certify_case& c) {
    if (std::getenv("EPK_TEST_SHOW_CASES") != nullptr) std::fprintf(stderr, "case: %s\n", c.text.c_str());
    if (const char* dir = std::getenv("EPK_TEST_DUMP_DIR")) {
        std::filesystem::remove_all(dir);
        epk::write_trace(dir, c.rec);
    }
}

// |value − mid| ≤ rad + 2^-900 |value|: the MPFR-1024 value lies in the enclosure (up to its
// own rounding, far below any radius certify produces at ≤ 512 bits).
bool contains(const epk::ball_table& b, std::size_t e, const std::string& value) {
    const epk::mpfr_real v(value), mid(b.mid[e]), rad(b.rad[e]);
    epk::mpfr_real d = v - mid;
    if (d < epk::mpfr_real(0)) d = -d;
    epk::mpfr_real slack = v < epk::mpfr_real(0) ? -v : v;
    mpfr_mul_2si(slack.get(), slack.get(), -900, MPFR_RNDN);
    return !(rad + slack < d);
}

}  // namespace

namespace {

// Certified at 256 bits with contributions; every enclosure contains epk's MPFR-1024 value.
void check_encloses_mpfr1024(const certify_case& c) {
    show(c);
    RC_LOG() << c.text << "\n";
    epk::certify_options o;
    o.bits = 256;
    o.contributions = true;
    o.threads = 2;
    const epk::certify_report r = epk::certify_trace(c.rec, o);
    RC_LOG() << r.reason << "\n";
    RC_ASSERT(r.supported);
    RC_ASSERT(r.residual.contains_zero_everywhere);
    RC_ASSERT(r.certified);
    RC_CLASSIFY(r.kinks > 0, "pattern changes isolated");
    const epk::mpfr_precision_scope guard(1024);
    epk::kernel_options ko;
    ko.contributions = true;
    const epk::kernel_report k = epk::compute_kernel(c.rec, epk::parse_precision("mpfr:1024"), ko);
    for (std::size_t e = 0; e < r.outputs_final.mid.size(); ++e) {
        RC_ASSERT(contains(r.outputs_initial, e, k.outputs_initial.decimal[e]));
        RC_ASSERT(contains(r.outputs_final, e, k.outputs_final.decimal[e]));
        RC_ASSERT(contains(r.reconstruction, e, k.reconstruction.decimal[e]));
        RC_ASSERT(contains(r.remainder_term, e, k.remainder_term.decimal[e]));
        if (!k.optimizer_term.decimal.empty()) RC_ASSERT(contains(r.optimizer_term, e, k.optimizer_term.decimal[e]));
        else RC_ASSERT(r.optimizer_term.rad_value[e] == 0.0 && r.optimizer_term.mid_value[e] == 0.0);
    }
    // The contributions (epk's report keeps them in binary64: the MPFR-1024 value rounded once,
    // so within 2^-53 relative of the enclosure).
    RC_ASSERT(k.contributions.size() == r.contributions.mid_value.size());
    for (std::size_t e = 0; e < k.contributions.size(); ++e) {
        const double v = k.contributions[e], d = std::abs(v - r.contributions.mid_value[e]);
        if (std::isinf(v)) {  // a diverged run: beyond binary64's range in both
            RC_ASSERT(r.contributions.mid_value[e] == v);
            continue;
        }
        RC_ASSERT(d <= r.contributions.rad_value[e] + std::ldexp(std::abs(v), -52) + 1e-300);
    }
}

}  // namespace

RC_GTEST_PROP(Certify, EnclosesTheMpfr1024Values, ()) { check_encloses_mpfr1024(gen_case()); }

// CNNs and ResNets (conv2d, max / average pools, residual blocks) with relu, leaky_relu,
// identity: max pools' switches and relu kinks isolated along every segment (011 §10).
RC_GTEST_PROP(Certify, TreeEnclosesTheMpfr1024Values, ()) { check_encloses_mpfr1024(gen_case(false, true)); }

namespace {

// Smooth: certified at 128 bits (or refused for §7's reason), outputs containing MPFR-1024 values.
void check_smooth(const certify_case& c, bool mixed = false) {
    show(c);
    RC_LOG() << c.text << "\n";
    epk::certify_options o;
    o.bits = 128;
    o.threads = 2;
    o.contributions = true;
    const epk::certify_report r = epk::certify_trace(c.rec, o);
    RC_LOG() << r.reason << " (widest " << r.widest << ", " << r.smooth_nodes << " nodes)\n";
    if (!r.supported) {  // a diverging run's big step (proofs-notes/011 §7): refused, never certified
        RC_ASSERT(r.reason.find("no analytic error bound on a segment") != std::string::npos);
        RC_ASSERT(!r.certified);
        return;
    }
    RC_ASSERT(r.residual.contains_zero_everywhere);
    // The outputs against MPFR-1024 forward passes (the identity itself is the residual's
    // containment of 0; epk's own mpfr:1024 kernel of a smooth network is too slow for a property).
    const epk::mpfr_precision_scope guard(1024);
    const epk::evaluation k = epk::evaluate_trace(c.rec, epk::parse_precision("mpfr:1024"));
    for (std::size_t e = 0; e < r.outputs_final.mid.size(); ++e) {
        RC_ASSERT(contains(r.outputs_initial, e, k.outputs_initial.decimal[e]));
        RC_ASSERT(contains(r.outputs_final, e, k.outputs_final.decimal[e]));
    }
    RC_ASSERT(r.certified);
    if (mixed) return;  // epk's kernel finds a kink behind a smooth layer by sampling (a heuristic)
    // The contributions against epk's own kernel in binary64 (its adaptive quadrature to its
    // tolerance, then binary64 rounding): within 1e-8 of the run's scale.  A wrong share or
    // Jacobian would be off by O(1) of it.
    epk::kernel_options ko;
    ko.contributions = true;
    ko.threads = 1;
    const epk::kernel_report d = epk::compute_kernel(c.rec, epk::parse_precision("double"), ko);
    RC_ASSERT(d.contributions.size() == r.contributions.mid_value.size());
    double scale = 0;
    for (const double v : d.contributions) scale = std::max(scale, std::abs(v));
    for (const double v : d.outputs_final.values) scale = std::max(scale, std::abs(v));
    if (!std::isfinite(scale)) return;  // a diverged run: binary64 cannot compare
    for (std::size_t e = 0; e < d.contributions.size(); ++e)
        RC_ASSERT(std::abs(d.contributions[e] - r.contributions.mid_value[e]) <=
                  r.contributions.rad_value[e] + 1e-8 * scale);
}

}  // namespace

RC_GTEST_PROP(Certify, SmoothEnclosesTheMpfr1024Values, ()) { check_smooth(gen_case(true)); }

// Smooth CNNs and ResNets (tanh, sigmoid, softplus, gelu; average pools): the analytic bound
// through conv2d, pools and residual blocks in complex balls.
RC_GTEST_PROP(Certify, SmoothTreeEnclosesTheMpfr1024Values, ()) { check_smooth(gen_case(true, true)); }

// Mixed networks (011 §12): relu / leaky_relu / max pools before and after tanh, sigmoid,
// softplus, gelu, in MLPs and CNNs — kinks isolated by interval Newton on analytic switching
// functions, each piece's pattern integrated with the analytic bound.
RC_GTEST_PROP(Certify, MixedEnclosesTheMpfr1024Values, ()) {
    const bool tree = *rc::gen::arbitrary<bool>();
    check_smooth(gen_case(true, tree, true), true);
}

// A replayed trace is trained in ball arithmetic (proofs-notes/011 §8): its enclosures are
// of the exact-arithmetic training, so they contain epk's own training at 1024 bits (and not,
// in general, the binary64 path's outputs); the remainder term is exactly 0.
RC_GTEST_PROP(Certify, ReplayedTracesAreTrainedInBalls, ()) {
    const int kind = *rc::gen::inRange(0, 3);  // piecewise-linear MLP, CNN, smooth MLP
    const certify_case c = gen_case(kind == 2, kind == 1);
    RC_LOG() << c.text << "\n";
    RC_ASSERT(!c.replay.params.has_value());
    epk::certify_options o;
    o.bits = 256;
    o.threads = 2;
    const epk::certify_report r = epk::certify_trace(c.replay, o);
    RC_LOG() << r.reason << "\n";
    if (kind == 2 && !r.supported) {  // 011 §7's refusal, as for recorded smooth paths
        RC_ASSERT(r.reason.find("no analytic error bound on a segment") != std::string::npos);
        return;
    }
    RC_ASSERT(r.certified);
    RC_ASSERT(!r.recorded_path);
    const epk::mpfr_precision_scope guard(1024);
    const epk::evaluation k = epk::evaluate_trace(c.replay, epk::parse_precision("mpfr:1024"));
    for (std::size_t e = 0; e < r.outputs_final.mid.size(); ++e) {
        RC_ASSERT(contains(r.outputs_final, e, k.outputs_final.decimal[e]));
        RC_ASSERT(r.remainder_term.mid_value[e] == 0.0 && r.remainder_term.rad_value[e] == 0.0);
    }
}

RC_GTEST_PROP(Certify, WidthsFallLike2ToTheMinusP, ()) {
    const certify_case c = gen_case();
    RC_LOG() << c.text << "\n";
    epk::certify_options lo, hi;
    lo.bits = 128;
    hi.bits = 512;
    const epk::certify_report a = epk::certify_trace(c.rec, lo), b = epk::certify_trace(c.rec, hi);
    RC_LOG() << "128 bits: " << a.reason << " (" << a.widest << ", " << a.pieces << " pieces, " << a.kinks << " kinks, " << a.enclosed_intervals << " enclosed, f " << a.outputs_final.mid[0] << ")" << "; 512 bits: " << b.reason << " (" << b.widest << ")\n";
    RC_ASSERT(a.certified);
    RC_ASSERT(b.certified);
    // The widest relative width (an upper bound from base-2 exponents, within a factor 4).
    RC_ASSERT(b.widest <= a.widest);
    if (b.widest == 0) return;  // exact at 512 bits (small dyadic cases): nothing to compare
    // 2^-384 between them, up to 2^16 (the operation counts are the same; the leading
    // constants differ through the midpoints' roundings and the exponents' factor 4).
    const double fall = std::log2(a.widest) - std::log2(b.widest);
    RC_LOG() << "log2 fall " << fall << "\n";
    RC_ASSERT(fall >= 384.0 - 16.0);
    RC_ASSERT(fall <= 384.0 + 16.0);
}

RC_GTEST_PROP(Certify, OneUlpInAContributionIsCaught, ()) {
    const certify_case c = gen_case();
    RC_LOG() << c.text << "\n";
    epk::certify_options o;
    o.bits = 256;
    o.contributions = true;
    const epk::certify_report clean = epk::certify_trace(c.rec, o);
    RC_LOG() << clean.reason << "\n";
    RC_ASSERT(clean.certified);
    double largest = 0;  // the contribution moved: the largest |c(x_0, x_i)_0|
    for (std::size_t i = 0; i < clean.n_train; ++i)
        largest = std::max(largest, std::abs(clean.contributions.mid_value[i * clean.classes]));
    RC_PRE(largest > 0.0);
    o.perturb_contribution_ulps = 1;
    const epk::certify_report moved = epk::certify_trace(c.rec, o);
    RC_ASSERT(!moved.residual.contains_zero_everywhere);
    RC_ASSERT(!moved.certified);
    o.perturb_contribution_ulps = -1;
    RC_ASSERT(!epk::certify_trace(c.rec, o).certified);
}

TEST(Certify, RefusesWhatItCannotBack) {
    epk::trace t;
    t.model = epk::make_mlp(2, {3, 3}, 2, epk::layer_kind::tanh);
    t.model.layers[1].kind = epk::layer_kind::relu;  // relu, then tanh: a mixed network (011 §12)
    t.loss = {epk::loss_kind::cross_entropy, epk::reduction_kind::mean};
    t.optimizer.steps = 1;
    t.optimizer.learning_rate = 0.1;
    t.x_train = epk::make_real_array(epk::npy_dtype::f8, {2, 2}, {0.5, -0.25, 1, 0.75});
    t.y_train = epk::make_int_array({2}, {0, 1});
    t.init_params = epk::make_real_array(epk::npy_dtype::f8, {t.model.parameter_count()}, epk::torch_default_init(t.model, 1));
    epk::certify_report r = epk::certify_trace(t, {});
    EXPECT_TRUE(r.certified) << r.reason;

    epk::trace ln = t;  // a layer norm before the relu (011 §13)
    ln.model.layers.insert(ln.model.layers.begin() + 1, epk::testing::cnn::norm({3}));
    ln.init_params = epk::make_real_array(epk::npy_dtype::f8, {ln.model.parameter_count()}, epk::torch_default_init(ln.model, 1));
    r = epk::certify_trace(ln, {});
    EXPECT_TRUE(r.certified) << r.reason;

    t.model = epk::make_mlp(2, {3}, 2, epk::layer_kind::tanh);
    t.init_params = epk::make_real_array(epk::npy_dtype::f8, {t.model.parameter_count()}, epk::torch_default_init(t.model, 1));
    EXPECT_TRUE(epk::certify_trace(t, {}).certified);  // smooth: the analytic bound

    t.model = epk::make_mlp(2, {3}, 2, epk::layer_kind::relu);
    t.init_params = epk::make_real_array(epk::npy_dtype::f8, {t.model.parameter_count()}, epk::torch_default_init(t.model, 1));
    EXPECT_TRUE(epk::certify_trace(t, {}).certified);  // replayed: trained in balls (011 §8)
    t.optimizer.rule.type = epk::optimizer_spec::kind::adamw;
    t.optimizer.rule.weight_decay = 0.01;
    r = epk::certify_trace(t, {});
    EXPECT_TRUE(r.certified) << r.reason;  // the optimizer's shares in balls (proofs-notes/011 §9)
    // AdamW's decay is the optimizer term: −η λ Σ_s Ī_s w[s], not 0
    EXPECT_NE(r.optimizer_term.mid_value[0], 0.0);

    epk::certify_options bad;
    bad.bits = 8;
    EXPECT_THROW(epk::certify_trace(t, bad), epk::input_error);
}

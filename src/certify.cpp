// certify.cpp — `epk certify` in Arb's ball arithmetic (certify.hpp; proofs-notes/011-certify.md).
#include "certify.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string_view>
#include <map>
#include <mutex>
#include <thread>

#include "engine_impl.hpp"
#include "epk/error.hpp"
#include "epk/network.hpp"

#ifdef EPK_HAVE_ARB
#include <acb.h>
#include <acb_hypgeom.h>
#include <arb.h>
#include <arb_hypgeom.h>
#include <flint/flint.h>
#endif

namespace epk {

double certify_memory_estimate(const trace& t, const certify_options& o) {
    // A ball: the struct (48 bytes) and its midpoint's limbs (P + 64 bits, 8 bytes a limb).
    const double ball = 48.0 + 8.0 * static_cast<double>((o.bits + 64) / 64 + 1);
    const double P = static_cast<double>(t.model.parameter_count()), C = static_cast<double>(t.model.output_dim());
    const double M = static_cast<double>(test_point_count(t)), N = static_cast<double>(t.n_train());
    const double B = t.batches ? static_cast<double>(t.batches->shape[1]) : N;
    const double threads = static_cast<double>(std::max<std::size_t>(
        1, std::min<std::size_t>(o.threads ? o.threads : std::thread::hardware_concurrency(), test_point_count(t))));
    double count = threads * (C + 2) * P + (B + 6) * P + 8 * M * C;
    if (o.contributions) count += M * N * C;
    // momentum / Adam with contributions: every training point seen keeps a buffer and a
    // share (proofs-notes/007 §5); the optimizer's own state and ω: 4 more vectors
    const optimizer_spec& r = t.optimizer.rule;
    const bool memory = r.type != optimizer_spec::kind::sgd || r.momentum != 0;
    if (memory && o.contributions) count += 2 * N * P;
    count += 4 * P;
    // per thread, a pass keeps every slot's values, tangents and adjoints (trees: conv maps)
    double slots = 0;
    const layer_tree tree = compile_tree(t.model);  // named: tree_nodes points into it
    for (const tree_node* nd : tree_nodes(tree)) slots += static_cast<double>(nd->out_size);
    count += threads * 3 * (slots + static_cast<double>(t.model.input_dim));
    return count * ball;
}

#ifndef EPK_HAVE_ARB

bool certify_available() { return false; }

certify_report certify_trace(const trace&, const certify_options&, const progress_fn&) {
    throw usage_error("epk certify: this build has no Arb (install libflint-arb-dev and rebuild)");
}

#else

bool certify_available() { return true; }

namespace {

// A refusal that is not bad input: the trace parses, but this build cannot back a certificate
// for it (a layer kind, an optimizer, a sign it cannot decide).  certify_trace reports it.
constexpr slong guard_bits = 64;

struct not_certifiable : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------- RAII around Arb

struct ball {
    arb_t v;
    ball() { arb_init(v); }
    ball(const ball& o) { arb_init(v); arb_set(v, o.v); }
    ball& operator=(const ball& o) { arb_set(v, o.v); return *this; }
    ~ball() { arb_clear(v); }
};

struct point {  // an exact binary floating-point number (arf)
    arf_t v;
    point() { arf_init(v); }
    point(const point& o) { arf_init(v); arf_set(v, o.v); }
    point& operator=(const point& o) { arf_set(v, o.v); return *this; }
    ~point() { arf_clear(v); }
};

// (a + b)/2, exact.
point midpoint(const point& a, const point& b) {
    point m;
    arf_add(m.v, a.v, b.v, ARF_PREC_EXACT, ARF_RND_DOWN);
    arf_mul_2exp_si(m.v, m.v, -1);
    return m;
}

class balls {
public:
    balls() = default;
    explicit balls(std::size_t n) : p_(n ? _arb_vec_init(static_cast<slong>(n)) : nullptr), n_(n) {}
    balls(const balls& o) : balls(o.n_) { if (n_) _arb_vec_set(p_, o.p_, static_cast<slong>(n_)); }
    balls(balls&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
    balls& operator=(balls o) noexcept { std::swap(p_, o.p_); std::swap(n_, o.n_); return *this; }
    ~balls() { if (p_) _arb_vec_clear(p_, static_cast<slong>(n_)); }
    arb_ptr data() { return p_; }
    arb_srcptr data() const { return p_; }
    arb_ptr operator[](std::size_t i) { return p_ + i; }
    arb_srcptr operator[](std::size_t i) const { return p_ + i; }
    std::size_t size() const { return n_; }
    void zero() { if (n_) _arb_vec_zero(p_, static_cast<slong>(n_)); }

private:
    arb_ptr p_ = nullptr;
    std::size_t n_ = 0;
};

// res = x·d for a binary64 number d (exact as a ball of radius 0).
void mul_binary64(arb_ptr res, arb_srcptr x, double d, slong prec) {
    arb_t b;
    arb_init(b);
    arb_set_d(b, d);
    arb_mul(res, x, b, prec);
    arb_clear(b);
}

class acb_vec {
public:
    acb_vec() = default;
    explicit acb_vec(std::size_t n) : p_(n ? _acb_vec_init(static_cast<slong>(n)) : nullptr), n_(n) {}
    acb_vec(const acb_vec&) = delete;
    acb_vec(acb_vec&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
    acb_vec& operator=(acb_vec&& o) noexcept { std::swap(p_, o.p_); std::swap(n_, o.n_); return *this; }
    ~acb_vec() { if (p_) _acb_vec_clear(p_, static_cast<slong>(n_)); }
    acb_ptr operator[](std::size_t i) { return p_ + i; }
    std::size_t size() const { return n_; }

private:
    acb_ptr p_ = nullptr;
    std::size_t n_ = 0;
};

struct acb_box {
    acb_t v;
    acb_box() { acb_init(v); }
    acb_box(const acb_box&) = delete;
    ~acb_box() { acb_clear(v); }
};

balls exact_balls(const std::vector<double>& v) {
    balls b(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) arb_set_d(b[i], v[i]);  // binary64 → ball of radius 0
    return b;
}

// ---------------------------------------------------------------- the network

// The model as a list of ops over value slots (slot 0: the input; op k writes slot k + 1),
// compiled from epk's layer tree (layer_tree.hpp: shapes, parameter offsets, geometries).
// Every op is one of: a dense linear map W h + b (per row of the input), a sparse one (conv2d:
// every output's terms (weight index, input index) in conv_terms' order), an average pool
// (window sum / kh·kw), a max pool (window maximum), the sum of two slots (residual), or an
// elementwise activation.  flatten and identity are aliases (the same numbers).
enum class op_type { dense, sparse, avg, max, add, act, norm };

struct op {
    op_type type = op_type::act;
    std::string path;                   // "layers[3].body[1]"
    std::size_t in = 0, in2 = 0, size = 0;  // input slot(s), output length
    // dense: rows × fin → rows × fout, W at `weight` (fout × fin), b at `bias`
    std::size_t rows = 1, fin = 0, fout = 0, weight = 0, bias = 0;
    bool has_bias = false;
    // sparse, avg, max: output e's terms [start[e], start[e + 1]) of (tp: weight, ti: input);
    // sparse: bidx[e] the bias index (npos: none); avg: divisor
    std::vector<std::size_t> start, tp, ti, bidx;
    std::size_t divisor = 1;
    // norm (layer_norm over groups of n entries; γ at `weight`, β after it): layers::norm_geometry
    std::size_t groups = 0, n = 0;
    bool affine = false;
    double eps = 0;
    // act
    layer_kind kind = layer_kind::identity;
    double slope = 0;    // relu: 0; leaky_relu: negative_slope
    bool kinked = false; // relu, leaky_relu (units with signs); max pools are kinks too
    bool smooth = false; // tanh, sigmoid, softplus, gelu
};

struct net {
    std::vector<op> ops;
    std::size_t P = 0, D = 0, C = 0, out = 0;  // out: the output slot
    std::size_t depth = 0;                     // parametrised ops on the longest input→output path
    bool kinked = false, smooth = false;
    std::size_t slot_size(std::size_t s) const { return s == 0 ? D : ops[s - 1].size; }
};

constexpr std::size_t npos = static_cast<std::size_t>(-1);

class net_builder {
public:
    explicit net_builder(const model_spec& m) {
        n_.P = m.parameter_count();
        n_.D = m.input_dim;
        n_.C = m.output_dim();
    }

    net build(const layer_tree& t) {
        depth_.push_back(0);
        std::size_t s = sequence(t.layers, 0);
        n_.out = s;
        n_.depth = depth_[s];
        return std::move(n_);
    }

private:
    std::size_t sequence(const std::vector<tree_node>& seq, std::size_t s) {
        for (const tree_node& nd : seq) s = node(nd, s);
        return s;
    }

    std::size_t push(op o, std::size_t depth) {
        if (o.kinked || o.type == op_type::max) n_.kinked = true;
        if (o.smooth) n_.smooth = true;
        n_.ops.push_back(std::move(o));
        depth_.push_back(depth);
        return n_.ops.size();
    }

    std::size_t node(const tree_node& nd, std::size_t s) {
        op o;
        o.path = nd.path;
        o.in = s;
        o.size = nd.out_size;
        o.kind = nd.spec.kind;
        switch (nd.spec.kind) {
            case layer_kind::flatten:
            case layer_kind::identity: return s;
            case layer_kind::residual: {
                const std::size_t b = sequence(nd.body, s), c = sequence(nd.shortcut, s);
                o.type = op_type::add;
                o.in = b;
                o.in2 = c;
                return push(std::move(o), std::max(depth_[b], depth_[c]));
            }
            case layer_kind::linear: {
                const auto g = nd.linear();
                o.type = op_type::dense;
                o.rows = g.rows;
                o.fin = g.in;
                o.fout = g.out;
                o.weight = nd.offset;
                o.has_bias = g.bias;
                o.bias = nd.offset + g.out * g.in;
                return push(std::move(o), depth_[s] + 1);
            }
            case layer_kind::conv2d: {
                const auto g = nd.conv();
                o.type = op_type::sparse;
                o.start.push_back(0);
                for (std::size_t oc = 0; oc < g.O; ++oc)
                    for (std::size_t y = 0; y < g.Ho; ++y)
                        for (std::size_t x = 0; x < g.Wo; ++x) {
                            layers::conv_terms(g, oc, y, x, [&](std::size_t wi, std::size_t hi) {
                                o.tp.push_back(nd.offset + wi);
                                o.ti.push_back(hi);
                            });
                            o.start.push_back(o.tp.size());
                            o.bidx.push_back(g.bias ? nd.offset + g.weight_count() + oc : npos);
                        }
                return push(std::move(o), depth_[s] + 1);
            }
            case layer_kind::max_pool2d:
            case layer_kind::avg_pool2d: {
                const auto g = nd.pool();
                o.type = nd.spec.kind == layer_kind::max_pool2d ? op_type::max : op_type::avg;
                o.divisor = g.kh * g.kw;
                o.start.push_back(0);
                for (std::size_t c = 0; c < g.C; ++c)
                    for (std::size_t y = 0; y < g.Ho; ++y)
                        for (std::size_t x = 0; x < g.Wo; ++x) {
                            pool_window(g, c, y, x, [&](std::size_t i) { o.ti.push_back(i); });
                            o.start.push_back(o.ti.size());
                        }
                return push(std::move(o), depth_[s]);
            }
            case layer_kind::layer_norm: {
                const auto g = nd.norm();
                o.type = op_type::norm;
                o.groups = g.groups;
                o.n = g.n;
                o.affine = g.affine;
                o.has_bias = g.affine && g.bias;
                o.eps = g.eps;
                o.weight = nd.offset;
                o.smooth = true;  // analytic where v + ε > 0 (011 §13)
                return push(std::move(o), depth_[s] + (g.affine ? 1 : 0));
            }
            case layer_kind::relu:
            case layer_kind::leaky_relu:
                o.type = op_type::act;
                o.slope = nd.spec.kind == layer_kind::leaky_relu ? nd.spec.negative_slope : 0.0;
                o.kinked = true;
                return push(std::move(o), depth_[s]);
            case layer_kind::tanh:
            case layer_kind::sigmoid:
            case layer_kind::softplus:
            case layer_kind::gelu:
                o.type = op_type::act;
                o.smooth = true;
                return push(std::move(o), depth_[s]);
            default:
                throw not_certifiable(nd.path + " " + std::string(to_string(nd.spec.kind)) +
                                      ": certify does not cover this layer kind yet (it covers linear, conv2d, max_pool2d, "
                                      "avg_pool2d, flatten, layer_norm, residual and elementwise activations; "
                                      "the sequence layers are verified by epk verify)");
        }
    }

    net n_;
    std::vector<std::size_t> depth_;  // per slot
};

net make_net(const model_spec& m) {
    const layer_tree t = compile_tree(m);
    return net_builder(m).build(t);
}

// One input and, per max-pool op, every output's candidates: the window's entries with
// distinct *structure* (two entries computed by the same ops from equal inputs are the same
// function of θ — equal values and equal Jacobians — and the first of them stands for both:
// torch's first maximum; proofs-notes/011 §10).  A window keeps at most 64 candidates.
struct sample {
    balls x;
    std::vector<std::vector<std::vector<std::size_t>>> cand;  // [op][output] input indices
};

sample make_sample(const net& n, const std::vector<double>& xv) {
    sample s;
    s.x = exact_balls(xv);
    s.cand.resize(n.ops.size());
    bool any_max = false;
    for (const op& o : n.ops) any_max = any_max || o.type == op_type::max;
    if (!any_max) return s;
    // structure ids per slot: equal ids ⇒ the same function of θ
    std::map<std::vector<std::uint64_t>, std::uint64_t> ids;
    auto id_of = [&](std::vector<std::uint64_t>&& key) {
        auto it = ids.find(key);
        if (it == ids.end()) it = ids.emplace(std::move(key), ids.size()).first;
        return it->second;
    };
    std::vector<std::vector<std::uint64_t>> sid(n.ops.size() + 1);
    std::map<double, std::uint64_t> values;  // the input: equal numbers (0 and −0 alike)
    std::uint64_t zero_id = npos;
    for (const double v : xv) {
        auto it = values.find(v);
        if (it == values.end()) it = values.emplace(v, id_of({0, values.size()})).first;
        sid[0].push_back(it->second);
        if (v == 0) zero_id = it->second;
    }
    for (std::size_t k = 0; k < n.ops.size(); ++k) {
        const op& o = n.ops[k];
        const std::vector<std::uint64_t>& in = sid[o.in];
        std::vector<std::uint64_t>& out = sid[k + 1];
        out.resize(o.size);
        for (std::size_t e = 0; e < o.size; ++e) {
            std::vector<std::uint64_t> key{k + 1};
            switch (o.type) {
                case op_type::dense: {
                    const std::size_t r = e / o.fout;
                    key.push_back(e % o.fout);
                    for (std::size_t j = 0; j < o.fin; ++j) key.push_back(in[r * o.fin + j]);
                    break;
                }
                case op_type::sparse:
                    key.push_back(o.bidx[e]);
                    for (std::size_t q = o.start[e]; q < o.start[e + 1]; ++q)
                        if (o.in != 0 || in[o.ti[q]] != zero_id) {  // an input 0 adds nothing
                            key.push_back(o.tp[q]);
                            key.push_back(in[o.ti[q]]);
                        }
                    break;
                case op_type::avg:
                case op_type::max: {
                    std::vector<std::uint64_t> w;
                    for (std::size_t q = o.start[e]; q < o.start[e + 1]; ++q) w.push_back(in[o.ti[q]]);
                    std::sort(w.begin(), w.end());
                    if (o.type == op_type::max) w.erase(std::unique(w.begin(), w.end()), w.end());
                    key.insert(key.end(), w.begin(), w.end());
                    break;
                }
                case op_type::add:
                    key.push_back(in[e]);
                    key.push_back(sid[o.in2][e]);
                    break;
                case op_type::norm: {  // the entry's place in its group, and the group
                    const std::size_t q = e / o.n;
                    key.push_back(e % o.n);
                    for (std::size_t j = 0; j < o.n; ++j) key.push_back(in[q * o.n + j]);
                    break;
                }
                case op_type::act: key.push_back(in[e]); break;
            }
            out[e] = id_of(std::move(key));
        }
        if (o.type != op_type::max) continue;
        s.cand[k].resize(o.size);
        for (std::size_t e = 0; e < o.size; ++e) {
            std::vector<std::size_t>& c = s.cand[k][e];
            for (std::size_t q = o.start[e]; q < o.start[e + 1]; ++q) {
                bool dup = false;
                for (const std::size_t j : c) dup = dup || in[j] == in[o.ti[q]];
                if (!dup) c.push_back(o.ti[q]);
            }
            if (c.size() > 64)
                throw not_certifiable(o.path + " max_pool2d: a window of more than 64 distinct entries");
        }
    }
    return s;
}

// ---------------------------------------------------------------- smooth activations, in balls

// σ(z), real balls: tanh; sigmoid 1/(1+e^{−z}); softplus log1p(e^z); gelu z·erfc(−z/√2)/2.
void smooth_value(layer_kind k, arb_ptr y, arb_srcptr z, slong prec) {
    arb_t u;
    arb_init(u);
    switch (k) {
        case layer_kind::tanh: arb_tanh(y, z, prec); break;
        case layer_kind::sigmoid:
            arb_neg(u, z);
            arb_exp(u, u, prec);
            arb_add_ui(u, u, 1, prec);
            arb_inv(y, u, prec);
            break;
        case layer_kind::softplus:
            arb_exp(u, z, prec);
            arb_log1p(y, u, prec);
            break;
        default: {  // gelu
            arb_rsqrt_ui(u, 2, prec);
            arb_mul(u, u, z, prec);
            arb_neg(u, u);
            arb_hypgeom_erfc(u, u, prec);
            arb_mul_2exp_si(u, u, -1);
            arb_mul(y, z, u, prec);
        }
    }
    arb_clear(u);
}

// σ′(z), real balls: 1 − tanh²; σ(1 − σ); σ(z) for softplus; Φ(z) + z e^{−z²/2}/√(2π).
void smooth_derivative(layer_kind k, arb_ptr d, arb_srcptr z, slong prec) {
    arb_t u, v;
    arb_init(u);
    arb_init(v);
    switch (k) {
        case layer_kind::tanh:
            arb_tanh(u, z, prec);
            arb_sqr(u, u, prec);
            arb_sub_ui(d, u, 1, prec);
            arb_neg(d, d);
            break;
        case layer_kind::sigmoid:
        case layer_kind::softplus:
            smooth_value(layer_kind::sigmoid, u, z, prec);
            if (k == layer_kind::softplus) {
                arb_set(d, u);
                break;
            }
            arb_sub_ui(v, u, 1, prec);
            arb_neg(v, v);
            arb_mul(d, u, v, prec);
            break;
        default: {  // gelu
            arb_rsqrt_ui(u, 2, prec);
            arb_mul(u, u, z, prec);
            arb_neg(u, u);
            arb_hypgeom_erfc(u, u, prec);
            arb_mul_2exp_si(u, u, -1);  // Φ(z)
            arb_sqr(v, z, prec);
            arb_mul_2exp_si(v, v, -1);
            arb_neg(v, v);
            arb_exp(v, v, prec);
            arb_mul(v, v, z, prec);
            arb_t c;
            arb_init(c);
            arb_const_pi(c, prec);
            arb_mul_2exp_si(c, c, 1);
            arb_rsqrt(c, c, prec);
            arb_mul(v, v, c, prec);
            arb_clear(c);
            arb_add(d, u, v, prec);
        }
    }
    arb_clear(u);
    arb_clear(v);
}

// The same in complex balls (the analytic bound, §smooth in proofs-notes/011).  Returns false
// when the enclosure cannot back analyticity: softplus needs Re(1 + e^z) > 0 (log1p's branch
// cut); poles (tanh, sigmoid) give non-finite enclosures, checked by the caller.
bool smooth_value(layer_kind k, acb_ptr y, acb_srcptr z, slong prec) {
    acb_t u;
    acb_init(u);
    bool ok = true;
    switch (k) {
        case layer_kind::tanh: acb_tanh(y, z, prec); break;
        case layer_kind::sigmoid:
            acb_neg(u, z);
            acb_exp(u, u, prec);
            acb_add_ui(u, u, 1, prec);
            acb_inv(y, u, prec);
            break;
        case layer_kind::softplus:
            acb_exp(u, z, prec);
            acb_add_ui(u, u, 1, prec);
            ok = arb_is_positive(acb_realref(u));
            acb_log(y, u, prec);
            break;
        default: {  // gelu (entire)
            acb_set_ui(u, 2);
            acb_rsqrt(u, u, prec);
            acb_mul(u, u, z, prec);
            acb_neg(u, u);
            acb_hypgeom_erfc(u, u, prec);
            acb_mul_2exp_si(u, u, -1);
            acb_mul(y, z, u, prec);
        }
    }
    acb_clear(u);
    return ok;
}

bool smooth_derivative(layer_kind k, acb_ptr d, acb_srcptr z, slong prec) {
    acb_t u, v;
    acb_init(u);
    acb_init(v);
    bool ok = true;
    switch (k) {
        case layer_kind::tanh:
            acb_tanh(u, z, prec);
            acb_sqr(u, u, prec);
            acb_sub_ui(d, u, 1, prec);
            acb_neg(d, d);
            break;
        case layer_kind::sigmoid:
        case layer_kind::softplus:
            ok = smooth_value(layer_kind::sigmoid, u, z, prec);
            if (k == layer_kind::softplus) {
                acb_set(d, u);
                break;
            }
            acb_sub_ui(v, u, 1, prec);
            acb_neg(v, v);
            acb_mul(d, u, v, prec);
            break;
        default: {  // gelu
            acb_set_ui(u, 2);
            acb_rsqrt(u, u, prec);
            acb_mul(u, u, z, prec);
            acb_neg(u, u);
            acb_hypgeom_erfc(u, u, prec);
            acb_mul_2exp_si(u, u, -1);
            acb_sqr(v, z, prec);
            acb_mul_2exp_si(v, v, -1);
            acb_neg(v, v);
            acb_exp(v, v, prec);
            acb_mul(v, v, z, prec);
            arb_t c;
            arb_init(c);
            arb_const_pi(c, prec);
            arb_mul_2exp_si(c, c, 1);
            arb_rsqrt(c, c, prec);
            acb_mul_arb(v, v, c, prec);
            arb_clear(c);
            acb_add(d, u, v, prec);
        }
    }
    acb_clear(u);
    acb_clear(v);
    return ok;
}

// Decisions per op and output, which piece of a kink is taken: a kinked activation's unit
// +1 (z > 0) or −1 (z < 0, or z = 0 exactly: epk's convention z > 0 ? z : slope·z, derivative
// slope at 0), 0 undecided; a max pool's output: a bit mask of the candidates excluded (it is
// decided when one is left).  Other ops: empty.
using signs = std::vector<std::vector<std::uint64_t>>;
constexpr std::uint64_t pos_sign = 1, neg_sign = 2;

signs no_signs(const net& n) {
    signs s(n.ops.size());
    for (std::size_t k = 0; k < n.ops.size(); ++k)
        if (n.ops[k].kinked || n.ops[k].type == op_type::max) s[k].assign(n.ops[k].size, 0);
    return s;
}

// An undecided kink: op k's output e; its switching function z is the activation's input e,
// or h[j] − h[i] for a max pool's two remaining candidates j, i (input indices).
struct kink {
    std::size_t k = 0, e = 0, j = 0, i = 0;
};

struct pass {
    std::vector<balls> h, hd;  // per slot: values and (with a tangent) d/dt
    // per slot: the entry does not depend on θ given the decisions (the input; a dead ReLU;
    // sums, pools and maxima of such entries; a layer whose inputs are all exactly 0 and has
    // no bias): a constant with zero Jacobian
    std::vector<std::vector<char>> cst;
    signs sign;                // the decisions used (forced, or decided from the enclosures)
    std::vector<kink> undecided;
};

// A max pool's candidates left by the mask.
template <class F>
void remaining(const std::vector<std::size_t>& cand, std::uint64_t mask, F&& f) {
    for (std::size_t q = 0; q < cand.size(); ++q)
        if (!((mask >> q) & 1U)) f(q, cand[q]);
}

// Layer norm of one group of n entries (layers/layer_norm.hpp's formulas, in balls):
// μ = Σx/n, d = x − μ, v = Σd²/n, ρ = 1/√(v + ε), x̂ = dρ, y = x̂γ + β; with a tangent,
// ḋ = ẋ − mean(ẋ), ρ̇ = −ρ³ mean(dḋ), x̂̇ = ḋρ + dρ̇, ẏ = x̂̇γ + x̂γ̇ + β̇.
// Returns ρ; xhat (n balls) if given.
void norm_group(const op& o, arb_srcptr x, arb_ptr xhat, arb_t rho, slong prec) {
    const slong n = static_cast<slong>(o.n);
    ball mu, v, t;
    _arb_vec_zero(xhat, n);
    for (slong j = 0; j < n; ++j) arb_add(mu.v, mu.v, x + j, prec);
    arb_div_ui(mu.v, mu.v, o.n, prec);
    for (slong j = 0; j < n; ++j) {
        if (n > 1) arb_sub(xhat + j, x + j, mu.v, prec);  // n = 1: d ≡ 0 exactly (x − x), not a ball around it
        arb_addmul(v.v, xhat + j, xhat + j, prec);
    }
    arb_div_ui(v.v, v.v, o.n, prec);
    arb_set_d(t.v, o.eps);
    arb_add(v.v, v.v, t.v, prec);
    arb_rsqrt(rho, v.v, prec);  // v + ε ≤ 0 in the enclosure: an indeterminate ball (never narrow)
    _arb_vec_scalar_mul(xhat, xhat, n, rho, prec);
}

void norm_forward(const op& o, arb_srcptr theta, arb_srcptr theta_dot, arb_srcptr x, arb_srcptr xd, arb_ptr y,
                  arb_ptr yd, slong prec) {
    const slong n = static_cast<slong>(o.n);
    ball rho, m, md, rd, t;
    norm_group(o, x, y, rho.v, prec);  // y ← x̂
    if (xd) {
        // ḋ = ẋ − mean(ẋ); ρ̇ = −ρ³ mean(d ḋ) = −ρ² mean(x̂ ḋ) (d = x̂/ρ), so ρ̇/ρ = −ρ mean(x̂ ḋ)
        balls dd(o.n);
        for (slong j = 0; j < n; ++j) arb_add(md.v, md.v, xd + j, prec);
        arb_div_ui(md.v, md.v, o.n, prec);
        for (slong j = 0; j < n; ++j) {
            if (n > 1) arb_sub(dd[j], xd + j, md.v, prec);  // n = 1: ḋ ≡ 0
            arb_addmul(m.v, y + j, dd[j], prec);
        }
        arb_div_ui(m.v, m.v, o.n, prec);
        arb_mul(rd.v, m.v, rho.v, prec);
        arb_neg(rd.v, rd.v);  // ρ̇/ρ
        for (slong j = 0; j < n; ++j) {  // x̂̇ = ḋρ + x̂ (ρ̇/ρ)
            arb_mul(yd + j, dd[j], rho.v, prec);
            arb_addmul(yd + j, y + j, rd.v, prec);
        }
    }
    if (!o.affine) return;
    for (slong j = 0; j < n; ++j) {
        if (yd) {  // ẏ = x̂̇γ + x̂γ̇ + β̇
            arb_mul(t.v, yd + j, theta + o.weight + j, prec);
            arb_addmul(t.v, y + j, theta_dot + o.weight + j, prec);
            if (o.has_bias) arb_add(t.v, t.v, theta_dot + o.weight + o.n + j, prec);
            arb_swap(yd + j, t.v);
        }
        arb_mul(y + j, y + j, theta + o.weight + j, prec);
        if (o.has_bias) arb_add(y + j, y + j, theta + o.weight + o.n + j, prec);
    }
}

// acc[γ] += dy x̂, acc[β] += dy; dx += ρ (a − mean(a) − x̂ mean(a x̂)), a = dy γ.
void norm_reverse(const op& o, arb_srcptr theta, arb_srcptr x, arb_srcptr dy, arb_ptr dx, arb_ptr acc, slong prec) {
    const slong n = static_cast<slong>(o.n);
    balls xhat(o.n), a(o.n);
    ball rho, ma, max;
    norm_group(o, x, xhat.data(), rho.v, prec);
    for (slong j = 0; j < n; ++j) {
        if (o.affine) {
            arb_addmul(acc + o.weight + j, dy + j, xhat[j], prec);
            if (o.has_bias) arb_add(acc + o.weight + o.n + j, acc + o.weight + o.n + j, dy + j, prec);
            arb_mul(a[j], dy + j, theta + o.weight + j, prec);
        } else {
            arb_set(a[j], dy + j);
        }
    }
    if (!dx || n == 1) return;  // n = 1: x̂ ≡ 0 does not depend on x
    for (slong j = 0; j < n; ++j) {
        arb_add(ma.v, ma.v, a[j], prec);
        arb_addmul(max.v, a[j], xhat[j], prec);
    }
    arb_div_ui(ma.v, ma.v, o.n, prec);
    arb_div_ui(max.v, max.v, o.n, prec);
    for (slong j = 0; j < n; ++j) {
        arb_sub(a[j], a[j], ma.v, prec);
        arb_submul(a[j], xhat[j], max.v, prec);
        arb_addmul(dx + j, a[j], rho.v, prec);
    }
}

// The forward pass at θ (balls; for a t-interval, w + TΔ), optionally with the tangent
// θ̇ = Δ.  A forced decision is taken; otherwise it is read from the enclosures, and an
// undecided kink takes the union of its pieces (value and tangent).
void forward(const net& n, arb_srcptr theta, arb_srcptr theta_dot, const sample& smp, const signs& forced, pass& f,
             slong prec) {
    const std::size_t K = n.ops.size();
    f.h.resize(K + 1);
    f.hd.resize(theta_dot ? K + 1 : 0);
    f.sign = forced;
    f.undecided.clear();
    f.h[0] = smp.x;
    f.cst.resize(K + 1);
    f.cst[0].assign(smp.x.size(), 1);
    if (theta_dot) {
        f.hd[0] = balls(smp.x.size());
        f.hd[0].zero();
    }
    ball t1, t2;
    arf_t lo, best;
    arf_init(lo);
    arf_init(best);
    for (std::size_t k = 0; k < K; ++k) {
        const op& o = n.ops[k];
        const balls& h = f.h[o.in];
        const std::vector<char>& hc = f.cst[o.in];
        std::vector<char>& zc = f.cst[k + 1];
        zc.assign(o.size, 0);
        auto zero_const = [&](std::size_t j) { return hc[j] && arb_is_zero(h[j]); };
        balls z(o.size), zd(theta_dot ? o.size : 0);
        switch (o.type) {
            case op_type::dense:
                if (!o.has_bias)
                    for (std::size_t row = 0; row < o.rows; ++row) {
                        bool all = true;
                        for (std::size_t j = 0; j < o.fin && all; ++j) all = zero_const(row * o.fin + j);
                        for (std::size_t r = 0; r < o.fout; ++r) zc[row * o.fout + r] = all;
                    }
                for (std::size_t row = 0; row < o.rows; ++row)
                    for (std::size_t r = 0; r < o.fout; ++r) {
                        const std::size_t e = row * o.fout + r;
                        arb_srcptr hr = h[row * o.fin];
                        arb_dot(z[e], o.has_bias ? theta + o.bias + r : nullptr, 0, theta + o.weight + r * o.fin, 1, hr, 1,
                                static_cast<slong>(o.fin), prec);
                        if (theta_dot) {  // ż = Ẇh + Wḣ + ḃ
                            arb_dot(zd[e], o.has_bias ? theta_dot + o.bias + r : nullptr, 0,
                                    theta_dot + o.weight + r * o.fin, 1, hr, 1, static_cast<slong>(o.fin), prec);
                            arb_dot(zd[e], zd[e], 0, theta + o.weight + r * o.fin, 1, f.hd[o.in][row * o.fin], 1,
                                    static_cast<slong>(o.fin), prec);
                        }
                    }
                break;
            case op_type::sparse:
                for (std::size_t e = 0; e < o.size; ++e) {
                    bool all = o.bidx[e] == npos;
                    for (std::size_t q = o.start[e]; q < o.start[e + 1] && all; ++q) all = zero_const(o.ti[q]);
                    zc[e] = all;
                    if (o.bidx[e] != npos) arb_set(z[e], theta + o.bidx[e]);
                    if (theta_dot && o.bidx[e] != npos) arb_set(zd[e], theta_dot + o.bidx[e]);
                    for (std::size_t q = o.start[e]; q < o.start[e + 1]; ++q) {
                        arb_addmul(z[e], theta + o.tp[q], h[o.ti[q]], prec);
                        if (theta_dot) {
                            arb_addmul(zd[e], theta_dot + o.tp[q], h[o.ti[q]], prec);
                            arb_addmul(zd[e], theta + o.tp[q], f.hd[o.in][o.ti[q]], prec);
                        }
                    }
                }
                break;
            case op_type::avg:
                for (std::size_t e = 0; e < o.size; ++e) {
                    zc[e] = 1;
                    for (std::size_t q = o.start[e]; q < o.start[e + 1]; ++q) zc[e] = zc[e] && hc[o.ti[q]];
                    for (std::size_t q = o.start[e]; q < o.start[e + 1]; ++q) {
                        arb_add(z[e], z[e], h[o.ti[q]], prec);
                        if (theta_dot) arb_add(zd[e], zd[e], f.hd[o.in][o.ti[q]], prec);
                    }
                    arb_div_ui(z[e], z[e], o.divisor, prec);
                    if (theta_dot) arb_div_ui(zd[e], zd[e], o.divisor, prec);
                }
                break;
            case op_type::add:
                for (std::size_t e = 0; e < o.size; ++e) zc[e] = hc[e] && f.cst[o.in2][e];
                _arb_vec_add(z.data(), h.data(), f.h[o.in2].data(), static_cast<slong>(o.size), prec);
                if (theta_dot)
                    _arb_vec_add(zd.data(), f.hd[o.in].data(), f.hd[o.in2].data(), static_cast<slong>(o.size), prec);
                break;
            case op_type::max:
                for (std::size_t e = 0; e < o.size; ++e) {
                    const std::vector<std::size_t>& cand = smp.cand[k][e];
                    std::uint64_t& mask = f.sign[k][e];
                    // two constants of equal value are the same function here: the first stands
                    // for both (the choice changes neither the value nor the Jacobian, 0)
                    remaining(cand, mask, [&](std::size_t q, std::size_t j) {
                        if (!hc[j] || !mag_is_zero(arb_radref(h[j]))) return;
                        for (std::size_t p = 0; p < q; ++p)
                            if (!((mask >> p) & 1U) && hc[cand[p]] && arb_equal(h[cand[p]], h[j])) {
                                mask |= std::uint64_t{1} << q;
                                return;
                            }
                    });
                    // exclude every candidate whose upper bound is below another's lower bound
                    bool first = true;
                    remaining(cand, mask, [&](std::size_t, std::size_t j) {
                        arb_get_lbound_arf(lo, h[j], prec);
                        if (first || arf_cmp(lo, best) > 0) arf_set(best, lo);
                        first = false;
                    });
                    std::size_t left = 0, top = npos, second = npos;
                    remaining(cand, mask, [&](std::size_t q, std::size_t j) {
                        arb_get_ubound_arf(lo, h[j], prec);
                        if (arf_cmp(lo, best) < 0) mask |= std::uint64_t{1} << q;
                        else ++left;
                    });
                    if (left == 0) throw not_certifiable(o.path + " max_pool2d: every candidate excluded");
                    // the value: the one left, or the union of those left; two with the largest
                    // upper bounds make the switching function
                    arf_t up_top, up;
                    arf_init(up_top);
                    arf_init(up);
                    bool started = false;
                    remaining(cand, mask, [&](std::size_t, std::size_t j) {
                        if (!started) {
                            arb_set(z[e], h[j]);
                            if (theta_dot) arb_set(zd[e], f.hd[o.in][j]);
                            started = true;
                        } else {
                            arb_union(z[e], z[e], h[j], prec);
                            if (theta_dot) arb_union(zd[e], zd[e], f.hd[o.in][j], prec);
                        }
                        arb_get_ubound_arf(up, h[j], prec);
                        if (top == npos || arf_cmp(up, up_top) > 0) {
                            second = top;
                            top = j;
                            arf_set(up_top, up);
                        } else if (second == npos) {
                            second = j;
                        }
                    });
                    arf_clear(up_top);
                    arf_clear(up);
                    if (left > 1) f.undecided.push_back({k, e, top, second});
                    else zc[e] = hc[top];
                }
                break;
            case op_type::norm:
                for (std::size_t q = 0; q < o.groups; ++q)
                    norm_forward(o, theta, theta_dot, h[q * o.n], theta_dot ? f.hd[o.in][q * o.n] : nullptr, z[q * o.n],
                                 theta_dot ? zd[q * o.n] : nullptr, prec);
                break;
            case op_type::act:
                for (std::size_t e = 0; e < o.size; ++e) {
                    if (o.smooth) {
                        zc[e] = hc[e];
                        smooth_value(o.kind, z[e], h[e], prec);
                        if (theta_dot) {
                            smooth_derivative(o.kind, t1.v, h[e], prec);
                            arb_mul(zd[e], t1.v, f.hd[o.in][e], prec);
                        }
                        continue;
                    }
                    std::uint64_t& s = f.sign[k][e];
                    if (s == 0) {
                        if (arb_is_positive(h[e])) s = pos_sign;
                        else if (arb_is_negative(h[e]) || arb_is_zero(h[e])) s = neg_sign;
                    }
                    if (s == pos_sign) {
                        zc[e] = hc[e];
                        arb_set(z[e], h[e]);
                        if (theta_dot) arb_set(zd[e], f.hd[o.in][e]);
                    } else if (s == neg_sign) {
                        zc[e] = hc[e] || o.slope == 0;
                        mul_binary64(z[e], h[e], o.slope, prec);  // the slope is a binary64 number
                        if (theta_dot) mul_binary64(zd[e], f.hd[o.in][e], o.slope, prec);
                    } else {
                        f.undecided.push_back({k, e, 0, 0});
                        mul_binary64(t1.v, h[e], o.slope, prec);
                        arb_union(z[e], h[e], t1.v, prec);
                        if (theta_dot) {
                            mul_binary64(t2.v, f.hd[o.in][e], o.slope, prec);
                            arb_union(zd[e], f.hd[o.in][e], t2.v, prec);
                        }
                    }
                }
                break;
        }
        f.h[k + 1] = std::move(z);
        if (theta_dot) f.hd[k + 1] = std::move(zd);
    }
    arf_clear(lo);
    arf_clear(best);
}

// A max pool's one candidate left by the mask (npos when several are left).
std::size_t chosen(const std::vector<std::size_t>& cand, std::uint64_t mask) {
    std::size_t j = npos, left = 0;
    remaining(cand, mask, [&](std::size_t, std::size_t c) {
        j = c;
        ++left;
    });
    return left == 1 ? j : npos;
}

// The switching function of an undecided kink and its tangent, from a pass.
void switching(const net& n, const pass& f, const kink& u, arb_ptr z, arb_ptr zd, slong prec) {
    const op& o = n.ops[u.k];
    if (o.type == op_type::max) {
        arb_sub(z, f.h[o.in][u.j], f.h[o.in][u.i], prec);
        if (zd) arb_sub(zd, f.hd[o.in][u.j], f.hd[o.in][u.i], prec);
    } else {
        arb_set(z, f.h[o.in][u.e]);
        if (zd) arb_set(zd, f.hd[o.in][u.e]);
    }
}

// The decision where the switching function has sign s (±1): the activation's sign, or the
// max pool's candidate that is below the other excluded.
void decide(const net& n, const sample& smp, const kink& u, int s, signs& d) {
    const op& o = n.ops[u.k];
    if (o.type != op_type::max) {
        d[u.k][u.e] = s > 0 ? pos_sign : neg_sign;
        return;
    }
    const std::size_t loser = s > 0 ? u.i : u.j;  // z = h[j] − h[i]
    const std::vector<std::size_t>& cand = smp.cand[u.k][u.e];
    for (std::size_t q = 0; q < cand.size(); ++q)
        if (cand[q] == loser) d[u.k][u.e] |= std::uint64_t{1} << q;
}

// Reverse mode: acc += J(θ)ᵀ seed (seed: the outputs' adjoint, C balls), J taken with the
// decisions of `f` (an undecided unit's derivative is the union of 1 and its slope; an
// undecided max passes [0, 1] times its adjoint to every candidate left).
void reverse(const net& n, arb_srcptr theta, const sample& smp, const pass& f, balls seed, arb_ptr acc, slong prec) {
    const std::size_t K = n.ops.size();
    std::vector<balls> adj(K + 1);
    adj[n.out] = std::move(seed);
    ball d, unit;
    arb_zero_pm_one(unit.v);  // [0, 1] = 1/2 + [−1, 1]/2, exactly
    arb_mul_2exp_si(unit.v, unit.v, -1);
    {
        ball half;
        arb_set_d(half.v, 0.5);
        arb_add(unit.v, unit.v, half.v, prec);
    }
    auto target = [&](std::size_t slot) -> balls& {
        if (adj[slot].size() == 0) {
            adj[slot] = balls(n.slot_size(slot));
            adj[slot].zero();
        }
        return adj[slot];
    };
    for (std::size_t k = K; k-- > 0;) {
        const op& o = n.ops[k];
        if (adj[k + 1].size() == 0) continue;
        balls delta = std::move(adj[k + 1]);
        const balls& h = f.h[o.in];
        const bool need_prev = o.in != 0;  // the input's adjoint is not needed
        switch (o.type) {
            case op_type::dense:
                for (std::size_t row = 0; row < o.rows; ++row)
                    for (std::size_t r = 0; r < o.fout; ++r) {
                        arb_srcptr dr = delta[row * o.fout + r];
                        if (arb_is_zero(dr)) continue;
                        arb_ptr gw = acc + o.weight + r * o.fin;
                        for (std::size_t j = 0; j < o.fin; ++j) arb_addmul(gw + j, dr, h[row * o.fin + j], prec);
                        if (o.has_bias) arb_add(acc + o.bias + r, acc + o.bias + r, dr, prec);
                    }
                if (need_prev) {
                    const bool fresh = adj[o.in].size() == 0;  // then Wᵀδ straight into it
                    balls& prev = target(o.in);
                    for (std::size_t row = 0; row < o.rows; ++row)
                        for (std::size_t j = 0; j < o.fin; ++j) {
                            arb_ptr pj = prev[row * o.fin + j];
                            arb_dot(pj, fresh ? nullptr : pj, 0, theta + o.weight + j, static_cast<slong>(o.fin),
                                    delta[row * o.fout], 1, static_cast<slong>(o.fout), prec);
                        }
                }
                break;
            case op_type::sparse: {
                balls* prev = need_prev ? &target(o.in) : nullptr;
                for (std::size_t e = 0; e < o.size; ++e) {
                    if (arb_is_zero(delta[e])) continue;
                    if (o.bidx[e] != npos) arb_add(acc + o.bidx[e], acc + o.bidx[e], delta[e], prec);
                    for (std::size_t q = o.start[e]; q < o.start[e + 1]; ++q) {
                        arb_addmul(acc + o.tp[q], delta[e], h[o.ti[q]], prec);
                        if (prev) arb_addmul((*prev)[o.ti[q]], delta[e], theta + o.tp[q], prec);
                    }
                }
                break;
            }
            case op_type::avg:
                if (need_prev) {
                    balls& prev = target(o.in);
                    for (std::size_t e = 0; e < o.size; ++e) {
                        arb_div_ui(d.v, delta[e], o.divisor, prec);
                        for (std::size_t q = o.start[e]; q < o.start[e + 1]; ++q)
                            arb_add(prev[o.ti[q]], prev[o.ti[q]], d.v, prec);
                    }
                }
                break;
            case op_type::max:
                if (need_prev) {
                    balls& prev = target(o.in);
                    for (std::size_t e = 0; e < o.size; ++e) {
                        std::size_t left = 0;
                        remaining(smp.cand[k][e], f.sign[k][e], [&](std::size_t, std::size_t) { ++left; });
                        if (left == 1) arb_set(d.v, delta[e]);
                        else arb_mul(d.v, delta[e], unit.v, prec);
                        remaining(smp.cand[k][e], f.sign[k][e],
                                  [&](std::size_t, std::size_t j) { arb_add(prev[j], prev[j], d.v, prec); });
                    }
                }
                break;
            case op_type::add: {
                balls& a = target(o.in);
                _arb_vec_add(a.data(), a.data(), delta.data(), static_cast<slong>(o.size), prec);
                balls& b = target(o.in2);
                _arb_vec_add(b.data(), b.data(), delta.data(), static_cast<slong>(o.size), prec);
                break;
            }
            case op_type::norm: {
                balls* prev = need_prev ? &target(o.in) : nullptr;
                for (std::size_t q = 0; q < o.groups; ++q)
                    norm_reverse(o, theta, h[q * o.n], delta[q * o.n], prev ? (*prev)[q * o.n] : nullptr, acc, prec);
                break;
            }
            case op_type::act:
                if (!need_prev) break;
                for (std::size_t e = 0; e < o.size; ++e) {
                    if (o.smooth) {
                        smooth_derivative(o.kind, d.v, h[e], prec);
                        arb_mul(delta[e], delta[e], d.v, prec);
                        continue;
                    }
                    const std::uint64_t s = f.sign[k][e];
                    if (s == pos_sign) continue;
                    if (s == neg_sign) {
                        mul_binary64(delta[e], delta[e], o.slope, prec);
                    } else {
                        arb_one(d.v);
                        ball sl;
                        arb_set_d(sl.v, o.slope);
                        arb_union(d.v, d.v, sl.v, prec);  // [min(1, slope), max(1, slope)]
                        arb_mul(delta[e], delta[e], d.v, prec);
                    }
                }
                if (adj[o.in].size() == 0) {
                    adj[o.in] = std::move(delta);
                } else {
                    balls& prev = adj[o.in];
                    _arb_vec_add(prev.data(), prev.data(), delta.data(), static_cast<slong>(o.size), prec);
                }
                break;
        }
    }
}

// θ = w + tΔ for a ball t (a point or an interval).
void segment_point(const balls& w, const balls& delta, arb_srcptr t, balls& theta, slong prec) {
    for (std::size_t p = 0; p < w.size(); ++p) {
        arb_set(theta[p], w[p]);
        arb_addmul(theta[p], t, delta[p], prec);
    }
}

// Layer norm's group in complex balls: x̂ (n entries) and ρ = (v + ε)^(−1/2); false unless
// Re(v + ε) > 0 over the enclosure (the principal square root is analytic off (−∞, 0]).
bool acb_norm_group(const op& o, acb_srcptr x, acb_ptr xhat, acb_t rho, slong prec) {
    const slong n = static_cast<slong>(o.n);
    acb_t mu, v, t;
    acb_init(mu);
    acb_init(v);
    acb_init(t);
    for (slong j = 0; j < n; ++j) acb_add(mu, mu, x + j, prec);
    acb_div_ui(mu, mu, o.n, prec);
    for (slong j = 0; j < n; ++j) {
        if (n > 1) acb_sub(xhat + j, x + j, mu, prec);
        else acb_zero(xhat + j);  // n = 1: d ≡ 0
        acb_addmul(v, xhat + j, xhat + j, prec);
    }
    acb_div_ui(v, v, o.n, prec);
    acb_set_d(t, o.eps);
    acb_add(v, v, t, prec);
    const bool ok = arb_is_positive(acb_realref(v));
    acb_rsqrt(rho, v, prec);
    _acb_vec_scalar_mul(xhat, xhat, n, rho, prec);
    acb_clear(mu);
    acb_clear(v);
    acb_clear(t);
    return ok && acb_is_finite(rho);
}

// ---------------------------------------------------------------- one step's test-side integral

struct ball_gauss {
    std::vector<ball> x, w;  // on [−1, 1]
};

ball_gauss make_gauss(std::size_t n, slong prec) {
    ball_gauss g;
    g.x.resize(n);
    g.w.resize(n);
    for (std::size_t k = 0; k < n; ++k) arb_hypgeom_legendre_p_ui_root(g.x[k].v, g.w[k].v, n, k, prec);
    return g;
}

// Gauss rules by node count, made once (shared by the threads).
class gauss_cache {
public:
    const ball_gauss& get(std::size_t n, slong prec) {
        const std::lock_guard<std::mutex> lock(mu_);
        auto it = rules_.find(n);
        if (it == rules_.end()) it = rules_.emplace(n, make_gauss(n, prec)).first;
        return it->second;
    }

private:
    std::mutex mu_;
    std::map<std::size_t, ball_gauss> rules_;
};

struct integral_counts {
    std::size_t pieces = 0, kinks = 0, enclosed = 0, smooth_nodes = 0;
};

// Ī = ∫₀¹ J(x; w + tΔ) dt, C × P balls, for one test point.
class ball_segment_integral {
public:
    ball_segment_integral(const net& n, const balls& w, const balls& delta, const sample& x, const ball_gauss& g,
                          gauss_cache& rules, slong prec, std::vector<balls>& ibar, integral_counts& counts)
        : n_(n), w_(w), delta_(delta), x_(x), g_(g), rules_(rules), prec_(prec), ibar_(ibar), counts_(counts), theta_(n.P) {
        arf_init(eps_);
        arf_one(eps_);
        arf_mul_2exp_si(eps_, eps_, -(prec - 8));
    }
    ~ball_segment_integral() { arf_clear(eps_); }

    void run() {
        point a, b;
        arf_zero(a.v);
        arf_one(b.v);
        // kinks (alone, or after smooth layers: then each piece of one pattern gets the analytic
        // bound of §7 for its pattern's continuation, 011 §12); smooth networks: §7 directly
        if (n_.smooth && !n_.kinked) integrate_smooth(a, b, 0, no_signs(n_));
        else integrate(a, b, no_signs(n_));
    }

private:
    static constexpr std::size_t max_pieces = 200000;

    void interval(const point& a, const point& b, ball& T) const { arb_set_interval_arf(T.v, a.v, b.v, prec_); }

    // width·J(T) over [a, b] with the signs `forced` (undecided ones as unions): a rigorous
    // enclosure of ∫_a^b J dt (the mean value of each entry lies in its interval enclosure).
    void enclose(const point& a, const point& b, const signs& forced) {
        ball T, width;
        interval(a, b, T);
        pass f;
        segment_point(w_, delta_, T.v, theta_, prec_);
        forward(n_, theta_.data(), nullptr, x_, forced, f, prec_);
        arb_set_arf(width.v, b.v);
        arb_sub_arf(width.v, width.v, a.v, prec_);
        add_jacobian(f, width);
        ++counts_.enclosed;
    }

    void add_jacobian(const pass& f, const ball& weight) {
        for (std::size_t c = 0; c < n_.C; ++c) {
            balls seed(n_.C);
            arb_set(seed[c], weight.v);
            reverse(n_, theta_.data(), x_, f, std::move(seed), ibar_[c].data(), prec_);
        }
    }

    // Exact on [a, b] where every sign is decided: J is a polynomial of degree ≤ L−1 in t
    // there, and the ⌈L/2⌉-node Gauss rule integrates it exactly (proofs-notes/011 §2).
    void gauss(const point& a, const point& b, const signs& pattern) { gauss(a, b, pattern, g_); }

    void gauss(const point& a, const point& b, const signs& pattern, const ball_gauss& g) {
        ball half, centre, t, weight;
        arb_set_arf(half.v, b.v);
        arb_sub_arf(half.v, half.v, a.v, prec_);
        arb_mul_2exp_si(half.v, half.v, -1);
        arb_set_arf(centre.v, a.v);
        arb_add(centre.v, centre.v, half.v, prec_);
        pass f;
        for (std::size_t j = 0; j < g.x.size(); ++j) {
            arb_set(t.v, centre.v);
            arb_addmul(t.v, half.v, g.x[j].v, prec_);
            arb_mul(weight.v, half.v, g.w[j].v, prec_);
            segment_point(w_, delta_, t.v, theta_, prec_);
            forward(n_, theta_.data(), nullptr, x_, pattern, f, prec_);
            add_jacobian(f, weight);
        }
        ++counts_.pieces;
    }

    void integrate(const point& a, const point& b, const signs& forced) {
        if (counts_.pieces + counts_.enclosed > max_pieces)
            throw not_certifiable("more than " + std::to_string(max_pieces) +
                                  " pieces on one segment: the pattern changes could not be separated");
        ball T;
        interval(a, b, T);
        pass f;
        segment_point(w_, delta_, T.v, theta_, prec_);
        forward(n_, theta_.data(), delta_.data(), x_, forced, f, prec_);
        if (f.undecided.empty()) return n_.smooth ? integrate_smooth(a, b, 0, f.sign) : gauss(a, b, f.sign);
        point width;
        arf_sub(width.v, b.v, a.v, ARF_PREC_EXACT, ARF_RND_DOWN);
        if (arf_cmp(width.v, eps_) <= 0) return enclose(a, b, forced);
        // The first undecided unit of the earliest op with one: every unit before that op is
        // decided on [a, b], so its pre-activation is one polynomial there (the others may be
        // undecided only through it, or have roots of their own: the pieces sort them out).
        {
            const kink u = f.undecided[0];
            ball z, zdot;
            switching(n_, f, u, z.v, zdot.v, prec_);
            if (!arb_contains_zero(zdot.v)) {  // z is monotone on [a, b]: at most one root
                signs fixed = f.sign;  // the ops before u.k decided on [a, b]
                ball R;
                int found = newton(a, b, fixed, u, R);
                point lo, hi;  // R ∩ [a, b]: a ball's radius is rounded up (30 bits), so the ball
                               // of [a, b] reaches slightly outside it, and R may end up there
                if (found == 1) {
                    arb_get_lbound_arf(lo.v, R.v, prec_);
                    arb_get_ubound_arf(hi.v, R.v, prec_);
                    if (arf_cmp(lo.v, a.v) < 0) arf_set(lo.v, a.v);
                    if (arf_cmp(hi.v, b.v) > 0) arf_set(hi.v, b.v);
                    if (arf_cmp(lo.v, hi.v) > 0) found = 0;  // every root outside [a, b]
                }
                if (found == 0) {  // no root: one sign on [a, b], the sign at its midpoint
                    const point m = midpoint(a, b);
                    const int s = sign_at(m, fixed, u);
                    if (s != 0) {
                        signs next = forced;
                        decide(n_, x_, u, s, next);
                        return integrate(a, b, next);
                    }
                } else if (found == 1) {
                    ++counts_.kinks;
                    // Any root of z on [a, b] lies in R (not that one exists: R ∩ N need not prove
                    // it), so z keeps one sign on [a, lo) and on (hi, b]: the sign at a and at b
                    // where decided (else the piece is left to the recursion).
                    signs left = forced, right = forced;
                    const int sa = sign_at(a, fixed, u), sb = sign_at(b, fixed, u);
                    if (sa != 0) decide(n_, x_, u, sa, left);
                    if (sb != 0) decide(n_, x_, u, sb, right);
                    if (arf_cmp(lo.v, a.v) > 0) integrate(a, lo, left);
                    if (arf_cmp(hi.v, lo.v) > 0) enclose(lo, hi, forced);
                    if (arf_cmp(b.v, hi.v) > 0) integrate(hi, b, right);
                    return;
                }
            }
        }
        const point m = midpoint(a, b);  // bisect
        integrate(a, m, forced);
        integrate(m, b, forced);
    }

    // The sign of u's switching function at the exact point t = m (0 when undecided).
    int sign_at(const point& m, const signs& fixed, const kink& u) {
        ball t;
        arb_set_arf(t.v, m.v);
        segment_point(w_, delta_, t.v, theta_, prec_);
        pass f;
        forward(n_, theta_.data(), nullptr, x_, fixed, f, prec_);
        ball z;
        switching(n_, f, u, z.v, nullptr, prec_);
        if (arb_is_positive(z.v)) return 1;
        if (arb_is_negative(z.v)) return -1;
        return 0;
    }

    // Interval Newton for the root of u's switching function z on [a, b], every other
    // decision fixed: R ← R ∩ (m − z(m)/ż(R)).  Returns 1 with the root enclosed in R, 0 when
    // [a, b] has no root, −1 when ż(R) contains 0.
    int newton(const point& a, const point& b, const signs& fixed, const kink& u, ball& R) {
        interval(a, b, R);
        ball N, zm, q, t;
        pass f;
        for (int it = 0; it < 4 * 64 + prec_; ++it) {
            segment_point(w_, delta_, R.v, theta_, prec_);
            forward(n_, theta_.data(), delta_.data(), x_, fixed, f, prec_);
            ball zdot;
            switching(n_, f, u, t.v, zdot.v, prec_);
            if (arb_contains_zero(zdot.v)) return -1;
            arb_get_mid_arb(t.v, R.v);
            segment_point(w_, delta_, t.v, theta_, prec_);
            forward(n_, theta_.data(), nullptr, x_, fixed, f, prec_);
            switching(n_, f, u, zm.v, nullptr, prec_);
            arb_div(q.v, zm.v, zdot.v, prec_);
            arb_sub(N.v, t.v, q.v, prec_);
            if (!arb_overlaps(R.v, N.v)) return 0;
            ball next;
            arb_intersection(next.v, R.v, N.v, prec_);
            if (!arb_is_finite(next.v)) return -1;
            const bool contracted = mag_cmp_2exp_si(arb_radref(next.v), 0) < 0 &&
                                    arf_cmpabs_2exp_si(arb_midref(next.v), 0) <= 0 &&
                                    mag_cmp(arb_radref(next.v), arb_radref(R.v)) < 0;
            mag_t half;
            mag_init(half);
            mag_mul_2exp_si(half, arb_radref(R.v), -1);
            const bool slow = mag_cmp(arb_radref(next.v), half) > 0;
            mag_clear(half);
            arb_set(R.v, next.v);
            if (!contracted || (slow && it > 2)) break;
        }
        return 1;
    }

    // Smooth networks (proofs-notes/011 §7): on [a, b] = c + h[−1, 1], with J analytic in the
    // Bernstein ellipse E_ρ and |J_c| ≤ M_c there, the n-node Gauss rule's error is at most
    // (64/15) M_c ρ^(−2(n−1)) / (ρ² − 1) · h per entry.  M_c is bounded by evaluating the
    // network in complex balls over a box containing E_ρ; the smallest n over a few ρ is
    // used, its bound added to every entry's radius; no ρ with a useful n: bisect.
    void integrate_smooth(const point& a, const point& b, int depth, const signs& pattern) {
        ball h, c, R, T0, rho_b, den, err;
        arb_set_arf(h.v, b.v);
        arb_sub_arf(h.v, h.v, a.v, prec_);
        arb_mul_2exp_si(h.v, h.v, -1);
        arb_set_arf(c.v, a.v);
        arb_add(c.v, c.v, h.v, prec_);
        // The scale asked for: 2^-prec times max |J| on the real segment (its interval bound).
        std::vector<point> Mreal(n_.C), M(n_.C), best_M;
        acb_box box;
        arb_set(acb_realref(box.v), c.v);
        arb_add_error(acb_realref(box.v), h.v);
        arb_zero(acb_imagref(box.v));
        const bool real_bounded = jacobian_bound(box.v, Mreal, pattern);
        double lreal = -1e300;  // log2 of max |J| on [a, b], within a factor 2 (exponents)
        for (const point& m : Mreal)
            if (real_bounded && !arf_is_zero(m.v)) lreal = std::max(lreal, fmpz_get_d(ARF_EXPREF(m.v)) - 1);
        if (real_bounded && lreal <= -1e299) {  // J ≡ 0 on [a, b]: nothing to add
            ++counts_.pieces;
            return;
        }
        const double lh = std::log2(arf_get_d(arb_midref(h.v), ARF_RND_UP));
        std::size_t best_n = 0;
        double best_rho = 0;
        // ρ ascending: a larger ρ's box contains a smaller one's, so the first failure ends the
        // search, as does a ρ that needs no fewer nodes than the previous one.
        static const std::vector<double> rhos{1.6, 2.5, 4.0, 6.0, 10.0, 16.0, 24.0, 40.0, 64.0, 128.0, 256.0, 1024.0};
        for (double rho : rhos) {
            if (!real_bounded) break;
            // the box [c ± R] × [± R], R = h (ρ + 1/ρ)/2 ≥ the semi-major axis: it contains E_ρ
            arb_set_d(rho_b.v, rho);
            arb_inv(R.v, rho_b.v, prec_);
            arb_add(R.v, R.v, rho_b.v, prec_);
            arb_mul(R.v, R.v, h.v, prec_);
            arb_mul_2exp_si(R.v, R.v, -1);
            mag_t rad;
            mag_init(rad);
            arb_get_mag(rad, R.v);
            arb_set(acb_realref(box.v), c.v);
            arb_add_error_mag(acb_realref(box.v), rad);
            arb_zero(acb_imagref(box.v));
            arb_add_error_mag(acb_imagref(box.v), rad);
            mag_clear(rad);
            if (!jacobian_bound(box.v, M, pattern)) break;
            double lM = -1e300;  // log2 of an upper bound (the exponent: valid beyond binary64's range)
            for (const point& m : M)
                if (!arf_is_zero(m.v)) lM = std::max(lM, fmpz_get_d(ARF_EXPREF(m.v)));
            // n − 1 ≥ (log2(64/15 · M · h / (ρ² − 1)) − log2 tol) / (2 log2 ρ),  tol = 2^-prec · max|J|
            const double need = (std::log2(64.0 / 15.0) + lM + lh - std::log2(rho * rho - 1) - (lreal - double(prec_))) /
                                (2 * std::log2(rho));
            if (!(need < static_cast<double>(max_smooth_nodes))) continue;  // also NaN
            const std::size_t n = 1 + static_cast<std::size_t>(std::max(0.0, std::ceil(need)));
            if (best_n != 0 && n >= best_n) break;
            best_n = n;
            best_rho = rho;
            best_M = M;
        }
        if (best_n == 0 || best_n > max_smooth_nodes) {
            if (depth >= 40 || ++bisections_ > max_smooth_bisections)
                throw not_certifiable("no analytic error bound on a segment after " + std::to_string(bisections_) +
                                      " bisections (a singularity of an activation too close to the real segment)");
            const point m = midpoint(a, b);
            integrate_smooth(a, m, depth + 1, pattern);
            integrate_smooth(m, b, depth + 1, pattern);
            return;
        }
        gauss(a, b, pattern, rules_.get(best_n, prec_));
        // err_c = (64/15) M_c ρ^(−2(n−1)) / (ρ² − 1) · h, rounded up, added to every entry of Ī_c
        arb_set_d(rho_b.v, best_rho);
        arb_sqr(den.v, rho_b.v, prec_);
        arb_sub_ui(den.v, den.v, 1, prec_);
        arb_pow_ui(rho_b.v, rho_b.v, 2 * (best_n - 1), prec_);
        arb_mul(den.v, den.v, rho_b.v, prec_);
        for (std::size_t cc = 0; cc < n_.C; ++cc) {
            arb_set_ui(err.v, 64);
            arb_div_ui(err.v, err.v, 15, prec_);
            arb_mul_arf(err.v, err.v, best_M[cc].v, prec_);
            arb_mul(err.v, err.v, h.v, prec_);
            arb_div(err.v, err.v, den.v, prec_);
            point e;
            arb_get_ubound_arf(e.v, err.v, prec_);
            for (std::size_t p = 0; p < n_.P; ++p) arb_add_error_arf(ibar_[cc][p], e.v);
        }
        counts_.smooth_nodes += best_n;
    }

    // max over entries of |J_c(t)| for every complex t in `box`, per output c (upper bounds);
    // false when the enclosure cannot back analyticity there (non-finite; softplus's cut).
    // Kinks take the branch `pattern` decided on the real interval (every one decided): the
    // pattern's network — each branch linear or a selection — is the analytic continuation
    // used (011 §12).
    bool jacobian_bound(acb_srcptr box, std::vector<point>& M, const signs& pattern) {
        const std::size_t K = n_.ops.size();
        acb_vec theta(n_.P);
        for (std::size_t p = 0; p < n_.P; ++p) {
            acb_set_arb(theta[p], w_[p]);
            acb_addmul_arb(theta[p], box, delta_[p], prec_);
        }
        std::vector<acb_vec> h(K + 1);
        h[0] = acb_vec(x_.x.size());
        for (std::size_t e = 0; e < x_.x.size(); ++e) acb_set_arb(h[0][e], x_.x[e]);
        bool ok = true;
        for (std::size_t k = 0; k < K && ok; ++k) {
            const op& o = n_.ops[k];
            acb_vec& z = h[k + 1];
            acb_vec& in = h[o.in];
            z = acb_vec(o.size);
            switch (o.type) {
                case op_type::dense:
                    for (std::size_t row = 0; row < o.rows; ++row)
                        for (std::size_t r = 0; r < o.fout; ++r)
                            acb_dot(z[row * o.fout + r], o.has_bias ? theta[o.bias + r] : nullptr, 0,
                                    theta[o.weight + r * o.fin], 1, in[row * o.fin], 1, static_cast<slong>(o.fin), prec_);
                    break;
                case op_type::sparse:
                    for (std::size_t e = 0; e < o.size; ++e) {
                        if (o.bidx[e] != npos) acb_set(z[e], theta[o.bidx[e]]);
                        for (std::size_t q = o.start[e]; q < o.start[e + 1]; ++q)
                            acb_addmul(z[e], theta[o.tp[q]], in[o.ti[q]], prec_);
                    }
                    break;
                case op_type::avg:
                    for (std::size_t e = 0; e < o.size; ++e) {
                        for (std::size_t q = o.start[e]; q < o.start[e + 1]; ++q) acb_add(z[e], z[e], in[o.ti[q]], prec_);
                        acb_div_ui(z[e], z[e], o.divisor, prec_);
                    }
                    break;
                case op_type::add:
                    for (std::size_t e = 0; e < o.size; ++e) acb_add(z[e], in[e], h[o.in2][e], prec_);
                    break;
                case op_type::norm:
                    for (std::size_t q2 = 0; q2 < o.groups && ok; ++q2) {
                        acb_vec xhat(o.n);
                        acb_box rho;
                        ok = acb_norm_group(o, in[q2 * o.n], xhat[0], rho.v, prec_);
                        for (std::size_t j = 0; j < o.n; ++j) {
                            acb_set(z[q2 * o.n + j], xhat[j]);
                            if (o.affine) acb_mul(z[q2 * o.n + j], z[q2 * o.n + j], theta[o.weight + j], prec_);
                            if (o.has_bias) acb_add(z[q2 * o.n + j], z[q2 * o.n + j], theta[o.weight + o.n + j], prec_);
                        }
                    }
                    break;
                case op_type::act:
                    for (std::size_t e = 0; e < o.size; ++e) {
                        if (o.smooth) {
                            ok = smooth_value(o.kind, z[e], in[e], prec_) && acb_is_finite(z[e]) && ok;
                        } else if (pattern[k][e] == pos_sign) {
                            acb_set(z[e], in[e]);
                        } else if (pattern[k][e] == neg_sign) {
                            ball sl;
                            arb_set_d(sl.v, o.slope);
                            acb_mul_arb(z[e], in[e], sl.v, prec_);
                        } else {
                            ok = false;  // undecided: no analytic continuation
                        }
                    }
                    break;
                case op_type::max:
                    for (std::size_t e = 0; e < o.size; ++e) {
                        const std::size_t j = chosen(x_.cand[k][e], pattern[k][e]);
                        if (j == npos) ok = false;
                        else acb_set(z[e], in[j]);
                    }
                    break;
            }
        }
        arf_t u;
        arf_init(u);
        acb_t q;
        acb_init(q);
        auto bound = [&](point& m, acb_srcptr v) {
            acb_get_abs_ubound_arf(u, v, prec_);
            if (!arf_is_finite(u)) ok = false;  // NaN too: arf_max would skip it
            arf_max(m.v, m.v, u);
        };
        for (std::size_t c = 0; c < n_.C && ok; ++c) {
            arf_zero(M[c].v);
            std::vector<acb_vec> adj(K + 1);
            adj[n_.out] = acb_vec(n_.C);
            acb_one(adj[n_.out][c]);
            auto target = [&](std::size_t slot) -> acb_vec& {
                if (adj[slot].size() == 0) adj[slot] = acb_vec(n_.slot_size(slot));  // zeroed by init
                return adj[slot];
            };
            for (std::size_t k = K; k-- > 0 && ok;) {
                const op& o = n_.ops[k];
                if (adj[k + 1].size() == 0) continue;
                acb_vec delta = std::move(adj[k + 1]);
                acb_vec& in = h[o.in];
                const bool need_prev = o.in != 0;
                switch (o.type) {
                    case op_type::dense:
                        if (o.rows == 1) {
                            for (std::size_t r = 0; r < o.fout; ++r) {
                                for (std::size_t j = 0; j < o.fin; ++j) {
                                    acb_mul(q, delta[r], in[j], prec_);
                                    bound(M[c], q);
                                }
                                if (o.has_bias) bound(M[c], delta[r]);
                            }
                        } else {  // an entry of J is a sum over the rows
                            acb_vec gw(o.fout * (o.fin + 1));
                            for (std::size_t row = 0; row < o.rows; ++row)
                                for (std::size_t r = 0; r < o.fout; ++r) {
                                    for (std::size_t j = 0; j < o.fin; ++j)
                                        acb_addmul(gw[r * (o.fin + 1) + j], delta[row * o.fout + r], in[row * o.fin + j], prec_);
                                    acb_add(gw[r * (o.fin + 1) + o.fin], gw[r * (o.fin + 1) + o.fin], delta[row * o.fout + r], prec_);
                                }
                            for (std::size_t p = 0; p < gw.size(); ++p) bound(M[c], gw[p]);
                        }
                        if (need_prev) {
                            acb_vec& prev = target(o.in);
                            for (std::size_t row = 0; row < o.rows; ++row)
                                for (std::size_t j = 0; j < o.fin; ++j) {
                                    acb_dot(q, nullptr, 0, theta[o.weight + j], static_cast<slong>(o.fin),
                                            delta[row * o.fout], 1, static_cast<slong>(o.fout), prec_);
                                    acb_add(prev[row * o.fin + j], prev[row * o.fin + j], q, prec_);
                                }
                        }
                        break;
                    case op_type::sparse: {
                        // a shared weight's entry of J is the sum over its terms: bound the sums
                        std::map<std::size_t, acb_box> gw;
                        for (std::size_t e = 0; e < o.size; ++e) {
                            if (o.bidx[e] != npos) acb_add(gw[o.bidx[e]].v, gw[o.bidx[e]].v, delta[e], prec_);
                            for (std::size_t t = o.start[e]; t < o.start[e + 1]; ++t) {
                                acb_addmul(gw[o.tp[t]].v, delta[e], in[o.ti[t]], prec_);
                                if (need_prev) acb_addmul(target(o.in)[o.ti[t]], delta[e], theta[o.tp[t]], prec_);
                            }
                        }
                        for (auto& [p, g] : gw) bound(M[c], g.v);
                        break;
                    }
                    case op_type::avg:
                        if (need_prev)
                            for (std::size_t e = 0; e < o.size; ++e) {
                                acb_div_ui(q, delta[e], o.divisor, prec_);
                                for (std::size_t t = o.start[e]; t < o.start[e + 1]; ++t)
                                    acb_add(target(o.in)[o.ti[t]], target(o.in)[o.ti[t]], q, prec_);
                            }
                        break;
                    case op_type::add:
                        for (std::size_t e = 0; e < o.size; ++e) {
                            acb_add(target(o.in)[e], target(o.in)[e], delta[e], prec_);
                            acb_add(target(o.in2)[e], target(o.in2)[e], delta[e], prec_);
                        }
                        break;
                    case op_type::norm: {
                        // γ, β: sums over the groups, bounded after them
                        acb_vec gw(o.affine ? 2 * o.n : 0);
                        for (std::size_t q2 = 0; q2 < o.groups && ok; ++q2) {
                            acb_vec xhat(o.n), a(o.n);
                            acb_box rho, ma, max;
                            ok = acb_norm_group(o, in[q2 * o.n], xhat[0], rho.v, prec_);
                            for (std::size_t j = 0; j < o.n; ++j) {
                                acb_ptr dy = delta[q2 * o.n + j];
                                if (o.affine) {
                                    acb_addmul(gw[j], dy, xhat[j], prec_);
                                    acb_add(gw[o.n + j], gw[o.n + j], dy, prec_);
                                    acb_mul(a[j], dy, theta[o.weight + j], prec_);
                                } else {
                                    acb_set(a[j], dy);
                                }
                                acb_add(ma.v, ma.v, a[j], prec_);
                                acb_addmul(max.v, a[j], xhat[j], prec_);
                            }
                            if (!need_prev || o.n == 1) continue;  // n = 1: x̂ ≡ 0
                            acb_div_ui(ma.v, ma.v, o.n, prec_);
                            acb_div_ui(max.v, max.v, o.n, prec_);
                            for (std::size_t j = 0; j < o.n; ++j) {
                                acb_sub(a[j], a[j], ma.v, prec_);
                                acb_submul(a[j], xhat[j], max.v, prec_);
                                acb_addmul(target(o.in)[q2 * o.n + j], a[j], rho.v, prec_);
                            }
                        }
                        for (std::size_t p = 0; p < gw.size(); ++p)
                            if (p < o.n || o.has_bias) bound(M[c], gw[p]);
                        break;
                    }
                    case op_type::act:
                        if (need_prev)
                            for (std::size_t e = 0; e < o.size; ++e) {
                                if (o.smooth) {
                                    ok = smooth_derivative(o.kind, q, in[e], prec_) && acb_is_finite(q) && ok;
                                } else {
                                    acb_one(q);
                                    if (pattern[k][e] != pos_sign) acb_set_d(q, o.slope);
                                }
                                acb_addmul(target(o.in)[e], delta[e], q, prec_);
                            }
                        break;
                    case op_type::max:
                        if (need_prev)
                            for (std::size_t e = 0; e < o.size; ++e) {
                                const std::size_t j = chosen(x_.cand[k][e], pattern[k][e]);
                                if (j != npos) acb_add(target(o.in)[j], target(o.in)[j], delta[e], prec_);
                            }
                        break;
                }
            }
            if (!arf_is_finite(M[c].v)) ok = false;
        }
        acb_clear(q);
        arf_clear(u);
        return ok;
    }

    static constexpr std::size_t max_smooth_nodes = 96, max_smooth_bisections = 4096;
    std::size_t bisections_ = 0;

    const net& n_;
    const balls &w_, &delta_;
    const sample& x_;
    const ball_gauss& g_;
    gauss_cache& rules_;
    slong prec_;
    std::vector<balls>& ibar_;
    integral_counts& counts_;
    balls theta_;
    arf_t eps_;
};

// ---------------------------------------------------------------- the training side

// ρ ∂ℓ/∂f for one training row with outputs f (loss.hpp's output_gradient, in balls).
balls loss_gradient(const loss_spec& l, const balls& f, const trace& t, std::size_t row, std::size_t batch,
                    slong prec) {
    const std::size_t C = f.size();
    balls g(C);
    ball div, s, e;
    arb_set_ui(div.v, reduction_divisor(l, batch, C));
    if (l.kind == loss_kind::cross_entropy) {
        // softmax(f)_c − [c = y]: e^{f_c} / Σ e^{f_k} (Arb's exp is rigorous; no shift needed)
        balls ex(C);
        arb_zero(s.v);
        for (std::size_t c = 0; c < C; ++c) {
            arb_exp(ex[c], f[c], prec);
            arb_add(s.v, s.v, ex[c], prec);
        }
        const auto label = static_cast<std::size_t>(t.y_train.integer.at(row));
        for (std::size_t c = 0; c < C; ++c) {
            arb_div(g[c], ex[c], s.v, prec);
            if (c == label) arb_sub_ui(g[c], g[c], 1, prec);
            arb_div(g[c], g[c], div.v, prec);
        }
    } else {
        for (std::size_t c = 0; c < C; ++c) {
            arb_set_d(e.v, t.y_train.real.at(row * C + c));
            arb_sub(g[c], f[c], e.v, prec);
            arb_mul_2exp_si(g[c], g[c], 1);
            arb_div(g[c], g[c], div.v, prec);
        }
    }
    return g;
}

// ---------------------------------------------------------------- the optimizer's shares, in balls

// proofs-notes/007 §2 in ball arithmetic: the buffers of every source (each training point
// seen, or with no contributions asked for the batch as one source) and of the optimizer term
// ω (weight decay and the state recorded before step 0), run with the recursions of 007 from
// the gradients ĝ_{i,s} enclosed at w[s].  The split is exact in real arithmetic for any
// coefficients; here they are the optimizer's own (Adam's preconditioner from the batch's
// gradient, enclosed), so that the remainder r_s = Δ_s − Σ_i φ_{i,s} − ω_s is the rounding of
// the trainer's update.  011 §9.
class ball_optimizer {
public:
    ball_optimizer(const trace& tr, std::size_t P, bool per_point, slong prec)
        : o_(tr.optimizer.rule), P_(P), per_point_(per_point), prec_(prec), steps_(tr.optimizer.initial_step) {
        const bool sgd = o_.type == optimizer_spec::kind::sgd;
        memory_ = sgd ? o_.momentum != 0 : true;
        auto recorded = [&](const std::optional<npy_array>& a) {
            if (a) return exact_balls(real_rows(*a, 0, a->shape.at(0)));  // [P]: P rows of one number
            balls z(P_);
            z.zero();
            return z;
        };
        omega_buf_ = recorded(sgd ? tr.init_momentum_buffer : tr.init_exp_avg);
        if (!sgd) {
            v_ = recorded(tr.init_exp_avg_sq);
            vmax_ = recorded(tr.init_max_exp_avg_sq);
        }
    }

    // Whether sources outlive their batch (a momentum buffer or Adam's first moment).
    bool memory() const { return memory_; }

    // One step: the shares φ of `sources` (index → ĝ at w[s], every batch row; sources not in the
    // batch have ĝ = 0 and are kept while their buffer lives) and ω, at w[s] with rate η.
    // Returns the shares of every live source (training index, φ).
    std::vector<std::pair<std::size_t, balls>> step(const std::vector<std::pair<std::size_t, balls>>& grads,
                                                    const balls& w, double eta_d, balls& omega) {
        ball eta, lam, t1, t2;
        arb_set_d(eta.v, eta_d);
        arb_set_d(lam.v, o_.weight_decay);
        // the decay's input λ w[s] (SGD, Adam; AdamW's decay is decoupled)
        const bool adamw = o_.type == optimizer_spec::kind::adamw;
        balls decay(P_);
        decay.zero();
        if (o_.weight_decay != 0 && !adamw) _arb_vec_scalar_mul(decay.data(), w.data(), static_cast<slong>(P_), lam.v, prec_);
        std::vector<std::pair<std::size_t, balls>> shares;
        // ĝ per source this step (grads in batch order; a point twice in a batch: its ĝ twice)
        std::map<std::size_t, balls> g;
        for (const auto& [i, gi] : grads) {
            const std::size_t key = per_point_ ? i : 0;
            auto it = g.find(key);
            if (it == g.end()) g.emplace(key, gi);
            else _arb_vec_add(it->second.data(), it->second.data(), gi.data(), static_cast<slong>(P_), prec_);
        }
        if (!memory_) {  // SGD without momentum: φ = −η ĝ, ω = −η λ w
            for (auto& [i, gi] : g) {
                balls phi(P_);
                arb_neg(t1.v, eta.v);
                _arb_vec_scalar_mul(phi.data(), gi.data(), static_cast<slong>(P_), t1.v, prec_);
                shares.emplace_back(i, std::move(phi));
            }
            omega = balls(P_);
            arb_neg(t1.v, eta.v);
            _arb_vec_scalar_mul(omega.data(), decay.data(), static_cast<slong>(P_), t1.v, prec_);
            ++steps_;
            return shares;
        }
        for (auto& [i, gi] : g)
            if (buf_.find(i) == buf_.end()) {
                balls z(P_);
                z.zero();
                buf_.emplace(i, std::move(z));
            }
        balls zero(P_);
        zero.zero();
        if (o_.type == optimizer_spec::kind::sgd) {
            const bool first = steps_ == 0;
            ball mu, omt;
            arb_set_d(mu.v, o_.momentum);
            arb_set_d(omt.v, o_.dampening);
            arb_sub_ui(omt.v, omt.v, 1, prec_);
            arb_neg(omt.v, omt.v);  // 1 − τ (exact)
            // b ← d (first step) or μ b + (1 − τ) d;  φ = −η (d + μ b) (nesterov) or −η b
            auto advance = [&](balls& b, const balls& d) {
                balls phi(P_);
                for (std::size_t p = 0; p < P_; ++p) {
                    if (first) arb_set(b[p], d[p]);
                    else {
                        arb_mul(t1.v, b[p], mu.v, prec_);
                        arb_mul(t2.v, d[p], omt.v, prec_);
                        arb_add(b[p], t1.v, t2.v, prec_);
                    }
                    if (o_.nesterov) {
                        arb_mul(t1.v, b[p], mu.v, prec_);
                        arb_add(t1.v, t1.v, d[p], prec_);
                    } else {
                        arb_set(t1.v, b[p]);
                    }
                    arb_mul(phi[p], t1.v, eta.v, prec_);
                    arb_neg(phi[p], phi[p]);
                }
                return phi;
            };
            for (auto& [i, b] : buf_) {
                auto it = g.find(i);
                shares.emplace_back(i, advance(b, it == g.end() ? zero : it->second));
            }
            omega = advance(omega_buf_, decay);
        } else {
            // d = Σ ĝ + λ w (Adam) for the second moment; t = steps + 1; P = (η/c₁) ⊘ (√v̂/√c₂ + ε)
            ++steps_;
            balls d = decay;
            for (const auto& [i, gi] : g) _arb_vec_add(d.data(), d.data(), gi.data(), static_cast<slong>(P_), prec_);
            ball b1, b2, omb1, omb2, c1, c2, eps, scale;
            arb_set_d(b1.v, o_.beta1);
            arb_set_d(b2.v, o_.beta2);
            arb_sub_ui(omb1.v, b1.v, 1, prec_);
            arb_neg(omb1.v, omb1.v);
            arb_sub_ui(omb2.v, b2.v, 1, prec_);
            arb_neg(omb2.v, omb2.v);
            arb_pow_ui(c1.v, b1.v, steps_, prec_);
            arb_sub_ui(c1.v, c1.v, 1, prec_);
            arb_neg(c1.v, c1.v);
            arb_pow_ui(c2.v, b2.v, steps_, prec_);
            arb_sub_ui(c2.v, c2.v, 1, prec_);
            arb_neg(c2.v, c2.v);
            arb_sqrt(c2.v, c2.v, prec_);
            arb_set_d(eps.v, o_.eps);
            arb_div(scale.v, eta.v, c1.v, prec_);
            balls pre(P_);
            for (std::size_t p = 0; p < P_; ++p) {
                arb_mul(v_[p], v_[p], b2.v, prec_);
                arb_sqr(t1.v, d[p], prec_);
                arb_addmul(v_[p], t1.v, omb2.v, prec_);
                arb_srcptr vv = v_[p];
                if (o_.amsgrad) {
                    arb_max(vmax_[p], vmax_[p], v_[p], prec_);
                    vv = vmax_[p];
                }
                arb_sqrtpos(t1.v, vv, prec_);  // v̂ ≥ 0: the enclosure's nonnegative part
                arb_div(t1.v, t1.v, c2.v, prec_);
                arb_add(t1.v, t1.v, eps.v, prec_);
                arb_div(pre[p], scale.v, t1.v, prec_);
                arb_neg(pre[p], pre[p]);  // −P
            }
            // m ← β₁ m + (1 − β₁) ĝ;  φ = −P ⊙ m
            auto advance = [&](balls& m, const balls& gi) {
                balls phi(P_);
                for (std::size_t p = 0; p < P_; ++p) {
                    arb_mul(t1.v, m[p], b1.v, prec_);
                    arb_mul(t2.v, gi[p], omb1.v, prec_);
                    arb_add(m[p], t1.v, t2.v, prec_);
                    arb_mul(phi[p], m[p], pre[p], prec_);
                }
                return phi;
            };
            for (auto& [i, m] : buf_) {
                auto it = g.find(i);
                shares.emplace_back(i, advance(m, it == g.end() ? zero : it->second));
            }
            omega = advance(omega_buf_, decay);
            if (adamw && o_.weight_decay != 0)  // (1 − ηλ) w − w = −ηλ w
                for (std::size_t p = 0; p < P_; ++p) {
                    arb_mul(t1.v, w[p], lam.v, prec_);
                    arb_mul(t1.v, t1.v, eta.v, prec_);
                    arb_sub(omega[p], omega[p], t1.v, prec_);
                }
        }
        if (o_.type == optimizer_spec::kind::sgd) ++steps_;
        return shares;
    }

private:
    const optimizer_spec& o_;
    std::size_t P_;
    bool per_point_;
    slong prec_;
    std::size_t steps_;  // steps the optimizer has taken (t₀ + s)
    bool memory_ = false;
    std::map<std::size_t, balls> buf_;  // per source: momentum buffer b or Adam's m
    balls omega_buf_, v_, vmax_;
};

// The outputs at exact parameters, every sign decided (else not certifiable: `what`).
pass exact_pass(const net& n, const balls& theta, const sample& x, slong prec, const std::string& what) {
    pass f;
    forward(n, theta.data(), nullptr, x, no_signs(n), f, prec);
    if (!f.undecided.empty()) {
        const kink& u = f.undecided[0];
        const op& o = n.ops[u.k];
        if (o.type == op_type::max)
            throw not_certifiable(what + ": the maximum of " + o.path + " (max_pool2d) output " + std::to_string(u.e) +
                                  " is not decided at " + std::to_string(prec) +
                                  " bits (two window entries tie within their enclosures)");
        throw not_certifiable(what + ": the sign of the pre-activation of " + o.path + " (" +
                              std::string(to_string(o.kind)) + ") unit " + std::to_string(u.e) + " is not decided at " +
                              std::to_string(prec) + " bits (its enclosure contains 0 and is not 0)");
    }
    return f;
}

// ---------------------------------------------------------------- output

// log2 of a lower bound of |mid| (−∞ for 0): |m| ≥ 2^(e−1) for arf exponent e.
double log2_mid_lower(arb_srcptr x) {
    if (arf_is_zero(arb_midref(x))) return -HUGE_VAL;
    return fmpz_get_d(ARF_EXPREF(arb_midref(x))) - 1;
}

// log2 of an upper bound of rad (−∞ for 0): rad ≤ 2^e for mag exponent e.
double log2_rad_upper(arb_srcptr x) {
    if (mag_is_zero(arb_radref(x))) return -HUGE_VAL;
    return fmpz_get_d(MAG_EXPREF(arb_radref(x)));
}

std::string ball_string(arb_srcptr x, slong digits, std::string& rad) {
    char* s = arb_get_str(x, digits, 0);  // "m", "[m +/- r]" or "[+/- r]": contains x
    const std::string_view v(s);
    std::string mid;
    if (v.empty() || v.front() != '[') {
        mid.assign(v.data(), v.size());
        rad = "0";
    } else {
        const std::string_view in = v.substr(1, v.size() - 2);
        const std::size_t pm = in.find("+/-");
        const std::string_view r = in.substr(pm + 4), m = pm == 0 ? std::string_view("0") : in.substr(0, pm - 1);
        rad.assign(r.data(), r.size());
        mid.assign(m.data(), m.size());
    }
    flint_free(s);
    return mid;
}

ball_table make_table(std::size_t rows, std::size_t cols, const std::vector<balls>& v, slong digits) {
    ball_table t;
    t.rows = rows;
    t.cols = cols;
    t.contains_zero_everywhere = true;
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) {
            arb_srcptr x = v[r][c];
            std::string rad;
            t.mid.push_back(ball_string(x, digits, rad));
            t.rad.push_back(rad);
            t.mid_value.push_back(arf_get_d(arb_midref(x), ARF_RND_NEAR));
            t.rad_value.push_back(mag_get_d(arb_radref(x)));
            if (!arb_contains_zero(x)) t.contains_zero_everywhere = false;
        }
    return t;
}

}  // namespace

certify_report certify_trace(const trace& tr, const certify_options& o, const progress_fn& progress) {
    const auto start = std::chrono::steady_clock::now();
    if (o.bits < 64 || o.bits > 100000) throw input_error("--bits", "must be an integer in [64, 100000]");
    certify_report rep;
    rep.bits = o.bits;
    rep.max_width = o.max_width >= 0 ? o.max_width : std::ldexp(1.0, -static_cast<int>(o.bits - 40));
    rep.steps = tr.steps();
    rep.n_train = tr.n_train();
    rep.classes = tr.model.output_dim();
    rep.test_points = test_point_count(tr);
    rep.test_points_name = tr.x_test ? "x_test" : "x_train[0:" + std::to_string(rep.test_points) + "]";
    rep.optimizer = describe_optimizer(tr);
    rep.recorded_path = tr.params.has_value();
    // Working precision: P + 64 guard bits, so that the enclosures come out far narrower than one
    // unit in the P-th bit (a contribution off by 2^-P relative moves the residual outside them).
    const slong prec = o.bits + guard_bits;
    const slong digits = static_cast<slong>(std::ceil(static_cast<double>(o.bits + guard_bits) * 0.30102999566398)) + 3;
    const std::size_t M = rep.test_points, N = rep.n_train, C = rep.classes, S = rep.steps;
    try {
        const net n = make_net(tr.model);
        // A replayed trace (init_params.npy only) is trained here, in balls: the enclosures are
        // of the exact-arithmetic training (proofs-notes/011 §8).
        const trace& path = tr;
        rep.path_note = rep.recorded_path ? "recorded path (params.npy rows taken as exact binary64 numbers)"
                                          : "replayed: trained in ball arithmetic from init_params.npy (the exact-arithmetic "
                                            "training, enclosed)";
        const sgd_schedule sch = detail::make_schedule(path);
        const ball_gauss g = make_gauss(std::max<std::size_t>(1, (n.depth + 1) / 2), prec);
        gauss_cache rules;  // smooth networks: rules of the sizes their bounds ask for
        ball_optimizer opt(path, n.P, o.contributions, prec);

        std::vector<sample> x_test(M);
        for (std::size_t m = 0; m < M; ++m)
            x_test[m] = make_sample(n, tr.x_test ? real_rows(*tr.x_test, m, 1) : real_rows(tr.x_train, m, 1));
        std::vector<balls> out0(M), outS(M), kern(M), optt(M), rem(M);
        std::vector<std::vector<balls>> contrib(o.contributions ? M : 0);
        std::vector<integral_counts> counts(M);
        std::vector<std::vector<double>> magnitude(M, std::vector<double>(C, 0.0));
        std::vector<std::string> failure(M);
        for (std::size_t m = 0; m < M; ++m) {
            kern[m] = balls(C);
            optt[m] = balls(C);
            rem[m] = balls(C);
            if (o.contributions) contrib[m].assign(N, balls(C));
        }
        const std::size_t threads =
            std::max<std::size_t>(1, std::min<std::size_t>(o.threads ? o.threads : std::thread::hardware_concurrency(), M));
        auto for_points = [&](const auto& body) {
            std::vector<std::thread> pool;
            for (std::size_t th = 0; th < threads; ++th)
                pool.emplace_back([&, th] {
                    for (std::size_t m = th; m < M; m += threads) {
                        if (!failure[m].empty()) continue;
                        try {
                            body(m);
                        } catch (const not_certifiable& e) {
                            failure[m] = e.what();
                        }
                    }
                    flint_cleanup();
                });
            for (auto& t : pool) t.join();
            for (std::size_t m = 0; m < M; ++m)
                if (!failure[m].empty()) throw not_certifiable("test point " + std::to_string(m) + ": " + failure[m]);
        };

        balls w = rep.recorded_path ? exact_balls(real_rows(*path.params, 0, 1))
                                    : exact_balls(real_rows(*path.init_params, 0, n.P));
        const balls w0 = w;
        for (std::size_t s = 0; s < S; ++s) {
            // The training side: ĝ_i = J(x_i; w_s)ᵀ ρ∂ℓ/∂f, the optimizer's shares φ_i and its own
            // term ω (007), U = Σ_i φ_i, r = Δ − U − ω.
            std::vector<std::size_t> batch = sch.batch(s);
            if (batch.empty())
                for (std::size_t i = 0; i < N; ++i) batch.push_back(i);
            std::vector<std::pair<std::size_t, balls>> grads;
            for (const std::size_t i : batch) {
                const sample xi = make_sample(n, real_rows(tr.x_train, i, 1));
                const pass f = exact_pass(n, w, xi, prec, "step " + std::to_string(s) + ", training point " + std::to_string(i));
                balls gi(n.P);
                gi.zero();
                reverse(n, w.data(), xi, f, loss_gradient(tr.loss, f.h[n.out], tr, i, batch.size(), prec), gi.data(), prec);
                grads.emplace_back(i, std::move(gi));
            }
            balls omega;
            const std::vector<std::pair<std::size_t, balls>> shares = opt.step(grads, w, sch.learning_rates[s], omega);
            grads.clear();
            balls U(n.P), r(n.P), delta(n.P), next(n.P);
            for (const auto& sh : shares) _arb_vec_add(U.data(), U.data(), sh.second.data(), static_cast<slong>(n.P), prec);
            if (rep.recorded_path) {  // Δ = w[s+1] − w[s] (exact unless the exponents are far apart), r = Δ − U − ω
                next = exact_balls(real_rows(*path.params, s + 1, 1));
                _arb_vec_sub(delta.data(), next.data(), w.data(), static_cast<slong>(n.P), prec);
                _arb_vec_sub(r.data(), delta.data(), U.data(), static_cast<slong>(n.P), prec);
                _arb_vec_sub(r.data(), r.data(), omega.data(), static_cast<slong>(n.P), prec);
            } else {  // the exact update is Σ_i φ_i + ω (007 §2): Δ = U + ω, r = 0 exactly
                _arb_vec_add(delta.data(), U.data(), omega.data(), static_cast<slong>(n.P), prec);
                _arb_vec_add(next.data(), w.data(), delta.data(), static_cast<slong>(n.P), prec);
            }
            std::vector<double> amag(n.P);  // |Δ| + Σ_i |φ_i| + |ω| + |r| (007 §3's a_s): the terms' scale
            for (std::size_t p = 0; p < n.P; ++p) {
                double a = std::abs(arf_get_d(arb_midref(delta[p]), ARF_RND_NEAR)) +
                           std::abs(arf_get_d(arb_midref(omega[p]), ARF_RND_NEAR)) +
                           std::abs(arf_get_d(arb_midref(r[p]), ARF_RND_NEAR));
                for (const auto& sh : shares) a += std::abs(arf_get_d(arb_midref(sh.second[p]), ARF_RND_NEAR));
                amag[p] = a;
            }
            for_points([&](std::size_t m) {
                if (s == 0) out0[m] = balls(exact_pass(n, w0, x_test[m], prec, "f(x; w[0])").h[n.out]);
                std::vector<balls> ibar(C, balls(n.P));
                ball_segment_integral(n, w, delta, x_test[m], g, rules, prec, ibar, counts[m]).run();
                ball d;
                for (std::size_t c = 0; c < C; ++c) {
                    for (std::size_t p = 0; p < n.P; ++p)  // Σ_p |Ī_p| a_p: the terms' scale (binary64)
                        magnitude[m][c] += std::abs(arf_get_d(arb_midref(ibar[c][p]), ARF_RND_NEAR)) * amag[p];
                    arb_dot(d.v, nullptr, 0, ibar[c].data(), 1, U.data(), 1, static_cast<slong>(n.P), prec);
                    arb_add(kern[m][c], kern[m][c], d.v, prec);
                    arb_dot(d.v, nullptr, 0, ibar[c].data(), 1, omega.data(), 1, static_cast<slong>(n.P), prec);
                    arb_add(optt[m][c], optt[m][c], d.v, prec);
                    arb_dot(d.v, nullptr, 0, ibar[c].data(), 1, r.data(), 1, static_cast<slong>(n.P), prec);
                    arb_add(rem[m][c], rem[m][c], d.v, prec);
                    if (o.contributions)
                        for (const auto& [i, phi] : shares) {
                            arb_dot(d.v, nullptr, 0, ibar[c].data(), 1, phi.data(), 1, static_cast<slong>(n.P), prec);
                            arb_add(contrib[m][i][c], contrib[m][i][c], d.v, prec);
                        }
                }
                if (s + 1 == S) outS[m] = balls(exact_pass(n, next, x_test[m], prec, "f(x; w[S])").h[n.out]);
            });
            w = next;
            if (progress) progress(s + 1, S);
        }
        if (S == 0)
            for (std::size_t m = 0; m < M; ++m) {
                out0[m] = balls(exact_pass(n, w0, x_test[m], prec, "f(x; w[0])").h[n.out]);
                outS[m] = out0[m];
            }
        // With the contributions asked for, the kernel term is their sum (i ascending), so that
        // each of them is part of the identity checked; else Σ_s Ī_s U_s as accumulated.
        if (o.contributions) {
            if (o.perturb_contribution_ulps != 0 && M > 0 && N > 0) {  // testing only: c · (1 + k·2^-P)
                std::size_t at = 0;  // the largest |c(x_0, x_i)_0|
                for (std::size_t i = 1; i < N; ++i)
                    if (arf_cmpabs(arb_midref(contrib[0][i][0]), arb_midref(contrib[0][at][0])) > 0) at = i;
                ball e;
                arb_mul_2exp_si(e.v, contrib[0][at][0], -o.bits);
                arb_abs(e.v, e.v);
                arb_get_mid_arb(e.v, e.v);
                ball k;
                arb_set_d(k.v, o.perturb_contribution_ulps);
                arb_addmul(contrib[0][at][0], e.v, k.v, prec);
            }
            for (std::size_t m = 0; m < M; ++m)
                for (std::size_t c = 0; c < C; ++c) {
                    arb_zero(kern[m][c]);
                    for (std::size_t i = 0; i < N; ++i) arb_add(kern[m][c], kern[m][c], contrib[m][i][c], prec);
                }
        }
        // reconstruction = f(x; w_0) + Σ_i c(x, x_i) + optimizer term + remainder term; residual = f(x; w_S) − it.
        std::vector<balls> recon(M, balls(C)), resid(M, balls(C));
        for (std::size_t m = 0; m < M; ++m)
            for (std::size_t c = 0; c < C; ++c) {
                arb_add(recon[m][c], out0[m][c], kern[m][c], prec);
                arb_add(recon[m][c], recon[m][c], optt[m][c], prec);
                arb_add(recon[m][c], recon[m][c], rem[m][c], prec);
                arb_sub(resid[m][c], outS[m][c], recon[m][c], prec);
            }
        for (const integral_counts& k : counts) {
            rep.pieces += k.pieces;
            rep.kinks += k.kinks;
            rep.enclosed_intervals += k.enclosed;
            rep.smooth_nodes += k.smooth_nodes;
        }
        rep.outputs_initial = make_table(M, C, out0, digits);
        rep.outputs_final = make_table(M, C, outS, digits);
        rep.reconstruction = make_table(M, C, recon, digits);
        rep.optimizer_term = make_table(M, C, optt, digits);  // 0 exactly for plain SGD
        rep.remainder_term = make_table(M, C, rem, digits);
        rep.residual = make_table(M, C, resid, digits);
        std::vector<balls> contrib_rows;  // [M·N][C]: the table and the width check
        if (o.contributions) {
            for (std::size_t m = 0; m < M; ++m)
                for (std::size_t i = 0; i < N; ++i) contrib_rows.push_back(contrib[m][i]);
            rep.contributions = make_table(M * N, C, contrib_rows, digits);
        }
        // Widths, relative to max(|mid|, the point's scale): the scale is the largest among the
        // point's |f(x; w_0)|, |f(x; w_S)| and Σ_s Σ_p |Ī_s,p|(|U_s,p| + |r_s,p|) (the magnitude of
        // what the kernel and remainder terms sum; 1 when all are exactly 0), so that the residual
        // (≈ 0) and terms that cancel are judged on the scale of what was summed ...
        // All in base-2 exponents (valid beyond binary64's range: a diverged run's outputs may
        // exceed it): lower bounds of log2 |mid| and the scales, upper bounds of log2 rad, so
        // that the width compared is an upper bound of the relative width (within a factor 4).
        std::vector<double> scale(M, -HUGE_VAL);  // log2 of a lower bound
        double run_scale = -HUGE_VAL;
        for (std::size_t m = 0; m < M; ++m)
            for (std::size_t c = 0; c < C; ++c) {
                for (arb_srcptr v : {out0[m][c], outS[m][c]}) {
                    scale[m] = std::max(scale[m], log2_mid_lower(v));
                    run_scale = std::max(run_scale, log2_mid_lower(v));
                }
                // the magnitude (binary64) only where finite: a larger scale is never assumed
                if (std::isfinite(magnitude[m][c]) && magnitude[m][c] > 0)
                    scale[m] = std::max(scale[m], std::floor(std::log2(magnitude[m][c])) - 1);
            }
        // ... and never below the run's output scale max |f(x; w_0)|, |f(x; w_S)| over every test
        // point (a point where the network is dead is judged on the scale of the others), or
        // below 1 when every output is exactly 0 (then the widths are absolute).
        for (double& sc : scale) sc = std::max(sc, std::isfinite(run_scale) ? run_scale : 0.0);
        double widest = -HUGE_VAL;
        auto judge = [&](const std::vector<balls>& v, const std::string& name, std::size_t per_point) {
            for (std::size_t row = 0; row < v.size(); ++row)
                for (std::size_t c = 0; c < C; ++c) {
                    const std::size_t m = row / per_point;
                    const double rel = log2_rad_upper(v[row][c]) - std::max(log2_mid_lower(v[row][c]), scale[m]);
                    if (rel > widest) {
                        widest = rel;
                        rep.widest_quantity = name;
                        rep.widest_point = m;
                    }
                }
        };
        judge(out0, "outputs_initial", 1);
        judge(outS, "outputs_final", 1);
        judge(recon, "reconstruction", 1);
        judge(optt, "optimizer_term", 1);
        judge(rem, "remainder_term", 1);
        judge(resid, "residual", 1);
        if (o.contributions) {
            judge(contrib_rows, "contributions", N);
        }
        rep.widest = std::exp2(widest);
        const bool narrow = widest <= std::log2(rep.max_width);
        const bool contains = rep.residual.contains_zero_everywhere;
        rep.certified = contains && narrow;
        if (!contains) rep.reason = "some residual enclosure excludes 0: the kernel identity fails on this trace";
        else if (!rep.certified)
            rep.reason = "the widest enclosure (" + rep.widest_quantity + ") is wider than --max-width";
    } catch (const not_certifiable& e) {
        rep.supported = false;
        rep.certified = false;
        rep.reason = e.what();
    }
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    flint_cleanup();
    return rep;
}

#endif  // EPK_HAVE_ARB

}  // namespace epk

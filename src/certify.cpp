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

struct op {
    bool linear = false;
    std::size_t in = 0, out = 0, weight = 0, bias = 0;  // linear
    bool has_bias = false;
    layer_kind kind = layer_kind::identity;             // activation
    double slope = 0;                                   // relu: 0; leaky_relu: negative_slope
    bool kinked = false;                                // relu, leaky_relu: units with signs
    bool smooth = false;                                // tanh, sigmoid, softplus, gelu
    std::size_t width = 0;                              // activation: number of units
};

struct net {
    std::vector<op> ops;
    std::size_t P = 0, D = 0, C = 0, linear_layers = 0;
    bool kinked = false, smooth = false;
};

net make_net(const model_spec& m) {
    if (!m.is_mlp())
        for (std::size_t k = 0; k < m.layers.size(); ++k)
            if (m.layers[k].kind != layer_kind::linear && !m.layers[k].is_activation())
                throw not_certifiable("layers[" + std::to_string(k) + "] " + std::string(to_string(m.layers[k].kind)) +
                                      ": certify covers MLPs (linear layers and elementwise activations) so far");
    net n;
    n.P = m.parameter_count();
    n.D = m.input_dim;
    n.C = m.output_dim();
    const std::vector<linear_offsets> offs = parameter_offsets(m);
    std::size_t li = 0, width = m.input_dim;
    for (std::size_t k = 0; k < m.layers.size(); ++k) {
        const layer_spec& l = m.layers[k];
        op o;
        if (l.kind == layer_kind::linear) {
            const linear_offsets& lo = offs[li++];
            o.linear = true;
            o.in = lo.in;
            o.out = lo.out;
            o.weight = lo.weight;
            o.bias = lo.bias;
            o.has_bias = lo.has_bias;
            width = lo.out;
            ++n.linear_layers;
        } else if (l.kind == layer_kind::relu || l.kind == layer_kind::leaky_relu || l.kind == layer_kind::identity) {
            o.kind = l.kind;
            o.slope = l.kind == layer_kind::leaky_relu ? l.negative_slope : 0.0;
            o.kinked = l.kind != layer_kind::identity;
            o.width = width;
        } else if (l.kind == layer_kind::tanh || l.kind == layer_kind::sigmoid || l.kind == layer_kind::softplus ||
                   l.kind == layer_kind::gelu) {
            o.kind = l.kind;
            o.smooth = true;
            o.width = width;
        } else {
            throw not_certifiable("layers[" + std::to_string(k) + "] " + std::string(to_string(l.kind)) +
                                  ": not an MLP activation certify knows");
        }
        if (o.kinked) n.kinked = true;
        if (o.smooth) n.smooth = true;
        if (n.kinked && n.smooth)
            throw not_certifiable("layers[" + std::to_string(k) + "] " + std::string(to_string(l.kind)) +
                                  ": a network mixing kinks (relu, leaky_relu) and smooth activations; certify covers "
                                  "piecewise-linear MLPs and smooth MLPs, not yet their mixtures");
        n.ops.push_back(o);
    }
    return n;
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

// Signs of the kinked units, per op (empty for the others): +1 (z > 0), −1 (z < 0, or z = 0
// exactly: epk's convention z > 0 ? z : slope·z, derivative slope at 0), 0 (undecided).
using signs = std::vector<std::vector<signed char>>;

signs no_signs(const net& n) {
    signs s(n.ops.size());
    for (std::size_t k = 0; k < n.ops.size(); ++k)
        if (n.ops[k].kinked) s[k].assign(n.ops[k].width, 0);
    return s;
}

struct pass {
    std::vector<balls> h, hd;  // h[k]: input of op k (h.back(): outputs); hd: d/dt of h (tangent)
    signs sign;                // the signs used (forced, or decided from the enclosure)
    std::vector<std::pair<std::size_t, std::size_t>> undecided;  // (op, unit)
};

// The forward pass at θ (balls; for a t-interval, w + TΔ), optionally with the tangent
// θ̇ = Δ.  A unit whose sign is forced takes that branch; otherwise its sign is read from its
// enclosure, and an undecided unit takes the union of both branches (value and tangent).
void forward(const net& n, arb_srcptr theta, arb_srcptr theta_dot, const balls& x, const signs& forced, pass& f,
             slong prec) {
    const std::size_t K = n.ops.size();
    f.h.resize(K + 1);
    f.hd.resize(theta_dot ? K + 1 : 0);
    f.sign = forced;
    f.undecided.clear();
    f.h[0] = x;
    if (theta_dot) {
        f.hd[0] = balls(x.size());
        f.hd[0].zero();
    }
    ball t1, t2;
    for (std::size_t k = 0; k < K; ++k) {
        const op& o = n.ops[k];
        const balls& h = f.h[k];
        if (o.linear) {
            balls z(o.out);
            for (std::size_t r = 0; r < o.out; ++r) {
                arb_srcptr wr = theta + o.weight + r * o.in;
                arb_dot(z[r], o.has_bias ? theta + o.bias + r : nullptr, 0, wr, 1, h.data(), 1, static_cast<slong>(o.in),
                        prec);
            }
            if (theta_dot) {  // ż = Ẇh + Wḣ + ḃ
                balls zd(o.out);
                for (std::size_t r = 0; r < o.out; ++r) {
                    arb_dot(zd[r], o.has_bias ? theta_dot + o.bias + r : nullptr, 0, theta_dot + o.weight + r * o.in, 1,
                            h.data(), 1, static_cast<slong>(o.in), prec);
                    arb_dot(zd[r], zd[r], 0, theta + o.weight + r * o.in, 1, f.hd[k].data(), 1, static_cast<slong>(o.in),
                            prec);
                }
                f.hd[k + 1] = std::move(zd);
            }
            f.h[k + 1] = std::move(z);
            continue;
        }
        balls a(h.size());
        balls ad(theta_dot ? h.size() : 0);
        for (std::size_t e = 0; e < h.size(); ++e) {
            if (o.smooth) {
                smooth_value(o.kind, a[e], h[e], prec);
                if (theta_dot) {
                    smooth_derivative(o.kind, t1.v, h[e], prec);
                    arb_mul(ad[e], t1.v, f.hd[k][e], prec);
                }
                continue;
            }
            if (!o.kinked) {
                arb_set(a[e], h[e]);
                if (theta_dot) arb_set(ad[e], f.hd[k][e]);
                continue;
            }
            signed char& s = f.sign[k][e];
            if (s == 0) {
                if (arb_is_positive(h[e])) s = 1;
                else if (arb_is_negative(h[e]) || arb_is_zero(h[e])) s = -1;
            }
            if (s > 0) {
                arb_set(a[e], h[e]);
                if (theta_dot) arb_set(ad[e], f.hd[k][e]);
            } else if (s < 0) {
                mul_binary64(a[e], h[e], o.slope, prec);  // the slope is a binary64 number
                if (theta_dot) mul_binary64(ad[e], f.hd[k][e], o.slope, prec);
            } else {
                f.undecided.emplace_back(k, e);
                mul_binary64(t1.v, h[e], o.slope, prec);
                arb_union(a[e], h[e], t1.v, prec);
                if (theta_dot) {
                    mul_binary64(t2.v, f.hd[k][e], o.slope, prec);
                    arb_union(ad[e], f.hd[k][e], t2.v, prec);
                }
            }
        }
        f.h[k + 1] = std::move(a);
        if (theta_dot) f.hd[k + 1] = std::move(ad);
    }
}

// Reverse mode: acc += J(θ)ᵀ seed (seed: the outputs' adjoint, C balls), J taken with the
// signs of `f` (an undecided unit's derivative is the union of 1 and its slope).
void reverse(const net& n, arb_srcptr theta, const pass& f, balls delta, arb_ptr acc, slong prec) {
    ball d;
    for (std::size_t k = n.ops.size(); k-- > 0;) {
        const op& o = n.ops[k];
        const balls& h = f.h[k];
        if (o.linear) {
            for (std::size_t r = 0; r < o.out; ++r) {
                if (arb_is_zero(delta[r])) continue;
                arb_ptr gw = acc + o.weight + r * o.in;
                for (std::size_t j = 0; j < o.in; ++j) arb_addmul(gw + j, delta[r], h[j], prec);
                if (o.has_bias) arb_add(acc + o.bias + r, acc + o.bias + r, delta[r], prec);
            }
            if (k == 0) break;
            balls prev(o.in);
            for (std::size_t j = 0; j < o.in; ++j)
                arb_dot(prev[j], nullptr, 0, theta + o.weight + j, static_cast<slong>(o.in), delta.data(), 1,
                        static_cast<slong>(o.out), prec);
            delta = std::move(prev);
            continue;
        }
        if (o.smooth) {
            for (std::size_t e = 0; e < delta.size(); ++e) {
                smooth_derivative(o.kind, d.v, h[e], prec);
                arb_mul(delta[e], delta[e], d.v, prec);
            }
            continue;
        }
        if (!o.kinked) continue;
        for (std::size_t e = 0; e < delta.size(); ++e) {
            const signed char s = f.sign[k][e];
            if (s > 0) continue;
            if (s < 0) {
                mul_binary64(delta[e], delta[e], o.slope, prec);
            } else {
                arb_one(d.v);
                ball sl;
                arb_set_d(sl.v, o.slope);
                arb_union(d.v, d.v, sl.v, prec);  // [min(1, slope), max(1, slope)]
                arb_mul(delta[e], delta[e], d.v, prec);
            }
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
    ball_segment_integral(const net& n, const balls& w, const balls& delta, const balls& x, const ball_gauss& g,
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
        if (n_.smooth) integrate_smooth(a, b, 0);
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
            reverse(n_, theta_.data(), f, std::move(seed), ibar_[c].data(), prec_);
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
        if (f.undecided.empty()) return gauss(a, b, f.sign);
        point width;
        arf_sub(width.v, b.v, a.v, ARF_PREC_EXACT, ARF_RND_DOWN);
        if (arf_cmp(width.v, eps_) <= 0) return enclose(a, b, forced);
        // The first undecided unit of the earliest op with one: every unit before that op is
        // decided on [a, b], so its pre-activation is one polynomial there (the others may be
        // undecided only through it, or have roots of their own: the pieces sort them out).
        {
            const auto [k, r] = f.undecided[0];
            const arb_srcptr zdot = f.hd[k][r];
            if (!arb_contains_zero(zdot)) {  // z_k is monotone on [a, b]: at most one root
                signs fixed = f.sign;  // the units before op k decided on [a, b]
                ball R;
                int found = newton(a, b, fixed, k, r, R);
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
                    const int s = sign_at(m, fixed, k, r);
                    if (s != 0) {
                        signs next = forced;
                        next[k][r] = static_cast<signed char>(s);
                        return integrate(a, b, next);
                    }
                } else if (found == 1) {
                    ++counts_.kinks;
                    // Any root of z on [a, b] lies in R (not that one exists: R ∩ N need not prove
                    // it), so z keeps one sign on [a, lo) and on (hi, b]: the sign at a and at b
                    // where decided (else the piece is left to the recursion).
                    signs left = forced, right = forced;
                    left[k][r] = static_cast<signed char>(sign_at(a, fixed, k, r));
                    right[k][r] = static_cast<signed char>(sign_at(b, fixed, k, r));
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

    // The sign of unit (k, r) at the exact point t = m (0 when undecided).
    int sign_at(const point& m, const signs& fixed, std::size_t k, std::size_t r) {
        ball t;
        arb_set_arf(t.v, m.v);
        segment_point(w_, delta_, t.v, theta_, prec_);
        pass f;
        forward(n_, theta_.data(), nullptr, x_, fixed, f, prec_);
        if (arb_is_positive(f.h[k][r])) return 1;
        if (arb_is_negative(f.h[k][r])) return -1;
        return 0;
    }

    // Interval Newton for the root of z = (input of op k)[r] on [a, b], every other unit's
    // sign fixed: R ← R ∩ (m − z(m)/ż(R)).  Returns 1 with the root enclosed in R, 0 when
    // [a, b] has no root, −1 when ż(R) contains 0.
    int newton(const point& a, const point& b, const signs& fixed, std::size_t k, std::size_t r, ball& R) {
        interval(a, b, R);
        ball N, zm, q, t;
        pass f;
        for (int it = 0; it < 4 * 64 + prec_; ++it) {
            segment_point(w_, delta_, R.v, theta_, prec_);
            forward(n_, theta_.data(), delta_.data(), x_, fixed, f, prec_);
            ball zdot;
            arb_set(zdot.v, f.hd[k][r]);
            if (arb_contains_zero(zdot.v)) return -1;
            arb_get_mid_arb(t.v, R.v);
            segment_point(w_, delta_, t.v, theta_, prec_);
            forward(n_, theta_.data(), nullptr, x_, fixed, f, prec_);
            arb_set(zm.v, f.h[k][r]);
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
    void integrate_smooth(const point& a, const point& b, int depth) {
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
        const bool real_bounded = jacobian_bound(box.v, Mreal);
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
            if (!jacobian_bound(box.v, M)) break;
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
            integrate_smooth(a, m, depth + 1);
            integrate_smooth(m, b, depth + 1);
            return;
        }
        gauss(a, b, no_signs(n_), rules_.get(best_n, prec_));
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
    bool jacobian_bound(acb_srcptr box, std::vector<point>& M) {
        const std::size_t K = n_.ops.size();
        acb_vec theta(n_.P);
        for (std::size_t p = 0; p < n_.P; ++p) {
            acb_set_arb(theta[p], w_[p]);
            acb_addmul_arb(theta[p], box, delta_[p], prec_);
        }
        std::vector<acb_vec> h(K + 1);
        h[0] = acb_vec(x_.size());
        for (std::size_t e = 0; e < x_.size(); ++e) acb_set_arb(h[0][e], x_[e]);
        bool ok = true;
        for (std::size_t k = 0; k < K && ok; ++k) {
            const op& o = n_.ops[k];
            if (o.linear) {
                h[k + 1] = acb_vec(o.out);
                for (std::size_t r = 0; r < o.out; ++r)
                    acb_dot(h[k + 1][r], o.has_bias ? theta[o.bias + r] : nullptr, 0, theta[o.weight + r * o.in], 1, h[k][0], 1,
                            static_cast<slong>(o.in), prec_);
            } else {
                h[k + 1] = acb_vec(h[k].size());
                for (std::size_t e = 0; e < h[k].size(); ++e) {
                    if (o.smooth) ok = smooth_value(o.kind, h[k + 1][e], h[k][e], prec_) && acb_is_finite(h[k + 1][e]) && ok;
                    else acb_set(h[k + 1][e], h[k][e]);
                }
            }
        }
        arf_t u;
        arf_init(u);
        acb_t q;
        acb_init(q);
        for (std::size_t c = 0; c < n_.C && ok; ++c) {
            arf_zero(M[c].v);
            acb_vec delta(n_.C);
            acb_one(delta[c]);
            for (std::size_t k = K; k-- > 0 && ok;) {
                const op& o = n_.ops[k];
                if (o.linear) {
                    for (std::size_t r = 0; r < o.out; ++r) {
                        for (std::size_t j = 0; j < o.in; ++j) {
                            acb_mul(q, delta[r], h[k][j], prec_);
                            acb_get_abs_ubound_arf(u, q, prec_);
                            if (!arf_is_finite(u)) ok = false;  // NaN too: arf_max would skip it
                            arf_max(M[c].v, M[c].v, u);
                        }
                        if (o.has_bias) {
                            acb_get_abs_ubound_arf(u, delta[r], prec_);
                            if (!arf_is_finite(u)) ok = false;
                            arf_max(M[c].v, M[c].v, u);
                        }
                    }
                    if (k == 0) break;
                    acb_vec prev(o.in);
                    for (std::size_t j = 0; j < o.in; ++j)
                        acb_dot(prev[j], nullptr, 0, theta[o.weight + j], static_cast<slong>(o.in), delta[0], 1,
                                static_cast<slong>(o.out), prec_);
                    delta = std::move(prev);
                } else if (o.smooth) {
                    for (std::size_t e = 0; e < delta.size(); ++e) {
                        ok = smooth_derivative(o.kind, q, h[k][e], prec_) && acb_is_finite(q) && ok;
                        acb_mul(delta[e], delta[e], q, prec_);
                    }
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
    const balls &w_, &delta_, &x_;
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
pass exact_pass(const net& n, const balls& theta, const balls& x, slong prec, const std::string& what) {
    pass f;
    forward(n, theta.data(), nullptr, x, no_signs(n), f, prec);
    if (!f.undecided.empty())
        throw not_certifiable(what + ": the sign of the pre-activation of layers[" + std::to_string(f.undecided[0].first) +
                              "] unit " + std::to_string(f.undecided[0].second) + " is not decided at " +
                              std::to_string(prec) + " bits (its enclosure contains 0 and is not 0)");
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
        // A replayed trace: the binary64 path epk's trainer takes (as `epk train` / `verify`).
        const trace path = rep.recorded_path ? tr : replay_trace(tr, parse_precision("double"));
        rep.path_note = rep.recorded_path ? "recorded path (params.npy rows taken as exact binary64 numbers)"
                                          : "replayed in binary64 by epk's trainer; that path's rows certified as exact";
        const sgd_schedule sch = detail::make_schedule(path);
        const ball_gauss g = make_gauss(std::max<std::size_t>(1, (n.linear_layers + 1) / 2), prec);
        gauss_cache rules;  // smooth networks: rules of the sizes their bounds ask for
        ball_optimizer opt(path, n.P, o.contributions, prec);

        std::vector<balls> x_test(M);
        for (std::size_t m = 0; m < M; ++m)
            x_test[m] = exact_balls(tr.x_test ? real_rows(*tr.x_test, m, 1) : real_rows(tr.x_train, m, 1));
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

        balls w = exact_balls(real_rows(*path.params, 0, 1));
        const balls w0 = w;
        for (std::size_t s = 0; s < S; ++s) {
            const balls next = exact_balls(real_rows(*path.params, s + 1, 1));
            balls delta(n.P);
            for (std::size_t p = 0; p < n.P; ++p) arb_sub(delta[p], next[p], w[p], prec);  // exact unless the exponents are far apart; else an enclosure
            // The training side: ĝ_i = J(x_i; w_s)ᵀ ρ∂ℓ/∂f, the optimizer's shares φ_i and its own
            // term ω (007), U = Σ_i φ_i, r = Δ − U − ω.
            std::vector<std::size_t> batch = sch.batch(s);
            if (batch.empty())
                for (std::size_t i = 0; i < N; ++i) batch.push_back(i);
            std::vector<std::pair<std::size_t, balls>> grads;
            for (const std::size_t i : batch) {
                const balls xi = exact_balls(real_rows(tr.x_train, i, 1));
                const pass f = exact_pass(n, w, xi, prec, "step " + std::to_string(s) + ", training point " + std::to_string(i));
                balls gi(n.P);
                gi.zero();
                reverse(n, w.data(), f, loss_gradient(tr.loss, f.h.back(), tr, i, batch.size(), prec), gi.data(), prec);
                grads.emplace_back(i, std::move(gi));
            }
            balls omega;
            const std::vector<std::pair<std::size_t, balls>> shares = opt.step(grads, w, sch.learning_rates[s], omega);
            grads.clear();
            balls U(n.P), r(n.P);
            for (const auto& sh : shares) _arb_vec_add(U.data(), U.data(), sh.second.data(), static_cast<slong>(n.P), prec);
            _arb_vec_sub(r.data(), delta.data(), U.data(), static_cast<slong>(n.P), prec);
            _arb_vec_sub(r.data(), r.data(), omega.data(), static_cast<slong>(n.P), prec);
            std::vector<double> amag(n.P);  // |Δ| + Σ_i |φ_i| + |ω| + |r| (007 §3's a_s): the terms' scale
            for (std::size_t p = 0; p < n.P; ++p) {
                double a = std::abs(arf_get_d(arb_midref(delta[p]), ARF_RND_NEAR)) +
                           std::abs(arf_get_d(arb_midref(omega[p]), ARF_RND_NEAR)) +
                           std::abs(arf_get_d(arb_midref(r[p]), ARF_RND_NEAR));
                for (const auto& sh : shares) a += std::abs(arf_get_d(arb_midref(sh.second[p]), ARF_RND_NEAR));
                amag[p] = a;
            }
            for_points([&](std::size_t m) {
                if (s == 0) out0[m] = balls(exact_pass(n, w0, x_test[m], prec, "f(x; w[0])").h.back());
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
                if (s + 1 == S) outS[m] = balls(exact_pass(n, next, x_test[m], prec, "f(x; w[S])").h.back());
            });
            w = next;
            if (progress) progress(s + 1, S);
        }
        if (S == 0)
            for (std::size_t m = 0; m < M; ++m) {
                out0[m] = balls(exact_pass(n, w0, x_test[m], prec, "f(x; w[0])").h.back());
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

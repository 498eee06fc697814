// epk/tree_segment.hpp — what the exact path kernel needs of a tree model (layer_tree.hpp)
// along one training step w + tΔ, t ∈ [0, 1]: the pieces on which it is polynomial, the
// Jacobian at the quadrature nodes, and the magnitudes of the rounding budget.
// segment.hpp and path_kernel.hpp call these for every model that is not a plain MLP.
//
// 1. Switching nodes.  relu, leaky_relu and max_pool2d are piecewise linear: between the
//    zeros of their switching functions — a relu's input entries; a max pool's pairwise
//    differences h_i − h_j within each window (the window's whole order, hence its first
//    maximiser, is fixed between them) — the network's values are polynomials in t.
//    Every other node is linear in its input for fixed parameters (linear, conv2d, avg
//    pool, flatten, identity, residual sums) or analytic (tanh, sigmoid, softplus, gelu,
//    layer_norm: "smooth").  Switching nodes are taken in pre-order (a residual's body
//    before its shortcut), a topological order of the tree.
// 2. Polynomial propagation (`switching_polynomials`): on a piece t = a + len·u, the
//    Taylor coefficients in u of every value up to a switching node, with the patterns
//    of the switching nodes before it read at u = 1/2.  A bilinear node (linear, conv2d)
//    maps coefficient rows H_k by
//        Z_k = A(w)H_k + a·A(Δ)H_k + len·A(Δ)H_{k−1},  + b + a·Δb at k = 0, + len·Δb at k = 1,
//    where A(v) is the node's linear map with parameters v (its unit's apply without bias).
// 3. The cuts of a piecewise-polynomial prefix are the roots of those polynomials
//    (quadrature.hpp), found node by node on ever finer pieces, as segment.hpp does for
//    MLPs; switching nodes after the first smooth node are found by sampling (`probe`).
// 4. Degree: J is a polynomial of degree ≤ D − 1 on a piece, D the largest number of
//    bilinear nodes on a path from input to output (a residual: the larger branch).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <vector>

#include "epk/bilinear.hpp"
#include "epk/layer_tree.hpp"
#include "epk/quadrature.hpp"

namespace epk::tree_segment {

inline bool is_switching(layer_kind k) {
    return k == layer_kind::relu || k == layer_kind::leaky_relu || k == layer_kind::max_pool2d;
}
inline bool is_smooth(layer_kind k) {
    return k == layer_kind::tanh || k == layer_kind::sigmoid || k == layer_kind::softplus || k == layer_kind::gelu ||
           k == layer_kind::layer_norm || k == layer_kind::self_attention;
}
// The smooth elementwise activations (their bends are level-crossing targets; layer norm's
// and attention's nonlinearity is left to the adaptive rule).
inline bool is_smooth_activation(layer_kind k) { return is_smooth(k) && k != layer_kind::layer_norm && k != layer_kind::self_attention; }

// The tree with its nodes in pre-order and what the quadrature needs of them.
struct analysis {
    layer_tree tree;
    std::vector<const tree_node*> nodes;      // pre-order
    std::vector<std::size_t> switching;       // indices into nodes
    std::size_t first_smooth = 0;             // index into nodes (nodes.size() if none)
    std::size_t degree = 0;                   // D
    double chain = 0;                         // longest chain of roundings of a J entry (budget's γ)
    double tolerance = 16;                    // τ of the adaptive rule
};

namespace detail {
inline std::size_t sequence_degree(const std::vector<tree_node>& seq) {
    std::size_t d = 0;
    for (const tree_node& n : seq) {
        // bilinear nodes, and the embeddings (affine in their parameters: a polynomial value of degree ≥ 1)
        if (n.spec.kind == layer_kind::linear || n.spec.kind == layer_kind::conv2d || n.spec.kind == layer_kind::embedding ||
            n.spec.kind == layer_kind::positional_embedding)
            ++d;
        if (n.spec.kind == layer_kind::self_attention) d += 4;  // projections, scores, values (smooth: adaptive rule)
        if (n.spec.kind == layer_kind::residual) d += std::max(sequence_degree(n.body), sequence_degree(n.shortcut));
    }
    return d;
}
}  // namespace detail

inline analysis analyse(const model_spec& m) {
    analysis a;
    a.tree = compile_tree(m);
    a.nodes = tree_nodes(a.tree);
    a.first_smooth = a.nodes.size();
    for (std::size_t k = 0; k < a.nodes.size(); ++k) {
        const tree_node& n = *a.nodes[k];
        if (is_switching(n.spec.kind)) a.switching.push_back(k);
        if (is_smooth(n.spec.kind) && a.first_smooth == a.nodes.size()) a.first_smooth = k;
        // γ: every rounded sum a J entry or an output passes through (proofs-notes/008 §3)
        switch (n.spec.kind) {
            case layer_kind::linear:
            case layer_kind::conv2d:
                a.chain += static_cast<double>(n.in_size + n.out_size + n.count / std::max<std::size_t>(1, n.spec.out_features));
                break;
            case layer_kind::avg_pool2d: a.chain += static_cast<double>(n.spec.kernel[0] * n.spec.kernel[1] + 2); break;
            case layer_kind::layer_norm: a.chain += static_cast<double>(2 * n.norm().n + 16); break;
            case layer_kind::residual: a.chain += 1; break;
            case layer_kind::embedding: a.chain += static_cast<double>(n.in_shape[0]); break;  // ∂W sums repeated tokens
            case layer_kind::positional_embedding: a.chain += 1; break;
            case layer_kind::select: break;
            case layer_kind::mean_tokens: a.chain += static_cast<double>(n.in_shape[0] + 2); break;
            case layer_kind::self_attention: {
                // both projections as linear nodes, then √d_h and the division, the scores (d_h),
                // softmax (subtraction, exp, a sum of T, a division), p·V (T), and the reverse
                // sweep's sums over keys and queries (dp, c, dq̃, dk, dv)
                const auto g = n.attention();
                a.chain += static_cast<double>(6 * g.T * g.D + 2 * g.D + 6 * g.T + 2 * g.dh() + 32);
                break;
            }
            case layer_kind::flatten: case layer_kind::max_pool2d: break;
            default: a.chain += 10; break;
        }
    }
    a.degree = detail::sequence_degree(a.tree.layers);
    a.tolerance = 16 + a.chain;
    return a;
}

// ---------------------------------------------------------------- polynomials

namespace detail {

// Coefficients of a value on a piece: row k = coefficient of u^k, one column per entry.
template <Real T>
using poly = matrix<T>;

template <Real T>
std::vector<T> at_half(const poly<T>& h) {
    std::vector<T> out(h.cols), c(h.rows);
    const T half = T(1) / T(2);
    for (std::size_t j = 0; j < h.cols; ++j) {
        for (std::size_t k = 0; k < h.rows; ++k) c[k] = h(k, j);
        out[j] = horner<T>(std::span<const T>(c), half);
    }
    return out;
}

struct target_reached {};  // unwinds the walk once the target node's input is known

template <Real T>
struct poly_walk {
    std::span<const T> w, delta;
    T a, len;
    const tree_node* target;
    poly<T> found;

    // Z = A(w)H + a·A(Δ)H + len·A(Δ)H shifted, plus the bias terms; A(·)H for all the
    // coefficient rows at once as products (bilinear.hpp).
    poly<T> bilinear(const tree_node& n, const poly<T>& h) {
        const std::size_t deg = h.rows;
        const bilinear::bilinear_shape s = bilinear::shape_of(n);
        const std::size_t Q = deg * s.pos;
        matrix<T> zw, zd;  // conv [O × (k, p)], linear [(k, p) × O]
        if (s.conv) {
            const matrix<T> XT = bilinear::patches_t(s, h);
            zw = matrix<T>(s.O, Q);
            zd = matrix<T>(s.O, Q);
            bilinear::conv_products<T>(s, XT, 0, Q, w.data() + n.offset, zw.data.data(), Q, nullptr);
            bilinear::conv_products<T>(s, XT, 0, Q, delta.data() + n.offset, zd.data.data(), Q, nullptr);
        } else {
            zw = bilinear::linear_products<T>(s, h.data.data(), Q, w.data() + n.offset, nullptr);
            zd = bilinear::linear_products<T>(s, h.data.data(), Q, delta.data() + n.offset, nullptr);
        }
        auto at = [&](const matrix<T>& z, std::size_t k, std::size_t p, std::size_t o) -> const T& {
            return s.conv ? z(o, k * s.pos + p) : z(k * s.pos + p, o);
        };
        poly<T> z(deg + 1, n.out_size);
        for (std::size_t k = 0; k < deg; ++k)
            for (std::size_t p = 0; p < s.pos; ++p)
                for (std::size_t o = 0; o < s.O; ++o) {
                    const std::size_t e = s.out_index(o, p);
                    const T& dh = at(zd, k, p, o);
                    T acc = at(zw, k, p, o);
                    add_product(acc, a, dh);
                    z(k, e) += acc;
                    add_product(z(k + 1, e), len, dh);
                }
        if (s.bias) {
            const std::size_t at = n.offset + s.weight_count;  // the bias follows the weight
            for (std::size_t p = 0; p < s.pos; ++p)
                for (std::size_t o = 0; o < s.O; ++o) {
                    const std::size_t e = s.out_index(o, p);
                    T b0 = w[at + o];
                    add_product(b0, a, delta[at + o]);
                    z(0, e) += b0;
                    add_product(z(1, e), len, delta[at + o]);
                }
        }
        return z;
    }

    poly<T> sequence(const std::vector<tree_node>& seq, poly<T> h) {
        for (const tree_node& n : seq) h = node(n, h);
        return h;
    }

    poly<T> node(const tree_node& n, const poly<T>& h) {
        if (&n == target) {
            found = h;
            throw target_reached{};
        }
        switch (n.spec.kind) {
            case layer_kind::linear:
            case layer_kind::conv2d: return bilinear(n, h);
            case layer_kind::avg_pool2d: {
                poly<T> z(h.rows, n.out_size);
                for (std::size_t k = 0; k < h.rows; ++k) layers::avg_pool_apply<T>(n.pool(), &h(k, 0), &z(k, 0));
                return z;
            }
            case layer_kind::max_pool2d: {
                // the pattern of the piece: the first maximiser at u = 1/2
                const std::vector<T> mid = at_half(h);
                std::vector<std::size_t> arg(n.out_size);
                layers::max_pool_argmax<T>(n.pool(), mid.data(), arg.data());
                poly<T> z(h.rows, n.out_size);
                for (std::size_t k = 0; k < h.rows; ++k)
                    for (std::size_t e = 0; e < n.out_size; ++e) z(k, e) = h(k, arg[e]);
                return z;
            }
            case layer_kind::relu:
            case layer_kind::leaky_relu:
            case layer_kind::identity: {
                // on the piece each unit is on one side of its kink: h = slope · z
                const activation<T> act(n.spec);
                const std::vector<T> mid = at_half(h);
                poly<T> z = h;
                for (std::size_t j = 0; j < h.cols; ++j) {
                    const T sl = act.derivative(mid[j]);
                    for (std::size_t k = 0; k < h.rows; ++k) z(k, j) = sl * z(k, j);
                }
                return z;
            }
            case layer_kind::flatten: return h;
            case layer_kind::embedding: {
                // W[id] + (a + len·u)·Δ[id]: the ids are the constant row of h
                const layers::sequence_geometry g = n.sequence();
                poly<T> z(2, n.out_size);
                std::vector<T> zw(n.out_size), zd(n.out_size);
                layers::embedding_forward<T>(g, w.data() + n.offset, &h(0, 0), zw.data());
                layers::embedding_forward<T>(g, delta.data() + n.offset, &h(0, 0), zd.data());
                for (std::size_t e = 0; e < n.out_size; ++e) {
                    T z0 = zw[e];
                    add_product(z0, a, zd[e]);
                    z(0, e) = z0;
                    z(1, e) = len * zd[e];
                }
                return z;
            }
            case layer_kind::positional_embedding: {
                poly<T> z(std::max<std::size_t>(h.rows, 2), n.out_size);
                for (std::size_t k = 0; k < h.rows; ++k)
                    for (std::size_t e = 0; e < n.out_size; ++e) z(k, e) = h(k, e);
                for (std::size_t e = 0; e < n.out_size; ++e) {
                    T p0 = w[n.offset + e];
                    add_product(p0, a, delta[n.offset + e]);
                    z(0, e) += p0;
                    add_product(z(1, e), len, delta[n.offset + e]);
                }
                return z;
            }
            case layer_kind::select:
            case layer_kind::mean_tokens: {
                poly<T> z(h.rows, n.out_size);
                for (std::size_t k = 0; k < h.rows; ++k) {
                    if (n.spec.kind == layer_kind::select) layers::select_apply<T>(n.sequence(), &h(k, 0), &z(k, 0));
                    else layers::mean_tokens_apply<T>(n.sequence(), &h(k, 0), &z(k, 0));
                }
                return z;
            }
            case layer_kind::residual: {
                const poly<T> b = sequence(n.body, h), s = sequence(n.shortcut, h);
                poly<T> z(std::max(b.rows, s.rows), n.out_size);
                for (std::size_t k = 0; k < z.rows; ++k)
                    for (std::size_t e = 0; e < n.out_size; ++e) {
                        if (k < b.rows && k < s.rows) z(k, e) = b(k, e) + s(k, e);
                        else z(k, e) = k < b.rows ? b(k, e) : s(k, e);
                    }
                return z;
            }
            default: throw usage_error("switching_polynomials: a smooth layer (" + n.path + ") before the target");
        }
    }
};

}  // namespace detail

// The switching functions of node `target` (a relu / leaky_relu / max_pool2d reached before
// any smooth node) on the piece t = a + len·u, as polynomials in u (coefficients ascending):
// its input entries (relu), or the pairwise differences within each window (max pool).
template <Real T>
std::vector<std::vector<T>> switching_polynomials(const analysis& an, std::span<const T> w, std::span<const T> delta,
                                                  const T& a, const T& len, std::span<const T> x,
                                                  const tree_node& target) {
    detail::poly_walk<T> walk{w, delta, a, len, &target, {}};
    detail::poly<T> h(1, x.size());
    for (std::size_t j = 0; j < x.size(); ++j) h(0, j) = x[j];
    try {
        walk.sequence(an.tree.layers, h);
    } catch (const detail::target_reached&) {
    }
    const detail::poly<T>& in = walk.found;
    std::vector<std::vector<T>> out;
    const auto column = [&](std::size_t j) {
        std::vector<T> c(in.rows);
        for (std::size_t k = 0; k < in.rows; ++k) c[k] = in(k, j);
        return c;
    };
    if (target.spec.kind != layer_kind::max_pool2d) {
        for (std::size_t j = 0; j < in.cols; ++j) out.push_back(column(j));
        return out;
    }
    layers::window_pairs(target.pool(), [&](std::size_t i, std::size_t j) {
        std::vector<T> d(in.rows);
        for (std::size_t k = 0; k < in.rows; ++k) d[k] = in(k, i) - in(k, j);
        out.push_back(std::move(d));
    });
    return out;
}

// ---------------------------------------------------------------- magnitudes (binary64)

// One pass from the input carrying, per entry, the value h, its forward error magnitude M
// (proofs-notes/008 §2: M_x = 0; bilinear M_z = |A|(M_h + |h|) + |b|; activations
// M = |σ′(z)|M_z + |σ(z)|; max pool the maximiser's M; avg pool Σ(M + |h|)/k²; residual
// M_b + M_s + |b| + |s|; layer norm the bound of §2.4), and — when `a` is given — the
// magnitude tangent τ = Σ_p |J|_mag[·][p]·a_p: bilinear τ_z = |A(w)|τ_h + |A(a)|(M_h + |h|)
// + a_b, activations |σ′(z)|τ, max pool the maximiser's, avg pool its average, layer norm
// ρ|γ|(τ + mean τ + |x̂| mean(|x̂|τ)) + |x̂| a_γ + a_β.
// With `a`, also t = Σ_p |J|[·][p]·a_p, the tangent's own magnitude (every rule above without
// the M terms): τ ≥ t, and τ − t is the part the forward errors add.  Attention's τ needs t
// (its products of two computed values: error × tangent, proofs-notes/012 §3), and the smooth
// ladder compares its rules against t (structured_tree.hpp).
struct magnitude_pass {
    std::vector<double> h, m, tau, t;
};

namespace detail {
// One sample's layer norm (§2.4): M and, when tau is given, τ of the outputs from the input
// x with its M (mx) and τ, the outputs y, and bounds par ≥ |γ| (then ≥ |β|) and the
// parameters' tangent magnitudes a_par (γ's, then β's; nullptr without τ).  The rounding of
// the group statistics themselves, (n+8)·(|x̂_j| + ρ·mean|x|)·u, is folded into γ (chain 2n + 16).
inline void layer_norm_magnitude(const layers::norm_geometry& g, const double* par, const double* a_par,
                                 const double* xin, const double* min, const double* tauin, const double* yout,
                                 double* mout, double* tauout) {
    std::vector<double> xhat(g.n);
    const double nn = static_cast<double>(g.n);
    for (std::size_t q = 0; q < g.groups; ++q) {
        const double* x = xin + q * g.n;
        const double* mx = min + q * g.n;
        const double rho = layers::normalise_group<double>(g, x, xhat.data());
        // |x̂_j err| ≤ ρ(M_j + mean M) + |x̂_j| ρ² mean((M + |d|)|d|)·2 + the u-terms above.
        double mean_m = 0, cross = 0, mean_abs = 0;
        for (std::size_t j = 0; j < g.n; ++j) {
            const double d = xhat[j] / rho;
            mean_m += mx[j];
            cross += (mx[j] + std::abs(x[j])) * std::abs(d);
            mean_abs += std::abs(x[j]);
        }
        mean_m /= nn;
        cross /= nn;
        mean_abs /= nn;
        double mean_tau = 0, mean_xtau = 0;
        if (tauout != nullptr) {
            for (std::size_t j = 0; j < g.n; ++j) {
                mean_tau += tauin[q * g.n + j];
                mean_xtau += std::abs(xhat[j]) * tauin[q * g.n + j];
            }
            mean_tau /= nn;
            mean_xtau /= nn;
        }
        for (std::size_t j = 0; j < g.n; ++j) {
            const double gam = g.affine ? par[j] : 1.0, bet = (g.affine && g.bias) ? par[g.n + j] : 0.0;
            const double mxh = rho * (mx[j] + mean_m + std::abs(x[j]) + mean_abs) +
                               std::abs(xhat[j]) * (2 * rho * rho * cross + 1);
            mout[q * g.n + j] = gam * mxh + bet + std::abs(yout[q * g.n + j]);
            if (tauout != nullptr) {
                double t = gam * rho * (tauin[q * g.n + j] + mean_tau + std::abs(xhat[j]) * mean_xtau);
                if (g.affine) {
                    t += std::abs(xhat[j]) * a_par[j];
                    if (g.bias) t += a_par[g.n + j];
                }
                tauout[q * g.n + j] = t;
            }
        }
    }
}

// The bilinear rule (008 §3) for z = A(θ)h + b, apply(p, x, z, bias) being A with parameters p:
// M = |A|(M_h + |h|) + |b|; with `ap` (the parameters' tangent magnitudes), τ = |A|τ_h +
// |A(a)|(M_h + |h|) + a_b and t = |A|t_h + |A(a)||h| + a_b.  `aw` = |θ|; out's vectors are sized.
template <class Apply>
void bilinear_magnitude(Apply&& apply, const double* wp, const double* aw, const double* ap, const magnitude_pass& in,
                        magnitude_pass& out) {
    const std::size_t n = in.h.size(), N = out.h.size();
    std::vector<double> mh(n), ah(n);
    for (std::size_t e = 0; e < n; ++e) {
        ah[e] = std::abs(in.h[e]);
        mh[e] = in.m[e] + ah[e];
    }
    apply(wp, in.h.data(), out.h.data(), true);
    apply(aw, mh.data(), out.m.data(), true);
    if (ap == nullptr) return;
    std::vector<double> t1(N), t2(N);
    apply(aw, in.tau.data(), t1.data(), false);
    apply(ap, mh.data(), t2.data(), true);
    for (std::size_t e = 0; e < N; ++e) out.tau[e] = t1[e] + t2[e];
    apply(aw, in.t.data(), t1.data(), false);
    apply(ap, ah.data(), t2.data(), true);
    for (std::size_t e = 0; e < N; ++e) out.t[e] = t1[e] + t2[e];
}

// One sample's self-attention (proofs-notes/012 §3): M and, when `ap` is given (the layer's
// parameter tangent magnitudes), τ and t of the outputs, from the input's h, M, τ, t.  Every
// step is first order in the errors: a product of computed values xy adds M_x|y| + |x|M_y +
// |xy| to M and, for its tangent dx·y + x·dy, τ_x|y| + M_x t_y + t_x M_y + |x|τ_y to τ
// (τ ≥ t covers the products' own roundings); softmax p_j = e_j/Σ with y = s − max:
// M_y = M_s + M_{s_max} + |y|, e = exp(y) with M_e = e(M_y + 1), M_Σ = Σ(M_e + e),
// M_p = p(M_y + 1 + M_Σ/Σ + 1); its tangent dp_j = p_j(ds_j − Σ_k p_k ds_k) gives
// t_p = p(t_s + Σ p t_s) and τ_p = p(τ_s + Σ p τ_s) + M_p(t_s + Σ p t_s) + p Σ M_p t_s.
inline void attention_magnitude(const layers::attention_geometry& g, const double* wp, const double* ap,
                                const magnitude_pass& in, magnitude_pass& out) {
    const std::size_t T = g.T, D = g.D, dh = g.dh(), D3 = 3 * D;
    const bool tan = ap != nullptr;
    std::vector<double> aw(g.count());
    for (std::size_t e = 0; e < aw.size(); ++e) aw[e] = std::abs(wp[e]);
    // The projections: linear nodes (bilinear_magnitude).
    const auto project = [&](const layers::linear_geometry& lg, std::size_t off, const magnitude_pass& x) {
        const std::size_t o = lg.rows * lg.out;
        magnitude_pass z{std::vector<double>(o), std::vector<double>(o), std::vector<double>(tan ? o : 0),
                         std::vector<double>(tan ? o : 0)};
        const auto apply = [&](const double* p, const double* v, double* r, bool bias) {
            layers::linear_apply<double>(lg, p, v, r, bias);
        };
        bilinear_magnitude(apply, wp + off, aw.data() + off, tan ? ap + off : nullptr, x, z);
        return z;
    };
    magnitude_pass pq = project(g.in_proj(), 0, in);  // [Q K V]: value, M, τ, t
    std::vector<double>& qkv = pq.h;
    std::vector<double>& mq = pq.m;
    std::vector<double>& tq = pq.tau;
    std::vector<double>& uq = pq.t;
    const double root = std::sqrt(static_cast<double>(dh));
    for (std::size_t i = 0; i < T; ++i)
        for (std::size_t d = 0; d < D; ++d) {  // q̃ = q/√d_h: two roundings (the root's and the division's)
            const std::size_t e = i * D3 + d;
            qkv[e] /= root;
            mq[e] = mq[e] / root + 2 * std::abs(qkv[e]);
            if (tan) {
                tq[e] /= root;
                uq[e] /= root;
            }
        }
    std::vector<double> o(T * D, 0.0), mo(T * D, 0.0), to(T * D, 0.0), uo(T * D, 0.0);
    std::vector<double> sv(T), ms(T), ts(T), us(T), p(T), mp(T), tp(T), up(T);
    for (std::size_t h = 0; h < g.H; ++h) {
        const std::size_t c0 = h * dh;
        for (std::size_t i = 0; i < T; ++i) {
            const std::size_t nk = g.keys(i);
            for (std::size_t j = 0; j < nk; ++j) {
                double acc = 0, macc = 0, tacc = 0, uacc = 0;
                for (std::size_t d = 0; d < dh; ++d) {
                    const std::size_t qe = i * D3 + c0 + d, ke = j * D3 + D + c0 + d;
                    const double q = qkv[qe], k = qkv[ke], aq = std::abs(q), ak = std::abs(k);
                    acc += q * k;
                    macc += mq[qe] * ak + aq * mq[ke] + aq * ak;
                    if (tan) {
                        tacc += tq[qe] * ak + mq[qe] * uq[ke] + uq[qe] * mq[ke] + aq * tq[ke];
                        uacc += uq[qe] * ak + aq * uq[ke];
                    }
                }
                sv[j] = acc;
                ms[j] = macc;
                ts[j] = tacc;
                us[j] = uacc;
            }
            std::size_t am = 0;
            for (std::size_t j = 1; j < nk; ++j)
                if (sv[am] < sv[j]) am = j;
            double sum = 0, msum = 0;
            for (std::size_t j = 0; j < nk; ++j) {
                const double y = sv[j] - sv[am];
                p[j] = std::exp(y);
                mp[j] = ms[j] + ms[am] + std::abs(y) + 1;  // M_e / e
                sum += p[j];
                msum += p[j] * mp[j] + p[j];
            }
            double sp_t = 0, sp_tau = 0, sm_t = 0;  // Σ p t_s, Σ p τ_s, Σ M_p t_s
            for (std::size_t j = 0; j < nk; ++j) {
                p[j] /= sum;
                mp[j] = p[j] * (mp[j] + msum / sum + 1);
                sp_t += p[j] * us[j];
                sp_tau += p[j] * ts[j];
                sm_t += mp[j] * us[j];
            }
            if (tan)
                for (std::size_t j = 0; j < nk; ++j) {
                    up[j] = p[j] * (us[j] + sp_t);
                    tp[j] = p[j] * (ts[j] + sp_tau) + mp[j] * (us[j] + sp_t) + p[j] * sm_t;
                }
            for (std::size_t d = 0; d < dh; ++d) {
                double acc = 0, macc = 0, tacc = 0, uacc = 0;
                for (std::size_t j = 0; j < nk; ++j) {
                    const std::size_t ve = j * D3 + 2 * D + c0 + d;
                    const double v = qkv[ve], av = std::abs(v);
                    acc += p[j] * v;
                    macc += mp[j] * av + p[j] * mq[ve] + p[j] * av;
                    if (tan) {
                        tacc += tp[j] * av + up[j] * mq[ve] + mp[j] * uq[ve] + p[j] * tq[ve];
                        uacc += up[j] * av + p[j] * uq[ve];
                    }
                }
                o[i * D + c0 + d] = acc;
                mo[i * D + c0 + d] = macc;
                to[i * D + c0 + d] = tacc;
                uo[i * D + c0 + d] = uacc;
            }
        }
    }
    magnitude_pass py = project(g.out_proj(), g.out_offset(), magnitude_pass{o, mo, to, uo});
    out.h = std::move(py.h);
    out.m = std::move(py.m);
    if (tan) {
        out.tau = std::move(py.tau);
        out.t = std::move(py.t);
    }
}

inline magnitude_pass magnitude_node(const tree_node& n, std::span<const double> w, const double* a,
                                     const magnitude_pass& in);

inline magnitude_pass magnitude_sequence(const std::vector<tree_node>& seq, std::span<const double> w, const double* a,
                                         magnitude_pass v) {
    for (const tree_node& n : seq) v = magnitude_node(n, w, a, v);
    return v;
}

inline magnitude_pass magnitude_node(const tree_node& n, std::span<const double> w, const double* a,
                                     const magnitude_pass& in) {
    magnitude_pass out;
    const std::size_t N = n.out_size;
    out.h.assign(N, 0.0);
    out.m.assign(N, 0.0);
    if (a != nullptr) {
        out.tau.assign(N, 0.0);
        out.t.assign(N, 0.0);
    }
    const double* wp = w.data() + n.offset;
    auto absv = [](std::span<const double> v) {
        std::vector<double> r(v.size());
        for (std::size_t e = 0; e < v.size(); ++e) r[e] = std::abs(v[e]);
        return r;
    };
    switch (n.spec.kind) {
        case layer_kind::linear:
        case layer_kind::conv2d: {
            const bool lin = n.spec.kind == layer_kind::linear;
            auto apply = [&](const double* p, const double* x, double* z, bool bias) {
                if (lin) layers::linear_apply<double>(n.linear(), p, x, z, bias);
                else layers::conv_apply<double>(n.conv(), p, x, z, bias);
            };
            const std::vector<double> aw = absv(std::span<const double>(wp, n.count));
            bilinear_magnitude(apply, wp, aw.data(), a != nullptr ? a + n.offset : nullptr, in, out);
            return out;
        }
        case layer_kind::max_pool2d: {
            std::vector<std::size_t> arg(N);
            layers::max_pool_argmax<double>(n.pool(), in.h.data(), arg.data());
            for (std::size_t e = 0; e < N; ++e) {
                out.h[e] = in.h[arg[e]];
                out.m[e] = in.m[arg[e]];
                if (a != nullptr) {
                    out.tau[e] = in.tau[arg[e]];
                    out.t[e] = in.t[arg[e]];
                }
            }
            return out;
        }
        case layer_kind::avg_pool2d: {
            layers::avg_pool_apply<double>(n.pool(), in.h.data(), out.h.data());
            std::vector<double> mh(in.h.size());
            for (std::size_t e = 0; e < mh.size(); ++e) mh[e] = in.m[e] + std::abs(in.h[e]);
            layers::avg_pool_apply<double>(n.pool(), mh.data(), out.m.data());
            if (a != nullptr) {
                layers::avg_pool_apply<double>(n.pool(), in.tau.data(), out.tau.data());
                layers::avg_pool_apply<double>(n.pool(), in.t.data(), out.t.data());
            }
            return out;
        }
        case layer_kind::flatten: return in;
        case layer_kind::residual: {
            const magnitude_pass b = magnitude_sequence(n.body, w, a, in), s = magnitude_sequence(n.shortcut, w, a, in);
            for (std::size_t e = 0; e < N; ++e) {
                out.h[e] = b.h[e] + s.h[e];
                out.m[e] = b.m[e] + s.m[e] + std::abs(b.h[e]) + std::abs(s.h[e]);
                if (a != nullptr) {
                    out.tau[e] = b.tau[e] + s.tau[e];
                    out.t[e] = b.t[e] + s.t[e];
                }
            }
            return out;
        }
        case layer_kind::layer_norm: {
            const auto g = n.norm();
            layers::layer_norm_forward<double>(g, wp, in.h.data(), out.h.data());
            const std::vector<double> par = absv(std::span<const double>(wp, n.count));
            layer_norm_magnitude(g, par.data(), a != nullptr ? a + n.offset : nullptr, in.h.data(), in.m.data(),
                                 a != nullptr ? in.tau.data() : nullptr, out.h.data(), out.m.data(),
                                 a != nullptr ? out.tau.data() : nullptr);
            if (a != nullptr) {  // t: the same rule on t (it has no M terms); M computed again, unused
                std::vector<double> unused(N);
                layer_norm_magnitude(g, par.data(), a + n.offset, in.h.data(), in.m.data(), in.t.data(), out.h.data(),
                                     unused.data(), out.t.data());
            }
            return out;
        }
        case layer_kind::embedding: {  // a copy of W's rows: M = 0, τ = a_W[id]
            const layers::sequence_geometry g = n.sequence();
            layers::embedding_forward<double>(g, wp, in.h.data(), out.h.data());
            if (a != nullptr) {
                layers::embedding_forward<double>(g, a + n.offset, in.h.data(), out.tau.data());
                out.t = out.tau;
            }
            return out;
        }
        case layer_kind::positional_embedding:  // one sum: M_x + |x| + |P|, τ_x + a_P
            for (std::size_t e = 0; e < N; ++e) {
                out.h[e] = in.h[e] + wp[e];
                out.m[e] = in.m[e] + std::abs(in.h[e]) + std::abs(wp[e]);
                if (a != nullptr) {
                    out.tau[e] = in.tau[e] + a[n.offset + e];
                    out.t[e] = in.t[e] + a[n.offset + e];
                }
            }
            return out;
        case layer_kind::select: {
            const layers::sequence_geometry g = n.sequence();
            layers::select_apply<double>(g, in.h.data(), out.h.data());
            layers::select_apply<double>(g, in.m.data(), out.m.data());
            if (a != nullptr) {
                layers::select_apply<double>(g, in.tau.data(), out.tau.data());
                layers::select_apply<double>(g, in.t.data(), out.t.data());
            }
            return out;
        }
        case layer_kind::mean_tokens: {  // as an average pool: Σ(M + |h|)/T, τ averaged
            const layers::sequence_geometry g = n.sequence();
            layers::mean_tokens_apply<double>(g, in.h.data(), out.h.data());
            std::vector<double> mh(in.h.size());
            for (std::size_t e = 0; e < mh.size(); ++e) mh[e] = in.m[e] + std::abs(in.h[e]);
            layers::mean_tokens_apply<double>(g, mh.data(), out.m.data());
            if (a != nullptr) {
                layers::mean_tokens_apply<double>(g, in.tau.data(), out.tau.data());
                layers::mean_tokens_apply<double>(g, in.t.data(), out.t.data());
            }
            return out;
        }
        case layer_kind::self_attention:
            attention_magnitude(n.attention(), wp, a != nullptr ? a + n.offset : nullptr, in, out);
            return out;
        default: {  // activations
            const activation<double> act(n.spec);
            for (std::size_t e = 0; e < N; ++e) {
                const double z = in.h[e];
                const double s = std::abs(act.derivative(z));
                out.h[e] = act.value(z);
                out.m[e] = s * in.m[e] + std::abs(out.h[e]);
                if (a != nullptr) {
                    out.tau[e] = s * in.tau[e];
                    out.t[e] = s * in.t[e];
                }
            }
            return out;
        }
    }
}
}  // namespace detail

// M of the outputs at one input row (binary64).
inline std::vector<double> forward_magnitude(const analysis& an, std::span<const double> w, std::span<const double> x) {
    magnitude_pass v{{x.begin(), x.end()}, std::vector<double>(x.size(), 0.0), {}, {}};
    return detail::magnitude_sequence(an.tree.layers, w, nullptr, v).m;
}

// Σ_p |J|_mag(x; w)[c][p]·a_p for a ≥ 0 (binary64, C entries): τ; with `tangent`, also t.
inline std::vector<double> jacobian_magnitude(const analysis& an, std::span<const double> w, std::span<const double> x,
                                              std::span<const double> a, std::vector<double>* tangent = nullptr) {
    const std::vector<double> zero(x.size(), 0.0);
    magnitude_pass v{{x.begin(), x.end()}, zero, zero, zero};
    magnitude_pass out = detail::magnitude_sequence(an.tree.layers, w, a.data(), v);
    if (tangent != nullptr) *tangent = std::move(out.t);
    return std::move(out.tau);
}

}  // namespace epk::tree_segment

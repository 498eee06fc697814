// epk/segment.hpp — the test side of the exact path kernel: the integral of
// the Jacobian along one straight training step,
//
//     Ī(x) = ∫_0^1 J(x; w + tΔ) dt   ∈ R^{C × P},
//
// evaluated so that its quadrature error vanishes (piecewise-linear
// networks) or is below the working precision's unit roundoff times the
// integrand's scale (smooth networks).  proofs-notes/004.
//
// 1. Pieces.  Along the segment every value of a piecewise-linear network is
//    a polynomial in t between activation-pattern changes.  `segment_cuts`
//    finds those changes layer by layer: on a piece where the patterns of
//    layers < k are fixed, the input of activation layer k is a vector of
//    polynomials (its Taylor coefficients are propagated exactly through the
//    network, `segment_polynomials`); their sign changes in the piece are
//    its roots (quadrature.hpp), which cut it further for layer k+1.
//    From the first smooth layer on, values are not polynomial: zero
//    crossings of those layers' pre-activations are found by sampling with
//    slopes and bisection (`kink_samples` per piece; a heuristic,
//    proofs-notes/004 §4).  A relu crossing is a cut; a smooth activation's
//    crossing gets graded cuts t* ± 2^i/|φ′(t*)| so that a bend squeezed by a
//    large step is resolved by the pieces, not missed by the rules.
// 2. Rules.  Piecewise-linear networks: J is a polynomial of degree ≤ L−1 on
//    each piece (L linear layers), so Gauss–Legendre with ⌊L/2⌋+1 nodes is
//    exact; the rule with one more node is evaluated too and the difference
//    reported as the estimate (rounding only).  Otherwise: adaptive
//    Gauss–Legendre on each piece (sizes predicted from the measured
//    geometric convergence) until the difference of two successive rules is
//    ≤ τ·u·(piece length)·max|J|, bisecting the piece when max_nodes is not
//    enough.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include "epk/gemm.hpp"
#include "epk/network.hpp"
#include "epk/quadrature.hpp"
#include "epk/quadrature_options.hpp"
#include "epk/tree_segment.hpp"

namespace epk {


// How the network's structure lets a segment be integrated.
struct segment_structure {
    bool piecewise_linear = true;   // every activation relu / leaky_relu / identity
    std::size_t first_smooth = 0;   // index of the first smooth activation layer (layers.size() if none);
                                    // a tree model: of the first smooth node in pre-order (tree_segment.hpp)
    std::size_t exact_nodes = 1;    // ⌊L/2⌋+1: exact for degree ≤ L (J has degree ≤ L−1)
    double default_tolerance = 16;  // τ = max(16, Σ widths): the integrand's rounding floor, proofs-notes/004 §5
    bool kinks_behind_smooth = false;  // a relu / leaky relu / max pool after the first smooth layer
                                       // (found by sampling, 004 §4): the structured ladder is not used
};
segment_structure analyse_segment_structure(const model_spec& m);

// The integral over [0, 1] and how it was obtained.
template <Real T>
struct segment_integral {
    matrix<T> value;              // Ī, C × P
    std::vector<T> nodes;         // t of the accepted rules, all pieces, ascending
    std::vector<T> weights;       // their weights (sum 1)
    T error_estimate = T(0);      // Σ over pieces of max-entry |I_fine − I_coarse|
    T scale = T(0);               // max |J| entry over all evaluations
    std::size_t cuts = 0;         // breakpoints found in (0, 1)
    std::size_t evaluations = 0;  // Jacobians evaluated
    bool converged = true;        // every piece met its tolerance
    // Σ_q ω_q Σ_p |J|_mag(t_q)[c][p]·|Δ_p| (binary64, C entries): the rounding
    // scale of Ī·Δ, cancellation included (network.hpp, magnitude_factors).
    std::vector<double> magnitude;
};

namespace detail {

template <Real T>
std::vector<T> point_on_segment(std::span<const T> w, std::span<const T> dw, const T& t) {
    std::vector<T> out(w.size());
    for (std::size_t p = 0; p < w.size(); ++p) {
        out[p] = w[p];
        add_product(out[p], t, dw[p]);  // w + t·Δ, two roundings
    }
    return out;
}

}  // namespace detail

// Taylor coefficients in u of the value entering layer `upto`, on the piece
// t = a + len·u, u ∈ [0, 1], of the segment w + tΔ:  result[j][k] is the
// coefficient of u^k of unit j.  The activation pattern of each
// piecewise-linear layer before `upto` is taken at u = 1/2 (constant on the
// piece by construction).  Every layer before `upto` must be linear or
// piecewise linear.  A linear layer maps the coefficients H (one row per
// power of u) by
//   z(u) = (W + (a + len·u)ΔW) h(u) + b + (a + len·u)Δb:
//   [u^k] z = (W H)_k + a·(ΔW H)_k + len·(ΔW H)_{k−1}  (+ b + a·Δb at k = 0, len·Δb at k = 1),
// the products through gemm<T> (gemm.hpp; in double Eigen's, so the
// coefficients' rounding is that of a blocked sum, within the same γ bound).
template <Real T>
std::vector<std::vector<T>> segment_polynomials(const model_spec& m, std::span<const T> w, std::span<const T> delta,
                                                const T& a, const T& len, std::span<const T> x, std::size_t upto) {
    const auto offsets = parameter_offsets(m);
    matrix<T> h(1, x.size());  // h(k, j): coefficient of u^k of unit j
    for (std::size_t j = 0; j < x.size(); ++j) h(0, j) = x[j];
    std::size_t li = 0;
    const T half = T(1) / T(2);
    for (std::size_t k = 0; k < upto; ++k) {
        const layer_spec& l = m.layers[k];
        if (l.kind == layer_kind::linear) {
            const linear_offsets& o = offsets[li++];
            const std::size_t deg = h.rows;  // degree + 1 of h
            matrix<T> wh(deg, o.out), dh(deg, o.out), z(deg + 1, o.out);
            gemm<T>(true, deg, o.out, o.in, h.data.data(), o.in, w.data() + o.weight, o.in, wh.data.data(), o.out, false);
            gemm<T>(true, deg, o.out, o.in, h.data.data(), o.in, delta.data() + o.weight, o.in, dh.data.data(), o.out, false);
            for (std::size_t r = 0; r < o.out; ++r) {
                for (std::size_t kk = 0; kk <= deg; ++kk) {
                    T acc(0);
                    if (kk < deg) {
                        acc = wh(kk, r);
                        add_product(acc, a, dh(kk, r));
                    }
                    if (kk >= 1) add_product(acc, len, dh(kk - 1, r));
                    z(kk, r) = acc;
                }
                if (o.has_bias) {
                    T b0 = w[o.bias + r];
                    add_product(b0, a, delta[o.bias + r]);
                    z(0, r) += b0;
                    add_product(z(1, r), len, delta[o.bias + r]);
                }
            }
            h = std::move(z);
        } else {
            if (!is_piecewise_linear(l.kind)) throw usage_error("segment_polynomials: smooth layer before 'upto'");
            const activation<T> act(l);
            // On the piece the unit is on one side of its kink: h = slope · z.
            std::vector<T> unit(h.rows);
            for (std::size_t j = 0; j < h.cols; ++j) {
                for (std::size_t kk = 0; kk < h.rows; ++kk) unit[kk] = h(kk, j);
                const T sl = act.derivative(horner<T>(unit, half));  // relu′(0) = 0, as everywhere
                for (std::size_t kk = 0; kk < h.rows; ++kk) h(kk, j) = sl * h(kk, j);
            }
        }
    }
    std::vector<std::vector<T>> out(h.cols, std::vector<T>(h.rows));
    for (std::size_t j = 0; j < h.cols; ++j)
        for (std::size_t kk = 0; kk < h.rows; ++kk) out[j][kk] = h(kk, j);
    return out;
}

namespace detail {

// The roots in (0, 1) of the switching polynomials on the piece t = a + len·u cut [a, b]:
// the cuts are appended to `cuts`, their location bounds added to `uncertainty`, and the
// ends of the sub-pieces returned (a, cuts…, b).
template <Real T>
std::vector<T> cut_piece(const std::vector<std::vector<T>>& polys, const T& a, const T& b, std::vector<T>& cuts,
                         T& uncertainty) {
    const T len = b - a;
    std::vector<T> us, du;
    for (const auto& unit : polys)
        for (T& r : roots_in_unit_interval<T>(std::span<const T>(unit), &du)) us.push_back(std::move(r));
    for (const T& d : du) uncertainty += len * d;  // Σ of the cuts' location bounds, in t
    std::sort(us.begin(), us.end());
    us.erase(std::unique(us.begin(), us.end()), us.end());
    std::vector<T> ends{a};
    for (const T& uu : us) {
        const T t = a + len * uu;
        if (ends.back() < t && t < b) ends.push_back(t);
    }
    ends.push_back(b);
    for (std::size_t e = 1; e + 1 < ends.size(); ++e) cuts.push_back(ends[e]);
    return ends;
}

// Cuts of [a, b] from piecewise-linear activation layers k ≥ from (before
// the first smooth one), appended to `cuts`.
template <Real T>
void polynomial_cuts(const model_spec& m, const segment_structure& st, std::span<const T> w, std::span<const T> delta,
                     std::span<const T> x, const T& a, const T& b, std::size_t from, std::vector<T>& cuts,
                     T& uncertainty) {
    std::size_t k = from;
    while (k < st.first_smooth && (m.layers[k].kind == layer_kind::linear || m.layers[k].kind == layer_kind::identity)) ++k;
    if (k >= st.first_smooth) return;
    const T len = b - a;
    const std::vector<T> ends = cut_piece<T>(segment_polynomials<T>(m, w, delta, a, len, x, k), a, b, cuts, uncertainty);
    for (std::size_t e = 0; e + 1 < ends.size(); ++e)
        polynomial_cuts<T>(m, st, w, delta, x, ends[e], ends[e + 1], k + 1, cuts, uncertainty);
}

// The same for a tree model: switching node `from` (an index into an.switching) and the
// ones after it, up to the first smooth node.
template <Real T>
void tree_polynomial_cuts(const tree_segment::analysis& an, std::span<const T> w, std::span<const T> delta,
                          std::span<const T> x, const T& a, const T& b, std::size_t from, std::vector<T>& cuts,
                          T& uncertainty) {
    if (from >= an.switching.size() || an.switching[from] >= an.first_smooth) return;
    const T len = b - a;
    const std::vector<T> ends = cut_piece<T>(
        tree_segment::switching_polynomials<T>(an, w, delta, a, len, x, *an.nodes[an.switching[from]]), a, b, cuts,
        uncertainty);
    for (std::size_t e = 0; e + 1 < ends.size(); ++e)
        tree_polynomial_cuts<T>(an, w, delta, x, ends[e], ends[e + 1], from + 1, cuts, uncertainty);
}

// Level crossings of the pre-activations of activation layers from the first
// smooth one on, inside [a, b].  These φ(t) are not polynomials.  φ and φ′
// (forward mode along Δ) are sampled at `samples`+1 equispaced points; for
// each target (unit, level ℓ) a sign change of φ − ℓ between samples is
// bisected to the working precision, and a sample interval is halved (depth
// ≤ 40, at most 64·samples halvings in all) while some target could be reached
// in it given its end slopes, min(|φ(t0) − ℓ|, |φ(t1) − ℓ|) < (t1 − t0)·max|φ′|.
// Targets: ℓ = 0 for relu / leaky_relu (kinks).  A smooth activation bends
// within |z| ≲ 1; a large step can sweep its unit's z over a range ≫ 1, which
// squeezes the bend into a sliver of the piece.  For such units (range of z
// over the samples > 32) the targets are ℓ = 0, ±1, ±2, ±4, … up to the range:
// the cuts grade the piece geometrically toward the bend, so every piece sees
// z vary by at most about a factor of two and its rule converges fast.  This
// finds every crossing unless φ′ varies faster inside an interval than its end
// values suggest (proofs-notes/004 §4: a heuristic, not a guarantee).
template <Real T>
struct level_target {
    std::size_t layer, unit;
    T level;
    // A max pool's pair (tree models): the target is v[unit] − v[other] = 0.
    std::size_t other = std::numeric_limits<std::size_t>::max();

    T value(const std::vector<matrix<T>>& values) const {
        const matrix<T>& v = values[layer];
        return other == std::numeric_limits<std::size_t>::max() ? T(v(0, unit) - level) : T(v(0, unit) - v(0, other));
    }
    T slope(const std::vector<matrix<T>>& tangents) const {
        const matrix<T>& d = tangents[layer];
        return other == std::numeric_limits<std::size_t>::max() ? d(0, unit) : T(d(0, unit) - d(0, other));
    }
};

template <Real T>
void refine_crossings(const model_spec& m, std::span<const T> w, std::span<const T> delta, const matrix<T>& x1,
                      const std::vector<level_target<T>>& targets, const T& t0, const tangent_pass<T>& p0, const T& t1,
                      const tangent_pass<T>& p1, int depth, std::size_t& budget, std::vector<T>& found) {
    const T u = scalar_traits<T>::unit_roundoff();
    bool suspicious = false;
    for (const level_target<T>& g : targets) {
        const T z0 = g.value(p0.values);
        const T z1 = g.value(p1.values);
        const bool pos0 = z0 > T(0), pos1 = z1 > T(0);
        if (pos0 != pos1) {
            // One sign change: bisect on the side relu's derivative sees.
            T lo = t0, hi = t1;
            for (int it = 0; it < 4 * scalar_traits<T>::mantissa_bits() + 64; ++it) {
                const T mid = (lo + hi) / T(2);
                if (!(lo < mid && mid < hi) || hi - lo <= T(2) * u * rm::abs(mid)) break;
                const bool pos = g.value(forward<T>(m, point_on_segment<T>(w, delta, mid), x1).values) > T(0);
                if (pos == pos0) lo = mid; else hi = mid;
            }
            found.push_back((lo + hi) / T(2));
            continue;
        }
        const T reach = (t1 - t0) * rm::max(rm::abs(g.slope(p0.tangents)), rm::abs(g.slope(p1.tangents)));
        if (rm::min(rm::abs(z0), rm::abs(z1)) < reach) suspicious = true;  // (a unit ≡ ℓ is never suspicious)
    }
    if (!suspicious || depth >= 40 || budget == 0) return;
    --budget;
    const T mid = (t0 + t1) / T(2);
    if (!(t0 < mid && mid < t1)) return;
    const tangent_pass<T> pm = forward_with_tangent<T>(m, point_on_segment<T>(w, delta, mid), x1, delta);
    refine_crossings<T>(m, w, delta, x1, targets, t0, p0, mid, pm, depth + 1, budget, found);
    refine_crossings<T>(m, w, delta, x1, targets, mid, pm, t1, p1, depth + 1, budget, found);
}

template <Real T>
void sampled_cuts(const model_spec& m, const segment_structure& st, std::span<const T> w, std::span<const T> delta,
                  const matrix<T>& x1, const T& a, const T& b, std::size_t samples, std::vector<T>& cuts) {
    // The layers (a tree model: the nodes, pre-order) whose inputs are searched, and their kinds.
    std::vector<std::size_t> layers;
    std::vector<layer_spec> kinds;
    std::vector<tree_node> pools;  // a tree's max pools after the first smooth node (their windows)
    if (m.is_mlp()) {
        for (std::size_t k = st.first_smooth; k < m.layers.size(); ++k)
            if (m.layers[k].kind != layer_kind::linear && m.layers[k].kind != layer_kind::identity) {
                layers.push_back(k);
                kinds.push_back(m.layers[k]);
            }
    } else {
        const tree_segment::analysis an = tree_segment::analyse(m);
        for (std::size_t k = st.first_smooth; k < an.nodes.size(); ++k) {
            const layer_kind kind = an.nodes[k]->spec.kind;
            if (kind == layer_kind::relu || kind == layer_kind::leaky_relu || kind == layer_kind::max_pool2d ||
                tree_segment::is_smooth_activation(kind)) {
                layers.push_back(k);
                kinds.push_back(an.nodes[k]->spec);
                pools.push_back(kind == layer_kind::max_pool2d ? *an.nodes[k] : tree_node{});
            }
        }
    }
    if (layers.empty()) return;
    samples = std::max<std::size_t>(samples, 1);
    std::vector<T> ts;
    std::vector<tangent_pass<T>> passes;
    for (std::size_t q = 0; q <= samples; ++q) {
        ts.push_back(q == samples ? b : a + (b - a) * (T(static_cast<double>(q)) / T(static_cast<double>(samples))));
        passes.push_back(forward_with_tangent<T>(m, point_on_segment<T>(w, delta, ts.back()), x1, delta));
    }
    std::vector<level_target<T>> targets;
    for (std::size_t li = 0; li < layers.size(); ++li) {
        const std::size_t k = layers[li];
        if (kinds[li].kind == layer_kind::max_pool2d) {  // every pair of a window: its order
            epk::layers::window_pairs(pools[li].pool(),
                                      [&](std::size_t i, std::size_t j) { targets.push_back({k, i, T(0), j}); });
            continue;
        }
        for (std::size_t j = 0; j < passes[0].values[k].cols; ++j) {
            if (is_piecewise_linear(kinds[li].kind)) {
                targets.push_back({k, j, T(0)});
                continue;
            }
            T lo = passes[0].values[k](0, j), hi = lo;
            for (const auto& p : passes) {
                lo = rm::min(lo, p.values[k](0, j));
                hi = rm::max(hi, p.values[k](0, j));
            }
            if (!(hi - lo > T(32))) continue;  // the bend spans ≥ 1/32 of the piece: the adaptive rule resolves it
            const T reach = rm::max(rm::abs(lo), rm::abs(hi));
            if (lo < T(0) && T(0) < hi) targets.push_back({k, j, T(0)});
            for (T level(1); level < reach && targets.size() < 100000; level = level * T(2)) {
                if (lo < level && level < hi) targets.push_back({k, j, level});
                if (lo < -level && -level < hi) targets.push_back({k, j, T(-level)});
            }
        }
    }
    std::vector<T> found;
    std::size_t budget = 64 * samples;
    for (std::size_t q = 0; q < samples; ++q)
        refine_crossings<T>(m, w, delta, x1, targets, ts[q], passes[q], ts[q + 1], passes[q + 1], 0, budget, found);
    cuts.insert(cuts.end(), found.begin(), found.end());
}

// One node's share of a magnitude: |ω_q|·Σ_p |J|_mag(w_t)[c][p]·a_p for a vector a ≥ 0
// (binary64, P entries), added into magnitude[c].  Σ_p |J|_mag[c][p]·a_p =
// Σ_l Σ_r δmag[c][r]·(Σ_j hmag_j a(W_rj) + a(b_r)).  Magnitudes need a digit or two:
// computed in binary64 from the rounded point w_t.
template <Real T>
void add_node_magnitude(const model_spec& m, const std::vector<linear_offsets>& offsets, std::span<const T> wt,
                        const matrix<T>& x1, const T& wq, std::span<const double> a, std::vector<double>& magnitude) {
    std::vector<double> wd64(wt.size());
    for (std::size_t p = 0; p < wt.size(); ++p) wd64[p] = scalar_traits<T>::to_double(wt[p]);
    const layer_factors<double> mf = magnitude_factors<double>(m, wd64, convert_matrix<double>(x1));
    const double wd = std::abs(scalar_traits<T>::to_double(wq));
    for (std::size_t l = 0; l < offsets.size(); ++l) {
        const linear_offsets& o = offsets[l];
        for (std::size_t r = 0; r < o.out; ++r) {
            double v = o.has_bias ? a[o.bias + r] : 0.0;
            for (std::size_t j = 0; j < o.in; ++j) v += mf.input[l][j] * a[o.weight + r * o.in + j];
            for (std::size_t c = 0; c < magnitude.size(); ++c) magnitude[c] += wd * mf.delta[l](c, r) * v;
        }
    }
}

// A tree model's: |ω_q|·Σ_p |J|_mag(w_t)[c][p]·a_p from tree_segment::jacobian_magnitude.
template <Real T>
void add_tree_node_magnitude(const tree_segment::analysis& an, std::span<const T> wt, const matrix<T>& x1,
                             const T& wq, std::span<const double> a, std::vector<double>& magnitude) {
    std::vector<double> wd64(wt.size()), xd(x1.cols);
    for (std::size_t p = 0; p < wt.size(); ++p) wd64[p] = scalar_traits<T>::to_double(wt[p]);
    for (std::size_t j = 0; j < x1.cols; ++j) xd[j] = scalar_traits<T>::to_double(x1(0, j));
    const std::vector<double> jm = tree_segment::jacobian_magnitude(an, wd64, xd, a);
    const double wd = std::abs(scalar_traits<T>::to_double(wq));
    for (std::size_t c = 0; c < magnitude.size(); ++c) magnitude[c] += wd * jm[c];
}

// The same summed over a rule's nodes on the segment w + tΔ: Σ_q |ω_q| Σ_p |J|_mag(t_q)·a.
template <Real T>
std::vector<double> magnitude_at_nodes(const model_spec& m, std::span<const T> w, std::span<const T> delta,
                                       const matrix<T>& x1, std::span<const T> nodes, std::span<const T> weights,
                                       std::span<const double> a) {
    std::vector<double> out(m.output_dim(), 0.0);
    if (!m.is_mlp()) {
        const tree_segment::analysis an = tree_segment::analyse(m);
        for (std::size_t q = 0; q < nodes.size(); ++q)
            add_tree_node_magnitude<T>(an, point_on_segment<T>(w, delta, nodes[q]), x1, weights[q], a, out);
        return out;
    }
    const auto offsets = parameter_offsets(m);
    for (std::size_t q = 0; q < nodes.size(); ++q)
        add_node_magnitude<T>(m, offsets, point_on_segment<T>(w, delta, nodes[q]), x1, weights[q], a, out);
    return out;
}

// acc += Σ_q ω_q J(x; w + t_q Δ) over the n-point rule on [a, b], J taken
// in factored form (δ_l ⊗ h_l, network.hpp): acc[c][W_l r j] += (ω_q δ_l[c][r])·h_l[j].
// scale ← max(scale, max |J| entry) = max_l max_c,r |δ_l| · max(max_j |h_l|, 1 if bias).
template <Real T>
void add_nodes(const model_spec& m, std::span<const T> w, std::span<const T> delta, const matrix<T>& x1,
               std::span<const T> ts, std::span<const T> ws, matrix<T>& acc, T& scale, std::size_t& evaluations,
               std::vector<T>* nodes, std::vector<T>* weights, std::vector<double>* magnitude = nullptr) {
    std::vector<double> abs_delta;  // |Δ| in binary64, for the magnitude
    if (!m.is_mlp()) {  // a tree model: J from one reverse sweep per output (network.hpp, jacobian)
        const tree_segment::analysis an = tree_segment::analyse(m);
        for (std::size_t q = 0; q < ts.size(); ++q) {
            const std::vector<T> wt = point_on_segment<T>(w, delta, ts[q]);
            const matrix<T> jac = jacobian<T>(m, wt, x1);
            ++evaluations;
            for (std::size_t e = 0; e < jac.data.size(); ++e) {
                add_product(acc.data[e], ws[q], jac.data[e]);
                max_abs_into(scale, jac.data[e]);
            }
            if (nodes) { nodes->push_back(ts[q]); weights->push_back(ws[q]); }
            if (magnitude != nullptr) {
                if (abs_delta.empty())
                    for (const T& d : delta) abs_delta.push_back(std::abs(scalar_traits<T>::to_double(d)));
                add_tree_node_magnitude<T>(an, wt, x1, ws[q], abs_delta, *magnitude);
            }
        }
        return;
    }
    const auto offsets = parameter_offsets(m);
    for (std::size_t q = 0; q < ts.size(); ++q) {
        const T& t = ts[q];
        const T& wq = ws[q];
        const std::vector<T> wt = point_on_segment<T>(w, delta, t);
        const layer_factors<T> lf = jacobian_factors<T>(m, wt, x1);
        ++evaluations;
        for (std::size_t l = 0; l < offsets.size(); ++l) {
            const linear_offsets& o = offsets[l];
            const std::vector<T>& h = lf.input[l];
            T hmax = o.has_bias ? T(1) : T(0), dmax(0);
            for (const T& v : h) max_abs_into(hmax, v);
            for (std::size_t c = 0; c < acc.rows; ++c)
                for (std::size_t r = 0; r < o.out; ++r) {
                    const T& d = lf.delta[l](c, r);
                    max_abs_into(dmax, d);
                    const T coef = wq * d;
                    T* row = &acc(c, o.weight + r * o.in);
                    for (std::size_t j = 0; j < o.in; ++j) add_product(row[j], coef, h[j]);
                    if (o.has_bias) acc(c, o.bias + r) += coef;
                }
            max_abs_into(scale, T(dmax * hmax));
        }
        if (nodes) { nodes->push_back(t); weights->push_back(wq); }
        if (magnitude != nullptr) {
            if (abs_delta.empty())
                for (const T& d : delta) abs_delta.push_back(std::abs(scalar_traits<T>::to_double(d)));
            add_node_magnitude<T>(m, offsets, wt, x1, wq, abs_delta, *magnitude);
        }
    }
}

// The n-point Gauss–Legendre rule on [a, b], added into acc (see add_nodes).
template <Real T>
void add_rule(const model_spec& m, std::span<const T> w, std::span<const T> delta, const matrix<T>& x1, const T& a,
              const T& b, std::size_t n, matrix<T>& acc, T& scale, std::size_t& evaluations,
              std::vector<T>* nodes, std::vector<T>* weights, std::vector<double>* magnitude = nullptr) {
    const gauss_rule<T>& g = gauss_legendre<T>(n);
    const T len = b - a;
    std::vector<T> ts(n), ws(n);
    for (std::size_t q = 0; q < n; ++q) {
        ts[q] = a + len * g.nodes[q];
        ws[q] = len * g.weights[q];
    }
    add_nodes<T>(m, w, delta, x1, ts, ws, acc, scale, evaluations, nodes, weights, magnitude);
}

template <Real T>
T max_abs_difference(const matrix<T>& a, const matrix<T>& b) {
    T d(0);
    for (std::size_t e = 0; e < a.data.size(); ++e) d = rm::max(d, rm::abs(T(a.data[e] - b.data[e])));
    return d;
}

template <Real T>
void add_into(matrix<T>& acc, const matrix<T>& x) {
    for (std::size_t e = 0; e < acc.data.size(); ++e) acc.data[e] += x.data[e];
}

// Node counts the adaptive rule uses: 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14,
// 16, 20, 24, 28, 32, 40, ... (consecutive ratio ≤ 1.25, so few distinct
// rules are computed and cached): the smallest such count ≥ n.
inline std::size_t rule_size_at_least(std::size_t n) {
    std::size_t k = 1;
    while (k < n) {
        std::size_t step = 1;
        while (8 * step <= k) step *= 2;  // step = 2^(⌊log2 k⌋ − 2) for k ≥ 8
        k += step;
    }
    return k;
}

// The next rule size of a ladder that has just compared G_{n_coarse} with G_{n_fine} and found
// their difference `ratio` times its tolerance (> 1): the size predicted to reach tol/4 from
// the geometric rate measured on the previous comparison (ratio_previous, at n_previous), at
// least the next size up and at most 4·n_fine; with no previous comparison, the next size up.
// (The structured ladders of structured_kernel.hpp and structured_tree.hpp; adaptive_piece
// below predicts the same way from its own first estimate.)
inline std::size_t ladder_next_size(double ratio, bool have_previous, double ratio_previous, std::size_t n_previous,
                                    std::size_t n_coarse, std::size_t n_fine) {
    std::size_t next = 4 * n_fine;
    double log_q = 0;
    if (have_previous && ratio < ratio_previous && n_coarse > n_previous)
        log_q = std::log(ratio / ratio_previous) / static_cast<double>(n_coarse - n_previous);
    if (log_q < 0 && std::isfinite(log_q)) {
        const double more = std::log(1.0 / (4.0 * ratio)) / log_q;
        const double target = static_cast<double>(n_coarse) + std::max(0.0, more);
        if (target < static_cast<double>(4 * n_fine)) next = static_cast<std::size_t>(std::ceil(target));
    } else if (!have_previous) {
        next = n_fine + 1;
    }
    return rule_size_at_least(std::max(next, n_fine + 1));
}

// Adaptive Gauss–Legendre on [a, b], added into `out`.
//
// Rules G_{n_0}, G_{n_1}, ...: est_k = max|G_{n_{k+1}} − G_{n_k}| estimates
// the error of G_{n_k}; G_{n_{k+1}} is accepted once est_k ≤ tol =
// τ·u·(b − a)·max|J|.  Analytic integrands converge geometrically,
// err(n) ≈ A·qⁿ; q is measured from the last two estimates (or from the
// first against the integrand's scale) and the next n is the one predicted
// to reach tol/4, at least the next size up and at most 4× the last.  When
// the prediction exceeds max_nodes the piece is bisected.
template <Real T>
void adaptive_piece(const model_spec& m, std::span<const T> w, std::span<const T> delta, const matrix<T>& x1,
                    const T& a, const T& b, const quadrature_options& qo, double tau, std::size_t depth,
                    segment_integral<T>& out) {
    const std::size_t c = out.value.rows, p = out.value.cols;
    const T u = scalar_traits<T>::unit_roundoff();
    const T len = b - a;
    T piece_scale(0);
    std::size_t n_coarse = std::max<std::size_t>(1, qo.first_nodes);
    matrix<T> coarse(c, p);
    std::vector<T> coarse_nodes, coarse_weights;   // the coarse rule, kept if no finer one is allowed
    std::vector<double> coarse_magnitude(c, 0.0);
    add_rule<T>(m, w, delta, x1, a, b, n_coarse, coarse, piece_scale, out.evaluations, &coarse_nodes, &coarse_weights,
                &coarse_magnitude);
    std::size_t n_fine = rule_size_at_least(2 * n_coarse);
    bool have_previous = false;
    std::size_t n_previous = 0;
    T est_previous(0);
    T last_est = len * piece_scale;
    while (n_fine <= qo.max_nodes && out.evaluations + n_fine <= qo.max_evaluations) {
        matrix<T> fine(c, p);
        std::vector<T> nodes, weights;
        std::vector<double> magnitude(c, 0.0);
        add_rule<T>(m, w, delta, x1, a, b, n_fine, fine, piece_scale, out.evaluations, &nodes, &weights, &magnitude);
        const T est = max_abs_difference(fine, coarse);  // ≈ error of the coarse rule
        last_est = est;
        const T tol = T(tau) * u * len * piece_scale;
        if (est <= tol) {
            add_into(out.value, fine);
            out.error_estimate += est;
            out.scale = rm::max(out.scale, piece_scale);
            out.nodes.insert(out.nodes.end(), nodes.begin(), nodes.end());
            out.weights.insert(out.weights.end(), weights.begin(), weights.end());
            for (std::size_t q = 0; q < c; ++q) out.magnitude[q] += magnitude[q];
            return;
        }
        // Predict the size that reaches tol/4: err(n) ≈ est·q^(n − n_coarse).
        double log_q = 0;  // log q per node (< 0 when converging)
        if (have_previous && est < est_previous && n_coarse > n_previous)
            log_q = scalar_traits<T>::to_double(rm::log(T(est / est_previous))) / static_cast<double>(n_coarse - n_previous);
        else if (est < len * piece_scale)
            log_q = scalar_traits<T>::to_double(rm::log(T(est / (len * piece_scale)))) / static_cast<double>(n_coarse);
        std::size_t next = 4 * n_fine;
        if (log_q < 0) {
            const double more = scalar_traits<T>::to_double(rm::log(T(tol / (T(4) * est)))) / log_q;
            const double target = static_cast<double>(n_coarse) + std::max(0.0, more);
            if (target < static_cast<double>(4 * n_fine)) next = static_cast<std::size_t>(std::ceil(target));
        }
        next = rule_size_at_least(std::max(next, n_fine + 1));
        have_previous = true;
        n_previous = n_coarse;
        est_previous = est;
        n_coarse = n_fine;
        coarse = std::move(fine);
        coarse_nodes = std::move(nodes);
        coarse_weights = std::move(weights);
        coarse_magnitude = std::move(magnitude);
        n_fine = next;
    }
    out.scale = rm::max(out.scale, piece_scale);
    if (depth >= qo.max_depth || out.evaluations >= qo.max_evaluations) {
        // No finer rule allowed: keep the last one, with the last estimate.
        out.converged = false;
        add_into(out.value, coarse);
        out.nodes.insert(out.nodes.end(), coarse_nodes.begin(), coarse_nodes.end());
        out.weights.insert(out.weights.end(), coarse_weights.begin(), coarse_weights.end());
        for (std::size_t q = 0; q < c; ++q) out.magnitude[q] += coarse_magnitude[q];
        out.error_estimate += rm::max(last_est, T(len * piece_scale * u));
        return;
    }
    const T mid = (a + b) / T(2);
    adaptive_piece<T>(m, w, delta, x1, a, mid, qo, tau, depth + 1, out);
    adaptive_piece<T>(m, w, delta, x1, mid, b, qo, tau, depth + 1, out);
}

}  // namespace detail

// Breakpoints in (0, 1), ascending: where some activation pattern of x
// changes along w + tΔ.
// `uncertainty` (optional) receives Σ over polynomial cuts of the bound on
// how far each may lie from the exact pattern change (quadrature.hpp).
template <Real T>
std::vector<T> segment_cuts(const model_spec& m, const segment_structure& st, std::span<const T> w,
                            std::span<const T> delta, const matrix<T>& x1, std::size_t kink_samples,
                            T* uncertainty = nullptr) {
    std::vector<T> cuts;
    T located(0);
    std::size_t node_count = m.layers.size();
    if (m.is_mlp()) {
        detail::polynomial_cuts<T>(m, st, w, delta, x1.row(0), T(0), T(1), 0, cuts, located);
    } else {
        const tree_segment::analysis an = tree_segment::analyse(m);
        detail::tree_polynomial_cuts<T>(an, w, delta, x1.row(0), T(0), T(1), 0, cuts, located);
        node_count = an.nodes.size();
    }
    if (uncertainty != nullptr) *uncertainty = located;
    if (st.first_smooth < node_count && kink_samples > 0) {
        std::vector<T> ends{T(0)};
        std::vector<T> sorted = cuts;
        std::sort(sorted.begin(), sorted.end());
        ends.insert(ends.end(), sorted.begin(), sorted.end());
        ends.push_back(T(1));
        for (std::size_t e = 0; e + 1 < ends.size(); ++e)
            detail::sampled_cuts<T>(m, st, w, delta, x1, ends[e], ends[e + 1], kink_samples, cuts);
    }
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    std::vector<T> inside;
    for (T& t : cuts)
        if (T(0) < t && t < T(1)) inside.push_back(std::move(t));
    return inside;
}

// The nodes and weights of a plain composite rule on [0, 1] (qo.composite ≠
// none) with qo.panels equal panels: left = each panel's start (one panel:
// the per-step tangent kernel), midpoint = its middle, trapezoid = both ends
// with weight h/2 (shared interior ends weigh h).
template <Real T>
void simple_rule_nodes(const quadrature_options& qo, std::vector<T>& ts, std::vector<T>& ws) {
    using rule = quadrature_options::simple_rule;
    const std::size_t n = qo.panels;
    if (n == 0 || n > max_gauss_nodes) throw usage_error("quadrature_options: need 1 <= panels <= 100000");
    const T h = T(1) / T(static_cast<double>(n));
    for (std::size_t k = 0; k < n; ++k) {
        const T start = T(static_cast<double>(k)) / T(static_cast<double>(n));
        if (qo.composite == rule::left) {
            ts.push_back(start);
            ws.push_back(h);
        } else if (qo.composite == rule::midpoint) {
            ts.push_back(T(static_cast<double>(2 * k + 1)) / T(static_cast<double>(2 * n)));
            ws.push_back(h);
        } else {
            ts.push_back(start);
            ws.push_back(k == 0 ? h / T(2) : h);
        }
    }
    if (qo.composite == rule::trapezoid) {
        ts.push_back(T(1));
        ws.push_back(h / T(2));
    }
}

// Ī(x) = ∫_0^1 J(x; w + tΔ) dt, x one row.
template <Real T>
segment_integral<T> integrate_segment(const model_spec& m, const segment_structure& st, std::span<const T> w,
                                      std::span<const T> delta, const matrix<T>& x1, const quadrature_options& qo) {
    segment_integral<T> out;
    out.value = matrix<T>(m.output_dim(), w.size());
    out.magnitude.assign(m.output_dim(), 0.0);
    if (qo.fixed_nodes > 0) {  // a plain rule on [0, 1], no pieces: what epk is compared against
        detail::add_rule<T>(m, w, delta, x1, T(0), T(1), qo.fixed_nodes, out.value, out.scale, out.evaluations,
                            &out.nodes, &out.weights, &out.magnitude);
        return out;
    }
    if (qo.composite != quadrature_options::simple_rule::none) {
        std::vector<T> ts, ws;
        simple_rule_nodes<T>(qo, ts, ws);
        detail::add_nodes<T>(m, w, delta, x1, ts, ws, out.value, out.scale, out.evaluations, &out.nodes, &out.weights,
                             &out.magnitude);
        return out;
    }
    T located(0);
    const std::vector<T> cuts = segment_cuts<T>(m, st, w, delta, x1, qo.kink_samples, &located);
    out.cuts = cuts.size();
    std::vector<T> ends{T(0)};
    ends.insert(ends.end(), cuts.begin(), cuts.end());
    ends.push_back(T(1));
    if (qo.first_nodes == 0 || qo.max_nodes < 2 * qo.first_nodes || qo.max_nodes > max_gauss_nodes)
        throw usage_error("quadrature_options: need 1 ≤ first_nodes and 2·first_nodes ≤ max_nodes ≤ 100000");
    const double tau = qo.tolerance_factor > 0 ? qo.tolerance_factor : st.default_tolerance;
    for (std::size_t e = 0; e + 1 < ends.size(); ++e) {
        const T& a = ends[e];
        const T& b = ends[e + 1];
        if (st.piecewise_linear) {
            // Exact rule and one more node; their difference is rounding only.
            matrix<T> exact(out.value.rows, out.value.cols), check(out.value.rows, out.value.cols);
            detail::add_rule<T>(m, w, delta, x1, a, b, st.exact_nodes, exact, out.scale, out.evaluations, nullptr, nullptr);
            detail::add_rule<T>(m, w, delta, x1, a, b, st.exact_nodes + 1, check, out.scale, out.evaluations,
                                &out.nodes, &out.weights, &out.magnitude);
            out.error_estimate += detail::max_abs_difference(exact, check);
            detail::add_into(out.value, check);
        } else {
            detail::adaptive_piece<T>(m, w, delta, x1, a, b, qo, tau, 0, out);
        }
    }
    // A cut misplaced by δ changes Ī by at most δ·|J(t*+) − J(t*−)| ≤ 2δ·max|J| per entry.
    out.error_estimate += T(2) * located * out.scale;
    return out;
}

// The rule a test point uses along one step, without forming Ī — what the
// structured path kernel (structured_kernel.hpp) evaluates its factors on.
//  * fixed_nodes / composite: that rule on [0, 1].
//  * piecewise-linear networks: the cuts (segment_cuts) and the exact
//    ⌊L/2⌋+1-node Gauss rule on each piece; quadrature error zero, and the
//    only estimate is the cut-location term 2·located·max|J| (the caller
//    knows max|J| from its factors).
//  * smooth networks: the adaptive rule of integrate_segment, whose
//    acceptance test compares whole rules entry by entry, so Ī is formed here
//    for the node search (C·P per node); the estimate is final.  A caller
//    that needs that Ī (structured_tree.hpp) passes `integral` and receives
//    it instead of re-evaluating the factors at the nodes.
template <Real T>
struct step_rule {
    std::vector<T> nodes, weights;
    std::size_t cuts = 0, evaluations = 0;
    T located = T(0);              // Σ of the cut-location bounds (piecewise-linear)
    T error_estimate = T(0);       // final estimate (smooth adaptive); else 0
    bool converged = true;
    bool estimate_is_final = false;  // smooth adaptive: error_estimate includes every term
};

template <Real T>
step_rule<T> segment_rule(const model_spec& m, const segment_structure& st, std::span<const T> w,
                          std::span<const T> delta, const matrix<T>& x1, const quadrature_options& qo,
                          segment_integral<T>* integral = nullptr) {
    step_rule<T> r;
    if (qo.fixed_nodes > 0) {
        const gauss_rule<T>& g = gauss_legendre<T>(qo.fixed_nodes);
        r.nodes = g.nodes;
        r.weights = g.weights;
    } else if (qo.composite != quadrature_options::simple_rule::none) {
        simple_rule_nodes<T>(qo, r.nodes, r.weights);
    } else if (st.piecewise_linear) {
        if (qo.first_nodes == 0 || qo.max_nodes < 2 * qo.first_nodes || qo.max_nodes > max_gauss_nodes)
            throw usage_error("quadrature_options: need 1 ≤ first_nodes and 2·first_nodes ≤ max_nodes ≤ 100000");
        const std::vector<T> cuts = segment_cuts<T>(m, st, w, delta, x1, qo.kink_samples, &r.located);
        r.cuts = cuts.size();
        std::vector<T> ends{T(0)};
        ends.insert(ends.end(), cuts.begin(), cuts.end());
        ends.push_back(T(1));
        const gauss_rule<T>& g = gauss_legendre<T>(st.exact_nodes);
        for (std::size_t e = 0; e + 1 < ends.size(); ++e) {
            const T len = ends[e + 1] - ends[e];
            for (std::size_t q = 0; q < g.nodes.size(); ++q) {
                r.nodes.push_back(ends[e] + len * g.nodes[q]);
                r.weights.push_back(len * g.weights[q]);
            }
        }
    } else {
        segment_integral<T> seg = integrate_segment<T>(m, st, w, delta, x1, qo);
        r.nodes = std::move(seg.nodes);
        r.weights = std::move(seg.weights);
        r.cuts = seg.cuts;
        r.evaluations = seg.evaluations;
        r.error_estimate = seg.error_estimate;
        r.converged = seg.converged;
        r.estimate_is_final = true;
        if (integral != nullptr) *integral = std::move(seg);  // Ī and its magnitude, already formed
        return r;
    }
    r.evaluations = r.nodes.size();
    return r;
}

}  // namespace epk

// epk/rounding_bound.hpp — running (first-order) rounding-error bounds for
// the forward pass, the loss gradient and one SGD step, as computed by
// network.hpp / loss.hpp / training.hpp in a type with unit roundoff u.
//
// Every computed quantity q̂ gets a coefficient E(q) ≥ 0 with
//     |q̂ − q| ≤ u·E(q) + O(u²)
// where q is the exact value (exact arithmetic on the same inputs).  The
// propagation rules, with their proofs and the constants of each elementary
// function, are in proofs-notes/001-rounding-bounds.md.  The coefficients are
// evaluated in binary64 from the computed values; `first_order_slack` turns
// the first-order bound into a bound (valid while u·k ≤ 0.01 for every sum
// length k and u·E ≤ 0.01·|scale|, which the callers check).
//
// Piecewise-linear activations: the bound is only valid when no
// pre-activation is within its own error bound of a kink (the computed
// activation pattern is then the exact one); `near_kink` reports otherwise.
#pragma once

#include <cmath>
#include <span>
#include <vector>

#include "epk/training.hpp"

namespace epk {

inline constexpr double first_order_slack = 1.05;

// Error of our formula for σ(z) (relative to |σ(z)|, in units of u) and of
// σ'(z) (absolute, in units of u), for binary64 with glibc's libm
// (tanh, exp, log1p, erfc within 2 ulp = 4u).  proofs-notes/001, table 1.
struct activation_error_model {
    static double value_rel(layer_kind k, double z) {
        switch (k) {
            case layer_kind::relu: case layer_kind::identity: return 0;
            case layer_kind::leaky_relu: return 1;
            case layer_kind::tanh: return 4;
            case layer_kind::sigmoid: return 6;
            case layer_kind::softplus: return 7;
            case layer_kind::gelu: return 2 * z * z + 10;
            default: return 0;
        }
    }
    // Lipschitz constant of σ (max |σ'|) and of σ' (max |σ''|).
    static double lip1(layer_kind k, double slope) {
        switch (k) {
            case layer_kind::leaky_relu: return std::max(1.0, std::abs(slope));
            case layer_kind::sigmoid: return 0.25;
            case layer_kind::gelu: return 1.13;  // max gelu' = 1.1289...
            default: return 1;
        }
    }
    static double lip2(layer_kind k) {
        switch (k) {
            case layer_kind::tanh: return 0.7699;     // 4/(3√3)
            case layer_kind::sigmoid: return 0.0963;  // 1/(6√3)
            case layer_kind::softplus: return 0.25;
            case layer_kind::gelu: return 0.7979;     // 2φ(0)
            default: return 0;
        }
    }
    // |D̂ − σ'(ẑ)| / u for the formulas of network.hpp.
    static double derivative_abs(layer_kind k, double z, double d) {
        switch (k) {
            case layer_kind::tanh: { double t = std::tanh(z); return 9 * t * t + std::abs(d); }
            case layer_kind::sigmoid: { double s = 1 / (1 + std::exp(-z)); return 7 * s + 2 * std::abs(d); }
            case layer_kind::softplus: return 7 * std::abs(d);
            case layer_kind::gelu: {
                double phi = 0.5 * std::erfc(-z / std::sqrt(2.0));
                double dens = std::exp(-z * z / 2) / std::sqrt(2 * M_PI);
                return (2 * z * z + 9) * phi + (z * z / 2 + 6) * std::abs(z) * dens + std::abs(d);
            }
            default: return 0;
        }
    }
};

struct gradient_bound {
    std::vector<double> gradient;     // ∇L as computed in binary64
    std::vector<double> bound;        // u·E per entry (with first_order_slack)
    matrix<double> outputs;           // f(x_i) for the batch
    matrix<double> outputs_bound;
    bool near_kink = false;           // a pre-activation within its bound of a kink
    double max_sum_length = 0;        // largest k in any γ_k used
};

// Gradient of the batch loss at w, computed exactly as loss_gradient<double>,
// with a running error bound for every entry.
inline gradient_bound loss_gradient_with_bound(const training_problem<double>& pr, std::span<const double> w,
                                               std::span<const std::size_t> batch) {
    constexpr double u = 0x1p-53;
    const model_spec& m = pr.model;
    const auto offsets = parameter_offsets(m);
    const matrix<double> xb = gather_rows(pr.x, batch);
    const forward_pass<double> fp = forward(m, w, xb);
    gradient_bound out;
    const std::size_t nb = xb.rows;

    // Forward: E of every value.
    std::vector<matrix<double>> e(m.layers.size() + 1);
    e[0] = matrix<double>(nb, xb.cols);
    std::size_t li = 0;
    for (std::size_t k = 0; k < m.layers.size(); ++k) {
        const matrix<double>& h = fp.values[k];
        const matrix<double>& z = fp.values[k + 1];
        const layer_spec& l = m.layers[k];
        e[k + 1] = matrix<double>(z.rows, z.cols);
        if (l.kind == layer_kind::linear) {
            const linear_offsets& o = offsets[li++];
            const double terms = static_cast<double>(o.in + (o.has_bias ? 1 : 0));
            out.max_sum_length = std::max(out.max_sum_length, terms);
            for (std::size_t i = 0; i < nb; ++i)
                for (std::size_t r = 0; r < o.out; ++r) {
                    double prop = 0, mag = o.has_bias ? std::abs(w[o.bias + r]) : 0;
                    for (std::size_t j = 0; j < o.in; ++j) {
                        const double a = std::abs(w[o.weight + r * o.in + j]);
                        prop += a * e[k](i, j);
                        mag += a * std::abs(h(i, j));
                    }
                    e[k + 1](i, r) = prop + terms * mag;
                }
        } else {
            for (std::size_t q = 0; q < z.data.size(); ++q) {
                const double zin = h.data[q];
                e[k + 1].data[q] = activation_error_model::lip1(l.kind, l.negative_slope) * e[k].data[q] +
                                   activation_error_model::value_rel(l.kind, zin) * std::abs(z.data[q]);
                if ((l.kind == layer_kind::relu || l.kind == layer_kind::leaky_relu) &&
                    std::abs(zin) <= 1.01 * u * e[k].data[q])
                    out.near_kink = true;
            }
        }
    }
    out.outputs = fp.outputs();
    out.outputs_bound = e.back();

    // Output adjoint ρ ∂ℓ/∂f and its E.
    const matrix<double>& f = fp.outputs();
    const matrix<double> g_out = output_gradient(pr.loss, f, pr.y, batch);
    matrix<double> eg(nb, f.cols);
    const double div = static_cast<double>(reduction_divisor(pr.loss, nb, f.cols));
    for (std::size_t i = 0; i < nb; ++i) {
        if (pr.loss.kind == loss_kind::cross_entropy) {
            double mx = f(i, 0);
            for (std::size_t c = 1; c < f.cols; ++c) mx = std::max(mx, f(i, c));
            double max_rel_e = 0, sum_p_ef = 0;
            std::vector<double> p(f.cols);
            double s = 0;
            for (std::size_t c = 0; c < f.cols; ++c) s += std::exp(f(i, c) - mx);
            for (std::size_t c = 0; c < f.cols; ++c) {
                p[c] = std::exp(f(i, c) - mx) / s;
                max_rel_e = std::max(max_rel_e, std::abs(f(i, c) - mx) + 4);
                sum_p_ef += p[c] * e.back()(i, c);
            }
            for (std::size_t c = 0; c < f.cols; ++c) {
                const double rel_p = (std::abs(f(i, c) - mx) + 4) + (static_cast<double>(f.cols) + max_rel_e) + 1;
                const double ep = rel_p * p[c] + p[c] * (e.back()(i, c) + sum_p_ef);
                eg(i, c) = (ep + std::abs(g_out(i, c)) * div) / div + std::abs(g_out(i, c));
            }
        } else {
            for (std::size_t c = 0; c < f.cols; ++c)
                eg(i, c) = 2 * e.back()(i, c) / div + 3 * std::abs(g_out(i, c));
        }
    }

    // Backward, mirroring backward_accumulate.
    out.gradient.assign(w.size(), 0.0);
    out.bound.assign(w.size(), 0.0);
    backward_accumulate<double>(m, w, fp, g_out, out.gradient);
    matrix<double> adj = g_out, eadj = eg;
    li = offsets.size();
    for (std::size_t k = m.layers.size(); k-- > 0;) {
        const matrix<double>& h = fp.values[k];
        const layer_spec& l = m.layers[k];
        if (l.kind == layer_kind::linear) {
            const linear_offsets& o = offsets[--li];
            out.max_sum_length = std::max(out.max_sum_length, static_cast<double>(std::max(nb, o.out)));
            for (std::size_t r = 0; r < o.out; ++r) {
                for (std::size_t j = 0; j < o.in; ++j) {
                    double prop = 0, mag = 0;
                    for (std::size_t i = 0; i < nb; ++i) {
                        prop += eadj(i, r) * std::abs(h(i, j)) + std::abs(adj(i, r)) * e[k](i, j);
                        mag += std::abs(adj(i, r) * h(i, j));
                    }
                    out.bound[o.weight + r * o.in + j] = prop + static_cast<double>(nb) * mag;
                }
                if (o.has_bias) {
                    double prop = 0, mag = 0;
                    for (std::size_t i = 0; i < nb; ++i) {
                        prop += eadj(i, r);
                        mag += std::abs(adj(i, r));
                    }
                    out.bound[o.bias + r] = prop + static_cast<double>(nb - 1) * mag;
                }
            }
            matrix<double> prev(nb, o.in), eprev(nb, o.in);
            for (std::size_t i = 0; i < nb; ++i)
                for (std::size_t j = 0; j < o.in; ++j) {
                    double v = 0, prop = 0, mag = 0;
                    for (std::size_t r = 0; r < o.out; ++r) {
                        const double wv = w[o.weight + r * o.in + j];
                        v += wv * adj(i, r);
                        prop += std::abs(wv) * eadj(i, r);
                        mag += std::abs(wv * adj(i, r));
                    }
                    prev(i, j) = v;
                    eprev(i, j) = prop + static_cast<double>(o.out) * mag;
                }
            adj = std::move(prev);
            eadj = std::move(eprev);
        } else {
            const activation<double> act(l);
            for (std::size_t q = 0; q < adj.data.size(); ++q) {
                const double zin = h.data[q];
                const double d = act.derivative(zin);
                const double ed = activation_error_model::lip2(l.kind) * e[k].data[q] +
                                  activation_error_model::derivative_abs(l.kind, zin, d);
                const double na = d * adj.data[q];
                eadj.data[q] = std::abs(d) * eadj.data[q] + std::abs(adj.data[q]) * ed + std::abs(na);
                adj.data[q] = na;
            }
        }
    }
    for (double& b : out.bound) b *= u * first_order_slack;
    for (double& b : out.outputs_bound.data) b *= u * first_order_slack;
    return out;
}

// Magnitude of the forward-mode product: for each row i,
// Σ_c |v_ic| (|Ĵ_i| |t|)_c where |Ĵ| takes absolute values of every factor
// (weights, activation derivatives, hidden values) along every path.
// The bilinear form vᵀ Ĵ t computed in forward and in reverse mode differ by
// at most 2 γ_m times this (proofs-notes/001, §3).
inline double bilinear_magnitude(const model_spec& m, std::span<const double> w, const matrix<double>& x,
                                 std::span<const double> t, const matrix<double>& v) {
    const auto offsets = parameter_offsets(m);
    const forward_pass<double> fp = forward(m, w, x);
    matrix<double> dh(x.rows, x.cols);
    std::size_t li = 0;
    for (std::size_t k = 0; k < m.layers.size(); ++k) {
        const matrix<double>& h = fp.values[k];
        const layer_spec& l = m.layers[k];
        if (l.kind == layer_kind::linear) {
            const linear_offsets& o = offsets[li++];
            matrix<double> dz(h.rows, o.out);
            for (std::size_t i = 0; i < h.rows; ++i)
                for (std::size_t r = 0; r < o.out; ++r) {
                    double acc = o.has_bias ? std::abs(t[o.bias + r]) : 0;
                    for (std::size_t j = 0; j < o.in; ++j)
                        acc += std::abs(w[o.weight + r * o.in + j]) * dh(i, j) +
                               std::abs(t[o.weight + r * o.in + j]) * std::abs(h(i, j));
                    dz(i, r) = acc;
                }
            dh = std::move(dz);
        } else {
            const activation<double> act(l);
            for (std::size_t q = 0; q < dh.data.size(); ++q) dh.data[q] *= std::abs(act.derivative(h.data[q]));
        }
    }
    double s = 0;
    for (std::size_t q = 0; q < dh.data.size(); ++q) s += std::abs(v.data[q]) * dh.data[q];
    return s;
}

}  // namespace epk

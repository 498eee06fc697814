// epk/network.hpp — a torch-style Sequential MLP and its derivatives,
// written layer by layer so the whole of backprop fits on a page.
//
// Parameters w ∈ R^P are laid out as torch.nn.utils.parameters_to_vector:
// for each linear layer, W [out, in] row-major, then b [out].
//
// For a batch X [B × D] the forward pass keeps every intermediate value
// H_k [B × width_k] (H_0 = X, H_L = outputs F).  Then
//   reverse mode (VJP)  : given U [B × C], returns Σ_i J(x_i; w)ᵀ u_i ∈ R^P
//   forward mode (JVP)  : given v ∈ R^P, returns J(x_i; w) v for each i
//   jacobian            : J(x; w) ∈ R^{C × P} for one input (C reverse sweeps
//                         done together, one adjoint row per output).
// Every sum runs in a fixed, documented order (index ascending), the same
// in every scalar type; nothing is fused.
#pragma once

#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include "epk/matrix.hpp"
#include "epk/layer_tree.hpp"
#include "epk/layers/activation.hpp"
#include "epk/model_spec.hpp"
#include "epk/scalar.hpp"

namespace epk {

// Offsets of each linear layer's W and b inside w.
struct linear_offsets {
    std::size_t layer;     // index into model_spec::layers
    std::size_t in, out;
    std::size_t weight;    // offset of W[0][0]
    std::size_t bias;      // offset of b[0] (== weight + in*out); meaningless if !has_bias
    bool has_bias;
};
std::vector<linear_offsets> parameter_offsets(const model_spec& m);

template <Real T>
struct forward_pass {
    std::vector<matrix<T>> values;  // values[k] = input of layer k; values.back() = outputs [B × C]
    const matrix<T>& outputs() const { return values.back(); }
};

// Checks |w| == P and X.cols == input_dim; usage_error otherwise.
void check_network_shapes(const model_spec& m, std::size_t w_size, std::size_t x_cols);
// usage_error unless m is a plain MLP: what the MLP-only passes (factors, magnitudes) need.
void require_mlp(const model_spec& m, const char* what);

// A model that is not a plain MLP runs through layer_tree.hpp: its forward pass keeps
// every node's input (pre-order) and then the outputs in `values`.
template <Real T>
forward_pass<T> forward(const model_spec& m, std::span<const T> w, const matrix<T>& x) {
    check_network_shapes(m, w.size(), x.cols);
    if (!m.is_mlp()) {
        forward_pass<T> fp;
        matrix<T> out = tree_forward<T>(compile_tree(m), w, x, &fp.values);
        fp.values.push_back(std::move(out));
        return fp;
    }
    const auto offsets = parameter_offsets(m);
    forward_pass<T> fp;
    fp.values.reserve(m.layers.size() + 1);
    fp.values.push_back(x);
    std::size_t li = 0;
    for (std::size_t k = 0; k < m.layers.size(); ++k) {
        const matrix<T>& h = fp.values.back();
        const layer_spec& l = m.layers[k];
        if (l.kind == layer_kind::linear) {
            const linear_offsets& o = offsets[li++];
            matrix<T> z(h.rows, o.out);
            if constexpr (std::is_floating_point_v<T>) {
                if (h.rows > 1) {  // Wᵀ once, rows of z streamed (vectorised over r); each entry's
                                   // operations as below, in the same order: the same bits
                    std::vector<T> wt(o.in * o.out);
                    for (std::size_t r = 0; r < o.out; ++r)
                        for (std::size_t j = 0; j < o.in; ++j) wt[j * o.out + r] = w[o.weight + r * o.in + j];
                    for (std::size_t i = 0; i < h.rows; ++i) {
                        T* zr = &z(i, 0);
                        const T h0 = h(i, 0);
                        for (std::size_t r = 0; r < o.out; ++r) zr[r] = wt[r] * h0;
                        for (std::size_t j = 1; j < o.in; ++j) {
                            const T hj = h(i, j);
                            const T* wj = wt.data() + j * o.out;
                            for (std::size_t r = 0; r < o.out; ++r) add_product(zr[r], wj[r], hj);
                        }
                        if (o.has_bias)
                            for (std::size_t r = 0; r < o.out; ++r) zr[r] += w[o.bias + r];
                    }
                    fp.values.push_back(std::move(z));
                    continue;
                }
            }
            for (std::size_t i = 0; i < h.rows; ++i)
                for (std::size_t r = 0; r < o.out; ++r) {
                    // z = Σ_j W[r][j] h[j] (j ascending), then + b[r]
                    const T* wr = w.data() + o.weight + r * o.in;
                    T acc = wr[0] * h(i, 0);
                    for (std::size_t j = 1; j < o.in; ++j) add_product(acc, wr[j], h(i, j));
                    if (o.has_bias) acc += w[o.bias + r];
                    z(i, r) = acc;
                }
            fp.values.push_back(std::move(z));
        } else {
            const activation<T> act(l);
            matrix<T> a(h.rows, h.cols);
            for (std::size_t e = 0; e < h.data.size(); ++e) a.data[e] = act.value(h.data[e]);
            fp.values.push_back(std::move(a));
        }
    }
    return fp;
}

template <Real T>
matrix<T> outputs(const model_spec& m, std::span<const T> w, const matrix<T>& x) {
    return forward(m, w, x).values.back();
}

// Reverse mode: g += Σ_i J(x_i; w)ᵀ u_i for the batch of `fp`; u is [B × C].
// Returns the adjoint of the inputs [B × D] as well (for tests).
// `input_adjoint` false: the adjoint below the first linear layer is not formed (the trainer's
// gradient needs none; the returned matrix is then empty).
template <Real T>
matrix<T> backward_accumulate(const model_spec& m, std::span<const T> w, const forward_pass<T>& fp,
                              const matrix<T>& u, std::span<T> g, bool input_adjoint = true) {
    const auto offsets = parameter_offsets(m);
    if (g.size() != w.size()) throw usage_error("backward: gradient size != P");
    if (u.rows != fp.outputs().rows || u.cols != fp.outputs().cols) throw usage_error("backward: adjoint shape != outputs");
    if (u.rows == 0) throw usage_error("backward: empty batch");
    if (!m.is_mlp()) {
        const std::vector<matrix<T>> tape(fp.values.begin(), fp.values.end() - 1);
        return tree_backward<T>(compile_tree(m), w, tape, u, g);
    }
    matrix<T> adj = u;  // adjoint of values[k+1]
    std::size_t li = offsets.size();
    for (std::size_t k = m.layers.size(); k-- > 0;) {
        const matrix<T>& h = fp.values[k];
        const layer_spec& l = m.layers[k];
        if (l.kind == layer_kind::linear) {
            const linear_offsets& o = offsets[--li];
            // ∂W[r][j] += Σ_i adj[i][r] h[i][j]   (i ascending; the loops run i outermost
            // so that rows stream, each entry's sum in the same order)
            {
                std::vector<T> acc(o.out * o.in);
                for (std::size_t r = 0; r < o.out; ++r)
                    for (std::size_t j = 0; j < o.in; ++j) acc[r * o.in + j] = adj(0, r) * h(0, j);
                // Rows of ∂W in blocks that stay in cache while the batch streams past them.
                const std::size_t rows_per_block = std::max<std::size_t>(1, 2048 / std::max<std::size_t>(1, o.in));
                for (std::size_t r0 = 0; r0 < o.out; r0 += rows_per_block) {
                    const std::size_t r1 = std::min(o.out, r0 + rows_per_block);
                    for (std::size_t i = 1; i < h.rows; ++i)
                        for (std::size_t r = r0; r < r1; ++r) {
                            const T& ar = adj(i, r);
                            T* row = acc.data() + r * o.in;
                            const T* hi = &h(i, 0);
                            for (std::size_t j = 0; j < o.in; ++j) add_product(row[j], ar, hi[j]);
                        }
                }
                for (std::size_t e = 0; e < acc.size(); ++e) g[o.weight + e] += acc[e];
            }
            // ∂b[r] += Σ_i adj[i][r]
            if (o.has_bias)
                for (std::size_t r = 0; r < o.out; ++r) {
                    T acc = adj(0, r);
                    for (std::size_t i = 1; i < h.rows; ++i) acc += adj(i, r);
                    g[o.bias + r] += acc;
                }
            if (!input_adjoint && li == 0) return {};  // no parameters below this layer
            // adjoint of h: adj_h[i][j] = Σ_r W[r][j] adj[i][r]   (r ascending; the loops run
            // r outside j so that W's rows stream, each entry's sum in the same order)
            matrix<T> prev(h.rows, o.in);
            for (std::size_t i = 0; i < h.rows; ++i) {
                T* pr = &prev(i, 0);
                const T& a0 = adj(i, 0);
                for (std::size_t j = 0; j < o.in; ++j) pr[j] = w[o.weight + j] * a0;
                for (std::size_t r = 1; r < o.out; ++r) {
                    const T& ar = adj(i, r);
                    const T* wr = w.data() + o.weight + r * o.in;
                    for (std::size_t j = 0; j < o.in; ++j) add_product(pr[j], wr[j], ar);
                }
            }
            adj = std::move(prev);
        } else {
            const activation<T> act(l);
            // adj_h = σ'(h) ⊙ adj
            const matrix<T>& y = fp.values[k + 1];
            for (std::size_t e = 0; e < adj.data.size(); ++e)
                adj.data[e] = act.derivative_given_value(h.data[e], y.data[e]) * adj.data[e];
        }
    }
    return adj;
}

// Σ_i J(x_i; w)ᵀ u_i  (∈ R^P).
template <Real T>
std::vector<T> vjp(const model_spec& m, std::span<const T> w, const matrix<T>& x, const matrix<T>& u) {
    const forward_pass<T> fp = forward(m, w, x);
    std::vector<T> g(w.size(), T(0));
    backward_accumulate<T>(m, w, fp, u, g);
    return g;
}

// Forward mode with every intermediate: values[k] as forward() and
// tangents[k] = their derivative along v in parameter space (d/dε of the
// values at w + εv); tangents[0] = 0 (inputs are constants).
template <Real T>
struct tangent_pass {
    std::vector<matrix<T>> values, tangents;
};

template <Real T>
tangent_pass<T> forward_with_tangent(const model_spec& m, std::span<const T> w, const matrix<T>& x,
                                     std::span<const T> v) {
    check_network_shapes(m, w.size(), x.cols);
    if (v.size() != w.size()) throw usage_error("jvp: tangent size != P");
    if (!m.is_mlp()) {  // every node's input (pre-order, as forward()'s values), then the outputs
        tangent_pass<T> tp;
        auto [z, dz] = tree_jvp<T>(compile_tree(m), w, x, v, &tp.values, &tp.tangents);
        tp.values.push_back(std::move(z));
        tp.tangents.push_back(std::move(dz));
        return tp;
    }
    const auto offsets = parameter_offsets(m);
    tangent_pass<T> tp;
    tp.values.push_back(x);
    tp.tangents.emplace_back(x.rows, x.cols);
    std::size_t li = 0;
    for (std::size_t k = 0; k < m.layers.size(); ++k) {
        const matrix<T>& h = tp.values.back();
        const matrix<T>& dh = tp.tangents.back();
        const layer_spec& l = m.layers[k];
        matrix<T> z, dz;
        if (l.kind == layer_kind::linear) {
            const linear_offsets& o = offsets[li++];
            z = matrix<T>(h.rows, o.out);
            dz = matrix<T>(h.rows, o.out);
            for (std::size_t i = 0; i < h.rows; ++i)
                for (std::size_t r = 0; r < o.out; ++r) {
                    const T* wr = w.data() + o.weight + r * o.in;
                    const T* vr = v.data() + o.weight + r * o.in;
                    T acc = wr[0] * h(i, 0);
                    for (std::size_t j = 1; j < o.in; ++j) add_product(acc, wr[j], h(i, j));
                    if (o.has_bias) acc += w[o.bias + r];
                    z(i, r) = acc;
                    // dz = Σ_j W[r][j] dh[j] + Σ_j V[r][j] h[j] + vb[r]
                    T dacc = wr[0] * dh(i, 0);
                    for (std::size_t j = 1; j < o.in; ++j) add_product(dacc, wr[j], dh(i, j));
                    for (std::size_t j = 0; j < o.in; ++j) add_product(dacc, vr[j], h(i, j));
                    if (o.has_bias) dacc += v[o.bias + r];
                    dz(i, r) = dacc;
                }
        } else {
            const activation<T> act(l);
            z = matrix<T>(h.rows, h.cols);
            dz = matrix<T>(h.rows, h.cols);
            for (std::size_t e = 0; e < h.data.size(); ++e) {
                // d σ(z) = σ'(z) dz
                z.data[e] = act.value(h.data[e]);
                dz.data[e] = act.derivative(h.data[e]) * dh.data[e];
            }
        }
        tp.values.push_back(std::move(z));
        tp.tangents.push_back(std::move(dz));
    }
    return tp;
}

// Forward mode: row i of the result is J(x_i; w) v  (∈ R^C).
template <Real T>
matrix<T> jvp(const model_spec& m, std::span<const T> w, const matrix<T>& x, std::span<const T> v) {
    return forward_with_tangent<T>(m, w, x, v).tangents.back();
}

// Per-layer factors of J(x; w) for one input: for linear layer l (in order),
// input[l] = its input h (length in_l) and delta[l] = ∂f/∂z_l (C × out_l),
// z_l its output.  Then ∂f_c/∂W_l[r][j] = delta[l](c, r)·input[l][j] and
// ∂f_c/∂b_l[r] = delta[l](c, r): J is a sum of outer products (Kronecker).
template <Real T>
struct layer_factors {
    std::vector<std::vector<T>> input;
    std::vector<matrix<T>> delta;
};

template <Real T>
layer_factors<T> jacobian_factors(const model_spec& m, std::span<const T> w, const matrix<T>& x1) {
    require_mlp(m, "layer factors");
    if (x1.rows != 1) throw usage_error("jacobian: expects one input row");
    const forward_pass<T> fp = forward(m, w, x1);
    const std::size_t c = m.output_dim();
    const auto offsets = parameter_offsets(m);
    layer_factors<T> lf;
    lf.input.resize(offsets.size());
    lf.delta.resize(offsets.size());
    // adj(q, ·): adjoint of the current value for output q, starting from e_q.
    matrix<T> adj(c, c);
    for (std::size_t q = 0; q < c; ++q) adj(q, q) = T(1);
    std::size_t li = offsets.size();
    for (std::size_t k = m.layers.size(); k-- > 0;) {
        const matrix<T>& h = fp.values[k];
        const layer_spec& l = m.layers[k];
        if (l.kind == layer_kind::linear) {
            const linear_offsets& o = offsets[--li];
            lf.input[li].assign(h.data.begin(), h.data.end());
            // adjoint of h: adj_h[q][j] = Σ_r W[r][j] adj[q][r]   (r ascending)
            matrix<T> prev(c, o.in);
            for (std::size_t q = 0; q < c; ++q)
                for (std::size_t j = 0; j < o.in; ++j) {
                    T acc = w[o.weight + j] * adj(q, 0);
                    for (std::size_t r = 1; r < o.out; ++r) add_product(acc, w[o.weight + r * o.in + j], adj(q, r));
                    prev(q, j) = acc;
                }
            lf.delta[li] = std::move(adj);
            adj = std::move(prev);
        } else {
            const activation<T> act(l);
            // adj_h = σ'(h) ⊙ adj
            const matrix<T>& y = fp.values[k + 1];
            for (std::size_t j = 0; j < adj.cols; ++j) {
                const T d = act.derivative_given_value(h(0, j), y(0, j));
                for (std::size_t q = 0; q < c; ++q) adj(q, j) = d * adj(q, j);
            }
        }
    }
    return lf;
}

// The forward pass's error magnitudes, in binary64, from its computed values
// (proofs-notes/004 §5): M_x = 0 (inputs are exact), M_z = |W|(M_h + |h|) + |b|
// at a linear layer, M_h = |σ′(z)| M_z + |σ(z)| at an activation.  Returns M of
// the outputs; `linear_inputs` (optional) receives M_h + |h| for each linear
// layer's input h, the magnitude of that Jacobian factor.
template <Real T>
std::vector<double> forward_error_magnitude(const model_spec& m, std::span<const T> w, const forward_pass<T>& fp,
                                            std::vector<std::vector<double>>* linear_inputs = nullptr) {
    require_mlp(m, "layer factors");
    const auto offsets = parameter_offsets(m);
    auto d = [](const T& v) { return std::abs(scalar_traits<T>::to_double(v)); };
    std::vector<double> mh(fp.values[0].cols, 0.0);
    std::size_t li = 0;
    for (std::size_t k = 0; k < m.layers.size(); ++k) {
        const layer_spec& l = m.layers[k];
        if (l.kind == layer_kind::linear) {
            const linear_offsets& o = offsets[li++];
            if (linear_inputs != nullptr) {
                linear_inputs->push_back(mh);
                for (std::size_t j = 0; j < o.in; ++j) linear_inputs->back()[j] += d(fp.values[k](0, j));
            }
            std::vector<double> mz(o.out);
            for (std::size_t r = 0; r < o.out; ++r) {
                double acc = o.has_bias ? d(w[o.bias + r]) : 0.0;
                for (std::size_t j = 0; j < o.in; ++j) acc += d(w[o.weight + r * o.in + j]) * (mh[j] + d(fp.values[k](0, j)));
                mz[r] = acc;
            }
            mh = std::move(mz);
        } else {
            const activation<T> act(l);
            for (std::size_t j = 0; j < mh.size(); ++j)
                mh[j] = d(act.derivative(fp.values[k](0, j))) * mh[j] + d(fp.values[k + 1](0, j));
        }
    }
    return mh;
}

// Rounding scales of the layer factors, in binary64 (proofs-notes/004 §5):
// input[l] = M_h + |h| for layer l's input h (forward_error_magnitude),
// delta[l] = |δ|-magnitude by a backward pass with |W| and |σ′|.  Every computed
// J entry δ_l[c][r]·h_l[j] is within about γ·u·delta[l](c,r)·input[l][j] of the
// exact one, cancellation or not.
template <Real T>
layer_factors<double> magnitude_factors(const model_spec& m, std::span<const T> w, const matrix<T>& x1) {
    require_mlp(m, "layer factors");
    const forward_pass<T> fp = forward(m, w, x1);
    const std::size_t c = m.output_dim();
    const auto offsets = parameter_offsets(m);
    auto d = [](const T& v) { return std::abs(scalar_traits<T>::to_double(v)); };
    layer_factors<double> mf;
    forward_error_magnitude<T>(m, w, fp, &mf.input);
    mf.delta.resize(offsets.size());
    std::size_t li = offsets.size();
    matrix<double> adj(c, c);
    for (std::size_t q = 0; q < c; ++q) adj(q, q) = 1;
    for (std::size_t k = m.layers.size(); k-- > 0;) {
        const layer_spec& l = m.layers[k];
        if (l.kind == layer_kind::linear) {
            const linear_offsets& o = offsets[--li];
            matrix<double> prev(c, o.in);
            for (std::size_t q = 0; q < c; ++q)
                for (std::size_t j = 0; j < o.in; ++j) {
                    double acc = 0;
                    for (std::size_t r = 0; r < o.out; ++r) acc += d(w[o.weight + r * o.in + j]) * adj(q, r);
                    prev(q, j) = acc;
                }
            mf.delta[li] = std::move(adj);
            adj = std::move(prev);
        } else {
            const activation<T> act(l);
            for (std::size_t j = 0; j < adj.cols; ++j) {
                const double s = d(act.derivative(fp.values[k](0, j)));
                for (std::size_t q = 0; q < c; ++q) adj(q, j) *= s;
            }
        }
    }
    return mf;
}

// J(x; w) ∈ R^{C × P} for one input row x (1 × D): the outer products of
// the layer factors written into torch's parameter order.
template <Real T>
matrix<T> jacobian_from_factors(const model_spec& m, const layer_factors<T>& lf, std::size_t p) {
    const auto offsets = parameter_offsets(m);
    const std::size_t c = m.output_dim();
    matrix<T> jac(c, p);
    for (std::size_t li = 0; li < offsets.size(); ++li) {
        const linear_offsets& o = offsets[li];
        for (std::size_t q = 0; q < c; ++q)
            for (std::size_t r = 0; r < o.out; ++r) {
                const T& d = lf.delta[li](q, r);
                // ∂f_q/∂W[r][j] = δ_q[r] h[j];  ∂f_q/∂b[r] = δ_q[r]
                for (std::size_t j = 0; j < o.in; ++j) jac(q, o.weight + r * o.in + j) = d * lf.input[li][j];
                if (o.has_bias) jac(q, o.bias + r) = d;
            }
    }
    return jac;
}

// J(x; w) ∈ R^{C × P} for one input row.  A tree model: one reverse sweep per output,
// seeded with e_q, from one forward pass.
template <Real T>
matrix<T> jacobian(const model_spec& m, std::span<const T> w, const matrix<T>& x1) {
    if (!m.is_mlp()) {
        if (x1.rows != 1) throw usage_error("jacobian: expects one input row");
        check_network_shapes(m, w.size(), x1.cols);
        const layer_tree t = compile_tree(m);
        std::vector<matrix<T>> tape;
        tree_forward<T>(t, w, x1, &tape);
        matrix<T> jac(t.out_size, w.size());
        for (std::size_t q = 0; q < t.out_size; ++q) {
            matrix<T> u(1, t.out_size);
            u(0, q) = T(1);
            tree_backward<T>(t, w, tape, u, jac.row(q));
        }
        return jac;
    }
    return jacobian_from_factors<T>(m, jacobian_factors<T>(m, w, x1), w.size());
}

// J(x_i; w) for every row of a batch (one C × P matrix per row).
template <Real T>
std::vector<matrix<T>> jacobians(const model_spec& m, std::span<const T> w, const matrix<T>& x) {
    std::vector<matrix<T>> out;
    out.reserve(x.rows);
    for (std::size_t i = 0; i < x.rows; ++i) out.push_back(jacobian<T>(m, w, gather_rows(x, std::vector<std::size_t>{i})));
    return out;
}

}  // namespace epk

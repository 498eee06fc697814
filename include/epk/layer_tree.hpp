// epk/layer_tree.hpp — a model as a tree of layers, and one small interpreter per pass.
//
// A model (model_spec) is a sequence of layers; a residual layer holds two sequences,
// body and shortcut, whose outputs are added.  compile_tree() follows the shapes once
// and gives every node its input/output shape and its span of w (torch's
// parameters_to_vector order: a layer's own parameters, a residual's body's then its
// shortcut's).  The passes below walk the tree and never look inside a layer: each
// kind's arithmetic is its unit in epk/layers/ (linear, conv2d, pool2d, layer_norm,
// activation, and the sequence layers: sequence, attention).  A value is a matrix
// [B × numel], one flattened sample (C order) per row; token ids are reals holding integers.
//
//   tree_forward   values of the batch, keeping every node's input on a tape
//   tree_backward  g += Σ_i J(x_i; w)ᵀ u_i from the tape (reverse mode)
//   tree_jvp       J(x_i; w) v for every row (forward mode)
//
// network.hpp routes every model that is not a plain MLP (model_spec::is_mlp) here; the
// MLP keeps its own loops, bit for bit as before.  Sums over a batch run i ascending.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "epk/layers/activation.hpp"
#include "epk/layers/attention.hpp"
#include "epk/layers/conv2d.hpp"
#include "epk/layers/layer_norm.hpp"
#include "epk/layers/linear.hpp"
#include "epk/layers/pool2d.hpp"
#include "epk/layers/sequence.hpp"
#include "epk/matrix.hpp"
#include "epk/model_spec.hpp"

namespace epk {

struct tree_node {
    layer_spec spec;                     // body/shortcut of a residual live in the node's children
    std::string path;                    // "layers[3].body[2]"
    std::vector<std::size_t> in_shape, out_shape;
    std::size_t in_size = 0, out_size = 0;
    std::size_t offset = 0, count = 0;   // this node's own parameters in w
    std::vector<tree_node> body, shortcut;
    layers::patch_runs patches;  // conv2d: im2col's index runs (layers::conv_patch_runs)

    layers::linear_geometry linear() const;
    layers::conv_geometry conv() const;
    layers::pool_geometry pool() const;
    layers::norm_geometry norm() const;
    layers::attention_geometry attention() const;
    layers::sequence_geometry sequence() const;  // embedding, positional_embedding, select, mean_tokens
};

struct layer_tree {
    std::vector<tree_node> layers;
    std::size_t in_size = 0, out_size = 0, parameters = 0;
};

// The model's tree; usage_error (check_model's rule) when the model is impossible.
layer_tree compile_tree(const model_spec& m);
// Every node, pre-order (a residual before its body, the body before the shortcut).
std::vector<const tree_node*> tree_nodes(const layer_tree& t);

namespace tree_detail {

template <Real T>
matrix<T> forward_node(const tree_node& n, std::span<const T> w, const matrix<T>& h, std::vector<matrix<T>>* tape);

template <Real T>
matrix<T> forward_sequence(const std::vector<tree_node>& seq, std::span<const T> w, matrix<T> h,
                           std::vector<matrix<T>>* tape) {
    for (const tree_node& n : seq) h = forward_node(n, w, h, tape);
    return h;
}

template <Real T>
matrix<T> forward_node(const tree_node& n, std::span<const T> w, const matrix<T>& h, std::vector<matrix<T>>* tape) {
    if (tape != nullptr) tape->push_back(h);
    const std::size_t B = h.rows;
    matrix<T> z(B, n.out_size);
    const T* wp = w.data() + n.offset;
    switch (n.spec.kind) {
        case layer_kind::residual: {
            const matrix<T> b = forward_sequence(n.body, w, h, tape);
            const matrix<T> s = forward_sequence(n.shortcut, w, h, tape);
            // body(x) + shortcut(x)
            for (std::size_t e = 0; e < z.data.size(); ++e) z.data[e] = b.data[e] + s.data[e];
            break;
        }
        case layer_kind::linear: {
            const auto g = n.linear();
            for (std::size_t i = 0; i < B; ++i) layers::linear_apply<T>(g, wp, &h(i, 0), &z(i, 0), true);
            break;
        }
        case layer_kind::conv2d: {
            const auto g = n.conv();
            for (std::size_t i = 0; i < B; ++i) layers::conv_apply<T>(g, wp, &h(i, 0), &z(i, 0), true);
            break;
        }
        case layer_kind::max_pool2d: {
            const auto g = n.pool();
            std::vector<std::size_t> arg(n.out_size);
            for (std::size_t i = 0; i < B; ++i) {
                layers::max_pool_argmax<T>(g, &h(i, 0), arg.data());
                for (std::size_t e = 0; e < n.out_size; ++e) z(i, e) = h(i, arg[e]);
            }
            break;
        }
        case layer_kind::avg_pool2d: {
            const auto g = n.pool();
            for (std::size_t i = 0; i < B; ++i) layers::avg_pool_apply<T>(g, &h(i, 0), &z(i, 0));
            break;
        }
        case layer_kind::layer_norm: {
            const auto g = n.norm();
            for (std::size_t i = 0; i < B; ++i) layers::layer_norm_forward<T>(g, wp, &h(i, 0), &z(i, 0));
            break;
        }
        case layer_kind::flatten: z.data = h.data; break;  // C order: the same numbers
        case layer_kind::embedding:
            for (std::size_t i = 0; i < B; ++i) layers::embedding_forward<T>(n.sequence(), wp, &h(i, 0), &z(i, 0));
            break;
        case layer_kind::positional_embedding:
            for (std::size_t i = 0; i < B; ++i) layers::positional_forward<T>(n.sequence(), wp, &h(i, 0), &z(i, 0));
            break;
        case layer_kind::self_attention:
            for (std::size_t i = 0; i < B; ++i) layers::attention_forward<T>(n.attention(), wp, &h(i, 0), &z(i, 0));
            break;
        case layer_kind::select:
            for (std::size_t i = 0; i < B; ++i) layers::select_apply<T>(n.sequence(), &h(i, 0), &z(i, 0));
            break;
        case layer_kind::mean_tokens:
            for (std::size_t i = 0; i < B; ++i) layers::mean_tokens_apply<T>(n.sequence(), &h(i, 0), &z(i, 0));
            break;
        default: {
            const activation<T> act(n.spec);
            for (std::size_t e = 0; e < h.data.size(); ++e) z.data[e] = act.value(h.data[e]);
        }
    }
    return z;
}

// Reverse step of one node: returns the adjoint of its input; pops its entries off the tape
// (`at` counts down).  gw accumulates into g over the batch, i ascending, then g += gw.
template <Real T>
matrix<T> backward_node(const tree_node& n, std::span<const T> w, const std::vector<matrix<T>>& tape,
                        std::size_t& at, const matrix<T>& adj, std::span<T> g);

template <Real T>
matrix<T> backward_sequence(const std::vector<tree_node>& seq, std::span<const T> w,
                            const std::vector<matrix<T>>& tape, std::size_t& at, matrix<T> adj, std::span<T> g) {
    for (std::size_t k = seq.size(); k-- > 0;) adj = backward_node(seq[k], w, tape, at, adj, g);
    return adj;
}

template <Real T>
matrix<T> backward_node(const tree_node& n, std::span<const T> w, const std::vector<matrix<T>>& tape,
                        std::size_t& at, const matrix<T>& adj, std::span<T> g) {
    if (n.spec.kind == layer_kind::residual) {
        // d(body + shortcut): the adjoint flows into both; the shortcut was taped last.
        const matrix<T> as = backward_sequence(n.shortcut, w, tape, at, adj, g);
        matrix<T> ab = backward_sequence(n.body, w, tape, at, adj, g);
        --at;  // the residual's own input
        for (std::size_t e = 0; e < ab.data.size(); ++e) ab.data[e] += as.data[e];
        return ab;
    }
    const matrix<T>& h = tape[--at];
    const std::size_t B = h.rows;
    matrix<T> prev(B, n.in_size);
    const T* wp = w.data() + n.offset;
    std::vector<T> gw(n.count, T(0));
    switch (n.spec.kind) {
        case layer_kind::linear: {
            const auto geo = n.linear();
            for (std::size_t i = 0; i < B; ++i)
                layers::linear_backward<T>(geo, wp, &h(i, 0), &adj(i, 0), &prev(i, 0), gw.data());
            break;
        }
        case layer_kind::conv2d: {
            const auto geo = n.conv();
            for (std::size_t i = 0; i < B; ++i)
                layers::conv_backward<T>(geo, wp, &h(i, 0), &adj(i, 0), &prev(i, 0), gw.data());
            break;
        }
        case layer_kind::max_pool2d: {
            // d z = d h[argmax]: the adjoint goes to the maximiser
            const auto geo = n.pool();
            std::vector<std::size_t> arg(n.out_size);
            for (std::size_t i = 0; i < B; ++i) {
                layers::max_pool_argmax<T>(geo, &h(i, 0), arg.data());
                for (std::size_t e = 0; e < n.out_size; ++e) prev(i, arg[e]) += adj(i, e);
            }
            break;
        }
        case layer_kind::avg_pool2d: {
            const auto geo = n.pool();
            for (std::size_t i = 0; i < B; ++i) layers::avg_pool_backward<T>(geo, &adj(i, 0), &prev(i, 0));
            break;
        }
        case layer_kind::layer_norm: {
            const auto geo = n.norm();
            for (std::size_t i = 0; i < B; ++i)
                layers::layer_norm_backward<T>(geo, wp, &h(i, 0), &adj(i, 0), &prev(i, 0), gw.data());
            break;
        }
        case layer_kind::flatten: prev.data = adj.data; break;
        case layer_kind::embedding:  // token ids: no input adjoint (prev stays 0)
            for (std::size_t i = 0; i < B; ++i) layers::embedding_backward<T>(n.sequence(), &h(i, 0), &adj(i, 0), gw.data());
            break;
        case layer_kind::positional_embedding:
            // ∂P += dy, dx = dy
            for (std::size_t i = 0; i < B; ++i)
                for (std::size_t e = 0; e < n.count; ++e) gw[e] += adj(i, e);
            prev.data = adj.data;
            break;
        case layer_kind::self_attention: {
            const auto geo = n.attention();
            for (std::size_t i = 0; i < B; ++i)
                layers::attention_backward<T>(geo, wp, &h(i, 0), &adj(i, 0), &prev(i, 0), gw.data());
            break;
        }
        case layer_kind::select:
            for (std::size_t i = 0; i < B; ++i) layers::select_backward<T>(n.sequence(), &adj(i, 0), &prev(i, 0));
            break;
        case layer_kind::mean_tokens:
            for (std::size_t i = 0; i < B; ++i) layers::mean_tokens_backward<T>(n.sequence(), &adj(i, 0), &prev(i, 0));
            break;
        default: {
            // adj_h = σ'(h) ⊙ adj
            const activation<T> act(n.spec);
            for (std::size_t e = 0; e < adj.data.size(); ++e) prev.data[e] = act.derivative(h.data[e]) * adj.data[e];
        }
    }
    for (std::size_t p = 0; p < n.count; ++p) g[n.offset + p] += gw[p];
    return prev;
}

// Forward mode through one node: (z, dz) from (h, dh); v is the parameters' tangent.
template <Real T>
std::pair<matrix<T>, matrix<T>> jvp_node(const tree_node& n, std::span<const T> w, std::span<const T> v,
                                         const matrix<T>& h, const matrix<T>& dh);

template <Real T>
std::pair<matrix<T>, matrix<T>> jvp_sequence(const std::vector<tree_node>& seq, std::span<const T> w,
                                             std::span<const T> v, matrix<T> h, matrix<T> dh) {
    for (const tree_node& n : seq) std::tie(h, dh) = jvp_node(n, w, v, h, dh);
    return {std::move(h), std::move(dh)};
}

template <Real T>
std::pair<matrix<T>, matrix<T>> jvp_node(const tree_node& n, std::span<const T> w, std::span<const T> v,
                                         const matrix<T>& h, const matrix<T>& dh) {
    const std::size_t B = h.rows;
    matrix<T> z(B, n.out_size), dz(B, n.out_size);
    const T* wp = w.data() + n.offset;
    const T* vp = v.data() + n.offset;
    switch (n.spec.kind) {
        case layer_kind::residual: {
            auto [b, db] = jvp_sequence(n.body, w, v, h, dh);
            auto [s, ds] = jvp_sequence(n.shortcut, w, v, h, dh);
            for (std::size_t e = 0; e < z.data.size(); ++e) {
                z.data[e] = b.data[e] + s.data[e];
                dz.data[e] = db.data[e] + ds.data[e];
            }
            break;
        }
        case layer_kind::linear:
        case layer_kind::conv2d: {
            // d(A(w) h + b) = A(w) dh + (A(v) h + v_b): bilinear in (w, h)
            std::vector<T> t(n.out_size);
            for (std::size_t i = 0; i < B; ++i) {
                if (n.spec.kind == layer_kind::linear) {
                    layers::linear_apply<T>(n.linear(), wp, &h(i, 0), &z(i, 0), true);
                    layers::linear_apply<T>(n.linear(), wp, &dh(i, 0), &dz(i, 0), false);
                    layers::linear_apply<T>(n.linear(), vp, &h(i, 0), t.data(), true);
                } else {
                    layers::conv_apply<T>(n.conv(), wp, &h(i, 0), &z(i, 0), true);
                    layers::conv_apply<T>(n.conv(), wp, &dh(i, 0), &dz(i, 0), false);
                    layers::conv_apply<T>(n.conv(), vp, &h(i, 0), t.data(), true);
                }
                for (std::size_t e = 0; e < n.out_size; ++e) dz(i, e) += t[e];
            }
            break;
        }
        case layer_kind::max_pool2d: {
            // d z = d h[argmax]
            std::vector<std::size_t> arg(n.out_size);
            for (std::size_t i = 0; i < B; ++i) {
                layers::max_pool_argmax<T>(n.pool(), &h(i, 0), arg.data());
                for (std::size_t e = 0; e < n.out_size; ++e) {
                    z(i, e) = h(i, arg[e]);
                    dz(i, e) = dh(i, arg[e]);
                }
            }
            break;
        }
        case layer_kind::avg_pool2d:
            for (std::size_t i = 0; i < B; ++i) {
                layers::avg_pool_apply<T>(n.pool(), &h(i, 0), &z(i, 0));
                layers::avg_pool_apply<T>(n.pool(), &dh(i, 0), &dz(i, 0));
            }
            break;
        case layer_kind::layer_norm:
            for (std::size_t i = 0; i < B; ++i)
                layers::layer_norm_jvp<T>(n.norm(), wp, vp, &h(i, 0), &dh(i, 0), &z(i, 0), &dz(i, 0));
            break;
        case layer_kind::flatten: z.data = h.data; dz.data = dh.data; break;
        case layer_kind::embedding:  // dy_t = v_W[id_t] (the ids have no tangent)
            for (std::size_t i = 0; i < B; ++i) {
                layers::embedding_forward<T>(n.sequence(), wp, &h(i, 0), &z(i, 0));
                layers::embedding_forward<T>(n.sequence(), vp, &h(i, 0), &dz(i, 0));
            }
            break;
        case layer_kind::positional_embedding:  // d(x + P) = dx + v_P
            for (std::size_t i = 0; i < B; ++i) {
                layers::positional_forward<T>(n.sequence(), wp, &h(i, 0), &z(i, 0));
                layers::positional_forward<T>(n.sequence(), vp, &dh(i, 0), &dz(i, 0));
            }
            break;
        case layer_kind::self_attention:
            for (std::size_t i = 0; i < B; ++i)
                layers::attention_jvp<T>(n.attention(), wp, vp, &h(i, 0), &dh(i, 0), &z(i, 0), &dz(i, 0));
            break;
        case layer_kind::select:
            for (std::size_t i = 0; i < B; ++i) {
                layers::select_apply<T>(n.sequence(), &h(i, 0), &z(i, 0));
                layers::select_apply<T>(n.sequence(), &dh(i, 0), &dz(i, 0));
            }
            break;
        case layer_kind::mean_tokens:
            for (std::size_t i = 0; i < B; ++i) {
                layers::mean_tokens_apply<T>(n.sequence(), &h(i, 0), &z(i, 0));
                layers::mean_tokens_apply<T>(n.sequence(), &dh(i, 0), &dz(i, 0));
            }
            break;
        default: {
            // d σ(z) = σ'(z) dz
            const activation<T> act(n.spec);
            for (std::size_t e = 0; e < h.data.size(); ++e) {
                z.data[e] = act.value(h.data[e]);
                dz.data[e] = act.derivative(h.data[e]) * dh.data[e];
            }
        }
    }
    return {std::move(z), std::move(dz)};
}

// Forward mode keeping every node's input and its tangent (pre-order), as forward_node's tape.
template <Real T>
std::pair<matrix<T>, matrix<T>> jvp_sequence_taped(const std::vector<tree_node>& seq, std::span<const T> w,
                                                   std::span<const T> v, matrix<T> h, matrix<T> dh,
                                                   std::vector<matrix<T>>& values, std::vector<matrix<T>>& tangents) {
    for (const tree_node& n : seq) {
        values.push_back(h);
        tangents.push_back(dh);
        if (n.spec.kind == layer_kind::residual) {
            auto [b, db] = jvp_sequence_taped(n.body, w, v, h, dh, values, tangents);
            auto [s, ds] = jvp_sequence_taped(n.shortcut, w, v, h, dh, values, tangents);
            for (std::size_t e = 0; e < b.data.size(); ++e) {
                b.data[e] += s.data[e];
                db.data[e] += ds.data[e];
            }
            h = std::move(b);
            dh = std::move(db);
        } else {
            std::tie(h, dh) = jvp_node(n, w, v, h, dh);
        }
    }
    return {std::move(h), std::move(dh)};
}

}  // namespace tree_detail

// The outputs [B × C]; with a tape, every node's input in pre-order.
template <Real T>
matrix<T> tree_forward(const layer_tree& t, std::span<const T> w, const matrix<T>& x,
                       std::vector<matrix<T>>* tape = nullptr) {
    return tree_detail::forward_sequence(t.layers, w, x, tape);
}

// g += Σ_i J(x_i; w)ᵀ u_i from tree_forward's tape; returns the inputs' adjoint.
template <Real T>
matrix<T> tree_backward(const layer_tree& t, std::span<const T> w, const std::vector<matrix<T>>& tape,
                        const matrix<T>& u, std::span<T> g) {
    std::size_t at = tape.size();
    matrix<T> adj = tree_detail::backward_sequence(t.layers, w, tape, at, u, g);
    if (at != 0) throw usage_error("tree_backward: the tape is not this model's");
    return adj;
}

// (outputs, J(x_i; w) v for every row).
// With tapes: every node's input and its tangent in pre-order (forward's tape), then the outputs.
template <Real T>
std::pair<matrix<T>, matrix<T>> tree_jvp(const layer_tree& t, std::span<const T> w, const matrix<T>& x,
                                         std::span<const T> v, std::vector<matrix<T>>* values = nullptr,
                                         std::vector<matrix<T>>* tangents = nullptr) {
    if (values == nullptr) return tree_detail::jvp_sequence(t.layers, w, v, x, matrix<T>(x.rows, x.cols));
    return tree_detail::jvp_sequence_taped(t.layers, w, v, x, matrix<T>(x.rows, x.cols), *values, *tangents);
}

}  // namespace epk

// epk/layers/sequence.hpp — the token layers: embedding, positional_embedding, select,
// mean_tokens (a sample is a sequence [T, D], row-major: token t's D entries at t·D).
//
// embedding (torch.nn.Embedding): token ids [T] → [T, D], y_t = W[id_t] (W ∈ R^{V×D}).
//   The ids are the model's input, discrete: no input derivative.  y is linear in W, and
//   exactly a copy (nothing rounds).  Its gradient is sparse: only the rows of the tokens
//   the sample holds, ∂W[id_t] += dy_t (t ascending; a repeated token sums its positions).
//   VJP: ∂W[id_t][d] += dy[t][d].   JVP: dy_t = v_W[id_t].
// positional_embedding (a learned [T, D] added): y = x + P.
//   VJP: ∂P += dy, dx = dy.   JVP: dy = dx + v_P.
// select (x[:, index]): y = x_index.   VJP: dx_index = dy.   JVP: dy = dx_index.
// mean_tokens (x.mean(dim=1)): y_d = (Σ_t x[t][d])/T, t ascending, then one division (torch).
//   VJP: dx[t][d] = dy_d / T.   JVP: the same map on dx.
// All four are affine in (parameters, input) — polynomial along a step like linear — and
// have no switching functions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "epk/model_spec.hpp"
#include "epk/scalar.hpp"

namespace epk::layers {

struct sequence_geometry {
    std::size_t T, D, V;  // tokens, width, vocabulary (embedding)
    std::size_t index;    // select: the token, in [0, T)
};

// Token ids of one sample (reals holding integers), checked against V.
template <Real T_>
std::size_t token_at(const sequence_geometry& g, const T_* x, std::size_t t) {
    return token_id(scalar_traits<T_>::to_double(x[t]), g.V);
}

template <Real T_>
void embedding_forward(const sequence_geometry& g, const T_* w, const T_* x, T_* y) {
    for (std::size_t t = 0; t < g.T; ++t) {
        const T_* row = w + token_at(g, x, t) * g.D;
        for (std::size_t d = 0; d < g.D; ++d) y[t * g.D + d] = row[d];
    }
}
template <Real T_>
void embedding_backward(const sequence_geometry& g, const T_* x, const T_* dy, T_* gw) {
    for (std::size_t t = 0; t < g.T; ++t) {
        T_* row = gw + token_at(g, x, t) * g.D;
        for (std::size_t d = 0; d < g.D; ++d) row[d] += dy[t * g.D + d];
    }
}

template <Real T_>
void positional_forward(const sequence_geometry& g, const T_* w, const T_* x, T_* y) {
    for (std::size_t e = 0; e < g.T * g.D; ++e) y[e] = x[e] + w[e];
}

template <Real T_>
void select_apply(const sequence_geometry& g, const T_* x, T_* y) {
    for (std::size_t d = 0; d < g.D; ++d) y[d] = x[g.index * g.D + d];
}
template <Real T_>
void select_backward(const sequence_geometry& g, const T_* dy, T_* dx) {
    for (std::size_t d = 0; d < g.D; ++d) dx[g.index * g.D + d] += dy[d];
}

template <Real T_>
void mean_tokens_apply(const sequence_geometry& g, const T_* x, T_* y) {
    const T_ n = T_(static_cast<double>(g.T));
    for (std::size_t d = 0; d < g.D; ++d) {
        T_ acc = x[d];
        for (std::size_t t = 1; t < g.T; ++t) acc += x[t * g.D + d];
        y[d] = acc / n;
    }
}
template <Real T_>
void mean_tokens_backward(const sequence_geometry& g, const T_* dy, T_* dx) {
    const T_ n = T_(static_cast<double>(g.T));
    for (std::size_t d = 0; d < g.D; ++d) {
        const T_ v = dy[d] / n;
        for (std::size_t t = 0; t < g.T; ++t) dx[t * g.D + d] += v;
    }
}

}  // namespace epk::layers

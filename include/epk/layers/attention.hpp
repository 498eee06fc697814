// epk/layers/attention.hpp — self-attention: torch.nn.MultiheadAttention(D, H, bias,
// batch_first=True) called as attn(x, x, x, need_weights=False, attn_mask=causal mask).
//
// One sample x ∈ R^{T×D}.  Parameters in torch's order: in_proj_weight W_in [3D × D],
// in_proj_bias b_in [3D] (with bias), out_proj.weight W_o [D × D], out_proj.bias b_o [D].
//   [Q K V] = x W_inᵀ + b_in                       (Q, K, V: the three D-column blocks)
//   per head h (columns h·d_h … (h+1)·d_h − 1, d_h = D/H), per query position i:
//     q̃_i = q_i / √d_h                                (torch scales the query first)
//     s_ij = q̃_i · k_j       for j ∈ A(i) = {0..T−1}, or {0..i} when causal
//     p_ij = exp(s_ij − m_i) / Σ_{j'} exp(s_ij' − m_i),   m_i = max_j s_ij (softmax's max subtraction)
//     o_i  = Σ_j p_ij v_j
//   y = O W_oᵀ + b_o
// Every step is analytic (exp, products, one division by a positive sum): a network with
// attention takes the adaptive path; the max subtraction changes no value (softmax is shift
// invariant), only the rounding.  Derivative rules, per head and query i:
//   VJP:  dO = dy W_o (∂W_o += dyᵀO, ∂b_o += Σ dy);  dp_ij = dO_i·v_j;  dv_j += p_ij dO_i;
//         ds_ij = p_ij (dp_ij − Σ_j' p_ij' dp_ij');  dq̃_i += ds_ij k_j;  dk_j += ds_ij q̃_i;
//         dq = dq̃/√d_h;  then in_proj's linear VJP (∂W_in, ∂b_in, dx).
//   JVP:  d[Q K V] = W_in dx + (v_W_in x + v_b_in);  ds_ij = dq̃_i·k_j + q̃_i·dk_j;
//         dp_ij = p_ij (ds_ij − Σ_j' p_ij' ds_ij');  do_i = Σ_j (dp_ij v_j + p_ij dv_j);
//         dy = W_o do + (v_W_o O + v_b_o).
// Sums run in index order (j ascending, d ascending).
#pragma once

#include <cstddef>
#include <vector>

#include "epk/layers/linear.hpp"
#include "epk/scalar.hpp"

namespace epk::layers {

struct attention_geometry {
    std::size_t T, D, H;
    bool bias, causal;
    std::size_t dh() const { return D / H; }
    linear_geometry in_proj() const { return {T, D, 3 * D, bias}; }
    linear_geometry out_proj() const { return {T, D, D, bias}; }
    std::size_t out_offset() const { return 3 * D * D + (bias ? 3 * D : 0); }  // W_o in w
    std::size_t count() const { return out_offset() + D * D + (bias ? D : 0); }
    std::size_t keys(std::size_t i) const { return causal ? i + 1 : T; }  // |A(i)|: j < keys(i)
};

// What the forward pass computes on the way: [Q K V] (T × 3D, Q already divided by √d_h),
// the probabilities p (H × T × T, zero outside A(i)), O (T × D).
template <Real T_>
struct attention_values {
    std::vector<T_> qkv, p, o;
    T_ root;  // √d_h
};

template <Real T_>
attention_values<T_> attention_core(const attention_geometry& g, const T_* w, const T_* x) {
    const std::size_t T = g.T, D = g.D, dh = g.dh();
    attention_values<T_> a;
    a.qkv.assign(T * 3 * D, T_(0));
    a.p.assign(g.H * T * T, T_(0));
    a.o.assign(T * D, T_(0));
    a.root = rm::sqrt(T_(static_cast<double>(dh)));
    linear_apply<T_>(g.in_proj(), w, x, a.qkv.data(), true);
    for (std::size_t i = 0; i < T; ++i)
        for (std::size_t d = 0; d < D; ++d) a.qkv[i * 3 * D + d] = a.qkv[i * 3 * D + d] / a.root;
    std::vector<T_> s(T);
    for (std::size_t h = 0; h < g.H; ++h) {
        const std::size_t c0 = h * dh;
        for (std::size_t i = 0; i < T; ++i) {
            const std::size_t nk = g.keys(i);
            const T_* q = &a.qkv[i * 3 * D + c0];
            for (std::size_t j = 0; j < nk; ++j) {
                const T_* k = &a.qkv[j * 3 * D + D + c0];
                T_ acc = q[0] * k[0];
                for (std::size_t d = 1; d < dh; ++d) add_product(acc, q[d], k[d]);
                s[j] = acc;
            }
            T_ m = s[0];
            for (std::size_t j = 1; j < nk; ++j) m = rm::max(m, s[j]);
            T_* p = &a.p[(h * T + i) * T];
            T_ sum(0);
            for (std::size_t j = 0; j < nk; ++j) {
                p[j] = rm::exp(T_(s[j] - m));
                sum += p[j];
            }
            for (std::size_t j = 0; j < nk; ++j) p[j] = p[j] / sum;
            for (std::size_t d = 0; d < dh; ++d) {
                T_ acc = p[0] * a.qkv[2 * D + c0 + d];
                for (std::size_t j = 1; j < nk; ++j) add_product(acc, p[j], a.qkv[j * 3 * D + 2 * D + c0 + d]);
                a.o[i * D + c0 + d] = acc;
            }
        }
    }
    return a;
}

template <Real T_>
void attention_forward(const attention_geometry& g, const T_* w, const T_* x, T_* y) {
    const attention_values<T_> a = attention_core(g, w, x);
    linear_apply<T_>(g.out_proj(), w + g.out_offset(), a.o.data(), y, true);
}

// The VJP given the forward pass's values `a` (attention_core(g, w, x)): one forward pass
// serves every adjoint of the same sample (the structured path's C seeds).
template <Real T_>
void attention_backward_from(const attention_geometry& g, const attention_values<T_>& a, const T_* w, const T_* x,
                             const T_* dy, T_* dx, T_* gw) {
    const std::size_t T = g.T, D = g.D, dh = g.dh();
    std::vector<T_> dO(T * D), dqkv(T * 3 * D, T_(0)), dp(T);
    linear_backward<T_>(g.out_proj(), w + g.out_offset(), a.o.data(), dy, dO.data(), gw + g.out_offset());
    for (std::size_t h = 0; h < g.H; ++h) {
        const std::size_t c0 = h * dh;
        for (std::size_t i = 0; i < T; ++i) {
            const std::size_t nk = g.keys(i);
            const T_* p = &a.p[(h * T + i) * T];
            const T_* doi = &dO[i * D + c0];
            T_ c(0);
            for (std::size_t j = 0; j < nk; ++j) {
                const T_* vj = &a.qkv[j * 3 * D + 2 * D + c0];
                T_ acc = doi[0] * vj[0];
                for (std::size_t d = 1; d < dh; ++d) add_product(acc, doi[d], vj[d]);
                dp[j] = acc;
                add_product(c, p[j], acc);
                T_* dvj = &dqkv[j * 3 * D + 2 * D + c0];
                for (std::size_t d = 0; d < dh; ++d) add_product(dvj[d], p[j], doi[d]);
            }
            const T_* qi = &a.qkv[i * 3 * D + c0];
            T_* dqi = &dqkv[i * 3 * D + c0];
            for (std::size_t j = 0; j < nk; ++j) {
                const T_ ds = p[j] * T_(dp[j] - c);
                const T_* kj = &a.qkv[j * 3 * D + D + c0];
                T_* dkj = &dqkv[j * 3 * D + D + c0];
                for (std::size_t d = 0; d < dh; ++d) {
                    add_product(dqi[d], ds, kj[d]);
                    add_product(dkj[d], ds, qi[d]);
                }
            }
        }
    }
    for (std::size_t i = 0; i < T; ++i)
        for (std::size_t d = 0; d < D; ++d) dqkv[i * 3 * D + d] = dqkv[i * 3 * D + d] / a.root;
    linear_backward<T_>(g.in_proj(), w, x, dqkv.data(), dx, gw);
}

template <Real T_>
void attention_backward(const attention_geometry& g, const T_* w, const T_* x, const T_* dy, T_* dx, T_* gw) {
    attention_backward_from(g, attention_core(g, w, x), w, x, dy, dx, gw);
}

// (y, dy) from (x, dx) and the parameters' tangent v (both at the layer's first parameter).
template <Real T_>
void attention_jvp(const attention_geometry& g, const T_* w, const T_* v, const T_* x, const T_* dx, T_* y, T_* dy) {
    const std::size_t T = g.T, D = g.D, dh = g.dh();
    const attention_values<T_> a = attention_core(g, w, x);
    std::vector<T_> dqkv(T * 3 * D), t(T * 3 * D), dO(T * D, T_(0)), ds(T);
    linear_apply<T_>(g.in_proj(), w, dx, dqkv.data(), false);
    linear_apply<T_>(g.in_proj(), v, x, t.data(), true);
    for (std::size_t e = 0; e < dqkv.size(); ++e) dqkv[e] += t[e];
    for (std::size_t i = 0; i < T; ++i)
        for (std::size_t d = 0; d < D; ++d) dqkv[i * 3 * D + d] = dqkv[i * 3 * D + d] / a.root;
    for (std::size_t h = 0; h < g.H; ++h) {
        const std::size_t c0 = h * dh;
        for (std::size_t i = 0; i < T; ++i) {
            const std::size_t nk = g.keys(i);
            const T_* p = &a.p[(h * T + i) * T];
            const T_* qi = &a.qkv[i * 3 * D + c0];
            const T_* dqi = &dqkv[i * 3 * D + c0];
            T_ c(0);
            for (std::size_t j = 0; j < nk; ++j) {
                const T_* kj = &a.qkv[j * 3 * D + D + c0];
                const T_* dkj = &dqkv[j * 3 * D + D + c0];
                T_ acc = dqi[0] * kj[0];
                add_product(acc, qi[0], dkj[0]);
                for (std::size_t d = 1; d < dh; ++d) {
                    add_product(acc, dqi[d], kj[d]);
                    add_product(acc, qi[d], dkj[d]);
                }
                ds[j] = acc;
                add_product(c, p[j], acc);
            }
            for (std::size_t j = 0; j < nk; ++j) {
                const T_ dpj = p[j] * T_(ds[j] - c);
                const T_* vj = &a.qkv[j * 3 * D + 2 * D + c0];
                const T_* dvj = &dqkv[j * 3 * D + 2 * D + c0];
                T_* doi = &dO[i * D + c0];
                for (std::size_t d = 0; d < dh; ++d) {
                    add_product(doi[d], dpj, vj[d]);
                    add_product(doi[d], p[j], dvj[d]);
                }
            }
        }
    }
    const std::size_t oo = g.out_offset();
    std::vector<T_> u(T * D);
    linear_apply<T_>(g.out_proj(), w + oo, a.o.data(), y, true);
    linear_apply<T_>(g.out_proj(), w + oo, dO.data(), dy, false);
    linear_apply<T_>(g.out_proj(), v + oo, a.o.data(), u.data(), true);
    for (std::size_t e = 0; e < T * D; ++e) dy[e] += u[e];
}

}  // namespace epk::layers

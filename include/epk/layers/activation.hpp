// epk/layers/activation.hpp — the elementwise activations (relu, leaky_relu, tanh,
// sigmoid, softplus, gelu, identity), on a value of any shape.
//
// Each is y = σ(z) entry by entry, so its VJP is adj_z = σ'(z) ⊙ adj_y and its JVP
// dy = σ'(z) ⊙ dz.  relu, leaky_relu and identity are piecewise linear: along a
// training step they keep a network's values polynomial between the zeros of their
// inputs (their switching functions); the others are analytic (segment.hpp's
// adaptive path).  At a kink the derivative is the left-hand one, as PyTorch's
// (ReLU'(0) = 0).
#pragma once

#include "epk/model_spec.hpp"
#include "epk/scalar.hpp"

namespace epk {

// One elementwise activation with its constants carried into the working
// precision once.
template <Real T>
struct activation {
    layer_kind kind;
    T slope;           // leaky_relu negative slope (the manifest's binary64 value, exactly)
    T inv_sqrt2;       // 1/√2, working precision
    T inv_sqrt_2pi;    // 1/√(2π), working precision

    explicit activation(const layer_spec& l)
        : kind(l.kind), slope(T(l.negative_slope)), inv_sqrt2(T(1) / rm::sqrt(T(2))),
          inv_sqrt_2pi(T(1) / rm::sqrt(T(2) * scalar_traits<T>::pi())) {}

    static T sigmoid(const T& z) {
        // σ(z) = 1/(1+e^{−z}), evaluated without overflow on either side.
        if (z >= T(0)) return T(1) / (T(1) + rm::exp(T(-z)));
        T e = rm::exp(z);
        return e / (T(1) + e);
    }
    // Φ(z) = erfc(−z/√2)/2: no cancellation for z ≪ 0.
    T normal_cdf(const T& z) const { return rm::erfc(T(-z * inv_sqrt2)) / T(2); }

    T value(const T& z) const {
        switch (kind) {
            case layer_kind::relu: return z > T(0) ? z : T(0);
            case layer_kind::leaky_relu: return z > T(0) ? z : T(slope * z);
            case layer_kind::tanh: return rm::tanh(z);
            case layer_kind::sigmoid: return sigmoid(z);
            // softplus(z) = log(1+e^z) = max(z,0) + log1p(e^{−|z|})
            case layer_kind::softplus: return rm::max(z, T(0)) + rm::log1p(rm::exp(T(-rm::abs(z))));
            case layer_kind::gelu: return z * normal_cdf(z);
            default: return z;
        }
    }
    // σ'(z) given y = σ(z) as the forward pass computed it: for tanh and
    // sigmoid the same value as derivative(z) (the same σ(z), reused).
    T derivative_given_value(const T& z, const T& y) const {
        switch (kind) {
            case layer_kind::tanh: return T(1) - y * y;
            case layer_kind::sigmoid: return y * (T(1) - y);
            default: return derivative(z);
        }
    }
    // σ'(z); at a kink the left-hand derivative, as PyTorch (ReLU'(0) = 0).
    T derivative(const T& z) const {
        switch (kind) {
            // d relu(z) = [z > 0] dz
            case layer_kind::relu: return z > T(0) ? T(1) : T(0);
            // d leaky(z) = ([z > 0] + slope [z ≤ 0]) dz
            case layer_kind::leaky_relu: return z > T(0) ? T(1) : slope;
            // d tanh(z) = (1 − tanh²z) dz
            case layer_kind::tanh: { T t = rm::tanh(z); return T(1) - t * t; }
            // d σ(z) = σ(z)(1 − σ(z)) dz
            case layer_kind::sigmoid: { T s = sigmoid(z); return s * (T(1) - s); }
            // d softplus(z) = σ(z) dz
            case layer_kind::softplus: return sigmoid(z);
            // d gelu(z) = (Φ(z) + z φ(z)) dz,  φ(z) = e^{−z²/2}/√(2π)
            case layer_kind::gelu: return normal_cdf(z) + z * (rm::exp(T(-(z * z) / T(2))) * inv_sqrt_2pi);
            // d z = dz
            default: return T(1);
        }
    }
};

}  // namespace epk

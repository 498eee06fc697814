// epk/loss.hpp — cross-entropy and squared error, exactly as
// torch.nn.functional.cross_entropy / mse_loss define them.
//
//   cross_entropy:  ℓ(f, y) = logsumexp(f) − f_y          ∂ℓ/∂f = softmax(f) − e_y
//   mse:            ℓ(f, y) = Σ_c (f_c − y_c)²             ∂ℓ/∂f = 2 (f − y)
//   reduction:      L = ρ Σ_{i∈B} ℓ_i,  ρ = 1/|B| (mean; mse-mean 1/(|B|·C)), 1 (sum)
//
// `output_gradient` returns ρ ∂ℓ/∂f_i for each row i of the batch; the
// coefficient of the path kernel is a_{i,s} = −η_s times it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "epk/matrix.hpp"
#include "epk/model_spec.hpp"
#include "epk/scalar.hpp"

namespace epk {

// Labels (cross_entropy) or targets [N × C] (mse) of a training set.
template <Real T>
struct targets {
    std::vector<std::int64_t> labels;  // cross_entropy
    matrix<T> values;                  // mse
};

// Divisor of the reduction: |B| (mean), |B|·C (mse mean), 1 (sum).
inline std::size_t reduction_divisor(const loss_spec& l, std::size_t batch, std::size_t classes) {
    if (l.reduction == reduction_kind::sum) return 1;
    return l.kind == loss_kind::mse ? batch * classes : batch;
}

// Log-sum-exp of a row, shifted by its maximum (no overflow).
template <Real T>
T log_sum_exp(std::span<const T> f, T& max_out, T& sum_out) {
    T mx = f[0];
    for (std::size_t c = 1; c < f.size(); ++c) mx = rm::max(mx, f[c]);
    T s = rm::exp(T(f[0] - mx));
    for (std::size_t c = 1; c < f.size(); ++c) s += rm::exp(T(f[c] - mx));
    max_out = mx;
    sum_out = s;
    return mx + rm::log(s);
}

// Loss over the rows `batch` of the training set; f holds their outputs (|B| × C).
template <Real T>
T loss_value(const loss_spec& l, const matrix<T>& f, const targets<T>& y, std::span<const std::size_t> batch) {
    if (f.rows != batch.size() || f.rows == 0) throw usage_error("loss: outputs rows != batch size");
    T total(0);
    for (std::size_t i = 0; i < f.rows; ++i) {
        const auto row = f.row(i);
        T li(0);
        if (l.kind == loss_kind::cross_entropy) {
            T mx, s;
            const std::int64_t label = y.labels.at(batch[i]);
            li = log_sum_exp<T>(row, mx, s) - row[static_cast<std::size_t>(label)];
        } else {
            for (std::size_t c = 0; c < f.cols; ++c) {
                T d = row[c] - y.values(batch[i], c);
                li += d * d;
            }
        }
        total += li;
    }
    return total / T(static_cast<double>(reduction_divisor(l, f.rows, f.cols)));
}

// ρ ∂ℓ/∂f for each row (|B| × C).
template <Real T>
matrix<T> output_gradient(const loss_spec& l, const matrix<T>& f, const targets<T>& y,
                          std::span<const std::size_t> batch) {
    if (f.rows != batch.size() || f.rows == 0) throw usage_error("loss: outputs rows != batch size");
    const T divisor(static_cast<double>(reduction_divisor(l, f.rows, f.cols)));
    matrix<T> g(f.rows, f.cols);
    for (std::size_t i = 0; i < f.rows; ++i) {
        const auto row = f.row(i);
        if (l.kind == loss_kind::cross_entropy) {
            T mx, s;
            log_sum_exp<T>(row, mx, s);
            const auto label = static_cast<std::size_t>(y.labels.at(batch[i]));
            for (std::size_t c = 0; c < f.cols; ++c) {
                // ∂ℓ/∂f_c = softmax(f)_c − [c = y]
                T p = rm::exp(T(row[c] - mx)) / s;
                if (c == label) p -= T(1);
                g(i, c) = p / divisor;
            }
        } else {
            for (std::size_t c = 0; c < f.cols; ++c) {
                // ∂ℓ/∂f_c = 2 (f_c − y_c)
                T d = row[c] - y.values(batch[i], c);
                g(i, c) = (T(2) * d) / divisor;
            }
        }
    }
    return g;
}

}  // namespace epk

// epk/training.hpp — gradient descent in any precision.
//
// Plain SGD (the schedule's optimizer is_plain_sgd()):
//
//   w[s+1] = w[s] − η_s ∇_w L_s(w[s]),   L_s = loss over the batch B_s
//
// computed as: G = ρ ∂ℓ/∂f (loss.hpp), g = Σ_i J(x_i)ᵀ G_i (reverse mode,
// network.hpp), then w[p] − η_s·g[p] for each p: one product, one
// subtraction, in the working precision.  η_s is the binary64 value from the
// trace, carried into T exactly (rounded only when T is narrower than double).
// Any other optimizer (momentum, weight decay, Adam, AdamW): the same g, then
// optimizer.hpp's optimizer_step with the run's optimizer state.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "epk/loss.hpp"
#include "epk/network.hpp"
#include "epk/optimizer.hpp"

namespace epk {

template <Real T>
struct training_problem {
    model_spec model;
    loss_spec loss;
    matrix<T> x;   // [N × D]
    targets<T> y;  // labels [N] or values [N × C]
};

// Which rows and which rate at each step.  `batches` empty = full batch.
struct sgd_schedule {
    std::size_t steps = 0;
    std::size_t n_train = 0;
    std::vector<std::vector<std::size_t>> batches;  // steps rows (or empty)
    std::vector<double> learning_rates;             // steps entries
    // Instead of `batches`: row s read on demand (a trace's batches.npy left on disk),
    // every row `batch_size` long and already validated.
    std::function<std::vector<std::size_t>(std::size_t)> batch_reader;
    std::size_t batch_size = 0;
    optimizer_spec optimizer;  // plain SGD by default

    std::vector<std::size_t> batch(std::size_t s) const;
    void validate() const;  // usage_error on an impossible schedule
};

// PyTorch's default nn.Linear initialisation, seeded: W and b uniform on
// ±1/√fan_in.  Values are drawn in binary64 from mt19937_64 (u = (r >> 11)·2⁻⁵³,
// value = bound·(2u − 1)) and rounded to binary32, so the same network is
// representable exactly in every precision epk runs in.
std::vector<double> torch_default_init(const model_spec& m, std::uint64_t seed);

// Seeded minibatches in epochs: each epoch a Fisher–Yates shuffle of 0..N−1
// (mt19937_64, unbiased bounded draws) cut into ⌊N/B⌋ batches of B (the
// remainder dropped, as DataLoader(drop_last=True)).
std::vector<std::vector<std::size_t>> make_minibatches(std::size_t n, std::size_t batch_size, std::size_t steps,
                                                       std::uint64_t seed);

// ∇_w L over `batch`, and L itself (through `loss_out` when non-null).
template <Real T>
std::vector<T> loss_gradient(const training_problem<T>& pr, std::span<const T> w, std::span<const std::size_t> batch,
                             T* loss_out = nullptr) {
    const matrix<T> xb = gather_rows(pr.x, batch);
    const forward_pass<T> fp = forward(pr.model, w, xb);
    if (loss_out != nullptr) *loss_out = loss_value(pr.loss, fp.outputs(), pr.y, batch);
    const matrix<T> g_out = output_gradient(pr.loss, fp.outputs(), pr.y, batch);
    std::vector<T> g(w.size(), T(0));
    backward_accumulate<T>(pr.model, w, fp, g_out, g, false);
    return g;
}

// The update of an SGD step given the batch's forward pass at w and ∂L/∂f there:
// g = Σ_i J(x_i)ᵀ g_out_i, then w[p] ← w[p] − η·g[p].  What sgd_step does after its
// forward pass; the path kernel calls it with the forward pass it already has.
template <Real T>
void sgd_update(const training_problem<T>& pr, std::vector<T>& w, const forward_pass<T>& fp, const matrix<T>& g_out,
                const T& eta) {
    std::vector<T> g(w.size(), T(0));
    backward_accumulate<T>(pr.model, w, fp, g_out, g, false);
    for (std::size_t p = 0; p < w.size(); ++p) w[p] = w[p] - eta * g[p];
}

// One SGD step in place: w[p] ← w[p] − η·g[p].  Returns L_s(w[s]).
template <Real T>
T sgd_step(const training_problem<T>& pr, std::vector<T>& w, std::span<const std::size_t> batch, const T& eta) {
    const forward_pass<T> fp = forward(pr.model, std::span<const T>(w), gather_rows(pr.x, batch));
    const T loss = loss_value(pr.loss, fp.outputs(), pr.y, batch);
    sgd_update<T>(pr, w, fp, output_gradient(pr.loss, fp.outputs(), pr.y, batch), eta);
    return loss;
}

// Whether a step needs the optimizer's state (anything but plain SGD from a fresh start).
template <Real T>
bool uses_optimizer_state(const sgd_schedule& sch, const optimizer_state<T>& initial) {
    return !sch.optimizer.is_plain_sgd() || initial.steps != 0;
}

// One step of the schedule's optimizer from the batch's forward pass at w and ∂L/∂f
// there: plain SGD is sgd_update; otherwise g = Σ_i J(x_i)ᵀ g_out_i (the same sum) and
// optimizer_step with `state`.
template <Real T>
void optimizer_update(const training_problem<T>& pr, const sgd_schedule& sch, optimizer_state<T>& state,
                      std::vector<T>& w, const forward_pass<T>& fp, const matrix<T>& g_out, const T& eta) {
    if (!uses_optimizer_state<T>(sch, state)) {
        sgd_update<T>(pr, w, fp, g_out, eta);
        return;
    }
    std::vector<T> g(w.size(), T(0));
    backward_accumulate<T>(pr.model, w, fp, g_out, g, false);
    optimizer_step<T>(sch.optimizer, state, w, g, eta);
}

// Runs the schedule from w0 with its optimizer, starting from `state` (the optimizer's
// state before step 0: fresh by default, or a resumed run's).  After each step calls
// on_step(s, w[s+1], L_s(w[s])).  Memory does not grow with the number of steps.
template <Real T>
std::vector<T> train_sgd(const training_problem<T>& pr, std::vector<T> w, const sgd_schedule& sch,
                         const std::function<void(std::size_t, const std::vector<T>&, const T&)>& on_step = {},
                         optimizer_state<T> state = {}) {
    sch.validate();
    if (sch.n_train != pr.x.rows) throw usage_error("train_sgd: schedule is for a different training set");
    check_optimizer_state<T>(sch.optimizer, state, w.size());
    for (std::size_t s = 0; s < sch.steps; ++s) {
        const std::vector<std::size_t> b = sch.batch(s);
        const T eta(sch.learning_rates[s]);
        const forward_pass<T> fp = forward(pr.model, std::span<const T>(w), gather_rows(pr.x, b));
        const T loss = loss_value(pr.loss, fp.outputs(), pr.y, b);
        optimizer_update<T>(pr, sch, state, w, fp, output_gradient(pr.loss, fp.outputs(), pr.y, b), eta);
        if (on_step) on_step(s, w, loss);
    }
    return w;
}

}  // namespace epk

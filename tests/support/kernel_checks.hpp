// Random SGD runs for the exact-path-kernel properties, and the checks
// shared by the per-precision test files (proofs-notes/004).
#pragma once

#include <rapidcheck.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>

#include "epk/path_kernel.hpp"
#include "support/generators.hpp"

namespace epk::testing {

struct kernel_case {
    random_problem rp;
    sgd_schedule schedule;
    matrix<double> x_test;

    std::string describe() const {
        std::ostringstream os;
        os << rp.describe() << " | S=" << schedule.steps << " lr=";
        for (double l : schedule.learning_rates) os << l << ",";
        os << " M=" << x_test.rows;
        return os.str();
    }
};

// piecewise_linear: only relu / leaky_relu / identity between the linear layers.
// Learning rates up to 8: steps that cross many kinks.
inline kernel_case gen_kernel_case(bool piecewise_linear, std::size_t max_layers = 3, std::size_t max_width = 8,
                                   double max_lr = 8.0) {
    kernel_case kc;
    kc.rp = gen_problem(max_layers, max_width);
    model_spec& m = kc.rp.problem.model;
    if (piecewise_linear) {
        for (auto& l : m.layers)
            if (l.kind != layer_kind::linear)
                l.kind = *rc::gen::element(layer_kind::relu, layer_kind::relu, layer_kind::leaky_relu, layer_kind::identity);
        kc.rp.w = torch_default_init(m, kc.rp.seed);
    }
    const std::size_t n = kc.rp.problem.x.rows;
    kc.schedule.steps = *rc::gen::inRange<std::size_t>(1, 5);
    kc.schedule.n_train = n;
    const bool minibatch = *rc::gen::arbitrary<bool>();
    for (std::size_t s = 0; s < kc.schedule.steps; ++s) {
        kc.schedule.learning_rates.push_back(std::min(max_lr, *rc::gen::element(0.01, 0.1, 0.5, 2.0, 8.0)));
        if (minibatch) {
            const auto b = *rc::gen::inRange<std::size_t>(1, n + 1);
            std::vector<std::size_t> row;
            for (std::size_t k = 0; k < b; ++k) row.push_back(*rc::gen::inRange<std::size_t>(0, n));
            kc.schedule.batches.push_back(row);
        }
    }
    if (minibatch) {  // every row the same size (the trace format's rule)
        const std::size_t b = kc.schedule.batches[0].size();
        for (auto& row : kc.schedule.batches) row.resize(b, row.empty() ? 0 : row[0]);
    }
    const auto mt = *rc::gen::inRange<std::size_t>(1, 4);
    kc.x_test = matrix<double>(mt, m.input_dim);
    for (double& v : kc.x_test.data) v = *rc::gen::inRange(-128, 129) / 64.0;
    return kc;
}

// A fixed (not random) run: inputs multiples of 1/64 in [−2, 2] from a
// seeded mt19937_64, labels i mod C (cross_entropy) or targets multiples of
// 1/32 in [−1, 1] (mse), full batch, the given rates; test points = the first
// `m_test` training rows.
inline kernel_case fixed_case(const model_spec& m, loss_spec loss, std::size_t n, std::uint64_t seed,
                              std::vector<double> rates, std::size_t m_test) {
    kernel_case kc;
    kc.rp.problem.model = m;
    kc.rp.problem.loss = loss;
    kc.rp.problem.x = matrix<double>(n, m.input_dim);
    std::mt19937_64 rng(seed);
    for (double& v : kc.rp.problem.x.data) v = static_cast<double>(static_cast<int>(rng() % 257) - 128) / 64.0;
    const std::size_t c = m.output_dim();
    if (loss.kind == loss_kind::cross_entropy) {
        for (std::size_t i = 0; i < n; ++i) kc.rp.problem.y.labels.push_back(static_cast<std::int64_t>(i % c));
    } else {
        kc.rp.problem.y.values = matrix<double>(n, c);
        for (double& v : kc.rp.problem.y.values.data) v = static_cast<double>(static_cast<int>(rng() % 65) - 32) / 32.0;
    }
    kc.rp.w = torch_default_init(m, seed);
    kc.schedule.steps = rates.size();
    kc.schedule.n_train = n;
    kc.schedule.learning_rates = std::move(rates);
    std::vector<std::size_t> rows(std::min(m_test, n));
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = i;
    kc.x_test = gather_rows(kc.rp.problem.x, rows);
    return kc;
}

// Σ_p Īmag[c][p]·Jmag_i[d][p] (C × C, binary64): the rounding scale of both
// ways of computing K_s(x, x_i) on the rule (nodes, weights), with |J|_mag
// from network.hpp's magnitude_factors (cancellation included).
template <Real T>
matrix<double> two_path_scale(const model_spec& m, std::span<const T> w, std::span<const T> delta,
                              std::span<const T> nodes, std::span<const T> weights, const matrix<T>& x1,
                              const matrix<T>& xi) {
    const std::size_t P = w.size();
    matrix<double> ibar(m.output_dim(), P);
    for (std::size_t q = 0; q < nodes.size(); ++q) {
        const matrix<double> jm = jacobian_from_factors<double>(
            m, magnitude_factors<T>(m, detail::point_on_segment<T>(w, delta, nodes[q]), x1), P);
        const double wq = std::abs(scalar_traits<T>::to_double(weights[q]));
        for (std::size_t e = 0; e < jm.data.size(); ++e) ibar.data[e] += wq * jm.data[e];
    }
    const matrix<double> ji = jacobian_from_factors<double>(m, magnitude_factors<T>(m, w, xi), P);
    matrix<double> out(ibar.rows, ji.rows);
    for (std::size_t c = 0; c < ibar.rows; ++c)
        for (std::size_t d = 0; d < ji.rows; ++d)
            for (std::size_t p = 0; p < P; ++p) out(c, d) += ibar(c, p) * ji(d, p);
    return out;
}

// False for runs that diverge (weights beyond 1e3 or a non-finite loss in a
// double replay): their kernels are legitimate but say little, and MPFR,
// which does not overflow, would spend minutes on them.
inline bool tame_run(const kernel_case& kc) {
    bool ok = true;
    train_sgd<double>(kc.rp.problem, kc.rp.w, kc.schedule, [&](std::size_t, const std::vector<double>& w, const double& loss) {
        if (!std::isfinite(loss)) ok = false;
        for (double v : w)
            if (!(std::abs(v) < 1e3)) ok = false;
    });
    return ok;
}

template <Real T>
path_kernel_result<T> run_kernel(const kernel_case& kc, std::size_t threads = 1,
                                 std::vector<std::size_t> kernel_steps = {}, const quadrature_options& qo = {},
                                 bool coefficients = false, bool structured = true) {
    const training_problem<T> pr = convert_problem<T>(kc.rp.problem);
    path_kernel_request<T> rq;
    rq.problem = &pr;
    rq.schedule = kc.schedule;
    rq.w0 = convert_vector<T>(kc.rp.w);
    rq.x_test = convert_matrix<T>(kc.x_test);
    rq.kernel_steps = std::move(kernel_steps);
    rq.quadrature = qo;
    rq.threads = threads;
    rq.store_coefficients = coefficients;
    rq.structured = structured;
    return compute_path_kernel<T>(rq);
}

template <Real T>
bool all_finite(const path_kernel_result<T>& r) {
    for (const T& v : r.outputs_final.data)
        if (!rm::isfinite(v) || std::abs(scalar_traits<T>::to_double(v)) > 1e30) return false;
    for (const T& v : r.reconstruction.data)
        if (!rm::isfinite(v)) return false;
    return true;
}

// Largest residual / budget and residual / (u·scale) seen so far, per label.
struct observed_ratio {
    std::mutex m;
    double over_budget = 0, over_u_scale = 0;
    std::string worst;
    void record(double b, double us, const std::string& what) {
        const std::lock_guard<std::mutex> lock(m);
        if (b > over_budget) worst = what;
        over_budget = std::max(over_budget, b);
        over_u_scale = std::max(over_u_scale, us);
    }
    void print(const char* label) {
        std::printf("[%s] worst residual/budget %.3g, worst residual/(u*scale) %.3g%s%s\n", label, over_budget,
                    over_u_scale, worst.empty() ? "" : " at ", worst.c_str());
    }
};

// The residual property: |f(x; w[S]) − reconstruction| ≤ reconstruction_budget
// (proofs-notes/004 §5) at every test point and output.
template <Real T>
void check_residual_within_budget(const kernel_case& kc, observed_ratio& seen) {
    RC_PRE(tame_run(kc));
    const path_kernel_result<T> r = run_kernel<T>(kc);
    RC_PRE(all_finite(r));  // diverged runs (lr 8 on mse-sum) say nothing about the kernel
    const matrix<double> budget = reconstruction_budget(r, kc.rp.problem.model);
    const double u = scalar_traits<T>::to_double(scalar_traits<T>::unit_roundoff());
    for (std::size_t e = 0; e < budget.data.size(); ++e) {
        const double res = std::abs(scalar_traits<T>::to_double(T(r.outputs_final.data[e] - r.reconstruction.data[e])));
        const double scale = r.forward_scale.data[e] + r.path_magnitude.data[e];
        seen.record(res / budget.data[e], res / (u * scale), kc.describe());
        if (!(res <= budget.data[e]))
            RC_LOG() << kc.describe() << "\n  entry " << e << ": residual " << res << " budget " << budget.data[e]
                     << " quadrature bound " << scalar_traits<T>::to_double(r.quadrature_bound.data[e]) << " converged "
                     << r.quadrature_converged << " cuts " << r.cuts[e / r.c] << " evaluations " << r.evaluations[e / r.c]
                     << " f0 " << scalar_traits<T>::to_double(r.bias.data[e]) << " fS "
                     << scalar_traits<T>::to_double(r.outputs_final.data[e]) << " forward scale " << r.forward_scale.data[e]
                     << " path magnitude " << r.path_magnitude.data[e] << "\n";
        RC_ASSERT(res <= budget.data[e]);
    }
}

// Optimizer runs (momentum, weight decay, Adam, AdamW): the structured test side
// (structured_kernel.hpp, optimizer_step_structured; proofs-notes/010 §4) against the per-point
// full Jacobians, with and without per-point contributions: the reconstruction and the
// optimizer term within the sum of the two budgets, the contributions within
// γ·u·(max|c| + max magnitude) plus both quadrature estimates (the paths' rules differ for
// smooth networks), the training side bit-identical.
template <class T>
double to_double_(const T& v) { return scalar_traits<T>::to_double(v); }
template <class T>
path_kernel_result<T> run_optimizer(const kernel_case& kc, bool structured, bool contributions, std::size_t threads = 1) {
    const training_problem<T> pr = convert_problem<T>(kc.rp.problem);
    path_kernel_request<T> rq;
    rq.problem = &pr;
    rq.schedule = kc.schedule;
    rq.w0 = convert_vector<T>(kc.rp.w);
    rq.x_test = convert_matrix<T>(kc.x_test);
    rq.structured = structured;
    rq.store_contributions = contributions;
    rq.threads = threads;
    return compute_path_kernel<T>(rq);
}
template <class T>
void check_structured_optimizer(const kernel_case& kc, observed_ratio& seen_recon, observed_ratio& seen_contrib) {
    for (const bool contributions : {false, true}) {
        const auto s = run_optimizer<T>(kc, true, contributions), u = run_optimizer<T>(kc, false, contributions);
        RC_PRE(all_finite(s) && all_finite(u));
        const model_spec& m = kc.rp.problem.model;
        const double unit = to_double_(scalar_traits<T>::unit_roundoff());
        RC_ASSERT(s.losses.size() == u.losses.size());
        for (std::size_t e = 0; e < s.losses.size(); ++e) RC_ASSERT(s.losses[e] == u.losses[e]);
        for (std::size_t e = 0; e < s.audit.size(); ++e) RC_ASSERT(s.audit[e].remainder_max_abs == u.audit[e].remainder_max_abs);
        RC_ASSERT(s.cuts == u.cuts);
        const matrix<double> bs = reconstruction_budget(s, m), bu = reconstruction_budget(u, m);
        for (std::size_t e = 0; e < bs.data.size(); ++e) {
            RC_PRE(std::isfinite(bs.data[e]) && std::isfinite(bu.data[e]));
            const double tol = bs.data[e] + bu.data[e];
            const double d = std::abs(to_double_(T(s.reconstruction.data[e] - u.reconstruction.data[e])));
            seen_recon.record(d / tol, d / (unit * (s.forward_scale.data[e] + s.path_magnitude.data[e])),
                                         kc.describe());
            RC_ASSERT(d <= tol);
            RC_ASSERT(std::abs(to_double_(T(s.optimizer_term.data[e] - u.optimizer_term.data[e]))) <= tol);
        }
        if (!contributions) continue;
        double mag = 0, cmax = 0;
        for (double v : s.path_magnitude.data) mag = std::max(mag, v);
        for (const T& v : u.contributions) cmax = std::max(cmax, std::abs(to_double_(v)));
        double gamma = static_cast<double>(s.p + s.steps + s.max_rule_nodes + s.max_batch) + 8;
        if (m.is_mlp())
            for (const auto& o : parameter_offsets(m)) gamma += static_cast<double>(o.in + o.out);
        else
            gamma += tree_segment::analyse(m).chain;
        // + both quadrature estimates: the two paths' rules differ for smooth networks, and each
        // path's estimate covers every contribution's quadrature error (010 §1, 004 §4).
        auto qmax = [](const path_kernel_result<T>& r) {
            double q = 0;
            for (const T& v : r.quadrature_bound.data) q = std::max(q, to_double_(v));
            return q;
        };
        const double tol_c = gamma * unit * (cmax + mag) + qmax(s) + qmax(u);
        for (std::size_t e = 0; e < s.contributions.size(); ++e) {
            const double d = std::abs(to_double_(T(s.contributions[e] - u.contributions[e])));
            seen_contrib.record(d / tol_c, d / (unit * (cmax + mag)), kc.describe());
            RC_ASSERT(d <= tol_c);
        }
    }
}


}  // namespace epk::testing

// Random networks, data and batches for the property tests (RapidCheck).
#pragma once

#include <rapidcheck.h>

#include <cmath>
#include <sstream>
#include <vector>

#include "epk/training.hpp"

namespace epk::testing {

inline const std::vector<layer_kind>& all_activations() {
    static const std::vector<layer_kind> a{layer_kind::relu,     layer_kind::leaky_relu, layer_kind::tanh,
                                           layer_kind::sigmoid,  layer_kind::softplus,   layer_kind::gelu,
                                           layer_kind::identity};
    return a;
}

// A random small problem: 1–4 linear layers, widths 1–16, any activation
// between them (different per layer), either loss and reduction, a batch.
struct random_problem {
    training_problem<double> problem;
    std::vector<double> w;
    std::vector<std::size_t> batch;
    std::uint64_t seed = 0;

    std::string describe() const {
        std::ostringstream os;
        os << "input " << problem.model.input_dim << ":";
        for (const auto& l : problem.model.layers)
            os << " " << to_string(l.kind) << (l.kind == layer_kind::linear ? "(" + std::to_string(l.out_features) + (l.bias ? ")" : ",nobias)") : "");
        os << " | " << to_string(problem.loss.kind) << "/" << to_string(problem.loss.reduction) << " | N=" << problem.x.rows
           << " B=" << batch.size() << " seed=" << seed;
        return os.str();
    }
};

inline random_problem gen_problem(std::size_t max_layers = 4, std::size_t max_width = 16) {
    random_problem rp;
    model_spec& m = rp.problem.model;
    const auto n_linear = *rc::gen::inRange<std::size_t>(1, max_layers + 1);
    m.input_dim = *rc::gen::inRange<std::size_t>(1, max_width + 1);
    for (std::size_t k = 0; k < n_linear; ++k) {
        layer_spec lin{layer_kind::linear, *rc::gen::inRange<std::size_t>(1, max_width + 1), *rc::gen::arbitrary<bool>(), 0.01};
        m.layers.push_back(lin);
        if (k + 1 < n_linear) {
            layer_spec act{*rc::gen::elementOf(all_activations()), 0, true, 0.01};
            if (act.kind == layer_kind::leaky_relu) act.negative_slope = *rc::gen::element(0.01, 0.2, 0.5);
            m.layers.push_back(act);
        }
    }
    const std::size_t c = m.output_dim();
    rp.problem.loss.kind = (c >= 2 && *rc::gen::arbitrary<bool>()) ? loss_kind::cross_entropy : loss_kind::mse;
    rp.problem.loss.reduction = *rc::gen::arbitrary<bool>() ? reduction_kind::mean : reduction_kind::sum;
    const auto n = *rc::gen::inRange<std::size_t>(1, 9);
    rp.seed = *rc::gen::arbitrary<std::uint32_t>();
    rp.w = torch_default_init(m, rp.seed);
    // Inputs: multiples of 1/64 in [-2, 2] (exact in every type).
    rp.problem.x = matrix<double>(n, m.input_dim);
    for (double& v : rp.problem.x.data) v = *rc::gen::inRange(-128, 129) / 64.0;
    if (rp.problem.loss.kind == loss_kind::cross_entropy) {
        for (std::size_t i = 0; i < n; ++i)
            rp.problem.y.labels.push_back(*rc::gen::inRange<std::int64_t>(0, static_cast<std::int64_t>(c)));
    } else {
        rp.problem.y.values = matrix<double>(n, c);
        for (double& v : rp.problem.y.values.data) v = *rc::gen::inRange(-64, 65) / 32.0;
    }
    const auto b = *rc::gen::inRange<std::size_t>(1, n + 1);
    for (std::size_t i = 0; i < b; ++i) rp.batch.push_back((i * 7 + rp.seed) % n);
    std::sort(rp.batch.begin(), rp.batch.end());
    rp.batch.erase(std::unique(rp.batch.begin(), rp.batch.end()), rp.batch.end());
    return rp;
}

// The same problem carried into another scalar type (exact conversions).
template <Real T>
training_problem<T> convert_problem(const training_problem<double>& p) {
    training_problem<T> q{p.model, p.loss, convert_matrix<T>(p.x), {}};
    q.y.labels = p.y.labels;
    q.y.values = convert_matrix<T>(p.y.values);
    return q;
}

template <Real T>
std::vector<T> convert_vector(const std::vector<double>& v) {
    return std::vector<T>(v.begin(), v.end());
}

// Smallest |z| over the pre-activations of piecewise-linear kinks (relu,
// leaky_relu) for the batch; +inf if there are none.
inline double min_kink_distance(const model_spec& m, std::span<const double> w, const matrix<double>& x) {
    const forward_pass<double> fp = forward(m, w, x);
    double best = INFINITY;
    for (std::size_t k = 0; k < m.layers.size(); ++k)
        if (m.layers[k].kind == layer_kind::relu || m.layers[k].kind == layer_kind::leaky_relu)
            for (double z : fp.values[k].data) best = std::min(best, std::abs(z));
    return best;
}

}  // namespace epk::testing

namespace epk::testing {
// x exactly as an MPFR number at the current working precision (which must
// hold T's significand): binary types are peeled into a sum of doubles.
template <Real T>
mpfr_real exact_mpfr(const T& x) {
    if constexpr (std::is_same_v<T, mpfr_real>) {
        mpfr_real r{mpfr_real::uninitialized_tag{}};
        mpfr_set(r.get(), x.get(), MPFR_RNDN);
        return r;
    } else if constexpr (std::is_same_v<T, long double>) {
        return mpfr_real(x);
    } else {
        mpfr_real sum(0);
        T rest = x;
        for (int k = 0; k < 12 && !(rest == T(0)); ++k) {
            const double part = static_cast<double>(rest);
            sum += mpfr_real(part);
            rest = rest - T(part);
        }
        return sum;
    }
}
}  // namespace epk::testing

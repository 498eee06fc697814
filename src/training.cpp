#include "epk/training.hpp"
#include "epk/layer_tree.hpp"

#include <cmath>
#include <numeric>
#include <random>
#include <string>

namespace epk {

std::vector<std::size_t> sgd_schedule::batch(std::size_t s) const {
    if (!batches.empty()) return batches.at(s);
    if (batch_reader) {
        if (s >= steps) throw usage_error("schedule: step out of range");
        return batch_reader(s);
    }
    std::vector<std::size_t> all(n_train);
    std::iota(all.begin(), all.end(), std::size_t{0});
    return all;
}

void sgd_schedule::validate() const {
    if (n_train == 0) throw usage_error("schedule: empty training set");
    if (learning_rates.size() != steps) throw usage_error("schedule: need one learning rate per step");
    if (!batches.empty() && batches.size() != steps) throw usage_error("schedule: need one batch per step");
    if (batch_reader && (!batches.empty() || batch_size == 0)) throw usage_error("schedule: a batch reader needs a batch size and no batches");
    for (const auto& b : batches) {
        if (b.empty()) throw usage_error("schedule: empty batch");
        for (std::size_t i : b)
            if (i >= n_train) throw usage_error("schedule: batch index out of range");
    }
    for (double r : learning_rates)
        if (!std::isfinite(r)) throw usage_error("schedule: learning rate is not finite");
    optimizer.validate();
}

namespace {
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// Uniform integer in [0, n) without modulo bias (rejection on the top range).
// Standard normal by Box–Muller (one draw per call; deterministic).
double normal01(std::mt19937_64& rng) {
    const double u1 = 1.0 - uniform01(rng), u2 = uniform01(rng);  // u1 in (0, 1]
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * 3.14159265358979323846 * u2);
}

std::size_t bounded(std::mt19937_64& rng, std::size_t n) {
    const std::uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    std::uint64_t r;
    do r = rng();
    while (r >= limit);
    return static_cast<std::size_t>(r % n);
}
}  // namespace

std::vector<double> torch_default_init(const model_spec& m, std::uint64_t seed) {
    m.validate();
    std::mt19937_64 rng(seed);
    if (!m.is_mlp()) {
        // torch's defaults: Linear and Conv2d weight and bias U(−1/√fan_in, 1/√fan_in)
        // (kaiming_uniform with a = √5), fan_in = in_features or in_channels/groups·kh·kw;
        // LayerNorm γ = 1, β = 0; Embedding and PositionalEmbedding N(0, 1) (nn.Embedding's,
        // and epk.torch's); MultiheadAttention in_proj_weight Xavier-uniform U(±√(6/(D + 3D))),
        // out_proj.weight as Linear's, both biases 0.  Parameters in the tree's (torch's) order,
        // each rounded to float32 as torch's float32 initialisation.
        std::vector<double> w;
        const layer_tree tree = compile_tree(m);
        const auto f32 = [](double v) { return static_cast<double>(static_cast<float>(v)); };
        for (const tree_node* n : tree_nodes(tree)) {
            if (n->count == 0) continue;
            if (n->spec.kind == layer_kind::embedding || n->spec.kind == layer_kind::positional_embedding) {
                                for (std::size_t e = 0; e < n->count; ++e) w.push_back(f32(normal01(rng)));
                continue;
            }
            if (n->spec.kind == layer_kind::self_attention) {
                const auto g = n->attention();
                const double xb = std::sqrt(6.0 / static_cast<double>(4 * g.D)), lb = 1.0 / std::sqrt(static_cast<double>(g.D));
                for (std::size_t e = 0; e < 3 * g.D * g.D; ++e) w.push_back(f32(xb * (2.0 * uniform01(rng) - 1.0)));
                if (g.bias) w.insert(w.end(), 3 * g.D, 0.0);
                for (std::size_t e = 0; e < g.D * g.D; ++e) w.push_back(f32(lb * (2.0 * uniform01(rng) - 1.0)));
                if (g.bias) w.insert(w.end(), g.D, 0.0);
                continue;
            }
            if (n->spec.kind == layer_kind::layer_norm) {
                const std::size_t k = n->norm().n;
                for (std::size_t e = 0; e < n->count; ++e) w.push_back(e < k ? 1.0 : 0.0);
                continue;
            }
            const std::size_t fan_in = n->spec.kind == layer_kind::linear
                                           ? n->in_shape.back()
                                           : n->conv().in_per_group() * n->spec.kernel[0] * n->spec.kernel[1];
            const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
            for (std::size_t e = 0; e < n->count; ++e)
                w.push_back(static_cast<double>(static_cast<float>(bound * (2.0 * uniform01(rng) - 1.0))));
        }
        return w;
    }
    std::vector<double> w;
    w.reserve(m.parameter_count());
    std::size_t in = m.input_dim;
    for (const auto& l : m.layers) {
        if (l.kind != layer_kind::linear) continue;
        const double bound = 1.0 / std::sqrt(static_cast<double>(in));
        const std::size_t count = l.out_features * in + (l.bias ? l.out_features : 0);
        for (std::size_t k = 0; k < count; ++k)
            w.push_back(static_cast<double>(static_cast<float>(bound * (2.0 * uniform01(rng) - 1.0))));
        in = l.out_features;
    }
    return w;
}

std::vector<std::vector<std::size_t>> make_minibatches(std::size_t n, std::size_t batch_size, std::size_t steps,
                                                       std::uint64_t seed) {
    if (batch_size == 0 || batch_size > n)
        throw usage_error("batch size must be in [1, N] (N = " + std::to_string(n) + ")");
    std::mt19937_64 rng(seed);
    std::vector<std::vector<std::size_t>> out;
    out.reserve(steps);
    std::vector<std::size_t> perm(n);
    std::size_t next = n;  // position in the current epoch's permutation
    while (out.size() < steps) {
        if (next + batch_size > n) {
            std::iota(perm.begin(), perm.end(), std::size_t{0});
            for (std::size_t i = n; i-- > 1;) std::swap(perm[i], perm[bounded(rng, i + 1)]);
            next = 0;
        }
        out.emplace_back(perm.begin() + static_cast<std::ptrdiff_t>(next),
                         perm.begin() + static_cast<std::ptrdiff_t>(next + batch_size));
        next += batch_size;
    }
    return out;
}

}  // namespace epk

#include "epk/layer_tree.hpp"

#include <numeric>

namespace epk {

layers::linear_geometry tree_node::linear() const {
    return {in_size / in_shape.back(), in_shape.back(), spec.out_features, spec.bias};
}
layers::conv_geometry tree_node::conv() const {
    return {in_shape[0], in_shape[1], in_shape[2], spec.out_features, out_shape[1], out_shape[2], spec.groups,
            spec.kernel[0], spec.kernel[1], spec.stride[0], spec.stride[1], spec.padding[0], spec.padding[1],
            spec.dilation[0], spec.dilation[1], spec.bias};
}
layers::pool_geometry tree_node::pool() const {
    const std::size_t sh = spec.stride[0] == 0 ? spec.kernel[0] : spec.stride[0];
    const std::size_t sw = spec.stride[1] == 0 ? spec.kernel[1] : spec.stride[1];
    const bool dilated = spec.kind == layer_kind::max_pool2d;
    return {in_shape[0], in_shape[1], in_shape[2], out_shape[1], out_shape[2], spec.kernel[0], spec.kernel[1], sh, sw,
            spec.padding[0], spec.padding[1], dilated ? spec.dilation[0] : 1, dilated ? spec.dilation[1] : 1};
}
layers::norm_geometry tree_node::norm() const {
    const std::size_t n =
        std::accumulate(spec.normalized_shape.begin(), spec.normalized_shape.end(), std::size_t{1}, std::multiplies<>());
    return {in_size / n, n, spec.elementwise_affine, spec.bias, spec.eps};
}

layers::attention_geometry tree_node::attention() const {
    return {in_shape[0], in_shape[1], spec.num_heads, spec.bias, spec.causal};
}
layers::sequence_geometry tree_node::sequence() const {
    const std::size_t T = in_shape[0];
    const std::size_t D = spec.kind == layer_kind::embedding ? spec.out_features : in_shape[1];
    const auto Ti = static_cast<std::int64_t>(T);
    const std::size_t index = spec.kind == layer_kind::select ? static_cast<std::size_t>(spec.index < 0 ? spec.index + Ti : spec.index) : 0;
    return {T, D, spec.num_embeddings, index};
}

namespace {
std::size_t numel(const std::vector<std::size_t>& s) {
    return std::accumulate(s.begin(), s.end(), std::size_t{1}, std::multiplies<>());
}

std::vector<tree_node> compile_sequence(const std::vector<layer_spec>& seq, const std::string& prefix,
                                        std::vector<std::size_t>& shape, std::size_t& offset) {
    std::vector<tree_node> out;
    for (std::size_t k = 0; k < seq.size(); ++k) {
        tree_node n;
        n.spec = seq[k];
        n.spec.body.clear();
        n.spec.shortcut.clear();
        n.path = prefix + "[" + std::to_string(k) + "]";
        n.in_shape = shape;
        n.in_size = numel(shape);
        if (seq[k].kind == layer_kind::residual) {
            std::vector<std::size_t> b = shape, s = shape;
            n.body = compile_sequence(seq[k].body, n.path + ".body", b, offset);
            n.shortcut = compile_sequence(seq[k].shortcut, n.path + ".shortcut", s, offset);
            n.out_shape = b;
        } else {
            std::string error;
            n.out_shape = layer_output_shape(seq[k], shape, n.path, &error);
            if (n.out_shape.empty()) throw usage_error("model: " + error);
            n.offset = offset;
            n.count = layer_parameter_count(seq[k], shape);
            offset += n.count;
            if (n.spec.kind == layer_kind::conv2d) n.patches = layers::conv_patch_runs(n.conv());
        }
        n.out_size = numel(n.out_shape);
        shape = n.out_shape;
        out.push_back(std::move(n));
    }
    return out;
}

void collect(const std::vector<tree_node>& seq, std::vector<const tree_node*>& out) {
    for (const tree_node& n : seq) {
        out.push_back(&n);
        collect(n.body, out);
        collect(n.shortcut, out);
    }
}
}  // namespace

layer_tree compile_tree(const model_spec& m) {
    if (const std::string e = check_model(m); !e.empty()) throw usage_error("model: " + e);
    layer_tree t;
    std::vector<std::size_t> shape = m.sample_shape();
    t.in_size = numel(shape);
    t.layers = compile_sequence(m.layers, "layers", shape, t.parameters);
    t.out_size = numel(shape);
    return t;
}

std::vector<const tree_node*> tree_nodes(const layer_tree& t) {
    std::vector<const tree_node*> out;
    collect(t.layers, out);
    return out;
}

}  // namespace epk

#include "epk/network.hpp"

#include <string>

namespace epk {

std::vector<linear_offsets> parameter_offsets(const model_spec& m) {
    std::vector<linear_offsets> out;
    std::size_t in = m.input_dim, at = 0;
    for (std::size_t k = 0; k < m.layers.size(); ++k) {
        const layer_spec& l = m.layers[k];
        if (l.kind != layer_kind::linear) continue;
        linear_offsets o{k, in, l.out_features, at, at + in * l.out_features, l.bias};
        at += in * l.out_features + (l.bias ? l.out_features : 0);
        in = l.out_features;
        out.push_back(o);
    }
    return out;
}

void check_network_shapes(const model_spec& m, std::size_t w_size, std::size_t x_cols) {
    if (w_size != m.parameter_count())
        throw usage_error("network: parameter vector has " + std::to_string(w_size) + " entries, model needs " +
                          std::to_string(m.parameter_count()));
    if (x_cols != m.input_dim)
        throw usage_error("network: inputs have " + std::to_string(x_cols) + " columns, model needs " +
                          std::to_string(m.input_dim));
}

void require_mlp(const model_spec& m, const char* what) {
    if (!m.is_mlp()) throw usage_error(std::string(what) + ": implemented for MLPs only (linear layers and activations)");
}

}  // namespace epk

#include "epk/segment.hpp"

namespace epk {

segment_structure analyse_segment_structure(const model_spec& m) {
    segment_structure st;
    if (!m.is_mlp()) {  // tree_segment.hpp: nodes in pre-order
        const tree_segment::analysis an = tree_segment::analyse(m);
        st.first_smooth = an.first_smooth;
        st.piecewise_linear = an.first_smooth == an.nodes.size();
        st.exact_nodes = an.degree / 2 + 1;
        st.default_tolerance = an.tolerance;
        for (std::size_t k = an.first_smooth; k < an.nodes.size(); ++k) {
            const layer_kind kind = an.nodes[k]->spec.kind;
            if (kind == layer_kind::relu || kind == layer_kind::leaky_relu || kind == layer_kind::max_pool2d)
                st.kinks_behind_smooth = true;
        }
        return st;
    }
    st.first_smooth = m.layers.size();
    for (std::size_t k = 0; k < m.layers.size(); ++k)
        if (m.layers[k].kind != layer_kind::linear && !is_piecewise_linear(m.layers[k].kind)) {
            st.first_smooth = k;
            st.piecewise_linear = false;
            break;
        }
    for (std::size_t k = st.first_smooth; k < m.layers.size(); ++k)
        if (m.layers[k].kind == layer_kind::relu || m.layers[k].kind == layer_kind::leaky_relu) st.kinks_behind_smooth = true;
    // J has degree ≤ L−1 on a piece; ⌊L/2⌋+1 nodes integrate degree 2⌊L/2⌋+1 ≥ L exactly.
    st.exact_nodes = m.linear_layer_count() / 2 + 1;
    double widths = 0;
    for (const linear_offsets& o : parameter_offsets(m)) widths += static_cast<double>(o.in + o.out);
    st.default_tolerance = 16 + widths;
    return st;
}

}  // namespace epk

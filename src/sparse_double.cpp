// The inner loop of the structured path kernel's sparse conv input adjoint in double
// (bilinear.hpp, conv_adjoint::apply_sparse), in its own translation unit so that it can be
// compiled for the build machine's instruction set like the products of gemm_double.cpp
// (CMakeLists.txt, EPK_FAST_GEMM).  -ffp-contract=off holds here too: every update is a
// rounded product then a rounded sum, so the result is the same bit for bit with or without
// the wider instructions.
#include "epk/bilinear.hpp"

namespace epk::bilinear {

namespace {
// Four doubles (GCC's vector extension: one AVX register, two SSE2 registers without AVX);
// may_alias: it reads and writes arrays of double.
typedef double v4 __attribute__((vector_size(32), may_alias));

template <std::size_t W>  // W a multiple of 4; rows of adjT 32-byte aligned
void pairs_fixed(std::size_t n, const double* e, const double* const* rows, const std::uint32_t* pair_k,
                 const std::uint32_t* pair_i, std::size_t pairs, double* adjT) {
    constexpr std::size_t V = W / 4;
    for (std::size_t u = 0; u < pairs; ++u) {
        v4 acc[V] = {};
        const std::uint32_t k = pair_k[u];
        for (std::size_t j = 0; j < n; ++j) {
            const double av = rows[j][k];
            const v4 avv = {av, av, av, av};
            for (std::size_t v = 0; v < V; ++v) {
                v4 ev;
                __builtin_memcpy(&ev, e + j * W + 4 * v, sizeof ev);
                acc[v] += avv * ev;
            }
        }
        v4* dst = reinterpret_cast<v4*>(adjT + static_cast<std::size_t>(pair_i[u]) * W);
        for (std::size_t v = 0; v < V; ++v) dst[v] += acc[v];
    }
}
}  // namespace

void sparse_adjoint_pairs_double(std::size_t ld, std::size_t n, const double* e, const double* const* rows,
                                 const std::uint32_t* pair_k, const std::uint32_t* pair_i, std::size_t pairs,
                                 double* adjT) {
    switch (ld) {  // the widths conv_adjoint pads to: whole vectors, no remainder loop
        case 4: pairs_fixed<4>(n, e, rows, pair_k, pair_i, pairs, adjT); return;
        case 8: pairs_fixed<8>(n, e, rows, pair_k, pair_i, pairs, adjT); return;
        case 12: pairs_fixed<12>(n, e, rows, pair_k, pair_i, pairs, adjT); return;
        case 16: pairs_fixed<16>(n, e, rows, pair_k, pair_i, pairs, adjT); return;
        default: break;
    }
    std::vector<double> acc(ld);
    for (std::size_t u = 0; u < pairs; ++u) {
        for (double& v : acc) v = 0;
        for (std::size_t j = 0; j < n; ++j) {
            const double av = rows[j][pair_k[u]];
            for (std::size_t c = 0; c < ld; ++c) acc[c] += av * e[j * ld + c];
        }
        double* dst = adjT + static_cast<std::size_t>(pair_i[u]) * ld;
        for (std::size_t c = 0; c < ld; ++c) dst[c] += acc[c];
    }
}

}  // namespace epk::bilinear

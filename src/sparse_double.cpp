// The inner loop of the structured path kernel's sparse conv input adjoint in double
// (bilinear.hpp, conv_adjoint::apply_sparse), in its own translation unit so that it can be
// compiled for the build machine's instruction set like the products of gemm_double.cpp
// (CMakeLists.txt, EPK_FAST_GEMM).  -ffp-contract=off holds here too: every update is a
// rounded product then a rounded sum, so the result is the same bit for bit with or without
// the wider instructions.
#include "epk/bilinear.hpp"

namespace epk::bilinear {

namespace {
// Four doubles (GCC's vector extension: one AVX register, two SSE2 registers without AVX).
typedef double v4 __attribute__((vector_size(32)));

template <std::size_t W>  // W a multiple of 4; rows of adjT 32-byte aligned
void pairs_fixed(const double* e, const double* a, const std::uint32_t* pair_k, const std::uint32_t* pair_i,
                 std::size_t pairs, double* adjT) {
    constexpr std::size_t V = W / 4;
    v4 ev[V];
    for (std::size_t j = 0; j < V; ++j) __builtin_memcpy(&ev[j], e + 4 * j, sizeof(v4));
    for (std::size_t u = 0; u < pairs; ++u) {
        const double av = a[pair_k[u]];
        const v4 avv = {av, av, av, av};
        v4* dst = reinterpret_cast<v4*>(adjT + static_cast<std::size_t>(pair_i[u]) * W);
        for (std::size_t j = 0; j < V; ++j) dst[j] += avv * ev[j];
    }
}
}  // namespace

void sparse_adjoint_pairs_double(std::size_t ld, const double* e, const double* a, const std::uint32_t* pair_k,
                                 const std::uint32_t* pair_i, std::size_t pairs, double* adjT) {
    switch (ld) {  // the widths conv_adjoint pads to: whole vectors, no remainder loop
        case 4: pairs_fixed<4>(e, a, pair_k, pair_i, pairs, adjT); return;
        case 8: pairs_fixed<8>(e, a, pair_k, pair_i, pairs, adjT); return;
        case 12: pairs_fixed<12>(e, a, pair_k, pair_i, pairs, adjT); return;
        case 16: pairs_fixed<16>(e, a, pair_k, pair_i, pairs, adjT); return;
        default: break;
    }
    for (std::size_t u = 0; u < pairs; ++u) {
        const double av = a[pair_k[u]];
        double* dst = adjT + static_cast<std::size_t>(pair_i[u]) * ld;
        for (std::size_t c = 0; c < ld; ++c) dst[c] += av * e[c];
    }
}

}  // namespace epk::bilinear

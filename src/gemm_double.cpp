// The fast double GEMM of the structured path kernel (gemm.hpp): Eigen's
// blocked product on row-major views.  This is the only translation unit
// that includes Eigen, so it alone may be compiled with AVX2/FMA
// (CMakeLists.txt, EPK_FAST_GEMM) without affecting the reference code.
#define EIGEN_DONT_PARALLELIZE  // one thread per product: threads belong to the path kernel
#include <Eigen/Core>

#include "epk/error.hpp"
#include "epk/gemm.hpp"

namespace epk {

namespace {
using row_major = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using const_view = Eigen::Map<const row_major, Eigen::Unaligned, Eigen::OuterStride<>>;
using view = Eigen::Map<row_major, Eigen::Unaligned, Eigen::OuterStride<>>;
}  // namespace

void gemm_fast_double(bool b_transposed, std::size_t m, std::size_t n, std::size_t k, const double* a,
                      std::size_t lda, const double* b, std::size_t ldb, double* c, std::size_t ldc, bool accumulate) {
    // Vectors and tiny products: Eigen evaluates these coefficient by coefficient (GEMV, lazy
    // products) with reductions that peel to the data's alignment, so their rounding would
    // depend on where malloc put the operands — and so on the thread.  Plain sums instead.
    if (m == 1 || n == 1 || m + n + k < 20) {
        for (std::size_t i = 0; i < m; ++i)
            for (std::size_t j = 0; j < n; ++j) {
                double acc = accumulate ? c[i * ldc + j] : 0.0;
                for (std::size_t p = 0; p < k; ++p) acc += a[i * lda + p] * (b_transposed ? b[j * ldb + p] : b[p * ldb + j]);
                c[i * ldc + j] = acc;
            }
        return;
    }
    const auto em = static_cast<Eigen::Index>(m), en = static_cast<Eigen::Index>(n), ek = static_cast<Eigen::Index>(k);
    const_view av(a, em, ek, Eigen::OuterStride<>(static_cast<Eigen::Index>(lda)));
    view cv(c, em, en, Eigen::OuterStride<>(static_cast<Eigen::Index>(ldc)));
    if (b_transposed) {
        const_view bv(b, en, ek, Eigen::OuterStride<>(static_cast<Eigen::Index>(ldb)));
        if (accumulate) cv.noalias() += av * bv.transpose();
        else cv.noalias() = av * bv.transpose();
    } else {
        const_view bv(b, ek, en, Eigen::OuterStride<>(static_cast<Eigen::Index>(ldb)));
        if (accumulate) cv.noalias() += av * bv;
        else cv.noalias() = av * bv;
    }
}

const char* gemm_fast_isa() {
#if defined(__AVX512F__)
    return "avx512f+fma";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2+fma";
#elif defined(__AVX__)
    return "avx";
#elif defined(__SSE2__)
    return "sse2";
#else
    return "generic";
#endif
}

void check_gemm_fast_supported() {
#if defined(__x86_64__) || defined(__i386__)
#if defined(__AVX2__)
    if (!__builtin_cpu_supports("avx2")) throw usage_error("this epk was built with AVX2 (EPK_FAST_GEMM) and the CPU lacks it: rebuild with -DEPK_FAST_GEMM=OFF");
#endif
#if defined(__FMA__)
    if (!__builtin_cpu_supports("fma")) throw usage_error("this epk was built with FMA (EPK_FAST_GEMM) and the CPU lacks it: rebuild with -DEPK_FAST_GEMM=OFF");
#endif
#endif
}

}  // namespace epk

// epk/gemm.hpp — the dense products of the structured path kernel
// (structured_kernel.hpp), row-major throughout:
//
//   C[m × n] = (accumulate ? C : 0) + A[m × k] · op(B)
//   op(B) = Bᵀ with B stored [n × k] (b_transposed), or B stored [k × n].
//
// Two implementations.
//  * gemm_reference<T>: every entry is Σ_p A[i][p]·op(B)[p][j] summed over p
//    ascending with add_product (two roundings per term, never fused), the
//    same order in every scalar type.  Used for every type but double, and
//    for double wherever bit-identity with the reference (unstructured) code
//    matters (the training side).
//  * gemm_fast (double only, src/gemm_double.cpp): Eigen's blocked GEMM,
//    compiled with AVX2 and FMA when the build machine has them (CMake option
//    EPK_FAST_GEMM).  Its rounding differs from the reference order (fused
//    multiply-adds, blocked partial sums); it is deterministic for given
//    shapes on a given machine and build, and never multithreaded itself.
#pragma once

#include <chrono>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "epk/scalar.hpp"

namespace epk {

template <Real T>
void gemm_reference(bool b_transposed, std::size_t m, std::size_t n, std::size_t k, const T* a, std::size_t lda,
                    const T* b, std::size_t ldb, T* c, std::size_t ldc, bool accumulate) {
    if (b_transposed && m > 1 && std::is_floating_point_v<T>) {
        // op(B) = Bᵀ formed once [k × n], then the streaming loops below (vectorised over j):
        // the same products added in the same order to each entry (0 + …, p ascending), so the
        // same bits.  (Hardware types only: an MPFR copy costs about what a product does.)
        std::vector<T> bt(k * n);
        for (std::size_t j = 0; j < n; ++j)
            for (std::size_t p = 0; p < k; ++p) bt[p * n + j] = b[j * ldb + p];
        gemm_reference<T>(false, m, n, k, a, lda, bt.data(), n, c, ldc, accumulate);
        return;
    }
    if (b_transposed) {
        for (std::size_t i = 0; i < m; ++i)
            for (std::size_t j = 0; j < n; ++j) {
                const T* ar = a + i * lda;
                const T* br = b + j * ldb;
                T acc = accumulate ? c[i * ldc + j] : T(0);
                for (std::size_t p = 0; p < k; ++p) add_product(acc, ar[p], br[p]);
                c[i * ldc + j] = acc;
            }
        return;
    }
    // B [k × n]: stream rows of B; each C[i][j] still sums p ascending.
    for (std::size_t i = 0; i < m; ++i) {
        T* cr = c + i * ldc;
        if (!accumulate)
            for (std::size_t j = 0; j < n; ++j) cr[j] = T(0);
        for (std::size_t p = 0; p < k; ++p) {
            const T& aip = a[i * lda + p];
            const T* br = b + p * ldb;
            for (std::size_t j = 0; j < n; ++j) add_product(cr[j], aip, br[j]);
        }
    }
}

// Eigen (double), src/gemm_double.cpp.
void gemm_fast_double(bool b_transposed, std::size_t m, std::size_t n, std::size_t k, const double* a,
                      std::size_t lda, const double* b, std::size_t ldb, double* c, std::size_t ldc, bool accumulate);
// Which instruction set the fast GEMM was compiled for ("avx2+fma", "sse2", ...).
const char* gemm_fast_isa();
// Throws usage_error when the fast GEMM was compiled for instructions this CPU lacks.
void check_gemm_fast_supported();

// Floating-point work and time spent in the products (for benchmarks).
struct gemm_counter {
    double flops = 0;    // 2·m·n·k per product
    double seconds = 0;  // wall time inside the products
};

// The path kernel's test-side products: the fast GEMM in double, the
// reference order otherwise.  `counter` (optional) accumulates work and time.
template <Real T>
void gemm(bool b_transposed, std::size_t m, std::size_t n, std::size_t k, const T* a, std::size_t lda, const T* b,
          std::size_t ldb, T* c, std::size_t ldc, bool accumulate, gemm_counter* counter = nullptr) {
    if (m == 0 || n == 0) return;
    const auto start = counter ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    if constexpr (std::is_same_v<T, double>) {
        if (k == 0) {
            if (!accumulate)
                for (std::size_t i = 0; i < m; ++i)
                    for (std::size_t j = 0; j < n; ++j) c[i * ldc + j] = 0;
        } else {
            gemm_fast_double(b_transposed, m, n, k, a, lda, b, ldb, c, ldc, accumulate);
        }
    } else {
        gemm_reference<T>(b_transposed, m, n, k, a, lda, b, ldb, c, ldc, accumulate);
    }
    if (counter) {
        counter->flops += 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
        counter->seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
}

}  // namespace epk

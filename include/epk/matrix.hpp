// epk/matrix.hpp — a plain row-major dense matrix over any Real.
// Deliberately minimal: the core's loops are written out so that the order
// of every sum is visible and identical in every scalar type.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "epk/error.hpp"

namespace epk {

template <class T>
struct matrix {
    std::size_t rows = 0, cols = 0;
    std::vector<T> data;

    matrix() = default;
    matrix(std::size_t r, std::size_t c) : rows(r), cols(c), data(r * c, T(0)) {}

    T& operator()(std::size_t r, std::size_t c) { return data[r * cols + c]; }
    const T& operator()(std::size_t r, std::size_t c) const { return data[r * cols + c]; }
    std::span<T> row(std::size_t r) { return {data.data() + r * cols, cols}; }
    std::span<const T> row(std::size_t r) const { return {data.data() + r * cols, cols}; }
};

// Rows `index[k]` of `m`, in that order.
template <class T>
matrix<T> gather_rows(const matrix<T>& m, std::span<const std::size_t> index) {
    matrix<T> out(index.size(), m.cols);
    for (std::size_t k = 0; k < index.size(); ++k) {
        if (index[k] >= m.rows) throw usage_error("gather_rows: index out of range");
        for (std::size_t c = 0; c < m.cols; ++c) out(k, c) = m(index[k], c);
    }
    return out;
}

// Element-wise conversion (each element converted once, correctly rounded
// where the target is narrower).
template <class To, class From>
matrix<To> convert_matrix(const matrix<From>& m) {
    matrix<To> out(m.rows, m.cols);
    for (std::size_t i = 0; i < m.data.size(); ++i) out.data[i] = To(m.data[i]);
    return out;
}

}  // namespace epk

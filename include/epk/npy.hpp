// epk/npy.hpp — NumPy .npy files (format 1.0, 2.0, 3.0), the subset the
// trace format allows: little-endian `<f4`, `<f8`, `<i8`, C order.
//
// Contract: `parse_npy` never allocates more than a small multiple of the
// input's size (shapes are checked against the bytes actually present before
// anything is sized from them) and rejects, with an input_error naming `name`
// and the rule, anything else: wrong magic, unknown version, malformed header
// dict, unknown or big-endian dtype, fortran_order True, shape overflow,
// truncated data, trailing bytes.  NaN and infinity are *not* rejected here
// (some arrays may hold them in principle); the trace loader rejects them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace epk {

enum class npy_dtype { f4, f8, i8 };

std::string_view to_string(npy_dtype d);  // "<f4", "<f8", "<i8"

// Where the payload of an array read on demand lives (open_npy).
struct npy_file_source {
    std::filesystem::path file;
    std::size_t data_offset = 0;
};

struct npy_array {
    npy_dtype dtype = npy_dtype::f8;
    std::vector<std::size_t> shape;
    std::vector<double> real;           // f4 / f8 payload (f4 widened exactly); empty when `source` is set
    std::vector<std::int64_t> integer;  // i8 payload
    std::shared_ptr<const npy_file_source> source;  // set: the payload stays in the file (real_rows reads it)

    std::size_t size() const;  // product of shape (1 for a 0-d array)
    bool is_real() const { return dtype != npy_dtype::i8; }
};

npy_array make_real_array(npy_dtype dtype, std::vector<std::size_t> shape, std::vector<double> values);
npy_array make_int_array(std::vector<std::size_t> shape, std::vector<std::int64_t> values);

inline constexpr std::uintmax_t max_npy_file_bytes = std::uintmax_t{2} << 30;  // 2 GiB: larger .npy files are refused

npy_array parse_npy(std::span<const unsigned char> bytes, const std::string& name);
npy_array read_npy(const std::filesystem::path& file);            // name = file's path as given
// An array whose payload stays in its file: the header and the file's size are checked
// exactly as parse_npy checks them (same messages); the values are read by real_rows /
// integer_rows.
npy_array open_npy(const std::filesystem::path& file, const std::string& name);
// Rows [first, first + count) along axis 0 (a 1-d array's rows are its elements), from
// memory or from the file; usage_error out of range, or for integer_rows of a real array.
// real_rows of an <i8 array (token ids) gives the integers as binary64.
std::vector<double> real_rows(const npy_array& a, std::size_t first, std::size_t count);
std::vector<std::int64_t> integer_rows(const npy_array& a, std::size_t first, std::size_t count);
std::vector<unsigned char> serialize_npy(const npy_array& a);      // format 1.0, deterministic bytes
void write_npy(const std::filesystem::path& file, const npy_array& a);

}  // namespace epk

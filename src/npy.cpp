// src/npy.cpp — NumPy .npy reading and writing (see epk/npy.hpp).
//
// Contract: parse_npy accepts exactly format versions 1.0/2.0/3.0 with a
// header dict {'descr', 'fortran_order', 'shape'} (any key order, Python
// literal syntax), dtypes <f4/<f8/<i8, C order, and a data section whose
// length equals prod(shape) * itemsize to the byte.  The shape is checked
// for overflow and against the bytes present before anything is allocated.
// Values are decoded little-endian explicitly, independent of the host.
// serialize_npy writes version 1.0 byte-for-byte as numpy >= 1.23 np.save
// does (header padded with spaces to a multiple of 64, ending in '\n').
#include "epk/npy.hpp"
#include "epk/file_io.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <string_view>
#include <system_error>

#include "epk/error.hpp"

namespace epk {

namespace {

constexpr unsigned char npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

std::size_t itemsize(npy_dtype d) { return d == npy_dtype::f4 ? 4 : 8; }


// Product of the shape, or nullopt on size_t overflow.
std::optional<std::size_t> checked_product(const std::vector<std::size_t>& shape) {
    std::size_t n = 1;
    for (std::size_t d : shape)
        if (__builtin_mul_overflow(n, d, &n)) return std::nullopt;
    return n;
}

std::uint64_t load_le(const unsigned char* p, std::size_t width) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < width; ++i) v |= std::uint64_t{p[i]} << (8 * i);
    return v;
}

void store_le(std::vector<unsigned char>& out, std::uint64_t v, std::size_t width) {
    for (std::size_t i = 0; i < width; ++i) out.push_back(static_cast<unsigned char>(v >> (8 * i)));
}

// A strict parser for the header dict numpy writes: a Python dict literal
// with string keys; values are a string, a bool, or a tuple of integers.
class header_parser {
public:
    header_parser(std::string_view text, const std::string& name) : s_(text), name_(name) {}

    struct result {
        std::string descr;
        bool fortran_order = false;
        std::vector<std::size_t> shape;
    };

    result parse() {
        result r;
        bool have_descr = false, have_fortran = false, have_shape = false;
        skip_ws();
        expect('{', "expected '{' at the start of the header dict");
        skip_ws();
        while (!at('}')) {
            std::string key = parse_string("a dict key");
            skip_ws();
            expect(':', "expected ':' after key '" + key + "'");
            skip_ws();
            if (key == "descr") {
                if (have_descr) fail("duplicate key 'descr'");
                have_descr = true;
                r.descr = parse_string("the 'descr' value");
            } else if (key == "fortran_order") {
                if (have_fortran) fail("duplicate key 'fortran_order'");
                have_fortran = true;
                r.fortran_order = parse_bool();
            } else if (key == "shape") {
                if (have_shape) fail("duplicate key 'shape'");
                have_shape = true;
                r.shape = parse_shape();
            } else {
                fail("unexpected key '" + key + "' (allowed: descr, fortran_order, shape)");
            }
            skip_ws();
            if (at(',')) {
                ++i_;
                skip_ws();
            } else if (!at('}')) {
                fail("expected ',' or '}' after the value of '" + key + "'");
            }
        }
        ++i_;  // '}'
        skip_ws();
        if (i_ != s_.size()) fail("unexpected text after the header dict");
        if (!have_descr) fail("missing key 'descr'");
        if (!have_fortran) fail("missing key 'fortran_order'");
        if (!have_shape) fail("missing key 'shape'");
        return r;
    }

private:
    [[noreturn]] void fail(const std::string& what) const {
        throw input_error(name_, "malformed .npy header: " + what);
    }
    bool at(char c) const { return i_ < s_.size() && s_[i_] == c; }
    void expect(char c, const std::string& what) {
        if (!at(c)) fail(what);
        ++i_;
    }
    void skip_ws() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
    }
    std::string parse_string(const std::string& what) {
        if (!at('\'') && !at('"')) fail("expected a quoted string as " + what);
        const char q = s_[i_++];
        std::string out;
        while (i_ < s_.size() && s_[i_] != q) {
            const char c = s_[i_];
            if (c == '\\' || c == '\n' || static_cast<unsigned char>(c) < 0x20 ||
                static_cast<unsigned char>(c) >= 0x7f)
                fail("unsupported character in a string");
            out += c;
            ++i_;
        }
        if (i_ >= s_.size()) fail("unterminated string");
        ++i_;
        return out;
    }
    bool parse_bool() {
        if (s_.substr(i_, 4) == "True") {
            i_ += 4;
            return true;
        }
        if (s_.substr(i_, 5) == "False") {
            i_ += 5;
            return false;
        }
        fail("'fortran_order' must be True or False");
    }
    std::size_t parse_dim() {
        const std::size_t start = i_;
        std::size_t v = 0;
        while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
            const std::size_t digit = static_cast<std::size_t>(s_[i_] - '0');
            if (__builtin_mul_overflow(v, std::size_t{10}, &v) || __builtin_add_overflow(v, digit, &v))
                throw input_error(name_, "shape dimension too large (overflows 64 bits)");
            ++i_;
        }
        if (i_ == start) fail("expected a non-negative integer in 'shape'");
        if (i_ - start > 1 && s_[start] == '0') fail("leading zero in a 'shape' dimension");
        return v;
    }
    std::vector<std::size_t> parse_shape() {
        expect('(', "'shape' must be a tuple");
        std::vector<std::size_t> shape;
        skip_ws();
        if (at(')')) {
            ++i_;
            return shape;
        }
        bool trailing_comma = false;
        while (true) {
            shape.push_back(parse_dim());
            skip_ws();
            trailing_comma = false;
            if (at(',')) {
                ++i_;
                trailing_comma = true;
                skip_ws();
            }
            if (at(')')) break;
            if (!trailing_comma) fail("expected ',' or ')' in 'shape'");
        }
        ++i_;  // ')'
        if (shape.size() == 1 && !trailing_comma) fail("'shape' (n) is not a tuple; a 1-d shape is written (n,)");
        return shape;
    }

    std::string_view s_;
    const std::string& name_;
    std::size_t i_ = 0;
};

}  // namespace

std::string_view to_string(npy_dtype d) {
    switch (d) {
        case npy_dtype::f4: return "<f4";
        case npy_dtype::f8: return "<f8";
        case npy_dtype::i8: return "<i8";
    }
    return "?";
}

std::size_t npy_array::size() const {
    std::size_t n = 1;
    for (std::size_t d : shape) n *= d;
    return n;
}

npy_array make_real_array(npy_dtype dtype, std::vector<std::size_t> shape, std::vector<double> values) {
    if (dtype == npy_dtype::i8) throw usage_error("make_real_array: dtype <i8 is not real");
    const auto n = checked_product(shape);
    if (!n || *n != values.size()) throw usage_error("make_real_array: shape does not match the number of values");
    if (dtype == npy_dtype::f4)
        for (double v : values)
            if (!std::isnan(v) && static_cast<double>(static_cast<float>(v)) != v)
                throw usage_error("make_real_array: value not representable as <f4");
    npy_array a;
    a.dtype = dtype;
    a.shape = std::move(shape);
    a.real = std::move(values);
    return a;
}

npy_array make_int_array(std::vector<std::size_t> shape, std::vector<std::int64_t> values) {
    const auto n = checked_product(shape);
    if (!n || *n != values.size()) throw usage_error("make_int_array: shape does not match the number of values");
    npy_array a;
    a.dtype = npy_dtype::i8;
    a.shape = std::move(shape);
    a.integer = std::move(values);
    return a;
}

namespace {
// What the header says and where the data starts, checked against the file's total size
// (`bytes` holds at least the magic, the version, the length and the header when they fit
// in `total`; the messages are parse_npy's).
struct npy_layout {
    npy_dtype dtype;
    std::vector<std::size_t> shape;
    std::size_t count = 0, data_start = 0;
};

npy_layout parse_npy_layout(std::span<const unsigned char> bytes, std::size_t total, const std::string& name) {
    if (total < 8 || bytes.size() < 8 || std::memcmp(bytes.data(), npy_magic, 6) != 0)
        throw input_error(name, "not a .npy file (bad magic)");
    const unsigned major = bytes[6], minor = bytes[7];
    if (minor != 0 || major < 1 || major > 3)
        throw input_error(name, "unsupported .npy format version " + std::to_string(major) + "." +
                                    std::to_string(minor) + " (allowed: 1.0, 2.0, 3.0)");
    const std::size_t len_bytes = major == 1 ? 2 : 4;
    if (total < 8 + len_bytes || bytes.size() < 8 + len_bytes) throw input_error(name, "truncated: file ends inside the header length");
    const std::size_t header_len = static_cast<std::size_t>(load_le(bytes.data() + 8, len_bytes));
    const std::size_t header_start = 8 + len_bytes;
    if (header_len > total - header_start || header_len > bytes.size() - header_start)
        throw input_error(name, "truncated: header length " + std::to_string(header_len) + " exceeds the file");
    const std::string_view header(reinterpret_cast<const char*>(bytes.data() + header_start), header_len);

    const auto h = header_parser(header, name).parse();

    npy_dtype dtype;
    if (h.descr == "<f4")
        dtype = npy_dtype::f4;
    else if (h.descr == "<f8")
        dtype = npy_dtype::f8;
    else if (h.descr == "<i8")
        dtype = npy_dtype::i8;
    else
        throw input_error(name, "unsupported dtype '" + h.descr + "' (allowed: <f4, <f8, <i8)");
    if (h.fortran_order) throw input_error(name, "fortran_order True is not allowed");

    const auto count = checked_product(h.shape);
    std::size_t data_bytes = 0;
    if (!count || __builtin_mul_overflow(*count, itemsize(dtype), &data_bytes))
        throw input_error(name, "shape " + shape_text(h.shape) + " overflows: too many elements");
    const std::size_t data_start = header_start + header_len;
    const std::size_t have = total - data_start;
    if (have < data_bytes)
        throw input_error(name, "truncated: header promises " + std::to_string(data_bytes) +
                                    " bytes of data, file has " + std::to_string(have));
    if (have > data_bytes)
        throw input_error(name, "trailing bytes after data: header promises " + std::to_string(data_bytes) +
                                    " bytes of data, file has " + std::to_string(have));
    return {dtype, h.shape, *count, data_start};
}

double decode_real(const unsigned char* p, npy_dtype dtype) {
    const std::size_t w = itemsize(dtype);
    const std::uint64_t bits = load_le(p, w);
    return dtype == npy_dtype::f8 ? std::bit_cast<double>(bits)
                                  : static_cast<double>(std::bit_cast<float>(static_cast<std::uint32_t>(bits)));
}
}  // namespace

npy_array parse_npy(std::span<const unsigned char> bytes, const std::string& name) {
    const npy_layout lay = parse_npy_layout(bytes, bytes.size(), name);
    const npy_dtype dtype = lay.dtype;
    const std::size_t data_start = lay.data_start;
    const std::optional<std::size_t> count = lay.count;
    npy_array a;
    a.dtype = dtype;
    a.shape = lay.shape;
    const unsigned char* p = bytes.data() + data_start;
    const std::size_t w = itemsize(dtype);
    if (dtype == npy_dtype::i8) {
        a.integer.resize(*count);
        for (std::size_t i = 0; i < *count; ++i)
            a.integer[i] = std::bit_cast<std::int64_t>(load_le(p + i * w, w));
    } else {
        a.real.resize(*count);
        for (std::size_t i = 0; i < *count; ++i) a.real[i] = decode_real(p + i * w, dtype);
    }
    return a;
}

npy_array open_npy(const std::filesystem::path& file, const std::string& name) {
    std::error_code ec;
    const auto st = std::filesystem::status(file, ec);
    if (ec || !std::filesystem::exists(st)) throw input_error(name, "missing file");
    if (!std::filesystem::is_regular_file(st)) throw input_error(name, "cannot open file (not a regular file)");
    const auto size = std::filesystem::file_size(file, ec);
    if (ec) throw input_error(name, "cannot determine the file size");
    if (size > max_npy_file_bytes) throw input_error(name, "file is larger than " + std::to_string(max_npy_file_bytes >> 20) + " MiB");
    std::ifstream in(file, std::ios::binary);
    if (!in) throw input_error(name, "cannot open file");
    // The header: at most 12 bytes of preamble plus its stated length (itself ≤ the file).
    std::vector<unsigned char> head(static_cast<std::size_t>(std::min<std::uintmax_t>(size, 12)));
    in.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(head.size()));
    if (head.size() >= 10 && std::memcmp(head.data(), npy_magic, 6) == 0 && head[7] == 0 && head[6] >= 1 && head[6] <= 3) {
        const std::size_t len_bytes = head[6] == 1 ? 2 : 4;
        if (head.size() >= 8 + len_bytes) {
            const std::uintmax_t want = 8 + len_bytes + load_le(head.data() + 8, len_bytes);
            if (want <= size) {
                const std::size_t have = head.size();
                head.resize(static_cast<std::size_t>(want));
                in.read(reinterpret_cast<char*>(head.data() + have), static_cast<std::streamsize>(head.size() - have));
            }
        }
    }
    if (!in) throw input_error(name, "read error");
    const npy_layout lay = parse_npy_layout(head, static_cast<std::size_t>(size), name);
    npy_array a;
    a.dtype = lay.dtype;
    a.shape = lay.shape;
    a.source = std::make_shared<const npy_file_source>(npy_file_source{file, lay.data_start});
    return a;
}

namespace {
// Row width along axis 0, the range check, and the raw little-endian bytes of rows
// [first, first + count) read from the array's file.
std::size_t row_width(const npy_array& a, std::size_t first, std::size_t count, const char* who) {
    if (a.shape.empty()) throw usage_error(std::string(who) + ": not an array with rows");
    std::size_t width = 1;
    for (std::size_t k = 1; k < a.shape.size(); ++k) width *= a.shape[k];
    if (first > a.shape[0] || count > a.shape[0] - first) throw usage_error(std::string(who) + ": rows out of range");
    return width;
}

std::vector<unsigned char> file_rows(const npy_array& a, std::size_t first, std::size_t count, std::size_t width) {
    const std::size_t w = itemsize(a.dtype);
    std::vector<unsigned char> bytes(count * width * w);
    std::ifstream in(a.source->file, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(a.source->data_offset + first * width * w));
    in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!in || static_cast<std::size_t>(in.gcount()) != bytes.size())
        throw input_error(a.source->file.string(), "read error: the file changed or shrank after it was checked");
    return bytes;
}
}  // namespace

std::vector<double> real_rows(const npy_array& a, std::size_t first, std::size_t count) {
    const std::size_t width = row_width(a, first, count, "real_rows");
    if (!a.is_real()) {  // <i8 (token ids): the integers as binary64 (exact below 2^53)
        const std::vector<std::int64_t> v = integer_rows(a, first, count);
        return std::vector<double>(v.begin(), v.end());
    }
    if (!a.source)
        return std::vector<double>(a.real.begin() + static_cast<std::ptrdiff_t>(first * width),
                                   a.real.begin() + static_cast<std::ptrdiff_t>((first + count) * width));
    const std::vector<unsigned char> bytes = file_rows(a, first, count, width);
    std::vector<double> out(count * width);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = decode_real(bytes.data() + i * itemsize(a.dtype), a.dtype);
    return out;
}

std::vector<std::int64_t> integer_rows(const npy_array& a, std::size_t first, std::size_t count) {
    const std::size_t width = row_width(a, first, count, "integer_rows");
    if (a.is_real()) throw usage_error("integer_rows: not an integer array");
    if (!a.source)
        return std::vector<std::int64_t>(a.integer.begin() + static_cast<std::ptrdiff_t>(first * width),
                                         a.integer.begin() + static_cast<std::ptrdiff_t>((first + count) * width));
    const std::vector<unsigned char> bytes = file_rows(a, first, count, width);
    std::vector<std::int64_t> out(count * width);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = std::bit_cast<std::int64_t>(load_le(bytes.data() + 8 * i, 8));
    return out;
}

npy_array read_npy(const std::filesystem::path& file) {
    const std::string bytes = read_file_capped(file, max_npy_file_bytes);
    return parse_npy({reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()}, file.string());
}

std::vector<unsigned char> serialize_npy(const npy_array& a_in) {
    npy_array loaded;
    if (a_in.source) {  // on disk: read it (writing needs the values)
        loaded = a_in;
        loaded.source.reset();
        if (a_in.is_real()) loaded.real = real_rows(a_in, 0, a_in.shape.empty() ? 0 : a_in.shape[0]);
        else loaded.integer = integer_rows(a_in, 0, a_in.shape.empty() ? 0 : a_in.shape[0]);
    }
    const npy_array& a = a_in.source ? loaded : a_in;
    const auto count = checked_product(a.shape);
    if (!count) throw usage_error("serialize_npy: shape overflows");
    if (a.is_real() ? a.real.size() != *count : a.integer.size() != *count)
        throw usage_error("serialize_npy: payload size does not match the shape");

    // numpy's _write_array_header: sorted keys, repr values, then spare room
    // for growing axis 0 (21 digits), then _wrap_header's alignment padding.
    std::string header = "{'descr': '" + std::string(to_string(a.dtype)) +
                         "', 'fortran_order': False, 'shape': " + shape_text(a.shape) + ", }";
    if (!a.shape.empty()) {
        const std::size_t digits = std::to_string(a.shape[0]).size();
        if (digits < 21) header.append(21 - digits, ' ');
    }
    std::size_t hlen = header.size() + 1;  // + '\n'
    unsigned major = 1;
    std::size_t prefix = 10;
    std::size_t padlen = 64 - (prefix + hlen) % 64;
    if (hlen + padlen > 0xffff) {  // numpy falls back to 2.0 only when 1.0 cannot hold the header
        major = 2;
        prefix = 12;
        padlen = 64 - (prefix + hlen) % 64;
    }
    header.append(padlen, ' ');
    header += '\n';

    std::vector<unsigned char> out(prefix + header.size());
    std::memcpy(out.data(), npy_magic, 6);
    out[6] = static_cast<unsigned char>(major);
    out[7] = 0;
    for (std::size_t i = 0; i < prefix - 8; ++i) out[8 + i] = static_cast<unsigned char>(header.size() >> (8 * i));
    std::memcpy(out.data() + prefix, header.data(), header.size());
    out.reserve(out.size() + *count * itemsize(a.dtype));
    switch (a.dtype) {
        case npy_dtype::i8:
            for (std::int64_t v : a.integer) store_le(out, std::bit_cast<std::uint64_t>(v), 8);
            break;
        case npy_dtype::f8:
            for (double v : a.real) store_le(out, std::bit_cast<std::uint64_t>(v), 8);
            break;
        case npy_dtype::f4:
            for (double v : a.real) {
                const float f = static_cast<float>(v);
                if (!std::isnan(v) && static_cast<double>(f) != v)
                    throw usage_error("serialize_npy: value not representable as <f4");
                store_le(out, std::bit_cast<std::uint32_t>(f), 4);
            }
            break;
    }
    return out;
}

void write_npy(const std::filesystem::path& file, const npy_array& a) {
    const auto bytes = serialize_npy(a);
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    if (!out) throw input_error(file.string(), "cannot write");
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) throw input_error(file.string(), "cannot write");
}

}  // namespace epk

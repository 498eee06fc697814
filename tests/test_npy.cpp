// tests/test_npy.cpp — .npy parsing and writing (src/npy.cpp).
//
// Covers: round trips for every dtype and 0-d/1-d/2-d/3-d/empty shapes;
// numpy's exact byte layout for version 1.0; hand-built version 2.0/3.0
// files and header-syntax variants; one hand-built file per rejection class
// with the rule text asserted; RapidCheck properties (serialize -> parse is
// the identity; a truncated or bit-flipped file either throws input_error or
// parses to a self-consistent array, never anything else).
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>
#include <unistd.h>

#include <algorithm>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "epk/error.hpp"
#include "epk/npy.hpp"

namespace {

using bytes_t = std::vector<unsigned char>;

// A .npy file with the given version and header text (padded numpy-style) and data.
bytes_t hand_npy(unsigned major, const std::string& dict, const bytes_t& data, unsigned minor = 0) {
    const std::size_t prefix = major == 1 ? 10 : 12;
    std::string header = dict;
    while ((prefix + header.size() + 1) % 64 != 0) header += ' ';
    header += '\n';
    bytes_t out = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<unsigned char>(major), static_cast<unsigned char>(minor)};
    for (std::size_t i = 0; i < prefix - 8; ++i) out.push_back(static_cast<unsigned char>(header.size() >> (8 * i)));
    out.insert(out.end(), header.begin(), header.end());
    out.insert(out.end(), data.begin(), data.end());
    return out;
}

bytes_t f8_bytes(const std::vector<double>& v) {
    bytes_t out;
    for (double d : v) {
        const auto u = std::bit_cast<std::uint64_t>(d);
        for (int i = 0; i < 8; ++i) out.push_back(static_cast<unsigned char>(u >> (8 * i)));
    }
    return out;
}

std::string rule_of(const bytes_t& b) {
    try {
        epk::parse_npy(b, "t.npy");
    } catch (const epk::input_error& e) {
        EXPECT_EQ(e.file(), "t.npy");
        EXPECT_EQ(std::string(e.what()), "t.npy: " + e.rule());
        EXPECT_EQ(e.rule().find('\n'), std::string::npos);
        return e.rule();
    }
    return "<accepted>";
}

#define EXPECT_REJECTED(bytes, substring) EXPECT_NE(rule_of(bytes).find(substring), std::string::npos) << rule_of(bytes)

bool same_bits(const epk::npy_array& a, const epk::npy_array& b) {
    if (a.dtype != b.dtype || a.shape != b.shape || a.integer != b.integer || a.real.size() != b.real.size())
        return false;
    for (std::size_t i = 0; i < a.real.size(); ++i)
        if (std::bit_cast<std::uint64_t>(a.real[i]) != std::bit_cast<std::uint64_t>(b.real[i])) return false;
    return true;
}

const std::string good_dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }";
const bytes_t good_data = f8_bytes({1.5, -2.25});

}  // namespace

TEST(Npy, RoundTripEveryDtypeAndRank) {
    const std::vector<epk::npy_array> arrays = {
        epk::make_real_array(epk::npy_dtype::f8, {3, 4}, {0.1, -0.2, 1e300, -1e-310, 0.0, -0.0, 3, 4, 5, 6, 7, 8}),
        epk::make_real_array(epk::npy_dtype::f4, {5}, {0.5f, 0.1f, -3.0f, 1e-40f, 65504.0f}),
        epk::make_real_array(epk::npy_dtype::f8, {}, {42.0}),
        epk::make_real_array(epk::npy_dtype::f4, {0, 3}, {}),
        epk::make_int_array({2, 3, 2}, {0, 1, -1, std::numeric_limits<std::int64_t>::max(),
                                        std::numeric_limits<std::int64_t>::min(), 5, 6, 7, 8, 9, 10, 11}),
        epk::make_int_array({1}, {7}),
    };
    for (const auto& a : arrays) {
        const auto bytes = epk::serialize_npy(a);
        EXPECT_EQ(bytes[8] + 256 * bytes[9] + 10, bytes.size() - a.size() * (a.dtype == epk::npy_dtype::f4 ? 4 : 8));
        const auto b = epk::parse_npy(bytes, "x.npy");
        EXPECT_TRUE(same_bits(a, b)) << epk::to_string(a.dtype);
        EXPECT_EQ(epk::serialize_npy(b), bytes);
    }
}

TEST(Npy, VersionOneLayoutMatchesNumpy) {
    const auto a = epk::make_real_array(epk::npy_dtype::f8, {3, 4}, std::vector<double>(12, 1.0));
    const auto bytes = epk::serialize_npy(a);
    // numpy >= 1.23: dict, 21 - len("3") growth spaces, padding to 64, '\n'.
    const std::string dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }";
    ASSERT_EQ(bytes.size(), 128u + 12 * 8);
    EXPECT_EQ(std::memcmp(bytes.data(), "\x93NUMPY\x01\x00", 8), 0);
    EXPECT_EQ(bytes[8], 118);
    EXPECT_EQ(bytes[9], 0);
    const std::string header(bytes.begin() + 10, bytes.begin() + 128);
    EXPECT_EQ(header.substr(0, dict.size()), dict);
    EXPECT_EQ(header.find_first_not_of(' ', dict.size()), header.size() - 1);
    EXPECT_EQ(header.back(), '\n');
    EXPECT_EQ(bytes[128], 0x00);
    EXPECT_EQ(bytes[135], 0x3f);  // 1.0 little-endian: 00 .. 00 f0 3f

    const auto one_d = epk::serialize_npy(epk::make_int_array({5}, {1, 2, 3, 4, 5}));
    EXPECT_NE(std::string(one_d.begin(), one_d.end()).find("'shape': (5,), }"), std::string::npos);
    const auto zero_d = epk::serialize_npy(epk::make_real_array(epk::npy_dtype::f4, {}, {1.0}));
    const std::string z(zero_d.begin(), zero_d.end());
    EXPECT_NE(z.find("{'descr': '<f4', 'fortran_order': False, 'shape': (), }"), std::string::npos);
    EXPECT_EQ((10 + zero_d[8] + 256 * zero_d[9]) % 64, 0);
}

TEST(Npy, AcceptsVersionsTwoAndThreeAndHeaderVariants) {
    for (unsigned major : {1u, 2u, 3u}) {
        const auto a = epk::parse_npy(hand_npy(major, good_dict, good_data), "t.npy");
        EXPECT_EQ(a.shape, std::vector<std::size_t>{2});
        EXPECT_EQ(a.real, (std::vector<double>{1.5, -2.25}));
    }
    const std::vector<std::string> variants = {
        "{'shape': (2,), 'fortran_order': False, 'descr': '<f8'}",
        "{ 'descr' : '<f8' ,'fortran_order':False,'shape':( 2 , ) }",
        "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (2,)}",
    };
    for (const auto& v : variants) EXPECT_EQ(rule_of(hand_npy(1, v, good_data)), "<accepted>") << v;
    const auto m = epk::parse_npy(
        hand_npy(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 1, 1), }", f8_bytes({0, 0})), "t.npy");
    EXPECT_EQ(m.shape, (std::vector<std::size_t>{2, 1, 1}));
    const auto f4 = epk::parse_npy(
        hand_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", {0xcd, 0xcc, 0xcc, 0x3d}), "t.npy");
    EXPECT_EQ(f4.real[0], static_cast<double>(0.1f));  // widened exactly
}

TEST(Npy, RejectsEachBadClassWithItsRule) {
    bytes_t bad_magic = hand_npy(1, good_dict, good_data);
    bad_magic[1] = 'X';
    EXPECT_REJECTED(bad_magic, "not a .npy file (bad magic)");
    EXPECT_REJECTED(bytes_t({0x93, 'N', 'U'}), "bad magic");
    EXPECT_REJECTED(bytes_t(), "bad magic");
    EXPECT_REJECTED(hand_npy(4, good_dict, good_data), "unsupported .npy format version 4.0");
    EXPECT_REJECTED(hand_npy(1, good_dict, good_data, 1), "unsupported .npy format version 1.1");
    for (const char* dtype : {">f8", "<f2", "<i4", "|O", "O", "<c16", "|b1", "<u8", "f8"}) {
        const std::string dict = std::string("{'descr': '") + dtype + "', 'fortran_order': False, 'shape': (2,), }";
        EXPECT_REJECTED(hand_npy(1, dict, good_data),
                        std::string("unsupported dtype '") + dtype + "' (allowed: <f4, <f8, <i8)");
    }
    EXPECT_REJECTED(hand_npy(1, "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (2,), }", good_data),
                    "malformed .npy header");
    EXPECT_REJECTED(hand_npy(1, "{'descr': '<f8', 'fortran_order': True, 'shape': (2,), }", good_data),
                    "fortran_order True is not allowed");
    EXPECT_REJECTED(hand_npy(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", good_data),
                    "truncated: header promises 24 bytes of data, file has 16");
    bytes_t trailing = hand_npy(1, good_dict, good_data);
    trailing.push_back(0);
    EXPECT_REJECTED(trailing, "trailing bytes after data");
    EXPECT_REJECTED(hand_npy(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
                             good_data),
                    "overflows");
    EXPECT_REJECTED(hand_npy(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999,), }",
                             good_data),
                    "too large");
    EXPECT_REJECTED(hand_npy(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952,), }",
                             good_data),
                    "overflows");
    // Malformed dictionaries.
    for (const char* dict : {
             "{'descr': '<f8', 'fortran_order': False}",                                  // missing shape
             "{'descr': '<f8', 'shape': (2,)}",                                           // missing fortran_order
             "{'fortran_order': False, 'shape': (2,)}",                                   // missing descr
             "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), 'extra': 1}",       // unknown key
             "{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (2,)}",   // duplicate
             "{'descr': '<f8', 'fortran_order': False, 'shape': (2)}",                    // not a tuple
             "{'descr': '<f8', 'fortran_order': False, 'shape': [2]}",                    // list
             "{'descr': '<f8', 'fortran_order': false, 'shape': (2,)}",                   // JSON bool
             "{'descr': '<f8', 'fortran_order': False, 'shape': (-2,)}",                  // negative
             "{'descr': '<f8', 'fortran_order': False, 'shape': (2.0,)}",                 // float
             "{'descr': '<f8', 'fortran_order': False, 'shape': (2,,)}",                  // double comma
             "{'descr': '<f8' 'fortran_order': False, 'shape': (2,)}",                    // missing comma
             "{'descr': '<f8', 'fortran_order': False, 'shape': (2,)} x",                 // junk after
             "'descr': '<f8', 'fortran_order': False, 'shape': (2,)",                     // no braces
             "{'descr: '<f8', 'fortran_order': False, 'shape': (2,)}",                    // bad quote
             "{'descr': '<f8', 'fortran_order': False, 'shape': (02,)}",                  // leading zero
         }) {
        EXPECT_REJECTED(hand_npy(1, dict, good_data), "malformed .npy header") << dict;
    }
    // Header length pointing past the end of the file.
    bytes_t long_header = hand_npy(1, good_dict, {});
    long_header[8] = 0xff;
    long_header[9] = 0xff;
    EXPECT_REJECTED(long_header, "truncated: header length 65535 exceeds the file");
    EXPECT_REJECTED(bytes_t({0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0, 1}), "truncated");
}

TEST(Npy, ReadAndWriteFiles) {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("epk-test-npy-" + std::to_string(std::random_device{}()) + "-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const auto a = epk::make_real_array(epk::npy_dtype::f4, {2, 2}, {1, 2, 3, 0.25});
    epk::write_npy(dir / "a.npy", a);
    EXPECT_TRUE(same_bits(epk::read_npy(dir / "a.npy"), a));
    try {
        epk::read_npy(dir / "missing.npy");
        ADD_FAILURE() << "missing file accepted";
    } catch (const epk::input_error& e) {
        EXPECT_EQ(e.file(), (dir / "missing.npy").string());
    }
    EXPECT_THROW(epk::read_npy(dir), epk::input_error);  // a directory
    EXPECT_THROW(epk::write_npy(dir / "no" / "such" / "dir.npy", a), epk::input_error);
    std::filesystem::remove_all(dir);
}

TEST(Npy, MisuseIsUsageError) {
    EXPECT_THROW(epk::make_real_array(epk::npy_dtype::f8, {2, 2}, {1, 2, 3}), epk::usage_error);
    EXPECT_THROW(epk::make_real_array(epk::npy_dtype::f4, {1}, {0.1}), epk::usage_error);
    EXPECT_THROW(epk::make_real_array(epk::npy_dtype::i8, {1}, {1}), epk::usage_error);
    EXPECT_THROW(epk::make_int_array({3}, {1}), epk::usage_error);
    epk::npy_array bad;
    bad.shape = {4};
    bad.real = {1};
    EXPECT_THROW(epk::serialize_npy(bad), epk::usage_error);
}

namespace {

epk::npy_array random_array() {
    const auto dtype = *rc::gen::element(epk::npy_dtype::f4, epk::npy_dtype::f8, epk::npy_dtype::i8);
    const auto shape = *rc::gen::container<std::vector<std::size_t>>(*rc::gen::inRange<std::size_t>(0, 4),
                                                                     rc::gen::inRange<std::size_t>(0, 5));
    std::size_t n = 1;
    for (auto d : shape) n *= d;
    if (dtype == epk::npy_dtype::i8) return epk::make_int_array(shape, *rc::gen::container<std::vector<std::int64_t>>(n, rc::gen::arbitrary<std::int64_t>()));
    std::vector<double> v;
    if (dtype == epk::npy_dtype::f8) {
        for (auto bits : *rc::gen::container<std::vector<std::uint64_t>>(n, rc::gen::arbitrary<std::uint64_t>()))
            v.push_back(std::bit_cast<double>(bits));
    } else {
        for (auto bits : *rc::gen::container<std::vector<std::uint32_t>>(n, rc::gen::arbitrary<std::uint32_t>())) {
            const float f = std::bit_cast<float>(bits);
            v.push_back(std::isnan(f) ? static_cast<double>(std::numeric_limits<float>::quiet_NaN())
                                      : static_cast<double>(f));
        }
    }
    return epk::make_real_array(dtype, shape, std::move(v));
}

}  // namespace

RC_GTEST_PROP(NpyProperty, SerializeThenParseIsIdentity, ()) {
    const auto a = random_array();
    const auto bytes = epk::serialize_npy(a);
    const auto b = epk::parse_npy(bytes, "p.npy");
    RC_ASSERT(same_bits(a, b));
    RC_ASSERT(epk::serialize_npy(b) == bytes);
}

RC_GTEST_PROP(NpyProperty, DamagedFilesThrowInputErrorOrParseConsistently, ()) {
    const auto a = random_array();
    auto bytes = epk::serialize_npy(a);
    const int kind = *rc::gen::inRange(0, 3);
    if (kind == 0) {
        bytes.resize(*rc::gen::inRange<std::size_t>(0, bytes.size()));
    } else if (kind == 1) {
        const auto at = *rc::gen::inRange<std::size_t>(0, bytes.size());
        bytes[at] ^= static_cast<unsigned char>(1u << *rc::gen::inRange(0, 8));
    } else {  // damage inside the header, where it matters most
        const auto at = *rc::gen::inRange<std::size_t>(0, std::min<std::size_t>(bytes.size(), 128));
        bytes[at] = *rc::gen::arbitrary<unsigned char>();
    }
    try {
        const auto b = epk::parse_npy(bytes, "p.npy");
        RC_ASSERT((b.is_real() ? b.real.size() : b.integer.size()) == b.size());
        RC_ASSERT((b.is_real() ? b.integer.size() : b.real.size()) == 0u);
    } catch (const epk::input_error& e) {
        RC_ASSERT(e.file() == "p.npy");
        RC_ASSERT(!e.rule().empty());
    }
}

// tests/test_dataset.cpp — embedded data sets and the CSV reader (src/dataset.cpp).
//
// Covers: digits (1797 x 64, 10 classes, features k/16 in [0, 1], the known
// class counts) and iris (150 x 4, 3 x 50, first row exact); CSV rules:
// header skipping, \r\n, trailing blank lines, and one error per rule with
// the file name and line number asserted; reading from a file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "epk/dataset.hpp"
#include "epk/error.hpp"

namespace {

std::string error_of(const std::string& text) {
    try {
        epk::parse_csv_dataset(text, "t.csv");
    } catch (const epk::input_error& e) {
        EXPECT_EQ(e.file(), "t.csv");
        EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
        return e.what();
    }
    return "<accepted>";
}

}  // namespace

TEST(Dataset, Digits) {
    const epk::dataset d = epk::embedded_dataset("digits");
    EXPECT_EQ(d.name, "digits");
    EXPECT_EQ(d.rows, 1797u);
    EXPECT_EQ(d.features, 64u);
    EXPECT_EQ(d.classes, 10u);
    ASSERT_EQ(d.x.size(), 1797u * 64);
    ASSERT_EQ(d.labels.size(), 1797u);
    for (double v : d.x) {
        EXPECT_GE(v, 0.0);
        EXPECT_LE(v, 1.0);
        EXPECT_EQ(v * 16, std::floor(v * 16));  // k / 16 exactly
    }
    EXPECT_EQ(*std::max_element(d.x.begin(), d.x.end()), 1.0);
    EXPECT_EQ(d.x[2], 5.0 / 16);
    EXPECT_EQ(d.labels[0], 0);
    EXPECT_EQ(d.labels[1], 1);
    std::vector<int> counts(10, 0);
    for (auto y : d.labels) ++counts.at(static_cast<std::size_t>(y));
    EXPECT_EQ(counts, (std::vector<int>{178, 182, 177, 183, 181, 182, 181, 179, 174, 180}));
}

TEST(Dataset, Iris) {
    const epk::dataset d = epk::embedded_dataset("iris");
    EXPECT_EQ(d.name, "iris");
    EXPECT_EQ(d.rows, 150u);
    EXPECT_EQ(d.features, 4u);
    EXPECT_EQ(d.classes, 3u);
    EXPECT_EQ(std::vector<double>(d.x.begin(), d.x.begin() + 4), (std::vector<double>{5.1, 3.5, 1.4, 0.2}));
    std::vector<int> counts(3, 0);
    for (auto y : d.labels) ++counts.at(static_cast<std::size_t>(y));
    EXPECT_EQ(counts, (std::vector<int>{50, 50, 50}));
    EXPECT_EQ(d.labels.back(), 2);
    EXPECT_EQ(d.x.back(), 1.8);
}

TEST(Dataset, UnknownEmbeddedName) {
    try {
        epk::embedded_dataset("mnist");
        ADD_FAILURE();
    } catch (const epk::input_error& e) {
        EXPECT_EQ(e.file(), "mnist");
        EXPECT_EQ(e.rule(), "unknown embedded data set (known: digits, iris)");
    }
}

TEST(Dataset, CsvAccepts) {
    const auto d = epk::parse_csv_dataset("a,b,label\r\n1.5,-2,1\r\n0.1,3e2,0.0\r\n\r\n\n", "t.csv");
    EXPECT_EQ(d.name, "t.csv");
    EXPECT_EQ(d.rows, 2u);
    EXPECT_EQ(d.features, 2u);
    EXPECT_EQ(d.classes, 2u);
    EXPECT_EQ(d.x, (std::vector<double>{1.5, -2, 0.1, 300}));
    EXPECT_EQ(d.labels, (std::vector<std::int64_t>{1, 0}));
    const auto e = epk::parse_csv_dataset("0.25, 4\n1,7", "t.csv");  // no header, no final newline
    EXPECT_EQ(e.rows, 2u);
    EXPECT_EQ(e.classes, 8u);
    EXPECT_EQ(e.x, (std::vector<double>{0.25, 1}));
}

TEST(Dataset, CsvRejectsWithLineNumbers) {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"1,2,0\n3,4,1\n5,6\n", "t.csv: line 3: expected 3 columns, found 2"},
        {"h1,h2,h3\n1,2,0\n3,4,5,1\n", "t.csv: line 3: expected 3 columns, found 4"},
        {"1,2,0\n3,,1\n", "t.csv: line 2: column 2 is empty"},
        {"1,2,0\n3,nan,1\n", "t.csv: line 2: column 2 ('nan') is NaN or infinity"},
        {"1,2,0\n3,inf,1\n", "t.csv: line 2: column 2 ('inf') is NaN or infinity"},
        {"1,2,0\n3,1e999,1\n", "t.csv: line 2: column 2 ('1e999') is not a number"},
        {"1,2,0\n3,4,x\n", "t.csv: line 2: column 3 ('x') is not a number"},
        {"1,2,0\n3,4,-1\n", "t.csv: line 2: column 3 ('-1') is not a non-negative integer label"},
        {"1,2,0\n3,4,1.5\n", "t.csv: line 2: column 3 ('1.5') is not a non-negative integer label"},
        {"1,2,0\n3,4,100000\n", "exceeds the largest allowed label"},
        {"1\n2\n", "t.csv: line 1: expected at least 2 columns"},
        {"a,b,c\n", "t.csv: no data rows"},
        {"", "t.csv: no data rows"},
        {"\n\n", "t.csv: no data rows"},
        {"1,2,0\n\n3,4,1\n", "t.csv: line 2: blank line before the end of the file"},
        {"1,2,0\nx,y,z\n", "t.csv: line 2: column 1 ('x') is not a number"},
        {"1,2,0\n0x1,2,0\n", "t.csv: line 2: column 1 ('0x1') is not a number"},
    };
    for (const auto& [text, message] : cases) EXPECT_NE(error_of(text).find(message), std::string::npos) << error_of(text);
}

TEST(Dataset, ReadCsvFile) {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("epk-test-dataset-" + std::to_string(::getpid()) + "-" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "d.csv") << "1,2,1\n3,4,0\n";
    const auto d = epk::read_csv_dataset(dir / "d.csv");
    EXPECT_EQ(d.rows, 2u);
    EXPECT_EQ(d.classes, 2u);
    std::ofstream(dir / "bad.csv") << "1,2,1\n3,4\n";
    try {
        epk::read_csv_dataset(dir / "bad.csv");
        ADD_FAILURE();
    } catch (const epk::input_error& e) {
        EXPECT_EQ(e.file(), (dir / "bad.csv").string());
        EXPECT_EQ(e.rule(), "line 2: expected 3 columns, found 2");
    }
    EXPECT_THROW(epk::read_csv_dataset(dir / "missing.csv"), epk::input_error);
    EXPECT_THROW(epk::read_csv_dataset(dir), epk::input_error);
    std::filesystem::remove_all(dir);
}

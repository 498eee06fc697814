// src/dataset.cpp — labelled data sets: CSV files and the embedded ones (see epk/dataset.hpp).
//
// Contract: parse_csv_dataset accepts comma-separated finite decimal numbers,
// one row per line (\n or \r\n), the last column a non-negative integer
// label (written "3" or "3.0"), at least one feature column, every row the
// same width, blank lines only at the end; a first line that does not parse
// as numbers is a header and is skipped.  Errors are input_error(name,
// "line K: ...").  Sizes are capped: 256 MiB of text, labels <= 65535.
#include "epk/dataset.hpp"
#include "epk/file_io.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <optional>
#include <string_view>
#include <system_error>

#include "epk/embedded_data.hpp"
#include "epk/error.hpp"

namespace epk {

namespace {

constexpr std::uintmax_t max_csv_bytes = std::uintmax_t{256} << 20;  // 256 MiB
constexpr std::int64_t max_label = 65535;

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

std::vector<std::string_view> split_fields(std::string_view line) {
    std::vector<std::string_view> fields;
    std::size_t start = 0;
    while (true) {
        const std::size_t comma = line.find(',', start);
        if (comma == std::string_view::npos) {
            fields.push_back(trim(line.substr(start)));
            return fields;
        }
        fields.push_back(trim(line.substr(start, comma - start)));
        start = comma + 1;
    }
}

// The whole field as a decimal number (from_chars: correctly rounded), or nullopt.
std::optional<double> parse_number(std::string_view f) {
    if (f.empty()) return std::nullopt;
    double v = 0;
    const auto [ptr, ec] = std::from_chars(f.data(), f.data() + f.size(), v, std::chars_format::general);
    if (ec != std::errc() || ptr != f.data() + f.size()) return std::nullopt;
    return v;
}

std::string field_error(std::size_t line, std::size_t column, std::string_view field, const std::string& what) {
    return "line " + std::to_string(line) + ": column " + std::to_string(column) + " ('" +
           std::string(field.substr(0, 40)) + "') " + what;
}

}  // namespace

dataset parse_csv_dataset(const std::string& text, const std::string& name) {
    if (text.size() > max_csv_bytes) throw input_error(name, "file is larger than 256 MiB");
    dataset d;
    d.name = name;
    std::size_t columns = 0;
    std::size_t line_no = 0;
    std::size_t blank_line = 0;  // first blank line seen, if any
    std::int64_t top_label = -1;
    std::string_view rest(text);
    while (!rest.empty()) {
        const std::size_t nl = rest.find('\n');
        std::string_view line = rest.substr(0, nl);
        rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
        ++line_no;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (trim(line).empty()) {
            if (blank_line == 0) blank_line = line_no;
            continue;
        }
        if (blank_line != 0)
            throw input_error(name, "line " + std::to_string(blank_line) + ": blank line before the end of the file");

        const auto fields = split_fields(line);
        if (line_no == 1) {  // a header if any field is not a number
            bool numeric = true;
            for (auto f : fields) numeric = numeric && parse_number(f).has_value();
            if (!numeric) continue;
        }
        if (fields.size() < 2)
            throw input_error(name, "line " + std::to_string(line_no) +
                                        ": expected at least 2 columns (features, then a label), found " +
                                        std::to_string(fields.size()));
        if (columns == 0) columns = fields.size();
        if (fields.size() != columns)
            throw input_error(name, "line " + std::to_string(line_no) + ": expected " + std::to_string(columns) +
                                        " columns, found " + std::to_string(fields.size()));
        for (std::size_t c = 0; c < columns; ++c) {
            const std::string_view f = fields[c];
            if (f.empty())
                throw input_error(name, "line " + std::to_string(line_no) + ": column " + std::to_string(c + 1) +
                                            " is empty");
            const auto v = parse_number(f);
            if (!v) throw input_error(name, field_error(line_no, c + 1, f, "is not a number"));
            if (!std::isfinite(*v)) throw input_error(name, field_error(line_no, c + 1, f, "is NaN or infinity"));
            if (c + 1 < columns) {
                d.x.push_back(*v);
                continue;
            }
            if (*v < 0 || *v != std::floor(*v))
                throw input_error(name, field_error(line_no, c + 1, f, "is not a non-negative integer label"));
            if (*v > static_cast<double>(max_label))
                throw input_error(name, field_error(line_no, c + 1, f,
                                                    "exceeds the largest allowed label " + std::to_string(max_label)));
            const auto label = static_cast<std::int64_t>(*v);
            d.labels.push_back(label);
            top_label = std::max(top_label, label);
        }
    }
    if (d.labels.empty()) throw input_error(name, "no data rows");
    d.rows = d.labels.size();
    d.features = columns - 1;
    d.classes = static_cast<std::size_t>(top_label + 1);
    return d;
}

dataset read_csv_dataset(const std::filesystem::path& file) {
    return parse_csv_dataset(read_file_capped(file, max_csv_bytes), file.string());
}

dataset embedded_dataset(const std::string& name) {
    if (name == "digits") {
        dataset d = parse_csv_dataset(
            std::string(reinterpret_cast<const char*>(embedded::digits_csv), embedded::digits_csv_size), name);
        for (double& v : d.x) v /= 16;  // exact: a power of two
        d.image_shape = {1, 8, 8};      // each row an 8×8 image, row-major
        return d;
    }
    if (name == "iris")
        return parse_csv_dataset(
            std::string(reinterpret_cast<const char*>(embedded::iris_csv), embedded::iris_csv_size), name);
    throw input_error(name, "unknown embedded data set (known: digits, iris)");
}

dataset modadd_dataset(std::size_t P, double fraction) {
    const std::string name = "modadd:" + std::to_string(P);
    if (P < 2 || P > 1000) throw input_error(name, "P must be an integer in [2, 1000]");
    if (!(fraction > 0 && fraction < 1)) throw input_error(name, "FRACTION must lie strictly between 0 and 1");
    dataset d;
    d.name = name;
    d.rows = P * P;
    d.features = 3;
    d.classes = P;
    d.vocabulary = P + 1;
    d.train_fraction = fraction;
    d.x.reserve(d.rows * 3);
    for (std::size_t a = 0; a < P; ++a)
        for (std::size_t b = 0; b < P; ++b) {
            d.x.insert(d.x.end(), {static_cast<double>(a), static_cast<double>(b), static_cast<double>(P)});
            d.labels.push_back(static_cast<std::int64_t>((a + b) % P));
        }
    return d;
}

dataset parse_modadd_argument(const std::string& arg) {
    const auto bad = [&](const std::string& rule) { return input_error("--data " + arg, rule); };
    const std::string rest = arg.substr(std::string("modadd:").size());
    const std::size_t colon = rest.find(':');
    const std::string p_text = rest.substr(0, colon);
    std::size_t P = 0;
    const auto [end, ec] = std::from_chars(p_text.data(), p_text.data() + p_text.size(), P);
    if (p_text.empty() || ec != std::errc() || end != p_text.data() + p_text.size())
        throw bad("P must be an integer (modadd:P or modadd:P:FRACTION)");
    double fraction = 0.3;
    if (colon != std::string::npos) {
        const std::string f = rest.substr(colon + 1);
        const auto [fe, fec] = std::from_chars(f.data(), f.data() + f.size(), fraction);
        if (f.empty() || fec != std::errc() || fe != f.data() + f.size())
            throw bad("FRACTION must be a number (modadd:P:FRACTION)");
    }
    if (P < 2 || P > 1000) throw bad("P must be an integer in [2, 1000]");
    if (!(fraction > 0 && fraction < 1)) throw bad("FRACTION must lie strictly between 0 and 1");
    return modadd_dataset(P, fraction);
}

}  // namespace epk

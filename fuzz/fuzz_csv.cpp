// libFuzzer target: the CSV data-set reader (parse_csv_dataset, src/dataset.cpp).
// Parsed or rejected with epk::input_error; a parsed data set is consistent.
#include <cmath>
#include <cstdint>
#include <string>

#include "epk/dataset.hpp"
#include "epk/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    epk::dataset d;
    try {
        d = epk::parse_csv_dataset(text, "fuzz.csv");
    } catch (const epk::input_error&) {
        return 0;
    }
    if (d.x.size() != d.rows * d.features || d.labels.size() != d.rows) __builtin_trap();
    for (double v : d.x)
        if (!std::isfinite(v)) __builtin_trap();
    for (std::int64_t l : d.labels)
        if (l < 0 || static_cast<std::size_t>(l) >= d.classes) __builtin_trap();
    return 0;
}

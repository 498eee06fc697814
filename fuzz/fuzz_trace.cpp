// libFuzzer target: the whole trace loader (parse_trace: manifest, every .npy, and the
// cross-file rules of validate_trace).  The input is a sequence of records
//   [1 byte: file number mod 12][4 bytes: length, little-endian][that many bytes]
// naming manifest.json, x_train.npy, y_train.npy, params.npy, init_params.npy,
// batches.npy, learning_rates.npy, x_test.npy and version 2's recorded optimizer state
// init_momentum_buffer.npy, init_exp_avg.npy, init_exp_avg_sq.npy,
// init_max_exp_avg_sq.npy (fuzz/make_seeds.py writes seeds).
// Loaded or rejected with epk::input_error, nothing else.
#include <cstdint>
#include <map>
#include <string>

#include "epk/error.hpp"
#include "epk/trace.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const char* names[] = {"manifest.json",      "x_train.npy",         "y_train.npy",
                                  "params.npy",         "init_params.npy",     "batches.npy",
                                  "learning_rates.npy", "x_test.npy",          "init_momentum_buffer.npy",
                                  "init_exp_avg.npy",   "init_exp_avg_sq.npy", "init_max_exp_avg_sq.npy"};
    constexpr std::size_t n_names = sizeof names / sizeof names[0];
    std::map<std::string, std::string> files;
    std::size_t at = 0;
    while (at + 5 <= size) {
        const std::size_t which = data[at] % n_names;
        const std::size_t length = static_cast<std::size_t>(data[at + 1]) | static_cast<std::size_t>(data[at + 2]) << 8 |
                                   static_cast<std::size_t>(data[at + 3]) << 16 | static_cast<std::size_t>(data[at + 4]) << 24;
        at += 5;
        const std::size_t take = length < size - at ? length : size - at;
        files[names[which]] = std::string(reinterpret_cast<const char*>(data + at), take);
        at += take;
    }
    try {
        const epk::trace t = epk::parse_trace(files, "fuzz-trace");
        (void)t;
    } catch (const epk::input_error&) {
    }
    return 0;
}

// libFuzzer target: the whole trace loader (parse_trace: manifest, every .npy, and the
// cross-file rules of validate_trace).  The input is a sequence of records
//   [1 byte: file number mod 8][4 bytes: length, little-endian][that many bytes]
// naming manifest.json, x_train.npy, y_train.npy, params.npy, init_params.npy,
// batches.npy, learning_rates.npy, x_test.npy (fuzz/make_seeds.py writes seeds).
// Loaded or rejected with epk::input_error, nothing else.
#include <cstdint>
#include <map>
#include <string>

#include "epk/error.hpp"
#include "epk/trace.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const char* names[] = {"manifest.json",   "x_train.npy", "y_train.npy",        "params.npy",
                                  "init_params.npy", "batches.npy", "learning_rates.npy", "x_test.npy"};
    std::map<std::string, std::string> files;
    std::size_t at = 0;
    while (at + 5 <= size) {
        const std::size_t which = data[at] % 8;
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

// libFuzzer target: the .npy reader (src/npy.cpp).  Any input is either parsed or
// rejected with epk::input_error; anything else (a crash, another exception, a
// sanitizer report, > 1 GiB, > 10 s) is a bug.  A parsed array re-serialises to
// bytes that parse to the same array.
#include <cstdint>
#include <cstring>

#include "epk/error.hpp"
#include "epk/npy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    epk::npy_array a;
    try {
        a = epk::parse_npy({data, size}, "fuzz.npy");
    } catch (const epk::input_error&) {
        return 0;
    }
    const std::vector<unsigned char> bytes = epk::serialize_npy(a);
    const epk::npy_array b = epk::parse_npy(bytes, "round-trip.npy");
    if (b.shape != a.shape || b.dtype != a.dtype || b.integer != a.integer || b.real.size() != a.real.size() ||
        (!a.real.empty() && std::memcmp(a.real.data(), b.real.data(), a.real.size() * sizeof(double)) != 0))
        __builtin_trap();
    return 0;
}

// libFuzzer target: the manifest.json reader (parse_manifest, src/trace.cpp).  Parsed
// or rejected with epk::input_error, nothing else; a parsed manifest written back by
// manifest_text parses to the same text.
#include <cstdint>
#include <string>

#include "epk/error.hpp"
#include "epk/trace.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    epk::trace t;
    try {
        epk::parse_manifest(text, "manifest.json", t);
    } catch (const epk::input_error&) {
        return 0;
    }
    const std::string written = epk::manifest_text(t);
    epk::trace again;
    epk::parse_manifest(written, "written-manifest.json", again);
    if (epk::manifest_text(again) != written) __builtin_trap();
    return 0;
}

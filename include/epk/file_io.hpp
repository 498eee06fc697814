// epk/file_io.hpp — reading a whole input file, with a cap on its size.
//
// Contract: returns the bytes of `file` if it is a regular file of at most
// `max_bytes`; otherwise throws input_error naming the file: `missing_rule`
// when it does not exist, "cannot open file (not a regular file)",
// "file is larger than N MiB", "cannot open file", "read error".
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace epk {

std::string read_file_capped(const std::filesystem::path& file, std::uintmax_t max_bytes,
                             const std::string& missing_rule = "cannot open file (does not exist)");

// "(3, 4)", "(5,)", "()" — numpy's spelling of a shape.
std::string shape_text(const std::vector<std::size_t>& shape);

}  // namespace epk

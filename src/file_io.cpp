#include "epk/file_io.hpp"

#include <fstream>
#include <system_error>

#include "epk/error.hpp"

namespace epk {

std::string read_file_capped(const std::filesystem::path& file, std::uintmax_t max_bytes,
                             const std::string& missing_rule) {
    const std::string name = file.string();
    std::error_code ec;
    const auto st = std::filesystem::status(file, ec);
    if (ec || !std::filesystem::exists(st)) throw input_error(name, missing_rule);
    if (!std::filesystem::is_regular_file(st)) throw input_error(name, "cannot open file (not a regular file)");
    const auto size = std::filesystem::file_size(file, ec);
    if (ec) throw input_error(name, "cannot determine the file size");
    if (size > max_bytes) throw input_error(name, "file is larger than " + std::to_string(max_bytes >> 20) + " MiB");
    std::ifstream in(file, std::ios::binary);
    if (!in) throw input_error(name, "cannot open file");
    std::string bytes(static_cast<std::size_t>(size), '\0');
    in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    bytes.resize(static_cast<std::size_t>(in.gcount()));  // the file may have shrunk meanwhile
    if (in.bad()) throw input_error(name, "read error");
    return bytes;
}

std::string shape_text(const std::vector<std::size_t>& shape) {
    std::string s = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    if (shape.size() == 1) s += ",";
    return s + ")";
}

}  // namespace epk

#include "args.hpp"

#include <charconv>
#include <cmath>

namespace epk::cli {

namespace {
std::uint64_t parse_count(const std::string& opt, const std::string& text, std::uint64_t lo, std::uint64_t hi) {
    std::uint64_t v = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size())
        throw input_error("--" + opt, "'" + text + "' is not a non-negative integer");
    if (v < lo || v > hi)
        throw input_error("--" + opt, "'" + text + "' is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return v;
}
}  // namespace

std::string args::get(const std::string& name, const std::string& fallback) const {
    const auto it = options.find(name);
    return it == options.end() ? fallback : it->second;
}

std::uint64_t args::get_count(const std::string& name, std::uint64_t fallback, std::uint64_t lo,
                              std::uint64_t hi) const {
    const auto it = options.find(name);
    return it == options.end() ? fallback : parse_count(name, it->second, lo, hi);
}

double args::get_real(const std::string& name, double fallback) const {
    const auto it = options.find(name);
    if (it == options.end()) return fallback;
    const std::string& text = it->second;
    double v = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size() || !std::isfinite(v))
        throw input_error("--" + name, "'" + text + "' is not a finite decimal number");
    return v;
}

std::vector<std::uint64_t> args::get_count_list(const std::string& name, const std::vector<std::uint64_t>& fallback,
                                                std::uint64_t lo, std::uint64_t hi) const {
    const auto it = options.find(name);
    if (it == options.end()) return fallback;
    std::vector<std::uint64_t> out;
    const std::string& text = it->second;
    if (text.empty()) return out;
    std::size_t start = 0;
    while (true) {
        const std::size_t comma = text.find(',', start);
        out.push_back(parse_count(name, text.substr(start, comma - start), lo, hi));
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

args parse_args(int argc, char** argv, const std::set<std::string>& value_options,
                const std::set<std::string>& flag_options, std::size_t min_positional, std::size_t max_positional) {
    args a;
    a.command = argc > 1 ? argv[1] : "";
    for (int i = 2; i < argc; ++i) {
        std::string s = argv[i];
        if (s.rfind("--", 0) == 0 && s.size() > 2) {
            std::string name = s.substr(2), value;
            const std::size_t eq = name.find('=');
            const bool inline_value = eq != std::string::npos;
            if (inline_value) {
                value = name.substr(eq + 1);
                name = name.substr(0, eq);
            }
            if (flag_options.count(name)) {
                if (inline_value) throw input_error("--" + name, "takes no value");
                a.flags.insert(name);
            } else if (value_options.count(name)) {
                if (!inline_value) {
                    if (i + 1 >= argc) throw input_error("--" + name, "needs a value");
                    value = argv[++i];
                }
                if (a.options.count(name)) throw input_error("--" + name, "given twice");
                a.options[name] = value;
            } else {
                throw input_error("--" + name, "unknown option for 'epk " + a.command + "' (see epk help)");
            }
        } else {
            a.positional.push_back(s);
        }
    }
    if (a.positional.size() < min_positional)
        throw input_error("epk " + a.command, "missing argument (see epk help)");
    if (a.positional.size() > max_positional)
        throw input_error("epk " + a.command, "unexpected argument '" + a.positional[max_positional] + "'");
    return a;
}

}  // namespace epk::cli

// A small, strict command-line parser: `--name value` or `--name=value`
// options, `--flag` switches, positional arguments.  Anything unknown is an
// input_error naming the option, so the CLI can exit 2 with one line.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "epk/error.hpp"

namespace epk::cli {

struct args {
    std::string command;
    std::vector<std::string> positional;
    std::map<std::string, std::string> options;
    std::set<std::string> flags;

    bool has(const std::string& name) const { return options.count(name) != 0; }
    std::string get(const std::string& name, const std::string& fallback) const;
    std::uint64_t get_count(const std::string& name, std::uint64_t fallback, std::uint64_t lo,
                            std::uint64_t hi) const;
    double get_real(const std::string& name, double fallback) const;
    std::vector<std::uint64_t> get_count_list(const std::string& name, const std::vector<std::uint64_t>& fallback,
                                              std::uint64_t lo, std::uint64_t hi) const;
};

// `value_options` take a value; `flag_options` do not.
args parse_args(int argc, char** argv, const std::set<std::string>& value_options,
                const std::set<std::string>& flag_options, std::size_t min_positional, std::size_t max_positional);

}  // namespace epk::cli

// epk/error.hpp — the one error type every reader and the CLI share.
//
// Contract: an `input_error` names the file (or field) that is wrong and the
// rule of ../spec it breaks, in one line.  The CLI prints `epk: <what()>` and
// exits with status 2; nothing is written when one is thrown.
#pragma once

#include <stdexcept>
#include <string>

namespace epk {

class input_error : public std::runtime_error {
public:
    input_error(std::string file, std::string rule)
        : std::runtime_error(file + ": " + rule), file_(std::move(file)), rule_(std::move(rule)) {}
    const std::string& file() const noexcept { return file_; }
    const std::string& rule() const noexcept { return rule_; }

private:
    std::string file_;
    std::string rule_;
};

// Misuse of the library by a caller (impossible shapes passed to a function).
class usage_error : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

}  // namespace epk

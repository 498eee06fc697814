// The process-wide work split (epk/work_split.hpp) and the exact MPFR byte form.
#include "epk/work_split.hpp"

#include <mpfr.h>

namespace epk {

namespace {
thread_local const work_split* active = nullptr;  // per thread: tests run several "ranks" in one process
}

const work_split* active_work_split() { return active; }
void set_active_work_split(const work_split* split) { active = split; }

// "n" (NaN), "+i"/"-i", "+0"/"-0", else "[-]DIGITS@E": 0.DIGITS (hexadecimal) × 16^E.
std::string byte_writer::mpfr_real_to_hex(const mpfr_real& v) {
    const mpfr_srcptr x = v.get();
    if (mpfr_nan_p(x)) return "n";
    if (mpfr_inf_p(x)) return mpfr_signbit(x) ? "-i" : "+i";
    if (mpfr_zero_p(x)) return mpfr_signbit(x) ? "-0" : "+0";
    mpfr_exp_t e = 0;
    char* s = mpfr_get_str(nullptr, &e, 16, 0, x, MPFR_RNDN);
    std::string out(s);
    mpfr_free_str(s);
    return out + "@" + std::to_string(static_cast<long long>(e));
}

mpfr_real byte_reader::mpfr_real_from_hex(const std::string& s) {
    mpfr_real r;
    if (s == "n") {
        mpfr_set_nan(r.get());
        return r;
    }
    if (s == "+i" || s == "-i") {
        mpfr_set_inf(r.get(), s[0] == '-' ? -1 : 1);
        return r;
    }
    if (s == "+0" || s == "-0") {
        mpfr_set_zero(r.get(), s[0] == '-' ? -1 : 1);
        return r;
    }
    const std::size_t at = s.rfind('@');
    if (at == std::string::npos || at == 0) throw usage_error("work_split: malformed MPFR record");
    const std::string digits = s.substr(0, at);
    const long long e = std::stoll(s.substr(at + 1));
    const std::size_t n = digits.size() - (digits[0] == '-' ? 1 : 0);
    // DIGITS read as an integer, scaled by 16^(E − n): exact (mpfr_get_str's digits for a power-of-2 base).
    const std::string text = digits + "@" + std::to_string(e - static_cast<long long>(n));
    char* end = nullptr;
    mpfr_strtofr(r.get(), text.c_str(), &end, 16, MPFR_RNDN);
    if (end == nullptr || *end != '\0') throw usage_error("work_split: malformed MPFR record");
    return r;
}

}  // namespace epk

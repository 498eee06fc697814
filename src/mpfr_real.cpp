#include "epk/mpfr_real.hpp"

#include <cmath>
#include <cstdlib>
#include <memory>

#include "epk/error.hpp"

namespace epk {

namespace {
thread_local mpfr_prec_t g_working_precision = 256;
}

mpfr_prec_t mpfr_real::working_precision() noexcept { return g_working_precision; }

void mpfr_real::set_working_precision(mpfr_prec_t bits) {
    if (bits < min_bits || bits > max_bits)
        throw usage_error("mpfr precision must be between 2 and 100000 bits, got " + std::to_string(bits));
    g_working_precision = bits;
}

mpfr_real::mpfr_real(const std::string& s) {
    init();
    char* end = nullptr;
    if (!s.empty()) mpfr_strtofr(v_, s.c_str(), &end, 10, MPFR_RNDN);
    if (s.empty() || end == nullptr || end == s.c_str() || *end != '\0') {
        mpfr_clear(v_);
        throw usage_error("not a decimal number: '" + s + "'");
    }
}

std::string mpfr_real::to_string() const {
    if (mpfr_nan_p(v_)) return "nan";
    if (mpfr_inf_p(v_)) return mpfr_sgn(v_) > 0 ? "inf" : "-inf";
    // Digits that round-trip: 1 + ceil(p log10 2).
    const auto digits = static_cast<std::size_t>(1 + std::ceil(static_cast<double>(mpfr_get_prec(v_)) * 0.30102999566398120));
    char* raw = nullptr;
    if (mpfr_asprintf(&raw, "%.*Rg", static_cast<int>(digits), v_) < 0 || raw == nullptr) return "?";
    std::string out(raw);
    mpfr_free_str(raw);
    return out;
}

mpfr_real mpfr_pi() {
    mpfr_real r{mpfr_real::uninitialized_tag{}};
    mpfr_const_pi(r.get(), MPFR_RNDN);
    return r;
}

namespace {
// One scratch product per thread, resized when the working precision changes.
struct product_scratch {
    mpfr_t v;
    product_scratch() { mpfr_init2(v, mpfr_real::working_precision()); }
    ~product_scratch() { mpfr_clear(v); }
    product_scratch(const product_scratch&) = delete;
    product_scratch& operator=(const product_scratch&) = delete;
};
}  // namespace

void add_product(mpfr_real& acc, const mpfr_real& a, const mpfr_real& b) {
    thread_local product_scratch s;
    const mpfr_prec_t p = mpfr_real::working_precision();
    if (mpfr_get_prec(s.v) != p) mpfr_set_prec(s.v, p);
    mpfr_mul(s.v, a.get(), b.get(), MPFR_RNDN);
    mpfr_add(acc.get(), acc.get(), s.v, MPFR_RNDN);
}

void mpfr_release_thread_caches() { mpfr_free_cache2(MPFR_FREE_LOCAL_CACHE); }

}  // namespace epk

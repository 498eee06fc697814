// epk/mpfr_real.hpp — an MPFR number whose precision is chosen at run time.
//
// Semantics (the contract every kernel in epk relies on):
//  * Every value *created* by an operation (construction, +, -, *, /, a math
//    function) has the thread's working precision, set by
//    `mpfr_precision_scope` (default 256 bits), and is the correctly rounded
//    (round-to-nearest-even) result of that operation on its operands.
//  * Copies are exact: a copy keeps its source's precision.
//  * No expression templates: `a * b + c` rounds twice, exactly like double.
// So code templated on the scalar type does, in MPFR, the same sequence of
// roundings it does in double, only with a smaller unit roundoff.
#pragma once

#include <mpfr.h>

#include <cstdint>
#include <string>

namespace epk {

class mpfr_real {
public:
    static constexpr long min_bits = 2;
    static constexpr long max_bits = 100000;

    static mpfr_prec_t working_precision() noexcept;
    static void set_working_precision(mpfr_prec_t bits);  // usage_error outside [2, 100000]

    mpfr_real() { init(); mpfr_set_zero(v_, 1); }
    mpfr_real(double d) { init(); mpfr_set_d(v_, d, MPFR_RNDN); }
    mpfr_real(long double d) { init(); mpfr_set_ld(v_, d, MPFR_RNDN); }
    mpfr_real(float d) { init(); mpfr_set_flt(v_, d, MPFR_RNDN); }
    mpfr_real(int i) { init(); mpfr_set_si(v_, i, MPFR_RNDN); }
    mpfr_real(long i) { init(); mpfr_set_si(v_, i, MPFR_RNDN); }
    mpfr_real(long long i) { init(); mpfr_set_si(v_, static_cast<long>(i), MPFR_RNDN); }
    mpfr_real(unsigned long i) { init(); mpfr_set_ui(v_, i, MPFR_RNDN); }
    mpfr_real(unsigned long long i) { init(); mpfr_set_ui(v_, static_cast<unsigned long>(i), MPFR_RNDN); }
    mpfr_real(unsigned i) { init(); mpfr_set_ui(v_, i, MPFR_RNDN); }
    // Decimal (or any mpfr_strtofr syntax) string, correctly rounded; usage_error if malformed.
    explicit mpfr_real(const std::string& s);

    mpfr_real(const mpfr_real& o) {
        mpfr_init2(v_, mpfr_get_prec(o.v_));
        mpfr_set(v_, o.v_, MPFR_RNDN);
    }
    mpfr_real(mpfr_real&& o) noexcept {
        *v_ = *o.v_;
        o.v_->_mpfr_d = nullptr;  // moved-from: destructor skips mpfr_clear
    }
    mpfr_real& operator=(const mpfr_real& o) {
        if (this != &o) {
            if (v_->_mpfr_d == nullptr) mpfr_init2(v_, mpfr_get_prec(o.v_));
            else if (mpfr_get_prec(v_) != mpfr_get_prec(o.v_)) mpfr_set_prec(v_, mpfr_get_prec(o.v_));
            mpfr_set(v_, o.v_, MPFR_RNDN);
        }
        return *this;
    }
    mpfr_real& operator=(mpfr_real&& o) noexcept {
        if (this != &o) {
            if (v_->_mpfr_d != nullptr) mpfr_clear(v_);
            *v_ = *o.v_;
            o.v_->_mpfr_d = nullptr;
        }
        return *this;
    }
    ~mpfr_real() {
        if (v_->_mpfr_d != nullptr) mpfr_clear(v_);
    }

    mpfr_srcptr get() const noexcept { return v_; }
    mpfr_ptr get() noexcept { return v_; }
    mpfr_prec_t precision() const noexcept { return mpfr_get_prec(v_); }

    double to_double() const noexcept { return mpfr_get_d(v_, MPFR_RNDN); }
    long double to_long_double() const noexcept { return mpfr_get_ld(v_, MPFR_RNDN); }
    explicit operator double() const noexcept { return to_double(); }
    // Shortest-correct decimal with enough digits to round-trip at this precision.
    std::string to_string() const;

    mpfr_real& operator+=(const mpfr_real& o) { mpfr_add(v_, v_, o.v_, MPFR_RNDN); return *this; }
    mpfr_real& operator-=(const mpfr_real& o) { mpfr_sub(v_, v_, o.v_, MPFR_RNDN); return *this; }
    mpfr_real& operator*=(const mpfr_real& o) { mpfr_mul(v_, v_, o.v_, MPFR_RNDN); return *this; }
    mpfr_real& operator/=(const mpfr_real& o) { mpfr_div(v_, v_, o.v_, MPFR_RNDN); return *this; }

    struct uninitialized_tag {};
    explicit mpfr_real(uninitialized_tag) { init(); }

private:
    void init() { mpfr_init2(v_, working_precision()); }
    mpfr_t v_;
};

// Frees this thread's MPFR caches (constants such as log 2, π; MPFR keeps them per
// thread).  Worker threads call it before they end, or the caches leak.
void mpfr_release_thread_caches();

// RAII: sets the thread's working precision, restores the previous one.
class mpfr_precision_scope {
public:
    explicit mpfr_precision_scope(long bits) : saved_(mpfr_real::working_precision()) {
        mpfr_real::set_working_precision(bits);
    }
    ~mpfr_precision_scope() { mpfr_real::set_working_precision(saved_); }
    mpfr_precision_scope(const mpfr_precision_scope&) = delete;
    mpfr_precision_scope& operator=(const mpfr_precision_scope&) = delete;

private:
    mpfr_prec_t saved_;
};

namespace detail {
template <int (*F)(mpfr_ptr, mpfr_srcptr, mpfr_srcptr, mpfr_rnd_t)>
inline mpfr_real binary(const mpfr_real& a, const mpfr_real& b) {
    mpfr_real r{mpfr_real::uninitialized_tag{}};
    F(r.get(), a.get(), b.get(), MPFR_RNDN);
    return r;
}
template <int (*F)(mpfr_ptr, mpfr_srcptr, mpfr_rnd_t)>
inline mpfr_real unary(const mpfr_real& a) {
    mpfr_real r{mpfr_real::uninitialized_tag{}};
    F(r.get(), a.get(), MPFR_RNDN);
    return r;
}
}  // namespace detail

inline mpfr_real operator+(const mpfr_real& a, const mpfr_real& b) { return detail::binary<mpfr_add>(a, b); }
inline mpfr_real operator-(const mpfr_real& a, const mpfr_real& b) { return detail::binary<mpfr_sub>(a, b); }
inline mpfr_real operator*(const mpfr_real& a, const mpfr_real& b) { return detail::binary<mpfr_mul>(a, b); }
inline mpfr_real operator/(const mpfr_real& a, const mpfr_real& b) { return detail::binary<mpfr_div>(a, b); }
inline mpfr_real operator-(const mpfr_real& a) { return detail::unary<mpfr_neg>(a); }
inline mpfr_real operator+(const mpfr_real& a) { return a; }

inline bool operator==(const mpfr_real& a, const mpfr_real& b) { return mpfr_equal_p(a.get(), b.get()) != 0; }
inline bool operator!=(const mpfr_real& a, const mpfr_real& b) { return !(a == b); }
inline bool operator<(const mpfr_real& a, const mpfr_real& b) { return mpfr_less_p(a.get(), b.get()) != 0; }
inline bool operator>(const mpfr_real& a, const mpfr_real& b) { return mpfr_greater_p(a.get(), b.get()) != 0; }
inline bool operator<=(const mpfr_real& a, const mpfr_real& b) { return mpfr_lessequal_p(a.get(), b.get()) != 0; }
inline bool operator>=(const mpfr_real& a, const mpfr_real& b) { return mpfr_greaterequal_p(a.get(), b.get()) != 0; }

// Elementary functions, each correctly rounded by MPFR.
inline mpfr_real abs(const mpfr_real& a) { return detail::unary<mpfr_abs>(a); }
inline mpfr_real sqrt(const mpfr_real& a) { return detail::unary<mpfr_sqrt>(a); }
inline mpfr_real exp(const mpfr_real& a) { return detail::unary<mpfr_exp>(a); }
inline mpfr_real expm1(const mpfr_real& a) { return detail::unary<mpfr_expm1>(a); }
inline mpfr_real log(const mpfr_real& a) { return detail::unary<mpfr_log>(a); }
inline mpfr_real log1p(const mpfr_real& a) { return detail::unary<mpfr_log1p>(a); }
inline mpfr_real tanh(const mpfr_real& a) { return detail::unary<mpfr_tanh>(a); }
inline mpfr_real erf(const mpfr_real& a) { return detail::unary<mpfr_erf>(a); }
inline mpfr_real erfc(const mpfr_real& a) { return detail::unary<mpfr_erfc>(a); }
inline bool isfinite(const mpfr_real& a) { return mpfr_number_p(a.get()) != 0; }
mpfr_real mpfr_pi();  // π at the working precision

// acc ← acc + a·b with the product rounded to the working precision first:
// the same two roundings as `acc += a * b`, without allocating a temporary.
void add_product(mpfr_real& acc, const mpfr_real& a, const mpfr_real& b);
// m ← max(m, |x|) without a temporary.
inline void max_abs_into(mpfr_real& m, const mpfr_real& x) {
    if (mpfr_cmpabs(x.get(), m.get()) > 0) mpfr_abs(m.get(), x.get(), MPFR_RNDN);
}

}  // namespace epk

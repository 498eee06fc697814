// epk/scalar.hpp — the scalar types epk computes in, and the one concept
// (`Real`) the core is written against.
//
//   float, double, long double        the hardware types
//   float128                          IEEE binary128 (GCC __float128 via Boost)
//   mpfr_real                         MPFR, precision chosen at run time
//   bin50                             cpp_bin_float_50 (166-bit, portable)
//
// All Boost types use `et_off`: no expression templates, so `a*b + c`
// rounds exactly twice in every type.  The rounding sequence of the core is
// part of what epk specifies.
//
// `scalar_traits<T>` gives what the core needs beyond arithmetic: the unit
// roundoff u (half the machine epsilon: |fl(x∘y) − x∘y| ≤ u|x∘y|), a name,
// conversions, π, and a decimal string with all the digits.  `epk::rm` holds
// the elementary functions, dispatched to the right library for each type.
#pragma once

#include <boost/math/constants/constants.hpp>
#include <boost/math/special_functions/erf.hpp>
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/multiprecision/float128.hpp>
#include <cmath>
#include <concepts>
#include <limits>
#include <sstream>
#include <string>

#include "epk/mpfr_real.hpp"

namespace epk {

using float128 = boost::multiprecision::number<boost::multiprecision::float128_backend, boost::multiprecision::et_off>;
using bin50 = boost::multiprecision::number<boost::multiprecision::cpp_bin_float<50>, boost::multiprecision::et_off>;

template <class T>
struct scalar_traits;

template <class T>
concept Real = requires(const T a, const T b, double d) {
    { T(d) };
    { a + b } -> std::convertible_to<T>;
    { a - b } -> std::convertible_to<T>;
    { a * b } -> std::convertible_to<T>;
    { a / b } -> std::convertible_to<T>;
    { -a } -> std::convertible_to<T>;
    { a < b } -> std::convertible_to<bool>;
    { a == b } -> std::convertible_to<bool>;
    { scalar_traits<T>::unit_roundoff() } -> std::convertible_to<T>;
    { scalar_traits<T>::to_double(a) } -> std::convertible_to<double>;
    { scalar_traits<T>::to_string(a) } -> std::convertible_to<std::string>;
    { scalar_traits<T>::name() } -> std::convertible_to<std::string>;
};

namespace detail {
template <class T>
std::string digits_string(const T& x, int digits) {
    std::ostringstream os;
    os.precision(digits);
    os << x;
    return os.str();
}
}  // namespace detail

// Hardware and Boost types share one implementation through numeric_limits.
template <class T>
struct limits_scalar_traits {
    static T unit_roundoff() { return std::numeric_limits<T>::epsilon() / 2; }
    static int mantissa_bits() { return std::numeric_limits<T>::digits; }
    static double to_double(const T& x) { return static_cast<double>(x); }
    static T from_string(const std::string& s) {
        if constexpr (std::is_floating_point_v<T>) {
            if constexpr (std::is_same_v<T, float>) return std::strtof(s.c_str(), nullptr);
            else if constexpr (std::is_same_v<T, double>) return std::strtod(s.c_str(), nullptr);
            else return std::strtold(s.c_str(), nullptr);
        } else {
            return T(s);
        }
    }
    static std::string to_string(const T& x) { return detail::digits_string(x, std::numeric_limits<T>::max_digits10); }
    static T pi() { return boost::math::constants::pi<T>(); }
};

template <> struct scalar_traits<float> : limits_scalar_traits<float> { static std::string name() { return "float"; } };
template <> struct scalar_traits<double> : limits_scalar_traits<double> { static std::string name() { return "double"; } };
template <> struct scalar_traits<long double> : limits_scalar_traits<long double> { static std::string name() { return "long-double"; } };
template <> struct scalar_traits<float128> : limits_scalar_traits<float128> { static std::string name() { return "float128"; } };
template <> struct scalar_traits<bin50> : limits_scalar_traits<bin50> { static std::string name() { return "bin50"; } };

template <>
struct scalar_traits<mpfr_real> {
    static std::string name() { return "mpfr:" + std::to_string(mpfr_real::working_precision()); }
    // u = 2^-p for round-to-nearest with p-bit significands.
    static mpfr_real unit_roundoff() {
        mpfr_real r(1);
        mpfr_div_2si(r.get(), r.get(), static_cast<long>(mpfr_real::working_precision()), MPFR_RNDN);
        return r;
    }
    static int mantissa_bits() { return static_cast<int>(mpfr_real::working_precision()); }
    static double to_double(const mpfr_real& x) { return x.to_double(); }
    static mpfr_real from_string(const std::string& s) { return mpfr_real(s); }
    static std::string to_string(const mpfr_real& x) { return x.to_string(); }
    static mpfr_real pi() { return mpfr_pi(); }
};

// acc ← acc + a·b: two roundings (product, then sum), never fused.  The
// mpfr_real overload (mpfr_real.hpp) does the same without a temporary.
template <Real T>
void add_product(T& acc, const T& a, const T& b) { acc += a * b; }
// m ← max(m, |x|).
template <Real T>
void max_abs_into(T& m, const T& x) { if (m < x || m < -x) m = x < T(0) ? T(-x) : x; }

// Elementary functions for every Real.  For the hardware types these are the
// C library's (glibc: tanh, exp, log1p, erfc within a few ulp); for float128
// libquadmath's; for bin50 Boost.Math's; for mpfr_real MPFR's (correctly rounded).
namespace rm {
template <Real T> T abs(const T& x) { return x < T(0) ? T(-x) : x; }
template <Real T> T max(const T& a, const T& b) { return a < b ? b : a; }
template <Real T> T min(const T& a, const T& b) { return b < a ? b : a; }
template <Real T> T sqrt(const T& x) { using std::sqrt; return T(sqrt(x)); }
template <Real T> T exp(const T& x) { using std::exp; return T(exp(x)); }
template <Real T> T expm1(const T& x) { using std::expm1; return T(expm1(x)); }
template <Real T> T log(const T& x) { using std::log; return T(log(x)); }
template <Real T> T log1p(const T& x) { using std::log1p; return T(log1p(x)); }
template <Real T> T tanh(const T& x) { using std::tanh; return T(tanh(x)); }
template <Real T> T erf(const T& x) {
    if constexpr (std::is_same_v<T, bin50>) return boost::math::erf(x);
    else { using std::erf; return T(erf(x)); }
}
template <Real T> T erfc(const T& x) {
    if constexpr (std::is_same_v<T, bin50>) return boost::math::erfc(x);
    else { using std::erfc; return T(erfc(x)); }
}
template <Real T> bool isfinite(const T& x) { using std::isfinite; return isfinite(x); }
}  // namespace rm

}  // namespace epk

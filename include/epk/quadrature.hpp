// epk/quadrature.hpp — Gauss–Legendre rules in the working precision, and
// the real roots of a polynomial on (0, 1).
//
// Gauss–Legendre: the n-point rule on [0, 1] integrates every polynomial of
// degree ≤ 2n−1 exactly (and no polynomial of degree 2n exactly).  Nodes are
// the roots of P_n, found by Newton's method *in T* from Tricomi's initial
// guess, so an MPFR rule at 512 bits is good to 512 bits, not to double's 53;
// weights are 1/((1−x²) P_n'(x)²) on [0, 1].  Rules are cached per process
// and per precision.  proofs-notes/004 §2.
//
// Roots: `roots_in_unit_interval` returns every point of (0, 1) where the
// polynomial changes sign (odd-multiplicity roots), to the working precision.
// The critical points (roots of p′, found recursively) cut (0, 1) into
// intervals on which p is monotone; each holds at most one root, found by
// bisection safeguarded Newton.  proofs-notes/004 §3.
#pragma once

#include <cmath>
#include <cstddef>
#include <map>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

#include "epk/error.hpp"
#include "epk/scalar.hpp"

namespace epk {

template <Real T>
struct gauss_rule {
    std::vector<T> nodes;    // in (0, 1), ascending
    std::vector<T> weights;  // positive, sum 1
};

namespace detail {
// P_n(x) and P_n'(x) by the three-term recurrence
//   (k+1) P_{k+1} = (2k+1) x P_k − k P_{k−1},   P_n' = n (x P_n − P_{n−1}) / (x² − 1).
template <Real T>
std::pair<T, T> legendre_with_derivative(std::size_t n, const T& x) {
    T p0(1), p1 = x;
    for (std::size_t k = 1; k < n; ++k) {
        T p2 = (T(static_cast<double>(2 * k + 1)) * x * p1 - T(static_cast<double>(k)) * p0) /
               T(static_cast<double>(k + 1));
        p0 = std::move(p1);
        p1 = std::move(p2);
    }
    const T dp = T(static_cast<double>(n)) * (x * p1 - p0) / (x * x - T(1));
    return {p1, dp};
}

template <Real T>
gauss_rule<T> compute_gauss_legendre(std::size_t n) {
    gauss_rule<T> r;
    r.nodes.resize(n);
    r.weights.resize(n);
    const T u = scalar_traits<T>::unit_roundoff();
    const double pi = 3.14159265358979323846;
    for (std::size_t i = 0; i < (n + 1) / 2; ++i) {
        // Tricomi's guess for the i-th largest root, then Newton in T.
        T x(std::cos(pi * (static_cast<double>(i) + 0.75) / (static_cast<double>(n) + 0.5)));
        T dp(1), last_step(1);
        bool converged = false;
        for (int it = 0; it < 200; ++it) {
            auto [p, d] = legendre_with_derivative<T>(n, x);
            const T dx = p / d;
            x -= dx;
            dp = d;
            if (converged) break;  // one more step after |dx| ≤ 4u: quadratic convergence finishes it
            // Converged, or at the rounding floor of P_n's evaluation (steps no longer shrink).
            if (rm::abs(dx) <= T(4) * u || (it >= 3 && !(rm::abs(dx) < last_step))) converged = true;
            last_step = rm::abs(dx);
        }
        dp = legendre_with_derivative<T>(n, x).second;
        // Weight on [−1, 1] is 2/((1−x²) P_n'(x)²); on [0, 1] half of it.
        const T w = T(1) / ((T(1) - x * x) * dp * dp);
        // x > 0 for i < n/2: nodes t = (1 ∓ x)/2, mirrored.
        r.nodes[i] = (T(1) - x) / T(2);
        r.nodes[n - 1 - i] = (T(1) + x) / T(2);
        r.weights[i] = w;
        r.weights[n - 1 - i] = w;
    }
    if (n % 2 == 1) r.nodes[n / 2] = T(1) / T(2);  // P_n(0) = 0 exactly for odd n
    return r;
}
}  // namespace detail

inline constexpr std::size_t max_gauss_nodes = 100000;

// The n-point Gauss–Legendre rule on [0, 1] in T (at the current MPFR
// working precision for mpfr_real).  Cached for the process's lifetime;
// thread-safe.
template <Real T>
const gauss_rule<T>& gauss_legendre(std::size_t n) {
    if (n == 0 || n > max_gauss_nodes) throw usage_error("gauss_legendre: number of nodes must be in 1..100000");
    // One cache per process; map nodes never move, so references stay valid.
    static std::mutex mutex;
    static std::map<std::pair<std::size_t, int>, gauss_rule<T>> cache;
    const std::pair<std::size_t, int> key{n, scalar_traits<T>::mantissa_bits()};
    {
        const std::lock_guard<std::mutex> lock(mutex);
        auto it = cache.find(key);
        if (it != cache.end()) return it->second;
    }
    gauss_rule<T> rule = detail::compute_gauss_legendre<T>(n);  // outside the lock: may take a while
    const std::lock_guard<std::mutex> lock(mutex);
    return cache.emplace(key, std::move(rule)).first->second;  // keeps the first if another thread won
}

// p(u) = Σ_k c[k] u^k by Horner, with p'(u).
template <Real T>
std::pair<T, T> horner_with_derivative(std::span<const T> c, const T& u) {
    T p(0), d(0);
    for (std::size_t k = c.size(); k-- > 0;) {
        d = d * u + p;
        p = p * u + c[k];
    }
    return {p, d};
}

template <Real T>
T horner(std::span<const T> c, const T& u) {
    T p(0);
    for (std::size_t k = c.size(); k-- > 0;) p = p * u + c[k];
    return p;
}

namespace detail {
inline int sign_of(bool neg, bool zero) { return zero ? 0 : (neg ? -1 : 1); }

// The single root of p in (lo, hi), where p(lo) and p(hi) have strictly
// opposite signs and p is monotone: Newton steps kept inside the bracket,
// bisection whenever Newton leaves it or fails to halve the bracket.
template <Real T>
T bracketed_root(std::span<const T> c, T lo, T hi, int sign_lo) {
    const T u = scalar_traits<T>::unit_roundoff();
    T x = (lo + hi) / T(2);
    T width = hi - lo;
    for (int it = 0; it < 100000; ++it) {
        const auto [p, d] = horner_with_derivative<T>(c, x);
        if (p == T(0)) return x;
        const int s = sign_of(p < T(0), false);
        if (s == sign_lo) lo = x; else hi = x;
        const T new_width = hi - lo;
        const T mid = (lo + hi) / T(2);
        if (!(lo < mid && mid < hi)) return x;  // bracket is one ulp wide
        T next = mid;
        if (!(d == T(0))) {
            const T nx = x - p / d;
            // Newton accepted only strictly inside the bracket and while the bracket keeps halving.
            if (lo < nx && nx < hi && new_width <= width / T(2)) next = nx;
        }
        if (rm::abs(T(next - x)) <= T(2) * u * rm::abs(x)) return next;
        width = new_width;
        x = next;
    }
    return x;
}
}  // namespace detail

// Every u ∈ (0, 1) at which p changes sign, ascending (each once).  Interior
// critical points at which the computed p is exactly zero are included too:
// an extra point only splits a piece, a missing one would not.
//
// With `uncertainty`, each root also gets a first-order bound on how far the
// computed root may lie from the root of the exact polynomial, given that
// every coefficient is known to γ_{2·deg}: δ = γ·Σ|c_k||r|^k / |p′(r)|
// (∞ — capped at 1 — where p′(r) = 0: a touching double root).
template <Real T>
std::vector<T> roots_in_unit_interval(std::span<const T> coef, std::vector<T>* uncertainty);

template <Real T>
std::vector<T> roots_in_unit_interval(std::span<const T> coef) {
    return roots_in_unit_interval<T>(coef, nullptr);
}

namespace detail {
// Exclusion (proofs-notes/009 §5): for the d coefficients c (c[d−1] ≠ 0, d ≥ 2),
// |c0|(1 − g) > (Σ_{k≥1} |c_k|)(1 + g), g = 8·d·u, implies that p has no root in [0, 1] and
// that every Horner value of p on [0, 1] has c0's sign, so roots_search returns nothing.
template <Real T>
bool roots_excluded(std::span<const T> c) {
    T s(0);
    for (std::size_t k = 1; k < c.size(); ++k) s += rm::abs(c[k]);
    const T g = T(static_cast<double>(8 * c.size())) * scalar_traits<T>::unit_roundoff();
    return rm::abs(c[0]) * (T(1) - g) > s * (T(1) + g);
}

// The search itself (critical points, then one bracketed root per monotone interval).
template <Real T>
std::vector<T> roots_search(std::span<const T> c, std::vector<T>* uncertainty) {
    const std::size_t deg = c.size();
    std::vector<T> roots;
    auto with_uncertainty = [&](std::vector<T> rs) {
        if (uncertainty != nullptr) {
            const T gamma = T(static_cast<double>(4 * deg)) * scalar_traits<T>::unit_roundoff();
            for (const T& r : rs) {
                T mag(0), pw(1);
                for (std::size_t k = 0; k < deg; ++k) {
                    mag += rm::abs(c[k]) * pw;
                    pw = pw * rm::abs(r);
                }
                const T slope = rm::abs(horner_with_derivative<T>(c, r).second);
                const T err = gamma * mag;
                uncertainty->push_back(slope > err ? T(err / slope) : T(1));
            }
        }
        return rs;
    };
    if (deg == 2) {  // linear: u = −c0/c1
        const T r = -c[0] / c[1];
        if (T(0) < r && r < T(1)) roots.push_back(r);
        return with_uncertainty(std::move(roots));
    }
    std::vector<T> dc(deg - 1);
    for (std::size_t k = 1; k < deg; ++k) dc[k - 1] = T(static_cast<double>(k)) * c[k];
    std::vector<T> ends{T(0)};
    for (T& r : roots_in_unit_interval<T>(std::span<const T>(dc), nullptr)) ends.push_back(std::move(r));
    ends.push_back(T(1));
    std::vector<T> vals;
    for (const T& e : ends) vals.push_back(horner<T>(c, e));
    for (std::size_t k = 0; k + 1 < ends.size(); ++k) {
        if (k > 0 && vals[k] == T(0)) roots.push_back(ends[k]);
        const bool neg_l = vals[k] < T(0), neg_r = vals[k + 1] < T(0);
        if (vals[k] == T(0) || vals[k + 1] == T(0) || neg_l == neg_r) continue;
        roots.push_back(detail::bracketed_root<T>(c, ends[k], ends[k + 1], neg_l ? -1 : 1));
    }
    return with_uncertainty(std::move(roots));
}
}  // namespace detail

template <Real T>
std::vector<T> roots_in_unit_interval(std::span<const T> coef, std::vector<T>* uncertainty) {
    std::size_t deg = coef.size();
    while (deg > 0 && coef[deg - 1] == T(0)) --deg;
    if (deg <= 1) return {};  // constant (or zero)
    const std::span<const T> c = coef.subspan(0, deg);
    if (detail::roots_excluded<T>(c)) return {};  // what roots_search would return, at once
    return detail::roots_search<T>(c, uncertainty);
}

}  // namespace epk

// Gauss–Legendre rules in the working precision and polynomial roots on
// (0, 1) (include/epk/quadrature.hpp, proofs-notes/004 §2–3).
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <cstdio>
#include <optional>
#include <random>

#include "epk/quadrature.hpp"
#include "epk/segment.hpp"
#include "support/generators.hpp"

namespace {

using epk::mpfr_real;
using epk::scalar_traits;

// Σ_q w_q t_q^k − 1/(k+1), evaluated exactly enough in MPFR at `bits`.
template <epk::Real T>
mpfr_real monomial_error(const epk::gauss_rule<T>& g, std::size_t k) {
    mpfr_real sum(0);
    for (std::size_t q = 0; q < g.nodes.size(); ++q) {
        mpfr_real t = epk::testing::exact_mpfr(g.nodes[q]);
        mpfr_real p(1);
        for (std::size_t e = 0; e < k; ++e) p = p * t;
        sum += epk::testing::exact_mpfr(g.weights[q]) * p;
    }
    return sum - mpfr_real(1) / mpfr_real(static_cast<double>(k + 1));
}

// (n!)^4 / ((2n+1) ((2n)!)^2): the n-point rule's error on t^{2n} over [0, 1]
// (E = (b−a)^{2n+1} (n!)^4 f^{(2n)}(ξ) / ((2n+1)((2n)!)^3) with f^{(2n)} = (2n)!).
mpfr_real gauss_error_on_degree_2n(std::size_t n) {
    mpfr_real nf(1), n2f(1);
    for (std::size_t k = 2; k <= n; ++k) nf = nf * mpfr_real(static_cast<double>(k));
    for (std::size_t k = 2; k <= 2 * n; ++k) n2f = n2f * mpfr_real(static_cast<double>(k));
    return nf * nf * nf * nf / (mpfr_real(static_cast<double>(2 * n + 1)) * n2f * n2f);
}

template <epk::Real T>
void check_exact_to_degree(std::size_t n_max, long bits) {
    const double u = std::ldexp(1.0, -static_cast<int>(std::min<long>(bits, 1000)));
    double worst = 0;
    for (std::size_t n = 1; n <= n_max; ++n) {
        std::optional<epk::mpfr_precision_scope> scope;
        if constexpr (std::is_same_v<T, mpfr_real>) scope.emplace(bits);
        const epk::gauss_rule<T> g = epk::gauss_legendre<T>(n);  // copy: rule at this precision
        epk::mpfr_precision_scope wide(std::max<long>(4 * bits, 512));
        for (std::size_t k = 0; k + 1 <= 2 * n; ++k) {  // degree ≤ 2n−1: exact up to rounding
            const double e = std::abs(monomial_error(g, k).to_double());
            worst = std::max(worst, e / u);
            // Budget: n nodes and weights each within a few u, summed: 8·n·u.
            ASSERT_LE(e, 8.0 * static_cast<double>(n) * u) << "n=" << n << " degree " << k;
        }
        // Degree 2n: the error ∫ − Q is the classical one, not zero.
        const double e2n = -monomial_error(g, 2 * n).to_double();
        const double expect = gauss_error_on_degree_2n(n).to_double();
        if (expect > 1e3 * static_cast<double>(n) * u) {
            EXPECT_NEAR(e2n, expect, 1e-6 * expect + 8.0 * static_cast<double>(n) * u) << "n=" << n;
        }
    }
    std::printf("[gauss %s] worst error on degree <= 2n-1: %.2f u (n <= %zu)\n", scalar_traits<T>::name().c_str(), worst,
                n_max);
}

TEST(GaussLegendre, ExactThroughDegree2nMinus1Double) { check_exact_to_degree<double>(12, 53); }
TEST(GaussLegendre, ExactThroughDegree2nMinus1LongDouble) { check_exact_to_degree<long double>(12, 64); }
TEST(GaussLegendre, ExactThroughDegree2nMinus1Float128) { check_exact_to_degree<epk::float128>(16, 113); }
TEST(GaussLegendre, ExactThroughDegree2nMinus1Mpfr256) { check_exact_to_degree<mpfr_real>(24, 256); }

TEST(GaussLegendre, NotExactOnDegree2nInMpfr) {
    // At 256 bits the degree-2n error is far above rounding for n ≤ 24.
    epk::mpfr_precision_scope scope(256);
    for (std::size_t n = 1; n <= 24; ++n) {
        const auto& g = epk::gauss_legendre<mpfr_real>(n);
        const mpfr_real e = -monomial_error(g, 2 * n);  // ∫ − Q
        const mpfr_real expect = gauss_error_on_degree_2n(n);
        EXPECT_GT(e.to_double(), 0.5 * expect.to_double()) << "n=" << n;
        EXPECT_LT(e.to_double(), 1.5 * expect.to_double()) << "n=" << n;
    }
}

TEST(GaussLegendre, NodesComputedInTheWorkingPrecisionNotFromDouble) {
    // The 512-bit rule agrees with the 1024-bit one to ~2^-500, far beyond double.
    std::vector<mpfr_real> nodes512, weights512;
    {
        epk::mpfr_precision_scope scope(512);
        const auto& g = epk::gauss_legendre<mpfr_real>(37);
        nodes512 = g.nodes;
        weights512 = g.weights;
    }
    epk::mpfr_precision_scope scope(1024);
    const auto& g = epk::gauss_legendre<mpfr_real>(37);
    for (std::size_t q = 0; q < 37; ++q) {
        EXPECT_LT(epk::rm::abs(mpfr_real(g.nodes[q] - nodes512[q])).to_double(), std::ldexp(1.0, -500)) << q;
        EXPECT_LT(epk::rm::abs(mpfr_real(g.weights[q] - weights512[q])).to_double(), std::ldexp(1.0, -500)) << q;
    }
}

TEST(GaussLegendre, NodesAscendingInsideAndSymmetric) {
    for (std::size_t n : {1u, 2u, 3u, 7u, 64u, 129u, 500u}) {
        const auto& g = epk::gauss_legendre<double>(n);
        double sum = 0;
        for (std::size_t q = 0; q < n; ++q) {
            EXPECT_GT(g.nodes[q], 0.0);
            EXPECT_LT(g.nodes[q], 1.0);
            if (q > 0) {
                EXPECT_LT(g.nodes[q - 1], g.nodes[q]);
            }
            EXPECT_GT(g.weights[q], 0.0);
            EXPECT_NEAR(g.nodes[q] + g.nodes[n - 1 - q], 1.0, 4e-16);
            sum += g.weights[q];
        }
        EXPECT_NEAR(sum, 1.0, 1e-15 * static_cast<double>(n));
    }
    EXPECT_THROW(epk::gauss_legendre<double>(0), epk::usage_error);
    EXPECT_THROW(epk::gauss_legendre<double>(epk::max_gauss_nodes + 1), epk::usage_error);
}

TEST(RuleSizes, GridIsIncreasingWithRatioAtMostOneQuarter) {
    std::size_t prev = epk::detail::rule_size_at_least(1);
    EXPECT_EQ(prev, 1u);
    for (std::size_t n = 2; n < 5000; ++n) {
        const std::size_t k = epk::detail::rule_size_at_least(n);
        EXPECT_GE(k, n);
        EXPECT_LE(static_cast<double>(k), 1.25 * static_cast<double>(n) + 1) << n;
        EXPECT_EQ(epk::detail::rule_size_at_least(k), k);
        EXPECT_GE(k, prev);
        prev = k;
    }
}

// Polynomial with roots r_k: Π (u − r_k), coefficients ascending.
std::vector<double> poly_from_roots(const std::vector<double>& roots, double lead) {
    std::vector<double> c{lead};
    for (double r : roots) {
        std::vector<double> next(c.size() + 1, 0.0);
        for (std::size_t k = 0; k < c.size(); ++k) {
            next[k + 1] += c[k];
            next[k] -= r * c[k];
        }
        c = next;
    }
    return c;
}

RC_GTEST_PROP(PolynomialRoots, FindsEverySimpleRootInTheOpenInterval, ()) {
    // Roots well separated (≥ 1/64 apart) so that the double coefficients keep them simple.
    const auto count = *rc::gen::inRange<std::size_t>(0, 6);
    // No root exactly at 0 or 1: rounding the coefficients decides on which side it falls.
    std::vector<int> grid = *rc::gen::unique<std::vector<int>>(
        count, rc::gen::suchThat(rc::gen::inRange(-40, 104), [](int g) { return g != 0 && g != 64; }));
    std::vector<double> roots;
    for (int g : grid) roots.push_back(g / 64.0);
    const double lead = *rc::gen::element(1.0, -2.5, 1e-3, 7.0);
    const std::vector<double> c = poly_from_roots(roots, lead);
    const std::vector<double> found = epk::roots_in_unit_interval<double>(c);
    std::vector<double> inside;
    for (double r : roots)
        if (r > 0 && r < 1) inside.push_back(r);
    std::sort(inside.begin(), inside.end());
    RC_ASSERT(found.size() == inside.size());
    for (std::size_t k = 0; k < found.size(); ++k) RC_ASSERT(std::abs(found[k] - inside[k]) <= 1e-9);
}

TEST(PolynomialRoots, MultiplicityAndDegenerateCases) {
    using V = std::vector<double>;
    EXPECT_TRUE(epk::roots_in_unit_interval<double>(V{}).empty());
    EXPECT_TRUE(epk::roots_in_unit_interval<double>(V{0, 0, 0}).empty());    // identically zero
    EXPECT_TRUE(epk::roots_in_unit_interval<double>(V{1.5}).empty());        // constant
    EXPECT_TRUE(epk::roots_in_unit_interval<double>(V{0.25, -1, 1}).empty() ||  // (u − 1/2)²: touches, no sign change
                epk::roots_in_unit_interval<double>(V{0.25, -1, 1}).size() == 1);
    const V triple = poly_from_roots({0.5, 0.5, 0.5}, 1.0);                  // sign change of odd multiplicity
    const V r = epk::roots_in_unit_interval<double>(triple);
    ASSERT_GE(r.size(), 1u);
    EXPECT_NEAR(r.front(), 0.5, 1e-5);
    EXPECT_TRUE(epk::roots_in_unit_interval<double>(V{-2, 1}).empty());       // root at u = 2
    const V lin = epk::roots_in_unit_interval<double>(V{-0.3, 1});
    ASSERT_EQ(lin.size(), 1u);
    EXPECT_DOUBLE_EQ(lin[0], 0.3);
}

TEST(PolynomialRoots, RootsToTheWorkingPrecisionInMpfr) {
    epk::mpfr_precision_scope scope(400);
    // (u − 1/3)(u − 2/3)(u − 0.9): roots to ~2^-395.
    const mpfr_real third = mpfr_real(1) / mpfr_real(3);
    const mpfr_real r1 = third, r2 = mpfr_real(2) * third, r3 = mpfr_real(9) / mpfr_real(10);
    std::vector<mpfr_real> c{-(r1 * r2 * r3), r1 * r2 + r1 * r3 + r2 * r3, -(r1 + r2 + r3), mpfr_real(1)};
    const auto found = epk::roots_in_unit_interval<mpfr_real>(c);
    ASSERT_EQ(found.size(), 3u);
    const mpfr_real expect[] = {r1, r2, r3};
    for (std::size_t k = 0; k < 3; ++k)
        EXPECT_LT(epk::rm::abs(mpfr_real(found[k] - expect[k])).to_double(), std::ldexp(1.0, -390)) << k;
}

// proofs-notes/009 §5: when the exclusion fires, the full search finds no root either — on
// polynomials whose |c0| sits at the test's edge (within a few g of Σ_{k≥1}|c_k|), where a
// wrong margin would show.  And a polynomial with a root in (0, 1) is never excluded.
RC_GTEST_PROP(PolynomialRoots, ExclusionChangesNothing, ()) {
    const auto d = *rc::gen::inRange<std::size_t>(2, 7);
    // Half the cases adversarial: every c_k (k ≥ 1) of the sign opposite to c0 > 0, so that
    // p(1) = c0 − Σ|c_k| is as small as the edge allows and rounding could flip its sign.
    const bool adversarial = *rc::gen::arbitrary<bool>();
    std::vector<double> c(d);
    for (std::size_t k = 1; k < d; ++k) {
        const double mag = std::ldexp(1.0 + *rc::gen::inRange(0, 1000) / 1000.0, *rc::gen::inRange(-8, 8));
        c[k] = adversarial || *rc::gen::arbitrary<bool>() ? -mag : mag;
    }
    double s = 0;
    for (std::size_t k = 1; k < d; ++k) s += std::abs(c[k]);
    const double g = 8.0 * static_cast<double>(d) * std::ldexp(1.0, -53);
    // |c0| = s·(1 + m·g): m within ±1/16, ±1 or ±4 of the edge in 128 steps (where a margin that
    // is too small would let rounding flip the sign of p(1)), sometimes far from it.
    const double m = *rc::gen::inRange(-64, 65) / 64.0 * *rc::gen::element(1.0 / 16, 1.0, 4.0) +
                     (*rc::gen::inRange(0, 10) == 0 ? 1e6 : 0.0);
    c[0] = s * (1.0 + m * g) * (adversarial || *rc::gen::arbitrary<bool>() ? 1.0 : -1.0);
    const std::span<const double> cs(c);
    const std::vector<double> found = epk::detail::roots_search<double>(cs, nullptr);
    if (epk::detail::roots_excluded<double>(cs)) RC_ASSERT(found.empty());
    RC_TAG(epk::detail::roots_excluded<double>(cs) ? "excluded" : "searched");
    // With a root r ∈ (0, 1) built in: never excluded.
    const double r = *rc::gen::inRange(1, 1000) / 1000.0;
    const std::vector<double> with_root = poly_from_roots({r}, 1.0);
    std::vector<double> prod(d + 1, 0.0);  // c·(u − r)
    for (std::size_t k = 0; k < d; ++k) {
        prod[k + 1] += c[k] * with_root[1];
        prod[k] += c[k] * with_root[0];
    }
    if (epk::detail::roots_excluded<double>(std::span<const double>(prod))) {
        // Only possible if rounding moved the product's sign change out of (0, 1): the search agrees.
        RC_ASSERT(epk::detail::roots_search<double>(std::span<const double>(prod), nullptr).empty());
    }
}

TEST(PolynomialRoots, ExclusionInMpfrAtTheEdge) {
    epk::mpfr_precision_scope scope(200);
    // c = (c0, 1, −1, 1) with |c0| just above and just below 3·(1 + g)/(1 − g).
    const mpfr_real u = scalar_traits<mpfr_real>::unit_roundoff(), g = mpfr_real(32) * u;
    const mpfr_real edge = mpfr_real(3) * (mpfr_real(1) + g) / (mpfr_real(1) - g);
    for (int k : {-4, 4}) {
        const mpfr_real c0 = edge * (mpfr_real(1) + mpfr_real(k) * u);
        const std::vector<mpfr_real> c{c0, mpfr_real(1), mpfr_real(-1), mpfr_real(1)};
        const bool excluded = epk::detail::roots_excluded<mpfr_real>(std::span<const mpfr_real>(c));
        EXPECT_EQ(excluded, k > 0) << k;
        EXPECT_TRUE(epk::detail::roots_search<mpfr_real>(std::span<const mpfr_real>(c), nullptr).empty());
    }
}

}  // namespace

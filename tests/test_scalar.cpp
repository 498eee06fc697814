// The scalar layer: MPFR wrapper semantics, unit roundoffs, and the
// accuracy of each activation's value and derivative in binary64 against
// MPFR-1024 — the constants of proofs-notes/001, table 1, checked.
#include <gtest/gtest.h>

#include <random>

#include "epk/network.hpp"
#include "epk/rounding_bound.hpp"

using namespace epk;

TEST(MpfrReal, WorkingPrecisionScopesNestAndRestore) {
    EXPECT_EQ(mpfr_real::working_precision(), 256);
    {
        mpfr_precision_scope a(100);
        EXPECT_EQ(mpfr_real(1).precision(), 100);
        {
            mpfr_precision_scope b(3000);
            EXPECT_EQ((mpfr_real(1) + mpfr_real(2)).precision(), 3000);
        }
        EXPECT_EQ(mpfr_real::working_precision(), 100);
    }
    EXPECT_EQ(mpfr_real::working_precision(), 256);
    EXPECT_THROW(mpfr_precision_scope(1), usage_error);
    EXPECT_THROW(mpfr_precision_scope(100001), usage_error);
}

TEST(MpfrReal, ArithmeticIsCorrectlyRoundedAtTheWorkingPrecision) {
    mpfr_precision_scope s(53);
    // At 53 bits MPFR must reproduce binary64 arithmetic exactly.
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<double> dist(-1e3, 1e3);
    for (int i = 0; i < 2000; ++i) {
        const double a = dist(rng), b = dist(rng);
        EXPECT_EQ((mpfr_real(a) + mpfr_real(b)).to_double(), a + b);
        EXPECT_EQ((mpfr_real(a) * mpfr_real(b)).to_double(), a * b);
        EXPECT_EQ((mpfr_real(a) / mpfr_real(b)).to_double(), a / b);
        EXPECT_EQ((mpfr_real(a) - mpfr_real(b)).to_double(), a - b);
    }
}

TEST(MpfrReal, CopiesAreExactAndStringsRoundTrip) {
    mpfr_precision_scope s(300);
    const mpfr_real third = mpfr_real(1) / mpfr_real(3);
    const mpfr_real copy = third;
    EXPECT_EQ(copy, third);
    mpfr_real moved = mpfr_real(third);
    EXPECT_EQ(moved, third);
    EXPECT_EQ(mpfr_real(third.to_string()), third);
    EXPECT_THROW(mpfr_real(std::string("1.5x")), usage_error);
    EXPECT_THROW(mpfr_real(std::string("")), usage_error);
}

TEST(Scalars, UnitRoundoffs) {
    EXPECT_EQ(scalar_traits<float>::unit_roundoff(), 0x1p-24f);
    EXPECT_EQ(scalar_traits<double>::unit_roundoff(), 0x1p-53);
    EXPECT_EQ(scalar_traits<long double>::unit_roundoff(), 0x1p-64L);
    EXPECT_EQ(scalar_traits<float128>::unit_roundoff(), float128(0x1p-113));
    mpfr_precision_scope s(77);
    EXPECT_EQ(scalar_traits<mpfr_real>::unit_roundoff(), mpfr_real(0x1p-77));
    EXPECT_EQ(scalar_traits<mpfr_real>::name(), "mpfr:77");
}

// Every activation's value and derivative in binary64 within the error
// model's constants, over z ∈ [−12, 12] plus special points.
TEST(Activations, Binary64ErrorsWithinStatedConstants) {
    mpfr_precision_scope s(1024);
    std::mt19937_64 rng(11);
    std::uniform_real_distribution<double> dist(-12, 12);
    std::vector<double> zs{0.0, -0.0, 1e-300, -1e-300, 20.0, -20.0, 0.5, -0.5};
    for (int i = 0; i < 3000; ++i) zs.push_back(dist(rng));
    constexpr double u = 0x1p-53;
    for (layer_kind k : {layer_kind::relu, layer_kind::leaky_relu, layer_kind::tanh, layer_kind::sigmoid,
                         layer_kind::softplus, layer_kind::gelu, layer_kind::identity}) {
        const layer_spec l{k, 0, true, 0.01};
        const activation<double> ad(l);
        const activation<mpfr_real> am(l);
        double worst_v = 0, worst_d = 0;
        for (double z : zs) {
            const double v = ad.value(z), d = ad.derivative(z);
            const double ev = std::abs((mpfr_real(v) - am.value(mpfr_real(z))).to_double());
            const double ed = std::abs((mpfr_real(d) - am.derivative(mpfr_real(z))).to_double());
            const double bv = activation_error_model::value_rel(k, z) * u * std::abs(v);
            const double bd = activation_error_model::derivative_abs(k, z, d) * u;
            EXPECT_LE(ev, bv) << to_string(k) << " value at z = " << z;
            EXPECT_LE(ed, bd) << to_string(k) << " derivative at z = " << z;
            if (bv > 0) worst_v = std::max(worst_v, ev / bv);
            if (bd > 0) worst_d = std::max(worst_d, ed / bd);
        }
        std::printf("%-11s value error/bound max %.3f, derivative error/bound max %.3f\n",
                    std::string(to_string(k)).c_str(), worst_v, worst_d);
    }
}

// Kinks: the left-hand derivative, as PyTorch.
TEST(Activations, KinkDerivativesAreLeftHanded) {
    EXPECT_EQ(activation<double>(layer_spec{layer_kind::relu}).derivative(0.0), 0.0);
    EXPECT_EQ(activation<double>(layer_spec{.kind = layer_kind::leaky_relu, .negative_slope = 0.2}).derivative(0.0), 0.2);
    EXPECT_EQ(activation<double>(layer_spec{layer_kind::relu}).value(-0.0), 0.0);
}

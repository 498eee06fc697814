#include <optional>
#include <random>
#define EPK_SCALAR long double
#define EPK_SUITE TypedCoreLongDouble
#define EPK_MPFR_BITS 200
#include "typed_core.inc"

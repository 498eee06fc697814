#include <optional>
#include <random>
#define EPK_SCALAR epk::float128
#define EPK_SUITE TypedCoreFloat128
#define EPK_MPFR_BITS 200
#include "typed_core.inc"

#include <optional>
#include <random>
#define EPK_SCALAR float
#define EPK_SUITE TypedCoreFloat
#define EPK_MPFR_BITS 200
#include "typed_core.inc"

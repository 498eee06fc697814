#include <optional>
#include <random>
#define EPK_SCALAR double
#define EPK_SUITE TypedCoreDouble
#define EPK_MPFR_BITS 200
#include "typed_core.inc"

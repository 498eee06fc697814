#include <optional>
#include <random>
#define EPK_SCALAR epk::bin50
#define EPK_SUITE TypedCoreBin50
#define EPK_MPFR_BITS 200
#include "typed_core.inc"

#include <optional>
#include <random>
#define EPK_SCALAR epk::mpfr_real
#define EPK_SUITE TypedCoreMpfr200
#define EPK_MPFR_BITS 200
#include "typed_core.inc"

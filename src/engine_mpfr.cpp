// The engine instantiated for mpfr_real (one scalar per translation unit).
#include "engine_impl.hpp"

EPK_INSTANTIATE_ENGINE(mpfr_real, mpfr)

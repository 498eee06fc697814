// The engine instantiated for float128 (one scalar per translation unit).
#include "engine_impl.hpp"

EPK_INSTANTIATE_ENGINE(float128, float128)

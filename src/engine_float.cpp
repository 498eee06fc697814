// The engine instantiated for float (one scalar per translation unit).
#include "engine_impl.hpp"

EPK_INSTANTIATE_ENGINE(float, float)

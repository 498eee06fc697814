// The engine instantiated for double (one scalar per translation unit).
#include "engine_impl.hpp"

EPK_INSTANTIATE_ENGINE(double, double)

// The engine instantiated for long double (one scalar per translation unit).
#include "engine_impl.hpp"

EPK_INSTANTIATE_ENGINE(long double, long_double)

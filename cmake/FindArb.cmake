# FindArb — locates Arb (ball arithmetic) and FLINT (Debian 12: libflint-arb-dev, which
# pulls in libflint-dev).  Debian ships neither a pkg-config file nor a CMake config for
# them, so the header and the library are searched directly.
# Defines Arb_FOUND and the imported target Arb::Arb (Arb + FLINT + MPFR/GMP).
find_path(ARB_INCLUDE_DIR arb.h PATH_SUFFIXES arb)
find_path(FLINT_INCLUDE_DIR flint/flint.h)
find_library(ARB_LIBRARY NAMES flint-arb arb)
find_library(FLINT_LIBRARY flint)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Arb REQUIRED_VARS ARB_LIBRARY ARB_INCLUDE_DIR FLINT_LIBRARY FLINT_INCLUDE_DIR)
if(Arb_FOUND AND NOT TARGET Arb::Arb)
  add_library(Arb::FLINT UNKNOWN IMPORTED)
  set_target_properties(Arb::FLINT PROPERTIES IMPORTED_LOCATION "${FLINT_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${FLINT_INCLUDE_DIR}")
  add_library(Arb::Arb UNKNOWN IMPORTED)
  set_target_properties(Arb::Arb PROPERTIES IMPORTED_LOCATION "${ARB_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${ARB_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "Arb::FLINT;MPFR::MPFR")
endif()
mark_as_advanced(ARB_INCLUDE_DIR FLINT_INCLUDE_DIR ARB_LIBRARY FLINT_LIBRARY)

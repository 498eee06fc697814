#!/usr/bin/env bash
# build.sh — install what is missing (Debian 12, apt-get), configure, build, run.
#   ./build.sh demo    build the tool and run `epk demo`
#   ./build.sh test    build everything and run the whole test suite (ctest); the MPI build
#                      (build-mpi) and its tests under mpirun; the suite under ASan+UBSan
#                      (build-asan) and every fuzz target for 15 s (build-fuzz)
# Run as root (or with sudo available) on a fresh machine; later runs reuse build/.
set -euo pipefail
cd "$(dirname "$0")"
mode="${1:-demo}"
case "$mode" in demo|test) ;; *) echo "usage: ./build.sh demo|test" >&2; exit 2 ;; esac

packages=(g++ cmake make libboost-dev libmpfr-dev libgmp-dev libeigen3-dev nlohmann-json3-dev
          libgtest-dev librapidcheck-dev libflint-arb-dev)
# test: bench/ (google-benchmark; run.sh and table.py need python3), the fuzz targets (clang, fuzz/README.md).
# tools/minimal-root.sh checks on a minimal Debian 12 root that nothing else is needed.
# libflint-arb-dev: Arb's ball arithmetic for `epk certify` (optional in CMake; installed by both).
# test also: the Python package (python/: pybind11, its pytest suite; python3-torch for the
# recorder epk.torch), and the MPI build (build-mpi, -DEPK_MPI=ON: Debian's OpenMPI).
[ "$mode" = test ] && packages+=(libbenchmark-dev python3 clang libclang-rt-14-dev
                                 python3-dev pybind11-dev python3-numpy python3-pytest python3-torch
                                 libopenmpi-dev openmpi-bin)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "build.sh: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

jobs="$(nproc 2>/dev/null || echo 2)"
if [ "$mode" = demo ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DEPK_BUILD_TESTS=OFF -DEPK_BUILD_BENCH=OFF
  cmake --build build -j"$jobs" --target epk
  ./build/epk demo
else
  # Debian's interpreter, where apt puts numpy, pytest and torch (a python3 earlier on PATH may lack them).
  py=(); [ -x /usr/bin/python3 ] && py=(-DPython3_EXECUTABLE=/usr/bin/python3)
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DEPK_BUILD_TESTS=ON -DEPK_BUILD_BENCH=ON "${py[@]}"
  cmake --build build -j"$jobs"
  ctest --test-dir build --output-on-failure -j"$jobs"
  # The MPI build: the tool only, and its tests under mpirun --oversubscribe -n 1, 2, 3
  # (tests/mpi/run_mpi_tests.sh: outputs byte-identical to one process, a rank killed, bad input).
  cmake -S . -B build-mpi -DCMAKE_BUILD_TYPE=Release -DEPK_MPI=ON -DEPK_BUILD_TESTS=OFF -DEPK_BUILD_BENCH=OFF \
        -DEPK_PYTHON=OFF
  cmake --build build-mpi -j"$jobs" --target epk
  ctest --test-dir build-mpi --output-on-failure
  # The same suite under AddressSanitizer + UndefinedBehaviorSanitizer (-O1; 100 RapidCheck
  # cases per heavy property instead of 1000).
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DEPK_SANITIZE=ON -DEPK_RC_CASES=100
  cmake --build build-asan -j"$jobs"
  ctest --test-dir build-asan --output-on-failure -j"$jobs"
  # The readers under libFuzzer (clang, ASan, UBSan): 15 s per target.
  CXX=clang++ cmake -S . -B build-fuzz -DEPK_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
  cmake --build build-fuzz -j"$jobs"
  fuzz/run.sh build-fuzz 15
fi

#!/usr/bin/env bash
# The C++ package from a fresh install: cmake --install into an empty prefix, build
# examples/consumer against it with find_package(epk), and run it (and the installed epk)
# on a trace — a faithful one (exit 0) and a misdescribed one (exit 1).
# usage: run_consumer.sh CMAKE BUILD_DIR SOURCE_DIR
set -euo pipefail
cmake_bin=$1 build=$2 src=$3
work=$(mktemp -d "${TMPDIR:-/tmp}/epk-consumer.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$cmake_bin" --install "$build" --prefix "$work/prefix" >/dev/null
for f in bin/epk include/epk/engine.hpp lib/cmake/epk/epkConfig.cmake lib/libepk_engine.a; do
    [ -e "$work/prefix/$f" ] || { echo "FAIL: $f not installed"; exit 1; }
done
"$cmake_bin" -S "$src/examples/consumer" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$work/prefix" >"$work/configure.log" 2>&1 || { cat "$work/configure.log"; exit 1; }
"$cmake_bin" --build "$work/build" -j2 >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log"; exit 1; }
"$work/prefix/bin/epk" train --out "$work/run" --n-train 20 --n-test 3 --hidden 6 --steps 3 >/dev/null
out=$("$work/build/epk_consumer" "$work/run")
echo "$out"
[[ $out == *"within budget"*"(explained)"* ]] || { echo "FAIL: faithful run"; exit 1; }
sed -i 's/"learning_rate": *0\.1\b/"learning_rate": 0.12/' "$work/run/manifest.json"
set +e
"$work/build/epk_consumer" "$work/run"; rc=$?
set -e
[ "$rc" -eq 1 ] || { echo "FAIL: the misdescribed run gave exit $rc, expected 1"; exit 1; }
echo "ok: find_package(epk) from a fresh install builds, links and runs"

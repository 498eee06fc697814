# shellcheck shell=bash
# Sourced by the PyTorch comparison scripts: changes to the repository root
# (`root`) and sets EPK (default ./build/epk), PYTHON (the first python3 that
# imports numpy and torch: a pyenv/venv python3 on PATH may lack Debian's
# python3-torch, which lives under /usr/bin/python3), GEN (the trace generator
# examples/pytorch_trace.py) and `work` (a temporary directory, removed on exit
# unless KEEP=1); exits 2 with a one-line reason when epk or torch is missing.
# Expects `work_prefix` (the temporary directory's name prefix).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
# shellcheck disable=SC2034  # GEN: used by the sourcing scripts
GEN="$root/examples/pytorch_trace.py"
EPK="${EPK:-./build/epk}"
if [[ -z "${PYTHON:-}" ]]; then
    for candidate in python3 /usr/bin/python3; do
        if "$candidate" -c 'import numpy, torch' >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
    done
    PYTHON="${PYTHON:-python3}"
fi
if [[ ! -x "$EPK" ]]; then
    echo "error: epk binary '$EPK' not found; build it with" >&2
    echo "  cmake -S . -B build -DEPK_BUILD_TESTS=OFF && cmake --build build -j1 --target epk" >&2
    exit 2
fi
if ! "$PYTHON" -c 'import numpy, torch' 2>/dev/null; then
    echo "error: $PYTHON cannot import numpy and torch (apt-get install python3-torch python3-numpy)" >&2
    exit 2
fi
# shellcheck disable=SC2154  # work_prefix: set by the sourcing script
work="$(mktemp -d "${TMPDIR:-/tmp}/${work_prefix}.XXXXXX")"
if [[ "${KEEP:-0}" != 1 ]]; then trap 'rm -rf "$work"' EXIT; else echo "traces kept in $work"; fi

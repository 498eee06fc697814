#!/usr/bin/env bash
# naive_kernel_example.sh — run examples/naive_kernel_example.py: train a small
# ReLU MLP with torch.optim.SGD, compute its path kernel the naive way (a fixed
# Gauss-Legendre rule along every step, no breakpoints) and watch `epk check`
# reject it while `epk verify` and epk's own kernel pass. Exit 0 if epk behaves
# so, 1 if not, 2 if epk or torch is missing.
#
# usage: examples/naive_kernel_example.sh [--nodes N]   (other options: the .py's --help)
# environment:
#   EPK     the epk binary (default ./build/epk, relative to the repository root)
#   PYTHON  python3 with numpy and torch (default: python3 or /usr/bin/python3, whichever imports torch)
#   KEEP=1  keep the working directory (trace, naive and epk arrays)
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work_prefix=epk-naive
# shellcheck source-path=SCRIPTDIR source=torch_env.sh
source "$here/torch_env.sh"

"$PYTHON" "$here/naive_kernel_example.py" --epk "$EPK" --out "$work/run" "$@"

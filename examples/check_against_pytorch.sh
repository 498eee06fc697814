#!/usr/bin/env bash
# check_against_pytorch.sh — train small networks in PyTorch (float64, plain
# SGD), hand each run to epk as a trace, and compare epk's outputs after the
# last step with torch's.
#
# For every configuration below, examples/pytorch_trace.py is run twice:
#   --record params  epk evaluates the network at the recorded final row of
#                    params.npy; agreement should be at roundoff (~1e-15);
#   --record init    epk replays the S SGD steps itself in double from
#                    init_params.npy; agreement is roundoff amplified by the
#                    training dynamics.
# `epk predict DIR --json` gives outputs_final (M x C); the script reports
#     max relative error = max|epk - torch| / max|torch|
# and fails (exit 1) if any float64 run exceeds TOL (default 1e-12).
# One float32 trace is also read through `epk predict` (must exit 0).
#
# usage: examples/check_against_pytorch.sh
# environment:
#   EPK     the epk binary (default ./build/epk, relative to the repository root)
#   PYTHON  python3 with numpy and torch (default: python3 or /usr/bin/python3, whichever imports torch)
#   TOL     tolerance for float64 runs (default 1e-12)
#   KEEP=1  keep the temporary trace directories
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work_prefix=epk-torch
# shellcheck source=torch_env.sh
source "$here/torch_env.sh"
TOL="${TOL:-1e-12}"

# name | pytorch_trace.py options
configs=(
    "tanh_full_ce_mean|--activation tanh --hidden 16,16 --loss cross_entropy --reduction mean --steps 60 --lr 0.1"
    "relu3_minibatch_ce_sum|--activation relu --hidden 16,16,16 --loss cross_entropy --reduction sum --batch-size 8 --steps 80 --lr 0.02"
    "gelu_mse_mean_perstep|--activation gelu --hidden 16,16 --loss mse --reduction mean --per-step-lr --steps 60 --lr 0.5"
    "gelu_mse_sum_random|--activation gelu --hidden 12 --loss mse --reduction sum --mse-targets random --batch-size 16 --steps 40 --lr 0.005"
    "sigmoid_full_ce_mean|--activation sigmoid --hidden 16,16 --loss cross_entropy --reduction mean --steps 60 --lr 0.5"
    "softplus_minibatch_ce_mean|--activation softplus --hidden 16,16 --loss cross_entropy --reduction mean --batch-size 16 --steps 60 --lr 0.1"
    "leaky_relu_full_mse_mean|--activation leaky_relu --negative-slope 0.1 --hidden 16,16 --loss mse --reduction mean --steps 60 --lr 0.3"
    "leaky_relu_default_ce_sum|--activation leaky_relu --hidden 16 --loss cross_entropy --reduction sum --batch-size 10 --steps 50 --lr 0.01 --per-step-lr"
    "identity_full_ce_mean|--activation identity --hidden 8,8 --loss cross_entropy --reduction mean --steps 60 --lr 0.05"
    "tanh_nobias_ce_mean|--activation tanh --hidden 16,16 --no-bias --loss cross_entropy --reduction mean --steps 60 --lr 0.2"
    "relu_nobias_mse_sum|--activation relu --hidden 16 --no-bias --loss mse --reduction sum --steps 40 --lr 0.002"
    "deep_relu_lr1|--activation relu --hidden 16,16,16,16 --loss cross_entropy --reduction mean --steps 60 --lr 1.0"
    "no_hidden_ce_mean|--hidden none --loss cross_entropy --reduction mean --steps 50 --lr 0.5"
    "no_x_test_tanh|--activation tanh --hidden 8 --n-test 0 --steps 30 --lr 0.1 --seed 3"
)

# Prints "max_rel_err max_abs_err path" comparing epk's JSON (file $1) with reference (file $2).
compare() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
import numpy as np
j = json.load(open(sys.argv[1]))
a = np.array(j["outputs_final"], dtype=np.float64)
b = np.load(sys.argv[2])
if a.shape != b.shape:
    print("shape-mismatch %s %s %s" % (a.shape, b.shape, j.get("path")))
    sys.exit(0)
d = np.max(np.abs(a - b))
print("%.3e %.3e %s" % (d / np.max(np.abs(b)), d, j.get("path")))
EOF
}

fail=0
printf '%-30s %-7s %-9s %12s %12s  %s\n' "configuration" "record" "path" "max rel err" "max abs err" "status"
for entry in "${configs[@]}"; do
    name="${entry%%|*}"
    opts="${entry#*|}"
    for record in params init; do
        dir="$work/$name-$record"
        # shellcheck disable=SC2086
        if ! "$PYTHON" "$GEN" --out "$dir" --record "$record" $opts >"$dir.gen.log" 2>&1; then
            printf '%-30s %-7s %s\n' "$name" "$record" "pytorch_trace.py FAILED:"; sed 's/^/    /' "$dir.gen.log"
            fail=1; continue
        fi
        if ! "$EPK" predict "$dir" --json >"$dir.json" 2>"$dir.err"; then
            printf '%-30s %-7s %s\n' "$name" "$record" "epk predict REJECTED the trace:"; sed 's/^/    /' "$dir.err"
            fail=1; continue
        fi
        read -r rel abs path < <(compare "$dir.json" "$dir/reference_outputs.npy")
        status=ok
        if [[ "$rel" == shape-mismatch ]]; then
            status="FAIL (output shape mismatch: $abs $path)"; fail=1
        elif ! awk -v r="$rel" -v t="$TOL" 'BEGIN { exit !(r <= t) }'; then
            status="FAIL (> $TOL)"; fail=1
        fi
        printf '%-30s %-7s %-9s %12s %12s  %s\n' "$name" "$record" "$path" "$rel" "$abs" "$status"
    done
done

# float32: trained in float32, <f4 inputs and parameters; epk must read it.
for record in params init; do
    dir="$work/float32-$record"
    if "$PYTHON" "$GEN" --out "$dir" --dtype float32 --record "$record" --activation tanh --hidden 16 \
        --batch-size 8 --steps 30 --lr 0.1 >"$dir.gen.log" 2>&1 &&
        "$EPK" predict "$dir" --json >"$dir.json" 2>"$dir.err"; then
        read -r rel abs path < <(compare "$dir.json" "$dir/reference_outputs.npy")
        printf '%-30s %-7s %-9s %12s %12s  %s\n' "float32_tanh_minibatch" "$record" "$path" "$rel" "$abs" \
            "ok (read; float32 vs double evaluation, informational)"
    else
        printf '%-30s %-7s %s\n' "float32_tanh_minibatch" "$record" "FAILED:"
        sed 's/^/    /' "$dir.gen.log" "$dir.err" 2>/dev/null
        fail=1
    fi
done

if [[ $fail -ne 0 ]]; then
    echo "FAILED: at least one configuration disagrees with PyTorch beyond $TOL or was rejected"
    exit 1
fi
echo "all configurations agree with PyTorch within $TOL"

#!/usr/bin/env bash
# check_compare_against_pytorch.sh — check epk compare's approximate kernel
# reconstructions (tangent_per_step, ntk_init, linearized) against an
# independent float64 PyTorch computation (examples/independent_compare.py).
#
# For every configuration below:
#   1. examples/pytorch_trace.py trains a small torch.nn.Sequential with plain
#      SGD and writes a trace (record params: the recorded path; record init:
#      init_params.npy only, so both sides replay SGD themselves);
#   2. `epk compare DIR --json --methods tangent_per_step,ntk_init,linearized`
#      reports each method's reconstruction [M, C] and error_max_abs;
#   3. examples/independent_compare.py recomputes the three reconstructions
#      without epk (JVPs / VJPs by torch autograd, float64):
#        tangent_per_step  f0 + sum_s J(X; w_s) (-eta_s grad L_s(w_s))
#        ntk_init          f0 + J(X; w_0) sum_s sum_i J(x_i; w_0)^T a_{i,s},
#                          a_{i,s} = -eta_s dL_s/df(x_i; w_s) on the true path
#        linearized        f(X; w_0) + J(X; w_0)(w_lin,S - w_0), SGD on the
#                          model linearised at w_0 with the same batches and rates
# Checks (exit 1 if any fails):
#   tangent, ntk, lin   max|epk - independent| / max(1, max|independent|) <= TOL (1e-10)
# Informational columns: out (the same for outputs_final = f(X; w_S): a replayed
# path carries both sides' own rounding), the methods' own error_max_abs as epk
# reports it (e_tan, e_ntk, e_lin), and the wall time of epk compare and of the
# independent script.
#
# usage: examples/check_compare_against_pytorch.sh
# environment:
#   EPK     the epk binary (default ./build/epk, relative to the repository root)
#   PYTHON  python3 with numpy and torch (default: python3 or /usr/bin/python3, whichever imports torch)
#   TOL     tolerance (default 1e-10)
#   KEEP=1  keep the temporary directories
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
work_prefix=epk-compare
# shellcheck source=torch_env.sh
source "$here/torch_env.sh"
TOL="${TOL:-1e-10}"
GEN="$here/pytorch_trace.py"
INDEP="$here/independent_compare.py"
METHODS=tangent_per_step,ntk_init,linearized

# name | record | (unused: kernel steps of check_kernel_against_pytorch.sh) | pytorch_trace.py options
# (the same list as check_kernel_against_pytorch.sh)
configs=(
    "tanh_full_ce_mean|params|0,14,29|--activation tanh --hidden 16,16 --loss cross_entropy --reduction mean --steps 30 --lr 0.5 --n-train 48 --n-test 4 --seed 1"
    "tanh_full_ce_mean|init|0,14,29|--activation tanh --hidden 16,16 --loss cross_entropy --reduction mean --steps 30 --lr 0.5 --n-train 48 --n-test 4 --seed 1"
    "sigmoid_mb_mse_sum_perstep|init|0,15,29|--activation sigmoid --hidden 12 --loss mse --reduction sum --batch-size 8 --per-step-lr --steps 30 --lr 0.03 --n-train 32 --n-test 4 --seed 2"
    "softplus_full_ce_sum|params|0,24|--activation softplus --hidden 16 --loss cross_entropy --reduction sum --steps 25 --lr 0.02 --n-train 40 --n-test 4 --input-dim 6 --seed 3"
    "gelu_mb_mse_mean_random|params|0,20,39|--activation gelu --hidden 16,16 --loss mse --reduction mean --mse-targets random --batch-size 16 --steps 40 --lr 0.5 --n-train 64 --n-test 4 --seed 4"
    "gelu_mb_mse_mean_random|init|0,20,39|--activation gelu --hidden 16,16 --loss mse --reduction mean --mse-targets random --batch-size 16 --steps 40 --lr 0.5 --n-train 64 --n-test 4 --seed 4"
    "relu_full_ce_mean|params|0,20,39|--activation relu --hidden 16,16 --loss cross_entropy --reduction mean --steps 40 --lr 0.5 --n-train 64 --n-test 5 --seed 5"
    "relu_mb_mse_sum|init|0,20,39|--activation relu --hidden 16 --loss mse --reduction sum --batch-size 8 --steps 40 --lr 0.01 --n-train 48 --n-test 4 --seed 6"
    "deep_relu_full_lr1.5|params|0,3,20,39|--activation relu --hidden 16,16,16 --loss cross_entropy --reduction mean --steps 40 --lr 1.5 --n-train 64 --n-test 5 --input-dim 8"
    "deep_relu_mb_lr1.5|params|0,3,20,39|--activation relu --hidden 16,16,16 --loss cross_entropy --reduction mean --batch-size 16 --steps 40 --lr 1.5 --n-train 64 --n-test 5 --input-dim 8"
    "deep_relu_mb_lr1.5|init|0,3,20,39|--activation relu --hidden 16,16,16 --loss cross_entropy --reduction mean --batch-size 16 --steps 40 --lr 1.5 --n-train 64 --n-test 5 --input-dim 8"
    "leaky_mb_ce_sum_perstep|params|0,15,29|--activation leaky_relu --negative-slope 0.1 --hidden 16,16 --loss cross_entropy --reduction sum --batch-size 10 --per-step-lr --steps 30 --lr 0.05 --n-train 40 --n-test 4 --seed 7"
    "leaky_mb_ce_sum_perstep|init|0,15,29|--activation leaky_relu --negative-slope 0.1 --hidden 16,16 --loss cross_entropy --reduction sum --batch-size 10 --per-step-lr --steps 30 --lr 0.05 --n-train 40 --n-test 4 --seed 7"
    "leaky_full_mse_mean_perstep|init|0,29|--activation leaky_relu --hidden 16,16 --loss mse --reduction mean --per-step-lr --steps 30 --lr 0.5 --n-train 32 --n-test 4 --seed 8"
    "identity_full_mse_mean|params|0,19|--activation identity --hidden 8,8 --loss mse --reduction mean --steps 20 --lr 0.1 --n-train 32 --n-test 4 --seed 9"
    "relu_nobias_no_x_test|params|0,19|--activation relu --hidden 12 --no-bias --loss cross_entropy --reduction mean --steps 20 --lr 0.2 --n-train 24 --n-test 0 --seed 10"
    "float32_tanh_mb|params|0,19|--dtype float32 --activation tanh --hidden 16 --batch-size 8 --steps 20 --lr 0.1 --n-train 32 --n-test 4 --seed 11"
)

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# Reads the epk and independent results of one configuration and prints a table
# row; exits 1 if a check fails.
compare() {
    "$PYTHON" - "$@" <<'EOF'
import json, os, sys
import numpy as np
name, record, epk_json, ind_json, trace, tol, times = sys.argv[1:]
tol = float(tol)
fails = []
def load_json(path, label):
    try:
        return json.load(open(path))
    except Exception as e:
        fails.append("%s: unreadable JSON (%s)" % (label, e)); return None
je, ji = load_json(epk_json, "epk compare"), load_json(ind_json, "independent")
float32 = np.load(os.path.join(trace, "x_train.npy")).dtype == np.float32
def fmt(v): return "%.1e" % v if v is not None and np.isfinite(v) else "n/a"
def rel(a, b, label, check=True):
    a, b = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    if a.shape != b.shape:
        fails.append("%s: shape %s (epk) vs %s (independent)" % (label, a.shape, b.shape)); return None
    e = float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b))))) if b.size else 0.0
    if check and not (e <= tol): fails.append("%s %.3e > %.0e" % (label, e, tol))
    return e
diffs, errs = [], []
for m, label in (("tangent_per_step", "tangent"), ("ntk_init", "ntk"), ("linearized", "lin")):
    d = e = None
    if je is not None and ji is not None:
        if m not in je.get("methods", {}):
            fails.append("%s: missing in epk's JSON" % m)
        elif m not in ji.get("methods", {}):
            fails.append("%s: missing in the independent JSON" % m)
        else:
            d = rel(je["methods"][m]["reconstruction"], ji["methods"][m]["reconstruction"], label)
            e = float(je["methods"][m]["error_max_abs"])
    diffs.append(d); errs.append(e)
out = None
if je is not None and ji is not None:
    out = rel(je["outputs_final"], ji["outputs_final"], "out", check=False)
status = "ok" if not fails else "FAIL: " + "; ".join(fails)
t = times.split(",")
print("%-28s %-6s %8s %8s %8s %8s  %8s %8s %8s  %5s %5s  %s" % (
    name + ("*" if float32 else ""), record, fmt(diffs[0]), fmt(diffs[1]), fmt(diffs[2]), fmt(out),
    fmt(errs[0]), fmt(errs[1]), fmt(errs[2]), t[0], t[1], status))
sys.exit(1 if fails else 0)
EOF
}

fail=0
t_all=$(now)
echo "epk: $EPK   python: $PYTHON   tolerance: $TOL (max|epk - indep| / max(1, max|indep|))"
printf '%-28s %-6s %8s %8s %8s %8s  %8s %8s %8s  %5s %5s  %s\n' \
    "configuration" "record" "tangent" "ntk" "lin" "out" "e_tan" "e_ntk" "e_lin" "t_epk" "t_ind" "status"
for entry in "${configs[@]}"; do
    IFS='|' read -r name record _steps opts <<<"$entry"
    dir="$work/$name-$record"
    # shellcheck disable=SC2086
    if ! "$PYTHON" "$GEN" --out "$dir" --record "$record" $opts >"$dir.gen.log" 2>&1; then
        printf '%-28s %-6s %s\n' "$name" "$record" "pytorch_trace.py FAILED:"; sed 's/^/    /' "$dir.gen.log"
        fail=1; continue
    fi
    t0=$(now); "$EPK" compare "$dir" --json --methods "$METHODS" >"$dir.epk.json" 2>"$dir.epk.err"; rc_e=$?
    t1=$(now); "$PYTHON" "$INDEP" "$dir" --out "$dir.indep.json" >/dev/null 2>"$dir.indep.log"; rc_i=$?
    t2=$(now)
    for pair in "epk-compare:$rc_e:$dir.epk.err" "independent:$rc_i:$dir.indep.log"; do
        IFS=: read -r what rc log <<<"$pair"
        if [[ "$rc" -ne 0 ]]; then
            echo "  note: $name/$record: $what exited $rc"; tail -n 5 "$log" | sed 's/^/    /'
        fi
    done
    times="$(elapsed "$t0" "$t1"),$(elapsed "$t1" "$t2")"
    if ! compare "$name" "$record" "$dir.epk.json" "$dir.indep.json" "$dir" "$TOL" "$times"; then
        fail=1
    fi
done
echo
echo "columns: tangent, ntk, lin = max|epk - independent| / max(1, max|independent|) of the tangent_per_step,"
echo "  ntk_init and linearized reconstructions (checked against $TOL); out = the same for outputs_final"
echo "  (informational); e_tan, e_ntk, e_lin = epk's error_max_abs of each method (max|reconstruction -"
echo "  f(x; w_S)|, informational); t_epk, t_ind = seconds for epk compare and independent_compare.py;"
echo "  * = float32 trace (its float32 values are taken exactly into float64 on both sides)"
echo "total $(elapsed "$t_all" "$(now)") s"
if [[ $fail -ne 0 ]]; then
    echo "FAILED: at least one check failed (see the status column)"
    exit 1
fi
echo "all configurations pass"

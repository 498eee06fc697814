#!/usr/bin/env bash
# check_compare_against_pytorch.sh — check epk compare's approximate kernel
# reconstructions (tangent_per_step, ntk_init, linearized) against an
# independent float64 PyTorch computation (examples/independent_compare.py).
#
# For every configuration of examples/pytorch_configs.sh (the same list as
# check_kernel_against_pytorch.sh's; its kernel steps are not used here):
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
work_prefix=epk-compare
# shellcheck source=torch_env.sh
source "$here/torch_env.sh"
# shellcheck source=pytorch_configs.sh
source "$here/pytorch_configs.sh"
TOL="${TOL:-1e-10}"
INDEP="$here/independent_compare.py"
METHODS=tangent_per_step,ntk_init,linearized

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

echo "epk: $EPK   python: $PYTHON   tolerance: $TOL (max|epk - indep| / max(1, max|indep|))"
printf '%-28s %-6s %8s %8s %8s %8s  %8s %8s %8s  %5s %5s  %s\n' \
    "configuration" "record" "tangent" "ntk" "lin" "out" "e_tan" "e_ntk" "e_lin" "t_epk" "t_ind" "status"
for entry in "${configs[@]}"; do
    generate "$entry" || continue
    t0=$(now); "$EPK" compare "$dir" --json --methods "$METHODS" >"$dir.epk.json" 2>"$dir.epk.err"; rc_e=$?
    t1=$(now); "$PYTHON" "$INDEP" "$dir" --out "$dir.indep.json" >/dev/null 2>"$dir.indep.log"; rc_i=$?
    t2=$(now)
    note_exits "$name/$record" "epk-compare:$rc_e:$dir.epk.err" "independent:$rc_i:$dir.indep.log"
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
finish

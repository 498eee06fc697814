#!/usr/bin/env bash
# check_kernel_against_pytorch.sh — check epk's exact path kernel against an
# independent float64 PyTorch computation (examples/independent_kernel.py).
#
# For every configuration of examples/pytorch_configs.sh (shared with
# check_compare_against_pytorch.sh; an entry's kernel steps are LIST in 3.):
#   1. examples/pytorch_trace.py trains a small torch.nn.Sequential with plain
#      SGD (float64) and writes a trace plus reference_outputs.npy;
#   2. `epk verify DIR --json` (double) and `epk verify DIR --json --precision
#      mpfr:256` report residual_max_abs = max |f(x; w[S]) - reconstruction|,
#      ok, and outputs_final;
#   3. `epk kernel DIR --out OUT --steps LIST` writes bias.npy, contributions.npy,
#      remainder.npy and kernel_step_<s>.npy;
#   4. examples/independent_kernel.py recomputes the same arrays without epk
#      (own breakpoint search by sampling + bisection for relu / leaky_relu,
#      Gauss-Legendre on each piece; composite Gauss-Legendre for smooth nets).
# Checks (each printed; exit 1 if any fails):
#   res_dbl   epk verify (double)   residual_max_abs <= TOL_RES_DBL  (1e-13) and ok
#   res_mpfr  epk verify (mpfr:256) residual_max_abs <= TOL_RES_MPFR (1e-70) and ok
#   out       max|outputs_final(double) - reference_outputs| / max|reference| <= TOL_OUT (1e-12)
#             (float32 traces: informational, torch evaluated the net in float32)
#   K         max over listed steps of max|K_epk - K_indep| / max(1, max|K_indep|) <= TOL_K (1e-10)
#   contrib   the same for contributions.npy                                      <= TOL_K
#   bias, rem the same for bias.npy and remainder.npy (extra checks)              <= TOL_K
# Informational columns: out_mp (mpfr:256 outputs_final vs torch; a replayed
# path differs by torch's own accumulated rounding), kinks (breakpoints summed
# over test points and steps: epk / independent), ftc (independent self-check:
# max over steps and points of |int J dt . dw - (f(w[s+1]) - f(w[s]))|), and the
# wall time of every epk call and of the independent script.
#
# usage: examples/check_kernel_against_pytorch.sh
# environment:
#   EPK     the epk binary (default ./build/epk, relative to the repository root)
#   PYTHON  python3 with numpy and torch (default: python3 or /usr/bin/python3, whichever imports torch)
#   TOL_RES_DBL, TOL_RES_MPFR, TOL_OUT, TOL_K   tolerances (defaults above)
#   KEEP=1  keep the temporary directories
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work_prefix=epk-kernel
# shellcheck source=torch_env.sh
source "$here/torch_env.sh"
# shellcheck source=pytorch_configs.sh
source "$here/pytorch_configs.sh"
TOL_RES_DBL="${TOL_RES_DBL:-1e-13}"
TOL_RES_MPFR="${TOL_RES_MPFR:-1e-70}"
TOL_OUT="${TOL_OUT:-1e-12}"
TOL_K="${TOL_K:-1e-10}"
INDEP="$here/independent_kernel.py"

# Reads the epk and independent results of one configuration and prints a table
# row; exits 1 if a check fails.
compare() {
    "$PYTHON" - "$@" <<'EOF'
import json, os, sys
import numpy as np
(name, record, dbl_json, mp_json, epk_dir, ind_dir, trace, steps,
 tol_res_dbl, tol_res_mp, tol_out, tol_k, times) = sys.argv[1:]
tol_res_dbl, tol_res_mp, tol_out, tol_k = map(float, (tol_res_dbl, tol_res_mp, tol_out, tol_k))
fails = []
def load_json(path, label):
    try:
        return json.load(open(path))
    except Exception as e:
        fails.append("%s: unreadable JSON (%s)" % (label, e)); return None
jd, jm = load_json(dbl_json, "verify double"), load_json(mp_json, "verify mpfr:256")
float32 = np.load(os.path.join(trace, "x_train.npy")).dtype == np.float32
ref = np.load(os.path.join(trace, "reference_outputs.npy"))
def fmt(v): return "%.1e" % v if v is not None and np.isfinite(v) else "n/a"
res_d = res_m = out_d = out_m = None
if jd is not None:
    res_d = float(jd["residual_max_abs"])
    if not (res_d <= tol_res_dbl): fails.append("res_dbl %.3e > %.0e" % (res_d, tol_res_dbl))
    if jd["ok"] is not True: fails.append("verify double: ok = %s" % jd["ok"])
    o = np.array(jd["outputs_final"], dtype=np.float64)
    out_d = float(np.max(np.abs(o - ref)) / np.max(np.abs(ref))) if o.shape == ref.shape else float("inf")
    if not float32 and not (out_d <= tol_out): fails.append("out %.3e > %.0e" % (out_d, tol_out))
if jm is not None:
    res_m = float(jm["residual_max_abs"])
    if not (res_m <= tol_res_mp): fails.append("res_mpfr %.3e > %.0e" % (res_m, tol_res_mp))
    if jm["ok"] is not True: fails.append("verify mpfr:256: ok = %s" % jm["ok"])
    o = np.array(jm["outputs_final"], dtype=np.float64)
    out_m = float(np.max(np.abs(o - ref)) / np.max(np.abs(ref))) if o.shape == ref.shape else float("inf")
def rel(fname, label):
    pe, pi = os.path.join(epk_dir, fname), os.path.join(ind_dir, fname)
    if not (os.path.exists(pe) and os.path.exists(pi)):
        fails.append("%s: missing %s" % (label, pe if not os.path.exists(pe) else pi)); return None
    a, b = np.load(pe), np.load(pi)
    if a.shape != b.shape:
        fails.append("%s: shape %s (epk) vs %s (independent)" % (label, a.shape, b.shape)); return None
    e = float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b))))) if b.size else 0.0
    if not (e <= tol_k): fails.append("%s %.3e > %.0e" % (label, e, tol_k))
    return e
k_err, k_worst = None, None
for s in steps.split(","):
    e = rel("kernel_step_%s.npy" % s, "K_%s" % s)
    if e is not None and (k_err is None or e > k_err): k_err, k_worst = e, s
c_err = rel("contributions.npy", "contrib")
b_err = rel("bias.npy", "bias")
r_err = rel("remainder.npy", "rem")
summ = json.load(open(os.path.join(ind_dir, "summary.json"))) if os.path.exists(os.path.join(ind_dir, "summary.json")) else {}
kinks = "%s/%s" % (sum(jd["breakpoints"]) if jd else "?", summ.get("breakpoints_total", "?"))
status = "ok" if not fails else "FAIL: " + "; ".join(fails)
t = times.split(",")
print("%-28s %-6s %8s %8s %8s %8s %8s%-3s %8s %8s %8s %11s %8s  %5s %6s %5s %5s  %s" % (
    name, record, fmt(res_d), fmt(res_m), fmt(out_d) + ("*" if float32 else ""), fmt(out_m), fmt(k_err),
    ("@" + k_worst) if k_worst else "", fmt(c_err), fmt(b_err), fmt(r_err), kinks, fmt(summ.get("ftc_max_abs")),
    t[0], t[1], t[2], t[3], status))
sys.exit(1 if fails else 0)
EOF
}

echo "epk: $EPK   python: $PYTHON   tolerances: res_dbl $TOL_RES_DBL, res_mpfr $TOL_RES_MPFR, out $TOL_OUT, K/contrib/bias/rem $TOL_K (relative to max(1, max|indep|))"
printf '%-28s %-6s %8s %8s %8s %8s %11s %8s %8s %8s %11s %8s  %5s %6s %5s %5s  %s\n' \
    "configuration" "record" "res_dbl" "res_mpfr" "out" "out_mp" "K(@step)" "contrib" "bias" "rem" \
    "kinks e/i" "ftc" "t_vd" "t_vmp" "t_k" "t_ind" "status"
for entry in "${configs[@]}"; do
    generate "$entry" || continue
    t0=$(now); "$EPK" verify "$dir" --json >"$dir.dbl.json" 2>"$dir.dbl.err"; rc_d=$?
    t1=$(now); "$EPK" verify "$dir" --json --precision mpfr:256 >"$dir.mp.json" 2>"$dir.mp.err"; rc_m=$?
    t2=$(now); "$EPK" kernel "$dir" --out "$dir.epk" --steps "$steps" >"$dir.kernel.log" 2>&1; rc_k=$?
    t3=$(now); "$PYTHON" "$INDEP" "$dir" --out "$dir.indep" --steps "$steps" >"$dir.indep.log" 2>&1; rc_i=$?
    t4=$(now)
    note_exits "$name/$record" "verify-double:$rc_d:$dir.dbl.err" "verify-mpfr:$rc_m:$dir.mp.err" \
        "kernel:$rc_k:$dir.kernel.log" "independent:$rc_i:$dir.indep.log"
    times="$(elapsed "$t0" "$t1"),$(elapsed "$t1" "$t2"),$(elapsed "$t2" "$t3"),$(elapsed "$t3" "$t4")"
    if ! compare "$name" "$record" "$dir.dbl.json" "$dir.mp.json" "$dir.epk" "$dir.indep" "$dir" "$steps" \
        "$TOL_RES_DBL" "$TOL_RES_MPFR" "$TOL_OUT" "$TOL_K" "$times"; then
        fail=1
    fi
done
echo
echo "columns: res_* = epk verify residual_max_abs; out = max|epk outputs_final - torch|/max|torch| (* = float32 trace,"
echo "  informational); K, contrib, bias, rem = max|epk - independent|/max(1, max|independent|); kinks = breakpoints"
echo "  epk/independent; ftc = independent self-check; t_vd, t_vmp, t_k, t_ind = seconds for epk verify (double),"
echo "  epk verify (mpfr:256), epk kernel, independent_kernel.py"
finish

#!/usr/bin/env bash
# check_layer_kernels_against_pytorch.sh — check epk's exact path kernel of CNNs,
# ResNets and a pre-norm MLP (trace format version 3) against an independent
# float64 PyTorch computation (examples/independent_kernel.py).
#
# The networks are the model files in examples/models/ with the plain-SGD float64
# configurations of examples/check_layers_against_pytorch.sh, made smaller (10
# steps, 4 test points) so that the whole script runs in about a minute, plus a
# plain-SGD run of the tanh ResNet (whose check_layers configuration uses momentum).
# Left out: check_layers' momentum and AdamW configurations (independent_kernel.py
# computes the kernel of plain SGD only) and its float32 run. For every
# configuration:
#   1. examples/pytorch_trace.py --model FILE trains the network with plain SGD in
#      float64 and writes a trace with params.npy (recorded path) and
#      reference_outputs.npy;
#   2. `epk verify DIR --json` (double) and, for the configurations marked mpfr,
#      `epk verify DIR --json --precision mpfr:256` report ok and
#      residual_max_abs = max |f(x; w[S]) - reconstruction|;
#   3. `epk kernel DIR --out OUT --steps LIST` writes bias.npy, contributions.npy,
#      remainder.npy and kernel_step_<s>.npy;
#   4. examples/independent_kernel.py recomputes the same arrays without epk: the
#      torch modules pytorch_trace.py builds from the manifest, J(x; w) by
#      functorch vmap(jacrev) in float64, pattern changes (relu signs, max-pool
#      argmax; POOL_PATTERN=pairs: the order of every pair in a pool window) by
#      dense sampling and bisection, Gauss-Legendre on every piece (composite
#      Gauss-Legendre 8 x 16 for the smooth nets).
# Checks (each printed; exit 1 if any fails):
#   res_dbl   epk verify (double)   ok and residual_max_abs <= TOL_RES_DBL  (1e-12)
#   res_mpfr  epk verify (mpfr:256) ok and residual_max_abs <= TOL_RES_MPFR (1e-70)  (mpfr configurations)
#   out       max|outputs_final (verify, double) - torch| / max|torch| <= TOL_OUT (1e-12)
#   K         max over listed steps of max|K_epk - K_indep| / max|K_indep|      <= TOL_K (1e-10)
#   contrib   max|c_epk - c_indep| / max|c_indep|  (contributions.npy)          <= TOL_K
#   bias      max|bias_epk - bias_indep| / max|bias_indep|                      <= TOL_K
#   rem       max|rem_epk - rem_indep| / max|f(x; w[S])|  (the remainder is ~1e-17) <= TOL_K
# Informational: kinks (pattern changes summed over test points and steps,
# epk / independent: epk also cuts where two non-maximal entries of a pool window
# swap, where J does not change, and may count a change of two layers at the same t
# twice; POOL_PATTERN=pairs makes the independent side cut there too), ftc (the
# independent self-check max |int J dt . dw - (f(w[s+1]) - f(w[s]))|), and the wall
# time of every epk call and of the independent script.
#
# usage: examples/check_layer_kernels_against_pytorch.sh
# environment:
#   EPK     the epk binary (default ./build/epk, relative to the repository root)
#   PYTHON  python3 with numpy and torch (default: python3 or /usr/bin/python3, whichever imports torch)
#   TOL_RES_DBL, TOL_RES_MPFR, TOL_OUT, TOL_K   tolerances (defaults above)
#   POOL_PATTERN  argmax (default) or pairs: independent_kernel.py --pool-pattern
#   ONLY    run only the configurations whose name contains this string
#   KEEP=1  keep the temporary directories
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work_prefix=epk-layer-kernels
# shellcheck source=torch_env.sh
source "$here/torch_env.sh"
TOL_RES_DBL="${TOL_RES_DBL:-1e-12}"
TOL_RES_MPFR="${TOL_RES_MPFR:-1e-70}"
TOL_OUT="${TOL_OUT:-1e-12}"
TOL_K="${TOL_K:-1e-10}"
POOL_PATTERN="${POOL_PATTERN:-argmax}"
ONLY="${ONLY:-}"
INDEP="$here/independent_kernel.py"
models="$here/models"

# name | model file (examples/models/) | mpfr (verify at mpfr:256 too) | kernel steps | pytorch_trace.py options
configs=(
    "cnn_relu_maxpool_digits_sgd|cnn_relu_maxpool.json|mpfr|0,5,9|--data digits --input-shape 1,8,8 --loss cross_entropy --reduction mean --steps 10 --lr 0.2 --n-train 32 --n-test 4"
    "prenorm_mlp_mse_sum|prenorm_mlp.json|-|0,9|--input-shape 16 --loss mse --reduction sum --steps 10 --lr 0.002 --n-train 32 --n-test 4 --seed 2"
    "resnet_relu_maxpool_torchnames|resnet_relu_maxpool.json|-|0,9|--input-shape 2,8,8 --manifest-layers torch --loss cross_entropy --reduction mean --batch-size 16 --per-step-lr --steps 10 --lr 0.1 --n-train 32 --n-test 4 --seed 3"
    "resnet_relu_maxpool_digits_sgd|resnet_relu_maxpool.json|-|0,9|--data digits --loss cross_entropy --reduction sum --batch-size 16 --steps 10 --lr 0.01 --n-train 48 --n-test 4 --seed 4"
    "resnet_tanh_proj_sgd_mb|resnet_tanh_proj.json|-|0,9|--input-shape 1,8,8 --loss cross_entropy --reduction mean --batch-size 16 --steps 10 --lr 0.05 --n-train 32 --n-test 4 --seed 1"
)

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# Reads the epk and independent results of one configuration and prints a table
# row; exits 1 if a check fails.
compare() {
    "$PYTHON" - "$@" <<'EOF'
import json, os, sys
import numpy as np
(name, dbl_json, mp_json, epk_dir, ind_dir, trace, steps,
 tol_res_dbl, tol_res_mp, tol_out, tol_k, times) = sys.argv[1:]
tol_res_dbl, tol_res_mp, tol_out, tol_k = map(float, (tol_res_dbl, tol_res_mp, tol_out, tol_k))
fails = []
def load_json(path, label):
    try:
        return json.load(open(path))
    except Exception as e:
        fails.append("%s: unreadable JSON (%s)" % (label, e)); return None
jd = load_json(dbl_json, "verify double")
jm = load_json(mp_json, "verify mpfr:256") if mp_json != "-" else None
ref = np.load(os.path.join(trace, "reference_outputs.npy"))
def fmt(v): return "%.1e" % v if v is not None and np.isfinite(v) else "n/a"
res_d = res_m = out_d = None
if jd is not None:
    res_d = float(jd["residual_max_abs"])
    if not (res_d <= tol_res_dbl): fails.append("res_dbl %.3e > %.0e" % (res_d, tol_res_dbl))
    if jd["ok"] is not True: fails.append("verify double: ok = %s" % jd["ok"])
    o = np.array(jd["outputs_final"], dtype=np.float64)
    out_d = float(np.max(np.abs(o - ref)) / np.max(np.abs(ref))) if o.shape == ref.shape else float("inf")
    if not (out_d <= tol_out): fails.append("out %.3e > %.0e" % (out_d, tol_out))
if jm is not None:
    res_m = float(jm["residual_max_abs"])
    if not (res_m <= tol_res_mp): fails.append("res_mpfr %.3e > %.0e" % (res_m, tol_res_mp))
    if jm["ok"] is not True: fails.append("verify mpfr:256: ok = %s" % jm["ok"])
def load_pair(fname, label):
    pe, pi = os.path.join(epk_dir, fname), os.path.join(ind_dir, fname)
    if not (os.path.exists(pe) and os.path.exists(pi)):
        fails.append("%s: missing %s" % (label, pe if not os.path.exists(pe) else pi)); return None, None
    a, b = np.load(pe), np.load(pi)
    if a.shape != b.shape:
        fails.append("%s: shape %s (epk) vs %s (independent)" % (label, a.shape, b.shape)); return None, None
    return a, b
def rel(fname, label, scale=None):
    """max|epk - indep| / scale (default max|indep|)."""
    a, b = load_pair(fname, label)
    if a is None:
        return None
    s = float(np.max(np.abs(b))) if scale is None else scale
    d = float(np.max(np.abs(a - b))) if b.size else 0.0
    e = d / s if s > 0 else (0.0 if d == 0 else float("inf"))
    if not (e <= tol_k): fails.append("%s %.3e > %.0e" % (label, e, tol_k))
    return e
k_err, k_worst = None, None
for s in steps.split(","):
    e = rel("kernel_step_%s.npy" % s, "K_%s" % s)
    if e is not None and (k_err is None or e > k_err): k_err, k_worst = e, s
c_err = rel("contributions.npy", "contrib")
b_err = rel("bias.npy", "bias")
fin = os.path.join(ind_dir, "outputs_final.npy")
r_err = rel("remainder.npy", "rem", float(np.max(np.abs(np.load(fin)))) if os.path.exists(fin) else 1.0)
summ = json.load(open(os.path.join(ind_dir, "summary.json"))) if os.path.exists(os.path.join(ind_dir, "summary.json")) else {}
kinks = "%s/%s" % (sum(jd["breakpoints"]) if jd else "?", summ.get("breakpoints_total", "?"))
status = "ok" if not fails else "FAIL: " + "; ".join(fails)
t = times.split(",")
print("%-31s %8s %8s %8s %8s%-3s %8s %8s %8s %9s %8s  %5s %6s %5s %5s  %s" % (
    name, fmt(res_d), fmt(res_m), fmt(out_d), fmt(k_err), ("@" + k_worst) if k_worst else "", fmt(c_err),
    fmt(b_err), fmt(r_err), kinks, fmt(summ.get("ftc_max_abs")), t[0], t[1], t[2], t[3], status))
sys.exit(1 if fails else 0)
EOF
}

note_exits() {
    local label="$1" pair what rc log
    shift
    for pair in "$@"; do
        IFS=: read -r what rc log <<<"$pair"
        if [[ "$rc" -ne 0 ]]; then
            echo "  note: $label: $what exited $rc"; tail -n 5 "$log" | sed 's/^/    /'
        fi
    done
}

fail=0
t_all=$(now)
echo "epk: $EPK   python: $PYTHON   pool pattern: $POOL_PATTERN   tolerances: res_dbl $TOL_RES_DBL, res_mpfr $TOL_RES_MPFR, out $TOL_OUT, K/contrib/bias/rem $TOL_K"
printf '%-31s %8s %8s %8s %11s %8s %8s %8s %9s %8s  %5s %6s %5s %5s  %s\n' \
    "configuration" "res_dbl" "res_mpfr" "out" "K(@step)" "contrib" "bias" "rem" "kinks e/i" "ftc" \
    "t_vd" "t_vmp" "t_k" "t_ind" "status"
for entry in "${configs[@]}"; do
    IFS='|' read -r name model mpfr steps opts <<<"$entry"
    [[ -n "$ONLY" && "$name" != *"$ONLY"* ]] && continue
    dir="$work/$name"
    # shellcheck disable=SC2086  # opts is a list of options
    if ! "$PYTHON" "$GEN" --out "$dir" --record params --model "$models/$model" $opts >"$dir.gen.log" 2>&1; then
        printf '%-31s %s\n' "$name" "pytorch_trace.py FAILED:"; sed 's/^/    /' "$dir.gen.log"
        fail=1; continue
    fi
    t0=$(now); "$EPK" verify "$dir" --json >"$dir.dbl.json" 2>"$dir.dbl.err"; rc_d=$?
    t1=$(now); rc_m=0; mp_json=-
    if [[ "$mpfr" == mpfr ]]; then
        mp_json="$dir.mp.json"
        "$EPK" verify "$dir" --json --precision mpfr:256 >"$mp_json" 2>"$dir.mp.err"; rc_m=$?
    else
        : >"$dir.mp.err"
    fi
    t2=$(now); "$EPK" kernel "$dir" --out "$dir.epk" --steps "$steps" >"$dir.kernel.log" 2>&1; rc_k=$?
    t3=$(now); "$PYTHON" "$INDEP" "$dir" --out "$dir.indep" --steps "$steps" --pool-pattern "$POOL_PATTERN" \
        >"$dir.indep.log" 2>&1; rc_i=$?
    t4=$(now)
    note_exits "$name" "verify-double:$rc_d:$dir.dbl.err" "verify-mpfr:$rc_m:$dir.mp.err" \
        "kernel:$rc_k:$dir.kernel.log" "independent:$rc_i:$dir.indep.log"
    t_vmp="-"; [[ "$mpfr" == mpfr ]] && t_vmp="$(elapsed "$t1" "$t2")"
    times="$(elapsed "$t0" "$t1"),$t_vmp,$(elapsed "$t2" "$t3"),$(elapsed "$t3" "$t4")"
    if ! compare "$name" "$dir.dbl.json" "$mp_json" "$dir.epk" "$dir.indep" "$dir" "$steps" \
        "$TOL_RES_DBL" "$TOL_RES_MPFR" "$TOL_OUT" "$TOL_K" "$times"; then
        fail=1
    fi
done
echo
echo "columns: res_* = epk verify residual_max_abs (res_mpfr n/a: not run for that configuration); out ="
echo "  max|epk outputs_final - torch|/max|torch|; K, contrib, bias = max|epk - independent|/max|independent|;"
echo "  rem = max|epk - independent|/max|f(x; w[S])|; kinks = pattern changes epk/independent; ftc ="
echo "  independent self-check; t_vd, t_vmp, t_k, t_ind = seconds for epk verify (double), epk verify"
echo "  (mpfr:256), epk kernel, independent_kernel.py"
echo "total $(elapsed "$t_all" "$(now)") s"
if [[ $fail -ne 0 ]]; then
    echo "FAILED: at least one check failed (see the status column)"
    exit 1
fi
echo "all configurations pass"

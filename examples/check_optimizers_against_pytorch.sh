#!/usr/bin/env bash
# check_optimizers_against_pytorch.sh — train small networks in PyTorch (float64)
# with torch.optim.SGD (momentum, dampening, nesterov, weight decay),
# torch.optim.Adam and torch.optim.AdamW (weight decay, amsgrad), including runs
# resumed from a recorded optimizer state, hand each run to epk as a trace of
# format version 2, and check epk against torch.
#
# For every configuration below, examples/pytorch_trace.py is run twice:
#   --record params  epk takes the recorded path params.npy as authoritative;
#   --record init    epk replays the S optimizer steps itself in double from
#                    init_params.npy (and the init_*.npy state of a resumed run).
# Checks (exit 1 if any fails):
#   residual  `epk verify DIR --json` exits 0 and its residual_max_abs
#             (max |f(x; w[S]) - reconstruction| over test points and outputs)
#             is <= TOL;
#   replay    `epk predict DIR --json`: max|outputs_final - torch| / max|torch| <= TOL
#             (torch = reference_outputs.npy, the torch model after the last step);
#   rem/u     recorded float64 paths only: verify's audit says every recorded step
#             is the optimizer's step to rounding (audit.at_rounding_level, i.e.
#             deviation_max_over_recording_u <= 32). Without this a recorded run
#             would pass the two checks above even if epk read the optimizer
#             wrongly, because the step remainder absorbs any difference;
#   indep     examples/independent_optimizer_replay.py (NumPy update rules written
#             from docs/trace-format.md, torch autograd gradients; neither epk nor
#             torch.optim) replays the trace: its final outputs vs torch's
#             <= TOL, and for recorded paths every recorded step is its update
#             to <= 32 u. A check of the trace writer: when it passes and epk
#             fails, the difference is epk's.
# One float32 trace (AdamW, trained in float32) is also read by verify and
# predict (both must exit 0; its numbers are informational).
#
# usage: examples/check_optimizers_against_pytorch.sh
# environment:
#   EPK     the epk binary (default ./build/epk, relative to the repository root)
#   PYTHON  python3 with numpy and torch (default: python3 or /usr/bin/python3, whichever imports torch)
#   TOL     tolerance for float64 runs (default 1e-12)
#   ONLY    run only the configurations whose name contains this string
#   KEEP=1  keep the temporary trace directories
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work_prefix=epk-optim
# shellcheck source=torch_env.sh
source "$here/torch_env.sh"
TOL="${TOL:-1e-12}"
ONLY="${ONLY:-}"
INDEP="$here/independent_optimizer_replay.py"

# name | pytorch_trace.py options  (N <= 64, widths <= 16, <= 40 steps). Names ending
# in _torchman write the manifest's optimizer as torch's param group (type "SGD"/"AdamW",
# lr, foreach, ...), _minman without the fields at their defaults (AdamW's weight decay
# 0.01 then comes from the reader); the others write every field by its canonical name.
sgd_nag="--optimizer sgd --momentum 0.9 --nesterov --weight-decay 1e-3"
configs=(
    "sgd_nesterov_tanh_full_ce|$sgd_nag --activation tanh --hidden 16,16 --loss cross_entropy --reduction mean --steps 40 --lr 0.1 --n-train 48 --n-test 4 --seed 1"
    "sgd_nesterov_relu_mb_mse_sum|$sgd_nag --activation relu --hidden 16 --loss mse --reduction sum --batch-size 8 --steps 40 --lr 0.002 --n-train 48 --n-test 4 --seed 2"
    "sgd_nesterov_gelu_mb_perstep|$sgd_nag --activation gelu --hidden 12,12 --loss cross_entropy --reduction mean --batch-size 16 --per-step-lr --steps 40 --lr 0.05 --n-train 64 --n-test 4 --seed 3"
    "sgd_nesterov_sigmoid_torchman|$sgd_nag --manifest-optimizer torch --activation sigmoid --hidden 16 --loss mse --reduction mean --steps 30 --lr 0.5 --n-train 32 --n-test 4 --seed 4"
    "sgd_momentum_damp_sigmoid_mb|--optimizer sgd --momentum 0.9 --dampening 0.5 --activation sigmoid --hidden 16,16 --loss cross_entropy --reduction sum --batch-size 10 --steps 40 --lr 0.05 --n-train 40 --n-test 4 --seed 5"
    "sgd_weight_decay_tanh_mb|--optimizer sgd --weight-decay 1e-2 --activation tanh --hidden 8 --loss cross_entropy --reduction mean --batch-size 16 --steps 40 --lr 0.3 --n-train 64 --n-test 4 --seed 6"
    "adam_tanh_full_ce|--optimizer adam --activation tanh --hidden 16,16 --loss cross_entropy --reduction mean --steps 40 --lr 0.01 --n-train 48 --n-test 4 --seed 7"
    "adam_wd_relu_mb_ce_sum|--optimizer adam --weight-decay 1e-2 --activation relu --hidden 16 --loss cross_entropy --reduction sum --batch-size 16 --steps 40 --lr 0.005 --n-train 64 --n-test 4 --seed 8"
    "adamw_default_gelu_full_mse_minman|--optimizer adamw --manifest-optimizer minimal --activation gelu --hidden 16 --loss mse --reduction mean --steps 40 --lr 0.01 --n-train 32 --n-test 4 --seed 9"
    "adamw_wd0.1_tanh_mb_torchman|--optimizer adamw --weight-decay 0.1 --manifest-optimizer torch --activation tanh --hidden 12,12 --loss cross_entropy --reduction mean --batch-size 8 --steps 40 --lr 0.02 --n-train 40 --n-test 4 --seed 10"
    "adamw_amsgrad_relu_mb_mse|--optimizer adamw --amsgrad --weight-decay 0.05 --activation relu --hidden 16,16 --loss mse --reduction mean --mse-targets random --batch-size 16 --steps 40 --lr 0.01 --n-train 64 --n-test 4 --seed 11"
    "resumed_sgd_nesterov_tanh_mb|$sgd_nag --resume-after 10 --activation tanh --hidden 16 --loss cross_entropy --reduction mean --batch-size 16 --steps 30 --lr 0.1 --n-train 48 --n-test 4 --seed 12"
    "resumed_adamw_gelu_full|--optimizer adamw --resume-after 10 --activation gelu --hidden 16,16 --loss cross_entropy --reduction mean --steps 30 --lr 0.01 --n-train 48 --n-test 4 --seed 13"
    "resumed_adam_amsgrad_sigmoid_mb|--optimizer adam --amsgrad --weight-decay 1e-3 --resume-after 15 --activation sigmoid --hidden 16 --loss mse --reduction sum --batch-size 8 --steps 25 --lr 0.02 --n-train 32 --n-test 4 --seed 14"
)
float32_opts="--dtype float32 --optimizer adamw --activation tanh --hidden 16 --loss cross_entropy --batch-size 8 --steps 20 --lr 0.01 --n-train 32 --n-test 4 --seed 15"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# Reads verify's, predict's and the independent replay's JSON of one trace and
# prints a table row; exits 1 if a check fails (with $7 = check, else informational).
row() {
    "$PYTHON" - "$@" <<'EOF'
import json, os, sys
import numpy as np
name, record, verify_json, predict_json, indep_json, trace, check, tol, seconds = sys.argv[1:]
tol, check = float(tol), check == "check"
fails = []
def load(path, label):
    try:
        with open(path) as fh:
            return json.load(fh)
    except Exception as e:
        fails.append("%s: no JSON (%s)" % (label, e.__class__.__name__))
        return None
fmt = lambda v, f="%.2e": "n/a" if v is None else f % v
jv, jp, ji = load(verify_json, "verify"), load(predict_json, "predict"), load(indep_json, "indep")
ref = np.load(os.path.join(trace, "reference_outputs.npy"))
float32 = np.load(os.path.join(trace, "x_train.npy")).dtype == np.float32
res = rem = rep = ind = one = None
if jv is not None:
    res = jv.get("residual_max_abs")
    if res is None:
        fails.append("verify: no residual_max_abs")
    elif not (float(res) <= tol):
        fails.append("residual %.2e > %g" % (res, tol))
    if not jv.get("ok", False):
        fails.append("verify: ok false")
    audit = jv.get("audit") or {}
    rem = audit.get("deviation_max_over_recording_u")
    if record == "params" and not float32:
        if rem is None:
            fails.append("verify: no audit.deviation_max_over_recording_u")
        elif not audit.get("at_rounding_level", False):
            fails.append("recorded steps are not the optimizer's (%.3g u_rec)" % rem)
if jp is not None:
    a = np.array(jp.get("outputs_final", []), dtype=np.float64)
    if a.shape != ref.shape:
        fails.append("predict: outputs_final shape %s vs torch %s" % (a.shape, ref.shape))
    else:
        rep = float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))
        if not (rep <= tol):
            fails.append("replay %.2e > %g" % (rep, tol))
if ji is not None:
    ind, one = ji.get("replay_vs_reference"), ji.get("one_step_max_over_u")
    if not float32 and ind is not None and not (ind <= tol):
        fails.append("independent replay vs torch %.2e > %g (the trace or torch)" % (ind, tol))
    if not float32 and one is not None and not (one <= 32):
        fails.append("independent one-step %.3g u > 32 (the trace does not describe the run)" % one)
if not check:
    fails = [f for f in fails if f.startswith(("verify: no JSON", "predict: no JSON"))]
status = ("ok" if check else "ok (read; informational)") if not fails else "FAIL: " + "; ".join(fails)
print("%-34s %-6s %9s %9s %9s %9s %7s %7s  %s" % (
    name, record, fmt(res), fmt(rep), fmt(rem, "%.2f"), fmt(ind), fmt(one, "%.2f"), seconds, status))
sys.exit(1 if fails else 0)
EOF
}

# Runs one trace through pytorch_trace.py, epk verify, epk predict and the
# independent replay, and prints its row. $1 name, $2 record, $3 check|info, $4 options.
run_one() {
    local name="$1" record="$2" check="$3" opts="$4" dir t0 t1 rc_v rc_p
    dir="$work/$name-$record"
    # shellcheck disable=SC2086  # opts is a list of options
    if ! "$PYTHON" "$GEN" --out "$dir" --record "$record" $opts >"$dir.gen.log" 2>&1; then
        printf '%-34s %-6s %s\n' "$name" "$record" "FAIL: pytorch_trace.py failed:"; sed 's/^/    /' "$dir.gen.log"
        fail=1; return
    fi
    t0=$(now)
    "$EPK" verify "$dir" --json >"$dir.verify.json" 2>"$dir.verify.err"; rc_v=$?
    "$EPK" predict "$dir" --json >"$dir.predict.json" 2>"$dir.predict.err"; rc_p=$?
    t1=$(now)
    "$PYTHON" "$INDEP" "$dir" --json "$dir.indep.json" >"$dir.indep.log" 2>&1 ||
        { echo "  note: $name/$record: independent_optimizer_replay.py failed"; tail -n 5 "$dir.indep.log" | sed 's/^/    /'; }
    if ! row "$name" "$record" "$dir.verify.json" "$dir.predict.json" "$dir.indep.json" "$dir" "$check" "$TOL" \
        "$(elapsed "$t0" "$t1")"; then
        fail=1
    fi
    # verify exits 1 when a residual is over its budget, 2 on a rejected trace: show why
    if [[ $rc_v -ne 0 ]]; then
        fail=1; echo "  FAIL: $name/$record: epk verify exited $rc_v"; tail -n 5 "$dir.verify.err" | sed 's/^/    /'
    fi
    if [[ $rc_p -ne 0 ]]; then
        fail=1; echo "  FAIL: $name/$record: epk predict exited $rc_p"; tail -n 5 "$dir.predict.err" | sed 's/^/    /'
    fi
}

fail=0
t_all=$(now)
echo "epk: $EPK   python: $PYTHON   tolerance: $TOL"
printf '%-34s %-6s %9s %9s %9s %9s %7s %7s  %s\n' \
    "configuration" "record" "residual" "replay" "rem/u" "indep" "1step/u" "seconds" "status"
for entry in "${configs[@]}"; do
    name="${entry%%|*}"
    [[ -n "$ONLY" && "$name" != *"$ONLY"* ]] && continue
    for record in params init; do
        run_one "$name" "$record" check "${entry#*|}"
    done
done
if [[ -z "$ONLY" || "float32_adamw_tanh_mb" == *"$ONLY"* ]]; then
    for record in params init; do
        run_one "float32_adamw_tanh_mb" "$record" info "$float32_opts"
    done
fi
echo
echo "columns: residual = epk verify's residual_max_abs (checked <= $TOL); replay = epk predict's outputs_final"
echo "  vs torch's, max|epk - torch| / max|torch| (checked <= $TOL; 'params' evaluates the recorded final"
echo "  row, 'init' replays the optimizer in double); rem/u = verify's audit deviation_max_over_recording_u"
echo "  (recorded float64 paths: checked at_rounding_level, <= 32); indep = the NumPy replay of"
echo "  independent_optimizer_replay.py vs torch (checked <= $TOL) and 1step/u its largest one-step"
echo "  difference from the recorded path in units of u (checked <= 32); seconds = epk verify + predict."
echo "  float32_*: trained in float32 by torch; read by epk (exit 0), numbers informational."
echo "total $(elapsed "$t_all" "$(now)") s"
if [[ $fail -ne 0 ]]; then
    echo "FAILED: at least one check failed (see the status column and the notes)"
    exit 1
fi
echo "all optimizer configurations agree with PyTorch within $TOL"

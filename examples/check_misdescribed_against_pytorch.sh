#!/usr/bin/env bash
# check_misdescribed_against_pytorch.sh — epk as a CI oracle: PyTorch runs whose trace
# does not describe the training must fail, their faithful twins must pass.
#
# For every configuration, examples/pytorch_trace.py trains the same network twice with
# torch.optim (same data, initialisation and batches): once faithfully, once with
# --misdescribe KIND, whose trace leaves out what the training did:
#   clip      clip_grad_norm_ to half the first step's gradient norm, on every step
#   schedule  ExponentialLR(gamma 0.9) stepped after every step; the trace says constant
#   dropout   Dropout(0.2) after the first activation, in training mode; not in the manifest
#   skip      a residual block's identity skip connection dropped from the manifest
# Checks (each printed; exit 1 if any fails):
#   faithful   epk verify, predict, kernel and check --against predictions.npy exit 0
#   misdesc.   each exits 1 with one line on stderr naming the step
#              ("...: the recorded path is not the declared training: step N ..."),
#              kernel writes nothing, and check fails — for clip and schedule although
#              torch's outputs match epk's f(x; w_S) (the arrays agree; the path is wrong)
#   allowed    verify --allow-unexplained-steps exits 0 on the misdescribed trace
# Informational: the audit's units (faithful / misdescribed) and the worst step.
#
# usage: examples/check_misdescribed_against_pytorch.sh
# environment: EPK, PYTHON (as the other check_*_against_pytorch.sh), ONLY, KEEP=1
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work_prefix=epk-misdescribed
# shellcheck source=torch_env.sh
source "$here/torch_env.sh"
ONLY="${ONLY:-}"
models="$here/models"

# name | misdescription | pytorch_trace.py options
configs=(
    "mlp_tanh_f64_clip|clip|--activation tanh --hidden 16 --steps 8 --lr 0.5 --n-train 32 --n-test 4 --seed 1"
    "mlp_relu_f32_clip|clip|--dtype float32 --activation relu --hidden 16,16 --batch-size 8 --steps 8 --lr 0.5 --n-train 32 --n-test 4 --seed 2"
    "mlp_tanh_f64_schedule|schedule|--activation tanh --hidden 16 --steps 8 --lr 0.5 --n-train 32 --n-test 4 --seed 3"
    "mlp_gelu_f32_schedule_adamw|schedule|--dtype float32 --activation gelu --hidden 16 --optimizer adamw --steps 8 --lr 0.01 --n-train 32 --n-test 4 --seed 4"
    "mlp_relu_f64_dropout|dropout|--activation relu --hidden 16 --steps 8 --lr 0.5 --n-train 32 --n-test 4 --seed 5"
    "mlp_tanh_f32_dropout_momentum|dropout|--dtype float32 --activation tanh --hidden 16 --momentum 0.9 --batch-size 8 --steps 8 --lr 0.1 --n-train 32 --n-test 4 --seed 6"
    "resnet_relu_f64_skip|skip|--model $models/resnet_relu_maxpool.json --data digits --input-shape 1,8,8 --steps 6 --lr 0.1 --n-train 32 --n-test 4 --seed 7"
    "resnet_relu_f32_skip_torchnames|skip|--model $models/resnet_relu_maxpool.json --manifest-layers torch --dtype float32 --input-shape 2,8,8 --batch-size 8 --steps 6 --lr 0.1 --n-train 32 --n-test 4 --seed 8"
)

fails=0
say() { printf '%s\n' "$*"; }
bad() { say "  FAIL $*"; fails=$((fails + 1)); }
units() { "$PYTHON" -c 'import json,sys; a=json.load(open(sys.argv[1]))["audit"]; print("%.3g (step %d)" % (a["deviation_max_over_recording_u"], a["worst_step"]))' "$1" 2>/dev/null || echo "?"; }
# one line on stderr (progress lines start with two spaces) naming the step
one_line() { [ "$(grep -vc '^  ' "$1")" -eq 1 ] && grep -v '^  ' "$1" | grep -q "is not the declared training: step [0-9]"; }

for cfg in "${configs[@]}"; do
    IFS='|' read -r name kind opts <<<"$cfg"
    [[ -n "$ONLY" && "$name" != *"$ONLY"* ]] && continue
    say "== $name ($kind)"
    good="$work/$name.good" mis="$work/$name.mis"
    # shellcheck disable=SC2086
    if ! "$PYTHON" "$GEN" --out "$good" $opts >"$work/gen.log" 2>&1 ||
        ! "$PYTHON" "$GEN" --out "$mis" $opts --misdescribe "$kind" >>"$work/gen.log" 2>&1; then
        bad "$name: pytorch_trace.py failed: $(tail -n 1 "$work/gen.log")"
        continue
    fi
    cp "$good/reference_outputs.npy" "$good/predictions.npy"
    cp "$mis/reference_outputs.npy" "$mis/predictions.npy"
    # faithful: everything exits 0
    "$EPK" verify "$good" --json >"$work/good.json" 2>"$work/err"; rc=$?
    [ $rc -eq 0 ] || bad "$name faithful: verify exit $rc: $(grep -v '^  ' "$work/err" | head -c 300)"
    "$EPK" predict "$good" >/dev/null 2>"$work/err"; rc=$?
    [ $rc -eq 0 ] || bad "$name faithful: predict exit $rc: $(grep -v '^  ' "$work/err" | head -c 300)"
    "$EPK" kernel "$good" --out "$work/$name.good.k" >/dev/null 2>"$work/err"; rc=$?
    [ $rc -eq 0 ] || bad "$name faithful: kernel exit $rc: $(grep -v '^  ' "$work/err" | head -c 300)"
    "$EPK" check "$good" --against "$good/predictions.npy" --tolerance 1e-6 >/dev/null 2>"$work/err"; rc=$?
    [ $rc -eq 0 ] || bad "$name faithful: check exit $rc: $(grep -v '^  ' "$work/err" | head -c 300)"
    # misdescribed: everything exits 1 with one line naming the step
    "$EPK" verify "$mis" --json >"$work/mis.json" 2>"$work/err"; rc=$?
    { [ $rc -eq 1 ] && one_line "$work/err"; } || bad "$name misdescribed: verify exit $rc: $(grep -v '^  ' "$work/err" | head -c 300)"
    "$EPK" predict "$mis" >/dev/null 2>"$work/err"; rc=$?
    { [ $rc -eq 1 ] && one_line "$work/err"; } || bad "$name misdescribed: predict exit $rc"
    "$EPK" kernel "$mis" --out "$work/$name.mis.k" >/dev/null 2>"$work/err"; rc=$?
    { [ $rc -eq 1 ] && one_line "$work/err" && [ ! -e "$work/$name.mis.k" ]; } ||
        bad "$name misdescribed: kernel exit $rc (or wrote its directory)"
    "$EPK" check "$mis" --against "$mis/predictions.npy" --tolerance 1e-6 --json >"$work/check.json" 2>"$work/err"; rc=$?
    # clip and schedule keep the architecture, so torch's outputs match epk's f(x; w_S): the
    # audit alone fails the check; dropout (outputs taken in training mode) and skip differ too.
    within=true; case $kind in dropout|skip) within='[a-z]*' ;; esac
    { [ $rc -eq 1 ] && one_line "$work/err" && grep -q "\"files_within_tolerance\": $within" "$work/check.json"; } ||
        bad "$name misdescribed: check exit $rc (files within tolerance: $(grep -o '"files_within_tolerance": [a-z]*' "$work/check.json"))"
    "$EPK" verify "$mis" --allow-unexplained-steps >/dev/null 2>"$work/err"; rc=$?
    [ $rc -eq 0 ] || bad "$name misdescribed: verify --allow-unexplained-steps exit $rc"
    say "  audit units: faithful $(units "$work/good.json"), misdescribed $(units "$work/mis.json")"
done

if [ "$fails" -eq 0 ]; then say "all configurations pass"; exit 0; fi
say "$fails check(s) failed"
exit 1

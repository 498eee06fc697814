#!/usr/bin/env bash
# bench/run.sh — the performance table of the README, measured on this machine.
#
#   bench/run.sh [--build DIR] [--work DIR] [--quick]
#
# Workloads (bench/README.md):
#   digits     MLP 64-128-128-10, ReLU, embedded digits: 500 training rows, batch 100,
#              200 SGD steps (lr 0.05), 100 held-out test points
#   synthetic  MLP 784-256-256-10, ReLU, 600 rows of synthetic 784-pixel data
#              (bench/synthetic_data.py): the same split, batch, steps and rate
#   cnn        bench/cnn_digits.json on the digits as 1x8x8 images: conv 16 (3x3, pad 1), relu,
#              conv 16, relu, max pool 2, a residual block of two 16-channel convs, avg pool 2,
#              linear 10 (7 770 parameters); the same split, batch, steps and rate; double only
#   mlp-ACT-OPT  the digits MLP in tanh, gelu and relu with SGD and AdamW (and tanh with SGD +
#              Nesterov + decay), recorded paths, against bench/structured_peer.py (full runs only)
#   certify-demo the demo's tanh run: epk certify --bits 256 against verify --precision mpfr:256
#              (full runs only)
# For each, in double and in mpfr:256, epk-bench measures in one process: the structured
# path kernel (seconds, GFLOP/s of its products per thread), the machine's DGEMM rate (the
# same Eigen GEMM on 1024³, as many concurrent products as threads), the naive full-Jacobian
# path over the first steps against the structured path over the same steps, and for MPFR
# one multiply-add's time against the structured path's.  Peak memory: separate processes
# for S and 4S steps (--memory-only), replayed, and for digits also recorded, with the
# trace's S-sized arrays (batches.npy, params.npy) read row by row (EPK_STREAM_MIB=0;
# by default only files above 64 MiB are, and smaller ones are held whole).  If python3 has torch, bench/functorch_kernel.py times
# a float64 functorch implementation of the same kernel on the same trace.
# --quick: the digits workload only, 4 steps (a smoke run for ctest, ~30 s; the figures are
# not the documented ones and the "done when" checks are printed, not enforced).
# Exit status: 0, or 1 when a check fails (full runs only).
set -euo pipefail
cd "$(dirname "$0")/.."
build=build
work=""
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "usage: bench/run.sh [--build DIR] [--work DIR] [--quick]" >&2; exit 2 ;;
  esac
done
[ -n "$work" ] || work="$build/bench-work"
if [ ! -x "$build/epk" ] || [ ! -x "$build/bench/epk-bench" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DEPK_BUILD_BENCH=ON >/dev/null
  cmake --build "$build" -j"$(nproc)" --target epk epk-bench
fi
epk="$build/epk"
bench="$build/bench/epk-bench"
mkdir -p "$work"
results="$work/results.jsonl"
: > "$results"

steps=200
workloads=(digits synthetic cnn)
if [ "$quick" = 1 ]; then steps=4; workloads=(digits cnn); fi
train_common=(--n-train 500 --n-test 100 --batch-size 100 --lr 0.05 --seed 0 --init-only)
make_trace() {  # name data shape steps [recorded]: init-only (replayed), or with params.npy
  # shape: the hidden widths of a ReLU MLP, or a model file (*.json)
  local dir="$work/$1-$4${5:+-recorded}" opts=() o shape=(--hidden "$3" --activation relu)
  case "$3" in *.json) shape=(--model "$3") ;; esac
  for o in "${train_common[@]}"; do [ -n "${5:-}" ] && [ "$o" = --init-only ] || opts+=("$o"); done
  [ -d "$dir" ] || "$epk" train --out "$dir" --data "$2" "${shape[@]}" --steps "$4" "${opts[@]}" >/dev/null 2>&1
  echo "$dir"
}
if [ "$quick" = 0 ] && [ ! -f "$work/synthetic.csv" ]; then python3 bench/synthetic_data.py > "$work/synthetic.csv"; fi

# record WORKLOAD KIND epk-bench-args...: appends {"workload":..,"kind":..,...} to results.jsonl
record() {
  local w="$1" kind="$2"; shift 2
  echo "bench: $w $kind: epk-bench $*" >&2
  "$bench" "$@" | python3 -c 'import json,sys; j=json.load(sys.stdin); j["workload"]=sys.argv[1]; j["kind"]=sys.argv[2]; print(json.dumps(j))' "$w" "$kind" >> "$results"
}

have_torch=0
/usr/bin/python3 -c "import torch" 2>/dev/null && have_torch=1

for w in "${workloads[@]}"; do
  if [ "$w" = cnn ]; then  # double only; the naive path costs about 30 s per step here
    t1=$(make_trace "$w" digits bench/cnn_digits.json "$steps")
    if [ "$quick" = 1 ]; then record "$w" speed "$t1" --precision double --threads 2 --steps 1
    else record "$w" speed "$t1" --precision double --threads 2 --naive-steps 2; fi
    continue
  fi
  if [ "$w" = digits ]; then data=digits; hidden=128,128; naive=2; mp_steps=2
  else data="$work/synthetic.csv"; hidden=256,256; naive=1; mp_steps=1; fi
  if [ "$quick" = 1 ]; then naive=1; mp_steps=1; fi
  t1=$(make_trace "$w" "$data" "$hidden" "$steps")
  t4=$(make_trace "$w" "$data" "$hidden" $((4 * steps)))
  record "$w" speed "$t1" --precision double --threads 2 --naive-steps "$naive"
  record "$w" speed "$t1" --precision mpfr:256 --threads 2 --steps "$mp_steps"
  EPK_STREAM_MIB=0 record "$w" memory "$t1" --precision double --threads 2 --memory-only
  EPK_STREAM_MIB=0 record "$w" memory "$t4" --precision double --threads 2 --memory-only
  if [ "$w" = digits ]; then  # a recorded path (params.npy), read row by row
    r1=$(make_trace "$w" "$data" "$hidden" "$steps" recorded)
    r4=$(make_trace "$w" "$data" "$hidden" $((4 * steps)) recorded)
    EPK_STREAM_MIB=0 record "$w" memory-recorded "$r1" --precision double --threads 2 --memory-only
    EPK_STREAM_MIB=0 record "$w" memory-recorded "$r4" --precision double --threads 2 --memory-only
  fi
  if [ "$have_torch" = 1 ] && [ "$quick" = 0 ]; then
    echo "bench: $w functorch" >&2
    /usr/bin/python3 bench/functorch_kernel.py "$t1" --steps "$naive" --nodes 2 --threads 2 \
      | python3 -c 'import json,sys; j=json.load(sys.stdin); j["workload"]=sys.argv[1]; j["kind"]="functorch"; print(json.dumps(j))' "$w" >> "$results"
  fi
done

# Smooth networks and optimizers (issue 17): the digits MLP in tanh, gelu and relu, trained with
# plain SGD (lr 0.05) and AdamW (lr 0.001), and tanh with SGD + Nesterov momentum + weight decay;
# recorded paths (params.npy), so that the peer reads the same path.  For each: epk's kernel with
# per-point contributions and its reconstruction alone (what `epk verify` computes), its own
# full-Jacobian path over the first steps, and bench/structured_peer.py (PyTorch float64, per-layer
# factors, 8 fixed Gauss nodes, both cores, whatever BLAS torch loads: reported).
if [ "$quick" = 0 ]; then
  for spec in tanh:sgd gelu:sgd relu:sgd tanh:adamw gelu:adamw relu:adamw tanh:nesterov; do
    act=${spec%%:*} opt=${spec##*:}
    name="mlp-$act-$opt" dir="$work/mlp-$act-$opt-$steps"
    case "$opt" in
      sgd) oargs=(--lr 0.05) ;;
      adamw) oargs=(--lr 0.001 --optimizer adamw) ;;
      nesterov) oargs=(--lr 0.05 --momentum 0.9 --nesterov --weight-decay 0.0001) ;;
    esac
    [ -d "$dir" ] || "$epk" train --out "$dir" --data digits --hidden 128,128 --activation "$act" --n-train 500 \
      --n-test 100 --batch-size 100 --steps "$steps" --seed 0 "${oargs[@]}" >/dev/null 2>&1
    naive=2; [ "$opt" = sgd ] || naive=1
    record "$name" kernel "$dir" --precision double --threads 2 --gemm-size 0 --naive-steps "$naive"
    record "$name" reconstruction "$dir" --precision double --threads 2 --gemm-size 0 --reconstruction-only
    if [ "$act:$opt" = tanh:sgd ]; then record "$name" mpfr "$dir" --precision mpfr:256 --threads 2 --steps 2; fi
    if [ "$have_torch" = 1 ] && [ "$opt" != nesterov ]; then
      echo "bench: $name structured_peer" >&2
      /usr/bin/python3 bench/structured_peer.py "$dir" --nodes 8 --threads 2 \
        | python3 -c 'import json,sys; j=json.load(sys.stdin); j["workload"]=sys.argv[1]; j["kind"]="peer"; print(json.dumps(j))' "$name" >> "$results"
    fi
  done
fi

# Certification (issue 18): the demo's run (64-16-10 tanh, 200 digits, 30 steps of batch 20,
# 100 test points), `epk certify --bits 256` against `epk verify --precision mpfr:256` on the
# same trace, both on 2 threads, in one run.  Full runs only.
if [ "$quick" = 0 ]; then
  demo="$work/certify-demo"
  [ -d "$demo" ] || "$epk" train --out "$demo" --n-test 100 --seed 1 --n-train 200 --hidden 16 --activation tanh \
    --steps 30 --lr 0.5 --batch-size 20 >/dev/null 2>&1
  echo "bench: certify-demo" >&2
  t0=$(date +%s.%N); "$epk" verify "$demo" --precision mpfr:256 --threads 2 --json > "$work/certify-verify.json"; t1=$(date +%s.%N)
  set +e; "$epk" certify "$demo" --bits 256 --threads 2 --json > "$work/certify-certify.json"; set -e; t2=$(date +%s.%N)
  python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(json.dumps({"workload": "certify-demo", "kind": "certify",
    "verify_seconds": float(sys.argv[3]) - float(sys.argv[2]), "certify_seconds": float(sys.argv[4]) - float(sys.argv[3]),
    "certified": c.get("certified", False), "reason": c.get("reason", ""), "widest": c.get("widest_relative_width", None)}))' \
    "$work/certify-certify.json" "$t0" "$t1" "$t2" >> "$results"
fi

if [ "$quick" = 1 ]; then python3 bench/table.py "$results" || true; else python3 bench/table.py "$results"; fi

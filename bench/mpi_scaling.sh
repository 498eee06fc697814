#!/usr/bin/env bash
# bench/mpi_scaling.sh [--build DIR] [--work DIR] [--steps S] [--reps K] [--workloads "digits cnn"] — the MPI build on this machine (README "Many
# machines (MPI)"): one rank with one thread against `mpirun -n 2` (one thread each), measured in
# the same run on the same traces, and the cost model's terms.
#
# Workloads (bench/README.md, as bench/run.sh makes them; 200 SGD steps, batch 100, 500 training
# rows, 100 held-out test points; replayed traces, init_params.npy):
#   digits  MLP 64-128-128-10, ReLU            cnn  bench/cnn_digits.json (7 770 parameters)
#   digits-recorded  the digits run with its path recorded (params.npy): no rank replays
# For each: `epk verify --threads 1` as one process, then under `mpirun -n 2`; the ratio of the
# two wall times is the speed-up (the issue's bar: >= 1.7 on digits).  Then the cost model of
# one step, t(M) = a + b*M (a: the training side every rank takes; b: one test point's test side),
# from one-process runs with 16 and 100 test points; and what rank 0 receives and how long it
# waits in the gathers (EPK_MPI_STATS=1).
# Output: a table on stdout and $work/mpi.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build-mpi
work=""
steps=200
reps=3
workloads="digits digits-recorded cnn"
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;  # fewer steps: the per-step figures do not depend on S
    --workloads) workloads="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;  # repetitions of each timing (the median is reported)
    *) echo "usage: bench/mpi_scaling.sh [--build DIR] [--work DIR] [--steps S] [--reps K] [--workloads LIST]" >&2; exit 2 ;;
  esac
done
[ -n "$work" ] || work="$build/bench-mpi"
epk="$build/epk"
[ -x "$epk" ] || { echo "bench/mpi_scaling.sh: $epk missing (cmake -S . -B $build -DEPK_MPI=ON && cmake --build $build --target epk)" >&2; exit 2; }
mpirun=$(command -v mpirun) || { echo "bench/mpi_scaling.sh: mpirun missing (Debian: openmpi-bin)" >&2; exit 2; }
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
# One machine: shared memory between the ranks (vader) and the ob1 messaging layer (Debian's default,
# UCX, spends 0.2 s of every start probing for a network; both runs below pay the same start).
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_pml=ob1
mkdir -p "$work"
out="$work/mpi.jsonl"
: > "$out"

make_trace() {  # name shape(hidden widths | model.json) n_test [recorded]: init-only (replayed) or params.npy
  local dir="$work/$1-$steps${4:+-recorded}" shape=(--hidden "$2" --activation relu) init=(--init-only)
  case "$2" in *.json) shape=(--model "$2") ;; esac
  [ -n "${4:-}" ] && init=()
  [ -d "$dir" ] || "$epk" train --out "$dir" --data digits "${shape[@]}" --steps "$steps" --n-train 500 --n-test "$3" \
                     --batch-size 100 --lr 0.05 --seed 0 "${init[@]}" > /dev/null 2>&1
  echo "$dir"
}
seconds() {  # command...: wall seconds (stderr kept in $work/stderr.txt)
  local t0 t1
  t0=$(date +%s.%N)
  "$@" > /dev/null 2> "$work/stderr.txt"
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.2f}')"
}

printf "%-15s %9s %11s %12s %8s %8s %10s %12s %11s %8s\n" workload "1 proc s" "-n 1 s" "-n 2 s" "ratio" "ratio-n1" "a s/step" "b s/step/pt" "bytes to r0" "gather s"
for w in $workloads; do
  rec=""
  case "$w" in
    digits) shape=128,128 ;;
    digits-recorded) shape=128,128; rec=1 ;;  # the same run with its path recorded (params.npy)
    cnn) shape=bench/cnn_digits.json ;;
    *) echo "bench/mpi_scaling.sh: unknown workload $w" >&2; exit 2 ;;
  esac
  t100=$(make_trace "$w-100" "$shape" 100 $rec)
  t16=$(make_trace "$w-16" "$shape" 16 $rec)
  # Interleaved repetitions, the median of each (this machine's timings vary by 10-20 % run to run).
  ones=(); twos=(); mones=()
  for _ in $(seq 1 "$reps"); do
    ones+=("$(seconds "$epk" verify "$t100" --threads 1)")
    mones+=("$(seconds "$mpirun" -n 1 "$epk" verify "$t100" --threads 1)")
    twos+=("$(EPK_MPI_STATS=1 seconds "$mpirun" --oversubscribe -n 2 "$epk" verify "$t100" --threads 1)")
    stats=$(grep -m1 '^epk: mpi:' "$work/stderr.txt" || echo "")
  done
  one=$(printf '%s\n' "${ones[@]}" | sort -g | sed -n "$(( (reps + 1) / 2 ))p")
  two=$(printf '%s\n' "${twos[@]}" | sort -g | sed -n "$(( (reps + 1) / 2 ))p")
  mone=$(printf '%s\n' "${mones[@]}" | sort -g | sed -n "$(( (reps + 1) / 2 ))p")
  echo "  $w: one process ${ones[*]} s; mpirun -n 1 ${mones[*]} s; mpirun -n 2 ${twos[*]} s" >&2
  m16=$(seconds "$epk" verify "$t16" --threads 1)
  python3 - "$w" "$one" "$two" "$m16" "$out" "$stats" "$steps" "$mone" <<'PY'
import json, re, sys
w, one, two, m16, out, stats = sys.argv[1], *map(float, sys.argv[2:5]), sys.argv[5], sys.argv[6]
S, M, mone = int(sys.argv[7]), 100, float(sys.argv[8])
b = (one - m16) / (S * (M - 16))   # one test point's test side, per step
a = one / S - b * M                # the training side (every rank takes it)
m = re.search(r"(\d+) bytes to rank 0 in (\d+) rounds, ([\d.]+) s", stats)
received, gathered = (int(m.group(1)), float(m.group(3))) if m else (float("nan"), float("nan"))
row = {"workload": w, "steps": S, "one_process_seconds": one, "mpirun_one_rank_seconds": mone,
       "two_ranks_seconds": two, "ratio_to_one_process": one / two, "ratio_to_one_rank": mone / two,
       "training_side_seconds_per_step": a, "test_side_seconds_per_step_per_point": b,
       "bytes_to_rank0": received, "gather_seconds_rank0": gathered}
open(out, "a").write(json.dumps(row) + "\n")
print(f"{w:<15} {one:9.2f} {mone:11.2f} {two:12.2f} {one / two:8.2f} {mone / two:8.2f} {a:10.4f} {b:12.5f} {received:11.3g} {gathered:8.2f}")
PY
done
echo "(ratio: one process, one thread / mpirun -n 2, one thread each; ratio-n1: mpirun -n 1 (one rank, one thread, the same launcher) / mpirun -n 2; medians of $reps interleaved runs, same traces, same run; $out)"

#!/usr/bin/env bash
# tests/mpi/run_mpi_tests.sh EPK MPIRUN — the MPI build's tests (ctest: mpi_split).
#
#  1. Byte identity: on small traces of every optimizer, activation and layer kind (MLPs, a CNN,
#     residual nets, layer norm, a transformer) and every precision, `mpirun --oversubscribe -n R
#     epk verify|kernel|check|compare` for R = 1, 2, 3 writes exactly what the single-process run
#     writes (stdout of verify/check/compare --json, every file of kernel's directory; compare's
#     timings left out), with the same exit status.
#  2. A rank killed (SIGKILL) mid-run ends the job with a non-zero exit and no output directory.
#  3. Bad input under mpirun: one line naming the rank, the single-process tool's message, the
#     same exit status class, nothing written.
set -u
EPK=$1
MPIRUN=$2
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
# OpenMPI refuses root without these (CI machines run as root).
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
# One machine: shared memory between the ranks (vader), the ob1 messaging layer (Debian's default,
# UCX, spends 0.2 s of every start probing for a network).
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_pml=ob1
export EPK_MEMORY_LIMIT_GIB=4
passes=0
fails=0
pass() { passes=$((passes + 1)); }
fail() { fails=$((fails + 1)); echo "FAIL: $*"; }
mpi() { local n=$1; shift; "$MPIRUN" --oversubscribe -n "$n" "$EPK" "$@"; }

M="$W/models"
mkdir -p "$M"
cat > "$M/transformer.json" <<'JSON'
{"input_shape": [3], "input_dtype": "int64", "layers": [
  {"type": "embedding", "num_embeddings": 8, "embedding_dim": 8},
  {"type": "positional_embedding"},
  {"type": "residual", "body": [{"type": "layer_norm", "normalized_shape": [8]},
                                {"type": "self_attention", "num_heads": 2, "causal": true}], "shortcut": []},
  {"type": "residual", "body": [{"type": "layer_norm", "normalized_shape": [8]},
                                {"type": "linear", "out_features": 16}, {"type": "gelu"},
                                {"type": "linear", "out_features": 8}], "shortcut": []},
  {"type": "layer_norm", "normalized_shape": [8]},
  {"type": "select", "index": -1},
  {"type": "linear", "out_features": 7}]}
JSON
SRC=$(cd "$(dirname "$0")/../.." && pwd)

# train NAME ARGS...: a trace (single process).
train() {
    local name=$1
    shift
    if ! "$EPK" train --out "$W/$name" --seed 3 "$@" > "$W/$name.train.log" 2>&1; then
        fail "train $name: $(tail -1 "$W/$name.train.log")"
        return 1
    fi
}
mlp=(--n-train 40 --n-test 20 --hidden 8 --batch-size 10 --steps 20)
train t_tanh_sgd "${mlp[@]}" --activation tanh --lr 0.3
# 10 steps (2 blocks), 40 test points (3 chunks): 3 ranks interleave the chunks (the others deal blocks).
train t_tanh_interleaved --n-train 40 --n-test 40 --hidden 8 --batch-size 10 --steps 10 --activation tanh --lr 0.3
train t_relu_momentum "${mlp[@]}" --activation relu --lr 0.1 --momentum 0.9
train t_gelu_adam "${mlp[@]}" --activation gelu --lr 0.01 --optimizer adam
train t_sigmoid_adamw "${mlp[@]}" --activation sigmoid --lr 0.01 --optimizer adamw --weight-decay 0.1
train t_softplus_nesterov "${mlp[@]}" --activation softplus --lr 0.1 --momentum 0.9 --nesterov
train t_leaky_wd_replayed "${mlp[@]}" --activation leaky_relu --lr 0.2 --weight-decay 0.01 --init-only
train t_identity_mse "${mlp[@]}" --activation identity --loss mse --lr 0.05
train t_cnn --model "$SRC/examples/models/cnn_relu_maxpool.json" --n-train 30 --n-test 20 --batch-size 10 --steps 12 --lr 0.1
train t_resnet_adam --model "$SRC/examples/models/resnet_tanh_proj.json" --n-train 30 --n-test 18 --batch-size 10 --steps 10 \
      --lr 0.01 --optimizer adam
train t_prenorm --model "$SRC/examples/models/prenorm_mlp.json" --data iris --n-train 40 --n-test 20 --batch-size 10 --steps 18 --lr 0.1
train t_transformer --model "$M/transformer.json" --data modadd:7:0.4 --batch-size 8 --steps 17 --lr 0.01 --optimizer adamw

# same NAME ARGS...: stdout and exit status of `epk ARGS` equal for 1 process and mpirun -n 1, 2, 3.
same() {
    local name=$1
    shift
    local ref_rc=0
    "$EPK" "$@" > "$W/ref.out" 2> "$W/ref.err" || ref_rc=$?
    if [ "$ref_rc" -gt 1 ]; then fail "$name: the single-process run exits $ref_rc: $(head -1 "$W/ref.err")"; return; fi
    grep -v '"seconds":' "$W/ref.out" > "$W/ref.cmp"
    for n in 1 2 3; do
        local rc=0
        mpi "$n" "$@" > "$W/mpi.out" 2> "$W/mpi.err" || rc=$?
        grep -v '"seconds":' "$W/mpi.out" > "$W/mpi.cmp"
        if [ "$rc" != "$ref_rc" ]; then fail "$name -n $n: exit $rc, single process $ref_rc: $(head -3 "$W/mpi.err")"
        elif ! cmp -s "$W/ref.cmp" "$W/mpi.cmp"; then fail "$name -n $n: output differs: $(diff "$W/ref.cmp" "$W/mpi.cmp" | head -4)"
        else pass; fi
    done
}

# same_dir NAME TRACE ARGS...: `epk kernel TRACE --out D ARGS` writes byte-identical files for 1 process and -n 1, 2, 3.
same_dir() {
    local name=$1 trace=$2
    shift 2
    rm -rf "$W/kref"
    local ref_rc=0
    "$EPK" kernel "$trace" --out "$W/kref" "$@" > /dev/null 2> "$W/ref.err" || ref_rc=$?
    if [ ! -d "$W/kref" ]; then fail "$name: the single-process kernel wrote nothing: $(head -1 "$W/ref.err")"; return; fi
    for n in 1 2 3; do
        rm -rf "$W/kmpi"
        local rc=0
        mpi "$n" kernel "$trace" --out "$W/kmpi" "$@" > /dev/null 2> "$W/mpi.err" || rc=$?
        if [ "$rc" != "$ref_rc" ]; then fail "$name -n $n: exit $rc, single process $ref_rc: $(head -3 "$W/mpi.err")"
        elif ! diff -r "$W/kref" "$W/kmpi" > "$W/diff.txt"; then fail "$name -n $n: files differ: $(head -3 "$W/diff.txt")"
        else pass; fi
    done
}

for t in t_tanh_sgd t_tanh_interleaved t_relu_momentum t_gelu_adam t_sigmoid_adamw t_softplus_nesterov t_leaky_wd_replayed t_identity_mse \
         t_cnn t_resnet_adam t_prenorm t_transformer; do
    [ -d "$W/$t" ] || continue
    same "verify $t" verify "$W/$t" --json
done
same "verify t_tanh_sgd --threads 1" verify "$W/t_tanh_sgd" --json --threads 1
same "verify t_tanh_sgd --unstructured" verify "$W/t_tanh_sgd" --json --unstructured
for p in float long-double float128 mpfr:80; do
    same "verify t_tanh_sgd $p" verify "$W/t_tanh_sgd" --json --precision "$p"
done
same "verify t_cnn mpfr:64" verify "$W/t_cnn" --json --precision mpfr:64
same "verify t_transformer mpfr:64" verify "$W/t_transformer" --json --precision mpfr:64
same_dir "kernel t_tanh_sgd --steps" "$W/t_tanh_sgd" --steps 0,9,19
same_dir "kernel t_relu_momentum" "$W/t_relu_momentum"
same_dir "kernel t_tanh_interleaved --steps" "$W/t_tanh_interleaved" --steps 0,9
same_dir "kernel t_gelu_adam" "$W/t_gelu_adam"
same_dir "kernel t_leaky_wd_replayed" "$W/t_leaky_wd_replayed"
same_dir "kernel t_cnn --steps" "$W/t_cnn" --steps 3,11
same_dir "kernel t_prenorm" "$W/t_prenorm"
same_dir "kernel t_transformer" "$W/t_transformer"
same_dir "kernel t_cnn mpfr:64" "$W/t_cnn" --precision mpfr:64
# check: against the single-process kernel's files (and a perturbed copy: exit 1 everywhere).
"$EPK" kernel "$W/t_cnn" --out "$W/cnn_kernel" --steps 3 > /dev/null 2>&1 || true
same "check t_cnn" check "$W/t_cnn" --json --against "$W/cnn_kernel"
same "compare t_tanh_sgd" compare "$W/t_tanh_sgd" --json
same "compare t_cnn" compare "$W/t_cnn" --json --methods exact,tangent_per_step,gauss:2

# A rank killed mid-run: non-zero exit, no output directory.
if train t_long --n-train 200 --n-test 64 --hidden 64,64 --batch-size 20 --steps 200 --activation tanh --lr 0.3; then
    rm -rf "$W/killed"
    mpi 2 kernel "$W/t_long" --out "$W/killed" --threads 1 > /dev/null 2> "$W/kill.err" &
    job=$!
    pids=""
    for _ in $(seq 1 100); do  # the two ranks' processes, once both run
        pids=$(pgrep -f "$EPK kernel $W/t_long" | tr '\n' ' ')
        [ "$(echo "$pids" | wc -w)" -ge 2 ] && break
        sleep 0.1
    done
    sleep 1.5
    victim=$(echo "$pids" | awk '{print $NF}')
    if [ -z "$victim" ]; then fail "kill: the ranks were not found"
    else
        kill -9 "$victim"
        rc=0
        wait "$job" || rc=$?
        if [ "$rc" = 0 ]; then fail "kill: mpirun exited 0 after a rank was killed"
        elif [ -e "$W/killed" ]; then fail "kill: the output directory exists after a rank was killed"
        else pass; echo "killed rank $victim: exit $rc; $(grep -m1 -i 'signal\|killed' "$W/kill.err")"; fi
    fi
fi

# Bad input under mpirun: one line from epk naming the rank; the single-process message; exit 2; nothing written.
"$EPK" kernel "$W/missing" --out "$W/bad_out" > /dev/null 2> "$W/single.err"
single=$(cat "$W/single.err")
rc=0
mpi 3 kernel "$W/missing" --out "$W/bad_out" > /dev/null 2> "$W/bad.err" || rc=$?
lines=$(grep -c '^epk: ' "$W/bad.err")
if [ "$rc" = 0 ]; then fail "bad input: exit 0"
elif [ -e "$W/bad_out" ]; then fail "bad input: output written"
elif [ "$lines" != 1 ]; then fail "bad input: $lines lines from epk: $(cat "$W/bad.err" | head -5)"
elif ! grep -q "^epk: rank [0-9]: ${single#epk: }\$" "$W/bad.err"; then fail "bad input: message differs: $(grep '^epk: ' "$W/bad.err") vs $single"
else pass; fi
rc=0
mpi 2 train --out "$W/train_out" > /dev/null 2> "$W/bad.err" || rc=$?
if [ "$rc" = 0 ] || [ -e "$W/train_out" ] || ! grep -q "^epk: rank 0: error: epk train: runs in one process" "$W/bad.err"; then
    fail "train under mpirun -n 2: exit $rc: $(head -2 "$W/bad.err")"
else pass; fi

echo "mpi tests: $passes passed, $fails failed"
[ "$fails" = 0 ]

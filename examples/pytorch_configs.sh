# shellcheck shell=bash
# Sourced, after torch_env.sh, by check_kernel_against_pytorch.sh and
# check_compare_against_pytorch.sh: the configurations both run and the
# helpers both use.
#
#   configs   one entry per configuration:
#                 name | record | kernel steps | pytorch_trace.py options
#             (N <= 64, D <= 8, widths <= 16, <= 40 steps); the kernel steps are
#             those whose kernels check_kernel_against_pytorch.sh compares
#             (check_compare_against_pytorch.sh does not use them)
#   fail      0; set to 1 by generate, and by the callers when a check fails
#   t_all     the time this file was sourced
#   now, elapsed A B    wall-clock seconds; B - A with two decimals
#   generate ENTRY      sets name, record, steps, opts and dir="$work/$name-$record"
#                       from a configs entry and writes that trace with
#                       pytorch_trace.py; on failure prints a table row and the
#                       generator's log, sets fail=1 and returns 1
#   note_exits LABEL WHAT:RC:LOG...
#                       for every RC other than 0, a note and the last 5 lines of LOG
#   finish              prints the total time since t_all and the verdict; exits 1
#                       if fail is not 0
# Uses PYTHON, GEN and work (torch_env.sh).

# shellcheck disable=SC2034  # used by the scripts that source this file
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
fail=0
t_all=$(now)

generate() {
    IFS='|' read -r name record steps opts <<<"$1"
    # shellcheck disable=SC2154  # work: torch_env.sh
    dir="$work/$name-$record"
    # shellcheck disable=SC2086  # opts is a list of options
    if ! "$PYTHON" "$GEN" --out "$dir" --record "$record" $opts >"$dir.gen.log" 2>&1; then
        printf '%-28s %-6s %s\n' "$name" "$record" "pytorch_trace.py FAILED:"; sed 's/^/    /' "$dir.gen.log"
        fail=1
        return 1
    fi
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

finish() {
    echo "total $(elapsed "$t_all" "$(now)") s"
    if [[ $fail -ne 0 ]]; then
        echo "FAILED: at least one check failed (see the status column)"
        exit 1
    fi
    echo "all configurations pass"
}

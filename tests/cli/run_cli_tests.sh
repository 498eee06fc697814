#!/usr/bin/env bash
# Command-line tests of epk: exit statuses, messages, files written (and not).
#
#   bash run_cli_tests.sh /path/to/epk [/path/to/tests/cli]
#
# Prints one line per check ("ok - NAME" / "FAIL - NAME: DETAIL") and ends with
# "N passed, M failed"; exits 0 only when M = 0.  Needs bash and coreutils,
# sed, grep, awk, printf, od, dd only.  Broken traces are made from good ones
# that epk itself writes, by same-length edits of the .npy headers, by poking
# bytes into the data, or by writing small .npy files from scratch.
#
# Exit statuses (epk help): 0 success, 1 a check failed, 2 bad input (one line
# on stderr naming the file or option and the rule broken; nothing written),
# 3 internal error.  Trace format: docs/trace-format.md.
set -u
export LC_ALL=C

EPK=${1:?usage: run_cli_tests.sh /path/to/epk [tests/cli dir]}
case $EPK in /*) ;; *) EPK=$PWD/$EPK ;; esac
if [ ! -x "$EPK" ]; then
    echo "FAIL - setup: $EPK is not an executable"
    echo "0 passed, 1 failed"
    exit 1
fi

W=$(mktemp -d "${TMPDIR:-/tmp}/epk-cli.XXXXXX") || exit 1
trap 'rm -rf "$W"' EXIT
cd "$W" || exit 1

PASS=0
FAIL=0
ok()   { echo "ok - $1"; PASS=$((PASS + 1)); }
fail() { echo "FAIL - $1: $2"; FAIL=$((FAIL + 1)); }

# run CMD...: runs it with stdout -> $W/out, stderr -> $W/err; sets RC.
run() { "$@" >"$W/out" 2>"$W/err"; RC=$?; }
# ERRL: the lines of stderr (an unterminated last line counts); builtins only
load_err() { ERRL=(); mapfile -t ERRL <"$W/err"; }
# stderr on one line (lines joined by " | "), for failure details
err1() { load_err; local IFS="|"; local s="${ERRL[*]-}"; s=${s//|/ | }; printf "%s" "${s:0:400}"; }

# snapshot DIR: names, sizes, times and checksums of the files in DIR (traces are flat)
snapshot() { (shopt -s dotglob nullglob; cd "$1" 2>/dev/null || exit 0
    ls -lA --time-style=+%s; set -- *; [ $# -eq 0 ] || cksum -- "$@" 2>&1); }

# expect_fail NAME NEEDLE RULE_ERE [--absent PATH]... [--unchanged DIR]... -- CMD...
#   CMD must exit with status 2, print exactly one line on stderr containing
#   NEEDLE (a fixed string: the file or option name) and, if RULE_ERE is not
#   empty, matching RULE_ERE (case-insensitive extended regex naming the rule);
#   each --absent PATH must not exist afterwards, each --unchanged DIR must be
#   byte-identical before and after.
expect_fail() {
    local name=$1 needle=$2 rule=$3
    shift 3
    local absent=() unchanged=() snaps=() d i
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        case $1 in
            --absent) absent+=("$2"); shift 2 ;;
            --unchanged) unchanged+=("$2"); shift 2 ;;
            *) fail "$name" "test bug: bad expect_fail argument '$1'"; return ;;
        esac
    done
    shift
    for d in ${unchanged[@]+"${unchanged[@]}"}; do snaps+=("$(snapshot "$d")"); done
    run "$@"
    local problems=()
    [ "$RC" -eq 2 ] || problems+=("exit status $RC, expected 2")
    load_err
    local text="${ERRL[*]-}"
    [ ${#ERRL[@]} -eq 1 ] || problems+=("${#ERRL[@]} lines on stderr, expected 1")
    [[ $text == *"$needle"* ]] || problems+=("stderr does not name '$needle'")
    if [ -n "$rule" ]; then
        shopt -s nocasematch
        [[ $text =~ $rule ]] || problems+=("stderr does not state the rule (/$rule/)")
        shopt -u nocasematch
    fi
    for d in ${absent[@]+"${absent[@]}"}; do
        if [ -e "$d" ]; then problems+=("$d was created"); rm -rf "$d"; fi
    done
    i=0
    for d in ${unchanged[@]+"${unchanged[@]}"}; do
        [ "${snaps[$i]}" = "$(snapshot "$d")" ] || problems+=("$d was modified")
        i=$((i + 1))
    done
    if [ ${#problems[@]} -eq 0 ]; then
        ok "$name"
    else
        local msg; msg=$(printf "%s; " "${problems[@]}")
        fail "$name" "${msg%; } -- stderr: $(err1)"
    fi
}

# expect_ok NAME CMD...: exit status 0
expect_ok() {
    local name=$1; shift
    run "$@"
    if [ "$RC" -eq 0 ]; then ok "$name"; else fail "$name" "exit status $RC -- stderr: $(err1)"; fi
}

# ---- .npy helpers --------------------------------------------------------

# npy_header DESCR SHAPE: a v1.0 header (magic, version, length, dict, padding, \n)
npy_header() {
    local dict="{'descr': '$1', 'fortran_order': False, 'shape': $2, }" len
    local n=$((${#dict} + 1))
    local pad=$(((64 - (10 + n) % 64) % 64))
    local hl=$((n + pad))
    printf -v len '\\%03o\\%03o' $((hl % 256)) $((hl / 256))
    printf "\\223NUMPY\\001\\000$len"
    printf '%s%*s\n' "$dict" "$pad" ''
}
# i8 VALUES...: little-endian int64s
i8() {
    local v k s="" o
    for v in "$@"; do
        for k in 0 1 2 3 4 5 6 7; do printf -v o '\\%03o' $(((v >> (8 * k)) & 255)); s+=$o; done
    done
    printf "$s"
}
# data_offset FILE: offset of the first data byte (v1.0: 10 + u16; v2/v3: 12 + u32)
data_offset() {
    local major; major=$(od -An -tu1 -j6 -N1 "$1" | tr -d ' ')
    if [ "$major" = 1 ]; then
        echo $((10 + $(od -An -tu2 -j8 -N2 "$1" | tr -d ' ')))
    else
        echo $((12 + $(od -An -tu4 -j8 -N4 "$1" | tr -d ' ')))
    fi
}
# poke FILE OFFSET PRINTF_BYTES: overwrite bytes in place
poke() { printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
F8_NAN='\000\000\000\000\000\000\370\177'   # 0x7ff8000000000000
F8_PINF='\000\000\000\000\000\000\360\177'  # 0x7ff0000000000000
# header_edit FILE SED_EXPR: same-length edit of the header line; returns 1 if
# the edit changed nothing or changed the file's length
header_edit() {
    local before after
    before=$(wc -c <"$1")
    cp "$1" "$1.orig"
    sed -i "1$2" "$1"
    after=$(wc -c <"$1")
    if cmp -s "$1" "$1.orig" || [ "$before" != "$after" ]; then rm -f "$1.orig"; return 1; fi
    rm -f "$1.orig"
}

# ---- good paths ------------------------------------------------------------

SMALL=(--n-train 40 --n-test 10 --hidden 8 --steps 5)
P=610   # 64*8 + 8 + 8*10 + 10

# has_files NAME DIR PRESENT... [-- ABSENT...]
has_files() {
    local name=$1 dir=$2 f missing=() extra=() absent_mode=0
    shift 2
    for f in "$@"; do
        if [ "$f" = -- ]; then absent_mode=1; continue; fi
        if [ $absent_mode = 0 ]; then [ -f "$dir/$f" ] || missing+=("$f")
        else [ -e "$dir/$f" ] && extra+=("$f"); fi
    done
    if [ ${#missing[@]} -eq 0 ] && [ ${#extra[@]} -eq 0 ]; then ok "$name"
    else fail "$name" "missing: ${missing[*]-} unexpected: ${extra[*]-}"; fi
}
# header_has NAME FILE TEXT: the .npy header line contains TEXT
header_has() {
    if head -n 1 "$2" 2>/dev/null | grep -qF -- "$3"; then ok "$1"
    else fail "$1" "header of $2 lacks $3: $(head -n 1 "$2" 2>/dev/null | tr -cd '[:print:]')"; fi
}
# json_keys NAME: $W/out is JSON with the prediction keys
json_keys() {
    local k missing=()
    for k in outputs_final outputs_initial precision; do
        grep -q "\"$k\"[[:space:]]*:" "$W/out" || missing+=("$k")
    done
    if [ ${#missing[@]} -eq 0 ] && [ "$(head -c 1 "$W/out")" = "{" ]; then ok "$1"
    else fail "$1" "missing keys: ${missing[*]-} (first line: $(head -n 1 "$W/out"))"; fi
}

NPY_ALL=(manifest.json x_train.npy y_train.npy x_test.npy)
train_case() {  # train_case TAG EXPECTED_FILES... -- ABSENT_FILES... ;; options come from TOPTS
    local tag=$1; shift
    expect_ok "train $tag: exit 0" "$EPK" train --out "$W/$tag" "${SMALL[@]}" ${TOPTS[@]+"${TOPTS[@]}"}
    has_files "train $tag: files" "$W/$tag" "$@"
    run "$EPK" predict "$W/$tag" --json
    if [ "$RC" -eq 0 ]; then ok "predict --json of $tag: exit 0"; json_keys "predict --json of $tag: keys"
    else fail "predict --json of $tag: exit 0" "exit status $RC -- stderr: $(err1)"; fi
}

TOPTS=();                       train_case full "${NPY_ALL[@]}" params.npy -- init_params.npy batches.npy
TOPTS=(--batch-size 8);         train_case batch "${NPY_ALL[@]}" params.npy batches.npy -- init_params.npy
TOPTS=(--loss mse);             train_case mse "${NPY_ALL[@]}" params.npy -- init_params.npy batches.npy
TOPTS=(--init-only);            train_case init "${NPY_ALL[@]}" init_params.npy -- params.npy batches.npy
TOPTS=(--init-only --batch-size 8); train_case initbatch "${NPY_ALL[@]}" init_params.npy batches.npy -- params.npy
TOPTS=(--precision mpfr:128);   train_case mpfr128 "${NPY_ALL[@]}" params.npy -- init_params.npy batches.npy
TOPTS=(--precision float);      train_case float "${NPY_ALL[@]}" params.npy -- init_params.npy batches.npy
TOPTS=(--lr-decay 0.9);         train_case decay "${NPY_ALL[@]}" params.npy learning_rates.npy -- init_params.npy batches.npy
# trace format version 2: the optimizer's fields in the manifest, no recorded state (a fresh start)
STATE_FILES=(init_momentum_buffer.npy init_exp_avg.npy init_exp_avg_sq.npy init_max_exp_avg_sq.npy)
TOPTS=(--optimizer adamw --amsgrad --betas 0.8,0.99); train_case adamw "${NPY_ALL[@]}" params.npy -- init_params.npy "${STATE_FILES[@]}"
TOPTS=(--optimizer adamw --init-only); train_case adamwinit "${NPY_ALL[@]}" init_params.npy -- params.npy "${STATE_FILES[@]}"
TOPTS=(--momentum 0.9 --nesterov --weight-decay 0.0001 --batch-size 8)
train_case momentum "${NPY_ALL[@]}" params.npy batches.npy -- init_params.npy "${STATE_FILES[@]}"

# Everything below up to "bad command lines" starts from the traces just written.
BASES_OK=1
for t in full batch mse init initbatch; do [ -f "$t/manifest.json" ] || BASES_OK=0; done
[ $BASES_OK = 1 ] || fail "setup" "epk train did not write the base traces; trace checks skipped"
if [ $BASES_OK = 1 ]; then  # ---- begin trace checks
header_has "train: x_train.npy shape [40, 64]" full/x_train.npy "'shape': (40, 64)"
header_has "train: y_train.npy shape [40] (cross_entropy)" full/y_train.npy "'shape': (40,)"
header_has "train: y_train.npy dtype <i8 (cross_entropy)" full/y_train.npy "'<i8'"
header_has "train: y_train.npy shape [40, 10] (mse)" mse/y_train.npy "'shape': (40, 10)"
header_has "train: x_test.npy shape [10, 64]" full/x_test.npy "'shape': (10, 64)"
header_has "train: params.npy shape [S+1, P]" full/params.npy "'shape': (6, $P)"
header_has "train: init_params.npy shape [P]" init/init_params.npy "'shape': ($P,)"
header_has "train: batches.npy shape [S, B]" batch/batches.npy "'shape': (5, 8)"
header_has "train: batches.npy dtype <i8" batch/batches.npy "'<i8'"
if grep -q '"epk-trace"' full/manifest.json && grep -q '"steps"[[:space:]]*:[[:space:]]*5' full/manifest.json; then
    ok "train: manifest.json names the format and the steps"
else fail "train: manifest.json names the format and the steps" "$(tr -d '\n' <full/manifest.json | cut -c 1-200)"; fi

# manifest_has NAME FILE NEEDLE... [-- ABSENT...]: the manifest, blanks and newlines removed,
# contains each NEEDLE (fixed strings) and none of the ABSENT ones
manifest_has() {
    local name=$1 file=$2 text n absent_mode=0 problems=()
    shift 2
    text=$(tr -d ' \n' <"$file" 2>/dev/null)
    for n in "$@"; do
        if [ "$n" = -- ]; then absent_mode=1; continue; fi
        if [ $absent_mode = 0 ]; then [[ $text == *"$n"* ]] || problems+=("lacks $n")
        else [[ $text == *"$n"* ]] && problems+=("has $n"); fi
    done
    if [ ${#problems[@]} -eq 0 ]; then ok "$name"; else fail "$name" "${problems[*]}: ${text:0:300}"; fi
}
manifest_has "train: plain SGD writes a version 1 manifest" full/manifest.json '"version":1,' '"optimizer":{"type":"sgd","learning_rate":0.1,"steps":5}' \
    -- momentum weight_decay
if [ -f adamw/manifest.json ]; then
    manifest_has "train --optimizer adamw: a version 2 manifest with every AdamW field" adamw/manifest.json '"version":2,' \
        '"type":"adamw"' '"learning_rate":0.1' '"steps":5' '"betas":[0.8,0.99]' '"eps":1e-08' '"weight_decay":0.01' '"amsgrad":true' \
        -- initial_step momentum
    manifest_has "train --optimizer adamw --init-only: torch's defaults" adamwinit/manifest.json '"version":2,' \
        '"type":"adamw"' '"betas":[0.9,0.999]' '"eps":1e-08' '"weight_decay":0.01' '"amsgrad":false'
    manifest_has "train --momentum --nesterov --weight-decay: every SGD field" momentum/manifest.json '"version":2,' \
        '"type":"sgd"' '"momentum":0.9' '"dampening":0.0' '"nesterov":true' '"weight_decay":0.0001' -- betas initial_step
    run "$EPK" train --out "$W/adamw_summary" "${SMALL[@]}" --optimizer adamw
    if [ "$RC" -eq 0 ] && grep -q "steps of AdamW" "$W/out"; then ok "train --optimizer adamw: the summary names the optimizer"
    else fail "train --optimizer adamw: the summary names the optimizer" "exit $RC -- $(head -n 1 "$W/out")"; fi
    # The optimizer is what trains: an AdamW path is not the plain SGD path from the same start.
    if [ -f adamw/params.npy ] && ! cmp -s adamw/params.npy full/params.npy; then
        ok "train --optimizer adamw: params.npy differs from plain SGD's"
    else fail "train --optimizer adamw: params.npy differs from plain SGD's" \
        "the AdamW run wrote plain SGD's path (is the optimizer wired into training?)"; fi
    expect_ok "replay of an init-only adamw trace: exit 0" "$EPK" replay adamwinit --out "$W/rep_adamw"
    manifest_has "replay of an adamw trace keeps the version 2 manifest" rep_adamw/manifest.json '"version":2,' '"type":"adamw"'
    run "$EPK" verify adamw --json
    if [ "$RC" -eq 0 ]; then ok "verify --json of the adamw trace: exit 0"
    else fail "verify --json of the adamw trace: exit 0" "exit $RC -- $(err1)"; fi
    # The representation of proofs-notes/007: verify names the optimizer and reports the
    # optimizer term (AdamW's decoupled decay); kernel writes it; check reads it back.
    if grep -q '"optimizer_term"' "$W/out" && grep -q '"optimizer": "adamw (betas 0.8 0.99, eps 1e-08, weight_decay 0.01, amsgrad)"' "$W/out"; then
        ok "verify --json of the adamw trace: the optimizer and its term"
    else fail "verify --json of the adamw trace: the optimizer and its term" "$(grep -c optimizer "$W/out") optimizer lines"; fi
    run "$EPK" verify momentum
    if [ "$RC" -eq 0 ] && grep -q "optimizer sgd (momentum 0.9, nesterov, weight_decay 0.0001)" "$W/out" \
        && grep -q "OK: every residual is within its budget (proofs-notes/004, 007)" "$W/out"; then
        ok "verify of the nesterov trace: exit 0, the optimizer named, proofs-notes/007"
    else fail "verify of the nesterov trace: exit 0, the optimizer named, proofs-notes/007" "exit $RC -- $(err1) $(tail -n 1 "$W/out")"; fi
    expect_ok "verify of an init-only adamw trace (replayed with AdamW)" "$EPK" verify adamwinit --precision mpfr:96
    expect_fail "kernel --steps of a momentum trace: per-step kernels are plain SGD's" "--steps" "plain SGD" \
        --absent "$W/k_mom" -- "$EPK" kernel momentum --out "$W/k_mom" --steps 0
    expect_ok "kernel of the momentum trace: exit 0" "$EPK" kernel momentum --out "$W/k_mom"
    has_files "kernel of the momentum trace: writes optimizer_term.npy" k_mom bias.npy contributions.npy remainder.npy \
        optimizer_term.npy outputs_final.npy coefficients.npy
    expect_ok "check --against the momentum trace's own kernel files" "$EPK" check momentum --against "$W/k_mom"
    expect_fail "check: optimizer_term.npy against a plain SGD trace" "optimizer_term.npy" "no optimizer term" \
        -- "$EPK" check full --against "$W/k_mom/optimizer_term.npy"
    expect_ok "compare of the adamw trace: exit 0" "$EPK" compare adamw
    if cmp -s momentum/params.npy batch/params.npy; then fail "momentum training differs from plain SGD" "same params.npy"
    else ok "momentum training differs from plain SGD"; fi
fi

run "$EPK" predict full --json --precision mpfr:128
if [ "$RC" -eq 0 ] && grep -q '"precision"[[:space:]]*:[[:space:]]*"mpfr:128"' "$W/out"; then ok "predict --precision mpfr:128 --json"
else fail "predict --precision mpfr:128 --json" "exit $RC, $(grep precision "$W/out" | head -n 1) $(err1)"; fi
expect_ok "predict (text) of full-batch trace" "$EPK" predict full
expect_ok "predict of init-only trace (replays itself)" "$EPK" predict init --precision float

# replay
expect_ok "replay init-only trace: exit 0" "$EPK" replay init --out "$W/rep1"
has_files "replay: writes params.npy and the trace" rep1 "${NPY_ALL[@]}" params.npy
header_has "replay: params.npy shape [S+1, P]" rep1/params.npy "'shape': (6, $P)"
expect_ok "replay of replayed trace: exit 0" "$EPK" replay rep1 --out "$W/rep2"
if cmp -s rep1/params.npy rep2/params.npy; then ok "replay of replayed trace: params.npy byte-identical"
else fail "replay of replayed trace: params.npy byte-identical" "$(cmp rep1/params.npy rep2/params.npy 2>&1)"; fi
if cmp -s rep1/params.npy full/params.npy; then ok "replay in double reproduces train's params.npy byte for byte"
else fail "replay in double reproduces train's params.npy byte for byte" "$(cmp rep1/params.npy full/params.npy 2>&1)"; fi
expect_ok "replay init-only minibatch trace: exit 0" "$EPK" replay initbatch --out "$W/rep3"
if cmp -s rep3/params.npy batch/params.npy && cmp -s rep3/batches.npy batch/batches.npy; then
    ok "replay of minibatch trace reproduces train's params.npy and batches.npy"
else fail "replay of minibatch trace reproduces train's params.npy and batches.npy" "$(cmp rep3/params.npy batch/params.npy 2>&1)"; fi
expect_ok "replay --precision mpfr:128" "$EPK" replay init --out "$W/rep4" --precision mpfr:128

# A manifest as Python's json.dump writes it (one line), and .npy v2.0/v3.0 headers
MANIFEST='{"format": "epk-trace", "version": 1, "model": {"input_dim": 64, "layers": [{"type": "linear", "out_features": 8, "bias": true}, {"type": "tanh"}, {"type": "linear", "out_features": 10, "bias": true}]}, "loss": {"type": "cross_entropy", "reduction": "mean"}, "optimizer": {"type": "sgd", "learning_rate": 0.1, "steps": 5}}'
cp -r full py
printf '%s' "$MANIFEST" >py/manifest.json
run "$EPK" predict full --json; cp "$W/out" "$W/pred_full.json"
run "$EPK" predict py --json
if [ "$RC" -eq 0 ] && cmp -s "$W/out" "$W/pred_full.json"; then ok "predict accepts a json.dump-style manifest (same outputs)"
else fail "predict accepts a json.dump-style manifest (same outputs)" "exit $RC -- $(err1)"; fi
for v in 2 3; do
    cp -r full "v$v"
    off=$(data_offset full/x_train.npy)
    dict="{'descr': '<f8', 'fortran_order': False, 'shape': (40, 64), }"
    n=$((${#dict} + 1)); pad=$(((64 - (12 + n) % 64) % 64)); hl=$((n + pad))
    { printf "\\223NUMPY\\00$v\\000\\$(printf %03o $((hl % 256)))\\$(printf %03o $((hl / 256)))\\000\\000"
      printf '%s%*s\n' "$dict" "$pad" ''; tail -c +$((off + 1)) full/x_train.npy; } >"v$v/x_train.npy"
    run "$EPK" predict "v$v" --json
    if [ "$RC" -eq 0 ] && cmp -s "$W/out" "$W/pred_full.json"; then ok "predict accepts .npy version $v.0"
    else fail "predict accepts .npy version $v.0" "exit $RC -- $(err1)"; fi
done

# Output directory that exists and is not empty: exit 2, contents untouched
mkdir -p busy && echo keep >busy/keep.txt
expect_fail "train --out non-empty dir" busy "exist|empty" --unchanged busy -- "$EPK" train --out "$W/busy" "${SMALL[@]}"
expect_fail "replay --out non-empty dir" busy "exist|empty" --unchanged busy -- "$EPK" replay init --out "$W/busy"
: >plainfile
expect_fail "train --out an existing regular file" plainfile "" -- "$EPK" train --out "$W/plainfile" "${SMALL[@]}"
# A parent directory that does not exist is bad input: one line, nothing written
expect_fail "train --out DIR whose parent does not exist" no-parent "" --absent no-parent \
    -- "$EPK" train --out "$W/no-parent/sub" "${SMALL[@]}"
expect_fail "replay --out DIR whose parent does not exist" no-parent "" --absent no-parent \
    -- "$EPK" replay init --out "$W/no-parent/sub"

# ---- bad traces --------------------------------------------------------------

# mk BASE NAME: a fresh copy of trace BASE at $W/bad/NAME; prints the path
mkdir bad
mk() { rm -rf "bad/$2"; cp -r "$1" "bad/$2"; echo "$W/bad/$2"; }

# bad_trace NAME DIR NEEDLE RULE [replay]: predict (and replay) reject DIR
bad_trace() {
    local name=$1 dir=$2 needle=$3 rule=$4
    expect_fail "predict: $name" "$needle" "$rule" --unchanged "$dir" -- "$EPK" predict "$dir"
    expect_fail "predict --json: $name" "$needle" "$rule" --unchanged "$dir" -- "$EPK" predict "$dir" --json
    expect_fail "verify: $name" "$needle" "$rule" --unchanged "$dir" -- "$EPK" verify "$dir" --json
    expect_fail "compare: $name" "$needle" "$rule" --unchanged "$dir" -- "$EPK" compare "$dir" --json
    expect_fail "kernel: $name" "$needle" "$rule" --absent "$W/newdir" --unchanged "$dir" \
        -- "$EPK" kernel "$dir" --out "$W/newdir"
    if [ "${5-}" = replay ]; then
        expect_fail "replay: $name" "$needle" "$rule" --absent "$W/newdir" --unchanged "$dir" \
            -- "$EPK" replay "$dir" --out "$W/newdir"
    fi
}
setup_fail() { fail "$1" "test setup failed"; }

D=$(mk full trunc); head -c 1000 full/x_train.npy >"$D/x_train.npy"
bad_trace "truncated x_train.npy" "$D" x_train.npy "trunc|short|promise|exceed" replay

D=$(mk full magic); poke "$D/x_train.npy" 1 'X'
bad_trace "wrong magic in x_train.npy" "$D" x_train.npy "magic|not a .npy" replay

D=$(mk full trailing); printf 'garbage' >>"$D/params.npy"
bad_trace "trailing bytes after params.npy data" "$D" params.npy "trailing|extra|size" replay

D=$(mk full rows)
if header_edit "$D/x_train.npy" "s/(40, 64)/(90, 64)/"; then
    bad_trace "x_train.npy header claims more rows than present" "$D" x_train.npy "trunc|short|promise|exceed|size" replay
else setup_fail "x_train.npy header claims more rows"; fi

D=$(mk full f2)
if header_edit "$D/x_train.npy" "s/'<f8'/'<f2'/"; then
    bad_trace "x_train.npy dtype <f2" "$D" x_train.npy "dtype" replay
else setup_fail "x_train.npy dtype <f2"; fi

D=$(mk full bigendian)
if header_edit "$D/params.npy" "s/'<f8'/'>f8'/"; then
    bad_trace "params.npy dtype >f8 (big-endian)" "$D" params.npy "dtype|endian"
else setup_fail "params.npy dtype >f8"; fi

D=$(mk full fortran)   # "False," -> "True, ": same length, header stays consistent
if header_edit "$D/x_train.npy" "s/'fortran_order': False,/'fortran_order': True, /"; then
    bad_trace "x_train.npy fortran_order True" "$D" x_train.npy "fortran" replay
else setup_fail "x_train.npy fortran_order True"; fi

D=$(mk full fortran2)  # the same, written from scratch (a 2x2 <f8 array)
{ npy_header '<f8' '(2, 2)' | sed "1s/'fortran_order': False,/'fortran_order': True, /"; head -c 32 /dev/zero; } >"$D/x_test.npy"
bad_trace "x_test.npy fortran_order True (written from scratch)" "$D" x_test.npy "fortran"

D=$(mk full nan); poke "$D/params.npy" $(($(data_offset full/params.npy) + 8 * 7)) "$F8_NAN"
bad_trace "NaN in params.npy" "$D" params.npy "nan" replay

D=$(mk init nan_init); poke "$D/init_params.npy" $(($(data_offset init/init_params.npy) + 8 * 9)) "$F8_NAN"
bad_trace "NaN in init_params.npy" "$D" init_params.npy "nan" replay

D=$(mk full inf); poke "$D/x_train.npy" $(($(data_offset full/x_train.npy) + 8 * 3)) "$F8_PINF"
bad_trace "+inf in x_train.npy" "$D" x_train.npy "inf" replay

D=$(mk batch bidx); { npy_header '<i8' '(5, 8)'; i8 $(seq 0 38) 40; } >"$D/batches.npy"
bad_trace "batches.npy index out of range (N)" "$D" batches.npy "range" replay
D=$(mk batch bneg); { npy_header '<i8' '(5, 8)'; i8 -1 $(seq 1 39); } >"$D/batches.npy"
bad_trace "batches.npy index out of range (-1)" "$D" batches.npy "range"
D=$(mk batch brep); { npy_header '<i8' '(5, 8)'; i8 $(seq 0 38) 32; } >"$D/batches.npy"
bad_trace "batches.npy row repeats an index" "$D" batches.npy "repeat|duplicate" replay
D=$(mk batch bshape); { npy_header '<i8' '(4, 8)'; i8 $(seq 0 31); } >"$D/batches.npy"
bad_trace "batches.npy rows disagree with steps" "$D" batches.npy "disagree|steps|shape"
D=$(mk initbatch bgood); { npy_header '<i8' '(5, 8)'; i8 $(seq 0 39); } >"$D/batches.npy"
expect_ok "control: a valid hand-written batches.npy is accepted by replay" "$EPK" replay "$D" --out "$W/bgood_out"

D=$(mk full label); poke "$D/y_train.npy" $(($(data_offset full/y_train.npy) + 8 * 3)) '\012\000\000\000\000\000\000\000'
bad_trace "label out of range (C) in y_train.npy" "$D" y_train.npy "range" replay
D=$(mk full labelneg); poke "$D/y_train.npy" $(($(data_offset full/y_train.npy))) '\377\377\377\377\377\377\377\377'
bad_trace "label out of range (-1) in y_train.npy" "$D" y_train.npy "range"

# manifest cases: edits of the json.dump-style manifest
bad_manifest() {  # bad_manifest NAME SED_EXPR RULE [BASE] [replay]
    local D; D=$(mk "${4:-full}" "m$MCOUNT"); MCOUNT=$((MCOUNT + 1))
    printf '%s' "$MANIFEST" | sed "$2" >"$D/manifest.json"
    if [ "$(printf '%s' "$MANIFEST")" = "$(cat "$D/manifest.json")" ]; then setup_fail "$1"; return; fi
    bad_trace "$1" "$D" manifest.json "$3" "${5-}"
}
MCOUNT=0
bad_manifest "manifest: unknown layer type" 's/"tanh"/"swish"/' "swish|layer" full replay
bad_manifest "manifest: unknown loss" 's/"cross_entropy"/"hinge"/' "hinge|loss"
bad_manifest "manifest: unknown loss reduction" 's/"mean"/"avg"/' "avg|reduction"
bad_manifest "manifest: optimizer 'rmsprop'" 's/"sgd"/"rmsprop"/' "rmsprop" full replay
bad_manifest "manifest: optimizer field 'momentum' < 0" 's/"type": "sgd",/"type": "sgd", "momentum": -0.9,/' "momentum.*>= 0" init replay
bad_manifest "manifest: version 4" 's/"version": 1/"version": 4/' "version 4 is not supported"
bad_manifest "manifest: format not epk-trace" 's/"epk-trace"/"epk-trace2"/' "format"
bad_manifest "manifest: invalid JSON" 's/"version": 1,/"version": 1/' "json" full replay
bad_manifest "manifest: out_features 0" 's/"out_features": 8/"out_features": 0/' "out_features"
# (input_dim and steps disagreeing with the arrays: the arrays are the ones named)
D=$(mk full dim); printf '%s' "$MANIFEST" | sed 's/"input_dim": 64/"input_dim": 63/' >"$D/manifest.json"
bad_trace "manifest input_dim disagrees with x_train.npy" "$D" x_train.npy "input_dim|disagree|shape" replay
D=$(mk full steps); printf '%s' "$MANIFEST" | sed 's/"steps": 5/"steps": 6/' >"$D/manifest.json"
bad_trace "manifest steps disagree with params.npy rows" "$D" params.npy "steps|disagree|shape" replay

# learning_rates.npy (<f8, [S]) and shape/dtype disagreements between files
LR5='\232\231\231\231\231\231\271\077'   # 0.1 as <f8
D=$(mk init lrlen); { npy_header '<f8' '(4,)'; printf "$LR5$LR5$LR5$LR5"; } >"$D/learning_rates.npy"
bad_trace "learning_rates.npy length disagrees with steps" "$D" learning_rates.npy "steps|disagree|shape" replay
D=$(mk init lrnan); { npy_header '<f8' '(5,)'; printf "$LR5$LR5$F8_NAN$LR5$LR5"; } >"$D/learning_rates.npy"
bad_trace "NaN in learning_rates.npy" "$D" learning_rates.npy "nan" replay
D=$(mk init lrf4); { npy_header '<f4' '(5,)'; head -c 20 /dev/zero; } >"$D/learning_rates.npy"
bad_trace "learning_rates.npy dtype <f4" "$D" learning_rates.npy "dtype"
D=$(mk init lrgood); { npy_header '<f8' '(5,)'; printf "$LR5$LR5$LR5$LR5$LR5"; } >"$D/learning_rates.npy"
expect_ok "control: a valid hand-written learning_rates.npy is accepted by replay" "$EPK" replay "$D" --out "$W/lrgood_out"
D=$(mk full xtestdim); { npy_header '<f8' '(2, 63)'; head -c 1008 /dev/zero; } >"$D/x_test.npy"
bad_trace "x_test.npy columns disagree with input_dim" "$D" x_test.npy "input_dim|disagree|shape"
D=$(mk full xtestdtype); { npy_header '<f4' '(2, 64)'; head -c 512 /dev/zero; } >"$D/x_test.npy"
bad_trace "x_test.npy dtype differs from x_train.npy" "$D" x_test.npy "dtype"
D=$(mk full ylen); { npy_header '<i8' '(39,)'; head -c 312 /dev/zero; } >"$D/y_train.npy"
bad_trace "y_train.npy length disagrees with x_train.npy" "$D" y_train.npy "disagree|shape"
D=$(mk full yfloat); { npy_header '<f8' '(40,)'; head -c 320 /dev/zero; } >"$D/y_train.npy"
bad_trace "y_train.npy float labels with cross_entropy" "$D" y_train.npy "dtype"
D=$(mk full xint)
if header_edit "$D/x_train.npy" "s/'<f8'/'<i8'/"; then
    bad_trace "x_train.npy dtype <i8" "$D" x_train.npy "dtype"
else setup_fail "x_train.npy dtype <i8"; fi
D=$(mk full hlen); poke "$D/x_train.npy" 8 '\074'   # header length 60: cuts the dict
bad_trace "x_train.npy header length field too short" "$D" x_train.npy "header|malformed"
D=$(mk full emptyman); : >"$D/manifest.json"
bad_trace "empty manifest.json" "$D" manifest.json "json"

D=$(mk full noxtrain); rm "$D/x_train.npy"
bad_trace "missing x_train.npy" "$D" x_train.npy "missing|exist|required" replay
D=$(mk full nomanifest); rm "$D/manifest.json"
bad_trace "missing manifest.json" "$D" manifest.json "missing|exist|required"
D=$(mk full noparams); rm "$D/params.npy"
bad_trace "neither params.npy nor init_params.npy" "$D" params.npy "missing|required"

# trace format version 2: optimizer fields and the recorded optimizer state
if [ -f adamw/manifest.json ]; then
    # state_npy FILE [POKE_BYTES]: a [P] <f8 array of zeros, its first value poked
    state_npy() { { npy_header '<f8' "($P,)"; head -c $((8 * P)) /dev/zero; } >"$1"
        [ -z "${2-}" ] || poke "$1" "$(data_offset "$1")" "$2"; }
    F8_MINUS_HALF='\000\000\000\000\000\000\340\277'  # -0.5
    D=$(mk adamw v2resume); sed -i 's/"amsgrad": true/"amsgrad": true, "initial_step": 3/' "$D/manifest.json"
    bad_trace "v2: resumed (initial_step 3) without the recorded state" "$D" init_exp_avg.npy "missing required file" replay
    state_npy "$D/init_exp_avg.npy"; state_npy "$D/init_exp_avg_sq.npy"; state_npy "$D/init_max_exp_avg_sq.npy"
    # (the recorded rows are a fresh run's, so the strict audit would fail it: the reader is what is tested here)
    expect_ok "control: a resumed adamw trace with its recorded state is accepted by predict" "$EPK" predict "$D" --json --allow-unexplained-steps
    run "$EPK" predict "$D"
    if [ "$RC" -eq 1 ] && grep -q "not the declared training: step 0" "$W/err"; then
        ok "predict: a fresh run's rows declared as a resumed run fail the audit (exit 1)"
    else fail "predict: a fresh run's rows declared as a resumed run fail the audit (exit 1)" "exit $RC -- $(err1)"; fi
    expect_ok "replay of a resumed adamw trace: exit 0" "$EPK" replay "$D" --out "$W/rep_resumed"
    has_files "replay of a resumed adamw trace keeps the recorded state" "$W/rep_resumed" init_exp_avg.npy init_exp_avg_sq.npy \
        init_max_exp_avg_sq.npy params.npy -- init_momentum_buffer.npy
    if [ -f "$W/rep_resumed/manifest.json" ]; then
        manifest_has "replay of a resumed adamw trace keeps initial_step" "$W/rep_resumed/manifest.json" '"initial_step":3'
    fi
    D=$(mk "$D" v2negative); state_npy "$D/init_exp_avg_sq.npy" "$F8_MINUS_HALF"
    bad_trace "v2: negative value in init_exp_avg_sq.npy" "$D" init_exp_avg_sq.npy "negative" replay
    D=$(mk full v2unused); state_npy "$D/init_exp_avg.npy"
    bad_trace "v2: init_exp_avg.npy with SGD" "$D" init_exp_avg.npy "not used" replay
    D=$(mk momentum v2nobuffer); sed -i 's/"nesterov": true,/"nesterov": true, "initial_step": 2,/' "$D/manifest.json"
    bad_trace "v2: resumed SGD with momentum without init_momentum_buffer.npy" "$D" init_momentum_buffer.npy "missing required file"
    D=$(mk adamw v2betas); sed -i 's/^\( *\)0\.99$/\11.5/' "$D/manifest.json"
    if grep -q '1\.5' "$D/manifest.json"; then bad_trace "v2: betas[1] = 1.5" "$D" manifest.json "betas\[1\].*\[0, 1\)" replay
    else setup_fail "v2: betas[1] = 1.5"; fi
    D=$(mk adamw v2maximize); sed -i 's/"amsgrad": true/"amsgrad": true, "maximize": true/' "$D/manifest.json"
    bad_trace "v2: maximize=true" "$D" manifest.json "maximize=true is not implemented"
    D=$(mk adamw v2momentum); sed -i 's/"amsgrad": true/"amsgrad": true, "momentum": 0.9/' "$D/manifest.json"
    bad_trace "v2: momentum on adamw" "$D" manifest.json "momentum.*option of sgd"
fi

fi  # ---- end trace checks (BASES_OK)

expect_fail "predict: trace path does not exist" no-such-trace "" -- "$EPK" predict "$W/no-such-trace"
expect_fail "replay: trace path does not exist" no-such-trace "" --absent "$W/newdir" \
    -- "$EPK" replay "$W/no-such-trace" --out "$W/newdir"

# ---- verify and kernel ------------------------------------------------------------
# verify_keys NAME: $W/out is verify's JSON with the documented keys and "ok": true
verify_keys() {
    local k missing=()
    for k in precision unit_roundoff steps outputs_initial outputs_final reconstruction residual_max_abs \
             residual_max_over_u ok budget breakpoints quadrature_error_estimate remainder_max; do
        grep -q "\"$k\"[[:space:]]*:" "$W/out" || missing+=("$k")
    done
    if [ ${#missing[@]} -eq 0 ] && grep -q '"ok"[[:space:]]*:[[:space:]]*true' "$W/out"; then ok "$1"
    else fail "$1" "missing keys: ${missing[*]-}; $(grep '"ok"' "$W/out")"; fi
}
if [ $BASES_OK = 1 ]; then
for t in full batch mse init initbatch float decay; do
    run "$EPK" verify "$t" --json
    if [ "$RC" -eq 0 ]; then verify_keys "verify --json of $t: exit 0, keys, ok"
    else fail "verify --json of $t: exit 0" "exit $RC -- $(err1) $(grep -E '"ok"|residual_max_abs' "$W/out" | tr -d '\n')"; fi
done
run "$EPK" verify batch --json --precision mpfr:128
if [ "$RC" -eq 0 ] && grep -q '"reconstruction_decimal"' "$W/out" && grep -q '"precision"[[:space:]]*:[[:space:]]*"mpfr:128"' "$W/out"; then
    ok "verify --precision mpfr:128: decimals of every digit"
else fail "verify --precision mpfr:128: decimals of every digit" "exit $RC -- $(err1)"; fi
run "$EPK" verify full
if [ "$RC" -eq 0 ] && grep -q "^OK" "$W/out" && grep -q "reconstruction" "$W/out"; then ok "verify (text): table and OK line"
else fail "verify (text): table and OK line" "exit $RC -- $(head -c 300 "$W/out")"; fi
expect_ok "train a ReLU run with big steps" "$EPK" train --out "$W/relu" --n-train 40 --n-test 10 --steps 5 --activation relu --hidden 8,8 --lr 2
expect_ok "verify of the ReLU run (breakpoints, exact rule)" "$EPK" verify "$W/relu" --precision long-double
run "$EPK" verify "$W/relu" --json
if grep -q '"breakpoints"' "$W/out" && ! tr -d ' \n' <"$W/out" | grep -q '"breakpoints":\[0\(,0\)*\]'; then ok "verify: the ReLU run crosses kinks"
else fail "verify: the ReLU run crosses kinks" "$(grep -A3 breakpoints "$W/out" | tr -d '\n')"; fi

expect_ok "kernel --steps 0,2-3" "$EPK" kernel full --out "$W/k1" --steps 0,2-3
has_files "kernel: files" "$W/k1" bias.npy contributions.npy coefficients.npy remainder.npy outputs_final.npy kernel_step_0.npy \
    kernel_step_2.npy kernel_step_3.npy -- kernel_step_1.npy kernel_step_4.npy manifest.json
header_has "kernel: bias.npy [M, C]" k1/bias.npy "'shape': (10, 10)"
header_has "kernel: contributions.npy [M, N, C]" k1/contributions.npy "'shape': (10, 40, 10)"
header_has "kernel: kernel_step_2.npy [M, N, C, C]" k1/kernel_step_2.npy "'shape': (10, 40, 10, 10)"
header_has "kernel: coefficients.npy [S, N, C]" k1/coefficients.npy "'shape': (5, 40, 10)"
header_has "kernel: float64" k1/contributions.npy "'<f8'"
expect_ok "kernel without --steps (no per-step kernels)" "$EPK" kernel batch --out "$W/k2" --precision float128
has_files "kernel without --steps: files" "$W/k2" bias.npy contributions.npy remainder.npy outputs_final.npy -- kernel_step_0.npy
for bad in 5 3-1 x 1,,2 "" 0- all,1 -1; do
    expect_fail "kernel --steps '$bad'" --steps "" --absent "$W/newdir" -- "$EPK" kernel full --out "$W/newdir" --steps "$bad"
done
mkdir -p "$W/nonempty" && echo keep >"$W/nonempty/file"
expect_fail "kernel --out a non-empty directory" nonempty "not empty" --unchanged "$W/nonempty" \
    -- "$EPK" kernel full --out "$W/nonempty"
expect_fail "kernel: missing --out" --out "" -- "$EPK" kernel full
expect_fail "verify: --threads abc" --threads "" -- "$EPK" verify full --threads abc
expect_fail "verify: two traces" "" "" -- "$EPK" verify full batch
expect_fail "verify: trace path does not exist" no-such-trace "" -- "$EPK" verify "$W/no-such-trace"
run "$EPK" compare full --json
if [ "$RC" -eq 0 ] && grep -q '"methods"' "$W/out" && grep -q '"tangent_per_step"' "$W/out" && grep -q '"ntk_init"' "$W/out" \
    && grep -q '"error_max_abs"' "$W/out" && grep -q '"gauss:8"' "$W/out"; then ok "compare --json: methods with reconstruction and error"
else fail "compare --json: methods with reconstruction and error" "exit $RC -- $(err1)"; fi
expect_ok "compare (text), chosen methods, float128" "$EPK" compare batch --methods exact,midpoint,gauss:3 --precision float128
expect_fail "compare: unknown method" --methods "unknown method" -- "$EPK" compare full --methods exact,simpson
expect_fail "compare: gauss:0" --methods "" -- "$EPK" compare full --methods gauss:0
expect_fail "compare: midpoint:x" --methods "" -- "$EPK" compare full --methods midpoint:x
expect_ok "compare: composite midpoint and trapezoid" "$EPK" compare full --methods midpoint:4,trapezoid:3
run "$EPK" study --quick --sweeps step_size,precision --out "$W/study"
if [ "$RC" -eq 0 ] && [ -s "$W/study/runs.csv" ] && [ -s "$W/study/orders.csv" ] && [ -s "$W/study/report.md" ] \
    && [ -s "$W/study/step_size.svg" ] && [ -s "$W/study/precision.svg" ] && [ ! -e "$W/study/nodes.svg" ] \
    && grep -q "Fitted orders" "$W/study/report.md" && grep -q "^step_size,tangent_per_step,eta,power," "$W/study/orders.csv" \
    && grep -q "\[1/" "$W/err"; then ok "study --quick: CSV, orders, report, one plot per sweep, progress"
else fail "study --quick: CSV, orders, report, one plot per sweep, progress" "exit $RC -- $(err1)"; fi
# ---- check: another implementation's arrays against epk's --------------------------
expect_ok "check: epk's own kernel files (a directory) agree" "$EPK" check full --against "$W/k1"
expect_ok "check: single files, repeated --against, --json" "$EPK" check full --against "$W/k1/bias.npy" --against "$W/k1/kernel_step_3.npy" --json
if grep -q '"max_relative_error"' "$W/out" && grep -q '"quantity": "kernel_step_3"' "$W/out" && grep -q '"ok": true' "$W/out"; then
    ok "check --json: per-file errors and ok"
else fail "check --json: per-file errors and ok" "$(head -c 300 "$W/out")"; fi
"$EPK" kernel full --out "$W/kf" --steps 0,2-3 --precision float >/dev/null 2>&1
run "$EPK" check full --against "$W/kf"
if [ "$RC" -eq 1 ] && grep -q "OUTSIDE" "$W/out" && grep -q "theirs" "$W/out"; then ok "check: float results against the double reference exit 1, worst entries shown"
else fail "check: float results against the double reference exit 1, worst entries shown" "exit $RC -- $(head -c 300 "$W/out")"; fi
expect_ok "check: the same float results within --tolerance 1e-4" "$EPK" check full --against "$W/kf" --tolerance 1e-4
expect_fail "check: no --against" --against "" -- "$EPK" check full
expect_fail "check: --against without files" --against "" -- "$EPK" check full --against --tolerance 1e-3
mkdir -p "$W/chk_unknown" && cp "$W/k1/bias.npy" "$W/chk_unknown/bogus.npy"
expect_fail "check: unknown file name" bogus.npy "unknown result file name" -- "$EPK" check full --against "$W/chk_unknown"
mkdir -p "$W/chk_nan" && cp "$W/k1/outputs_final.npy" "$W/chk_nan/outputs_final.npy"
poke "$W/chk_nan/outputs_final.npy" $(($(data_offset "$W/k1/outputs_final.npy") + 8 * 5)) "$F8_NAN"
expect_fail "check: NaN in a result file" outputs_final.npy "NaN" -- "$EPK" check full --against "$W/chk_nan"
"$EPK" train --out "$W/short" --n-train 40 --n-test 10 --hidden 8 --steps 3 >/dev/null 2>&1
expect_fail "check: shape of another trace" coefficients.npy "shape" -- "$EPK" check "$W/short" --against "$W/k1/coefficients.npy"
"$EPK" kernel full --out "$W/k5" --steps 4 >/dev/null 2>&1
expect_fail "check: kernel step beyond the trace" kernel_step_4.npy "not a step" -- "$EPK" check "$W/short" --against "$W/k5/kernel_step_4.npy"
mkdir -p "$W/chk_dup" && cp "$W/k1/outputs_final.npy" "$W/chk_dup/predictions.npy"
expect_fail "check: predictions.npy and outputs_final.npy both" outputs_final.npy "same quantity" -- "$EPK" check full --against "$W/chk_dup" "$W/k1/outputs_final.npy"
expect_fail "check: missing file" no-such.npy "does not exist" -- "$EPK" check full --against "$W/no-such.npy"
expect_fail "check: --tolerance -1" --tolerance "" -- "$EPK" check full --against "$W/k1" --tolerance -1
expect_fail "check: --tolerance nan" --tolerance "" -- "$EPK" check full --against "$W/k1" --tolerance nan

# ---- memory: refused before any work, never allocated --------------------------------
# A trace of well under 1 MiB whose kernel arrays would take tens of GiB.
awk 'BEGIN { for (i = 0; i < 40000; i++) printf "%d,%d\n", i % 97, i % 3 }' >"$W/many.csv"
"$EPK" train --out "$W/big" --data "$W/many.csv" --n-train 20000 --n-test 20000 --hidden 4 --steps 1 >/dev/null 2>&1
expect_fail "kernel: a small trace asking for tens of GiB is refused" big "GiB.*limit" --absent "$W/bigk" \
    -- "$EPK" kernel "$W/big" --out "$W/bigk"
run env EPK_MEMORY_LIMIT_GIB=0.0000001 "$EPK" verify full
if [ "$RC" -eq 2 ] && grep -q "EPK_MEMORY_LIMIT_GIB" "$W/err"; then ok "verify: EPK_MEMORY_LIMIT_GIB lowers the limit"
else fail "verify: EPK_MEMORY_LIMIT_GIB lowers the limit" "exit $RC -- $(err1)"; fi
expect_fail "EPK_MEMORY_LIMIT_GIB=abc" EPK_MEMORY_LIMIT_GIB "positive" -- env EPK_MEMORY_LIMIT_GIB=abc "$EPK" predict full

# ---- a recorded path read row by row (EPK_STREAM_MIB=0: params.npy stays on disk)
run "$EPK" verify full --json; cp "$W/out" "$W/verify_loaded.json"; RC1=$RC
run env EPK_STREAM_MIB=0 "$EPK" verify full --json
if [ "$RC1" -eq 0 ] && [ "$RC" -eq 0 ] && cmp -s "$W/out" "$W/verify_loaded.json"; then
    ok "verify: a streamed params.npy gives the same JSON, byte for byte"
else fail "verify: a streamed params.npy gives the same JSON, byte for byte" "exit $RC1/$RC -- $(err1)"; fi
run env EPK_STREAM_MIB=0 "$EPK" replay full --out "$W/rep_streamed"
if [ "$RC" -eq 0 ] && grep -q "max |replayed - recorded|" "$W/out"; then ok "replay: a streamed recorded path"
else fail "replay: a streamed recorded path" "exit $RC -- $(err1)"; fi
expect_fail "EPK_STREAM_MIB=x" EPK_STREAM_MIB "MiB" -- env EPK_STREAM_MIB=x "$EPK" verify full

# ---- verify: the recorded-path audit ---------------------------------------------
run "$EPK" verify full --json
if [ "$RC" -eq 0 ] && grep -q '"audit"' "$W/out" && grep -q '"at_rounding_level": true' "$W/out" \
    && grep -q '"residual_without_remainder_max_abs"' "$W/out" && grep -q '"over_recording_u"' "$W/out"; then
    ok "verify --json: the recorded-path audit"
else fail "verify --json: the recorded-path audit" "exit $RC -- $(err1)"; fi

# ---- train --data FILE.csv: features standardised over the training rows (--no-scale: raw)
printf 'a,b,label\n100,0.001,0\n200,0.002,1\n300,0.003,0\n400,0.004,1\n500,0.005,0\n600,0.006,1\n700,0.007,1\n800,0.001,0\n' >"$W/scale.csv"
run "$EPK" train --out "$W/csv_scaled" --data "$W/scale.csv" --n-train 6 --n-test 2 --steps 2; RC1=$RC; cp "$W/out" "$W/out_scaled"
run "$EPK" train --out "$W/csv_raw" --data "$W/scale.csv" --n-train 6 --n-test 2 --steps 2 --no-scale
if [ "$RC1" -eq 0 ] && [ "$RC" -eq 0 ] && grep -q "features standardised" "$W/out_scaled" && ! grep -q "standardised" "$W/out" \
    && python3 - "$W/csv_scaled/x_train.npy" "$W/csv_raw/x_train.npy" <<'PY'
import struct, sys
def rows(path):
    b = open(path, "rb").read(); hl = struct.unpack("<H", b[8:10])[0]; off = 10 + hl
    v = struct.unpack("<%dd" % ((len(b) - off) // 8), b[off:]); return [v[i:i + 2] for i in range(0, len(v), 2)]
s, r = rows(sys.argv[1]), rows(sys.argv[2])
for j in range(2):
    col = [x[j] for x in s]; m = sum(col) / len(col); sd = (sum((c - m) ** 2 for c in col) / len(col)) ** 0.5
    assert abs(m) < 1e-12 and abs(sd - 1) < 1e-12, (j, m, sd)
assert all(x[0] in (100, 200, 300, 400, 500, 600, 700, 800) for x in r), r
PY
then ok "train --data FILE.csv: features standardised over the training rows; --no-scale keeps them raw"
else fail "train --data FILE.csv: features standardised over the training rows; --no-scale keeps them raw" "exit $RC1/$RC -- $(err1)"; fi

# ---- explain: proponents and opponents of each prediction ------------------------
run "$EPK" explain full --top 3
if [ "$RC" -eq 0 ] && grep -q "^test point 0: class" "$W/out" && grep -q "proponents  #" "$W/out" && grep -q "opponents" "$W/out"; then
    ok "explain: per test point, proponents and opponents"
else fail "explain: per test point, proponents and opponents" "exit $RC -- $(err1)"; fi
run "$EPK" explain full --top 2 --csv
if [ "$RC" -eq 0 ] && [ "$(head -n 1 "$W/out")" = "test_point,predicted_class,kind,rank,train_index,train_label,contribution" ] \
    && [ "$(grep -c ',proponent,' "$W/out")" -le 20 ] && grep -q ',opponent,1,' "$W/out"; then ok "explain --csv: one row per listed training point"
else fail "explain --csv: one row per listed training point" "exit $RC -- $(head -n 2 "$W/out")"; fi
run "$EPK" explain momentum --json
if [ "$RC" -eq 0 ] && grep -q '"proponents"' "$W/out" && grep -q '"optimizer_term"' "$W/out" && grep -q '"training_points"' "$W/out"; then
    ok "explain --json: a momentum run, with its optimizer term"
else fail "explain --json: a momentum run, with its optimizer term" "exit $RC -- $(err1)"; fi
run "$EPK" explain full --top 1 --by-step
if [ "$RC" -eq 0 ] && grep -q "by layer: layers\[0\] linear" "$W/out" && grep -q "by step: " "$W/out"; then
    ok "explain: each listed contribution split by layer and, with --by-step, by step"
else fail "explain: each listed contribution split by layer and, with --by-step, by step" "exit $RC -- $(head -c 300 "$W/out")"; fi
run "$EPK" explain full --top 1 --no-layers
if [ "$RC" -eq 0 ] && ! grep -q "by layer" "$W/out"; then ok "explain --no-layers: no split"
else fail "explain --no-layers: no split" "exit $RC"; fi
expect_fail "explain: --json and --csv" --csv "not both" -- "$EPK" explain full --json --csv
expect_fail "explain: --top 0" --top "" -- "$EPK" explain full --top 0

# ---- strict audit: a recorded path that is not the declared training fails ----------
# Misdescribed runs: the learning rate changed, the schedule left out, a layer dropped, the
# momentum left out, every step shrunk (as gradient clipping does).  verify, kernel, check
# and predict exit 1 with one line naming the worst step; kernel writes nothing;
# --allow-unexplained-steps accepts the run (exit 0, a note).
mis() { rm -rf "$W/mis/$2"; mkdir -p "$W/mis"; cp -r "$W/$1" "$W/mis/$2"; echo "$W/mis/$2"; }
D=$(mis full lr); sed -i 's/"learning_rate": *0\.1\b/"learning_rate": 0.105/' "$D/manifest.json"
D=$(mis decay noschedule); rm "$D/learning_rates.npy"
D=$(mis full droplayer)
python3 - "$D/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m["model"]["layers"] = [l for l in m["model"]["layers"] if l["type"] != "tanh"]
json.dump(m, open(sys.argv[1], "w"), indent=2)
PY
D=$(mis momentum nomomentum)
python3 - "$D/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for k in ("momentum", "nesterov", "dampening"): m["optimizer"].pop(k, None)
json.dump(m, open(sys.argv[1], "w"), indent=2)
PY
D=$(mis full clipped)
python3 - "$D/params.npy" <<'PY'
import struct, sys
# float64 rows [S+1, P]: w'[s+1] = w'[s] + 0.8 (w[s+1] - w[s]), as a clipped run would record
b = open(sys.argv[1], "rb").read()
hl = struct.unpack("<H", b[8:10])[0]; off = 10 + hl
hdr = b[10:off].decode(); shape = eval(hdr[hdr.index("(") : hdr.index(")") + 1])
v = list(struct.unpack("<%dd" % (shape[0] * shape[1]), b[off:]))
P = shape[1]; out = v[:P]
for s in range(1, shape[0]):
    out += [out[(s - 1) * P + q] + 0.8 * (v[s * P + q] - v[(s - 1) * P + q]) for q in range(P)]
open(sys.argv[1], "wb").write(b[:off] + struct.pack("<%dd" % len(out), *out))
PY
# stderr without progress lines
err_lines() { grep -v '^  ' "$W/err"; }
for c in lr noschedule droplayer nomomentum clipped; do
    D="$W/mis/$c"
    for cmd in verify predict; do
        for js in "" --json; do
            run "$EPK" $cmd "$D" $js
            if [ "$RC" -eq 1 ] && [ "$(err_lines | wc -l)" -eq 1 ] \
                && err_lines | grep -q "$c: the recorded path is not the declared training: step [0-9]"; then
                ok "$cmd $js: misdescribed run ($c) fails, exit 1, one line naming the step"
            else fail "$cmd $js: misdescribed run ($c) fails, exit 1, one line naming the step" "exit $RC -- $(err1)"; fi
        done
    done
    run "$EPK" explain "$D" --json
    if [ "$RC" -eq 1 ] && [ "$(err_lines | wc -l)" -eq 1 ] && err_lines | grep -q "not the declared training: step"; then
        ok "explain: misdescribed run ($c) fails, exit 1"
    else fail "explain: misdescribed run ($c) fails, exit 1" "exit $RC -- $(err1)"; fi
    run "$EPK" kernel "$D" --out "$W/mis_k"
    if [ "$RC" -eq 1 ] && [ ! -e "$W/mis_k" ] && err_lines | grep -q "not the declared training: step"; then
        ok "kernel: misdescribed run ($c) fails, nothing written"
    else fail "kernel: misdescribed run ($c) fails, nothing written" "exit $RC -- $(err1)"; rm -rf "$W/mis_k"; fi
    run "$EPK" verify "$D" --json --allow-unexplained-steps
    if [ "$RC" -eq 0 ] && grep -q '"path_explained": false' "$W/out" && grep -q '"at_rounding_level": false' "$W/out" \
        && err_lines | grep -q "note: .*accepted: --allow-unexplained-steps"; then
        ok "verify --allow-unexplained-steps: misdescribed run ($c) accepted with a note"
    else fail "verify --allow-unexplained-steps: misdescribed run ($c) accepted with a note" "exit $RC -- $(err1)"; fi
done
# check: arrays that match epk's (written with --allow-unexplained-steps) still fail on the audit
run "$EPK" kernel "$W/mis/lr" --out "$W/mis_lr_k" --allow-unexplained-steps
RC1=$RC
run "$EPK" check "$W/mis/lr" --against "$W/mis_lr_k" --json
if [ "$RC1" -eq 0 ] && [ "$RC" -eq 1 ] && grep -q '"files_within_tolerance": true' "$W/out" \
    && grep -q '"path_explained": false' "$W/out" && [ "$(err_lines | wc -l)" -eq 1 ]; then
    ok "check: matching arrays of a misdescribed run fail on the audit (exit 1)"
else fail "check: matching arrays of a misdescribed run fail on the audit (exit 1)" "exit $RC1/$RC -- $(err1)"; fi
run "$EPK" check "$W/mis/lr" --against "$W/mis_lr_k" --allow-unexplained-steps
if [ "$RC" -eq 0 ] && grep -q "recorded-path audit" "$W/out"; then ok "check --allow-unexplained-steps: exit 0, the audit line shown"
else fail "check --allow-unexplained-steps: exit 0, the audit line shown" "exit $RC -- $(err1)"; fi
# the faithful runs pass everywhere, with the audit in kernel's output
for c in full decay momentum adamw; do
    run "$EPK" kernel "$W/$c" --out "$W/strict_k_$c"
    if [ "$RC" -eq 0 ] && grep -q '"at_rounding_level": true' "$W/strict_k_$c/audit.json" \
        && grep -q "the recorded steps are the declared training" "$W/out"; then ok "kernel: $c passes the strict audit, audit.json written"
    else fail "kernel: $c passes the strict audit, audit.json written" "exit $RC -- $(err1)"; fi
    run "$EPK" predict "$W/$c" --json
    if [ "$RC" -eq 0 ] && grep -q '"path_explained": true' "$W/out"; then ok "predict --json: $c audited, explained"
    else fail "predict --json: $c audited, explained" "exit $RC -- $(err1)"; fi
done

expect_fail "study: unknown sweep" --sweeps "unknown sweep" --absent "$W/newdir" -- "$EPK" study --sweeps step_size,bogus --out "$W/newdir"
expect_fail "study: empty sweep list" --sweeps "" --absent "$W/newdir" -- "$EPK" study --sweeps "" --out "$W/newdir"
expect_fail "study --out a non-empty directory" nonempty "not empty" --unchanged "$W/nonempty" -- "$EPK" study --quick --out "$W/nonempty"
printf '1,0\n2,1\n3,0\n' >"$W/tiny.csv"
expect_fail "study: a data set too small, refused before any run" tiny.csv "at least 40 rows" --absent "$W/newdir" -- "$EPK" study --data "$W/tiny.csv" --out "$W/newdir"
expect_fail "study: unknown data set" no-such.csv "" --absent "$W/newdir" -- "$EPK" study --quick --data "$W/no-such.csv" --out "$W/newdir"
fi

# ---- bad command lines ---------------------------------------------------------

expect_fail "unknown command" frobnicate "unknown|command" -- "$EPK" frobnicate
expect_fail "predict: unknown option" --frobnicate "unknown|option" -- "$EPK" predict full --frobnicate
expect_fail "train: unknown option" --frobnicate "unknown|option" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" "${SMALL[@]}" --frobnicate
expect_fail "replay: unknown option" --frobnicate "unknown|option" --absent "$W/newdir" \
    -- "$EPK" replay init --out "$W/newdir" --frobnicate
expect_fail "train: --out without a value" --out "" -- "$EPK" train --out
expect_fail "replay: missing --out" --out "" -- "$EPK" replay init
for p in mpfr:1 quad mpfr:100001 mpfr:; do
    expect_fail "predict --precision $p" --precision "" -- "$EPK" predict full --precision "$p"
    expect_fail "train --precision $p" --precision "" --absent "$W/newdir" \
        -- "$EPK" train --out "$W/newdir" "${SMALL[@]}" --precision "$p"
done
expect_fail "replay --precision quad" --precision "" --absent "$W/newdir" \
    -- "$EPK" replay init --out "$W/newdir" --precision quad
expect_fail "train --steps -3" --steps "" --absent "$W/newdir" -- "$EPK" train --out "$W/newdir" --steps -3
expect_fail "train --steps 3x" --steps "" --absent "$W/newdir" -- "$EPK" train --out "$W/newdir" --steps 3x
expect_fail "train --lr nan" --lr "" --absent "$W/newdir" -- "$EPK" train --out "$W/newdir" --lr nan
expect_fail "train --lr inf" --lr "" --absent "$W/newdir" -- "$EPK" train --out "$W/newdir" --lr inf
expect_fail "train --batch-size larger than n-train" --batch-size "" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" "${SMALL[@]}" --batch-size 41
expect_fail "train --loss hinge" --loss "" --absent "$W/newdir" -- "$EPK" train --out "$W/newdir" --loss hinge
# optimizer options: torch's checks, one line naming the option, nothing written
expect_fail "train --momentum -1" --momentum ">= 0" --absent "$W/newdir" -- "$EPK" train --out "$W/newdir" --momentum -1
expect_fail "train --optimizer rmsprop" --optimizer "unknown optimizer" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --optimizer rmsprop
expect_fail "train --nesterov without --momentum" --nesterov "momentum" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --nesterov
expect_fail "train --nesterov with --dampening" --nesterov "dampening" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --momentum 0.9 --dampening 0.1 --nesterov
expect_fail "train --optimizer adam --momentum 0.9" --momentum "sgd option" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --optimizer adam --momentum 0.9
expect_fail "train --amsgrad with sgd" --amsgrad "adam" --absent "$W/newdir" -- "$EPK" train --out "$W/newdir" --amsgrad
for b in 0.9,1 0.9 -0.1,0.9 0.9,x 0.9,0.99,0.5; do
    expect_fail "train --betas $b" --betas "\[0, 1\)" --absent "$W/newdir" \
        -- "$EPK" train --out "$W/newdir" --optimizer adamw --betas "$b"
done
expect_fail "train --eps -1e-8" --eps ">= 0" --absent "$W/newdir" -- "$EPK" train --out "$W/newdir" --optimizer adam --eps -1e-8
expect_fail "train --weight-decay -0.1" --weight-decay ">= 0" --absent "$W/newdir" -- "$EPK" train --out "$W/newdir" --weight-decay -0.1
expect_fail "train --weight-decay inf" --weight-decay "finite" --absent "$W/newdir" -- "$EPK" train --out "$W/newdir" --weight-decay inf
expect_fail "train --data missing.csv" missing.csv "" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --data "$W/missing.csv"

# ---- version 3: a CNN from --model, every command on it -------------------
cat >"$W/cnn.json" <<'JSON'
{"input_shape": [1, 8, 8], "layers": [
  {"type": "Conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1}, {"type": "ReLU"},
  {"type": "MaxPool2d", "kernel_size": 2},
  {"type": "residual", "body": [{"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1}, {"type": "tanh"}],
   "shortcut": []},
  {"type": "avg_pool2d", "kernel_size": 2}, {"type": "flatten"}, {"type": "linear", "out_features": 10}]}
JSON
expect_ok "train --model cnn.json" "$EPK" train --out "$W/cnn" --model "$W/cnn.json" --n-train 12 --n-test 3 --steps 2 --lr 0.2 --momentum 0.9
manifest_has "train --model writes a version 3 manifest with input_shape and canonical names" "$W/cnn/manifest.json" \
    '"version":3,' '"input_shape":[1,8,8]' '"type":"conv2d"' '"type":"residual"' '"momentum":0.9' -- Conv2d ReLU input_dim
expect_ok "predict on a version 3 CNN" "$EPK" predict "$W/cnn"
expect_ok "verify on a version 3 CNN" "$EPK" verify "$W/cnn"
expect_ok "verify --precision mpfr:80 on a version 3 CNN" "$EPK" verify "$W/cnn" --precision mpfr:80
expect_ok "kernel on a version 3 CNN" "$EPK" kernel "$W/cnn" --out "$W/cnn-k"
expect_ok "check on a version 3 CNN" "$EPK" check "$W/cnn" --against "$W/cnn-k"
expect_ok "compare on a version 3 CNN" "$EPK" compare "$W/cnn" --methods exact,gauss:2
expect_fail "train --model with --hidden" --hidden "MLP option" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --model "$W/cnn.json" --hidden 8
printf '%s' '[{"type": "Conv2d", "out_channels": 2, "kernel_size": 3}, {"type": "flatten"}, {"type": "linear", "out_features": 10}]' >"$W/list.json"
expect_ok "train --model: a bare list starting with a conv takes the digits as 1x8x8 images" \
    "$EPK" train --out "$W/cnnlist" --model "$W/list.json" --n-train 6 --n-test 2 --steps 1
printf '%s' '[{"type": "conv2d", "out_channels": 2, "kernel_size": 3}, {"type": "flatten"}, {"type": "linear", "out_features": 3}]' >"$W/vec.json"
expect_fail "train --model: a conv on vectors (iris)" vec.json "needs a \[C, H, W\] input" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --model "$W/vec.json" --data iris
printf '%s' '{"input_shape": [1, 8, 8], "layers": [{"type": "flatten"}, {"type": "linear", "out_features": 3}]}' >"$W/three.json"
expect_fail "train --model: outputs != classes" three.json "3 entries but the data have 10 classes" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --model "$W/three.json"
printf '%s' '{"input_shape": [1, 4, 4], "layers": [{"type": "flatten"}, {"type": "linear", "out_features": 10}]}' >"$W/small.json"
expect_fail "train --model: input_shape != features" small.json "has 16 entries but the data have 64 features" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --model "$W/small.json"
printf '%s' '{"input_shape": [1, 8, 8], "layers": [{"type": "residual", "body": [{"type": "BatchNorm2d"}]}, {"type": "flatten"}, {"type": "linear", "out_features": 10}]}' >"$W/bn.json"
expect_fail "train --model: batch norm refused with the layer's path" bn.json "layers\[0\]\.body\[0\]: BatchNorm2d is not supported" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --model "$W/bn.json"
printf '%s' '{"input_shape": [1, 8' >"$W/broken.json"
expect_fail "train --model: not JSON" broken.json "not valid JSON" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --model "$W/broken.json"

# ---- version 3: a transformer on modular addition (token inputs, sequence layers) ----------
npy_descr() { head -c 128 "$1" | tr -d '\000' | grep -ao "'descr': '[^']*'" | sed "s/'descr': '//; s/'//"; }
cat >"$W/tf.json" <<'JSON'
{"layers": [
  {"type": "embedding", "num_embeddings": 6, "embedding_dim": 8},
  {"type": "positional_embedding"},
  {"type": "residual", "body": [{"type": "layer_norm", "normalized_shape": [8]},
                                {"type": "self_attention", "num_heads": 2, "causal": true}], "shortcut": []},
  {"type": "residual", "body": [{"type": "linear", "out_features": 8}, {"type": "relu"},
                                {"type": "linear", "out_features": 8}], "shortcut": []},
  {"type": "select", "index": -1}, {"type": "linear", "out_features": 5}]}
JSON
expect_ok "train --data modadd:5 --model tf.json (AdamW)" "$EPK" train --out "$W/tf" --data modadd:5 --model "$W/tf.json" \
    --steps 3 --optimizer adamw --lr 0.01 --n-test 4
manifest_has "modadd: token ids as <i8 with input_dtype int64 and the sequence layers" "$W/tf/manifest.json" \
    '"input_shape":[3],"input_dtype":"int64"' '"type":"embedding","num_embeddings":6,"embedding_dim":8' \
    '"type":"self_attention","num_heads":2,"bias":true,"causal":true' '"type":"select","index":-1'
if [ "$(npy_descr "$W/tf/x_train.npy")" = "<i8" ] && [ "$(npy_descr "$W/tf/x_test.npy")" = "<i8" ]; then
    ok "modadd: x_train.npy and x_test.npy are <i8"
else
    fail "modadd: token arrays" "descr $(npy_descr "$W/tf/x_train.npy") $(npy_descr "$W/tf/x_test.npy")"
fi
expect_ok "predict on a transformer" "$EPK" predict "$W/tf"
expect_ok "verify on a transformer" "$EPK" verify "$W/tf"
expect_ok "verify --precision mpfr:80 on a transformer" "$EPK" verify "$W/tf" --precision mpfr:80
expect_ok "verify --unstructured on a transformer" "$EPK" verify "$W/tf" --unstructured
expect_ok "kernel on a transformer" "$EPK" kernel "$W/tf" --out "$W/tf-k"
expect_ok "check on a transformer" "$EPK" check "$W/tf" --against "$W/tf-k"
expect_ok "compare on a transformer" "$EPK" compare "$W/tf" --methods exact,gauss:2
expect_ok "explain on a transformer" "$EPK" explain "$W/tf" --top 2
run "$EPK" certify "$W/tf" --bits 128
if [ "$RC" -eq 1 ] && grep -q "certify does not cover this layer kind yet" "$W/out" "$W/err"; then
    ok "certify refuses the sequence layers (exit 1, the layer named)"
else
    fail "certify on a transformer" "exit $RC -- $(head -c 300 "$W/out") $(err1)"
fi
expect_fail "modadd without --model" "modadd" "need --model" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --data modadd:5
expect_fail "modadd:1" "modadd:1" "P must be an integer in \[2, 1000\]" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --data modadd:1 --model "$W/tf.json"
expect_fail "modadd:5:1.5" "modadd:5:1.5" "FRACTION" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --data modadd:5:1.5 --model "$W/tf.json"
expect_fail "modadd with an MLP's model on real features" "tf.json" "token ids" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --data iris --model "$W/tf.json"
sed 's/"num_embeddings": 6/"num_embeddings": 5/' "$W/tf.json" >"$W/tf-v5.json"
expect_fail "modadd: a vocabulary smaller than the data's" "tf-v5.json" "num_embeddings is 5" --absent "$W/newdir" \
    -- "$EPK" train --out "$W/newdir" --data modadd:5 --model "$W/tf-v5.json"
sed 's/"num_heads": 2/"num_heads": 3/' "$W/tf.json" >"$W/tf-h3.json"
expect_fail "self_attention: D not divisible by num_heads" "tf-h3.json" "layers\[2\]\.body\[1\]: self_attention embed_dim 8 is not divisible by num_heads 3" \
    --absent "$W/newdir" -- "$EPK" train --out "$W/newdir" --data modadd:5 --model "$W/tf-h3.json"
sed 's/"index": -1/"index": 3/' "$W/tf.json" >"$W/tf-sel.json"
expect_fail "select: index out of range" "tf-sel.json" "layers\[4\]: select index 3 is out of range for 3 tokens" \
    --absent "$W/newdir" -- "$EPK" train --out "$W/newdir" --data modadd:5 --model "$W/tf-sel.json"
sed 's/{"type": "positional_embedding"}/{"type": "embedding", "num_embeddings": 6, "embedding_dim": 8}/' "$W/tf.json" >"$W/tf-emb.json"
expect_fail "embedding not first" "tf-emb.json" "layers\[1\]: embedding must be the first layer" \
    --absent "$W/newdir" -- "$EPK" train --out "$W/newdir" --data modadd:5 --model "$W/tf-emb.json"
# the low byte of x_test[0, 1] (an id < 6: its other bytes are 0) becomes 6
D=$(mk tf tok_range); poke "$D/x_test.npy" "$(($(data_offset "$D/x_test.npy") + 8))" '\006'
expect_fail "verify: a token id out of range" x_test.npy "token id 6 at row 0, position 1 is out of range \[0, 6\)" \
    --absent "$W/newdir" -- "$EPK" kernel "$D" --out "$W/newdir"
D=$(mk tf tok_float)
if header_edit "$D/x_train.npy" "s/'<i8'/'<f8'/"; then
    expect_fail "verify: float token ids" x_train.npy "dtype must be <i8 \(token ids" -- "$EPK" verify "$D"
else
    fail "verify: float token ids" "test bug: header edit failed"
fi

# ---- certify (Arb): exit 0 certified, 1 not (or outside what certify covers), 2 bad input
run "$EPK" certify "$W/relu" --bits 64
if grep -q "has no Arb" "$W/err"; then
    ok "certify: this build has no Arb (skipped)"
else
    run "$EPK" certify "$W/relu" --bits 128 --json
    if [ "$RC" -eq 0 ] && grep -q '"certified": true' "$W/out" && grep -q '"residual"' "$W/out" \
        && grep -q '"outputs_final"' "$W/out" && grep -q '"rad"' "$W/out"; then
        ok "certify --json of the big-step ReLU run: certified, enclosures written"
    else
        fail "certify --json of the big-step ReLU run" "exit $RC -- $(head -c 300 "$W/out") $(err1)"
    fi
    run "$EPK" certify "$W/relu" --bits 128 --max-width 1e-300
    if [ "$RC" -eq 1 ] && grep -q "NOT CERTIFIED: the widest enclosure" "$W/out"; then
        ok "certify --max-width tighter than the enclosures: exit 1"
    else
        fail "certify --max-width 1e-300" "exit $RC -- $(head -c 300 "$W/out")"
    fi
    run "$EPK" certify full --bits 128
    if [ "$RC" -eq 0 ] && grep -q "Gauss nodes with analytic error bounds" "$W/out" && grep -q "^CERTIFIED" "$W/out"; then
        ok "certify of a tanh run: certified through the analytic error bound"
    else
        fail "certify of a tanh run" "exit $RC -- $(head -c 300 "$W/out")"
    fi
    run "$EPK" train --out "$W/adamc" --optimizer adam --lr 0.01 --steps 2 --n-train 10 --n-test 2 --hidden 4 --activation relu
    run "$EPK" certify "$W/adamc" --contributions --json
    if [ "$RC" -eq 0 ] && grep -q '"certified": *true' "$W/out" && grep -q '"contributions"' "$W/out" &&
        grep -q '"optimizer_term"' "$W/out"; then
        ok "certify --contributions of an Adam run: certified (the optimizer's shares in balls)"
    else
        fail "certify of an Adam run" "exit $RC -- $(head -c 300 "$W/out") $(err1)"
    fi
    run "$EPK" certify "$W/cnn" --bits 128  # relu, max pool, then tanh in a residual body: mixed
    if [ "$RC" -eq 0 ] && grep -q "^CERTIFIED" "$W/out" && grep -q "pattern changes" "$W/out"; then
        ok "certify of a CNN mixing relu, max pool and tanh (momentum): certified"
    else
        fail "certify of a mixed CNN" "exit $RC -- $(head -c 300 "$W/out") $(err1)"
    fi
    expect_fail "certify over EPK_MEMORY_LIMIT_GIB" relu "would need about" \
        -- env EPK_MEMORY_LIMIT_GIB=0.00001 "$EPK" certify "$W/relu" --contributions --bits 4096
    expect_fail "certify --bits 8" --bits "\[64, 100000\]" -- "$EPK" certify "$W/relu" --bits 8
    expect_fail "certify --max-width -1" --max-width "positive" -- "$EPK" certify "$W/relu" --max-width -1
    expect_fail "certify: trace path does not exist" no-such-trace "" -- "$EPK" certify "$W/no-such-trace"
fi

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]

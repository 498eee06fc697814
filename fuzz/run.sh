#!/usr/bin/env bash
# fuzz/run.sh BUILD_DIR SECONDS — run every libFuzzer target built in BUILD_DIR/fuzz:
# first its committed seeds (fuzz/corpus/<target>) and the bad-file regression corpus
# (tests/corpus/bad/<target>: npy, manifest, csv) once, then
# SECONDS of fuzzing from it, with the limits the readers promise: no input may take
# more than 10 s or 1 GiB.  Exit 1 on any crash, leak, sanitizer report, timeout or
# out-of-memory (the reproducer is left in BUILD_DIR/fuzz-artifacts/).
set -u -o pipefail
build=$1
seconds=${2:-15}
here="$(cd "$(dirname "$0")" && pwd)"
artifacts="$build/fuzz-artifacts"
mkdir -p "$artifacts"
status=0
for target in npy manifest csv trace; do
    bin="$build/fuzz/fuzz_$target"
    work="$(mktemp -d)"
    cp "$here/corpus/$target/"* "$work/" 2>/dev/null
    [ -d "$here/../tests/corpus/bad/$target" ] && cp "$here/../tests/corpus/bad/$target/"* "$work/" 2>/dev/null
    start=$(date +%s)
    if "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=1024 \
        -dict="$here/$target.dict" -artifact_prefix="$artifacts/$target-" -print_final_stats=1 \
        "$work" >"$artifacts/$target.log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$artifacts/$target.log" | grep -o '[0-9]*$')
        echo "fuzz_$target: ok, ${runs:-?} inputs in $(($(date +%s) - start)) s, corpus $(ls "$work" | wc -l) files"
    else
        echo "fuzz_$target: FAILED (log: $artifacts/$target.log)"
        grep -E "ERROR|SUMMARY|Test unit written" "$artifacts/$target.log" | head -5
        status=1
    fi
    rm -rf "$work"
done
exit $status

#!/usr/bin/env bash
# Builds the libFuzzer targets (with AddressSanitizer) and runs each for a while.
#
#   Tests/Fuzz/run.sh [SECONDS] [TARGET...]     targets: frame-decoder record-batch handlers (default: the first two)
#
# `handlers` is the structure-aware fuzzer of the request handlers (Tests/ClusterTests/HandlerFuzzTests.swift):
# generated frames with extreme values fed into a range server shard and a placement driver member in process. It
# runs seed after seed, 20,000 requests per server each, until SECONDS pass; a failing seed is printed (run it again
# with ES_FUZZ_SEED=<seed>). `swift test` runs it briefly (3,000 requests, one random seed) on every CI run.
#
# Runs start from the seed corpus in Tests/Fuzz/Corpus/<target>, copied to a scratch directory so that what the
# fuzzer finds does not land in the repository. A crash leaves its input as crash-* in the current directory and
# fails the script. The last lines of each run (executions, coverage) are printed.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
seconds="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame-decoder record-batch)
scratch="$root/.build-fuzz"
cd "$root"
if [ "${targets[*]}" = "handlers" ]; then
    swift build --build-tests >&2
    end=$((SECONDS + seconds))
    runs=0
    while [ "$SECONDS" -lt "$end" ]; do
        seed=$(( (RANDOM << 16 | RANDOM) + 1 ))
        if ! ES_FUZZ_SEED="$seed" ES_FUZZ_ITERATIONS="${ES_FUZZ_ITERATIONS:-20000}" \
            swift test --skip-build --no-parallel --filter HandlerFuzzTests > "$scratch-handlers.log" 2>&1; then
            grep -E "SEED|✘|Fatal|overflow|at /" "$scratch-handlers.log" | head -40 >&2
            echo "handlers: seed $seed failed (log: $scratch-handlers.log)" >&2
            exit 1
        fi
        runs=$((runs + 1))
    done
    echo "== handlers: $runs seeds, ${ES_FUZZ_ITERATIONS:-20000} requests per server each, no failure"
    exit 0
fi
for t in "${targets[@]}"; do
    swift build --scratch-path "$scratch" -c debug \
        -Xswiftc -sanitize=fuzzer,address -Xswiftc -D -Xswiftc FUZZING --product "fuzz-$t" 2>&1 \
        | grep -v "ld.gold: warning: Cannot export local symbol" >&2
done
for t in "${targets[@]}"; do
    case "$t" in
        frame-decoder) corpus=frame ;;
        record-batch) corpus=record ;;
        *) echo "unknown target $t" >&2; exit 2 ;;
    esac
    work="$(mktemp -d)"
    cp "$root/Tests/Fuzz/Corpus/$corpus"/* "$work"/
    echo "== fuzz-$t for ${seconds}s"
    "$scratch/debug/fuzz-$t" -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 "$work" 2>&1 \
        | grep -E "^(#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb|==[0-9]+==ERROR|SUMMARY)" \
        | tail -n 6
    status=${PIPESTATUS[0]}
    rm -rf "$work"
    if [ "$status" -ne 0 ]; then
        echo "fuzz-$t failed (exit $status); see crash-* files" >&2
        exit "$status"
    fi
done

#!/usr/bin/env bash
# Runs N seeds of the cluster simulation (default 500) on every core, in batches of one process each, and prints the
# failing seeds. A failing seed replays exactly with:
#   SWIFT_DETERMINISTIC_HASHING=1 .build-sim/release/es-sim --seed S --verbose
#
#   Tests/Simulation/run.sh [N] [FIRST]      seeds FIRST .. FIRST+N-1 (FIRST defaults to 1)
set -euo pipefail
count=${1:-500}
first=${2:-1}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
swift build -c release --product es-sim --scratch-path "$root/.build-sim" >&2
bin="$root/.build-sim/release/es-sim"
export SWIFT_DETERMINISTIC_HASHING=1
jobs=$(nproc)
batch=25
out=$(mktemp -d)
last=$((first + count - 1))
start=$(date +%s)
running=0
for ((lo = first; lo <= last; lo += batch)); do
    hi=$((lo + batch - 1)); ((hi > last)) && hi=$last
    "$bin" --seeds "$lo-$hi" > "$out/$lo.txt" 2>/dev/null || true &
    running=$((running + 1))
    if ((running >= jobs)); then wait -n; running=$((running - 1)); fi
done
wait
end=$(date +%s)
cat "$out"/*.txt | grep -E '^seed [0-9]+ (ok|FAIL)' > "$out/all" || true
ran=$(wc -l < "$out/all")
failed=$(grep -c ' FAIL ' "$out/all" || true)
# A batch that died (a crash in the engine) leaves its seeds without a line: they count as failures.
missing=$((count - ran))
echo "seeds $count ran $ran failed $failed missing $missing wall $((end - start))s on $jobs cores"
grep -h -A12 ' FAIL ' "$out"/*.txt | grep -E '^(seed|  violation)' | head -60 || true
if ((failed > 0 || missing > 0)); then
    echo "failing seeds: $(grep ' FAIL ' "$out/all" | awk '{print $2}' | tr '\n' ' ')"
    for f in "$out"/*.txt; do
        lo=$(basename "$f" .txt)
        done_seeds=$(grep -cE '^seed [0-9]+ (ok|FAIL)' "$f" || true)
        hi=$((lo + batch - 1)); ((hi > last)) && hi=$last
        if ((done_seeds < hi - lo + 1)); then echo "batch $lo-$hi stopped after $done_seeds seeds (a crash): rerun it to see"; fi
    done
    exit 1
fi

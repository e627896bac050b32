#!/usr/bin/env bash
# Chaos test of a three-node Elastic Stream cluster: see Tests/Chaos/README.md.
#
#   Tests/Chaos/run.sh [--minutes N] [--bin DIR] [--seed S] [--workdir D] [other chaos.py options]
#
# Defaults: 10 minutes, binaries from .build-chaos/release (else .build/release), seed from the clock, work dir
# /var/tmp/es-chaos/run-<date>-<pid>. Exit status: 0 when every check passed, 1 when a record was lost, duplicated,
# altered or invented (or the cluster never healed), 2 when the harness could not run, 130 when interrupted.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

bin=""
workdir=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=$2; shift 2 ;;
        --bin=*) bin=${1#--bin=}; shift ;;
        --workdir) workdir=$2; shift 2 ;;
        --workdir=*) workdir=${1#--workdir=}; shift ;;
        -h|--help) exec python3 "$here/chaos.py" --workdir /nonexistent --help ;;
        *) args+=("$1"); shift ;;
    esac
done
if [ -z "$bin" ]; then
    if [ -x "$root/.build-chaos/release/elastic-stream" ]; then bin=$root/.build-chaos/release; else bin=$root/.build/release; fi
fi
bin=$(cd "$bin" 2>/dev/null && pwd || echo "$bin")
if [ -z "$workdir" ]; then
    workdir=/var/tmp/es-chaos/run-$(date +%Y%m%d-%H%M%S)-$$
fi
mkdir -p "$workdir" || exit 2
workdir=$(cd "$workdir" && pwd)

child=""
# Whatever happens to chaos.py, kill the processes it started (it lists their pids in $workdir/pids): only those
# still running one of the two binaries from $bin.
cleanup() {
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$child" 2>/dev/null
    fi
    if [ -f "$workdir/pids" ]; then
        local server client exe
        server=$(readlink -f "$bin/elastic-stream")
        client=$(readlink -f "$bin/esctl")
        while read -r pid _; do
            exe=$(readlink -f "/proc/$pid/exe" 2>/dev/null) || continue
            if [ "$exe" = "$server" ] || [ "$exe" = "$client" ]; then kill -KILL "$pid" 2>/dev/null; fi
        done < "$workdir/pids"
    fi
}
trap cleanup EXIT
# On Ctrl-C, SIGTERM or SIGHUP: ask chaos.py to stop (it kills its processes and exits).
trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null' INT TERM HUP

python3 "$here/chaos.py" --bin "$bin" --workdir "$workdir" "${args[@]}" &
child=$!
while :; do
    wait "$child"
    status=$?
    kill -0 "$child" 2>/dev/null || break    # else `wait` was interrupted by a signal: wait again
done
child=""
exit "$status"

#!/usr/bin/env bash
# The README's "run" command: installs what is missing, builds, starts one Elastic Stream node (reactor, embedded
# placement driver, range server; data under /var/tmp/elastic-stream/standalone) from Config/standalone.toml, shows
# esctl creating a stream, appending records and reading them back, then keeps the node serving until Ctrl-C (which
# stops it cleanly: it reports itself offline, drains and exits).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-deps
swift build -c release --product elastic-stream
swift build -c release --product esctl
bin="$(swift build -c release --show-bin-path)"
config="${ES_CONFIG:-Config/standalone.toml}"

"$bin/elastic-stream" --config "$config" > /tmp/elastic-stream-quickstart.out &
node=$!
trap 'kill -TERM $node 2>/dev/null; wait $node 2>/dev/null || true' INT TERM EXIT
for _ in $(seq 1 100); do
    grep -q READY /tmp/elastic-stream-quickstart.out 2>/dev/null && break
    kill -0 $node 2>/dev/null || { echo "elastic-stream exited; see its log above" >&2; exit 1; }
    sleep 0.1
done
grep -q READY /tmp/elastic-stream-quickstart.out || { echo "elastic-stream did not start" >&2; exit 1; }
sleep 1.5   # the range server registers with the placement driver

esctl() { echo "\$ esctl $*" >&2; "$bin/esctl" "$@"; }
esctl cluster status
stream="$(esctl stream create --replicas 1)"
echo "$stream"
printf 'hello\nelastic\nstream\n' | esctl append "$stream"
printf 'one more\n' | esctl append "$stream"
esctl read "$stream"
esctl range list "$stream"
esctl stream describe "$stream" --json

echo
echo "The node keeps serving on 127.0.0.1:2380 (placement driver) and 127.0.0.1:10911 (range server)."
echo "Try: $bin/esctl tail $stream   (and append from another terminal). Ctrl-C stops the node."
wait $node

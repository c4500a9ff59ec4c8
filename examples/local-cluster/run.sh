#!/usr/bin/env bash
# Start a three-node orch cluster on 127.0.0.1 (node-0 is master and worker,
# node-1 and node-2 are workers), run the quickstart session and 200,000 no-op
# frames on it, show the result, and stop the cluster. With --keep the cluster
# keeps running until Ctrl-C.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cargo build --release --manifest-path "$root/Cargo.toml" --bin orch-node --bin orchctl
bin="$root/target/release"
cd "$here"
mkdir -p logs
keep=${1:-}
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
for i in 0 1 2; do
  "$bin/orch-node" --cluster "node-$i.toml" >"logs/node-$i.log" 2>&1 &
  pids+=($!)
done
echo "waiting for 3 healthy workers (logs in $here/logs)"
ok=0
for _ in $(seq 1 50); do
  n=$("$bin/orchctl" --node 127.0.0.1:7701 status --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["workers_healthy"])' 2>/dev/null || echo 0)
  if [ "$n" = 3 ]; then ok=1; break; fi
  sleep 0.2
done
if [ "$ok" != 1 ]; then echo "the cluster did not form; see $here/logs" >&2; exit 1; fi
ctl() { "$bin/orchctl" --node 127.0.0.1:7701 "$@"; }
ctl workers
echo; echo "== the quickstart session (Mandelbrot frames through the command executor)"
ctl submit "$root/examples/quickstart.toml" --wait
echo; echo "== 200,000 no-op frames"
ctl submit "$root/examples/sessions/noop-200k.toml" --wait
echo; ctl sessions
echo; echo "frames and manifests are under $here/data/node-*/"
if [ "$keep" = "--keep" ]; then
  echo "cluster running; Ctrl-C stops it"
  wait
fi

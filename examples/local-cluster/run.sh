#!/usr/bin/env bash
# Start a three-node orch cluster on 127.0.0.1 (node-0 is master and worker,
# node-1 and node-2 are workers), show its workers, and stop it on Ctrl-C.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cargo build --release --manifest-path "$root/Cargo.toml" --bin orch-node --bin orchctl
bin="$root/target/release"
cd "$here"
mkdir -p logs
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
for i in 0 1 2; do
  "$bin/orch-node" --cluster "node-$i.toml" >"logs/node-$i.log" 2>&1 &
  pids+=($!)
done
echo "waiting for 3 healthy workers (logs in $here/logs)"
for _ in $(seq 1 50); do
  n=$("$bin/orchctl" --node 127.0.0.1:7701 status --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["workers_healthy"])' 2>/dev/null || echo 0)
  [ "$n" = 3 ] && break
  sleep 0.2
done
"$bin/orchctl" --node 127.0.0.1:7701 workers
"$bin/orchctl" --node 127.0.0.1:7721 status
echo "cluster running; Ctrl-C stops it"
wait

#!/usr/bin/env bash
# Benchmark the BackLess Cloud Tasks emulator against the peer Rust emulator
# `cloud-tasks-emulator` 0.1.3, in the same run, through both transports (REST via the
# official `google-cloud-tasks-v2` client, gRPC via the tonic client of
# `googleapis-tonic-google-cloud-tasks-v2`).
#
# For each emulator and transport: enqueue N tasks (default 10,000) into a paused queue,
# one CreateTask at a time (latency p50/p99), then resume the queue and time until a local
# sink has received them all (sustained dispatch throughput). Ours runs with rate limits
# off (--no-rate-limits); the peer cannot turn them off, so its queue uses the most the
# service allows (500/s, 5000 concurrent). Ours is also measured at that same 500/s cap.
#
# Usage: scripts/bench-emulator.sh [N]      (everything stays on 127.0.0.1)
set -euo pipefail

N="${1:-10000}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${BENCH_CACHE:-/work/cache/bench-tools}"
PEER="$CACHE/bin/cloud-tasks-emulator"
cd "$ROOT"

if [[ ! -x "$PEER" ]]; then
  echo "installing cloud-tasks-emulator 0.1.3 into $CACHE" >&2
  mkdir -p "$CACHE"
  CARGO_TARGET_DIR="$CACHE/target" cargo install cloud-tasks-emulator --version 0.1.3 --locked --root "$CACHE" >&2 \
    || CARGO_TARGET_DIR="$CACHE/target" cargo install cloud-tasks-emulator --version 0.1.3 --root "$CACHE" >&2
fi
cargo build --release -p backless-emulator --bin backless-emulator --example bench >&2
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OURS="$TARGET/release/backless-emulator"
BENCH="$TARGET/release/examples/bench"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() {
  for _ in $(seq 1 200); do
    if curl -fsS "http://127.0.0.1:$1/.well-known/openid-configuration" >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  echo "emulator on port $1 did not come up" >&2; return 1
}

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

RESULTS="$(mktemp)"
run_against() { # label port
  for transport in rest grpc; do
    "$BENCH" "http://127.0.0.1:$2" "$transport" "$N" "$1" | tee -a "$RESULTS"
  done
}

P1="$(free_port)"
RUST_LOG=warn "$OURS" --host 127.0.0.1 --port "$P1" --no-rate-limits --tombstone-ttl 0 >/dev/null 2>&1 & PIDS+=($!)
wait_up "$P1"
run_against "backless (rate limits off)" "$P1"

P2="$(free_port)"
RUST_LOG=warn "$OURS" --host 127.0.0.1 --port "$P2" --tombstone-ttl 0 >/dev/null 2>&1 & PIDS+=($!)
wait_up "$P2"
run_against "backless (500/s cap)" "$P2"

P3="$(free_port)"
LISTEN_ADDR="127.0.0.1:$P3" OIDC_ISSUER="http://127.0.0.1:$P3" QUEUES= RUST_LOG=warn "$PEER" >/dev/null 2>&1 & PIDS+=($!)
wait_up "$P3"
run_against "cloud-tasks-emulator 0.1.3" "$P3"

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
print()
print(f"{'emulator':30} {'transport':9} {'create p50 ms':>13} {'create p99 ms':>13} {'creates/s':>10} {'dispatch/s':>11} {'dispatched':>10}")
for r in rows:
    print(f"{r['label']:30} {r['transport']:9} {r['create_p50_ms']:13.3f} {r['create_p99_ms']:13.3f} {r['create_per_s']:10.0f} {r['dispatch_per_s']:11.0f} {r['dispatched']:>10}")
peer = {r["transport"]: r for r in rows if r["label"].startswith("cloud-tasks-emulator")}
print()
for label in ("backless (rate limits off)", "backless (500/s cap)"):
    for r in rows:
        if r["label"] != label or r["transport"] not in peer:
            continue
        p = peer[r["transport"]]
        print(f"{label} vs peer, {r['transport']}: create latency p50 peer/ours = {p['create_p50_ms']/r['create_p50_ms']:.2f}, "
              f"p99 peer/ours = {p['create_p99_ms']/r['create_p99_ms']:.2f}, dispatch throughput ours/peer = {r['dispatch_per_s']/p['dispatch_per_s']:.2f}")
PY

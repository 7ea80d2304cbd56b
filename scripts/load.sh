#!/usr/bin/env bash
# Load tests on loopback; every run stops by itself and cleans up what it started.
#
#   scripts/load.sh bench    issue 5: uploads/s (1 MB JPEG), p50/p99 upload latency, idle SSE
#                            connections one web process holds and its memory per connection;
#                            web on PostgreSQL + Redis, the queue paused (web alone is measured)
#   scripts/load.sh soak     issue 8: 200 uploaders + 1,000 idle SSE watchers for 60 s against web
#                            + emulator + worker; fails if a job is lost or a 5xx other than 503
#                            is seen; records peak RSS of web and worker
#   scripts/load.sh short    the soak, bounded for CI (10 uploaders, 100 watchers, 10 s)
#
# Needs the test PostgreSQL (BACKLESS_TEST_POSTGRES_URL, from scripts/test-services.sh) and
# redis-server. Knobs: PROFILE (dev|release, default dev: the build scripts/test.sh makes),
# SECONDS_RUN, UPLOADERS, WATCHERS, CONCURRENCY, DRAIN, JPEG_BYTES (soak), H2_STREAMS (bench: the
# watchers over HTTP/2, this many streams to a connection), WEB_WRAP (a command web
# runs under); BUILD=0 runs the binaries already built.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
mode="${1:-short}"
profile="${PROFILE:-dev}"
target="${CARGO_TARGET_DIR:-$root/target}/$([ "$profile" = dev ] && echo debug || echo "$profile")"

: "${BACKLESS_TEST_POSTGRES_URL:?run eval \"\$(scripts/test-services.sh)\" first}"
command -v redis-server >/dev/null || { echo "redis-server is missing (scripts/test-services.sh installs it)" >&2; exit 1; }
[ -f models/u2netp.safetensors ] || { echo "models/u2netp.safetensors is missing: scripts/fetch-models.sh" >&2; exit 1; }

if [ "${BUILD:-1}" = 0 ]; then
    : # use what is in $target as it is
elif [ "$profile" = dev ]; then
    # The build scripts/test.sh makes (binaries and examples alike): nothing to do after it.
    cargo test --quiet --workspace --no-run
else
    cargo build --quiet --profile "$profile" -p backless-web --bin web --example load \
        -p backless-worker --bin worker -p backless-emulator --bin backless-emulator
fi

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
work="$(mktemp -d)"
pids=()
db="backless_load_$$"
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    psql -q "$BACKLESS_TEST_POSTGRES_URL" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 1 600); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "timed out waiting for $1" >&2
    return 1
}

psql -q "$BACKLESS_TEST_POSTGRES_URL" -c "CREATE DATABASE $db" >/dev/null
redis_port=$(port) emu_port=$(port) worker_port=$(port) web_port=$(port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$work" >/dev/null &
pids+=($!)
queue=projects/dev/locations/local/queues/backless
"$target/backless-emulator" -host 127.0.0.1 -port "$emu_port" -queue "$queue" >"$work/emulator.log" 2>&1 &
pids+=($!)

export BACKLESS_DATABASE_URL="${BACKLESS_TEST_POSTGRES_URL%/*}/$db"
export BACKLESS_REDIS_URL="redis://127.0.0.1:$redis_port"
export BACKLESS_STORAGE_URL="file://$work/objects"
export BACKLESS_TASKS_ENDPOINT="http://127.0.0.1:$emu_port"
export BACKLESS_WORKER_URL="http://127.0.0.1:$worker_port"
export BACKLESS_WORKER_ADDR="127.0.0.1:$worker_port"
export BACKLESS_WEB_ADDR="127.0.0.1:$web_port"
export BACKLESS_PUSH_SECRET=load-test-push-secret
export BACKLESS_COOKIE_SECRET=load-test-cookie-secret-0123456789abcdef
export BACKLESS_MODELS_DIR="$root/models"
# Every uploader is a new client; keep the unwatched-job sweeper out of the way.
# (a finished job is deleted once its grace window after the last watcher ran out; keep them all
# for the final check).
export BACKLESS_UNWATCHED_TTL=2h BACKLESS_GRACE=2h BACKLESS_DATABASE_MAX_CONNECTIONS=20
# Every simulated client comes from 127.0.0.1: the per-address limits and quotas would make them
# one client (429s); the per-client limits stay on.
export BACKLESS_RATE_LIMIT_PER_IP=0 BACKLESS_MAX_LIVE_JOBS_PER_ADDR=0
export BACKLESS_MAX_STORED_BYTES_PER_ADDR=0 BACKLESS_MAX_SSE_PER_ADDR=0
# The queue sends no more pushes at once than the worker admits, as a production queue should be
# configured (cloudbuild.yaml): beyond it the worker answers 503 and the retries back off for
# minutes, which a burst of 200 uploads turns into a long drain.
in_flight="${WORKER_IN_FLIGHT:-8}"
export BACKLESS_WORKER_MAX_IN_FLIGHT="$in_flight"
export RUST_LOG=warn

"$target/web" migrate >/dev/null
wait_http "http://127.0.0.1:$emu_port/v2/$queue"
curl -fs -X PATCH "http://127.0.0.1:$emu_port/v2/$queue?updateMask=rateLimits.maxConcurrentDispatches" \
    -H 'content-type: application/json' \
    -d "{\"rateLimits\": {\"maxConcurrentDispatches\": $in_flight}}" >/dev/null
# WEB_WRAP runs web under a tool, e.g. WEB_WRAP="heaptrack -o /tmp/web" for a heap profile (the
# figures then measure the tool's process, not web).
${WEB_WRAP:-} "$target/web" >"$work/web.log" 2>&1 &
web_pid=$!
pids+=("$web_pid")
wait_http "http://127.0.0.1:$web_port/readyz"
web="http://127.0.0.1:$web_port"
load="$target/examples/load"

case "$mode" in
bench)
    curl -fs -X POST "http://127.0.0.1:$emu_port/v2/$queue:pause" >/dev/null
    "$load" bench --web "$web" --web-pid "$web_pid" --seconds "${SECONDS_RUN:-20}" \
        --concurrency "${CONCURRENCY:-32}" --watchers "${WATCHERS:-2000}" --h2 "${H2_STREAMS:-0}"
    ;;
soak | short)
    "$target/worker" serve >"$work/worker.log" 2>&1 &
    worker_pid=$!
    pids+=("$worker_pid")
    wait_http "http://127.0.0.1:$worker_port/readyz"
    if [ "$mode" = short ]; then
        set -- "${SECONDS_RUN:-10}" "${UPLOADERS:-10}" "${WATCHERS:-100}" "${DRAIN:-300}"
    else
        set -- "${SECONDS_RUN:-60}" "${UPLOADERS:-200}" "${WATCHERS:-1000}" "${DRAIN:-600}"
    fi
    "$load" soak --web "$web" --web-pid "$web_pid" --worker-pid "$worker_pid" \
        --seconds "$1" --uploaders "$2" --watchers "$3" --drain "$4" \
        --jpeg-bytes "${JPEG_BYTES:-1000000}" ||
        { echo "--- web log (tail)"; tail -20 "$work/web.log"; echo "--- worker log (tail)"; tail -20 "$work/worker.log"; exit 1; }
    ;;
*)
    echo "usage: scripts/load.sh bench|soak|short" >&2
    exit 2
    ;;
esac

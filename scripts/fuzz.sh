#!/usr/bin/env bash
# Run every fuzz target (fuzz/fuzz_targets/*) for a bounded time each.
#
#   scripts/fuzz.sh [seconds per target, default 60] [target ...]
#
# With a nightly toolchain: cargo-fuzz (installed with `cargo install` if missing) runs libFuzzer
# with AddressSanitizer from the checked-in seeds in fuzz/seeds/<target>/ (new inputs go to the
# ignored fuzz/corpus/<target>/); a crash is saved under fuzz/artifacts/<target>/ and fails the run.
# Copy it into fuzz/seeds/<target>/ and add a regression test where the bug is fixed.
#
# Without nightly (or with BACKLESS_FUZZ_STABLE=1): the same target functions run on stable over the
# seeds plus generated inputs (dev/tests/it/fuzz_corpus.rs, in the workspace's test build, which
# `cargo test --workspace` and so scripts/test.sh run too), scaled to the time asked for.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(upload decode emulator_rest emulator_grpc)
fi
if [ "${BACKLESS_FUZZ_STABLE:-0}" != 1 ] && cargo +nightly --version >/dev/null 2>&1; then
    export CARGO_TARGET_DIR="${BACKLESS_FUZZ_TARGET_DIR:-$root/fuzz/target}"
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked
    fi
    cargo +nightly fuzz build --features libfuzzer -O
    for t in "${targets[@]}"; do
        echo "==> fuzz $t for ${secs}s"
        mkdir -p "fuzz/corpus/$t"
        cargo +nightly fuzz run --features libfuzzer -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
            -max_total_time="$secs" -rss_limit_mb=4096 -max_len=262144 -timeout=20 \
            -print_final_stats=1
    done
else
    echo "==> stable run of the fuzz functions over seeds and generated inputs (BACKLESS_FUZZ_STABLE=1 or no nightly)"
    # About 100 inputs a second per target is a cautious estimate for the decode target.
    BACKLESS_FUZZ_ITERS="$((secs * 100))" cargo test -p backless-dev --features backless-web/s3 \
        --test it -- fuzz_corpus --nocapture
fi

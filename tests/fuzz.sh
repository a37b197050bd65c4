#!/usr/bin/env bash
# Run one of the coverage-guided fuzz targets (cargo fuzz and libFuzzer) for a bounded time,
# from its committed seeds: the sidecar's (sidecar/fuzz: checkpoint, segment) or the
# webhook engine's (webhook/fuzz: review, object, config).
# Fails if the target crashes: the input is left in tests/.work/fuzz/TARGET/artifacts/, to
# be turned into a regression test. Fails first if the fuzz crate's Cargo.lock is stale. The last line reports runs, executions per second and
# the coverage reached (libFuzzer's "cov" edges and "ft" features).
# Usage: tests/fuzz.sh checkpoint|segment|review|object|config [SECONDS, default 60]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
target=${1:?usage: tests/fuzz.sh checkpoint|segment|review|object|config [SECONDS]}
case "$target" in
  checkpoint | segment) fuzz_dir=sidecar/fuzz ;;
  review | object | config) fuzz_dir=webhook/fuzz ;;
  *)
    echo "error: no fuzz target $target; targets: checkpoint, segment (sidecar), review, object, config (webhook)" >&2
    exit 2
    ;;
esac
secs=${2:-60}
TOOLS="$ROOT/tests/.tools"
WORK="$ROOT/tests/.work/fuzz/$target"
if [ ! -x "$TOOLS/bin/cargo-fuzz" ]; then
  echo "==> installing cargo-fuzz 0.13.2"
  CARGO_TARGET_DIR="$ROOT/tests/.work/cargo-fuzz-target" \
    cargo install cargo-fuzz --version 0.13.2 --locked --root "$TOOLS" --quiet
  rm -rf "$ROOT/tests/.work/cargo-fuzz-target"
fi
export PATH="$TOOLS/bin:$PATH"
# AddressSanitizer (which also watches zstd's C code) needs a nightly compiler. Without one,
# libFuzzer still runs on stable, without the sanitizer: panics, integer overflows (debug
# assertions are on) and aborts are still crashes.
if rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=(+nightly) sanitizer=address
else
  toolchain=() sanitizer=none
fi
rm -rf "$WORK"
mkdir -p "$WORK/corpus" "$WORK/artifacts"
cd "$fuzz_dir"
# cargo fuzz rewrites a stale Cargo.lock without a word (this one once missed a crate the
# sidecar had gained), so a clean clone would fuzz dependencies nobody committed.
host=$(rustc -vV | sed -n 's/^host: //p')
if ! cargo fetch --locked --target "$host" >/dev/null 2>"$WORK/lock.log"; then
  cat "$WORK/lock.log" >&2
  echo "error: $fuzz_dir/Cargo.lock does not match its dependencies (or they cannot be fetched); run 'cargo fetch --manifest-path $fuzz_dir/Cargo.toml' and commit the updated $fuzz_dir/Cargo.lock" >&2
  exit 1
fi
echo "==> fuzzing $target for ${secs}s (sanitizer: $sanitizer)"
cargo "${toolchain[@]}" fuzz build --fuzz-dir . --sanitizer "$sanitizer" "$target" 2>&1 | tail -3
set +e
cargo "${toolchain[@]}" fuzz run --fuzz-dir . --sanitizer "$sanitizer" "$target" "$WORK/corpus" "seeds/$target" -- \
  -max_total_time="$secs" -artifact_prefix="$WORK/artifacts/" -rss_limit_mb=2048 \
  -print_final_stats=1 >"$WORK/log" 2>&1
status=$?
set -e
last=$(grep -E '^#[0-9]+' "$WORK/log" | tail -1 || true)
runs=$(awk '/^stat::number_of_executed_units:/ {print $2}' "$WORK/log")
rate=$(awk '/^stat::average_exec_per_sec:/ {print $2}' "$WORK/log")
if [ "$status" -ne 0 ]; then
  tail -40 "$WORK/log"
  echo "fuzz $target: FAILED (exit $status); the crashing input is in $WORK/artifacts/"
  exit 1
fi
echo "fuzz $target: ${runs:-?} runs in ${secs}s, ${rate:-?} exec/s; last status: $last"

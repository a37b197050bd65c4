#!/usr/bin/env bash
# Where a webhook server's instructions go per admission: runs rayshape-webhook serve and
# the one-label baseline (bench/baseline) under valgrind's callgrind, sends them the same
# AdmissionReview over HTTP/2 + TLS with h2load, and prints instructions (Ir) per admission
# by area (TLS, HTTP/2, JSON, engine stages, allocator, metrics, ...) for each, through
# bench/callgrind_areas.py, with the size of the machine code an admission runs (in 64-byte
# lines). Instruction counts are repeatable where timings on a shared machine are not; they
# do not see the kernel (system calls on the loopback) or stalls.
#
# Binaries are built unstripped with line tables (fat LTO, one codegen unit as the release
# profile), so that inlined code is still charged to its source file: target/profiling and
# target/bench-baseline-prof.
#
# Usage: bench/profile.sh [cpu|gpu|sample, default cpu] [admissions, default 2000]
# Environment: NO_BUILD=1 (use what is built), SERVERS="rayshape one-label",
#   RAYSHAPE_BIN, BASELINE_BIN (other binaries, e.g. a system-allocator build),
#   KEEP=DIR (keep the callgrind files there).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REVIEW=${1:-cpu}
N=${2:-2000}
SERVERS=${SERVERS:-rayshape one-label}
die() { echo "error: $*" >&2; exit 1; }
[[ $N =~ ^[0-9]+$ && $N -ge 10 ]] || die "admissions must be a number of at least 10, got '$N'"

WORK=$(mktemp -d)
SERVER=""
cleanup() {
  [ -z "$SERVER" ] || { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v valgrind >/dev/null || need+=(valgrind)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

export CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
RAYSHAPE=${RAYSHAPE_BIN:-$ROOT/target/profiling/release/rayshape-webhook}
BASELINE=${BASELINE_BIN:-$ROOT/target/bench-baseline-prof/release/one-label-webhook}
if [ "${NO_BUILD:-0}" != 1 ]; then
  echo "building unstripped binaries with line tables (minutes)..." >&2
  [ -n "${RAYSHAPE_BIN:-}" ] || cargo build --release --locked -q -p rayshape-webhook --target-dir target/profiling
  [ -n "${BASELINE_BIN:-}" ] || cargo build --release --locked -q --manifest-path bench/baseline/Cargo.toml --target-dir target/bench-baseline-prof
fi

case $REVIEW in
  cpu | gpu | sample) ;;
  *) die "unknown review '$REVIEW' (cpu, gpu, sample)" ;;
esac
# shellcheck source=bench/inputs.sh
. bench/inputs.sh
webhook_inputs "$WORK"
cp "$WORK/review-$REVIEW.json" "$WORK/review.json"

for name in $SERVERS; do
  p=$(port)
  out=$WORK/callgrind.$name
  vg=(valgrind --tool=callgrind --callgrind-out-file="$out" --dump-line=yes --dump-instr=yes)
  case $name in
    rayshape)
      [ -x "$RAYSHAPE" ] || die "$RAYSHAPE is not built"
      RAYSHAPE_LOG=warn "${vg[@]}" "$RAYSHAPE" serve --config "$WORK/config" --tls-cert "$WORK/tls.crt" \
        --tls-key "$WORK/tls.key" --listen "127.0.0.1:$p" --metrics-listen "127.0.0.1:$(port)" 2>"$WORK/$name.log" & ;;
    one-label)
      [ -x "$BASELINE" ] || die "$BASELINE is not built"
      "${vg[@]}" "$BASELINE" "127.0.0.1:$p" "$WORK/tls.crt" "$WORK/tls.key" 2>"$WORK/$name.log" & ;;
    *) die "unknown server '$name' (rayshape, one-label)" ;;
  esac
  SERVER=$!
  await_healthz "$WORK" "$p" "$SERVER" 600 0.2 \
    || { cat "$WORK/$name.log" >&2; die "$name did not come up under valgrind"; }
  url="https://127.0.0.1:$p/mutate"
  h2=(h2load -d "$WORK/review.json" -H 'content-type: application/json' -c 8 -m 10 -t 1)
  "${h2[@]}" -n 400 "$url" >/dev/null 2>&1 || die "warm-up against $name failed"
  # Count only what the measured admissions cost: zero the counters, send, dump ($out.1).
  callgrind_control -z "$SERVER" >/dev/null
  "${h2[@]}" -n "$N" "$url" >"$WORK/h2.out" 2>&1 || { cat "$WORK/h2.out" >&2; die "h2load against $name failed"; }
  callgrind_control -d "$SERVER" >/dev/null
  ok=$(awk '/^requests:/ {for (i=1;i<=NF;i++) if ($i=="succeeded,") print $(i-1)}' "$WORK/h2.out")
  [ "$ok" = "$N" ] || { cat "$WORK/h2.out" >&2; die "$name: $ok of $N requests succeeded"; }
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
  f=$out.1
  [ -s "$f" ] || die "callgrind wrote no profile for $name"
  [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP"; cp "$f" "$KEEP/callgrind.$name.$REVIEW"; }
  echo "## $name, $REVIEW-worker review, $N admissions (8 connections x 10 streams)"
  echo
  python3 bench/callgrind_areas.py "$f" "$N" 30
  echo
done

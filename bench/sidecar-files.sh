#!/usr/bin/env bash
# The sidecar following many log files with nothing new to ship (a long-lived Ray node has a
# file per worker process): CPU per idle second, resident memory and open descriptors, for
# 50 and 10,000 files, shipping to s3s-fs on loopback. With a baseline (a git revision, or a
# directory holding another source tree), its sidecar is built (release profile; this
# tree's with the sidecar profile, as images/Dockerfile builds it) and measured in the same
# run, side by side, with the ratio. Prints a Markdown table for BENCHMARKS.md.
# Usage: bench/sidecar-files.sh [BASELINE_REV_OR_DIR] [IDLE_SECONDS, default 60]
# Environment: BASELINE_BIN (a built baseline sidecar instead of BASELINE_REV_OR_DIR),
#   NO_BUILD=1 (use this tree's built target/sidecar/rayshape-sidecar).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BASE_REV=${1:-}
IDLE=${2:-60}
WORK=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
S3S=tests/.tools/bin/s3s-fs
if [ ! -x "$S3S" ]; then
  CARGO_TARGET_DIR="$WORK/s3s-target" cargo install s3s-fs --version 0.14.1 --features binary --locked --root tests/.tools --quiet
fi
[ "${NO_BUILD:-0}" = 1 ] || cargo build --profile sidecar --locked -q -p rayshape-sidecar
bins=("this tree=$ROOT/target/sidecar/rayshape-sidecar")
if [ -n "${BASELINE_BIN:-}" ]; then
  bins=("baseline=$BASELINE_BIN" "${bins[@]}")
elif [ -n "$BASE_REV" ]; then
  # Built beside this tree's target, so that a second run is incremental.
  if [ -d "$BASE_REV" ]; then
    src=$(cd "$BASE_REV" && pwd)
  else
    src="$ROOT/target/bench-baseline/src"
    rm -rf "$src" && mkdir -p "$src"
    git -C "$ROOT" archive "$BASE_REV" | tar -x -C "$src"
  fi
  (cd "$src" && CARGO_TARGET_DIR="$ROOT/target/bench-baseline/target" cargo build --release --locked -q -p rayshape-sidecar)
  bins=("baseline=$ROOT/target/bench-baseline/target/release/rayshape-sidecar" "${bins[@]}")
fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SPORT=$(port)
mkdir -p "$WORK/s3/bench"
"$S3S" --host 127.0.0.1 --port "$SPORT" --access-key AK --secret-key SKSKSKSK "$WORK/s3" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$SPORT) 2>/dev/null && break; sleep 0.05; done
export RAYSHAPE_SINK_URL=s3://bench/logs
export RAYSHAPE_SINK_OPTIONS="aws_endpoint=http://127.0.0.1:$SPORT,aws_allow_http=true,aws_region=us-east-1,aws_access_key_id=AK,aws_secret_access_key=SKSKSKSK"
export RAYSHAPE_LOG=warn RAYSHAPE_FLUSH_AGE=1s

# N worker log files of a few Ray-like lines each, in one session.
gen() { # root, files
  python3 - "$1" "$2" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
d = os.path.join(root, "session_2026-11-22_12-00-00_000001_1", "logs")
os.makedirs(d, exist_ok=True)
for i in range(n):
    with open(os.path.join(d, f"worker-{i:040x}-01000000-{1000 + i}.out"), "w") as f:
        for j in range(5):
            f.write(f"[2026-11-22 12:00:{j:02d},{i % 1000:03d} I {1000 + i} {2000 + i}] core_worker.cc:{100 + j}: task {i * 7919 + j:016x} done\n")
PY
}
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
status_kib() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; }
metric() { { curl -s "127.0.0.1:$1/metrics" || true; } | awk -v m="$2" '$1==m {print $2}'; }
log_fds() { local n=0 t; for f in /proc/$1/fd/*; do t=$(readlink "$f" 2>/dev/null || true); case "$t" in "$2"/session_*) n=$((n + 1)) ;; esac; done; echo "$n"; }
HZ=$(getconf CLK_TCK)

declare -A R
for n in 50 10000; do
  for entry in "${bins[@]}"; do
    name=${entry%%=*} bin=${entry#*=}
    root="$WORK/ray-$n-${#name}-$RANDOM"
    gen "$root" "$n"
    mp=$(port)
    RAYSHAPE_POD_NAME="bench-$n" RAYSHAPE_POD_UID="$RANDOM$RANDOM" RAYSHAPE_LOG_ROOT="$root" \
      RAYSHAPE_METRICS_LISTEN="127.0.0.1:$mp" "$bin" run &
    sc=$!
    PIDS+=($sc)
    t0=$(date +%s.%N)
    while :; do
      tracked=$(metric "$mp" rayshape_sidecar_files_tracked)
      unshipped=$(metric "$mp" rayshape_sidecar_unshipped_bytes)
      [ "${tracked:-0}" = "$n" ] && [ "${unshipped:-1}" = 0 ] && break
      kill -0 $sc
      sleep 0.2
    done
    t1=$(date +%s.%N)
    # Quiet files reach their longest interval between looks after ~30 s.
    sleep 40
    c0=$(cpu_ticks $sc)
    sleep "$IDLE"
    c1=$(cpu_ticks $sc)
    R[$n,$name,ship]=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')
    R[$n,$name,cpu]=$(awk -v d=$((c1 - c0)) -v hz="$HZ" -v s="$IDLE" 'BEGIN {printf "%.2f", d * 1000 / hz / s}')
    R[$n,$name,rss]=$(awk -v r="$(status_kib $sc VmRSS)" 'BEGIN {printf "%.1f", r / 1024}')
    R[$n,$name,hwm]=$(awk -v r="$(status_kib $sc VmHWM)" 'BEGIN {printf "%.1f", r / 1024}')
    R[$n,$name,anon]=$(awk '$1 == "Anonymous:" {printf "%.1f", $2 / 1024}' "/proc/$sc/smaps_rollup")
    R[$n,$name,file]=$(awk '$1 == "Rss:" {r = $2} $1 == "Anonymous:" {a = $2} END {printf "%.1f", (r - a) / 1024}' "/proc/$sc/smaps_rollup")
    R[$n,$name,fds]=$(ls "/proc/$sc/fd" | wc -l)
    R[$n,$name,logfds]=$(log_fds $sc "$root")
    kill -TERM $sc
    wait $sc || true
    rm -rf "$root"
  done
done

names=()
for entry in "${bins[@]}"; do names+=("${entry%%=*}"); done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}'; }
header="| measurement |"
rule="|---|"
for n in 50 10000; do
  for name in "${names[@]}"; do header+=" $n files, $name |"; rule+="---|"; done
  if [ ${#names[@]} -eq 2 ]; then header+=" $n files, ratio |"; rule+="---|"; fi
done
echo "$header"
echo "$rule"
row() { # key, label
  local line="| $2 |"
  for n in 50 10000; do
    for name in "${names[@]}"; do line+=" ${R[$n,$name,$1]} |"; done
    if [ ${#names[@]} -eq 2 ]; then line+=" $(ratio "${R[$n,${names[1]},$1]}" "${R[$n,${names[0]},$1]}") |"; fi
  done
  echo "$line"
}
row cpu "CPU while idle, ms per second (${IDLE} s, tick $((1000 / HZ)) ms)"
row rss "resident memory, idle, MiB"
row hwm "peak resident memory, MiB"
row anon "  of the idle: anonymous (heap, stacks), MiB"
row file "  of the idle: file-backed (code and libraries), MiB"
row fds "open descriptors, all"
row logfds "open descriptors, log files"
row ship "seconds to ship the files at start (flush age 1 s)"

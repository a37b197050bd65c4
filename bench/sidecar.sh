#!/usr/bin/env bash
# Benchmark of `rayshape-sidecar run` shipping to s3s-fs on loopback. Prints a Markdown
# table for BENCHMARKS.md:
#  - throughput: log bytes shipped per second of wall time and per CPU-second (zstd level 3,
#    4 MiB segments), from 50 files holding ${MB} MB of Ray-like log lines;
#  - resident memory idle (50 files, nothing new) and peak while shipping;
#  - CPU used while idle (50 files, nothing new), in ms per second;
#  - objects written per minute while 50 files are appended to steadily.
# Usage: bench/sidecar.sh [MB of input, default 400]
# Environment: SIDECAR_BIN (another built sidecar, e.g. a baseline: skips the build).
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-400}
WORK=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
S3S=tests/.tools/bin/s3s-fs
if [ ! -x "$S3S" ]; then
  CARGO_TARGET_DIR="$WORK/s3s-target" cargo install s3s-fs --version 0.14.1 --features binary --locked --root tests/.tools --quiet
fi
[ -n "${SIDECAR_BIN:-}" ] || cargo build --profile sidecar --locked -q -p rayshape-sidecar
BIN=${SIDECAR_BIN:-target/sidecar/rayshape-sidecar}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SPORT=$(port)
mkdir -p "$WORK/s3/bench"
"$S3S" --host 127.0.0.1 --port "$SPORT" --access-key AK --secret-key SKSKSKSK "$WORK/s3" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$SPORT) 2>/dev/null && break; sleep 0.05; done
kill -0 "${PIDS[0]}" || { echo "s3s-fs did not start" >&2; exit 1; }
export RAYSHAPE_SINK_URL=s3://bench/logs
export RAYSHAPE_SINK_OPTIONS="aws_endpoint=http://127.0.0.1:$SPORT,aws_allow_http=true,aws_region=us-east-1,aws_access_key_id=AK,aws_secret_access_key=SKSKSKSK"
export RAYSHAPE_POD_NAME=bench RAYSHAPE_POD_UID=1 RAYSHAPE_LOG=warn

# 50 files of Ray-like log lines (timestamps, levels, ids): as compressible as real logs.
gen() { # root, MB
  python3 - "$1" "$2" <<'PY'
import os, sys, random
root, mb = sys.argv[1], int(sys.argv[2])
d = os.path.join(root, "session_2026-11-22_12-00-00_000001_1", "logs")
os.makedirs(d, exist_ok=True)
names = ["raylet.out", "raylet.err", "gcs_server.out", "dashboard.log", "monitor.log"] + [f"worker-{i:040x}-01000000-{1000+i}.out" for i in range(45)]
per = mb * 1_000_000 // len(names)
rnd = random.Random(1)
for n in names:
    with open(os.path.join(d, n), "w") as f:
        size = 0
        while size < per:
            line = f"[2026-11-22 12:{rnd.randrange(60):02d}:{rnd.randrange(60):02d},{rnd.randrange(1000):03d} I {rnd.randrange(100,999)} {rnd.randrange(1000,9999)}] node_manager.cc:{rnd.randrange(100,3000)}: task {rnd.getrandbits(64):016x} lease granted, worker {rnd.getrandbits(32):08x} cpu=1 mem={rnd.randrange(1,64)}GiB\n"
            f.write(line); size += len(line)
PY
}
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
metric() { { curl -s "127.0.0.1:$1/metrics" || true; } | awk -v m="$2" '$1==m {print $2}'; }
HZ=$(getconf CLK_TCK)

# --- throughput ------------------------------------------------------------------------
ROOT="$WORK/ray1"; gen "$ROOT" "$MB"
INPUT=$(find "$ROOT" -type f -printf "%s\n" | awk "{s+=\$1} END {print s}")
MP=$(port)
RAYSHAPE_LOG_ROOT="$ROOT" RAYSHAPE_METRICS_LISTEN="127.0.0.1:$MP" RAYSHAPE_FLUSH_AGE=1s "$BIN" run &
SC=$!; PIDS+=($SC)
start=$(date +%s.%N); peak=0
while :; do
  r=$(rss_kib $SC); [ "$r" -gt "$peak" ] && peak=$r
  shipped=$(metric "$MP" rayshape_sidecar_bytes_shipped_total); shipped=${shipped:-0}
  [ "${shipped%.*}" -ge "$INPUT" ] && break
  sleep 0.05
done
end=$(date +%s.%N)
ticks=$(cpu_ticks $SC)
uploaded=$(metric "$MP" rayshape_sidecar_bytes_uploaded_total)
segments=$(metric "$MP" rayshape_sidecar_segments_uploaded_total)
kill -TERM $SC; wait $SC || true
python3 - "$INPUT" "$start" "$end" "$ticks" "$HZ" "$peak" "${uploaded%.*}" "${segments%.*}" <<'PY'
import sys
inp, t0, t1, ticks, hz, peak, up, seg = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
wall, cpu = t1 - t0, ticks / hz
print("| measurement | result |")
print("|---|---|")
print(f"| input | {inp/1e6:.0f} MB in 50 files, shipped in {seg} segments, {up/1e6:.1f} MB compressed (ratio {inp/up:.1f}) |")
print(f"| throughput, wall time | {inp/1e6/wall:.0f} MB/s ({wall:.2f} s) |")
print(f"| throughput per CPU-second | {inp/1e6/cpu:.0f} MB/s ({cpu:.2f} s of CPU) |")
print(f"| peak resident memory while shipping | {peak/1024:.1f} MiB |")
PY

# --- idle: 50 files, nothing new ------------------------------------------------------
MP=$(port)
RAYSHAPE_LOG_ROOT="$ROOT" RAYSHAPE_METRICS_LISTEN="127.0.0.1:$MP" "$BIN" run &
SC=$!; PIDS+=($SC)
sleep 5
t0=$(cpu_ticks $SC); sleep 30; t1=$(cpu_ticks $SC)
echo "| resident memory, idle (50 files followed, nothing new) | $(awk -v r="$(rss_kib $SC)" 'BEGIN {printf "%.1f", r/1024}') MiB |"
echo "| CPU while idle (scan every 1 s) | $(awk -v d=$((t1 - t0)) -v hz="$HZ" 'BEGIN {printf "%.2f", d*1000/hz/30}') ms per second (tick = $((1000 / HZ)) ms) |"
kill -TERM $SC; wait $SC || true

# --- objects per minute, 50 files appended to steadily ---------------------------------
ROOT2="$WORK/ray2"; gen "$ROOT2" 1
MP=$(port)
RAYSHAPE_LOG_ROOT="$ROOT2" RAYSHAPE_METRICS_LISTEN="127.0.0.1:$MP" RAYSHAPE_FLUSH_AGE=10s "$BIN" run &
SC=$!; PIDS+=($SC)
sleep 2
s0=$(metric "$MP" rayshape_sidecar_segments_uploaded_total)
python3 - "$ROOT2" <<'PY'
import os, sys, time
d = os.path.join(sys.argv[1], "session_2026-11-22_12-00-00_000001_1", "logs")
files = sorted(os.listdir(d))
end = time.time() + 60
i = 0
while time.time() < end:
    for n in files:
        with open(os.path.join(d, n), "a") as f:
            f.write(f"line {i} of {n}: task lease granted\n")
    i += 1
    time.sleep(0.1)
PY
s1=$(metric "$MP" rayshape_sidecar_segments_uploaded_total)
echo "| objects per minute, 50 files appended every 100 ms, flush age 10 s | $(( ${s1%.*} - ${s0%.*} )) (one per 10 s flush interval, whatever the number of files) |"
kill -TERM $SC; wait $SC || true

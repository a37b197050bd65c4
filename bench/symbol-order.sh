#!/usr/bin/env bash
# Regenerates the linker's symbol-ordering files, which lay out the code the binaries run
# contiguously at the start of .text (README, Development: "Code laid out by use";
# BENCHMARKS.md: "Code laid out by use (symbol ordering)"):
#   webhook  webhook/cli/symbol-order.txt   `rayshape-webhook serve`: start-up with the
#            built-in configuration and a throw-away certificate, then CPU- and GPU-worker
#            reviews and the API server's own (managedFields and all) over HTTP/2 + TLS
#            (h2load), health, readiness and metrics requests, then idle with probes;
#   sidecar  sidecar/symbol-order.txt       `rayshape-sidecar run` shipping to s3s-fs:
#            start-up, shipping 2,000 small and 10 larger files, then idle with appends to
#            a few files, a rotation and metrics scrapes.
#   Each runs twice: under callgrind, one profile per phase, and natively under perf
#   record, which samples the functions that only run on a real CPU (valgrind's has no
#   AVX-512, SHA or ADX, and aws-lc and sha2 choose their code by CPU).
#   check    how many of each file's names the built binaries still have (a dependency
#            update or another rustc renames symbols: stale names are ignored by the
#            linker, which only makes the layout less good), and whether .text starts with
#            them.
# The functions that ran while serving, idle or shipping come first, hottest first, then
# those only perf saw, then those that ran only at start-up. Binaries are built as images/Dockerfile builds them (the
# names carry a hash of the profile, the dependency set and the rustc version, so the
# profiled build must be the shipped one); the release profiles keep their symbol table
# (strip = "debuginfo") for that.
#
# Usage: bench/symbol-order.sh webhook|sidecar|check
# Environment: NO_BUILD=1 (use what is built); KEEP=DIR (keep the callgrind files there).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHAT=${1:-}
die() { echo "error: $*" >&2; exit 1; }

WEBHOOK=$ROOT/target/release/rayshape-webhook
SIDECAR=$ROOT/target/sidecar/rayshape-sidecar
WEBHOOK_ORDER=webhook/cli/symbol-order.txt
SIDECAR_ORDER=sidecar/symbol-order.txt

build() {
  [ "${NO_BUILD:-0}" != 1 ] || return 0
  echo "building as images/Dockerfile does (fat LTO: minutes)..." >&2
  case $1 in
    webhook) cargo build --release --locked -q -p rayshape-webhook -p rayshape-certs ;;
    sidecar) cargo build --profile sidecar --locked -q -p rayshape-sidecar ;;
  esac
}

check() { # binary, ordering file
  local bin=$1 order=$2 names have first
  [ -x "$bin" ] || { echo "$bin: not built"; return; }
  names=$(grep -vc '^#' "$order" || true)
  have=$(nm --defined-only "$bin" 2>/dev/null | awk '{print $NF}' | sort -u \
    | comm -12 - <(grep -v '^#' "$order" | sort -u) | wc -l)
  [ "$have" -gt 0 ] || { echo "$bin: no symbol table or none of $order's $names names (stripped, or the order is stale)"; return; }
  # Of the first 200 functions in .text by address, how many the ordering file names.
  first=$(nm -n --defined-only "$bin" | awk '$2 ~ /^[tT]$/ && ++n <= 200 {print $3}' | sort -u \
    | comm -12 - <(grep -v '^#' "$order" | sort -u) | wc -l)
  echo "$bin: $have of $order's $names names are in the binary; $first of its first 200 functions in .text are from the file"
}

if [ "$WHAT" = check ]; then
  check "$WEBHOOK" "$WEBHOOK_ORDER"
  check "$SIDECAR" "$SIDECAR_ORDER"
  exit 0
fi
[ "$WHAT" = webhook ] || [ "$WHAT" = sidecar ] || die "usage: bench/symbol-order.sh webhook|sidecar|check"

need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v nm >/dev/null || need+=(binutils)
command -v perf >/dev/null || need+=(linux-perf)
if [ "$WHAT" = webhook ]; then
  command -v h2load >/dev/null || need+=(nghttp2-client)
  command -v openssl >/dev/null || need+=(openssl)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# port, webhook_inputs
# shellcheck source=bench/inputs.sh
. bench/inputs.sh
OUT=$WORK/callgrind.out
# Mangled names, as the linker sees them; one profile per phase (callgrind_control -d).
VG=(valgrind --tool=callgrind --callgrind-out-file="$OUT" --demangle=no --compress-strings=no
  --compress-pos=no --dump-instr=no --dump-line=no)
dump() { callgrind_control -d "$1" >/dev/null 2>&1; }
keep() { [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP"; cp "$OUT".* "$KEEP/"; }; }
# The binary's functions perf sampled in the native run, one a line.
native() {
  perf script -i "$WORK/perf.data" -F ip,sym,dso --no-demangle 2>/dev/null \
    | awk -v b="$(basename "$1")" 'index($NF, b) {print $2}' | sort -u >"$WORK/native.txt"
}

if [ "$WHAT" = webhook ]; then
  build webhook
  [ -x "$WEBHOOK" ] || die "$WEBHOOK is not built"
  webhook_inputs "$WORK"
  # Run 1 under callgrind, one profile per phase; run 2 natively under perf, sampling which
  # functions run on this CPU (valgrind's lacks AVX-512, SHA and ADX: aws-lc and sha2 pick
  # other implementations there).
  for run in callgrind perf; do
    p=$(port) mp=$(port)
    case $run in
      callgrind) wrap=("${VG[@]}") ;;
      perf) wrap=(perf record -q -e cpu-clock:u -c 20000 -o "$WORK/perf.data" --) ;;
    esac
    RAYSHAPE_LOG=warn "${wrap[@]}" "$WEBHOOK" serve --config "$WORK/config" --tls-cert "$WORK/tls.crt" \
      --tls-key "$WORK/tls.key" --listen "127.0.0.1:$p" --metrics-listen "127.0.0.1:$mp" 2>"$WORK/server.log" &
    SERVER=$!
    PIDS+=("$SERVER")
    probe() {
      curl -sf --cacert "$WORK/tls.crt" "https://localhost:$p/healthz" >/dev/null
      curl -sf --cacert "$WORK/tls.crt" "https://localhost:$p/readyz" >/dev/null
      curl -sf "http://127.0.0.1:$mp/metrics" >/dev/null
    }
    await_healthz "$WORK" "$p" "$SERVER" 600 0.2 \
      || { cat "$WORK/server.log" >&2; die "the webhook did not come up under $run"; }
    [ $run != callgrind ] || dump "$SERVER"                  # .1: start-up
    for review in cpu gpu sample cpu; do
      h2load -d "$WORK/review-$review.json" -H 'content-type: application/json' -c 8 -m 10 -t 1 -n 2000 \
        "https://127.0.0.1:$p/mutate" >"$WORK/h2.out" 2>&1 || { cat "$WORK/h2.out" >&2; die "h2load failed"; }
      grep -q 'requests: 2000 total, 2000 started, 2000 done, 2000 succeeded' "$WORK/h2.out" \
        || { cat "$WORK/h2.out" >&2; die "not every admission succeeded"; }
      probe
    done
    # An HTTP/1.1 client and a malformed review: the error path is part of serving too.
    curl -sf --cacert "$WORK/tls.crt" -H 'content-type: application/json' --data-binary @"$WORK/review-cpu.json" \
      "https://localhost:$p/mutate" >/dev/null
    curl -s --cacert "$WORK/tls.crt" -H 'content-type: application/json' --data-binary '{"request":' \
      "https://localhost:$p/mutate" >/dev/null || true
    [ $run != callgrind ] || dump "$SERVER"                  # .2: serving
    for _ in $(seq 10); do probe; sleep 1; done
    [ $run != callgrind ] || dump "$SERVER"                  # .3: idle
    if [ $run = perf ]; then
      kill "$(pgrep -P "$SERVER")" 2>/dev/null || true       # the server; perf then writes its data
    else
      kill "$SERVER"
    fi
    wait "$SERVER" 2>/dev/null || true
  done
  keep
  native "$WEBHOOK"
  python3 bench/symbol_order.py "$WEBHOOK" "$WEBHOOK_ORDER" "$OUT.2" "$OUT.3" -- "$OUT.1" -- "$WORK/native.txt"
  echo "wrote $WEBHOOK_ORDER"
  exit 0
fi

# --- sidecar ------------------------------------------------------------------------------
build sidecar
[ -x "$SIDECAR" ] || die "$SIDECAR is not built"
S3S=tests/.tools/bin/s3s-fs
if [ ! -x "$S3S" ]; then
  CARGO_TARGET_DIR="$WORK/s3s-target" cargo install s3s-fs --version 0.14.1 --features binary --locked --root tests/.tools --quiet
fi
SPORT=$(port)
mkdir -p "$WORK/s3/bench"
"$S3S" --host 127.0.0.1 --port "$SPORT" --access-key AK --secret-key SKSKSKSK "$WORK/s3" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$SPORT) 2>/dev/null && break; sleep 0.05; done
N=2000
gen() { # root
python3 - "$1" "$N" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
d = os.path.join(root, "session_2026-11-22_12-00-00_000001_1", "logs")
os.makedirs(d, exist_ok=True)
rnd = random.Random(1)
for i in range(n):
    with open(os.path.join(d, f"worker-{i:040x}-01000000-{1000 + i}.out"), "w") as f:
        for j in range(5):
            f.write(f"[2026-11-22 12:00:{j:02d},{i % 1000:03d} I {1000 + i} {2000 + i}] core_worker.cc:{100 + j}: task {i * 7919 + j:016x} done\n")
for name in ["raylet.out", "raylet.err", "gcs_server.out", "dashboard.log", "monitor.log",
             "python-core-driver-01000000.log", "runtime_env_agent.log", "log_monitor.log",
             "dashboard_agent.log", "gcs_server.err"]:
    os.makedirs(os.path.dirname(os.path.join(d, name)), exist_ok=True)
    with open(os.path.join(d, name), "w") as f:
        for _ in range(20000):
            f.write(f"[2026-11-22 12:{rnd.randrange(60):02d}:{rnd.randrange(60):02d},{rnd.randrange(1000):03d} I {rnd.randrange(100,999)} {rnd.randrange(1000,9999)}] node_manager.cc:{rnd.randrange(100,3000)}: task {rnd.getrandbits(64):016x} lease granted\n")
PY
}
MP=$(port)
metric() { { curl -s "127.0.0.1:$MP/metrics" || true; } | awk -v m="$1" '$1==m {print $2}'; }
wait_shipped() { # at least this many files tracked
  local tracked unshipped
  for _ in $(seq 3000); do
    tracked=$(metric rayshape_sidecar_files_tracked)
    unshipped=$(metric rayshape_sidecar_unshipped_bytes)
    [ "${tracked:-0}" -ge "$1" ] && [ "${unshipped:-1}" = 0 ] && return 0
    kill -0 "$SC" 2>/dev/null || die "the sidecar exited"
    sleep 0.5
  done
  die "the sidecar did not ship everything"
}
# Run 1 under callgrind, one profile per phase; run 2 natively under perf (see the webhook's).
for run in callgrind perf; do
  LOGS=$WORK/ray-$run
  gen "$LOGS"
  case $run in
    callgrind) wrap=("${VG[@]}") ;;
    perf) wrap=(perf record -q -e cpu-clock:u -c 20000 -o "$WORK/perf.data" --) ;;
  esac
  RAYSHAPE_SINK_URL=s3://bench/logs \
    RAYSHAPE_SINK_OPTIONS="aws_endpoint=http://127.0.0.1:$SPORT,aws_allow_http=true,aws_region=us-east-1,aws_access_key_id=AK,aws_secret_access_key=SKSKSKSK" \
    RAYSHAPE_LOG=warn RAYSHAPE_FLUSH_AGE=1s RAYSHAPE_POD_NAME=order RAYSHAPE_POD_UID=$run RAYSHAPE_LOG_ROOT="$LOGS" \
    RAYSHAPE_METRICS_LISTEN="127.0.0.1:$MP" "${wrap[@]}" "$SIDECAR" run 2>"$WORK/sidecar.log" &
  SC=$!
  PIDS+=("$SC")
  for _ in $(seq 600); do
    curl -sf "127.0.0.1:$MP/metrics" >/dev/null 2>&1 && break
    kill -0 "$SC" 2>/dev/null || { cat "$WORK/sidecar.log" >&2; die "the sidecar exited"; }
    sleep 0.2
  done
  [ $run != callgrind ] || dump "$SC"                        # .1: start-up
  wait_shipped $((N + 10))
  [ $run != callgrind ] || dump "$SC"                        # .2: shipping
  # Idle: most files quiet, a few written to now and then, one rotated, metrics scraped.
  D=$LOGS/session_2026-11-22_12-00-00_000001_1/logs
  for i in $(seq 40); do
    [ "$i" != 20 ] || mv "$D/raylet.out" "$D/raylet.out.1"
    echo "[2026-11-22 12:30:00,000 I 1 2] more line $i" >>"$D/raylet.out"
    [ $((i % 5)) != 0 ] || echo "[2026-11-22 12:30:00,000 I 1 2] worker line $i" >>"$D/worker-$(printf '%040x' $i)-01000000-$((1000 + i)).out"
    metric rayshape_sidecar_files_tracked >/dev/null
    sleep 1
  done
  wait_shipped $((N + 10))
  [ $run != callgrind ] || dump "$SC"                        # .3: idle with a few writes
  if [ $run = perf ]; then
    kill -TERM "$(pgrep -P "$SC")" 2>/dev/null || true
  else
    kill -TERM "$SC"
  fi
  wait "$SC" 2>/dev/null || true
done
keep
native "$SIDECAR"
python3 bench/symbol_order.py "$SIDECAR" "$SIDECAR_ORDER" "$OUT.2" "$OUT.3" -- "$OUT.1" -- "$WORK/native.txt"
echo "wrote $SIDECAR_ORDER"

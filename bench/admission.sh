#!/usr/bin/env bash
# Side-by-side load benchmark of `rayshape-webhook serve` against a one-label webhook
# written the way kube-rs users write one (bench/baseline: kube's admission types, axum,
# axum-server with rustls, TCP_NODELAY, no per-request log), as issue 13 describes.
#
# Every server is pinned to one core (SERVER_CPU, default 0) and h2load (Debian
# nghttp2-client) to the other (LOAD_CPU, default 1): HTTP/2 over TLS keep-alive on
# 127.0.0.1. For the KubeRay CPU-worker review and a GPU-worker review, each server gets:
#   - saturation: 8 connections x 10 streams, for SECONDS;
#   - a fixed rate of RATE req/s (default 2,000): 4 connections x 10 streams, --rps;
# RUNS times (default 3), the servers interleaved (rayshape, baseline, ..., rayshape, ...)
# so that the machine's noise hits them alike. Per server: throughput, server CPU per
# admission (utime+stime from /proc/PID/stat around each run, over the requests
# completed), p99 at the fixed rate (h2load's per-request log), resident memory idle after
# a warm-up and peak under load (VmHWM, and VmRSS polled every 0.1 s). It prints, per review, the medians with the
# ratios rayshape / baseline, then every run's value. On a shared machine absolute
# numbers move a lot between runs; the ratios within one run are what count.
#
# Servers:
#   rayshape  target/release/rayshape-webhook (the workspace's release profile:
#             fat LTO, one codegen unit), built-in configuration, RAYSHAPE_LOG=warn
#   one-label bench/baseline built with the same profile
#   example   with EXAMPLE=1 only: bench/baseline built with cargo's default release
#             profile, as the kube-rs example is built. It shares no build artefacts with
#             the LTO build, so it doubles the baseline's build time (about 4 more minutes
#             on a 2-core machine); the targets of issue 13 are against one-label, LTO.
#
# Usage: bench/admission.sh [SECONDS per run, default 8] [RUNS, default 3]
# Environment: SERVER_CPU, LOAD_CPU, RATE, EXAMPLE=1, REVIEWS="cpu gpu" (or sample: the API
#   server's own review of KubeRay's sample worker, with its managedFields),
#   RAYSHAPE_BIN (a prebuilt rayshape-webhook: skips its build), NO_BUILD=1 (use what is built).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DUR=${1:-8}
RUNS=${2:-3}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
RATE=${RATE:-2000}
EXAMPLE=${EXAMPLE:-0}
REVIEWS=${REVIEWS:-cpu gpu}
RATE_CONNS=4
STREAMS=10
SAT_CONNS=8

die() { echo "error: $*" >&2; exit 1; }
[[ $DUR =~ ^[0-9]+$ && $DUR -ge 1 ]] || die "SECONDS must be a whole number of seconds, got '$DUR'"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 ]] || die "RUNS must be a positive whole number, got '$RUNS'"
[[ $RATE =~ ^[0-9]+$ && $RATE -ge $RATE_CONNS ]] || die "RATE must be at least $RATE_CONNS req/s, got '$RATE'"
[ "$(nproc --all)" -ge 2 ] || die "needs two cores: one for the servers, one for h2load"

WORK=$(mktemp -d)
SERVERS=()   # PIDs of the servers running now
cleanup() {
  local p
  for p in "${SERVERS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${SERVERS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# --- build ------------------------------------------------------------------------------
BASE_TARGET=$ROOT/target/bench-baseline
BASE_MANIFEST=$ROOT/bench/baseline/Cargo.toml
RAYSHAPE=${RAYSHAPE_BIN:-$ROOT/target/release/rayshape-webhook}
if [ "${NO_BUILD:-0}" != 1 ]; then
  echo "building (release builds with fat LTO take minutes)..." >&2
  [ -n "${RAYSHAPE_BIN:-}" ] || cargo build --release --locked -q -p rayshape-webhook
  cargo build --release --locked -q --manifest-path "$BASE_MANIFEST" --target-dir "$BASE_TARGET"
  [ "$EXAMPLE" = 0 ] || cargo build --profile default-release --locked -q --manifest-path "$BASE_MANIFEST" --target-dir "$BASE_TARGET"
fi
NAMES=(rayshape one-label)
BINS=("$RAYSHAPE" "$BASE_TARGET/release/one-label-webhook")
if [ "$EXAMPLE" != 0 ]; then
  NAMES+=(example)
  BINS+=("$BASE_TARGET/default-release/one-label-webhook")
fi
for b in "${BINS[@]}"; do [ -x "$b" ] || die "$b is not built"; done

# Everything this script starts from here on (h2load, polling) runs on LOAD_CPU; the servers
# are moved to SERVER_CPU as they start.
taskset -pc "$LOAD_CPU" $$ >/dev/null || die "cannot pin to CPU $LOAD_CPU"

# --- inputs -----------------------------------------------------------------------------
# shellcheck source=bench/inputs.sh
. bench/inputs.sh
webhook_inputs "$WORK"
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime + stime (fields after "(comm)" have no spaces here)
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

# --- servers ----------------------------------------------------------------------------
declare -A PID URL PEAK
start_servers() {
  local i name port
  for i in "${!NAMES[@]}"; do
    name=${NAMES[$i]}
    port=$(port)
    if [ "$name" = rayshape ]; then
      RAYSHAPE_LOG=warn taskset -c "$SERVER_CPU" "${BINS[$i]}" serve --config "$WORK/config" \
        --tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key" \
        --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$(port)" 2>"$WORK/$name.log" &
    else
      taskset -c "$SERVER_CPU" "${BINS[$i]}" "127.0.0.1:$port" "$WORK/tls.crt" "$WORK/tls.key" 2>"$WORK/$name.log" &
    fi
    PID[$name]=$!
    SERVERS+=("$!")
    URL[$name]="https://127.0.0.1:$port/mutate"
    await_healthz "$WORK" "$port" "${PID[$name]}" 100 0.1 \
      || { cat "$WORK/$name.log" >&2; die "$name did not come up on port $port (its log is above)"; }
  done
}
stop_servers() {
  local p
  for p in "${SERVERS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${SERVERS[@]}"; do wait "$p" 2>/dev/null || true; done
  SERVERS=()
}

# Check each server's answer once: HTTP 200, allowed, a JSON patch. Prints the size of the
# answer and the number of patch operations.
check_answer() {
  local name=$1 body=$2
  curl -sf --http2 --cacert "$WORK/tls.crt" -H 'content-type: application/json' \
    --data-binary "@$body" "${URL[$name]/127.0.0.1/localhost}" -o "$WORK/answer.json" \
    || die "$name did not answer $body with 200"
  python3 - "$WORK/answer.json" "$name" <<'EOF'
import base64, json, os, sys
a = json.load(open(sys.argv[1]))["response"]
if not a.get("allowed"):
    sys.exit(f"{sys.argv[2]} refused the review: {a.get('status')}")
p = a.get("patch")
p = bytes(p) if isinstance(p, list) else base64.b64decode(p)
print(f"{os.path.getsize(sys.argv[1])} B answer, {len(json.loads(p))}-operation patch")
EOF
}

H2=(h2load -H 'content-type: application/json')
RESULTS=$WORK/results.tsv
: >"$RESULTS"

# One measured run of one server: appends review, mode, run, server, req/s, requests,
# CPU µs per admission, p99 ms, p50 ms, % of its core busy to RESULTS.
measure() {
  local review=$1 mode=$2 run=$3 name=$4 pid=${PID[$4]} out=$WORK/h2.out log=$WORK/h2.log
  local args
  if [ "$mode" = sat ]; then
    args=(-c "$SAT_CONNS" -m "$STREAMS")
  else
    args=(-c "$RATE_CONNS" -m "$STREAMS" --rps $((RATE / RATE_CONNS)))
  fi
  rm -f "$log"
  local t0 t1
  t0=$(cpu_ticks "$pid")
  "${H2[@]}" -d "$WORK/review-$review.json" -D "$DUR" -t 1 "${args[@]}" --log-file "$log" "${URL[$name]}" >"$out" 2>&1 &
  local h2=$! rss peak=${PEAK[$name]:-0}
  # The kernel updates VmHWM lazily: poll VmRSS as well.
  while kill -0 "$h2" 2>/dev/null; do
    rss=$(kib "$pid" VmRSS) && [ "${rss:-0}" -gt "$peak" ] && peak=$rss
    sleep 0.1
  done
  wait "$h2" || { cat "$out" >&2; die "h2load failed against $name"; }
  t1=$(cpu_ticks "$pid")
  PEAK[$name]=$peak
  kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.log" >&2; die "$name died under load"; }
  local rps ok bad xx other
  rps=$(awk '/^finished in/ {for (i=1;i<=NF;i++) if ($i=="req/s,") print $(i-1)}' "$out")
  ok=$(awk '/^requests:/ {for (i=1;i<=NF;i++) if ($i=="succeeded,") print $(i-1)}' "$out")
  bad=$(awk '/^requests:/ {for (i=1;i<=NF;i++) if ($i=="failed,") print $(i-1)}' "$out")
  xx=$(awk '/^status codes:/ {print $3}' "$out")
  other=$(awk '/^status codes:/ {print $5 + $7 + $9}' "$out")
  [ -n "$ok" ] && [ "$ok" -gt 0 ] || { cat "$out" >&2; die "no request succeeded against $name"; }
  # In a timed run h2load counts the status of answers that arrive after its clock stopped,
  # but not their requests: more 2xx than requests done is not an error, a non-2xx is.
  [ "$bad" = 0 ] && [ "$other" = 0 ] && [ "$xx" -ge "$ok" ] || { cat "$out" >&2; die "$name: $bad failed requests, $other answered other than 2xx, $xx 2xx for $ok done"; }
  # Percentiles of the per-request durations (third column, µs).
  local pcts
  pcts=$(sort -n -k3 "$log" | awk '{v[NR]=$3} END {
    i=int(NR*0.99); if (i<1) i=1; j=int(NR*0.50); if (j<1) j=1
    printf "%.3f\t%.3f", v[i]/1000, v[j]/1000 }')
  local cpu_us busy
  cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$ok" 'BEGIN {printf "%.1f", d / hz / n * 1e6}')
  # The server's share of its core: near 100% at saturation, or h2load was the limit.
  busy=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$DUR" 'BEGIN {printf "%.0f", d / hz / s * 100}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$review" "$mode" "$run" "$name" "$rps" "$ok" "$cpu_us" "$pcts" "$busy" >>"$RESULTS"
  printf '  %-4s %-4s run %d %-9s %9s req/s %7s µs CPU/admission  p99 %s ms  core %s%% busy\n' \
    "$review" "$mode" "$run" "$name" "$rps" "$cpu_us" "${pcts%%$'\t'*}" "$busy" >&2
}

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for review in $REVIEWS; do
  [ -f "$WORK/review-$review.json" ] || die "unknown review '$review' (cpu, gpu, sample)"
  start_servers
  for name in "${NAMES[@]}"; do
    a=$(check_answer "$name" "$WORK/review-$review.json")
    echo "$review review, $name: $a" >&2
    printf '%s\t%s\tanswer\t%s\n' "$review" "$name" "$a" >>"$WORK/answers.tsv"
  done
  # Warm up every server, then let it settle and take its idle resident size.
  for name in "${NAMES[@]}"; do
    "${H2[@]}" -d "$WORK/review-$review.json" -n 4000 -c "$SAT_CONNS" -m "$STREAMS" "${URL[$name]}" >/dev/null 2>&1 \
      || die "warm-up against $name failed"
  done
  sleep 2
  for name in "${NAMES[@]}"; do
    PEAK[$name]=$(kib "${PID[$name]}" VmRSS)
    printf '%s\t%s\tidle\t%s\n' "$review" "$name" "${PEAK[$name]}" >>"$WORK/memory.tsv"
  done
  for mode in sat rate; do
    for run in $(seq "$RUNS"); do
      for name in "${NAMES[@]}"; do
        measure "$review" "$mode" "$run" "$name"
      done
    done
  done
  for name in "${NAMES[@]}"; do
    hwm=$(kib "${PID[$name]}" VmHWM)
    [ "$hwm" -gt "${PEAK[$name]}" ] || hwm=${PEAK[$name]}
    printf '%s\t%s\tpeak\t%s\n' "$review" "$name" "$hwm" >>"$WORK/memory.tsv"
  done
  stop_servers
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report -----------------------------------------------------------------------------
python3 - "$RESULTS" "$WORK/memory.tsv" "$WORK/answers.tsv" "$RATE" "$DUR" "$RUNS" "$LOAD_START" "$LOAD_END" "${NAMES[@]}" <<'EOF'
import statistics, sys
results, memory, answers, rate, dur, runs, load0, load1, *names = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(results)]
mem = {(r, n, k): int(v) / 1024 for r, n, k, v in (l.rstrip("\n").split("\t") for l in open(memory))}
ans = {(r, n): a for r, n, _, a in (l.rstrip("\n").split("\t") for l in open(answers))}
title = {"cpu": "CPU-worker review (10.5 KB)", "gpu": "GPU-worker review (8CPU-32GB-1xT4)",
         "sample": "the API server's review of KubeRay's sample worker (8.9 KB, managedFields 2.9 KB)"}
head = {"rayshape": "rayshape", "one-label": "one-label, LTO", "example": "kube-rs example build"}
order = [n for n in ("example", "one-label", "rayshape") if n in names]
base = [n for n in ("one-label", "example") if n in names]

def values(review, mode, name, col):
    return [float(r[col]) for r in rows if r[0] == review and r[1] == mode and r[3] == name]

measures = [
    ("saturation", "sat", 4, "{:,.0f} req/s"),
    ("server CPU per admission at saturation", "sat", 6, "{:,.0f} µs"),
    (f"p99 at {int(rate):,} req/s", "rate", 7, "{:.2f} ms"),
    (f"server CPU per admission at {int(rate):,} req/s", "rate", 6, "{:,.0f} µs"),
]
checks = [
    ("server's core busy at saturation", "sat", 9, "{:.0f}%"),
    (f"p50 at {int(rate):,} req/s", "rate", 8, "{:.2f} ms"),
    (f"throughput at {int(rate):,} req/s", "rate", 4, "{:,.0f} req/s"),
]
print(f"Load average (1, 5, 15 min) at start {load0}, at end {load1}; "
      f"medians of {runs} runs of {dur} s, servers interleaved.")
for review in dict.fromkeys(r[0] for r in rows):
    print(f"\n### {title.get(review, review)}\n")
    for n in order:
        print(f"- {head[n]}: {ans.get((review, n), '?')}")
    print()
    print("| measure | " + " | ".join(head[n] for n in order) + " | " +
          " | ".join(f"rayshape ÷ {head[b]}" for b in base) + " |")
    print("|---" * (1 + len(order) + len(base)) + "|")
    for label, mode, col, fmt in measures:
        med = {n: statistics.median(values(review, mode, n, col)) for n in order}
        cells = [fmt.format(med[n]) for n in order]
        ratios = [f"{med['rayshape'] / med[b]:.2f}×" if med[b] else "–" for b in base]
        print(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    for label, kind in (("resident memory, idle after warm-up", "idle"),
                        ("resident memory, peak under load", "peak")):
        m = {n: mem[(review, n, kind)] for n in order}
        print(f"| {label} | " + " | ".join(f"{m[n]:.1f} MiB" for n in order) + " | " +
              " | ".join(f"{m['rayshape'] / m[b]:.2f}×" for b in base) + " |")
    busy = min(statistics.median(values(review, "sat", n, 9)) for n in order)
    if busy < 90:
        print(f"\nNote: a server had only {busy:.0f}% of its core at saturation (median): the "
              "machine was busy, so throughput and latency are not comparable between runs; "
              "CPU per admission and memory still are.")
    print("\nEvery run (run 1 / run 2 / ...):\n")
    print("| measure | " + " | ".join(head[n] for n in order) + " |")
    print("|---" * (1 + len(order)) + "|")
    for label, mode, col, fmt in measures + checks:
        cells = [" / ".join(fmt.split(" ")[0].format(v) for v in values(review, mode, n, col)) for n in order]
        print(f"| {label} | " + " | ".join(cells) + " |")
EOF

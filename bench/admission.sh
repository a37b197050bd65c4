#!/usr/bin/env bash
# Load benchmark of `rayshape-webhook serve` with h2load (Debian nghttp2-client) over TLS and
# HTTP/2 keep-alive, with the KubeRay AdmissionReview fixture as the body. Prints a Markdown
# table for BENCHMARKS.md: saturation throughput; p50/p99/p99.9 at fixed rates; resident
# memory idle and under load. The load generator runs on the same machine as the server.
#
# Usage: bench/admission.sh [seconds per measurement, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
WORK=$(mktemp -d)
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT

need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

cargo build --release --locked -q -p rayshape-webhook
BIN=target/release/rayshape-webhook
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
mkdir -p "$WORK/config"
BODY=tests/fixtures/kuberay/admissionreview-cpu-worker-instance-type.json
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(port); MPORT=$(port)
RAYSHAPE_LOG=warn "$BIN" serve --config "$WORK/config" --tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key" \
  --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$MPORT" 2>"$WORK/server.log" &
SERVER=$!
for _ in $(seq 100); do curl -sf --cacert "$WORK/tls.crt" "https://localhost:$PORT/readyz" >/dev/null && break; sleep 0.1; done
URL="https://127.0.0.1:$PORT/mutate"
H2=(h2load -d "$BODY" -H 'content-type: application/json')

rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$SERVER/status"; }
# Largest resident size seen while a command runs.
peak_rss() {
  local peak=0 cur
  "$@" > "$WORK/out" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    cur=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER/status")
    [ "$cur" -gt "$peak" ] && peak=$cur
    sleep 0.1
  done
  wait "$pid"
  awk -v p="$peak" 'BEGIN {printf "%.1f", p/1024}'
}
pct() { # percentiles of the third column (µs) of an h2load log, in ms
  sort -n -k3 "$1" | awk '{v[NR]=$3} END {
    p=0.50; i=int(NR*p); if(i<1)i=1; a=v[i]
    p=0.99; i=int(NR*p); if(i<1)i=1; b=v[i]
    p=0.999; i=int(NR*p); if(i<1)i=1; c=v[i]
    printf "%.2f | %.2f | %.2f | %d", a/1000, b/1000, c/1000, NR }'
}

# Warm up, then measure idle memory.
"${H2[@]}" -n 2000 -c 2 "$URL" >/dev/null
sleep 1
IDLE=$(rss)

echo "| measurement | result |"
echo "|---|---|"
PEAK=$(peak_rss "${H2[@]}" -D "$DUR" --warm-up-time 2 -c 8 -m 16 -t 1 "$URL")
RPS=$(awk '/^finished in/ {for (i=1;i<=NF;i++) if ($i=="req/s,") print $(i-1)}' "$WORK/out")
FAILED=$(awk '/^requests:/ {for (i=1;i<=NF;i++) if ($i=="failed,") print $(i-1)}' "$WORK/out")
echo "| saturation (8 connections × 16 streams) | ${RPS} req/s, ${FAILED} failed, peak RSS ${PEAK} MiB |"
echo "| resident memory, idle after warm-up | ${IDLE} MiB |"
echo
echo "| fixed rate | p50 ms | p99 ms | p99.9 ms | requests | peak RSS MiB |"
echo "|---|---|---|---|---|---|"
for rate in 1000 2000 5000; do
  clients=10
  PEAK=$(peak_rss "${H2[@]}" -D "$DUR" --warm-up-time 2 -c $clients --rps $((rate / clients)) --log-file "$WORK/log-$rate" "$URL")
  echo "| ${rate}/s | $(pct "$WORK/log-$rate") | ${PEAK} |"
done

#!/usr/bin/env bash
# Resident memory of `rayshape-webhook serve` builds side by side, split by what holds it:
# at start (healthy, no admission yet), idle after 4,000 admissions (CPU-worker review),
# and after 40,000 more (half CPU-, half GPU-worker reviews) with the peak (VmHWM). Each
# figure: RSS, of it anonymous (heap, stacks) and file-backed, and of the file-backed the
# binary's own code (its r-x mapping), its read-only data and unwind tables (r--), and
# shared libraries. Servers start with the built-in configuration and a throw-away
# certificate, one after the other, ROUNDS times (default 2), and h2load sends the reviews
# over HTTP/2 + TLS (8 connections x 10 streams). Prints a Markdown table.
#
# Usage: bench/webhook-memory.sh NAME=BINARY... (default: this tree's target/release build)
# Environment: ROUNDS.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-2}
die() { echo "error: $*" >&2; exit 1; }
[ $# -gt 0 ] || set -- "this tree=$ROOT/target/release/rayshape-webhook"
WORK=$(mktemp -d)
SERVER=""
cleanup() {
  [ -z "$SERVER" ] || { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for c in h2load openssl curl python3; do command -v $c >/dev/null || die "$c is needed (h2load: nghttp2-client)"; done

# shellcheck source=bench/inputs.sh
. bench/inputs.sh
webhook_inputs "$WORK"

# "rss anon file code ro libs hwm" in MiB, from /proc/PID/smaps.
sample() { # pid binary
  python3 - "$1" "$(readlink -f "$2")" <<'EOF'
import sys
pid, binary = sys.argv[1], sys.argv[2]
rss = anon = code = ro = libs = 0
cur = None
for line in open(f"/proc/{pid}/smaps"):
    parts = line.split()
    if "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:
        path = parts[5] if len(parts) > 5 else ""
        cur = (parts[1], path)
    elif parts[0] == "Rss:":
        kb = int(parts[1])
        rss += kb
        perms, path = cur
        if path == binary and "x" in perms:
            code += kb
        elif path == binary and "w" not in perms:
            ro += kb
        elif path.startswith("/") and path != binary:
            libs += kb
    elif parts[0] == "Anonymous:":
        anon += int(parts[1])
hwm = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM:"))
m = lambda kb: f"{kb / 1024:.1f}"
print(m(rss), m(anon), m(rss - anon), m(code), m(ro), m(libs), m(hwm))
EOF
}
h2() { # review n
  h2load -d "$WORK/review-$1.json" -H 'content-type: application/json' -c 8 -m 10 -t 1 -n "$2" "$URL" >"$WORK/h2.out" 2>&1 \
    || { cat "$WORK/h2.out" >&2; die "h2load failed"; }
  grep -q "succeeded, 0 failed" "$WORK/h2.out" || { cat "$WORK/h2.out" >&2; die "admissions failed"; }
}

declare -A R
for round in $(seq "$ROUNDS"); do
  for entry in "$@"; do
    name=${entry%%=*} bin=${entry#*=}
    [ -x "$bin" ] || die "$bin is not built"
    p=$(port)
    URL="https://127.0.0.1:$p/mutate"
    RAYSHAPE_LOG=warn "$bin" serve --config "$WORK/config" --tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key" \
      --listen "127.0.0.1:$p" --metrics-listen "127.0.0.1:$(port)" 2>"$WORK/server.log" &
    SERVER=$!
    await_healthz "$WORK" "$p" "$SERVER" 100 0.1 \
      || { cat "$WORK/server.log" >&2; die "$name did not come up"; }
    sleep 1
    R[$name,$round,start]=$(sample $SERVER "$bin")
    h2 cpu 4000
    sleep 1
    R[$name,$round,idle]=$(sample $SERVER "$bin")
    h2 cpu 20000
    h2 gpu 20000
    sleep 1
    R[$name,$round,load]=$(sample $SERVER "$bin")
    kill $SERVER; wait $SERVER 2>/dev/null || true; SERVER=""
  done
done

echo "| build, round | moment | RSS | anonymous | file-backed | its code (r-x) | its rodata, unwind (r--) | libraries | VmHWM |"
echo "|---|---|---|---|---|---|---|---|---|"
for entry in "$@"; do
  name=${entry%%=*}
  for round in $(seq "$ROUNDS"); do
    for at in start idle load; do
      case $at in start) label="at start" ;; idle) label="after 4,000 admissions" ;; load) label="after 40,000 more" ;; esac
      read -r rss anon file code ro libs hwm <<<"${R[$name,$round,$at]}"
      echo "| $name, $round | $label | $rss | $anon | $file | $code | $ro | $libs | $hwm |"
    done
  done
done

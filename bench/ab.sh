#!/usr/bin/env bash
# Two or more `rayshape-webhook serve` builds (or the one-label baseline) compared run by run:
# server CPU per admission, from the scheduler's own nanoseconds, in many short interleaved
# runs, with each build's per-run ratio to the first. On a shared machine one run's CPU
# figure moves by ±15%, more than the changes worth measuring. Running the builds one after
# the other in each round and taking that round's ratio cancels the noise they share; what
# is left still takes many runs to see through (BENCHMARKS.md, issue 13: tokio's BufReader
# under TLS came out 4% better in one set of ten paired runs and 9% worse in the next).
#
# Every server is pinned to SERVER_CPU (default 0) and h2load to LOAD_CPU (default 1), as in
# bench/admission.sh; the review is sent over HTTP/2 + TLS at a fixed rate (RATE req/s over
# 4 connections x 10 streams, default 2,000) or, with MODE=sat, as fast as the server
# answers (8 x 10). CPU is the sum over the server's threads of /proc/PID/task/*/schedstat
# around each run (a thread that ends during a run is not counted: both kinds of server keep
# theirs). The builds take turns in one order in odd rounds and the reverse in even ones, so
# that going first or last favours none of them. Prints every run, then per build the median
# µs per admission, the median and geometric mean of its per-run ratios to the first build,
# and a 95% interval for that geometric mean (bootstrap over the rounds, fixed seed): an
# interval that holds 1.00 is no evidence of a difference.
#
# Usage: bench/ab.sh NAME=BINARY NAME=BINARY...  (a BINARY named one-label-webhook is
#   started as the baseline: ADDR CERT KEY)
# Environment: RUNS (default 10), SECONDS_PER_RUN (default 4), MODE (rate|sat), RATE,
#   REVIEW (cpu|gpu|sample, default gpu), SERVER_CPU, LOAD_CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
DUR=${SECONDS_PER_RUN:-4}
MODE=${MODE:-rate}
RATE=${RATE:-2000}
REVIEW=${REVIEW:-gpu}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
die() { echo "error: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "give at least two builds as NAME=BINARY"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 ]] || die "RUNS must be a positive whole number, got '$RUNS'"
[[ $DUR =~ ^[0-9]+$ && $DUR -ge 1 ]] || die "SECONDS_PER_RUN must be a whole number of seconds, got '$DUR'"
[[ $RATE =~ ^[0-9]+$ && $RATE -ge 4 ]] || die "RATE must be at least 4 req/s, got '$RATE'"
case $MODE in rate | sat) ;; *) die "MODE must be rate or sat, got '$MODE'" ;; esac
for c in h2load openssl curl python3 taskset; do
  command -v $c >/dev/null || die "$c is needed (h2load: nghttp2-client, taskset: util-linux)"
done

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

# shellcheck source=bench/inputs.sh
. bench/inputs.sh
webhook_inputs "$WORK"
[ -f "$WORK/review-$REVIEW.json" ] || die "unknown review '$REVIEW' (cpu, gpu, sample)"
taskset -pc "$LOAD_CPU" $$ >/dev/null || die "cannot pin to CPU $LOAD_CPU"

NAMES=()
declare -A BIN PID URL
for spec in "$@"; do
  name=${spec%%=*} bin=${spec#*=}
  [ "$name" != "$spec" ] && [ -n "$name" ] || die "'$spec' is not NAME=BINARY"
  [ -x "$bin" ] || die "$bin is not an executable"
  [ -z "${BIN[$name]:-}" ] || die "two builds are named $name"
  BIN[$name]=$bin
  NAMES+=("$name")
done
for name in "${NAMES[@]}"; do
  bin=${BIN[$name]}
  p=$(port)
  if [ "$(basename "$bin")" = one-label-webhook ]; then
    taskset -c "$SERVER_CPU" "$bin" "127.0.0.1:$p" "$WORK/tls.crt" "$WORK/tls.key" 2>"$WORK/$name.log" &
  else
    RAYSHAPE_LOG=warn taskset -c "$SERVER_CPU" "$bin" serve --config "$WORK/config" \
      --tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key" \
      --listen "127.0.0.1:$p" --metrics-listen "127.0.0.1:$(port)" 2>"$WORK/$name.log" &
  fi
  PID[$name]=$!
  PIDS+=("$!")
  URL[$name]="https://127.0.0.1:$p/mutate"
  await_healthz "$WORK" "$p" "${PID[$name]}" 100 0.1 \
    || { cat "$WORK/$name.log" >&2; die "$name did not come up on port $p (its log is above)"; }
done

H2=(h2load -H 'content-type: application/json' -d "$WORK/review-$REVIEW.json")
for name in "${NAMES[@]}"; do
  "${H2[@]}" -n 4000 -c 8 -m 10 "${URL[$name]}" >/dev/null 2>&1 || die "warm-up against $name failed"
done
sleep 1

# Nanoseconds on CPU of all the server's threads, in µs.
cpu_us() { cat /proc/"$1"/task/*/schedstat | awk '{ns += $1} END {printf "%d", ns / 1000}'; }
if [ "$MODE" = sat ]; then args=(-c 8 -m 10); else args=(-c 4 -m 10 --rps $((RATE / 4))); fi
echo "$MODE, $REVIEW review, $RUNS runs of $DUR s; µs of server CPU per admission:" >&2
for run in $(seq "$RUNS"); do
  order=("${NAMES[@]}")
  if [ $((run % 2)) = 0 ]; then
    order=()
    for ((i = ${#NAMES[@]} - 1; i >= 0; i--)); do order+=("${NAMES[$i]}"); done
  fi
  for name in "${order[@]}"; do
    pid=${PID[$name]}
    t0=$(cpu_us "$pid")
    out=$("${H2[@]}" -D "$DUR" -t 1 "${args[@]}" "${URL[$name]}" 2>&1) || { echo "$out" >&2; die "h2load failed against $name"; }
    t1=$(cpu_us "$pid")
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.log" >&2; die "$name died under load"; }
    done_=$(awk '/^requests:/ {for (i=1;i<=NF;i++) if ($i=="succeeded,") print $(i-1)}' <<<"$out")
    bad=$(awk '/^requests:/ {for (i=1;i<=NF;i++) if ($i=="failed,") print $(i-1)}' <<<"$out")
    [ -n "$done_" ] && [ "$done_" -gt 0 ] && [ "$bad" = 0 ] || { echo "$out" >&2; die "$name: $bad failed requests"; }
    us=$(awk -v d=$((t1 - t0)) -v n="$done_" 'BEGIN {printf "%.1f", d / n}')
    printf '%s\t%s\t%s\n' "$run" "$name" "$us" >>"$WORK/runs.tsv"
    printf '  run %2d  %-16s %8s µs\n' "$run" "$name" "$us" >&2
  done
done

python3 - "$WORK/runs.tsv" "${NAMES[@]}" <<'EOF'
import math, random, statistics, sys
path, *names = sys.argv[1:]
us = {n: {} for n in names}
for line in open(path):
    run, name, v = line.split("\t")
    us[name][run] = float(v)
first = names[0]


def interval(ratios):
    # The geometric mean of the rounds' ratios, resampled 2,000 times.
    logs = [math.log(x) for x in ratios]
    rng = random.Random(13)
    means = sorted(statistics.fmean(rng.choices(logs, k=len(logs))) for _ in range(2000))
    return math.exp(means[49]), math.exp(means[1949])


print(f"| build | µs per admission, median | ÷ {first}, median of runs | ÷ {first}, geometric mean | 95% interval | per run |")
print("|---|---|---|---|---|---|")
for n in names:
    runs = sorted(us[n], key=int)
    ratios = [us[n][r] / us[first][r] for r in runs]
    lo, hi = interval(ratios)
    print(f"| {n} | {statistics.median(us[n].values()):.1f} | {statistics.median(ratios):.3f} | "
          f"{statistics.geometric_mean(ratios):.3f} | {lo:.3f}–{hi:.3f} | {' '.join(f'{x:.2f}' for x in ratios)} |")
EOF

#!/usr/bin/env bash
# Stops what tests/cluster/up.sh DIR started, by the pids it recorded: SIGTERM, then SIGKILL
# after a grace period. Safe to call twice, or after a partial start. Logs stay in DIR/logs.
#
# usage: tests/cluster/down.sh DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR=$1
GRACE=${RAYSHAPE_CLUSTER_GRACE:-10}
[ -d "$DIR/pids" ] || exit 0

alive() { kill -0 "$1" 2>/dev/null; }
# ours PIDFILE PID: the pid still runs what up.sh started (not a recycled pid).
ours() {
  local exe="${1%.pid}.exe" argv0
  [ -f "$exe" ] || return 0
  argv0=$(tr '\0' '\n' <"/proc/$2/cmdline" 2>/dev/null | head -1) || return 1
  [ "$argv0" = "$(cat "$exe")" ]
}
# stop PIDFILE...: SIGTERM to all at once, SIGKILL to those alive after the grace period.
stop() {
  local f pid deadline pids=()
  for f in "$@"; do
    pid=$(cat "$f" 2>/dev/null) || continue
    if [ -n "$pid" ] && alive "$pid" && ours "$f" "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid:$(basename "$f" .pid)")
    fi
  done
  deadline=$(($(date +%s) + GRACE))
  for p in "${pids[@]}"; do
    pid=${p%%:*}
    while alive "$pid" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
    if alive "$pid"; then
      echo "${p#*:} (pid $pid) did not stop within ${GRACE} s of SIGTERM; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for f in "$@"; do rm -f "$f" "${f%.pid}.exe"; done
}

# Everything but etcd first (each shuts down gracefully in about 2 s, in parallel), then etcd,
# so that kube-apiserver does not spend its shutdown on a missing etcd.
others=()
for f in "$DIR"/pids/*.pid; do
  [ -f "$f" ] && [ "$(basename "$f")" != etcd.pid ] && others+=("$f")
done
[ ${#others[@]} -eq 0 ] || stop "${others[@]}"
[ ! -f "$DIR/pids/etcd.pid" ] || stop "$DIR/pids/etcd.pid"

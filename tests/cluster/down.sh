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

# Stop clients before servers: the webhook and controllers first, etcd last.
order=(rayshape-webhook ray-operator kube-scheduler kube-controller-manager kube-apiserver etcd)
files=()
for name in "${order[@]}"; do
  [ -f "$DIR/pids/$name.pid" ] && files+=("$DIR/pids/$name.pid")
done
for f in "$DIR"/pids/*.pid; do
  [ -f "$f" ] || continue
  case " ${files[*]} " in *" $f "*) ;; *) files+=("$f") ;; esac
done

alive() { kill -0 "$1" 2>/dev/null; }
for f in "${files[@]}"; do
  pid=$(cat "$f")
  name=$(basename "$f" .pid)
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((GRACE * 10))); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      echo "$name (pid $pid) did not stop within ${GRACE} s of SIGTERM; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
done

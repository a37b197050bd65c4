#!/usr/bin/env bash
# Builds the test control plane from its Go modules into tests/.cluster/bin (ignored):
#   k8s           kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and pki in
#                 one multi-call binary (links of those names point at it)
#   etcd          etcd
#   ray-operator  the KubeRay operator
# A binary is rebuilt only when its module (go.mod, go.sum, *.go), `go version` or this
# script changed. Go's module and build caches stay where Go keeps them by default.
#
# usage: tests/cluster/build.sh [--force]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT="${RAYSHAPE_CLUSTER_BIN:-$ROOT/tests/.cluster/bin}"
FORCE=0
case "${1:-}" in
  --force) FORCE=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

# Pinned versions: the modules' go.mod files pin everything; these stamp the binaries.
K8S_VERSION=v1.36.3
K8S_BUILD_DATE=2026-07-22T18:07:38Z # the tag's time, as the module proxy reports it

export GOTOOLCHAIN=local CGO_ENABLED=0
if ! command -v go >/dev/null; then
  echo "error: go is not on PATH; the control plane is built from Go modules and needs Go >= 1.26" >&2
  exit 2
fi
gover=$(go env GOVERSION)
case "$gover" in
  go1.2[6-9]* | go1.[3-9]*) ;;
  *) echo "error: $gover is too old: k8s.io/kubernetes $K8S_VERSION needs Go >= 1.26 (GOTOOLCHAIN=local: nothing is downloaded)" >&2; exit 2 ;;
esac
mkdir -p "$OUT" "$OUT/logs"

# The key of a module's build: its files, the Go version and platform, and this script.
key() {
  {
    (cd "$HERE/$1" && find . -maxdepth 1 \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 | sort -z | xargs -0 sha256sum)
    go version
    go env GOOS GOARCH
    sha256sum "$HERE/build.sh" | cut -d' ' -f1
  } | sha256sum | cut -d' ' -f1
}

ldflags_k8s() {
  local p flags="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=36"
    flags+=" -X $p.gitTreeState=clean -X $p.gitCommit= -X $p.buildDate=$K8S_BUILD_DATE"
  done
  printf '%s' "$flags"
}

# build NAME MODULE_DIR PACKAGE [LDFLAGS]: go build into $OUT/NAME unless up to date.
pids=() names=()
build() {
  local name=$1 mod=$2 pkg=$3 ldflags=${4:--s -w}
  local stamp="$OUT/.$name.key" k
  k=$(key "$mod")
  if [ "$FORCE" = 0 ] && [ -x "$OUT/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$k" ]; then
    echo "$name: up to date"
    return 0
  fi
  echo "$name: building ($mod, log: $OUT/logs/build-$name.log)"
  rm -f "$stamp"
  (
    cd "$HERE/$mod"
    start=$(date +%s)
    go build -trimpath -ldflags "$ldflags" -o "$OUT/$name.tmp" "$pkg"
    mv "$OUT/$name.tmp" "$OUT/$name"
    echo "$k" >"$stamp"
    echo "$name: built in $(($(date +%s) - start)) s"
  ) >"$OUT/logs/build-$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
}

start=$(date +%s)
# In parallel: the Kubernetes link is long and single-threaded, the others fill the gaps.
build k8s k8s . "$(ldflags_k8s)"
build etcd etcd .
build ray-operator kuberay github.com/ray-project/kuberay/ray-operator
failed=0
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then
    tail -1 "$OUT/logs/build-${names[$i]}.log"
  else
    failed=1
    echo "error: building ${names[$i]} failed; the end of $OUT/logs/build-${names[$i]}.log:" >&2
    tail -30 "$OUT/logs/build-${names[$i]}.log" >&2
  fi
done
[ "$failed" = 0 ] || exit 1
for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  ln -sfn k8s "$OUT/$c"
done
if [ ${#pids[@]} -gt 0 ]; then
  echo "control plane built in $(($(date +%s) - start)) s into $OUT"
fi

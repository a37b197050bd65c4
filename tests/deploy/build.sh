#!/usr/bin/env bash
# Builds helm from its Go module (tests/deploy/helm, pinned by go.mod and go.sum) into
# tests/.deploy/bin (ignored), the way tests/cluster/build.sh builds the control plane:
# CGO_ENABLED=0, GOTOOLCHAIN=local, -trimpath, stamped with its version. Rebuilt only when
# the module, `go version` or this script changed. Also makes sure the CRD modules of
# tests/deploy/crds are in the module cache (go mod download; nothing is built).
#
# usage: tests/deploy/build.sh [--force]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT="${RAYSHAPE_DEPLOY_BIN:-$ROOT/tests/.deploy/bin}"
FORCE=0
case "${1:-}" in
  --force) FORCE=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

# The version go.mod pins, stamped into `helm version` as upstream's Makefile does.
HELM_VERSION=v4.3.1

export GOTOOLCHAIN=local CGO_ENABLED=0
command -v go >/dev/null || { echo "error: go is not on PATH; helm is built from its Go module and needs Go >= 1.26" >&2; exit 2; }
mkdir -p "$OUT"
grep -q "helm.sh/helm/v4 $HELM_VERSION " "$HERE/helm/go.mod" ||
  { echo "error: tests/deploy/helm/go.mod does not pin helm.sh/helm/v4 $HELM_VERSION (update HELM_VERSION here too)" >&2; exit 2; }

key() {
  {
    (cd "$HERE/helm" && sha256sum go.mod go.sum)
    go version
    go env GOOS GOARCH
    sha256sum "$HERE/build.sh" | cut -d' ' -f1
  } | sha256sum | cut -d' ' -f1
}
k=$(key)
if [ "$FORCE" = 0 ] && [ -x "$OUT/helm" ] && [ "$(cat "$OUT/.helm.key" 2>/dev/null)" = "$k" ]; then
  echo "helm: up to date"
else
  echo "helm: building $HELM_VERSION (tests/deploy/helm)"
  start=$(date +%s)
  rm -f "$OUT/.helm.key"
  (cd "$HERE/helm" && go build -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
    -o "$OUT/helm.tmp" helm.sh/helm/v4/cmd/helm)
  mv "$OUT/helm.tmp" "$OUT/helm"
  echo "$k" >"$OUT/.helm.key"
  echo "helm: built in $(($(date +%s) - start)) s into $OUT"
fi
# The CRD modules: fetched into the module cache by name and version (go.sum checks them).
(cd "$HERE/crds" && go mod download github.com/cert-manager/cert-manager github.com/prometheus-operator/prometheus-operator)

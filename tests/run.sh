#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine or a developer's: installs what the tests
# need (pinned), then runs formatting and lint checks, the Rust unit, golden, property and
# CLI tests, and the independent Python checks. The last line is "total: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK="$ROOT/tests/.work"
VENV="$ROOT/tests/.venv"
mkdir -p "$WORK"

log() { printf '\n==> %s\n' "$*"; }

# --- System packages -------------------------------------------------------------------
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  log "installing Debian packages: $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}
missing=()
# Prometheus and promtool for the metrics tests (Debian bookworm: 2.42).
command -v prometheus >/dev/null || missing+=(prometheus)
command -v promtool >/dev/null || missing+=(prometheus)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v cc >/dev/null || missing+=(gcc libc6-dev)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v zstd >/dev/null || missing+=(zstd)
command -v curl >/dev/null || missing+=(curl) # tests/cluster: readiness checks and metrics
# The sidecar's tests trace fsync calls and create a user to run as.
command -v strace >/dev/null || missing+=(strace)
command -v useradd >/dev/null || missing+=(passwd)
if [ ${#missing[@]} -gt 0 ]; then apt_install $(printf '%s\n' "${missing[@]}" | sort -u); fi
if ! command -v cargo >/dev/null; then
  echo "error: cargo is not on PATH; install the Rust toolchain (rustup) first" >&2
  exit 2
fi
# tests/cluster builds Kubernetes, etcd and KubeRay from Go modules (GOTOOLCHAIN=local:
# no toolchain is downloaded; Debian's golang-go is too old).
if ! command -v go >/dev/null; then
  echo "error: go is not on PATH; install Go 1.26 or newer first (tests/cluster builds the control plane with it)" >&2
  exit 2
fi

# --- Python checkers (pinned) ----------------------------------------------------------
stamp="$VENV/.requirements"
if [ ! -x "$VENV/bin/python" ] || ! cmp -s tests/requirements.txt "$stamp"; then
  log "installing Python checkers into tests/.venv"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
  cp tests/requirements.txt "$stamp"
fi

# --- Object stores for the sidecar's tests (pinned) -------------------------------------
TOOLS="$ROOT/tests/.tools"
if [ ! -x "$TOOLS/bin/s3s-fs" ]; then
  # 0.14.1: later versions need a newer rustc than this toolchain.
  log "building s3s-fs 0.14.1 (S3 with SigV4 checked)"
  CARGO_TARGET_DIR="$WORK/s3s-fs-target" cargo install s3s-fs --version 0.14.1 --features binary --locked --root "$TOOLS" --quiet
  rm -rf "$WORK/s3s-fs-target"
fi
if [ ! -x "$ROOT/tests/.azurite/node_modules/.bin/azurite-blob" ]; then
  log "installing Azurite 3.37.0 (Azure Blob)"
  npm install --silent --no-audit --no-fund --prefix "$ROOT/tests/.azurite" azurite@3.37.0
fi
export S3S_FS_BIN="$TOOLS/bin/s3s-fs"
export MOTO_SERVER_BIN="$VENV/bin/moto_server"
export AZURITE_BIN="$ROOT/tests/.azurite/node_modules/.bin/azurite-blob"
export TEST_PYTHON="$VENV/bin/python"
export ZSTD_BIN="$(command -v zstd)"
export PROMTOOL_BIN="$(command -v promtool)"
export STRACE_BIN="$(command -v strace)"

# --- Rust ------------------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The API docs' links must resolve: a broken or ambiguous one points readers nowhere.
log "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked -q

log "cargo test"
corpus="$WORK/corpus.jsonl"
rm -f "$corpus"
set +e
# RAYSHAPE_REQUIRE_TOOLS: a test that needs promtool or prometheus fails instead of skipping.
# The end-to-end tests (tests/e2e) need the control plane; they run in its stage below.
RAYSHAPE_REQUIRE_TOOLS=1 RAYSHAPE_CORPUS="$corpus" cargo test --workspace --exclude rayshape-e2e --locked --no-fail-fast 2>&1 | tee "$WORK/cargo-test.log"
rust_status=${PIPESTATUS[0]}
set -e
rust_passed=$(awk '/^test result:/ {for (i=1;i<=NF;i++) if ($i ~ /^passed;?$/) s+=$(i-1)} END {print s+0}' "$WORK/cargo-test.log")
rust_failed=$(awk '/^test result:/ {for (i=1;i<=NF;i++) if ($i ~ /^failed;?$/) s+=$(i-1)} END {print s+0}' "$WORK/cargo-test.log")

# --- Independent checks ----------------------------------------------------------------
log "strict RFC 6902 and Kubernetes schema checks (Python)"
cargo build --locked -q -p rayshape-webhook -p rayshape-sidecar
set +e
"$VENV/bin/python" tests/check_patches.py target/debug/rayshape-webhook "$corpus" | tee "$WORK/python.log"
py_status=${PIPESTATUS[0]}
set -e
py_passed=$(awk '/^[0-9]+ passed, [0-9]+ failed$/ {print $1}' "$WORK/python.log" | tail -1)
py_failed=$(awk '/^[0-9]+ passed, [0-9]+ failed$/ {print $3}' "$WORK/python.log" | tail -1)

# --- A real control plane: Kubernetes, KubeRay, rayshape in front (tests/cluster) -------
# Built once from Go modules into tests/.cluster (kept; rebuilt only when they change).
CLUSTER_DIR="$WORK/cluster"
stop_cluster() { tests/cluster/down.sh "$CLUSTER_DIR" || true; }
trap stop_cluster EXIT
log "control plane: build, start, smoke test (tests/cluster)"
rm -f "$WORK/cluster-smoke.log" "$WORK/e2e-test.log"
set +e
cluster_status=1
e2e_status=1
# tests/deploy/build.sh: helm, for the deployment tests (tests/e2e/tests/deploy.rs).
if tests/cluster/build.sh && tests/deploy/build.sh &&
  RAYSHAPE_WEBHOOK_BIN="$ROOT/target/debug/rayshape-webhook" tests/cluster/up.sh "$CLUSTER_DIR"; then
  tests/cluster/smoke.sh "$CLUSTER_DIR" | tee "$WORK/cluster-smoke.log"
  cluster_status=${PIPESTATUS[0]}
  log "end-to-end tests against the control plane (tests/e2e)"
  RAYSHAPE_CLUSTER_DIR="$CLUSTER_DIR" RAYSHAPE_SIDECAR_BIN="$ROOT/target/debug/rayshape-sidecar" RAYSHAPE_REQUIRE_TOOLS=1 cargo test -p rayshape-e2e --locked --no-fail-fast 2>&1 | tee "$WORK/e2e-test.log"
  e2e_status=${PIPESTATUS[0]}
fi
set -e
stop_cluster
cluster_passed=$(awk '/^smoke: [0-9]+ passed, [0-9]+ failed$/ {print $2}' "$WORK/cluster-smoke.log" 2>/dev/null | tail -1)
cluster_failed=$(awk '/^smoke: [0-9]+ passed, [0-9]+ failed$/ {print $4}' "$WORK/cluster-smoke.log" 2>/dev/null | tail -1)
# The build or the start failed: count it, so the closing line cannot read as green.
if [ "$cluster_status" -ne 0 ] && [ "${cluster_failed:-0}" -eq 0 ]; then cluster_failed=1; fi
e2e_passed=$(awk '/^test result:/ {for (i=1;i<=NF;i++) if ($i ~ /^passed;?$/) s+=$(i-1)} END {print s+0}' "$WORK/e2e-test.log" 2>/dev/null)
e2e_failed=$(awk '/^test result:/ {for (i=1;i<=NF;i++) if ($i ~ /^failed;?$/) s+=$(i-1)} END {print s+0}' "$WORK/e2e-test.log" 2>/dev/null)
if [ "$e2e_status" -ne 0 ] && [ "${e2e_failed:-0}" -eq 0 ]; then e2e_failed=1; fi
cluster_passed=$((${cluster_passed:-0} + ${e2e_passed:-0}))
cluster_failed=$((${cluster_failed:-0} + ${e2e_failed:-0}))

# --- Fuzzing, from committed seeds: the sidecar's checkpoint parser and segment reader; the
# webhook's decisions on arbitrary bytes and generated objects, and its configuration loader.
log "fuzzing (${FUZZ_SECONDS:-60} s per target)"
fuzz_passed=0 fuzz_failed=0
for target in checkpoint segment review object config; do
  if tests/fuzz.sh "$target" "${FUZZ_SECONDS:-60}"; then
    fuzz_passed=$((fuzz_passed + 1))
  else
    fuzz_failed=$((fuzz_failed + 1))
  fi
done

total_passed=$((rust_passed + ${py_passed:-0} + ${cluster_passed:-0} + fuzz_passed))
total_failed=$((rust_failed + ${py_failed:-1} + ${cluster_failed:-0} + fuzz_failed))
# A build failure runs no test at all: count it, so the closing line cannot read as green.
if [ "$rust_status" -ne 0 ] && [ "$rust_failed" -eq 0 ]; then total_failed=$((total_failed + 1)); fi
echo
echo "total: ${total_passed} passed, ${total_failed} failed"
[ "$total_failed" -eq 0 ] && [ "$rust_status" -eq 0 ] && [ "$py_status" -eq 0 ] && [ "$cluster_status" -eq 0 ] && [ "$e2e_status" -eq 0 ]

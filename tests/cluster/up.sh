#!/usr/bin/env bash
# Starts a throw-away Kubernetes control plane on 127.0.0.1 with rayshape in front of it:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, the KubeRay CRDs and
# operator, fake Nodes shaped like one provider's node pools, and `rayshape-webhook serve`
# registered by a MutatingWebhookConfiguration, running as its own ServiceAccount.
# Everything (certificates, kubeconfigs, data, logs, pid files) goes under DIR;
# tests/cluster/down.sh DIR stops it. Build the binaries first: tests/cluster/build.sh.
#
# usage: tests/cluster/up.sh DIR [--nodes generic|eks|karpenter|gke|aks]
# environment:
#   RAYSHAPE_WEBHOOK_BIN  a rayshape-webhook binary to run (default: cargo build --release)
#   RAYSHAPE_CLUSTER_BIN  where build.sh put the control plane (default tests/.cluster/bin)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN="${RAYSHAPE_CLUSTER_BIN:-$ROOT/tests/.cluster/bin}"

usage() { echo "usage: $0 DIR [--nodes generic|eks|karpenter|gke|aks]" >&2; exit 2; }
DIR="" NODES=generic
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) [ $# -ge 2 ] || usage; NODES=$2; shift 2 ;;
    --nodes=*) NODES=${1#--nodes=}; shift ;;
    -h | --help) usage ;;
    -*) echo "error: unknown option $1" >&2; usage ;;
    *) [ -z "$DIR" ] || usage; DIR=$1; shift ;;
  esac
done
[ -n "$DIR" ] || usage
case "$NODES" in generic | eks | karpenter | gke | aks) ;; *) echo "error: --nodes must be generic, eks, karpenter, gke or aks, not '$NODES'" >&2; exit 2 ;; esac

for b in k8s etcd ray-operator; do
  if [ ! -x "$BIN/$b" ]; then
    echo "error: $BIN/$b is missing; build the control plane first: tests/cluster/build.sh" >&2
    exit 2
  fi
done
for tool in curl base64 go; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not on PATH (Debian: apt-get install curl coreutils; Go >= 1.26)" >&2; exit 2; }
done

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
# Only a new, empty or earlier up.sh directory: what is below would delete files in it.
if [ ! -f "$DIR/.rayshape-cluster" ] && [ -n "$(ls -A "$DIR")" ]; then
  echo "error: $DIR is not empty and was not made by up.sh; give a new or empty directory" >&2
  exit 2
fi
touch "$DIR/.rayshape-cluster"
if compgen -G "$DIR/pids/*.pid" >/dev/null; then
  for f in "$DIR"/pids/*.pid; do
    if kill -0 "$(cat "$f")" 2>/dev/null; then
      echo "error: a control plane already runs from $DIR ($(basename "$f" .pid) is pid $(cat "$f")); stop it with tests/cluster/down.sh $DIR" >&2
      exit 2
    fi
  done
fi
rm -rf "${DIR:?}"/{pki,logs,pids,etcd,rayshape,env} "$DIR"/*.kubeconfig "$DIR"/kubeconfig "$DIR"/*.yaml
mkdir -p "$DIR"/{pki,logs,pids,etcd,rayshape/config}
chmod 700 "$DIR/etcd" "$DIR/pki" # as etcd and a key directory want them

# The webhook binary: given, or built from this checkout.
if [ -n "${RAYSHAPE_WEBHOOK_BIN:-}" ]; then
  WEBHOOK_BIN=$RAYSHAPE_WEBHOOK_BIN
else
  echo "building rayshape-webhook (cargo build --release; set RAYSHAPE_WEBHOOK_BIN to use another binary)"
  (cd "$ROOT" && cargo build --release --locked -q -p rayshape-webhook)
  WEBHOOK_BIN="$ROOT/target/release/rayshape-webhook"
fi
[ -x "$WEBHOOK_BIN" ] || { echo "error: $WEBHOOK_BIN is not an executable rayshape-webhook" >&2; exit 2; }

T0=$(date +%s%N)
K8S="$BIN/k8s"
PKI="$DIR/pki"
export KUBECONFIG="$DIR/kubeconfig"
kubectl() { "$K8S" kubectl "$@"; }

# --- failure handling: stop what was started and show the failing component's log --------
STEP="start" STEP_LOG=""
on_exit() {
  local rc=$?
  [ "$rc" = 0 ] && return 0
  echo >&2
  echo "error: up.sh failed at: $STEP (exit $rc)" >&2
  if [ -n "$STEP_LOG" ] && [ -f "$STEP_LOG" ]; then
    echo "--- last lines of $STEP_LOG:" >&2
    tail -40 "$STEP_LOG" >&2
    echo "---" >&2
  fi
  echo "all logs are in $DIR/logs; stopping what was started" >&2
  "$HERE/down.sh" "$DIR" >&2 || true
  exit "$rc"
}
trap on_exit EXIT
step() { STEP=$1 STEP_LOG=${2:-}; }

# --- free ports on 127.0.0.1 ------------------------------------------------------------
USED_PORTS=" "
free_port() {
  local p
  for _ in $(seq 200); do
    # Below Linux's ephemeral range (32768-60999), which outgoing connections draw from.
    p=$((10000 + RANDOM % 22000))
    case "$USED_PORTS" in *" $p "*) continue ;; esac
    # Nothing listening: the connection is refused.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS+="$p "
      echo "$p"
      return 0
    fi
  done
  echo "error: no free port found on 127.0.0.1" >&2
  return 1
}
ETCD_PORT=$(free_port) ETCD_PEER_PORT=$(free_port) API_PORT=$(free_port)
KCM_PORT=$(free_port) SCHED_PORT=$(free_port) KUBERAY_HEALTH_PORT=$(free_port)
KUBERAY_METRICS_PORT=$(free_port) WEBHOOK_PORT=$(free_port) WEBHOOK_METRICS_PORT=$(free_port)
API="https://127.0.0.1:$API_PORT"

# --- processes ------------------------------------------------------------------------------
# start NAME CMD...: runs CMD in the background, output to logs/NAME.log, pid to pids/NAME.pid.
start() {
  local name=$1
  shift
  "$@" </dev/null >"$DIR/logs/$name.log" 2>&1 &
  echo $! >"$DIR/pids/$name.pid"
  echo "$1" >"$DIR/pids/$name.exe" # down.sh signals the pid only while it still runs this
}
# wait_for NAME SECONDS CMD...: until CMD succeeds; fails early if NAME's process died.
wait_for() {
  local name=$1 secs=$2 deadline
  shift 2
  deadline=$(($(date +%s) + secs))
  step "waiting for $name to be ready" "$DIR/logs/$name.log"
  until "$@" >/dev/null 2>&1; do
    if [ -f "$DIR/pids/$name.pid" ] && ! kill -0 "$(cat "$DIR/pids/$name.pid")" 2>/dev/null; then
      echo "error: $name exited" >&2
      return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "error: $name was not ready within $secs s" >&2
      return 1
    fi
    sleep 0.2
  done
}
elapsed() {
  local ms=$((($(date +%s%N) - T0) / 1000000))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}
say() { printf '[%5s s] %s\n' "$(elapsed)" "$*"; }

# --- certificates and kubeconfigs -----------------------------------------------------------
step "writing certificates (k8s pki)"
"$K8S" pki --dir "$PKI"

# kubeconfig FILE USER (client certificate PKI/USER.crt) or kubeconfig FILE USER token TOKEN
kubeconfig() {
  local file=$1 user=$2 auth
  if [ "${3:-}" = token ]; then
    auth="    token: $4"
  else
    auth="    client-certificate: $PKI/$user.crt
    client-key: $PKI/$user.key"
  fi
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: rayshape-test
  cluster:
    server: $API
    certificate-authority: $PKI/ca.crt
users:
- name: $user
  user:
$auth
contexts:
- name: rayshape-test
  context: {cluster: rayshape-test, user: $user}
current-context: rayshape-test
EOF
  chmod 600 "$file"
}
kubeconfig "$DIR/kubeconfig" admin
kubeconfig "$DIR/kube-controller-manager.kubeconfig" kube-controller-manager
kubeconfig "$DIR/kube-scheduler.kubeconfig" kube-scheduler

# --- where the KubeRay CRDs are: the ray-operator module the operator was built from ----------
step "finding the KubeRay module" "$DIR/logs/kubectl.log"
# `go mod download -json` prints where the module is (and fetches it if the cache lost it).
KUBERAY_DIR=$(cd "$HERE/kuberay" && GOTOOLCHAIN=local go mod download -json github.com/ray-project/kuberay/ray-operator 2>>"$DIR/logs/kubectl.log" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$KUBERAY_DIR/config/crd/bases" ] || { echo "error: no KubeRay CRDs found in the module cache ('$KUBERAY_DIR')" >&2; exit 1; }
echo "$KUBERAY_DIR" >"$DIR/kuberay.dir"

# --- etcd -------------------------------------------------------------------------------------
step "starting etcd" "$DIR/logs/etcd.log"
start etcd "$BIN/etcd" --name=default --data-dir="$DIR/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="default=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync --log-level=warn
wait_for etcd 20 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
say "etcd ready on 127.0.0.1:$ETCD_PORT"

# --- kube-apiserver ---------------------------------------------------------------------------
step "starting kube-apiserver" "$DIR/logs/kube-apiserver.log"
start kube-apiserver "$K8S" kube-apiserver \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/client-ca.crt" \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction,ServiceAccount,PodSecurity,MutatingAdmissionWebhook,ValidatingAdmissionWebhook \
  --service-account-issuer="$API" --api-audiences="$API" \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range=10.0.0.0/24 \
  --endpoint-reconciler-type=none \
  --allow-privileged=true \
  --profiling=false
wait_for kube-apiserver 60 curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$API/readyz"
say "kube-apiserver ready on $API"

# --- controllers and scheduler (they wait for nothing else) ------------------------------------
step "starting kube-controller-manager" "$DIR/logs/kube-controller-manager.log"
# No node lifecycle controller: it would taint the kubelet-less Nodes not-ready and evict.
start kube-controller-manager "$K8S" kube-controller-manager \
  --kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
  --leader-elect=false \
  --controllers='*,-node-lifecycle-controller' \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" \
  --root-ca-file="$PKI/ca.crt" \
  --cluster-name=rayshape-test \
  --profiling=false
step "starting kube-scheduler" "$DIR/logs/kube-scheduler.log"
start kube-scheduler "$K8S" kube-scheduler \
  --kubeconfig="$DIR/kube-scheduler.kubeconfig" \
  --authentication-kubeconfig="$DIR/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig="$DIR/kube-scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
  --leader-elect=false \
  --profiling=false

# --- KubeRay CRDs (in the background while the rest is set up) --------------------------------
step "creating the KubeRay CRDs" "$DIR/logs/kuberay-crds.log"
# Far beyond the 256 KiB client-side apply annotation: create, as KubeRay's Makefile does.
(
  kubectl create -f "$KUBERAY_DIR/config/crd/bases"
  kubectl wait --for condition=established --timeout=30s crd/rayclusters.ray.io crd/rayjobs.ray.io crd/rayservices.ray.io
) >"$DIR/logs/kuberay-crds.log" 2>&1 &
CRDS_PID=$!

# --- fake Nodes ------------------------------------------------------------------------------
step "creating the fake $NODES Nodes" "$DIR/logs/kubectl.log"
"$HERE/nodes.sh" "$NODES" >"$DIR/nodes.yaml"
kubectl create -f "$DIR/nodes.yaml" >>"$DIR/logs/kubectl.log" 2>&1
# TaintNodesByCondition put node.kubernetes.io/not-ready on each at creation; no kubelet
# will ever report ready, so take it off (the node lifecycle controller is not running).
kubectl taint nodes -l rayshape.test/fake-node=true node.kubernetes.io/not-ready:NoSchedule- >>"$DIR/logs/kubectl.log" 2>&1
say "$(grep -c '^  kind: Node' "$DIR/nodes.yaml") fake $NODES Nodes created"

# --- rayshape: installed from its manifests (manifests/overlays/e2e) ---------------------------
# Namespace (PodSecurity restricted), ServiceAccount, the least-privilege ClusterRole (what
# the bootstrap uses: tokenreviews create, pods get, events.k8s.io events create), the
# ConfigMaps, Deployment (no replicas: nothing runs pods here), Service, NetworkPolicy and
# the MutatingWebhookConfiguration, as an admin installs them, except that the webhook is
# reached by URL: it runs below as a local process, with the ServiceAccount's token. This
# kustomization on top of the e2e overlay sets what only up.sh knows: the URL's port, the
# caBundle of the test PKI, the profile of the fake Nodes, and the serving certificate as
# the Secret the Deployment mounts.
step "installing rayshape from manifests/overlays/e2e" "$DIR/logs/kubectl.log"
mkdir -p "$DIR/rayshape/install"
cat >"$DIR/rayshape/config/webhook.yaml" <<EOF
# Written by tests/cluster/up.sh: the placement profile of the fake Nodes.
profile: $NODES
EOF
cp "$DIR/rayshape/config/webhook.yaml" "$DIR/rayshape/install/webhook.yaml"
kubectl create secret generic rayshape-webhook-tls -n rayshape-system --type=kubernetes.io/tls \
  --from-file=tls.crt="$PKI/webhook.crt" --from-file=tls.key="$PKI/webhook.key" --from-file=ca.crt="$PKI/ca.crt" \
  --dry-run=client -o yaml >"$DIR/rayshape/install/tls-secret.yaml" 2>>"$DIR/logs/kubectl.log"
# Kustomize takes a base by relative path only.
E2E_OVERLAY=$(realpath --relative-to="$DIR/rayshape/install" "$ROOT/manifests/overlays/e2e")
cat >"$DIR/rayshape/install/kustomization.yaml" <<EOF
# Written by tests/cluster/up.sh: manifests/overlays/e2e with this control plane's values.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- $E2E_OVERLAY
- tls-secret.yaml
generatorOptions:
  disableNameSuffixHash: true
configMapGenerator:
- name: rayshape-settings
  namespace: rayshape-system
  behavior: replace
  files: [webhook.yaml]
- name: rayshape-e2e-endpoint
  literals:
  - url=https://127.0.0.1:$WEBHOOK_PORT/mutate
  - caBundle=$(base64 -w0 <"$PKI/ca.crt")
  options:
    annotations: {config.kubernetes.io/local-config: "true"}
replacements:
- source: {kind: ConfigMap, name: rayshape-e2e-endpoint, fieldPath: data.url}
  targets:
  - select: {kind: MutatingWebhookConfiguration, name: rayshape}
    fieldPaths: [webhooks.*.clientConfig.url]
- source: {kind: ConfigMap, name: rayshape-e2e-endpoint, fieldPath: data.caBundle}
  targets:
  - select: {kind: MutatingWebhookConfiguration, name: rayshape}
    fieldPaths: [webhooks.*.clientConfig.caBundle]
    options: {create: true}
EOF
kubectl kustomize "$DIR/rayshape/install" >"$DIR/rayshape/install.yaml" 2>>"$DIR/logs/kubectl.log"
kubectl apply --server-side -f "$DIR/rayshape/install.yaml" >>"$DIR/logs/kubectl.log" 2>&1
# A TokenRequest for the ServiceAccount, as the kubelet would mount it (here for a day).
TOKEN=$(kubectl create token rayshape-webhook -n rayshape-system --duration=24h 2>>"$DIR/logs/kubectl.log")
kubeconfig "$DIR/webhook.kubeconfig" rayshape-webhook token "$TOKEN"
unset TOKEN

# --- rayshape-webhook serve ---------------------------------------------------------------------
step "starting rayshape-webhook" "$DIR/logs/rayshape-webhook.log"
# The webhook's command, in a script of its own, so tests can stop the webhook and start it
# again exactly as it was (DIR/rayshape/serve.sh starts it in the background, records its pid).
cat >"$DIR/rayshape/serve.sh" <<SERVE
#!/usr/bin/env bash
# Written by tests/cluster/up.sh: starts rayshape-webhook as up.sh did, in the background.
KUBECONFIG='$DIR/webhook.kubeconfig' '$WEBHOOK_BIN' serve \\
  --config '$DIR/rayshape/config' --bootstrap-ca '$PKI/ca.crt' \\
  --tls-cert '$PKI/webhook.crt' --tls-key '$PKI/webhook.key' \\
  --listen '127.0.0.1:$WEBHOOK_PORT' --metrics-listen '127.0.0.1:$WEBHOOK_METRICS_PORT' \\
  </dev/null >>'$DIR/logs/rayshape-webhook.log' 2>&1 &
echo \$! >'$DIR/pids/rayshape-webhook.pid'
echo '$WEBHOOK_BIN' >'$DIR/pids/rayshape-webhook.exe'
SERVE
chmod +x "$DIR/rayshape/serve.sh"
"$DIR/rayshape/serve.sh"
wait_for rayshape-webhook 20 curl -fsS --cacert "$PKI/ca.crt" "https://127.0.0.1:$WEBHOOK_PORT/readyz"
say "rayshape-webhook ready on https://127.0.0.1:$WEBHOOK_PORT (metrics on :$WEBHOOK_METRICS_PORT)"

step "waiting for the KubeRay CRDs" "$DIR/logs/kuberay-crds.log"
wait "$CRDS_PID"
say "KubeRay CRDs established (from $KUBERAY_DIR)"
step "starting the KubeRay operator" "$DIR/logs/ray-operator.log"
start ray-operator "$BIN/ray-operator" --kubeconfig="$DIR/kubeconfig" \
  --enable-leader-election=false \
  --metrics-addr="127.0.0.1:$KUBERAY_METRICS_PORT" \
  --health-probe-bind-address="127.0.0.1:$KUBERAY_HEALTH_PORT" \
  --log-stdout-encoder=console

# --- everything ready ------------------------------------------------------------------------------
KCM_HEALTH="https://127.0.0.1:$KCM_PORT/healthz" SCHED_HEALTH="https://127.0.0.1:$SCHED_PORT/healthz"
wait_for kube-controller-manager 30 curl -fsSk "$KCM_HEALTH"
wait_for kube-scheduler 30 curl -fsSk "$SCHED_HEALTH"
wait_for ray-operator 30 curl -fsS "http://127.0.0.1:$KUBERAY_HEALTH_PORT/readyz"
# The ServiceAccount controller is what lets pods be created (admission needs the SA).
step "waiting for the default ServiceAccount" "$DIR/logs/kube-controller-manager.log"
deadline=$(($(date +%s) + 30))
until kubectl get serviceaccount default -n default >/dev/null 2>&1; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "error: kube-controller-manager created no default ServiceAccount within 30 s" >&2; exit 1; }
  sleep 0.2
done

cat >"$DIR/env" <<EOF
# Written by tests/cluster/up.sh; source it.
export KUBECONFIG='$DIR/kubeconfig'
export RAYSHAPE_CLUSTER_DIR='$DIR'
export RAYSHAPE_CLUSTER_NODES='$NODES'
export RAYSHAPE_CLUSTER_BIN='$BIN'
export RAYSHAPE_APISERVER='$API'
export RAYSHAPE_WEBHOOK_URL='https://127.0.0.1:$WEBHOOK_PORT'
export RAYSHAPE_WEBHOOK_METRICS='http://127.0.0.1:$WEBHOOK_METRICS_PORT/metrics'
export RAYSHAPE_WEBHOOK_CONFIG='$DIR/rayshape/config'
export RAYSHAPE_KUBERAY_DIR='$KUBERAY_DIR'
EOF
step "done"
say "control plane with rayshape ready ($NODES nodes)"
cat <<EOF

  Kubernetes v1.36.3 at $API, KubeRay $(basename "$KUBERAY_DIR" | sed 's/.*@//'), rayshape-webhook (profile $NODES)
  logs:  $DIR/logs/
  use:   export KUBECONFIG=$DIR/kubeconfig
         PATH=$BIN:\$PATH kubectl get nodes     # kubectl v1.36.3 (or: source $DIR/env)
  stop:  $HERE/down.sh $DIR
EOF

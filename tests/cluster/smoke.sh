#!/usr/bin/env bash
# Smoke test of a control plane started by tests/cluster/up.sh DIR: rayshape is in front of
# a real kube-apiserver, scheduler, controller manager and KubeRay operator.
#   - a pod labelled rayshape.io/instance-type is stored shaped (native sidecar, annotation);
#   - a pod that is not a Ray pod is not sent to the webhook (its request metric stays);
#   - the scheduler binds the Ray pod to a node of the matching (on-demand CPU) pool;
#   - the KubeRay operator's head and worker pods of a small RayCluster come through shaped;
#   - the webhook's own identity has exactly its least-privilege rights.
# Ends with "smoke: N passed, M failed"; exits non-zero when anything failed.
#
# usage: tests/cluster/smoke.sh DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR (a directory tests/cluster/up.sh started)" >&2; exit 2; }
DIR=$(cd "$1" && pwd)
[ -f "$DIR/env" ] || { echo "error: $DIR/env is missing: start the cluster with tests/cluster/up.sh $DIR first" >&2; exit 2; }
# shellcheck source=/dev/null
. "$DIR/env"
kubectl() { "$RAYSHAPE_CLUSTER_BIN/k8s" kubectl "$@"; }
IMAGE=rayproject/ray:2.49.0 # never pulled: no kubelet runs
NS="smoke-$(date +%s)-$$"
RUN_LOG="$DIR/logs/smoke.log"
: >"$RUN_LOG"

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok - $*"; }
not_ok() {
  failed=$((failed + 1))
  echo "not ok - $*"
}
# check NAME CMD...: CMD's success is the check's.
check() {
  local name=$1
  shift
  if "$@" >>"$RUN_LOG" 2>&1; then ok "$name"; else not_ok "$name (see $RUN_LOG)"; fi
}
# eventually SECONDS CMD...: until CMD succeeds.
eventually() {
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.3
  done
}
jp() { kubectl get -n "$NS" "$1" -o jsonpath="$2"; }
bound() { test -n "$(jp "$1" '{.spec.nodeName}' 2>/dev/null)"; }
# has_pod SELECTOR: a pod matching SELECTOR exists.
has_pod() { test -n "$(kubectl get pods -n "$NS" -l "$1" -o name 2>/dev/null)"; }
# The sum of the webhook's admission request counters.
admissions() {
  curl -fsS "$RAYSHAPE_WEBHOOK_METRICS" | awk '/^rayshape_webhook_admission_requests_total[{ ]/ {s += $NF} END {print s + 0}'
}
cleanup() {
  kubectl delete rayclusters --all -n "$NS" --wait=false >/dev/null 2>&1 || true
  # Scheduled pods wait for a kubelet that is not there: force them out.
  kubectl delete pods --all -n "$NS" --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "# smoke test in namespace $NS (profile $RAYSHAPE_CLUSTER_NODES)"
cat <<EOF | kubectl create -f - >>"$RUN_LOG" 2>&1
apiVersion: v1
kind: Namespace
metadata:
  name: $NS
  labels:
    pod-security.kubernetes.io/enforce: baseline
    pod-security.kubernetes.io/warn: restricted
EOF
# Pods need the namespace's default ServiceAccount (the ServiceAccount admission plugin).
check "kube-controller-manager creates the default ServiceAccount" \
  eventually 30 kubectl get serviceaccount default -n "$NS"

# --- a pod that is not a Ray pod never reaches the webhook ---------------------------------------
before=$(admissions)
cat <<EOF | kubectl create -n "$NS" -f - >>"$RUN_LOG" 2>&1
apiVersion: v1
kind: Pod
metadata: {name: plain, labels: {app: plain}}
spec:
  containers: [{name: web, image: nginx:1.27}]
EOF
after=$(admissions)
check "a plain pod is created" kubectl get pod plain -n "$NS"
check "a plain pod is not sent to the webhook (requests $before -> $after)" test "$before" = "$after"
check "a plain pod is stored without a sidecar or rayshape annotation" \
  test -z "$(jp pod/plain '{.spec.initContainers[*].name}{.metadata.annotations.rayshape\.io/shaped}')"

# The controller manager runs the workload controllers: a Deployment gets its pod.
kubectl create deployment web -n "$NS" --image=nginx:1.27 --replicas=1 >>"$RUN_LOG" 2>&1
check "the Deployment and ReplicaSet controllers create a Deployment's pod" eventually 30 has_pod app=web

# --- a Ray pod asking for an instance type is shaped ------------------------------------------
before=$(admissions)
cat <<EOF | kubectl create -n "$NS" -f - >>"$RUN_LOG" 2>&1
apiVersion: v1
kind: Pod
metadata:
  name: ray-typed
  labels: {rayshape.io/instance-type: 2CPU-8GB}
spec:
  containers:
  - name: ray
    image: $IMAGE
    command: [ray, start, --head, --block]
EOF
after=$(admissions)
check "a Ray pod (rayshape.io/instance-type: 2CPU-8GB) is created" kubectl get pod ray-typed -n "$NS"
check "the Ray pod was sent to the webhook (requests $before -> $after)" test "$after" -gt "$before"
check "the stored Ray pod has the native sidecar rayshape-sidecar (restartPolicy: Always)" \
  test "$(jp pod/ray-typed '{.spec.initContainers[?(@.name=="rayshape-sidecar")].restartPolicy}')" = Always
check "the stored Ray pod has the annotation rayshape.io/shaped" \
  test -n "$(jp pod/ray-typed '{.metadata.annotations.rayshape\.io/shaped}')"
check "the Ray container was sized to the instance type (limits cpu 1900m = 2 - sidecar 100m)" \
  test "$(jp pod/ray-typed '{.spec.containers[0].resources.limits.cpu}')" = 1900m

# --- the scheduler binds it to a node of the matching pool --------------------------------------
if eventually 30 bound pod/ray-typed; then
  node=$(jp pod/ray-typed '{.spec.nodeName}')
  pool=$(kubectl get node "$node" -o jsonpath='{.metadata.labels.rayshape\.test/pool}')
  ok "the scheduler bound the Ray pod (to $node)"
  check "an on-demand CPU Ray pod is on an on-demand CPU node (pool: $pool)" test "$pool" = on-demand
else
  not_ok "the scheduler bound the Ray pod: $(jp pod/ray-typed '{.status.conditions[?(@.type=="PodScheduled")].message}')"
fi

# --- the KubeRay operator's pods come through the webhook ----------------------------------------
cat <<EOF | kubectl create -n "$NS" -f - >>"$RUN_LOG" 2>&1
apiVersion: ray.io/v1
kind: RayCluster
metadata: {name: smoke}
spec:
  rayVersion: "2.49.0"
  headGroupSpec:
    rayStartParams: {}
    template:
      metadata: {labels: {rayshape.io/instance-type: 2CPU-8GB}}
      spec:
        containers: [{name: ray-head, image: $IMAGE}]
  workerGroupSpecs:
  - groupName: workers
    replicas: 1
    minReplicas: 1
    maxReplicas: 2
    rayStartParams: {}
    template:
      metadata: {labels: {rayshape.io/instance-type: 4CPU-16GB}}
      spec:
        containers: [{name: ray-worker, image: $IMAGE}]
EOF
check "a RayCluster is created" kubectl get raycluster smoke -n "$NS"
check "the RayCluster's worker template was sized (limits cpu 3900m)" \
  test "$(jp raycluster/smoke '{.spec.workerGroupSpecs[0].template.spec.containers[0].resources.limits.cpu}')" = 3900m
for type in head worker; do
  sel="ray.io/cluster=smoke,ray.io/node-type=$type"
  if eventually 60 has_pod "$sel"; then
    pod=$(kubectl get pods -n "$NS" -l "$sel" -o name | head -1)
    ok "the KubeRay operator created the $type pod ($pod)"
    check "KubeRay's $type pod has the native sidecar rayshape-sidecar" \
      test "$(jp "$pod" '{.spec.initContainers[?(@.name=="rayshape-sidecar")].restartPolicy}')" = Always
    check "KubeRay's $type pod has the annotation rayshape.io/shaped" \
      test -n "$(jp "$pod" '{.metadata.annotations.rayshape\.io/shaped}')"
    check "the scheduler bound KubeRay's $type pod" eventually 30 bound "$pod"
  else
    not_ok "the KubeRay operator created the $type pod (none within 60 s; see $DIR/logs/ray-operator.log)"
  fi
done

# --- the webhook's identity: its own ServiceAccount, least privilege ------------------------------
wk() { kubectl --kubeconfig "$DIR/webhook.kubeconfig" "$@"; }
check "the webhook authenticates as system:serviceaccount:rayshape-system:rayshape-webhook" \
  test "$(wk auth whoami -o jsonpath='{.status.userInfo.username}')" = system:serviceaccount:rayshape-system:rayshape-webhook
for allowed in "create tokenreviews.authentication.k8s.io" "get pods -n $NS" "create events.events.k8s.io -n $NS"; do
  # shellcheck disable=SC2086
  check "the webhook may $allowed" test "$(wk auth can-i $allowed 2>/dev/null)" = yes
done
for denied in "list pods -n $NS" "create pods -n $NS" "get secrets -n $NS" "update pods -n $NS"; do
  # shellcheck disable=SC2086
  check "the webhook may not $denied" test "$(wk auth can-i $denied 2>/dev/null)" = no
done

# --- the identity bootstrap: the webhook's own identity against the real API -----------------
# A sidecar's token: pod-bound, audience rayshape.io (as the injected projected volume is).
# The webhook reviews it (TokenReview), reads the pod and records an Event, as itself.
bootstrap() { # bootstrap TOKEN: prints the HTTP status; the body goes to logs/bootstrap.json
  curl -sS -o "$DIR/logs/bootstrap.json" -w '%{http_code}' --cacert "$DIR/pki/ca.crt" \
    -X POST -H "Authorization: Bearer $1" "$RAYSHAPE_WEBHOOK_URL/v1/bootstrap"
}
pod_token() { kubectl create token default -n "$NS" --audience rayshape.io --duration 10m "$@"; }
code=$(bootstrap "$(pod_token --bound-object-kind Pod --bound-object-name ray-typed)")
check "the shaped Ray pod's token bootstraps (HTTP $code: $(head -c 160 "$DIR/logs/bootstrap.json"))" test "$code" = 200
verified() {
  kubectl get events.events.k8s.io -n "$NS" --field-selector regarding.name=ray-typed \
    -o jsonpath='{.items[*].reason}' | grep -qw BootstrapVerified
}
check "the webhook recorded a BootstrapVerified Event on the pod (events.k8s.io)" eventually 10 verified
code=$(bootstrap "$(pod_token --bound-object-kind Pod --bound-object-name plain)")
check "the token of a pod the webhook did not shape is refused (HTTP $code)" test "$code" = 403
code=$(bootstrap "$(pod_token)")
check "a token bound to no pod is refused (HTTP $code)" test "$code" = 403
code=$(bootstrap "$(kubectl create token default -n "$NS" --audience elsewhere --duration 10m --bound-object-kind Pod --bound-object-name ray-typed)")
check "a token for another audience is not authenticated (HTTP $code)" test "$code" = 401

echo "smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

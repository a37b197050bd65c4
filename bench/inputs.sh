# shellcheck shell=bash
# Sourced by the webhook benchmarks (admission.sh, profile.sh, webhook-memory.sh,
# symbol-order.sh): the inputs they all send, written once.

# A free TCP port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Wait until the server PID answers GET /healthz on PORT over TLS (the certificate
# webhook_inputs wrote into DIR), polling TRIES times every INTERVAL seconds; fails as soon
# as the server has exited. Usage: await_healthz DIR PORT PID TRIES INTERVAL
await_healthz() {
  local dir=$1 port=$2 pid=$3 tries=$4 interval=$5 _
  for _ in $(seq "$tries"); do
    curl -sf --cacert "$dir/tls.crt" "https://localhost:$port/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep "$interval"
  done
  return 1
}

# Into DIR: a throw-away certificate for localhost (tls.crt, tls.key), an empty
# configuration directory (config: the built-in configuration), the KubeRay CPU-worker
# review (review-cpu.json) and the GPU worker in the same envelope (review-gpu.json; kube's
# AdmissionRequest needs resource and userInfo), labelled as webhook/engine/benches/shape.rs
# labels it, and the review the API server sent for KubeRay's sample worker, managedFields
# and all (review-sample.json, tests/fixtures/apiserver). Run from the repository's root.
webhook_inputs() {
  local dir=$1 fix=tests/fixtures/kuberay
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
  mkdir -p "$dir/config"
  cp "$fix/admissionreview-cpu-worker-instance-type.json" "$dir/review-cpu.json"
  cp tests/fixtures/apiserver/admissionreview-sample-worker.json "$dir/review-sample.json"
  python3 - "$fix/admissionreview-cpu-worker-instance-type.json" "$fix/gpu-worker.json" "$dir/review-gpu.json" <<'PY'
import json, sys
review = json.load(open(sys.argv[1]))
pod = json.load(open(sys.argv[2]))
pod["metadata"].setdefault("labels", {})["rayshape.io/instance-type"] = "8CPU-32GB-1xT4"
review["request"]["uid"] = "bench-gpu-worker"
review["request"]["object"] = pod
json.dump(review, open(sys.argv[3], "w"), indent=2)
PY
}

#!/usr/bin/env bash
# Prints fake Nodes (YAML, a kind: List) labelled and tainted like one provider's node pools,
# as rayshape's placement profiles (webhook/engine/profiles/*.yaml) select on them:
#   on-demand and spot CPU pools in two zones each, and an on-demand GPU pool (NVIDIA T4,
#   the accelerator of the default instance type 8CPU-32GB-1xT4) in two zones.
# No kubelet runs behind them: up.sh removes the not-ready taint the API server adds on
# create, and the node lifecycle controller is off, so nothing puts it back.
#
# usage: tests/cluster/nodes.sh generic|eks|karpenter|gke|aks
set -euo pipefail

provider=${1:-}
# Per provider: region, two zones, CPU and GPU instance types.
case "$provider" in
  generic) region=region-1 zones=(zone-a zone-b) cpu_type=standard-16 gpu_type=gpu-t4-16 ;;
  eks | karpenter) region=us-west-2 zones=(us-west-2a us-west-2b) cpu_type=m5.4xlarge gpu_type=g4dn.4xlarge ;;
  gke) region=us-central1 zones=(us-central1-a us-central1-b) cpu_type=n2-standard-16 gpu_type=n1-standard-16 ;;
  aks) region=eastus zones=(eastus-1 eastus-2) cpu_type=Standard_D16s_v5 gpu_type=Standard_NC16as_T4_v3 ;;
  *) echo "usage: $0 generic|eks|karpenter|gke|aks" >&2; exit 2 ;;
esac

# pool_labels POOL: the provider's labels for a pool (on-demand, spot, gpu), one "k: v" a line.
pool_labels() {
  local pool=$1 market=ON_DEMAND
  [ "$pool" = spot ] && market=SPOT
  case "$provider" in
    # The generic profile tolerates the capacity-type taints and prefers spot for
    # PREFER_SPOT by the label of the same key: an admin's pools carry both.
    generic) echo "node.rayshape.io/capacity-type: $market" ;;
    eks)
      echo "eks.amazonaws.com/capacityType: $market"
      echo "eks.amazonaws.com/nodegroup: ray-$pool"
      if [ "$pool" = gpu ]; then
        echo "nvidia.com/gpu.product: Tesla-T4"
        echo "nvidia.com/gpu.count: \"1\""
      fi ;;
    karpenter)
      if [ "$market" = SPOT ]; then echo "karpenter.sh/capacity-type: spot"; else echo "karpenter.sh/capacity-type: on-demand"; fi
      echo "karpenter.sh/nodepool: ray-$pool"
      if [ "$pool" = gpu ]; then
        echo "karpenter.k8s.aws/instance-gpu-name: t4"
        echo "karpenter.k8s.aws/instance-gpu-count: \"1\""
        echo "karpenter.k8s.aws/instance-gpu-memory: \"16384\""
        echo "karpenter.k8s.aws/instance-gpu-manufacturer: nvidia"
      fi ;;
    gke)
      echo "cloud.google.com/gke-nodepool: ray-$pool"
      [ "$market" = SPOT ] && echo "cloud.google.com/gke-spot: \"true\""
      [ "$pool" = gpu ] && echo "cloud.google.com/gke-accelerator: nvidia-tesla-t4"
      ;;
    aks)
      echo "kubernetes.azure.com/agentpool: ray${pool//-/}"
      [ "$market" = SPOT ] && echo "kubernetes.azure.com/scalesetpriority: spot"
      [ "$pool" = gpu ] && echo "nvidia.com/gpu.product: NVIDIA-T4"
      ;;
  esac
  return 0
}

# pool_taints POOL: the pool's taints, one "key value effect" a line (value "-" for none).
pool_taints() {
  local pool=$1
  case "$provider" in
    generic)
      # What the generic profile tolerates: capacity-type on every pool, accelerator-type on GPUs.
      if [ "$pool" = spot ]; then echo "node.rayshape.io/capacity-type SPOT NoSchedule"; else echo "node.rayshape.io/capacity-type ON_DEMAND NoSchedule"; fi
      [ "$pool" = gpu ] && echo "node.rayshape.io/accelerator-type GPU NoSchedule" ;;
    gke)
      [ "$pool" = spot ] && echo "cloud.google.com/gke-spot true NoSchedule"
      [ "$pool" = gpu ] && echo "nvidia.com/gpu present NoSchedule" ;; # GKE taints GPU pools itself
    aks)
      [ "$pool" = spot ] && echo "kubernetes.azure.com/scalesetpriority spot NoSchedule" # AKS taints spot pools itself
      [ "$pool" = gpu ] && echo "nvidia.com/gpu - NoSchedule" ;;
    eks | karpenter)
      [ "$pool" = gpu ] && echo "nvidia.com/gpu - NoSchedule" ;; # the usual GPU node-group taint
  esac
  return 0
}

echo "apiVersion: v1"
echo "kind: List"
echo "items:"
for pool in on-demand spot gpu; do
  for i in "${!zones[@]}"; do
    zone=${zones[$i]}
    name="$provider-$pool-$((i + 1))"
    itype=$cpu_type gpu=""
    if [ "$pool" = gpu ]; then itype=$gpu_type gpu=', nvidia.com/gpu: "1"'; fi
    cat <<EOF
- apiVersion: v1
  kind: Node
  metadata:
    name: $name
    labels:
      kubernetes.io/hostname: $name
      kubernetes.io/os: linux
      kubernetes.io/arch: amd64
      node.kubernetes.io/instance-type: $itype
      topology.kubernetes.io/region: $region
      topology.kubernetes.io/zone: $zone
      rayshape.test/fake-node: "true"
      rayshape.test/pool: $pool
EOF
    pool_labels "$pool" | sed 's/^/      /'
    taints=$(pool_taints "$pool")
    if [ -z "$taints" ]; then
      echo "  spec: {}"
    else
      echo "  spec:"
      echo "    taints:"
      while read -r key value effect; do
        echo "    - key: $key"
        [ "$value" = - ] || echo "      value: \"$value\""
        echo "      effect: $effect"
      done <<<"$taints"
    fi
    cat <<EOF
  status:
    capacity: {cpu: "16", memory: 64Gi, pods: "110", ephemeral-storage: 100Gi$gpu}
    allocatable: {cpu: 15890m, memory: 62Gi, pods: "110", ephemeral-storage: 95Gi$gpu}
    conditions:
    - {type: Ready, status: "True", reason: KubeletReady, message: "fake node: no kubelet runs behind it"}
    nodeInfo:
      architecture: amd64
      operatingSystem: linux
      kubeletVersion: v1.36.3
      containerRuntimeVersion: fake://0
      kernelVersion: ""
      osImage: fake
      machineID: ""
      systemUUID: ""
      bootID: ""
      kubeProxyVersion: ""
EOF
  done
done

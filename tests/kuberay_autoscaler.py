#!/usr/bin/env python3
"""The KubeRay autoscaler's own reading of RayClusters, for tests/e2e/tests/kuberay.rs.

Reads `{"items": [RayCluster, ...]}` (as `kubectl get rayclusters -o json` prints them) on
stdin and calls the Ray autoscaler's derivation of node types from a RayCluster,
ray.autoscaler._private.kuberay.autoscaling_config._derive_autoscaling_config_from_ray_cr,
the function the autoscaler calls on every iteration with the RayCluster it GETs. Prints
one JSON object: the Ray version, and per "namespace/name" the resources of each node type
(group), or the error the derivation raised. Nothing here interprets the result: the Rust
test compares it with the pods.

A RayCluster without workerGroupSpecs (KubeRay allows it) makes the derivation raise
KeyError('workerGroupSpecs'); it is then derived again with an empty list, and said so,
so that the head group is still compared.
"""

import copy
import json
import logging
import sys

import ray
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)


def node_types(cr):
    notes = []
    try:
        config = _derive_autoscaling_config_from_ray_cr(cr)
    except KeyError as e:
        if e.args != ("workerGroupSpecs",) or "workerGroupSpecs" in cr["spec"]:
            raise
        notes.append("KeyError('workerGroupSpecs'): derived again with workerGroupSpecs: []")
        cr = copy.deepcopy(cr)
        cr["spec"]["workerGroupSpecs"] = []
        config = _derive_autoscaling_config_from_ray_cr(cr)
    groups = {
        name: {"resources": t["resources"], "min": t["min_workers"], "max": t["max_workers"]}
        for name, t in config["available_node_types"].items()
    }
    return {"groups": groups, "notes": notes}


def main():
    # The derivation logs warnings (e.g. labels in rayStartParams); they are not results.
    logging.disable(logging.WARNING)
    crs = json.load(sys.stdin)["items"]
    out = {"ray": ray.__version__, "clusters": {}}
    for cr in crs:
        key = f'{cr["metadata"]["namespace"]}/{cr["metadata"]["name"]}'
        try:
            out["clusters"][key] = node_types(cr)
        except Exception as e:  # every failure is a result the test reports
            out["clusters"][key] = {"error": f"{type(e).__name__}: {e}"}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

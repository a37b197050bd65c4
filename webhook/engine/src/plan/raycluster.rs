//! Sizing of KubeRay's own objects: RayCluster, and the `rayClusterSpec` of RayJob and
//! RayService.
//!
//! KubeRay derives `--num-cpus`, `--memory`, `--num-gpus` and the `/dev/shm` size from the
//! group template, and the KubeRay autoscaler plans from the RayCluster, never from pods. So
//! a group template that carries the instance-type label gets its Ray container sized here,
//! exactly as its pods will be: the pods then need no correction, and the autoscaler sees
//! the real shape. Only `containers[0].resources` changes; `replicas`, `workersToDelete`,
//! `rayStartParams` and everything else are left alone, and sizing an already sized
//! template changes nothing (any template change would alter KubeRay's upgrade hash).

use super::{Denial, sidecar, sizing};
use crate::classify::ClusterKind;
use crate::config::Config;
use crate::config::instance_types::InstanceType;
use crate::primitives::pod;
use rayshape_contract::keys;
use serde_json::{Value, json};

/// KubeRay's default autoscaler container resources (`BuildAutoscalerContainer`).
const AUTOSCALER_DEFAULT: (&str, &str) = ("500m", "512Mi");

/// Everything decided about one RayCluster, RayJob or RayService.
#[derive(Debug)]
pub struct ClusterPlan<'c> {
    /// The group templates with an instance type.
    pub groups: Vec<GroupPlan<'c>>,
    pub warnings: Vec<String>,
    /// Why nothing changes, when nothing does.
    pub skipped: Option<&'static str>,
}

/// One group template to size.
#[derive(Debug)]
pub struct GroupPlan<'c> {
    /// `head`, or the worker group's name.
    pub name: String,
    /// The path from the object's root to the template (keys, and array indices as text).
    pub template: Vec<String>,
    pub instance_type: &'c InstanceType,
    /// The new `resources` of the template's first (Ray) container.
    pub resources: Value,
    /// Whether `resources` differs from what the template has.
    pub changed: bool,
}

/// Plan the sizing of a KubeRay object's group templates.
pub fn plan<'c>(
    obj: &Value,
    kind: ClusterKind,
    cfg: &'c Config,
) -> Result<ClusterPlan<'c>, Denial> {
    let cluster_path = kind.spec_path;
    let mut out = ClusterPlan {
        groups: Vec::new(),
        warnings: Vec::new(),
        skipped: None,
    };
    let Some(spec) = pod::at(obj, cluster_path) else {
        out.skipped = Some("no cluster spec (a RayJob with clusterSelector)");
        return Ok(out);
    };
    let autoscaler = spec.get("enableInTreeAutoscaling").and_then(Value::as_bool) == Some(true);
    let autoscaler_resources = pod::at(spec, &["autoscalerOptions", "resources"])
        .cloned()
        .unwrap_or_else(|| {
            let (cpu, mem) = AUTOSCALER_DEFAULT;
            json!({"requests": {"cpu": cpu, "memory": mem}, "limits": {"cpu": cpu, "memory": mem}})
        });
    let workers = spec
        .get("workerGroupSpecs")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let head = spec.get("headGroupSpec").map(|g| {
        (
            g,
            "head".to_string(),
            vec!["headGroupSpec".to_string()],
            true,
        )
    });
    let groups = head
        .into_iter()
        .chain(workers.iter().enumerate().map(|(i, g)| {
            let name = g
                .get("groupName")
                .and_then(Value::as_str)
                .map_or_else(|| format!("workerGroupSpecs[{i}]"), str::to_string);
            (
                g,
                name,
                vec!["workerGroupSpecs".to_string(), i.to_string()],
                false,
            )
        }));
    for (group, group_label, group_path, is_head) in groups {
        let Some(template) = group.get("template") else {
            continue;
        };
        let Some(type_name) = pod::vocab(template, &cfg.settings.key(keys::INSTANCE_TYPE)) else {
            continue;
        };
        let Some(it) = cfg.instance_types.get(type_name) else {
            return Err(Denial::new(format!(
                "group {group_label}: unknown instance type {type_name:?} in {}; known instance types: {}",
                cfg.settings.key(keys::INSTANCE_TYPE),
                cfg.type_names()
            )));
        };
        let containers = pod::containers(template);
        let Some(ray) = containers.first() else {
            continue;
        };
        if let Some(i) = containers.iter().position(|c| !c.is_object()) {
            return Err(Denial::new(format!(
                "group {group_label}: template.spec.containers[{i}] is not an object; every container must be a mapping with at least a name and an image"
            )));
        }
        // The pod this template becomes, with what KubeRay and rayshape add to it.
        let mut future = json!({"metadata": template.get("metadata").cloned().unwrap_or(json!({})), "spec": template.get("spec").cloned().unwrap_or(json!({}))});
        // KubeRay adds its autoscaler container to the head's pods.
        if is_head && autoscaler {
            push(
                &mut future,
                "containers",
                json!({"name": "autoscaler", "resources": autoscaler_resources}),
            );
        }
        if cfg.settings.sidecar.enabled && !sidecar::opted_out(template, &cfg.settings) {
            let r: serde_json::Map<String, Value> = cfg
                .settings
                .sidecar
                .resources
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            let resources = json!({"requests": r, "limits": r});
            if cfg.settings.sidecar.native {
                push(
                    &mut future,
                    "initContainers",
                    json!({"name": cfg.settings.sidecar.name, "restartPolicy": "Always", "resources": resources}),
                );
            } else {
                push(
                    &mut future,
                    "containers",
                    json!({"name": cfg.settings.sidecar.name, "resources": resources}),
                );
            }
        }
        let sized = sizing::plan(&future, 0, it)
            .map_err(|m| Denial::new(format!("group {group_label}: {m}")))?;
        out.warnings.extend(sized.warnings);
        let changed = ray.get("resources") != Some(&sized.resources);
        let template_path = cluster_path
            .iter()
            .map(|s| s.to_string())
            .chain(group_path)
            .chain(["template".to_string()])
            .collect();
        out.groups.push(GroupPlan {
            name: group_label,
            template: template_path,
            instance_type: it,
            resources: sized.resources,
            changed,
        });
    }
    if !out.groups.iter().any(|g| g.changed) {
        out.skipped = Some("no group template to size");
    }
    Ok(out)
}

fn push(pod: &mut Value, list: &str, v: Value) {
    let spec = pod::ensure_object(pod::ensure_field(pod, "spec"));
    pod::ensure_array(spec.entry(list).or_insert_with(|| Value::Array(Vec::new()))).push(v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Class, classify};

    /// Plan and apply, as the pipeline does.
    fn shape(obj: &Value, cfg: &Config) -> Result<crate::apply::Shaped, Denial> {
        let Class::Cluster(kind) = classify(obj, None, &cfg.settings) else {
            panic!("not a cluster: {obj}");
        };
        Ok(crate::apply::cluster(obj, plan(obj, kind, cfg)?))
    }

    fn cluster() -> Value {
        json!({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "rc"},
            "spec": {"enableInTreeAutoscaling": true, "rayVersion": "2.52.0",
                "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": {"metadata": {"labels": {"rayshape.io/instance-type": "4CPU-16GB"}},
                    "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.52.0"}]}}},
                "workerGroupSpecs": [
                    {"groupName": "gpu", "replicas": 2, "minReplicas": 0, "maxReplicas": 4, "rayStartParams": {},
                     "template": {"metadata": {"labels": {"rayshape.io/instance-type": "8CPU-32GB-1xT4"}},
                                  "spec": {"containers": [{"name": "ray-worker", "image": "rayproject/ray:2.52.0-gpu", "resources": {"limits": {"cpu": "1"}}}]}}},
                    {"groupName": "plain", "replicas": 1, "template": {"spec": {"containers": [{"name": "w", "image": "x"}]}}}]}})
    }

    #[test]
    fn sizes_labelled_groups_only_and_is_idempotent() {
        let cfg = Config::builtin();
        let out = shape(&cluster(), &cfg).unwrap();
        let spec = &out.object["spec"];
        assert_eq!(
            spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"],
            json!({"cpu": "3400m", "memory": "15808Mi"}),
            "autoscaler and sidecar taken out"
        );
        assert_eq!(
            spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"],
            json!({"cpu": "7900m", "memory": "32704Mi", "nvidia.com/gpu": "1"})
        );
        assert!(
            spec["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]
                .get("resources")
                .is_none()
        );
        assert_eq!(
            spec["headGroupSpec"]["rayStartParams"],
            json!({"num-cpus": "0"})
        );
        assert_eq!(spec["workerGroupSpecs"][0]["replicas"], 2);
        let again = shape(&out.object, &cfg).unwrap();
        assert_eq!(again.object, out.object);
        assert_eq!(again.skipped, Some("no group template to size"));
    }

    #[test]
    fn rayjob_and_unknown_types() {
        let cfg = Config::builtin();
        let job = json!({"apiVersion": "ray.io/v1", "kind": "RayJob", "spec": {"rayClusterSpec": cluster()["spec"].clone()}});
        let out = shape(&job, &cfg).unwrap();
        assert_eq!(
            out.object["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"]
                [0]["resources"]["requests"]["cpu"],
            "7900m"
        );
        let selector_job = json!({"apiVersion": "ray.io/v1", "kind": "RayJob", "spec": {"clusterSelector": {"ray.io/cluster": "x"}}});
        assert!(shape(&selector_job, &cfg).unwrap().skipped.is_some());
        let mut bad = cluster();
        bad["spec"]["workerGroupSpecs"][0]["template"]["metadata"]["labels"]["rayshape.io/instance-type"] =
            json!("huge");
        let e = shape(&bad, &cfg).unwrap_err();
        assert!(
            e.message
                .starts_with("group gpu: unknown instance type \"huge\""),
            "{e}"
        );
    }
}

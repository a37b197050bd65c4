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

use crate::config::Config;
use crate::shape::{Denial, Shaped};
use crate::{pod, sidecar, sizing};
use serde_json::{Value, json};

/// KubeRay's default autoscaler container resources (`BuildAutoscalerContainer`).
const AUTOSCALER_DEFAULT: (&str, &str) = ("500m", "512Mi");

/// Shape a RayCluster, RayJob or RayService.
pub fn shape(obj: &Value, cfg: &Config) -> Result<Shaped, Denial> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let cluster_path: &[&str] = match kind {
        "RayCluster" => &["spec"],
        _ => &["spec", "rayClusterSpec"],
    };
    let mut out = obj.clone();
    let mut warnings = Vec::new();
    let Some(spec) = pod::at(obj, cluster_path) else {
        return Ok(Shaped {
            object: out,
            warnings,
            skipped: Some("no cluster spec (a RayJob with clusterSelector)"),
            failed_rules: Vec::new(),
        });
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
        .map_or(0, Vec::len);
    let mut touched = false;
    // Group 0 is the head, group i the (i-1)th worker group.
    for gi in 0..=workers {
        let template_path: Vec<String> = if gi == 0 {
            vec!["headGroupSpec".into(), "template".into()]
        } else {
            vec![
                "workerGroupSpecs".into(),
                (gi - 1).to_string(),
                "template".into(),
            ]
        };
        let template = template_path.iter().try_fold(spec, |v, k| match v {
            Value::Array(a) => a.get(k.parse::<usize>().ok()?),
            Value::Object(m) => m.get(k.as_str()),
            _ => None,
        });
        let Some(template) = template else { continue };
        let group_label = if gi == 0 {
            "head".to_string()
        } else {
            spec["workerGroupSpecs"][gi - 1]
                .get("groupName")
                .and_then(Value::as_str)
                .map_or_else(|| format!("workerGroupSpecs[{}]", gi - 1), str::to_string)
        };
        let Some(type_name) = pod::vocab(template, &cfg.settings.key("instance-type")) else {
            continue;
        };
        let Some(it) = cfg.instance_types.get(type_name) else {
            return Err(Denial {
                message: format!(
                    "group {group_label}: unknown instance type {type_name:?} in {}; known instance types: {}",
                    cfg.settings.key("instance-type"),
                    cfg.type_names()
                ),
                rule: None,
            });
        };
        if pod::containers(template).is_empty() {
            continue;
        }
        // The pod this template becomes, with what KubeRay and rayshape add to it.
        let mut future = json!({"metadata": template.get("metadata").cloned().unwrap_or(json!({})), "spec": template.get("spec").cloned().unwrap_or(json!({}))});
        if gi == 0 && autoscaler {
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
        let sized = sizing::size(&mut future, 0, it).map_err(|m| Denial {
            message: format!("group {group_label}: {m}"),
            rule: None,
        })?;
        warnings.extend(sized.warnings);
        let new_resources = future["spec"]["containers"][0]["resources"].take();
        let mut target = &mut out;
        for k in cluster_path
            .iter()
            .map(|s| s.to_string())
            .chain(template_path.iter().cloned())
        {
            target = match target {
                Value::Array(a) => &mut a[k.parse::<usize>().expect("index from this walk")],
                other => &mut other[k.as_str()],
            };
        }
        let c = &mut target["spec"]["containers"][0];
        if c.get("resources") != Some(&new_resources) {
            c["resources"] = new_resources;
            touched = true;
        }
    }
    let skipped = (!touched).then_some("no group template to size");
    Ok(Shaped {
        object: out,
        warnings,
        skipped,
        failed_rules: Vec::new(),
    })
}

fn push(pod: &mut Value, list: &str, v: Value) {
    let spec = pod::ensure_object(&mut pod["spec"]);
    let l = spec.entry(list).or_insert_with(|| Value::Array(Vec::new()));
    if let Some(a) = l.as_array_mut() {
        a.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let job = json!({"kind": "RayJob", "spec": {"rayClusterSpec": cluster()["spec"].clone()}});
        let out = shape(&job, &cfg).unwrap();
        assert_eq!(
            out.object["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"]
                [0]["resources"]["requests"]["cpu"],
            "7900m"
        );
        let selector_job =
            json!({"kind": "RayJob", "spec": {"clusterSelector": {"ray.io/cluster": "x"}}});
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

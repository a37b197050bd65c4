//! Why an object gets what it gets: the plan in words, for an admin asking "why did my pod
//! get this?" (`rayshape-webhook mutate --output plan`). Not on the admission path.

use crate::classify::{self, Class};
use crate::config::Config;
use crate::plan::raycluster::ClusterPlan;
use crate::plan::{self, PodPlan, rules};
use crate::primitives::vecmap::VecMap;
use crate::primitives::{pod, quantity::Quantity};
use rayshape_json::{Map, Value, json};

/// The plan for `obj`, explained as a document.
pub fn explain(obj: &Value, namespace: Option<&str>, cfg: &Config) -> Value {
    let mut out = Map::new();
    out.insert("object", json!(describe(obj, namespace)));
    out.insert("config", json!(cfg.fingerprint));
    match classify::classify(obj, namespace, &cfg.settings) {
        Class::NotRay(why) => {
            out.insert("decision", json!(format!("unchanged: {why}")));
        }
        Class::Invalid(message) => {
            out.insert("decision", json!(format!("denied: {message}")));
        }
        Class::Ray(ray) => {
            let container = pod::containers(obj)
                .get(ray.ray_container)
                .map_or("", pod::name);
            out.insert(
                "rayContainer",
                json!({"name": container, "index": ray.ray_container, "why": plan::explain_ray(&ray)}),
            );
            match plan::pod(obj, ray, cfg) {
                Ok(p) => pod_plan(&p, cfg, &mut out),
                Err(d) => {
                    out.insert("decision", json!(format!("denied: {}", d.message)));
                }
            }
        }
        Class::Cluster(kind) => match plan::raycluster::plan(obj, None, kind, cfg) {
            Ok(p) => cluster_plan(&p, &mut out),
            Err(d) => {
                out.insert("decision", json!(format!("denied: {}", d.message)));
            }
        },
    }
    Value::Object(out)
}

fn describe(obj: &Value, namespace: Option<&str>) -> String {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("object");
    let ns = pod::at(obj, &["metadata", "namespace"])
        .and_then(Value::as_str)
        .or(namespace)
        .unwrap_or("default");
    let name = match (
        pod::at(obj, &["metadata", "name"]).and_then(Value::as_str),
        pod::at(obj, &["metadata", "generateName"]).and_then(Value::as_str),
    ) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(g)) => format!("{g}*"),
        _ => "(unnamed)".into(),
    };
    format!("{kind} {ns}/{name}")
}

fn resources(m: &VecMap<String, Quantity>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, q)| (k.clone(), json!(q.format_for(k))))
            .collect(),
    )
}

fn pod_plan(p: &PodPlan<'_>, cfg: &Config, out: &mut Map) {
    out.insert("decision", json!("admitted"));
    let v = &p.vocabulary;
    out.insert(
        "instanceType",
        match v.instance_type {
            Some(t) => json!({"name": t.name, "shape": t.describe(), "accelerator": t.accelerator}),
            None => json!(null),
        },
    );
    out.insert("marketType", json!(v.market));
    out.insert("zone", json!(v.zone));
    out.insert(
        "sidecar",
        match &p.sidecar {
            Some(s) => json!({"injected": true, "in": s.list, "logsVolume": s.logs_volume,
                              "logsVolumeAdded": s.logs_volume_added}),
            None if !cfg.settings.sidecar.enabled => {
                json!({"injected": false, "why": "disabled in webhook.yaml"})
            }
            None => json!({"injected": false, "why": "the pod opted out"}),
        },
    );
    // Every rule in force, in order; those not in the plan did not match.
    let rules: Vec<Value> = rules::in_order(cfg, v.instance_type)
        .map(|rule| {
            let outcome = p.rules.iter().find(|o| std::ptr::eq(o.rule, rule));
            let result = match outcome {
                Some(o) => match &o.skipped {
                    None => "applied".to_string(),
                    Some(why) => format!("failed and skipped (failurePolicy: Ignore): {why}"),
                },
                None => "selector did not match".to_string(),
            };
            json!({"name": rule.name, "selector": rule.selector.to_string(), "result": result})
        })
        .collect();
    out.insert("rules", Value::Array(rules));
    if let Some(s) = &p.sizing {
        let mut containers =
            vec![json!({"name": p.ray_name, "role": "ray", "gets": resources(&s.ray)})];
        for (name, takes) in &s.others {
            let role = if pod::init_containers(&p.staged)
                .iter()
                .any(|c| pod::name(c) == name)
            {
                "native sidecar"
            } else {
                "container"
            };
            containers.push(json!({"name": name, "role": role, "takes": resources(takes)}));
        }
        out.insert("containers", Value::Array(containers));
    } else if let Some(stamp) = &p.kept {
        out.insert(
            "containers",
            json!(format!(
                "not sized: the pod keeps the sizing of its group's template ({stamp}), as the RayCluster the autoscaler plans from does"
            )),
        );
    } else {
        out.insert(
            "containers",
            json!(format!(
                "not sized: the pod has no {} label",
                cfg.settings.key(rayshape_contract::keys::INSTANCE_TYPE)
            )),
        );
    }
    let mut ray = Map::new();
    if let Some(e) = &p.ray_view.override_env {
        ray.insert(crate::plan::rayview::OVERRIDE_ENV, json!(e));
    }
    if let Some((volume, size)) = &p.ray_view.shm {
        ray.insert("/dev/shm", json!({"volume": volume, "sizeLimit": size}));
    }
    out.insert("rayView", Value::Object(ray));
    out.insert("warnings", json!(p.warnings));
}

fn cluster_plan(p: &ClusterPlan<'_>, out: &mut Map) {
    out.insert(
        "decision",
        json!(match p.skipped {
            Some(why) => format!("unchanged: {why}"),
            None => "admitted".to_string(),
        }),
    );
    let groups: Vec<Value> = p
        .groups
        .iter()
        .map(|g| {
            json!({"group": g.name, "instanceType": g.instance_type.name, "definition": g.instance_type.definition,
                   "shape": g.instance_type.describe(), "rayContainerResources": g.resources,
                   "rayResources": match &g.custom {
                       Some(crate::plan::raycluster::Custom::StartParams(t)) => json!({"rayStartParams.resources": t}),
                       Some(crate::plan::raycluster::Custom::GroupResources(m)) => json!({"resources": m}),
                       None => json!(null),
                   },
                   "changed": g.changed})
        })
        .collect();
    out.insert("groups", Value::Array(groups));
    out.insert("warnings", json!(p.warnings));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_rules_and_containers() {
        let cfg = Config::builtin();
        let p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "w-", "labels": {"rayshape.io/instance-type": "2CPU-8GB", "rayshape.io/market-type": "SPOT"}},
            "spec": {"containers": [{"name": "log"}, {"name": "ray", "args": ["ray start --block"]}]}});
        let e = explain(&p, Some("team"), &cfg);
        assert_eq!(e["object"], "Pod team/w-*");
        assert_eq!(e["rayContainer"]["name"], "ray");
        assert_eq!(e["decision"], "admitted");
        let rules = e["rules"].as_array().unwrap();
        assert!(
            rules
                .iter()
                .any(|r| r["result"] == "applied"
                    && r["selector"].as_str().unwrap().contains("SPOT")),
            "{rules:?}"
        );
        assert!(
            rules
                .iter()
                .any(|r| r["result"] == "selector did not match"),
            "{rules:?}"
        );
        assert_eq!(e["containers"][0]["role"], "ray");
        assert!(
            e["containers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "rayshape-sidecar" && c["role"] == "native sidecar")
        );
    }

    #[test]
    fn explains_denials() {
        let cfg = Config::builtin();
        let p = json!({"kind": "Pod", "metadata": {"labels": {"rayshape.io/instance-type": "nope"}}, "spec": {"containers": [{"name": "a"}]}});
        let e = explain(&p, None, &cfg);
        assert!(
            e["decision"]
                .as_str()
                .unwrap()
                .starts_with("denied: unknown instance type"),
            "{e}"
        );
    }
}

//! The shaping pipeline: classify, then apply vocabulary, sidecar, rules, sizing and Ray's
//! view to a working copy. The caller diffs the copy against the original.

use crate::classify::{self, Class, KUBERAY_LABELS};
use crate::config::Config;
use crate::config::rules::Rule;
use crate::config::settings::is_label_value;
use crate::patch::{self, Context};
use crate::{pod, rayview, sidecar, sizing};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Market types a pod may ask for.
pub const MARKET_TYPES: [&str; 3] = ["ON_DEMAND", "SPOT", "PREFER_SPOT"];

/// The webhook refuses the object; the message says what is wrong and what would be accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    pub message: String,
    /// The rule that failed, when a rule caused the denial.
    pub rule: Option<String>,
}

fn deny<T>(message: impl Into<String>) -> Result<T, Denial> {
    Err(Denial {
        message: message.into(),
        rule: None,
    })
}

/// The result of shaping one object.
#[derive(Clone, Debug, PartialEq)]
pub struct Shaped {
    pub object: Value,
    /// Admission warnings: what was changed that the user may not expect (each ≤ 120 chars).
    pub warnings: Vec<String>,
    /// Why the object passed through untouched, when it did.
    pub skipped: Option<&'static str>,
    /// Rules with `failurePolicy: Ignore` that failed on this object and were skipped.
    pub failed_rules: Vec<String>,
}

impl Shaped {
    fn untouched(obj: &Value, why: &'static str) -> Shaped {
        Shaped {
            object: obj.clone(),
            warnings: Vec::new(),
            skipped: Some(why),
            failed_rules: Vec::new(),
        }
    }
}

/// Shape any object: pods are shaped, everything else passes through. `namespace` is the
/// request's, for objects that do not name their own.
pub fn shape(obj: &Value, namespace: Option<&str>, cfg: &Config) -> Result<Shaped, Denial> {
    match obj.get("kind").and_then(Value::as_str) {
        Some("Pod") => shape_pod(obj, namespace, cfg),
        Some("RayCluster" | "RayJob" | "RayService") if is_ray_api(obj) => {
            crate::raycluster::shape(obj, cfg)
        }
        _ => Ok(Shaped::untouched(obj, "not a Pod")),
    }
}

/// Shape one pod.
pub fn shape_pod(input: &Value, namespace: Option<&str>, cfg: &Config) -> Result<Shaped, Denial> {
    let s = &cfg.settings;
    let ray = match classify::classify(input, namespace, s) {
        Class::NotRay(why) => return Ok(Shaped::untouched(input, why)),
        Class::Invalid(msg) => return deny(msg),
        Class::Ray(r) => r,
    };
    let mut pod = input.clone();
    let mut warnings = Vec::new();
    let ray_name = pod::name(&pod::containers(&pod)[ray.ray_container]).to_string();
    let original_ray = rayview::Original::of(&pod::containers(&pod)[ray.ray_container]);

    // 1. Vocabulary: read, check, and write back the effective values.
    let type_key = s.key("instance-type");
    let instance_type = match pod::vocab(&pod, &type_key) {
        None => None,
        Some(name) => match cfg.instance_types.get(name) {
            Some(t) => Some(t),
            None => {
                return deny(format!(
                    "unknown instance type {name:?} in {type_key}; known instance types: {}",
                    cfg.type_names()
                ));
            }
        },
    };
    let market_key = s.key("market-type");
    let market = pod::vocab(&pod, &market_key)
        .unwrap_or("ON_DEMAND")
        .to_string();
    if !MARKET_TYPES.contains(&market.as_str()) {
        return deny(format!(
            "{market_key}={market:?} is not a market type; accepted: {}",
            MARKET_TYPES.join(", ")
        ));
    }
    let zone_key = s.key("zone");
    let zone = pod::vocab(&pod, &zone_key).map(str::to_string);
    if let Some(z) = &zone
        && (z.is_empty() || !is_label_value(z))
    {
        return deny(format!(
            "{zone_key}={z:?} is not a zone name; expected a topology.kubernetes.io/zone value such as us-west-2a"
        ));
    }
    pod::set_vocab(&mut pod, &market_key, &market);
    if let Some(z) = &zone {
        pod::set_vocab(&mut pod, &zone_key, z);
    }
    let acc_key = s.key("accelerator-type");
    if let Some(t) = instance_type {
        pod::set_vocab(&mut pod, &type_key, &t.name);
        match &t.accelerator {
            Some(a) => pod::set_vocab(&mut pod, &acc_key, a),
            None => pod::remove_vocab(&mut pod, &acc_key),
        }
    }

    // 2. The sidecar, before sizing so that its reservation is taken out of the shape.
    let inject = s.sidecar.enabled && !sidecar::opted_out(&pod, s);
    if inject {
        sidecar::inject(&mut pod, ray.ray_container, s, &cfg.sidecar);
    }

    // 3. Rules: profile, then the instance type's own, then the admin's (later rules win).
    let mut applied = Vec::new();
    let mut failed_rules = Vec::new();
    let type_rule = instance_type.and_then(|t| cfg.type_rules.get(&t.name));
    for rule in cfg
        .profile_rules
        .iter()
        .chain(type_rule)
        .chain(&cfg.admin_rules)
    {
        if !rule
            .selector
            .matches(pod::labels(&pod), pod::annotations(&pod))
        {
            continue;
        }
        // Looked up per matching rule: an earlier rule may have appended containers.
        let ctx = Context {
            ray_container: container_index(&pod, &ray_name),
        };
        match apply_rule(&mut pod, rule, ctx) {
            Ok(()) => applied.push(rule.name.as_str()),
            Err(e) if rule.ignore_failure => {
                warnings.push(format!("skipped rule {}: {}", rule.name, e.reason));
                failed_rules.push(rule.name.clone());
            }
            Err(e) => {
                return Err(Denial {
                    message: format!(
                        "rule {} failed: {e}; fix the rule, or give it failurePolicy: Ignore to skip it when it does not apply",
                        rule.name
                    ),
                    rule: Some(rule.name.clone()),
                });
            }
        }
    }
    check_protected(input, &pod)?;
    let Some(ray_idx) = container_index(&pod, &ray_name) else {
        return deny(format!(
            "patch rules removed the Ray container {ray_name:?}; rules must not remove it"
        ));
    };

    // 4. Sizing and Ray's view.
    if let Some(t) = instance_type {
        let sized = sizing::size(&mut pod, ray_idx, t).or_else(deny)?;
        warnings.extend(sized.warnings.iter().cloned());
        warnings.extend(rayview::align(
            &mut pod,
            ray_idx,
            &original_ray,
            &sized,
            t,
            ray.kuberay,
        ));
    }

    // 5. The record of what was applied.
    let record = json!({
        "config": cfg.fingerprint,
        "instanceType": instance_type.map(|t| t.name.as_str()),
        "marketType": market,
        "zone": zone,
        "sidecar": inject,
        "rules": applied,
    });
    let hash = Sha256::digest(record.to_string().as_bytes());
    let summary = json!({
        "config": cfg.fingerprint,
        "instanceType": instance_type.map(|t| t.name.as_str()),
        "marketType": market,
        "rules": applied.len(),
        "hash": hash[..8].iter().map(|b| format!("{b:02x}")).collect::<String>(),
    });
    pod::set_annotation(&mut pod, &s.key("shaped"), summary.to_string());

    Ok(Shaped {
        object: pod,
        warnings: tidy(warnings),
        skipped: None,
        failed_rules,
    })
}

/// KubeRay's API group (`ray.io/v1`, and older versions).
fn is_ray_api(obj: &Value) -> bool {
    obj.get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with("ray.io/"))
}

fn container_index(pod: &Value, name: &str) -> Option<usize> {
    pod::containers(pod)
        .iter()
        .position(|c| pod::name(c) == name)
}

/// Apply every operation of a rule, or none.
fn apply_rule(pod: &mut Value, rule: &Rule, ctx: Context) -> Result<(), patch::ApplyError> {
    // Everything an operation can change lies under the first two segments of its paths
    // (`/spec/tolerations`, `/metadata/annotations`); the first segment is saved too, so a
    // parent that an `add` created is removed again.
    let heads = rule
        .ops
        .iter()
        .flat_map(|op| op.from().into_iter().chain([op.path()]))
        .flat_map(|p| [p.head(1).to_vec(), p.head(2).to_vec()]);
    let snapshot = patch::Snapshot::take(pod, heads);
    for op in &rule.ops {
        if let Err(e) = patch::apply(pod, op, ctx) {
            snapshot.restore(pod);
            return Err(e);
        }
    }
    Ok(())
}

/// Rules may do a lot, but not break KubeRay: its labels stay, containers keep their order.
fn check_protected(before: &Value, after: &Value) -> Result<(), Denial> {
    for key in KUBERAY_LABELS {
        let get = |v: &Value| pod::labels(v).and_then(|m| m.get(key)).cloned();
        if get(before) != get(after) {
            return deny(format!(
                "patch rules changed the label {key}, which KubeRay relies on; rules must leave it alone"
            ));
        }
    }
    let names = |v: &Value| {
        pod::containers(v)
            .iter()
            .map(|c| pod::name(c).to_string())
            .collect::<Vec<_>>()
    };
    let (b, a) = (names(before), names(after));
    if !a.starts_with(&b) {
        return deny(format!(
            "patch rules reordered, renamed or removed containers ({} became {}); rules may only append containers",
            b.join(", "),
            a.join(", ")
        ));
    }
    Ok(())
}

/// Deduplicate, and keep each warning within the 120 characters Kubernetes advises.
fn tidy(warnings: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in warnings {
        let w = if w.chars().count() > 120 {
            let cut: String = w.chars().take(119).collect();
            format!("{cut}…")
        } else {
            w
        };
        if !out.contains(&w) {
            out.push(w);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;

    fn cfg(patches: &str) -> Config {
        Config::from_sources(&Sources {
            patches: Some(patches.into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn ray_pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"ray.io/node-type": "worker", "ray.io/cluster": "c"}},
               "spec": {"containers": [{"name": "ray"}, {"name": "side"}]}})
    }

    #[test]
    fn a_failing_rule_leaves_no_trace() {
        let rules = "patches:\n- name: half\n  failurePolicy: Ignore\n  patch:\n  - {op: add, path: /metadata/annotations/a, value: x}\n  - {op: add, path: /spec/nodeSelector/k, value: v}\n  - {op: test, path: /spec/nodeSelector/k, value: w}\n";
        let out = shape_pod(&ray_pod(), None, &cfg(rules)).unwrap();
        assert!(
            out.object["metadata"]["annotations"].get("a").is_none(),
            "{:#}",
            out.object
        );
        assert!(out.object["spec"].get("nodeSelector").is_none());
        assert!(
            out.warnings
                .iter()
                .any(|w| w.starts_with("skipped rule patches.yaml#0 (half): test failed")),
            "{:?}",
            out.warnings
        );
        let strict = rules.replace("  failurePolicy: Ignore\n", "");
        let e = shape_pod(&ray_pod(), None, &cfg(&strict)).unwrap_err();
        assert!(
            e.message
                .contains("rule patches.yaml#0 (half) failed: test /spec/nodeSelector/k"),
            "{e}"
        );
    }

    #[test]
    fn rules_cannot_break_kuberay() {
        let e = shape_pod(&ray_pod(), None, &cfg("patches:\n- patch: [{op: replace, path: /metadata/labels/ray.io~1cluster, value: other}]\n")).unwrap_err();
        assert!(e.message.contains("ray.io/cluster"), "{e}");
        let e = shape_pod(
            &ray_pod(),
            None,
            &cfg("patches:\n- patch: [{op: remove, path: /spec/containers/0}]\n"),
        )
        .unwrap_err();
        assert!(e.message.contains("ray, side became side"), "{e}");
        let ok = shape_pod(&ray_pod(), None, &cfg("patches:\n- patch: [{op: add, path: /spec/containers/-, value: {name: extra, image: x}}]\n")).unwrap();
        assert_eq!(ok.object["spec"]["containers"][2]["name"], "extra");
    }

    /// A pod built by KubeRay from a template rayshape sized needs no correction of Ray's view.
    #[test]
    fn pods_of_a_sized_template_agree_with_ray() {
        let cfg = Config::builtin();
        let cluster = json!({"apiVersion": "ray.io/v1", "kind": "RayCluster", "spec": {"headGroupSpec": {"template": {"spec": {"containers": [{"name": "h"}]}}},
            "workerGroupSpecs": [{"groupName": "g", "template": {"metadata": {"labels": {"rayshape.io/instance-type": "8CPU-32GB-1xT4"}},
                "spec": {"containers": [{"name": "ray-worker", "image": "ray"}]}}}]}});
        let sized = shape(&cluster, None, &cfg).unwrap().object;
        let template = &sized["spec"]["workerGroupSpecs"][0]["template"];
        let mut ray = template["spec"]["containers"][0].clone();
        // What KubeRay's BuildPod derives from the template.
        let f = sizing::kuberay_flags(&ray);
        ray["args"] = json!([format!(
            "ulimit -n 65536; ray start  --address=h:6379  --block  --memory={}  --num-cpus={}  --num-gpus={} ",
            f["memory"], f["CPU"], f["GPU"]
        )]);
        ray["volumeMounts"] = json!([{"name": "shared-mem", "mountPath": "/dev/shm"}]);
        let limit = ray["resources"]["limits"]["memory"].clone();
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"labels": {"ray.io/node-type": "worker", "ray.io/cluster": "c", "rayshape.io/instance-type": "8CPU-32GB-1xT4"}},
            "spec": {"containers": [ray], "volumes": [{"name": "shared-mem", "emptyDir": {"medium": "Memory", "sizeLimit": limit}}]}});
        let out = shape_pod(&pod, None, &cfg).unwrap();
        let c = &out.object["spec"]["containers"][0];
        assert_eq!(
            c["resources"], pod["spec"]["containers"][0]["resources"],
            "same shape as the template"
        );
        let ov = pod::env_value(c, rayview::OVERRIDE_ENV).unwrap_or("{}");
        assert_eq!(
            ov, r#"{"accelerator_type:T4":1}"#,
            "only the accelerator, which Ray may not detect by name"
        );
        assert!(
            !out.warnings.iter().any(|w| w.contains("group template")),
            "{:?}",
            out.warnings
        );
        assert!(
            !out.warnings.iter().any(|w| w.contains("/dev/shm")),
            "{:?}",
            out.warnings
        );
    }

    #[test]
    fn vocabulary_is_checked() {
        let mut p = ray_pod();
        p["metadata"]["labels"]["rayshape.io/market-type"] = json!("CHEAP");
        let e = shape_pod(&p, None, &Config::builtin()).unwrap_err();
        assert!(
            e.message.contains("accepted: ON_DEMAND, SPOT, PREFER_SPOT"),
            "{e}"
        );
        let mut p = ray_pod();
        p["metadata"]["labels"]["rayshape.io/zone"] = json!("-bad-");
        assert!(
            shape_pod(&p, None, &Config::builtin())
                .unwrap_err()
                .message
                .contains("zone")
        );
    }
}

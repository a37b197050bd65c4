//! The fourth stage: write a plan into the object. Nothing here can deny: every decision
//! was made while planning.

use crate::config::Config;
use crate::plan::raycluster::{ClusterPlan, Custom};
use crate::plan::rayview::OVERRIDE_ENV;
use crate::plan::{self, Plan, PodPlan};
use crate::primitives::pod;
use rayshape_json::Value;

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
    /// The object as it came, with the reason it is not changed.
    pub fn untouched(obj: &Value, why: &'static str) -> Shaped {
        Shaped {
            object: obj.clone(),
            warnings: Vec::new(),
            skipped: Some(why),
            failed_rules: Vec::new(),
        }
    }
}

/// Carry out a plan for `obj`.
pub fn apply(obj: &Value, plan: Plan<'_>, cfg: &Config) -> Shaped {
    match plan {
        Plan::Unchanged(why) => Shaped::untouched(obj, why),
        Plan::Pod(p) => self::pod(*p, cfg),
        Plan::Cluster(c) => cluster(obj, c),
    }
}

/// Carry out a pod's plan on its staged object.
pub fn pod(plan: PodPlan<'_>, cfg: &Config) -> Shaped {
    let failed_rules = plan.failed_rules();
    let mut obj = plan.staged;
    if let Some(sizing) = plan.sizing {
        let resources = sizing.changed.then_some(sizing.resources);
        write_ray_container(
            &mut obj,
            plan.ray_index,
            resources,
            plan.ray_view.override_env,
            plan.ray_view.shm,
        );
    }
    pod::set_annotation(&mut obj, &plan::record_key(cfg), plan.record);
    Shaped {
        object: obj,
        warnings: plan.warnings,
        skipped: None,
        failed_rules,
    }
}

/// Write the Ray container's new resources and the corrections of Ray's view (the new
/// `RAY_OVERRIDE_RESOURCES`, and the `/dev/shm` volume's new size).
pub fn write_ray_container(
    pod: &mut Value,
    ray_idx: usize,
    resources: Option<Value>,
    override_env: Option<String>,
    shm: Option<(String, String)>,
) {
    if let Some(c) = pod::at_mut(pod, &["spec", "containers"])
        .and_then(Value::as_array_mut)
        .and_then(|a| a.get_mut(ray_idx))
        .and_then(Value::as_object_mut)
    {
        if let Some(r) = resources {
            c.insert("resources", r);
        }
        if let Some(value) = override_env {
            let env = pod::ensure_array(c.entry("env").or_insert_with(|| Value::Array(Vec::new())));
            let entry = pod::object([
                ("name", Value::from(OVERRIDE_ENV)),
                ("value", Value::from(value.as_str())),
            ]);
            // One entry, where the first was: the plan merged what the last one said.
            // Usually absent; one scan, and no allocation unless it is there.
            let at: Vec<usize> = env
                .iter()
                .enumerate()
                .filter(|(_, e)| pod::name(e) == OVERRIDE_ENV)
                .map(|(i, _)| i)
                .collect();
            match at.split_first() {
                None => env.push(entry),
                Some((&first, rest)) => {
                    if let Some(e) = env.get_mut(first) {
                        *e = entry;
                    }
                    for &i in rest.iter().rev() {
                        env.remove(i);
                    }
                }
            }
        }
    }
    if let Some((volume, size)) = shm
        && let Some(empty_dir) = pod::at_mut(pod, &["spec", "volumes"])
            .and_then(Value::as_array_mut)
            .and_then(|a| a.iter_mut().find(|v| pod::name(v) == volume))
            .and_then(|v| v.get_mut("emptyDir"))
            .and_then(Value::as_object_mut)
    {
        empty_dir.insert("sizeLimit", Value::from(size));
    }
}

/// Write one group's sizing into its spec: the Ray container's resources, the custom Ray
/// resources and the template's stamp.
pub fn write_group(
    group: &mut Value,
    resources: Value,
    custom: Option<Custom>,
    stamp: Option<(String, String)>,
) {
    if let Some((key, value)) = stamp
        && let Some(template) = group.get_mut("template")
    {
        pod::set_annotation(template, &key, value);
    }
    if let Some(c) = pod::at_mut(group, &["template", "spec", "containers"])
        .and_then(Value::as_array_mut)
        .and_then(|a| a.first_mut())
        .and_then(Value::as_object_mut)
    {
        c.insert("resources", resources);
    }
    match custom {
        Some(Custom::StartParams(text)) => {
            pod::ensure_object(pod::ensure_field(group, "rayStartParams"))
                .insert("resources", Value::from(text));
        }
        Some(Custom::GroupResources(m)) => {
            pod::ensure_object(group).insert("resources", Value::Object(m));
        }
        None => {}
    }
}

/// Carry out a RayCluster, RayJob or RayService plan.
pub fn cluster(obj: &Value, plan: ClusterPlan<'_>) -> Shaped {
    let mut out = obj.clone();
    for g in plan.groups.into_iter().filter(|g| g.changed) {
        let Some(group) = g.group.iter().try_fold(&mut out, |v, k| match v {
            Value::Array(a) => a.get_mut(k.parse::<usize>().ok()?),
            Value::Object(m) => m.get_mut(k.as_str()),
            _ => None,
        }) else {
            continue;
        };
        write_group(group, g.resources, g.custom, g.stamp);
    }
    if let Some((key, text)) = plan.record {
        pod::set_annotation(&mut out, &key, text);
    }
    Shaped {
        object: out,
        warnings: plan::tidy(plan.warnings),
        skipped: plan.skipped,
        failed_rules: Vec::new(),
    }
}

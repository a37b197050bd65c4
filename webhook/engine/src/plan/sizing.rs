//! Sizing: the instance type bounds the sum of all containers; the Ray container gets the rest.
//!
//! Every other app container and every native sidecar (rayshape's own, KubeRay's
//! `autoscaler`, users' sidecars) keeps what it asked for, and that is taken out of the shape.
//! The Ray container gets the remainder with requests = limits. Init containers that are not
//! sidecars run alone (beside the sidecars declared before them) and must fit on their own.

use crate::config::instance_types::{InstanceType, is_gpu_resource};
use crate::primitives::pod;
use crate::primitives::quantity::Quantity;
use crate::primitives::vecmap::VecMap;
use rayshape_json::{Map, Value};

/// The sizing of one pod's Ray container.
#[derive(Debug, Default, PartialEq)]
pub struct Sizing {
    /// What Ray gets of each resource of the shape (requests = limits).
    pub ray: VecMap<String, Quantity>,
    /// The Ray container's `resources` after sizing.
    pub resources: Value,
    /// Whether `resources` differs from what the container has.
    pub changed: bool,
    /// What every other container and native sidecar takes, by name.
    pub others: Vec<(String, VecMap<String, Quantity>)>,
    pub warnings: Vec<String>,
}

/// Size the Ray container (index `ray_idx`) of `pod` to `it`; `Err` is the denial message.
pub fn plan(pod: &Value, ray_idx: usize, it: &InstanceType) -> Result<Sizing, String> {
    let containers = pod::containers(pod);
    let Some(ray_container) = containers.get(ray_idx) else {
        return Err(format!(
            "the pod has no container at index {ray_idx} to size"
        ));
    };
    let ray_name = pod::name(ray_container).to_string();
    // Who takes what, besides Ray.
    let mut others: Vec<(String, VecMap<String, Quantity>)> = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        if i != ray_idx {
            others.push((pod::name(c).to_string(), owned(pod::footprint(c))));
        }
    }
    for c in pod::init_containers(pod)
        .iter()
        .filter(|c| pod::is_native_sidecar(c))
    {
        others.push((pod::name(c).to_string(), owned(pod::footprint(c))));
    }
    let mut ray = VecMap::with_capacity(it.shape.len());
    for (res, total) in &it.shape {
        let taken: Quantity = others
            .iter()
            .filter_map(|(_, f)| f.get(res).copied())
            .fold(Quantity::ZERO, Quantity::saturating_add);
        let left = total.saturating_sub(taken);
        let must_be_positive = matches!(res.as_str(), "cpu" | "memory" | "ephemeral-storage");
        if (must_be_positive && !left.is_positive()) || left.millis() < 0 {
            let takers: Vec<String> = others
                .iter()
                .filter_map(|(n, f)| {
                    f.get(res)
                        .filter(|q| q.is_positive())
                        .map(|q| format!("{n} {}", q.format_for(res)))
                })
                .collect();
            return Err(format!(
                "instance type {} ({}) leaves no {res} for Ray container {ray_name:?}: the other containers take {} of {} ({}); give them less or choose a larger instance type",
                it.name,
                it.describe(),
                taken.format_for(res),
                total.format_for(res),
                takers.join(", "),
            ));
        }
        if left.is_positive() {
            ray.insert(res.clone(), left);
        }
    }
    check_init_containers(pod, it)?;

    let mut warnings = Vec::new();
    let unbounded: Vec<&str> = others
        .iter()
        .filter(|(_, f)| !f.contains_key("memory"))
        .map(|(n, _)| n.as_str())
        .collect();
    if !unbounded.is_empty() {
        warnings.push(format!(
            "{} set no memory limit: the pod may outgrow {}",
            unbounded.join(", "),
            it.name
        ));
    }
    let c = ray_container;
    // What the container asked for itself that the type now decides otherwise: said, not
    // done silently (a group asking for 4 GPUs given a 1-GPU type runs with 1).
    let own = {
        let mut own = pod::resource_list(c, "requests");
        own.extend(pod::resource_list(c, "limits"));
        own
    };
    let mut replaced: Vec<(bool, String)> = own
        .iter()
        .filter(|&(&k, _)| it.shape.contains_key(k) || is_gpu_resource(k))
        .filter_map(|(&k, q)| {
            let got = ray
                .get(k)
                .map_or_else(|| "none".to_string(), |g| g.format_for(k));
            (ray.get(k) != Some(q)).then(|| {
                (
                    !is_gpu_resource(k),
                    format!("{k} {}→{got}", q.format_for(k)),
                )
            })
        })
        .collect();
    // GPUs first: the warning is cut at 120 characters.
    replaced.sort();
    if !replaced.is_empty() {
        let list: Vec<String> = replaced.into_iter().map(|(_, s)| s).collect();
        warnings.push(format!(
            "{ray_name}: {} replaced its own {}",
            it.name,
            list.join(", ")
        ));
    }
    let before = c.get("resources");
    let mut resources = match before {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    for which in ["requests", "limits"] {
        let mut list = match resources.get(which) {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        // The type governs cpu, memory, its own resources and every GPU.
        list.retain(|k, _| {
            ray.contains_key(k.as_str())
                || !(is_gpu_resource(k) || it.shape.contains_key(k.as_str()))
        });
        for (res, q) in &ray {
            let same = list.get(res).and_then(|v| Quantity::from_json(v).ok()) == Some(*q);
            if !same {
                list.insert(res.clone(), Value::from(q.format_for(res)));
            }
        }
        resources.insert(which.to_string(), Value::Object(list));
    }
    let resources = Value::Object(resources);
    let changed = before != Some(&resources);
    Ok(Sizing {
        ray,
        resources,
        changed,
        others,
        warnings,
    })
}

/// A footprint with its own keys, to keep beyond the pod it was read from.
fn owned(f: VecMap<&str, Quantity>) -> VecMap<String, Quantity> {
    f.into_iter().map(|(k, q)| (k.to_owned(), q)).collect()
}

/// Each regular init container, plus the native sidecars started before it, must fit.
fn check_init_containers(pod: &Value, it: &InstanceType) -> Result<(), String> {
    let mut sidecars: VecMap<&str, Quantity> = VecMap::new();
    for c in pod::init_containers(pod) {
        let f = pod::footprint(c);
        if pod::is_native_sidecar(c) {
            sidecars.merge_with(f, |e, q| *e = e.saturating_add(q));
            continue;
        }
        for (res, total) in &it.shape {
            let need = f
                .get(res.as_str())
                .copied()
                .unwrap_or_default()
                .saturating_add(sidecars.get(res.as_str()).copied().unwrap_or_default());
            if need > *total {
                return Err(format!(
                    "init container {:?} needs {} {res} (with the sidecars before it) but instance type {} has {}; give it less or choose a larger instance type",
                    pod::name(c),
                    need.format_for(res),
                    it.name,
                    total.format_for(res)
                ));
            }
        }
    }
    Ok(())
}

/// KubeRay's derivation of Ray's flags from a Ray container's resources
/// (`generateRayStartCommand`): what `--num-cpus`, `--memory`, `--num-gpus` and the
/// accelerator in `--resources` (`TPU`, `neuron_cores`) say when the user did not set them.
pub fn kuberay_flags(c: &Value) -> VecMap<&'static str, i128> {
    kuberay_flags_of(
        &pod::resource_list(c, "limits"),
        &pod::resource_list(c, "requests"),
    )
}

/// [`kuberay_flags`] from a container's parsed limits and requests.
pub fn kuberay_flags_of(
    limits: &VecMap<&str, Quantity>,
    requests: &VecMap<&str, Quantity>,
) -> VecMap<&'static str, i128> {
    let mut out = VecMap::with_capacity(3);
    if let Some(cpu) = limits.get("cpu").or_else(|| requests.get("cpu")) {
        out.insert("CPU", cpu.ceil_units());
    }
    if let Some(mem) = limits.get("memory") {
        out.insert("memory", mem.ceil_units());
    }
    if let Some((_, g)) = limits.iter().find(|(k, _)| is_gpu_resource(k)) {
        out.insert("GPU", g.ceil_units());
    }
    // `addWellKnownAcceleratorResources`: the first of these in name order that is not zero.
    if let Some((ray, n)) = RAY_ACCELERATORS
        .iter()
        .filter_map(|(k8s, ray)| Some((*ray, limits.get(k8s)?.floor_units())))
        .find(|(_, n)| *n != 0)
    {
        out.insert(ray, n);
    }
    out
}

/// Accelerators KubeRay passes to Ray in `--resources`, by Kubernetes resource name (in
/// name order) and Ray resource name (its `customAcceleratorToRayResourceMap`).
pub const RAY_ACCELERATORS: [(&str, &str); 2] = [
    ("aws.amazon.com/neuroncore", "neuron_cores"),
    ("google.com/tpu", "TPU"),
];

/// What the pod's containers and native sidecars can take of a resource in all: the sum
/// the instance type bounds.
pub fn total(pod: &Value, res: &str) -> Quantity {
    pod::containers(pod)
        .iter()
        .chain(
            pod::init_containers(pod)
                .iter()
                .filter(|c| pod::is_native_sidecar(c)),
        )
        .filter_map(|c| pod::footprint(c).get(res).copied())
        .fold(Quantity::ZERO, Quantity::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use rayshape_json::json;

    fn t(name: &str) -> InstanceType {
        Config::builtin().instance_types[name].clone()
    }

    /// The pod with the planned resources written, as `apply` does.
    fn size(p: &mut Value, ray_idx: usize, it: &InstanceType) -> Result<Sizing, String> {
        let s = plan(p, ray_idx, it)?;
        p["spec"]["containers"][ray_idx]["resources"] = s.resources.clone();
        Ok(s)
    }

    #[test]
    fn ray_gets_the_rest() {
        let mut p = json!({"spec": {"containers": [
            {"name": "ray", "resources": {"limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": 1}}},
            {"name": "autoscaler", "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}}}],
            "initContainers": [{"name": "side", "restartPolicy": "Always", "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}},
                               {"name": "wait", "resources": {"limits": {"cpu": "200m", "memory": "256Mi"}}}]}});
        let s = size(&mut p, 0, &t("2CPU-8GB")).unwrap();
        assert_eq!(
            p["spec"]["containers"][0]["resources"],
            json!({
            "limits": {"cpu": "1400m", "memory": "7616Mi"},
            "requests": {"cpu": "1400m", "memory": "7616Mi"}})
        );
        assert!(
            s.warnings[0].contains("nvidia.com/gpu 1→none"),
            "{:?}",
            s.warnings
        );
        assert_eq!(total(&p, "cpu"), Quantity::from_units(2));
        assert_eq!(total(&p, "memory"), Quantity::parse("8Gi").unwrap());
    }

    #[test]
    fn gpus_go_to_ray() {
        let mut p = json!({"spec": {"containers": [{"name": "ray"}]}});
        size(&mut p, 0, &t("8CPU-32GB-1xT4")).unwrap();
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
            "1"
        );
    }

    #[test]
    fn denial_names_what_took_the_space() {
        let mut p = json!({"spec": {"containers": [{"name": "ray"}, {"name": "hog", "resources": {"limits": {"memory": "8Gi"}}}]}});
        let e = size(&mut p, 0, &t("2CPU-8GB")).unwrap_err();
        assert!(
            e.contains("2CPU-8GB (cpu 2, memory 8Gi)")
                && e.contains("hog 8Gi")
                && e.contains("no memory"),
            "{e}"
        );
        let mut p = json!({"spec": {"containers": [{"name": "ray"}], "initContainers": [{"name": "big", "resources": {"requests": {"cpu": "3"}}}]}});
        let e = size(&mut p, 0, &t("2CPU-8GB")).unwrap_err();
        assert!(e.contains("init container \"big\" needs 3 cpu"), "{e}");
    }

    #[test]
    fn kuberay_derivation() {
        let c = json!({"resources": {"limits": {"cpu": "1500m", "memory": "1Gi", "nvidia.com/gpu": "2"}, "requests": {"cpu": "1"}}});
        let f = kuberay_flags(&c);
        assert_eq!(
            (f.get("CPU"), f.get("memory"), f.get("GPU")),
            (Some(&2), Some(&(1 << 30)), Some(&2))
        );
        let c = json!({"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}});
        assert!(
            !kuberay_flags(&c).contains_key("memory"),
            "no fallback to requests for memory"
        );
    }
}

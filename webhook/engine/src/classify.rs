//! The second stage: is this object ours, and which container runs Ray?
//!
//! Pods with KubeRay's `ray.io/node-type` or the instance-type label are Ray pods; KubeRay's
//! own objects (RayCluster, RayJob, RayService) are shaped at their group templates;
//! everything else passes through untouched.

use crate::config::settings::Settings;
use crate::primitives::pod;
use rayshape_contract::keys;
use rayshape_json::Value;

/// KubeRay's label on every pod it creates.
pub const KUBERAY_NODE_TYPE: &str = "ray.io/node-type";

/// Labels KubeRay and its Services select on: never changed.
pub const KUBERAY_LABELS: [&str; 4] = [
    "ray.io/cluster",
    "ray.io/node-type",
    "ray.io/group",
    "ray.io/identifier",
];

/// What the engine should do with an object.
#[derive(Debug, PartialEq, Eq)]
pub enum Class {
    /// Not ours: pass through untouched. The reason is for logs.
    NotRay(&'static str),
    /// A Ray pod.
    Ray(RayPod),
    /// A KubeRay object whose group templates may be sized.
    Cluster(ClusterKind),
    /// A Ray pod we cannot shape as asked (the message says why and how to fix it).
    Invalid(String),
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct RayPod {
    /// Index of the Ray container in `spec.containers`.
    pub ray_container: usize,
    /// Created by KubeRay (has `ray.io/node-type`).
    pub kuberay: bool,
    /// How the Ray container was found, for explanations.
    pub found_by: FoundBy,
}

/// How the Ray container of a pod was chosen.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum FoundBy {
    /// KubeRay's pods run Ray in the first container (`RayContainerIndex = 0`).
    KubeRay,
    /// The `<prefix>/ray-container` annotation names it.
    Annotation,
    /// The first container whose command runs `ray start`.
    RayStart,
    /// No better clue: the first container.
    First,
}

impl FoundBy {
    /// Why this container is Ray's, in words.
    pub fn explain(self) -> &'static str {
        match self {
            FoundBy::KubeRay => "KubeRay pod: the first container runs Ray",
            FoundBy::Annotation => "named by the ray-container annotation",
            FoundBy::RayStart => "the first container whose command runs `ray start`",
            FoundBy::First => "no container runs `ray start` and none is named: the first",
        }
    }
}

/// Which KubeRay object, and where its cluster spec lives.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct ClusterKind {
    pub kind: &'static str,
    /// The path from the object to its `RayClusterSpec`.
    pub spec_path: &'static [&'static str],
}

/// Classify any object; `namespace` is the request's, used when the object names none.
pub fn classify(obj: &Value, namespace: Option<&str>, s: &Settings) -> Class {
    let kind = pod::field(obj, "kind").and_then(Value::as_str);
    let ray_api = pod::field(obj, "apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with("ray.io/"));
    let cluster_kind = matches!(kind, Some("RayCluster" | "RayJob" | "RayService")) && ray_api;
    if cluster_kind {
        // As for pods: the webhook touches nothing in a namespace it does not shape (and
        // the Helm chart's namespaceSelector, derived from the same list, says so too).
        let ns = pod::at(obj, &["metadata", "namespace"])
            .and_then(Value::as_str)
            .or(namespace);
        if !s.manages_namespace(ns) {
            return Class::NotRay("namespace not managed");
        }
    }
    match kind {
        Some("Pod") => classify_pod(obj, namespace, s),
        Some("RayCluster") if ray_api => Class::Cluster(ClusterKind {
            kind: "RayCluster",
            spec_path: &["spec"],
        }),
        Some("RayJob") if ray_api => Class::Cluster(ClusterKind {
            kind: "RayJob",
            spec_path: &["spec", "rayClusterSpec"],
        }),
        // KubeRay keeps a RayService's cluster under `rayClusterConfig`.
        Some("RayService") if ray_api => Class::Cluster(ClusterKind {
            kind: "RayService",
            spec_path: &["spec", "rayClusterConfig"],
        }),
        _ => Class::NotRay("not a Pod"),
    }
}

/// Classify a pod.
pub fn classify_pod(pod: &Value, namespace: Option<&str>, s: &Settings) -> Class {
    let labels = pod::labels(pod);
    let has = |k: &str| labels.is_some_and(|m| m.get(k).is_some());
    let kuberay = has(KUBERAY_NODE_TYPE);
    if !kuberay && !has(&s.key(keys::INSTANCE_TYPE)) {
        return Class::NotRay("no ray.io/node-type or instance-type label");
    }
    if pod::annotations(pod).is_some_and(|a| a.get("kubernetes.io/config.mirror").is_some()) {
        return Class::NotRay("mirror pod");
    }
    let ns = pod::at(pod, &["metadata", "namespace"])
        .and_then(Value::as_str)
        .or(namespace);
    if !s.manages_namespace(ns) {
        return Class::NotRay("namespace not managed");
    }
    let containers = pod::containers(pod);
    if containers.is_empty() {
        return Class::NotRay("no containers");
    }
    for (list, items) in [
        ("containers", containers),
        ("initContainers", pod::init_containers(pod)),
    ] {
        if let Some(i) = items.iter().position(|c| !c.is_object()) {
            return Class::Invalid(format!(
                "spec.{list}[{i}] is not an object; every container must be a mapping with at least a name and an image"
            ));
        }
    }
    if kuberay {
        // KubeRay guarantees the Ray container is the first (RayContainerIndex = 0).
        return Class::Ray(RayPod {
            ray_container: 0,
            kuberay,
            found_by: FoundBy::KubeRay,
        });
    }
    let names = || {
        containers
            .iter()
            .map(pod::name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let key = s.key(keys::RAY_CONTAINER);
    if let Some(want) = pod::annotations(pod)
        .and_then(|a| a.get(&key))
        .and_then(Value::as_str)
    {
        return match containers.iter().position(|c| pod::name(c) == want) {
            Some(i) => Class::Ray(RayPod {
                ray_container: i,
                kuberay,
                found_by: FoundBy::Annotation,
            }),
            None => Class::Invalid(format!(
                "annotation {key}={want:?} names no container of this pod; its containers are: {}",
                names()
            )),
        };
    }
    match containers
        .iter()
        .position(|c| runs_ray_start(&pod::command_line(c)))
    {
        Some(i) => Class::Ray(RayPod {
            ray_container: i,
            kuberay,
            found_by: FoundBy::RayStart,
        }),
        None => Class::Ray(RayPod {
            ray_container: 0,
            kuberay,
            found_by: FoundBy::First,
        }),
    }
}

/// Whether a command line runs `ray start` (words separated by any whitespace).
pub fn runs_ray_start(cmd: &str) -> bool {
    let mut words = cmd.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if (w == "ray" || w.ends_with("/ray")) && words.peek() == Some(&"start") {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayshape_json::json;

    fn s() -> Settings {
        Settings::default()
    }

    #[test]
    fn plain_pods_pass() {
        let p = json!({"kind": "Pod", "metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "a"}]}});
        assert!(matches!(classify_pod(&p, None, &s()), Class::NotRay(_)));
    }

    #[test]
    fn kuberay_is_index_zero() {
        let p = json!({"metadata": {"labels": {"ray.io/node-type": "worker"}}, "spec": {"containers": [{"name": "a"}, {"name": "b", "args": ["ray start"]}]}});
        assert_eq!(
            classify_pod(&p, None, &s()),
            Class::Ray(RayPod {
                ray_container: 0,
                kuberay: true,
                found_by: FoundBy::KubeRay,
            })
        );
    }

    #[test]
    fn plain_ray_pod_by_annotation_then_command() {
        let mut p = json!({"metadata": {"labels": {"rayshape.io/instance-type": "2CPU-8GB"}},
            "spec": {"containers": [{"name": "log"}, {"name": "ray", "command": ["/bin/bash", "-c"], "args": ["ulimit -n 65536; ray  start --block"]}]}});
        assert_eq!(
            classify_pod(&p, None, &s()),
            Class::Ray(RayPod {
                ray_container: 1,
                kuberay: false,
                found_by: FoundBy::RayStart,
            })
        );
        p["metadata"]["annotations"] = json!({"rayshape.io/ray-container": "log"});
        assert_eq!(
            classify_pod(&p, None, &s()),
            Class::Ray(RayPod {
                ray_container: 0,
                kuberay: false,
                found_by: FoundBy::Annotation,
            })
        );
        p["metadata"]["annotations"] = json!({"rayshape.io/ray-container": "nope"});
        match classify_pod(&p, None, &s()) {
            Class::Invalid(m) => assert!(m.contains("log, ray"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn excluded_namespaces_pass() {
        let p = json!({"metadata": {"namespace": "kube-system", "labels": {"ray.io/node-type": "head"}}, "spec": {"containers": [{"name": "a"}]}});
        assert!(matches!(classify_pod(&p, None, &s()), Class::NotRay(_)));
    }

    #[test]
    fn malformed_containers_are_refused_with_the_place() {
        let p = json!({"kind": "Pod", "metadata": {"labels": {"ray.io/node-type": "worker"}}, "spec": {"containers": [{"name": "a"}, 1]}});
        match classify_pod(&p, None, &s()) {
            Class::Invalid(m) => {
                assert!(m.starts_with("spec.containers[1] is not an object"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kinds() {
        let rc = json!({"apiVersion": "ray.io/v1", "kind": "RayCluster"});
        assert!(matches!(classify(&rc, None, &s()), Class::Cluster(k) if k.kind == "RayCluster"));
        let other = json!({"apiVersion": "example.com/v1", "kind": "RayCluster"});
        assert_eq!(classify(&other, None, &s()), Class::NotRay("not a Pod"));
    }

    #[test]
    fn ray_start_detection() {
        assert!(runs_ray_start("/bin/bash -c -- ray start --head"));
        assert!(runs_ray_start("/home/ray/anaconda3/bin/ray start"));
        assert!(!runs_ray_start("python ray_start.py"));
        assert!(!runs_ray_start("ray status"));
    }
}

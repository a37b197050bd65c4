//! Is this a Ray pod, and which container runs Ray?

use crate::config::settings::Settings;
use crate::pod;
use serde_json::Value;

/// KubeRay's label on every pod it creates.
pub const KUBERAY_NODE_TYPE: &str = "ray.io/node-type";

/// Labels KubeRay and its Services select on: never changed.
pub const KUBERAY_LABELS: [&str; 4] = [
    "ray.io/cluster",
    "ray.io/node-type",
    "ray.io/group",
    "ray.io/identifier",
];

/// What the engine should do with a pod.
#[derive(Debug, PartialEq, Eq)]
pub enum Class {
    /// Not ours: pass through untouched. The reason is for logs.
    NotRay(&'static str),
    /// A Ray pod.
    Ray(RayPod),
    /// A Ray pod we cannot shape as asked (the message says why and how to fix it).
    Invalid(String),
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct RayPod {
    /// Index of the Ray container in `spec.containers`.
    pub ray_container: usize,
    /// Created by KubeRay (has `ray.io/node-type`).
    pub kuberay: bool,
}

/// Classify `pod`; `namespace` is the request's, used when the object names none.
pub fn classify(pod: &Value, namespace: Option<&str>, s: &Settings) -> Class {
    let labels = pod::labels(pod);
    let has = |k: &str| labels.is_some_and(|m| m.contains_key(k));
    let kuberay = has(KUBERAY_NODE_TYPE);
    if !kuberay && !has(&s.key("instance-type")) {
        return Class::NotRay("no ray.io/node-type or instance-type label");
    }
    if pod::annotations(pod).is_some_and(|a| a.contains_key("kubernetes.io/config.mirror")) {
        return Class::NotRay("mirror pod");
    }
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .or(namespace);
    if !s.manages_namespace(ns) {
        return Class::NotRay("namespace not managed");
    }
    let containers = pod::containers(pod);
    if containers.is_empty() {
        return Class::NotRay("no containers");
    }
    if kuberay {
        // KubeRay guarantees the Ray container is the first (RayContainerIndex = 0).
        return Class::Ray(RayPod {
            ray_container: 0,
            kuberay,
        });
    }
    let names = || {
        containers
            .iter()
            .map(pod::name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let key = s.key("ray-container");
    if let Some(want) = pod::annotations(pod)
        .and_then(|a| a.get(&key))
        .and_then(Value::as_str)
    {
        return match containers.iter().position(|c| pod::name(c) == want) {
            Some(i) => Class::Ray(RayPod {
                ray_container: i,
                kuberay,
            }),
            None => Class::Invalid(format!(
                "annotation {key}={want:?} names no container of this pod; its containers are: {}",
                names()
            )),
        };
    }
    let i = containers
        .iter()
        .position(|c| runs_ray_start(&pod::command_line(c)))
        .unwrap_or(0);
    Class::Ray(RayPod {
        ray_container: i,
        kuberay,
    })
}

/// Whether a command line runs `ray start` (words separated by any whitespace).
pub fn runs_ray_start(cmd: &str) -> bool {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    words
        .windows(2)
        .any(|w| (w[0] == "ray" || w[0].ends_with("/ray")) && w[1] == "start")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s() -> Settings {
        Settings::default()
    }

    #[test]
    fn plain_pods_pass() {
        let p =
            json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "a"}]}});
        assert!(matches!(classify(&p, None, &s()), Class::NotRay(_)));
    }

    #[test]
    fn kuberay_is_index_zero() {
        let p = json!({"metadata": {"labels": {"ray.io/node-type": "worker"}}, "spec": {"containers": [{"name": "a"}, {"name": "b", "args": ["ray start"]}]}});
        assert_eq!(
            classify(&p, None, &s()),
            Class::Ray(RayPod {
                ray_container: 0,
                kuberay: true
            })
        );
    }

    #[test]
    fn plain_ray_pod_by_annotation_then_command() {
        let mut p = json!({"metadata": {"labels": {"rayshape.io/instance-type": "2CPU-8GB"}},
            "spec": {"containers": [{"name": "log"}, {"name": "ray", "command": ["/bin/bash", "-c"], "args": ["ulimit -n 65536; ray  start --block"]}]}});
        assert_eq!(
            classify(&p, None, &s()),
            Class::Ray(RayPod {
                ray_container: 1,
                kuberay: false
            })
        );
        p["metadata"]["annotations"] = json!({"rayshape.io/ray-container": "log"});
        assert_eq!(
            classify(&p, None, &s()),
            Class::Ray(RayPod {
                ray_container: 0,
                kuberay: false
            })
        );
        p["metadata"]["annotations"] = json!({"rayshape.io/ray-container": "nope"});
        match classify(&p, None, &s()) {
            Class::Invalid(m) => assert!(m.contains("log, ray"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn excluded_namespaces_pass() {
        let p = json!({"metadata": {"namespace": "kube-system", "labels": {"ray.io/node-type": "head"}}, "spec": {"containers": [{"name": "a"}]}});
        assert!(matches!(classify(&p, None, &s()), Class::NotRay(_)));
    }

    #[test]
    fn ray_start_detection() {
        assert!(runs_ray_start("/bin/bash -c -- ray start --head"));
        assert!(runs_ray_start("/home/ray/anaconda3/bin/ray start"));
        assert!(!runs_ray_start("python ray_start.py"));
        assert!(!runs_ray_start("ray status"));
    }
}

//! Injection of the rayshape sidecar, once, by container name.
//!
//! The sidecar is a native sidecar (an init container with `restartPolicy: Always`), so it
//! starts before Ray, stops after Ray, and reports in `initContainerStatuses` rather than in
//! the `containerStatuses` the Ray autoscalers read. It shares whatever volume the Ray
//! container has at `/tmp/ray`. Its spec carries the defaults the API server would add, so
//! that re-shaping an admitted pod is a no-op.

use crate::config::settings::Settings;
use crate::pod;
use serde_json::{Value, json};

pub const RAY_LOGS_PATH: &str = "/tmp/ray";
pub const TOKEN_VOLUME: &str = "rayshape-token";
pub const TOKEN_DIR: &str = "/var/run/secrets/rayshape.io/serviceaccount";
const LOGS_VOLUME: &str = "rayshape-ray-logs";

/// Whether this pod opted out with `<prefix>/sidecar: disabled`.
pub fn opted_out(obj: &Value, s: &Settings) -> bool {
    pod::vocab(obj, &s.key("sidecar")) == Some("disabled")
}

/// The sidecar's container and token volume for one configuration, built once at load.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    container: Value,
    token_volume: Value,
}

impl Template {
    pub fn new(s: &Settings) -> Template {
        Template {
            container: container(s, ""),
            token_volume: token_volume(s),
        }
    }
}

/// Inject (or refresh) the sidecar into `pod`, whose Ray container is `ray_idx`.
pub fn inject(pod: &mut Value, ray_idx: usize, s: &Settings, t: &Template) {
    let logs_volume = ensure_logs_volume(pod, ray_idx);
    let spec = pod::ensure_object(&mut pod["spec"]);
    upsert_by_name(spec, "volumes", t.token_volume.clone());
    let mut container = t.container.clone();
    container["volumeMounts"][0]["name"] = Value::String(logs_volume);
    let (list, other) = if s.sidecar.native {
        ("initContainers", "containers")
    } else {
        ("containers", "initContainers")
    };
    // A pod shaped under the other mode keeps its sidecar where it is: moving it between
    // lists is not allowed on a live pod, and never needed on a new one.
    let elsewhere = spec
        .get(other)
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|c| pod::name(c) == s.sidecar.name));
    if !elsewhere {
        upsert_by_name(spec, list, container);
    }
}

/// The volume mounted at `/tmp/ray` in the Ray container, adding an `emptyDir` if none is.
fn ensure_logs_volume(pod: &mut Value, ray_idx: usize) -> String {
    let ray = &pod["spec"]["containers"][ray_idx];
    let existing = ray
        .get("volumeMounts")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|m| m.get("mountPath").and_then(Value::as_str) == Some(RAY_LOGS_PATH))
        })
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str);
    if let Some(name) = existing {
        return name.to_string();
    }
    let volumes = pod::at(pod, &["spec", "volumes"])
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let taken = |n: &str| volumes.iter().any(|v| pod::name(v) == n);
    let name = std::iter::once(LOGS_VOLUME.to_string())
        .chain((2..).map(|i| format!("{LOGS_VOLUME}-{i}")))
        .find(|n| !taken(n))
        .expect("an unused name exists");
    let spec = pod::ensure_object(&mut pod["spec"]);
    push(spec, "volumes", json!({"name": name, "emptyDir": {}}));
    let ray = pod::ensure_object(&mut pod["spec"]["containers"][ray_idx]);
    push(
        ray,
        "volumeMounts",
        json!({"name": name, "mountPath": RAY_LOGS_PATH}),
    );
    name
}

fn push(m: &mut serde_json::Map<String, Value>, key: &str, v: Value) {
    let list = m.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if !list.is_array() {
        *list = Value::Array(Vec::new());
    }
    list.as_array_mut().expect("array").push(v);
}

/// Replace the element with the same `name`, or append it.
fn upsert_by_name(m: &mut serde_json::Map<String, Value>, key: &str, v: Value) {
    let name = pod::name(&v).to_string();
    let list = m.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if !list.is_array() {
        *list = Value::Array(Vec::new());
    }
    let list = list.as_array_mut().expect("array");
    match list.iter_mut().find(|c| pod::name(c) == name) {
        Some(slot) => *slot = v,
        None => list.push(v),
    }
}

fn token_volume(s: &Settings) -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {
            "defaultMode": 420,
            "sources": [{"serviceAccountToken": {
                "audience": s.sidecar.token_audience,
                "expirationSeconds": s.sidecar.token_expiration_seconds,
                "path": "token"
            }}]
        }
    })
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

fn container(s: &Settings, logs_volume: &str) -> Value {
    let sc = &s.sidecar;
    let resources: serde_json::Map<String, Value> = sc
        .resources
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut c = json!({
        "name": sc.name,
        "image": sc.image,
        "imagePullPolicy": sc.image_pull_policy,
        "args": ["run"],
        "env": [
            field_env("RAYSHAPE_POD_NAME", "metadata.name"),
            field_env("RAYSHAPE_POD_NAMESPACE", "metadata.namespace"),
            field_env("RAYSHAPE_POD_UID", "metadata.uid"),
            field_env("RAYSHAPE_NODE_NAME", "spec.nodeName"),
            field_env("RAYSHAPE_RAY_CLUSTER", "metadata.labels['ray.io/cluster']"),
            {"name": "RAYSHAPE_BOOTSTRAP_URL", "value": sc.bootstrap_url},
            {"name": "RAYSHAPE_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token")},
            {"name": "RAYSHAPE_LOG_ROOT", "value": RAY_LOGS_PATH},
            {"name": "RAYSHAPE_METRICS_LISTEN", "value": format!("0.0.0.0:{}", sc.metrics_port)},
        ],
        "ports": [{"name": "rs-metrics", "containerPort": sc.metrics_port, "protocol": "TCP"}],
        "resources": {"requests": resources.clone(), "limits": resources},
        "volumeMounts": [
            {"name": logs_volume, "mountPath": RAY_LOGS_PATH},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    });
    if !sc.log_sink.url.is_empty() {
        let env = c["env"].as_array_mut().expect("env is a list");
        env.push(json!({"name": "RAYSHAPE_SINK_URL", "value": sc.log_sink.url}));
        if !sc.log_sink.options.is_empty() {
            let opts: Vec<String> = sc
                .log_sink
                .options
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            env.push(json!({"name": "RAYSHAPE_SINK_OPTIONS", "value": opts.join(",")}));
        }
    }
    if sc.native {
        c["restartPolicy"] = json!("Always");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_tmp_ray_volume_and_is_idempotent() {
        let mut p = json!({"spec": {"containers": [{"name": "ray", "volumeMounts": [{"name": "log-volume", "mountPath": "/tmp/ray"}]}],
            "volumes": [{"name": "log-volume", "emptyDir": {}}]}});
        let s = Settings::default();
        inject(&mut p, 0, &s, &Template::new(&s));
        let once = p.clone();
        inject(&mut p, 0, &s, &Template::new(&s));
        assert_eq!(p, once);
        let sc = &p["spec"]["initContainers"][0];
        assert_eq!(sc["restartPolicy"], "Always");
        assert_eq!(sc["volumeMounts"][0]["name"], "log-volume");
        assert_eq!(
            p["spec"]["volumes"].as_array().unwrap().len(),
            2,
            "only the token volume was added"
        );
    }

    #[test]
    fn log_sink_is_handed_over_in_the_environment() {
        let mut s = Settings::default();
        s.sidecar.log_sink.url = "s3://logs/ray".into();
        s.sidecar
            .log_sink
            .options
            .insert("aws_region".into(), "eu-west-1".into());
        let mut p = json!({"spec": {"containers": [{"name": "ray"}]}});
        inject(&mut p, 0, &s, &Template::new(&s));
        let env = &p["spec"]["initContainers"][0]["env"];
        let get = |n: &str| {
            env.as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == n)
                .map(|e| e["value"].clone())
        };
        assert_eq!(get("RAYSHAPE_SINK_URL"), Some(json!("s3://logs/ray")));
        assert_eq!(
            get("RAYSHAPE_SINK_OPTIONS"),
            Some(json!("aws_region=eu-west-1"))
        );
    }

    #[test]
    fn adds_shared_volume_when_missing_and_legacy_mode() {
        let mut p = json!({"spec": {"containers": [{"name": "ray"}, {"name": "other"}], "volumes": [{"name": "rayshape-ray-logs", "secret": {}}]}});
        let mut s = Settings::default();
        s.sidecar.native = false;
        inject(&mut p, 0, &s, &Template::new(&s));
        assert_eq!(
            p["spec"]["containers"][0]["volumeMounts"][0],
            json!({"name": "rayshape-ray-logs-2", "mountPath": "/tmp/ray"})
        );
        assert_eq!(
            p["spec"]["containers"][2]["name"], "rayshape-sidecar",
            "appended after every container"
        );
        assert!(p["spec"]["containers"][2].get("restartPolicy").is_none());
    }
}

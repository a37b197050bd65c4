//! The sidecar container as the settings describe it, built once when a configuration
//! loads. Where it goes in a pod is the plan's business (`plan::sidecar`).
//!
//! Its spec carries the defaults the API server would add, so that re-shaping an admitted
//! pod is a no-op. Every name the sidecar reads comes from `rayshape_contract`.

use super::settings::Settings;
use rayshape_contract::{self as contract, env};
use rayshape_json::{Map, Value, json};

/// The name of the projected token volume.
pub const TOKEN_VOLUME: &str = "rayshape-token";

/// The name of the volume the sidecar shares with Ray at `/tmp/ray`, when rayshape adds it
/// (a Ray container that mounts one there already keeps its own).
pub const LOGS_VOLUME: &str = "rayshape-ray-logs";

/// The sidecar's container and token volume for one configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    /// The container, mounting [`LOGS_VOLUME`] at `/tmp/ray` (the plan renames the mount
    /// where the pod shares another volume there).
    pub container: Value,
    pub token_volume: Value,
}

impl Template {
    /// The sidecar under these settings; `bootstrap_ca` is the PEM bundle it checks the
    /// bootstrap endpoint against.
    pub fn new(s: &Settings, bootstrap_ca: Option<&str>) -> Template {
        let mut t = Template {
            container: container(s, bootstrap_ca),
            token_volume: token_volume(s),
        };
        // Both go whole into most patches: their text is then copied, not written again.
        t.container.keep_text();
        t.token_volume.keep_text();
        t
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
                "path": contract::TOKEN_FILE_NAME
            }}]
        }
    })
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

fn container(s: &Settings, bootstrap_ca: Option<&str>) -> Value {
    let sc = &s.sidecar;
    let resources: Map = sc
        .resources
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    let mut env = vec![
        field_env(env::POD_NAME, "metadata.name"),
        field_env(env::POD_NAMESPACE, "metadata.namespace"),
        field_env(env::POD_UID, "metadata.uid"),
        field_env(env::NODE_NAME, "spec.nodeName"),
        field_env(
            env::RAY_CLUSTER,
            &format!("metadata.labels['{}']", contract::keys::KUBERAY_CLUSTER),
        ),
        json!({"name": env::BOOTSTRAP_URL, "value": sc.bootstrap_url}),
        json!({"name": env::TOKEN_FILE, "value": format!("{}/{}", contract::TOKEN_DIR, contract::TOKEN_FILE_NAME)}),
        json!({"name": env::LOG_ROOT, "value": contract::RAY_ROOT}),
    ];
    if let Some(ca) = bootstrap_ca.filter(|c| !c.trim().is_empty()) {
        env.push(json!({"name": env::BOOTSTRAP_CA, "value": ca}));
    }
    env.extend([
        json!({"name": env::METRICS_LISTEN, "value": format!("[::]:{}", sc.metrics_port)}),
    ]);
    // The sink is not in the environment: the bootstrap hands it to a verified sidecar, so
    // a pod cannot learn another's, and changing it needs no new pods.
    let mut c = json!({
        "name": sc.name,
        "image": sc.image,
        "imagePullPolicy": sc.image_pull_policy,
        "args": ["run"],
        "env": env,
        "ports": [{"name": "rs-metrics", "containerPort": sc.metrics_port, "protocol": "TCP"}],
        "resources": {"requests": resources.clone(), "limits": resources},
        "volumeMounts": [
            {"name": LOGS_VOLUME, "mountPath": contract::RAY_ROOT},
            {"name": TOKEN_VOLUME, "mountPath": contract::TOKEN_DIR, "readOnly": true},
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
    if sc.native
        && let Some(m) = c.as_object_mut()
    {
        m.insert("restartPolicy", json!("Always"));
    }
    c
}

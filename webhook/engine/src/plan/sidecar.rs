//! Injection of the rayshape sidecar into the staged pod, once, by container name.
//!
//! The sidecar is a native sidecar (an init container with `restartPolicy: Always`), so it
//! starts before Ray, stops after Ray, and reports in `initContainerStatuses` rather than in
//! the `containerStatuses` the Ray autoscalers read. It shares whatever volume the Ray
//! container has at `/tmp/ray`. A container or volume of the pod that carries one of the
//! sidecar's names but is not rayshape's is never overwritten: the pod is denied instead,
//! with the name to change.
//!
//! The container is replaced whole each time a pod is shaped. With `reinvocationPolicy:
//! IfNeeded` the API server re-runs its own admission plugins after the webhook changed the
//! pod, and the ServiceAccount plugin mounts the pod's Kubernetes API token into every
//! container, the sidecar included; the webhook's second call then removes that mount. On
//! purpose: the sidecar proves itself with its own projected token (rayshape's audience) and
//! never calls the Kubernetes API, so it should not hold the pod's API credentials.

use super::Denial;
use crate::config::Config;
use crate::config::settings::Settings;
use crate::config::sidecar::{LOGS_VOLUME, TOKEN_VOLUME};
use crate::primitives::pod;
use rayshape_contract::{self as contract, env, keys};
use rayshape_json::{Map, Value};

/// Whether this pod opted out with `<prefix>/sidecar: disabled`.
pub fn opted_out(obj: &Value, s: &Settings) -> bool {
    pod::vocab(obj, &s.key(keys::SIDECAR)) == Some(keys::SIDECAR_DISABLED)
}

/// What the injection did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    /// The volume shared with Ray at `/tmp/ray`.
    pub logs_volume: String,
    /// Whether that volume was added (the Ray container had nothing at `/tmp/ray`).
    pub logs_volume_added: bool,
    /// `initContainers` (native sidecar) or `containers` (legacy mode, or where an earlier
    /// shaping put it).
    pub list: &'static str,
}

/// Inject (or refresh) the sidecar into `pod`, whose Ray container is `ray_idx`.
pub fn inject(pod: &mut Value, ray_idx: usize, cfg: &Config) -> Result<Injection, Denial> {
    let s = &cfg.settings;
    let t = &cfg.sidecar;
    check_names(pod, s)?;
    let (logs_volume, logs_volume_added) = ensure_logs_volume(pod, ray_idx);
    let spec = pod::ensure_object(pod::ensure_field(pod, "spec"));
    upsert_by_name(spec, "volumes", t.token_volume.clone());
    let mut container = t.container.clone();
    // Left untouched in the common case, so that the patch copies the template's text.
    if logs_volume != LOGS_VOLUME
        && let Some(m) = container
            .get_mut("volumeMounts")
            .and_then(|v| v.get_mut(0))
            .and_then(Value::as_object_mut)
    {
        m.insert("name", Value::from(logs_volume.as_str()));
    }
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
    if elsewhere {
        return Ok(Injection {
            logs_volume,
            logs_volume_added,
            list: other,
        });
    }
    upsert_by_name(spec, list, container);
    Ok(Injection {
        logs_volume,
        logs_volume_added,
        list,
    })
}

/// Refuse pods whose own containers or volumes carry the sidecar's names.
fn check_names(pod: &Value, s: &Settings) -> Result<(), Denial> {
    let name = &s.sidecar.name;
    for list in ["initContainers", "containers"] {
        let found = pod::at(pod, &["spec", list])
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|c| pod::name(c) == name));
        if let Some(c) = found
            && !is_our_container(c)
        {
            return Err(Denial::new(format!(
                "{list} already has a container named {name:?} that is not the rayshape sidecar; rename it, or opt the pod out with {}: {}",
                s.key(keys::SIDECAR),
                keys::SIDECAR_DISABLED
            )));
        }
    }
    let volume = pod::at(pod, &["spec", "volumes"])
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|v| pod::name(v) == TOKEN_VOLUME));
    if let Some(v) = volume
        && !is_our_token_volume(v)
    {
        return Err(Denial::new(format!(
            "the pod already has a volume named {TOKEN_VOLUME:?} that is not rayshape's projected token; rename it, or opt the pod out with {}: {}",
            s.key(keys::SIDECAR),
            keys::SIDECAR_DISABLED
        )));
    }
    Ok(())
}

/// The sidecar is recognised by the pod UID it gets from the downward API.
fn is_our_container(c: &Value) -> bool {
    pod::field(c, "env")
        .and_then(Value::as_array)
        .is_some_and(|env| env.iter().any(|e| pod::name(e) == env::POD_UID))
}

/// The token volume is a projection of a service-account token to `token`.
fn is_our_token_volume(v: &Value) -> bool {
    pod::at(v, &["projected", "sources"])
        .and_then(Value::as_array)
        .is_some_and(|sources| {
            sources.iter().any(|s| {
                pod::at(s, &["serviceAccountToken", "path"]).and_then(Value::as_str)
                    == Some(contract::TOKEN_FILE_NAME)
            })
        })
}

/// The volume mounted at `/tmp/ray` in the Ray container, adding an `emptyDir` if none is.
fn ensure_logs_volume(pod: &mut Value, ray_idx: usize) -> (String, bool) {
    let existing = pod::containers(pod)
        .get(ray_idx)
        .and_then(|ray| pod::field(ray, "volumeMounts"))
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter().find(|m| {
                pod::field(m, "mountPath").and_then(Value::as_str) == Some(contract::RAY_ROOT)
            })
        })
        .map(pod::name);
    if let Some(name) = existing {
        return (name.to_string(), false);
    }
    let volumes = pod::at(pod, &["spec", "volumes"])
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let taken = |n: &str| volumes.iter().any(|v| pod::name(v) == n);
    let name = if taken(LOGS_VOLUME) {
        // Names are unique within a pod; some suffix within len + 2 is free.
        (2..=volumes.len() + 2)
            .map(|i| format!("{LOGS_VOLUME}-{i}"))
            .find(|n| !taken(n))
            .unwrap_or_else(|| format!("{LOGS_VOLUME}-{}", volumes.len() + 3))
    } else {
        LOGS_VOLUME.to_string()
    };
    let spec = pod::ensure_object(pod::ensure_field(pod, "spec"));
    let volume = pod::object([
        ("name", Value::from(name.as_str())),
        ("emptyDir", Value::Object(Map::new())),
    ]);
    push(spec, "volumes", volume);
    if let Some(ray) = spec
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .and_then(|a| a.get_mut(ray_idx))
    {
        push(
            pod::ensure_object(ray),
            "volumeMounts",
            pod::object([
                ("name", Value::from(name.as_str())),
                ("mountPath", Value::from(contract::RAY_ROOT)),
            ]),
        );
    }
    (name, true)
}

fn push(m: &mut Map, key: &str, v: Value) {
    pod::ensure_array(m.entry(key).or_insert_with(|| Value::Array(Vec::new()))).push(v);
}

/// Replace the element with the same `name`, or append it.
fn upsert_by_name(m: &mut Map, key: &str, v: Value) {
    let name = pod::name(&v).to_string();
    let list = pod::ensure_array(m.entry(key).or_insert_with(|| Value::Array(Vec::new())));
    match list.iter_mut().find(|c| pod::name(c) == name) {
        Some(slot) => *slot = v,
        None => list.push(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Sources};
    use rayshape_json::json;

    fn cfg(settings: &str) -> Config {
        Config::from_sources(&Sources {
            settings: Some(settings.into()),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn reuses_tmp_ray_volume_and_is_idempotent() {
        let mut p = json!({"spec": {"containers": [{"name": "ray", "volumeMounts": [{"name": "log-volume", "mountPath": "/tmp/ray"}]}],
            "volumes": [{"name": "log-volume", "emptyDir": {}}]}});
        let c = Config::builtin();
        let i = inject(&mut p, 0, &c).unwrap();
        assert_eq!(
            (i.logs_volume.as_str(), i.logs_volume_added),
            ("log-volume", false)
        );
        let once = p.clone();
        inject(&mut p, 0, &c).unwrap();
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
    fn the_sink_is_not_in_the_environment_but_the_bootstrap_is() {
        let c = cfg(
            "sidecar:\n  logSink:\n    url: s3://logs/ray\n    options: {aws_region: eu-west-1}\n",
        );
        let mut p = json!({"spec": {"containers": [{"name": "ray"}]}});
        inject(&mut p, 0, &c).unwrap();
        let env = p["spec"]["initContainers"][0]["env"]
            .as_array()
            .unwrap()
            .clone();
        let names: Vec<&str> = env.iter().filter_map(|e| e["name"].as_str()).collect();
        assert!(
            !names.iter().any(|n| n.starts_with("RAYSHAPE_SINK")),
            "{names:?}"
        );
        for n in [
            "RAYSHAPE_BOOTSTRAP_URL",
            "RAYSHAPE_TOKEN_FILE",
            "RAYSHAPE_POD_UID",
            "RAYSHAPE_NODE_NAME",
        ] {
            assert!(names.contains(&n), "{n} missing: {names:?}");
        }
    }

    #[test]
    fn adds_shared_volume_when_missing_and_legacy_mode() {
        let mut p = json!({"spec": {"containers": [{"name": "ray"}, {"name": "other"}], "volumes": [{"name": "rayshape-ray-logs", "secret": {}}]}});
        let c = cfg("sidecar: {native: false}\n");
        inject(&mut p, 0, &c).unwrap();
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

    #[test]
    fn names_that_are_not_ours_are_never_overwritten() {
        let c = Config::builtin();
        let mut p = json!({"spec": {"containers": [{"name": "ray"}], "initContainers": [{"name": "rayshape-sidecar", "image": "mine"}]}});
        let e = inject(&mut p, 0, &c).unwrap_err();
        assert!(
            e.message
                .contains("initContainers already has a container named \"rayshape-sidecar\""),
            "{e}"
        );
        let mut p = json!({"spec": {"containers": [{"name": "ray"}], "volumes": [{"name": "rayshape-token", "secret": {"secretName": "s"}}]}});
        let e = inject(&mut p, 0, &c).unwrap_err();
        assert!(e.message.contains("volume named \"rayshape-token\""), "{e}");
    }
}

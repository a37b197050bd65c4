//! The admission itself, end to end: what the real API server stores for every pod fixture is
//! what `rayshape-webhook mutate` previews, denials reach kubectl with rayshape's message,
//! pods that are not Ray pods never reach the webhook, and an outage of the webhook does
//! what the registered `failurePolicy` says.

use rayshape_e2e::{Cluster, differences, exclusive, repo_path, shared, text, wait_until};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// The pod fixtures: KubeRay-built pods (and an AdmissionReview of one) and hand-made pods.
fn fixtures() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["tests/fixtures/kuberay", "tests/fixtures/pods"] {
        for e in std::fs::read_dir(repo_path(dir)).expect("fixtures directory") {
            let p = e.expect("fixture").path();
            if matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("json" | "yaml")
            ) {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 10, "fixtures missing: {files:?}");
    files
}

/// A fixture as a pod to create in `ns` (an AdmissionReview's `request.object`).
fn fixture_pod(c: &Cluster, file: &std::path::Path, ns: &str) -> Value {
    let mut obj = if file.extension().is_some_and(|x| x == "json") {
        serde_json::from_str(&std::fs::read_to_string(file).expect("read fixture"))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    } else {
        let mut all = c.read_objects(file);
        assert_eq!(all.len(), 1, "{}: one object", file.display());
        all.remove(0)
    };
    if obj["kind"] == "AdmissionReview" {
        obj = obj["request"]["object"].take();
    }
    assert_eq!(obj["kind"], "Pod", "{}", file.display());
    let meta = obj["metadata"].as_object_mut().expect("metadata");
    meta.insert("namespace".into(), json!(ns));
    if !meta.contains_key("name") && !meta.contains_key("generateName") {
        meta.insert("generateName".into(), json!("fixture-"));
    }
    obj
}

/// A pod with what neither rayshape nor the preview decides taken out: the API server's
/// identity and bookkeeping fields, the generated name, the binding, the status, and the
/// ServiceAccount admission plugin's token volume and mounts. Tolerations are compared as a
/// set (DefaultTolerationSeconds adds its own before or after rayshape's, depending on
/// which of the two ran first).
fn comparable(pod: &Value, generated_name: bool) -> Value {
    let mut p = pod.clone();
    let o = p.as_object_mut().expect("pod");
    o.remove("status");
    let meta = o["metadata"].as_object_mut().expect("metadata");
    for k in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
        "generation",
        "namespace",
    ] {
        meta.remove(k);
    }
    if generated_name {
        meta.remove("name");
    }
    let spec = o["spec"].as_object_mut().expect("spec");
    spec.remove("nodeName");
    let token = |v: &Value| {
        v["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kube-api-access-"))
    };
    if let Some(Value::Array(vols)) = spec.get_mut("volumes") {
        vols.retain(|v| !token(v));
    }
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(list) {
            for c in cs {
                let c = c.as_object_mut().expect("container");
                if let Some(Value::Array(m)) = c.get_mut("volumeMounts") {
                    m.retain(|v| !token(v));
                    if m.is_empty() {
                        c.remove("volumeMounts");
                    }
                }
            }
        }
    }
    if let Some(Value::Array(t)) = spec.get_mut("tolerations") {
        t.sort_by_key(Value::to_string);
    }
    p
}

/// The reason of a denial as `rayshape-webhook mutate` prints it ("denied: Pod ns/name: X").
fn preview_reason(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("denied: "))
        .unwrap_or_else(|| panic!("no denial in the preview's output: {stderr}"));
    line.split_once(": ")
        .map_or(line, |(_, reason)| reason)
        .to_string()
}

/// Service accounts the fixtures run as, in `ns`, and in kube-public for the dry runs.
fn service_accounts(c: &Cluster, pods: &[(String, Value)], ns: &str) {
    let mut names: Vec<&str> = pods
        .iter()
        .filter_map(|(_, p)| p["spec"]["serviceAccountName"].as_str())
        .filter(|n| *n != "default")
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        c.ok(&["create", "serviceaccount", name, "-n", ns], None);
        // Shared by every run: it may exist already.
        let out = c.kubectl(
            &["create", "serviceaccount", name, "-n", "kube-public"],
            None,
        );
        assert!(
            out.status.success() || text(&out.stderr).contains("already exists"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn every_pod_fixture_is_stored_as_previewed() {
    let c = Cluster::get();
    let _s = shared();
    let ns = c.namespace("admission-fixtures");
    let pods: Vec<(String, Value)> = fixtures()
        .iter()
        .map(|f| {
            (
                f.file_name().unwrap().to_string_lossy().into_owned(),
                fixture_pod(&c, f, &ns),
            )
        })
        .collect();
    service_accounts(&c, &pods, &ns);
    let (mut shaped, mut denied, mut untouched) = (0, 0, 0);
    let mut failures = Vec::new();
    for (name, pod) in &pods {
        let generated = pod["metadata"].get("name").is_none();
        let preview = c.preview(pod);
        let created = c.kubectl(&["create", "-f", "-", "-o", "json"], Some(&pod.to_string()));
        let Some(previewed) = preview.object else {
            // Denied by the preview: the real API server refuses it with rayshape's message.
            let reason = preview_reason(&preview.stderr);
            let err = text(&created.stderr);
            if created.status.success() {
                failures.push(format!(
                    "{name}: the preview denies it ({reason}) but the API server created it"
                ));
            } else if !err.contains(&format!("denied the request: rayshape: {reason}")) {
                failures.push(format!(
                    "{name}: kubectl's error does not carry the preview's reason {reason:?}: {err}"
                ));
            }
            denied += 1;
            continue;
        };
        if !created.status.success() {
            failures.push(format!(
                "{name}: the preview admits it but the API server refused it: {}",
                text(&created.stderr)
            ));
            continue;
        }
        let stored: Value = serde_json::from_slice(&created.stdout).expect("created pod as JSON");
        if previewed == *pod {
            untouched += 1;
        } else {
            shaped += 1;
        }
        // What the API server makes of the previewed pod without the webhook: a server-side
        // dry run in kube-public, which the registration leaves out. Its defaults and
        // in-tree admission plugins are the ones the stored pod went through.
        let mut elsewhere = previewed.clone();
        elsewhere["metadata"]["namespace"] = json!("kube-public");
        let defaulted = c.kubectl(
            &["create", "--dry-run=server", "-f", "-", "-o", "json"],
            Some(&elsewhere.to_string()),
        );
        if !defaulted.status.success() {
            failures.push(format!(
                "{name}: the API server refuses the previewed pod: {}",
                text(&defaulted.stderr)
            ));
            continue;
        }
        let defaulted: Value = serde_json::from_slice(&defaulted.stdout).expect("dry run JSON");
        let (want, got) = (
            comparable(&defaulted, generated),
            comparable(&stored, generated),
        );
        if want != got {
            failures.push(format!(
                "{name}: stored pod differs from the preview (preview != stored):\n    {}",
                differences(&want, &got, 20).join("\n    ")
            ));
        }
        // The stored pod is a fixed point: shaping it again changes nothing.
        let again = c.preview(&stored);
        if again.object.as_ref() != Some(&stored) {
            failures.push(format!(
                "{name}: shaping the stored pod again changes it: {:?}",
                again
                    .object
                    .as_ref()
                    .map(|o| differences(&stored, o, 10))
                    .unwrap_or_else(|| vec![again.stderr.clone()])
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The fixtures cover all three outcomes.
    assert!(
        shaped >= 8 && denied >= 2 && untouched >= 1,
        "shaped {shaped}, denied {denied}, untouched {untouched}"
    );
}

/// A Ray pod asking for `instance_type`, with `containers`.
fn ray_pod(name: &str, instance_type: &str, extra: Value) -> Value {
    let mut containers = vec![json!({"name": "ray", "image": "rayproject/ray:2.52.0",
        "command": ["/bin/bash", "-c", "--"], "args": ["ray start --address=head:6379 --block"]})];
    if let Value::Array(more) = extra {
        containers.extend(more);
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"rayshape.io/instance-type": instance_type}},
        "spec": {"containers": containers}})
}

#[test]
fn denials_reach_kubectl_with_rayshapes_message() {
    let c = Cluster::get();
    let _s = shared();
    let ns = c.namespace("admission-denied");
    let known = c.preview(&ray_pod("x", "no-such-type", json!([])));
    assert!(known.object.is_none());
    // An unknown type: named, with the known ones.
    let out = c.kubectl(
        &["create", "-n", &ns, "-f", "-"],
        Some(&ray_pod("typo", "8CPU-32G", json!([])).to_string()),
    );
    let err = text(&out.stderr);
    assert!(!out.status.success(), "created: {}", text(&out.stdout));
    assert!(
        err.contains(r#"admission webhook "typed-pods.rayshape.io" denied the request: rayshape: unknown instance type "8CPU-32G""#)
            && err.contains("known instance types: ")
            && err.contains("2CPU-8GB"),
        "{err}"
    );
    // A type too small for what the other containers take: the shape and every taker named.
    let crowded = ray_pod(
        "crowded",
        "2CPU-8GB",
        json!([{"name": "cache", "image": "redis:7", "resources": {"limits": {"cpu": "500m", "memory": "8Gi"}}}]),
    );
    let out = c.kubectl(
        &["create", "-n", &ns, "-f", "-"],
        Some(&crowded.to_string()),
    );
    let err = text(&out.stderr);
    assert!(!out.status.success(), "created: {}", text(&out.stdout));
    assert!(
        err.contains("denied the request: rayshape: instance type 2CPU-8GB (cpu 2, memory 8Gi) leaves no memory for Ray container \"ray\"")
            && err.contains("cache 8Gi"),
        "{err}"
    );
    // Neither was stored.
    assert_eq!(
        c.ok(&["get", "pods", "-n", &ns, "-o", "name"], None).trim(),
        ""
    );
}

/// `n` ordinary pods (no Ray label of any kind), as one List.
fn plain_pods(n: usize) -> Value {
    let items: Vec<Value> = (0..n)
        .map(|i| {
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("plain-{i}"), "labels": {"app": "web", "tier": format!("t{i}")}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}})
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

#[test]
fn pods_that_are_not_ray_pods_never_reach_the_webhook() {
    let c = Cluster::get();
    // The request counter is the whole webhook's: nothing else may admit meanwhile.
    let _x = exclusive();
    let ns = c.namespace("admission-plain");
    let before = c.admissions(None, None, None);
    c.ok(
        &["create", "-n", &ns, "-f", "-"],
        Some(&plain_pods(50).to_string()),
    );
    let stored = c.json(&["get", "pods", "-n", &ns]);
    let items = stored["items"].as_array().expect("pods");
    assert_eq!(items.len(), 50);
    for p in items {
        assert!(
            p["metadata"]["annotations"]
                .get("rayshape.io/shaped")
                .is_none()
                && p["spec"].get("initContainers").is_none(),
            "an ordinary pod was shaped: {p}"
        );
    }
    assert_eq!(
        c.admissions(None, None, None),
        before,
        "the webhook was asked about ordinary pods"
    );
    // The counter does count: one Ray pod moves it.
    c.ok(
        &["create", "-n", &ns, "-f", "-"],
        Some(&ray_pod("ray", "2CPU-8GB", json!([])).to_string()),
    );
    assert!(c.admissions(Some("Pod"), Some("CREATE"), None) > 0.0);
    assert!(c.admissions(None, None, None) > before);
}

/// The `failurePolicy` of each webhook of the registration, by name.
fn failure_policies(c: &Cluster) -> Vec<(String, String)> {
    let reg = c.json(&["get", "mutatingwebhookconfiguration", "rayshape"]);
    reg["webhooks"]
        .as_array()
        .expect("webhooks")
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap_or_default().to_string(),
                w["failurePolicy"].as_str().unwrap_or("Fail").to_string(),
            )
        })
        .collect()
}

#[test]
fn while_the_webhook_is_down_ordinary_pods_are_created_and_ray_pods_follow_the_failure_policy() {
    let c = Cluster::get();
    let _x = exclusive();
    let ns = c.namespace("admission-outage");
    let policies = failure_policies(&c);
    let policy = |name: &str| {
        policies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("no webhook {name} in {policies:?}"))
    };
    // KubeRay's pods and other typed pods go to two webhooks of the registration.
    let kuberay = {
        let mut p = ray_pod("kuberay-worker", "2CPU-8GB", json!([]));
        p["metadata"]["labels"] =
            json!({"ray.io/node-type": "worker", "ray.io/cluster": "rc", "ray.io/group": "g"});
        p
    };
    let cases = [
        (
            "typed-pods.rayshape.io",
            ray_pod("typed", "2CPU-8GB", json!([])),
        ),
        ("kuberay-pods.rayshape.io", kuberay),
    ];
    c.stop_webhook();
    let outcome = std::panic::catch_unwind(|| {
        // Not a Ray pod: never sent to the webhook, so its outage does not matter.
        c.ok(
            &["create", "-n", &ns, "-f", "-"],
            Some(&plain_pods(3).to_string()),
        );
        for (webhook, pod) in &cases {
            let out = c.kubectl(
                &["create", "-n", &ns, "-f", "-", "-o", "json"],
                Some(&pod.to_string()),
            );
            match policy(webhook).as_str() {
                "Fail" => {
                    let err = text(&out.stderr);
                    assert!(!out.status.success(), "{webhook}: created while down");
                    assert!(
                        err.contains(&format!(
                            "Internal error occurred: failed calling webhook \"{webhook}\""
                        )),
                        "{webhook}: {err}"
                    );
                }
                "Ignore" => {
                    assert!(out.status.success(), "{}", text(&out.stderr));
                    let stored: Value = serde_json::from_slice(&out.stdout).unwrap();
                    assert!(
                        stored["metadata"]["annotations"]
                            .get("rayshape.io/shaped")
                            .is_none()
                    );
                }
                p => panic!("{webhook}: unknown failurePolicy {p}"),
            }
        }
    });
    c.start_webhook();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
    // Back: the same pods are shaped again (named anew, in case Ignore let them in).
    wait_until(
        Duration::from_secs(20),
        "Ray pods to be shaped again",
        || {
            let mut p = cases[0].1.clone();
            p["metadata"]["name"] = json!(format!(
                "typed-after-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis()
            ));
            let out = c.kubectl(
                &["create", "-n", &ns, "-f", "-", "-o", "json"],
                Some(&p.to_string()),
            );
            out.status.success()
                && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|s| {
                    s["metadata"]["annotations"]
                        .get("rayshape.io/shaped")
                        .is_some()
                })
        },
    );
}

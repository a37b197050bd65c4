//! Identity bootstrap against the real API server: tokens minted by TokenRequest for real
//! pods, a real TokenReview and pod lookup by the webhook running as its own
//! ServiceAccount with only `tokenreviews: create`, `pods: get`, `events: create`, and real
//! Events.

use rayshape_e2e::{Cluster, exclusive, shared, text, wait_until};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

/// A bootstrap call as a sidecar makes it: status, body, and the Retry-After header.
fn bootstrap(c: &Cluster, token: &str, body: &str) -> (u16, Value, Option<String>) {
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-X", "POST", "--cacert"])
        .arg(&c.ca)
        .args([
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ])
        .arg(format!("{}/v1/bootstrap", c.webhook_url))
        .output()
        .expect("curl runs");
    let all = text(&out.stdout);
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let retry = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("retry-after:")
            .map(|v| v.trim().to_string())
    });
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::Null),
        retry,
    )
}

/// A Ray pod that the webhook shapes, running as `sa`; its UID.
fn ray_pod(c: &Cluster, ns: &str, name: &str, sa: &str) -> String {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"rayshape.io/instance-type": "2CPU-8GB"}},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "ray", "image": "rayproject/ray:2.52.0", "args": ["ray start --block"]}]}});
    c.ok(
        &["create", "-f", "-", "-o", "jsonpath={.metadata.uid}"],
        Some(&pod.to_string()),
    )
}

/// Bootstrap with `token`, which must be refused 403 with a reason saying `words`.
fn refused_saying(c: &Cluster, token: &str, words: &str) {
    let (status, body, _) = bootstrap(c, token, "{}");
    assert_eq!(status, 403, "{body}");
    assert!(
        body["reason"].as_str().unwrap_or("").contains(words),
        "{body}"
    );
}

/// The notes of the bootstrap Events on a pod.
fn events(c: &Cluster, ns: &str, pod: &str, reason: &str) -> Vec<String> {
    let list = c.json(&["get", "events.events.k8s.io", "-n", ns]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["regarding"]["name"] == pod && e["reason"] == reason)
        .filter_map(|e| e["note"].as_str().map(str::to_string))
        .collect()
}

fn expect_event(c: &Cluster, ns: &str, pod: &str, reason: &str, containing: &str) {
    wait_until(
        Duration::from_secs(10),
        &format!("a {reason} Event on {ns}/{pod} saying {containing:?}"),
        || {
            events(c, ns, pod, reason)
                .iter()
                .any(|n| n.contains(containing))
        },
    );
}

fn sa(c: &Cluster, ns: &str, name: &str) {
    c.ok(&["create", "serviceaccount", name, "-n", ns], None);
}

#[test]
fn a_shaped_pod_gets_its_configuration_and_a_verified_event() {
    let c = Cluster::get();
    let _s = shared();
    let ns = c.namespace("bootstrap-ok");
    sa(&c, &ns, "ray");
    let uid = ray_pod(&c, &ns, "ray-1", "ray");
    let t = c.token(&ns, "ray", "rayshape.io", Some(("ray-1", &uid)));
    // The body claims another pod: ignored.
    let (status, body, _) = bootstrap(
        &c,
        &t,
        r#"{"identity": {"namespace": "kube-system", "pod": "other"}}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["identity"]["namespace"], ns);
    assert_eq!(body["identity"]["pod"], "ray-1");
    assert_eq!(body["identity"]["podUid"], uid.as_str());
    assert_eq!(body["identity"]["serviceAccount"], "ray");
    assert_eq!(body["keyPrefix"], format!("{ns}/none/ray-1-{uid}"));
    expect_event(&c, &ns, "ray-1", "BootstrapVerified", "sidecar verified");
    // Asked again (as a sidecar without a sink does for as long as it has none), the same
    // outcome is not recorded again.
    for _ in 0..2 {
        assert_eq!(bootstrap(&c, &t, "{}").0, 200);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        events(&c, &ns, "ray-1", "BootstrapVerified").len(),
        1,
        "one Event per outcome"
    );
    // Tokens appear nowhere: not in Events, not in the webhook's log or metrics.
    let all_events = c.ok(
        &["get", "events.events.k8s.io", "-n", &ns, "-o", "yaml"],
        None,
    );
    let log = std::fs::read_to_string(c.dir.join("logs/rayshape-webhook.log")).unwrap_or_default();
    for place in [&all_events, &log, &c.webhook_metrics()] {
        assert!(!place.contains(&t), "the token leaked");
        assert!(
            !place.contains(t.split('.').nth(1).unwrap_or("-")),
            "the token's payload leaked"
        );
    }
}

#[test]
fn every_refusal_says_why_and_is_recorded() {
    let c = Cluster::get();
    let _s = shared();
    let ns = c.namespace("bootstrap-refused");
    sa(&c, &ns, "ray");
    let uid = ray_pod(&c, &ns, "ray-1", "ray");

    // Another audience.
    let t = c.token(&ns, "ray", "vault", Some(("ray-1", &uid)));
    let (status, body, _) = bootstrap(&c, &t, "{}");
    assert_eq!(status, 401, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("not authenticated"),
        "{body}"
    );
    // The API server's own words go to the webhook's log, not to an unauthenticated caller.
    assert!(
        !body["reason"].as_str().unwrap().contains("audience"),
        "{body}"
    );
    // No Event for it: what an unverified token claims is the caller's word, and an Event
    // on the pod it names would let anyone write warnings on any pod.

    // Not a service-account token at all.
    let (status, body, _) = bootstrap(&c, "not-a-token", "{}");
    assert_eq!(status, 401, "{body}");

    // A service-account token bound to no pod.
    let t = c.token(&ns, "ray", "rayshape.io", None);
    refused_saying(&c, &t, "not bound to a pod");

    // A pod that did not go through the webhook (not a Ray pod, so never sent to it).
    let plain = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain", "namespace": ns},
        "spec": {"serviceAccountName": "ray", "containers": [{"name": "c", "image": "busybox"}]}});
    let plain_uid = c.ok(
        &["create", "-f", "-", "-o", "jsonpath={.metadata.uid}"],
        Some(&plain.to_string()),
    );
    let t = c.token(&ns, "ray", "rayshape.io", Some(("plain", &plain_uid)));
    let (status, body, _) = bootstrap(&c, &t, "{}");
    assert_eq!(status, 403, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("was not shaped"),
        "{body}"
    );
    expect_event(&c, &ns, "plain", "BootstrapRefused", "was not shaped");
    // Recorded in order, so by now the refused token's Event would be there too.
    assert_eq!(
        events(&c, &ns, "ray-1", "BootstrapRefused"),
        Vec::<String>::new(),
        "an Event on the pod an unverified token claims"
    );

    // A pod since deleted: its token is invalidated.
    let gone_uid = ray_pod(&c, &ns, "gone", "ray");
    let t = c.token(&ns, "ray", "rayshape.io", Some(("gone", &gone_uid)));
    c.ok(
        &[
            "delete",
            "pod",
            "gone",
            "-n",
            &ns,
            "--grace-period=0",
            "--force",
        ],
        None,
    );
    wait_until(
        Duration::from_secs(20),
        "the deleted pod's token to be refused",
        || bootstrap(&c, &t, "{}").0 == 401,
    );

    // A pod deleted and recreated under the same name: the old token is not the new pod's.
    let old_uid = ray_pod(&c, &ns, "again", "ray");
    let t = c.token(&ns, "ray", "rayshape.io", Some(("again", &old_uid)));
    c.ok(
        &[
            "delete",
            "pod",
            "again",
            "-n",
            &ns,
            "--grace-period=0",
            "--force",
        ],
        None,
    );
    let new_uid = ray_pod(&c, &ns, "again", "ray");
    assert_ne!(old_uid, new_uid);
    wait_until(
        Duration::from_secs(20),
        "the old pod's token to be refused",
        || matches!(bootstrap(&c, &t, "{}").0, 401 | 403),
    );

    // A pod being deleted (a finalizer holds it).
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "leaving", "namespace": ns, "finalizers": ["example.com/hold"], "labels": {"rayshape.io/instance-type": "2CPU-8GB"}},
        "spec": {"serviceAccountName": "ray", "containers": [{"name": "ray", "image": "rayproject/ray:2.52.0"}]}});
    let leaving_uid = c.ok(
        &["create", "-f", "-", "-o", "jsonpath={.metadata.uid}"],
        Some(&pod.to_string()),
    );
    let t = c.token(&ns, "ray", "rayshape.io", Some(("leaving", &leaving_uid)));
    c.ok(
        &["delete", "pod", "leaving", "-n", &ns, "--wait=false"],
        None,
    );
    refused_saying(&c, &t, "is being deleted");
    expect_event(&c, &ns, "leaving", "BootstrapRefused", "is being deleted");
    c.ok(
        &[
            "patch",
            "pod",
            "leaving",
            "-n",
            &ns,
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
        None,
    );
}

#[test]
fn allow_lists_are_enforced() {
    let c = Cluster::get();
    let _x = exclusive();
    let ns = c.namespace("bootstrap-allow");
    sa(&c, &ns, "ray");
    sa(&c, &ns, "other");
    let uid = ray_pod(&c, &ns, "ray-1", "ray");
    let other_uid = ray_pod(&c, &ns, "other-1", "other");
    let t = c.token(&ns, "ray", "rayshape.io", Some(("ray-1", &uid)));
    let t_other = c.token(&ns, "other", "rayshape.io", Some(("other-1", &other_uid)));
    c.set_webhook_settings(&format!(
        "{}bootstrap:\n  namespaces: [somewhere-else]\n  cacheSeconds: 0\n",
        c.default_settings()
    ));
    refused_saying(&c, &t, "bootstrap.namespaces");
    expect_event(&c, &ns, "ray-1", "BootstrapRefused", "may not bootstrap");
    c.set_webhook_settings(&format!(
        "{}bootstrap:\n  serviceAccounts: [{ns}/ray]\n  cacheSeconds: 0\n",
        c.default_settings()
    ));
    assert_eq!(bootstrap(&c, &t, "{}").0, 200);
    // A namespace whose pods the webhook does not shape: a pod there that carries the
    // `shaped` annotation (anyone may write it) gets nothing, allow-list or not.
    c.set_webhook_settings(&format!(
        "{}namespaces:\n  exclude: [kube-system, kube-public, kube-node-lease, {ns}]\nbootstrap:\n  namespaces: [{ns}]\n  cacheSeconds: 0\n",
        c.default_settings()
    ));
    refused_saying(&c, &t, "not one whose pods the webhook shapes");
    c.set_webhook_settings(&format!(
        "{}bootstrap:\n  serviceAccounts: [{ns}/ray]\n  cacheSeconds: 0\n",
        c.default_settings()
    ));
    refused_saying(&c, &t_other, "bootstrap.serviceAccounts");
    c.set_webhook_settings(&c.default_settings());
}

#[test]
fn a_missing_permission_is_named() {
    let c = Cluster::get();
    let _x = exclusive();
    let ns = c.namespace("bootstrap-rbac");
    sa(&c, &ns, "ray");
    let uid = ray_pod(&c, &ns, "ray-1", "ray");
    let t = c.token(&ns, "ray", "rayshape.io", Some(("ray-1", &uid)));
    let role = c.json(&["get", "clusterrole", "rayshape-webhook"]);
    // Take `get pods` away.
    let fewer: Vec<Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resources"] != json!(["pods"]))
        .cloned()
        .collect();
    assert_eq!(fewer.len(), 2, "{role}");
    let patch = json!([{"op": "replace", "path": "/rules", "value": fewer}]).to_string();
    c.ok(
        &[
            "patch",
            "clusterrole",
            "rayshape-webhook",
            "--type=json",
            "-p",
            &patch,
        ],
        None,
    );
    let result = std::panic::catch_unwind(|| {
        wait_until(
            Duration::from_secs(15),
            "the missing permission to be reported",
            || {
                let (status, body, retry) = bootstrap(&c, &t, "{}");
                status == 503
                    && retry.is_some()
                    && body["reason"]
                        .as_str()
                        .unwrap_or("")
                        .contains("may not get pods")
            },
        );
    });
    let restore = json!([{"op": "replace", "path": "/rules", "value": role["rules"]}]).to_string();
    c.ok(
        &[
            "patch",
            "clusterrole",
            "rayshape-webhook",
            "--type=json",
            "-p",
            &restore,
        ],
        None,
    );
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    wait_until(Duration::from_secs(15), "bootstrap to work again", || {
        bootstrap(&c, &t, "{}").0 == 200
    });
}

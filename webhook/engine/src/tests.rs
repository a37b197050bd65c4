//! The whole pipeline on small objects: what the stages do together.

use super::*;
use crate::config::Sources;
use rayshape_json::json;

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
    let out = shape(&ray_pod(), None, &cfg(rules)).unwrap();
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
    let e = shape(&ray_pod(), None, &cfg(&strict)).unwrap_err();
    assert!(
        e.message
            .contains("rule patches.yaml#0 (half) failed: test /spec/nodeSelector/k"),
        "{e}"
    );
}

#[test]
fn rules_cannot_break_kuberay() {
    let e = shape(&ray_pod(), None, &cfg("patches:\n- patch: [{op: replace, path: /metadata/labels/ray.io~1cluster, value: other}]\n")).unwrap_err();
    assert!(e.message.contains("ray.io/cluster"), "{e}");
    let e = shape(
        &ray_pod(),
        None,
        &cfg("patches:\n- patch: [{op: remove, path: /spec/containers/0}]\n"),
    )
    .unwrap_err();
    assert!(e.message.contains("ray, side became side"), "{e}");
    let ok = shape(&ray_pod(), None, &cfg("patches:\n- patch: [{op: add, path: /spec/containers/-, value: {name: extra, image: x}}]\n")).unwrap();
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
    let f = plan::sizing::kuberay_flags(&ray);
    let flag = |k: &str| f.get(k).copied().unwrap();
    let resources = sized["spec"]["workerGroupSpecs"][0]["rayStartParams"]["resources"]
        .as_str()
        .unwrap();
    ray["args"] = json!([format!(
        "ulimit -n 65536; ray start  --address=h:6379  --block  --memory={}  --num-cpus={}  --num-gpus={}  --resources={resources} ",
        flag("memory"),
        flag("CPU"),
        flag("GPU")
    )]);
    ray["volumeMounts"] = json!([{"name": "shared-mem", "mountPath": "/dev/shm"}]);
    let limit = ray["resources"]["limits"]["memory"].clone();
    // KubeRay copies the template's labels and annotations onto the pod.
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"labels": {"ray.io/node-type": "worker", "ray.io/cluster": "c", "rayshape.io/instance-type": "8CPU-32GB-1xT4"},
                "annotations": template["metadata"]["annotations"].clone()},
            "spec": {"containers": [ray], "volumes": [{"name": "shared-mem", "emptyDir": {"medium": "Memory", "sizeLimit": limit}}]}});
    assert_eq!(
        pod["metadata"]["annotations"]["rayshape.io/sized-for"],
        json!(format!(
            "8CPU-32GB-1xT4@{}",
            cfg.instance_types["8CPU-32GB-1xT4"].sizing
        ))
    );
    let out = shape(&pod, None, &cfg).unwrap();
    let c = &out.object["spec"]["containers"][0];
    assert_eq!(
        c["resources"], pod["spec"]["containers"][0]["resources"],
        "same shape as the template"
    );
    assert_eq!(
        primitives::pod::env_value(c, plan::rayview::OVERRIDE_ENV),
        None,
        "the template gave Ray the accelerator in rayStartParams: nothing to correct"
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

    // The admin changes the type; the RayCluster keeps its shape (the autoscaler plans from
    // it), and so do the group's new pods, with a warning that says how to move.
    let bigger = Config::from_sources(&Sources {
        instance_types: Some(
            "8CPU-32GB-1xT4:\n  resources: {CPU: 8, GPU: 1, memory: 48Gi, accelerators: [T4]}\n  nodeSelector: {pool: t4}\n4CPU-16GB:\n  resources: {CPU: 4, memory: 16Gi}\n"
                .into(),
        ),
        ..Default::default()
    })
    .unwrap();
    let out = shape(&pod, None, &bigger).unwrap();
    let c = &out.object["spec"]["containers"][0];
    assert_eq!(c["resources"], pod["spec"]["containers"][0]["resources"]);
    assert_eq!(
        primitives::pod::env_value(c, plan::rayview::OVERRIDE_ENV),
        None
    );
    assert!(
        out.warnings.iter().any(|w| w
            == "kept the sizing of its group's template, made before 8CPU-32GB-1xT4 changed; change the group to resize"),
        "{:?}",
        out.warnings
    );
    assert_eq!(
        out.object["spec"]["nodeSelector"]["pool"],
        json!("t4"),
        "placement still follows the current configuration"
    );
    let why = explain::explain(&pod, None, &bigger);
    assert!(
        why["containers"]
            .as_str()
            .unwrap()
            .contains("keeps the sizing of its group's template"),
        "{why:#}"
    );

    // A stamp for another type (the pod's own label changed) does not keep anything.
    let mut relabelled = pod.clone();
    relabelled["metadata"]["labels"]["rayshape.io/instance-type"] = json!("4CPU-16GB");
    let out = shape(&relabelled, None, &bigger).unwrap();
    assert_eq!(
        out.object["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        json!("3900m"),
        "4 CPUs, less the sidecar's"
    );
    // Nor does a pod created without one.
    let mut unstamped = pod.clone();
    unstamped["metadata"]["annotations"] = json!({});
    let out = shape(&unstamped, None, &bigger).unwrap();
    assert_ne!(
        out.object["spec"]["containers"][0]["resources"],
        pod["spec"]["containers"][0]["resources"]
    );
    let kept = |w: &Vec<String>| w.iter().any(|w| w.starts_with("kept the sizing"));
    assert!(!kept(&out.warnings), "{:?}", out.warnings);
    // Nor does a pod KubeRay did not make from a template: the stamp is no way around sizing.
    let mut plain = pod.clone();
    plain["metadata"]["labels"] = json!({"rayshape.io/instance-type": "8CPU-32GB-1xT4"});
    let out = shape(&plain, None, &bigger).unwrap();
    assert_ne!(
        out.object["spec"]["containers"][0]["resources"],
        pod["spec"]["containers"][0]["resources"]
    );
    assert!(!kept(&out.warnings), "{:?}", out.warnings);
    // A change of the type's placement alone leaves its shape: nothing to keep or to say.
    let moved = Config::from_sources(&Sources {
        instance_types: Some(
            "8CPU-32GB-1xT4:\n  resources: {CPU: 8, GPU: 1, memory: 32Gi, accelerators: [T4]}\n  nodeSelector: {pool: t4}\n"
                .into(),
        ),
        ..Default::default()
    })
    .unwrap();
    let out = shape(&pod, None, &moved).unwrap();
    assert_eq!(
        out.object["spec"]["containers"][0]["resources"],
        pod["spec"]["containers"][0]["resources"]
    );
    assert_eq!(out.object["spec"]["nodeSelector"]["pool"], json!("t4"));
    assert!(!kept(&out.warnings), "{:?}", out.warnings);
}

#[test]
fn vocabulary_is_checked() {
    let mut p = ray_pod();
    p["metadata"]["labels"]["rayshape.io/market-type"] = json!("CHEAP");
    let e = shape(&p, None, &Config::builtin()).unwrap_err();
    assert!(
        e.message.contains("accepted: ON_DEMAND, SPOT, PREFER_SPOT"),
        "{e}"
    );
    let mut p = ray_pod();
    p["metadata"]["labels"]["rayshape.io/zone"] = json!("-bad-");
    assert!(
        shape(&p, None, &Config::builtin())
            .unwrap_err()
            .message
            .contains("zone")
    );
}

fn review(op: &str, object: Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
               "request": {"uid": "u-1", "operation": op, "namespace": "ns", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "object": object}})
}

#[test]
fn malformed_reviews() {
    let cfg = Config::builtin();
    assert_eq!(
        decide(&json!({"apiVersion": "v1"}), &cfg).unwrap_err(),
        ReviewError::ApiVersion("v1".into())
    );
    assert_eq!(
        decide(
            &json!({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}),
            &cfg
        )
        .unwrap_err(),
        ReviewError::Kind("Pod".into())
    );
    assert_eq!(
        decide(
            &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
            &cfg
        )
        .unwrap_err(),
        ReviewError::NoRequest
    );
    let mut r = review("CREATE", json!({}));
    r["request"]["object"] = Value::Null;
    assert!(matches!(decide(&r, &cfg), Err(ReviewError::NoObject(_))));
}

#[test]
fn non_ray_and_updates_pass_with_no_patch() {
    let cfg = Config::builtin();
    let plain = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [{"name": "a", "image": "b"}]}});
    let d = decide(&review("CREATE", plain), &cfg).unwrap();
    let resp = d.response();
    assert_eq!(resp["response"], json!({"uid": "u-1", "allowed": true}));
    let ray = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"ray.io/node-type": "head"}}, "spec": {"containers": [{"name": "a"}]}});
    let d = decide(&review("UPDATE", ray.clone()), &cfg).unwrap();
    assert_eq!(
        d.response()["response"],
        json!({"uid": "u-1", "allowed": true})
    );
    let d = decide(&review("CREATE", ray), &cfg).unwrap();
    assert_eq!(d.result_label(), "shaped");
    assert_eq!(d.response()["response"]["patchType"], "JSONPatch");
}

#[test]
fn denial_has_status() {
    let cfg = Config::builtin();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"rayshape.io/instance-type": "nope"}}, "spec": {"containers": [{"name": "a"}]}});
    let d = decide(&review("CREATE", pod), &cfg).unwrap();
    let r = d.response();
    assert_eq!(r["response"]["allowed"], false);
    assert_eq!(r["response"]["status"]["code"], 403);
    assert!(
        r["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("known instance types: 2CPU-8GB")
    );
}

/// Custom resources reach mutating admission before schema validation: malformed group
/// templates are denied with the place, never a panic.
#[test]
fn malformed_kuberay_objects_are_denied_not_panicked_on() {
    let cfg = Config::builtin();
    let rc = json!({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"},
        "spec": {"headGroupSpec": {"template": {"metadata": {"labels": {"rayshape.io/instance-type": "2CPU-8GB"}},
                                                 "spec": {"containers": [1]}}}}});
    let e = shape(&rc, None, &cfg).unwrap_err();
    assert!(
        e.message
            .starts_with("group head: template.spec.containers[0] is not an object"),
        "{e}"
    );
    let odd = json!({"apiVersion": "ray.io/v1", "kind": "RayCluster",
        "spec": {"headGroupSpec": 3, "workerGroupSpecs": [1, {"template": 5},
            {"template": {"metadata": {"labels": {"rayshape.io/instance-type": "2CPU-8GB"}}, "spec": {"containers": 7}}}]}});
    let e = shape(&odd, None, &cfg).unwrap_err();
    assert!(
        e.message
            .contains("group workerGroupSpecs[2]: the template has no containers"),
        "{e}"
    );
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"ray.io/node-type": "worker"}},
        "spec": {"containers": [1]}});
    assert!(shape(&pod, None, &cfg).is_err());
}

/// The server writes the response directly; it must be the response's own JSON.
#[test]
fn response_bytes_are_the_response() {
    let cfg = Config::builtin();
    for obj in [
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"rayshape.io/instance-type": "8CPU-32GB-1xT4"}}, "spec": {"containers": [{"name": "a", "args": ["ray start"], "resources": {"limits": {"cpu": "9"}}}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"rayshape.io/instance-type": "no\"pe"}}, "spec": {"containers": [{"name": "a"}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {"containers": [{"name": "a"}]}}),
    ] {
        let d = decide(&review("CREATE", obj), &cfg).unwrap();
        assert_eq!(
            String::from_utf8(d.response_bytes()).unwrap(),
            serde_json::to_string(&d.response()).unwrap()
        );
        // The patch's base64 as an independent decoder reads it.
        if let crate::review::Outcome::Allowed { patch, ops, .. } = &d.outcome
            && *ops > 0
        {
            use base64::Engine;
            let sent: serde_json::Value = serde_json::from_slice(&d.response_bytes()).unwrap();
            let text = sent["response"]["patch"].as_str().unwrap();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap();
            assert_eq!(&decoded, patch);
        }
    }
}

/// A rule that sets `RAY_OVERRIDE_RESOURCES` again: the pod keeps one entry, the value the
/// kubelet would have used with Ray's corrections added, and shaping it again changes
/// nothing (the rule's append is not equal to the merged entry, so it runs every time).
#[test]
fn one_ray_override_however_often_it_is_set() {
    let cfg = cfg(
        "patches:\n- name: site\n  patch:\n  - {op: add, path: '/spec/containers/[ray]/env/-', value: {name: RAY_OVERRIDE_RESOURCES, value: '{\"site\":1}'}}\n",
    );
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"labels": {"ray.io/node-type": "worker", "ray.io/cluster": "c", "rayshape.io/instance-type": "8CPU-32GB-1xT4"}},
        "spec": {"containers": [{"name": "ray", "image": "ray", "args": ["ray start --address=h:6379 --num-cpus=2"],
            "env": [{"name": "A", "value": "1"}, {"name": "RAY_OVERRIDE_RESOURCES", "value": "{\"mine\":2}"}, {"name": "B", "value": "2"}]}]}});
    let out = shape(&pod, None, &cfg).unwrap();
    let env = out.object["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = env.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["A", "RAY_OVERRIDE_RESOURCES", "B"], "{env:?}");
    let value: Value = serde_json::from_str(env[1]["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        value["site"],
        json!(1),
        "the last entry, which the kubelet uses"
    );
    assert_eq!(value.get("mine"), None, "{value}");
    assert_eq!(value["accelerator_type:T4"], json!(1), "{value}");
    assert!(
        out.warnings
            .iter()
            .any(|w| w
                == "RAY_OVERRIDE_RESOURCES was set 2 times: kept the last, which Kubernetes uses"),
        "{:?}",
        out.warnings
    );
    let again = shape(&out.object, None, &cfg).unwrap();
    assert_eq!(again.object, out.object);
}

/// Ray told to claim GPUs the pod does not get cannot work: denied with the fix, on the pod
/// path as on a RayCluster's group. KubeRay's own flag from replaced limits is corrected.
#[test]
fn a_pods_own_gpu_claim_beyond_its_type_is_denied() {
    let cfg = Config::builtin();
    let pod = |args: &str, env: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"labels": {"ray.io/node-type": "worker", "ray.io/cluster": "c", "rayshape.io/instance-type": "8CPU-32GB-1xT4"}},
            "spec": {"containers": [{"name": "ray", "image": "ray", "args": [args], "env": env}]}})
    };
    let e = shape(
        &pod("ray start --address=h:6379 --num-gpus=4", json!([])),
        None,
        &cfg,
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "Ray container \"ray\": --num-gpus=4 makes Ray claim 4 GPUs, but instance type 8CPU-32GB-1xT4 gives 1; remove it (Ray then counts the GPUs the pod gets) or choose a type with 4 GPUs"
    );
    let e = shape(
        &pod(
            "ray start --address=h:6379",
            json!([{"name": "RAY_OVERRIDE_RESOURCES", "value": "{\"GPU\": 2}"}]),
        ),
        None,
        &cfg,
    )
    .unwrap_err();
    assert!(
        e.message.starts_with(
            "Ray container \"ray\": RAY_OVERRIDE_RESOURCES GPU=2 makes Ray claim 2 GPUs"
        ),
        "{e}"
    );
    // As many or fewer: the user's choice.
    for args in [
        "ray start --address=h:6379 --num-gpus=1",
        "ray start --address=h:6379 --num-gpus=0",
    ] {
        shape(&pod(args, json!([])), None, &cfg).unwrap();
    }
    // KubeRay derived `--num-gpus=4` from the 4 GPUs the container asked for; the type
    // gives 1, and Ray is told so.
    let mut kuberay = pod("ray start --address=h:6379 --num-gpus=4", json!([]));
    kuberay["spec"]["containers"][0]["resources"] = json!({"limits": {"nvidia.com/gpu": "4"}});
    let out = shape(&kuberay, None, &cfg).unwrap();
    let c = &out.object["spec"]["containers"][0];
    let view: Value =
        serde_json::from_str(primitives::pod::env_value(c, plan::rayview::OVERRIDE_ENV).unwrap())
            .unwrap();
    assert_eq!(view["GPU"], json!(1), "{view}");
}

/// A RayCluster of many groups, each warned about: the answer carries what the API server
/// passes on (a bounded number, no control characters), `shape` every warning.
#[test]
fn many_warnings_are_bounded_and_passed_on() {
    let cfg = Config::builtin();
    let groups: Vec<Value> = (0..40)
        .map(|i| {
            json!({"groupName": format!("g{i}"), "template": {
                "metadata": {"labels": {"rayshape.io/instance-type": "2CPU-8GB"}},
                "spec": {"containers": [{"name": format!("ray\t{i}"),
                    "resources": {"limits": {"cpu": "9"}}}]}}})
        })
        .collect();
    let rc = json!({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "c"},
        "spec": {"workerGroupSpecs": groups}});
    let all = shape(&rc, None, &cfg).unwrap().warnings;
    let replaced: Vec<&String> = all.iter().filter(|w| w.contains("replaced")).collect();
    assert_eq!(replaced.len(), 40, "{all:?}");
    assert!(
        replaced[0].starts_with(r"group g0: ray\t0: 2CPU-8GB replaced"),
        "{all:?}"
    );

    let mut r = review("CREATE", rc);
    r["request"]["kind"] = json!({"group": "ray.io", "version": "v1", "kind": "RayCluster"});
    let d = decide(&r, &cfg).unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&d.response_bytes()).unwrap();
    let warnings: Vec<&str> = sent["response"]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), crate::review::MAX_WARNINGS, "{warnings:?}");
    assert_eq!(warnings[..15], all[..15]);
    let more = all.len() - 15;
    assert_eq!(
        warnings[15],
        format!(
            "… and {more} more warnings: `rayshape-webhook mutate` on this object prints them all"
        )
    );
    assert!(warnings.iter().all(|w| !w.chars().any(char::is_control)));
    assert_eq!(
        String::from_utf8(d.response_bytes()).unwrap(),
        serde_json::to_string(&d.response()).unwrap()
    );
}

/// Repeats are dropped, the first kept in its place, however many warnings there are.
#[test]
fn tidy_keeps_the_first_of_each_warning() {
    for n in [3usize, 100] {
        let input: Vec<String> = (0..n).map(|i| format!("w{}", i % 7)).collect();
        let want: Vec<String> = (0..n.min(7)).map(|i| format!("w{i}")).collect();
        assert_eq!(plan::tidy(input), want);
    }
    // Past 32, repeats are found by sorting: the first of each kept, in its place.
    let input: Vec<String> = (0..200).map(|i| format!("w{}", (i * 7) % 50)).collect();
    let want: Vec<String> = (0..50).map(|i| format!("w{}", (i * 7) % 50)).collect();
    assert_eq!(plan::tidy(input), want);
    let input = vec!["b".to_string(), "a".into(), "b".into(), "x\ny".into()];
    assert_eq!(plan::tidy(input), ["b", "a", r"x\ny"]);
}

/// A KubeRay object in a namespace the webhook does not shape is left as it is, as its
/// pods are.
#[test]
fn kuberay_objects_of_unmanaged_namespaces_are_untouched() {
    let cfg = Config::from_sources(&Sources {
        settings: Some("namespaces: {include: [team-a]}\n".into()),
        ..Default::default()
    })
    .unwrap();
    let rc = |ns: &str| {
        json!({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "c", "namespace": ns},
            "spec": {"workerGroupSpecs": [{"groupName": "g", "template": {
                "metadata": {"labels": {"rayshape.io/instance-type": "2CPU-8GB"}},
                "spec": {"containers": [{"name": "ray"}]}}}]}})
    };
    let shaped = shape(&rc("team-a"), None, &cfg).unwrap();
    assert_ne!(shaped.object, rc("team-a"));
    let other = shape(&rc("team-b"), None, &cfg).unwrap();
    assert_eq!(other.object, rc("team-b"));
    assert_eq!(other.skipped, Some("namespace not managed"));
}

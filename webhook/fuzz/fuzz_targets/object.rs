//! Structurally valid AdmissionReviews (CREATE and UPDATE) whose object is arbitrary: a
//! Pod, RayCluster, RayJob or RayService built from the field names and values those
//! kinds use, in any arrangement and of any type. Answered, never a panic; an admitted
//! object's patch is valid JSON.
#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use rayshape_engine::config::{Config, Sources};
use rayshape_engine::json::{Map, Value, json};
use std::sync::LazyLock;

static CONFIGS: LazyLock<Vec<Config>> = LazyLock::new(|| {
    let rules = r#"patches:
- name: r
  selector: rayshape.io/market-type in (SPOT)
  patch:
  - {op: add, path: "/spec/containers/[ray]/env/-", value: {name: X, value: y}}
  - {op: add, path: "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/*/matchExpressions/-", value: {key: a, operator: Exists}}
- name: i
  failurePolicy: Ignore
  patch:
  - {op: test, path: /metadata/labels/x, value: y}
  - {op: copy, from: "/metadata/annotations/rayshape.io~1zone", path: "/spec/nodeSelector/topology.kubernetes.io~1zone"}
"#;
    vec![
        Config::builtin(),
        Config::from_sources(&Sources {
            patches: Some(rules.into()),
            settings: Some("profile: eks\nsidecar: {native: false}\n".into()),
            ..Default::default()
        })
        .expect("the fuzz configuration loads"),
    ]
});

const KEYS: &[&str] = &[
    "metadata",
    "labels",
    "annotations",
    "name",
    "namespace",
    "generateName",
    "spec",
    "containers",
    "initContainers",
    "image",
    "args",
    "command",
    "env",
    "value",
    "resources",
    "limits",
    "requests",
    "cpu",
    "memory",
    "nvidia.com/gpu",
    "ephemeral-storage",
    "volumeMounts",
    "mountPath",
    "volumes",
    "emptyDir",
    "medium",
    "sizeLimit",
    "restartPolicy",
    "nodeSelector",
    "tolerations",
    "affinity",
    "nodeAffinity",
    "requiredDuringSchedulingIgnoredDuringExecution",
    "nodeSelectorTerms",
    "matchExpressions",
    "headGroupSpec",
    "workerGroupSpecs",
    "groupName",
    "template",
    "rayStartParams",
    "replicas",
    "rayClusterSpec",
    "rayClusterConfig",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "historyServerOptions",
    "collectorOptions",
    "submissionMode",
    "ray.io/node-type",
    "ray.io/cluster",
    "rayshape.io/instance-type",
    "rayshape.io/market-type",
    "rayshape.io/zone",
    "rayshape.io/sidecar",
    "rayshape.io/ray-container",
    "rayshape.io/shaped",
    "gpu-fraction",
    "num-gpus",
    "num-cpus",
    "RAY_OVERRIDE_RESOURCES",
    "KUBERAY_GEN_RAY_START_CMD",
];
const STRINGS: &[&str] = &[
    "2CPU-8GB",
    "8CPU-32GB-1xT4",
    "4CPU-16GB",
    "nope",
    "SPOT",
    "PREFER_SPOT",
    "ON_DEMAND",
    "us-west-2a",
    "head",
    "worker",
    "disabled",
    "Always",
    "Memory",
    "/tmp/ray",
    "/dev/shm",
    "ray start --block --num-cpus=4 --num-gpus=1 --resources='{\"x\": 1}'",
    "100m",
    "1",
    "8Gi",
    "0.5",
    "-1",
    "1e400",
    "{\"CPU\": 2}",
    "{",
    "\"{\\\"a\\\": 1}\"",
    "SidecarMode",
    "",
    "rayshape-sidecar",
    "rayshape-token",
    "ray-history-collector",
    "autoscaler",
];

fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let pick = if depth == 0 {
        u.int_in_range(0..=4)?
    } else {
        u.int_in_range(0..=7)?
    };
    Ok(match pick {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => json!(u.arbitrary::<i64>()?),
        3 => json!(*u.choose(STRINGS)?),
        4 => json!(u.arbitrary::<String>()?),
        5 => {
            let n = u.int_in_range(0..=3)?;
            Value::Array((0..n).map(|_| value(u, depth - 1)).collect::<Result<_>>()?)
        }
        _ => {
            let n = u.int_in_range(0..=5)?;
            let mut m = Map::new();
            for _ in 0..n {
                let k = if u.ratio(1, 8)? {
                    u.arbitrary::<String>()?
                } else {
                    u.choose(KEYS)?.to_string()
                };
                m.insert(k, value(u, depth - 1)?);
            }
            Value::Object(m)
        }
    })
}

/// Most of the time `good`; sometimes anything at all, to try every type in every place.
fn or_any(
    u: &mut Unstructured<'_>,
    good: impl FnOnce(&mut Unstructured<'_>) -> Result<Value>,
) -> Result<Value> {
    if u.ratio(1, 12)? {
        value(u, 2)
    } else {
        good(u)
    }
}

fn map(
    u: &mut Unstructured<'_>,
    fields: &[(&str, &dyn Fn(&mut Unstructured<'_>) -> Result<Value>)],
) -> Result<Value> {
    let mut m = Map::new();
    for (k, f) in fields {
        if u.ratio(3, 4)? {
            m.insert(k.to_string(), or_any(u, f)?);
        }
    }
    Ok(Value::Object(m))
}

fn string(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(json!(*u.choose(STRINGS)?))
}

fn labels(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut m = Map::new();
    for k in [
        "ray.io/node-type",
        "ray.io/cluster",
        "rayshape.io/instance-type",
        "rayshape.io/market-type",
        "rayshape.io/zone",
        "rayshape.io/sidecar",
    ] {
        if u.ratio(1, 2)? {
            m.insert(k, or_any(u, string)?);
        }
    }
    Ok(Value::Object(m))
}

fn quantities(u: &mut Unstructured<'_>) -> Result<Value> {
    map(
        u,
        &[
            ("cpu", &string),
            ("memory", &string),
            ("nvidia.com/gpu", &string),
        ],
    )
}

fn container(u: &mut Unstructured<'_>) -> Result<Value> {
    map(
        u,
        &[
            ("name", &string),
            ("image", &string),
            ("args", &|u| Ok(json!([*u.choose(STRINGS)?]))),
            ("env", &|u| {
                Ok(json!([{"name": *u.choose(KEYS)?, "value": *u.choose(STRINGS)?}]))
            }),
            ("resources", &|u| {
                map(u, &[("limits", &quantities), ("requests", &quantities)])
            }),
            ("volumeMounts", &|u| {
                Ok(json!([{"name": *u.choose(STRINGS)?, "mountPath": *u.choose(STRINGS)?}]))
            }),
            ("restartPolicy", &string),
        ],
    )
}

fn list(u: &mut Unstructured<'_>, f: fn(&mut Unstructured<'_>) -> Result<Value>) -> Result<Value> {
    let n = u.int_in_range(0..=3)?;
    Ok(Value::Array(
        (0..n).map(|_| or_any(u, f)).collect::<Result<_>>()?,
    ))
}

fn pod_spec(u: &mut Unstructured<'_>) -> Result<Value> {
    map(
        u,
        &[
            ("containers", &|u| list(u, container)),
            ("initContainers", &|u| list(u, container)),
            ("volumes", &|u| {
                Ok(
                    json!([{"name": *u.choose(STRINGS)?, "emptyDir": {"medium": *u.choose(STRINGS)?, "sizeLimit": *u.choose(STRINGS)?}}]),
                )
            }),
            ("nodeSelector", &labels),
            ("tolerations", &|u| value(u, 2)),
            ("affinity", &|u| {
                Ok(
                    json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [value(u, 1)?]}]}}}),
                )
            }),
        ],
    )
}

fn meta(u: &mut Unstructured<'_>) -> Result<Value> {
    map(
        u,
        &[
            ("labels", &labels),
            ("annotations", &labels),
            ("generateName", &string),
            ("namespace", &string),
        ],
    )
}

fn group(u: &mut Unstructured<'_>) -> Result<Value> {
    map(
        u,
        &[
            ("groupName", &string),
            ("replicas", &|u| Ok(json!(u.int_in_range(0..=3)?))),
            ("rayStartParams", &|u| {
                map(
                    u,
                    &[
                        ("num-gpus", &string),
                        ("num-cpus", &string),
                        ("memory", &string),
                        ("resources", &string),
                    ],
                )
            }),
            ("labels", &labels),
            ("resources", &quantities),
            ("template", &|u| {
                map(u, &[("metadata", &meta), ("spec", &pod_spec)])
            }),
        ],
    )
}

fn cluster_spec(u: &mut Unstructured<'_>) -> Result<Value> {
    map(
        u,
        &[
            ("headGroupSpec", &group),
            ("workerGroupSpecs", &|u| list(u, group)),
            ("enableInTreeAutoscaling", &|u| {
                Ok(json!(u.arbitrary::<bool>()?))
            }),
            ("autoscalerOptions", &|u| {
                map(
                    u,
                    &[("resources", &|u| {
                        map(u, &[("limits", &quantities), ("requests", &quantities)])
                    })],
                )
            }),
            ("historyServerOptions", &|u| {
                Ok(json!({"collectorOptions": value(u, 1)?}))
            }),
        ],
    )
}

fn object(u: &mut Unstructured<'_>, kind: &str) -> Result<Value> {
    let spec = match kind {
        "Pod" => pod_spec(u)?,
        "RayCluster" => cluster_spec(u)?,
        "RayJob" => {
            json!({"rayClusterSpec": or_any(u, cluster_spec)?, "submissionMode": *u.choose(STRINGS)?})
        }
        _ => json!({"rayClusterConfig": or_any(u, cluster_spec)?}),
    };
    Ok(json!({"metadata": or_any(u, meta)?, "spec": spec}))
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((kind, api)) = u
        .choose(&[
            ("Pod", "v1"),
            ("RayCluster", "ray.io/v1"),
            ("RayJob", "ray.io/v1"),
            ("RayService", "ray.io/v1"),
        ])
        .copied()
    else {
        return;
    };
    let build = |u: &mut Unstructured<'_>| -> Result<Value> {
        let mut o = match object(u, kind)? {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        o.insert("apiVersion", json!(api));
        o.insert("kind", json!(kind));
        Ok(Value::Object(o))
    };
    let Ok(object) = build(&mut u) else { return };
    let update = u.arbitrary::<bool>().unwrap_or(false);
    let old = if update { build(&mut u).ok() } else { None };
    let Ok(which) = u.int_in_range(0..=1usize) else {
        return;
    };
    let mut request = json!({"uid": "fuzz", "operation": if update { "UPDATE" } else { "CREATE" },
        "namespace": "default", "kind": {"group": "", "version": "v1", "kind": kind}, "object": object});
    if let (Some(old), Some(m)) = (old, request.as_object_mut()) {
        m.insert("oldObject", old);
    }
    let review =
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
    if let Ok(d) = rayshape_engine::decide(&review, &CONFIGS[which])
        && let rayshape_engine::review::Outcome::Allowed { patch, .. } = &d.outcome
    {
        assert!(
            serde_json::from_slice::<Value>(patch).is_ok(),
            "the patch is not JSON"
        );
    }
});

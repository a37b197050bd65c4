//! Properties over generated pods: shaping twice equals shaping once; the returned patch turns
//! the input into exactly the shaped object; containers never exceed the instance type.
//!
//! With `RAYSHAPE_CORPUS` set to a file path, every generated case (input, patch, shaped
//! object) is also appended to that file as a JSON line, so `tests/check_patches.py` can
//! apply each patch with an independent, strict RFC 6902 implementation.

use proptest::prelude::*;
use rayshape_engine::config::Config;
use rayshape_engine::primitives::pod;
use rayshape_engine::review::Outcome;
use rayshape_json::{Value, json};
use std::io::Write;
use std::sync::{LazyLock, Mutex};

/// A config directory as the server reads it.
fn load_dir(
    dir: &std::path::Path,
) -> Result<Config, rayshape_engine::config::problems::ConfigError> {
    Config::from_sources(&rayshape_engine::config::Sources::from_files(|name| {
        std::fs::read_to_string(dir.join(name)).ok()
    }))
}

static CONFIGS: LazyLock<Vec<Config>> = LazyLock::new(|| {
    let root = rayshape_testkit::repo().join("tests/fixtures/configs");
    let mut v = vec![Config::builtin()];
    for name in ["eks", "gke", "anyscale"] {
        v.push(load_dir(&root.join(name)).unwrap());
    }
    v
});

static CORPUS: LazyLock<Option<Mutex<std::fs::File>>> = LazyLock::new(|| {
    std::env::var_os("RAYSHAPE_CORPUS").map(|p| {
        Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("corpus file opens"),
        )
    })
});

fn quantity(units: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(0.7, prop::sample::select(units).prop_map(str::to_string))
}

/// Requests and limits chosen apart: limits equal to requests, above them, alone (the API
/// server defaults requests to them), or absent.
fn resources() -> impl Strategy<Value = Value> {
    (
        quantity(&["100m", "250m", "500m", "1", "2", "4"]),
        quantity(&["64Mi", "256Mi", "1Gi", "4Gi", "16Gi"]),
        prop::sample::select(&["none", "same", "above", "only"][..]),
        quantity(&["1", "1500m", "3"]),
        quantity(&["512Mi", "2Gi", "8Gi"]),
        prop::option::of(prop::sample::select(&["1", "2"][..])),
    )
        .prop_map(|(cpu, mem, limits, lcpu, lmem, gpu)| {
            let mut req = rayshape_json::Map::new();
            if let Some(c) = cpu {
                req.insert("cpu", json!(c));
            }
            if let Some(m) = mem {
                req.insert("memory", json!(m));
            }
            let mut lim = match limits {
                "same" => req.clone(),
                "above" | "only" => {
                    let mut l = rayshape_json::Map::new();
                    for (k, v) in [("cpu", lcpu), ("memory", lmem)] {
                        if let Some(v) = v {
                            l.insert(k, json!(v));
                        }
                    }
                    l
                }
                _ => rayshape_json::Map::new(),
            };
            if limits != "none"
                && let Some(g) = gpu
            {
                lim.insert("nvidia.com/gpu", json!(g));
            }
            let mut out = rayshape_json::Map::new();
            if limits != "only" {
                out.insert("requests", Value::Object(req));
            }
            if !lim.is_empty() {
                out.insert("limits", Value::Object(lim));
            }
            Value::Object(out)
        })
}

/// A quantity in thousandths, parsed here rather than by the engine: the forms the
/// generator and the instance types use (`250m`, `2`, `1500m`, `64Mi`, `8Gi`, `8589934592`).
fn millis(q: &Value) -> i128 {
    let text = match q {
        Value::String(s) => s.to_string(),
        other => other.to_string(),
    };
    let (num, mult): (&str, i128) = if let Some(n) = text.strip_suffix('m') {
        (n, 1)
    } else if let Some(n) = text.strip_suffix("Ki") {
        (n, 1000 << 10)
    } else if let Some(n) = text.strip_suffix("Mi") {
        (n, 1000 << 20)
    } else if let Some(n) = text.strip_suffix("Gi") {
        (n, 1000 << 30)
    } else {
        (text.as_str(), 1000)
    };
    num.parse::<i128>()
        .unwrap_or_else(|_| panic!("quantity {text:?}"))
        * mult
}

/// What every container and native sidecar may take of `res`, summed: each takes the larger
/// of its request and its limit.
fn pod_total(pod: &Value, res: &str) -> i128 {
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sidecars = pod["spec"]["initContainers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c["restartPolicy"] == "Always")
                .cloned()
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    containers
        .iter()
        .chain(&sidecars)
        .map(|c| {
            let get = |which: &str| c["resources"][which].get(res).map(millis).unwrap_or(0);
            get("requests").max(get("limits"))
        })
        .sum()
}

fn container(i: usize, ray: bool) -> impl Strategy<Value = Value> {
    (
        resources(),
        any::<bool>(),
        prop::sample::select(
            &[
                "",
                " --num-cpus=4",
                " --num-cpus=0 --memory=1073741824",
                " --num-gpus=1",
                " --num-cpus=$(N)",
            ][..],
        ),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(res, with_res, flags, shm, tmp)| {
            let mut c = json!({"name": format!("c{i}"), "image": "rayproject/ray:2.52.0"});
            if ray {
                c["args"] = json!([format!("ray start --block{flags}")]);
            }
            if with_res {
                c["resources"] = res;
            }
            let mut mounts = Vec::new();
            if ray && shm {
                mounts.push(json!({"name": "dshm", "mountPath": "/dev/shm"}));
            }
            if tmp {
                mounts.push(json!({"name": "logs", "mountPath": "/tmp/ray"}));
            }
            if !mounts.is_empty() {
                c["volumeMounts"] = json!(mounts);
            }
            c
        })
}

fn pod() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&["kuberay", "kuberay", "plain", "plain", "other"][..]),
        prop::option::weighted(0.85, prop::sample::select(&["2CPU-8GB", "4CPU-16GB", "8CPU-32GB", "8CPU-32GB-1xT4"][..])),
        prop::option::of(prop::sample::select(&["SPOT", "ON_DEMAND", "PREFER_SPOT"][..])),
        prop::option::of(prop::sample::select(&["us-west-2a", "europe-west4-b"][..])),
        prop::collection::vec(any::<bool>(), 0..3),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        0usize..3,
    )
        .prop_flat_map(|(origin, ty, market, zone, extra, (annotations, affinity, tolerations, init), ray_pos)| {
            let n = extra.len() + 1;
            let ray_pos = ray_pos.min(n - 1);
            let containers: Vec<_> = (0..n).map(|i| container(i, i == ray_pos).boxed()).collect();
            (containers, resources()).prop_map(move |(containers, init_res)| {
                let prefix = if origin == "other" { "anyscale.com" } else { "rayshape.io" };
                let mut labels = rayshape_json::Map::new();
                if origin == "kuberay" {
                    labels.insert("ray.io/node-type", json!("worker"));
                    labels.insert("ray.io/cluster", json!("rc"));
                }
                if let Some(t) = ty {
                    labels.insert(format!("{prefix}/instance-type"), json!(t));
                }
                if let Some(m) = market {
                    labels.insert(format!("{prefix}/market-type"), json!(m));
                }
                if let Some(z) = zone {
                    labels.insert(format!("{prefix}/zone"), json!(z));
                }
                let mut containers = containers;
                if origin == "kuberay" && ray_pos != 0 {
                    containers.swap(0, ray_pos);
                }
                let mut p = json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"generateName": "rc-w-", "namespace": "default", "labels": labels},
                    "spec": {"containers": containers,
                             "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}, {"name": "logs", "emptyDir": {}}]}});
                if annotations {
                    p["metadata"]["annotations"] = json!({"team": "ml"});
                }
                if affinity {
                    p["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "team", "operator": "In", "values": ["ml"]}]},
                        {"matchExpressions": [{"key": "pool", "operator": "Exists"}]}]}}});
                }
                if tolerations {
                    p["spec"]["tolerations"] = json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]);
                }
                if init {
                    p["spec"]["initContainers"] = json!([{"name": "init", "image": "busybox", "resources": init_res}]);
                }
                p
            })
        })
}

fn review_of(p: &Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
           "request": {"uid": "prop", "operation": "CREATE", "namespace": "default", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "object": p}})
}

/// How the generated cases went, so that a generator that only produces denials (which
/// prove nothing) fails the test.
#[derive(Default)]
struct Tally {
    cases: usize,
    denied: usize,
    sized: usize,
}

#[test]
fn shaping_properties() {
    let tally = std::cell::RefCell::new(Tally::default());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        ..ProptestConfig::default()
    });
    let result = runner.run(&(pod(), 0usize..4), |(p, which)| {
        check(&p, which, &mut tally.borrow_mut())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let t = tally.into_inner();
    eprintln!("{} cases: {} denied, {} sized", t.cases, t.denied, t.sized);
    assert!(t.cases >= 400, "{} cases", t.cases);
    // Each of these cases must be worth something: most admitted, many sized.
    assert!(t.denied * 2 < t.cases, "{} of {} denied", t.denied, t.cases);
    assert!(
        t.sized * 4 > t.cases,
        "only {} of {} sized",
        t.sized,
        t.cases
    );
}

fn check(p: &Value, which: usize, tally: &mut Tally) -> Result<(), TestCaseError> {
    let p = p.clone();
    tally.cases += 1;
    let cfg = &CONFIGS[which];
    let d = rayshape_engine::decide(&review_of(&p), cfg).unwrap();
    let Outcome::Allowed { patch, shaped, .. } = &d.outcome else {
        tally.denied += 1;
        return Ok(());
    };

    let mut applied = serde_json::Value::from(p.clone());
    json_patch::patch(
        &mut applied,
        &serde_json::from_slice::<json_patch::Patch>(patch).unwrap(),
    )
    .unwrap();
    let applied = Value::from(applied);
    prop_assert_eq!(&applied, &shaped.object);

    let again = rayshape_engine::decide(&review_of(&shaped.object), cfg).unwrap();
    match &again.outcome {
        Outcome::Allowed { patch: p2, ops, .. } => {
            prop_assert!(*ops == 0, "not idempotent: {}", String::from_utf8_lossy(p2))
        }
        Outcome::Denied(den) => prop_assert!(false, "reshaping denied: {}", den),
    }
    prop_assert!(shaped.warnings.iter().all(|w| w.chars().count() <= 120));

    if shaped.skipped.is_some() {
        prop_assert_eq!(
            &shaped.object,
            &p,
            "a pod that is not ours comes out unchanged"
        );
    }
    let type_key = cfg.settings.key("instance-type");
    if let (None, Some(t)) = (shaped.skipped, pod::vocab(&shaped.object, &type_key)) {
        tally.sized += 1;
        let it = &cfg.instance_types[t];
        for (res, total) in &it.shape {
            let sum = pod_total(&shaped.object, res);
            prop_assert!(
                sum <= total.millis(),
                "{} {}: {} > {:?}",
                t,
                res,
                sum,
                total
            );
        }
    }

    if let Some(f) = CORPUS.as_ref() {
        let line = json!({"input": p, "patch": serde_json::from_slice::<Value>(patch).unwrap(), "shaped": shaped.object}).to_string();
        writeln!(f.lock().unwrap(), "{line}").unwrap();
    }
    Ok(())
}

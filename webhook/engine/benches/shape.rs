//! `cargo bench -p rayshape-webhook --bench shape`: time to decide one admission (shape the
//! pod and diff it) on one thread, for a KubeRay GPU worker, with the built-in configuration
//! and with 1,000 instance types and 1,000 rules loaded. Also the whole request path: parse
//! the AdmissionReview bytes, decide, serialise the response.
//!
//! A plain harness (no criterion) keeps the dev-dependency build small: it warms up, then
//! times batches and reports the median and the spread of the per-iteration time.

use rayshape_engine::config::{Config, Sources};
use rayshape_json::{Value, json};
use std::hint::black_box;
use std::time::{Duration, Instant};

// The same allocator as the rayshape-webhook binary, so the numbers are the binary's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn gpu_worker_review() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/kuberay/gpu-worker.json"
    );
    let mut pod: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    pod["metadata"]["labels"]["rayshape.io/instance-type"] = "8CPU-32GB-1xT4".into();
    pod["metadata"]["labels"]["tier"] = "t7".into();
    let pod = Value::from(pod);
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
           "request": {"uid": "bench", "operation": "CREATE", "namespace": "default",
                       "kind": {"group": "", "version": "v1", "kind": "Pod"}, "object": pod}})
}

/// 1,000 instance types and 1,000 rules; 20 of the rules match the benchmark pod.
fn big_config() -> Config {
    let mut types = String::from(rayshape_engine::config::instance_types::DEFAULTS);
    for i in 0..996 {
        types.push_str(&format!(
            "type-{i}:\n  resources: {{CPU: {}, memory: {}Gi}}\n",
            1 + i % 64,
            4 + i % 256
        ));
    }
    let mut rules = String::from("patches:\n");
    for i in 0..1000 {
        rules.push_str(&format!(
            "- name: r{i}\n  selector: \"tier in (t{}), rayshape.io/market-type in (ON_DEMAND, SPOT)\"\n  patch:\n  - {{op: add, path: /metadata/annotations/example.com~1r{i}, value: \"x\"}}\n",
            i % 50
        ));
    }
    let cfg = Config::from_sources(&Sources {
        instance_types: Some(types),
        patches: Some(rules),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(cfg.instance_types.len(), 1000);
    assert_eq!(cfg.admin_rules.len(), 1000);
    cfg
}

fn bench(name: &str, mut f: impl FnMut()) {
    // `cargo bench -- WORD` runs only the benchmarks whose name contains WORD.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|w| name.contains(w.as_str())) {
        return;
    }
    // Warm up for a while, then size batches to ~10 ms and time 60 of them.
    let warm = Instant::now();
    let mut n = 0u64;
    while warm.elapsed() < Duration::from_millis(300) {
        f();
        n += 1;
    }
    let per_batch = (n / 30).max(1);
    let mut samples: Vec<f64> = (0..60)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / per_batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    println!(
        "{name:<58} median {:>8.2} µs   min {:>8.2} µs   p95 {:>8.2} µs   ({} iterations per sample)",
        samples[30], samples[0], samples[57], per_batch
    );
}

fn main() {
    // `cargo test --benches` runs bench binaries with --bench absent; keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let review_doc = gpu_worker_review();
    let bytes = serde_json::to_vec(&review_doc).unwrap();
    let builtin = Config::builtin();
    let big = std::cell::LazyCell::new(|| {
        let big = big_config();
        let d = rayshape_engine::decide(&review_doc, &big).unwrap();
        assert!(d.allowed(), "the benchmark pod is admitted");
        big
    });

    bench("decide: KubeRay GPU worker, built-in config", || {
        black_box(rayshape_engine::decide(black_box(&review_doc), &builtin).unwrap());
    });
    bench(
        "decide: KubeRay GPU worker, 1,000 types + 1,000 rules",
        || {
            black_box(rayshape_engine::decide(black_box(&review_doc), &big).unwrap());
        },
    );
    // The floor every webhook pays: read the review, write an answer of the same size.
    // (into serde_json's own `Value`, as a webhook written with serde_json would).
    bench("floor: parse the review + serialise it", || {
        let v: serde_json::Value = serde_json::from_slice(black_box(&bytes)).unwrap();
        black_box(serde_json::to_vec(&v).unwrap());
    });
    bench("request: parse + decide + respond, built-in config", || {
        let v = rayshape_engine::decode::parse_review(black_box(&bytes)).unwrap();
        let d = rayshape_engine::decide(&v, &builtin).unwrap();
        black_box(d.response_bytes());
    });
    bench(
        "request: parse + decide + respond, 1,000 types + 1,000 rules",
        || {
            let v = rayshape_engine::decode::parse_review(black_box(&bytes)).unwrap();
            let d = rayshape_engine::decide(&v, &big).unwrap();
            black_box(d.response_bytes());
        },
    );
    // What reading the review costs by what it holds: the same review without the
    // containers' env (of which Ray's view reads every entry's name) and probes, the init
    // containers and the owner references, two thirds of its bytes (issue 13). Both go
    // through `parse_review`, which keeps the probes unread since this case was written.
    let mut carried: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let pod = &mut carried["request"]["object"];
    if let Some(meta) = pod["metadata"].as_object_mut() {
        meta.remove("ownerReferences");
    }
    if let Some(spec) = pod["spec"].as_object_mut() {
        spec.remove("initContainers");
        for c in spec["containers"].as_array_mut().into_iter().flatten() {
            if let Some(c) = c.as_object_mut() {
                for k in ["env", "livenessProbe", "readinessProbe"] {
                    c.remove(k);
                }
            }
        }
    }
    let without_carried = serde_json::to_vec(&carried).unwrap();
    bench(
        &format!("parse: the review ({} bytes), and drop it", bytes.len()),
        || {
            black_box(rayshape_engine::decode::parse_review(black_box(&bytes)).unwrap());
        },
    );
    bench(
        &format!(
            "parse: without carried parts ({} bytes), and drop it",
            without_carried.len()
        ),
        || {
            black_box(rayshape_engine::decode::parse_review(black_box(&without_carried)).unwrap());
        },
    );
    // A review as the API server sends it, with the managedFields it fills in before
    // mutating admission (captured from the test control plane): their fieldsV1 and the
    // probes kept unread, as the server parses reviews, and every part parsed.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/apiserver/admissionreview-sample-worker.json"
    );
    let sample = std::fs::read(path).unwrap();
    bench(
        &format!(
            "parse: the API server's sample-worker review ({} bytes), fieldsV1 and probes unread, and drop it",
            sample.len()
        ),
        || {
            black_box(rayshape_engine::decode::parse_review(black_box(&sample)).unwrap());
        },
    );
    bench("parse: the same, every part parsed, and drop it", || {
        black_box(rayshape_json::from_slice(black_box(&sample)).unwrap());
    });
    bench("request: the sample-worker review, built-in config", || {
        let v = rayshape_engine::decode::parse_review(black_box(&sample)).unwrap();
        let d = rayshape_engine::decide(&v, &builtin).unwrap();
        black_box(d.response_bytes());
    });
    bench(
        "request: the same, every part parsed, built-in config",
        || {
            let v = rayshape_json::from_slice(black_box(&sample)).unwrap();
            let d = rayshape_engine::decide(&v, &builtin).unwrap();
            black_box(d.response_bytes());
        },
    );
    bench("load config: 1,000 types + 1,000 rules", || {
        black_box(big_config());
    });
}

//! Golden tests: every fixture under `tests/fixtures/{kuberay,pods,crds}` shaped with every
//! configuration (the built-in one and each of `tests/fixtures/configs/*` that loads),
//! compared with the reviewed decision, warnings and patch in `tests/golden/`.
//!
//! `UPDATE_GOLDEN=1 cargo test -p rayshape-engine --test golden` rewrites them; review the
//! diff before committing.

use rayshape_engine::config::Config;
use rayshape_engine::decode;
use rayshape_engine::review::Outcome;
use rayshape_json::{Value, json};
use std::path::{Path, PathBuf};

use rayshape_testkit::repo;

/// A config directory as the server reads it.
fn load_dir(dir: &Path) -> Result<Config, rayshape_engine::config::problems::ConfigError> {
    Config::from_sources(&rayshape_engine::config::Sources::from_files(|name| {
        std::fs::read_to_string(dir.join(name)).ok()
    }))
}

fn fixtures() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in [
        "tests/fixtures/kuberay",
        "tests/fixtures/pods",
        "tests/fixtures/crds",
    ] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("json" | "yaml")
            ) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn configs() -> Vec<(String, Config)> {
    let mut out = vec![("builtin".to_string(), Config::builtin())];
    let mut dirs: Vec<_> = std::fs::read_dir(repo().join("tests/fixtures/configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    for d in dirs {
        let name = d.file_name().unwrap().to_string_lossy().to_string();
        if name == "broken" {
            continue;
        }
        out.push((
            name,
            load_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())),
        ));
    }
    out
}

/// Wrap a pod as the API server would, or take a review as it is.
fn as_review(doc: &Value) -> Value {
    if doc["kind"] == "AdmissionReview" {
        return doc.clone();
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
           "request": {"uid": "golden", "operation": "CREATE", "namespace": doc.pointer("/metadata/namespace").cloned().unwrap_or(json!("default")),
                       "kind": {"group": "", "version": "v1", "kind": doc["kind"]}, "object": doc}})
}

#[test]
fn golden() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    let mut count = 0;
    for (cname, cfg) in configs() {
        for fx in fixtures() {
            let bytes = std::fs::read(&fx).unwrap();
            let (docs, _) = decode::parse_documents(&bytes).unwrap();
            let review = as_review(&docs[0]);
            let object = review["request"]["object"].clone();
            let d = rayshape_engine::decide(&review, &cfg).unwrap();
            let got = match &d.outcome {
                Outcome::Allowed { patch, shaped, .. } => {
                    // The patch must turn the input into exactly the shaped object...
                    let mut applied = serde_json::Value::from(object.clone());
                    json_patch::patch(
                        &mut applied,
                        &serde_json::from_slice::<json_patch::Patch>(patch).unwrap(),
                    )
                    .unwrap_or_else(|e| {
                        panic!("{cname}/{}: patch does not apply: {e}", fx.display())
                    });
                    assert_eq!(
                        Value::from(applied),
                        shaped.object,
                        "{cname}/{}: patch result differs",
                        fx.display()
                    );
                    // ...and shaping the result again must change nothing.
                    let again = rayshape_engine::decide(&as_review(&shaped.object), &cfg).unwrap();
                    match &again.outcome {
                        Outcome::Allowed { patch, ops, .. } => assert!(
                            *ops == 0,
                            "{cname}/{}: not idempotent: {}",
                            fx.display(),
                            String::from_utf8_lossy(patch)
                        ),
                        Outcome::Denied(den) => {
                            panic!("{cname}/{}: reshaping denied: {den}", fx.display())
                        }
                    }
                    json!({"allowed": true, "warnings": shaped.warnings, "patch": serde_json::from_slice::<Value>(patch).unwrap()})
                }
                Outcome::Denied(den) => json!({"allowed": false, "message": den.message}),
            };
            count += 1;
            let stem = fx.file_stem().unwrap().to_string_lossy();
            let gpath = repo()
                .join("tests/golden")
                .join(&cname)
                .join(format!("{stem}.json"));
            let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
            if update {
                std::fs::create_dir_all(gpath.parent().unwrap()).unwrap();
                std::fs::write(&gpath, &text).unwrap();
                continue;
            }
            match std::fs::read_to_string(&gpath) {
                Ok(want) if want == text => {}
                Ok(_) => failures.push(format!("{} differs; got:\n{text}", gpath.display())),
                Err(_) => failures.push(format!(
                    "{} is missing (UPDATE_GOLDEN=1 writes it)",
                    gpath.display()
                )),
            }
        }
    }
    assert!(count >= 40, "only {count} golden cases ran");
    assert!(
        failures.is_empty(),
        "{} of {count} golden cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

//! The `rayshape-webhook` binary as a user runs it: exit codes, messages, outputs.

use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use rayshape_testkit::repo;

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rayshape-webhook"));
    cmd.args(args)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().unwrap();
    if let Some(bytes) = stdin {
        // The child may stop reading early (oversized input); a broken pipe is fine.
        let _ = child.stdin.take().unwrap().write_all(bytes);
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn preview_of_a_fixture_in_every_output() {
    let f = "tests/fixtures/kuberay/cpu-worker-instance-type.json";
    let obj = run(&["mutate", "-f", f], None);
    assert_eq!(obj.status.code(), Some(0), "{}", text(&obj.stderr));
    let shaped: Value = serde_json::from_slice(&obj.stdout).unwrap();
    assert_eq!(
        shaped["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "1900m"
    );
    assert!(
        text(&obj.stderr).contains("warning: Pod default/raycluster-kuberay-workergroup-worker-*")
    );

    let patch = run(&["mutate", "-f", f, "-o", "patch"], None);
    let ops: Vec<Value> = serde_json::from_slice(&patch.stdout).unwrap();
    assert!(
        ops.iter()
            .all(|o| o["op"].is_string() && o["path"].as_str().unwrap().starts_with('/'))
    );

    let review_file = "tests/fixtures/kuberay/admissionreview-cpu-worker-instance-type.json";
    let sent: Value =
        serde_json::from_slice(&std::fs::read(repo().join(review_file)).unwrap()).unwrap();
    let review = run(&["mutate", "-f", review_file, "-o", "review"], None);
    let r: Value = serde_json::from_slice(&review.stdout).unwrap();
    assert_eq!(r["response"]["uid"], sent["request"]["uid"]);
    assert_eq!(r["response"]["allowed"], true);
    assert_eq!(r["response"]["patchType"], "JSONPatch");
}

#[test]
fn yaml_stream_from_stdin_keeps_yaml() {
    let input = std::fs::read(repo().join("tests/fixtures/pods/spot-zone-affinity.yaml")).unwrap();
    let mut two = input.clone();
    two.extend_from_slice(b"---\n");
    two.extend_from_slice(&input);
    let out = run(&["mutate"], Some(&two));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert_eq!(s.matches("kind: Pod").count(), 2, "{s}");
    assert!(s.contains("topology.kubernetes.io/zone: us-west-2a"), "{s}");
}

#[test]
fn denial_exits_1_with_the_reason() {
    let out = run(
        &["mutate", "-f", "tests/fixtures/pods/unknown-type.yaml"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("denied:") && err.contains("known instance types: 2CPU-8GB, 4CPU-16GB"),
        "{err}"
    );
    assert!(out.stdout.is_empty() || text(&out.stdout).trim().is_empty());
}

#[test]
fn unusable_input_exits_2() {
    for (input, expect) in [
        (&b"{\"apiVersion\": "[..], "not valid JSON"),
        (&b"- [unclosed"[..], "not valid YAML"),
        (&b"hello"[..], "not an object"),
        (&b""[..], "no document"),
        (&b"{\"apiVersion\":\"admission.k8s.io/v1beta1\",\"kind\":\"AdmissionReview\",\"request\":{}}"[..], "expected admission.k8s.io/v1"),
    ] {
        let out = run(&["mutate"], Some(input));
        assert_eq!(out.status.code(), Some(2), "{input:?}");
        assert!(text(&out.stderr).contains(expect), "{input:?}: {}", text(&out.stderr));
    }
    let big = vec![b' '; 7 * 1024 * 1024 + 10];
    let out = run(&["mutate"], Some(&big));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("7 MiB"), "{}", text(&out.stderr));
    let out = run(&["mutate", "-f", "does/not/exist.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot open does/not/exist.yaml"));
}

#[test]
fn bad_serve_options_exit_2_with_what_is_accepted() {
    for (args, expect) in [
        (
            &["--threads", "0"][..],
            "--threads must be between 1 and 256, got 0",
        ),
        (
            &["--threads", "300"][..],
            "--threads must be between 1 and 256, got 300",
        ),
        (
            &["--reload-interval", "0"][..],
            "--reload-interval must be a number of seconds above 0 and below 86400 (a day), got 0",
        ),
        (
            &["--idle-timeout", "100000"][..],
            "--idle-timeout must be a number of seconds above 0 and below 86400 (a day), got 100000",
        ),
        (
            &["--shutdown-delay", "90000"][..],
            "--shutdown-delay must be a number of seconds from 0 to below 86400 (a day), got 90000",
        ),
        (
            &["--max-connections", "0"][..],
            "--max-connections must be 1 or more, got 0",
        ),
        (
            &["--max-in-flight", "0"][..],
            "--max-in-flight must be 1 or more, got 0",
        ),
        (
            &["--max-requests", "0"][..],
            "--max-requests must be 1 or more, got 0",
        ),
        (
            &["--max-body-memory", "3"][..],
            "--max-body-memory must be between 7 and 65536 MiB (7 MiB holds the largest body), got 3",
        ),
    ] {
        let mut all = vec![
            "serve",
            "--config",
            "x",
            "--tls-cert",
            "x",
            "--tls-key",
            "x",
        ];
        all.extend_from_slice(args);
        let out = run(&all, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains(expect),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn check_config_reports_every_problem() {
    let out = run(
        &["check-config", "--config", "tests/fixtures/configs/broken"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for want in [
        "webhook.yaml: profile: unknown profile \"openshift\"; accepted: generic, eks, karpenter, gke, aks",
        "webhook.yaml: sidecar.resources.cpu: \"1OOm\" is not a Kubernetes quantity",
        "instance_types.yaml:2: 2CPU-8GB.resources.memory: \"8GB\" is not a Kubernetes quantity",
        "instance_types.yaml:4: big gpu: is not a valid instance-type name",
        "instance_types.yaml:4: big gpu.resources.GPU: must be a whole number of GPUs",
        "patches.yaml:2: patches[0].selector",
        "patches.yaml:2: patches[0].patch[0]: path \"spec/nodeSelector/x\" must start with `/`",
        "patches.yaml:5: patches[1].patch[0]: unknown op \"merge\"; accepted: add, remove, replace, move, copy, test",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let ok = run(
        &[
            "check-config",
            "--config",
            "tests/fixtures/configs/anyscale",
        ],
        None,
    );
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).starts_with("ok: 2 instance types"),
        "{}",
        text(&ok.stdout)
    );
    assert!(text(&ok.stderr).contains("kind \"Service\" is skipped"));
    assert!(
        !text(&ok.stderr).contains("would be denied"),
        "{}",
        text(&ok.stderr)
    );
    // A configuration that loads but denies every pod of some types says which.
    let dir = std::env::temp_dir().join(format!("rayshape-trial-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("webhook.yaml"),
        "sidecar:\n  resources: {cpu: 4, memory: 64Mi}\n",
    )
    .unwrap();
    let trial = run(&["check-config", "--config", dir.to_str().unwrap()], None);
    let err = text(&trial.stderr);
    assert_eq!(trial.status.code(), Some(0), "{err}");
    assert!(
        err.contains("2CPU-8GB: a plain Ray worker pod of this type would be denied")
            && err.contains("4CPU-16GB: a plain Ray worker pod")
            && !err.contains("8CPU-32GB: a plain"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let none = run(&["check-config", "--config", "no/such/dir"], None);
    assert_eq!(none.status.code(), Some(1));
    assert!(text(&none.stderr).contains("is not a directory"));
}

#[test]
fn profiles_print_as_rules() {
    let out = run(&["profile", "gke", "--label-prefix", "anyscale.com"], None);
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    assert!(
        s.contains("anyscale.com/market-type in (ON_DEMAND)")
            && s.contains("cloud.google.com/gke-spot"),
        "{s}"
    );
    let bad = run(&["profile", "openshift"], None);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("accepted: generic, eks, karpenter, gke, aks"));
}

#[test]
fn plan_output_explains_the_decision() {
    let f = "tests/fixtures/kuberay/gpu-worker.json";
    let out = run(&["mutate", "-f", f, "-o", "plan"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["decision"], "admitted");
    assert_eq!(plan["rayContainer"]["index"], 0);
    assert!(
        plan["rayContainer"]["why"]
            .as_str()
            .unwrap()
            .contains("KubeRay"),
        "{plan:#}"
    );
    let rules = plan["rules"].as_array().unwrap();
    assert!(!rules.is_empty());
    assert!(
        rules
            .iter()
            .all(|r| r["name"].is_string() && r["selector"].is_string() && r["result"].is_string()),
        "{rules:?}"
    );
    assert!(plan["sidecar"]["injected"].as_bool().unwrap());

    let denied = run(
        &[
            "mutate",
            "-f",
            "tests/fixtures/pods/unknown-type.yaml",
            "-o",
            "plan",
        ],
        None,
    );
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        text(&denied.stdout).contains("decision: 'denied: unknown instance type")
            || text(&denied.stdout).contains("decision: \"denied: unknown instance type"),
        "{}",
        text(&denied.stdout)
    );
}

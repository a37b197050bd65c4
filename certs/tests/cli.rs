//! `rayshape-certs` as an admin runs it: generate, check, a CA rotation with overlap.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rayshape-certs"));
    cmd.args(args);
    if let Some(text) = stdin {
        use std::io::Write;
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        return child.wait_with_output().unwrap();
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn config_with(bundle: &str) -> String {
    format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata: {{name: rayshape}}\nwebhooks:\n- name: pods.rayshape.io\n  clientConfig:\n    caBundle: {bundle}\n    service: {{name: rayshape-webhook, namespace: rayshape-system, path: /mutate}}\n"
    )
}

#[test]
fn generate_check_and_rotate_with_overlap() {
    let dir = std::env::temp_dir().join(format!("rayshape-certs-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let out = run(&["generate", "--out", d, "--ip", "127.0.0.1"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in ["ca.crt", "ca.key", "tls.crt", "tls.key"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(dir.join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // Not overwritten by accident.
    let again = run(&["generate", "--out", d], None);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );

    let check = run(&["check", "--dir", d], None);
    assert!(check.status.success(), "{}", text(&check.stdout));
    let report = text(&check.stdout);
    assert!(
        report.contains("serving certificate (tls.crt): expires in 36"),
        "{report}"
    );
    assert!(
        report.contains("CA #1 of ca.crt: expires in 36"),
        "{report}"
    );
    assert!(
        report.contains("tls.crt chains to ca.crt for rayshape-webhook.rayshape-system.svc"),
        "{report}"
    );

    let bundle = text(&run(&["ca-bundle", "--dir", d], None).stdout)
        .trim()
        .to_string();
    let ok = run(
        &["check", "--dir", d, "--webhook-config", "-"],
        Some(&config_with(&bundle)),
    );
    assert!(ok.status.success(), "{}", text(&ok.stdout));
    // A caBundle from another CA is caught.
    let other = dir.join("other");
    assert!(
        run(&["generate", "--out", other.to_str().unwrap()], None)
            .status
            .success()
    );
    let wrong = text(&run(&["ca-bundle", "--dir", other.to_str().unwrap()], None).stdout)
        .trim()
        .to_string();
    let bad = run(
        &["check", "--dir", d, "--webhook-config", "-"],
        Some(&config_with(&wrong)),
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stdout)
            .contains("webhook pods.rayshape.io: its caBundle does not accept tls.crt"),
        "{}",
        text(&bad.stdout)
    );

    // Rotation: both CAs trusted, the old serving certificate still accepted.
    assert!(run(&["rotate-ca", "--dir", d], None).status.success());
    let both = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    assert_eq!(both.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(run(&["check", "--dir", d], None).status.success());
    let early = run(&["finish-rotation", "--dir", d], None);
    assert_eq!(
        early.status.code(),
        Some(2),
        "finishing before the renewal would break the server"
    );
    assert!(
        run(&["renew", "--dir", d, "--ip", "127.0.0.1"], None)
            .status
            .success()
    );
    assert!(
        run(&["check", "--dir", d], None).status.success(),
        "new serving cert, bundle of both"
    );
    // The old bundle (before the rotation) would not accept the new serving certificate.
    let stale = run(
        &["check", "--dir", d, "--webhook-config", "-"],
        Some(&config_with(&bundle)),
    );
    assert_eq!(stale.status.code(), Some(1));
    assert!(run(&["finish-rotation", "--dir", d], None).status.success());
    let one = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    assert_eq!(one.matches("BEGIN CERTIFICATE").count(), 1);
    assert!(run(&["check", "--dir", d], None).status.success());

    // Made for another namespace and an IP; renewed a year later without either: the
    // names the API server and the sidecars use are kept.
    let ns = dir.join("ns");
    let n = ns.to_str().unwrap();
    let made = run(
        &[
            "generate",
            "--out",
            n,
            "--namespace",
            "ml-infra",
            "--ip",
            "10.0.0.7",
        ],
        None,
    );
    assert!(made.status.success(), "{}", text(&made.stderr));
    let renewed = run(&["renew", "--dir", n], None);
    assert!(renewed.status.success(), "{}", text(&renewed.stderr));
    assert!(
        text(&renewed.stderr).contains(
            "kept from the certificate it replaces: rayshape-webhook.ml-infra, rayshape-webhook.ml-infra.svc, rayshape-webhook.ml-infra.svc.cluster.local, 10.0.0.7"
        ),
        "{}",
        text(&renewed.stderr)
    );
    for name in [
        "rayshape-webhook.ml-infra.svc",
        "10.0.0.7",
        "rayshape-webhook.rayshape-system.svc",
    ] {
        let check = run(&["check", "--dir", n, "--name", name], None);
        assert!(check.status.success(), "{name}: {}", text(&check.stdout));
    }
    // Names are dropped only when asked.
    let replaced = run(
        &[
            "renew",
            "--dir",
            n,
            "--namespace",
            "ml-infra",
            "--replace-names",
        ],
        None,
    );
    assert!(replaced.status.success(), "{}", text(&replaced.stderr));
    let check = |name: &str| run(&["check", "--dir", n, "--name", name], None);
    assert!(check("rayshape-webhook.ml-infra.svc").status.success());
    let dropped = check("10.0.0.7");
    assert_eq!(dropped.status.code(), Some(1), "{}", text(&dropped.stdout));
    // A tls.crt no CA of ca.crt issued, or one that is not a certificate: its names are
    // not taken, and nothing is written.
    let foreign = std::fs::read(other.join("tls.crt")).unwrap();
    std::fs::write(ns.join("tls.crt"), &foreign).unwrap();
    let refused = run(&["renew", "--dir", n], None);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("no CA of ca.crt issued it")
            && text(&refused.stderr).contains("--replace-names"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(std::fs::read(ns.join("tls.crt")).unwrap(), foreign);
    std::fs::write(ns.join("tls.crt"), "not a certificate\n").unwrap();
    let refused = run(&["renew", "--dir", n], None);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("it holds no PEM certificate"),
        "{}",
        text(&refused.stderr)
    );

    let secret = text(&run(&["secret", "--dir", d], None).stdout);
    assert!(
        secret.contains("type: kubernetes.io/tls")
            && secret.contains("tls.key: ")
            && secret.contains("ca.crt: "),
        "{secret}"
    );
    assert!(!Path::new(&dir.join("tls.tmp")).exists());
    let _ = std::fs::remove_dir_all(dir);
}

//! The deployment (issue 12): `manifests/` (kustomize), `charts/rayshape` (Helm) and
//! `docs/install.md`, against real control planes.
//!
//! - Offline, with the same kubectl as the API server and helm built from its Go module
//!   (`tests/deploy/build.sh`): every overlay renders; versions, images and RBAC agree
//!   with the code; the chart lints and renders the same objects as the overlays.
//! - In the control plane of `tests/run.sh` (`RAYSHAPE_CLUSTER_DIR`), which `up.sh`
//!   installed from `manifests/overlays/e2e`: what is live is what renders; the webhook's
//!   ServiceAccount may do what the code needs and nothing more; the registration sends
//!   the webhook Ray pods only, never rayshape's own pods; the webhook serves admission and
//!   bootstrap with that identity.
//! - In a control plane of its own (destructive: it installs and uninstalls): the install
//!   guide's generic commands as written, then every overlay and every chart variant with
//!   server-side apply, with the cert-manager and Prometheus Operator CRDs installed from
//!   their Go modules so that Certificates and PodMonitors are validated for real.

use rayshape_e2e::{Cluster, exclusive, metric, repo, repo_path, shared, text, wait_until};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const NS: &str = "rayshape-system";
const SA: &str = "system:serviceaccount:rayshape-system:rayshape-webhook";
const PROVIDERS: [&str; 5] = ["generic", "eks", "karpenter", "gke", "aks"];
/// Overlays installable as they are, by name (self-managed needs its ca-bundle.env).
const OVERLAYS: [&str; 6] = ["generic", "eks", "karpenter", "gke", "aks", "self-managed"];

// --- tools ------------------------------------------------------------------------------------

fn run_in(cmd: &mut Command, stdin: Option<&str>) -> Output {
    rayshape_e2e::run(std::mem::replace(cmd, Command::new("true")), stdin)
}

fn ok_out(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn kubectl_bin(c: &Cluster) -> PathBuf {
    c.bin.join("kubectl")
}

/// kubectl with a kubeconfig (or none, for `kustomize`).
fn kubectl(c: &Cluster, kubeconfig: Option<&Path>, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(kubectl_bin(c));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    match kubeconfig {
        Some(k) => cmd.env("KUBECONFIG", k),
        None => cmd.env("KUBECONFIG", "/dev/null"),
    };
    run_in(&mut cmd, stdin)
}

fn helm_bin() -> PathBuf {
    let h = repo_path("tests/.deploy/bin/helm");
    assert!(
        h.is_file(),
        "{} is missing: build it with tests/deploy/build.sh (tests/run.sh does)",
        h.display()
    );
    h
}

fn helm(args: &[&str]) -> String {
    ok_out(&format!("helm {}", args.join(" ")), helm_output(args))
}

/// Helm's output, whether it succeeded or not.
fn helm_output(args: &[&str]) -> Output {
    let mut cmd = Command::new(helm_bin());
    cmd.args(args)
        .env("HELM_CACHE_HOME", scratch_home().join("cache"))
        .env("HELM_CONFIG_HOME", scratch_home().join("config"))
        .env("HELM_DATA_HOME", scratch_home().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_in(&mut cmd, None)
}

/// Helm's own directories for these tests, so nothing of the user's is read or written.
fn scratch_home() -> PathBuf {
    static HOME: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HOME.get_or_init(|| rayshape_testkit::scratch("deploy", "helm-home"))
        .clone()
}

/// The rayshape-certs binary of this workspace (built if `cargo test` has not yet).
fn certs_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target"));
        let bin = target.join("debug/rayshape-certs");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-q", "--locked", "-p", "rayshape-certs"])
            .current_dir(repo())
            .status()
            .expect("run cargo");
        assert!(st.success(), "cargo build -p rayshape-certs failed");
        assert!(bin.is_file(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

/// A YAML stream as JSON values (empty documents left out).
fn objects(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("YAML: {e}\n{yaml}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn kustomize(c: &Cluster, dir: &Path) -> String {
    ok_out(
        &format!("kubectl kustomize {}", dir.display()),
        kubectl(c, None, &["kustomize", &dir.to_string_lossy()], None),
    )
}

/// A copy of manifests/ and charts/ in a scratch directory, with a ca-bundle.env for the
/// self-managed component (a real CA's bundle, from rayshape-certs), so the source tree is
/// never written to.
fn workdir(name: &str) -> PathBuf {
    let d = rayshape_testkit::scratch("deploy", name);
    for part in ["manifests", "charts"] {
        let st = Command::new("cp")
            .args(["-r"])
            .arg(repo_path(part))
            .arg(&d)
            .status()
            .expect("cp");
        assert!(st.success());
    }
    d
}

fn write_ca_bundle(work: &Path, certs: &Path) {
    let bundle = ca_bundle(certs);
    std::fs::write(
        work.join("manifests/components/self-managed/ca-bundle.env"),
        format!("caBundle={bundle}\n"),
    )
    .unwrap();
}

fn generate_certs(dir: &Path) {
    let out = Command::new(certs_bin())
        .args(["generate", "--out"])
        .arg(dir)
        .output()
        .expect("rayshape-certs");
    ok_out("rayshape-certs generate", out);
}

fn ca_bundle(certs: &Path) -> String {
    let out = Command::new(certs_bin())
        .args(["ca-bundle", "--dir"])
        .arg(certs)
        .output()
        .expect("rayshape-certs");
    ok_out("rayshape-certs ca-bundle", out).trim().to_string()
}

/// The rendered objects of an overlay (self-managed with a generated CA).
fn render_overlay(c: &Cluster, overlay: &str) -> Vec<Value> {
    let work = workdir(&format!("render-{overlay}"));
    if overlay == "self-managed" {
        let certs = work.join("certs");
        generate_certs(&certs);
        write_ca_bundle(&work, &certs);
    }
    objects(&kustomize(
        c,
        &work.join(format!("manifests/overlays/{overlay}")),
    ))
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among the rendered objects"))
}

fn kinds(objs: &[Value]) -> BTreeSet<String> {
    objs.iter()
        .map(|o| o["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

fn workspace_version() -> String {
    let cargo = std::fs::read_to_string(repo_path("Cargo.toml")).unwrap();
    let line = cargo
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find(|l| l.starts_with("version"))
        .expect("workspace version");
    line.split('"').nth(1).unwrap().to_string()
}

fn settings_of(objs: &[Value]) -> Value {
    let cm = find(objs, "ConfigMap", "rayshape-settings");
    let y = cm["data"]["webhook.yaml"].as_str().expect("webhook.yaml");
    serde_saphyr::from_str(y).expect("webhook.yaml parses")
}

// --- offline: renders, versions, RBAC ----------------------------------------------------------

/// Installed in another namespace, the chart points the sidecars' bootstrap at its own
/// Service (the webhook's default names rayshape-system's); settings the chart sets from
/// its own values are refused under `settings`, not silently overridden.
#[test]
fn the_chart_follows_its_namespace_and_refuses_what_it_would_override() {
    let chart = repo_path("charts/rayshape");
    let chart = chart.to_string_lossy();
    let url = |ns: &str, sets: &[&str]| {
        let mut args = vec!["template", "rayshape", &chart, "-n", ns];
        for s in sets {
            args.extend(["--set", s]);
        }
        settings_of(&objects(&helm(&args)))["sidecar"]["bootstrapUrl"].clone()
    };
    assert_eq!(
        url("ray-admin", &[]),
        "https://rayshape-webhook.ray-admin.svc:443/v1/bootstrap"
    );
    assert_eq!(
        url(NS, &[]),
        Value::Null,
        "the webhook's default names {NS}"
    );
    assert_eq!(
        url(
            "ray-admin",
            &["settings.sidecar.bootstrapUrl=https://lb.example.com/v1/bootstrap"]
        ),
        "https://lb.example.com/v1/bootstrap"
    );
    for (set, says) in [
        ("settings.profile=eks", "set `provider` instead"),
        (
            "settings.labelPrefix=anyscale.com",
            "set `labelPrefix` instead",
        ),
        (
            "settings.sidecar.image=mirror/sidecar:1",
            "set `sidecar.image.repository`",
        ),
        // cert-manager refuses renewBefore >= duration; the caBundle follows a renewed CA
        // only if the serving certificate renews before the old CA ends.
        (
            "certificates.certManager.caDuration=4320h",
            "caRenewBefore (4320h) must be less than caDuration (4320h)",
        ),
        (
            "certificates.certManager.duration=8760h",
            "caRenewBefore (4320h) must be more than duration (8760h)",
        ),
        (
            "certificates.certManager.renewBefore=90d",
            "renewBefore must be a number of hours like 2160h, not \"90d\"",
        ),
    ] {
        let out = Command::new(helm_bin())
            .args(["template", "rayshape", &chart, "-n", NS, "--set", set])
            .env("HELM_CACHE_HOME", scratch_home().join("cache"))
            .env("HELM_CONFIG_HOME", scratch_home().join("config"))
            .env("HELM_DATA_HOME", scratch_home().join("data"))
            .output()
            .expect("helm runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{set}: {err}");
    }
}

/// The chart's values reach every object they concern: the webhook's namespaces its
/// selectors, the metrics port each place it is named, the sidecar's settings its scrape
/// rule, monitoring.labels both monitors; combinations that cannot work are refused.
#[test]
fn the_chart_s_values_reach_every_object_they_concern() {
    let chart = repo_path("charts/rayshape");
    let chart = chart.to_string_lossy();
    let template = |sets: &[&str]| {
        let mut args = vec!["template", "rayshape", &chart, "-n", NS];
        for s in sets {
            args.extend(["--set", s]);
        }
        helm_output(&args)
    };
    let render =
        |sets: &[&str]| objects(&ok_out(&format!("helm template {sets:?}"), template(sets)));
    let deployment = |objs: &[Value]| find(objs, "Deployment", "rayshape-webhook").clone();

    // settings.namespaces: the API server sends (and, with Fail, refuses while the webhook
    // is down) no pod of a namespace the webhook would leave alone.
    let objs = render(&[
        "settings.namespaces.include={ray-prod,ray-dev}",
        "settings.namespaces.exclude={ray-scratch}",
    ]);
    let mwc = find(&objs, "MutatingWebhookConfiguration", "rayshape");
    check_registration("chart, settings.namespaces", mwc);
    for w in mwc["webhooks"].as_array().unwrap() {
        let on_name: Vec<&Value> = w["namespaceSelector"]["matchExpressions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["key"] == "kubernetes.io/metadata.name")
            .collect();
        assert_eq!(on_name.len(), 2, "{w}");
        assert_eq!(on_name[0]["operator"], "NotIn", "{w}");
        assert!(
            on_name[0]["values"]
                .as_array()
                .unwrap()
                .contains(&json!("ray-scratch")),
            "{w}"
        );
        assert_eq!(
            *on_name[1],
            json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ray-prod", "ray-dev"]}),
            "{w}"
        );
    }
    // Without them, every namespace but the excluded ones.
    let defaults = render(&[]);
    for w in find(&defaults, "MutatingWebhookConfiguration", "rayshape")["webhooks"]
        .as_array()
        .unwrap()
    {
        let exprs = w["namespaceSelector"]["matchExpressions"]
            .as_array()
            .unwrap();
        assert!(!exprs.iter().any(|e| e["operator"] == "In"), "{w}");
    }

    // monitoring.labels, beside the chart's own (kube-prometheus-stack selects by release).
    let objs = render(&[
        "monitoring.serviceMonitor=true",
        "monitoring.podMonitor=true",
        "monitoring.labels.release=kube-prometheus-stack",
    ]);
    for (kind, name) in [
        ("ServiceMonitor", "rayshape-webhook"),
        ("PodMonitor", "rayshape-sidecars"),
    ] {
        let labels = &find(&objs, kind, name)["metadata"]["labels"];
        assert_eq!(labels["release"], "kube-prometheus-stack", "{kind}");
        assert_eq!(labels["app.kubernetes.io/part-of"], "rayshape", "{kind}");
    }

    // metricsPort: the flag's port, the container port, the Service, the scrape annotation
    // (the NetworkPolicy names the port).
    for (sets, port) in [(vec![], 9090), (vec!["metricsPort=9191"], 9191)] {
        let objs = render(&sets);
        let pod = deployment(&objs)["spec"]["template"].clone();
        let ct = &pod["spec"]["containers"][0];
        let listen = ct["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .find(|a| a.starts_with("--metrics-listen="))
            .unwrap();
        assert!(listen.ends_with(&format!(":{port}")), "{listen}");
        let named = |ports: &Value| {
            ports
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "metrics")
                .unwrap()
                .clone()
        };
        assert_eq!(named(&ct["ports"])["containerPort"], port, "{sets:?}");
        assert_eq!(
            pod["metadata"]["annotations"]["prometheus.io/port"],
            port.to_string(),
            "{sets:?}"
        );
        let svc = named(&find(&objs, "Service", "rayshape-webhook")["spec"]["ports"]);
        assert_eq!(svc["port"], port, "{sets:?}");
        assert_eq!(svc["targetPort"], "metrics", "{sets:?}");
        let np = find(&objs, "NetworkPolicy", "rayshape-webhook");
        assert!(
            np["spec"]["ingress"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["ports"][0]["port"] == "metrics")
        );
    }

    // The sidecar's scrape rule: its port from settings.sidecar.metricsPort; none without
    // sidecars, and no rule at all is an empty list the webhook loads (not `null`).
    let scrape_port = |objs: &[Value]| {
        let cm = find(objs, "ConfigMap", "rayshape-patches");
        let file: Value =
            serde_saphyr::from_str(cm["data"]["patches.yaml"].as_str().unwrap()).unwrap();
        let rule = file["patches"]
            .as_array()
            .unwrap_or_else(|| panic!("patches.yaml: {file}"))
            .iter()
            .find(|r| r["name"] == "sidecar-scrape-annotations")
            .cloned();
        rule.map(|r| {
            r["patch"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["path"] == "/metadata/annotations/prometheus.io~1port")
                .unwrap()["value"]
                .clone()
        })
    };
    assert_eq!(scrape_port(&defaults), Some(json!("9108")));
    assert_eq!(
        scrape_port(&render(&["settings.sidecar.metricsPort=9200"])),
        Some(json!("9200"))
    );
    for sets in [
        ["settings.sidecar.enabled=false"],
        ["monitoring.scrapeAnnotations=false"],
    ] {
        let objs = render(&sets);
        assert_eq!(scrape_port(&objs), None, "{sets:?}");
        let cm = find(&objs, "ConfigMap", "rayshape-patches");
        let file: Value =
            serde_saphyr::from_str(cm["data"]["patches.yaml"].as_str().unwrap()).unwrap();
        assert_eq!(file, json!({"patches": []}), "{sets:?}");
    }

    // nodeSelector: yours beside the default.
    assert_eq!(
        deployment(&render(&["nodeSelector.pool=web"]))["spec"]["template"]["spec"]["nodeSelector"],
        json!({"kubernetes.io/os": "linux", "pool": "web"})
    );

    // On gke's node network, the default port would be the kubelet's: refused until `port`
    // is set.
    let out = template(&["provider=gke", "hostNetwork=true"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("set `port`"),
        "{}",
        text(&out.stderr)
    );
    let objs = render(&["provider=gke", "hostNetwork=true", "port=9443"]);
    assert_eq!(
        deployment(&objs)["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        9443
    );
    let out = template(&["port=9191", "metricsPort=9191"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("port and metricsPort"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn every_overlay_renders_a_complete_safe_install() {
    let c = Cluster::get();
    let dockerfile = std::fs::read_to_string(repo_path("images/Dockerfile")).unwrap();
    for overlay in OVERLAYS.iter().copied().chain(["e2e"]) {
        let objs = render_overlay(&c, overlay);
        let mut want: BTreeSet<String> = [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ResourceQuota",
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "NetworkPolicy",
            "MutatingWebhookConfiguration",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        if !["self-managed", "e2e"].contains(&overlay) {
            want.extend(["Certificate".to_string(), "Issuer".to_string()]);
        }
        assert_eq!(kinds(&objs), want, "{overlay}: kinds");
        for o in &objs {
            let cluster_scoped = [
                "Namespace",
                "ClusterRole",
                "ClusterRoleBinding",
                "MutatingWebhookConfiguration",
            ]
            .contains(&o["kind"].as_str().unwrap());
            if !cluster_scoped {
                assert_eq!(o["metadata"]["namespace"], NS, "{overlay}: {o}");
            }
            assert_eq!(
                o["metadata"]["labels"]["app.kubernetes.io/part-of"], "rayshape",
                "{overlay}: {}",
                o["metadata"]["name"]
            );
        }

        // The namespace enforces the restricted Pod Security Standard and opts out.
        let ns = find(&objs, "Namespace", NS);
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        assert_eq!(ns["metadata"]["labels"]["rayshape.io/webhook"], "disabled");

        // The profile is the overlay's provider.
        let s = settings_of(&objs);
        let profile = match overlay {
            "self-managed" | "e2e" => "generic",
            p => p,
        };
        assert_eq!(s["profile"], profile, "{overlay}: settings {s}");

        // The Deployment: HA, restricted, probes, mounts where the image's CMD looks.
        let d = find(&objs, "Deployment", "rayshape-webhook");
        let spec = &d["spec"]["template"]["spec"];
        assert_eq!(
            d["spec"]["replicas"],
            if overlay == "e2e" { 0 } else { 2 },
            "{overlay}"
        );
        assert_eq!(spec["priorityClassName"], "system-cluster-critical");
        // Linux nodes only: the images are built for Linux.
        assert_eq!(
            spec["nodeSelector"],
            json!({"kubernetes.io/os": "linux"}),
            "{overlay}"
        );
        let keys: Vec<&str> = spec["topologySpreadConstraints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["topologyKey"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        );
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let ct = &spec["containers"][0];
        assert_eq!(ct["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(ct["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(
            ct["securityContext"]["capabilities"]["drop"],
            json!(["ALL"])
        );
        assert_eq!(ct["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(ct["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert!(ct["resources"]["requests"]["memory"].is_string());
        let args: Vec<&str> = ct["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        for (flag, path) in [
            ("--config", "/etc/rayshape/config"),
            ("--tls-cert", "/etc/rayshape/tls/tls.crt"),
            ("--tls-key", "/etc/rayshape/tls/tls.key"),
            ("--bootstrap-ca", "/etc/rayshape/tls/ca.crt"),
        ] {
            assert!(
                args.contains(&format!("{flag}={path}").as_str()),
                "{overlay}: {flag} in {args:?}"
            );
            // The same paths as the image's default command.
            assert!(
                dockerfile.contains(&format!("\"{flag}\", \"{path}\"")),
                "images/Dockerfile's CMD has no {flag} {path}"
            );
        }
        let port = if overlay == "gke" { 10250 } else { 8443 };
        assert!(args.contains(&format!("--listen=[::]:{port}").as_str()));
        assert_eq!(ct["ports"][0]["name"], "https");
        assert_eq!(ct["ports"][0]["containerPort"], port);
        let mounts: BTreeMap<&str, &str> = ct["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap(),
                    m["mountPath"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(mounts["config"], "/etc/rayshape/config");
        assert_eq!(mounts["tls"], "/etc/rayshape/tls");
        let vols = spec["volumes"].as_array().unwrap();
        let config: BTreeSet<&str> =
            vols.iter().find(|v| v["name"] == "config").unwrap()["projected"]["sources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["configMap"]["name"].as_str().unwrap())
                .collect();
        assert_eq!(
            config,
            BTreeSet::from([
                "rayshape-instance-types",
                "rayshape-patches",
                "rayshape-settings"
            ])
        );
        for (cm, key) in [
            ("rayshape-instance-types", "instance_types.yaml"),
            ("rayshape-patches", "patches.yaml"),
            ("rayshape-settings", "webhook.yaml"),
        ] {
            assert!(find(&objs, "ConfigMap", cm)["data"][key].is_string());
        }
        assert_eq!(
            vols.iter().find(|v| v["name"] == "tls").unwrap()["secret"]["secretName"],
            "rayshape-webhook-tls"
        );
        let pdb = find(&objs, "PodDisruptionBudget", "rayshape-webhook");
        assert_eq!(pdb["spec"]["minAvailable"], 1);
        // The critical-priority quota: the replicas and a rolling update's surge, with room
        // to spare (the chart's replicas + 2).
        let quota = find(&objs, "ResourceQuota", "rayshape-critical-pods");
        let pods: u64 = quota["spec"]["hard"]["pods"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        if overlay != "e2e" {
            assert_eq!(
                pods,
                d["spec"]["replicas"].as_u64().unwrap() + 2,
                "{overlay}"
            );
        }
        // The CA keeps its key when it renews (the caBundle, the serving certificate and
        // the sidecars' CA stay valid); the serving certificate gets a new one each time.
        if !["self-managed", "e2e"].contains(&overlay) {
            for (name, policy) in [("rayshape-ca", "Never"), ("rayshape-webhook", "Always")] {
                assert_eq!(
                    find(&objs, "Certificate", name)["spec"]["privateKey"]["rotationPolicy"],
                    policy,
                    "{overlay}: Certificate {name}"
                );
            }
            // The serving certificate renews (taking the renewed CA into the caBundle)
            // before the old CA certificate ends.
            let hours = |name: &str, field: &str| {
                let v = &find(&objs, "Certificate", name)["spec"][field];
                v.as_str()
                    .and_then(|s| s.strip_suffix('h'))
                    .and_then(|h| h.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("{overlay}: {name} {field} {v}"))
            };
            assert!(
                hours("rayshape-ca", "renewBefore") > hours("rayshape-webhook", "duration"),
                "{overlay}: the CA renews too late for the serving certificate to follow"
            );
        }

        check_registration(
            overlay,
            find(&objs, "MutatingWebhookConfiguration", "rayshape"),
        );
    }
}

/// What every rendered MutatingWebhookConfiguration must say.
fn check_registration(overlay: &str, mwc: &Value) {
    let hooks = mwc["webhooks"].as_array().unwrap();
    let names: Vec<&str> = hooks.iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "kuberay-pods.rayshape.io",
            "typed-pods.rayshape.io",
            "kuberay-objects.rayshape.io"
        ]
    );
    for w in hooks {
        let name = w["name"].as_str().unwrap();
        assert_eq!(w["failurePolicy"], "Fail", "{overlay} {name}");
        assert_eq!(w["sideEffects"], "None", "{overlay} {name}");
        assert_eq!(w["reinvocationPolicy"], "IfNeeded", "{overlay} {name}");
        assert_eq!(w["admissionReviewVersions"], json!(["v1"]));
        let t = w["timeoutSeconds"].as_u64().unwrap();
        assert!((1..=5).contains(&t), "{overlay} {name}: timeout {t}");
        // Never the control plane's namespaces nor rayshape's own.
        let exprs = w["namespaceSelector"]["matchExpressions"]
            .as_array()
            .unwrap();
        let excluded = exprs
            .iter()
            .find(|e| e["key"] == "kubernetes.io/metadata.name")
            .unwrap();
        assert_eq!(excluded["operator"], "NotIn");
        for ns in ["kube-system", "kube-public", "kube-node-lease", NS] {
            assert!(
                excluded["values"].as_array().unwrap().contains(&json!(ns)),
                "{overlay} {name}: {ns} not excluded"
            );
        }
        assert!(exprs.contains(
            &json!({"key": "rayshape.io/webhook", "operator": "NotIn", "values": ["disabled"]})
        ));
        let cc = &w["clientConfig"];
        match overlay {
            "e2e" => assert!(
                cc["url"]
                    .as_str()
                    .unwrap()
                    .starts_with("https://127.0.0.1:")
            ),
            _ => {
                assert_eq!(
                    cc["service"],
                    json!({"name": "rayshape-webhook", "namespace": NS, "path": "/mutate", "port": 443})
                );
                if overlay == "self-managed" {
                    assert!(cc["caBundle"].as_str().unwrap().len() > 100);
                } else {
                    assert_eq!(
                        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
                        "rayshape-system/rayshape-webhook"
                    );
                }
            }
        }
    }
    let pods = json!([{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["CREATE"], "scope": "Namespaced"}]);
    assert_eq!(hooks[0]["rules"], pods);
    assert_eq!(hooks[1]["rules"], pods);
    assert_eq!(
        hooks[0]["objectSelector"],
        json!({"matchExpressions": [{"key": "ray.io/node-type", "operator": "Exists"}]})
    );
    assert_eq!(
        hooks[1]["objectSelector"],
        json!({"matchExpressions": [{"key": "rayshape.io/instance-type", "operator": "Exists"}, {"key": "ray.io/node-type", "operator": "DoesNotExist"}]})
    );
    assert_eq!(
        hooks[2]["rules"],
        json!([{"apiGroups": ["ray.io"], "apiVersions": ["*"], "resources": ["rayclusters", "rayjobs", "rayservices"], "operations": ["CREATE", "UPDATE"], "scope": "Namespaced"}])
    );
}

#[test]
fn images_and_versions_are_one_version_everywhere() {
    let c = Cluster::get();
    let v = workspace_version();
    let webhook = format!("ghcr.io/rayshape/rayshape-webhook:v{v}");
    let sidecar = format!("ghcr.io/rayshape/rayshape-sidecar:v{v}");
    let mut renders: Vec<(String, Vec<Value>)> = OVERLAYS
        .iter()
        .map(|o| (format!("overlay {o}"), render_overlay(&c, o)))
        .collect();
    for p in PROVIDERS {
        renders.push((
            format!("chart --set provider={p}"),
            objects(&helm(&[
                "template",
                "rayshape",
                &repo_path("charts/rayshape").to_string_lossy(),
                "-n",
                NS,
                "--set",
                &format!("provider={p}"),
            ])),
        ));
    }
    for (what, objs) in &renders {
        let d = find(objs, "Deployment", "rayshape-webhook");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"], webhook,
            "{what}"
        );
        assert_eq!(settings_of(objs)["sidecar"]["image"], sidecar, "{what}");
    }
    // The chart's versions.
    let chart = std::fs::read_to_string(repo_path("charts/rayshape/Chart.yaml")).unwrap();
    assert!(
        chart.contains(&format!("\nversion: {v}\n")),
        "Chart.yaml version"
    );
    assert!(
        chart.contains(&format!("\nappVersion: \"{v}\"\n")),
        "Chart.yaml appVersion"
    );
    // The names the image workflow publishes (tagged with the workspace version).
    let wf = std::fs::read_to_string(repo_path(".github/workflows/images.yml")).unwrap();
    for name in [
        "ghcr.io/rayshape/rayshape-webhook",
        "ghcr.io/rayshape/rayshape-sidecar",
    ] {
        assert!(
            wf.contains(&format!("tags: {name}:${{{{ github.ref_name }}}}")),
            "images.yml does not publish {name}"
        );
    }
    // The webhook's built-in default sidecar image is the same.
    let exe = std::fs::read_to_string(c.dir.join("pids/rayshape-webhook.exe")).unwrap();
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"default","labels":{"ray.io/node-type":"worker"}},"spec":{"containers":[{"name":"ray","image":"rayproject/ray:2.52.0"}]}}"#;
    let empty = rayshape_testkit::scratch("deploy", "empty-config");
    let out = rayshape_e2e::run(
        {
            let mut cmd = Command::new(exe.trim());
            cmd.args(["mutate", "-f", "-", "--format", "json", "--config"])
                .arg(&empty)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd
        },
        Some(pod),
    );
    let shaped: Value = serde_json::from_str(&ok_out("rayshape-webhook mutate", out)).unwrap();
    let images: Vec<&str> = shaped["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    assert_eq!(images, [sidecar.as_str()]);
}

/// The code's permissions (webhook/server/src/bootstrap/api.rs, `PERMISSIONS`) as
/// (verb, group, resource).
fn code_permissions() -> BTreeSet<(String, String, String)> {
    let src = std::fs::read_to_string(repo_path("webhook/server/src/bootstrap/api.rs")).unwrap();
    let start = src.find("pub const PERMISSIONS").expect("PERMISSIONS");
    let body = &src[start..src[start..].find("];").unwrap() + start];
    let perms: BTreeSet<_> = body
        .split('"')
        .skip(1)
        .step_by(2)
        .map(|p| {
            let (verb, what) = p.split_once(' ').unwrap();
            let (resource, group) = what.split_once('.').unwrap_or((what, ""));
            (verb.to_string(), group.to_string(), resource.to_string())
        })
        .collect();
    assert_eq!(perms.len(), 3, "{perms:?}");
    perms
}

fn role_permissions(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in role["rules"].as_array().unwrap() {
        assert!(r.get("resourceNames").is_none() && r.get("nonResourceURLs").is_none());
        for g in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                for v in r["verbs"].as_array().unwrap() {
                    out.insert((
                        v.as_str().unwrap().to_string(),
                        g.as_str().unwrap().to_string(),
                        res.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn rbac_is_exactly_what_the_code_uses() {
    let c = Cluster::get();
    let want = code_permissions();
    let mut renders: Vec<(String, Vec<Value>)> = OVERLAYS
        .iter()
        .chain(&["e2e"])
        .map(|o| (format!("overlay {o}"), render_overlay(&c, o)))
        .collect();
    renders.push((
        "chart".into(),
        objects(&helm(&[
            "template",
            "rayshape",
            &repo_path("charts/rayshape").to_string_lossy(),
            "-n",
            NS,
        ])),
    ));
    for (what, objs) in &renders {
        let roles: Vec<&Value> = objs
            .iter()
            .filter(|o| ["Role", "ClusterRole"].contains(&o["kind"].as_str().unwrap()))
            .collect();
        assert_eq!(roles.len(), 1, "{what}: one role");
        assert_eq!(role_permissions(roles[0]), want, "{what}");
        let bindings: Vec<&Value> = objs
            .iter()
            .filter(|o| {
                ["RoleBinding", "ClusterRoleBinding"].contains(&o["kind"].as_str().unwrap())
            })
            .collect();
        assert_eq!(bindings.len(), 1, "{what}: one binding");
        assert_eq!(
            bindings[0]["subjects"],
            json!([{"kind": "ServiceAccount", "name": "rayshape-webhook", "namespace": NS}])
        );
        assert_eq!(bindings[0]["roleRef"]["name"], "rayshape-webhook");
    }
}

// --- the chart against the overlays ------------------------------------------------------------

/// Objects in a form both renderers can agree on: Helm's bookkeeping labels dropped, the
/// Namespace left out (the chart installs into a namespace the guide creates and labels),
/// ConfigMaps' files parsed (their comments and key order are not content), sorted.
fn normalize(objs: Vec<Value>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for mut o in objs {
        if o["kind"] == "Namespace" {
            continue;
        }
        if let Some(l) = o["metadata"]["labels"].as_object_mut() {
            for k in [
                "helm.sh/chart",
                "app.kubernetes.io/managed-by",
                "app.kubernetes.io/instance",
            ] {
                l.remove(k);
            }
        }
        if o["kind"] == "ConfigMap"
            && let Some(data) = o["data"].as_object_mut()
        {
            for (_, v) in data.iter_mut() {
                let parsed: Value = serde_saphyr::from_str(v.as_str().unwrap()).unwrap();
                *v = parsed;
            }
        }
        let key = format!(
            "{}/{}/{}",
            o["kind"].as_str().unwrap(),
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap()
        );
        out.insert(key, o);
    }
    out
}

/// Where two values differ, as JSON pointers (at most `limit`).
fn differences(a: &Value, b: &Value, at: String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
                differences(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    format!("{at}/{k}"),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differences(p, q, format!("{at}/{i}"), out);
            }
        }
        _ if a != b => out.push(format!("{at}: kustomize {a} / helm {b}")),
        _ => {}
    }
}

/// A kustomization of the base and these components, built in a scratch copy.
fn compose(c: &Cluster, name: &str, components: &[&str]) -> Vec<Value> {
    let work = workdir(&format!("compose-{name}"));
    if components.contains(&"self-managed") {
        let certs = work.join("certs");
        generate_certs(&certs);
        write_ca_bundle(&work, &certs);
        // The same bundle for the chart.
        std::fs::write(work.join("ca-bundle"), ca_bundle(&certs)).unwrap();
    }
    let dir = work.join("mine");
    std::fs::create_dir_all(&dir).unwrap();
    let comps: String = components
        .iter()
        .map(|c| format!("- ../manifests/components/{c}\n"))
        .collect();
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../manifests/base\ncomponents:\n{comps}"
        ),
    )
    .unwrap();
    let mut objs = objects(&kustomize(c, &dir));
    // Remember the bundle for the chart side.
    if let Ok(b) = std::fs::read_to_string(work.join("ca-bundle")) {
        objs.push(json!({"kind": "__caBundle", "value": b}));
    }
    objs
}

#[test]
fn the_chart_lints_and_renders_the_overlays_objects() {
    let c = Cluster::get();
    let chart = repo_path("charts/rayshape");
    let chart = chart.to_string_lossy();
    // Every choice, linted.
    for p in PROVIDERS {
        helm(&[
            "lint",
            "--strict",
            &chart,
            "--set",
            &format!("provider={p}"),
        ]);
    }
    helm(&[
        "lint",
        "--strict",
        &chart,
        "--set",
        "certificates.mode=self-managed",
        "--set",
        "certificates.caBundle=Zm9v",
        "--set",
        "monitoring.serviceMonitor=true",
        "--set",
        "monitoring.podMonitor=true",
    ]);
    // Wrong choices are refused with a message.
    let out = Command::new(helm_bin())
        .args(["template", "x", &chart, "--set", "provider=openshift"])
        .env("HELM_CACHE_HOME", scratch_home().join("cache"))
        .env("HELM_CONFIG_HOME", scratch_home().join("config"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("provider must be generic, eks, karpenter, gke or aks"));

    // The same choices both ways: the same objects.
    let mut cases: Vec<(String, Vec<&str>, Vec<String>)> = Vec::new();
    for p in PROVIDERS {
        let mut comps = vec!["cert-manager"];
        if p != "generic" {
            comps.insert(0, p);
        }
        cases.push((p.into(), comps, vec![format!("provider={p}")]));
    }
    cases.push((
        "self-managed".into(),
        vec!["self-managed"],
        vec!["certificates.mode=self-managed".into()],
    ));
    cases.push((
        "eks-self-managed-monitoring".into(),
        vec!["eks", "self-managed", "monitoring"],
        vec![
            "provider=eks".into(),
            "certificates.mode=self-managed".into(),
            "monitoring.serviceMonitor=true".into(),
            "monitoring.podMonitor=true".into(),
        ],
    ));
    cases.push((
        "aks-monitoring".into(),
        vec!["aks", "cert-manager", "monitoring"],
        vec![
            "provider=aks".into(),
            "monitoring.serviceMonitor=true".into(),
            "monitoring.podMonitor=true".into(),
        ],
    ));
    for (name, comps, sets) in cases {
        let mut kobjs = compose(&c, &name, &comps);
        let bundle = kobjs
            .iter()
            .position(|o| o["kind"] == "__caBundle")
            .map(|i| kobjs.remove(i)["value"].as_str().unwrap().to_string());
        let mut args: Vec<String> = vec![
            "template".into(),
            "rayshape".into(),
            chart.to_string(),
            "-n".into(),
            NS.into(),
        ];
        for s in &sets {
            args.extend(["--set".into(), s.clone()]);
        }
        if let Some(b) = &bundle {
            args.extend(["--set".into(), format!("certificates.caBundle={b}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let k = normalize(kobjs);
        let h = normalize(objects(&helm(&args)));
        assert_eq!(
            k.keys().collect::<Vec<_>>(),
            h.keys().collect::<Vec<_>>(),
            "{name}: the same objects"
        );
        for (key, kv) in &k {
            let mut diffs = Vec::new();
            differences(kv, &h[key], String::new(), &mut diffs);
            assert!(
                diffs.is_empty(),
                "{name}: {key} differs:\n{}",
                diffs.join("\n")
            );
        }
    }
}

#[test]
fn the_anyscale_prefix_selects_anyscale_labels_both_ways() {
    let c = Cluster::get();
    // With components/monitoring before or after it.
    let k = compose(
        &c,
        "anyscale",
        &["cert-manager", "monitoring", "anyscale-prefix"],
    );
    let k_first = compose(
        &c,
        "anyscale-first",
        &["cert-manager", "anyscale-prefix", "monitoring"],
    );
    let h = objects(&helm(&[
        "template",
        "rayshape",
        &repo_path("charts/rayshape").to_string_lossy(),
        "-n",
        NS,
        "--set",
        "labelPrefix=anyscale.com",
        "--set",
        "monitoring.podMonitor=true",
    ]));
    for objs in [&k, &k_first, &h] {
        let mwc = find(objs, "MutatingWebhookConfiguration", "rayshape");
        assert_eq!(
            mwc["webhooks"][1]["objectSelector"]["matchExpressions"][0]["key"],
            "anyscale.com/instance-type"
        );
        let pm = find(objs, "PodMonitor", "rayshape-sidecars");
        assert_eq!(
            pm["spec"]["selector"]["matchExpressions"][0]["key"],
            "anyscale.com/market-type"
        );
    }
    assert_eq!(settings_of(&h)["labelPrefix"], "anyscale.com");
}

// --- the control plane of tests/run.sh ----------------------------------------------------------

/// `kubectl auth can-i --list` as rows of (resource or URL, verbs).
fn can_i_list(c: &Cluster, kubeconfig: &Path, extra: &[&str]) -> BTreeSet<(String, String)> {
    let mut args = vec!["auth", "can-i", "--list"];
    args.extend(extra);
    let out = ok_out(
        "kubectl auth can-i --list",
        kubectl(c, Some(kubeconfig), &args, None),
    );
    let mut rows = BTreeSet::new();
    for line in out.lines().skip(1) {
        // Columns: Resources, Non-Resource URLs, Resource Names, Verbs.
        let verbs = &line[line.rfind('[').unwrap()..];
        let fields: Vec<&str> = line.split_whitespace().collect();
        let what = if line.starts_with(' ') {
            fields[0].to_string() // a URL row: no resource
        } else {
            assert_eq!(fields[1], "[]", "{line}");
            assert_eq!(fields[2], "[]", "resource names in {line}");
            fields[0].to_string()
        };
        rows.insert((what, verbs.to_string()));
    }
    rows
}

#[test]
fn the_webhook_identity_may_do_what_the_code_needs_and_nothing_more() {
    let c = Cluster::get();
    let _s = shared();
    let admin = c.kubeconfig.clone();
    // What every authenticated identity may do here (system:basic-user, system:discovery,
    // system:public-info-viewer, service-account issuer discovery): a ServiceAccount with
    // no binding at all.
    let ns = c.namespace("deploy-rbac");
    c.ok(&["create", "serviceaccount", "nobody", "-n", &ns], None);
    let nobody = format!("system:serviceaccount:{ns}:nobody");
    let baseline = can_i_list(&c, &admin, &["--as", &nobody, "-n", &ns]);
    let want_code: BTreeSet<(String, String)> = [
        ("tokenreviews.authentication.k8s.io", "[create]"),
        ("pods", "[get]"),
        ("events.events.k8s.io", "[create]"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    // The same as the code's PERMISSIONS.
    let from_code: BTreeSet<(String, String)> = code_permissions()
        .into_iter()
        .map(|(v, g, r)| {
            let res = if g.is_empty() { r } else { format!("{r}.{g}") };
            (res, format!("[{v}]"))
        })
        .collect();
    assert_eq!(from_code, want_code);
    // The defaults, exactly as Kubernetes 1.36 grants them.
    let defaults: BTreeSet<(String, String)> = [
        ("selfsubjectreviews.authentication.k8s.io", "[create]"),
        ("selfsubjectaccessreviews.authorization.k8s.io", "[create]"),
        ("selfsubjectrulesreviews.authorization.k8s.io", "[create]"),
        ("[/.well-known/openid-configuration/]", "[get]"),
        ("[/.well-known/openid-configuration]", "[get]"),
        ("[/api/*]", "[get]"),
        ("[/api]", "[get]"),
        ("[/apis/*]", "[get]"),
        ("[/apis]", "[get]"),
        ("[/healthz]", "[get]"),
        ("[/livez]", "[get]"),
        ("[/openapi/*]", "[get]"),
        ("[/openapi]", "[get]"),
        ("[/openid/v1/jwks/]", "[get]"),
        ("[/openid/v1/jwks]", "[get]"),
        ("[/readyz]", "[get]"),
        ("[/version/]", "[get]"),
        ("[/version]", "[get]"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(
        baseline, defaults,
        "the defaults of an authenticated identity"
    );
    let expected: BTreeSet<_> = defaults.union(&want_code).cloned().collect();
    // Impersonated by the admin, and as the webhook itself (its own token), in a user
    // namespace, in rayshape's and cluster-wide.
    for extra in [
        vec!["--as", SA, "-n", ns.as_str()],
        vec!["--as", SA, "-n", NS],
        vec!["--as", SA, "-n", "kube-system"],
    ] {
        assert_eq!(can_i_list(&c, &admin, &extra), expected, "{extra:?}");
    }
    let own = c.dir.join("webhook.kubeconfig");
    for extra in [vec!["-n", ns.as_str()], vec!["-n", NS]] {
        assert_eq!(
            can_i_list(&c, &own, &extra),
            expected,
            "own token {extra:?}"
        );
    }
    // And the live ClusterRole is the rendered one.
    let live = c.json(&["get", "clusterrole", "rayshape-webhook"]);
    assert_eq!(role_permissions(&live), code_permissions());
}

/// With the namespaces sidecars may bootstrap in set, the chart lets the webhook read pods
/// and record Events there only: the API server's own answer for the identity.
#[test]
fn the_chart_reads_pods_only_where_sidecars_may_bootstrap() {
    let c = Cluster::get();
    let _s = shared();
    let release = c.namespace("deploy-rbac-release");
    let (a, b, other) = (
        c.namespace("deploy-rbac-a"),
        c.namespace("deploy-rbac-b"),
        c.namespace("deploy-rbac-other"),
    );
    let chart = repo_path("charts/rayshape").to_string_lossy().into_owned();
    let render = |sets: &[String]| {
        let mut args = vec![
            "template",
            "rayshape",
            chart.as_str(),
            "-n",
            release.as_str(),
        ];
        for s in sets {
            args.extend(["--set", s.as_str()]);
        }
        objects(&helm(&args))
    };
    let objs = render(&[
        format!("settings.bootstrap.namespaces={{{a},{b},{other}}}"),
        format!("settings.namespaces.include={{{a},{b}}}"),
    ]);
    let want = code_permissions();
    let cluster_role = find(&objs, "ClusterRole", "rayshape-webhook");
    let cluster_wide = role_permissions(cluster_role);
    assert_eq!(
        cluster_wide,
        [("create", "authentication.k8s.io", "tokenreviews")]
            .iter()
            .map(|(v, g, r)| (v.to_string(), g.to_string(), r.to_string()))
            .collect(),
    );
    let roles: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "Role").collect();
    let in_namespaces: BTreeSet<&str> = roles
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(
        in_namespaces,
        [a.as_str(), b.as_str()].into_iter().collect()
    );
    for r in &roles {
        let mut all = role_permissions(r);
        all.extend(cluster_wide.iter().cloned());
        assert_eq!(all, want);
    }
    // Applied (the namespaced objects: the cluster-wide ones are the installed webhook's),
    // for a ServiceAccount of that release.
    c.ok(
        &[
            "create",
            "serviceaccount",
            "rayshape-webhook",
            "-n",
            &release,
        ],
        None,
    );
    let namespaced: Vec<&Value> = objs
        .iter()
        .filter(|o| ["Role", "RoleBinding"].contains(&o["kind"].as_str().unwrap()))
        .collect();
    c.ok(
        &["apply", "-f", "-"],
        Some(&json!({"apiVersion": "v1", "kind": "List", "items": namespaced}).to_string()),
    );
    let sa = format!("system:serviceaccount:{release}:rayshape-webhook");
    let can = |verb: &str, what: &str, ns: &str| {
        let out = c.kubectl(&["auth", "can-i", verb, what, "-n", ns, "--as", &sa], None);
        text(&out.stdout).trim() == "yes"
    };
    for ns in [&a, &b] {
        assert!(
            can("get", "pods", ns) && can("create", "events.events.k8s.io", ns),
            "{ns}"
        );
        assert!(
            !can("list", "pods", ns) && !can("get", "secrets", ns),
            "{ns}"
        );
    }
    for ns in [&other, &release, &"kube-system".to_string()] {
        assert!(!can("get", "pods", ns), "{ns}: pods readable");
        assert!(!can("create", "events.events.k8s.io", ns), "{ns}: events");
    }
    // Namespaces of which sidecars can bootstrap in none: refused with the reason.
    let (only_other, only_a) = (
        format!("settings.bootstrap.namespaces={{{other}}}"),
        format!("settings.namespaces.include={{{a}}}"),
    );
    let out = helm_output(&[
        "template",
        "rayshape",
        &chart,
        "-n",
        &release,
        "--set",
        &only_other,
        "--set",
        &only_a,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("none of them is in settings.namespaces.include"),
        "{}",
        text(&out.stderr)
    );
    // Only one of them set: that list.
    let objs = render(&[format!("settings.namespaces.include={{{b}}}")]);
    let roles: Vec<&str> = objs
        .iter()
        .filter(|o| o["kind"] == "Role")
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(roles, [b.as_str()]);
    for ns in [&release, &a, &b, &other] {
        c.ok(&["delete", "namespace", ns, "--wait=false"], None);
    }
}

#[test]
fn up_sh_installed_what_the_e2e_overlay_renders() {
    let c = Cluster::get();
    let _s = exclusive();
    let install = c.dir.join("rayshape/install.yaml");
    // Nothing live differs from what up.sh rendered and applied...
    let out = c.kubectl(
        &["diff", "--server-side", "-f", &install.to_string_lossy()],
        None,
    );
    assert!(
        out.status.success(),
        "live objects differ from {}:\n{}{}",
        install.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
    // ... and that is the e2e overlay's, with up.sh's values only.
    let rendered = render_overlay(&c, "e2e");
    let installed = objects(&std::fs::read_to_string(&install).unwrap());
    for o in &rendered {
        let name = o["metadata"]["name"].as_str().unwrap();
        let kind = o["kind"].as_str().unwrap();
        let mut mine = find(&installed, kind, name).clone();
        let mut theirs = o.clone();
        if kind == "MutatingWebhookConfiguration" {
            for w in mine["webhooks"].as_array_mut().unwrap() {
                let cc = w["clientConfig"].as_object_mut().unwrap();
                assert!(cc.remove("caBundle").is_some());
                assert!(
                    cc["url"]
                        .as_str()
                        .unwrap()
                        .starts_with("https://127.0.0.1:")
                );
                cc.remove("url");
            }
            for w in theirs["webhooks"].as_array_mut().unwrap() {
                w["clientConfig"].as_object_mut().unwrap().remove("url");
            }
        }
        if kind == "ConfigMap" && name == "rayshape-settings" {
            let s: Value =
                serde_saphyr::from_str(mine["data"]["webhook.yaml"].as_str().unwrap()).unwrap();
            assert_eq!(s, json!({"profile": c.nodes}));
            continue;
        }
        assert_eq!(mine, theirs, "{kind} {name}");
    }
    // The registration live is the manifests' (selectors, policies), by URL.
    let live = c.json(&["get", "mutatingwebhookconfiguration", "rayshape"]);
    check_registration("e2e", &live);
}

fn pod_json(ns: &str, name: &str, labels: Value, restricted: bool) -> String {
    let mut container =
        json!({"name": "ray", "image": "rayproject/ray:2.52.0", "args": ["ray start --block"]});
    if restricted {
        container["securityContext"] = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}});
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [container]}})
    .to_string()
}

fn admissions(c: &Cluster) -> f64 {
    metric(
        &c.webhook_metrics(),
        "rayshape_webhook_admission_requests_total",
    )
}

fn force_delete_pods(c: &Cluster, ns: &str, selector: &str) {
    let _ = c.kubectl(
        &[
            "delete",
            "pods",
            "-n",
            ns,
            "-l",
            selector,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ],
        None,
    );
}

/// The Deployment of up.sh's install with `replicas`, applied as up.sh applied it (same
/// field manager, so putting it back leaves nothing behind).
fn set_replicas(c: &Cluster, replicas: u32) {
    let installed = objects(&std::fs::read_to_string(c.dir.join("rayshape/install.yaml")).unwrap());
    let mut d = find(&installed, "Deployment", "rayshape-webhook").clone();
    d["spec"]["replicas"] = json!(replicas);
    c.ok(&["apply", "--server-side", "-f", "-"], Some(&d.to_string()));
}

#[test]
fn only_ray_pods_reach_the_webhook_never_rayshape_s_own_pods() {
    let c = Cluster::get();
    let _x = exclusive();
    let ns = c.namespace("deploy-select");
    let optout = c.namespace("deploy-optout");
    c.ok(
        &[
            "label",
            "namespace",
            &optout,
            "rayshape.io/webhook=disabled",
        ],
        None,
    );
    let before = admissions(&c);

    // The webhook's own pods, created by the real Deployment and ReplicaSet controllers in
    // a namespace that enforces `restricted`, admitted, and never sent to the webhook.
    set_replicas(&c, 2);
    let guard = Restore(&c);
    wait_until(
        Duration::from_secs(30),
        "the ReplicaSet controller to create the webhook's 2 pods",
        || {
            let pods = c.json(&[
                "get",
                "pods",
                "-n",
                NS,
                "-l",
                "app.kubernetes.io/name=rayshape-webhook",
            ]);
            pods["items"].as_array().is_some_and(|a| a.len() == 2)
        },
    );
    let pods = c.json(&[
        "get",
        "pods",
        "-n",
        NS,
        "-l",
        "app.kubernetes.io/name=rayshape-webhook",
    ]);
    for p in pods["items"].as_array().unwrap() {
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(p["spec"]["priorityClassName"], "system-cluster-critical");
        assert_eq!(p["spec"]["priority"], 2000000000);
        assert_eq!(p["spec"]["serviceAccountName"], "rayshape-webhook");
        assert!(p["metadata"]["annotations"]["rayshape.io/shaped"].is_null());
    }
    let ns_labels = c.json(&["get", "namespace", NS])["metadata"]["labels"].clone();
    assert_eq!(
        ns_labels["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    // restricted is enforced there: a pod that is not restricted is refused.
    let out = c.kubectl(
        &["create", "-f", "-"],
        Some(&pod_json(NS, "not-restricted", json!({}), false)),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("violates PodSecurity \"restricted"),
        "{}",
        text(&out.stderr)
    );

    // Pods that are not Ray pods, and Ray pods where the webhook must never look.
    let quiet = [
        (ns.as_str(), "plain", json!({"app": "plain"})),
        (
            ns.as_str(),
            "ray-cluster-label-only",
            json!({"ray.io/cluster": "rc"}),
        ),
        (
            ns.as_str(),
            "other-prefix",
            json!({"example.com/instance-type": "2CPU-8GB"}),
        ),
        (
            NS,
            "ray-in-rayshape-system",
            json!({"ray.io/node-type": "worker"}),
        ),
        (
            NS,
            "typed-in-rayshape-system",
            json!({"rayshape.io/instance-type": "2CPU-8GB"}),
        ),
        (
            "kube-system",
            "ray-in-kube-system",
            json!({"ray.io/node-type": "worker"}),
        ),
        (
            optout.as_str(),
            "ray-opted-out",
            json!({"ray.io/node-type": "worker", "rayshape.io/instance-type": "2CPU-8GB"}),
        ),
    ];
    for (n, name, labels) in &quiet {
        c.ok(
            &["create", "-f", "-"],
            Some(&pod_json(n, name, labels.clone(), true)),
        );
    }
    // And a Deployment's pods (the controllers' path).
    c.ok(
        &[
            "create",
            "deployment",
            "web",
            "-n",
            &ns,
            "--image=nginx:1.29",
            "--replicas=2",
        ],
        None,
    );
    wait_until(Duration::from_secs(30), "the web Deployment's pods", || {
        c.json(&["get", "pods", "-n", &ns, "-l", "app=web"])["items"]
            .as_array()
            .is_some_and(|a| a.len() == 2)
    });
    // None of them reached the webhook, and each is stored untouched.
    assert_eq!(
        admissions(&c),
        before,
        "a pod that is not a Ray pod reached the webhook"
    );
    for (n, name, _) in &quiet {
        let p = c.json(&["get", "pod", name, "-n", n]);
        assert!(
            p["metadata"]["annotations"]["rayshape.io/shaped"].is_null(),
            "{n}/{name}"
        );
        assert!(p["spec"]["initContainers"].is_null(), "{n}/{name}");
    }

    // The control: a Ray pod in an ordinary namespace is sent and shaped.
    c.ok(
        &["create", "-f", "-"],
        Some(&pod_json(
            &ns,
            "ray",
            json!({"ray.io/node-type": "worker"}),
            true,
        )),
    );
    assert!(
        admissions(&c) > before,
        "the Ray pod did not reach the webhook"
    );
    let p = c.json(&["get", "pod", "ray", "-n", &ns]);
    assert!(p["metadata"]["annotations"]["rayshape.io/shaped"].is_string());
    for (n, name, _) in &quiet {
        let _ = c.kubectl(
            &[
                "delete",
                "pod",
                name,
                "-n",
                n,
                "--grace-period=0",
                "--force",
                "--wait=false",
            ],
            None,
        );
    }
    drop(guard);
}

#[test]
fn the_guide_s_check_shows_a_shaped_pod() {
    let c = Cluster::get();
    let _s = shared();
    let script = guide_block("check-shaping");
    // A pod of an earlier run of this test on the same control plane goes first.
    let _ = c.kubectl(
        &[
            "delete",
            "pod",
            "ray-check",
            "--grace-period=0",
            "--force",
            "--ignore-not-found",
        ],
        None,
    );
    let bin = rayshape_testkit::scratch("deploy", "path-check");
    std::os::unix::fs::symlink(kubectl_bin(&c), bin.join("kubectl")).unwrap();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("bash");
    // No kubelet confirms the deletion here: force it, so the pod holds no node.
    let _ = c.kubectl(
        &[
            "delete",
            "pod",
            "ray-check",
            "--grace-period=0",
            "--force",
            "--wait=false",
        ],
        None,
    );
    let out = ok_out(
        &format!("docs/install.md block check-shaping:\n{script}"),
        out,
    );
    let lines: Vec<&str> = out.lines().collect();
    let shaped = lines
        .iter()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no shaped annotation printed:\n{out}"));
    let shaped: Value = serde_json::from_str(shaped).unwrap();
    assert_eq!(shaped["instanceType"], "2CPU-8GB", "{out}");
    assert!(lines.contains(&"rayshape-sidecar"), "{out}");
}

/// Puts the webhook's Deployment back as up.sh left it (no replicas), even on failure.
struct Restore<'a>(&'a Cluster);
impl Drop for Restore<'_> {
    fn drop(&mut self) {
        set_replicas(self.0, 0);
        force_delete_pods(self.0, NS, "app.kubernetes.io/name=rayshape-webhook");
    }
}

// --- a control plane of its own: the guide, every overlay, the chart ---------------------------

/// A control plane started by tests/cluster/up.sh for this test alone; stopped on drop.
struct Own {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Own {
    fn start(c: &Cluster) -> Own {
        let dir = rayshape_testkit::scratch("deploy", "cluster");
        let exe = std::fs::read_to_string(c.dir.join("pids/rayshape-webhook.exe")).unwrap();
        let out = Command::new(repo_path("tests/cluster/up.sh"))
            .arg(&dir)
            .args(["--nodes", "generic"])
            .env("RAYSHAPE_CLUSTER_BIN", &c.bin)
            .env("RAYSHAPE_WEBHOOK_BIN", exe.trim())
            .output()
            .expect("run up.sh");
        let own = Own {
            kubeconfig: dir.join("kubeconfig"),
            dir,
        };
        ok_out(
            "tests/cluster/up.sh (the deploy test's own control plane)",
            out,
        );
        own
    }
}

impl Drop for Own {
    fn drop(&mut self) {
        let _ = Command::new(repo_path("tests/cluster/down.sh"))
            .arg(&self.dir)
            .output();
        // Its logs stay for a failed test; a passed one leaves nothing behind.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The rayshape-webhook binary the control plane of tests/run.sh runs.
fn webhook_bin(c: &Cluster) -> PathBuf {
    let exe = std::fs::read_to_string(c.dir.join("pids/rayshape-webhook.exe")).unwrap();
    PathBuf::from(exe.trim())
}

/// The fenced `sh` block after `<!-- test: NAME -->` in docs/install.md.
fn guide_block(name: &str) -> String {
    guide_block_in(name, "sh")
}

/// The fenced block of `lang` after `<!-- test: NAME -->` in docs/install.md.
fn guide_block_in(name: &str, lang: &str) -> String {
    let guide = std::fs::read_to_string(repo_path("docs/install.md")).unwrap();
    let marker = format!("<!-- test: {name} -->");
    let at = guide
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/install.md has no {marker}"));
    let rest = &guide[at + marker.len()..];
    let fence = format!("```{lang}\n");
    let start = rest
        .find(&fence)
        .unwrap_or_else(|| panic!("a ```{lang} block after {marker}"))
        + fence.len();
    assert!(
        rest[..start].trim_start().starts_with(&fence),
        "the block must follow {marker} directly"
    );
    let end = rest[start..].find("```").unwrap();
    rest[start..start + end].to_string()
}

/// A block's lines without the indentation they all share (a block inside a list item).
fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect()
}

/// Run a guide block as written, with bash, in `work` (a copy of the repository's
/// manifests/ and charts/), with kubectl, helm and rayshape-certs on PATH.
fn run_guide(c: &Cluster, own: &Own, work: &Path, name: &str) -> String {
    let script = guide_block(name);
    let bin = rayshape_testkit::scratch("deploy", &format!("path-{name}"));
    for (link, target) in [
        ("kubectl", kubectl_bin(c)),
        ("helm", helm_bin()),
        ("rayshape-certs", certs_bin()),
        ("rayshape-webhook", webhook_bin(c)),
    ] {
        std::os::unix::fs::symlink(target, bin.join(link)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(work)
        .env("PATH", path)
        .env("KUBECONFIG", &own.kubeconfig)
        .env("HELM_CACHE_HOME", scratch_home().join("cache"))
        .env("HELM_CONFIG_HOME", scratch_home().join("config"))
        .env("HELM_DATA_HOME", scratch_home().join("data"))
        .output()
        .expect("bash");
    ok_out(&format!("docs/install.md block {name}:\n{script}"), out)
}

fn own_ok(c: &Cluster, own: &Own, args: &[&str], stdin: Option<&str>) -> String {
    ok_out(
        &format!("kubectl {}", args.join(" ")),
        kubectl(c, Some(&own.kubeconfig), args, stdin),
    )
}

fn own_json(c: &Cluster, own: &Own, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&own_ok(c, own, &all, None)).unwrap()
}

/// Everything rendered is live, and applying it again would change nothing.
fn assert_installed(c: &Cluster, own: &Own, what: &str, rendered: &str) {
    let out = kubectl(
        c,
        Some(&own.kubeconfig),
        &["diff", "--server-side", "-f", "-"],
        Some(rendered),
    );
    assert!(
        out.status.success(),
        "{what}: the live objects differ from the rendered ones:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // The real Deployment and ReplicaSet controllers made its pods, admitted in a
    // namespace that enforces restricted.
    let replicas = objects(rendered)
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .map(|d| d["spec"]["replicas"].as_u64().unwrap())
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        &format!("{what}: {replicas} webhook pods"),
        || {
            let pods = own_json(
                c,
                own,
                &[
                    "get",
                    "pods",
                    "-n",
                    NS,
                    "-l",
                    "app.kubernetes.io/name=rayshape-webhook",
                ],
            );
            pods["items"].as_array().is_some_and(|a| {
                a.len() as u64 == replicas
                    && a.iter().all(|p| {
                        p["metadata"]["deletionTimestamp"].is_null()
                            && p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
                    })
            })
        },
    );
}

/// The webhook's Deployment and its pods gone, so that the next install starts its pods
/// afresh (they never become ready here: a rolling update would stall on its surge pod).
fn remove_deployment(c: &Cluster, own: &Own) {
    let _ = kubectl(
        c,
        Some(&own.kubeconfig),
        &[
            "delete",
            "deployment",
            "rayshape-webhook",
            "-n",
            NS,
            "--cascade=foreground",
            "--ignore-not-found",
            "--timeout=60s",
        ],
        None,
    );
    wait_until(Duration::from_secs(60), "the webhook's pods to go", || {
        own_json(
            c,
            own,
            &[
                "get",
                "pods",
                "-n",
                NS,
                "-l",
                "app.kubernetes.io/name=rayshape-webhook",
            ],
        )["items"]
            .as_array()
            .is_some_and(|a| a.is_empty())
    });
}

fn assert_uninstalled(c: &Cluster, own: &Own) {
    for args in [
        ["get", "namespace", NS],
        ["get", "mutatingwebhookconfiguration", "rayshape"],
        ["get", "clusterrole", "rayshape-webhook"],
        ["get", "clusterrolebinding", "rayshape-webhook"],
    ] {
        let out = kubectl(c, Some(&own.kubeconfig), &args, None);
        assert!(
            !out.status.success() && text(&out.stderr).contains("NotFound"),
            "still there after the uninstall: {}",
            args[1..].join(" ")
        );
    }
}

/// The CRDs of a module pinned by tests/deploy/crds, from the Go module cache.
fn crd_dir(module: &str, sub: &str) -> PathBuf {
    let out = Command::new("go")
        .args(["mod", "download", "-json", module])
        .current_dir(repo_path("tests/deploy/crds"))
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("go");
    let info: Value = serde_json::from_str(&ok_out("go mod download", out)).unwrap();
    let dir = PathBuf::from(info["Dir"].as_str().unwrap()).join(sub);
    assert!(dir.is_dir(), "{}", dir.display());
    dir
}

#[test]
fn the_guide_every_overlay_and_the_chart_install_on_a_fresh_control_plane() {
    let c = Cluster::get();
    let own = Own::start(&c);

    // cert-manager v1.21.2's and the Prometheus Operator v0.85.0's CRDs, as the guide's
    // prerequisites and so that Certificates, Issuers, ServiceMonitors and PodMonitors are
    // validated against their real schemas.
    for dir in [
        crd_dir("github.com/cert-manager/cert-manager", "deploy/crds"),
        crd_dir(
            "github.com/prometheus-operator/prometheus-operator",
            "example/prometheus-operator-crd",
        ),
    ] {
        own_ok(
            &c,
            &own,
            &["apply", "--server-side", "-f", &dir.to_string_lossy()],
            None,
        );
    }
    own_ok(
        &c,
        &own,
        &[
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            "crd/certificates.cert-manager.io",
            "crd/issuers.cert-manager.io",
            "crd/podmonitors.monitoring.coreos.com",
            "crd/servicemonitors.monitoring.coreos.com",
        ],
        None,
    );

    // What up.sh installed goes, by the guide's uninstall.
    let work = workdir("guide-uninstall-0");
    run_guide(&c, &own, &work, "uninstall-kustomize");
    assert_uninstalled(&c, &own);

    // The guide's generic install with kustomize and rayshape-certs, as written.
    let work = workdir("guide-kustomize");
    run_guide(&c, &own, &work, "generic-kustomize");
    let rendered = kustomize(&c, &work.join("manifests/overlays/self-managed"));
    assert_installed(
        &c,
        &own,
        "guide: generic, kustomize, self-managed",
        &rendered,
    );
    // The caBundle is the generated CA, and the Secret holds what the Deployment mounts.
    let bundle = ca_bundle(&work.join("pki"));
    let mwc = own_json(
        &c,
        &own,
        &["get", "mutatingwebhookconfiguration", "rayshape"],
    );
    for w in mwc["webhooks"].as_array().unwrap() {
        assert_eq!(w["clientConfig"]["caBundle"], bundle.as_str());
    }
    let secret = own_json(
        &c,
        &own,
        &["get", "secret", "rayshape-webhook-tls", "-n", NS],
    );
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["data"]["ca.crt"], bundle.as_str());
    assert!(secret["data"]["tls.key"].is_string() && secret["data"]["tls.crt"].is_string());
    // `rayshape-certs check` accepts the live registration.
    let out = rayshape_e2e::run(
        {
            let mut cmd = Command::new(certs_bin());
            cmd.args(["check", "--dir"])
                .arg(work.join("pki"))
                .args(["--webhook-config", "-"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd
        },
        Some(&mwc.to_string()),
    );
    ok_out("rayshape-certs check --webhook-config", out);
    // The guide's upgrade (the same apply again) changes nothing and works, also from a
    // fresh clone, which lacks the ignored ca-bundle.env.
    std::fs::remove_file(work.join("manifests/components/self-managed/ca-bundle.env")).unwrap();
    run_guide(&c, &own, &work, "upgrade-kustomize");
    assert_installed(&c, &own, "guide: upgrade", &rendered);
    run_guide(&c, &own, &work, "uninstall-kustomize");
    assert_uninstalled(&c, &own);

    // With cert-manager (its CRDs installed above).
    let work = workdir("guide-cert-manager");
    run_guide(&c, &own, &work, "generic-kustomize-cert-manager");
    let rendered = kustomize(&c, &work.join("manifests/overlays/generic"));
    assert_installed(
        &c,
        &own,
        "guide: generic, kustomize, cert-manager",
        &rendered,
    );
    own_ok(
        &c,
        &own,
        &["get", "certificate", "rayshape-webhook", "-n", NS],
        None,
    );
    run_guide(&c, &own, &work, "uninstall-kustomize");
    assert_uninstalled(&c, &own);

    // With Helm and rayshape-certs.
    let work = workdir("guide-helm");
    run_guide(&c, &own, &work, "generic-helm");
    let status = helm_status(&own);
    assert!(status.contains("STATUS: deployed"), "{status}");
    let bundle = ca_bundle(&work.join("pki"));
    let mwc = own_json(
        &c,
        &own,
        &["get", "mutatingwebhookconfiguration", "rayshape"],
    );
    for w in mwc["webhooks"].as_array().unwrap() {
        assert_eq!(w["clientConfig"]["caBundle"], bundle.as_str());
    }
    let rendered = helm(&[
        "template",
        "rayshape",
        &work.join("charts/rayshape").to_string_lossy(),
        "-n",
        NS,
        "--set",
        "certificates.mode=self-managed",
        "--set",
        &format!("certificates.caBundle={bundle}"),
    ]);
    assert_installed(&c, &own, "guide: generic, Helm, self-managed", &rendered);
    // The namespace the guide made is labelled as the kustomize one is.
    let live = own_json(&c, &own, &["get", "namespace", NS])["metadata"]["labels"].clone();
    let kns = find(&render_overlay(&c, "generic"), "Namespace", NS)["metadata"]["labels"].clone();
    for (k, v) in kns.as_object().unwrap() {
        if k != "app.kubernetes.io/part-of" {
            assert_eq!(&live[k], v, "namespace label {k}");
        }
    }
    run_guide(&c, &own, &work, "uninstall-helm");
    assert_uninstalled(&c, &own);

    // Migrating from the Anyscale operator, as the guide says: its ConfigMaps exported,
    // checked and installed with the label prefix anyscale.com.
    own_ok(
        &c,
        &own,
        &["apply", "--server-side", "-f", "-"],
        Some(ANYSCALE_CONFIGMAPS),
    );
    own_ok(&c, &own, &["create", "namespace", NS], None);
    own_ok(
        &c,
        &own,
        &[
            "label",
            "namespace",
            NS,
            "pod-security.kubernetes.io/enforce=restricted",
            "rayshape.io/webhook=disabled",
        ],
        None,
    );
    let work = workdir("guide-migrate");
    run_guide(&c, &own, &work, "migrate-export");
    let out = run_guide(&c, &own, &work, "migrate-check");
    assert!(out.contains("label prefix anyscale.com"), "{out}");
    run_guide(&c, &own, &work, "migrate-helm");
    for (cm, key, file) in [
        (
            "rayshape-instance-types",
            "instance_types.yaml",
            "instance_types.yaml",
        ),
        ("rayshape-patches", "patches.yaml", "patches.yaml"),
    ] {
        let live = own_json(&c, &own, &["get", "configmap", cm, "-n", NS]);
        let exported = std::fs::read_to_string(work.join(file)).unwrap();
        assert!(exported.contains("2CPU-8GB"), "{file}: {exported}");
        assert_eq!(
            live["data"][key].as_str().unwrap().trim(),
            exported.trim(),
            "{cm}"
        );
    }
    let mwc = own_json(
        &c,
        &own,
        &["get", "mutatingwebhookconfiguration", "rayshape"],
    );
    assert_eq!(
        mwc["webhooks"][1]["objectSelector"]["matchExpressions"][0]["key"],
        "anyscale.com/instance-type"
    );
    // The Anyscale rules work unchanged on a pod that asks with Anyscale's labels.
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"default","labels":{"anyscale.com/instance-type":"2CPU-8GB","anyscale.com/zone":"us-west-2a"}},"spec":{"containers":[{"name":"ray","image":"rayproject/ray:2.52.0","args":["ray start --block"]}]}}"#;
    let out = rayshape_e2e::run(
        {
            let mut cmd = Command::new(webhook_bin(&c));
            cmd.args(["mutate", "-f", "-", "--format", "json", "--config"])
                .arg(&work)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd
        },
        Some(pod),
    );
    let shaped: Value = serde_json::from_str(&ok_out("rayshape-webhook mutate", out)).unwrap();
    assert_eq!(
        shaped["metadata"]["labels"]["migrated-from"], "anyscale",
        "{shaped}"
    );
    assert_eq!(
        shaped["spec"]["nodeSelector"]["topology.kubernetes.io/zone"], "us-west-2a",
        "{shaped}"
    );
    assert_eq!(
        shaped["spec"]["nodeSelector"]["eks.amazonaws.com/capacityType"], "ON_DEMAND",
        "{shaped}"
    );
    assert_eq!(
        shaped["spec"]["containers"][0]["resources"]["limits"]["cpu"], "1900m",
        "{shaped}"
    );
    run_guide(&c, &own, &work, "uninstall-helm");
    assert_uninstalled(&c, &own);

    // Every overlay, then every chart variant, applied server-side for real; each one over
    // the previous, as an upgrade or a change of provider would be.
    own_ok(&c, &own, &["create", "namespace", NS], None);
    let certs = rayshape_testkit::scratch("deploy", "own-certs");
    generate_certs(&certs);
    let secret = ok_out(
        "rayshape-certs secret",
        Command::new(certs_bin())
            .args(["secret", "--dir"])
            .arg(&certs)
            .output()
            .unwrap(),
    );
    own_ok(
        &c,
        &own,
        &["apply", "--server-side", "-f", "-"],
        Some(&secret),
    );
    let work = workdir("every-overlay");
    write_ca_bundle(&work, &certs);
    let mut renders: Vec<(String, String)> = OVERLAYS
        .iter()
        .map(|o| {
            (
                format!("overlay {o}"),
                kustomize(&c, &work.join(format!("manifests/overlays/{o}"))),
            )
        })
        .collect();
    for (name, comps) in [
        ("monitoring", vec!["cert-manager", "monitoring"]),
        (
            "anyscale",
            vec!["eks", "self-managed", "monitoring", "anyscale-prefix"],
        ),
    ] {
        let dir = work.join(format!("mine-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let comps: String = comps
            .iter()
            .map(|c| format!("- ../manifests/components/{c}\n"))
            .collect();
        std::fs::write(
            dir.join("kustomization.yaml"),
            format!("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../manifests/base\ncomponents:\n{comps}"),
        )
        .unwrap();
        renders.push((format!("components {name}"), kustomize(&c, &dir)));
    }
    let bundle = ca_bundle(&certs);
    for p in PROVIDERS {
        for mode in ["cert-manager", "self-managed"] {
            renders.push((
                format!("chart provider={p} certificates.mode={mode}"),
                helm(&[
                    "template",
                    "rayshape",
                    &repo_path("charts/rayshape").to_string_lossy(),
                    "-n",
                    NS,
                    "--set",
                    &format!("provider={p}"),
                    "--set",
                    &format!("certificates.mode={mode}"),
                    "--set",
                    &format!("certificates.caBundle={bundle}"),
                    "--set",
                    "monitoring.serviceMonitor=true",
                    "--set",
                    "monitoring.podMonitor=true",
                ]),
            ));
        }
    }
    // The values that reach other objects, for the API server's and the CRDs' validation
    // too (settings.namespaces.include makes a Role in each namespace: `default` exists).
    renders.push((
        "chart with settings.namespaces, monitoring.labels, metricsPort".into(),
        helm(&[
            "template",
            "rayshape",
            &repo_path("charts/rayshape").to_string_lossy(),
            "-n",
            NS,
            "--set",
            "certificates.mode=self-managed",
            "--set",
            &format!("certificates.caBundle={bundle}"),
            "--set",
            "settings.namespaces.include={default}",
            "--set",
            "settings.namespaces.exclude={ray-scratch}",
            "--set",
            "monitoring.serviceMonitor=true",
            "--set",
            "monitoring.podMonitor=true",
            "--set",
            "monitoring.labels.release=kube-prometheus-stack",
            "--set",
            "metricsPort=9191",
        ]),
    ));
    for (what, rendered) in &renders {
        remove_deployment(&c, &own);
        own_ok(
            &c,
            &own,
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(rendered),
        );
        assert_installed(&c, &own, what, rendered);
        if what.contains("gke") {
            let d = own_json(
                &c,
                &own,
                &["get", "deployment", "rayshape-webhook", "-n", NS],
            );
            assert_eq!(
                d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
                10250
            );
        }
    }
    // The monitors were validated by the Prometheus Operator's schemas.
    own_ok(
        &c,
        &own,
        &["get", "podmonitor", "rayshape-sidecars", "-n", NS],
        None,
    );
    own_ok(
        &c,
        &own,
        &["get", "servicemonitor", "rayshape-webhook", "-n", NS],
        None,
    );
}

/// An Anyscale operator's ConfigMaps, in the format its Helm chart writes them.
const ANYSCALE_CONFIGMAPS: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: anyscale-operator}
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: instance-types
    namespace: anyscale-operator
    labels: {anyscale.com/name: instance-types}
  data:
    version: v1
    instance_types.yaml: |
      2CPU-8GB:
        resources:
          CPU: 2
          memory: 8Gi
      8CPU-32GB-1xT4:
        resources:
          CPU: 8
          GPU: 1
          memory: 32Gi
          accelerators:
          - T4
        nodeSelector:
          node.kubernetes.io/instance-type: g4dn.2xlarge
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: patches
    namespace: anyscale-operator
  data:
    patches.yaml: |
      # A bare list, as the Anyscale chart writes it.
      - kind: Pod
        selector: "anyscale.com/market-type in (ON_DEMAND)"
        patch:
        - op: add
          path: /spec/nodeSelector/eks.amazonaws.com~1capacityType
          value: ON_DEMAND
        - op: add
          path: /metadata/annotations/cluster-autoscaler.kubernetes.io~1safe-to-evict
          value: "false"
      - kind: Pod
        selector: anyscale.com/zone
        patch:
          - op: add
            path: /spec/nodeSelector/topology.kubernetes.io~1zone
          - op: copy
            from: /metadata/annotations/anyscale.com~1zone
            path: /spec/nodeSelector/topology.kubernetes.io~1zone
      - kind: Pod
        selector: "anyscale.com/instance-type in (2CPU-8GB)"
        patch:
        - op: add
          path: /metadata/labels/migrated-from
          value: anyscale
"#;

fn helm_status(own: &Own) -> String {
    let mut cmd = Command::new(helm_bin());
    cmd.args(["status", "rayshape", "-n", NS])
        .env("KUBECONFIG", &own.kubeconfig)
        .env("HELM_CACHE_HOME", scratch_home().join("cache"))
        .env("HELM_CONFIG_HOME", scratch_home().join("config"))
        .env("HELM_DATA_HOME", scratch_home().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ok_out("helm status", run_in(&mut cmd, None))
}

/// A work directory with certificates, their `ca-bundle.env`, and the guide's own overlay's
/// `pieces/` in `my-rayshape/`: (the certificates' directory, `my-rayshape`).
fn guide_overlay_dir(name: &str) -> (PathBuf, PathBuf) {
    let work = workdir(name);
    let certs = work.join("certs");
    generate_certs(&certs);
    write_ca_bundle(&work, &certs);
    let mine = work.join("my-rayshape");
    std::fs::create_dir_all(mine.join("pieces")).unwrap();
    std::fs::write(
        mine.join("pieces/kustomization.yaml"),
        guide_block_in("own-overlay-pieces", "yaml"),
    )
    .unwrap();
    (certs, mine)
}

#[test]
fn the_guide_s_own_overlay_puts_your_files_in_force() {
    let c = Cluster::get();
    let (certs, mine) = guide_overlay_dir("own-overlay");
    std::fs::write(
        mine.join("kustomization.yaml"),
        guide_block_in("own-overlay", "yaml"),
    )
    .unwrap();
    let v = workspace_version();
    let files = [
        (
            "webhook.yaml",
            format!(
                "profile: eks\nsidecar:\n  image: ghcr.io/rayshape/rayshape-sidecar:v{v}\n  logSink: {{url: \"s3://mine/ray-logs\"}}\n"
            ),
        ),
        (
            "instance_types.yaml",
            "4CPU-16GB:\n  resources: {CPU: 4, memory: 16Gi}\n".to_string(),
        ),
        ("patches.yaml", "patches: []\n".to_string()),
    ];
    for (f, t) in &files {
        std::fs::write(mine.join(f), t).unwrap();
    }
    // They are a valid configuration...
    let out = Command::new(webhook_bin(&c))
        .args(["check-config", "--config"])
        .arg(&mine)
        .output()
        .unwrap();
    ok_out("rayshape-webhook check-config", out);
    // ... and they are what the overlay installs, over the provider's.
    let objs = objects(&kustomize(&c, &mine));
    for (cm, (f, t)) in [
        "rayshape-settings",
        "rayshape-instance-types",
        "rayshape-patches",
    ]
    .iter()
    .zip(&files)
    {
        assert_eq!(find(&objs, "ConfigMap", cm)["data"][*f], t.as_str(), "{cm}");
    }
    // With the pieces chosen: EKS, rayshape-certs' caBundle, the monitors.
    let mwc = find(&objs, "MutatingWebhookConfiguration", "rayshape");
    assert_eq!(
        mwc["webhooks"][0]["clientConfig"]["caBundle"],
        ca_bundle(&certs).as_str()
    );
    find(&objs, "PodMonitor", "rayshape-sidecars");
    find(&objs, "ServiceMonitor", "rayshape-webhook");
    assert_eq!(kinds(&objs).len(), 13);
}

/// Where a Helm value also changes other objects (settings.namespaces the webhook
/// configuration's selectors, monitoring.labels the monitors), the guide's patches on its
/// own overlay give the objects the chart renders.
#[test]
fn the_guide_s_patches_do_what_the_chart_s_values_do() {
    let c = Cluster::get();
    let (certs, mine) = guide_overlay_dir("guide-patches");
    // The own overlay, and the items of each patch block in one `patches:` list.
    let mut kustomization = guide_block_in("own-overlay", "yaml");
    kustomization.push_str("patches:\n");
    for block in ["namespaces-include", "namespaces-exclude", "monitor-labels"] {
        let text = dedent(&guide_block_in(block, "yaml"));
        let items = text
            .strip_prefix("patches:\n")
            .unwrap_or_else(|| panic!("docs/install.md {block}: a `patches:` list\n{text}"));
        kustomization.push_str(items);
    }
    std::fs::write(mine.join("kustomization.yaml"), &kustomization).unwrap();
    let v = workspace_version();
    let files = [
        (
            "webhook.yaml",
            format!(
                "profile: eks\nsidecar:\n  image: ghcr.io/rayshape/rayshape-sidecar:v{v}\nnamespaces:\n  include: [ray-prod, ray-dev]\n  exclude: [ray-scratch]\n"
            ),
        ),
        (
            "instance_types.yaml",
            std::fs::read_to_string(repo_path("manifests/base/config/instance_types.yaml"))
                .unwrap(),
        ),
        (
            "patches.yaml",
            std::fs::read_to_string(repo_path("manifests/base/config/patches.yaml")).unwrap(),
        ),
    ];
    for (f, t) in &files {
        std::fs::write(mine.join(f), t).unwrap();
    }
    let k = normalize(objects(&kustomize(&c, &mine)));
    let bundle = ca_bundle(&certs);
    let h = normalize(objects(&helm(&[
        "template",
        "rayshape",
        &repo_path("charts/rayshape").to_string_lossy(),
        "-n",
        NS,
        "--set",
        "provider=eks",
        "--set",
        "certificates.mode=self-managed",
        "--set",
        &format!("certificates.caBundle={bundle}"),
        "--set",
        "monitoring.serviceMonitor=true",
        "--set",
        "monitoring.podMonitor=true",
        "--set",
        "settings.namespaces.include={ray-prod,ray-dev}",
        "--set",
        "settings.namespaces.exclude={ray-scratch}",
        "--set",
        "monitoring.labels.release=kube-prometheus-stack",
    ])));
    for key in [
        "MutatingWebhookConfiguration//rayshape",
        "ServiceMonitor/rayshape-system/rayshape-webhook",
        "PodMonitor/rayshape-system/rayshape-sidecars",
    ] {
        let mut diffs = Vec::new();
        differences(&k[key], &h[key], String::new(), &mut diffs);
        assert!(
            diffs.is_empty(),
            "{key} differs:\n{}\n{kustomization}",
            diffs.join("\n")
        );
    }
    // The patches did take (not two renders equally without them).
    for w in k["MutatingWebhookConfiguration//rayshape"]["webhooks"]
        .as_array()
        .unwrap()
    {
        let exprs = w["namespaceSelector"]["matchExpressions"]
            .as_array()
            .unwrap();
        assert_eq!(
            exprs.last().unwrap(),
            &json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ray-prod", "ray-dev"]})
        );
        assert!(
            exprs[0]["values"]
                .as_array()
                .unwrap()
                .contains(&json!("ray-scratch"))
        );
    }
    assert_eq!(
        k["PodMonitor/rayshape-system/rayshape-sidecars"]["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
}

#[test]
fn the_readme_links_the_install_guide() {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    assert!(
        readme.contains("(docs/install.md)"),
        "README.md links docs/install.md"
    );
    for block in [
        "generic-kustomize",
        "generic-kustomize-cert-manager",
        "generic-helm",
        "upgrade-kustomize",
        "uninstall-kustomize",
        "uninstall-helm",
        "migrate-export",
        "migrate-check",
        "migrate-helm",
        "check-shaping",
    ] {
        assert!(!guide_block(block).trim().is_empty());
    }
}

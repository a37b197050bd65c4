//! The sidecar as a shaped pod runs it: the environment the webhook injected into the pod
//! the API server stored, the pod's projected token minted by TokenRequest (as the kubelet
//! would, with the volume's audience), the real bootstrap against the webhook, and s3s-fs as
//! the object store. Only the paths of the pod's filesystem are moved to a scratch
//! directory, and the credentials come from the environment, as from an IAM role.
//!
//! Needs `RAYSHAPE_SIDECAR_BIN` (the `rayshape-sidecar` binary) and `S3S_FS_BIN`, both set
//! by `tests/run.sh`.

use rayshape_e2e::{Cluster, exclusive, metric, text, wait_until};
use rayshape_testkit::{Proc, free_port, scratch, tool_from_env, wait_port};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AK: &str = "AKIDRAYSHAPE";
const SK: &str = "rayshape-test-secret";
const BUCKET: &str = "ray-logs";
const SESSION: &str = "session_2026-11-29_10-00-00_000001_1";
/// Where the sidecar's token is mounted, as documented (README, the sidecar's settings).
const TOKEN_DIR: &str = "/var/run/secrets/rayshape.io/serviceaccount";

/// s3s-fs on a free port, serving `dir` (one folder per bucket).
struct Store {
    port: u16,
    dir: PathBuf,
    _proc: Proc,
}

impl Store {
    fn start(work: &Path) -> Option<Store> {
        let bin = tool_from_env("S3S_FS_BIN")?;
        let dir = work.join("s3");
        std::fs::create_dir_all(dir.join(BUCKET)).expect("bucket directory");
        let port = free_port();
        let log = std::fs::File::create(work.join("s3s-fs.log")).expect("s3s-fs log");
        let proc = Proc::spawn(
            Command::new(bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", AK, "--secret-key", SK])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(log),
        );
        wait_port(port, Duration::from_secs(30));
        Some(Store {
            port,
            dir,
            _proc: proc,
        })
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every object key in the bucket.
    fn keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.join(BUCKET)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(self.dir.join(BUCKET)) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }
}

/// The webhook's settings for these tests: the cluster's profile, the sidecar's bootstrap
/// at this webhook, logs to the store (no credentials in the ConfigMap), a short flush age.
fn settings(c: &Cluster, store: &Store) -> String {
    format!(
        "{}sidecar:\n  bootstrapUrl: {}/v1/bootstrap\n  logSink:\n    url: s3://{BUCKET}/clusters\n    options:\n      aws_endpoint: {}\n      aws_allow_http: \"true\"\n      aws_region: us-east-1\n      aws_virtual_hosted_style_request: \"false\"\n  flush:\n    maxAgeSeconds: 1\n",
        c.default_settings(),
        c.webhook_url,
        store.endpoint()
    )
}

/// A Ray pod created through the webhook: the stored object.
fn shaped_pod(c: &Cluster, ns: &str, name: &str) -> Value {
    c.ok(&["create", "serviceaccount", "ray", "-n", ns], None);
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"rayshape.io/instance-type": "2CPU-8GB"}},
        "spec": {"serviceAccountName": "ray", "containers": [{"name": "ray", "image": "rayproject/ray:2.52.0", "args": ["ray start --block"]}]}});
    c.ok(&["create", "-f", "-"], Some(&pod.to_string()));
    c.json(&["get", "pod", name, "-n", ns])
}

/// The injected sidecar container of a stored pod (native, or a regular container).
fn sidecar_container(pod: &Value) -> &Value {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().into_iter().flatten())
        .find(|c| c["name"] == "rayshape-sidecar")
        .unwrap_or_else(|| panic!("no rayshape-sidecar container in {pod}"))
}

/// The audience of the projected token the webhook mounted for the sidecar.
fn token_audience(pod: &Value) -> String {
    let mount = sidecar_container(pod)["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == TOKEN_DIR)
        .unwrap_or_else(|| panic!("the sidecar does not mount its token: {pod}"));
    let volume = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {} in {pod}", mount["name"]));
    volume["projected"]["sources"][0]["serviceAccountToken"]["audience"]
        .as_str()
        .unwrap_or_else(|| panic!("volume {} projects no token: {volume}", mount["name"]))
        .to_string()
}

/// A token for the pod's ServiceAccount, bound to the pod, as the kubelet requests it.
fn pod_token(c: &Cluster, pod: &Value, audience: &str) -> String {
    let m = &pod["metadata"];
    let (ns, name, uid) = (
        m["namespace"].as_str().unwrap_or_default(),
        m["name"].as_str().unwrap_or_default(),
        m["uid"].as_str().unwrap_or_default(),
    );
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    c.token(ns, sa, audience, Some((name, uid)))
}

/// Write a token the way the kubelet rotates it: a new file swapped in whole.
fn write_token(path: &Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, token).expect("write the token");
    std::fs::rename(&tmp, path).expect("swap the token in");
}

/// The value of a `fieldRef` as the kubelet resolves it from the stored pod.
fn field(pod: &Value, path: &str) -> String {
    let v = match path {
        "metadata.name" => &pod["metadata"]["name"],
        "metadata.namespace" => &pod["metadata"]["namespace"],
        "metadata.uid" => &pod["metadata"]["uid"],
        "spec.nodeName" => &pod["spec"]["nodeName"],
        p => match p
            .strip_prefix("metadata.labels['")
            .and_then(|k| k.strip_suffix("']"))
        {
            Some(k) => &pod["metadata"]["labels"][k],
            None => panic!("the sidecar's environment uses fieldRef {p:?}, unknown here"),
        },
    };
    v.as_str().unwrap_or_default().to_string()
}

/// The sidecar process with the stored pod's environment for its container, the pod's
/// filesystem paths moved under `work`.
struct Sidecar {
    proc: Proc,
    metrics: String,
    log: PathBuf,
    token: PathBuf,
    root: PathBuf,
}

impl Sidecar {
    /// Started with `token` in its token file, as the kubelet mounts it before it starts.
    fn start(pod: &Value, work: &Path, token: &str) -> Option<Sidecar> {
        let bin = tool_from_env("RAYSHAPE_SIDECAR_BIN")?;
        let root = work.join("ray");
        let token_file = work.join("token");
        write_token(&token_file, token);
        let token = token_file;
        let port = free_port();
        let log = work.join("sidecar.log");
        let mut cmd = Command::new(bin);
        cmd.env_clear().arg("run");
        let container = sidecar_container(pod);
        assert_eq!(container["args"], json!(["run"]), "{container}");
        for e in container["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or_default();
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some(path) => field(pod, path),
                None => e["value"].as_str().unwrap_or_default().to_string(),
            };
            let value = match name {
                "RAYSHAPE_TOKEN_FILE" => {
                    assert_eq!(value, format!("{}/token", TOKEN_DIR), "{container}");
                    token.display().to_string()
                }
                "RAYSHAPE_LOG_ROOT" => root.display().to_string(),
                "RAYSHAPE_METRICS_LISTEN" => format!("127.0.0.1:{port}"),
                _ => value,
            };
            cmd.env(name, value);
        }
        for must in [
            "RAYSHAPE_BOOTSTRAP_URL",
            "RAYSHAPE_BOOTSTRAP_CA",
            "RAYSHAPE_TOKEN_FILE",
            "RAYSHAPE_LOG_ROOT",
        ] {
            assert!(
                container["env"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|e| e["name"] == must)),
                "{must} not injected: {container}"
            );
        }
        cmd.env("AWS_ACCESS_KEY_ID", AK)
            .env("AWS_SECRET_ACCESS_KEY", SK)
            .env("RAYSHAPE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("sidecar log"));
        let proc = Proc::spawn(&mut cmd);
        wait_port(port, Duration::from_secs(30));
        Some(Sidecar {
            proc,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
            log,
            token,
            root,
        })
    }

    fn metric(&self, prefix: &str) -> f64 {
        let out = Command::new("curl")
            .args(["-sf", &self.metrics])
            .output()
            .expect("curl runs");
        metric(&text(&out.stdout), prefix)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_bootstrap(&self, state: &str, timeout: Duration) {
        let what = format!("the sidecar's bootstrap to be {state}");
        let deadline = Instant::now() + timeout;
        while self.metric(&format!(
            "rayshape_sidecar_bootstrap_state{{state=\"{state}\"}}"
        )) != 1.0
        {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Append to one of Ray's log files in this pod's session.
    fn ray_writes(&self, name: &str, data: &str) {
        use std::io::Write;
        let dir = self.root.join(SESSION).join("logs");
        std::fs::create_dir_all(&dir).expect("session logs directory");
        let latest = self.root.join("session_latest");
        if !latest.exists() {
            std::os::unix::fs::symlink(SESSION, &latest).expect("session_latest");
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .expect("open a Ray log file");
        f.write_all(data.as_bytes()).expect("write a Ray log file");
    }
}

/// Read a pod's shipped file back with `rayshape-sidecar logs get`: its bytes.
fn shipped(store: &Store, key_prefix: &str, file: &str, work: &Path) -> Vec<u8> {
    let out_dir = work.join(format!("get-{}", free_port()));
    let bin = tool_from_env("RAYSHAPE_SIDECAR_BIN").expect("RAYSHAPE_SIDECAR_BIN");
    let out = Command::new(bin)
        .args(["logs", "get", "--sink", &format!("s3://{BUCKET}/clusters")])
        .args(["-o", &format!("aws_endpoint={}", store.endpoint())])
        .args(["-o", "aws_allow_http=true", "-o", "aws_region=us-east-1"])
        .args(["-o", "aws_virtual_hosted_style_request=false"])
        .args(["--pod", key_prefix, "--file", file, "--out"])
        .arg(&out_dir)
        .env("AWS_ACCESS_KEY_ID", AK)
        .env("AWS_SECRET_ACCESS_KEY", SK)
        .output()
        .expect("run rayshape-sidecar logs get");
    assert!(
        out.status.success(),
        "logs get: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let session = out_dir.join(SESSION);
    let mut found: Vec<PathBuf> = std::fs::read_dir(&session)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {file} expected in {}: {found:?}",
        session.display()
    );
    std::fs::read(found.remove(0)).expect("read the reassembled file")
}

/// Stop the sidecar as the kubelet does (SIGTERM) and require a clean, complete exit.
fn stop(sidecar: &mut Sidecar) {
    sidecar.proc.signal("TERM");
    let status = sidecar.proc.wait_for(Duration::from_secs(60));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the sidecar did not exit 0 after SIGTERM; its log:\n{}",
        sidecar.log()
    );
}

#[test]
fn a_sidecar_proves_its_pod_and_ships_where_the_webhook_says() {
    let c = Cluster::get();
    let _x = exclusive();
    let work = scratch("e2e", "sidecar");
    let Some(store) = Store::start(&work) else {
        return;
    };
    c.set_webhook_settings(&settings(&c, &store));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = c.namespace("sidecar-ship");
        let pod = shaped_pod(&c, &ns, "ray-1");
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        let audience = token_audience(&pod);
        assert_eq!(audience, "rayshape.io");
        // A token for another audience: refused, and nothing leaves the pod.
        let Some(mut sidecar) = Sidecar::start(&pod, &work, &pod_token(&c, &pod, "vault")) else {
            return;
        };
        sidecar.ray_writes("raylet.out", "raylet started\n");
        sidecar.wait_bootstrap("refused", Duration::from_secs(30));
        assert!(sidecar.log().contains("HTTP 401"), "{}", sidecar.log());
        assert!(store.keys().is_empty(), "shipped before being verified");

        // The kubelet rotates in the right token: verified at the next attempt.
        write_token(&sidecar.token, &pod_token(&c, &pod, &audience));
        sidecar.wait_bootstrap("verified", Duration::from_secs(60));
        let prefix = format!("{ns}/none/ray-1-{uid}");
        wait_until(
            Duration::from_secs(30),
            "the first lines to be shipped",
            || {
                store
                    .keys()
                    .iter()
                    .any(|k| k.starts_with(&format!("clusters/{prefix}/{SESSION}/")))
            },
        );
        // Ray goes on writing; SIGTERM flushes the rest.
        sidecar.ray_writes("raylet.out", "raylet working\n");
        sidecar.ray_writes("gcs_server.out", "gcs up\n");
        stop(&mut sidecar);
        assert_eq!(
            shipped(&store, &prefix, "raylet.out", &work),
            b"raylet started\nraylet working\n"
        );
        assert_eq!(
            shipped(&store, &prefix, "gcs_server.out", &work),
            b"gcs up\n"
        );
        // Every object under the prefix the bootstrap gave, none elsewhere.
        let keys = store.keys();
        assert!(
            keys.iter()
                .all(|k| k.starts_with(&format!("clusters/{prefix}/"))),
            "{keys:#?}"
        );
        // The token is in no log.
        let token = std::fs::read_to_string(&sidecar.token).unwrap_or_default();
        assert!(!sidecar.log().contains(token.trim()), "the token leaked");
    }));
    c.set_webhook_settings(&c.default_settings());
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_sidecar_started_before_the_sink_was_set_ships_once_it_is() {
    let c = Cluster::get();
    let _x = exclusive();
    let work = scratch("e2e", "sidecar-later");
    let Some(store) = Store::start(&work) else {
        return;
    };
    let with_sink = settings(&c, &store);
    let without = format!(
        "{}sidecar:\n  bootstrapUrl: {}/v1/bootstrap\n  flush:\n    maxAgeSeconds: 1\n",
        c.default_settings(),
        c.webhook_url
    );
    c.set_webhook_settings(&without);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = c.namespace("sidecar-later");
        let pod = shaped_pod(&c, &ns, "ray-1");
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        let token = pod_token(&c, &pod, &token_audience(&pod));
        let Some(mut sidecar) = Sidecar::start(&pod, &work, &token) else {
            return;
        };
        sidecar.ray_writes("raylet.out", "before the sink\n");
        sidecar.wait_bootstrap("verified", Duration::from_secs(60));
        wait_until(Duration::from_secs(30), "the no_sink state", || {
            sidecar.metric("rayshape_sidecar_state{state=\"no_sink\"}") == 1.0
        });
        assert!(store.keys().is_empty(), "shipped without a sink");
        // The admin sets the sink; the running sidecar asks again within a minute.
        c.set_webhook_settings(&with_sink);
        let prefix = format!("{ns}/none/ray-1-{uid}");
        wait_until(
            Duration::from_secs(120),
            "the sidecar to ship after the sink was set",
            || {
                store
                    .keys()
                    .iter()
                    .any(|k| k.starts_with(&format!("clusters/{prefix}/{SESSION}/")))
            },
        );
        assert!(
            sidecar.log().contains("the webhook now names a sink"),
            "{}",
            sidecar.log()
        );
        sidecar.ray_writes("raylet.out", "after\n");
        stop(&mut sidecar);
        assert_eq!(
            shipped(&store, &prefix, "raylet.out", &work),
            b"before the sink\nafter\n"
        );
    }));
    c.set_webhook_settings(&c.default_settings());
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The cluster's kube-apiserver, killed for an outage and started again exactly as it ran
/// (command line and environment from /proc), also when the test fails.
struct ApiServerOutage<'a> {
    c: &'a Cluster,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    down: bool,
}

impl<'a> ApiServerOutage<'a> {
    fn begin(c: &'a Cluster) -> ApiServerOutage<'a> {
        let pid_file = c.dir.join("pids/kube-apiserver.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
        let pid = pid.trim().to_string();
        let split = |b: Vec<u8>| -> Vec<String> {
            b.split(|&x| x == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let argv = split(std::fs::read(format!("/proc/{pid}/cmdline")).expect("its cmdline"));
        let env = split(std::fs::read(format!("/proc/{pid}/environ")).expect("its environ"))
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect();
        assert!(
            argv.iter().any(|a| a == "kube-apiserver"),
            "pid {pid} is not kube-apiserver: {argv:?}"
        );
        // Killed, as by a crash or the OOM killer: a graceful stop drains watches for a
        // minute. From here on, dropping the outage starts it again.
        let outage = ApiServerOutage {
            c,
            argv,
            env,
            down: true,
        };
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        let stopped = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        };
        wait_until(Duration::from_secs(30), "kube-apiserver to die", stopped);
        outage
    }

    fn end(&mut self) {
        if let Err(e) = self.restart() {
            panic!("{e}");
        }
    }

    /// Start it again if it is down; no panic, for `Drop`.
    fn restart(&mut self) -> Result<(), String> {
        if !std::mem::take(&mut self.down) {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.c.dir.join("logs/kube-apiserver.log"))
            .map_err(|e| format!("kube-apiserver's log: {e}"))?;
        let err_log = log.try_clone().map_err(|e| format!("log handle: {e}"))?;
        let child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| format!("cannot start kube-apiserver again: {e}"))?;
        // down.sh stops it by this file; the child outlives this test process.
        std::fs::write(
            self.c.dir.join("pids/kube-apiserver.pid"),
            format!("{}\n", child.id()),
        )
        .map_err(|e| format!("cannot record kube-apiserver's pid: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(90);
        while !self
            .c
            .kubectl(&["get", "--raw", "/readyz"], None)
            .status
            .success()
        {
            if Instant::now() > deadline {
                return Err("kube-apiserver was not ready 90 s after its restart".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

impl Drop for ApiServerOutage<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.restart() {
            eprintln!(
                "error: {e}; the cluster in {} is unusable",
                self.c.dir.display()
            );
        }
    }
}

#[test]
fn a_sidecar_waits_out_an_api_server_outage() {
    let c = Cluster::get();
    let _x = exclusive();
    let work = scratch("e2e", "outage");
    let Some(store) = Store::start(&work) else {
        return;
    };
    c.set_webhook_settings(&settings(&c, &store));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = c.namespace("sidecar-outage");
        let pod = shaped_pod(&c, &ns, "ray-1");
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        let token = pod_token(&c, &pod, &token_audience(&pod));
        let unavailable_before =
            c.metric("rayshape_webhook_bootstrap_requests_total{result=\"unavailable\"}");
        let mut outage = ApiServerOutage::begin(&c);
        let Some(mut sidecar) = Sidecar::start(&pod, &work, &token) else {
            return;
        };
        sidecar.ray_writes("raylet.out", "written during the outage\n");
        // The webhook cannot check the token: 503 with Retry-After, and the sidecar waits.
        sidecar.wait_bootstrap("unavailable", Duration::from_secs(30));
        wait_until(
            Duration::from_secs(30),
            "the sidecar to log the 503",
            || sidecar.log().contains("HTTP 503"),
        );
        assert!(
            c.metric("rayshape_webhook_bootstrap_requests_total{result=\"unavailable\"}")
                > unavailable_before
        );
        assert!(store.keys().is_empty(), "shipped before being verified");
        outage.end();
        sidecar.wait_bootstrap("verified", Duration::from_secs(90));
        stop(&mut sidecar);
        assert_eq!(
            shipped(
                &store,
                &format!("{ns}/none/ray-1-{uid}"),
                "raylet.out",
                &work
            ),
            b"written during the outage\n"
        );
    }));
    c.set_webhook_settings(&c.default_settings());
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

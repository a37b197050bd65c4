//! The control plane `tests/cluster/up.sh` started, as the end-to-end tests use it: kubectl
//! of the same version as the API server, the webhook's endpoints and metrics, and its
//! configuration directory.
//!
//! The tests need `RAYSHAPE_CLUSTER_DIR` (set by `tests/run.sh`, or `source DIR/env` after
//! `tests/cluster/up.sh DIR`). Without it they fail, naming what to do: an end-to-end test
//! that quietly passes without a cluster would prove nothing.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// A running control plane with rayshape in front of it.
pub struct Cluster {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub webhook_url: String,
    pub webhook_metrics: String,
    pub webhook_config: PathBuf,
    pub ca: PathBuf,
    pub kuberay_dir: PathBuf,
    pub nodes: String,
}

static SHARED_STATE: RwLock<()> = RwLock::new(());

/// Tests that change what the whole cluster shares (the webhook's configuration, RBAC, the
/// API server itself) hold this while they do...
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SHARED_STATE.write().unwrap_or_else(|e| e.into_inner())
}

/// ...and tests that rely on it as `up.sh` left it hold this.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    SHARED_STATE.read().unwrap_or_else(|e| e.into_inner())
}

impl Cluster {
    /// The cluster named by `RAYSHAPE_CLUSTER_DIR` (its `env` file).
    pub fn get() -> Cluster {
        let dir = std::env::var_os("RAYSHAPE_CLUSTER_DIR").map(PathBuf::from).unwrap_or_else(|| {
            panic!("RAYSHAPE_CLUSTER_DIR is not set: start a control plane with tests/cluster/up.sh DIR and `source DIR/env`, or run tests/run.sh")
        });
        let env = std::fs::read_to_string(dir.join("env"))
            .unwrap_or_else(|e| panic!("{}/env: {e}; is the cluster up?", dir.display()));
        let var = |name: &str| -> String {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(|v| v.trim_matches('\'').to_string())
                .unwrap_or_else(|| panic!("{name} missing from {}/env", dir.display()))
        };
        Cluster {
            bin: PathBuf::from(var("RAYSHAPE_CLUSTER_BIN")),
            kubeconfig: PathBuf::from(var("KUBECONFIG")),
            webhook_url: var("RAYSHAPE_WEBHOOK_URL"),
            webhook_metrics: var("RAYSHAPE_WEBHOOK_METRICS"),
            webhook_config: PathBuf::from(var("RAYSHAPE_WEBHOOK_CONFIG")),
            kuberay_dir: PathBuf::from(var("RAYSHAPE_KUBERAY_DIR")),
            nodes: var("RAYSHAPE_CLUSTER_NODES"),
            ca: dir.join("pki/ca.crt"),
            dir,
        }
    }

    /// Run kubectl (as the admin).
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run(cmd, stdin)
    }

    /// Run kubectl and require success; its standard output.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {}: {}{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// A kubectl read as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all, None))
            .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
    }

    /// A ServiceAccount token from TokenRequest (`kubectl create token`), valid 10 minutes,
    /// for `audience`; bound to the pod `(name, uid)` when given, as the kubelet binds the
    /// projected tokens it requests.
    pub fn token(&self, ns: &str, sa: &str, audience: &str, pod: Option<(&str, &str)>) -> String {
        let mut args = vec![
            "create",
            "token",
            sa,
            "-n",
            ns,
            "--audience",
            audience,
            "--duration",
            "10m",
        ];
        if let Some((name, uid)) = pod {
            args.extend([
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                name,
                "--bound-object-uid",
                uid,
            ]);
        }
        self.ok(&args, None).trim().to_string()
    }

    /// A fresh namespace for one test: `prefix-` and a suffix of this run. Namespaces are
    /// not deleted: without kubelets, a scheduled pod never finishes terminating, and the
    /// control plane is thrown away after the run anyway.
    pub fn namespace(&self, prefix: &str) -> String {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let name = format!("{prefix}-{:x}", stamp & 0xffff_ffff);
        let name = name.as_str();
        self.ok(&["create", "namespace", name], None);
        // The controller manager creates the `default` ServiceAccount; pods need it.
        wait_until(
            Duration::from_secs(30),
            &format!("the default ServiceAccount of {name}"),
            || {
                self.kubectl(&["get", "serviceaccount", "default", "-n", name], None)
                    .status
                    .success()
            },
        );
        name.to_string()
    }

    /// The webhook's metrics page.
    pub fn webhook_metrics(&self) -> String {
        let out = Command::new("curl")
            .args(["-sf", &self.webhook_metrics])
            .output()
            .expect("curl runs");
        text(&out.stdout)
    }

    /// The sum of a metric's samples whose line starts with `prefix`.
    pub fn metric(&self, prefix: &str) -> f64 {
        metric(&self.webhook_metrics(), prefix)
    }

    /// Replace `webhook.yaml` the way the kubelet updates a mounted ConfigMap, and wait
    /// until the webhook has loaded it (nothing to wait for when it is unchanged).
    pub fn set_webhook_settings(&self, yaml: &str) {
        self.set_webhook_file("webhook.yaml", Some(yaml));
    }

    /// The profile's own settings, as up.sh wrote them.
    pub fn default_settings(&self) -> String {
        format!("profile: {}\n", self.nodes)
    }
}

/// Run a command, feeding `stdin`.
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    use std::io::Write;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{:?}: {e}", cmd.get_program()));
    if let Some(s) = stdin
        && let Some(mut i) = child.stdin.take()
    {
        let _ = i.write_all(s.as_bytes());
    }
    child.wait_with_output().expect("wait")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The sum of the samples whose line starts with `prefix` in a metrics page.
pub fn metric(page: &str, prefix: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Poll `cond` until it holds; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The repository's root.
pub fn repo() -> PathBuf {
    rayshape_testkit::repo()
}

/// A path under the repository.
pub fn repo_path(p: &str) -> PathBuf {
    repo().join(Path::new(p))
}

impl Cluster {
    /// Stop the webhook (SIGTERM, then SIGKILL), as an outage.
    pub fn stop_webhook(&self) {
        let pid_file = self.dir.join("pids/rayshape-webhook.pid");
        let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
        let pid = pid.trim();
        if pid.is_empty() {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", pid]).status();
        let gone = |p: &str| !Path::new(&format!("/proc/{p}")).exists();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !gone(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !gone(pid) {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }

    /// Start the webhook again exactly as `up.sh` did, and wait until it is ready.
    pub fn start_webhook(&self) {
        let status = Command::new(self.dir.join("rayshape/serve.sh"))
            .status()
            .expect("run DIR/rayshape/serve.sh");
        assert!(status.success(), "serve.sh failed");
        let ready = format!("{}/readyz", self.webhook_url);
        wait_until(
            Duration::from_secs(30),
            "the webhook to be ready again",
            || {
                Command::new("curl")
                    .args(["-sf", "--cacert"])
                    .arg(&self.ca)
                    .arg(&ready)
                    .output()
                    .is_ok_and(|o| o.status.success())
            },
        );
    }
}

impl Cluster {
    /// The `rayshape-webhook` binary the cluster's webhook runs (up.sh records it), for
    /// previews with exactly the same code.
    pub fn webhook_bin(&self) -> PathBuf {
        let recorded = std::fs::read_to_string(self.dir.join("pids/rayshape-webhook.exe"))
            .ok()
            .map(|s| PathBuf::from(s.trim()))
            .filter(|p| p.is_file());
        recorded.unwrap_or_else(|| repo_path("target/debug/rayshape-webhook"))
    }

    /// `rayshape-webhook mutate` of `obj` with the webhook's own configuration directory.
    pub fn preview(&self, obj: &Value) -> Preview {
        let mut cmd = Command::new(self.webhook_bin());
        // The same configuration directory and bootstrap CA as `serve` (DIR/rayshape/serve.sh).
        cmd.args([
            "mutate", "-f", "-", "-o", "object", "--format", "json", "--config",
        ])
        .arg(&self.webhook_config)
        .arg("--bootstrap-ca")
        .arg(&self.ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let out = run(cmd, Some(&obj.to_string()));
        let code = out.status.code().unwrap_or(-1);
        assert!(
            matches!(code, 0 | 1),
            "rayshape-webhook mutate failed ({code}): {}",
            text(&out.stderr)
        );
        Preview {
            object: (code == 0).then(|| {
                serde_json::from_slice(&out.stdout)
                    .unwrap_or_else(|e| panic!("mutate printed no JSON object: {e}"))
            }),
            stderr: text(&out.stderr),
        }
    }

    /// Replace (`Some`) or remove (`None`) one file of the webhook's configuration directory
    /// and wait until the webhook has loaded the result; the file's previous content.
    pub fn set_webhook_file(&self, name: &str, content: Option<&str>) -> Option<String> {
        let path = self.webhook_config.join(name);
        let old = std::fs::read_to_string(&path).ok();
        if old.as_deref() == content {
            return old;
        }
        let before = self.metric("rayshape_webhook_config_reloads_total{result=\"success\"}");
        match content {
            Some(c) => {
                let tmp = self.webhook_config.join(format!(".{name}.tmp"));
                std::fs::write(&tmp, c).unwrap_or_else(|e| panic!("write {name}: {e}"));
                std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("swap {name}: {e}"));
            }
            None => std::fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {name}: {e}")),
        }
        wait_until(
            Duration::from_secs(15),
            &format!("the webhook to load its new {name}"),
            || self.metric("rayshape_webhook_config_reloads_total{result=\"success\"}") > before,
        );
        old
    }

    /// The webhook's admission requests counted so far for `kind`, `operation` and `result`
    /// (`None`: any).
    pub fn admissions(
        &self,
        kind: Option<&str>,
        operation: Option<&str>,
        result: Option<&str>,
    ) -> f64 {
        let page = self.webhook_metrics();
        page.lines()
            .filter(|l| l.starts_with("rayshape_webhook_admission_requests_total{"))
            .filter(|l| {
                [("kind", kind), ("operation", operation), ("result", result)]
                    .iter()
                    .all(|(k, v)| v.is_none_or(|v| l.contains(&format!("{k}=\"{v}\""))))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Objects of a YAML or JSON file (a stream or a List), as kubectl reads them, without
    /// asking the API server for anything but discovery.
    pub fn read_objects(&self, file: &Path) -> Vec<Value> {
        let (objects, unknown) = self.read_known_objects(file);
        assert!(unknown.is_empty(), "{}: {unknown:?}", file.display());
        objects
    }

    /// Like `read_objects`, but objects of kinds this cluster does not serve (another
    /// project's CRDs) are left out, as `kubectl create -f` leaves them out; their names.
    pub fn read_known_objects(&self, file: &Path) -> (Vec<Value>, Vec<String>) {
        let out = self.kubectl(
            &[
                "create",
                "--dry-run=client",
                "-o",
                "json",
                "-f",
                &file.to_string_lossy(),
            ],
            None,
        );
        let mut unknown = Vec::new();
        for line in text(&out.stderr).lines() {
            // kubectl says "error: " before its only error, not before each of several.
            let line = line.strip_prefix("error: ").unwrap_or(line);
            if let Some(rest) = line.strip_prefix("resource mapping not found for name: ") {
                unknown.push(rest.to_string());
            } else if line != "ensure CRDs are installed first" && !line.trim().is_empty() {
                panic!("kubectl could not read {}: {line}", file.display());
            }
        }
        let out = text(&out.stdout);
        // One JSON document per object read (a List's items are printed one by one).
        let mut all = Vec::new();
        for v in serde_json::Deserializer::from_str(&out).into_iter::<Value>() {
            let v = v.unwrap_or_else(|e| panic!("kubectl read {}: {e}", file.display()));
            match v["kind"].as_str() {
                Some("List") => all.extend(v["items"].as_array().cloned().unwrap_or_default()),
                _ => all.push(v),
            }
        }
        (all, unknown)
    }

    /// Fresh namespaces, as `namespace` makes them, all at once (the controller manager
    /// makes their ServiceAccounts side by side).
    pub fn namespaces(&self, prefixes: &[String]) -> Vec<String> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let names: Vec<String> = prefixes
            .iter()
            .map(|p| format!("{p}-{:x}", stamp & 0xff_ffff))
            .collect();
        let items: Vec<Value> = names
            .iter()
            .map(|n| serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
            .collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        self.ok(&["create", "-f", "-"], Some(&list.to_string()));
        wait_until(
            Duration::from_secs(60),
            "the default ServiceAccount of every new namespace",
            || {
                let all = self.json(&[
                    "get",
                    "serviceaccounts",
                    "-A",
                    "--field-selector",
                    "metadata.name=default",
                ]);
                let have: std::collections::HashSet<&str> = all["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s["metadata"]["namespace"].as_str())
                    .collect();
                names.iter().all(|n| have.contains(n.as_str()))
            },
        );
        names
    }
}

/// What `rayshape-webhook mutate` said about an object.
pub struct Preview {
    /// The shaped object; `None` when denied.
    pub object: Option<Value>,
    /// Warnings, or the reason for a denial.
    pub stderr: String,
}

/// A Kubernetes quantity in thousandths of its unit (`"1500m"` → 1500, `"1Gi"` →
/// 1073741824000), rounded up; `None` if it is not a quantity.
pub fn millis(q: &Value) -> Option<i128> {
    let s = match q {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let (mut num, mut den): (i128, i128) = {
        let neg = number.starts_with('-');
        let digits = number.trim_start_matches(['+', '-']);
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let all: i128 = format!("{int}{frac}").parse().ok()?;
        (if neg { -all } else { all }, 10i128.pow(frac.len() as u32))
    };
    let pow = |b: i128, e: u32| b.pow(e);
    match suffix {
        "" => {}
        "m" => den *= 1000,
        "k" => num *= 1000,
        "M" => num *= pow(10, 6),
        "G" => num *= pow(10, 9),
        "T" => num *= pow(10, 12),
        "P" => num *= pow(10, 15),
        "E" => num *= pow(10, 18),
        "Ki" => num *= 1 << 10,
        "Mi" => num *= 1 << 20,
        "Gi" => num *= 1 << 30,
        "Ti" => num *= 1 << 40,
        "Pi" => num *= 1 << 50,
        "Ei" => num *= 1 << 60,
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().ok()?;
            if exp >= 0 {
                num *= pow(10, exp as u32);
            } else {
                den *= pow(10, (-exp) as u32);
            }
        }
        _ => return None,
    }
    let scaled = num * 1000;
    Some(scaled.div_euclid(den) + i128::from(scaled.rem_euclid(den) != 0))
}

/// A quantity rounded up to whole units, as KubeRay's `Quantity.Value()` and the Ray
/// autoscaler round (`"1500m"` → 2).
pub fn whole(q: &Value) -> Option<i128> {
    millis(q).map(|m| m.div_euclid(1000) + i128::from(m.rem_euclid(1000) != 0))
}

/// Everything under `v` that differs from `w`, as `path: left != right` lines (at most
/// `limit`), for failure messages.
pub fn differences(v: &Value, w: &Value, limit: usize) -> Vec<String> {
    fn walk(path: &str, v: &Value, w: &Value, out: &mut Vec<String>) {
        match (v, w) {
            (Value::Object(a), Value::Object(b)) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    let p = format!("{path}/{k}");
                    match (a.get(k), b.get(k)) {
                        (Some(x), Some(y)) => walk(&p, x, y, out),
                        (x, y) => out.push(format!("{p}: {} != {}", show(x), show(y))),
                    }
                }
            }
            (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    walk(&format!("{path}/{i}"), x, y, out);
                }
            }
            _ if v != w => out.push(format!("{path}: {} != {}", show(Some(v)), show(Some(w)))),
            _ => {}
        }
    }
    fn show(v: Option<&Value>) -> String {
        let s = v.map_or_else(|| "(absent)".to_string(), Value::to_string);
        match s.char_indices().nth(300) {
            Some((i, _)) => format!("{}…", &s[..i]),
            None => s,
        }
    }
    let mut out = Vec::new();
    walk("", v, w, &mut out);
    out.truncate(limit);
    out
}

impl Cluster {
    /// Replace the fake Nodes by `tests/cluster/nodes.sh PROFILE`'s, ready as up.sh leaves
    /// them; the new Nodes' names. With a `run`, each Node's name gets `-RUN`, a label
    /// `rayshape.test/run: RUN` and a taint `rayshape.test/run=RUN:NoSchedule`: only pods
    /// that tolerate it (a test's own) land there, never pods other tests left Pending, and
    /// pods bound to earlier Nodes of the same name never count.
    pub fn use_nodes(&self, profile: &str, run: Option<&str>) -> Vec<String> {
        self.ok(
            &[
                "delete",
                "nodes",
                "-l",
                "rayshape.test/fake-node=true",
                "--wait=true",
            ],
            None,
        );
        let out = std::process::Command::new(repo_path("tests/cluster/nodes.sh"))
            .arg(profile)
            .output()
            .expect("run tests/cluster/nodes.sh");
        assert!(
            out.status.success(),
            "nodes.sh {profile}: {}",
            text(&out.stderr)
        );
        let yaml = text(&out.stdout);
        let path = self.dir.join(format!("nodes-{profile}.yaml"));
        std::fs::write(&path, &yaml).expect("write nodes");
        let mut list = self.read_objects(&path);
        if let Some(run) = run {
            for n in &mut list {
                let name = format!("{}-{run}", n["metadata"]["name"].as_str().expect("name"));
                n["metadata"]["name"] = Value::String(name.clone());
                let labels = &mut n["metadata"]["labels"];
                labels["kubernetes.io/hostname"] = Value::String(name);
                labels["rayshape.test/run"] = Value::String(run.to_string());
                let taint = serde_json::json!({"key": "rayshape.test/run", "value": run, "effect": "NoSchedule"});
                match n["spec"]["taints"].as_array_mut() {
                    Some(t) => t.push(taint),
                    None => n["spec"]["taints"] = serde_json::json!([taint]),
                }
            }
        }
        let names: Vec<String> = list
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": list});
        self.ok(&["create", "-f", "-"], Some(&list.to_string()));
        // As up.sh: TaintNodesByCondition put the not-ready taint on each; no kubelet will
        // ever report ready, and the node lifecycle controller is off.
        self.ok(
            &[
                "taint",
                "nodes",
                "-l",
                "rayshape.test/fake-node=true",
                "node.kubernetes.io/not-ready:NoSchedule-",
            ],
            None,
        );
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities() {
        let m = |q: Value| millis(&q);
        assert_eq!(m(json!("1500m")), Some(1500));
        assert_eq!(m(json!("2")), Some(2000));
        assert_eq!(m(json!(2)), Some(2000));
        assert_eq!(m(json!("0.5")), Some(500));
        assert_eq!(m(json!("1Gi")), Some((1 << 30) * 1000));
        assert_eq!(m(json!("8G")), Some(8_000_000_000_000));
        assert_eq!(m(json!("7812500Ki")), Some(7_812_500 * 1024 * 1000));
        assert_eq!(m(json!("1e3")), Some(1_000_000));
        assert_eq!(m(json!("1x")), None);
        assert_eq!(m(json!(null)), None);
        assert_eq!(whole(&json!("1500m")), Some(2));
        assert_eq!(whole(&json!("7900m")), Some(8));
        assert_eq!(whole(&json!("1")), Some(1));
    }
}

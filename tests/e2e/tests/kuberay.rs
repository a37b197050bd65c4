//! KubeRay's own samples through rayshape, with the real KubeRay operator and the real Ray
//! autoscaler code: for every RayCluster, RayJob and RayService sample of the KubeRay
//! module (its `config/samples/`, read from the Go module cache), given an instance type
//! for each group, three views agree:
//!
//! - what Ray registers: the `ray start` flags KubeRay writes into each pod
//!   (`KUBERAY_GEN_RAY_START_CMD`), with no `RAY_OVERRIDE_RESOURCES` from the pod path;
//! - what the kubelet enforces: the Ray container's limits, as the group template has them;
//! - what the autoscaler plans with: the node types Ray's KubeRay autoscaler derives from
//!   the RayCluster read back from the API server (`tests/kuberay_autoscaler.py`).
//!
//! Then the autoscaler's `replicas` and `workersToDelete` patches get empty patches from
//! the webhook and KubeRay recreates no pod.

use rayshape_e2e::{Cluster, exclusive, shared, text, whole};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Samples KubeRay v1.5.0 cannot run here, and why. Everything else is created.
const SKIPPED: &[(&str, &str)] = &[
    (
        "ray-job.deletion-rules.yaml",
        "its deletionStrategy needs the alpha RayJobDeletionPolicy feature gate, off by \
         default and in tests/cluster/up.sh: KubeRay refuses the RayJob (\"RayJobDeletionPolicy \
         feature gate must be enabled to use DeletionStrategy\") and makes no RayCluster",
    ),
    (
        "vllm/ray-service.vllm-tpu-v6e-singlehost.yaml",
        "its head and workers run as ServiceAccount `$KSA_NAME`, a placeholder the user \
         replaces: no ServiceAccount can have that name, so no pod of it can be created",
    ),
];

/// Where the real KubeRay and the real Ray autoscaler read a sample differently, whatever
/// rayshape does: (sample, group, what differs, why). Reported, not failed; a listed
/// difference that no longer occurs fails, so the list cannot go stale.
const UPSTREAM: &[(&str, &str, &str, &str)] = &[
    (
        "ray-cluster-label-selector.yaml",
        "headgroup",
        "CPU",
        LOWER_CASE_CPU,
    ),
    (
        "ray-cluster-label-selector.yaml",
        "headgroup",
        "custom",
        LOWER_CASE_CPU,
    ),
];
const LOWER_CASE_CPU: &str = "the group's `resources: {cpu: \"0\"}`: KubeRay lower-cases the key \
     and writes --num-cpus=0; Ray's autoscaler (2.60) matches only \"CPU\", so it plans with \
     the container's CPU limit, plus a custom resource \"cpu\": 0";

/// An instance type the test gives to groups.
struct Type {
    name: &'static str,
    cpu: i128,
    memory_gi: i128,
    gpus: i128,
    /// `google.com/tpu` chips and the GKE TPU accelerator node label they go with.
    tpus: i128,
    tpu_node: &'static str,
    accelerator: Option<&'static str>,
}

const fn cpu_type(name: &'static str, cpu: i128, memory_gi: i128) -> Type {
    Type {
        name,
        cpu,
        memory_gi,
        gpus: 0,
        tpus: 0,
        tpu_node: "",
        accelerator: None,
    }
}

const TYPES: &[Type] = &[
    cpu_type("2CPU-8GB", 2, 8),
    cpu_type("4CPU-16GB", 4, 16),
    cpu_type("8CPU-32GB", 8, 32),
    cpu_type("16CPU-64GB", 16, 64),
    Type {
        gpus: 1,
        accelerator: Some("T4"),
        ..cpu_type("8CPU-32GB-1xT4", 8, 32)
    },
    Type {
        gpus: 4,
        accelerator: Some("T4"),
        ..cpu_type("32CPU-128GB-4xT4", 32, 128)
    },
    Type {
        gpus: 8,
        accelerator: Some("T4"),
        ..cpu_type("64CPU-256GB-8xT4", 64, 256)
    },
    Type {
        tpus: 4,
        tpu_node: "tpu-v4-podslice",
        accelerator: Some("TPU-V4"),
        ..cpu_type("8CPU-48GB-4xTPU-V4", 8, 48)
    },
    Type {
        tpus: 4,
        tpu_node: "tpu-v6e-slice",
        accelerator: Some("TPU-V6E"),
        ..cpu_type("24CPU-200GB-4xTPU-V6E", 24, 200)
    },
    Type {
        tpus: 8,
        tpu_node: "tpu-v6e-slice",
        accelerator: Some("TPU-V6E"),
        ..cpu_type("100CPU-200GB-8xTPU-V6E", 100, 200)
    },
];

/// `instance_types.yaml` for `TYPES`.
fn types_yaml() -> String {
    TYPES
        .iter()
        .map(|t| {
            let mut r = format!("CPU: {}, memory: {}Gi", t.cpu, t.memory_gi);
            if t.gpus > 0 {
                r.push_str(&format!(", GPU: {}", t.gpus));
            }
            if t.tpus > 0 {
                r.push_str(&format!(", google.com/tpu: {}", t.tpus));
            }
            if let Some(a) = t.accelerator {
                r.push_str(&format!(", accelerators: [{a}]"));
            }
            format!("{}:\n  resources: {{{r}}}\n", t.name)
        })
        .collect()
}

fn type_named(name: &str) -> Option<&'static Type> {
    TYPES.iter().find(|t| t.name == name)
}

const GI: i128 = 1 << 30;

/// A quantity in thousandths (`"1500m"` → 1500), 0 when absent or not a quantity.
fn milli(v: Option<&Value>) -> i128 {
    v.and_then(rayshape_e2e::millis).unwrap_or(0)
}

/// The limits (else requests) of a container.
fn limits_of(c: &Value) -> &Value {
    let r = &c["resources"];
    if r["limits"].is_object() {
        &r["limits"]
    } else {
        &r["requests"]
    }
}

/// The type a group gets: the smallest that fits what the group asks of Ray (GPUs, TPU
/// chips on the sample's TPU nodes) and leaves Ray at least 1 CPU and 2Gi beside what
/// the group's other containers take (its own, KubeRay's autoscaler and RayJob submitter,
/// rayshape's sidecar).
fn pick(obj: &Value, cluster: &Value, group: &Value, head: bool) -> &'static Type {
    let spec = &group["template"]["spec"];
    let ray = &spec["containers"][0];
    let rsp_gpus = group["rayStartParams"]["num-gpus"]
        .as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(0, |g| g.ceil() as i128);
    let asked_gpus = ["limits", "requests"]
        .iter()
        .filter_map(|k| whole(&ray["resources"][k]["nvidia.com/gpu"]))
        .max()
        .unwrap_or(0);
    let gpus = rsp_gpus.max(asked_gpus);
    let tpus = whole(&limits_of(ray)["google.com/tpu"]).unwrap_or(0);
    if tpus > 0 {
        let node = spec["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"]
            .as_str()
            .unwrap_or_default();
        return TYPES
            .iter()
            .find(|t| t.tpus == tpus && t.tpu_node == node)
            .unwrap_or_else(|| panic!("no TPU type for {tpus} chips on {node:?}"));
    }
    if gpus > 0 {
        return TYPES
            .iter()
            .find(|t| t.gpus >= gpus)
            .unwrap_or_else(|| panic!("no type with {gpus} GPUs"));
    }
    // rayshape's sidecar (its default, 100m/64Mi).
    let (mut cpu, mut mem) = (100, 64 * (1 << 20) * 1000);
    for c in spec["containers"].as_array().into_iter().flatten().skip(1) {
        cpu += milli(limits_of(c).get("cpu"));
        mem += milli(limits_of(c).get("memory"));
    }
    if head && cluster["enableInTreeAutoscaling"] == true {
        let r = &cluster["autoscalerOptions"]["resources"]["limits"];
        cpu += if r.is_object() {
            milli(r.get("cpu"))
        } else {
            500
        };
        mem += if r.is_object() {
            milli(r.get("memory"))
        } else {
            512 * (1 << 20) * 1000
        };
    }
    if head && obj["kind"] == "RayJob" && obj["spec"]["submissionMode"] == "SidecarMode" {
        cpu += 1000;
        mem += GI * 1000;
    }
    TYPES
        .iter()
        .filter(|t| t.gpus == 0 && t.tpus == 0)
        .find(|t| t.cpu * 1000 - cpu >= 1000 && t.memory_gi * GI * 1000 - mem >= 2 * GI * 1000)
        .expect("a CPU type large enough")
}

/// The cluster spec of a RayCluster, RayJob or RayService (mutable).
fn cluster_spec_mut(obj: &mut Value) -> Option<&mut Value> {
    let path = match obj["kind"].as_str()? {
        "RayCluster" => return obj.get_mut("spec"),
        "RayJob" => "rayClusterSpec",
        "RayService" => "rayClusterConfig",
        _ => return None,
    };
    obj.get_mut("spec")?.get_mut(path).filter(|v| v.is_object())
}

/// `(is head, group)` of a cluster spec.
fn groups(spec: &Value) -> Vec<(bool, &Value)> {
    let mut out = vec![(true, &spec["headGroupSpec"])];
    out.extend(
        spec["workerGroupSpecs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| (false, g)),
    );
    out
}

/// The group a pod belongs to in its RayCluster (KubeRay's `ray.io/group` label).
fn group_of<'a>(rc: &'a Value, pod: &Value) -> Option<&'a Value> {
    let g = pod["metadata"]["labels"]["ray.io/group"].as_str()?;
    if pod["metadata"]["labels"]["ray.io/node-type"] == "head" {
        return Some(&rc["spec"]["headGroupSpec"]);
    }
    rc["spec"]["workerGroupSpecs"]
        .as_array()?
        .iter()
        .find(|w| w["groupName"] == g)
}

fn group_name(head: bool, g: &Value) -> String {
    if head {
        "headgroup".into()
    } else {
        g["groupName"].as_str().unwrap_or_default().to_string()
    }
}

/// `--name=value` flags of a `ray start` command as KubeRay writes them (`" --k=v "`), with
/// quoted values as the shell reads them; `--flag` alone maps to "".
fn flags(cmd: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = cmd;
    while let Some(i) = rest.find(" --") {
        rest = &rest[i + 3..];
        let end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let name = rest[..end].to_string();
        rest = &rest[end..];
        let value = if let Some(v) = rest.strip_prefix('=') {
            let (value, after) = match v.chars().next() {
                // As bash reads them: nothing is escaped between single quotes; `\"`, `\\`,
                // `\$` and `` \` `` are, between double quotes (KubeRay's samples' form).
                Some('\'') => {
                    let close = v[1..].find('\'').map_or(v.len(), |j| j + 1);
                    (v[1..close].to_string(), &v[(close + 1).min(v.len())..])
                }
                Some('"') => {
                    let mut value = String::new();
                    let mut end = v.len();
                    let mut chars = v.char_indices().skip(1);
                    while let Some((i, ch)) = chars.next() {
                        match ch {
                            '"' => {
                                end = i + 1;
                                break;
                            }
                            '\\' => match chars.next() {
                                Some((_, e @ ('"' | '\\' | '$' | '`'))) => value.push(e),
                                Some((_, e)) => {
                                    value.push('\\');
                                    value.push(e);
                                }
                                None => {}
                            },
                            ch => value.push(ch),
                        }
                    }
                    (value, &v[end..])
                }
                _ => {
                    let e = v.find(char::is_whitespace).unwrap_or(v.len());
                    (v[..e].to_string(), &v[e..])
                }
            };
            rest = after;
            value
        } else {
            String::new()
        };
        out.insert(name, value);
    }
    out
}

/// A JSON object in any of the forms of `rayStartParams.resources` and `--resources`.
fn resource_map(text: &str) -> Option<Map<String, Value>> {
    let t = text.trim();
    let inner = if t.len() >= 2
        && ((t.starts_with('\'') && t.ends_with('\'')) || (t.starts_with('"') && t.ends_with('"')))
    {
        t[1..t.len() - 1].replace('\\', "")
    } else {
        t.to_string()
    };
    serde_json::from_str::<Value>(&inner)
        .ok()?
        .as_object()
        .cloned()
}

/// What Ray should register for a group whose pods have `limits`, as KubeRay derives it:
/// the group's `resources` field (keys lower-cased), else `rayStartParams`, else the
/// Ray container's limits (CPU rounded up). `None`: not set (Ray detects it).
#[derive(Debug, PartialEq)]
struct RayView {
    cpu: Option<i128>,
    memory: Option<i128>,
    gpu: Option<i128>,
}

fn is_gpu_key(k: &str) -> bool {
    k.ends_with("gpu") || (k.starts_with("nvidia.com/mig-") && k.ends_with("gb"))
}

fn expected_view(group: &Value, limits: &Value) -> RayView {
    let param = |k: &str| -> Option<i128> {
        let v = &group["rayStartParams"][k];
        v.as_str()
            .map(str::to_string)
            .or_else(|| v.as_i64().map(|n| n.to_string()))
            .and_then(|s| s.parse::<f64>().ok())
            .map(|f| f as i128)
    };
    let mut from_group: BTreeMap<&str, i128> = BTreeMap::new();
    for (k, v) in group["resources"].as_object().into_iter().flatten() {
        let lower = k.to_lowercase();
        let slot = match lower.as_str() {
            "cpu" => "cpu",
            "memory" => "memory",
            l if is_gpu_key(l) => "gpu",
            _ => continue,
        };
        if let Some(n) = whole(v) {
            from_group.insert(slot, n);
        }
    }
    let limit = |k: &str| whole(&limits[k]).filter(|n| *n != 0);
    let gpu_limit = limits.as_object().and_then(|m| {
        let mut keys: Vec<&String> = m.keys().filter(|k| is_gpu_key(k)).collect();
        keys.sort();
        keys.into_iter()
            .find_map(|k| whole(&m[k]).filter(|n| *n != 0))
    });
    RayView {
        cpu: from_group
            .get("cpu")
            .copied()
            .or_else(|| param("num-cpus"))
            .or_else(|| limit("cpu")),
        memory: from_group
            .get("memory")
            .copied()
            .or_else(|| param("memory"))
            .or_else(|| millis_of(&limits["memory"]).map(|m| m / 1000)),
        gpu: from_group
            .get("gpu")
            .copied()
            .or_else(|| param("num-gpus"))
            .or(gpu_limit),
    }
}

fn millis_of(v: &Value) -> Option<i128> {
    rayshape_e2e::millis(v).filter(|n| *n != 0)
}

/// The flags' view of a pod.
fn flag_view(f: &BTreeMap<String, String>) -> RayView {
    let n = |k: &str| {
        f.get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as i128)
    };
    RayView {
        cpu: n("num-cpus"),
        memory: n("memory"),
        gpu: n("num-gpus"),
    }
}

/// Two `resources` blocks equal as quantities (`"1"` and `"1000m"` are the same).
fn same_resources(a: &Value, b: &Value) -> bool {
    let norm = |r: &Value| -> BTreeMap<String, BTreeMap<String, Option<i128>>> {
        ["limits", "requests"]
            .iter()
            .filter_map(|k| r[*k].as_object().map(|m| (k, m)))
            .map(|(k, m)| {
                (
                    k.to_string(),
                    m.iter()
                        .map(|(n, q)| (n.clone(), rayshape_e2e::millis(q)))
                        .collect(),
                )
            })
            .collect()
    };
    norm(a) == norm(b)
}

struct Sample {
    /// Relative to the samples directory.
    file: String,
    ns: String,
    /// The Ray objects as the API server stored them.
    stored: Vec<Value>,
}

/// The samples directory of the KubeRay module the operator was built from.
fn samples_dir(c: &Cluster) -> PathBuf {
    let dir = c.kuberay_dir.join("config/samples");
    assert!(
        dir.is_dir(),
        "{}: not found (the KubeRay module in the Go module cache)",
        dir.display()
    );
    dir
}

fn sample_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("samples directory") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn test_python() -> PathBuf {
    std::env::var_os("TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        panic!("TEST_PYTHON is not set: the autoscaler's reading needs a Python with the pinned ray (tests/requirements.txt); tests/run.sh sets it to tests/.venv/bin/python")
    })
}

/// Restores the webhook's instance types, also when the test fails.
struct Restore<'c> {
    c: &'c Cluster,
    instance_types: Option<String>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.c
                .set_webhook_file("instance_types.yaml", self.instance_types.as_deref());
        }));
        if r.is_err() && !std::thread::panicking() {
            panic!("the webhook's instance types could not be restored");
        }
    }
}

/// Every RayCluster of the test's namespaces, by "namespace/name".
fn ray_clusters(c: &Cluster, namespaces: &BTreeSet<String>) -> BTreeMap<String, Value> {
    let all = c.json(&["get", "rayclusters", "-A"]);
    all["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rc| namespaces.contains(rc["metadata"]["namespace"].as_str().unwrap_or("")))
        .map(|rc| {
            (
                format!(
                    "{}/{}",
                    rc["metadata"]["namespace"].as_str().unwrap(),
                    rc["metadata"]["name"].as_str().unwrap()
                ),
                rc.clone(),
            )
        })
        .collect()
}

/// Every live (not terminating) KubeRay pod of the test's namespaces.
fn ray_pods(c: &Cluster, namespaces: &BTreeSet<String>) -> Vec<Value> {
    let all = c.json(&["get", "pods", "-A", "-l", "ray.io/cluster"]);
    all["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| namespaces.contains(p["metadata"]["namespace"].as_str().unwrap_or("")))
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .cloned()
        .collect()
}

/// How many pods KubeRay should run for each group of a RayCluster.
fn desired(rc: &Value) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    out.insert("headgroup".to_string(), 1);
    for w in rc["spec"]["workerGroupSpecs"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let n = |k: &str| w[k].as_i64().unwrap_or(0);
        let replicas = n("replicas")
            .max(n("minReplicas"))
            .min(if w["maxReplicas"].is_i64() {
                n("maxReplicas")
            } else {
                i64::MAX
            });
        let hosts = w["numOfHosts"].as_i64().unwrap_or(1).max(1);
        let suspended = w["suspend"] == true;
        out.insert(
            w["groupName"].as_str().unwrap_or_default().to_string(),
            if suspended {
                0
            } else {
                (replicas * hosts) as usize
            },
        );
    }
    out
}

fn pod_key(p: &Value) -> String {
    format!(
        "{}/{}",
        p["metadata"]["namespace"].as_str().unwrap_or_default(),
        p["metadata"]["name"].as_str().unwrap_or_default()
    )
}

fn cluster_key(p: &Value) -> String {
    format!(
        "{}/{}",
        p["metadata"]["namespace"].as_str().unwrap_or_default(),
        p["metadata"]["labels"]["ray.io/cluster"]
            .as_str()
            .unwrap_or_default()
    )
}

/// Wait until KubeRay runs the pods each RayCluster wants; the clusters still short of
/// them at the deadline, with what they have.
/// `parents` are the RayJobs and RayServices ("namespace/name") whose RayCluster must exist.
fn wait_for_pods(
    c: &Cluster,
    namespaces: &BTreeSet<String>,
    parents: &BTreeSet<String>,
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let rcs = ray_clusters(c, namespaces);
        let pods = ray_pods(c, namespaces);
        let made: BTreeSet<String> = rcs
            .values()
            .filter_map(|rc| {
                Some(format!(
                    "{}/{}",
                    rc["metadata"]["namespace"].as_str()?,
                    rc["metadata"]["labels"]["ray.io/originated-from-cr-name"].as_str()?
                ))
            })
            .collect();
        let mut short: Vec<String> = parents
            .difference(&made)
            .map(|p| format!("{p}: no RayCluster of its own yet"))
            .collect();
        let mut have: BTreeMap<(String, String), usize> = BTreeMap::new();
        for p in &pods {
            let g = p["metadata"]["labels"]["ray.io/group"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            *have.entry((cluster_key(p), g)).or_default() += 1;
        }
        short.extend(rcs.iter().flat_map(|(k, rc)| {
            desired(rc)
                .into_iter()
                .filter(|(g, n)| have.get(&(k.clone(), g.clone())).copied().unwrap_or(0) != *n)
                .map(|(g, n)| {
                    format!(
                        "{k} group {g}: {} pods, not {n}",
                        have.get(&(k.clone(), g.clone())).copied().unwrap_or(0)
                    )
                })
                .collect::<Vec<_>>()
        }));
        if short.is_empty() || Instant::now() > deadline {
            return short;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Everything about one pod that must hold; the problems.
fn check_pod(pod: &Value, rc: &Value) -> Vec<String> {
    let key = pod_key(pod);
    let mut problems = Vec::new();
    let Some(group) = group_of(rc, pod) else {
        return vec![format!("{key}: no group of its RayCluster")];
    };
    // Through the webhook.
    if pod["metadata"]["annotations"]["rayshape.io/shaped"].is_null() {
        problems.push(format!("{key}: not shaped (no rayshape.io/shaped)"));
    }
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"] == "rayshape-sidecar" && c["restartPolicy"] == "Always");
    if !sidecar {
        problems.push(format!("{key}: no rayshape-sidecar"));
    }
    let ray = &pod["spec"]["containers"][0];
    let template = &group["template"]["spec"]["containers"][0];
    // The pod path made no sizing change of its own.
    if !same_resources(&ray["resources"], &template["resources"]) {
        problems.push(format!(
            "{key}: Ray container resources {} differ from the group template's {}",
            ray["resources"], template["resources"]
        ));
    }
    let env: BTreeMap<&str, &Value> = ray["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?, &e["value"])))
        .collect();
    if let Some(o) = env.get("RAY_OVERRIDE_RESOURCES") {
        let o = o.as_str().and_then(resource_map).unwrap_or_default();
        let sized: Vec<&String> = o
            .keys()
            .filter(|k| ["CPU", "GPU", "memory"].contains(&k.as_str()))
            .collect();
        if !sized.is_empty() {
            problems.push(format!("{key}: RAY_OVERRIDE_RESOURCES resizes Ray: {o:?}"));
        }
    }
    let limits = &ray["resources"]["limits"];
    let shm = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "shared-mem");
    if let Some(shm) = shm
        && rayshape_e2e::millis(&shm["emptyDir"]["sizeLimit"])
            != rayshape_e2e::millis(&limits["memory"])
    {
        problems.push(format!(
            "{key}: /dev/shm size {} is not the memory limit {}",
            shm["emptyDir"]["sizeLimit"], limits["memory"]
        ));
    }
    // Ray's flags, as KubeRay wrote them.
    let Some(cmd) = env
        .get("KUBERAY_GEN_RAY_START_CMD")
        .and_then(|v| v.as_str())
    else {
        problems.push(format!("{key}: no KUBERAY_GEN_RAY_START_CMD"));
        return problems;
    };
    let overwrite = rc["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true";
    let args = ray["args"][0].as_str().unwrap_or_default();
    if !overwrite && !args.contains(cmd.trim()) {
        problems.push(format!(
            "{key}: the container's args do not run {cmd:?}: {args:?}"
        ));
    }
    let f = flags(cmd);
    let want = expected_view(group, limits);
    let got = flag_view(&f);
    if got != want {
        problems.push(format!(
            "{key}: ray start flags {got:?} are not the limits' {want:?} (limits {limits}, rayStartParams {}, group resources {}): {cmd}",
            group["rayStartParams"], group["resources"]
        ));
    }
    problems
}

/// The custom resources of a pod's `ray start --resources`.
fn flag_resources(pod: &Value) -> Map<String, Value> {
    let env = pod["spec"]["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    env.iter()
        .find(|e| e["name"] == "KUBERAY_GEN_RAY_START_CMD")
        .and_then(|e| e["value"].as_str())
        .map(flags)
        .and_then(|f| f.get("resources").and_then(|r| resource_map(r)))
        .unwrap_or_default()
}

/// The autoscaler's reading of every RayCluster (`tests/kuberay_autoscaler.py`).
fn autoscaler_view(rcs: &BTreeMap<String, Value>) -> Value {
    let items: Vec<&Value> = rcs.values().collect();
    let mut cmd = std::process::Command::new(test_python());
    cmd.arg(rayshape_e2e::repo_path("tests/kuberay_autoscaler.py"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = rayshape_e2e::run(cmd, Some(&json!({"items": items}).to_string()));
    assert!(
        out.status.success(),
        "tests/kuberay_autoscaler.py: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the autoscaler's view as JSON")
}

/// The autoscaler's node type of each group against the pods' flags and limits.
fn check_autoscaler(
    view: &Value,
    rcs: &BTreeMap<String, Value>,
    pods: &[Value],
    sample_of: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
    upstream_seen: &mut BTreeSet<usize>,
    notes: &mut Vec<String>,
) {
    for (key, rc) in rcs {
        let ns = key.split('/').next().unwrap_or_default();
        let sample = sample_of.get(ns).cloned().unwrap_or_default();
        let Some(entry) = view["clusters"].get(key) else {
            problems.push(format!("{key}: the autoscaler script said nothing"));
            continue;
        };
        if let Some(e) = entry["error"].as_str() {
            problems.push(format!(
                "{key} ({sample}): the autoscaler cannot read it: {e}"
            ));
            continue;
        }
        for n in entry["notes"].as_array().into_iter().flatten() {
            notes.push(format!(
                "{key} ({sample}): autoscaler: {}",
                n.as_str().unwrap_or_default()
            ));
        }
        for (head, g) in groups(&rc["spec"]) {
            if !g.is_object() {
                continue;
            }
            let name = group_name(head, g);
            let node = &entry["groups"][&name]["resources"];
            if !node.is_object() {
                problems.push(format!("{key}: the autoscaler has no node type {name}"));
                continue;
            }
            let limits = &g["template"]["spec"]["containers"][0]["resources"]["limits"];
            let want = expected_view(g, limits);
            let group_pods: Vec<&Value> = pods
                .iter()
                .filter(|p| {
                    cluster_key(p) == *key && p["metadata"]["labels"]["ray.io/group"] == json!(name)
                })
                .collect();
            let n = |k: &str| node[k].as_i64().map(i128::from);
            let got = RayView {
                cpu: n("CPU"),
                memory: n("memory"),
                gpu: n("GPU"),
            };
            // The custom resources: the pods' --resources, else what KubeRay would write.
            let custom: Map<String, Value> = node
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| !["CPU", "GPU", "memory"].contains(&k.as_str()))
                .filter(|(k, _)| !(k.starts_with("TPU-") && k.ends_with("-head")))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut mismatches = Vec::new();
            for (what, a, b) in [
                ("CPU", got.cpu, want.cpu),
                ("memory", got.memory, want.memory),
                ("GPU", got.gpu, want.gpu),
            ] {
                if a != b {
                    mismatches.push((what, format!("{what} {a:?}, the pods' {b:?}")));
                }
            }
            if let Some(p) = group_pods.first() {
                let from_flags = flag_resources(p);
                let as_numbers = |m: &Map<String, Value>| -> BTreeMap<String, Option<f64>> {
                    m.iter().map(|(k, v)| (k.clone(), v.as_f64())).collect()
                };
                if as_numbers(&custom) != as_numbers(&from_flags) {
                    mismatches.push((
                        "custom",
                        format!(
                            "custom resources {custom:?}, the pods' --resources {from_flags:?}"
                        ),
                    ));
                }
            }
            // The instance type's accelerator reaches the autoscaler.
            let it = g["template"]["metadata"]["labels"]["rayshape.io/instance-type"]
                .as_str()
                .and_then(type_named);
            if let Some(acc) = it.and_then(|t| t.accelerator) {
                let k = format!("accelerator_type:{acc}");
                if custom.get(&k).and_then(Value::as_i64) != Some(1) {
                    mismatches.push(("accelerator", format!("no {k}: 1 in {custom:?}")));
                }
            }
            for (what, m) in mismatches {
                let known = UPSTREAM
                    .iter()
                    .position(|(s, gname, r, _)| *s == sample && *gname == name && *r == what);
                match known {
                    Some(i) => {
                        upstream_seen.insert(i);
                        notes.push(format!(
                            "{key} ({sample}) group {name}: {m} — upstream: {}",
                            UPSTREAM[i].3
                        ));
                    }
                    None => problems.push(format!(
                        "{key} ({sample}) group {name}: the autoscaler plans {m} (node type {node})"
                    )),
                }
            }
        }
    }
}

#[test]
fn every_kuberay_sample_agrees_with_kuberay_and_its_autoscaler() {
    let c = Cluster::get();
    let _x = exclusive();
    let started = Instant::now();
    let dir = samples_dir(&c);
    let files = sample_files(&dir);
    for (s, _) in SKIPPED {
        assert!(dir.join(s).is_file(), "skipped sample {s} does not exist");
    }
    let instance_types = c.set_webhook_file("instance_types.yaml", Some(&types_yaml()));
    let _restore = Restore {
        c: &c,
        instance_types,
    };
    let mut problems: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // Read the samples; those with a RayCluster, RayJob or RayService are the test's.
    let mut read: Vec<(String, Vec<Value>)> = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&dir).unwrap().to_string_lossy().into_owned();
        if SKIPPED.iter().any(|(s, _)| *s == rel) {
            continue;
        }
        let (objects, _other_projects_kinds) = c.read_known_objects(f);
        if objects.iter().any(|o| {
            matches!(
                o["kind"].as_str(),
                Some("RayCluster" | "RayJob" | "RayService")
            )
        }) {
            read.push((rel, objects));
        }
    }
    assert!(
        read.len() >= 60,
        "only {} samples found in {}",
        read.len(),
        dir.display()
    );
    let prefixes: Vec<String> = read
        .iter()
        .map(|(rel, _)| {
            let slug: String = rel
                .trim_end_matches(".yaml")
                .chars()
                .map(|ch| {
                    if ch.is_ascii_alphanumeric() {
                        ch.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect();
            format!(
                "kr-{}",
                slug.chars()
                    .take(44)
                    .collect::<String>()
                    .trim_end_matches('-')
            )
        })
        .collect();
    let namespaces = c.namespaces(&prefixes);
    let ns_set: BTreeSet<String> = namespaces.iter().cloned().collect();

    // Create each sample: its ConfigMaps, Secrets and ServiceAccounts (what its pods
    // mount or run as), the ServiceAccounts its templates name, and its Ray objects with an
    // instance type on every group.
    let mut samples: Vec<Sample> = Vec::new();
    for ((rel, objects), ns) in read.into_iter().zip(&namespaces) {
        let mut stored = Vec::new();
        for o in &objects {
            if matches!(
                o["kind"].as_str(),
                Some("ConfigMap" | "Secret" | "ServiceAccount")
            ) {
                let mut o = o.clone();
                o["metadata"]["namespace"] = json!(ns);
                c.ok(&["create", "-f", "-"], Some(&o.to_string()));
            }
        }
        for o in objects.iter().filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("RayCluster" | "RayJob" | "RayService")
            )
        }) {
            let mut o = o.clone();
            o["metadata"]["namespace"] = json!(ns);
            let whole_obj = o.clone();
            if let Some(spec) = cluster_spec_mut(&mut o) {
                let cluster = spec.clone();
                let mut picks = Vec::new();
                for (head, g) in groups(&cluster) {
                    if g.is_object() {
                        picks.push(pick(&whole_obj, &cluster, g, head).name);
                    }
                }
                let mut i = 0;
                let mut label = |g: &mut Value| {
                    let t = &mut g["template"];
                    if !t["metadata"].is_object() {
                        t["metadata"] = json!({});
                    }
                    if !t["metadata"]["labels"].is_object() {
                        t["metadata"]["labels"] = json!({});
                    }
                    t["metadata"]["labels"]["rayshape.io/instance-type"] = json!(picks[i]);
                    i += 1;
                    g["template"]["spec"]["serviceAccountName"]
                        .as_str()
                        .map(str::to_string)
                };
                let mut accounts = vec![label(&mut spec["headGroupSpec"])];
                if let Some(ws) = spec["workerGroupSpecs"].as_array_mut() {
                    for w in ws.iter_mut().filter(|w| w.is_object()) {
                        accounts.push(label(w));
                    }
                }
                for sa in accounts.into_iter().flatten() {
                    let out = c.kubectl(&["create", "serviceaccount", &sa, "-n", ns], None);
                    assert!(
                        out.status.success() || text(&out.stderr).contains("already exists"),
                        "{}",
                        text(&out.stderr)
                    );
                }
            }
            let out = c.kubectl(&["create", "-f", "-", "-o", "json"], Some(&o.to_string()));
            if out.status.success() {
                stored.push(serde_json::from_slice(&out.stdout).expect("stored object"));
            } else {
                problems.push(format!(
                    "{rel}: {} {} was refused: {}",
                    o["kind"].as_str().unwrap_or_default(),
                    o["metadata"]["name"].as_str().unwrap_or_default(),
                    text(&out.stderr)
                ));
            }
        }
        samples.push(Sample {
            file: rel,
            ns: ns.clone(),
            stored,
        });
    }
    let sample_of: BTreeMap<String, String> = samples
        .iter()
        .map(|s| (s.ns.clone(), s.file.clone()))
        .collect();
    eprintln!(
        "{} samples created in {:?}",
        samples.len(),
        started.elapsed()
    );

    // Every group of every Ray object was sized (its Ray container has the type's shape in
    // its limits), and the record says which type.
    for s in &samples {
        for o in &s.stored {
            let Some(spec) = cluster_spec_mut(&mut o.clone()).map(|v| v.clone()) else {
                continue;
            };
            let record = o["metadata"]["annotations"]["rayshape.io/shaped"]
                .as_str()
                .unwrap_or("");
            for (head, g) in groups(&spec) {
                let name = if head {
                    "head".to_string()
                } else {
                    group_name(head, g)
                };
                let t = g["template"]["metadata"]["labels"]["rayshape.io/instance-type"]
                    .as_str()
                    .and_then(type_named)
                    .expect("a type");
                let limits = &g["template"]["spec"]["containers"][0]["resources"]["limits"];
                if rayshape_e2e::millis(&limits["cpu"]).is_none_or(|m| m > t.cpu * 1000)
                    || rayshape_e2e::millis(&limits["memory"])
                        .is_none_or(|m| m > t.memory_gi * GI * 1000)
                {
                    problems.push(format!(
                        "{}: group {name} not sized to {}: limits {limits}",
                        s.file, t.name
                    ));
                }
                let recorded: Value = serde_json::from_str(record).unwrap_or(Value::Null);
                if recorded["groups"][&name]["instanceType"] != json!(t.name) {
                    problems.push(format!(
                        "{}: the record {record:?} does not name {} for group {name}",
                        s.file, t.name
                    ));
                }
            }
        }
    }

    // KubeRay makes the pods (RayJob and RayService through a RayCluster of their own).
    let parents: BTreeSet<String> = samples
        .iter()
        .flat_map(|s| s.stored.iter())
        .filter(|o| {
            !o["spec"]["rayClusterSpec"].is_null() || !o["spec"]["rayClusterConfig"].is_null()
        })
        .map(|o| {
            format!(
                "{}/{}",
                o["metadata"]["namespace"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let short = wait_for_pods(&c, &ns_set, &parents, Duration::from_secs(240));
    problems.extend(
        short
            .into_iter()
            .map(|s| format!("KubeRay did not make the pods: {s}")),
    );
    let pods = ray_pods(&c, &ns_set);
    let rcs = ray_clusters(&c, &ns_set);
    eprintln!(
        "{} RayClusters, {} pods after {:?}",
        rcs.len(),
        pods.len(),
        started.elapsed()
    );
    for s in &samples {
        let mine = rcs
            .keys()
            .filter(|k| k.starts_with(&format!("{}/", s.ns)))
            .count();
        let expects_cluster = s.stored.iter().any(|o| {
            o["kind"] == "RayCluster"
                || !o["spec"]["rayClusterSpec"].is_null()
                || !o["spec"]["rayClusterConfig"].is_null()
        });
        if expects_cluster && mine == 0 {
            problems.push(format!("{}: KubeRay made no RayCluster", s.file));
        }
        // A RayJob's or RayService's RayCluster has the groups the webhook shaped in it.
        for o in s.stored.iter().filter(|o| o["kind"] != "RayCluster") {
            let Some(parent) = cluster_spec_mut(&mut o.clone()).map(|v| v.clone()) else {
                continue;
            };
            let name = o["metadata"]["name"].as_str().unwrap_or_default();
            for (k, rc) in rcs.iter().filter(|(k, rc)| {
                k.starts_with(&format!("{}/", s.ns))
                    && rc["metadata"]["labels"]["ray.io/originated-from-cr-name"] == json!(name)
            }) {
                // KubeRay may add containers (a SidecarMode submitter) and writes quantities
                // in its own form: the Ray container's resources, as quantities.
                for ((head, pg), (_, cg)) in groups(&parent).into_iter().zip(groups(&rc["spec"])) {
                    let ray =
                        |g: &Value| g["template"]["spec"]["containers"][0]["resources"].clone();
                    if !same_resources(&ray(pg), &ray(cg))
                        || pg["rayStartParams"] != cg["rayStartParams"]
                    {
                        problems.push(format!(
                            "{}: {k} group {}: Ray's resources {} / rayStartParams {} differ from its {}'s {} / {}",
                            s.file,
                            group_name(head, pg),
                            ray(cg),
                            cg["rayStartParams"],
                            o["kind"].as_str().unwrap_or_default(),
                            ray(pg),
                            pg["rayStartParams"]
                        ));
                    }
                }
            }
        }
    }
    for p in &pods {
        match rcs.get(&cluster_key(p)) {
            Some(rc) => problems.extend(check_pod(p, rc)),
            None => problems.push(format!("{}: its RayCluster is gone", pod_key(p))),
        }
    }

    // The autoscaler's patches of replicas and workersToDelete: empty patches, no pod
    // recreated. As the autoscaler does: JSON patches of the first worker group.
    let unchanged = c.admissions(Some("RayCluster"), Some("UPDATE"), Some("unchanged"));
    let changed = c.admissions(Some("RayCluster"), Some("UPDATE"), Some("shaped"))
        + c.admissions(Some("RayCluster"), Some("UPDATE"), Some("denied"));
    let uids_before: BTreeMap<String, String> = pods
        .iter()
        .map(|p| {
            (
                pod_key(p),
                p["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let mut patched = 0;
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut scaled: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let patch = |key: &str, ops: Value, problems: &mut Vec<String>| -> Option<Value> {
        let (ns, name) = key.split_once('/').unwrap();
        let before = c.json(&["get", "raycluster", name, "-n", ns]);
        let out = c.kubectl(
            &[
                "patch",
                "raycluster",
                name,
                "-n",
                ns,
                "--type=json",
                "-p",
                &ops.to_string(),
                "-o",
                "json",
            ],
            None,
        );
        if !out.status.success() {
            problems.push(format!(
                "{key}: the autoscaler's patch {ops} was refused: {}",
                text(&out.stderr)
            ));
            return None;
        }
        let after: Value = serde_json::from_slice(&out.stdout).expect("patched RayCluster");
        // Exactly the autoscaler's change was stored: the webhook's patch was empty.
        let mut want = before.clone();
        for op in ops.as_array().unwrap() {
            let path: Vec<&str> = op["path"]
                .as_str()
                .unwrap()
                .trim_start_matches('/')
                .split('/')
                .collect();
            let mut v = &mut want;
            for p in &path[..path.len() - 1] {
                v = match p.parse::<usize>() {
                    Ok(i) => &mut v[i],
                    Err(_) => &mut v[*p],
                };
            }
            v[path[path.len() - 1]] = op["value"].clone();
        }
        if after["spec"] != want["spec"]
            || after["metadata"]["annotations"] != before["metadata"]["annotations"]
        {
            problems.push(format!(
                "{key}: the stored RayCluster is not the autoscaler's patch alone: {:?}",
                rayshape_e2e::differences(&want, &after, 10)
                    .into_iter()
                    .filter(|d| !d.starts_with("/metadata/resourceVersion")
                        && !d.starts_with("/metadata/generation")
                        && !d.starts_with("/metadata/managedFields")
                        && !d.starts_with("/status"))
                    .collect::<Vec<_>>()
            ));
        }
        Some(after)
    };
    for (key, rc) in &rcs {
        let Some(w) = rc["spec"]["workerGroupSpecs"].get(0) else {
            continue;
        };
        let group = w["groupName"].as_str().unwrap_or_default().to_string();
        let (r, min, max) = (
            w["replicas"].as_i64().unwrap_or(0),
            w["minReplicas"].as_i64().unwrap_or(0),
            w["maxReplicas"].as_i64().unwrap_or(i64::MAX),
        );
        let hosts = w["numOfHosts"].as_i64().unwrap_or(1);
        let op = if w.get("replicas").is_some() {
            "replace"
        } else {
            "add"
        };
        if r < max && hosts <= 4 {
            // Scale up by one.
            patch(
                key,
                json!([{"op": op, "path": "/spec/workerGroupSpecs/0/replicas", "value": r + 1}]),
                &mut problems,
            );
            patched += 1;
            scaled.insert(key.clone(), (group, r + 1));
        } else if r > min && hosts == 1 {
            // Scale down by one named pod, then clear the list once it is gone.
            let victim = pods
                .iter()
                .find(|p| {
                    cluster_key(p) == *key
                        && p["metadata"]["labels"]["ray.io/group"] == json!(group)
                })
                .map(|p| {
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                });
            let Some(victim) = victim else { continue };
            patch(
                key,
                json!([
                    {"op": op, "path": "/spec/workerGroupSpecs/0/replicas", "value": r - 1},
                    {"op": "add", "path": "/spec/workerGroupSpecs/0/scaleStrategy", "value": {"workersToDelete": [victim]}}
                ]),
                &mut problems,
            );
            patched += 1;
            let ns = key.split('/').next().unwrap();
            deleted.insert(format!("{ns}/{victim}"));
            scaled.insert(key.clone(), (group, r - 1));
        } else {
            notes.push(format!("{key}: first worker group not scaled (replicas {r}, min {min}, max {max}, hosts {hosts})"));
        }
    }
    let short = wait_for_pods(&c, &ns_set, &parents, Duration::from_secs(180));
    problems.extend(
        short
            .into_iter()
            .map(|s| format!("after the autoscaler's patches: {s}")),
    );
    // The autoscaler clears workersToDelete once the pods are gone.
    for key in scaled.keys() {
        let (ns, name) = key.split_once('/').unwrap();
        let rc = c.json(&["get", "raycluster", name, "-n", ns]);
        if rc["spec"]["workerGroupSpecs"][0]["scaleStrategy"]["workersToDelete"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
        {
            patch(
                key,
                json!([{"op": "replace", "path": "/spec/workerGroupSpecs/0/scaleStrategy/workersToDelete", "value": []}]),
                &mut problems,
            );
            patched += 1;
        }
    }
    let unchanged_after = c.admissions(Some("RayCluster"), Some("UPDATE"), Some("unchanged"));
    let changed_after = c.admissions(Some("RayCluster"), Some("UPDATE"), Some("shaped"))
        + c.admissions(Some("RayCluster"), Some("UPDATE"), Some("denied"));
    if unchanged_after - unchanged < f64::from(patched) {
        problems.push(format!(
            "{patched} autoscaler patches, but the webhook counted {} unchanged RayCluster UPDATEs",
            unchanged_after - unchanged
        ));
    }
    if changed_after != changed {
        problems.push(format!(
            "RayCluster UPDATEs shaped or denied during the autoscaler's patches: {}",
            changed_after - changed
        ));
    }
    // No pod recreated: every pod but the named ones is still there, with its UID.
    let pods_after = ray_pods(&c, &ns_set);
    let uids_after: BTreeMap<String, String> = pods_after
        .iter()
        .map(|p| {
            (
                pod_key(p),
                p["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    for (k, uid) in &uids_before {
        if deleted.contains(k) {
            if uids_after.contains_key(k) {
                problems.push(format!("{k}: in workersToDelete, but KubeRay kept it"));
            }
            continue;
        }
        match uids_after.get(k) {
            Some(u) if u == uid => {}
            Some(u) => problems.push(format!("{k}: recreated (uid {uid} → {u})")),
            None => problems.push(format!("{k}: deleted by KubeRay, not in workersToDelete")),
        }
    }
    let new_pods: Vec<&Value> = pods_after
        .iter()
        .filter(|p| !uids_before.contains_key(&pod_key(p)))
        .collect();
    let scaled_up = scaled
        .iter()
        .filter(|(k, (_, n))| {
            let rc = &rcs[*k];
            rc["spec"]["workerGroupSpecs"][0]["replicas"]
                .as_i64()
                .unwrap_or(0)
                < *n
        })
        .count();
    if new_pods.len() < scaled_up {
        problems.push(format!(
            "{scaled_up} groups scaled up, only {} new pods",
            new_pods.len()
        ));
    }
    // New pods are shaped like the others.
    let rcs = ray_clusters(&c, &ns_set);
    for p in &new_pods {
        match rcs.get(&cluster_key(p)) {
            Some(rc) => problems.extend(check_pod(p, rc)),
            None => problems.push(format!("{}: its RayCluster is gone", pod_key(p))),
        }
    }

    // The autoscaler's own reading of every RayCluster as the API server has it.
    let view = autoscaler_view(&rcs);
    let mut upstream_seen = BTreeSet::new();
    check_autoscaler(
        &view,
        &rcs,
        &pods_after,
        &sample_of,
        &mut problems,
        &mut upstream_seen,
        &mut notes,
    );
    for (i, (s, g, r, _)) in UPSTREAM.iter().enumerate() {
        if !upstream_seen.contains(&i) {
            problems.push(format!("the known upstream difference {s} group {g} {r} did not occur: remove it from UPSTREAM"));
        }
    }
    eprintln!(
        "ray {} autoscaler; {} samples, {} RayClusters, {} pods ({} new), {patched} autoscaler patches, {:?}",
        view["ray"].as_str().unwrap_or("?"),
        samples.len(),
        rcs.len(),
        pods_after.len(),
        new_pods.len(),
        started.elapsed()
    );
    for n in &notes {
        eprintln!("note: {n}");
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    // Passed: quiet the operator for the tests after this one (on a failure everything
    // stays for a look). Bound pods would wait for a kubelet forever: forced.
    for ns in &namespaces {
        c.ok(
            &[
                "delete",
                "rayjobs,rayservices,rayclusters",
                "--all",
                "-n",
                ns,
                "--wait=false",
            ],
            None,
        );
        c.ok(
            &[
                "delete",
                "pods",
                "--all",
                "-n",
                ns,
                "--force",
                "--grace-period=0",
                "--wait=false",
            ],
            None,
        );
    }
}

#[test]
fn unknown_types_are_denied_at_the_custom_resource_naming_every_group() {
    let c = Cluster::get();
    let _s = shared();
    let ns = c.namespace("kr-denied");
    let dir = samples_dir(&c);
    for (file, kind) in [
        ("ray-cluster.sample.yaml", "RayCluster"),
        ("ray-job.sample.yaml", "RayJob"),
        ("ray-service.sample.yaml", "RayService"),
    ] {
        let (objects, _) = c.read_known_objects(&dir.join(file));
        let mut o = objects
            .into_iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("{file}: no {kind}"));
        o["metadata"]["namespace"] = json!(ns);
        let spec = cluster_spec_mut(&mut o).expect("a cluster spec");
        let mut names = Vec::new();
        spec["headGroupSpec"]["template"]["metadata"]["labels"] =
            json!({"rayshape.io/instance-type": "no-such-head-type"});
        names.push(("head".to_string(), "no-such-head-type"));
        for w in spec["workerGroupSpecs"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            w["template"]["metadata"]["labels"] =
                json!({"rayshape.io/instance-type": "no-such-worker-type"});
            names.push((
                w["groupName"].as_str().unwrap().to_string(),
                "no-such-worker-type",
            ));
        }
        let out = c.kubectl(&["create", "-f", "-"], Some(&o.to_string()));
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{file}: created");
        assert!(
            err.contains(
                r#"admission webhook "kuberay-objects.rayshape.io" denied the request: rayshape: "#
            ) && err.contains("known instance types: "),
            "{file}: {err}"
        );
        for (group, t) in names {
            assert!(
                err.contains(&format!("group {group}: unknown instance type \"{t}\"")),
                "{file}: group {group} not named: {err}"
            );
        }
    }
    assert_eq!(
        c.ok(
            &[
                "get",
                "rayclusters,rayjobs,rayservices",
                "-n",
                &ns,
                "-o",
                "name"
            ],
            None
        )
        .trim(),
        ""
    );
}

#[test]
fn ray_start_flags_are_read_as_the_shell_reads_them() {
    let f = flags(
        r#"ray start  --address=h:6379  --block  --memory=8  --resources='{"TPU":4}'  --x="{\"a\":1}" "#,
    );
    assert_eq!(f["address"], "h:6379");
    assert_eq!(f["block"], "");
    assert_eq!(f["memory"], "8");
    assert_eq!(f["resources"], r#"{"TPU":4}"#);
    assert_eq!(f["x"], r#"{"a":1}"#);
    assert_eq!(
        resource_map(&f["x"]).map(Value::Object),
        Some(json!({"a": 1}))
    );
}

/// An admin changes an instance type while a cluster of it runs. The RayCluster keeps its
/// shape (the autoscaler plans from it), and so do the pods KubeRay adds when it scales;
/// once the group is changed, it and its new pods take the new definition together.
#[test]
fn a_changed_definition_reaches_a_running_cluster_only_when_its_group_changes() {
    let c = Cluster::get();
    let _x = exclusive();
    let ns = c.namespace("kr-redefined");
    let define = |cpu: u32, memory_gi: u32| {
        format!(
            "{}kr-redefined:\n  resources: {{CPU: {cpu}, memory: {memory_gi}Gi}}\n",
            types_yaml()
        )
    };
    let instance_types = c.set_webhook_file("instance_types.yaml", Some(&define(2, 4)));
    let _restore = Restore {
        c: &c,
        instance_types,
    };
    let (objects, _) = c.read_known_objects(&samples_dir(&c).join("ray-cluster.sample.yaml"));
    let mut rc = objects
        .into_iter()
        .find(|o| o["kind"] == "RayCluster")
        .expect("ray-cluster.sample.yaml: a RayCluster");
    rc["metadata"]["namespace"] = json!(ns);
    let name = rc["metadata"]["name"].as_str().expect("a name").to_string();
    let worker = &mut rc["spec"]["workerGroupSpecs"][0];
    worker["replicas"] = json!(1);
    worker["minReplicas"] = json!(0);
    worker["maxReplicas"] = json!(5);
    worker["template"]["metadata"]["labels"]["rayshape.io/instance-type"] = json!("kr-redefined");
    let group = worker["groupName"]
        .as_str()
        .expect("a group name")
        .to_string();
    c.ok(&["create", "-f", "-"], Some(&rc.to_string()));

    let patch = |ops: &Value| {
        let ops = ops.to_string();
        c.ok(
            &[
                "patch",
                "raycluster",
                &name,
                "-n",
                &ns,
                "--type",
                "json",
                "-p",
                &ops,
            ],
            None,
        );
    };
    let template_limits = || {
        let rc = c.json(&["get", "raycluster", &name, "-n", &ns]);
        rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]
            ["limits"]
            .clone()
    };
    // The group's live pods: name → (the Ray container's limits, the template's stamp).
    let pods = |want: usize| -> BTreeMap<String, (Value, Value)> {
        let mut got = BTreeMap::new();
        rayshape_e2e::wait_until(
            Duration::from_secs(90),
            &format!("{want} pods of group {group}"),
            || {
                let list = c.json(&[
                    "get",
                    "pods",
                    "-n",
                    &ns,
                    "-l",
                    &format!("ray.io/cluster={name},ray.io/group={group}"),
                ]);
                got = list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
                    .map(|p| {
                        (
                            p["metadata"]["name"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                            (
                                p["spec"]["containers"][0]["resources"]["limits"].clone(),
                                p["metadata"]["annotations"]["rayshape.io/sized-for"].clone(),
                            ),
                        )
                    })
                    .collect();
                got.len() == want
            },
        );
        got
    };
    let first = template_limits();
    assert_eq!(first["cpu"], "1900m", "2 CPUs less the sidecar's: {first}");
    let before = pods(1);
    let (limits, stamp) = before.values().next().expect("one pod");
    assert_eq!(limits, &first);
    let old_stamp = stamp
        .as_str()
        .expect("the pod carries its template's stamp")
        .to_string();
    assert!(old_stamp.starts_with("kr-redefined@"), "{old_stamp}");

    // The admin makes the type larger; the autoscaler then scales the group up.
    c.set_webhook_file("instance_types.yaml", Some(&define(3, 6)));
    let scale = json!([{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 2}]);
    patch(&scale);
    assert_eq!(template_limits(), first, "the RayCluster keeps its shape");
    let scaled = pods(2);
    for (pod, (limits, stamp)) in &scaled {
        assert_eq!(limits, &first, "{pod}: not sized as the RayCluster says");
        assert_eq!(stamp, &json!(old_stamp), "{pod}");
    }

    // The user changes the group: it is re-sized, and the pods KubeRay makes from it now
    // take the new definition, as the RayCluster does.
    let bump = json!([{"op": "add",
        "path": "/spec/workerGroupSpecs/0/template/metadata/annotations/example.com~1rollout",
        "value": "2"}]);
    patch(&bump);
    let second = template_limits();
    assert_eq!(
        second["cpu"], "2900m",
        "3 CPUs less the sidecar's: {second}"
    );
    let gone = scaled.keys().next().expect("a pod").clone();
    // No kubelet runs here to finish a graceful deletion.
    c.ok(
        &[
            "delete",
            "pod",
            &gone,
            "-n",
            &ns,
            "--grace-period=0",
            "--force",
        ],
        None,
    );
    let mut after = BTreeMap::new();
    rayshape_e2e::wait_until(
        Duration::from_secs(90),
        "KubeRay to replace the pod",
        || {
            after = pods(2);
            !after.contains_key(&gone)
        },
    );
    let (fresh, (limits, stamp)) = after
        .iter()
        .find(|(p, _)| !scaled.contains_key(*p))
        .expect("a new pod");
    assert_eq!(
        limits, &second,
        "{fresh}: not sized as the RayCluster now says"
    );
    assert_ne!(stamp, &json!(old_stamp), "{fresh}");
    c.ok(&["delete", "namespace", &ns, "--wait=false"], None);
}

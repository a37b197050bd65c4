//! Make Ray see the node the kubelet enforces.
//!
//! KubeRay bakes `--num-cpus`, `--memory` and `--num-gpus` and the `/dev/shm` size into the pod
//! from the template, before admission; a plain `ray start` reads the cgroup, truncating CPUs.
//! After sizing, the Ray container's limits may say something else. Where Ray's view would
//! differ, it is corrected with `RAY_OVERRIDE_RESOURCES` (which beats `ray start` flags) and the
//! `/dev/shm` size limit, never overriding a value the user set: a flag counts as the user's
//! when it is not what KubeRay would have derived from the container's resources.

use super::sizing::{Sizing, kuberay_flags_of};
use crate::config::instance_types::{InstanceType, is_gpu_resource};
use crate::plan::sizing::RAY_ACCELERATORS;
use crate::primitives::pod;
use crate::primitives::quantity::Quantity;
use crate::primitives::vecmap::VecMap;
use rayshape_json::{Map, Number, Value};

pub const OVERRIDE_ENV: &str = "RAY_OVERRIDE_RESOURCES";

/// A flag's value on the `ray start` command line.
#[derive(Debug, PartialEq)]
enum Flag {
    Absent,
    Number(f64),
    /// Set, but not a literal number (`$(NUM_CPUS)`): the user's, left alone.
    Opaque,
}

/// What Ray's view is judged against: the Ray container as it arrived, before sizing.
#[derive(Debug, Clone)]
pub struct Original {
    /// What KubeRay would have derived for `--num-cpus`, `--memory`, `--num-gpus`.
    flags: VecMap<&'static str, i128>,
    /// The memory KubeRay would have sized `/dev/shm` to (limit, else request).
    shm: Option<Quantity>,
}

impl Original {
    pub fn of(ray_container: &Value) -> Original {
        let limits = pod::resource_list(ray_container, "limits");
        let requests = pod::resource_list(ray_container, "requests");
        Original {
            flags: kuberay_flags_of(&limits, &requests),
            shm: limits
                .get("memory")
                .or_else(|| requests.get("memory"))
                .copied(),
        }
    }
}

/// What must change for Ray to see the node the kubelet enforces.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Corrections {
    /// The new value of `RAY_OVERRIDE_RESOURCES` on the Ray container.
    pub override_env: Option<String>,
    /// The memory-backed `/dev/shm` volume to resize, and its new `sizeLimit`.
    pub shm: Option<(String, String)>,
    /// What was corrected, in words.
    pub warnings: Vec<String>,
    /// Why the pod cannot work as it is: the user's own value makes Ray claim GPUs the pod
    /// does not get (as a RayCluster group's `num-gpus` is denied).
    pub denial: Option<String>,
}

/// Plan the corrections of Ray's view on the Ray container (index `ray_idx`) of `pod`.
pub fn plan(
    pod: &Value,
    ray_idx: usize,
    original: &Original,
    sized: &Sizing,
    it: &InstanceType,
    kuberay: bool,
) -> Corrections {
    let mut out = Corrections::default();
    let Some(c) = pod::containers(pod).get(ray_idx) else {
        return out;
    };
    let warnings = &mut out.warnings;
    let cmd = Command::new(ray_command(c));
    let derived = &original.flags;

    // What Ray should see.
    let mut desired: VecMap<String, f64> = VecMap::with_capacity(3 + it.ray_resources.len());
    if let Some(cpu) = sized.ray.get("cpu") {
        desired.insert("CPU".into(), cpu.ceil_units() as f64);
    }
    if let Some(mem) = sized.ray.get("memory") {
        desired.insert("memory".into(), mem.ceil_units() as f64);
    }
    let gpus: i128 = sized
        .ray
        .iter()
        .filter(|(k, _)| is_gpu_resource(k))
        .map(|(_, q)| q.floor_units())
        .sum();
    desired.insert("GPU".into(), gpus as f64);
    for (k, v) in &it.ray_resources {
        desired.insert(k.clone(), *v);
    }
    // TPU chips and Neuron cores, as KubeRay tells Ray of them, from the limits as sized.
    for (k8s, ray) in RAY_ACCELERATORS {
        if let Some(q) = sized.ray.get(k8s) {
            desired.insert(ray.into(), q.floor_units() as f64);
        }
    }

    let (existing, entries) = existing_override(c);
    let Some(existing) = existing else {
        warnings.push(format!(
            "{OVERRIDE_ENV} on {} is not a literal JSON object: Ray's view was not checked",
            pod::name(c)
        ));
        return out;
    };
    let custom_flags = match flag(&cmd, "resources") {
        FlagText::Text(t) => serde_json::from_str::<Map>(&t).ok(),
        _ => None,
    };

    let custom_flag = |key: &str| {
        custom_flags
            .as_ref()
            .and_then(|m| m.get(key))
            .map_or(Flag::Absent, |v| {
                v.as_f64().map_or(Flag::Opaque, Flag::Number)
            })
    };
    let mut corrections: VecMap<String, f64> = VecMap::new();
    let mut was: Vec<String> = Vec::new();
    let too_many_gpus = |what: String, n: f64| {
        format!(
            "{what} makes Ray claim {} GPUs, but instance type {} gives {}; remove it (Ray then counts the GPUs the pod gets) or choose a type with {} GPUs",
            show("GPU", n),
            it.name,
            show("GPU", gpus as f64),
            show("GPU", n)
        )
    };
    for (key, want) in &desired {
        if let Some(v) = existing.get(key) {
            if key == "GPU"
                && let Some(n) = v.as_f64()
                && n > *want
            {
                out.denial = Some(too_many_gpus(format!("{OVERRIDE_ENV} GPU={v}"), n));
                return out;
            }
            if v.as_f64() != Some(*want) {
                warnings.push(format!(
                    "kept {OVERRIDE_ENV} {key}={v} set on the pod (instance type {} gives {})",
                    it.name,
                    show(key, *want)
                ));
            }
            continue;
        }
        let (current, derivable) = match key.as_str() {
            "CPU" => (number_flag(&cmd, "num-cpus"), derived.get("CPU")),
            "memory" => (number_flag(&cmd, "memory"), derived.get("memory")),
            "GPU" => (number_flag(&cmd, "num-gpus"), derived.get("GPU")),
            "TPU" | "neuron_cores" => (custom_flag(key), derived.get(key.as_str())),
            _ => (custom_flag(key), None),
        };
        let fix = match current {
            Flag::Opaque => false,
            Flag::Number(n) if n == *want => false,
            // KubeRay's own flag, from resources the instance type has now replaced.
            Flag::Number(n) => derivable.is_some_and(|d| *d as f64 == n),
            // No flag: Ray reads the cgroup (CPU truncated), finds its GPUs, and knows no
            // custom resources.
            Flag::Absent => match key.as_str() {
                "CPU" => sized
                    .ray
                    .get("cpu")
                    .is_some_and(|q| q.floor_units() as f64 != *want),
                // Ray finds its GPUs, TPU chips and Neuron cores itself.
                "memory" | "GPU" | "TPU" | "neuron_cores" => false,
                _ => true,
            },
        };
        if key == "GPU"
            && !fix
            && let Flag::Number(n) = current
            && n > *want
        {
            out.denial = Some(too_many_gpus(format!("--num-gpus={}", show(key, n)), n));
            return out;
        }
        if fix {
            if let Flag::Number(n) = current {
                was.push(format!("{key} {}", show(key, n)));
            }
            corrections.insert(key.clone(), *want);
        }
    }

    if corrections.is_empty() && entries > 1 {
        // A rule or the user set it again: one entry, the one the kubelet used, so the pod
        // says what Ray gets and shaping it again changes nothing.
        out.override_env = Some(Value::Object(existing.clone()).to_string());
    }
    if entries > 1 {
        warnings.push(format!(
            "{OVERRIDE_ENV} was set {entries} times: kept the last, which Kubernetes uses"
        ));
    }
    if !corrections.is_empty() {
        let mut merged = existing.clone();
        for (k, v) in &corrections {
            merged.insert(k.clone(), number(*v));
        }
        out.override_env = Some(Value::Object(merged).to_string());
        let now: Vec<String> = corrections
            .iter()
            .map(|(k, v)| format!("{k} {}", show(k, *v)))
            .collect();
        let mut msg = format!("{OVERRIDE_ENV}: Ray sees {}", now.join(", "));
        if !was.is_empty() {
            msg.push_str(&format!(" (flags said {})", was.join(", ")));
        }
        warnings.push(msg);
        // The autoscaler plans CPU, GPU and memory from the RayCluster: a correction of those
        // means the group template was not sized.
        let planned = ["CPU", "GPU", "memory"]
            .iter()
            .any(|k| corrections.contains_key(*k));
        if kuberay && planned {
            warnings.push("KubeRay pod: put the instance-type label on the group template so the autoscaler plans this shape".into());
        }
    }
    if let Some(mem) = sized.ray.get("memory")
        && let Some((volume, size)) = plan_shm(pod, c, original.shm, *mem)
    {
        warnings.push(format!(
            "/dev/shm (volume {volume}) sizeLimit set to {size}, the Ray container's memory"
        ));
        out.shm = Some((volume, size));
    }
    out
}

/// Size a memory-backed `/dev/shm` like KubeRay does: the Ray container's memory.
fn plan_shm(
    pod: &Value,
    c: &Value,
    original: Option<Quantity>,
    mem: Quantity,
) -> Option<(String, String)> {
    let mount = pod::field(c, "volumeMounts")?
        .as_array()?
        .iter()
        .find(|m| pod::field(m, "mountPath").and_then(Value::as_str) == Some("/dev/shm"))?;
    let vol_name = pod::field(mount, "name")?.as_str()?.to_string();
    let vol = pod::at(pod, &["spec", "volumes"])?
        .as_array()?
        .iter()
        .find(|v| pod::field(v, "name").and_then(Value::as_str) == Some(vol_name.as_str()))?;
    let empty_dir = pod::field(vol, "emptyDir")?.as_object()?;
    if empty_dir.get("medium").and_then(Value::as_str) != Some("Memory") {
        return None;
    }
    let current = empty_dir.get("sizeLimit").map(Quantity::from_json);
    let set = match current {
        None => true,
        Some(Ok(q)) if q == mem => false,
        Some(Ok(q)) => Some(q) == original,
        Some(Err(_)) => false,
    };
    if !set {
        return None;
    }
    Some((vol_name, mem.to_binary_string()))
}

/// The text of the `ray start` command: the container's command line, or KubeRay's generated
/// command when the container runs it through `$KUBERAY_GEN_RAY_START_CMD`.
fn ray_command(c: &Value) -> String {
    let line = pod::command_line(c);
    if !crate::classify::runs_ray_start(&line)
        && line.contains("KUBERAY_GEN_RAY_START_CMD")
        && let Some(gen_cmd) = pod::env_value(c, "KUBERAY_GEN_RAY_START_CMD")
    {
        return ray_start_only(gen_cmd).to_string();
    }
    ray_start_only(&line).to_string()
}

/// The `ray start` command of a shell line, up to the first `;`, `&`, `|` or newline
/// outside quotes: a later command's `--num-cpus` (`ray start ... && python bench.py
/// --num-cpus 2`) is not Ray's. The whole line when it has no `ray start`.
fn ray_start_only(line: &str) -> &str {
    let Some(start) = memchr::memmem::find(line.as_bytes(), b"ray start") else {
        return line;
    };
    let rest = &line[start..];
    // Every byte looked for is ASCII, so each index found is a char boundary. A KubeRay
    // command is a kilobyte or more; a byte-by-byte loop cost 3,000 instructions a review.
    let b = rest.as_bytes();
    let mut i = 0;
    loop {
        let next = [
            memchr::memchr3(b';', b'&', b'|', &b[i..]),
            memchr::memchr3(b'\n', b'\'', b'"', &b[i..]),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(at) = next.map(|n| i + n) else {
            return rest;
        };
        match b[at] {
            q @ (b'\'' | b'"') => match memchr::memchr(q, &b[at + 1..]) {
                Some(end) => i = at + 1 + end + 1,
                None => return rest,
            },
            _ => return &rest[..at],
        }
    }
}

enum FlagText {
    Absent,
    Text(String),
}

/// A command line, and where each `--` in it starts: found in one pass, so that each flag
/// is looked for among them rather than searched for in the whole line.
struct Command {
    line: String,
    dashes: Vec<usize>,
}

impl Command {
    fn new(line: String) -> Command {
        let b = line.as_bytes();
        let dashes = (1..b.len())
            .filter(|&i| b[i - 1] == b'-' && b[i] == b'-')
            .map(|i| i - 1)
            .collect();
        Command { line, dashes }
    }
}

/// `--name=value`, `--name value`, with `'...'` or `"..."` quoting.
fn flag(cmd: &Command, name: &str) -> FlagText {
    let line = cmd.line.as_str();
    let mut found = FlagText::Absent;
    // Where the search for the next occurrence starts: past the name of the last one (the
    // dashes are ASCII, so every index used below is on a character boundary).
    let mut from = 0;
    for &pos in &cmd.dashes {
        if pos < from || !line[pos + 2..].starts_with(name) {
            continue;
        }
        let after = &line[pos + 2 + name.len()..];
        let boundary_before = pos == from || line[from..pos].ends_with(char::is_whitespace);
        let value = if let Some(v) = after.strip_prefix('=') {
            Some(v)
        } else if after.starts_with(char::is_whitespace) {
            Some(after.trim_start())
        } else {
            None
        };
        if let (true, Some(v)) = (boundary_before, value) {
            let text = match v.chars().next() {
                // As the shell reads them: nothing is escaped in single quotes; `\"` and
                // `\\` are in double quotes (KubeRay writes `--resources="{\"TPU\": 4}"`).
                Some('\'') => v[1..].split('\'').next().unwrap_or("").to_string(),
                Some('"') => {
                    let mut out = String::new();
                    let mut chars = v[1..].chars();
                    while let Some(c) = chars.next() {
                        match c {
                            '"' => break,
                            '\\' => match chars.next() {
                                Some(e @ ('"' | '\\' | '$' | '`')) => out.push(e),
                                Some(other) => {
                                    out.push('\\');
                                    out.push(other);
                                }
                                None => break,
                            },
                            c => out.push(c),
                        }
                    }
                    out
                }
                _ => v.split_whitespace().next().unwrap_or("").to_string(),
            };
            // The last occurrence wins, as with argparse/click.
            found = FlagText::Text(text);
        }
        from = pos + 2 + name.len();
    }
    found
}

fn number_flag(cmd: &Command, name: &str) -> Flag {
    match flag(cmd, name) {
        FlagText::Absent => Flag::Absent,
        FlagText::Text(t) => t.parse::<f64>().map_or(Flag::Opaque, Flag::Number),
    }
}

/// The override Ray gets: `Some(map)` for an absent or literal-JSON-object override, `None`
/// when it cannot be read; and how many entries set it. Of several, the kubelet gives the
/// container the last.
fn existing_override(c: &Value) -> (Option<Map>, usize) {
    let (last, entries) = pod::field(c, "env")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter(|e| pod::field(e, "name").and_then(Value::as_str) == Some(OVERRIDE_ENV))
        .fold((None, 0), |(_, n), e| (Some(e), n + 1));
    let map = match last {
        None => Some(Map::new()),
        Some(e) => pod::field(e, "value")
            .and_then(Value::as_str)
            .and_then(|s| serde_json::from_str(s).ok()),
    };
    (map, entries)
}

fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::Number(Number::from(v as i64))
    } else {
        Number::from_f64(v).map_or(Value::Null, Value::Number)
    }
}

fn show(key: &str, v: f64) -> String {
    if key == "memory" && v.fract() == 0.0 {
        Quantity::from_units(v as i64).to_binary_string()
    } else if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use rayshape_json::json;

    /// Plan sizing and Ray's view, and write both as `apply` does.
    fn run(pod: Value, ty: &str) -> (Value, Vec<String>) {
        run_as(pod, Config::builtin().instance_types[ty].clone())
    }

    /// [`run`] with an instance type of `instance_types.yaml` text.
    fn run_yaml(pod: Value, yaml: &str) -> (Value, Vec<String>) {
        let mut r = crate::config::problems::Report::default();
        let types = crate::config::instance_types::load(
            yaml,
            &crate::config::settings::Settings::default(),
            &mut r,
        )
        .unwrap_or_else(|| panic!("{:?}", r.errors));
        run_as(pod, types.into_values().next().unwrap())
    }

    fn run_as(pod: Value, it: InstanceType) -> (Value, Vec<String>) {
        let original = Original::of(&pod["spec"]["containers"][0]);
        let sized = super::super::sizing::plan(&pod, 0, &it).unwrap();
        let fix = plan(&pod, 0, &original, &sized, &it, true);
        let mut pod = pod;
        crate::apply::write_ray_container(
            &mut pod,
            0,
            sized.changed.then(|| sized.resources.clone()),
            fix.override_env.clone(),
            fix.shm.clone(),
        );
        (pod, fix.warnings)
    }

    fn override_of(pod: &Value) -> Option<Value> {
        pod::env_value(&pod["spec"]["containers"][0], OVERRIDE_ENV)
            .map(|s| serde_json::from_str(s).unwrap())
    }

    #[test]
    fn kuberay_flags_are_corrected() {
        let pod = json!({"spec": {"containers": [{"name": "ray", "args": ["ray start  --num-cpus=4  --memory=17179869184  --num-gpus=1 "],
            "resources": {"limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}}, "volumeMounts": [{"name": "shared-mem", "mountPath": "/dev/shm"}]}],
            "volumes": [{"name": "shared-mem", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]}});
        let (pod, w) = run(pod, "2CPU-8GB");
        assert_eq!(
            override_of(&pod),
            Some(json!({"CPU": 2, "GPU": 0, "memory": 8589934592u64}))
        );
        assert_eq!(pod["spec"]["volumes"][0]["emptyDir"]["sizeLimit"], "8Gi");
        assert!(
            w[0].contains("flags said CPU 4, GPU 1, memory 16Gi"),
            "{w:?}"
        );
        assert!(w.len() <= 3 && w.iter().all(|m| m.len() <= 120), "{w:?}");
    }

    /// KubeRay tells Ray of TPU chips and Neuron cores in `--resources`, from the limits;
    /// when the instance type changes those, Ray's view follows (it did not: Ray registered
    /// the chips the pod no longer had).
    #[test]
    fn tpu_and_neuron_counts_follow_the_limits() {
        let tpu = json!({"spec": {"containers": [{"name": "ray",
            "args": ["ray start  --resources='{\"TPU\":8}'  --num-cpus=8  --memory=34359738368 "],
            "resources": {"limits": {"cpu": "8", "memory": "32Gi", "google.com/tpu": "8"}}}]}});
        let (pod, w) = run_yaml(
            tpu.clone(),
            "tpu4:\n  resources: {CPU: 8, memory: 32Gi, google.com/tpu: 4}\n",
        );
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"]["google.com/tpu"],
            "4"
        );
        assert_eq!(override_of(&pod).unwrap()["TPU"], 4, "{w:?}");
        assert!(
            w.iter()
                .any(|m| m.contains("flags said") && m.contains("TPU 8")),
            "{w:?}"
        );
        // The Anyscale form: `TPU` in the type requests the chips too.
        let (pod, _) = run_yaml(tpu, "tpu4:\n  resources: {CPU: 8, memory: 32Gi, TPU: 4}\n");
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"]["google.com/tpu"],
            "4"
        );
        assert_eq!(override_of(&pod).unwrap()["TPU"], 4);
        let neuron = json!({"spec": {"containers": [{"name": "ray",
            "args": ["ray start  --resources='{\"neuron_cores\":4}'  --num-cpus=8  --memory=34359738368 "],
            "resources": {"limits": {"cpu": "8", "memory": "32Gi", "aws.amazon.com/neuroncore": "4"}}}]}});
        let (pod, _) = run_yaml(
            neuron,
            "inf2:\n  resources: {CPU: 8, memory: 32Gi, aws.amazon.com/neuroncore: 2}\n",
        );
        assert_eq!(override_of(&pod).unwrap()["neuron_cores"], 2);
        // Unchanged chips: nothing to correct.
        let same = json!({"spec": {"containers": [{"name": "ray",
            "args": ["ray start  --resources='{\"TPU\":4}'  --num-cpus=8  --memory=34359738368 "],
            "resources": {"limits": {"cpu": "8", "memory": "32Gi", "google.com/tpu": "4"}}}]}});
        let (pod, w) = run_yaml(
            same,
            "tpu4:\n  resources: {CPU: 8, memory: 32Gi, google.com/tpu: 4}\n",
        );
        assert_eq!(override_of(&pod), None, "{w:?}");
    }

    #[test]
    fn only_the_ray_start_command_is_read() {
        assert_eq!(
            ray_start_only(
                "ulimit -n 65536; ray start --head --num-cpus=4 --resources='{\"a;b\":1}' && python /app/bench.py --num-cpus 2"
            ),
            "ray start --head --num-cpus=4 --resources='{\"a;b\":1}' "
        );
        assert_eq!(
            ray_start_only("python x.py --num-cpus 2"),
            "python x.py --num-cpus 2"
        );
        for (line, want) in [
            ("ray start --a=\"x;y\" --b|c", "ray start --a=\"x;y\" --b"),
            (
                "ray start --a='x\"y;' --b\nnext",
                "ray start --a='x\"y;' --b",
            ),
            ("ray start --a='open;", "ray start --a='open;"),
            ("ray start --block", "ray start --block"),
            ("echo é; ray start --x=é && y", "ray start --x=é "),
        ] {
            assert_eq!(ray_start_only(line), want, "{line}");
        }
        let pod = json!({"spec": {"containers": [{"name": "ray",
            "args": ["ray start --head --num-cpus=4 && python /app/bench.py --num-cpus 2"],
            "resources": {"limits": {"cpu": "2", "memory": "8Gi"}}}]}});
        let (pod, w) = run(pod, "8CPU-32GB");
        assert_eq!(override_of(&pod), None, "--num-cpus=4 is the user's: {w:?}");
    }

    #[test]
    fn user_flags_and_env_are_kept() {
        let pod = json!({"spec": {"containers": [{"name": "ray", "args": ["ray start --head --num-cpus=0 --memory=$(MEM)"],
            "env": [{"name": OVERRIDE_ENV, "value": "{\"GPU\": 0}"}],
            "resources": {"limits": {"cpu": "1", "memory": "5Gi"}}}]}});
        let (pod, _) = run(pod, "4CPU-16GB");
        assert_eq!(
            override_of(&pod),
            Some(json!({"GPU": 0})),
            "num-cpus=0 and $(MEM) are the user's"
        );
    }

    #[test]
    fn plain_pod_cpu_truncation_is_fixed_and_idempotent() {
        let pod = json!({"spec": {"containers": [{"name": "ray", "args": ["ray start --block"]}],
            "initContainers": [{"name": "s", "restartPolicy": "Always", "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}}]}});
        let (once, _) = run(pod, "8CPU-32GB-1xT4");
        assert_eq!(
            override_of(&once),
            Some(json!({"CPU": 8, "accelerator_type:T4": 1}))
        );
        let (twice, w) = run(once.clone(), "8CPU-32GB-1xT4");
        assert_eq!(once, twice);
        assert!(w.is_empty(), "{w:?}");
    }

    /// The search `flag` replaced (a substring search from past each occurrence): where the
    /// occurrence it reads starts must come out the same.
    fn searched(cmd: &str, name: &str) -> Option<usize> {
        let needle = format!("--{name}");
        let (mut rest, mut offset, mut last) = (cmd, 0, None);
        while let Some(pos) = rest.find(&needle) {
            let boundary = pos == 0 || rest[..pos].ends_with(char::is_whitespace);
            let after = &rest[pos + needle.len()..];
            if boundary && (after.starts_with('=') || after.starts_with(char::is_whitespace)) {
                last = Some(offset + pos);
            }
            offset += pos + needle.len();
            rest = after;
        }
        last
    }

    #[test]
    fn flags_are_found_where_a_substring_search_finds_them() {
        let text = |t: FlagText| match t {
            FlagText::Absent => None,
            FlagText::Text(t) => Some(t),
        };
        for line in [
            "",
            "-",
            "--",
            "---num-cpus=1",
            "a --num-cpus=1",
            "--num-cpu --num-cpus 2",
            "x-num-cpus=3 --num-cpusx=4",
            "--num-cpus--num-cpus 5",
            "--num-cpus=1--num-cpus=2",
            "ray start --num-cpus=1 \t--num-cpus 7 --num-cpus",
            "ü --num-cpus=é --num-cpus ü",
        ] {
            for name in ["num-cpus", "num-cpu", "x", ""] {
                let cmd = Command::new(line.to_string());
                let want = searched(line, name).map(|at| {
                    let v = &line[at + 2 + name.len()..];
                    let v = v.strip_prefix('=').unwrap_or(v).trim_start();
                    v.split_whitespace().next().unwrap_or("").to_string()
                });
                assert_eq!(text(flag(&cmd, name)), want, "{line:?} {name:?}");
            }
        }
    }

    #[test]
    fn flag_parsing() {
        assert_eq!(
            number_flag(&Command::new("ray start --num-cpus 3".into()), "num-cpus"),
            Flag::Number(3.0)
        );
        assert_eq!(
            number_flag(
                &Command::new("ray start --num-cpus=3 --num-cpus=5".into()),
                "num-cpus"
            ),
            Flag::Number(5.0)
        );
        assert_eq!(
            number_flag(&Command::new("ray start --num-cpusx=3".into()), "num-cpus"),
            Flag::Absent
        );
        match flag(
            &Command::new("ray start --resources='{\"TPU\": 4}' --block".into()),
            "resources",
        ) {
            FlagText::Text(t) => assert_eq!(t, "{\"TPU\": 4}"),
            FlagText::Absent => panic!(),
        }
        // As KubeRay writes a rayStartParams value in KubeRay's quoted form.
        match flag(
            &Command::new(
                r#"ray start  --resources="{\"accelerator_type:T4\":1}"  --block"#.into(),
            ),
            "resources",
        ) {
            FlagText::Text(t) => assert_eq!(t, r#"{"accelerator_type:T4":1}"#),
            FlagText::Absent => panic!(),
        }
    }
}

//! The third stage: decide everything about one object, or deny it.
//!
//! A pod's plan is made in the order its parts depend on each other: the vocabulary
//! (instance type, market type, zone), the sidecar, the patch rules, the sizing of the Ray
//! container and what Ray must see. Patch rules are edits whose success decides
//! admission, so planning runs them (with the vocabulary and the sidecar) on a staged copy
//! of the object; everything after them is decided from that copy and written by
//! [`apply`](crate::apply), which cannot fail. Every denial is decided here.

pub mod raycluster;
pub mod rayview;
pub mod rules;
pub mod sidecar;
pub mod sizing;
pub mod vocabulary;

use crate::classify::{FoundBy, RayPod};
use crate::config::{self, Config};
use crate::primitives::pod;
use rayshape_contract::keys;
use rayshape_json::Value;
use rayshape_json::write_str as json_str;
use sha2::{Digest, Sha256};

/// The webhook refuses the object; the message says what is wrong and what would be accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    pub message: String,
    /// The rule that failed, when a rule caused the denial.
    pub rule: Option<String>,
}

impl Denial {
    pub fn new(message: impl Into<String>) -> Denial {
        Denial {
            message: message.into(),
            rule: None,
        }
    }
}

/// What to do to one object.
#[derive(Debug)]
pub enum Plan<'c> {
    /// Let it through as it is; the reason is for logs.
    Unchanged(&'static str),
    Pod(Box<PodPlan<'c>>),
    Cluster(raycluster::ClusterPlan<'c>),
}

/// Everything decided about one Ray pod.
#[derive(Debug)]
pub struct PodPlan<'c> {
    /// The object with the vocabulary, the sidecar and the rules applied.
    pub staged: Value,
    /// The Ray container as classified, in the incoming object.
    pub ray: RayPod,
    /// Its name, and its index in `staged` (rules may have appended containers).
    pub ray_name: String,
    pub ray_index: usize,
    pub vocabulary: vocabulary::Vocabulary<'c>,
    /// The sidecar as injected, unless disabled.
    pub sidecar: Option<sidecar::Injection>,
    /// Every rule whose selector matched, with what became of it.
    pub rules: Vec<rules::Outcome<'c>>,
    /// The Ray container's new resources, for pods with an instance type.
    pub sizing: Option<sizing::Sizing>,
    /// The `<type>@<hash>` a KubeRay group's template was sized for, when the type's shape
    /// or Ray resources have changed since: the pod then keeps the template's sizing.
    pub kept: Option<String>,
    /// Corrections of what Ray sees.
    pub ray_view: rayview::Corrections,
    /// The `<prefix>/shaped` annotation: what was applied.
    pub record: String,
    pub warnings: Vec<String>,
}

impl PodPlan<'_> {
    /// Rules with `failurePolicy: Ignore` that failed and were skipped.
    pub fn failed_rules(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter(|o| o.skipped.is_some())
            .map(|o| o.rule.name.clone())
            .collect()
    }
}

/// Plan a Ray pod.
pub fn pod<'c>(input: &Value, ray: RayPod, cfg: &'c Config) -> Result<PodPlan<'c>, Denial> {
    let s = &cfg.settings;
    let ray_name = pod::name(&pod::containers(input)[ray.ray_container]).to_string();
    let original_ray = rayview::Original::of(&pod::containers(input)[ray.ray_container]);
    let vocabulary = vocabulary::read(input, cfg)?;

    let mut staged = input.clone();
    vocabulary.write(&mut staged, s);
    let sidecar = if s.sidecar.enabled && !sidecar::opted_out(input, s) {
        Some(sidecar::inject(&mut staged, ray.ray_container, cfg)?)
    } else {
        None
    };
    let mut warnings = Vec::new();
    let rules = rules::run(&mut staged, &ray_name, vocabulary.instance_type, cfg)?;
    warnings.extend(rules.iter().filter_map(|o| {
        o.skipped
            .as_ref()
            .map(|why| format!("skipped rule {}: {why}", o.rule.name))
    }));
    rules::check_protected(input, &staged)?;
    let Some(ray_index) = pod::containers(&staged)
        .iter()
        .position(|c| pod::name(c) == ray_name)
    else {
        return Err(Denial::new(format!(
            "patch rules removed the Ray container {ray_name:?}; rules must not remove it"
        )));
    };

    let kept = vocabulary
        .instance_type
        .filter(|_| ray.kuberay)
        .and_then(|t| sized_for_earlier(input, t, s));
    if let (Some(t), Some(_)) = (vocabulary.instance_type, &kept) {
        warnings.push(format!(
            "kept the sizing of its group's template, made before {} changed; change the group to resize",
            t.name
        ));
    }
    let (sizing, ray_view) = match vocabulary.instance_type.filter(|_| kept.is_none()) {
        Some(t) => {
            let sized = sizing::plan(&staged, ray_index, t).map_err(Denial::new)?;
            warnings.extend(sized.warnings.iter().cloned());
            let view = rayview::plan(&staged, ray_index, &original_ray, &sized, t, ray.kuberay);
            if let Some(why) = view.denial {
                return Err(Denial::new(format!("Ray container {ray_name:?}: {why}")));
            }
            warnings.extend(view.warnings.iter().cloned());
            (Some(sized), view)
        }
        None => (None, rayview::Corrections::default()),
    };

    let applied: Vec<&str> = rules
        .iter()
        .filter(|o| o.skipped.is_none())
        .map(|o| o.rule.name.as_str())
        .collect();
    let record = record(cfg, &vocabulary, sidecar.is_some(), &applied);
    Ok(PodPlan {
        staged,
        ray,
        ray_name,
        ray_index,
        vocabulary,
        sidecar,
        rules,
        sizing,
        kept,
        ray_view,
        record,
        warnings: tidy(warnings),
    })
}

/// The `<type>@<hash>` a KubeRay group's template was sized for, when it names this type
/// with an earlier shape or Ray resources.
///
/// The autoscaler plans from the RayCluster, never from pods, and an UPDATE that leaves a
/// group alone keeps the group's shape; sizing the group's new pods to a changed definition
/// would make Ray and the kubelet disagree with what the autoscaler plans with. Placement
/// (node selectors, tolerations, rules) still follows the current configuration.
fn sized_for_earlier(
    input: &Value,
    t: &config::instance_types::InstanceType,
    s: &config::settings::Settings,
) -> Option<String> {
    let stamp = pod::annotations(input)?
        .get(&s.key(keys::SIZED_FOR))?
        .as_str()?;
    let definition = stamp.strip_prefix(t.name.as_str())?.strip_prefix('@')?;
    (definition != t.sizing).then(|| stamp.to_string())
}

/// The `<prefix>/shaped` annotation: the configuration, the choices and a hash of all that
/// was applied, for idempotency checks and audits.
fn record(cfg: &Config, v: &vocabulary::Vocabulary<'_>, sidecar: bool, applied: &[&str]) -> String {
    // Written straight into the hash and the text, as the compact JSON of
    // {config, instanceType, marketType, zone, sidecar, rules} and of the summary would be:
    // it runs for every pod, and building JSON values to print them cost a tenth of a plan.
    let instance_type = v.instance_type.map(|t| t.name.as_str());
    let mut h = Sha256::new();
    let mut full = Vec::with_capacity(256);
    full.extend_from_slice(b"{\"config\":");
    json_str(&mut full, &cfg.fingerprint);
    full.extend_from_slice(b",\"instanceType\":");
    json_opt(&mut full, instance_type);
    full.extend_from_slice(b",\"marketType\":");
    json_str(&mut full, &v.market);
    full.extend_from_slice(b",\"zone\":");
    json_opt(&mut full, v.zone.as_deref());
    full.extend_from_slice(if sidecar {
        b",\"sidecar\":true,\"rules\":["
    } else {
        b",\"sidecar\":false,\"rules\":["
    });
    for (i, r) in applied.iter().enumerate() {
        if i > 0 {
            full.push(b',');
        }
        json_str(&mut full, r);
    }
    full.extend_from_slice(b"]}");
    h.update(&full);
    let hash = h.finalize();
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"{\"config\":");
    json_str(&mut out, &cfg.fingerprint);
    out.extend_from_slice(b",\"instanceType\":");
    json_opt(&mut out, instance_type);
    out.extend_from_slice(b",\"marketType\":");
    json_str(&mut out, &v.market);
    out.extend_from_slice(b",\"rules\":");
    out.extend_from_slice(applied.len().to_string().as_bytes());
    out.extend_from_slice(b",\"hash\":\"");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in &hash[..8] {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
    out.extend_from_slice(b"\"}");
    // Only JSON text and hex digits were written.
    String::from_utf8(out).unwrap_or_default()
}

fn json_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// The annotation key of the record.
pub fn record_key(cfg: &Config) -> String {
    cfg.settings.key(keys::SHAPED)
}

/// Deduplicate, and make each warning one the API server passes on: within the 120
/// characters Kubernetes advises, and without control characters (a group or container
/// name with a tab or a newline), for which it drops the warning unsaid.
pub fn tidy(warnings: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(warnings.len());
    for w in warnings {
        let w = fit_warning(w);
        // Few, as a rule; thousands from a RayCluster of thousands of groups are
        // deduplicated below instead of by a scan for each.
        if out.len() > 32 || !out.contains(&w) {
            out.push(w);
        }
    }
    if out.len() > 32 {
        let mut order: Vec<usize> = (0..out.len()).collect();
        order.sort_by(|&a, &b| out[a].cmp(&out[b]).then(a.cmp(&b)));
        let mut repeat = vec![false; out.len()];
        for pair in order.windows(2) {
            if let [first, then] = *pair
                && out[first] == out[then]
            {
                repeat[then] = true;
            }
        }
        let mut repeats = repeat.into_iter();
        out.retain(|_| !repeats.next().unwrap_or(false));
    }
    out
}

fn fit_warning(w: String) -> String {
    // Control characters are U+0000-001F, U+007F and U+0080-009F (lead byte 0xC2), and
    // 120 characters take at least 120 bytes: most warnings are passed by a byte scan.
    // In blocks, without stopping early inside one, so that the compiler vectorises it.
    let maybe_control = w.as_bytes().chunks(32).any(|block| {
        block.iter().fold(false, |seen, &b| {
            seen | (b < 0x20) | (b == 0x7f) | (b == 0xc2)
        })
    });
    if !maybe_control && w.len() <= 120 {
        return w;
    }
    let w = if maybe_control && w.chars().any(char::is_control) {
        w.chars()
            .fold(String::with_capacity(w.len() + 8), |mut s, c| {
                if c.is_control() {
                    s.extend(c.escape_debug());
                } else {
                    s.push(c);
                }
                s
            })
    } else {
        w
    };
    if w.chars().count() > 120 {
        let cut: String = w.chars().take(119).collect();
        format!("{cut}…")
    } else {
        w
    }
}

/// Why the Ray container is the one it is.
pub fn explain_ray(ray: &RayPod) -> &'static str {
    FoundBy::explain(ray.found_by)
}

//! Patch rules, run on the staged pod in order: the placement profile's, then the instance
//! type's own (`nodeSelector`, `tolerations`), then the admin's from `patches.yaml`, so later
//! rules win. A rule is atomic: if one of its operations fails, none of them applies, and
//! the pod is denied, or with `failurePolicy: Ignore` the rule is skipped with a warning.

use super::Denial;
use crate::classify::KUBERAY_LABELS;
use crate::config::Config;
use crate::config::instance_types::InstanceType;
use crate::config::rules::Rule;
use crate::primitives::pod;
use crate::primitives::rfc6902::{self, ApplyError, Context, Snapshot};
use rayshape_json::Value;

/// A rule whose selector matched, and what became of it.
#[derive(Debug, Clone)]
pub struct Outcome<'c> {
    pub rule: &'c Rule,
    /// Why it was skipped (`failurePolicy: Ignore`), or `None` when it applied.
    pub skipped: Option<String>,
}

/// Every rule in force for a pod of this instance type, in the order they run.
pub fn in_order<'c>(
    cfg: &'c Config,
    instance_type: Option<&InstanceType>,
) -> impl Iterator<Item = &'c Rule> {
    let type_rule = instance_type.and_then(|t| cfg.type_rules.get(&t.name));
    cfg.profile_rules
        .iter()
        .chain(type_rule)
        .chain(&cfg.admin_rules)
}

/// Run the matching rules on `pod`, whose Ray container is named `ray_name`.
pub fn run<'c>(
    pod: &mut Value,
    ray_name: &str,
    instance_type: Option<&InstanceType>,
    cfg: &'c Config,
) -> Result<Vec<Outcome<'c>>, Denial> {
    let mut outcomes = Vec::new();
    for rule in in_order(cfg, instance_type) {
        if !rule
            .selector
            .matches(pod::labels(pod), pod::annotations(pod))
        {
            continue;
        }
        // Looked up per matching rule: an earlier rule may have appended containers.
        let ctx = Context {
            ray_container: pod::containers(pod)
                .iter()
                .position(|c| pod::name(c) == ray_name),
        };
        match apply_rule(pod, rule, ctx) {
            Ok(()) => outcomes.push(Outcome {
                rule,
                skipped: None,
            }),
            Err(e) if rule.ignore_failure => outcomes.push(Outcome {
                rule,
                skipped: Some(e.reason),
            }),
            Err(e) => {
                return Err(Denial {
                    message: format!(
                        "rule {} failed: {e}; fix the rule, or give it failurePolicy: Ignore to skip it when it does not apply",
                        rule.name
                    ),
                    rule: Some(rule.name.clone()),
                });
            }
        }
    }
    Ok(outcomes)
}

/// Apply every operation of a rule, or none.
fn apply_rule(pod: &mut Value, rule: &Rule, ctx: Context) -> Result<(), ApplyError> {
    // Everything an operation can change lies under the first two segments of its paths
    // (`/spec/tolerations`, `/metadata/annotations`), or under the whole path if it is
    // shorter (`/metadata`).
    let roots = rule
        .ops
        .iter()
        .flat_map(|op| op.from().into_iter().chain([op.path()]))
        .map(|p| p.head(2));
    let snapshot = Snapshot::take(pod, roots);
    for op in &rule.ops {
        if let Err(e) = rfc6902::apply(pod, op, ctx) {
            snapshot.restore(pod);
            return Err(e);
        }
    }
    Ok(())
}

/// Rules may do a lot, but not break KubeRay: its labels stay, containers keep their order.
pub fn check_protected(before: &Value, after: &Value) -> Result<(), Denial> {
    for key in KUBERAY_LABELS {
        let get = |v| pod::labels(v).and_then(|m| m.get(key));
        if get(before) != get(after) {
            return Err(Denial::new(format!(
                "patch rules changed the label {key}, which KubeRay relies on; rules must leave it alone"
            )));
        }
    }
    let names = |v: &Value| {
        pod::containers(v)
            .iter()
            .map(|c| pod::name(c).to_string())
            .collect::<Vec<_>>()
    };
    let (b, a) = (names(before), names(after));
    if !a.starts_with(&b) {
        return Err(Denial::new(format!(
            "patch rules reordered, renamed or removed containers ({} became {}); rules may only append containers",
            b.join(", "),
            a.join(", ")
        )));
    }
    Ok(())
}

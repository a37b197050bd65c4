//! `patches.yaml`: patch rules in the Anyscale operator's Patch ConfigMap format: a list of
//! rules, as the Anyscale chart writes the file, or the same list under `patches:`.
//!
//! ```yaml
//! patches:
//! - kind: Pod
//!   selector: "rayshape.io/market-type in (ON_DEMAND)"
//!   patch:
//!   - {op: add, path: /spec/nodeSelector/eks.amazonaws.com~1capacityType, value: ON_DEMAND}
//!   name: on-demand-nodes    # optional, rayshape only: used in messages
//!   failurePolicy: Ignore    # optional, rayshape only: skip the rule with a warning if it fails
//! ```

use super::problems::Report;
use crate::primitives::rfc6902::Op;
use crate::primitives::selector::Selector;
use rayshape_json::Value;
use serde_saphyr::Spanned;

pub const FILE: &str = "patches.yaml";

/// One rule: when the selector matches, apply every operation, or none of them.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Where the rule came from and its name, for messages: `patches.yaml#3 (on-demand)`.
    pub name: String,
    pub selector: Selector,
    pub ops: Vec<Op>,
    /// `failurePolicy: Ignore`: a failing rule is skipped with a warning instead of denying.
    pub ignore_failure: bool,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    patches: Vec<Spanned<Value>>,
}

/// Whether the file is a bare list of rules (`- kind: Pod` or `[...]` first, after comments,
/// blank lines and a `---`), so it is read in the form it is written in and an error speaks
/// of that form. Looked at in the text: parsing the file twice to find out would slow every
/// load (reloads run on the serving thread); this way both forms cost what the wrapped one
/// did (callgrind, `mutate` with 1,000 types and 1,000 rules: 203.8 M instructions each).
fn bare_list(text: &str) -> bool {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('%') && *l != "---");
    first.is_some_and(|l| l == "-" || l.starts_with("- ") || l.starts_with('['))
}

/// Parse and check a rules file. `file` names it in messages (profiles reuse this loader).
pub fn load(text: &str, file: &str, report: &mut Report) -> Option<Vec<Rule>> {
    let raw = if bare_list(text) {
        serde_saphyr::from_str::<Vec<Spanned<Value>>>(text).map(|patches| RawFile { patches })
    } else {
        serde_saphyr::from_str::<Option<RawFile>>(text).map(Option::unwrap_or_default)
    };
    let raw = match raw {
        Ok(r) => r,
        Err(e) => {
            report.yaml(
                file,
                &e,
                "a list of rules (`- kind: Pod` with `selector` and `patch`), bare or under `patches:`",
            );
            return None;
        }
    };
    let before = report.errors.len();
    let mut rules = Vec::new();
    for (i, spanned) in raw.patches.into_iter().enumerate() {
        let line = Some(spanned.referenced.line());
        if let Some(rule) = parse_rule(&spanned.value, file, i, line, report) {
            rules.extend(rule);
        }
    }
    (report.errors.len() == before).then_some(rules)
}

/// `Some(None)`: a valid rule for another kind, skipped.
fn parse_rule(
    v: &Value,
    file: &str,
    i: usize,
    line: Option<u64>,
    r: &mut Report,
) -> Option<Option<Rule>> {
    let here = format!("patches[{i}]");
    let Some(m) = v.as_object() else {
        r.error(
            file,
            line,
            here,
            "must be a mapping with `kind`, `selector` and `patch`",
        );
        return None;
    };
    let before = r.errors.len();
    for k in m.keys() {
        if !matches!(
            k.as_str(),
            "kind" | "selector" | "patch" | "name" | "failurePolicy"
        ) {
            r.error(
                file,
                line,
                format!("{here}.{k}"),
                "unknown field; a rule has kind, selector, patch, name and failurePolicy",
            );
        }
    }
    let name = match m.get("name") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            r.error(file, line, format!("{here}.name"), "must be a string");
            None
        }
    };
    let kind = match m.get("kind") {
        None => "Pod",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            r.error(
                file,
                line,
                format!("{here}.kind"),
                "must be a string such as Pod",
            );
            "Pod"
        }
    };
    let selector = match m.get("selector") {
        None | Some(Value::Null) => Selector::everything(),
        Some(Value::String(s)) => Selector::parse(s).unwrap_or_else(|e| {
            r.error(file, line, format!("{here}.selector"), e.to_string());
            Selector::everything()
        }),
        Some(_) => {
            r.error(file, line, format!("{here}.selector"), "must be a string in label-selector syntax, like \"rayshape.io/market-type in (SPOT)\"");
            Selector::everything()
        }
    };
    let ignore_failure = match m.get("failurePolicy").map(|v| v.as_str()) {
        None | Some(Some("Fail")) => false,
        Some(Some("Ignore")) => true,
        Some(_) => {
            r.error(file, line, format!("{here}.failurePolicy"), "accepted: Fail (deny the pod if the rule fails; the default) or Ignore (skip the rule with a warning)");
            false
        }
    };
    let mut ops = Vec::new();
    match m.get("patch").and_then(Value::as_array) {
        Some(list) => {
            for (j, op) in list.iter().enumerate() {
                match Op::from_value(op) {
                    Ok(op) => ops.push(op),
                    Err(e) => r.error(file, line, format!("{here}.patch[{j}]"), e.to_string()),
                }
            }
        }
        None => r.error(
            file,
            line,
            format!("{here}.patch"),
            "is missing or not a list of RFC 6902 operations",
        ),
    }
    if r.errors.len() != before {
        return None;
    }
    if kind != "Pod" {
        r.warn(
            file,
            line,
            here,
            format!("kind {kind:?} is skipped: rayshape applies rules to pods"),
        );
        return Some(None);
    }
    let label = match name {
        Some(n) => format!("{file}#{i} ({n})"),
        None => format!("{file}#{i}"),
    };
    Some(Some(Rule {
        name: label,
        selector,
        ops,
        ignore_failure,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anyscale_rules_load() {
        let text = r#"
patches:
- kind: Pod
  selector: "anyscale.com/market-type in (ON_DEMAND)"
  patch:
  - op: add
    path: /spec/nodeSelector/eks.amazonaws.com~1capacityType
    value: ON_DEMAND
- kind: Pod
  selector: anyscale.com/zone
  patch:
    - op: add
      path: /spec/nodeSelector/topology.kubernetes.io~1zone
    - op: copy
      from: /metadata/annotations/anyscale.com~1zone
      path: /spec/nodeSelector/topology.kubernetes.io~1zone
- kind: Service
  patch: []
"#;
        let mut r = Report::default();
        let rules = load(text, FILE, &mut r).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(r.warnings.len(), 1, "the Service rule is noted");
        assert_eq!(rules[1].ops.len(), 2);
        // The Anyscale chart writes the list itself, with comments first: the same rules.
        let bare = text.replace("\npatches:\n", "\n# Market Type Support\n");
        let mut r2 = Report::default();
        assert_eq!(
            load(&bare, FILE, &mut r2).unwrap(),
            rules,
            "{:?}",
            r2.errors
        );
        assert_eq!(r2.warnings.len(), 1);
        // Places in a bare list read as in the wrapped one.
        let mut r3 = Report::default();
        assert!(load("# x\n- kind: Pod\n  patch:\n  - {op: add}\n", FILE, &mut r3).is_none());
        let msg = r3.errors[0].to_string();
        assert!(
            msg.starts_with("patches.yaml:2: patches[0].patch[0]"),
            "{msg}"
        );
    }

    #[test]
    fn the_form_is_seen_in_the_text() {
        for bare in [
            "- kind: Pod",
            "# c\n\n---\n- kind: Pod",
            "[]",
            "  - a",
            "-\n  kind: Pod",
        ] {
            assert!(bare_list(bare), "{bare:?}");
        }
        for wrapped in [
            "patches:\n- kind: Pod",
            "# - not this\npatches: []",
            "",
            "---\n",
            "-x: 1",
        ] {
            assert!(!bare_list(wrapped), "{wrapped:?}");
        }
    }

    #[test]
    fn empty_and_scalar_files() {
        for empty in ["", "# nothing yet\n", "patches: []\n", "[]\n"] {
            let mut r = Report::default();
            assert_eq!(
                load(empty, FILE, &mut r),
                Some(vec![]),
                "{empty:?}: {:?}",
                r.errors
            );
        }
        let mut r = Report::default();
        assert!(load("just words\n", FILE, &mut r).is_none());
        assert_eq!(r.errors.len(), 1);
    }

    #[test]
    fn every_problem_with_place() {
        let text = "patches:\n- selector: \"a in b\"\n  patch:\n  - {op: add}\n  - {op: nope, path: /x}\n- failurePolicy: Maybe\n  patch: {}\n";
        let mut r = Report::default();
        assert!(load(text, FILE, &mut r).is_none());
        let msgs: Vec<String> = r.errors.iter().map(|p| p.to_string()).collect();
        assert_eq!(msgs.len(), 5, "{msgs:#?}");
        assert!(
            msgs[0].starts_with("patches.yaml:2: patches[0].selector"),
            "{msgs:#?}"
        );
        assert!(
            msgs[1].contains("patches[0].patch[0]") && msgs[1].contains("`path` is missing"),
            "{msgs:#?}"
        );
        assert!(
            msgs[2].contains("patches[0].patch[1]") && msgs[2].contains("accepted"),
            "{msgs:#?}"
        );
        assert!(
            msgs[3].contains(":6: patches[1].failurePolicy"),
            "{msgs:#?}"
        );
    }
}

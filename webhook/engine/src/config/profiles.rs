//! Placement profiles: patch rules shipped in the binary, one set per kind of cluster.
//!
//! A profile is the `generic` rules followed by the cloud's own. The sources under
//! `webhook/engine/profiles/` use two template forms: `{{prefix}}` (the label prefix) and
//! `{{accelerators NODE-LABEL NAME=VALUE ...}}`, which expands to one node-selector rule per
//! accelerator. `render` gives the result as a `patches.yaml` an admin could copy and edit.

/// Every profile shipped in the binary: its name and its cloud's own rules, which come
/// after the `generic` ones.
const PROFILES: [(&str, &str); 5] = [
    ("generic", ""),
    ("eks", include_str!("../../profiles/eks.yaml")),
    ("karpenter", include_str!("../../profiles/karpenter.yaml")),
    ("gke", include_str!("../../profiles/gke.yaml")),
    ("aks", include_str!("../../profiles/aks.yaml")),
];

const GENERIC: &str = include_str!("../../profiles/generic.yaml");

/// The names of the profiles, in a stable order.
pub fn names() -> impl Iterator<Item = &'static str> {
    PROFILES.iter().map(|(name, _)| *name)
}

/// The names as a list for messages: `generic, eks, karpenter, gke, aks`.
pub fn names_text() -> String {
    names().collect::<Vec<_>>().join(", ")
}

/// The profile's rules as `patches.yaml` text, or `None` for an unknown profile.
pub fn render(name: &str, prefix: &str) -> Option<String> {
    let cloud = PROFILES.iter().find(|(n, _)| *n == name)?.1;
    let mut out =
        format!("# rayshape placement profile {name:?} (label prefix {prefix})\npatches:\n");
    for line in GENERIC.lines().chain(cloud.lines()) {
        let line = line.replace("{{prefix}}", prefix);
        match line
            .trim()
            .strip_prefix("{{accelerators ")
            .and_then(|l| l.strip_suffix("}}"))
        {
            Some(spec) => expand_accelerators(spec, prefix, &mut out),
            None => {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    Some(out)
}

fn expand_accelerators(spec: &str, prefix: &str, out: &mut String) {
    let mut words = spec.split_whitespace();
    let Some(label) = words.next() else { return };
    let escaped = label.replace('~', "~0").replace('/', "~1");
    for pair in words {
        let Some((acc, value)) = pair.split_once('=') else {
            continue;
        };
        out.push_str(&format!(
            "- name: accelerator-{acc}\n  selector: \"{prefix}/accelerator-type in ({acc})\"\n  patch:\n  - {{op: add, path: /spec/nodeSelector/{escaped}, value: \"{value}\"}}\n"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{problems::Report, rules};

    #[test]
    fn every_profile_renders_and_loads() {
        for name in names() {
            for prefix in ["rayshape.io", "anyscale.com"] {
                let text = render(name, prefix).unwrap();
                assert!(!text.contains("{{"), "{name}: template left:\n{text}");
                let mut r = Report::default();
                let loaded = rules::load(&text, &format!("profile {name}"), &mut r);
                assert!(r.errors.is_empty(), "{name}: {:#?}", r.errors);
                assert!(loaded.unwrap().len() >= 5);
            }
        }
        assert!(render("azure", "x").is_none());
    }

    #[test]
    fn accelerators_expand() {
        let text = render("eks", "rayshape.io").unwrap();
        assert!(
            text.contains("selector: \"rayshape.io/accelerator-type in (T4)\""),
            "{text}"
        );
        assert!(
            text.contains("path: /spec/nodeSelector/nvidia.com~1gpu.product, value: \"Tesla-T4\""),
            "{text}"
        );
    }
}

//! The webhook's configuration: settings, instance types and patch rules, each from one file
//! of a config directory (the files a mounted ConfigMap produces), with built-in defaults.

pub mod instance_types;
pub mod problems;
pub mod profiles;
pub mod rules;
pub mod settings;
pub mod sidecar;

use crate::primitives::rfc6902::{Op, Path};
use crate::primitives::selector::Selector;
use instance_types::InstanceType;
use problems::{ConfigError, Problem, Report};
use rules::Rule;
use settings::Settings;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The raw texts a configuration is made of, one per file of a config directory (the files
/// a mounted ConfigMap produces); `None` means the file is absent. Reading them is the
/// caller's business: the engine does no I/O.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    pub version: Option<String>,
    pub instance_types: Option<String>,
    pub patches: Option<String>,
    pub settings: Option<String>,
    /// The CA bundle (PEM) sidecars check the bootstrap endpoint against; it comes from
    /// the serving certificate's Secret, not from the config directory.
    pub bootstrap_ca: Option<String>,
}

/// File names inside a config directory.
pub const VERSION_FILE: &str = "version";

/// Every file a config directory may hold, in the order [`Sources`] lists them.
pub const FILES: [&str; 4] = [
    VERSION_FILE,
    instance_types::FILE,
    rules::FILE,
    settings::FILE,
];

/// A loaded, valid configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub settings: Settings,
    pub instance_types: BTreeMap<String, InstanceType>,
    /// The placement profile's rules (applied first).
    pub profile_rules: Vec<Rule>,
    /// Per-instance-type rules from `nodeSelector` and `tolerations` (applied second).
    pub type_rules: BTreeMap<String, Rule>,
    /// The admin's rules from `patches.yaml` (applied last, so they win).
    pub admin_rules: Vec<Rule>,
    /// Short hash of the sources, recorded on every shaped pod.
    pub fingerprint: String,
    /// The sidecar as injected under these settings.
    pub sidecar: sidecar::Template,
    /// Things worth knowing that did not stop the configuration from loading.
    pub warnings: Vec<Problem>,
}

impl Config {
    /// The built-in configuration: default instance types, `generic` profile, no rules.
    pub fn builtin() -> Config {
        Config::from_sources(&Sources::default()).expect("the built-in configuration is valid")
    }

    /// Build a configuration from file texts, reporting every problem at once.
    pub fn from_sources(src: &Sources) -> Result<Config, ConfigError> {
        let mut r = Report::default();
        if let Some(v) = &src.version
            && v.trim() != "v1"
        {
            r.error(
                VERSION_FILE,
                None,
                "",
                format!("{:?} is not a supported version; accepted: v1", v.trim()),
            );
        }
        let settings = match &src.settings {
            Some(text) => Settings::load(text, &mut r),
            None => Some(Settings::default()),
        };
        // Instance types and rules are still checked with default settings when webhook.yaml
        // is broken, so one run reports the problems of every file.
        let s = settings.clone().unwrap_or_default();
        let types = instance_types::load(
            src.instance_types
                .as_deref()
                .unwrap_or(instance_types::DEFAULTS),
            &s,
            &mut r,
        );
        let admin_rules = match &src.patches {
            Some(text) => rules::load(text, rules::FILE, &mut r),
            None => Some(Vec::new()),
        };
        let profile_rules = profiles::render(&s.profile, &s.label_prefix)
            .and_then(|text| rules::load(&text, &format!("profile {}", s.profile), &mut r));
        if s.sidecar.enabled && s.sidecar.log_sink.url.is_empty() {
            r.warn(
                settings::FILE,
                None,
                "sidecar.logSink.url",
                "is empty while the sidecar is enabled: sidecars will keep Ray's logs on disk and ship nothing; set it (s3://bucket/prefix, gs://..., az://...) or set sidecar.enabled: false",
            );
        }
        let (Some(settings), Some(instance_types), Some(admin_rules), Some(profile_rules)) =
            (settings, types, admin_rules, profile_rules)
        else {
            // Each part that did not load reported why.
            return Err(ConfigError { problems: r.errors });
        };
        if !r.errors.is_empty() {
            return Err(ConfigError { problems: r.errors });
        }
        let type_rules = instance_types
            .values()
            .filter_map(|t| type_rule(t).map(|rule| (t.name.clone(), rule)))
            .collect();
        Ok(Config {
            fingerprint: fingerprint(src),
            sidecar: sidecar::Template::new(&settings, src.bootstrap_ca.as_deref()),
            settings,
            instance_types,
            profile_rules,
            type_rules,
            admin_rules,
            warnings: r.warnings,
        })
    }
}

impl Sources {
    /// The sources from a lookup of each file by name (`None`: the file is absent), such as
    /// a read of a config directory.
    pub fn from_files(mut file: impl FnMut(&str) -> Option<String>) -> Sources {
        Sources {
            version: file(VERSION_FILE),
            instance_types: file(instance_types::FILE),
            patches: file(rules::FILE),
            settings: file(settings::FILE),
            bootstrap_ca: None,
        }
    }
}

impl Config {
    /// Names of the instance types, for messages.
    pub fn type_names(&self) -> String {
        self.instance_types
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Number of rules in force (profile, per-type and admin).
    pub fn rule_count(&self) -> usize {
        self.profile_rules.len() + self.type_rules.len() + self.admin_rules.len()
    }
}

/// The rule an instance type's `nodeSelector` and `tolerations` stand for.
fn type_rule(t: &InstanceType) -> Option<Rule> {
    if t.node_selector.is_empty() && t.tolerations.is_empty() {
        return None;
    }
    let escape = |k: &str| k.replace('~', "~0").replace('/', "~1");
    let mut ops = Vec::new();
    for (k, v) in &t.node_selector {
        let path = Path::parse(&format!("/spec/nodeSelector/{}", escape(k)))
            .expect("escaped key is a valid path");
        ops.push(Op::Add {
            path,
            value: Some(v.clone()),
        });
    }
    for tol in &t.tolerations {
        let path = Path::parse("/spec/tolerations/-").expect("valid path");
        ops.push(Op::Add {
            path,
            value: Some(tol.clone()),
        });
    }
    Some(Rule {
        name: format!("instance type {}", t.name),
        selector: Selector::everything(),
        ops,
        ignore_failure: false,
    })
}

fn fingerprint(src: &Sources) -> String {
    let mut h = Sha256::new();
    // The CA counts only when given, so that fingerprints without one stay as they were.
    let ca = src.bootstrap_ca.is_some().then_some(&src.bootstrap_ca);
    for part in [
        &src.version,
        &src.instance_types,
        &src.patches,
        &src.settings,
    ]
    .into_iter()
    .chain(ca)
    {
        match part {
            Some(t) => {
                h.update(b"1");
                h.update((t.len() as u64).to_le_bytes());
                h.update(t.as_bytes());
            }
            None => h.update(b"0"),
        }
    }
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    let digest = h.finalize();
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_is_valid() {
        let c = Config::builtin();
        assert_eq!(
            c.type_names(),
            "2CPU-8GB, 4CPU-16GB, 8CPU-32GB, 8CPU-32GB-1xT4"
        );
        assert_eq!(c.settings.profile, "generic");
        assert!(c.admin_rules.is_empty());
        assert_eq!(c.fingerprint.len(), 12);
    }

    #[test]
    fn problems_of_every_file_at_once() {
        let src = Sources {
            version: Some("v2".into()),
            instance_types: Some("x:\n  resources: {CPU: 0}\n".into()),
            patches: Some("patches:\n- patch: [{op: add}]\n".into()),
            settings: Some("profile: nope\n".into()),
            bootstrap_ca: None,
        };
        let e = Config::from_sources(&src).unwrap_err();
        let files: std::collections::BTreeSet<_> =
            e.problems.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(
            files.into_iter().collect::<Vec<_>>(),
            [
                "instance_types.yaml",
                "patches.yaml",
                "version",
                "webhook.yaml"
            ],
            "{e}"
        );
    }

    #[test]
    fn type_rules_from_node_selector() {
        let src = Sources {
            instance_types: Some(
                "tpu:\n  resources: {CPU: 8, memory: 32Gi, google.com/tpu: 4}\n  nodeSelector: {cloud.google.com/gke-tpu-topology: 2x2x1}\n  tolerations: [{key: google.com/tpu, operator: Exists}]\n".into(),
            ),
            ..Default::default()
        };
        let c = Config::from_sources(&src).unwrap();
        assert_eq!(c.type_rules["tpu"].ops.len(), 2);
    }
}

//! Reading a configuration directory, as a mounted ConfigMap lays it out.
//!
//! The kubelet writes a ConfigMap's files into a timestamped directory, points the symlink
//! `..data` at it, and makes each file a symlink through `..data`; an update writes a new
//! directory and swaps `..data` atomically. Reading file by file through the top-level
//! links could mix two versions when a swap falls between two reads, so `..data` is
//! resolved once and every file is read from the directory it named. If that directory
//! vanishes midway (the kubelet removes the old one after a swap), the read starts over.

use rayshape_engine::config::Sources;
use rayshape_engine::config::problems::{ConfigError, Problem};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// The kubelet's link to the current version of a mounted ConfigMap or Secret.
const DATA_LINK: &str = "..data";

/// How often a read is started over because a swap removed the version being read.
const ATTEMPTS: usize = 5;

/// Read the files of a config directory, all from one version; unreadable ones are errors,
/// absent ones take their defaults.
pub fn read(dir: &Path) -> Result<Sources, ConfigError> {
    read_with(dir, || {})
}

/// [`read`], calling `between` between two file reads (tests swap versions there).
fn read_with(dir: &Path, mut between: impl FnMut()) -> Result<Sources, ConfigError> {
    if !dir.is_dir() {
        return Err(problem(
            dir,
            "is not a directory; --config takes the directory holding instance_types.yaml, patches.yaml and webhook.yaml",
        ));
    }
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let version = resolve(dir);
        match read_version(dir, version.as_deref(), &mut between) {
            Attempt::Done(result) => return result,
            Attempt::Swapped(e) => last = Some(e),
        }
    }
    Err(problem(
        dir,
        &format!(
            "kept changing while being read ({ATTEMPTS} attempts; last: {}); it is read again at the next reload",
            last.map_or_else(String::new, |e| e.to_string())
        ),
    ))
}

/// The directory `..data` points to, when the directory is a kubelet mount.
pub(crate) fn resolve(dir: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(dir.join(DATA_LINK)).ok()?;
    Some(dir.join(target))
}

enum Attempt {
    Done(Result<Sources, ConfigError>),
    /// The version being read disappeared: `..data` was swapped during the read.
    Swapped(std::io::Error),
}

fn read_version(dir: &Path, version: Option<&Path>, between: &mut impl FnMut()) -> Attempt {
    let base = version.unwrap_or(dir);
    let mut problems = Vec::new();
    let mut swapped = None;
    let mut first = true;
    let sources = Sources::from_files(|name| {
        if !std::mem::take(&mut first) {
            between();
        }
        match std::fs::read_to_string(base.join(name)) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // Absent from this version, or the version itself is gone.
                if version.is_some_and(|v| !v.is_dir()) {
                    swapped = Some(e);
                }
                None
            }
            Err(e) => {
                problems.push(Problem {
                    file: dir.join(name).display().to_string(),
                    line: None,
                    place: String::new(),
                    message: format!("cannot be read: {e}"),
                });
                None
            }
        }
    });
    if let Some(e) = swapped {
        return Attempt::Swapped(e);
    }
    if !problems.is_empty() {
        return Attempt::Done(Err(ConfigError { problems }));
    }
    Attempt::Done(Ok(sources))
}

/// Files in a config directory that rayshape does not read, with what to do: a misnamed
/// file (`instance_types.yml`) would leave its defaults in force without a word. Names
/// starting with `.` (the kubelet's own) are not listed.
pub fn unknown_files(dir: &Path) -> Vec<String> {
    let base = resolve(dir).unwrap_or_else(|| dir.to_path_buf());
    let Ok(entries) = std::fs::read_dir(&base) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && !rayshape_engine::config::FILES.contains(&n.as_str()))
        .map(|n| {
            format!(
                "{}: not a file rayshape reads (it reads {}), ignored; a misnamed file leaves that file's defaults in force",
                dir.join(n).display(),
                rayshape_engine::config::FILES.join(", ")
            )
        })
        .collect();
    out.sort();
    out
}

/// A PEM bundle of CA certificates, checked to hold at least one certificate.
pub fn read_ca(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| problem(path, &format!("cannot be read: {e}")))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(problem(
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----); --bootstrap-ca takes the CA bundle the webhook's serving certificate chains to",
        ));
    }
    Ok(text)
}

fn problem(dir: &Path, message: &str) -> ConfigError {
    ConfigError {
        problems: vec![Problem {
            file: dir.display().to_string(),
            line: None,
            place: String::new(),
            message: message.to_string(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn files_it_does_not_read_are_named() {
        let d = scratch("unknown");
        kubelet_version(
            &d,
            "..2026_11_30",
            &[
                ("instance_types.yml", "x"),
                ("webhook.yaml", "profile: generic\n"),
            ],
        );
        let u = unknown_files(&d);
        assert_eq!(u.len(), 1, "{u:?}");
        assert!(
            u[0].contains("instance_types.yml") && u[0].contains("instance_types.yaml"),
            "{u:?}"
        );
        let plain = scratch("known");
        std::fs::write(plain.join("patches.yaml"), "patches: []\n").unwrap();
        assert_eq!(unknown_files(&plain), Vec::<String>::new());
    }

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("rayshape-config-dir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Lay out `files` as the kubelet does: a version directory, `..data`, and links.
    fn kubelet_version(dir: &Path, version: &str, files: &[(&str, &str)]) {
        let v = dir.join(version);
        std::fs::create_dir_all(&v).unwrap();
        for (name, text) in files {
            std::fs::write(v.join(name), text).unwrap();
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(Path::new(DATA_LINK).join(name), &link).unwrap();
            }
        }
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(version, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(DATA_LINK)).unwrap();
    }

    #[test]
    fn a_swap_between_two_reads_never_mixes_versions() {
        let dir = scratch("swap");
        let v1 = [
            (
                "instance_types.yaml",
                "a:\n  resources: {CPU: 1, memory: 1Gi}\n",
            ),
            ("webhook.yaml", "profile: eks\n"),
        ];
        let v2 = [
            (
                "instance_types.yaml",
                "b:\n  resources: {CPU: 2, memory: 2Gi}\n",
            ),
            ("webhook.yaml", "profile: gke\n"),
        ];
        kubelet_version(&dir, "..v1", &v1);
        let mut swapped = false;
        let src = read_with(&dir, || {
            if !swapped {
                swapped = true;
                kubelet_version(&dir, "..v2", &v2);
            }
        })
        .unwrap();
        assert!(swapped);
        assert_eq!(src.instance_types.as_deref(), Some(v1[0].1));
        assert_eq!(src.settings.as_deref(), Some(v1[1].1), "one version only");
        // The next read sees the new version whole.
        let src = read(&dir).unwrap();
        assert_eq!(src.instance_types.as_deref(), Some(v2[0].1));
        assert_eq!(src.settings.as_deref(), Some(v2[1].1));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_version_removed_midway_is_read_again() {
        let dir = scratch("removed");
        kubelet_version(
            &dir,
            "..v1",
            &[
                ("webhook.yaml", "profile: eks\n"),
                ("patches.yaml", "patches: []\n"),
            ],
        );
        let mut swapped = false;
        let src = read_with(&dir, || {
            if !swapped {
                swapped = true;
                kubelet_version(
                    &dir,
                    "..v2",
                    &[
                        ("webhook.yaml", "profile: aks\n"),
                        ("patches.yaml", "patches: []\n"),
                    ],
                );
                std::fs::remove_dir_all(dir.join("..v1")).unwrap();
            }
        })
        .unwrap();
        assert_eq!(src.settings.as_deref(), Some("profile: aks\n"));
        assert_eq!(src.patches.as_deref(), Some("patches: []\n"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn plain_directories_and_errors() {
        let dir = scratch("plain");
        std::fs::write(dir.join("webhook.yaml"), "profile: gke\n").unwrap();
        let src = read(&dir).unwrap();
        assert_eq!(src.settings.as_deref(), Some("profile: gke\n"));
        assert_eq!(src.instance_types, None);
        let e = read(&dir.join("nope")).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! What has been shipped, kept on the shared volume so it survives a sidecar crash.
//!
//! Written atomically (temp file, rename). The protocol that makes shipping exactly-once:
//! 1. record the next segment's plan (which bytes of which files, under which sequence
//!    number) as `pending`, and fsync it;
//! 2. upload the segment to its key, `<epoch>-<sequence>`: create-only where the store
//!    supports it;
//! 3. advance the offsets, clear `pending`, and fsync.
//!
//! A sequence number is used by one plan only (it advances when the plan is recorded, not
//! when it commits), and every checkpoint has its own random `epoch`, part of every key and
//! stream name it makes: so a key never names two different byte strings, even when a
//! checkpoint is lost, replaced or set aside. After a crash with a plan pending, the same
//! plan is uploaded again to the same key; a store that already has it answers
//! "already exists" (or, without create-only puts, is given the same bytes again).
//!
//! Size changes and newly found files are saved too, their data synced before the rename
//! (else a power cut could leave the rename without the data: an empty checkpoint, set
//! aside, and every file shipped again) but not the directory: losing such a save to a
//! power cut keeps the checkpoint before it, which only makes the count of lost bytes lower
//! than the truth.

use crate::idmap::IdMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The format written by this version.
pub const VERSION: u32 = 2;
/// How many first bytes of a file identify it across restarts.
pub const HEAD: usize = 64;
/// The largest chunk a plan may hold (the largest `flush.maxBytes`).
const MAX_CHUNK: u64 = crate::config::MAX_FLUSH_BYTES;
/// Ids and sequence numbers stay far from overflow.
const MAX_COUNTER: u64 = 1 << 62;

/// One log file, followed by identity (device and inode), not by name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileState {
    pub dev: u64,
    pub ino: u64,
    /// Shared by the files of a session (see [`Checkpoint::parse`]): one string, not ten
    /// thousand.
    pub session: std::sync::Arc<str>,
    /// Path under the session's `logs/` when first seen.
    pub name: Box<str>,
    /// How many first bytes `head_hash` covers (up to [`HEAD`]).
    pub head_len: u32,
    /// [`head_hash`] of the file's first bytes: tells a reused inode from the same file.
    pub head_hash: u64,
    /// Birth time (statx), in nanoseconds since the epoch, where the filesystem keeps it:
    /// tells a reused inode from the same file even when the file was empty when seen.
    #[serde(default)]
    pub born: Option<u64>,
    /// Bytes shipped: the store holds `[0, shipped)`.
    pub shipped: u64,
    /// Last size seen.
    pub size: u64,
    /// An entry for this file is in the store (matters for empty files).
    pub announced: bool,
}

/// One chunk of a planned segment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub id: u64,
    pub start: u64,
    pub end: u64,
}

/// A segment recorded before its upload.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub session: String,
    pub sequence: u64,
    pub chunks: Vec<Chunk>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub version: u32,
    /// Random, 16 hex digits, new for every checkpoint: part of every key and stream name
    /// this checkpoint makes, so that no key is ever reused for other bytes.
    pub epoch: String,
    /// The pod whose logs these are: another pod's checkpoint is never adopted.
    pub pod_uid: String,
    /// The sink this checkpoint ships to ([`crate::sink::identity`]); `None` until one is
    /// known. A checkpoint of another sink is never adopted.
    pub sink: Option<String>,
    pub next_id: u64,
    /// Next segment number, per session.
    pub sequences: BTreeMap<String, u64>,
    /// Followed files, by id (stable within the checkpoint; names the file's stream in the
    /// store, `<name>~<epoch>.<id>`).
    pub files: IdMap<FileState>,
    pub pending: Option<Plan>,
    /// Bytes removed (by rotation or truncation) before they could be read, all time.
    pub lost_bytes: u64,
}

/// Why stored checkpoint bytes are not a checkpoint this version can adopt.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("written in format version {0}, this sidecar reads version {VERSION}")]
    Version(u64),
    #[error("{0}")]
    Corrupt(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read the checkpoint {path}: {source}; check the volume and its permissions")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the checkpoint {path} cannot be used: {reason}")]
    Invalid { path: String, reason: Invalid },
    #[error(
        "cannot write the checkpoint {path}: {source}; check that the volume is writable and has room"
    )]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// FNV-1a, 64 bits: the fingerprint of a file's first bytes. Stable across versions and
/// machines (it is stored in checkpoints).
pub fn head_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A session directory name that can be part of an object key.
pub fn valid_session(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && !s.starts_with('.') && !s.contains(['/', '\0', '\\'])
}

/// A relative path of normal components: no root, no `.` or `..`, no empty component.
pub fn valid_relative(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 4096
        && !name.contains('\0')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// An epoch as written: 16 lowercase hex digits.
pub fn valid_epoch(e: &str) -> bool {
    e.len() == 16 && e.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Checkpoint {
    /// A new, empty checkpoint for this pod and sink, with a random epoch.
    pub fn new(
        pod_uid: &str,
        sink: Option<String>,
    ) -> Result<Checkpoint, crate::random::RandomError> {
        Ok(Checkpoint {
            version: VERSION,
            epoch: format!("{:016x}", crate::random::u64()?),
            pod_uid: pod_uid.to_string(),
            sink,
            next_id: 0,
            sequences: BTreeMap::new(),
            files: IdMap::new(),
            pending: None,
            lost_bytes: 0,
        })
    }

    /// Parse and check stored bytes. Whatever the bytes, this returns an error rather than
    /// panicking, and a checkpoint it returns keeps the invariants the shipper relies on.
    pub fn parse(bytes: &[u8]) -> Result<Checkpoint, Invalid> {
        #[derive(Deserialize)]
        struct Version {
            version: u64,
        }
        let v: Version = serde_json::from_slice(bytes)
            .map_err(|e| Invalid::Corrupt(format!("not a checkpoint: {e}")))?;
        if v.version != u64::from(VERSION) {
            return Err(Invalid::Version(v.version));
        }
        let mut ck: Checkpoint =
            serde_json::from_slice(bytes).map_err(|e| Invalid::Corrupt(e.to_string()))?;
        ck.check().map_err(Invalid::Corrupt)?;
        let mut sessions: HashSet<std::sync::Arc<str>> = HashSet::new();
        for f in ck.files.values_mut() {
            match sessions.get(&f.session) {
                Some(s) => f.session = s.clone(),
                None => {
                    sessions.insert(f.session.clone());
                }
            }
        }
        Ok(ck)
    }

    /// The invariants: names that can be keys and paths, ids below `next_id`, one entry per
    /// (device, inode), a pending plan that names known files of its session.
    fn check(&self) -> Result<(), String> {
        if !valid_epoch(&self.epoch) {
            return Err(format!("epoch {:?} is not 16 hex digits", self.epoch));
        }
        if self.pod_uid.is_empty() {
            return Err("no pod_uid".into());
        }
        if self.next_id > MAX_COUNTER {
            return Err(format!("next_id {} is out of range", self.next_id));
        }
        for (s, n) in &self.sequences {
            if !valid_session(s) || *n > MAX_COUNTER {
                return Err(format!("sequence {n} of session {s:?} is out of range"));
            }
        }
        let mut inodes = HashSet::new();
        for (id, f) in &self.files {
            if *id >= self.next_id {
                return Err(format!(
                    "file id {id} is not below next_id {}",
                    self.next_id
                ));
            }
            if !valid_session(&f.session) || !valid_relative(&f.name) {
                return Err(format!(
                    "file {id} has an unusable session {:?} or name {:?}",
                    f.session, f.name
                ));
            }
            if f.head_len as usize > HEAD {
                return Err(format!("file {id}: head_len {} is over {HEAD}", f.head_len));
            }
            if !inodes.insert((f.dev, f.ino)) {
                return Err(format!(
                    "two files have device {} and inode {}",
                    f.dev, f.ino
                ));
            }
        }
        if let Some(p) = &self.pending {
            if !valid_session(&p.session) || p.chunks.is_empty() {
                return Err(format!(
                    "the pending plan of session {:?} is empty or unnamed",
                    p.session
                ));
            }
            if self
                .sequences
                .get(&p.session)
                .is_none_or(|n| *n <= p.sequence)
            {
                return Err(format!(
                    "the pending plan's sequence {} was not reserved",
                    p.sequence
                ));
            }
            let mut ids = HashSet::new();
            for c in &p.chunks {
                let Some(f) = self.files.get(&c.id) else {
                    return Err(format!("the pending plan names unknown file {}", c.id));
                };
                if *f.session != *p.session
                    || !ids.insert(c.id)
                    || c.start > c.end
                    || c.end - c.start > MAX_CHUNK
                {
                    return Err(format!(
                        "the pending plan's chunk {}..{} of file {} is invalid",
                        c.start, c.end, c.id
                    ));
                }
            }
        }
        Ok(())
    }

    /// The saved checkpoint, or `None` if there is none.
    pub fn load(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                Checkpoint::parse(&bytes)
                    .map(Some)
                    .map_err(|reason| CheckpointError::Invalid {
                        path: path.display().to_string(),
                        reason,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CheckpointError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Write atomically: a crash, or a power cut, leaves the old checkpoint or the new one,
    /// never a mix or an empty file (the data is synced before the rename: file systems do
    /// not all order a rename after the data written before it). `durable` also syncs the
    /// directory, so that a power cut keeps the new one (for plans and commits; not needed
    /// for sizes).
    pub fn save(&self, path: &Path, durable: bool) -> Result<(), CheckpointError> {
        let err = |source| CheckpointError::Write {
            path: path.display().to_string(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = path.with_extension("json.tmp");
        let f = std::fs::File::create(&tmp).map_err(err)?;
        // Straight to the file: a checkpoint of 10,000 files is megabytes, not worth a copy.
        let mut w = std::io::BufWriter::with_capacity(64 << 10, f);
        serde_json::to_writer(&mut w, self).map_err(|e| err(e.into()))?;
        w.flush().map_err(err)?;
        let f = w.into_inner().map_err(|e| err(e.into_error()))?;
        if durable {
            f.sync_all().map_err(err)?;
        } else {
            f.sync_data().map_err(err)?;
        }
        drop(f);
        std::fs::rename(&tmp, path).map_err(err)?;
        if durable {
            // The rename is only durable once the directory is.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        Ok(())
    }

    /// Move an unusable checkpoint out of the way (never delete it: it is evidence), as
    /// `<name>.<reason>-<unix seconds>`; the path it now has.
    pub fn set_aside(path: &Path, reason: &str) -> Result<PathBuf, CheckpointError> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = path
            .file_name()
            .map_or_else(|| "checkpoint".into(), |n| n.to_string_lossy().into_owned());
        let mut target = path.with_file_name(format!("{name}.{reason}-{secs}"));
        let mut n = 1;
        while target.exists() {
            target = path.with_file_name(format!("{name}.{reason}-{secs}-{n}"));
            n += 1;
        }
        std::fs::rename(path, &target).map_err(|source| CheckpointError::Write {
            path: path.display().to_string(),
            source,
        })?;
        Ok(target)
    }

    /// The next file id.
    pub fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut c = Checkpoint::new("uid-1", Some("s3://b/p".into())).unwrap();
        let id = c.take_id();
        c.files.insert(
            id,
            FileState {
                dev: 1,
                ino: 2,
                session: "session_1".into(),
                name: "events/raylet.out".into(),
                head_len: 5,
                head_hash: head_hash(b"hello"),
                born: Some(7),
                shipped: 0,
                size: 10,
                announced: false,
            },
        );
        c.sequences.insert("session_1".into(), 3);
        c.pending = Some(Plan {
            session: "session_1".into(),
            sequence: 2,
            chunks: vec![Chunk {
                id,
                start: 0,
                end: 10,
            }],
        });
        c
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("rs-ckpt-{}", std::process::id()));
        let path = dir.join("sub").join("checkpoint.json");
        assert!(Checkpoint::load(&path).unwrap().is_none());
        let c = sample();
        assert!(valid_epoch(&c.epoch), "{}", c.epoch);
        c.save(&path, true).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), Some(c.clone()));
        c.save(&path, false).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), Some(c));
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::write(&path, b"{not json").unwrap();
        let e = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("cannot be used") && e.contains("not a checkpoint"),
            "{e}"
        );
        let aside = Checkpoint::set_aside(&path, "corrupt").unwrap();
        assert!(!path.exists() && aside.exists());
        assert!(
            aside
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("checkpoint.json.corrupt-")
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn epochs_differ() {
        let a = Checkpoint::new("u", None).unwrap();
        let b = Checkpoint::new("u", None).unwrap();
        assert_ne!(a.epoch, b.epoch);
    }

    #[test]
    fn invariants_are_checked() {
        let ok = serde_json::to_vec(&sample()).unwrap();
        assert!(Checkpoint::parse(&ok).is_ok());
        let v1 =
            br#"{"version":1,"next_id":0,"sequences":{},"files":[],"pending":null,"lost_bytes":0}"#;
        assert_eq!(Checkpoint::parse(v1).unwrap_err(), Invalid::Version(1));
        type Spoil = fn(&mut Checkpoint);
        let bad: [(&str, Spoil); 8] = [
            ("epoch", |c| c.epoch = "xyz".into()),
            ("next_id", |c| c.next_id = 0),
            ("name", |c| {
                c.files.get_mut(&0).unwrap().name = "../etc/passwd".into()
            }),
            ("session", |c| {
                c.files.get_mut(&0).unwrap().session = "a/b".into()
            }),
            ("unknown file", |c| {
                c.pending.as_mut().unwrap().chunks[0].id = 0;
                c.files.clear()
            }),
            ("reserved", |c| {
                c.sequences.insert("session_1".into(), 2);
            }),
            ("chunk", |c| {
                c.pending.as_mut().unwrap().chunks[0].start = 11
            }),
            ("head", |c| c.files.get_mut(&0).unwrap().head_len = 65),
        ];
        for (what, f) in bad {
            let mut c = sample();
            f(&mut c);
            let bytes = serde_json::to_vec(&c).unwrap();
            assert!(
                matches!(Checkpoint::parse(&bytes), Err(Invalid::Corrupt(_))),
                "{what} was accepted"
            );
        }
    }

    #[test]
    fn names() {
        assert!(valid_relative("events/event_GCS.log"));
        for bad in ["", "/etc/passwd", "a/../b", "..", "a//b", "./a", "a/"] {
            assert!(!valid_relative(bad), "{bad}");
        }
        assert!(valid_session("session_2026-11-22_12-00-00_000001_1"));
        assert!(!valid_session("..") && !valid_session("a/b") && !valid_session(""));
    }
}

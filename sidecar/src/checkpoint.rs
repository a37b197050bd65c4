//! What has been shipped, kept on the shared volume so it survives a sidecar crash.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory). The protocol that
//! makes shipping exactly-once:
//! 1. record the next segment's plan (which bytes of which files) as `pending`;
//! 2. upload the segment to its deterministic key;
//! 3. advance the offsets, clear `pending`.
//!
//! After a crash with a plan pending, the segment is uploaded again from the same bytes, to
//! the same key (so it overwrites itself), unless the store already has it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// One log file, followed by identity (device and inode), not by name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileState {
    /// Stable within the pod: names the file's stream in the store (`<name>~<id>`).
    pub id: u64,
    pub dev: u64,
    pub ino: u64,
    pub session: String,
    /// Path under the session's `logs/` when first seen.
    pub name: String,
    /// The file's first bytes (up to 64), as hex: tells a reused inode from the same file.
    pub head: String,
    /// Birth time (statx), in nanoseconds since the epoch, where the filesystem keeps it:
    /// tells a reused inode from the same file even when the file was empty when seen.
    #[serde(default)]
    pub born: Option<u128>,
    /// Bytes shipped: the store holds `[0, shipped)`.
    pub shipped: u64,
    /// Last size seen.
    pub size: u64,
    /// An entry for this file is in the store (matters for empty files).
    pub announced: bool,
}

/// One chunk of a planned segment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Chunk {
    pub id: u64,
    pub start: u64,
    pub end: u64,
}

/// A segment recorded before its upload.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Plan {
    pub session: String,
    pub sequence: u64,
    pub chunks: Vec<Chunk>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Checkpoint {
    pub version: u32,
    pub next_id: u64,
    /// Next segment number, per session.
    pub sequences: BTreeMap<String, u64>,
    pub files: Vec<FileState>,
    pub pending: Option<Plan>,
    /// Bytes removed (by rotation or truncation) before they could be read, all time.
    pub lost_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read the checkpoint {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the checkpoint {path} is corrupt ({reason}); move it aside to start over, which ships every log file again from its beginning"
    )]
    Corrupt { path: String, reason: String },
    #[error("cannot write the checkpoint {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl Checkpoint {
    /// The saved checkpoint, or a new one if there is none.
    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint {
                version: 1,
                ..Default::default()
            }),
            Err(source) => Err(CheckpointError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Write atomically: a crash leaves the old checkpoint or the new one, never a mix.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let err = |source| CheckpointError::Write {
            path: path.display().to_string(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&serde_json::to_vec(self).expect("checkpoints serialise"))
            .map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(err)?;
        // The rename is only durable once the directory is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }

    pub fn file(&self, id: u64) -> Option<&FileState> {
        self.files.iter().find(|f| f.id == id)
    }

    pub fn file_mut(&mut self, id: u64) -> Option<&mut FileState> {
        self.files.iter_mut().find(|f| f.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("rs-ckpt-{}", std::process::id()));
        let path = dir.join("sub").join("checkpoint.json");
        let mut c = Checkpoint::load(&path).unwrap();
        assert_eq!(c.version, 1);
        c.next_id = 3;
        c.pending = Some(Plan {
            session: "s".into(),
            sequence: 2,
            chunks: vec![Chunk {
                id: 1,
                start: 0,
                end: 10,
            }],
        });
        c.save(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), c);
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::write(&path, b"{not json").unwrap();
        let e = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("move it aside"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! Finding Ray's log files and following each one by identity.
//!
//! Every file under `<root>/session_*/logs/` (sub-directories too; `session_latest` is a
//! symlink and is skipped) is opened when first seen and followed through its descriptor
//! by (device, inode). A rename (Ray rotates `raylet.out` → `raylet.out.1`) changes nothing,
//! and a file deleted while we still hold it open is read to its end before it is let go.
//! After a restart the checkpoint's files are matched by (device, inode) and their first
//! bytes, so a reused inode is not mistaken for the file it replaced.

use crate::checkpoint::{Checkpoint, FileState};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How many first bytes identify a file across restarts.
const HEAD: usize = 64;

/// The open descriptor of a followed file.
pub struct Open {
    pub file: File,
    /// When bytes first waited unshipped, for the age bound.
    pub waiting_since: Option<Instant>,
}

/// What a scan found that the caller must account for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Bytes that can no longer be read: the file went (or was truncated) before we read them.
    pub lost: u64,
    /// Files that exist but cannot be opened (logged once each).
    pub unreadable: Vec<(PathBuf, String)>,
    /// The checkpoint changed (new files, sizes, losses) and should be saved.
    pub changed: bool,
}

/// A file not seen in this many scans in a row, and not held open, is gone. One miss is not
/// enough: a directory listing that races a rename can skip a file.
const GONE_AFTER: u32 = 3;

#[derive(Default)]
pub struct Tracker {
    root: PathBuf,
    pub open: HashMap<u64, Open>,
    failed: HashSet<PathBuf>,
    /// Consecutive scans that did not find a file we do not hold open.
    missed: HashMap<u64, u32>,
}

/// Birth time, where the filesystem records it.
fn born(m: &std::fs::Metadata) -> Option<u128> {
    m.created()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_nanos())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn head_of(f: &File, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut n = 0;
    while n < len {
        let r = f.read_at(&mut buf[n..], n as u64)?;
        if r == 0 {
            break;
        }
        n += r;
    }
    buf.truncate(n);
    Ok(buf)
}

/// A regular file under a session's `logs/`.
struct Found {
    session: String,
    name: String,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Tracker {
    pub fn new(root: &Path) -> Tracker {
        Tracker {
            root: root.to_path_buf(),
            ..Default::default()
        }
    }

    fn walk(&self) -> Vec<Found> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return out;
        };
        let mut sessions: Vec<_> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("session_"))
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .collect();
        sessions.sort_by_key(|e| e.file_name());
        for s in sessions {
            let session = s.file_name().to_string_lossy().into_owned();
            let logs = s.path().join("logs");
            let mut stack = vec![(logs.clone(), 0usize)];
            while let Some((dir, depth)) = stack.pop() {
                let Ok(rd) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in rd.flatten() {
                    let Ok(t) = e.file_type() else { continue };
                    let path = e.path();
                    if t.is_dir() && depth < 8 {
                        stack.push((path, depth + 1));
                    } else if t.is_file()
                        && let Ok(m) = e.metadata()
                    {
                        let name = path
                            .strip_prefix(&logs)
                            .unwrap_or(&path)
                            .to_string_lossy()
                            .into_owned();
                        out.push(Found {
                            session: session.clone(),
                            name,
                            path,
                            dev: m.dev(),
                            ino: m.ino(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Find new files, refresh sizes, and account for files that went away. Files in the
    /// checkpoint's pending plan are left as they are until the plan is done.
    pub fn scan(&mut self, ck: &mut Checkpoint) -> ScanReport {
        let mut report = ScanReport::default();
        let found = self.walk();
        let pending: HashSet<u64> = ck
            .pending
            .iter()
            .flat_map(|p| p.chunks.iter().map(|c| c.id))
            .collect();
        let mut seen_ids = HashSet::new();
        for mut f in found {
            let index = |ck: &Checkpoint, dev: u64, ino: u64| {
                ck.files.iter().position(|s| s.dev == dev && s.ino == ino)
            };
            if let Some(i) = index(ck, f.dev, f.ino)
                && self.open.contains_key(&ck.files[i].id)
            {
                seen_ids.insert(ck.files[i].id);
                continue;
            }
            let file = match File::open(&f.path) {
                Ok(file) => file,
                Err(e) => {
                    self.unreadable(f.path, e, &mut report);
                    continue;
                }
            };
            // The path may name another file by now (a rotation between the directory walk
            // and the open): the descriptor's identity is the one that counts.
            let birth = match file.metadata() {
                Ok(m) => {
                    (f.dev, f.ino) = (m.dev(), m.ino());
                    born(&m)
                }
                Err(e) => {
                    self.unreadable(f.path, e, &mut report);
                    continue;
                }
            };
            let Some(i) = index(ck, f.dev, f.ino) else {
                let id = self.track(ck, f, file, &mut report);
                seen_ids.insert(id);
                continue;
            };
            let id = ck.files[i].id;
            seen_ids.insert(id);
            if self.open.contains_key(&id) {
                continue;
            }
            // Known from the checkpoint (after a restart): the same file only if its first
            // bytes are the ones we saw.
            let stored = ck.files[i].head.clone();
            let same_birth = match (ck.files[i].born, birth) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            let same =
                same_birth && head_of(&file, stored.len() / 2).is_ok_and(|h| hex(&h) == stored);
            if same {
                self.open.insert(
                    id,
                    Open {
                        file,
                        waiting_since: None,
                    },
                );
            } else if pending.contains(&id) {
                // Not the planned file any more: the pending plan treats it as gone; it is
                // looked at again once the plan is done.
                seen_ids.remove(&id);
            } else {
                let old = ck.files.remove(i);
                report.lost += old.size.saturating_sub(old.shipped);
                report.changed = true;
                seen_ids.remove(&id);
                let id = self.track(ck, f, file, &mut report);
                seen_ids.insert(id);
            }
        }
        // Refresh what we hold open; let go of files that are gone and fully shipped.
        let now = Instant::now();
        let mut drop_ids = Vec::new();
        for st in ck.files.iter_mut() {
            let Some(open) = self.open.get_mut(&st.id) else {
                // Not open and not found: it went away while we were not running.
                if !seen_ids.contains(&st.id) && !pending.contains(&st.id) {
                    let missed = self.missed.entry(st.id).or_default();
                    *missed += 1;
                    if *missed >= GONE_AFTER {
                        report.lost += st.size.saturating_sub(st.shipped);
                        drop_ids.push(st.id);
                    }
                }
                continue;
            };
            self.missed.remove(&st.id);
            let Ok(meta) = open.file.metadata() else {
                continue;
            };
            let size = meta.len();
            if pending.contains(&st.id) {
                continue;
            }
            if size < st.shipped {
                // Truncated in place: what we had not read is gone; what follows is new data,
                // a new stream.
                report.lost += st.size.saturating_sub(st.shipped);
                st.shipped = 0;
                st.size = 0;
                st.announced = false;
                st.id = ck.next_id;
                ck.next_id += 1;
                report.changed = true;
            }
            if size != st.size {
                st.size = size;
                report.changed = true;
            }
            if st.head.len() < HEAD * 2
                && size as usize > st.head.len() / 2
                && let Ok(h) = head_of(&open.file, HEAD)
            {
                st.head = hex(&h);
            }
            if size > st.shipped && open.waiting_since.is_none() {
                open.waiting_since = Some(now);
            }
            if meta.nlink() == 0 && size == st.shipped && st.announced {
                drop_ids.push(st.id);
            }
        }
        // A truncated file got a new id above; move its descriptor along.
        let ids: HashSet<u64> = ck.files.iter().map(|s| s.id).collect();
        let stale: Vec<u64> = self
            .open
            .keys()
            .filter(|id| !ids.contains(id))
            .copied()
            .collect();
        for old in stale {
            if let Some(open) = self.open.remove(&old)
                && let Ok(m) = open.file.metadata()
                && let Some(st) = ck
                    .files
                    .iter()
                    .find(|s| s.dev == m.dev() && s.ino == m.ino())
            {
                self.open.insert(st.id, open);
            }
        }
        if !drop_ids.is_empty() {
            ck.files.retain(|s| !drop_ids.contains(&s.id));
            for id in drop_ids {
                self.open.remove(&id);
                self.missed.remove(&id);
            }
            report.changed = true;
        }
        report
    }

    fn track(&mut self, ck: &mut Checkpoint, f: Found, file: File, report: &mut ScanReport) -> u64 {
        let id = ck.next_id;
        ck.next_id += 1;
        let meta = file.metadata().ok();
        let size = meta.as_ref().map_or(0, |m| m.len());
        let head = head_of(&file, HEAD).map(|h| hex(&h)).unwrap_or_default();
        ck.files.push(FileState {
            id,
            dev: f.dev,
            ino: f.ino,
            session: f.session,
            name: f.name,
            head,
            born: meta.as_ref().and_then(born),
            shipped: 0,
            size,
            announced: false,
        });
        self.open.insert(
            id,
            Open {
                file,
                // Even an empty file waits: its entry tells the store it exists.
                waiting_since: Some(Instant::now()),
            },
        );
        report.changed = true;
        id
    }

    fn unreadable(&mut self, path: PathBuf, e: std::io::Error, report: &mut ScanReport) {
        if self.failed.insert(path.clone()) {
            report.unreadable.push((path, e.to_string()));
        }
    }

    /// When the oldest byte still waiting was first seen.
    pub fn oldest_waiting(&self) -> Option<Instant> {
        self.open.values().filter_map(|o| o.waiting_since).min()
    }
}

//! Finding Ray's log files and following each one by identity.
//!
//! Every file under `<root>/session_*/logs/` (sub-directories too; `session_latest` is a
//! symlink and is skipped) is followed by (device, inode), not by name: a rename (Ray
//! rotates `raylet.out` → `raylet.out.1`) changes nothing, and a file deleted while we hold
//! it open is read to its end before it is let go. After a restart the checkpoint's files
//! are matched by (device, inode), birth time and first bytes, so a reused inode is not
//! mistaken for the file it replaced.
//!
//! A long-lived node has thousands of files, most of them quiet, so a scan does little:
//! - a directory is listed only when its change time moved (or it changed just before it
//!   was last listed, or a minute has passed: a safety net for filesystems with coarse or
//!   unreliable times), and listed files are looked up in an index by inode;
//! - a file whose size did not change is looked at less and less often: every scan at
//!   first, then at doubling intervals up to [`QUIET_MAX`]. A file renamed (rotated) is
//!   looked at at once;
//! - at most `max_open` log files are open at any moment: `max_open - 1` held, and one
//!   to look at a file (a new one, or one to check) and close again. A file is opened when
//!   it has bytes to read;
//!   files of finished sessions are closed once read to their end, and when the cap is
//!   reached, the file read to its end that changed least recently is closed. A closed file
//!   is followed through its path and inode, and opened again (after checking it is the
//!   same file) when it grows. The risk of closing: bytes appended to a closed file that is
//!   then removed before it is looked at again (within [`QUIET_MAX`]) are neither shipped
//!   nor counted as lost, since nothing knows they were there. Rotation does not remove a
//!   file so fast (Ray renames first, and a rename is looked at at once), so this takes a
//!   writer that deletes its own log; such removals of files closed while their session was
//!   current are counted in `ScanReport::closed_removed`.

use crate::checkpoint::{self, Checkpoint, FileState, HEAD};
use crate::idmap::IdMap;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A quiet file is looked at at least this often.
pub const QUIET_MAX: Duration = Duration::from_secs(30);
/// Every directory is listed at least this often, whatever its change time says.
const FULL_LIST: Duration = Duration::from_secs(60);
/// A directory that changed this shortly before it was listed is listed again: a change in
/// the same tick of the filesystem's clock would not move its change time.
const RECENT: Duration = Duration::from_secs(2);
/// A closed file missing from this many listings in a row is gone. One miss is not enough:
/// a listing that races a rename can skip a file.
const GONE_AFTER: u8 = 3;
/// Sub-directories of `logs/` deeper than this are not followed.
const MAX_DEPTH: usize = 8;

/// How the tracker paces itself.
#[derive(Clone, Debug)]
pub struct Settings {
    pub scan_interval: Duration,
    /// Log files open at most (one of them only ever briefly).
    pub max_open: usize,
}

/// What a scan found that the caller must account for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Bytes that can no longer be read: the file went (or was truncated) before we read them.
    pub lost: u64,
    /// Files that exist but cannot be opened (each reported once).
    pub unreadable: Vec<(PathBuf, String)>,
    /// Files closed while their session was current, then removed before they were looked
    /// at again: bytes written to them in between, if any, are unknown.
    pub closed_removed: u64,
    /// The checkpoint changed (new files, sizes, losses) and should be saved.
    pub changed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// A directory that holds (or may hold) log files.
struct Dir {
    path: PathBuf,
    session: Arc<str>,
    /// Its path under the session's `logs/` ("" for `logs/` itself).
    rel: String,
    depth: usize,
    stamp: Option<Stamp>,
    /// When it was last listed, by the wall clock (compared with its change time).
    listed: Option<SystemTime>,
    /// The scan that last listed it (or found it gone).
    visited: u32,
    dirty: bool,
}

/// What the tracker knows of a followed file beyond the checkpoint. Kept small: there is
/// one per file, and a node may have ten thousand (rare facts live in side tables).
struct Entry {
    file: Option<Arc<File>>,
    /// When bytes first waited unshipped, for the age bound (a [`Tracker::tick`]; 0: none).
    waiting_since: u32,
    /// Times as ticks of 100 ms from the tracker's start: an `Instant` is four times the
    /// size, times three fields, times ten thousand files.
    next_check: u32,
    last_change: u32,
    /// Index in `Tracker::dirs`.
    dir: Option<u32>,
    /// The scan whose listing of `dir` last found it.
    seen: u32,
    misses: u8,
    quiet: u8,
    /// Identity confirmed in this run (files from a checkpoint start unconfirmed).
    verified: bool,
    /// Closed while its session was current (its writer might append again).
    closed_quiet: bool,
    /// Compare its first bytes at the next look even if its size did not change: a plan of
    /// it failed on them, or they were found changed.
    recheck_head: bool,
}

impl Entry {
    fn new(now: u32, verified: bool) -> Entry {
        Entry {
            file: None,
            waiting_since: 0,
            next_check: now,
            last_change: now,
            dir: None,
            seen: 0,
            misses: 0,
            quiet: 0,
            verified,
            closed_quiet: false,
            recheck_head: false,
        }
    }
}

struct Failed {
    dir: usize,
    name: String,
    next: Instant,
    backoff: Duration,
}

pub struct Tracker {
    root: PathBuf,
    settings: Settings,
    entries: IdMap<Entry>,
    by_inode: HashMap<(u64, u64), u64>,
    /// A file's name in its directory, when that is not the one it was first seen with.
    renamed: HashMap<u64, Box<str>>,
    /// The listing's key (the directory's device, the entry's inode) of a file, where it
    /// differs from the file's own (overlay filesystems).
    aliases: HashMap<u64, (u64, u64)>,
    dirs: Vec<Dir>,
    dir_paths: HashSet<PathBuf>,
    root_stamp: Option<Stamp>,
    root_listed: Option<SystemTime>,
    /// The newest session: its files may still be written.
    latest: Option<String>,
    failed: HashMap<PathBuf, Failed>,
    scans: u32,
    /// The origin of ticks.
    start: Instant,
    last_full: Option<Instant>,
    open: usize,
}

/// Birth time, where the filesystem records it.
fn born(m: &std::fs::Metadata) -> Option<u64> {
    let d = m
        .created()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    u64::try_from(d.as_nanos()).ok()
}

fn read_head(f: &File, len: usize) -> std::io::Result<Vec<u8>> {
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

/// When a file unchanged for `quiet` looks is looked at next: doubling, up to [`QUIET_MAX`].
fn backoff(scan_interval: Duration, quiet: u32) -> Duration {
    scan_interval
        .saturating_mul(1 << quiet.min(16))
        .min(QUIET_MAX)
}

/// `t` plus `d`, in ticks of 100 ms, rounded up.
fn tick_after(t: u32, d: Duration) -> u32 {
    let n = u32::try_from(d.as_millis().div_ceil(100)).unwrap_or(u32::MAX);
    t.saturating_add(n)
}

fn basename(name: &str) -> &str {
    name.rsplit_once('/').map_or(name, |(_, b)| b)
}

fn same_birth(a: Option<u64>, b: Option<u64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// Whether `file` is the one `st` describes: same inode, birth time and first bytes.
fn is_same(st: &FileState, file: &File, m: &std::fs::Metadata) -> bool {
    (m.dev(), m.ino()) == (st.dev, st.ino)
        && same_birth(st.born, born(m))
        && head_unchanged(file, st.head_len, st.head_hash)
}

/// Record more of the file's first bytes (up to [`HEAD`]) if those recorded so far still
/// begin it; `false` if they do not (truncated and written again: the recorded ones stay,
/// for the next look to compare).
fn extend_head(st: &mut FileState, file: &File) -> bool {
    let Ok(h) = read_head(file, HEAD) else {
        return true;
    };
    let known = st.head_len as usize;
    if h.len() < known || checkpoint::head_hash(&h[..known]) != st.head_hash {
        return false;
    }
    if h.len() > known {
        st.head_len = h.len() as u32;
        st.head_hash = checkpoint::head_hash(&h);
    }
    true
}

/// Whether the file still begins with the first bytes recorded of it (`head_len` bytes
/// hashing to `head_hash`); `None` if they cannot be read. Truncated and written again
/// (copytruncate), it does not.
fn head_matches(file: &File, head_len: u32, head_hash: u64) -> Option<bool> {
    let h = read_head(file, head_len as usize).ok()?;
    Some(h.len() == head_len as usize && checkpoint::head_hash(&h) == head_hash)
}

/// Whether the file still begins with its recorded first bytes, a file whose first bytes
/// cannot be read counting as changed: what a plan's read must be sure of.
pub fn head_unchanged(file: &File, head_len: u32, head_hash: u64) -> bool {
    head_matches(file, head_len, head_hash) == Some(true)
}

impl Tracker {
    /// A tracker for `root`, knowing the checkpoint's files (to be found again).
    pub fn new(root: &Path, settings: Settings, ck: &Checkpoint) -> Tracker {
        let now = Instant::now();
        let mut t = Tracker {
            root: root.to_path_buf(),
            settings,
            entries: IdMap::with_capacity(ck.files.len()),
            by_inode: HashMap::with_capacity(ck.files.len()),
            renamed: HashMap::new(),
            aliases: HashMap::new(),
            dirs: Vec::new(),
            dir_paths: HashSet::new(),
            root_stamp: None,
            root_listed: None,
            latest: None,
            failed: HashMap::new(),
            scans: 0,
            start: now,
            last_full: None,
            open: 0,
        };
        for (id, f) in &ck.files {
            t.entries.insert(*id, Entry::new(1, false));
            t.by_inode.insert((f.dev, f.ino), *id);
        }
        t
    }

    /// `t` in 100 ms ticks from the start, from 1 (0 means "never" where a tick is
    /// optional); rounded up, so that nothing is due before its time.
    fn tick(&self, t: Instant) -> u32 {
        let ms = t.saturating_duration_since(self.start).as_millis();
        u32::try_from(ms.div_ceil(100) + 1).unwrap_or(u32::MAX)
    }

    /// Files held open at most: one descriptor of the cap is kept for looking at files.
    fn held_max(&self) -> usize {
        self.settings.max_open.saturating_sub(1).max(1)
    }

    /// The open descriptor of a followed file.
    pub fn file(&self, id: u64) -> Option<Arc<File>> {
        self.entries.get(&id)?.file.clone()
    }

    pub fn is_open(&self, id: u64) -> bool {
        self.entries.get(&id).is_some_and(|e| e.file.is_some())
    }

    /// Log files held open.
    pub fn open_files(&self) -> usize {
        self.open
    }

    /// When the oldest byte still waiting was first seen.
    pub fn oldest_waiting(&self) -> Option<Instant> {
        let t = self
            .entries
            .values()
            .map(|e| e.waiting_since)
            .filter(|t| *t > 0)
            .min()?;
        Some(self.start + Duration::from_millis(u64::from(t - 1) * 100))
    }

    /// Everything of `id` seen so far is in the store.
    pub fn caught_up(&mut self, id: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.waiting_since = 0;
        }
    }

    /// Look at `id` again at the next scan, however quiet it has been, first bytes included
    /// whatever its size: a plan of its bytes could not be built as recorded (it shrank,
    /// went, or was truncated and written again), and a plan made again from what was seen
    /// before would fail the same way.
    pub fn check_soon(&mut self, id: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.next_check = 0;
            e.recheck_head = true;
        }
    }

    /// Find new files, refresh sizes, account for files that went away, and open or close
    /// descriptors. Files in the checkpoint's pending plan are left as they are until the
    /// plan is done. `thorough` lists every directory and looks at every file, however
    /// quiet (for the final flush).
    pub fn scan(&mut self, ck: &mut Checkpoint, now: Instant, thorough: bool) -> ScanReport {
        let mut r = ScanReport::default();
        let pending = self.list(ck, now, thorough, &mut r);
        self.look(ck, &pending, now, &mut r);
        r
    }

    /// The first half of a scan: list the directories that changed, note where known files
    /// are now, and follow new ones. Returns the files of the pending plan. Ray may rotate
    /// between this and [`Tracker::look`]: a name seen here may already name another file.
    fn list(
        &mut self,
        ck: &mut Checkpoint,
        now: Instant,
        thorough: bool,
        r: &mut ScanReport,
    ) -> HashSet<u64> {
        self.scans = self.scans.wrapping_add(1);
        let wall = SystemTime::now();
        let full = thorough
            || self
                .last_full
                .is_none_or(|t| now.duration_since(t) >= FULL_LIST);
        if full {
            self.last_full = Some(now);
        }
        if thorough {
            let t = self.tick(now);
            for e in self.entries.values_mut() {
                e.next_check = e.next_check.min(t);
            }
        }
        let pending: HashSet<u64> = ck
            .pending
            .iter()
            .flat_map(|p| p.chunks.iter().map(|c| c.id))
            .collect();
        self.list_root(wall, full);
        let mut i = 0;
        // Listing a directory may add sub-directories, listed in the same scan.
        while i < self.dirs.len() {
            self.visit_dir(i, ck, &pending, wall, full, now, r);
            i += 1;
        }
        self.retry_failed(ck, &pending, now, r);
        pending
    }

    /// The second half of a scan: sizes, truncation and removal of the files that are due,
    /// then descriptors.
    fn look(
        &mut self,
        ck: &mut Checkpoint,
        pending: &HashSet<u64>,
        now: Instant,
        r: &mut ScanReport,
    ) {
        self.check_files(ck, pending, now, r);
        self.count_misses(ck, pending, r);
        self.manage_descriptors(ck, pending, now, r);
    }

    fn recent(listed: Option<SystemTime>, m: &std::fs::Metadata) -> bool {
        match (listed, m.modified()) {
            (Some(l), Ok(t)) => l.duration_since(t).is_ok_and(|d| d < RECENT) || t > l,
            _ => true,
        }
    }

    fn list_root(&mut self, wall: SystemTime, full: bool) {
        let Ok(m) = std::fs::metadata(&self.root) else {
            return;
        };
        let stamp = Stamp::of(&m);
        if !full && self.root_stamp == Some(stamp) && !Self::recent(self.root_listed, &m) {
            return;
        }
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return;
        };
        self.root_stamp = Some(stamp);
        self.root_listed = Some(wall);
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(session) = name.to_str() else {
                continue;
            };
            if !session.starts_with("session_")
                || !checkpoint::valid_session(session)
                || !e.file_type().is_ok_and(|t| t.is_dir())
            {
                continue;
            }
            if self.latest.as_deref().is_none_or(|l| session > l) {
                self.latest = Some(session.to_string());
            }
            let logs = e.path().join("logs");
            if self.dir_paths.insert(logs.clone()) {
                self.dirs.push(Dir {
                    path: logs,
                    session: Arc::from(session),
                    rel: String::new(),
                    depth: 0,
                    stamp: None,
                    listed: None,
                    visited: 0,
                    dirty: false,
                });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn visit_dir(
        &mut self,
        i: usize,
        ck: &mut Checkpoint,
        pending: &HashSet<u64>,
        wall: SystemTime,
        full: bool,
        now: Instant,
        r: &mut ScanReport,
    ) {
        let scan = self.scans;
        let d = &mut self.dirs[i];
        let m = match std::fs::metadata(&d.path) {
            Ok(m) => m,
            Err(_) => {
                if d.listed.take().is_some() {
                    // It was there and is gone: so is everything in it we do not hold.
                    d.stamp = None;
                    d.visited = scan;
                }
                return;
            }
        };
        let stamp = Stamp::of(&m);
        if !full && !d.dirty && d.stamp == Some(stamp) && !Self::recent(d.listed, &m) {
            return;
        }
        let Ok(rd) = std::fs::read_dir(&d.path) else {
            return;
        };
        d.stamp = Some(stamp);
        d.listed = Some(wall);
        d.dirty = false;
        d.visited = scan;
        let dev = m.dev();
        let (path, depth) = (d.path.clone(), d.depth);
        let mut subdirs = Vec::new();
        let mut found = Vec::new();
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                if depth < MAX_DEPTH {
                    subdirs.push(e.file_name());
                }
                continue;
            }
            if !t.is_file() {
                continue;
            }
            let key = (dev, e.ino());
            match self.by_inode.get(&key) {
                Some(&id) => {
                    let name = e.file_name().to_string_lossy().into_owned();
                    self.sighted(ck, id, i, &name, now);
                    if self.entries.get(&id).is_some_and(|e| !e.verified) {
                        found.push((name, key));
                    }
                }
                None => {
                    let p = e.path();
                    if !self.failed.contains_key(&p) {
                        found.push((e.file_name().to_string_lossy().into_owned(), key));
                    }
                }
            }
        }
        for name in subdirs {
            let p = path.join(&name);
            if self.dir_paths.insert(p.clone()) {
                let parent = &self.dirs[i];
                let name = name.to_string_lossy();
                let rel = if parent.rel.is_empty() {
                    name.into_owned()
                } else {
                    format!("{}/{name}", parent.rel)
                };
                let session = parent.session.clone();
                self.dirs.push(Dir {
                    path: p,
                    session,
                    rel,
                    depth: depth + 1,
                    stamp: None,
                    listed: None,
                    visited: 0,
                    dirty: false,
                });
            }
        }
        for (name, key) in found {
            self.discover(ck, pending, i, name, key, now, r);
        }
    }

    /// A listing found a known file: note where, and look at it at once if it was renamed.
    fn sighted(&mut self, ck: &Checkpoint, id: u64, dir: usize, name: &str, now: Instant) {
        let scan = self.scans;
        let now = self.tick(now);
        let Some(st) = ck.files.get(&id) else { return };
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        e.dir = Some(dir as u32);
        e.seen = scan;
        e.misses = 0;
        let renamed = (name != basename(&st.name)).then(|| Box::<str>::from(name));
        if self.renamed.get(&id) != renamed.as_ref() {
            match renamed {
                Some(n) => self.renamed.insert(id, n),
                None => self.renamed.remove(&id),
            };
            // A rename is a rotation: the file stopped growing, have its last bytes read.
            e.next_check = now;
        }
    }

    fn path_of(&self, ck: &Checkpoint, id: u64) -> Option<PathBuf> {
        let e = self.entries.get(&id)?;
        let d = self.dirs.get(e.dir? as usize)?;
        let name = match self.renamed.get(&id) {
            Some(n) => n,
            None => basename(&ck.files.get(&id)?.name),
        };
        Some(d.path.join(name))
    }

    /// Open a listed file that is new, or known from the checkpoint and not yet confirmed.
    #[allow(clippy::too_many_arguments)]
    fn discover(
        &mut self,
        ck: &mut Checkpoint,
        pending: &HashSet<u64>,
        dir: usize,
        name: String,
        key: (u64, u64),
        now: Instant,
        r: &mut ScanReport,
    ) {
        let path = self.dirs[dir].path.join(&name);
        let file = match File::open(&path) {
            Ok(f) => f,
            // Gone between the listing and the open: nothing to follow.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                self.unreadable(path, dir, &name, e, now, r);
                return;
            }
        };
        let m = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                self.unreadable(path, dir, &name, e, now, r);
                return;
            }
        };
        self.failed.remove(&path);
        // The path may name another file by now (a rotation between the listing and the
        // open): the descriptor's identity is the one that counts.
        let real = (m.dev(), m.ino());
        if let Some(&id) = self.by_inode.get(&real) {
            if real != key && real.1 == key.1 && !self.by_inode.contains_key(&key) {
                self.by_inode.insert(key, id);
                self.aliases.insert(id, key);
            }
            let verified = self.entries.get(&id).is_some_and(|e| e.verified);
            let Some(st) = ck.files.get(&id) else { return };
            if verified {
                if real == key || real.1 == key.1 {
                    self.sighted(ck, id, dir, &name, now);
                }
                return;
            }
            if is_same(st, &file, &m) {
                self.sighted(ck, id, dir, &name, now);
                let t = self.tick(now);
                if let Some(e) = self.entries.get_mut(&id) {
                    e.verified = true;
                    e.next_check = t;
                }
                return;
            }
            if pending.contains(&id) {
                // Not the planned file any more: the pending plan treats it as gone; the
                // new file is looked at again once the plan is done.
                self.dirs[dir].dirty = true;
                return;
            }
            // The inode was reused: the file we knew is gone, this is another one.
            let old = self.forget(ck, id);
            if let Some(old) = old {
                r.lost += old.size.saturating_sub(old.shipped);
            }
            r.changed = true;
        }
        self.track(ck, dir, name, file, &m, key, now);
        r.changed = true;
    }

    #[allow(clippy::too_many_arguments)]
    fn track(
        &mut self,
        ck: &mut Checkpoint,
        dir: usize,
        name: String,
        file: File,
        m: &std::fs::Metadata,
        key: (u64, u64),
        now: Instant,
    ) {
        let id = ck.take_id();
        let head = read_head(&file, HEAD).unwrap_or_default();
        let d = &self.dirs[dir];
        // The listing's string itself, kept rather than copied.
        let rel = if d.rel.is_empty() {
            name
        } else {
            format!("{}/{name}", d.rel)
        };
        let real = (m.dev(), m.ino());
        ck.files.insert(
            id,
            FileState {
                dev: real.0,
                ino: real.1,
                session: d.session.clone(),
                name: rel.into_boxed_str(),
                head_len: head.len() as u32,
                head_hash: checkpoint::head_hash(&head),
                born: born(m),
                shipped: 0,
                size: m.len(),
                announced: false,
            },
        );
        let mut e = Entry::new(self.tick(now), true);
        e.dir = Some(dir as u32);
        e.seen = self.scans;
        // Even an empty file waits: its entry tells the store it exists.
        e.waiting_since = e.last_change;
        e.next_check = self.tick(now + self.settings.scan_interval);
        if self.open < self.held_max() {
            e.file = Some(Arc::new(file));
            self.open += 1;
        }
        self.by_inode.insert(real, id);
        if real != key && real.1 == key.1 && !self.by_inode.contains_key(&key) {
            self.by_inode.insert(key, id);
            self.aliases.insert(id, key);
        }
        self.entries.insert(id, e);
    }

    /// Drop a file from the checkpoint and the tracker; its state, for loss accounting.
    fn forget(&mut self, ck: &mut Checkpoint, id: u64) -> Option<FileState> {
        let st = ck.files.remove(&id);
        if let Some(e) = self.entries.remove(&id)
            && e.file.is_some()
        {
            self.open -= 1;
        }
        if let Some(a) = self.aliases.remove(&id) {
            self.by_inode.remove(&a);
        }
        self.renamed.remove(&id);
        if let Some(st) = &st
            && self.by_inode.get(&(st.dev, st.ino)) == Some(&id)
        {
            self.by_inode.remove(&(st.dev, st.ino));
        }
        st
    }

    fn unreadable(
        &mut self,
        path: PathBuf,
        dir: usize,
        name: &str,
        e: std::io::Error,
        now: Instant,
        r: &mut ScanReport,
    ) {
        let first = !self.failed.contains_key(&path);
        let f = self.failed.entry(path.clone()).or_insert(Failed {
            dir,
            name: name.to_string(),
            next: now,
            backoff: self.settings.scan_interval,
        });
        f.backoff = (f.backoff * 2).min(QUIET_MAX);
        f.next = now + f.backoff;
        if first {
            r.unreadable.push((path, e.to_string()));
        }
    }

    /// Try again, now and then, the files that could not be opened.
    fn retry_failed(
        &mut self,
        ck: &mut Checkpoint,
        pending: &HashSet<u64>,
        now: Instant,
        r: &mut ScanReport,
    ) {
        let due: Vec<(PathBuf, usize, String)> = self
            .failed
            .iter()
            .filter(|(_, f)| f.next <= now)
            .map(|(p, f)| (p.clone(), f.dir, f.name.clone()))
            .collect();
        for (path, dir, name) in due {
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() => {
                    let key = (m.dev(), m.ino());
                    if let Some(&id) = self.by_inode.get(&key)
                        && self.entries.get(&id).is_some_and(|e| e.verified)
                    {
                        self.failed.remove(&path);
                        continue;
                    }
                    self.discover(ck, pending, dir, name, key, now, r);
                }
                _ => {
                    self.failed.remove(&path);
                }
            }
        }
    }

    /// Look at the files that are due: sizes, truncation, removal.
    fn check_files(
        &mut self,
        ck: &mut Checkpoint,
        pending: &HashSet<u64>,
        now: Instant,
        r: &mut ScanReport,
    ) {
        let tnow = self.tick(now);
        let due: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.next_check <= tnow && (e.file.is_some() || (e.verified && e.dir.is_some()))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.check(ck, pending, id, now, r);
        }
    }

    fn check(
        &mut self,
        ck: &mut Checkpoint,
        pending: &HashSet<u64>,
        mut id: u64,
        now: Instant,
        r: &mut ScanReport,
    ) {
        let scan_interval = self.settings.scan_interval;
        let tnow = self.tick(now);
        let tnext = self.tick(now + scan_interval);
        let Some(e) = self.entries.get(&id) else {
            return;
        };
        let Some(st) = ck.files.get(&id) else { return };
        let open = e.file.clone();
        let recheck = e.recheck_head;
        let m = match &open {
            Some(f) => f.metadata(),
            None => match self.path_of(ck, id) {
                Some(p) => std::fs::metadata(p),
                None => return,
            },
        };
        let m = match m {
            Ok(m) => m,
            Err(_) => {
                // A closed file not at its path: renamed or removed. The next listing of
                // its directory tells.
                if let Some(e) = self.entries.get_mut(&id) {
                    e.next_check = tnext;
                    if let Some(d) = e.dir {
                        self.dirs[d as usize].dirty = true;
                    }
                }
                return;
            }
        };
        if open.is_none() {
            // Another inode at its path: ours was renamed since its directory was listed (a
            // rotation racing the scan) or removed. Only the next listings can tell which, and
            // until they do its bytes are not lost: taking it for gone would count them lost
            // and, when a listing then finds it under its new name, follow it as a new file
            // and ship it again from its first byte.
            let other = (m.dev(), m.ino()) != (st.dev, st.ino);
            // Our inode, yet another file: the inode was reused, ours is gone. Without birth
            // times, a closed file that shrank may be such a file: its first bytes tell.
            let replaced = !other
                && (!same_birth(st.born, born(&m))
                    || (st.born.is_none()
                        && m.len() < st.shipped
                        && self
                            .path_of(ck, id)
                            .is_some_and(|p| File::open(p).is_ok_and(|f| !is_same(st, &f, &m)))));
            if other || replaced {
                if let Some(e) = self.entries.get_mut(&id) {
                    e.next_check = tnext;
                    if let Some(d) = e.dir {
                        self.dirs[d as usize].dirty = true;
                    }
                }
                if replaced && !pending.contains(&id) {
                    let closed_quiet = self.entries.get(&id).is_some_and(|e| e.closed_quiet);
                    if let Some(old) = self.forget(ck, id) {
                        r.lost += old.size.saturating_sub(old.shipped);
                    }
                    if closed_quiet {
                        r.closed_removed += 1;
                    }
                    r.changed = true;
                }
                return;
            }
        }
        let size = m.len();
        // Whether the first bytes are no longer the recorded ones: what tells a file truncated
        // and written again past the size last seen from one appended to. Read through the
        // held descriptor, or at the path of a file the descriptor cap closed.
        let head_changed = (size != st.size || recheck) && st.head_len > 0 && {
            // A read error is not evidence of a truncation: the file stays as it is.
            let differs = |f: &File| head_matches(f, st.head_len, st.head_hash) == Some(false);
            match &open {
                Some(f) => differs(f),
                None => self
                    .path_of(ck, id)
                    .and_then(|p| File::open(p).ok())
                    .filter(|f| {
                        f.metadata()
                            .is_ok_and(|fm| (fm.dev(), fm.ino()) == (st.dev, st.ino))
                    })
                    .is_some_and(|f| differs(&f)),
            }
        };
        if pending.contains(&id) {
            // The plan holds the file's id and offsets: growth is noted (the backlog shows
            // during an outage), anything else waits until the plan is done, the size last
            // seen kept so that the truncation is seen then.
            if let Some(e) = self.entries.get_mut(&id) {
                e.next_check = tnext;
                if let Some(st) = ck.files.get_mut(&id)
                    && size > st.size
                    && !head_changed
                {
                    st.size = size;
                    e.last_change = tnow;
                    if e.waiting_since == 0 {
                        e.waiting_since = tnow;
                    }
                    r.changed = true;
                }
            }
            return;
        }
        if let Some(e) = self.entries.get_mut(&id) {
            e.recheck_head = false;
        }
        // Truncated in place: a file shrinks no other way. Written again since, it may have
        // grown back past the size last seen (a quiet file is looked at only now and then):
        // then its first bytes are no longer the recorded ones. Either way, what we had not
        // read is gone, and what follows is new data, a new stream: taken for an append,
        // the old stream would go on with the new file's bytes from the old offset.
        let truncated = size < st.size || head_changed;
        if truncated {
            r.lost += st.size.saturating_sub(st.shipped);
            let new_id = ck.take_id();
            if let Some(mut s) = ck.files.remove(&id) {
                s.shipped = 0;
                s.size = 0;
                s.announced = false;
                s.head_len = 0;
                s.head_hash = checkpoint::head_hash(&[]);
                ck.files.insert(new_id, s);
            }
            if let Some(e) = self.entries.remove(&id) {
                self.entries.insert(new_id, e);
            }
            if let Some(n) = self.renamed.remove(&id) {
                self.renamed.insert(new_id, n);
            }
            if let Some(a) = self.aliases.remove(&id) {
                self.aliases.insert(new_id, a);
            }
            for v in self.by_inode.values_mut() {
                if *v == id {
                    *v = new_id;
                }
            }
            id = new_id;
            r.changed = true;
        }
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        let Some(st) = ck.files.get_mut(&id) else {
            return;
        };
        if size != st.size {
            st.size = size;
            r.changed = true;
            e.quiet = 0;
            e.last_change = tnow;
            e.next_check = tnext;
        } else {
            e.quiet = e.quiet.saturating_add(1);
            e.next_check = tick_after(tnow, backoff(scan_interval, u32::from(e.quiet)));
        }
        if size > st.shipped && e.waiting_since == 0 {
            e.waiting_since = tnow;
        }
        if let Some(f) = &e.file {
            if (st.head_len as usize) < HEAD && size > u64::from(st.head_len) {
                let known = st.head_len;
                if !extend_head(st, f) {
                    e.recheck_head = true;
                    e.next_check = 0;
                } else if st.head_len != known {
                    r.changed = true;
                }
            }
            if m.nlink() == 0 && size == st.shipped && st.announced {
                // Deleted, and read to its end: let it go.
                self.forget(ck, id);
                r.changed = true;
            }
        }
    }

    /// Closed files that listings no longer find are gone after a few scans; what was not
    /// shipped of them is lost.
    fn count_misses(&mut self, ck: &mut Checkpoint, pending: &HashSet<u64>, r: &mut ScanReport) {
        let scan = self.scans;
        let mut gone = Vec::new();
        let mut unlocated = false;
        for (id, e) in self.entries.iter_mut() {
            if e.file.is_some() {
                // Held open: read to its end whatever its name.
                continue;
            }
            let unseen = match e.dir {
                Some(d) => self.dirs[d as usize].visited == scan && e.seen != scan,
                None => !e.verified,
            };
            if !unseen {
                continue;
            }
            // Saturating: a file in a plan that stays pending (a long store outage) is missed
            // at every scan and is not let go, for as long as the plan waits.
            e.misses = e.misses.saturating_add(1);
            match e.dir {
                Some(d) => self.dirs[d as usize].dirty = true,
                None => unlocated = true,
            }
            if e.misses >= GONE_AFTER && !pending.contains(id) {
                gone.push((*id, e.closed_quiet));
            }
        }
        if unlocated {
            // Files of the checkpoint not found yet: list everything again to be sure.
            for d in &mut self.dirs {
                d.dirty = true;
            }
        }
        if gone.is_empty() {
            return;
        }
        r.closed_removed += gone.iter().filter(|(_, q)| *q).count() as u64;
        let gone: Vec<u64> = gone.into_iter().map(|(id, _)| id).collect();
        r.lost += self.forget_all(ck, &gone);
        r.changed = true;
    }

    /// [`Tracker::forget`] for many files at once (a session's directory removed): one pass
    /// over the maps, not one per file. `gone` is sorted. Returns their unshipped bytes.
    fn forget_all(&mut self, ck: &mut Checkpoint, gone: &[u64]) -> u64 {
        let is_gone = |id: &u64| gone.binary_search(id).is_ok();
        let mut lost = 0;
        let by_inode = &mut self.by_inode;
        ck.files.retain(|id, st| {
            if !is_gone(id) {
                return true;
            }
            lost += st.size.saturating_sub(st.shipped);
            if by_inode.get(&(st.dev, st.ino)) == Some(id) {
                by_inode.remove(&(st.dev, st.ino));
            }
            false
        });
        let mut closed = 0;
        self.entries.retain(|id, e| {
            if !is_gone(id) {
                return true;
            }
            closed += usize::from(e.file.is_some());
            false
        });
        self.open -= closed;
        for id in gone {
            if let Some(a) = self.aliases.remove(id) {
                self.by_inode.remove(&a);
            }
            self.renamed.remove(id);
        }
        lost
    }

    /// Close what needs no descriptor, open what has bytes to read, within the cap.
    fn manage_descriptors(
        &mut self,
        ck: &mut Checkpoint,
        pending: &HashSet<u64>,
        now: Instant,
        r: &mut ScanReport,
    ) {
        let pinned = |id: &u64, st: &FileState| {
            pending.contains(id) || st.size > st.shipped || !st.announced
        };
        let latest = self.latest.clone();
        // Files of finished sessions, read to their end: nothing will be written to them.
        // The size recorded may be a quiet file's of up to QUIET_MAX ago, so the descriptor
        // says: a file deleted since can be read only through it.
        for (id, e) in self.entries.iter_mut() {
            if let Some(f) = &e.file
                && let Some(st) = ck.files.get(id)
                && !pinned(id, st)
                && latest.as_deref().is_some_and(|l| &*st.session < l)
                && f.metadata().is_ok_and(|m| m.len() <= st.shipped)
            {
                e.file = None;
                e.closed_quiet = false;
                self.open -= 1;
            }
        }
        let mut want: Vec<(bool, u64)> = self
            .entries
            .iter()
            .filter(|(id, e)| {
                e.file.is_none()
                    && e.verified
                    && e.dir.is_some()
                    && ck.files.get(id).is_some_and(|st| pinned(id, st))
            })
            .map(|(id, _)| (!pending.contains(id), *id))
            .collect();
        if want.is_empty() {
            return;
        }
        want.sort_unstable();
        let mut evictable: Vec<(u32, u64)> = Vec::new();
        if self.open + want.len() > self.held_max() {
            evictable = self
                .entries
                .iter()
                .filter(|(id, e)| {
                    e.file.is_some() && ck.files.get(id).is_some_and(|st| !pinned(id, st))
                })
                .map(|(id, e)| (e.last_change, *id))
                .collect();
            // Least recently changed last, to pop first.
            evictable.sort_unstable_by(|a, b| b.cmp(a));
        }
        for (_, id) in want {
            if self.open >= self.held_max() {
                let Some((_, victim)) = evictable.pop() else {
                    break;
                };
                if let Some(e) = self.entries.get_mut(&victim) {
                    e.file = None;
                    e.closed_quiet = ck
                        .files
                        .get(&victim)
                        .is_some_and(|st| latest.as_deref() == Some(&*st.session));
                    self.open -= 1;
                }
            }
            self.reopen(ck, id, now, r);
        }
    }

    /// Open a closed file again, if its path still names it.
    fn reopen(&mut self, ck: &mut Checkpoint, id: u64, now: Instant, r: &mut ScanReport) {
        let (Some(path), Some(st)) = (self.path_of(ck, id), ck.files.get(&id)) else {
            return;
        };
        let opened = File::open(&path).and_then(|f| {
            let m = f.metadata()?;
            Ok((f, m))
        });
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        match opened {
            Ok((f, m))
                if (m.dev(), m.ino()) == (st.dev, st.ino) && same_birth(st.born, born(&m)) =>
            {
                // Grown while closed: its first bytes are recorded before a plan reads it,
                // so that a truncation under the plan is seen (see `head_unchanged`).
                if let Some(st) = ck.files.get_mut(&id)
                    && (st.head_len as usize) < HEAD
                {
                    let known = st.head_len;
                    if !extend_head(st, &f) {
                        e.recheck_head = true;
                    } else if st.head_len != known {
                        r.changed = true;
                    }
                }
                e.file = Some(Arc::new(f));
                e.closed_quiet = false;
                e.next_check = 0;
                self.open += 1;
            }
            Ok(_) | Err(_) => {
                // Renamed or removed since it was last listed, or no longer readable: the
                // next listing tells which.
                let dir = e.dir.map(|d| d as usize);
                if let (Err(err), Some(d)) = (&opened, dir)
                    && err.kind() == std::io::ErrorKind::PermissionDenied
                {
                    let name = self
                        .renamed
                        .get(&id)
                        .map_or(basename(&st.name), |n| n)
                        .to_string();
                    let err = std::io::Error::new(err.kind(), err.to_string());
                    self.unreadable(path, d, &name, err, now, r);
                    return;
                }
                if let Some(d) = dir {
                    self.dirs[d].dirty = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn settings(max_open: usize) -> Settings {
        Settings {
            scan_interval: Duration::from_millis(100),
            max_open,
        }
    }

    fn root(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rs-tracker-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("session_1/logs/events")).unwrap();
        d
    }

    fn write(p: &Path, b: &[u8]) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
            .write_all(b)
            .unwrap();
    }

    /// Mark every followed file shipped, as a commit would.
    fn ship_all(t: &mut Tracker, ck: &mut Checkpoint) {
        for (id, f) in ck.files.iter_mut() {
            f.shipped = f.size;
            f.announced = true;
            t.caught_up(*id);
        }
    }

    /// A tracker following one file of `session_1`, read and shipped to its end.
    fn shipped(
        name: &str,
        file: &str,
        bytes: &[u8],
    ) -> (PathBuf, PathBuf, Checkpoint, Tracker, Instant) {
        let root = root(name);
        let p = root.join("session_1/logs").join(file);
        write(&p, bytes);
        let mut ck = Checkpoint::new("u", None).unwrap();
        let mut t = Tracker::new(&root, settings(16), &ck);
        let now = Instant::now();
        t.scan(&mut ck, now, false);
        ship_all(&mut t, &mut ck);
        (root, p, ck, t, now)
    }

    #[test]
    fn rotation_is_followed_by_inode_and_truncation_starts_a_stream() {
        let root = root("rotate");
        let logs = root.join("session_1/logs");
        write(&logs.join("raylet.out"), b"first line\n");
        write(&logs.join("events/e.log"), b"");
        let mut ck = Checkpoint::new("u", None).unwrap();
        let mut t = Tracker::new(&root, settings(16), &ck);
        let mut now = Instant::now();
        let r = t.scan(&mut ck, now, false);
        assert!(r.changed);
        assert_eq!(ck.files.len(), 2);
        let names: HashSet<_> = ck.files.values().map(|f| f.name.clone()).collect();
        assert!(names.contains("raylet.out") && names.contains("events/e.log"));
        ship_all(&mut t, &mut ck);
        std::fs::rename(logs.join("raylet.out"), logs.join("raylet.out.1")).unwrap();
        write(&logs.join("raylet.out.1"), b"more\n");
        write(&logs.join("raylet.out"), b"new file\n");
        now += Duration::from_millis(200);
        t.scan(&mut ck, now, false);
        assert_eq!(ck.files.len(), 3, "{:?}", ck.files);
        let old = ck
            .files
            .values()
            .find(|f| &*f.name == "raylet.out" && f.shipped > 0);
        assert_eq!(old.map(|f| f.size), Some(16), "{:?}", ck.files);
        // Truncation in place: a new stream, and the unread bytes are lost.
        std::fs::write(logs.join("events/e.log"), b"").unwrap();
        write(&logs.join("events/e.log"), b"abc");
        now += Duration::from_millis(200);
        t.scan(&mut ck, now, false);
        ship_all(&mut t, &mut ck);
        std::fs::File::create(logs.join("events/e.log")).unwrap();
        now += Duration::from_millis(200);
        let before: HashSet<u64> = ck.files.keys().copied().collect();
        let r = t.scan(&mut ck, now, false);
        assert_eq!(r.lost, 0);
        let after: HashSet<u64> = ck.files.keys().copied().collect();
        assert_ne!(before, after, "a truncated file gets a new id");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn truncation_is_seen_when_the_file_grew_again_before_it_was_looked_at() {
        let root = root("regrow");
        let logs = root.join("session_1/logs");
        let p = logs.join("worker.out");
        write(&p, &[b'a'; 1000]);
        let mut ck = Checkpoint::new("u", None).unwrap();
        let mut t = Tracker::new(&root, settings(16), &ck);
        let mut now = Instant::now();
        t.scan(&mut ck, now, false);
        ship_all(&mut t, &mut ck);
        write(&p, &[b'b'; 500]);
        now += Duration::from_millis(200);
        t.scan(&mut ck, now, false);
        let id = |ck: &Checkpoint| *ck.files.keys().next().unwrap();
        let first = id(&ck);
        assert_eq!(
            (ck.files[&first].shipped, ck.files[&first].size),
            (1000, 1500)
        );
        // Truncated, then written again past what was shipped but not to the size seen.
        std::fs::write(&p, [b'c'; 1200]).unwrap();
        now += Duration::from_millis(200);
        let r = t.scan(&mut ck, now, false);
        let second = id(&ck);
        assert_ne!(first, second, "a truncated file gets a new id");
        let st = &ck.files[&second];
        assert_eq!((st.shipped, st.size, r.lost), (0, 1200, 500));
        ship_all(&mut t, &mut ck);
        // Truncated and written again past the size seen: the first bytes tell.
        std::fs::write(&p, [b'd'; 1300]).unwrap();
        now += Duration::from_millis(200);
        let r = t.scan(&mut ck, now, false);
        let third = id(&ck);
        assert_ne!(second, third, "a truncated file gets a new id");
        let st = &ck.files[&third];
        assert_eq!((st.shipped, st.size, r.lost), (0, 1300, 0));
        // An append is still an append.
        write(&p, b"more");
        now += Duration::from_millis(200);
        t.scan(&mut ck, now, false);
        assert_eq!(id(&ck), third);
        assert_eq!(ck.files[&third].size, 1304);
        let _ = std::fs::remove_dir_all(root);
    }

    /// A plan dropped because the file's first bytes changed while it was read: the file
    /// was truncated and written again, here to the very size seen before. The next scan
    /// reads the first bytes whatever the size, or the same plan would be made and dropped
    /// again, over and over, until the file grew.
    #[test]
    fn a_file_rewritten_to_its_old_size_is_a_new_stream_once_a_plan_fails_on_it() {
        let root = root("same-size");
        let p = root.join("session_1/logs/c.out");
        write(&p, &[b'a'; 1500]);
        let mut ck = Checkpoint::new("u", None).unwrap();
        let mut t = Tracker::new(&root, settings(16), &ck);
        let mut now = Instant::now();
        t.scan(&mut ck, now, false);
        let first = *ck.files.keys().next().unwrap();
        ck.files.get_mut(&first).unwrap().shipped = 1000;
        std::fs::write(&p, [b'b'; 1500]).unwrap();
        now += Duration::from_millis(200);
        let r = t.scan(&mut ck, now, false);
        assert_eq!(
            *ck.files.keys().next().unwrap(),
            first,
            "the size alone tells nothing"
        );
        assert_eq!(r.lost, 0);
        t.check_soon(first);
        now += Duration::from_millis(200);
        let r = t.scan(&mut ck, now, false);
        let second = *ck.files.keys().next().unwrap();
        assert_ne!(first, second, "a truncated file gets a new id");
        let st = &ck.files[&second];
        assert_eq!((st.shipped, st.size, r.lost), (0, 1500, 500));
        let _ = std::fs::remove_dir_all(root);
    }

    /// A planned file that went stays followed, missed at every scan, for as long as its
    /// plan waits (hundreds of scans in a long store outage).
    #[test]
    fn a_gone_file_in_a_waiting_plan_is_missed_for_ever() {
        let root = root("waiting");
        let p = root.join("session_1/logs/b.out");
        write(&p, b"bytes");
        let mut ck = Checkpoint::new("u", None).unwrap();
        let mut t = Tracker::new(&root, settings(16), &ck);
        let mut now = Instant::now();
        t.scan(&mut ck, now, false);
        let id = *ck.files.keys().next().unwrap();
        ck.pending = Some(checkpoint::Plan {
            session: "session_1".into(),
            sequence: 0,
            chunks: vec![checkpoint::Chunk {
                id,
                start: 0,
                end: 5,
            }],
        });
        // Gone while the sidecar was down: the new start finds it nowhere.
        std::fs::remove_file(&p).unwrap();
        let mut t = Tracker::new(&root, settings(16), &ck);
        for _ in 0..600 {
            now += Duration::from_millis(100);
            t.scan(&mut ck, now, true);
        }
        assert!(ck.files.contains_key(&id), "let go while its plan waits");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_file_asked_about_is_looked_at_however_quiet() {
        let root = root("soon");
        let p = root.join("session_1/logs/gcs_server.out");
        write(&p, b"0123456789");
        let mut ck = Checkpoint::new("u", None).unwrap();
        let mut t = Tracker::new(&root, settings(16), &ck);
        let mut now = Instant::now();
        // Quiet for a while: it is looked at less and less often.
        for _ in 0..8 {
            t.scan(&mut ck, now, false);
            now += Duration::from_millis(100);
        }
        let id = *ck.files.keys().next().unwrap();
        std::fs::write(&p, b"01234").unwrap();
        t.scan(&mut ck, now, false);
        assert_eq!(ck.files[&id].size, 10, "not due yet");
        t.check_soon(id);
        now += Duration::from_millis(100);
        t.scan(&mut ck, now, false);
        let st = ck.files.values().next().unwrap();
        assert_eq!(st.size, 5, "{:?}", ck.files);
        let _ = std::fs::remove_dir_all(root);
    }

    /// A quiet file of a session that has just ended, appended to and deleted before it was
    /// looked at again: its descriptor is kept until the last bytes are seen (they were lost
    /// when the old size decided that it had been read to its end).
    #[test]
    fn a_finished_sessions_file_is_read_to_its_end_through_its_descriptor() {
        let (root, p, mut ck, mut t, mut now) = shipped("ended", "worker.out", b"0123456789");
        for _ in 0..8 {
            now += Duration::from_millis(100);
            t.scan(&mut ck, now, false);
        }
        let id = *ck.files.keys().next().unwrap();
        write(&p, b"abcde");
        std::fs::remove_file(&p).unwrap();
        std::fs::create_dir_all(root.join("session_2/logs")).unwrap();
        now += Duration::from_millis(100);
        t.scan(&mut ck, now, false);
        assert!(t.entries[&id].file.is_some(), "closed with 5 bytes unread");
        now += QUIET_MAX;
        t.scan(&mut ck, now, false);
        assert_eq!(ck.files[&id].size, 15, "{:?}", ck.files);
        let _ = std::fs::remove_dir_all(root);
    }

    /// copytruncate of a file the descriptor cap had closed, written past its old size: its
    /// first bytes, read at its path, tell a new stream (the old one went on with the new
    /// file's bytes from the old offset, and the first of them were never shipped).
    #[test]
    fn a_closed_file_truncated_and_written_past_its_size_starts_a_stream() {
        let (root, p, mut ck, mut t, mut now) =
            shipped("closed-trunc", "quiet.log", b"OLD-OLD-OLD-");
        let id = *ck.files.keys().next().unwrap();
        if let Some(e) = t.entries.get_mut(&id)
            && e.file.take().is_some()
        {
            t.open -= 1;
        }
        std::fs::write(&p, b"NEW-NEW-NEW-NEW-NEW-").unwrap();
        t.check_soon(id);
        now += Duration::from_millis(100);
        t.scan(&mut ck, now, false);
        assert!(!ck.files.contains_key(&id), "{:?}", ck.files);
        let st = ck.files.values().next().unwrap();
        assert_eq!((st.shipped, st.size), (0, 20));
        let _ = std::fs::remove_dir_all(root);
    }

    /// copytruncate while a plan of the file waits (a store outage): the size last seen is
    /// kept, so that once the plan is done the truncation is seen (growth was noted instead,
    /// and the new file's first bytes were never shipped).
    #[test]
    fn a_truncation_during_a_waiting_plan_is_seen_when_it_is_done() {
        let (root, p, mut ck, mut t, mut now) = shipped("pending-trunc", "w.out", b"0123456789");
        let id = *ck.files.keys().next().unwrap();
        write(&p, b"abcde");
        t.check_soon(id);
        now += Duration::from_millis(100);
        t.scan(&mut ck, now, false);
        assert_eq!(ck.files[&id].size, 15);
        ck.pending = Some(checkpoint::Plan {
            session: "session_1".into(),
            sequence: 0,
            chunks: vec![checkpoint::Chunk {
                id,
                start: 10,
                end: 15,
            }],
        });
        std::fs::write(&p, b"NEW-NEW-NEW-NEW-NEW-NEW-").unwrap();
        t.check_soon(id);
        now += Duration::from_millis(100);
        t.scan(&mut ck, now, false);
        assert_eq!(ck.files[&id].size, 15, "taken for growth");
        // The plan is done.
        ck.pending = None;
        if let Some(st) = ck.files.get_mut(&id) {
            st.shipped = 15;
        }
        t.check_soon(id);
        now += Duration::from_millis(100);
        t.scan(&mut ck, now, false);
        assert!(!ck.files.contains_key(&id), "{:?}", ck.files);
        let st = ck.files.values().next().unwrap();
        assert_eq!((st.shipped, st.size), (0, 24));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn descriptors_stay_under_the_cap_and_every_file_is_read() {
        let root = root("cap");
        let logs = root.join("session_1/logs");
        for i in 0..100 {
            write(
                &logs.join(format!("w-{i}.out")),
                format!("line {i}\n").as_bytes(),
            );
        }
        let mut ck = Checkpoint::new("u", None).unwrap();
        let mut t = Tracker::new(&root, settings(16), &ck);
        let mut now = Instant::now();
        let mut shipped_ids = HashSet::new();
        for _ in 0..40 {
            t.scan(&mut ck, now, false);
            assert!(t.open_files() < 16, "{}", t.open_files());
            // Ship what is open, as the shipper would.
            let open: Vec<u64> = ck
                .files
                .keys()
                .copied()
                .filter(|id| t.is_open(*id))
                .collect();
            for id in open {
                let f = ck.files.get_mut(&id).unwrap();
                f.shipped = f.size;
                f.announced = true;
                t.caught_up(id);
                shipped_ids.insert(id);
            }
            now += Duration::from_millis(100);
        }
        assert_eq!(ck.files.len(), 100);
        assert_eq!(shipped_ids.len(), 100, "every file was opened and read");
        // A closed, quiet file that grows is opened again and its new bytes are seen.
        let id = *ck.files.iter().find(|(id, _)| !t.is_open(**id)).unwrap().0;
        let name = ck.files[&id].name.clone();
        write(&logs.join(&*name), b"again\n");
        for _ in 0..400 {
            now += Duration::from_millis(100);
            t.scan(&mut ck, now, false);
            if t.is_open(id) {
                break;
            }
        }
        assert!(t.is_open(id), "reopened within the quiet bound");
        // Its first bytes are recorded as it is opened, before any plan reads it.
        let st = &ck.files[&id];
        assert_eq!(u64::from(st.head_len), st.size, "{st:?}");
        assert!(ck.files[&id].size > ck.files[&id].shipped);
        assert!(t.open_files() <= 16);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn restart_matches_by_identity_and_counts_files_gone_while_down() {
        let root = root("restart");
        let logs = root.join("session_1/logs");
        write(&logs.join("a.out"), b"aaaa\n");
        write(&logs.join("b.out"), b"bbbbbbbb\n");
        let mut ck = Checkpoint::new("u", None).unwrap();
        let mut t = Tracker::new(&root, settings(16), &ck);
        let now = Instant::now();
        t.scan(&mut ck, now, false);
        drop(t);
        // While down: b.out goes, a.out is replaced by another file with other bytes.
        std::fs::remove_file(logs.join("b.out")).unwrap();
        std::fs::remove_file(logs.join("a.out")).unwrap();
        write(&logs.join("a.out"), b"zzzz\n");
        let mut t = Tracker::new(&root, settings(16), &ck);
        let mut lost = 0;
        for i in 0..5 {
            lost += t
                .scan(&mut ck, now + Duration::from_millis(100 * i), false)
                .lost;
        }
        assert_eq!(lost, 5 + 9, "both old files' bytes");
        assert_eq!(ck.files.len(), 1);
        assert_eq!(
            ck.files.values().next().unwrap().head_hash,
            checkpoint::head_hash(b"zzzz\n")
        );
        let _ = std::fs::remove_dir_all(root);
    }

    /// The ids of the followed files by (device, inode): a file followed twice would be
    /// shipped twice.
    fn by_identity(ck: &Checkpoint) -> HashMap<(u64, u64), u64> {
        let mut m = HashMap::new();
        for (id, f) in &ck.files {
            assert!(
                m.insert((f.dev, f.ino), *id).is_none(),
                "followed twice: {:?}",
                ck.files
            );
        }
        m
    }

    /// Write `b` to a new file `p`, born after `prev`: birth times have the granularity of
    /// the filesystem's clock (milliseconds), and files born in the same tick cannot be
    /// told apart by them.
    fn write_born_after(prev: &Path, p: &Path, b: &[u8]) {
        let birth = |p: &Path| std::fs::metadata(p).ok().and_then(|m| born(&m));
        let before = birth(prev);
        loop {
            write(p, b);
            if before.is_none() || birth(p) != before {
                return;
            }
            std::fs::remove_file(p).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Ray rotates between a scan's listing and its look at the files. After a restart the
    /// checkpoint's files are closed, so they are looked at by the names the listing saw,
    /// which by then name other files. That is no loss, and the files are followed under
    /// their new names, not taken for new ones (which would ship them again from their
    /// first byte).
    #[test]
    fn a_rotation_racing_a_scan_loses_nothing_and_ships_nothing_twice() {
        let root = root("race");
        let logs = root.join("session_1/logs");
        write(
            &logs.join("raylet.out.1"),
            b"the previous raylet.out, all shipped\n",
        );
        write_born_after(
            &logs.join("raylet.out.1"),
            &logs.join("raylet.out"),
            b"the current raylet.out, shipped\n",
        );
        let mut ck = Checkpoint::new("u", None).unwrap();
        let mut t = Tracker::new(&root, settings(16), &ck);
        let mut now = Instant::now();
        t.scan(&mut ck, now, false);
        ship_all(&mut t, &mut ck);
        write(&logs.join("raylet.out"), b"and these bytes, not yet\n");
        now += Duration::from_millis(100);
        t.scan(&mut ck, now, false);
        let before = by_identity(&ck);
        assert_eq!(before.len(), 2);
        let (current, size) = ck
            .files
            .values()
            .find(|f| f.size > f.shipped)
            .map(|f| ((f.dev, f.ino), f.size))
            .unwrap();
        // Killed, and started again.
        drop(t);
        let mut t = Tracker::new(&root, settings(16), &ck);
        now += Duration::from_millis(100);
        let mut r = ScanReport::default();
        let pending = t.list(&mut ck, now, false, &mut r);
        std::fs::rename(logs.join("raylet.out.1"), logs.join("raylet.out.2")).unwrap();
        std::fs::rename(logs.join("raylet.out"), logs.join("raylet.out.1")).unwrap();
        write_born_after(
            &logs.join("raylet.out.1"),
            &logs.join("raylet.out"),
            b"the next raylet.out\n",
        );
        t.look(&mut ck, &pending, now, &mut r);
        assert_eq!(r.lost, 0, "{:?}", ck.files);
        let mut lost = 0;
        for _ in 0..5 {
            now += Duration::from_millis(100);
            lost += t.scan(&mut ck, now, false).lost;
        }
        assert_eq!(lost, 0);
        let after = by_identity(&ck);
        assert_eq!(after.len(), 3, "{:?}", ck.files);
        for (identity, id) in &before {
            assert_eq!(
                after.get(identity),
                Some(id),
                "the same file, the same stream"
            );
        }
        let id = before[&current];
        assert_eq!(ck.files[&id].size, size);
        assert!(t.is_open(id), "its last bytes are read");
        let _ = std::fs::remove_dir_all(root);
    }

    /// While the store is down the pending plan waits and Ray keeps writing, also to the
    /// planned files. Their growth must be noted: should one be rotated out and removed
    /// while the sidecar is down, its bytes past the plan are lost too, and counted.
    #[test]
    fn a_planned_file_that_grows_then_goes_while_down_is_counted_in_full() {
        let root = root("planned");
        let logs = root.join("session_1/logs");
        write(&logs.join("raylet.out"), b"shipped before the outage\n");
        let mut ck = Checkpoint::new("u", None).unwrap();
        let mut t = Tracker::new(&root, settings(16), &ck);
        let mut now = Instant::now();
        t.scan(&mut ck, now, false);
        ship_all(&mut t, &mut ck);
        write(&logs.join("raylet.out"), b"planned\n");
        now += Duration::from_millis(100);
        t.scan(&mut ck, now, false);
        let (&id, f) = ck.files.iter().next().unwrap();
        let shipped = f.shipped;
        ck.pending = Some(checkpoint::Plan {
            session: "session_1".into(),
            sequence: 0,
            chunks: vec![checkpoint::Chunk {
                id,
                start: f.shipped,
                end: f.size,
            }],
        });
        write(&logs.join("raylet.out"), b"written after the plan\n");
        now += Duration::from_millis(100);
        t.scan(&mut ck, now, false);
        let size = std::fs::metadata(logs.join("raylet.out")).unwrap().len();
        assert_eq!(
            ck.files[&id].size, size,
            "growth during the outage is noted"
        );
        // Killed; while it is down the file is rotated out and removed, and the plan, not
        // in the store, is dropped.
        drop(t);
        std::fs::remove_file(logs.join("raylet.out")).unwrap();
        ck.pending = None;
        let mut t = Tracker::new(&root, settings(16), &ck);
        let mut lost = 0;
        for _ in 0..5 {
            now += Duration::from_millis(100);
            lost += t.scan(&mut ck, now, false).lost;
        }
        assert_eq!(lost, size - shipped);
        let _ = std::fs::remove_dir_all(root);
    }
}

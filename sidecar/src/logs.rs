//! `rayshape-sidecar logs`: what is in a store, and the log files put back together.

use crate::segment::{self, Place, Reassembly};
use crate::sink::Sink;
use futures_util::TryStreamExt;
use object_store::ObjectStoreExt;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("cannot list {0}: {1}")]
    List(String, object_store::Error),
    #[error("cannot fetch {0}: {1}")]
    Get(String, object_store::Error),
    #[error("segment {0} is not a rayshape segment: {1}")]
    Segment(String, segment::SegmentError),
    #[error(transparent)]
    Place(#[from] segment::PlaceError),
    #[error("cannot write {0}: {1}")]
    Write(String, std::io::Error),
    #[error("cannot read {0} back: {1}")]
    Read(String, std::io::Error),
}

/// One segment object: `<ns>/<cluster>/<pod>-<uid>/<session>/<epoch>-<sequence>.tar.zst`
/// (or `<sequence>.tar.zst`, as written before checkpoints had epochs).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentKey {
    pub pod: String,
    pub session: String,
    /// The writing checkpoint's epoch; empty for keys written before epochs.
    pub epoch: String,
    pub sequence: u64,
    pub key: String,
}

fn parse_key(rel: &str, full: &str) -> Option<SegmentKey> {
    let parts: Vec<&str> = rel.split('/').collect();
    let [ns, cluster, pod, session, file] = parts.as_slice() else {
        return None;
    };
    let stem = file.strip_suffix(".tar.zst")?;
    let (epoch, seq) = match stem.split_once('-') {
        Some((e, n)) if crate::checkpoint::valid_epoch(e) => (e, n),
        Some(_) => return None,
        None => ("", stem),
    };
    if !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(SegmentKey {
        pod: format!("{ns}/{cluster}/{pod}"),
        session: session.to_string(),
        epoch: epoch.to_string(),
        sequence: seq.parse().ok()?,
        key: full.to_string(),
    })
}

/// Every segment under the sink (optionally only those whose pod starts with `pod_prefix`),
/// in order of pod, session and sequence.
pub async fn segments(sink: &Sink, pod_prefix: Option<&str>) -> Result<Vec<SegmentKey>, LogsError> {
    let base = pod_prefix.map(|p| sink.path(p.trim_end_matches('/')));
    let root = base.clone().unwrap_or_else(|| sink.path(""));
    let metas: Vec<_> = sink
        .store
        .list(base.as_ref())
        .try_collect()
        .await
        .map_err(|e| LogsError::List(root.to_string(), e))?;
    let mut out: Vec<SegmentKey> = metas
        .iter()
        .filter_map(|m| parse_key(sink.relative(m.location.as_ref()), m.location.as_ref()))
        .collect();
    out.sort();
    Ok(out)
}

/// Summary lines: one per pod and session.
pub async fn list(sink: &Sink, pod_prefix: Option<&str>) -> Result<String, LogsError> {
    let mut groups: BTreeMap<(String, String), usize> = BTreeMap::new();
    for s in segments(sink, pod_prefix).await? {
        *groups.entry((s.pod, s.session)).or_default() += 1;
    }
    let mut out = String::new();
    for ((pod, session), n) in groups {
        out.push_str(&format!(
            "{pod}\t{session}\t{n} segment{}\n",
            if n == 1 { "" } else { "s" }
        ));
    }
    Ok(out)
}

/// Files reassembled, by `<session>/<name>~<epoch>.<id>`, with their sizes.
pub type Written = BTreeMap<String, u64>;

/// Reassemble a pod's files (optionally one session, optionally only streams whose name is
/// `file`) into `out/<session>/<name>~<epoch>.<id>`. Chunks must not overlap: an overlap
/// would be a duplicate, and is an error. Nothing is written outside `out`: segments with
/// entries that are links, absolute paths or `..`, or sessions that are not plain names, are
/// refused (see [`segment::read`]).
pub async fn get(
    sink: &Sink,
    pod: &str,
    session: Option<&str>,
    file: Option<&str>,
    out: &Path,
) -> Result<Written, LogsError> {
    let mut written: Written = BTreeMap::new();
    let mut reassembly = Reassembly::default();
    for seg in segments(sink, Some(pod)).await? {
        if seg.pod != pod.trim_end_matches('/') || session.is_some_and(|s| s != seg.session) {
            continue;
        }
        let path = object_store::path::Path::from(seg.key.as_str());
        let bytes = sink
            .store
            .get(&path)
            .await
            .map_err(|e| LogsError::Get(seg.key.clone(), e))?
            .bytes()
            .await
            .map_err(|e| LogsError::Get(seg.key.clone(), e))?;
        let chunks = segment::read(&bytes).map_err(|e| LogsError::Segment(seg.key.clone(), e))?;
        let places = reassembly.place(&seg.key, &seg.session, &chunks, file)?;
        for (chunk, place) in chunks.iter().zip(places) {
            let Some(Place { rel, start, end }) = place else {
                continue;
            };
            let target: PathBuf = out.join(&rel);
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| LogsError::Write(dir.display().to_string(), e))?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&target)
                .map_err(|e| LogsError::Write(target.display().to_string(), e))?;
            f.write_all_at(&chunk.data, start)
                .map_err(|e| LogsError::Write(target.display().to_string(), e))?;
            let size = written.entry(rel).or_default();
            *size = (*size).max(end);
        }
    }
    Ok(written)
}

/// Streams one file was probably shipped as more than once: after a checkpoint is lost or
/// set aside, the sidecar ships every file again from its beginning under the new
/// checkpoint's epoch (beside what is there, never over it), so the store holds the same
/// bytes under two stream names. Each group lists such streams of one session (as in
/// [`Written`], longest first), each under an epoch of its own, of one name but for
/// rotation numbers (a file is named as it was when each checkpoint first saw it:
/// `raylet.out`, later `raylet.out.1` or `raylet.1.out`), each one's bytes the start of the
/// first's. Streams shorter than [`SAME_START`] bytes are not compared.
pub fn reshipped(out: &Path, written: &Written) -> Result<Vec<Vec<String>>, LogsError> {
    // Streams that could be the same file have one name and begin with the same bytes:
    // compared in full only within such a bucket, so ten thousand worker logs cost one
    // short read each. (session, name, first bytes) → (stream, epoch, size).
    type Streams<'a> = Vec<(&'a str, &'a str, u64)>;
    let mut buckets: BTreeMap<(&str, String, Vec<u8>), Streams<'_>> = BTreeMap::new();
    for (rel, &size) in written {
        let Some((session, name, epoch)) = parts(rel) else {
            continue;
        };
        if size < SAME_START as u64 {
            continue;
        }
        let mut head = vec![0u8; SAME_START];
        open(out, rel)?
            .read_exact_at(&mut head, 0)
            .map_err(|e| LogsError::Read(out.join(rel).display().to_string(), e))?;
        buckets
            .entry((session, unrotated(name), head))
            .or_default()
            .push((rel, epoch, size));
    }
    let mut groups = Vec::new();
    for (_, mut streams) in buckets {
        if streams.len() < 2 {
            continue;
        }
        streams.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(b.0)));
        let mut taken = vec![false; streams.len()];
        for i in 0..streams.len() {
            if taken[i] {
                continue;
            }
            let (longest, epoch, _) = streams[i];
            let mut group = vec![longest.to_string()];
            // One epoch never ships one file twice: one stream per epoch.
            let mut epochs = vec![epoch];
            for j in i + 1..streams.len() {
                let (rel, other, size) = streams[j];
                if !taken[j] && !epochs.contains(&other) && starts_with(out, longest, rel, size)? {
                    taken[j] = true;
                    epochs.push(other);
                    group.push(rel.to_string());
                }
            }
            if group.len() > 1 {
                groups.push(group);
            }
        }
    }
    Ok(groups)
}

/// How many first bytes two streams must share to be compared as one file shipped twice.
pub const SAME_START: usize = 64;

/// `<session>`, `<name>` and `<epoch>` of `<session>/<name>~<epoch>.<id>`.
fn parts(rel: &str) -> Option<(&str, &str, &str)> {
    let (session, rest) = rel.split_once('/')?;
    let (name, tag) = rest.rsplit_once('~')?;
    Some((session, name, tag.split_once('.').map_or(tag, |(e, _)| e)))
}

/// A file name without its rotation numbers: `raylet.out.1` (Python's rotating handler)
/// and `raylet.1.out` (Ray's C++ logs) are `raylet.out`.
fn unrotated(name: &str) -> String {
    let (dir, base) = name.rsplit_once('/').map_or(("", name), |(d, b)| (d, b));
    let base: Vec<&str> = base
        .split('.')
        .enumerate()
        .filter(|(i, p)| *i == 0 || p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        .map(|(_, p)| p)
        .collect();
    if dir.is_empty() {
        base.join(".")
    } else {
        format!("{dir}/{}", base.join("."))
    }
}

fn open(out: &Path, rel: &str) -> Result<std::fs::File, LogsError> {
    std::fs::File::open(out.join(rel))
        .map_err(|e| LogsError::Read(out.join(rel).display().to_string(), e))
}

/// Whether the first `len` bytes of `long` are those of `short` (`len` long).
fn starts_with(out: &Path, long: &str, short: &str, len: u64) -> Result<bool, LogsError> {
    let (a, b) = (open(out, long)?, open(out, short)?);
    let read = |f: &std::fs::File, rel: &str, buf: &mut [u8], at: u64| {
        f.read_exact_at(buf, at)
            .map_err(|e| LogsError::Read(out.join(rel).display().to_string(), e))
    };
    let (mut x, mut y) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    let mut at = 0;
    while at < len {
        let n = (len - at).min(x.len() as u64) as usize;
        read(&a, long, &mut x[..n], at)?;
        read(&b, short, &mut y[..n], at)?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshipped_streams_are_found_by_their_bytes_across_epochs() {
        let out = std::env::temp_dir().join(format!("rayshape-reshipped-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let line = |s: &str| s.repeat(40).into_bytes();
        let (raylet, gcs) = (line("raylet line\n"), line("gcs line\n"));
        let mut written = Written::new();
        let mut put = |rel: &str, bytes: &[u8]| {
            let p = out.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            written.insert(rel.to_string(), bytes.len() as u64);
        };
        // Shipped under the first epoch, then again (grown, renamed by rotation) under two
        // more.
        put("s1/raylet.out~aaaa.1", &raylet[..300]);
        put("s1/raylet.out.1~bbbb.4", &raylet);
        put("s1/raylet.out~cccc.2", &raylet[..400]);
        // Same start, other bytes later: another file.
        let mut other = raylet[..200].to_vec();
        other.extend_from_slice(b"something else entirely");
        put("s1/raylet.out~dddd.9", &other);
        // The same epoch twice: two files (a rotation cascade), never one shipped twice.
        put("s1/gcs_server.out~aaaa.2", &gcs);
        put("s1/gcs_server.out.1~aaaa.3", &gcs[..100]);
        // Shipped again under another epoch, rotated as Ray's C++ logs are: one stream of
        // each epoch in the group.
        put("s1/gcs_server.1.out~bbbb.9", &gcs);
        // Another session, and a stream too short to tell.
        put("s2/raylet.out~bbbb.1", &raylet);
        put("s1/tiny~bbbb.5", b"short");
        put("s1/tiny~cccc.6", b"short");
        // Two workers of one job begin alike; one's bytes the start of the other's, but
        // they are two files.
        let job = line(":job_id:01000000\n:actor_name:Trainer\n");
        put("s1/worker-aa.out~aaaa.10", &job);
        put("s1/worker-bb.out~bbbb.11", &job[..300]);
        let groups = reshipped(&out, &written).unwrap();
        let names = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            groups,
            vec![
                names(&["s1/gcs_server.1.out~bbbb.9", "s1/gcs_server.out~aaaa.2"]),
                names(&[
                    "s1/raylet.out.1~bbbb.4",
                    "s1/raylet.out~cccc.2",
                    "s1/raylet.out~aaaa.1",
                ]),
            ]
        );
        assert_eq!(unrotated("events/event_GCS.3.log"), "events/event_GCS.log");
        assert_eq!(unrotated("worker-01aa.12.out.2"), "worker-01aa.out");
        let _ = std::fs::remove_dir_all(&out);
    }
}

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

//! `rayshape-sidecar logs`: what is in a store, and the log files put back together.

use crate::segment;
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
    Segment(String, std::io::Error),
    #[error(
        "segment {key} holds bytes {start}..{end} of {stream}, which another segment also holds: the store has a duplicate"
    )]
    Overlap {
        key: String,
        stream: String,
        start: u64,
        end: u64,
    },
    #[error("cannot write {0}: {1}")]
    Write(String, std::io::Error),
}

/// One segment object: `<ns>/<cluster>/<pod>-<uid>/<session>/<sequence>.tar.zst`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentKey {
    pub pod: String,
    pub session: String,
    pub sequence: u64,
    pub key: String,
}

fn parse_key(rel: &str, full: &str) -> Option<SegmentKey> {
    let parts: Vec<&str> = rel.split('/').collect();
    let [ns, cluster, pod, session, file] = parts.as_slice() else {
        return None;
    };
    let seq = file.strip_suffix(".tar.zst")?.parse().ok()?;
    Some(SegmentKey {
        pod: format!("{ns}/{cluster}/{pod}"),
        session: session.to_string(),
        sequence: seq,
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

/// Files reassembled, by `<session>/<name>~<id>`, with their sizes.
pub type Written = BTreeMap<String, u64>;

/// Reassemble a pod's files (optionally one session, optionally only streams whose name is
/// `file`) into `out/<session>/<name>~<id>`. Chunks must not overlap: an overlap would be a
/// duplicate, and is an error.
pub async fn get(
    sink: &Sink,
    pod: &str,
    session: Option<&str>,
    file: Option<&str>,
    out: &Path,
) -> Result<Written, LogsError> {
    let mut written: Written = BTreeMap::new();
    let mut ranges: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
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
        for chunk in segment::read(&bytes).map_err(|e| LogsError::Segment(seg.key.clone(), e))? {
            let name = chunk
                .stream
                .rsplit_once('~')
                .map_or(chunk.stream.as_str(), |(n, _)| n);
            if file.is_some_and(|f| f != name && f != chunk.stream) {
                continue;
            }
            let rel = format!("{}/{}", seg.session, chunk.stream);
            let (start, end) = (chunk.offset, chunk.offset + chunk.data.len() as u64);
            let r = ranges.entry(rel.clone()).or_default();
            if start < end && r.iter().any(|(s, e)| start < *e && *s < end) {
                return Err(LogsError::Overlap {
                    key: seg.key.clone(),
                    stream: rel,
                    start,
                    end,
                });
            }
            r.push((start, end));
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

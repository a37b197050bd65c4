//! The shipping loop: scan, plan a segment, record the plan, upload it, commit it.
//!
//! Nothing is marked shipped before the store has accepted its segment, and a segment's key
//! and bytes depend only on its plan, so a crash at any point neither loses nor duplicates
//! a byte that is still on disk (see `checkpoint` for the protocol).

use crate::checkpoint::{Checkpoint, CheckpointError, Chunk, Plan};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::segment::{self, Part};
use crate::sink::{Sink, segment_key};
use crate::tracker::Tracker;
use object_store::{ObjectStoreExt, PutPayload};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "the shutdown deadline passed with {0} bytes not yet shipped; they stay on disk and in the checkpoint"
    )]
    Deadline(u64),
}

pub struct Shipper {
    cfg: Config,
    sink: Sink,
    ck: Checkpoint,
    tracker: Tracker,
    metrics: Arc<Metrics>,
    rng: u64,
    /// Set when a stop is first seen: the final flush must end by then.
    deadline: Option<Instant>,
}

impl Shipper {
    pub fn new(cfg: Config, sink: Sink, metrics: Arc<Metrics>) -> Result<Shipper, ShipError> {
        let ck = Checkpoint::load(&cfg.checkpoint)?;
        metrics.lost_bytes.inc_by(ck.lost_bytes);
        let tracker = Tracker::new(&cfg.root);
        let rng = std::process::id() as u64
            ^ Instant::now().elapsed().as_nanos() as u64
            ^ 0x9e37_79b9_7f4a_7c15;
        Ok(Shipper {
            cfg,
            sink,
            ck,
            tracker,
            metrics,
            rng,
            deadline: None,
        })
    }

    /// The sink, for callers that write beside the shipper.
    pub fn sink(&self) -> Sink {
        self.sink.clone()
    }

    /// Ship until `stop` turns true, then flush what remains within the shutdown deadline.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), ShipError> {
        self.scan()?;
        if let Some(plan) = self.ck.pending.clone() {
            tracing::info!(session = %plan.session, sequence = plan.sequence, "finishing the segment pending at the last stop");
            self.execute(plan, &mut stop).await?;
        }
        loop {
            if self.stopping(&stop) {
                return self.drain(&mut stop).await;
            }
            self.scan()?;
            while self.flush_due() && !self.stopping(&stop) {
                let Some(plan) = self.plan()? else { break };
                self.execute(plan, &mut stop).await?;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.scan_interval) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Whether a stop was requested; the first time, this starts the shutdown deadline.
    fn stopping(&mut self, stop: &watch::Receiver<bool>) -> bool {
        if *stop.borrow() && self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.cfg.shutdown_deadline);
            tracing::info!(
                deadline_s = self.cfg.shutdown_deadline.as_secs_f64(),
                "final flush"
            );
        }
        self.deadline.is_some()
    }

    /// The final flush after SIGTERM.
    async fn drain(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), ShipError> {
        loop {
            self.scan()?;
            let Some(plan) = self.plan()? else {
                tracing::info!("everything shipped");
                return Ok(());
            };
            self.execute(plan, stop).await?;
        }
    }

    fn scan(&mut self) -> Result<(), ShipError> {
        let report = self.tracker.scan(&mut self.ck);
        for (path, e) in &report.unreadable {
            self.metrics.unreadable_files.inc();
            tracing::error!(path = %path.display(), error = %e, "cannot open log file; it is skipped, the others continue");
        }
        if report.lost > 0 {
            self.ck.lost_bytes += report.lost;
            self.metrics.lost_bytes.inc_by(report.lost);
            tracing::warn!(
                bytes = report.lost,
                "log bytes were removed (rotation or truncation) before they could be read"
            );
        }
        if report.changed {
            self.ck.save(&self.cfg.checkpoint)?;
        }
        self.update_gauges();
        Ok(())
    }

    fn unshipped(&self) -> u64 {
        self.ck
            .files
            .iter()
            .map(|f| f.size.saturating_sub(f.shipped))
            .sum()
    }

    fn update_gauges(&self) {
        self.metrics.unshipped_bytes.set(self.unshipped() as i64);
        self.metrics.files.set(self.ck.files.len() as i64);
        let age = self
            .tracker
            .oldest_waiting()
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.metrics.oldest_unshipped_seconds.set(age);
    }

    fn flush_due(&self) -> bool {
        self.unshipped() >= self.cfg.flush_bytes
            || self
                .tracker
                .oldest_waiting()
                .is_some_and(|t| t.elapsed() >= self.cfg.flush_age)
    }

    /// The next segment: new bytes of one session's files, up to the size bound, recorded as
    /// pending before anything is uploaded.
    fn plan(&mut self) -> Result<Option<Plan>, ShipError> {
        let mut sessions: Vec<&str> = self
            .ck
            .files
            .iter()
            .filter(|f| f.shipped < f.size || !f.announced)
            .filter(|f| self.tracker.open.contains_key(&f.id))
            .map(|f| f.session.as_str())
            .collect();
        sessions.sort();
        let Some(session) = sessions.first().map(|s| s.to_string()) else {
            return Ok(None);
        };
        let mut budget = self.cfg.flush_bytes;
        let mut chunks = Vec::new();
        let mut files: Vec<_> = self
            .ck
            .files
            .iter()
            .filter(|f| f.session == session && self.tracker.open.contains_key(&f.id))
            .collect();
        files.sort_by_key(|f| f.id);
        for f in files {
            if f.shipped < f.size && budget > 0 {
                let end = f.size.min(f.shipped + budget);
                budget -= end - f.shipped;
                chunks.push(Chunk {
                    id: f.id,
                    start: f.shipped,
                    end,
                });
            } else if !f.announced && f.size == 0 {
                chunks.push(Chunk {
                    id: f.id,
                    start: 0,
                    end: 0,
                });
            }
        }
        if chunks.is_empty() {
            return Ok(None);
        }
        let plan = Plan {
            sequence: self.ck.sequences.get(&session).copied().unwrap_or(0),
            session,
            chunks,
        };
        self.ck.pending = Some(plan.clone());
        self.ck.save(&self.cfg.checkpoint)?;
        Ok(Some(plan))
    }

    /// Upload a recorded plan and commit it, retrying for as long as it takes, or until the
    /// shutdown deadline once a stop was requested.
    async fn execute(
        &mut self,
        mut plan: Plan,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), ShipError> {
        let key = segment_key(&self.cfg.pod_prefix(), &plan.session, plan.sequence);
        let path = self.sink.path(&key);
        // After a restart, a planned file may be gone. If the store has the segment, the
        // upload had succeeded; if not, the missing bytes are lost.
        let missing: Vec<Chunk> = plan
            .chunks
            .iter()
            .filter(|c| !self.tracker.open.contains_key(&c.id))
            .cloned()
            .collect();
        if !missing.is_empty() {
            if self.sink.store.head(&path).await.is_ok() {
                tracing::info!(key = %key, "the pending segment is already in the store");
                self.commit(&plan, 0, 0);
                return Ok(());
            }
            let lost: u64 = missing.iter().map(|c| c.end - c.start).sum();
            self.ck.lost_bytes += lost;
            self.metrics.lost_bytes.inc_by(lost);
            plan.chunks
                .retain(|c| self.tracker.open.contains_key(&c.id));
            tracing::warn!(
                bytes = lost,
                "log files of the pending segment were removed before it was uploaded"
            );
        }
        let names: Vec<(String, u64)> = plan
            .chunks
            .iter()
            .map(|c| {
                let f = self
                    .ck
                    .file(c.id)
                    .expect("planned files are in the checkpoint");
                (segment::entry_name(&f.name, f.id, c.start), c.end - c.start)
            })
            .collect();
        let parts: Vec<Part<'_>> = plan
            .chunks
            .iter()
            .zip(&names)
            .map(|(c, (entry, len))| Part {
                entry: entry.clone(),
                file: &self.tracker.open[&c.id].file,
                offset: c.start,
                len: *len,
            })
            .collect();
        let raw: u64 = names.iter().map(|(_, l)| l).sum();
        let bytes = match segment::build(&parts, self.cfg.zstd_level) {
            Ok(b) => b,
            Err(e) => {
                // A file shrank under us: drop the plan; the next scan sees the truncation.
                tracing::warn!(error = %e, "could not read the planned bytes; planning again");
                self.ck.pending = None;
                let _ = self.ck.save(&self.cfg.checkpoint);
                return Ok(());
            }
        };
        drop(parts);
        self.metrics.bytes_read.inc_by(raw);
        let payload = PutPayload::from(bytes::Bytes::from(bytes));
        let size = payload.content_length() as u64;
        let mut backoff = self.cfg.retry_initial;
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            let r = self.sink.store.put(&path, payload.clone()).await;
            self.metrics
                .upload_seconds
                .observe(started.elapsed().as_secs_f64());
            match r {
                Ok(_) => break,
                Err(e) => {
                    attempt += 1;
                    self.metrics.upload_errors.inc();
                    if attempt == 1 || attempt.is_power_of_two() {
                        tracing::warn!(key = %key, attempt, error = %e, "upload failed; retrying");
                    }
                }
            }
            let mut wait = self.jitter(backoff);
            if self.stopping(stop)
                && let Some(d) = self.deadline
            {
                // Keep trying until the deadline itself, not just until the next backoff.
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ShipError::Deadline(self.unshipped()));
                }
                wait = wait.min(left).min(Duration::from_secs(1));
            }
            // Wait for the next attempt while still following files at the scan interval:
            // during a long outage, files are created, rotated and deleted all the same.
            let until = Instant::now() + wait;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let nap = left.min(self.cfg.scan_interval);
                if self.deadline.is_some() {
                    tokio::time::sleep(nap).await;
                } else {
                    // A stop cuts the wait short: the deadline then bounds the retries.
                    tokio::select! {
                        _ = tokio::time::sleep(nap) => {}
                        _ = stop.changed() => {}
                    }
                }
                self.scan()?;
                if self.stopping(stop) && self.deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
            backoff = (backoff * 2).min(self.cfg.retry_max);
        }
        self.commit(&plan, raw, size);
        Ok(())
    }

    fn commit(&mut self, plan: &Plan, raw: u64, compressed: u64) {
        for c in &plan.chunks {
            if let Some(f) = self.ck.file_mut(c.id) {
                f.shipped = f.shipped.max(c.end);
                f.announced = true;
                if f.shipped >= f.size
                    && let Some(o) = self.tracker.open.get_mut(&c.id)
                {
                    o.waiting_since = None;
                }
            }
        }
        self.ck
            .sequences
            .insert(plan.session.clone(), plan.sequence + 1);
        self.ck.pending = None;
        if let Err(e) = self.ck.save(&self.cfg.checkpoint) {
            // The segment is in the store; if this checkpoint is never written, the plan is
            // uploaded again to the same key after a restart: no loss, no duplicate.
            tracing::error!(error = %e, "cannot save the checkpoint");
        }
        self.metrics.segments.inc();
        self.metrics.bytes_shipped.inc_by(raw);
        self.metrics.bytes_uploaded.inc_by(compressed);
        self.update_gauges();
        tracing::debug!(session = %plan.session, sequence = plan.sequence, bytes = raw, compressed, "segment shipped");
    }

    /// Full jitter: a random wait between half the backoff and the backoff.
    fn jitter(&mut self, d: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = 0.5 + (self.rng % 1000) as f64 / 2000.0;
        d.mul_f64(frac)
    }
}

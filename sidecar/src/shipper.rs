//! The shipping loop: scan, plan a segment, record the plan, upload it, commit it.
//!
//! Nothing is marked shipped before the store has accepted its segment, and a key is only
//! ever given the bytes of one plan (see `checkpoint` for the protocol), so a crash at any
//! point neither loses nor duplicates nor overwrites a byte that is still on disk.
//!
//! A sidecar that cannot ship does not stop: Ray's pod would be held not Ready and its
//! sidecar restarted forever. Without a sink, a usable checkpoint or a store that takes our
//! requests, it stays up, serves its metrics with [`State`] saying why it is not shipping,
//! logs the reason when it changes, and tries again (with backoff and random jitter).
//!
//! Scanning, compression and checkpoint writes run on the runtime's blocking threads, so
//! `/metrics` answers while they work.

use crate::checkpoint::{Checkpoint, CheckpointError, Chunk, Invalid, Plan};
use crate::config::{Config, Sink as SinkConfig};
use crate::metrics::Metrics;
use crate::segment::{self, Part};
use crate::sink::{self, Refusal, Sink, segment_key};
use crate::tracker::{self, Tracker};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::fs::File;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the sidecar is doing, as the `rayshape_sidecar_state` metric says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Before the store first answered.
    Starting,
    /// The store takes our segments (or would: nothing is waiting).
    Shipping,
    /// No sink is configured: nothing is followed; Ray's logs stay on disk as Ray wrote
    /// them.
    NoSink,
    /// The checkpoint cannot be read or written (volume full, read-only, permissions).
    CheckpointError,
    /// The store refuses our credentials or permissions (401/403; a `file://` directory not
    /// writable, or on a read-only volume).
    Unauthorized,
    /// The bucket or container does not exist.
    SinkNotFound,
    /// The store cannot be reached, or fails (network, timeouts, 5xx).
    StoreUnreachable,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Starting,
        State::Shipping,
        State::NoSink,
        State::CheckpointError,
        State::Unauthorized,
        State::SinkNotFound,
        State::StoreUnreachable,
    ];

    /// The metric's label value.
    pub fn label(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Shipping => "shipping",
            State::NoSink => "no_sink",
            State::CheckpointError => "checkpoint_error",
            State::Unauthorized => "unauthorized",
            State::SinkNotFound => "sink_not_found",
            State::StoreUnreachable => "store_unreachable",
        }
    }

    fn from_refusal(r: Refusal) -> State {
        match r {
            Refusal::Unauthorized => State::Unauthorized,
            Refusal::NotFound => State::SinkNotFound,
            Refusal::Unreachable => State::StoreUnreachable,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(
        "the shutdown deadline passed with {0} bytes not yet shipped; they stay on disk and in the checkpoint"
    )]
    Deadline(u64),
    /// Stopped while the checkpoint could not be opened: nothing was followed or shipped.
    #[error(
        "stopped while the checkpoint could not be used ({0}): nothing was shipped; Ray's logs stay on disk"
    )]
    NoCheckpoint(String),
    /// A programming error: a blocking task panicked, or state went missing.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why one step of work did not complete.
enum Failure {
    Store(object_store::Error),
    Checkpoint(String),
    Deadline,
    Internal(String),
}

impl From<ShipError> for Failure {
    fn from(e: ShipError) -> Failure {
        match e {
            ShipError::Deadline(_) => Failure::Deadline,
            ShipError::NoCheckpoint(s) => Failure::Checkpoint(s),
            ShipError::Internal(s) => Failure::Internal(s),
        }
    }
}

enum Progress {
    /// Nothing is due (or, when stopping, nothing is left).
    Idle,
    /// A segment went out (or a plan was settled): look again at once.
    Moved,
    /// Bytes wait in files that are closed for now (the descriptor cap): scan, then look
    /// again.
    Blocked,
}

/// The checkpoint and the files it follows, moved to a blocking thread for file work.
struct Inner {
    ck: Checkpoint,
    tracker: Tracker,
}

/// A pending plan's segment, kept across upload retries so it is compressed once.
struct Built {
    session: String,
    sequence: u64,
    bytes: bytes::Bytes,
    raw: u64,
}

/// Where a sink can come from after start-up: the configuration file, read again.
pub type SinkSource = Box<dyn Fn() -> Result<Option<SinkConfig>, String> + Send>;

/// How often the configuration is read again while there is no sink.
pub const SINK_RELOAD: Duration = Duration::from_secs(10);

pub struct Shipper {
    cfg: Config,
    sink: Option<Sink>,
    sink_source: Option<SinkSource>,
    /// Why the last reading of the configuration gave no usable sink, if it failed.
    reload_problem: Option<String>,
    inner: Option<Box<Inner>>,
    metrics: Arc<Metrics>,
    state: State,
    store_state: State,
    checkpoint_problem: Option<String>,
    /// Whether the store refuses to overwrite (`PutMode::Create`); `None` until probed.
    create_only: Option<bool>,
    built: Option<Built>,
    /// Failed attempts in a row.
    failures: u32,
    /// Files followed when freed memory was last given back.
    trimmed_at: usize,
    /// When freed memory was last given back.
    trimmed: Instant,
    /// Segments went out since freed memory was last given back.
    shipped_since_trim: bool,
    backoff: Duration,
    next_attempt: Instant,
    /// Set when a stop is first seen: the final flush must end by then.
    deadline: Option<Instant>,
}

impl Shipper {
    /// A shipper for `cfg`; `sink` is `cfg.sink` opened (or `None`: it waits for one,
    /// reading `sink_source` again now and then).
    pub fn new(
        cfg: Config,
        sink: Option<Sink>,
        sink_source: Option<SinkSource>,
        metrics: Arc<Metrics>,
    ) -> Shipper {
        let backoff = cfg.retry_initial;
        let s = Shipper {
            cfg,
            sink,
            sink_source,
            reload_problem: None,
            inner: None,
            metrics,
            state: State::Starting,
            store_state: State::Starting,
            checkpoint_problem: None,
            create_only: None,
            built: None,
            failures: 0,
            trimmed_at: 0,
            trimmed: Instant::now(),
            shipped_since_trim: false,
            backoff,
            next_attempt: Instant::now(),
            deadline: None,
        };
        s.metrics
            .state
            .with_label_values(&[State::Starting.label()])
            .set(1);
        s
    }

    /// Ship until `stop` turns true, then flush what remains within the shutdown deadline.
    /// Returns an error only when the deadline passed with bytes unshipped, or on a
    /// programming error; the store and the volume failing are waited out.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), ShipError> {
        if !self.prepare(&mut stop).await? {
            return Ok(());
        }
        loop {
            // Before the scan: the final flush's scans look at every file.
            let stopping = self.stopping(&stop);
            self.scan().await?;
            if Instant::now() >= self.next_attempt {
                match self.work(stopping, &mut stop).await {
                    Ok(Progress::Moved) => {
                        self.succeeded();
                        continue;
                    }
                    Ok(Progress::Idle) => {
                        self.succeeded();
                        self.settle_memory();
                        if stopping {
                            tracing::info!("everything shipped");
                            return Ok(());
                        }
                    }
                    Ok(Progress::Blocked) => self.succeeded(),
                    Err(Failure::Deadline) => return Err(ShipError::Deadline(self.unshipped())),
                    Err(Failure::Internal(e)) => return Err(ShipError::Internal(e)),
                    Err(Failure::Store(e)) => {
                        self.store_state = State::from_refusal(sink::classify(&e));
                        self.failed(e.to_string());
                    }
                    Err(Failure::Checkpoint(e)) => {
                        self.checkpoint_problem = Some(e.clone());
                        self.failed(e);
                    }
                }
            }
            // The next scan, or the next attempt if one is due sooner (after a failure).
            let until_attempt = self.next_attempt.saturating_duration_since(Instant::now());
            let mut nap = if until_attempt.is_zero() {
                self.cfg.scan_interval
            } else {
                self.cfg.scan_interval.min(until_attempt)
            };
            if let Some(d) = self.deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ShipError::Deadline(self.unshipped()));
                }
                nap = nap.min(left);
            }
            self.nap(nap.max(Duration::from_millis(1)), &mut stop).await;
        }
    }

    /// A sink and a checkpoint, without which nothing is followed. `false`: stopped first.
    async fn prepare(&mut self, stop: &mut watch::Receiver<bool>) -> Result<bool, ShipError> {
        loop {
            let stopping = self.stopping(stop);
            if self.sink.is_none() {
                self.reload_sink();
            }
            if self.sink.is_none() {
                self.show_state(Some(
                    "no sink is configured: set sidecar.logSink in the webhook's configuration (a sidecar without a sink asks again every minute), or sink.url in this sidecar's configuration file or RAYSHAPE_SINK_URL; Ray's logs stay on disk until one is",
                ));
                if stopping {
                    tracing::info!("stopping without a sink: nothing was shipped");
                    return Ok(false);
                }
                self.nap(SINK_RELOAD, stop).await;
                continue;
            }
            match self.open_checkpoint().await? {
                Ok(()) => {
                    self.checkpoint_problem = None;
                    self.show_state(None);
                    return Ok(true);
                }
                Err(e) => {
                    self.checkpoint_problem = Some(e.clone());
                    self.failed(e.clone());
                    if stopping {
                        return Err(ShipError::NoCheckpoint(e));
                    }
                    let wait = self.next_attempt.saturating_duration_since(Instant::now());
                    self.nap(wait, stop).await;
                }
            }
        }
    }

    fn reload_sink(&mut self) {
        let Some(source) = &self.sink_source else {
            return;
        };
        let problem = match source() {
            Ok(Some(cfg)) => match Sink::open(&cfg) {
                Ok(s) => {
                    tracing::info!(sink = %cfg.url, "a sink was configured");
                    self.cfg.sink = Some(cfg);
                    self.sink = Some(s);
                    None
                }
                Err(e) => Some(format!("the configured sink cannot be used yet: {e}")),
            },
            Ok(None) => None,
            Err(e) => Some(format!("cannot read the configuration again: {e}")),
        };
        // Once per change, not every time the file is read.
        if problem != self.reload_problem {
            if let Some(p) = &problem {
                tracing::warn!(problem = %p, "no usable sink yet");
            }
            self.reload_problem = problem;
        }
    }

    /// The displayed state: no sink, then checkpoint trouble, then what the store says.
    fn current(&self) -> State {
        if self.sink.is_none() {
            State::NoSink
        } else if self.checkpoint_problem.is_some() {
            State::CheckpointError
        } else {
            self.store_state
        }
    }

    /// Set the state metric; log when the state changes (once per change, not per retry).
    fn show_state(&mut self, reason: Option<&str>) {
        let now = self.current();
        if now == self.state {
            return;
        }
        self.metrics
            .state
            .with_label_values(&[self.state.label()])
            .set(0);
        self.metrics.state.with_label_values(&[now.label()]).set(1);
        let reason = reason.unwrap_or("");
        match now {
            State::Shipping | State::Starting => {
                tracing::info!(state = now.label(), "state changed")
            }
            State::NoSink => tracing::warn!(state = now.label(), reason, "not shipping"),
            State::Unauthorized => tracing::error!(
                state = now.label(),
                reason,
                "not shipping: the store refuses our credentials or permissions; check the sink URL, bucket and credentials (for a file:// sink, that the sidecar's user may write the directory and its volume is not read-only) (retrying)"
            ),
            State::SinkNotFound => tracing::error!(
                state = now.label(),
                reason,
                "not shipping: the bucket or container does not exist; create it or fix the sink URL (retrying)"
            ),
            State::StoreUnreachable => tracing::warn!(
                state = now.label(),
                reason,
                "not shipping: the store cannot be reached or fails (retrying)"
            ),
            State::CheckpointError => tracing::error!(
                state = now.label(),
                reason,
                "not shipping: the checkpoint cannot be read or written (retrying)"
            ),
        }
        self.state = now;
    }

    fn succeeded(&mut self) {
        self.backoff = self.cfg.retry_initial;
        self.failures = 0;
        if self.create_only.is_some() {
            self.store_state = State::Shipping;
        }
        self.show_state(None);
    }

    /// A step failed: show why, and wait a jittered backoff before the next attempt
    /// (during which files are still followed at the scan interval).
    fn failed(&mut self, reason: String) {
        self.failures = self.failures.saturating_add(1);
        self.show_state(Some(&reason));
        tracing::debug!(error = %reason, backoff_s = self.backoff.as_secs_f64(), "retrying");
        let mut wait = crate::random::jitter(self.backoff);
        if let Some(d) = self.deadline {
            // Keep trying until the deadline itself, not just until the next backoff.
            wait = wait
                .min(d.saturating_duration_since(Instant::now()))
                .min(Duration::from_secs(1));
        }
        self.next_attempt = Instant::now() + wait;
        self.backoff = (self.backoff * 2).min(self.cfg.retry_max);
    }

    /// Whether a stop was requested; the first time, this starts the shutdown deadline.
    fn stopping(&mut self, stop: &watch::Receiver<bool>) -> bool {
        if *stop.borrow() {
            self.start_deadline();
        }
        self.deadline.is_some()
    }

    fn start_deadline(&mut self) {
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.cfg.shutdown_deadline);
            self.next_attempt = Instant::now();
            tracing::info!(
                deadline_s = self.cfg.shutdown_deadline.as_secs_f64(),
                "final flush"
            );
        }
    }

    /// Sleep, cut short by a stop request.
    async fn nap(&mut self, d: Duration, stop: &mut watch::Receiver<bool>) {
        if self.deadline.is_some() {
            tokio::time::sleep(d).await;
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            r = stop.changed() => {
                if r.is_err() {
                    // The signal handler is gone: nothing can stop us but a deadline.
                    self.start_deadline();
                }
            }
        }
    }

    /// Await `fut`, but not past the shutdown deadline, which a stop request during the
    /// wait starts: a slow upload that is still succeeding does not hold the pod.
    async fn bounded<T>(
        &mut self,
        fut: impl Future<Output = T>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<T, Failure> {
        tokio::pin!(fut);
        loop {
            if let Some(d) = self.deadline {
                return tokio::time::timeout_at(d.into(), &mut fut)
                    .await
                    .map_err(|_| Failure::Deadline);
            }
            tokio::select! {
                r = &mut fut => return Ok(r),
                c = stop.changed() => {
                    if c.is_err() || *stop.borrow() {
                        self.start_deadline();
                    }
                }
            }
        }
    }

    /// Run `f` on the checkpoint and files on a blocking thread.
    async fn blocking<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Inner) -> R + Send + 'static,
    ) -> Result<R, ShipError> {
        let Some(mut inner) = self.inner.take() else {
            return Err(ShipError::Internal("the checkpoint is not loaded".into()));
        };
        let (inner, r) = tokio::task::spawn_blocking(move || {
            let r = f(&mut inner);
            (inner, r)
        })
        .await
        .map_err(|e| ShipError::Internal(format!("a file task failed: {e}")))?;
        self.inner = Some(inner);
        Ok(r)
    }

    /// Load the checkpoint, setting aside one that is not ours (another pod's or sink's),
    /// corrupt or of another format, and start following files. The outer `Result` is for
    /// programming errors; the inner one says why the checkpoint cannot be had yet.
    async fn open_checkpoint(&mut self) -> Result<Result<(), String>, ShipError> {
        let path = self.cfg.checkpoint.clone();
        let uid = self.cfg.pod.uid.clone();
        let sink_id = self.cfg.sink.as_ref().map(sink::identity);
        let loaded = tokio::task::spawn_blocking(move || load_or_set_aside(&path, &uid, sink_id))
            .await
            .map_err(|e| ShipError::Internal(format!("a file task failed: {e}")))?;
        let (ck, aside) = match loaded {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        for (reason, to, why) in aside {
            self.metrics
                .checkpoints_set_aside
                .with_label_values(&[reason])
                .inc();
            tracing::warn!(
                reason,
                detail = %why,
                moved_to = %to,
                "the checkpoint was set aside, not adopted: its files are shipped again from their beginning, under a new epoch (nothing in the store is overwritten)"
            );
        }
        self.metrics.lost_bytes.inc_by(ck.lost_bytes);
        tracing::info!(epoch = %ck.epoch, files = ck.files.len(), "checkpoint loaded");
        let tracker = Tracker::new(
            &self.cfg.root,
            tracker::Settings {
                scan_interval: self.cfg.scan_interval,
                max_open: self.cfg.max_open_files,
            },
            &ck,
        );
        self.inner = Some(Box::new(Inner { ck, tracker }));
        Ok(Ok(()))
    }

    async fn scan(&mut self) -> Result<(), ShipError> {
        let path = self.cfg.checkpoint.clone();
        let now = Instant::now();
        // The final flush looks at every file: quiet ones may have had a last word.
        let thorough = self.deadline.is_some();
        let (report, saved) = self
            .blocking(move |inner| {
                let r = inner.tracker.scan(&mut inner.ck, now, thorough);
                inner.ck.lost_bytes += r.lost;
                // Sizes and new files need not survive a power cut: the old checkpoint may
                // come back (the directory is not synced), never an empty one.
                let saved = (r.changed || r.lost > 0)
                    .then(|| inner.ck.save(&path, false).map_err(|e| e.to_string()));
                (r, saved)
            })
            .await?;
        for (path, e) in &report.unreadable {
            self.metrics.unreadable_files.inc();
            tracing::error!(path = %path.display(), error = %e, "cannot open log file; it is skipped (and tried again now and then), the others continue");
        }
        if report.lost > 0 {
            self.metrics.lost_bytes.inc_by(report.lost);
            tracing::warn!(
                bytes = report.lost,
                "log bytes were removed (rotation or truncation) before they could be read"
            );
        }
        if report.closed_removed > 0 {
            self.metrics
                .closed_files_removed
                .inc_by(report.closed_removed);
            tracing::warn!(
                files = report.closed_removed,
                "log files closed while quiet were removed before they were looked at again; bytes written to them in between (if any) are unknown"
            );
        }
        self.give_back_memory();
        match saved {
            Some(Ok(())) => self.checkpoint_saved(),
            Some(Err(e)) if self.checkpoint_problem.is_none() => {
                self.checkpoint_problem = Some(e.clone());
                self.show_state(Some(&e));
            }
            Some(Err(_)) | None => {}
        }
        self.update_gauges();
        Ok(())
    }

    /// After the set of followed files changed a lot (the first scan of a node with
    /// thousands of files, a session ending), hand the memory its transient lists freed back
    /// to the system: glibc keeps it, scattered between long-lived allocations, and the
    /// sidecar runs within a small memory limit for days.
    fn give_back_memory(&mut self) {
        let files = self.inner.as_ref().map_or(0, |i| i.ck.files.len());
        if files.abs_diff(self.trimmed_at) < 256 {
            return;
        }
        self.trimmed_at = files;
        trim_heap();
        self.trimmed = Instant::now();
    }

    /// Nothing is due after segments went out: give back what building them took (the
    /// compressor's tables, the segment), at most every [`TRIM_EVERY`]. glibc keeps freed
    /// memory at the top of its heap for the next allocation, and after large buffers were
    /// freed it raises the bar for giving any back to twice their size; an idle sidecar
    /// would otherwise hold a segment's worth of pages it no longer uses (1.5 MiB with
    /// 10,000 files shipped).
    fn settle_memory(&mut self) {
        if self.shipped_since_trim && self.trimmed.elapsed() >= TRIM_EVERY {
            self.shipped_since_trim = false;
            trim_heap();
            self.trimmed = Instant::now();
        }
    }

    /// A checkpoint write went through: whatever kept it from being written is over.
    fn checkpoint_saved(&mut self) {
        if self.checkpoint_problem.take().is_some() {
            self.show_state(None);
        }
    }

    fn unshipped(&self) -> u64 {
        self.inner.as_ref().map_or(0, |i| {
            i.ck.files
                .values()
                .map(|f| f.size.saturating_sub(f.shipped))
                .sum()
        })
    }

    fn update_gauges(&self) {
        let Some(inner) = &self.inner else { return };
        self.metrics.unshipped_bytes.set(self.unshipped() as i64);
        self.metrics.files.set(inner.ck.files.len() as i64);
        self.metrics
            .open_files
            .set(inner.tracker.open_files() as i64);
        let age = inner
            .tracker
            .oldest_waiting()
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.metrics.oldest_unshipped_seconds.set(age);
    }

    fn flush_due(&self) -> bool {
        self.unshipped() >= self.cfg.flush_bytes
            || self.inner.as_ref().is_some_and(|i| {
                i.tracker
                    .oldest_waiting()
                    .is_some_and(|t| t.elapsed() >= self.cfg.flush_age)
            })
    }

    /// One step: probe the store once, finish the pending plan, or plan and ship the next
    /// segment if one is due (when stopping, whatever is left).
    async fn work(
        &mut self,
        stopping: bool,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Progress, Failure> {
        if self.create_only.is_none() {
            self.probe(stop).await?;
        }
        let pending = self.inner.as_ref().and_then(|i| i.ck.pending.clone());
        if let Some(plan) = pending {
            self.execute(plan, stop).await?;
            return Ok(Progress::Moved);
        }
        if !stopping && !self.flush_due() {
            return Ok(Progress::Idle);
        }
        let (plan, waiting) = self.plan().await??;
        self.checkpoint_saved();
        match plan {
            Some(plan) => {
                self.execute(plan, stop).await?;
                Ok(Progress::Moved)
            }
            // Files with bytes to read are closed for now (the descriptor cap): the next
            // scan opens them.
            None if stopping && waiting => Ok(Progress::Blocked),
            None => Ok(Progress::Idle),
        }
    }

    /// Prove we may write, and learn whether the store refuses to overwrite: the probe
    /// object is written, then written again create-only, which must be refused.
    async fn probe(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), Failure> {
        let Some(sink) = self.sink.clone() else {
            return Err(Failure::Internal("no sink to probe".into()));
        };
        let path = sink.path(&format!("{}/.rayshape-probe", self.cfg.pod_prefix()));
        // Create-only first: the key is there from an earlier start, and a role that may
        // create but not overwrite (GCS objectCreator, an S3 policy denying overwrites)
        // must still pass.
        let create = || PutOptions::from(PutMode::Create);
        let put = |opts| {
            sink.store
                .put_opts(&path, PutPayload::from_static(b""), opts)
        };
        let first = self.bounded(put(create()), stop).await?;
        let again = match first {
            // Made now: a second create-only put tells whether the store refuses it.
            Ok(_) => self.bounded(put(create()), stop).await?,
            Err(object_store::Error::AlreadyExists { .. }) => first,
            Err(
                object_store::Error::NotImplemented { .. }
                | object_store::Error::NotSupported { .. },
            ) => {
                self.bounded(put(PutOptions::default()), stop)
                    .await?
                    .map_err(Failure::Store)?;
                first
            }
            Err(e) => return Err(Failure::Store(e)),
        };
        let create_only = match again {
            Err(object_store::Error::AlreadyExists { .. }) => {
                tracing::info!(sink = %sink.url, "the store refuses to overwrite: segments are uploaded create-only");
                true
            }
            Ok(_) => {
                tracing::info!(sink = %sink.url, "the store does not refuse overwrites (create-only puts are ignored): every key is still written with one plan's bytes only");
                false
            }
            Err(e @ object_store::Error::NotImplemented { .. })
            | Err(e @ object_store::Error::NotSupported { .. }) => {
                tracing::info!(sink = %sink.url, error = %e, "create-only puts are not available: every key is still written with one plan's bytes only");
                false
            }
            Err(e) => return Err(Failure::Store(e)),
        };
        self.create_only = Some(create_only);
        self.store_state = State::Shipping;
        Ok(())
    }

    /// The next segment: new bytes of one session's open files, up to the size bound,
    /// recorded (with its reserved sequence number) and fsynced before anything is
    /// uploaded. Also says whether closed files wait with bytes to read.
    async fn plan(&mut self) -> Result<Result<(Option<Plan>, bool), Failure>, ShipError> {
        let path = self.cfg.checkpoint.clone();
        let budget = self.cfg.flush_bytes;
        self.blocking(move |inner| {
            let waits = |f: &crate::checkpoint::FileState| f.shipped < f.size || !f.announced;
            let open = |id: &u64| inner.tracker.is_open(*id);
            let waiting_closed = inner.ck.files.iter().any(|(id, f)| waits(f) && !open(id));
            let Some(session) = inner
                .ck
                .files
                .iter()
                .filter(|(id, f)| waits(f) && open(id))
                .map(|(_, f)| &*f.session)
                .min()
                .map(str::to_string)
            else {
                return Ok((None, waiting_closed));
            };
            let mut budget = budget;
            let mut chunks = Vec::new();
            for (id, f) in inner.ck.files.iter() {
                if *f.session != *session || !open(id) {
                    continue;
                }
                if f.shipped < f.size && budget > 0 {
                    let end = f.size.min(f.shipped + budget);
                    budget -= end - f.shipped;
                    chunks.push(Chunk {
                        id: *id,
                        start: f.shipped,
                        end,
                    });
                } else if !f.announced && f.size == 0 {
                    chunks.push(Chunk {
                        id: *id,
                        start: 0,
                        end: 0,
                    });
                }
            }
            if chunks.is_empty() {
                return Ok((None, waiting_closed));
            }
            let plan = reserve(&mut inner.ck, session, chunks);
            inner.ck.pending = Some(plan.clone());
            if let Err(e) = inner.ck.save(&path, true) {
                // Never upload a plan the disk does not hold: after a crash its sequence
                // number could be given to other bytes. Its number stays used.
                inner.ck.pending = None;
                return Err(Failure::Checkpoint(e.to_string()));
            }
            Ok((Some(plan), waiting_closed))
        })
        .await
    }

    /// Upload a recorded plan and commit it: one attempt. The caller retries.
    async fn execute(
        &mut self,
        plan: Plan,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Failure> {
        let Some(sink) = self.sink.clone() else {
            return Err(Failure::Internal("no sink".into()));
        };
        let Some(epoch) = self.inner.as_ref().map(|i| i.ck.epoch.clone()) else {
            return Err(Failure::Internal("the checkpoint is not loaded".into()));
        };
        let key = segment_key(&self.cfg.pod_prefix(), &plan.session, &epoch, plan.sequence);
        let path = sink.path(&key);
        let missing: Vec<Chunk> = plan
            .chunks
            .iter()
            .filter(|c| !self.inner.as_ref().is_some_and(|i| i.tracker.is_open(c.id)))
            .cloned()
            .collect();
        let built = match &self.built {
            Some(b) if b.session == plan.session && b.sequence == plan.sequence => Ok(()),
            _ if !missing.is_empty() => Err(format!(
                "{} of its files are gone or no longer the same",
                missing.len()
            )),
            // Built again after a restart: the same bytes, as they depend only on the plan.
            _ => self.build(&plan, &epoch, stop).await?,
        };
        if let Err(why) = built {
            // The plan cannot be rebuilt as recorded (after a restart, a planned file is
            // gone; or a file shrank while it was read). If the store has the segment, the
            // upload had succeeded; only "not found" means it has not.
            return match self.bounded(sink.store.head(&path), stop).await? {
                Ok(_) => {
                    tracing::info!(key = %key, "the pending segment is already in the store");
                    self.commit(plan, 0, 0).await
                }
                Err(object_store::Error::NotFound { .. }) => {
                    tracing::warn!(key = %key, reason = %why, "the pending segment cannot be built as planned and is not in the store: planning again, under a new sequence number");
                    self.drop_plan().await
                }
                // A role that may write but not read (S3 without s3:GetObject, GCS
                // objectCreator) cannot tell. Waiting would never end; the planned bytes
                // cannot be sent again anyway. Planning again keeps what is still on disk:
                // if the segment had arrived, those bytes arrive twice, which readers see
                // (`logs get` reports overlapping chunks) where a loss would be silent.
                Err(
                    e @ (object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }),
                ) => {
                    tracing::warn!(key = %key, reason = %why, error = %e, "the pending segment cannot be built as planned, and the store does not let this sidecar read whether it has it (grant read access to the sink, such as s3:GetObject or storage.objects.get, for an exact answer): planning again, under a new sequence number; if it had arrived, the bytes of its files still on disk are shipped a second time");
                    self.drop_plan().await
                }
                Err(e) => Err(Failure::Store(e)),
            };
        }
        let Some(b) = &self.built else {
            return Err(Failure::Internal("no segment was built".into()));
        };
        let (payload, raw) = (PutPayload::from(b.bytes.clone()), b.raw);
        let size = payload.content_length() as u64;
        let mode = if self.create_only == Some(true) {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        let started = Instant::now();
        let r = self
            .bounded(sink.store.put_opts(&path, payload, mode.into()), stop)
            .await?;
        self.metrics
            .upload_seconds
            .observe(started.elapsed().as_secs_f64());
        match r {
            Ok(_) => self.commit(plan, raw, size).await,
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Keys carry this checkpoint's epoch and a sequence number used by this plan
                // only: what is there is this plan's earlier upload (before a crash).
                tracing::info!(key = %key, "the segment was already uploaded");
                self.commit(plan, 0, 0).await
            }
            Err(e) => {
                self.metrics.upload_errors.inc();
                let attempt = self.failures + 1;
                if attempt == 1 || attempt.is_power_of_two() {
                    tracing::warn!(key = %key, attempt, error = %e, "upload failed; retrying");
                }
                Err(Failure::Store(e))
            }
        }
    }

    /// Compress the plan's bytes on a blocking thread. `Err(reason)`: a file shrank.
    async fn build(
        &mut self,
        plan: &Plan,
        epoch: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Result<(), String>, Failure> {
        let Some(inner) = &self.inner else {
            return Err(Failure::Internal("the checkpoint is not loaded".into()));
        };
        let mut parts: Vec<(String, Arc<File>, u64, u64)> = Vec::new();
        // Each file's recorded first bytes, checked after the read (below).
        let mut heads: Vec<(Arc<File>, u32, u64, Box<str>)> = Vec::new();
        for c in &plan.chunks {
            let (Some(f), Some(file)) = (inner.ck.files.get(&c.id), inner.tracker.file(c.id))
            else {
                return Ok(Err(format!("file {} is not open", c.id)));
            };
            heads.push((file.clone(), f.head_len, f.head_hash, f.name.clone()));
            parts.push((
                segment::entry_name(&f.name, epoch, c.id, c.start),
                file,
                c.start,
                c.end - c.start,
            ));
        }
        let level = self.cfg.zstd_level;
        let raw: u64 = parts.iter().map(|p| p.3).sum();
        let job = tokio::task::spawn_blocking(move || {
            let parts: Vec<Part<'_>> = parts
                .iter()
                .map(|(entry, file, offset, len)| Part {
                    entry: entry.clone(),
                    file,
                    offset: *offset,
                    len: *len,
                })
                .collect();
            let bytes = segment::build(&parts, level)?;
            // A file truncated and written again past the planned range (copytruncate)
            // before or while it was read gave the new stream's bytes at the old offsets:
            // its first bytes are no longer the recorded ones. Checked after the read, so
            // that a truncation during it is seen too; the plan is then dropped, and the
            // scan that follows counts the old bytes never read as lost. (A truncation
            // just after a good read drops it too: those bytes are then gone from the
            // disk and not shipped, so counting them lost is still exact.)
            if let Some((.., name)) = heads
                .iter()
                .find(|(file, len, hash, _)| !tracker::head_unchanged(file, *len, *hash))
            {
                return Err(std::io::Error::other(format!(
                    "{name} was truncated and written again after its plan was recorded (its first bytes changed)"
                )));
            }
            Ok(bytes)
        });
        let built = self
            .bounded(job, stop)
            .await?
            .map_err(|e| Failure::Internal(format!("the compression task failed: {e}")))?;
        match built {
            Ok(bytes) => {
                self.metrics.bytes_read.inc_by(raw);
                self.built = Some(Built {
                    session: plan.session.clone(),
                    sequence: plan.sequence,
                    bytes: bytes.into(),
                    raw,
                });
                Ok(Ok(()))
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the planned bytes");
                Ok(Err(e.to_string()))
            }
        }
    }

    /// A plan that cannot be uploaded as recorded and is not in the store is dropped; its
    /// sequence number stays used, so its key is never given other bytes. The bytes of its
    /// files that are still there are planned again; those of files that are gone are
    /// counted lost by the scans that find them gone.
    async fn drop_plan(&mut self) -> Result<(), Failure> {
        self.built = None;
        let path = self.cfg.checkpoint.clone();
        self.blocking(move |inner| {
            if let Some(p) = inner.ck.pending.take() {
                for c in &p.chunks {
                    inner.tracker.check_soon(c.id);
                }
            }
            inner
                .ck
                .save(&path, true)
                .map_err(|e| Failure::Checkpoint(e.to_string()))
        })
        .await??;
        self.checkpoint_saved();
        Ok(())
    }

    async fn commit(&mut self, plan: Plan, raw: u64, compressed: u64) -> Result<(), Failure> {
        self.built = None;
        let path = self.cfg.checkpoint.clone();
        let session = plan.session.clone();
        let sequence = plan.sequence;
        let saved = self
            .blocking(move |inner| {
                for c in &plan.chunks {
                    if let Some(f) = inner.ck.files.get_mut(&c.id) {
                        f.shipped = f.shipped.max(c.end);
                        f.announced = true;
                        if f.shipped >= f.size {
                            inner.tracker.caught_up(c.id);
                        }
                    }
                }
                inner.ck.pending = None;
                inner.ck.save(&path, true)
            })
            .await?;
        match saved {
            Ok(()) => self.checkpoint_saved(),
            Err(e) => {
                // The segment is in the store; if this checkpoint is never written, the plan
                // is uploaded again to the same key after a restart: no loss, no duplicate.
                tracing::error!(error = %e, "cannot save the checkpoint");
                self.checkpoint_problem = Some(e.to_string());
                self.show_state(Some(&e.to_string()));
            }
        }
        self.shipped_since_trim = true;
        self.metrics.segments.inc();
        self.metrics.bytes_shipped.inc_by(raw);
        self.metrics.bytes_uploaded.inc_by(compressed);
        self.update_gauges();
        tracing::debug!(session = %session, sequence, bytes = raw, compressed, "segment shipped");
        Ok(())
    }
}

/// Free memory is given back after shipping at most this often: the next segment faults
/// those pages in again.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Return the allocator's free pages to the system (glibc: every arena's free chunks, and
/// the top of the main heap, where the sidecar allocates: see `main`).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the system; it takes no pointers
    // and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A plan for `chunks`, under the session's next sequence number, which it reserves.
fn reserve(ck: &mut Checkpoint, session: String, chunks: Vec<Chunk>) -> Plan {
    let next = ck.sequences.entry(session.clone()).or_insert(0);
    let sequence = *next;
    *next += 1;
    Plan {
        session,
        sequence,
        chunks,
    }
}

/// The checkpoint at `path` if it is this pod's and this sink's; otherwise (or if it is
/// corrupt or of another format) it is set aside and a new one is made. Returns what was
/// set aside: (reason, where to, why).
#[allow(clippy::type_complexity)]
fn load_or_set_aside(
    path: &std::path::Path,
    uid: &str,
    sink_id: Option<String>,
) -> Result<(Checkpoint, Vec<(&'static str, String, String)>), String> {
    let (reason, why) = match Checkpoint::load(path) {
        Ok(Some(mut ck)) => {
            if ck.pod_uid != uid {
                ("other_pod", format!("it belongs to pod {}", ck.pod_uid))
            } else if ck.sink.is_some() && ck.sink != sink_id {
                (
                    "other_sink",
                    format!("it ships to {}", ck.sink.as_deref().unwrap_or_default()),
                )
            } else {
                ck.sink = sink_id;
                return Ok((ck, Vec::new()));
            }
        }
        Ok(None) => {
            let ck = Checkpoint::new(uid, sink_id).map_err(|e| e.to_string())?;
            ck.save(path, true).map_err(|e| e.to_string())?;
            return Ok((ck, Vec::new()));
        }
        Err(CheckpointError::Invalid { reason, .. }) => match reason {
            Invalid::Version(_) => ("old_version", reason.to_string()),
            Invalid::Corrupt(_) => ("corrupt", reason.to_string()),
        },
        Err(e) => return Err(e.to_string()),
    };
    let to = Checkpoint::set_aside(path, reason).map_err(|e| e.to_string())?;
    let ck = Checkpoint::new(uid, sink_id).map_err(|e| e.to_string())?;
    ck.save(path, true).map_err(|e| e.to_string())?;
    Ok((ck, vec![(reason, to.display().to_string(), why)]))
}

//! The sidecar binary against real object stores: s3s-fs (S3 with SigV4 checked), the moto
//! server (S3), Azurite (Azure Blob) and a local directory. Each test starts its own servers
//! on free ports and stops them by PID.
//!
//! Tools come from the environment, as `tests/run.sh` installs them: `S3S_FS_BIN`,
//! `MOTO_SERVER_BIN`, `AZURITE_BIN`, `TEST_PYTHON` (with boto3 and azure-storage-blob). A
//! test whose tool is missing is skipped, unless `RAYSHAPE_REQUIRE_TOOLS=1`.

use rayshape_sidecar::config::Sink as SinkConfig;
use rayshape_sidecar::{checkpoint::Checkpoint, logs, sink::Sink};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const AK: &str = "AKIDRAYSHAPE";
const SK: &str = "rayshape-test-secret";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The tests lean on timing; running them side by side on a small machine would skew it.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

use rayshape_testkit::{Proc, free_port};

fn tool(var: &str) -> Option<PathBuf> {
    rayshape_testkit::tool_from_env(var)
}

/// A `file://` sink writing to `dir`.
fn file_sink(dir: &Path) -> SinkConfig {
    SinkConfig {
        url: format!("file://{}", dir.display()),
        options: Default::default(),
    }
}

/// A sink at `url` with these object_store options.
fn sink_with(url: impl Into<String>, options: &[(&str, String)]) -> SinkConfig {
    SinkConfig {
        url: url.into(),
        options: options
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

fn scratch(name: &str) -> PathBuf {
    rayshape_testkit::scratch("ship", name)
}

fn wait_port(port: u16) {
    rayshape_testkit::wait_port(port, Duration::from_secs(30));
}

/// s3s-fs, restartable on the same port and data directory.
struct S3sFs {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    proc: Proc,
    /// The secret key it accepts (changed to play rotated credentials).
    secret: String,
}

impl S3sFs {
    fn start(bin: PathBuf, dir: &Path, bucket: &str) -> S3sFs {
        let mut s = S3sFs::stopped(bin, dir, bucket);
        s.restart();
        s
    }

    /// Not started yet: its port refuses connections.
    fn stopped(bin: PathBuf, dir: &Path, bucket: &str) -> S3sFs {
        std::fs::create_dir_all(dir.join(bucket)).unwrap();
        S3sFs {
            bin,
            dir: dir.to_path_buf(),
            port: free_port(),
            proc: Proc(None),
            secret: SK.into(),
        }
    }

    /// Every segment object and its bytes.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        walk_files(&self.dir)
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
            .map(|p| {
                let b = std::fs::read(&p).unwrap();
                (p, b)
            })
            .collect()
    }

    fn restart(&mut self) {
        let log = std::fs::File::create(
            self.dir
                .parent()
                .unwrap()
                .join(format!("s3s-{}.log", self.port)),
        )
        .unwrap();
        let child = Command::new(&self.bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--access-key",
                AK,
                "--secret-key",
                &self.secret,
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proc = Proc(Some(child));
        wait_port(self.port);
    }

    fn sink(&self, bucket: &str, secret: &str) -> SinkConfig {
        sink_with(
            format!("s3://{bucket}/ray-logs"),
            &[
                ("aws_endpoint", format!("http://127.0.0.1:{}", self.port)),
                ("aws_allow_http", "true".into()),
                ("aws_region", "us-east-1".into()),
                ("aws_access_key_id", AK.into()),
                ("aws_secret_access_key", secret.into()),
                ("aws_virtual_hosted_style_request", "false".into()),
            ],
        )
    }
}

/// The sidecar binary, started and stopped the ways Kubernetes does.
struct Sidecar {
    root: PathBuf,
    /// An empty URL: no sink at all.
    sink: SinkConfig,
    extra: Vec<(String, String)>,
    metrics_port: u16,
    proc: Proc,
    log: PathBuf,
    starts: usize,
    uid: String,
    /// Run as this user and group instead of root.
    user: Option<(u32, u32)>,
    /// Wrap the command (e.g. in strace).
    wrapper: Vec<String>,
}

impl Sidecar {
    fn new(root: &Path, sink: SinkConfig, extra: &[(&str, &str)]) -> Sidecar {
        Sidecar {
            root: root.to_path_buf(),
            sink,
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            metrics_port: free_port(),
            proc: Proc(None),
            log: root.parent().unwrap().join("sidecar.log"),
            starts: 0,
            uid: "0b5e".into(),
            user: None,
            wrapper: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.proc.0.as_ref().expect("running").id()
    }

    fn running(&mut self) -> bool {
        self.proc
            .0
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// The state the `rayshape_sidecar_state` metric gives, if it answers.
    fn state(&self) -> Option<String> {
        let text = self.try_metrics_text()?;
        text.lines()
            .filter(|l| l.starts_with("rayshape_sidecar_state{") && l.ends_with(" 1"))
            .find_map(|l| l.split('"').nth(1).map(str::to_string))
    }

    /// Wait until `pred` holds of the state, or fail with the log.
    fn wait_state(&mut self, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.state().as_deref() == Some(want) {
                return;
            }
            assert!(
                self.running(),
                "the sidecar exited waiting for state {want}; log:\n{}",
                self.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "state {:?}, not {want}, after {within:?}; log:\n{}",
                self.state(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until metric `name` satisfies `pred`.
    fn wait_metric(&mut self, name: &str, pred: impl Fn(f64) -> bool, within: Duration) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = self.metric(name)
                && pred(v)
            {
                return v;
            }
            assert!(
                self.running(),
                "the sidecar exited waiting for {name}; log:\n{}",
                self.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "{name} = {:?} after {within:?}; log:\n{}",
                self.metric(name),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let options: Vec<String> = self
            .sink
            .options
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let bin = env!("CARGO_BIN_EXE_rayshape-sidecar");
        let mut cmd = match self.wrapper.split_first() {
            Some((w, args)) => {
                let mut c = Command::new(w);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("run")
            .env_remove("RAYSHAPE_SINK_URL")
            .env_remove("RAYSHAPE_SINK_OPTIONS")
            .env_remove("RAYSHAPE_CONFIG");
        if !self.sink.url.is_empty() {
            cmd.env("RAYSHAPE_SINK_URL", &self.sink.url)
                .env("RAYSHAPE_SINK_OPTIONS", options.join(","));
        }
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd.env("RAYSHAPE_LOG_ROOT", &self.root)
            .env("RAYSHAPE_POD_NAME", "worker-1")
            .env("RAYSHAPE_POD_UID", &self.uid)
            .env("RAYSHAPE_POD_NAMESPACE", "ml")
            .env("RAYSHAPE_RAY_CLUSTER", "rc")
            .env("RAYSHAPE_SCAN_INTERVAL", "100ms")
            .env(
                "RAYSHAPE_METRICS_LISTEN",
                format!("127.0.0.1:{}", self.metrics_port),
            )
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
        self.proc = Proc(Some(cmd.spawn().unwrap()));
    }

    /// Wait until the metrics port answers: the sidecar has started and scanned.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.metric("rayshape_sidecar_files_tracked").is_none() {
            assert!(
                Instant::now() < deadline,
                "sidecar not up; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigkill(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM and wait; the exit code.
    fn sigterm(&mut self) -> Option<i32> {
        // The child stays in `proc` until it has exited, so a failing wait still kills it.
        let child = self.proc.0.as_mut().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.proc.0 = None;
                return st.code();
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).ok()?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    }

    fn metrics_text(&self) -> String {
        self.try_metrics_text().expect("metrics served")
    }

    fn try_metrics_text(&self) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).ok()?;
        text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint::load(&self.root.join("rayshape/checkpoint.json"))
            .unwrap()
            .expect("a checkpoint")
    }
}

/// A file as the writer made it.
#[derive(Clone, Debug)]
struct Written {
    session: String,
    created_as: String,
    content: Vec<u8>,
    deleted: bool,
}

/// Writes Ray-like logs: rotating files (a rename cascade), files that never rotate, empty
/// files, lines without a newline, and sessions that change.
struct Writer {
    root: PathBuf,
    session: String,
    files: Vec<Written>,
    /// Index in `files` of what each current path holds.
    at: BTreeMap<String, usize>,
    seq: u64,
    max_size: u64,
    backups: u32,
}

impl Writer {
    fn new(root: &Path, max_size: u64, backups: u32) -> Writer {
        let mut w = Writer {
            root: root.to_path_buf(),
            session: String::new(),
            files: Vec::new(),
            at: BTreeMap::new(),
            seq: 0,
            max_size,
            backups,
        };
        w.new_session("session_2026-11-22_12-00-00_000001_1");
        w
    }

    fn dir(&self) -> PathBuf {
        self.root.join(&self.session).join("logs")
    }

    fn new_session(&mut self, name: &str) {
        self.session = name.to_string();
        self.at.clear();
        std::fs::create_dir_all(self.dir().join("events")).unwrap();
        let latest = self.root.join("session_latest");
        let _ = std::fs::remove_file(&latest);
        std::os::unix::fs::symlink(name, &latest).unwrap();
        // Files Ray creates and often leaves empty.
        for empty in ["raylet.err", "log_monitor.err"] {
            self.create(empty);
        }
    }

    fn create(&mut self, name: &str) {
        std::fs::File::create(self.dir().join(name)).unwrap();
        self.files.push(Written {
            session: self.session.clone(),
            created_as: name.to_string(),
            content: Vec::new(),
            deleted: false,
        });
        self.at.insert(name.to_string(), self.files.len() - 1);
    }

    fn append(&mut self, name: &str, bytes: &[u8]) {
        if !self.at.contains_key(name) {
            self.create(name);
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir().join(name))
            .unwrap();
        f.write_all(bytes).unwrap();
        let i = self.at[name];
        self.files[i].content.extend_from_slice(bytes);
    }

    /// Python's RotatingFileHandler: drop name.N, shift name.i to name.(i+1), name to name.1.
    fn rotate(&mut self, name: &str) {
        let d = self.dir();
        let last = format!("{name}.{}", self.backups);
        if let Some(i) = self.at.remove(&last) {
            std::fs::remove_file(d.join(&last)).unwrap();
            self.files[i].deleted = true;
        }
        for i in (1..self.backups).rev() {
            let (from, to) = (format!("{name}.{i}"), format!("{name}.{}", i + 1));
            if let Some(idx) = self.at.remove(&from) {
                std::fs::rename(d.join(&from), d.join(&to)).unwrap();
                self.at.insert(to, idx);
            }
        }
        if let Some(idx) = self.at.remove(name) {
            std::fs::rename(d.join(name), d.join(format!("{name}.1"))).unwrap();
            self.at.insert(format!("{name}.1"), idx);
        }
        self.create(name);
    }

    /// One line (sometimes without its newline) to one of the session's files.
    fn step(&mut self) {
        self.seq += 1;
        let n = self.seq;
        let name = match n % 7 {
            0..=2 => "raylet.out",
            3 | 4 => "gcs_server.out",
            5 => "events/event_GCS.log",
            _ => "worker-01aa-ffff-1234.out",
        };
        let newline = if n.is_multiple_of(11) { "" } else { "\n" };
        let line = format!(
            "{} seq={n} {}{newline}",
            self.session,
            "x".repeat((n % 97) as usize)
        );
        self.append(name, line.as_bytes());
        if ["raylet.out", "gcs_server.out"].contains(&name)
            && self.files[self.at[name]].content.len() as u64 >= self.max_size
        {
            self.rotate(name);
        }
    }
}

/// `logs get` of every stream of `pod` into `out`.
async fn reassemble(sink: &SinkConfig, pod: &str, out: &Path) -> logs::Written {
    logs::get(&Sink::open(sink).unwrap(), pod, None, None, out)
        .await
        .expect("no overlapping (duplicate) chunks")
}

/// Reassemble the pod's logs from the store and hold them up against what was written:
/// every byte still on disk is in the store exactly once; what went missing was deleted
/// before it was read, and is returned as the loss.
async fn verify(sink: &SinkConfig, written: &[Written], scratch: &Path) -> u64 {
    verify_pod(sink, "ml/rc/worker-1-0b5e", written, scratch).await
}

/// [`verify`] for the pod `ns/cluster/name-uid`.
async fn verify_pod(sink: &SinkConfig, pod: &str, written: &[Written], scratch: &Path) -> u64 {
    let out = scratch.join("reassembled");
    let _ = std::fs::remove_dir_all(&out);
    let got = reassemble(sink, pod, &out).await;
    let mut streams: Vec<(String, Vec<u8>)> = got
        .keys()
        .map(|rel| (rel.clone(), std::fs::read(out.join(rel)).unwrap()))
        .collect();
    streams.retain(|(_, c)| !c.is_empty());
    let mut used = vec![false; streams.len()];
    let mut lost = 0u64;
    for w in written.iter().filter(|w| !w.content.is_empty()) {
        let m: Vec<usize> = streams
            .iter()
            .enumerate()
            .filter(|(_, (rel, c))| {
                rel.starts_with(&format!("{}/", w.session))
                    && w.content.starts_with(c)
                    && c.len() >= 20
            })
            .map(|(i, _)| i)
            .collect();
        assert!(
            m.len() <= 1,
            "{} ({}) is in the store {} times",
            w.created_as,
            w.session,
            m.len()
        );
        let shipped = m.first().map_or(0, |&i| {
            used[i] = true;
            streams[i].1.len()
        });
        if shipped < w.content.len() {
            eprintln!(
                "missing from the store: {} ({}): {} of {} bytes shipped, deleted: {}",
                w.created_as,
                w.session,
                shipped,
                w.content.len(),
                w.deleted
            );
            assert!(
                w.deleted,
                "{} ({}): {} of {} bytes in the store, and the file is still on disk",
                w.created_as,
                w.session,
                shipped,
                w.content.len()
            );
            lost += (w.content.len() - shipped) as u64;
        }
    }
    for (i, (rel, c)) in streams.iter().enumerate() {
        assert!(
            used[i] || c.len() < 20,
            "{rel} in the store matches nothing written"
        );
    }
    lost
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_kills_outage_rotation_and_new_session() {
    let _serial = serial().await;
    let Some(bin) = tool("S3S_FS_BIN") else {
        return;
    };
    let base = scratch("chaos");
    let root = base.join("ray");
    std::fs::create_dir_all(&root).unwrap();
    let mut store = S3sFs::start(bin, &base.join("s3"), "logs");
    let sink = store.sink("logs", SK);
    let mut side = Sidecar::new(
        &root,
        sink.clone(),
        &[
            ("RAYSHAPE_FLUSH_AGE", "300ms"),
            ("RAYSHAPE_FLUSH_BYTES", "64Ki"),
        ],
    );
    side.start();
    side.wait_ready();

    // Rotation slow enough that no file is written, rotated out and deleted within one
    // restart of the sidecar: bytes it never saw could be neither shipped nor counted.
    let writer = Arc::new(Mutex::new(Writer::new(&root, 128 * 1024, 3)));
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (writer, stop) = (writer.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                writer.lock().unwrap().step();
                i += 1;
                if i.is_multiple_of(50) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    let started = Instant::now();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut kills, mut outage_done, mut session_done) = (0, false, false);
    while started.elapsed() < Duration::from_secs(24) {
        tokio::time::sleep(Duration::from_millis(300 + next() % 900)).await;
        side.sigkill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(next() % 150)).await;
        side.start();
        if !session_done && started.elapsed() > Duration::from_secs(8) {
            writer
                .lock()
                .unwrap()
                .new_session("session_2026-11-22_12-05-00_000002_2");
            session_done = true;
        }
        if !outage_done && started.elapsed() > Duration::from_secs(12) {
            store.proc.kill();
            tokio::time::sleep(Duration::from_secs(3)).await;
            store.restart();
            outage_done = true;
        }
    }
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    side.wait_ready();
    let code = side.sigterm();
    assert_eq!(
        code,
        Some(0),
        "final flush failed; log:\n{}",
        side.log_text()
    );
    assert!(kills >= 10, "only {kills} kills");
    side.start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metric = side
        .metric("rayshape_sidecar_lost_bytes_total")
        .expect("metrics served");
    assert_eq!(side.sigterm(), Some(0));

    let written = writer.lock().unwrap().files.clone();
    assert!(
        written.iter().filter(|w| w.deleted).count() >= 3,
        "the rotation cascade deleted files"
    );
    let total: usize = written.iter().map(|w| w.content.len()).sum();
    assert!(total > 1_000_000, "only {total} bytes written");
    let lost = verify(&sink, &written, &base).await;
    eprintln!(
        "chaos: {kills} kills, {total} bytes written, {lost} bytes lost to rotation while the sidecar was down"
    );
    assert_eq!(
        lost as f64, metric,
        "bytes deleted before they were read vs rayshape_sidecar_lost_bytes_total"
    );
    assert_eq!(lost, side.checkpoint().lost_bytes);
    let log = side.log_text();
    assert!(
        log.contains("upload failed; retrying") || log.contains("\"state\":\"store_unreachable\""),
        "the outage was seen"
    );
    let _ = std::fs::remove_dir_all(base);
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_deleted_while_down_are_counted_exactly() {
    let _serial = serial().await;
    let Some(bin) = tool("S3S_FS_BIN") else {
        return;
    };
    let base = scratch("lost");
    let root = base.join("ray");
    let store = S3sFs::start(bin, &base.join("s3"), "logs");
    let sink = store.sink("logs", SK);
    let mut w = Writer::new(&root, u64::MAX, 3);
    // Nothing is flushed by size or age before the kill.
    let mut side = Sidecar::new(
        &root,
        sink.clone(),
        &[
            ("RAYSHAPE_FLUSH_AGE", "1h"),
            ("RAYSHAPE_FLUSH_BYTES", "32Mi"),
        ],
    );
    side.start();
    side.wait_ready();
    for _ in 0..400 {
        w.step();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    side.sigkill();
    let doomed = w.files[w.at["raylet.out"]].content.len() as u64;
    for _ in 0..4 {
        w.rotate("raylet.out");
    }
    side.start();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        side.metric("rayshape_sidecar_lost_bytes_total"),
        Some(doomed as f64)
    );
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    assert_eq!(verify(&sink, &w.files, &base).await, doomed);
    let _ = std::fs::remove_dir_all(base);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_heavy_writing_ships_everything_written() {
    let _serial = serial().await;
    let Some(bin) = tool("S3S_FS_BIN") else {
        return;
    };
    let base = scratch("sigterm");
    let root = base.join("ray");
    let store = S3sFs::start(bin, &base.join("s3"), "logs");
    let sink = store.sink("logs", SK);
    let mut side = Sidecar::new(&root, sink.clone(), &[]);
    let mut w = Writer::new(&root, u64::MAX, 3);
    side.start();
    side.wait_ready();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        w.step();
    }
    // The signal right after the last write.
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    let total: usize = w.files.iter().map(|f| f.content.len()).sum();
    assert!(total > 2_000_000, "only {total} bytes written");
    assert_eq!(verify(&sink, &w.files, &base).await, 0);
    let _ = std::fs::remove_dir_all(base);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_keep_it_up_saying_why_and_it_ships_once_they_work() {
    let _serial = serial().await;
    let Some(bin) = tool("S3S_FS_BIN") else {
        return;
    };
    let base = scratch("creds");
    let root = base.join("ray");
    let mut store = S3sFs::start(bin, &base.join("s3"), "logs");
    let mut w = Writer::new(&root, u64::MAX, 3);
    for _ in 0..50 {
        w.step();
    }
    let extra = [
        ("RAYSHAPE_FLUSH_AGE", "200ms"),
        ("RAYSHAPE_SHUTDOWN_DEADLINE", "2s"),
    ];
    // Wrong from the start: it stays up (a sidecar that exits keeps Ray's pod from being
    // Ready), says why, and marks nothing shipped.
    let mut side = Sidecar::new(&root, store.sink("logs", "not-the-secret"), &extra);
    side.start();
    side.wait_state("unauthorized", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(side.running(), "{}", side.log_text());
    assert_eq!(side.state().as_deref(), Some("unauthorized"));
    let log = side.log_text();
    assert_eq!(
        log.matches("the store refuses our credentials").count(),
        1,
        "the reason is logged once per change, not per retry:\n{log}"
    );
    let ck = side.checkpoint();
    assert!(ck.files.values().all(|f| f.shipped == 0) && ck.pending.is_none());
    // Stopped while refused: what was not shipped stays on disk.
    assert_eq!(side.sigterm(), Some(1), "{}", side.log_text());

    // Right credentials: it ships. Then the store stops taking them (rotated credentials,
    // a changed bucket policy): it stays up and keeps the logs; once they work again,
    // everything arrives, once.
    side.sink = store.sink("logs", SK);
    side.start();
    side.wait_state("shipping", Duration::from_secs(30));
    store.secret = "rotated-secret".into();
    store.proc.kill();
    store.restart();
    for _ in 0..200 {
        w.step();
    }
    side.wait_state("unauthorized", Duration::from_secs(60));
    for _ in 0..200 {
        w.step();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(side.running());
    store.secret = SK.into();
    store.proc.kill();
    store.restart();
    side.wait_state("shipping", Duration::from_secs(60));
    side.wait_metric(
        "rayshape_sidecar_unshipped_bytes",
        |v| v == 0.0,
        Duration::from_secs(30),
    );
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    assert_eq!(verify(&store.sink("logs", SK), &w.files, &base).await, 0);
    let _ = std::fs::remove_dir_all(base);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_sink_it_stays_up_and_ships_once_one_is_configured() {
    let _serial = serial().await;
    let base = scratch("no-sink");
    let root = base.join("ray");
    let mut w = Writer::new(&root, u64::MAX, 3);
    for _ in 0..100 {
        w.step();
    }
    let config = base.join("sidecar.yaml");
    std::fs::write(&config, "flush: {maxAge: 200ms}\n").unwrap();
    let no_sink = SinkConfig {
        url: String::new(),
        options: Default::default(),
    };
    let mut side = Sidecar::new(
        &root,
        no_sink,
        &[("RAYSHAPE_CONFIG", config.to_str().unwrap())],
    );
    side.start();
    side.wait_state("no_sink", Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(side.running(), "{}", side.log_text());
    let log = side.log_text();
    assert_eq!(log.matches("no sink is configured").count(), 1, "{log}");
    // Nothing is followed without a sink: holding deleted files open would fill the disk.
    assert!(!root.join("rayshape/checkpoint.json").exists());
    // A sink appears in the configuration file (as a mounted ConfigMap changes): it is read
    // again, and the logs written meanwhile are shipped.
    let store = base.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let sink = file_sink(&store);
    std::fs::write(
        &config,
        format!(
            "flush: {{maxAge: 200ms}}\nsink: {{url: \"{}\"}}\n",
            sink.url
        ),
    )
    .unwrap();
    side.wait_state("shipping", Duration::from_secs(30));
    side.wait_metric(
        "rayshape_sidecar_unshipped_bytes",
        |v| v == 0.0,
        Duration::from_secs(30),
    );
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    assert_eq!(verify(&sink, &w.files, &base).await, 0);
    let _ = std::fs::remove_dir_all(base);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_store_is_waited_for() {
    let _serial = serial().await;
    let Some(bin) = tool("S3S_FS_BIN") else {
        return;
    };
    let base = scratch("unreachable");
    let root = base.join("ray");
    let mut store = S3sFs::stopped(bin, &base.join("s3"), "logs");
    let mut w = Writer::new(&root, u64::MAX, 3);
    for _ in 0..100 {
        w.step();
    }
    let sink = store.sink("logs", SK);
    let mut side = Sidecar::new(&root, sink.clone(), &[("RAYSHAPE_FLUSH_AGE", "200ms")]);
    side.start();
    side.wait_state("store_unreachable", Duration::from_secs(60));
    for _ in 0..100 {
        w.step();
    }
    store.restart();
    side.wait_state("shipping", Duration::from_secs(60));
    side.wait_metric(
        "rayshape_sidecar_unshipped_bytes",
        |v| v == 0.0,
        Duration::from_secs(30),
    );
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    assert_eq!(verify(&sink, &w.files, &base).await, 0);
    let _ = std::fs::remove_dir_all(base);
}

/// Every object of `before` still holds the same bytes.
fn assert_unchanged(
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
    what: &str,
) {
    for (key, bytes) in before {
        let now = after.get(key);
        assert!(now.is_some(), "{what}: {} was removed", key.display());
        assert!(
            now == Some(bytes),
            "{what}: {} was overwritten",
            key.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_corrupt_or_foreign_checkpoints_never_overwrite_and_are_set_aside() {
    let _serial = serial().await;
    let Some(bin) = tool("S3S_FS_BIN") else {
        return;
    };
    let base = scratch("checkpoints");
    let root = base.join("ray");
    let store = S3sFs::start(bin, &base.join("s3"), "logs");
    let sink = store.sink("logs", SK);
    let mut w = Writer::new(&root, u64::MAX, 3);
    let mut side = Sidecar::new(&root, sink.clone(), &[("RAYSHAPE_FLUSH_AGE", "200ms")]);
    let ckpt = root.join("rayshape/checkpoint.json");
    let ship = |side: &mut Sidecar, w: &mut Writer| {
        for _ in 0..300 {
            w.step();
        }
        side.start();
        side.wait_metric(
            "rayshape_sidecar_segments_uploaded_total",
            |v| v >= 1.0,
            Duration::from_secs(30),
        );
        side.wait_metric(
            "rayshape_sidecar_unshipped_bytes",
            |v| v == 0.0,
            Duration::from_secs(30),
        );
        assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    };
    ship(&mut side, &mut w);

    // The checkpoint is lost: the files (which grew meanwhile) are shipped again from their
    // beginning, under a new epoch, beside what is there.
    let before = store.snapshot();
    std::fs::remove_file(&ckpt).unwrap();
    ship(&mut side, &mut w);
    assert_unchanged(&before, &store.snapshot(), "lost checkpoint");

    // A corrupt checkpoint: set aside (kept, renamed), counted, logged; the sidecar stays
    // up and ships.
    let before = store.snapshot();
    std::fs::write(&ckpt, b"{\"version\": 2, \"files\": [tr").unwrap();
    ship(&mut side, &mut w);
    assert_unchanged(&before, &store.snapshot(), "corrupt checkpoint");
    let log = side.log_text();
    assert!(
        log.contains("the checkpoint was set aside") && log.contains("\"reason\":\"corrupt\""),
        "{log}"
    );
    let aside: Vec<String> = std::fs::read_dir(root.join("rayshape"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    // Each file is in the store three times now, under three epochs: `logs get` says which
    // streams are one file.
    let out = base.join("reshipped");
    let got = reassemble(&sink, "ml/rc/worker-1-0b5e", &out).await;
    let groups = logs::reshipped(&out, &got).unwrap();
    let name = |rel: &str| rel.rsplit_once('~').unwrap().0.to_string();
    let mut streams: BTreeMap<String, usize> = BTreeMap::new();
    for (rel, &size) in &got {
        if size >= logs::SAME_START as u64 {
            *streams.entry(name(rel)).or_default() += 1;
        }
    }
    streams.retain(|_, n| *n > 1);
    assert!(streams.values().any(|&n| n == 3), "{got:?}");
    let found: BTreeMap<String, usize> = groups.iter().map(|g| (name(&g[0]), g.len())).collect();
    assert!(
        groups
            .iter()
            .all(|g| g.iter().all(|r| name(r) == name(&g[0]))),
        "{groups:?}"
    );
    assert_eq!(found, streams, "{groups:?}");

    // Another pod's checkpoint (a volume that outlived its pod): never adopted. The new pod
    // ships every byte of the files, from their beginning, under its own name.
    let before = store.snapshot();
    side.uid = "f00d".into();
    for _ in 0..300 {
        w.step();
    }
    side.start();
    side.wait_metric(
        r#"rayshape_sidecar_checkpoints_set_aside_total{reason="other_pod"}"#,
        |v| v == 1.0,
        Duration::from_secs(30),
    );
    side.wait_metric(
        "rayshape_sidecar_unshipped_bytes",
        |v| v == 0.0,
        Duration::from_secs(30),
    );
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    assert_unchanged(&before, &store.snapshot(), "another pod's checkpoint");
    assert_eq!(
        verify_pod(&sink, "ml/rc/worker-1-f00d", &w.files, &base).await,
        0
    );
    let _ = std::fs::remove_dir_all(base);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_segment_is_kept_when_the_store_cannot_say_whether_it_has_it() {
    let _serial = serial().await;
    let Some(bin) = tool("S3S_FS_BIN") else {
        return;
    };
    let base = scratch("pending");
    let root = base.join("ray");
    let mut store = S3sFs::start(bin, &base.join("s3"), "logs");
    let sink = store.sink("logs", SK);
    let logs_dir = root.join("session_1/logs");
    std::fs::create_dir_all(&logs_dir).unwrap();
    std::fs::write(logs_dir.join("a.out"), "a".repeat(5000)).unwrap();
    std::fs::write(logs_dir.join("b.out"), "b".repeat(7000)).unwrap();
    let mut side = Sidecar::new(&root, sink.clone(), &[("RAYSHAPE_FLUSH_AGE", "200ms")]);
    side.start();
    side.wait_metric(
        "rayshape_sidecar_segments_uploaded_total",
        |v| v == 1.0,
        Duration::from_secs(30),
    );
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    let before = store.snapshot();
    assert_eq!(before.len(), 1);
    // As if the sidecar had died after that upload and before its commit: the plan is
    // pending again. At the restart one of its files is gone, and the store is down, so
    // HEAD cannot say whether it has the segment.
    pend_everything_again(&root);
    std::fs::remove_file(logs_dir.join("b.out")).unwrap();
    store.proc.kill();
    side.start();
    // HEAD fails for a while (connection refused), then the store is back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(side.running(), "{}", side.log_text());
    store.restart();
    side.wait_metric(
        "rayshape_sidecar_unshipped_bytes",
        |v| v == 0.0,
        Duration::from_secs(30),
    );
    assert_eq!(
        side.metric("rayshape_sidecar_lost_bytes_total"),
        Some(0.0),
        "{}",
        side.log_text()
    );
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    assert_eq!(
        store.snapshot(),
        before,
        "the segment is neither overwritten nor shipped twice"
    );
    assert!(
        side.log_text()
            .contains("the pending segment is already in the store")
    );
    let _ = std::fs::remove_dir_all(base);
}

/// Rewrite the checkpoint under `root` as a sidecar that died after uploading its first
/// segment and before committing it would have left it: that plan (every file, from its
/// first byte) pending, nothing shipped.
fn pend_everything_again(root: &Path) {
    let path = root.join("rayshape/checkpoint.json");
    let mut ck: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut chunks = Vec::new();
    for (id, f) in ck["files"].as_object_mut().unwrap() {
        chunks.push(
            serde_json::json!({"id": id.parse::<u64>().unwrap(), "start": 0, "end": f["size"]}),
        );
        f["shipped"] = 0.into();
        f["announced"] = false.into();
    }
    ck["pending"] = serde_json::json!({"session": "session_1", "sequence": 0, "chunks": chunks});
    std::fs::write(&path, serde_json::to_vec(&ck).unwrap()).unwrap();
}

/// Log files (under `root`) the process holds open.
fn open_log_files(pid: u32, root: &Path) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path()).is_ok_and(|t| {
                        t.starts_with(root.join("")) && !t.starts_with(root.join("rayshape"))
                    })
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn descriptors_stay_under_the_cap_with_many_files() {
    let _serial = serial().await;
    let base = scratch("many");
    let root = base.join("ray");
    let logs_dir = root.join("session_2026-11-22_12-00-00_000001_1/logs");
    std::fs::create_dir_all(&logs_dir).unwrap();
    let mut written = Vec::new();
    for i in 0..300 {
        let name = format!("worker-{i:04}.out");
        let content = format!("worker {i} started\n").into_bytes();
        std::fs::write(logs_dir.join(&name), &content).unwrap();
        written.push(Written {
            session: "session_2026-11-22_12-00-00_000001_1".into(),
            created_as: name,
            content,
            deleted: false,
        });
    }
    let store = base.join("store");
    let sink = file_sink(&store);
    let mut side = Sidecar::new(
        &root,
        sink.clone(),
        &[
            ("RAYSHAPE_FLUSH_AGE", "200ms"),
            ("RAYSHAPE_MAX_OPEN_FILES", "32"),
        ],
    );
    side.start();
    let pid = side.pid();
    let mut most = 0;
    let check = |side: &mut Sidecar, most: &mut usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            *most = (*most).max(open_log_files(pid, &root));
            assert!(
                *most <= 32,
                "{most} log files open at once, over the cap of 32"
            );
            let tracked = side.metric("rayshape_sidecar_files_tracked");
            let unshipped = side.metric("rayshape_sidecar_unshipped_bytes");
            if tracked == Some(300.0) && unshipped == Some(0.0) {
                let open = side.metric("rayshape_sidecar_open_files").unwrap();
                assert!(open <= 32.0, "{open}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not all shipped: {tracked:?} {unshipped:?}\n{}",
                side.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    check(&mut side, &mut most);
    // Every file gets a new line: each is opened again (within the cap) and read.
    for w in written.iter_mut() {
        let line = format!("{} finished\n", w.created_as).into_bytes();
        std::fs::OpenOptions::new()
            .append(true)
            .open(logs_dir.join(&w.created_as))
            .unwrap()
            .write_all(&line)
            .unwrap();
        w.content.extend_from_slice(&line);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    check(&mut side, &mut most);
    assert!(
        most <= 32,
        "{most} log files open at once, over the cap of 32"
    );
    assert!(most > 0);
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    assert_eq!(verify(&sink, &written, &base).await, 0);
    let _ = std::fs::remove_dir_all(base);
}

/// System calls in an strace output file whose line contains one of `calls` (`"fsync("`).
fn calls(trace: &Path, calls: &[&str]) -> usize {
    std::fs::read_to_string(trace)
        .unwrap_or_default()
        .lines()
        .filter(|l| calls.iter().any(|c| l.contains(c)))
        .count()
}

/// Size changes are saved with their data synced (a power cut must not leave an empty
/// checkpoint behind the rename) but not their directory (`fsync`); plans and commits with
/// both.
#[tokio::test(flavor = "multi_thread")]
async fn size_changes_are_saved_data_synced_plans_and_commits_fully() {
    let _serial = serial().await;
    let Some(strace) = tool("STRACE_BIN") else {
        return;
    };
    let base = scratch("fsync");
    let root = base.join("ray");
    let store = base.join("store");
    let sink = file_sink(&store);
    let mut w = Writer::new(&root, u64::MAX, 3);
    // No flush before the stop: only sizes change.
    let mut side = Sidecar::new(
        &root,
        sink.clone(),
        &[
            ("RAYSHAPE_FLUSH_AGE", "1h"),
            ("RAYSHAPE_FLUSH_BYTES", "32Mi"),
        ],
    );
    side.start();
    side.wait_ready();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let trace = base.join("strace.out");
    let attach = |trace: &Path, pid: u32| {
        Proc(Some(
            Command::new(&strace)
                .args([
                    "-f",
                    "-qq",
                    "-y",
                    "-e",
                    "trace=fsync,fdatasync,syncfs,sync_file_range",
                    "-o",
                ])
                .arg(trace)
                .args(["-p", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ))
    };
    let mut tracer = attach(&trace, side.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        for _ in 0..20 {
            w.step();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The sizes reached the checkpoint: data synced, no fsync of file or directory.
    let total: u64 = w.files.iter().map(|f| f.content.len() as u64).sum();
    let ck = side.checkpoint();
    assert_eq!(ck.files.values().map(|f| f.size).sum::<u64>(), total);
    tracer.kill();
    let trace_text = || std::fs::read_to_string(&trace).unwrap_or_default();
    assert_eq!(calls(&trace, &["fsync(", "syncfs("]), 0, "{}", trace_text());
    assert!(calls(&trace, &["fdatasync("]) >= 1, "{}", trace_text());
    // A plan and its commit are fsynced.
    let trace2 = base.join("strace2.out");
    let _tracer = attach(&trace2, side.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    assert!(
        calls(&trace2, &["fsync("]) >= 2,
        "{}",
        std::fs::read_to_string(&trace2).unwrap_or_default()
    );
    // On a file:// sink the segment reaches the disk, with its directory, before the
    // commit does: `-y` names the files synced.
    let synced = std::fs::read_to_string(&trace2).unwrap_or_default();
    let lines: Vec<&str> = synced.lines().collect();
    let segment = lines
        .iter()
        .position(|l| l.contains("fsync(") && l.contains(".tar.zst"));
    let commit = lines
        .iter()
        .rposition(|l| l.contains("fsync(") && l.contains("checkpoint.json"));
    assert!(
        segment.is_some() && segment < commit,
        "segment synced at line {segment:?}, the commit at {commit:?}:\n{synced}"
    );
    assert_eq!(verify(&sink, &w.files, &base).await, 0);
    let _ = std::fs::remove_dir_all(base);
}

/// A copytruncate after a plan is recorded and before its bytes are read: the plan's
/// offsets now hold the new stream's bytes. They must not be shipped as the old file's (and
/// the old bytes never read are counted lost). strace delays every `fsync` by a second,
/// which holds the plan between its recording (visible in the checkpoint) and its read.
#[tokio::test(flavor = "multi_thread")]
async fn a_copytruncate_between_plan_and_read_ships_no_new_bytes_as_old_ones() {
    let _serial = serial().await;
    let Some(strace) = tool("STRACE_BIN") else {
        return;
    };
    let base = scratch("truncated-in-plan");
    let root = base.join("ray");
    let store = base.join("store");
    let sink = file_sink(&store);
    let mut w = Writer::new(&root, u64::MAX, 3);
    let (old, more, new) = ("OLD.".repeat(25), "ol2.".repeat(25), "NEW.".repeat(75));
    w.append("app.log", old.as_bytes());
    let mut side = Sidecar::new(&root, sink.clone(), &[("RAYSHAPE_FLUSH_AGE", "200ms")]);
    side.start();
    side.wait_ready();
    // The segment first: before the first scan has seen the file, nothing is unshipped
    // either.
    side.wait_metric(
        "rayshape_sidecar_segments_uploaded_total",
        |v| v >= 1.0,
        Duration::from_secs(20),
    );
    side.wait_metric(
        "rayshape_sidecar_unshipped_bytes",
        |v| v == 0.0,
        Duration::from_secs(20),
    );
    assert_eq!(
        side.metric("rayshape_sidecar_segments_uploaded_total"),
        Some(1.0)
    );
    let trace = base.join("strace.out");
    let mut tracer = Proc(Some(
        Command::new(&strace)
            .args(["-f", "-qq", "-e", "trace=fsync", "-e"])
            .arg("inject=fsync:delay_exit=1000000")
            .arg("-o")
            .arg(&trace)
            .args(["-p", &side.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    // Every thread traced before the plan is made (the fsyncs come from a blocking thread).
    let traced = || {
        std::fs::read_dir(format!("/proc/{}/task", side.pid()))
            .unwrap()
            .flatten()
            .all(|t| {
                std::fs::read_to_string(t.path().join("status"))
                    .unwrap_or_default()
                    .lines()
                    .any(|l| {
                        l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0")
                    })
            })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !traced() {
        assert!(Instant::now() < deadline, "strace did not attach");
        std::thread::sleep(Duration::from_millis(20));
    }
    w.append("app.log", more.as_bytes());
    let ck_path = root.join("rayshape/checkpoint.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Checkpoint::load(&ck_path)
        .ok()
        .flatten()
        .is_none_or(|c| c.pending.is_none())
    {
        assert!(
            Instant::now() < deadline,
            "no plan; log:\n{}",
            side.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The plan is renamed into place; its directory's fsync holds it for a second.
    std::fs::write(w.dir().join("app.log"), &new).unwrap();
    // Everything on disk is shipped: the old file's first 100 bytes and the new one's 300.
    side.wait_metric(
        "rayshape_sidecar_bytes_shipped_total",
        |v| v >= (old.len() + new.len()) as f64,
        Duration::from_secs(60),
    );
    side.wait_metric(
        "rayshape_sidecar_unshipped_bytes",
        |v| v == 0.0,
        Duration::from_secs(60),
    );
    tracer.kill();
    let lost = side.metric("rayshape_sidecar_lost_bytes_total");
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    let out = base.join("reassembled");
    let got = reassemble(&sink, "ml/rc/worker-1-0b5e", &out).await;
    let mut streams: Vec<String> = got
        .keys()
        .map(|rel| String::from_utf8(std::fs::read(out.join(rel)).unwrap()).unwrap())
        .filter(|c| !c.is_empty())
        .collect();
    streams.sort();
    assert_eq!(
        streams,
        vec![new.clone(), old.clone()],
        "{}",
        side.log_text()
    );
    // The 100 bytes written before the copytruncate and never read are lost, and counted.
    assert_eq!(lost, Some(more.len() as f64), "{}", side.log_text());
    // Seen by the read of the plan, not by a scan before it.
    assert!(
        side.log_text()
            .contains("app.log was truncated and written again after its plan was recorded"),
        "{}",
        side.log_text()
    );
    let _ = std::fs::remove_dir_all(base);
}

/// Pseudo-random log-like text: words from a small vocabulary, compressible as logs are.
fn log_text(bytes: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "task",
        "lease",
        "granted",
        "worker",
        "node_manager.cc:",
        "raylet",
        "INFO",
        "object",
        "spilled",
        "pinned",
        "actor",
        "created",
        "gcs",
        "heartbeat",
        "resource",
        "report",
    ];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(bytes + 64);
    while out.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % 16) as usize].as_bytes());
        out.extend_from_slice(format!(" {:x}", x >> 40).as_bytes());
        out.push(if x.is_multiple_of(11) { b'\n' } else { b' ' });
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_answer_while_a_large_segment_is_compressed() {
    let _serial = serial().await;
    let base = scratch("responsive");
    let root = base.join("ray");
    let logs_dir = root.join("session_1/logs");
    std::fs::create_dir_all(&logs_dir).unwrap();
    std::fs::write(logs_dir.join("raylet.out"), log_text(3 << 20, 7)).unwrap();
    let store = base.join("store");
    let config = base.join("sidecar.yaml");
    // The slowest zstd level and the largest segment: seconds of compression.
    std::fs::write(
        &config,
        "zstdLevel: 19\nflush: {maxBytes: 4Mi, maxAge: 100ms}\n",
    )
    .unwrap();
    let sink = file_sink(&store);
    let mut side = Sidecar::new(
        &root,
        sink,
        &[("RAYSHAPE_CONFIG", config.to_str().unwrap())],
    );
    side.start();
    side.wait_ready();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut answers = 0;
    loop {
        let t = Instant::now();
        let text = side.try_metrics_text();
        slowest = slowest.max(t.elapsed());
        assert!(
            text.is_some(),
            "/metrics did not answer; log:\n{}",
            side.log_text()
        );
        answers += 1;
        if text.is_some_and(|t| t.contains("rayshape_sidecar_segments_uploaded_total 1")) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no segment after 300 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    eprintln!("compressing took {took:?}; {answers} scrapes, the slowest {slowest:?}");
    assert!(
        took > Duration::from_secs(2),
        "compression took only {took:?}: too fast to tell"
    );
    // Generous: a scrape is microseconds of work; a blocked runtime would take the whole
    // compression.
    assert!(
        slowest < Duration::from_millis(1500),
        "a scrape took {slowest:?} while compressing"
    );
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    let _ = std::fs::remove_dir_all(base);
}

/// A TCP proxy that passes at most `rate` bytes per second each way: a slow network.
struct Throttle {
    port: u16,
    rate: Arc<std::sync::atomic::AtomicU64>,
    upstream: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Throttle {
    fn start(to: u16, rate: u64) -> Throttle {
        use std::sync::atomic::AtomicU64;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let t = Throttle {
            port: listener.local_addr().unwrap().port(),
            rate: Arc::new(AtomicU64::new(rate)),
            upstream: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (rate, upstream, stop) = (t.rate.clone(), t.upstream.clone(), t.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let pipe = |mut from: std::net::TcpStream,
                            mut to: std::net::TcpStream,
                            count: Option<Arc<AtomicU64>>| {
                    let (rate, stop) = (rate.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
                        while !stop.load(Ordering::Relaxed) {
                            let n = match std::io::Read::read(&mut from, &mut buf) {
                                Ok(0) => break,
                                Ok(n) => n,
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut =>
                                {
                                    continue;
                                }
                                Err(_) => break,
                            };
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            if let Some(c) = &count {
                                c.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            let r = rate.load(Ordering::Relaxed);
                            if r < u64::MAX {
                                std::thread::sleep(Duration::from_secs_f64(n as f64 / r as f64));
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                };
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    Some(upstream.clone()),
                );
                pipe(server, client, None);
            }
        });
        t
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shutdown_deadline_holds_while_an_upload_is_slow_but_succeeding() {
    let _serial = serial().await;
    let Some(bin) = tool("S3S_FS_BIN") else {
        return;
    };
    let base = scratch("slow");
    let root = base.join("ray");
    let store = S3sFs::start(bin, &base.join("s3"), "logs");
    let throttle = Throttle::start(store.port, 50_000);
    let mut sink = store.sink("logs", SK);
    sink.options.insert(
        "aws_endpoint".into(),
        format!("http://127.0.0.1:{}", throttle.port),
    );
    let logs_dir = root.join("session_1/logs");
    std::fs::create_dir_all(&logs_dir).unwrap();
    // Incompressible: a 3 MB segment takes a minute at 50 kB/s.
    let mut noise = vec![0u8; 3 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(logs_dir.join("noise.bin"), &noise).unwrap();
    let mut side = Sidecar::new(
        &root,
        sink.clone(),
        &[
            ("RAYSHAPE_FLUSH_AGE", "100ms"),
            ("RAYSHAPE_SHUTDOWN_DEADLINE", "2s"),
        ],
    );
    side.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while throttle.upstream.load(Ordering::Relaxed) < 200_000 {
        assert!(
            Instant::now() < deadline,
            "the upload did not start; log:\n{}",
            side.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = Instant::now();
    let code = side.sigterm();
    let took = t.elapsed();
    assert_eq!(code, Some(1), "{}", side.log_text());
    assert!(
        took < Duration::from_secs(12),
        "exit {took:?} after SIGTERM with a 2 s deadline"
    );
    // Nothing was lost: the plan is pending, and a later start ships it, once.
    assert!(side.checkpoint().pending.is_some());
    throttle.rate.store(u64::MAX, Ordering::Relaxed);
    side.start();
    side.wait_metric(
        "rayshape_sidecar_unshipped_bytes",
        |v| v == 0.0,
        Duration::from_secs(60),
    );
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    let written = [Written {
        session: "session_1".into(),
        created_as: "noise.bin".into(),
        content: noise,
        deleted: false,
    }];
    assert_eq!(verify(&sink, &written, &base).await, 0);
    let _ = std::fs::remove_dir_all(base);
}

/// A segment with one entry of the given type, name and link target, as an attacker would
/// write it: the name is put into the header as raw bytes, unchecked.
fn planted_segment(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    let n = name.as_bytes();
    h.as_old_mut().name[..n.len()].copy_from_slice(n);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_mtime(0);
    let data: &[u8] = if kind == tar::EntryType::Regular {
        b"planted\n"
    } else {
        b""
    };
    h.set_size(data.len() as u64);
    if let Some(l) = link {
        let l = l.as_bytes();
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
    }
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, data).unwrap();
    zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_get_refuses_planted_entries_that_would_write_outside_out() {
    let _serial = serial().await;
    let base = scratch("planted");
    let store = base.join("store");
    let sink = format!("file://{}", store.display());
    let abs = base.join("abs");
    let cases: Vec<(String, tar::EntryType, Option<String>)> = vec![
        (
            "../../escaped~1/00000000000000000000".into(),
            tar::EntryType::Regular,
            None,
        ),
        (
            format!("{}~1/00000000000000000000", abs.display()),
            tar::EntryType::Regular,
            None,
        ),
        (
            "link~1/00000000000000000000".into(),
            tar::EntryType::Symlink,
            Some(base.display().to_string()),
        ),
        (
            "hard~1/00000000000000000000".into(),
            tar::EntryType::Link,
            Some("../../escaped~1/00000000000000000000".into()),
        ),
    ];
    for (i, (name, kind, link)) in cases.iter().enumerate() {
        let dir = store.join(format!("ns/rc/p-{i}/session_1"));
        std::fs::create_dir_all(&dir).unwrap();
        // Named as keys were before checkpoints had epochs: every version reads it.
        std::fs::write(
            dir.join("000000000000.tar.zst"),
            planted_segment(name, *kind, link.as_deref()),
        )
        .unwrap();
        let out = base.join(format!("out-{i}"));
        let got = Command::new(env!("CARGO_BIN_EXE_rayshape-sidecar"))
            .args([
                "logs",
                "get",
                "--sink",
                &sink,
                "--pod",
                &format!("ns/rc/p-{i}"),
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&got.stderr);
        assert_eq!(got.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains("refused") && stderr.contains(&format!("p-{i}")),
            "{name}: {stderr}"
        );
        let outside: Vec<PathBuf> = walk_files(&base)
            .into_iter()
            .filter(|p| !p.starts_with(&store) && !p.starts_with(base.join("sidecar.log")))
            .collect();
        assert!(outside.is_empty(), "{name} wrote {outside:?}");
    }
    let _ = std::fs::remove_dir_all(base);
}

/// A system user for one test, removed when dropped.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn create() -> TestUser {
        let name = format!("rstest{}", std::process::id());
        let st = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ])
            .status()
            .unwrap();
        assert!(st.success(), "useradd {name}");
        let id = |flag: &str| -> u32 {
            let o = Command::new("id").args([flag, &name]).output().unwrap();
            String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        TestUser { name, uid, gid }
    }

    fn chown(&self, p: &Path) {
        std::os::unix::fs::chown(p, Some(self.uid), Some(self.gid)).unwrap();
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_files_are_logged_counted_and_the_others_ship_as_a_non_root_user() {
    let _serial = serial().await;
    // Who we are, from /proc/self/status' Uid line.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let root_user = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root_user {
        assert!(
            std::env::var("RAYSHAPE_REQUIRE_TOOLS").is_err(),
            "this test creates a user: run it as root"
        );
        eprintln!("skipping: not root, cannot create a user");
        return;
    }
    let user = TestUser::create();
    let base = scratch("unreadable");
    let root = base.join("ray");
    let session = "session_1";
    let logs_dir = root.join(session).join("logs");
    std::fs::create_dir_all(&logs_dir).unwrap();
    // Ray's files are not ours: owned by root, readable by all but one.
    let mut written = Vec::new();
    for (name, mode) in [
        ("raylet.out", 0o644),
        ("secret.out", 0o600),
        ("gcs_server.out", 0o644),
    ] {
        let content = format!("{name}: some log line\n").into_bytes();
        std::fs::write(logs_dir.join(name), &content).unwrap();
        std::fs::set_permissions(
            logs_dir.join(name),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap();
        if mode == 0o644 {
            written.push(Written {
                session: session.into(),
                created_as: name.into(),
                content,
                deleted: false,
            });
        }
    }
    // The sidecar's own: its checkpoint directory and (here) its local sink. Neither is
    // writable at first (volumes mounted read-only, or owned by another user): the sidecar
    // stays up and says which, and goes on once they are.
    std::fs::create_dir_all(root.join("rayshape")).unwrap();
    let store = base.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let sink = file_sink(&store);
    let mut side = Sidecar::new(&root, sink.clone(), &[("RAYSHAPE_FLUSH_AGE", "200ms")]);
    side.user = Some((user.uid, user.gid));
    side.start();
    side.wait_state("checkpoint_error", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(side.running(), "{}", side.log_text());
    user.chown(&root.join("rayshape"));
    // A directory it may not write is a matter of permissions, not an outage.
    side.wait_state("unauthorized", Duration::from_secs(60));
    user.chown(&store);
    side.wait_state("shipping", Duration::from_secs(60));
    side.wait_metric(
        "rayshape_sidecar_unreadable_files_total",
        |v| v == 1.0,
        Duration::from_secs(30),
    );
    side.wait_metric(
        "rayshape_sidecar_files_tracked",
        |v| v == 2.0,
        Duration::from_secs(30),
    );
    side.wait_metric(
        "rayshape_sidecar_unshipped_bytes",
        |v| v == 0.0,
        Duration::from_secs(30),
    );
    // The others continue: new lines keep being shipped.
    let line = b"raylet.out: later\n";
    std::fs::OpenOptions::new()
        .append(true)
        .open(logs_dir.join("raylet.out"))
        .unwrap()
        .write_all(line)
        .unwrap();
    written[0].content.extend_from_slice(line);
    tokio::time::sleep(Duration::from_millis(500)).await;
    side.wait_metric(
        "rayshape_sidecar_unshipped_bytes",
        |v| v == 0.0,
        Duration::from_secs(30),
    );
    assert_eq!(
        side.metric("rayshape_sidecar_unreadable_files_total"),
        Some(1.0),
        "counted once"
    );
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    let log = side.log_text();
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot open log file"))
        .collect();
    assert_eq!(complaints.len(), 1, "{log}");
    assert!(
        complaints[0].contains("secret.out") && complaints[0].contains("Permission denied"),
        "{log}"
    );
    assert_eq!(verify(&sink, &written, &base).await, 0);
    let _ = std::fs::remove_dir_all(base);
}

/// What the sidecar's probe learns of a store's create-only puts.
#[derive(Clone, Copy, PartialEq)]
enum Overwrite {
    Refused,
    Ignored,
}

async fn round_trip(sink: SinkConfig, name: &str, overwrite: Overwrite) {
    let base = scratch(name);
    let root = base.join("ray");
    let mut w = Writer::new(&root, 20_000, 2);
    let mut side = Sidecar::new(&root, sink.clone(), &[("RAYSHAPE_FLUSH_AGE", "200ms")]);
    side.start();
    side.wait_ready();
    // Paced so that no file is created and deleted between two scans (100 ms).
    for i in 0..3000u32 {
        w.step();
        if i.is_multiple_of(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..500 {
        w.step();
    }
    if let Some(promtool) = tool("PROMTOOL_BIN") {
        let text = side.metrics_text();
        assert!(
            text.contains("rayshape_sidecar_segments_uploaded_total"),
            "{text}"
        );
        let mut check = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    let probed = match overwrite {
        Overwrite::Refused => "the store refuses to overwrite: segments are uploaded create-only",
        Overwrite::Ignored => "the store does not refuse overwrites (create-only puts are ignored)",
    };
    assert!(
        side.log_text().contains(probed),
        "{name}: {}",
        side.log_text()
    );
    assert_eq!(verify(&sink, &w.files, &base).await, 0, "{name}");
    let listing = logs::list(&Sink::open(&sink).unwrap(), Some("ml"))
        .await
        .unwrap();
    assert!(
        listing.starts_with("ml/rc/worker-1-0b5e\tsession_2026-11-22_12-00-00_000001_1\t"),
        "{listing}"
    );
    let _ = std::fs::remove_dir_all(base);
}

#[tokio::test(flavor = "multi_thread")]
async fn local_directory_sink() {
    let _serial = serial().await;
    let dir = scratch("file-sink");
    let zstd_cli = tool("ZSTD_BIN");
    round_trip(file_sink(&dir), "file", Overwrite::Refused).await;
    // Standard tools read the segments: `tar --zstd -tf` lists the chunks.
    let Some(zstd) = zstd_cli else { return };
    let seg = walk_files(&dir)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with("000000000000.tar.zst"))
        .expect("a first segment");
    let out = Command::new("tar")
        .arg(format!("--use-compress-program={}", zstd.display()))
        .arg("-tvf")
        .arg(&seg)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listing.contains("raylet.out~") && listing.contains("/00000000000000000000"),
        "{listing}"
    );
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The moto server on a free port, with one bucket made.
fn moto_with_bucket(bin: &Path, bucket: &str) -> (Proc, u16) {
    let port = free_port();
    let moto = Proc(Some(
        Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_port(port);
    // moto does not check signatures: a plain PUT makes the bucket.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    (moto, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_s3() {
    let _serial = serial().await;
    let Some(bin) = tool("MOTO_SERVER_BIN") else {
        return;
    };
    let (_moto, port) = moto_with_bucket(&bin, "moto-logs");
    let sink = sink_with(
        "s3://moto-logs/prefix",
        &[
            ("aws_endpoint", format!("http://127.0.0.1:{port}")),
            ("aws_allow_http", "true".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_access_key_id", "testing".into()),
            ("aws_secret_access_key", "testing".into()),
        ],
    );
    round_trip(sink, "moto", Overwrite::Refused).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn azurite_blob() {
    let _serial = serial().await;
    let Some(bin) = tool("AZURITE_BIN") else {
        return;
    };
    let Some(python) = tool("TEST_PYTHON") else {
        return;
    };
    let dir = scratch("azurite");
    let port = free_port();
    let _az = Proc(Some(
        Command::new(bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
            ])
            .arg(&dir)
            .args(["--disableTelemetry", "--skipApiVersionCheck", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_port(port);
    let conn = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    );
    let st = Command::new(python)
        .args(["-c", "import sys; from azure.storage.blob import BlobServiceClient as B; B.from_connection_string(sys.argv[1]).create_container('ray-logs')", &conn])
        .status()
        .unwrap();
    assert!(st.success(), "container not created");
    let sink = sink_with(
        "az://ray-logs/prefix",
        &[
            ("azure_storage_account_name", "devstoreaccount1".to_string()),
            ("azure_storage_account_key", AZURITE_KEY.into()),
            (
                "azure_storage_endpoint",
                format!("http://127.0.0.1:{port}/devstoreaccount1"),
            ),
            ("azure_allow_http", "true".into()),
        ],
    );
    round_trip(sink, "azurite", Overwrite::Refused).await;
}

/// GCS through object_store's GCS client (its XML API: `PUT`, `HEAD` and `GET` of
/// `/{bucket}/{key}` with a bearer token, `GET /{bucket}?list-type=2` read as a
/// `ListBucketResult`), served by moto's S3 server, which answers those requests in the
/// shape GCS does. No GCS emulator installable here serves them: fake-gcs-server 1.56.1 takes
/// an XML `PUT` only for signed URLs, gcp-storage-emulator has no `HEAD` or XML list. moto
/// ignores `x-goog-if-generation-match`, which GCS honours, so the probe finds overwrites
/// allowed here where GCS refuses them; the create-only path is the S3 stores' tests'. The
/// client percent-encodes the bucket in the path (`-` as `%2D`), which moto does not decode
/// (GCS does), hence a bucket name of letters only.
#[tokio::test(flavor = "multi_thread")]
async fn gcs_client_on_moto() {
    let _serial = serial().await;
    let Some(bin) = tool("MOTO_SERVER_BIN") else {
        return;
    };
    let (_moto, port) = moto_with_bucket(&bin, "gcslogs");
    let sink = sink_with(
        "gs://gcslogs/prefix",
        &[
            ("google_base_url", format!("http://127.0.0.1:{port}")),
            ("google_bearer_token", "test-token".into()),
            ("google_allow_http", "true".into()),
        ],
    );
    round_trip(sink, "gcs-moto", Overwrite::Ignored).await;
}

/// Set up moto with IAM enforced after the set-up's own calls: a bucket, a user that may
/// only put objects (the least a shipper needs), one that may do anything (to look). Prints
/// the two users' keys.
const MOTO_IAM: &str = r#"
import boto3, json, sys
ep = sys.argv[1]
kw = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
iam, s3 = boto3.client("iam", **kw), boto3.client("s3", **kw)
s3.create_bucket(Bucket="shipped-logs")
for user, actions in (("writer", ["s3:PutObject"]), ("reader", ["s3:*"])):
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps({"Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": ["arn:aws:s3:::shipped-logs", "arn:aws:s3:::shipped-logs/*"]}]}))
    k = iam.create_access_key(UserName=user)["AccessKey"]
    print(k["AccessKeyId"], k["SecretAccessKey"])
"#;

/// The calls MOTO_IAM makes before IAM is enforced.
const MOTO_IAM_CALLS: &str = "7";

/// A role that may put objects and nothing else (no GetObject: HEAD answers 403; no
/// overwrite question: a create-only put over an existing key answers 412) ships, starts
/// again, and settles a pending plan it cannot rebuild instead of waiting for ever on a
/// HEAD it may not make.
#[tokio::test(flavor = "multi_thread")]
async fn a_role_that_may_only_put_ships_and_settles_what_it_cannot_rebuild() {
    let _serial = serial().await;
    let (Some(bin), Some(python)) = (tool("MOTO_SERVER_BIN"), tool("TEST_PYTHON")) else {
        return;
    };
    let port = free_port();
    let _moto = Proc(Some(
        Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", MOTO_IAM_CALLS)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_port(port);
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = Command::new(&python)
        .args(["-c", MOTO_IAM, &endpoint])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys: Vec<Vec<String>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect();
    let sink = |k: &[String]| {
        sink_with(
            "s3://shipped-logs/prefix",
            &[
                ("aws_endpoint", endpoint.clone()),
                ("aws_allow_http", "true".into()),
                ("aws_region", "us-east-1".into()),
                ("aws_access_key_id", k[0].clone()),
                ("aws_secret_access_key", k[1].clone()),
            ],
        )
    };
    let (writer, reader) = (sink(&keys[0]), sink(&keys[1]));
    let base = scratch("put-only");
    let root = base.join("ray");
    let logs_dir = root.join("session_1/logs");
    std::fs::create_dir_all(&logs_dir).unwrap();
    std::fs::write(logs_dir.join("a.out"), "a".repeat(5000)).unwrap();
    std::fs::write(logs_dir.join("b.out"), "b".repeat(7000)).unwrap();
    let mut side = Sidecar::new(&root, writer.clone(), &[("RAYSHAPE_FLUSH_AGE", "200ms")]);
    side.start();
    side.wait_metric(
        "rayshape_sidecar_segments_uploaded_total",
        |v| v == 1.0,
        Duration::from_secs(30),
    );
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    let segments = || async {
        let store = Sink::open(&reader).unwrap();
        let listed: Vec<_> = futures_util::TryStreamExt::try_collect(store.store.list(None))
            .await
            .unwrap();
        listed
            .iter()
            .filter(|m| !m.location.as_ref().ends_with(".rayshape-probe"))
            .count()
    };
    assert_eq!(segments().await, 1);
    // As if the sidecar had died after that upload and before its commit, and one of the
    // planned files went while it was down: the plan cannot be rebuilt, and HEAD answers
    // 403. (This start's probe also meets the key the first one made.)
    pend_everything_again(&root);
    std::fs::remove_file(logs_dir.join("b.out")).unwrap();
    side.start();
    // Planned again and shipped (a new process: its counter starts at 0).
    side.wait_metric(
        "rayshape_sidecar_segments_uploaded_total",
        |v| v == 1.0,
        Duration::from_secs(30),
    );
    assert_eq!(side.metric("rayshape_sidecar_unshipped_bytes"), Some(0.0));
    assert_eq!(
        side.metric("rayshape_sidecar_state{state=\"shipping\"}"),
        Some(1.0),
        "{}",
        side.log_text()
    );
    assert_eq!(side.sigterm(), Some(0), "{}", side.log_text());
    let log = side.log_text();
    assert!(
        log.contains("the store refuses to overwrite")
            && log.contains("does not let this sidecar read whether it has it"),
        "{log}"
    );
    // a.out's bytes went again under a new sequence number: seen twice, never lost.
    assert_eq!(segments().await, 2);
    let _ = std::fs::remove_dir_all(base);
}

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
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

fn tool(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.exists())
    {
        Some(p) => Some(p),
        None => {
            assert!(
                std::env::var("RAYSHAPE_REQUIRE_TOOLS").is_err(),
                "{var} is required (tests/run.sh installs it)"
            );
            eprintln!("skipping: {var} not set");
            None
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "rayshape-ship-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when dropped.
struct Proc(Option<Child>);

impl Proc {
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// s3s-fs, restartable on the same port and data directory.
struct S3sFs {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    proc: Proc,
}

impl S3sFs {
    fn start(bin: PathBuf, dir: &Path, bucket: &str) -> S3sFs {
        std::fs::create_dir_all(dir.join(bucket)).unwrap();
        let mut s = S3sFs {
            bin,
            dir: dir.to_path_buf(),
            port: free_port(),
            proc: Proc(None),
        };
        s.restart();
        s
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
                SK,
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
        SinkConfig {
            url: format!("s3://{bucket}/ray-logs"),
            options: [
                ("aws_endpoint", format!("http://127.0.0.1:{}", self.port)),
                ("aws_allow_http", "true".into()),
                ("aws_region", "us-east-1".into()),
                ("aws_access_key_id", AK.into()),
                ("aws_secret_access_key", secret.into()),
                ("aws_virtual_hosted_style_request", "false".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        }
    }
}

/// The sidecar binary, started and stopped the ways Kubernetes does.
struct Sidecar {
    root: PathBuf,
    sink: SinkConfig,
    extra: Vec<(String, String)>,
    metrics_port: u16,
    proc: Proc,
    log: PathBuf,
    starts: usize,
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rayshape-sidecar"));
        cmd.arg("run")
            .env("RAYSHAPE_SINK_URL", &self.sink.url)
            .env("RAYSHAPE_SINK_OPTIONS", options.join(","))
            .env("RAYSHAPE_LOG_ROOT", &self.root)
            .env("RAYSHAPE_POD_NAME", "worker-1")
            .env("RAYSHAPE_POD_UID", "0b5e")
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
        let mut child = self.proc.0.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.proc.0.take().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            assert!(Instant::now() < deadline, "still running");
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
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).unwrap();
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint::load(&self.root.join("rayshape/checkpoint.json")).unwrap()
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

/// Reassemble the pod's logs from the store and hold them up against what was written:
/// every byte still on disk is in the store exactly once; what went missing was deleted
/// before it was read, and is returned as the loss.
async fn verify(sink: &SinkConfig, written: &[Written], scratch: &Path) -> u64 {
    let out = scratch.join("reassembled");
    let _ = std::fs::remove_dir_all(&out);
    let s = Sink::open(sink).unwrap();
    let got = logs::get(&s, "ml/rc/worker-1-0b5e", None, None, &out)
        .await
        .expect("no overlapping (duplicate) chunks");
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
        log.contains("upload failed; retrying"),
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
async fn wrong_credentials_are_a_clear_error_and_nothing_is_marked_shipped() {
    let _serial = serial().await;
    let Some(bin) = tool("S3S_FS_BIN") else {
        return;
    };
    let base = scratch("creds");
    let root = base.join("ray");
    let store = S3sFs::start(bin, &base.join("s3"), "logs");
    let mut w = Writer::new(&root, u64::MAX, 3);
    for _ in 0..50 {
        w.step();
    }
    let mut side = Sidecar::new(&root, store.sink("logs", "not-the-secret"), &[]);
    side.start();
    assert_eq!(side.wait_exit(Duration::from_secs(60)), Some(2));
    let log = side.log_text();
    assert!(
        log.contains("the store refuses writes: check the sink URL, bucket and credentials"),
        "{log}"
    );
    let ck = side.checkpoint();
    assert!(ck.files.iter().all(|f| f.shipped == 0) && ck.pending.is_none());
    let _ = std::fs::remove_dir_all(base);
}

async fn round_trip(sink: SinkConfig, name: &str) {
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
    round_trip(
        SinkConfig {
            url: format!("file://{}", dir.display()),
            options: Default::default(),
        },
        "file",
    )
    .await;
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

#[tokio::test(flavor = "multi_thread")]
async fn moto_s3() {
    let _serial = serial().await;
    let Some(bin) = tool("MOTO_SERVER_BIN") else {
        return;
    };
    let port = free_port();
    let _moto = Proc(Some(
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
    s.write_all(b"PUT /moto-logs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let sink = SinkConfig {
        url: "s3://moto-logs/prefix".into(),
        options: [
            ("aws_endpoint", format!("http://127.0.0.1:{port}")),
            ("aws_allow_http", "true".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_access_key_id", "testing".into()),
            ("aws_secret_access_key", "testing".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    };
    round_trip(sink, "moto").await;
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
    let sink = SinkConfig {
        url: "az://ray-logs/prefix".into(),
        options: [
            ("azure_storage_account_name", "devstoreaccount1".to_string()),
            ("azure_storage_account_key", AZURITE_KEY.into()),
            (
                "azure_storage_endpoint",
                format!("http://127.0.0.1:{port}/devstoreaccount1"),
            ),
            ("azure_allow_http", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    };
    round_trip(sink, "azurite").await;
}

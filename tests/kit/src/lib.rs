//! What rayshape's test suites share: the repository's root, scratch directories, free
//! ports, real servers started as child processes and stopped by PID (also when a test
//! fails, through `Drop`), and the Prometheus tools.
//!
//! Standard library only, so that it adds nothing to any build. Test code: it panics with
//! a message when the machine is not set up, which is what a test should do.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The repository's root directory.
pub fn repo() -> PathBuf {
    // tests/kit → tests → root
    let kit = Path::new(env!("CARGO_MANIFEST_DIR"));
    kit.ancestors()
        .nth(2)
        .expect("tests/kit lies two levels below the root")
        .to_path_buf()
}

/// A fresh, empty directory under the system's temp dir, unique to this process and call.
pub fn scratch(suite: &str, name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "rayshape-{suite}-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a scratch directory");
    d
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Wait until something accepts connections on 127.0.0.1:`port`.
pub fn wait_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listening on 127.0.0.1:{port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a missing tool fails the test (`tests/run.sh` sets `RAYSHAPE_REQUIRE_TOOLS=1`)
/// rather than skipping it.
fn require_tools() -> bool {
    std::env::var_os("RAYSHAPE_REQUIRE_TOOLS").is_some()
}

/// A program on `PATH`; `None` (the test skips) when absent, unless tools are required.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !require_tools(),
            "{name} is required (tests/run.sh installs it)"
        );
        eprintln!("skipping: {name} not installed");
    }
    found
}

/// A program named by an environment variable (`S3S_FS_BIN`, ...); `None` (the test skips)
/// when unset, unless tools are required.
pub fn tool_from_env(var: &str) -> Option<PathBuf> {
    let found = std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.exists());
    if found.is_none() {
        assert!(
            !require_tools(),
            "{var} is required (tests/run.sh installs it)"
        );
        eprintln!("skipping: {var} not set");
    }
    found
}

/// A child process, stopped by PID when dropped (so also when a test fails); `None` when
/// none runs.
pub struct Proc(pub Option<Child>);

impl Proc {
    /// Start `cmd`; its output goes where the command says.
    pub fn spawn(cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        Proc(Some(child))
    }

    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// Send a signal by PID (`TERM`, `KILL`, `STOP`, `CONT`, ...).
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Wait for the process to exit, up to `timeout`; `None` if it did not.
    pub fn wait_for(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.0.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.0 = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stop the process (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The underlying child, for its pipes.
    pub fn child(&mut self) -> Option<&mut Child> {
        self.0.as_mut()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `promtool check metrics` on a metrics page; `Err` holds promtool's complaint.
pub fn promtool_check(promtool: &Path, text: &str) -> Result<(), String> {
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", promtool.display()))?;
    if let Some(mut stdin) = check.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("cannot feed promtool: {e}"))?;
    }
    let out = check
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A real Prometheus scraping `targets` every second, on a free port, stopped when dropped.
pub struct Prometheus {
    pub port: u16,
    log: PathBuf,
    _proc: Proc,
}

impl Prometheus {
    /// Start `bin` with its configuration and data under `dir`.
    pub fn start(bin: &Path, dir: &Path, targets: &[String]) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        let quoted: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s}}\nscrape_configs:\n- job_name: rayshape\n  static_configs:\n  - targets: [{}]\n",
                quoted.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let log = dir.join("prometheus.log");
        let proc = Proc::spawn(
            Command::new(bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("create prometheus.log")),
        );
        Prometheus {
            port,
            log,
            _proc: proc,
        }
    }

    /// The value of an instant PromQL query returning one sample, if it returns one now.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let q: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let mut tcp = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        tcp.write_all(
            format!("GET /api/v1/query?query={q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
        let mut out = String::new();
        let _ = tcp.read_to_string(&mut out);
        let body = out.split_once("\r\n\r\n")?.1;
        // `"value":[<time>,"<number>"]`: the sample is the quoted number after the comma.
        let at = body.find("\"value\":[")?;
        let rest = &body[at..];
        let start = rest.find(",\"")? + 2;
        let end = start + rest[start..].find('"')?;
        rest[start..end].parse().ok()
    }

    /// Wait until `promql` returns `want`; panics with Prometheus' log otherwise.
    pub fn wait_for(&self, promql: &str, want: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            match self.query(promql) {
                Some(v) if v == want => return,
                other => last = other.or(last),
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never answered {want} to {promql} (last: {last:?}); log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

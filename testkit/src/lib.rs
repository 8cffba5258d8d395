//! Helpers for end-to-end tests that run the real binaries over real sockets:
//! locating built binaries, free ports, child processes that die with the test, and pollers.
//!
//! [`fake_control_plane`] serves the control stream for sidecar tests that script what
//! the control plane sends and check what the sidecar answers.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use outrider_testkit::*;
//! use std::time::Duration;
//! let port = free_port();
//! let _app = echo(port);
//! wait_for_http_ok(&format!("http://127.0.0.1:{port}/healthz"), Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```

pub mod fake_control_plane;

use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

/// Environment variable that overrides where [`bin_path`] looks for binaries.
pub const BIN_DIR_ENV: &str = "OUTRIDER_BIN_DIR";

/// Path of a workspace binary built into the same `target/<profile>/` as the running test.
///
/// Test executables live in `target/<profile>/deps/`; binaries one level up. Set
/// `OUTRIDER_BIN_DIR` to look elsewhere. Panics with a clear message when the binary is
/// missing: cargo builds a package's own binaries for its integration tests, but not other
/// packages' binaries.
pub fn bin_path(name: &str) -> PathBuf {
    match try_bin_path(name) {
        Ok(p) => p,
        Err(msg) => panic!("{msg}"),
    }
}

/// Like [`bin_path`], but returns the message instead of panicking.
pub fn try_bin_path(name: &str) -> Result<PathBuf, String> {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(d) => PathBuf::from(d),
        None => default_bin_dir()?,
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "binary `{name}` not found at {}; run `cargo build --workspace` first \
             (or set {BIN_DIR_ENV} to the directory that holds it)",
            path.display()
        ))
    }
}

fn default_bin_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate current exe: {e}"))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| format!("current exe {} has no parent", exe.display()))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server a test starts.
///
/// Ports are picked below the kernel's ephemeral range (`ip_local_port_range`): a port
/// from `bind(0)` comes from that range, and any outgoing connection made by the many
/// processes of a test run could take it before the server binds it. No port is handed
/// out twice in one test process.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::hash::{BuildHasher, RandomState};
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low);
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    if high > low + 1000 {
        let random = RandomState::new();
        for attempt in 0u32..10_000 {
            let port = low + (random.hash_one((std::process::id(), attempt)) % u64::from(high - low)) as u16;
            if !handed.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed.insert(port);
                return port;
            }
        }
    }
    // An unusual port range: fall back to what the kernel hands out.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A child process that is killed (SIGKILL) when dropped, with stdout and stderr captured
/// to a log file. If the test is panicking when a `Proc` is dropped, the tail of its log is
/// printed, so a failing test shows what the server said.
pub struct Proc {
    name: String,
    child: Child,
    log: tempfile::NamedTempFile,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Starts `bin` with `args` and extra environment variables (added to the inherited ones).
    pub fn spawn(bin: impl AsRef<Path>, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let bin = bin.as_ref();
        let name = bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| bin.display().to_string());
        let log = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .suffix(".log")
            .tempfile()
            .expect("create log file");
        let out = log.reopen().expect("open log file");
        let err = log.reopen().expect("open log file");
        let child = Command::new(bin)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        Proc {
            name,
            child,
            log,
            exit: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read(self.log.path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log (reads at most the last 64 KiB).
    pub fn log_tail(&self, lines: usize) -> String {
        let Ok(mut f) = File::open(self.log.path()) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(64 * 1024);
        let _ = f.seek(SeekFrom::Start(start));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Prints the log tail to stderr, headed by the process name.
    pub fn print_log_tail(&self, lines: usize) {
        eprintln!(
            "----- last {lines} lines of {} (pid {}, log {}) -----\n{}\n----- end of {} -----",
            self.name,
            self.pid(),
            self.log.path().display(),
            self.log_tail(lines),
            self.name
        );
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (e.g. `libc::SIGTERM`, `libc::SIGSTOP`) unless the process has exited.
    pub fn signal(&mut self, sig: i32) {
        if self.try_wait().is_none() {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own
            // un-reaped child, so it cannot have been recycled.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    /// SIGTERM, then waits up to 10 s for a clean exit; SIGKILL if it does not come.
    /// Returns the exit status (a signal-killed process has no exit code).
    pub fn terminate(&mut self) -> ExitStatus {
        self.terminate_within(Duration::from_secs(10))
    }

    /// [`Proc::terminate`] with a chosen grace period.
    pub fn terminate_within(&mut self, grace: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_exit(grace) {
            Some(s) => s,
            None => {
                eprintln!(
                    "{} (pid {}) ignored SIGTERM for {grace:?}; killing",
                    self.name,
                    self.pid()
                );
                self.kill9()
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(s) = self.try_wait() {
            return s;
        }
        let _ = self.child.kill();
        let s = self.child.wait().expect("wait for killed child");
        self.exit = Some(s);
        s
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tail(40);
        }
        self.kill9();
    }
}

/// Blocks until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(anyhow!("nothing listening on {addr} after {timeout:?}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Polls `url` with GET until it answers 2xx, or fails after `timeout` with the last error.
pub async fn wait_for_http_ok(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .context("build http client")?;
    wait_for(timeout, || async {
        let resp = client.get(url).send().await?;
        let status = resp.status();
        anyhow::ensure!(status.is_success(), "{url} answered {status}");
        Ok(())
    })
    .await
    .with_context(|| format!("waiting for {url} to answer 2xx"))
}

/// Polls `f` every 50 ms until it returns true; fails after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, || {
        let fut = f();
        async move {
            if fut.await {
                Ok(())
            } else {
                Err(anyhow!("condition still false"))
            }
        }
    })
    .await
}

/// Polls `f` every 50 ms until it returns `Ok`, and returns that value. After `timeout` it
/// fails with the last error, so the message says what was still wrong.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match tokio::time::timeout_at(deadline, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => anyhow!("attempt still running at the deadline"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!("timed out after {timeout:?}; last attempt: {last:#}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `outrider-echo` on 127.0.0.1:`port`, named `echo-<port>`, and waits until it
/// accepts connections.
pub fn echo(port: u16) -> Proc {
    echo_with(port, &format!("echo-{port}"), &[])
}

/// Starts `outrider-echo` with a name and extra flags (e.g. `["--fail-rate", "0.2"]`) and
/// waits until it accepts connections.
pub fn echo_with(port: u16, name: &str, extra_args: &[&str]) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", &listen, "--name", name];
    args.extend_from_slice(extra_args);
    let mut p = Proc::spawn(bin_path("outrider-echo"), &args, &[]);
    if let Err(e) = wait_for_port(port, Duration::from_secs(10)) {
        let exited = p.try_wait();
        p.print_log_tail(40);
        panic!("echo app did not start ({e}); exit status: {exited:?}");
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_error_tells_you_to_build() {
        let err = try_bin_path("outrider-no-such-binary").unwrap_err();
        assert!(err.contains("`outrider-no-such-binary`"), "{err}");
        assert!(err.contains("run `cargo build --workspace` first"), "{err}");
    }

    #[test]
    #[should_panic(expected = "run `cargo build --workspace` first")]
    fn bin_path_panics_when_missing() {
        bin_path("outrider-no-such-binary");
    }

    #[test]
    fn bin_dir_is_above_deps() {
        let dir = default_bin_dir().unwrap();
        assert_ne!(dir.file_name().unwrap(), "deps");
        assert!(dir.join("deps").is_dir(), "{}", dir.display());
    }

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("port should be bindable");
    }

    #[tokio::test]
    async fn wait_until_returns_once_condition_holds() {
        let start = Instant::now();
        wait_until(Duration::from_secs(5), || {
            let ready = start.elapsed() > Duration::from_millis(120);
            async move { ready }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn wait_until_times_out_with_message() {
        let start = Instant::now();
        let err = wait_until(Duration::from_millis(200), || async { false })
            .await
            .unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(err.to_string().contains("timed out after 200ms"), "{err}");
    }

    #[tokio::test]
    async fn wait_for_reports_last_error() {
        let mut n = 0;
        let err = wait_for::<(), _, _>(Duration::from_millis(150), || {
            n += 1;
            let n = n;
            async move { Err(anyhow!("attempt {n} failed")) }
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("failed"), "{err}");
    }

    #[tokio::test]
    async fn wait_for_http_ok_fails_on_closed_port() {
        let port = free_port();
        let err = wait_for_http_ok(&format!("http://127.0.0.1:{port}/healthz"), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("timed out"), "{err:#}");
    }

    #[test]
    fn proc_captures_output_and_terminates() {
        let mut p = Proc::spawn(
            "/bin/sh",
            &["-c", "echo hello-$GREETING; exec sleep 30"],
            &[("GREETING", "testkit")],
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.log().contains("hello-testkit") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(p.log_tail(1), "hello-testkit");
        assert!(p.is_running());
        let status = p.terminate();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert!(!p.is_running());
    }
}

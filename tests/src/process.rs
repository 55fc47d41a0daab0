//! Child processes of the test world (the AWS model, Prometheus) and polling helpers.
//!
//! A [`ChildProcess`] is stopped by its PID when dropped (SIGTERM, then SIGKILL after a short
//! grace), so a failing test leaves nothing running. Its stdout and stderr go to a log file that
//! error messages quote, because "did not start" is useless without the child's own words.
//! Waiting is always polling against a deadline: a fixed sleep is either too long or flaky.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How long a child gets between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for a child to go after SIGKILL before giving up on it.
pub const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often the polling helpers look again.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How much of a log an error message quotes (its end, where the reason usually is).
const LOG_TAIL_BYTES: u64 = 6 * 1024;

/// A running child process, stopped by PID when dropped.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    grace: Duration,
    exit: Option<ExitStatus>,
}

impl ChildProcess {
    /// Start `command` with stdin closed and stdout + stderr appended to `log_path`.
    ///
    /// The child gets its own process group, so a terminal's Ctrl-C reaches only the parent,
    /// which then stops its children in order. On Linux it also gets SIGTERM if the spawning
    /// thread dies (a test run killed from outside leaves no orphan), so spawn from a thread that
    /// lives as long as the guard (a test's or `main`'s thread, not `spawn_blocking`).
    pub fn spawn(
        name: impl Into<String>,
        mut command: Command,
        log_path: impl Into<PathBuf>,
    ) -> Result<Self> {
        let name = name.into();
        let log_path = log_path.into();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| {
                Error::io(
                    format!("creating the log file {} for {name}", log_path.display()),
                    e,
                )
            })?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating the log file handle for {name}"), e))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command
            .spawn()
            .map_err(|e| Error::io(format!("starting {name} ({program})"), e))?;
        tracing::debug!(%name, pid = child.id(), log = %log_path.display(), "child process started");
        Ok(ChildProcess {
            name,
            child,
            log_path,
            grace: DEFAULT_GRACE,
            exit: None,
        })
    }

    /// Change how long [`ChildProcess::stop`] waits between SIGTERM and SIGKILL.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The end of the child's log, for error messages.
    pub fn log_tail(&self) -> String {
        read_tail(&self.log_path)
    }

    /// The whole log as text (lossy UTF-8); empty if it cannot be read.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The exit status if the child has exited (it is reaped then), else `None`.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exit = Some(status);
        }
        self.exit
    }

    /// `Ok` while the child runs; [`Error::Exited`] with its log once it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.try_exit_status() {
            None => Ok(()),
            Some(status) => Err(Error::Exited {
                name: self.name.clone(),
                status: status.to_string(),
                log: self.log_tail(),
            }),
        }
    }

    /// Wait until a line of the log contains `needle` and return that line; fail early if the
    /// child exits first (with its log), or with [`Error::NotReady`] at the deadline.
    pub async fn wait_for_log_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.try_exit_status().is_some();
            if let Some(line) = self.log().lines().find(|line| line.contains(needle)) {
                return Ok(line.to_string());
            }
            self.check_running()?;
            if exited || Instant::now() >= deadline {
                return Err(self.not_ready(timeout));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Wait until `url` answers with a 2xx status; fail early if the child exits first.
    pub async fn wait_for_http(&mut self, url: &str, timeout: Duration) -> Result<()> {
        let client = http_client()?;
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if http_ok(&client, url).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(timeout));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn not_ready(&self, timeout: Duration) -> Error {
        Error::NotReady {
            name: self.name.clone(),
            seconds: timeout.as_secs(),
            log: self.log_tail(),
        }
    }

    /// Stop the child: SIGTERM, then SIGKILL after the grace period; reaps it. Blocks the
    /// calling thread for at most the grace period plus [`KILL_WAIT`] (prefer
    /// [`ChildProcess::shutdown`] in async code).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        for (signal, wait) in [(libc::SIGTERM, self.grace), (libc::SIGKILL, KILL_WAIT)] {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            self.send(signal);
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline {
                if let Some(status) = self.try_exit_status() {
                    return Some(status);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.not_reaped()
    }

    /// [`ChildProcess::stop`] without blocking the runtime while waiting.
    pub async fn shutdown(mut self) -> Option<ExitStatus> {
        for (signal, wait) in [(libc::SIGTERM, self.grace), (libc::SIGKILL, KILL_WAIT)] {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            self.send(signal);
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline {
                if let Some(status) = self.try_exit_status() {
                    return Some(status);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.not_reaped()
    }

    /// A child that outlived SIGKILL (stuck in the kernel): say so and go on rather than hang the
    /// test on `waitpid` — a run that never ends is worse than one zombie.
    fn not_reaped(&mut self) -> Option<ExitStatus> {
        let status = self.try_exit_status();
        if status.is_none() {
            tracing::error!(name = %self.name, pid = self.pid(), "child still not exited {KILL_WAIT:?} after SIGKILL; left behind");
            eprintln!(
                "test world: {} (pid {}) still not exited {KILL_WAIT:?} after SIGKILL; left behind",
                self.name,
                self.pid()
            );
        }
        status
    }

    fn send(&self, signal: libc::c_int) {
        if signal == libc::SIGKILL {
            tracing::warn!(name = %self.name, pid = self.pid(), "child ignored SIGTERM; sending SIGKILL");
        }
        self.signal(signal);
    }

    fn signal(&self, signal: libc::c_int) {
        // The child is not reaped yet, so its PID cannot have been reused by another process.
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid, signal) } != 0 {
            tracing::debug!(name = %self.name, pid, error = %std::io::Error::last_os_error(), "kill failed");
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Some(status) = self.stop() {
            tracing::debug!(name = %self.name, %status, "child process stopped");
        }
    }
}

fn read_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let start = len.saturating_sub(LOG_TAIL_BYTES);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes);
        let prefix = if start > 0 { "[...]\n" } else { "" };
        Ok(format!("({})\n{prefix}{}", path.display(), text.trim_end()))
    };
    read().unwrap_or_else(|e| format!("(log {} unreadable: {e})", path.display()))
}

fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .map_err(|e| Error::Invalid(format!("building an HTTP client: {e}")))
}

async fn http_ok(client: &reqwest::Client, url: &str) -> bool {
    matches!(client.get(url).send().await, Ok(response) if response.status().is_success())
}

/// Wait until `url` answers with a 2xx status, or fail with [`Error::Timeout`].
pub async fn wait_for_http(url: &str, timeout: Duration) -> Result<()> {
    let client = http_client()?;
    poll_until(&format!("{url} to answer"), timeout, || {
        let client = client.clone();
        async move { Ok(http_ok(&client, url).await.then_some(())) }
    })
    .await
}

/// Call `check` until it returns `Ok(Some(value))` (returned) or an error (returned at once);
/// [`Error::Timeout`] naming `what` once `timeout` has passed.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if started.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: what.to_string(),
                seconds: timeout.as_secs_f64(),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A port on 127.0.0.1 that was free a moment ago, for programs that cannot report the port
/// they bound (Prometheus). There is a small race; callers retry on "address already in use".
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| Error::io("finding a free port on 127.0.0.1", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("reading a bound port", e))?
        .port();
    Ok(port)
}

/// `Ok` if `port` on 127.0.0.1 can be bound now, [`Error::PortInUse`] if not.
pub fn check_port_free(port: u16) -> Result<()> {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(Error::PortInUse(port)),
        Err(e) => Err(Error::io(format!("checking port {port} on 127.0.0.1"), e)),
    }
}

/// Whether a process with this PID exists and is not a zombie (Linux `/proc`).
pub fn pid_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

//! Starting and stopping the environment's server processes.
//!
//! Servers run detached in their own process group so that they outlive the test binary that
//! started them and can be reused by the next one; their pids are recorded in `env.json`.

use std::{
    collections::BTreeSet,
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// A server process started by the environment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Server {
    pub name: String,
    pub pid: u32,
    /// The kernel's start time of the process (clock ticks since boot). Together with the pid it
    /// names the process for good, so a reused pid is never signalled.
    pub start_time: u64,
    pub log: std::path::PathBuf,
}

/// Spawns `command` detached, with output to `logs/<name>.log`.
pub fn spawn(name: &str, mut command: Command, logs: &Path) -> Result<Server> {
    use std::os::unix::process::CommandExt;
    fs::create_dir_all(logs)?;
    let log = logs.join(format!("{name}.log"));
    // Appended, so a restarted server keeps the log of its previous run.
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
    let pid = child.id();
    let (_, start_time) = proc_stat(pid).with_context(|| format!("{name} (pid {pid}) vanished at once"))?;
    Ok(Server { name: name.to_owned(), pid, start_time, log })
}

/// The state letter and start time of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces; the fields after it are fixed.
    let (_, fields) = stat.rsplit_once(") ")?;
    let mut fields = fields.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?; // field 22 of stat; `state` was field 3
    Some((state, start_time))
}

impl Server {
    /// Whether the process is still running (and is still ours).
    pub fn is_running(&self) -> bool {
        proc_stat(self.pid).is_some_and(|(state, start_time)| state != 'Z' && start_time == self.start_time)
    }

    /// SIGTERM, then SIGKILL if it has not gone after `grace`; with no grace, SIGKILL at once
    /// (a crash). Returns once the process is gone, so its ports are free again.
    pub fn stop(&self, grace: Duration) {
        if !self.is_running() {
            return;
        }
        if !grace.is_zero() {
            signal(self.pid, "TERM");
            let deadline = Instant::now() + grace;
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if self.is_running() {
            signal(self.pid, "KILL");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.holds_files() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process still holds open files (sockets included). A killed multi-threaded
    /// process shows as a zombie while its other threads are still exiting, and its files
    /// (listening sockets) stay open until the last thread is gone.
    fn holds_files(&self) -> bool {
        match proc_stat(self.pid) {
            Some((_, start_time)) if start_time == self.start_time => {
                fs::read_dir(format!("/proc/{}/fd", self.pid)).is_ok_and(|mut fds| fds.next().is_some())
            }
            _ => false,
        }
    }

    /// The log's error lines and its last lines, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        // klog marks errors with a leading E or F; Java and Rust servers say ERROR or Exception.
        let is_error = |line: &&&str| {
            line.starts_with('E')
                || line.starts_with('F')
                || line.contains("ERROR")
                || line.contains("Exception")
        };
        let errors: Vec<&str> = all.iter().filter(is_error).copied().collect();
        let errors = &errors[errors.len().saturating_sub(10)..];
        let tail = &all[all.len().saturating_sub(lines)..];
        format!("{}\n--- {} ---\n{}", errors.join("\n"), self.log.display(), tail.join("\n"))
    }
}

/// A server a test started for itself: stopped when the test ends, passing or failing.
pub struct StopOnDrop(pub Server);

impl std::ops::Deref for StopOnDrop {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.0
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop(Duration::from_secs(5));
    }
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

/// A loopback port that is free right now, below the kernel's ephemeral range (32768 and up
/// here): a port from that range, once released, can be taken at any moment as the source port
/// of some outgoing connection, and a server restarted on it then fails with "address in use".
///
/// A port is handed out once per process: tests run side by side, and a port handed to one
/// stays free until its server binds it, so another test could be handed it too (or find this
/// probe's brief listener there and take it for its own server's).
pub fn free_port() -> Result<u16> {
    const FIRST: u16 = 20000;
    const COUNT: u16 = 12000;
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos()
            ^ std::process::id().wrapping_mul(2_654_435_761);
    for step in 0..COUNT as u32 {
        let port = FIRST + ((seed.wrapping_add(step.wrapping_mul(7919))) % u32::from(COUNT)) as u16;
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port in {FIRST}..{}", FIRST + COUNT)
}

/// Waits until something accepts TCP connections on `port`, failing early if `server` exits.
pub fn wait_for_port(server: &Server, port: u16, timeout: Duration) -> Result<()> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if !server.is_running() {
            bail!("{} exited before listening on {port}; log tail:\n{}", server.name, server.log_tail(30));
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not listen on {port} within {timeout:?}; log tail:\n{}",
                server.name,
                server.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

//! Child processes of the `teamlog` binary for tests, `teamlog dev` and the
//! benchmarks: start a role, wait until it listens, stop it cleanly or kill
//! it as a crash would.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

pub use rustix::process::Signal;
use rustix::process::{kill_process, Pid};

use crate::TestkitError;

/// A child process of the teamlog binary running one role, listening on `addr`.
pub struct ChildProcess {
    pub addr: SocketAddr,
    role: String,
    child: tokio::process::Child,
}

impl ChildProcess {
    /// Starts `exe tlog` (the teamlog binary) on 127.0.0.1:0 in `data_dir`
    /// and waits until it listens.
    pub async fn spawn(
        exe: &Path,
        data_dir: &Path,
        extra_args: &[&str],
    ) -> Result<ChildProcess, TestkitError> {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::spawn_tlog_at(exe, data_dir, any_port, extra_args, None).await
    }

    /// Starts `exe tlog` listening on `listen` in `data_dir` and waits until
    /// it listens. Its log goes to `log` (appended) when given, else to
    /// this process's stderr.
    pub async fn spawn_tlog_at(
        exe: &Path,
        data_dir: &Path,
        listen: SocketAddr,
        extra_args: &[&str],
        log: Option<&Path>,
    ) -> Result<ChildProcess, TestkitError> {
        std::fs::create_dir_all(data_dir).map_err(TestkitError::io(data_dir))?;
        let address_file = data_dir.join("address");
        let _ = std::fs::remove_file(&address_file);
        let mut args: Vec<OsString> = vec![
            "tlog".into(),
            "--listen".into(),
            listen.to_string().into(),
            "--data-dir".into(),
            data_dir.into(),
            "--address-file".into(),
            address_file.clone().into(),
        ];
        args.extend(extra_args.iter().map(OsString::from));
        let mut child = launch(exe, &args, log)?;
        let addr = wait_until(&mut child, "tlog", || {
            let text = std::fs::read_to_string(&address_file).ok()?;
            text.trim().parse().ok()
        })
        .await?;
        Ok(ChildProcess {
            addr,
            role: "tlog".to_owned(),
            child,
        })
    }

    /// Starts `exe ARGS` for a role that listens on `addr`, and waits until
    /// that address accepts connections. Its log goes to `log` (appended)
    /// when given, else to this process's stderr.
    pub async fn spawn_listening(
        exe: &Path,
        args: &[OsString],
        addr: SocketAddr,
        log: Option<&Path>,
    ) -> Result<ChildProcess, TestkitError> {
        let mut child = launch(exe, args, log)?;
        let role = role_of(args);
        wait_until(&mut child, &role, || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100))
                .ok()
                .map(|_| ())
        })
        .await?;
        Ok(ChildProcess { addr, role, child })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it.
    pub async fn kill9(mut self) -> Result<(), TestkitError> {
        self.child.kill().await.map_err(TestkitError::Wait)
    }

    /// Asks the process to stop (SIGTERM) and waits for it; an exit other
    /// than a clean one is an error. A process still running after
    /// `STOP_TIMEOUT` is killed, and that is an error too: a role that
    /// does not stop when asked hangs whoever runs it.
    pub async fn stop(mut self) -> Result<(), TestkitError> {
        if let Some(pid) = self.child.id() {
            signal(pid, Signal::TERM)?;
        }
        let status = match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(waited) => waited.map_err(TestkitError::Wait)?,
            Err(_) => {
                self.child.kill().await.map_err(TestkitError::Wait)?;
                return Err(TestkitError::StopTimeout {
                    role: self.role,
                    timeout: STOP_TIMEOUT,
                });
            }
        };
        if !status.success() {
            return Err(TestkitError::Exited { status });
        }
        Ok(())
    }
}

/// The role a command line starts: its first argument.
fn role_of(args: &[OsString]) -> String {
    args.first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Spawns `exe ARGS`, killed if dropped, its stderr appended to `log` when
/// given.
fn launch(
    exe: &Path,
    args: &[OsString],
    log: Option<&Path>,
) -> Result<tokio::process::Child, TestkitError> {
    let mut command = tokio::process::Command::new(exe);
    command.args(args).kill_on_drop(true);
    if let Some(log) = log {
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(TestkitError::io(log))?;
        command.stderr(file);
    }
    command.spawn().map_err(|source| TestkitError::Spawn {
        role: role_of(args),
        source,
    })
}

/// How long a role may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a role may take to stop once asked.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `ready` until it yields, the child exits, or `START_TIMEOUT` passes.
async fn wait_until<T>(
    child: &mut tokio::process::Child,
    role: &str,
    mut ready: impl FnMut() -> Option<T>,
) -> Result<T, TestkitError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(value) = ready() {
            return Ok(value);
        }
        if let Some(status) = child.try_wait().map_err(TestkitError::Wait)? {
            return Err(TestkitError::ExitedDuringStart {
                role: role.to_owned(),
                status,
            });
        }
        if Instant::now() > deadline {
            return Err(TestkitError::StartTimeout {
                role: role.to_owned(),
                timeout: START_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Where listening ports for clusters are taken from: below Linux's
/// ephemeral range (32768 on by default), so that no outgoing connection
/// takes a port a cluster file names before its process binds it.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Ports this process handed out: never twice, so two clusters started
/// by one test binary never name the same port (a process of one would
/// then answer for the other).
static HANDED_OUT: std::sync::Mutex<Option<HandedOut>> = std::sync::Mutex::new(None);

struct HandedOut {
    ports: std::collections::BTreeSet<u16>,
    /// The next port to try. It starts at a point spread over the range
    /// by the process id and the clock, so that test binaries running at
    /// once mostly take ports far apart.
    next: u16,
}

/// Addresses on 127.0.0.1 that were free a moment ago and that this
/// process has not handed out before, for a cluster file.
pub fn free_local_addrs(count: usize) -> Result<Vec<SocketAddr>, TestkitError> {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let span = PORTS.end - PORTS.start;
    let handed = handed.get_or_insert_with(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let spread =
            (u64::from(std::process::id() ^ nanos)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        HandedOut {
            ports: Default::default(),
            next: PORTS.start + (spread % u64::from(span)) as u16,
        }
    });
    let mut addrs = Vec::with_capacity(count);
    for _ in 0..span {
        if addrs.len() == count {
            return Ok(addrs);
        }
        let port = handed.next;
        handed.next = if port + 1 >= PORTS.end {
            PORTS.start
        } else {
            port + 1
        };
        if handed.ports.contains(&port) {
            continue;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            handed.ports.insert(port);
            addrs.push(addr);
        }
    }
    if addrs.len() == count {
        return Ok(addrs);
    }
    Err(TestkitError::Ports(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("fewer than {count} free ports left in {PORTS:?}"),
    )))
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: u32, signal: Signal) -> Result<(), TestkitError> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or(TestkitError::Signal(rustix::io::Errno::SRCH))?;
    kill_process(pid, signal).map_err(TestkitError::Signal)
}

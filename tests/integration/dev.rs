//! `teamlog dev` as a fresh user meets it: start a local cluster with a
//! short generated workload, read the final data back through `teamlog
//! client` and compare it with what the replay checked against the trace's
//! model, see every process healthy in `teamlog status --json`, stop with
//! Ctrl-C, and start again on the same directory with the data intact.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use testkit::Signal;

/// A running `teamlog dev`. Dropped while it runs (a check failed), it gets
/// Ctrl-C, so it stops its cluster instead of leaving it behind.
struct Dev(Option<Child>);

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            let _ = stop(child);
        }
    }
}

/// How long `teamlog dev` may take to stop its cluster after Ctrl-C.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Ctrl-C, and its exit within `STOP_TIMEOUT`; past that it is killed.
fn stop(mut child: Child) -> Result<ExitStatus> {
    let signalled = testkit::process::signal(child.id(), Signal::INT);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while signalled.is_ok() && Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    signalled?;
    bail!("teamlog dev did not stop within {STOP_TIMEOUT:?} of Ctrl-C")
}

/// How many of its last stderr lines a failed start shows.
const STDERR_TAIL: usize = 100;

/// Starts `teamlog dev ARGS` and waits (bounded) for its "cluster ready"
/// line; returns the process and everything it printed until then. A start
/// that fails says what the process printed on both streams.
fn start_dev(args: &[&str]) -> Result<(Dev, String)> {
    let mut child = Command::new(crate::exe())
        .arg("dev")
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (lines_tx, lines) = mpsc::channel();
    // Both streams are drained to the end, so the process never blocks on
    // a full pipe nor writes to a closed one.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let (tail_tx, stderr_tail) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tail = VecDeque::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        let _ = tail_tx.send(Vec::from(tail));
    });
    let mut seen = String::new();
    loop {
        let why = match lines.recv_timeout(Duration::from_secs(180)) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.starts_with("cluster ready") {
                    return Ok((Dev(Some(child)), seen));
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                format!("was not ready within 180 s ({})", child.wait()?)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                format!("exited before it was ready ({})", child.wait()?)
            }
        };
        // The process is gone, so its stderr ends, unless a process it
        // started holds it still.
        let stderr = stderr_tail
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| vec!["(still open)".to_owned()]);
        bail!(
            "teamlog dev {why}; it printed:\n{seen}\nand on stderr (the last lines):\n{}",
            stderr.join("\n")
        );
    }
}

/// Ctrl-C, as a user would, and a clean exit.
fn interrupt(mut dev: Dev) -> Result<()> {
    let status = stop(dev.0.take().expect("a running dev"))?;
    ensure!(status.success(), "teamlog dev exited with {status}");
    Ok(())
}

/// Runs `teamlog ARGS`: whether it succeeded, its stdout and its stderr.
fn teamlog(args: &[&str]) -> Result<(bool, String, String)> {
    let output = Command::new(crate::exe())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()?;
    Ok((
        output.status.success(),
        String::from_utf8(output.stdout)?,
        String::from_utf8(output.stderr)?,
    ))
}

/// crc32c of the `key = value` listing, as the replay's result records it.
fn digest(listing: &str) -> String {
    let body: String = listing
        .lines()
        .filter(|l| !l.starts_with("(more"))
        .map(|l| format!("{l}\n"))
        .collect();
    format!("{:08x}", crc32c::crc32c(body.as_bytes()))
}

#[test]
fn dev_runs_a_workload_that_reads_back_and_restarts_intact() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_str().context("utf-8 path")?;
    let (dev, printed) = start_dev(&[
        "--workload",
        "--duration",
        "2",
        "--data-dir",
        data,
        "--keep-running",
    ])?;
    ensure!(
        printed.contains("check: passed"),
        "the replay's check did not pass:\n{printed}"
    );
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("result.json"))?)?;
    let check = &result["check"];
    ensure!(check["passed"] == true);
    let version = check["version"]
        .as_u64()
        .context("check version")?
        .to_string();
    let expected = check["digest"].as_str().context("check digest")?.to_owned();
    ensure!(std::fs::read_to_string(dir.path().join("plot.svg"))?.contains("<svg"));
    // The whole cluster is one process, which logs to a file without
    // terminal colours.
    let logs: Vec<_> = std::fs::read_dir(dir.path().join("logs"))?.collect::<Result<_, _>>()?;
    ensure!(logs.len() == 1, "{logs:?}");
    for log in &logs {
        let text = std::fs::read(log.path())?;
        ensure!(!text.contains(&0x1b), "{:?} holds ANSI escapes", log.path());
    }

    let cluster = dir.path().join("cluster.toml");
    let cluster = cluster.to_str().context("utf-8 path")?;
    let read_all = |version: &str| {
        teamlog(&[
            "client",
            "--cluster",
            cluster,
            "get-range",
            "",
            "\\xff",
            "--limit",
            "1000000",
            "--version",
            version,
        ])
    };
    let read_latest = || {
        teamlog(&[
            "client",
            "--cluster",
            cluster,
            "get-range",
            "",
            "\\xff",
            "--limit",
            "1000000",
        ])
    };
    let (ok, listing, _) = read_all(&version)?;
    ensure!(ok && !listing.is_empty());
    ensure!(
        digest(&listing) == expected,
        "the data read back differs from what the replay checked"
    );

    // Healthy once settled: a recovery under way (the machine may be
    // crowded enough to make one) reports itself unhealthy until it ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (ok, status, _) = teamlog(&["status", "--cluster", cluster, "--json"])?;
        let status: serde_json::Value = serde_json::from_str(&status)?;
        if ok && status["healthy"] == true && status["unhealthy"] == 0 {
            break status;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "status reports a problem: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // The coordinators, the recruited sequencer, proxy and TLogs, and the
    // storage servers.
    ensure!(status["processes"] == 3 + 1 + 1 + 3 + 6, "{status}");
    let mut every = vec![&status["sequencer"]];
    for role in ["coordinators", "proxies", "tlogs", "storage_servers"] {
        every.extend(status[role].as_array().context("a list per role")?);
    }
    ensure!(
        every.len() == 14 && every.iter().all(|p| p["healthy"] == true),
        "{status}"
    );
    interrupt(dev)?;

    // The same directory again: the same cluster, with its data. Its
    // storage servers may still be catching up when it says it is ready,
    // so a read that fails is tried again for a while. The restart's
    // recovery moves versions on by more than the storage servers keep, so
    // the data is read at the latest version (nothing was committed since
    // the check), and the check's own version may already be too old.
    let (dev, _) = start_dev(&["--data-dir", data])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let again = loop {
        let (ok, again, _) = read_latest()?;
        if ok {
            break again;
        }
        if std::time::Instant::now() > deadline {
            let _ = interrupt(dev);
            bail!("the data could not be read back after a restart");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if digest(&again) != expected {
        let _ = interrupt(dev);
        bail!("the data changed across a restart");
    }
    // At the check's version, the same data or a clear refusal.
    let (ok, at_check, refusal) = read_all(&version)?;
    let kept = ok && digest(&at_check) == expected;
    if !kept && !refusal.contains("transaction_too_old") {
        let _ = interrupt(dev);
        bail!("a read at the check's version after a restart: {at_check}{refusal}");
    }
    interrupt(dev)
}

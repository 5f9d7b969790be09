//! `teamlog status`: asks every process in the cluster file for its status,
//! all at once and each with a deadline, and prints a table or one JSON
//! object. The exit status is non-zero when any process is unhealthy.
//!
//! ```text
//!  cluster.toml ─▶ coordinators, sequencer, proxies, tlogs, storage servers
//!                   │ concurrently: connect + Status, each within --timeout-ms
//!                   ▼
//!  ClusterStatus ─▶ text table | --json      (exit 1 if any is unhealthy)
//! ```
//!
//! A process is *healthy* when it answered in time with its role's status
//! and nothing in it is wrong: a coordinator that knows no leader (an
//! election is under way, or a majority is out of reach), knows no cluster
//! controller, or whose raft stopped, a proxy that refuses commits to a team
//! whose servers fall behind (throttling), a TLog that is poisoned, locked or
//! stalled (waiting for disk space, commits waiting with it), a
//! sequencer whose committed version trails the last version it handed
//! out by more than `STALL_SECONDS` of versions (the commit chain is
//! stuck; past `MAX_VERSIONS_AHEAD` it also refuses new versions), a
//! storage server that stopped applying, cannot flush (waiting for disk
//! space), is rebuilding from its teammates, cannot copy a range
//! it is adding for a move (its last page read failed, or it got no page
//! for `COPY_STALL_SECONDS`), or trails the
//! committed version by more than that, are unhealthy, with the reason. A proxy
//! that paces new commits while storage servers fall behind (`delaying`)
//! is healthy: it says how fast it lets commits in and why.
//! A storage server the current generation leaves out of its teams
//! (`teamlog exclude`) is healthy whether or not it answers, with
//! `"excluded": true` (the field is absent for every other process). One
//! the controller left out because it did not answer (the configuration's
//! failed servers) is unhealthy, with `"failed": true` and the reason,
//! until it answers and is taken back, or an operator excludes it.
//!
//! The JSON shape (field names are stable; versions and ids are integers; a
//! process's `status` is its reply as the protocol defines it, plus a
//! storage server's lag, or null when it did not answer; `error` says why
//! a process is unhealthy):
//!
//! ```json
//! { "healthy": true, "processes": 8, "unhealthy": 0,
//!   "committed_version": 1200,
//!   "coordinators": [ { "role": "coordinator", "id": 1, "address": "...", "healthy": true,
//!                       "error": null,
//!                       "status": { "id": 1, "leader": 2, "term": 3, "last_applied": 17,
//!                                   "problem": null, "controller": 3,
//!                                   "watched": [ { "role": "tlog", "id": 0, "address": "...",
//!                                                  "failed_for_ms": null } ] } } ],
//!   "sequencer": { "role": "sequencer", "address": "127.0.0.1:4500",
//!                  "healthy": true, "error": null,
//!                  "status": { "last_version": 1210, "committed_version": 1200 } },
//!   "proxies": [ { "role": "proxy", "id": 1, "address": "...", "healthy": true, "error": null,
//!                  "status": { "proxy": 1, "known_committed_version": 1200, "commits": 10,
//!                              "throttling": null, "delaying": null } } ],
//!   "tlogs": [ { "role": "tlog", "id": 0, "address": "...", "healthy": true, "error": null,
//!                "status": { "durable_version": 1210, "known_committed_version": 1190,
//!                            "locked": false, "poisoned": false,
//!                            "memory_bytes": 4096, "memory_budget": 268435456,
//!                            "disk_bytes": 67108864, "truncation_blocker": 1,
//!                            "teams": [ { "team": 1, "popped": 900, "bytes": 2048,
//!                                         "servers": [100, 101] } ],
//!                            "stalled": null } } ],
//!   "storage_servers": [ { "role": "storage", "id": 100, "address": "...",
//!                          "healthy": true, "error": null,
//!                          "status": { "server": 100, "applied_version": 1200, "durable_version": 900,
//!                                      "oldest_readable_version": 900,
//!                                      "committed_version": 1200, "lag_versions": 0,
//!                                      "lag_seconds": 0.0, "window_bytes": 512,
//!                                      "teams": [1], "stopped": null, "stalled": null,
//!                                      "rebuilding": null } } ] }
//! ```
//!
//! The sequencer has no `id`; a coordinator's `leader` and `controller`
//! (the id of the coordinator hosting it) are null when it knows none, and
//! its `watched` list (every process, with how long the controller's
//! failure detector has taken it for failed) is empty unless it hosts the
//! controller; a TLog's `id` is its index in the cluster
//! file, a proxy's and a storage server's their id there.
//! `truncation_blocker` is null when nothing holds truncation back. A
//! storage server's lag is the committed version it learned from the
//! sequencer (the sequencer's own when it could not) minus its applied
//! version, and in seconds at 1,000,000 versions a second. Neither that lag
//! nor the sequencer's counts the versions a recovery skipped (those
//! between a generation's first version and the floor its sequencer hands
//! out above): no commit is at any of them, so a server that has not yet
//! applied the new generation's first commit is not seconds behind.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use futures::future::join_all;
use proto::rpc::{
    CoordinatorStatusReply, Message, ProxyStatusReply, SequencerStatusReply, StorageStatusReply,
    TLogStatusReply,
};
use proto::transport::{ClientConfig, RpcClient};
use proto::{Version, MAX_VERSIONS_AHEAD};
use serde::Serialize;

use cluster::ClusterFile;
use coordinator::client::CoordinatorClient;

/// Versions per second, for showing a lag as time.
const VERSIONS_PER_SECOND: f64 = 1_000_000.0;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[arg(long)]
    pub cluster: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// How long each process has to answer before it counts as unhealthy.
    #[arg(long, default_value_t = 2_000)]
    pub timeout_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub healthy: bool,
    pub processes: usize,
    pub unhealthy: usize,
    /// The sequencer's committed version; null when it did not answer.
    pub committed_version: Option<u64>,
    pub coordinators: Vec<ProcessStatus<CoordinatorStatusReply>>,
    pub sequencer: ProcessStatus<SequencerStatusReply>,
    pub proxies: Vec<ProcessStatus<ProxyStatusReply>>,
    pub tlogs: Vec<ProcessStatus<TLogStatusReply>>,
    pub storage_servers: Vec<ProcessStatus<StorageStatus>>,
}

/// One process: who it is, whether it answered, and what it said.
#[derive(Debug, Serialize)]
pub struct ProcessStatus<T> {
    pub role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub address: SocketAddr,
    pub healthy: bool,
    pub error: Option<String>,
    pub status: Option<T>,
    /// A storage server the current generation leaves out of its teams
    /// (`teamlog exclude`): whatever it answers, or if it does not, it
    /// counts as healthy.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub excluded: bool,
    /// A storage server the controller left out of its teams because it
    /// did not answer (or answered that it stopped): unhealthy until it
    /// is taken back.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
}

/// A storage server's reply, with its lag behind the committed version.
#[derive(Debug, Serialize)]
pub struct StorageStatus {
    #[serde(flatten)]
    pub reply: StorageStatusReply,
    pub lag_versions: u64,
    pub lag_seconds: f64,
}

pub async fn run(args: StatusArgs) -> Result<()> {
    let cluster = ClusterFile::load(&args.cluster)?;
    let transport = cluster.client_config()?;
    let status = gather(&cluster, &transport, Duration::from_millis(args.timeout_ms)).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render_text(&status));
    }
    if !status.healthy {
        bail!(
            "{} of {} processes are unhealthy",
            status.unhealthy,
            status.processes
        );
    }
    Ok(())
}

/// Asks every process of `cluster` at once; each has `timeout` to answer.
pub async fn gather(
    cluster: &ClusterFile,
    transport: &ClientConfig,
    timeout: Duration,
) -> ClusterStatus {
    let coordinators = join_all(cluster.coordinators.iter().map(|c| {
        ask(c.address, transport, timeout, |m| match m {
            Message::CoordinatorStatus(r) => Some(r),
            _ => None,
        })
    }));
    let path = commit_path(cluster, transport, timeout).await;
    let sequencer = async {
        match path.sequencer {
            Ok(addr) => {
                ask(addr, transport, timeout, |m| match m {
                    Message::SequencerStatus(r) => Some(r),
                    _ => None,
                })
                .await
            }
            Err(ref why) => Err(why.clone()),
        }
    };
    let proxies = join_all(path.proxies.iter().map(|(_, addr)| {
        ask(*addr, transport, timeout, |m| match m {
            Message::ProxyStatus(r) => Some(r),
            _ => None,
        })
    }));
    let tlogs = join_all(path.tlogs.iter().map(|addr| {
        ask(*addr, transport, timeout, |m| match m {
            Message::TLogStatus(r) => Some(r),
            _ => None,
        })
    }));
    let storage = join_all(cluster.storage_servers.iter().map(|s| {
        ask(s.address, transport, timeout, |m| match m {
            Message::StorageStatus(r) => Some(r),
            _ => None,
        })
    }));
    let recorded = async {
        match cluster.is_recruited() {
            true => recorded(cluster, transport, timeout).await,
            false => (Vec::new(), SkippedVersions::default()),
        }
    };
    let (coordinators, sequencer, proxies, tlogs, storage, (failed, skipped)) =
        tokio::join!(coordinators, sequencer, proxies, tlogs, storage, recorded);

    let committed = sequencer.as_ref().ok().map(|s| s.committed_version.0);
    let coordinators: Vec<_> = cluster
        .coordinators
        .iter()
        .zip(coordinators)
        .map(|(entry, reply)| {
            process("coordinator", Some(entry.id), entry.address, reply, |r| {
                let problem = coordinator_problem(&r);
                (r, problem)
            })
        })
        .collect();
    let sequencer = process(
        "sequencer",
        None,
        path.sequencer
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        sequencer,
        |r| {
            let problem = sequencer_problem(&r, &skipped);
            (r, problem)
        },
    );
    let proxies: Vec<_> = path
        .proxies
        .iter()
        .zip(proxies)
        .map(|((id, address), reply)| {
            process("proxy", Some(*id), *address, reply, |r| {
                let problem = proxy_problem(&r);
                (r, problem)
            })
        })
        .collect();
    let tlogs: Vec<_> = path
        .tlogs
        .iter()
        .zip(tlogs)
        .enumerate()
        .map(|(index, (entry, reply))| {
            process("tlog", Some(index as u64), *entry, reply, |r| {
                let problem = tlog_problem(&r);
                (r, problem)
            })
        })
        .collect();
    let storage_servers: Vec<_> = cluster
        .storage_servers
        .iter()
        .zip(storage)
        .map(|(entry, reply)| {
            let mut server = process("storage", Some(entry.id), entry.address, reply, |r| {
                let status = storage_status(r, committed, &skipped);
                let problem = storage_problem(&status);
                (status, problem)
            });
            if failed.contains(&entry.id) {
                server.failed = true;
                server.healthy = false;
                server.error = Some(FAILED.to_owned());
            } else if path.excluded_servers.contains(&entry.id) {
                server.excluded = true;
                server.healthy = true;
                server.error = None;
            }
            server
        })
        .collect();

    let health = std::iter::once(sequencer.healthy)
        .chain(coordinators.iter().map(|p| p.healthy))
        .chain(proxies.iter().map(|p| p.healthy))
        .chain(tlogs.iter().map(|p| p.healthy))
        .chain(storage_servers.iter().map(|p| p.healthy));
    let (processes, unhealthy) =
        health.fold((0, 0), |(all, bad), ok| (all + 1, bad + usize::from(!ok)));
    ClusterStatus {
        healthy: unhealthy == 0,
        processes,
        unhealthy,
        committed_version: committed,
        coordinators,
        sequencer,
        proxies,
        tlogs,
        storage_servers,
    }
}

/// Connects to `addr` and asks for its status, all within `timeout`.
async fn ask<T>(
    addr: SocketAddr,
    transport: &ClientConfig,
    timeout: Duration,
    expect: impl Fn(Message) -> Option<T>,
) -> Result<T, String> {
    let config = ClientConfig {
        connect_timeout: timeout,
        request_timeout: timeout,
        ..transport.clone()
    };
    let call = async {
        let client = RpcClient::connect(addr, config).await?;
        client.call(Message::Status).await
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(reply)) => {
            let name = reply.name();
            expect(reply).ok_or_else(|| format!("answered {name}, not its role's status"))
        }
    }
}

/// The commit path to ask: the cluster file's, or the current
/// generation's as a coordinator tells it when the controller recruits it.
struct CommitPathAddresses {
    sequencer: Result<SocketAddr, String>,
    proxies: Vec<(u64, SocketAddr)>,
    tlogs: Vec<SocketAddr>,
    /// The storage servers the current generation leaves out.
    excluded_servers: Vec<u64>,
}

/// Why a storage server the controller left out is unhealthy.
const FAILED: &str = "failed: left out of its teams by the controller after it did not answer \
                      (or answered that it stopped); it is taken back once it answers";

async fn commit_path(
    cluster: &ClusterFile,
    transport: &ClientConfig,
    timeout: Duration,
) -> CommitPathAddresses {
    if !cluster.is_recruited() {
        return CommitPathAddresses {
            sequencer: cluster.sequencer_address().map_err(|e| e.to_string()),
            proxies: cluster.proxies.iter().map(|p| (p.id, p.address)).collect(),
            tlogs: cluster.tlog_addresses(),
            excluded_servers: Vec::new(),
        };
    }
    let mut failures = Vec::new();
    for coordinator in &cluster.coordinators {
        let call = async {
            let client = RpcClient::connect(coordinator.address, transport.clone()).await?;
            client.call(Message::GetClusterInfo).await
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(Message::ClusterInfo(info))) => {
                return CommitPathAddresses {
                    sequencer: info.sequencer.ok_or_else(|| {
                        format!(
                            "no commit path recorded: the cluster is recovering into epoch {}",
                            info.epoch + 1
                        )
                    }),
                    proxies: (1..).zip(info.proxies).collect(),
                    tlogs: info.tlogs,
                    excluded_servers: info.excluded_servers,
                };
            }
            Ok(Ok(other)) => failures.push(format!(
                "{}: answered {}",
                coordinator.address,
                other.name()
            )),
            Ok(Err(e)) => failures.push(format!("{}: {e}", coordinator.address)),
            Err(_) => failures.push(format!(
                "{}: no answer within {timeout:?}",
                coordinator.address
            )),
        }
    }
    CommitPathAddresses {
        sequencer: Err(format!(
            "no coordinator told where the commit path is: {}",
            failures.join("; ")
        )),
        proxies: Vec::new(),
        tlogs: Vec::new(),
        excluded_servers: Vec::new(),
    }
}

/// What the coordinators record that the processes do not say: the
/// storage servers the configuration says failed (the controller's own
/// status line still names them), and the versions recoveries skipped,
/// from the core state. Either is empty when the coordinators do not
/// answer within `timeout`; a lag across a recovery then counts the
/// versions it skipped.
async fn recorded(
    cluster: &ClusterFile,
    transport: &ClientConfig,
    timeout: Duration,
) -> (Vec<u64>, SkippedVersions) {
    let Ok(coordinators) =
        CoordinatorClient::new(&cluster.coordinator_addresses(), transport.clone())
    else {
        return (Vec::new(), SkippedVersions::default());
    };
    let (configuration, core) = tokio::join!(
        tokio::time::timeout(timeout, coordinators.read_configuration()),
        tokio::time::timeout(timeout, coordinators.read_core_state()),
    );
    let failed = match configuration {
        Ok(Ok(configuration)) => configuration.failed_servers.into_iter().collect(),
        _ => Vec::new(),
    };
    let skipped = match core {
        Ok(Ok((core, _))) => SkippedVersions::of(&core.generations),
        _ => SkippedVersions::default(),
    };
    (failed, skipped)
}

/// The spans of versions no commit is at: each generation's versions above
/// the one it chains from, up to and including the floor its sequencer
/// hands out above.
#[derive(Debug, Default)]
struct SkippedVersions(Vec<(Version, Version)>);

impl SkippedVersions {
    fn of(generations: &[cluster::core_state::Generation]) -> Self {
        Self(
            generations
                .iter()
                .filter(|g| g.floor > g.begin_version)
                .map(|g| (g.begin_version, g.floor))
                .collect(),
        )
    }

    /// How many versions in `(from, to]` a commit may be at.
    fn between(&self, from: Version, to: Version) -> u64 {
        let skipped: u64 = self
            .0
            .iter()
            .map(|(after, upto)| upto.0.min(to.0).saturating_sub(after.0.max(from.0)))
            .sum();
        to.0.saturating_sub(from.0).saturating_sub(skipped)
    }
}

/// A process's row: what it answered, judged by `judge` (the status to
/// show and, when something is wrong, what).
fn process<R, T>(
    role: &'static str,
    id: Option<u64>,
    address: SocketAddr,
    reply: Result<R, String>,
    judge: impl FnOnce(R) -> (T, Option<String>),
) -> ProcessStatus<T> {
    let (status, error) = match reply.map(judge) {
        Ok((status, problem)) => (Some(status), problem),
        Err(error) => (None, Some(error)),
    };
    ProcessStatus {
        role,
        id,
        address,
        healthy: error.is_none(),
        error,
        status,
        excluded: false,
        failed: false,
    }
}

/// How far, in seconds of versions, the committed version may trail the
/// last version handed out, or a storage server the committed version,
/// before it counts as stuck rather than busy.
pub const STALL_SECONDS: f64 = 5.0;

/// How long a storage server's copy of a range it adds for a move may go
/// without a page before it counts as stuck: a live mover makes versions
/// every 100 ms, and a page takes a fraction of a second at any rate the
/// copy may be set to.
pub const COPY_STALL_SECONDS: u64 = 30;

/// A coordinator that cannot serve, or whose controller is recovering:
/// until the recovery ends, nothing commits. A recovery that keeps being
/// abandoned says why (a TLog that knows more committed than the logs
/// hold stops it for good rather than lose commits).
fn coordinator_problem(r: &CoordinatorStatusReply) -> Option<String> {
    let recovering = r.recovery.as_ref().and_then(|report| {
        let how = report.recovering.as_ref()?;
        Some(match &report.last_failure {
            Some(why) => format!("{how}; the last attempt was abandoned: {why}"),
            None => how.clone(),
        })
    });
    let stuck = r
        .recovery
        .as_ref()
        .and_then(|report| report.distribution_problem.clone());
    let unfollowed = r
        .recovery
        .as_ref()
        .and_then(|report| report.configuration_problem.clone());
    r.problem
        .clone()
        .or_else(|| recovering.map(|how| format!("the controller is recovering: {how}")))
        .or(stuck)
        .or(unfollowed)
}

/// A version handed out but never committed stops every later commit (each
/// TLog takes versions in chain order). Once versions are `MAX_VERSIONS_AHEAD`
/// past the committed one, the sequencer also refuses new ones.
fn sequencer_problem(r: &SequencerStatusReply, skipped: &SkippedVersions) -> Option<String> {
    let ahead = r.last_version.0.saturating_sub(r.committed_version.0);
    let behind = skipped.between(r.committed_version, r.last_version) as f64 / VERSIONS_PER_SECOND;
    let refusing = match ahead >= MAX_VERSIONS_AHEAD {
        true => "; the sequencer refuses new versions until the committed version moves",
        false => "",
    };
    (behind > STALL_SECONDS).then(|| {
        format!(
            "commit chain stalled: version {} was handed out {behind:.1} s of versions ago and \
             the committed version is still {}{refusing}",
            r.last_version, r.committed_version
        )
    })
}

fn proxy_problem(r: &ProxyStatusReply) -> Option<String> {
    r.throttling
        .as_ref()
        .map(|why| format!("throttling, commits refused: {why}"))
}

fn tlog_problem(r: &TLogStatusReply) -> Option<String> {
    if r.poisoned {
        Some("poisoned: a sync failed; it takes no commits until restarted".to_string())
    } else if r.locked {
        Some("locked: its epoch ended; it refuses commits".to_string())
    } else {
        r.stalled
            .as_ref()
            .map(|why| format!("stalled, commits wait: {why}"))
    }
}

fn storage_problem(s: &StorageStatus) -> Option<String> {
    if let Some(reason) = &s.reply.stopped {
        return Some(format!("stopped applying: {reason}"));
    }
    if let Some(reason) = &s.reply.stalled {
        return Some(format!("stalled, nothing becomes durable: {reason}"));
    }
    if let Some(what) = &s.reply.rebuilding {
        return Some(format!(
            "rebuilding from its teammates, serves no reads: {what}"
        ));
    }
    if let Some(held) = s.reply.adding.iter().find(|a| a.problem.is_some()) {
        return Some(format!(
            "the copy of [{}, {}) for a move is held back: {}",
            proto::key_text::escape(&held.begin),
            proto::key_text::escape(&held.end),
            held.problem.as_deref().unwrap_or_default()
        ));
    }
    let stuck =
        |a: &&proto::rpc::AddingRangeStatus| !a.ready && a.idle_ms >= COPY_STALL_SECONDS * 1000;
    if let Some(stuck) = s.reply.adding.iter().find(stuck) {
        return Some(format!(
            "the copy of [{}, {}) for a move got no page for {:.0} s (no versions to install its last page at, or its source too slow)",
            proto::key_text::escape(&stuck.begin),
            proto::key_text::escape(&stuck.end),
            stuck.idle_ms as f64 / 1000.0
        ));
    }
    (s.lag_seconds > STALL_SECONDS).then(|| {
        format!(
            "behind: applied {} is {:.1} s behind the committed version {}",
            s.reply.applied_version, s.lag_seconds, s.reply.committed_version
        )
    })
}

/// The server's own view of the committed version is taken before its
/// applied version, so the two are consistent; the sequencer's stands in
/// when the server could not ask (it reports 0).
fn storage_status(
    mut reply: StorageStatusReply,
    sequencer_committed: Option<u64>,
    skipped: &SkippedVersions,
) -> StorageStatus {
    if reply.committed_version == Version::ZERO {
        reply.committed_version = Version(sequencer_committed.unwrap_or(0));
    }
    let lag = skipped.between(reply.applied_version, reply.committed_version);
    StorageStatus {
        reply,
        lag_versions: lag,
        lag_seconds: lag as f64 / VERSIONS_PER_SECOND,
    }
}

/// The table: one line per process, then a line per TLog team.
mod render;

pub use render::render_text;

#[cfg(test)]
mod tests;

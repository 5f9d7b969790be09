//! `teamlog replay TRACE`: drives a trace's commits and reads into a
//! cluster (`--path cluster`, here) or straight into a TLog and a storage
//! server (`--path log`, `replay_log`), measures them, and checks the final
//! key space against the trace's model.
//!
//! ```text
//!  TraceReader ─▶ open loop: each event at its time (or i / --rate), one task each
//!              └▶ closed loop: --clients tasks take the next event, wait --think-ms
//!  event ─▶ ReplayTarget::commit / read ─▶ Recorder (latency, per second, errors)
//!  1 in --visibility-sample acknowledged commits ─▶ ReplayTarget::visible ─▶ lag
//!  acknowledged (version, mutations) ─▶ Model ─┐
//!  ReplayTarget::scan (whole user key space) ──┴─▶ check ─▶ result.json, plot.svg
//! ```
//!
//! The cluster target commits and reads through the client library and
//! measures visibility by reading the commit's first key at its version
//! from every server of the team that owns it.

pub mod generate;
pub mod log_path;
pub mod plot;
pub mod report;
pub mod trace;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use proto::rpc::{ErrorCode, GetValueRequest, Message};
use proto::shard_map::ShardMap;
use proto::transport::{Peer, RpcError};
use proto::{Mutation, Version};

use crate::replay::plot::write_svg;
use crate::replay::report::{CheckResult, CommitCounts, Recorder, ReplayResult};
use crate::replay::trace::{Model, TraceEvent, TraceOp, TraceReader};
use client::{Client, ClientError};
use cluster::ClusterFile;
use proto::key_after;

#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// The trace to replay (see docs/TRACE_FORMAT.md).
    pub trace: PathBuf,
    /// The cluster file (for `--path cluster`).
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// `cluster`: through proxies, TLogs and storage servers; `log`: straight
    /// into a TLog, its cursor and one storage server, in this process.
    #[arg(long, value_enum, default_value = "cluster")]
    pub path: ReplayPath,
    /// For `--path log`: the TLog's store.
    #[arg(long, value_enum, default_value = "mem")]
    pub tlog: TLogStoreKind,
    /// For `--path log`: where the temporary data directory goes.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Open loop at this many events per second instead of the trace's times.
    #[arg(long, conflicts_with = "clients")]
    pub rate: Option<f64>,
    /// Closed loop: this many clients, each taking the next event.
    #[arg(long)]
    pub clients: Option<usize>,
    /// Closed loop: each client's pause after an event.
    #[arg(long, default_value_t = 0.0, requires = "clients")]
    pub think_ms: f64,
    /// Measure the visibility lag of one in this many acknowledged commits.
    #[arg(long, default_value_t = 10)]
    pub visibility_sample: u64,
    /// Write the JSON result here.
    #[arg(long)]
    pub result: Option<PathBuf>,
    /// Write the SVG plot here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Check the final key space against the trace's model (the default).
    #[arg(long, overrides_with = "no_check")]
    pub check: bool,
    #[arg(long, overrides_with = "check")]
    pub no_check: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayPath {
    Cluster,
    Log,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TLogStoreKind {
    Mem,
    File,
}

/// How a commit ended.
pub enum CommitOutcome {
    Acknowledged(Version),
    /// Not applied; the kind of refusal.
    Refused(String),
    /// Maybe applied; what went wrong.
    Unknown(String),
}

/// Where a replay sends its events.
pub trait ReplayTarget: Send + Sync + 'static {
    fn commit(&self, mutations: Vec<Mutation>) -> BoxFuture<'_, CommitOutcome>;
    /// Performs a `Get` or `GetRange`; the error is its kind.
    fn read<'a>(&'a self, op: &'a TraceOp) -> BoxFuture<'a, Result<(), String>>;
    /// Resolves once `key` is readable at `version` everywhere it is served.
    fn visible(&self, key: Bytes, version: Version) -> BoxFuture<'_, Result<(), String>>;
    /// The whole user key space at a version after every acknowledged commit.
    fn scan(&self) -> BoxFuture<'_, Result<(Version, BTreeMap<Bytes, Bytes>)>>;
}

/// Open loop (by the trace's times or a fixed rate) or closed loop.
#[derive(Clone, Copy, Debug)]
pub enum Pacing {
    Open { rate: Option<f64> },
    Closed { clients: usize, think: Duration },
}

impl Pacing {
    pub fn of(args: &ReplayArgs) -> Result<Pacing> {
        Ok(match (args.rate, args.clients) {
            (Some(rate), _) if !rate.is_finite() || rate <= 0.0 => bail!("--rate must be positive"),
            (_, Some(0)) => bail!("--clients must be positive"),
            (_, Some(clients)) => Pacing::Closed {
                clients,
                think: Duration::from_secs_f64(args.think_ms.max(0.0) / 1e3),
            },
            (rate, None) => Pacing::Open { rate },
        })
    }

    fn describe(&self) -> String {
        match self {
            Pacing::Open { rate: None } => "open loop at the trace's times".into(),
            Pacing::Open { rate: Some(r) } => format!("open loop at {r} events/s"),
            Pacing::Closed { clients, think } => format!(
                "closed loop, {clients} clients, {} ms think time",
                think.as_secs_f64() * 1e3
            ),
        }
    }
}

/// Events later than this are counted as late: tokio's timer may wake up
/// to a millisecond after a deadline, which is not the replay falling behind.
const LATE: Duration = Duration::from_millis(2);
/// The most mismatches a result lists.
const LISTED_MISMATCHES: usize = 20;
/// How long a visibility measurement or the final scan may wait.
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);

struct Shared {
    target: Arc<dyn ReplayTarget>,
    recorder: Recorder,
    model: Mutex<Model>,
    counts: Mutex<CommitCounts>,
    events: AtomicU64,
    reads: AtomicU64,
    acknowledged: AtomicU64,
    sample_every: u64,
    /// Visibility measurements still running; awaited before the check.
    lag_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    async fn execute(self: &Arc<Self>, event: TraceEvent) {
        self.events.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        match event.op {
            TraceOp::Commit(mutations) => {
                let count = mutations.len();
                let outcome = self.target.commit(mutations.clone()).await;
                match outcome {
                    CommitOutcome::Acknowledged(version) => {
                        self.recorder.record_commit(started.elapsed(), count);
                        lock(&self.counts).acknowledged += 1;
                        let first_key = mutations[0].first_key().clone();
                        lock(&self.model).acknowledged(version, mutations);
                        let ordinal = self.acknowledged.fetch_add(1, Ordering::Relaxed);
                        if ordinal % self.sample_every == 0 {
                            self.measure_visibility(first_key, version);
                        }
                    }
                    CommitOutcome::Refused(kind) => {
                        lock(&self.counts).refused += 1;
                        self.recorder
                            .record_error(&format!("commit_refused:{kind}"));
                    }
                    CommitOutcome::Unknown(kind) => {
                        lock(&self.counts).unknown += 1;
                        lock(&self.model).unknown(mutations);
                        self.recorder
                            .record_error(&format!("commit_unknown:{kind}"));
                    }
                }
            }
            op => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                match self.target.read(&op).await {
                    Ok(()) => self.recorder.record_read(started.elapsed()),
                    Err(kind) => self.recorder.record_error(&format!("read:{kind}")),
                }
            }
        }
    }

    fn measure_visibility(self: &Arc<Self>, key: Bytes, version: Version) {
        let shared = self.clone();
        let acknowledged = Instant::now();
        let task = tokio::spawn(async move {
            match shared.target.visible(key, version).await {
                Ok(()) => shared.recorder.record_lag(acknowledged.elapsed()),
                Err(kind) => shared.recorder.record_error(&format!("visibility:{kind}")),
            }
        });
        lock(&self.lag_tasks).push(task);
    }
}

/// Replays `trace` into `target` and checks the outcome when `check`.
pub async fn drive(
    target: Arc<dyn ReplayTarget>,
    trace: &Path,
    path_name: &str,
    pacing: Pacing,
    sample_every: u64,
    check: bool,
) -> Result<ReplayResult> {
    let reader = TraceReader::open(trace)?;
    let trace_seed = reader.header.seed;
    let started = Instant::now();
    let shared = Arc::new(Shared {
        target,
        recorder: Recorder::new(started),
        model: Mutex::new(Model::default()),
        counts: Mutex::new(CommitCounts::default()),
        events: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        acknowledged: AtomicU64::new(0),
        sample_every: sample_every.max(1),
        lag_tasks: Mutex::new(Vec::new()),
    });
    let progress = std::io::stdout()
        .is_terminal()
        .then(|| tokio::spawn(show_progress(shared.clone(), started)));
    let replayed = match pacing {
        Pacing::Open { rate } => open_loop(&shared, reader, rate, started).await,
        Pacing::Closed { clients, think } => closed_loop(&shared, reader, clients, think).await,
    };
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    replayed?;
    let lag_tasks = std::mem::take(&mut *lock(&shared.lag_tasks));
    for task in lag_tasks {
        task.await?;
    }
    let measurements = shared.recorder.finish();
    let check = if check {
        let (version, actual) = shared
            .target
            .scan()
            .await
            .context("reading the key space")?;
        let model = lock(&shared.model);
        let mismatches = model.check(&actual);
        Some(CheckResult {
            passed: mismatches.is_empty(),
            version: version.0,
            keys_read: actual.len(),
            digest: crate::replay::report::listing_digest(&actual),
            model_commits: model.commits(),
            mismatch_count: mismatches.len(),
            mismatches: mismatches.into_iter().take(LISTED_MISMATCHES).collect(),
        })
    } else {
        None
    };
    let counts = lock(&shared.counts).clone();
    Ok(ReplayResult {
        trace: trace.display().to_string(),
        trace_seed,
        path: path_name.into(),
        mode: pacing.describe(),
        events: shared.events.load(Ordering::Relaxed),
        commits: counts,
        reads: shared.reads.load(Ordering::Relaxed),
        measurements,
        check,
    })
}

async fn open_loop(
    shared: &Arc<Shared>,
    reader: TraceReader,
    rate: Option<f64>,
    started: Instant,
) -> Result<()> {
    let mut tasks = Vec::new();
    for (index, next) in reader.enumerate() {
        let (_, event) = next?;
        let offset = match rate {
            Some(rate) => Duration::from_secs_f64(index as f64 / rate),
            None => Duration::from_micros(event.at_us),
        };
        let due = started + offset;
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else if now - due > LATE {
            // Started late but still sent: an open loop never drops events.
            shared.recorder.record_late(now - due);
        }
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move { shared.execute(event).await }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(())
}

async fn closed_loop(
    shared: &Arc<Shared>,
    reader: TraceReader,
    clients: usize,
    think: Duration,
) -> Result<()> {
    let reader = Arc::new(Mutex::new(reader));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (shared, reader) = (shared.clone(), reader.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = lock(&reader).next();
                let Some(next) = next else {
                    return anyhow::Ok(());
                };
                shared.execute(next?.1).await;
                if !think.is_zero() {
                    tokio::time::sleep(think).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn show_progress(shared: Arc<Shared>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let (commits, reads, errors) = shared.recorder.totals();
        eprint!(
            "\r[{:>4} s] {commits} commits, {reads} reads, {errors} errors",
            started.elapsed().as_secs()
        );
    }
}

/// Prints the summary, writes the result and the plot, and fails when the
/// check found mismatches.
pub fn conclude(args: &ReplayArgs, result: &ReplayResult) -> Result<()> {
    print!("{}", result.summary());
    if let Some(path) = &args.result {
        result.write_json(path)?;
        println!("result: {}", path.display());
    }
    if let Some(path) = &args.plot {
        let title = format!("{} ({}, {})", result.trace, result.path, result.mode);
        write_svg(path, &title, &result.measurements.series)?;
        println!("plot: {}", path.display());
    }
    match &result.check {
        Some(check) if !check.passed => {
            bail!(
                "the cluster's data differs from the trace's model in {} keys",
                check.mismatch_count
            )
        }
        _ => Ok(()),
    }
}

pub async fn run(args: ReplayArgs) -> Result<()> {
    let pacing = Pacing::of(&args)?;
    if args.path == ReplayPath::Log {
        return crate::replay::log_path::run(args, pacing).await;
    }
    let Some(cluster_path) = &args.cluster else {
        bail!("--path cluster needs --cluster FILE");
    };
    let cluster = ClusterFile::load(cluster_path)?;
    let target = Arc::new(ClusterTarget::new(&cluster)?);
    let result = drive(
        target,
        &args.trace,
        "cluster",
        pacing,
        args.visibility_sample,
        !args.no_check,
    )
    .await?;
    conclude(&args, &result)
}

/// How old a cached read version may get before reads fetch a new one.
const READ_VERSION_AGE: Duration = Duration::from_millis(5);
/// The page size of the final scan.
const SCAN_PAGE: usize = 1_000;

/// A cluster reached through the client library.
pub struct ClusterTarget {
    client: Client,
    cluster: ClusterFile,
    shard_map: ShardMap,
    servers: BTreeMap<u64, Peer>,
    /// Refreshed by the first read that finds it stale; the lock makes
    /// concurrent reads share one refresh.
    read_version: tokio::sync::Mutex<Option<(Instant, Version)>>,
}

fn client_error_kind(error: &ClientError) -> String {
    match error {
        ClientError::Refused { code, .. } | ClientError::Read { code, .. } => code.to_string(),
        ClientError::UnknownResult(_) => "unknown_result".into(),
        ClientError::Unavailable(_) => "unavailable".into(),
        ClientError::Sequencer(_) => "sequencer".into(),
        ClientError::InvalidRange(_) => "invalid_range".into(),
        ClientError::Config(_) => "config".into(),
    }
}

impl ClusterTarget {
    pub fn new(cluster: &ClusterFile) -> Result<ClusterTarget> {
        let transport = cluster.client_config()?;
        Ok(ClusterTarget {
            client: Client::with_transport(cluster, transport.clone())?,
            shard_map: cluster.shard_map()?,
            servers: cluster
                .storage_servers
                .iter()
                .map(|s| (s.id, Peer::new(s.address, transport.clone())))
                .collect(),
            cluster: cluster.clone(),
            read_version: tokio::sync::Mutex::new(None),
        })
    }

    async fn fresh_read_version(&self) -> Result<Version, ClientError> {
        let mut cached = self.read_version.lock().await;
        if let Some((at, version)) = *cached {
            if at.elapsed() < READ_VERSION_AGE {
                return Ok(version);
            }
        }
        let version = self.client.read_version().await?;
        *cached = Some((Instant::now(), version));
        Ok(version)
    }

    /// The servers of the teams owning `key` in the cluster file's shard map.
    fn servers_of(&self, key: &[u8]) -> Vec<&Peer> {
        let (_, _, assignment) = self.shard_map.locate(key);
        assignment
            .src
            .iter()
            .filter_map(|team| self.cluster.teams.iter().find(|t| t.id == team.0))
            .flat_map(|team| team.servers.iter())
            .filter_map(|id| self.servers.get(id))
            .collect()
    }

    async fn read_from(server: &Peer, key: Bytes, version: Version) -> Result<(), String> {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let request = Message::GetValue(GetValueRequest {
                key: key.clone(),
                version,
            });
            let answer = async { server.client().await?.call(request).await }.await;
            match answer {
                Ok(_) => return Ok(()),
                // The server waited a while for the version; ask again.
                Err(RpcError::Remote {
                    code: ErrorCode::FutureVersion,
                    ..
                }) if Instant::now() < deadline => {}
                Err(RpcError::Remote { code, .. }) => return Err(code.to_string()),
                Err(_) => return Err("transport".into()),
            }
        }
    }
}

impl ReplayTarget for ClusterTarget {
    fn commit(&self, mutations: Vec<Mutation>) -> BoxFuture<'_, CommitOutcome> {
        async move {
            match self.client.commit(mutations).await {
                Ok(version) => CommitOutcome::Acknowledged(version),
                Err(e @ ClientError::UnknownResult(_)) => {
                    CommitOutcome::Unknown(client_error_kind(&e))
                }
                // Refused, or never sent (no proxy could be reached).
                Err(e) => CommitOutcome::Refused(client_error_kind(&e)),
            }
        }
        .boxed()
    }

    fn read<'a>(&'a self, op: &'a TraceOp) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let version = self
                .fresh_read_version()
                .await
                .map_err(|e| client_error_kind(&e))?;
            let read = match op {
                TraceOp::Get(key) => self.client.get(key, version).await.map(drop),
                TraceOp::GetRange { begin, end, limit } => self
                    .client
                    .get_range(begin, end, *limit as usize, false, version)
                    .await
                    .map(drop),
                TraceOp::Commit(_) => unreachable!("reads only"),
            };
            read.map_err(|e| client_error_kind(&e))
        }
        .boxed()
    }

    fn visible(&self, key: Bytes, version: Version) -> BoxFuture<'_, Result<(), String>> {
        async move {
            let servers = self.servers_of(&key);
            let reads = servers
                .into_iter()
                .map(|server| ClusterTarget::read_from(server, key.clone(), version));
            futures::future::try_join_all(reads).await.map(drop)
        }
        .boxed()
    }

    fn scan(&self) -> BoxFuture<'_, Result<(Version, BTreeMap<Bytes, Bytes>)>> {
        async move {
            // A recovery may be under way (a busy machine's failure
            // detector can start one): the client routes the next call to
            // the new sequencer, so ask again until the wait runs out.
            let version = (|| self.client.read_version())
                .retry(
                    ExponentialBuilder::new()
                        .with_min_delay(Duration::from_millis(20))
                        .with_max_delay(Duration::from_secs(1))
                        .with_total_delay(Some(WAIT_LIMIT))
                        .without_max_times(),
                )
                .when(|e| matches!(e, ClientError::Sequencer(_)))
                .await?;
            let deadline = Instant::now() + WAIT_LIMIT;
            let mut pairs = BTreeMap::new();
            let mut begin = Bytes::new();
            let end = Bytes::from_static(b"\xff");
            loop {
                let page = self
                    .client
                    .get_range(&begin, &end, SCAN_PAGE, false, version)
                    .await;
                let (page, more) = match page {
                    Ok(page) => page,
                    // The servers are still applying; they wait, then we ask again.
                    Err(ClientError::Read {
                        code: ErrorCode::FutureVersion,
                        ..
                    }) if Instant::now() < deadline => continue,
                    Err(e) => return Err(e.into()),
                };
                if let Some((last, _)) = page.last() {
                    begin = key_after(last);
                }
                pairs.extend(page);
                if !more {
                    return Ok((version, pairs));
                }
            }
        }
        .boxed()
    }
}

//! `teamlog bench tlog`: durable commit throughput and latency of one TLog,
//! printed next to raw fdatasync'd appends of the same batch sizes measured
//! in the same run on the same disk, and next to what the same load gets
//! without a disk (see [`crate::bench::baseline`]).
//!
//! ```text
//!  committers (1, 8, 64) ──commit──▶ TLog (in this process, over loopback)
//!  raw: write(batch) + fdatasync, in a preallocated file, for three batches:
//!       committers × payload; the TLog's record bytes per sync (@batch);
//!       its commits per sync × payload (@n: the same group commit, no format)
//!  no disk: the same committers ──▶ TLog with its files in tmpfs
//!                                ──▶ a server answering every commit at once
//! ```
//!
//! A cell runs in rounds: the TLog, then the raw appends at what the TLog
//! did in that round, and again. The disk of a shared machine changes speed
//! from second to second; paired rounds see it in the same state, and a
//! cell's ratios are the medians of its rounds' ratios.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use proto::transport::RpcClient;
use proto::{StorageServerId, StorageTeamId, Version};
use serde::Serialize;
use tlog::file_store::FileStore;
use tlog::server::{TLogConfig, TLogProcess, TLogService};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::bench::baseline::{raw_appends, serve_instant_commits};
use crate::bench::measure::{closed_loop, median, new_histogram, Figures, Sample};
use testkit::tlog_stream::{set_commit, VersionChain};

#[derive(clap::Args, Debug)]
pub struct TLogBenchArgs {
    /// Directory on the disk to measure; a temporary one under it is used.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// A directory in memory (tmpfs), where the same TLog runs without a
    /// disk: its syncs cost nothing.
    #[arg(long, default_value = "/dev/shm")]
    pub memory_dir: PathBuf,
    /// Seconds per measured cell, for the TLog and for each baseline.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Rounds a cell's seconds are split into, each the TLog then the raw
    /// appends.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Concurrent committers, comma separated.
    #[arg(long, default_value = "1,8,64", value_delimiter = ',')]
    pub committers: Vec<usize>,
    /// Payload bytes per commit, comma separated.
    #[arg(
        long,
        default_value = "100,1024,4096,16384,65536",
        value_delimiter = ','
    )]
    pub payloads: Vec<usize>,
}

#[derive(Serialize)]
struct Cell {
    committers: usize,
    payload: usize,
    tlog: Figures,
    /// Average record bytes the TLog made durable per fdatasync in this cell.
    tlog_batch_bytes: u64,
    /// Record bytes (payload and format overhead) made durable per second.
    tlog_record_mb_per_s: f64,
    /// Raw appends of committers × payload per sync.
    raw: Figures,
    /// Raw appends of the TLog's measured batch per sync.
    raw_same_batch: Figures,
    /// Commits the TLog made durable per fdatasync in this cell.
    tlog_commits_per_sync: f64,
    /// Raw appends of that many payloads per sync: the same group commit
    /// with no record format at all.
    raw_same_commits_per_sync: Figures,
    /// The same load on the same TLog with its files in memory (tmpfs).
    tlog_no_disk: Figures,
    /// The same load answered at once by a server that keeps nothing.
    instant: Figures,
    ratio_mb: f64,
    ratio_mb_same_batch: f64,
    /// Record bytes against raw at the same batch: how well the TLog drives
    /// the disk, apart from its format's overhead (large at small payloads).
    ratio_records_same_batch: f64,
    /// Payload against raw appends of the same payloads, as many per sync
    /// as the TLog had commits per sync.
    ratio_mb_same_commits_per_sync: f64,
    /// The best ratio at the same batch any disk could give this TLog.
    ratio_no_disk_same_batch: f64,
    /// The best ratio at the same batch the RPC path allows.
    ratio_instant_same_batch: f64,
    /// For one committer: 1.5 × (raw sync p50 + loopback round trip p50).
    latency_bound_us: Option<f64>,
    /// Each round's ratios; the `ratio_mb*` and `ratio_records*` figures
    /// above are their medians.
    rounds: Vec<RoundRatios>,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    loopback_rtt_p50_us: f64,
    cells: Vec<Cell>,
}

pub async fn run_tlog_bench(args: TLogBenchArgs) -> Result<()> {
    let temp = tempfile::tempdir_in(&args.dir).context("creating a bench dir")?;
    let seconds = Duration::from_secs_f64(args.seconds);
    let tlog = BenchTLog::start(&temp.path().join("tlog")).await?;
    let memory_dir = tempfile::tempdir_in(&args.memory_dir).with_context(|| {
        format!(
            "creating a dir in {} (--memory-dir) for the TLog without a disk",
            args.memory_dir.display()
        )
    })?;
    let no_disk = BenchTLog::start(&memory_dir.path().join("tlog")).await?;
    let instant = InstantCommitter::start().await?;
    let rtt = measure_rtt(&tlog.client).await?;
    let raw_file = temp.path().join("raw");
    println!("loopback round trip p50 {rtt:.0} us");
    println!(
        "{:>10} {:>8} | {:>9} {:>9} {:>8} {:>8} {:>9} | {:>9} {:>8} | {:>9} {:>9} | {:>9} {:>9} | {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "committers",
        "payload",
        "tlog MB/s",
        "commits/s",
        "p50 us",
        "p99 us",
        "batch B",
        "raw MB/s",
        "raw p50",
        "raw@batch",
        "raw@n",
        "nodisk",
        "instant",
        "ratio",
        "@batch",
        "rec@b",
        "@n",
        "nodisk",
        "inst"
    );
    let baselines = Baselines {
        no_disk: &no_disk,
        instant: &instant,
        raw_file: &raw_file,
        rtt,
    };
    let mut cells = Vec::new();
    for &payload in &args.payloads {
        for &committers in &args.committers {
            let cell =
                measure_cell(&tlog, &baselines, committers, payload, seconds, args.rounds).await?;
            print_cell(&cell);
            cells.push(cell);
        }
    }
    tlog.stop().await?;
    no_disk.stop().await?;
    instant.stop().await?;
    let report = Report {
        bench: "tlog",
        loopback_rtt_p50_us: rtt,
        cells,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// What a cell measures besides the TLog on disk.
struct Baselines<'a> {
    no_disk: &'a BenchTLog,
    instant: &'a InstantCommitter,
    raw_file: &'a Path,
    rtt: f64,
}

/// One round's ratios of the TLog's payload MB/s (records for `records`)
/// against the raw appends measured right after it.
#[derive(Serialize, Clone, Copy)]
struct RoundRatios {
    mb: f64,
    mb_same_batch: f64,
    records_same_batch: f64,
    mb_same_commits_per_sync: f64,
}

async fn measure_cell(
    tlog: &BenchTLog,
    baselines: &Baselines<'_>,
    committers: usize,
    payload: usize,
    seconds: Duration,
    rounds: u32,
) -> Result<Cell> {
    let slice = seconds / rounds;
    let (mut tlog_sample, mut syncs, mut records, mut commits) = (Sample::empty(), 0, 0, 0);
    let (mut raw, mut raw_same_batch, mut raw_same_commits) =
        (Sample::empty(), Sample::empty(), Sample::empty());
    let mut ratios = Vec::new();
    for _ in 0..rounds {
        let before = tlog.service.write_stats();
        let round = tlog.load(committers, payload, slice).await?;
        let after = tlog.service.write_stats();
        let round_syncs = (after.syncs - before.syncs).max(1);
        let round_records = after.bytes - before.bytes;
        let round_commits = after.commits - before.commits;
        let batch = (round_records / round_syncs).max(1) as usize;
        let same_commits = (round_commits as f64 / round_syncs as f64 * payload as f64)
            .round()
            .max(1.0) as usize;
        let round_raw = raw_appends(baselines.raw_file, committers * payload, slice)?;
        let round_raw_batch = raw_appends(baselines.raw_file, batch, slice)?;
        let round_raw_commits = raw_appends(baselines.raw_file, same_commits, slice)?;
        let tlog_mb = round.figures().mb_per_s;
        let record_mb = round_records as f64 / round.elapsed.as_secs_f64() / 1e6;
        ratios.push(RoundRatios {
            mb: tlog_mb / round_raw.figures().mb_per_s,
            mb_same_batch: tlog_mb / round_raw_batch.figures().mb_per_s,
            records_same_batch: record_mb / round_raw_batch.figures().mb_per_s,
            mb_same_commits_per_sync: tlog_mb / round_raw_commits.figures().mb_per_s,
        });
        tlog_sample.add(&round)?;
        raw.add(&round_raw)?;
        raw_same_batch.add(&round_raw_batch)?;
        raw_same_commits.add(&round_raw_commits)?;
        (syncs, records, commits) = (
            syncs + round_syncs,
            records + round_records,
            commits + round_commits,
        );
    }
    let tlog_no_disk = baselines
        .no_disk
        .load(committers, payload, seconds)
        .await?
        .figures();
    let instant = baselines
        .instant
        .load(committers, payload, seconds)
        .await?
        .figures();
    let raw = raw.figures();
    let raw_same_batch = raw_same_batch.figures();
    let ratio = |of: fn(&RoundRatios) -> f64| median(ratios.iter().map(of));
    Ok(Cell {
        committers,
        payload,
        tlog: tlog_sample.figures(),
        tlog_batch_bytes: records / syncs,
        tlog_record_mb_per_s: records as f64 / tlog_sample.elapsed.as_secs_f64() / 1e6,
        raw,
        raw_same_batch,
        tlog_commits_per_sync: commits as f64 / syncs as f64,
        raw_same_commits_per_sync: raw_same_commits.figures(),
        tlog_no_disk,
        instant,
        ratio_mb: ratio(|r| r.mb),
        ratio_mb_same_batch: ratio(|r| r.mb_same_batch),
        ratio_records_same_batch: ratio(|r| r.records_same_batch),
        ratio_mb_same_commits_per_sync: ratio(|r| r.mb_same_commits_per_sync),
        ratio_no_disk_same_batch: tlog_no_disk.mb_per_s / raw_same_batch.mb_per_s,
        ratio_instant_same_batch: instant.mb_per_s / raw_same_batch.mb_per_s,
        latency_bound_us: (committers == 1).then_some(1.5 * (raw.p50_us + baselines.rtt)),
        rounds: ratios,
    })
}

fn print_cell(cell: &Cell) {
    let percent = |ratio: f64| format!("{:.0}%", ratio * 100.0);
    println!(
        "{:>10} {:>8} | {:>9.1} {:>9.0} {:>8.0} {:>8.0} {:>9} | {:>9.1} {:>8.0} | {:>9.1} {:>9.1} | {:>9.1} {:>9.1} | {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}{}",
        cell.committers,
        cell.payload,
        cell.tlog.mb_per_s,
        cell.tlog.ops_per_s,
        cell.tlog.p50_us,
        cell.tlog.p99_us,
        cell.tlog_batch_bytes,
        cell.raw.mb_per_s,
        cell.raw.p50_us,
        cell.raw_same_batch.mb_per_s,
        cell.raw_same_commits_per_sync.mb_per_s,
        cell.tlog_no_disk.mb_per_s,
        cell.instant.mb_per_s,
        percent(cell.ratio_mb),
        percent(cell.ratio_mb_same_batch),
        percent(cell.ratio_records_same_batch),
        percent(cell.ratio_mb_same_commits_per_sync),
        percent(cell.ratio_no_disk_same_batch),
        percent(cell.ratio_instant_same_batch),
        cell.latency_bound_us
            .map(|b| format!("  (p50 bound {b:.0} us)"))
            .unwrap_or_default()
    );
}

async fn measure_rtt(client: &RpcClient) -> Result<f64> {
    let mut histogram = new_histogram();
    for _ in 0..2000 {
        let sent = Instant::now();
        client.status().await?;
        histogram.record(sent.elapsed().as_micros() as u64)?;
    }
    Ok(histogram.value_at_quantile(0.5) as f64)
}

/// A TLog in this process, served over loopback, with one registered team.
pub(crate) struct BenchTLog {
    pub service: TLogService<FileStore>,
    pub client: RpcClient,
    chain: Arc<VersionChain>,
    served: Served,
}

/// A server running on a task of this process, and the switch that stops it.
struct Served {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    /// Runs `serve` with a shutdown future that resolves on [`Served::stop`].
    fn spawn<F>(serve: impl FnOnce(BoxFuture<'static, ()>) -> F) -> Served
    where
        F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = Box::pin(async {
            let _ = stopped.await;
        });
        Served {
            stop,
            task: tokio::spawn(serve(shutdown)),
        }
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

const BENCH_TEAM: StorageTeamId = StorageTeamId(1);

fn bench_config() -> TLogConfig {
    let mut config = TLogConfig::default();
    config.core.memory_budget = 64 << 20;
    config
}

impl BenchTLog {
    /// A TLog on files in `data_dir`.
    pub async fn start(data_dir: &Path) -> Result<Self> {
        let tlog = TLogProcess::start("127.0.0.1:0".parse()?, data_dir, bench_config()).await?;
        let (addr, service) = (tlog.local_addr, tlog.service.clone());
        let served = Served::spawn(|shutdown| tlog.serve(shutdown));
        let client = RpcClient::connect(addr, Default::default()).await?;
        let register = proto::rpc::RegisterTeamRequest {
            team: BENCH_TEAM,
            servers: vec![StorageServerId(1)],
        };
        client.register_team(register).await?;
        let chain = Arc::new(VersionChain::starting_at(service.status().durable_version));
        Ok(BenchTLog {
            service,
            client,
            chain,
            served,
        })
    }

    /// `committers` closed-loop committers of `payload`-byte commits, while
    /// a consumer pops as storage servers would (so segments are recycled).
    pub async fn load(
        &self,
        committers: usize,
        payload: usize,
        seconds: Duration,
    ) -> Result<Sample> {
        let stop = Arc::new(AtomicBool::new(false));
        let consumer = {
            let (client, stop) = (self.client.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let durable = client.status().await?.durable_version;
                    let pop = proto::rpc::PopRequest {
                        team: BENCH_TEAM,
                        server: StorageServerId(1),
                        version: durable,
                    };
                    client.pop(pop).await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                anyhow::Ok(())
            })
        };
        let run = commit_loop(&self.client, &self.chain, committers, payload, seconds).await;
        stop.store(true, Ordering::Relaxed);
        consumer.await??;
        run
    }

    pub async fn stop(self) -> Result<()> {
        self.served.stop().await
    }
}

/// The bench's committers against a server that answers at once.
struct InstantCommitter {
    client: RpcClient,
    chain: Arc<VersionChain>,
    served: Served,
}

impl InstantCommitter {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let served = Served::spawn(|shutdown| serve_instant_commits(listener, shutdown));
        Ok(InstantCommitter {
            client: RpcClient::connect(addr, Default::default()).await?,
            chain: Arc::new(VersionChain::starting_at(Version(0))),
            served,
        })
    }

    async fn load(&self, committers: usize, payload: usize, seconds: Duration) -> Result<Sample> {
        commit_loop(&self.client, &self.chain, committers, payload, seconds).await
    }

    async fn stop(self) -> Result<()> {
        self.served.stop().await
    }
}

/// `committers` closed-loop committers, each committing `payload` bytes to
/// the bench team at the next version of `chain`, for `seconds`.
async fn commit_loop(
    client: &RpcClient,
    chain: &Arc<VersionChain>,
    committers: usize,
    payload: usize,
    seconds: Duration,
) -> Result<Sample> {
    let value = Bytes::from(vec![0x5a; payload.saturating_sub(16)]);
    let (client, chain) = (client.clone(), chain.clone());
    let sample = closed_loop(committers, seconds, move |worker, n| {
        let (client, chain, value) = (client.clone(), chain.clone(), value.clone());
        async move {
            let key = Bytes::from(format!("k{worker:04}-{n:010}"));
            let request = set_commit(chain.next_pair(), BENCH_TEAM, key, value, &[]);
            client.tlog_commit(request).await?;
            Ok(())
        }
    })
    .await?;
    Ok(sample.sized(payload))
}

//! `teamlog bench storage`: how fast one storage server catches up from a
//! preloaded TLog, next to heed's raw batched write rate for the same data
//! measured in the same run; then point and range read throughput and
//! latency against it over loopback.
//!
//! ```text
//!  preload: N sets (random keys) ─commit─▶ TLog (one team, versions of 100)
//!  catch-up: StorageService from version 1 ─peek/apply/flush─▶ heed   (timed)
//!  baseline: the same N sets ─batches of 10,000─▶ a bare HeedEngine    (timed)
//!  reads: 1..32 readers ─get / get_range(100)─▶ the server at the last version
//! ```

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use proto::rpc::{
    GetRangeRequest, GetValueRequest, Message, RegisterTeamRequest, TLogCommitRequest,
    TeamBlockData,
};
use proto::shard_map::ShardMap;
use proto::system_keys::ShardAssignment;
use proto::transport::{serve, RpcClient, ServerConfig, Service};
use proto::{Mutation, StorageServerId, StorageTeamId, Subsequence, TeamBlockBuilder, Version};
use serde::Serialize;
use storage_server::engine::{KvEngine, WriteBatch};
use storage_server::generations::LogDiscovery;
use storage_server::heed_engine::HeedEngine;
use storage_server::server::{StorageConfig, StorageService};
use storage_server::versioned::WindowConfig;
use tlog::server::{TLogConfig, TLogProcess};

use crate::bench::measure::{closed_loop, Figures};

#[derive(clap::Args, Debug)]
pub struct StorageBenchArgs {
    /// Directory on the disk to measure; a temporary one under it is used.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Mutations preloaded into the TLog.
    #[arg(long, default_value_t = 500_000)]
    pub mutations: u64,
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Concurrent readers, comma separated.
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    pub readers: Vec<usize>,
    /// Seconds per read cell.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
}

#[derive(Serialize)]
struct Rate {
    mutations_per_s: f64,
    mb_per_s: f64,
    seconds: f64,
}

#[derive(Serialize)]
struct ReadCell {
    readers: usize,
    kind: &'static str,
    figures: Figures,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    mutations: u64,
    value_bytes: usize,
    catch_up: Rate,
    heed_raw: Rate,
    ratio: f64,
    reads: Vec<ReadCell>,
}

const TEAM: StorageTeamId = StorageTeamId(1);
const PRIVATE_TEAM: StorageTeamId = StorageTeamId(1_001);
const SERVER: StorageServerId = StorageServerId(1);
const PER_VERSION: u64 = 100;
/// Versions between commits: about 1 ms each, as the sequencer would give.
const VERSION_STEP: u64 = 1_000;

fn key(i: u64) -> Bytes {
    // Scattered keys: LMDB's slow path, as real data mostly is.
    let scrambled = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    Bytes::from(format!("k{scrambled:016x}"))
}

pub async fn run(args: StorageBenchArgs) -> Result<()> {
    let temp = tempfile::tempdir_in(&args.dir).context("creating a bench dir")?;
    let value = Bytes::from(vec![b'v'; args.value_bytes]);
    let record_bytes = (17 + args.value_bytes) as f64;

    // Preload the TLog.
    let tlog = TLogProcess::start(
        "127.0.0.1:0".parse()?,
        &temp.path().join("tlog"),
        TLogConfig::default(),
    )
    .await?;
    let tlog_addr = tlog.local_addr;
    let (stop_tlog, tlog_stopped) = tokio::sync::oneshot::channel::<()>();
    let tlog_task = tokio::spawn(tlog.serve(async {
        let _ = tlog_stopped.await;
    }));
    let client = RpcClient::connect(tlog_addr, Default::default()).await?;
    for (team, servers) in [(TEAM, vec![SERVER]), (PRIVATE_TEAM, vec![SERVER])] {
        client
            .register_team(RegisterTeamRequest { team, servers })
            .await?;
    }
    let commits = args.mutations.div_ceil(PER_VERSION);
    let mut pushes = Vec::new();
    for c in 0..commits {
        let version = Version((c + 1) * VERSION_STEP);
        let mut block = TeamBlockBuilder::new(TEAM);
        for s in 0..PER_VERSION.min(args.mutations - c * PER_VERSION) {
            let m = Mutation::SetValue {
                key: key(c * PER_VERSION + s),
                value: value.clone(),
            };
            block.push(version, Subsequence(s as u32 + 1), &m)?;
        }
        let request = TLogCommitRequest {
            prev_version: Version(c * VERSION_STEP),
            version,
            // One TLog: what precedes a commit it takes is committed.
            known_committed_version: Version(c * VERSION_STEP),
            teams: vec![TeamBlockData {
                team: TEAM,
                data: block.finish(),
            }],
        };
        let client = client.clone();
        pushes.push(tokio::spawn(
            async move { client.tlog_commit(request).await },
        ));
        if pushes.len() >= 64 {
            for push in pushes.drain(..) {
                push.await??;
            }
        }
    }
    for push in pushes {
        push.await??;
    }
    let last = Version(commits * VERSION_STEP);
    println!(
        "preloaded {} mutations of {} value bytes in {commits} versions",
        args.mutations, args.value_bytes
    );

    // Catch up.
    let engine = Arc::new(HeedEngine::open(&temp.path().join("storage"), 64 << 30)?);
    let config = StorageConfig {
        id: SERVER,
        private_team: PRIVATE_TEAM,
        teams: BTreeSet::from([TEAM]),
        shards: ShardMap::new([(Bytes::new(), ShardAssignment::to(TEAM))])?,
        // The sequencer is asked only for status, which this does not use.
        logs: LogDiscovery::Pinned {
            tlogs: vec![tlog_addr],
            sequencer: tlog_addr,
        },
        replication: 1,
        // A short window (200 versions of 1,000), so nearly all data goes
        // through heed during the catch-up, as in the baseline.
        window: WindowConfig {
            max_versions: 200 * VERSION_STEP,
            max_bytes: 16 << 20,
        },
        read_wait: Duration::from_secs(1),
        transport: Default::default(),
        team_servers: Default::default(),
        move_bytes_per_second: None,
        engine_writes: Default::default(),
    };
    let started = Instant::now();
    let service = StorageService::start(engine, config)?;
    let deadline = started + Duration::from_secs(600);
    while service.applied_version() < last {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the storage server did not catch up in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let durable = service.durable_version();
    println!(
        "caught up in {seconds:.2} s; {:.0}% of the versions already durable in heed",
        100.0 * durable.0 as f64 / last.0 as f64
    );
    let catch_up = Rate {
        mutations_per_s: args.mutations as f64 / seconds,
        mb_per_s: args.mutations as f64 * record_bytes / seconds / 1e6,
        seconds,
    };

    // Baseline: the same data straight into a bare heed, 10,000 per transaction.
    let bare = HeedEngine::open(&temp.path().join("bare"), 64 << 30)?;
    let started = Instant::now();
    let mut i = 0;
    while i < args.mutations {
        let mut batch = WriteBatch::new();
        for j in i..(i + 10_000).min(args.mutations) {
            batch.set(key(j), value.clone());
        }
        bare.write(batch)?;
        i += 10_000;
    }
    let seconds = started.elapsed().as_secs_f64();
    let heed_raw = Rate {
        mutations_per_s: args.mutations as f64 / seconds,
        mb_per_s: args.mutations as f64 * record_bytes / seconds / 1e6,
        seconds,
    };
    println!(
        "catch-up: {:.0} mutations/s ({:.1} MB/s) | heed raw batched: {:.0} mutations/s ({:.1} MB/s) | ratio {:.0}%",
        catch_up.mutations_per_s,
        catch_up.mb_per_s,
        heed_raw.mutations_per_s,
        heed_raw.mb_per_s,
        100.0 * catch_up.mutations_per_s / heed_raw.mutations_per_s
    );

    // Reads over loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_reads, reads_stopped) = tokio::sync::oneshot::channel::<()>();
    let served: Arc<dyn Service> = Arc::new(service.clone());
    let server = tokio::spawn(serve(listener, served, ServerConfig::default(), async {
        let _ = reads_stopped.await;
    }));
    let reader = RpcClient::connect(addr, Default::default()).await?;
    let seconds = Duration::from_secs_f64(args.seconds);
    let total = args.mutations;
    let mut reads = Vec::new();
    println!(
        "{:>7} {:>10} | {:>9} {:>8} {:>8}",
        "readers", "kind", "ops/s", "p50 us", "p99 us"
    );
    for &readers in &args.readers {
        for kind in ["get", "range100"] {
            let reader = reader.clone();
            let sample = closed_loop(readers, seconds, move |worker, n| {
                let reader = reader.clone();
                async move {
                    let k = key((n * 7919 + worker as u64 * 104_729) % total);
                    let request = if kind == "get" {
                        Message::GetValue(GetValueRequest {
                            key: k,
                            version: last,
                        })
                    } else {
                        Message::GetRange(GetRangeRequest {
                            begin: k,
                            end: Bytes::from_static(b"l"),
                            limit: 100,
                            reverse: false,
                            version: last,
                            copy: false,
                        })
                    };
                    reader.call(request).await?;
                    Ok(())
                }
            })
            .await?;
            let figures = sample.figures();
            println!(
                "{:>7} {:>10} | {:>9.0} {:>8.0} {:>8.0}",
                readers, kind, figures.ops_per_s, figures.p50_us, figures.p99_us
            );
            reads.push(ReadCell {
                readers,
                kind,
                figures,
            });
        }
    }
    let _ = stop_reads.send(());
    server.await??;
    let _ = stop_tlog.send(());
    tlog_task.await??;
    let report = Report {
        bench: "storage",
        mutations: args.mutations,
        value_bytes: args.value_bytes,
        ratio: catch_up.mutations_per_s / heed_raw.mutations_per_s,
        catch_up,
        heed_raw,
        reads,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

//! `teamlog bench scale`: source document 001's scaling experiment. A
//! table of 900,000 rows of 128 bytes (115 MB) lives on two teams of two
//! storage servers; under closed-loop clients, a third team's servers
//! start, and the data distributor splits the table and moves shards onto
//! them until the teams are even. Per workload: the time to scale, and how
//! response times and throughput during scaling compare with before.
//!
//! ```text
//!  per row: a new cluster of three teams, team 3's servers stopped
//!     ─▶ load the table into teams 1 and 2 ─▶ clients start (none for "no load")
//!     ─▶ `warmup` s not measured ─▶ `before` s measured
//!     ─▶ team 3's servers start (t = 0 of scaling)
//!     ─▶ the distributor splits and moves ─▶ the shard map last changes (scaled)
//!     ─▶ no change for SETTLED ─▶ clients stop
//!  per second: operations, mean/min/max response time ─▶ factors ─▶ table, JSON, SVG
//! ```
//!
//! The factors compare per-second samples: the mean response time during
//! scaling over before (and the lowest and highest per-second mean, each
//! over its counterpart before), and operations a second during over
//! before; and the same two once scaled, when the third team's servers
//! share the machine's cores with the rest. Team 3's servers are in the
//! cluster file from the start (the cluster's teams are fixed at its
//! creation); they hold nothing and are not running until the scaling
//! starts, and while they are down the distributor changes nothing.

mod plot;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use client::Client;
use cluster::{ClusterFile, DistributionSettings};
use coordinator::client::CoordinatorClient;
use proto::StorageTeamId;
use serde::Serialize;
use testkit::{ClusterSpec, LocalCluster};

use super::loaded::{load_pairs, loaded_key, wait_durable, GIVE_UP};
use workload::{Clients, Load, Operation, Second, Seconds};

/// With no change to the shard map for this long, the distributor is
/// done: it plans a round every 2 s.
const SETTLED: Duration = Duration::from_secs(10);
/// How often the bench reads the shard map the controller records.
const MAP_POLL: Duration = Duration::from_millis(250);
/// The servers of the third team, which start when scaling does.
const JOINING: [u64; 2] = [300, 301];
const LOADED_SERVERS: [u64; 4] = [100, 101, 200, 201];

#[derive(clap::Args, Debug)]
pub struct ScaleBenchArgs {
    /// Directory on the disk to use; a temporary one under it is made.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Rows of the table.
    #[arg(long, default_value_t = 900_000)]
    pub rows: u64,
    /// Bytes of each row's value (keys are 12 bytes).
    #[arg(long, default_value_t = 116)]
    pub value_bytes: usize,
    /// Closed-loop clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds the clients run before measuring starts: the first seconds
    /// after the load commit faster than what follows, and would flatter
    /// the time before scaling.
    #[arg(long, default_value_t = 10)]
    pub warmup: u64,
    /// Seconds measured before the third team's servers start.
    #[arg(long, default_value_t = 20)]
    pub before: u64,
    /// The workloads: `none` (no clients) and the clients' operations.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,read,update,update4"
    )]
    pub workloads: Vec<Workload>,
    /// The clients' think times in ms, each run with every operation.
    #[arg(long, value_delimiter = ',', default_value = "0,50")]
    pub think_ms: Vec<u64>,
    /// The distributor's shard size limit and the byte imbalance it
    /// leaves alone.
    #[arg(long, default_value_t = 8 << 20)]
    pub shard_bytes: u64,
    /// The distributor's moves planned in one round and run at once.
    #[arg(long, default_value_t = DistributionSettings::default().max_moves_in_flight)]
    pub max_moves_in_flight: usize,
    /// Seed of the clients' row choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the plot (SVG) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    None,
    Read,
    Update,
    Update4,
}

/// One row of the table, with its per-second samples.
#[derive(Serialize)]
pub struct Row {
    pub workload: String,
    pub think_ms: u64,
    /// From the third team's servers' start to the shard map's last
    /// change; `None` when it did not settle in time.
    pub scale_seconds: Option<f64>,
    pub shards_per_team: Vec<(u64, usize)>,
    pub avg_factor: Option<f64>,
    pub min_factor: Option<f64>,
    pub max_factor: Option<f64>,
    pub throughput_factor: Option<f64>,
    /// The same two factors once scaled: the third team's servers share
    /// the machine's cores from then on.
    pub after_avg_factor: Option<f64>,
    pub after_throughput_factor: Option<f64>,
    /// Seconds from the clients' start; scaling starts at `warmup +
    /// before`.
    pub seconds: Vec<Second>,
}

pub async fn run(args: ScaleBenchArgs) -> Result<()> {
    let args = &args;
    super::in_temp_dir(&args.dir, |dir| async move { measure(args, &dir).await }).await
}

async fn measure(args: &ScaleBenchArgs, dir: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("locating the teamlog binary")?;
    let mut rows = Vec::new();
    for (i, (operation, think_ms)) in plan(args).into_iter().enumerate() {
        let name = operation.map_or("no load", Operation::name);
        println!("{name}, think {think_ms} ms: loading {} rows", args.rows);
        let row = one_row(
            args,
            &exe,
            &dir.join(format!("row-{i}")),
            operation,
            think_ms,
        )
        .await?;
        println!("{}", line(&row));
        rows.push(row);
    }
    println!("\n{}", table(&rows));
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&rows)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if let Some(path) = &args.plot {
        plot::write_svg(path, args.warmup + args.before, &rows)?;
    }
    Ok(())
}

/// The rows to run: no load once, then each operation at each think time.
fn plan(args: &ScaleBenchArgs) -> Vec<(Option<Operation>, u64)> {
    let mut rows = Vec::new();
    for workload in &args.workloads {
        let operation = match workload {
            Workload::None => {
                rows.push((None, 0));
                continue;
            }
            Workload::Read => Operation::Read,
            Workload::Update => Operation::Update,
            Workload::Update4 => Operation::Update4,
        };
        rows.extend(args.think_ms.iter().map(|t| (Some(operation), *t)));
    }
    rows
}

fn spec(args: &ScaleBenchArgs) -> ClusterSpec {
    let middle = String::from_utf8_lossy(&loaded_key(args.rows / 2)).into_owned();
    ClusterSpec {
        coordinators: 1,
        workers: 2,
        tlogs: 2,
        replication: 2,
        proxies: 1,
        teams: 3,
        servers_per_team: 2,
        // Team 1 holds the first half of the table, team 2 the second,
        // team 3 what lies after it (nothing).
        shard_begins: vec![middle, "l".into()],
        distribution: Some(DistributionSettings {
            max_shard_bytes: args.shard_bytes,
            min_imbalance_bytes: args.shard_bytes,
            max_moves_in_flight: args.max_moves_in_flight,
            ..DistributionSettings::default()
        }),
        logs_in_dir: true,
        ..ClusterSpec::default()
    }
}

async fn one_row(
    args: &ScaleBenchArgs,
    exe: &Path,
    dir: &Path,
    operation: Option<Operation>,
    think_ms: u64,
) -> Result<Row> {
    let mut local = LocalCluster::start(exe, dir, &spec(args)).await?;
    for id in JOINING {
        let server = local.storage.get_mut(&id).and_then(Option::take);
        server.context("a joining server")?.stop().await?;
    }
    local.wait_recovered(GIVE_UP).await?;
    let cluster = local.cluster.clone();
    let client = Arc::new(Client::new(&cluster)?);
    let loaded = load_pairs(&client, args.rows as usize, args.value_bytes).await?;
    wait_durable(&cluster, &client, &LOADED_SERVERS, loaded).await?;

    let seconds = Arc::new(Seconds::new(Instant::now()));
    let clients = operation.map(|operation| {
        let load = Load {
            operation,
            clients: args.clients,
            think: Duration::from_millis(think_ms),
            rows: args.rows,
            value_bytes: args.value_bytes,
            seed: args.seed,
        };
        Clients::start(&client, &load, &seconds)
    });
    let join_second = args.warmup + args.before;
    tokio::time::sleep(Duration::from_secs(join_second)).await;
    let joined = Instant::now();
    for id in JOINING {
        let server = local.start_storage(id).await?;
        local.storage.insert(id, Some(server));
    }
    let settled = wait_settled(&cluster, joined).await?;
    if let Some(clients) = clients {
        clients.stop().await;
    }
    let scaled_at = settled.last_change.map(|at| at.duration_since(joined));
    let row = summarize(
        operation,
        think_ms,
        args.warmup as usize..join_second as usize,
        scaled_at,
        settled.shards_per_team,
        seconds.through(join_second + scaled_at.unwrap_or(SETTLED).as_secs() + SETTLED.as_secs()),
    );
    local.stop().await?;
    Ok(row)
}

struct Settled {
    /// When the shard map last changed after the join; `None` when it
    /// never settled.
    last_change: Option<Instant>,
    shards_per_team: Vec<(u64, usize)>,
}

/// Waits until the third team holds shards and the recorded shard map has
/// not changed for `SETTLED`.
async fn wait_settled(cluster: &ClusterFile, joined: Instant) -> Result<Settled> {
    let coordinators =
        CoordinatorClient::new(&cluster.coordinator_addresses(), cluster.client_config()?)?;
    let mut seen = None;
    let mut last_change = joined;
    loop {
        let (state, _) = coordinators.read_core_state().await?;
        let shards = match &state.shard_map {
            Some(snapshot) => snapshot
                .map()?
                .entries()
                .map(|(b, a)| (b.clone(), a.clone()))
                .collect(),
            None => Vec::new(),
        };
        if seen.as_ref() != Some(&shards) {
            if seen.is_some() {
                last_change = Instant::now();
            }
            seen = Some(shards.clone());
        }
        let moving = shards.iter().any(|(_, a)| !a.dest.is_empty());
        let joined_holds = shards.iter().any(|(_, a)| a.src == [StorageTeamId(3)]);
        let per_team = |shards: &[(bytes::Bytes, proto::system_keys::ShardAssignment)]| {
            (1..=3u64)
                .map(|t| {
                    let on = shards.iter().filter(|(_, a)| a.src == [StorageTeamId(t)]);
                    (t, on.count())
                })
                .collect::<Vec<_>>()
        };
        if joined_holds && !moving && last_change.elapsed() >= SETTLED {
            return Ok(Settled {
                last_change: Some(last_change),
                shards_per_team: per_team(&shards),
            });
        }
        if joined.elapsed() > GIVE_UP {
            return Ok(Settled {
                last_change: None,
                shards_per_team: per_team(&shards),
            });
        }
        tokio::time::sleep(MAP_POLL).await;
    }
}

/// The factors of one row, from its per-second samples: `before` holds
/// the seconds measured before the join, which is at its end (the join's
/// second counts as scaling).
fn summarize(
    operation: Option<Operation>,
    think_ms: u64,
    before: std::ops::Range<usize>,
    scaled_at: Option<Duration>,
    shards_per_team: Vec<(u64, usize)>,
    seconds: Vec<Second>,
) -> Row {
    let joined = before.end;
    let before_samples: Vec<&Second> = seconds
        .get(before)
        .unwrap_or_default()
        .iter()
        .filter(|s| s.ops > 0)
        .collect();
    let during_samples: Vec<&Second> = match scaled_at {
        Some(at) => seconds
            .iter()
            .skip(joined)
            .take(at.as_secs() as usize + 1)
            .collect(),
        None => Vec::new(),
    };
    let during_served: Vec<&Second> = during_samples
        .iter()
        .copied()
        .filter(|s| s.ops > 0)
        .collect();
    // After: from the second after the last change, but for the last
    // (cut short when the clients stop).
    let after_samples: Vec<&Second> = match scaled_at {
        Some(at) => {
            let from = joined + at.as_secs() as usize + 1;
            let to = seconds.len().saturating_sub(1);
            seconds.get(from..to).unwrap_or_default().iter().collect()
        }
        None => Vec::new(),
    };
    let loaded = operation.is_some() && !before_samples.is_empty() && !during_samples.is_empty();
    let ratio = |during: Option<f64>, before: Option<f64>| match (loaded, during, before) {
        (true, Some(d), Some(b)) if b > 0.0 => Some(d / b),
        _ => None,
    };
    let mean = |samples: &[&Second], value: fn(&Second) -> f64| {
        (!samples.is_empty())
            .then(|| samples.iter().map(|s| value(s)).sum::<f64>() / samples.len() as f64)
    };
    let lowest = |samples: &[&Second]| samples.iter().map(|s| s.mean_us as f64).reduce(f64::min);
    let highest = |samples: &[&Second]| samples.iter().map(|s| s.mean_us as f64).reduce(f64::max);
    Row {
        workload: operation.map_or("no load", Operation::name).to_owned(),
        think_ms,
        scale_seconds: scaled_at.map(|d| d.as_secs_f64()),
        shards_per_team,
        avg_factor: ratio(
            mean(&during_served, |s| s.mean_us as f64),
            mean(&before_samples, |s| s.mean_us as f64),
        ),
        min_factor: ratio(lowest(&during_served), lowest(&before_samples)),
        max_factor: ratio(highest(&during_served), highest(&before_samples)),
        throughput_factor: ratio(
            mean(&during_samples, |s| s.ops as f64),
            mean(&before_samples, |s| s.ops as f64),
        ),
        after_avg_factor: ratio(
            mean(&after_samples, |s| s.mean_us as f64),
            mean(&before_samples, |s| s.mean_us as f64),
        ),
        after_throughput_factor: ratio(
            mean(&after_samples, |s| s.ops as f64),
            mean(&before_samples, |s| s.ops as f64),
        ),
        seconds,
    }
}

fn factor(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

impl Row {
    /// The six factors, in the table's order.
    fn factors(&self) -> [String; 6] {
        [
            self.avg_factor,
            self.min_factor,
            self.max_factor,
            self.throughput_factor,
            self.after_avg_factor,
            self.after_throughput_factor,
        ]
        .map(factor)
    }
}

fn line(row: &Row) -> String {
    let [avg, min, max, throughput, after_avg, after_throughput] = row.factors();
    format!(
        "{}, think {} ms: scaled in {}, shards per team {:?}; response time x{avg} (min x{min}, max x{max}), throughput x{throughput}; after: response time x{after_avg}, throughput x{after_throughput}",
        row.workload,
        row.think_ms,
        row.scale_seconds
            .map_or_else(|| "(did not settle)".to_owned(), |s| format!("{s:.1} s")),
        row.shards_per_team,
    )
}

/// The rows as a markdown table, as BENCHMARKS.md quotes it.
fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| workload | think ms | time to scale s | avg response x | min response x | max response x | throughput x | after: avg response x | after: throughput x |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let time = row
            .scale_seconds
            .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"));
        out.push_str(&format!(
            "| {} | {} | {time} | {} |\n",
            row.workload,
            row.think_ms,
            row.factors().join(" | ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_compare_the_seconds_of_scaling_with_those_before() {
        // Second 0 warms up; 1 and 2 are before; the join is at 3 and the
        // map last changed 1.5 s later, so 3 and 4 are scaling; 5 is after.
        let seconds = vec![
            Second::of(1, 9_000),
            Second::of(100, 1_000),
            Second::of(100, 2_000),
            Second::of(50, 3_000),
            Second::of(100, 2_000),
            Second::of(1, 9_000),
        ];
        let row = summarize(
            Some(Operation::Update),
            0,
            1..3,
            Some(Duration::from_millis(1_500)),
            Vec::new(),
            seconds.clone(),
        );
        assert_eq!(row.scale_seconds, Some(1.5));
        assert_eq!(row.avg_factor, Some(2_500.0 / 1_500.0));
        assert_eq!(row.min_factor, Some(2.0));
        assert_eq!(row.max_factor, Some(1.5));
        assert_eq!(row.throughput_factor, Some(0.75));
        // Second 5, the last, was cut short: nothing after.
        assert_eq!(row.after_throughput_factor, None);
        // Without clients, or without an end to scaling, there is nothing
        // to compare.
        let idle = summarize(
            None,
            0,
            1..3,
            Some(Duration::from_secs(1)),
            Vec::new(),
            seconds.clone(),
        );
        assert_eq!((idle.avg_factor, idle.throughput_factor), (None, None));
        let unsettled = summarize(Some(Operation::Read), 0, 1..3, None, Vec::new(), seconds);
        assert_eq!(
            (unsettled.scale_seconds, unsettled.avg_factor),
            (None, None)
        );
    }

    #[test]
    fn a_second_with_nothing_done_counts_for_throughput_only() {
        let seconds = vec![
            Second::default(),
            Second::of(10, 1_000),
            Second::default(),
            Second::of(10, 1_000),
        ];
        let row = summarize(
            Some(Operation::Read),
            50,
            1..2,
            Some(Duration::from_secs(1)),
            Vec::new(),
            seconds,
        );
        assert_eq!(row.avg_factor, Some(1.0));
        assert_eq!(row.throughput_factor, Some(0.5));
    }
}

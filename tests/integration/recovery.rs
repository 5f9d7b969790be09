//! Recovery with the commit path recruited on workers: under concurrent
//! writers, kill -9, without relaunching, the worker hosting the
//! sequencer, a worker hosting a TLog of the current generation, one
//! hosting a proxy, the coordinator hosting the cluster controller, and a
//! storage server.
//! After the loss of a worker a new generation takes over; after the
//! controller's, a new controller adopts the generation as it is; commits
//! resume after every kill; at the end every acknowledged
//! write is readable, and nothing refused or never made appears. Then
//! back-to-back recoveries: a worker of the current generation killed
//! and relaunched again and again, with progress between the kills, and
//! old generations retired as the storage servers pass them; among the
//! kills, a storage server relaunched with its data directory deleted,
//! which replays or rebuilds from its teammate, so that at the end both
//! servers of the team hold the same data. And an idle cluster serves
//! reads after a recovery with nothing committed since.
//!
//! `TEAMLOG_KILLS` sets the back-to-back kills (default 8); `TEAMLOG_SEED`
//! reproduces their victims.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use client::{Client, ClientError};
use cluster::core_state::CoreState;
use coordinator::client::CoordinatorClient;
use proto::rpc::RoleKind;
use proto::Version;
use rand::{Rng, SeedableRng};
use testkit::{kills_from_env, seed_from_env, ClusterSpec, LocalCluster};

use crate::nemesis::Writers;

const WRITERS: u64 = 3;

fn spec() -> ClusterSpec {
    ClusterSpec {
        coordinators: 3,
        workers: 5,
        tlogs: 3,
        proxies: 2,
        replication: 2,
        teams: 2,
        servers_per_team: 2,
        logs_in_dir: true,
        worker_args: vec![
            "--tlog-memory-budget".into(),
            (16u64 << 20).to_string(),
            "--tlog-segment-size".into(),
            (1u64 << 20).to_string(),
        ],
        ..ClusterSpec::default()
    }
}

/// The live worker (by index) hosting a `kind` role of generation `epoch`.
pub(crate) async fn worker_hosting(
    local: &LocalCluster,
    kind: RoleKind,
    epoch: u64,
) -> Result<usize> {
    local
        .worker_hosting(kind, epoch)
        .await?
        .with_context(|| format!("no live worker hosts a {kind} of generation {epoch}"))
}

/// The id of the coordinator hosting the controller.
async fn controller_host(local: &LocalCluster) -> Result<u64> {
    local
        .controller()
        .await?
        .context("no coordinator names a controller")
}

/// Every pair the writers' keys hold now. Just after a recovery a storage
/// server may still be finding the new generation: a read that finds
/// every replica behind is tried again, for a while.
async fn read_all(client: &Client) -> Result<(Vec<(bytes::Bytes, bytes::Bytes)>, bool)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let version = client.read_version().await?;
        match client
            .get_range(b"w", b"x", 1_000_000, false, version)
            .await
        {
            Ok(read) => return Ok(read),
            Err(e) if Instant::now() < deadline => {
                println!("reading at {version}: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until a controller other than coordinator `old` is named.
async fn new_controller(local: &LocalCluster, old: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(id) = controller_host(local).await {
            if id != old {
                return Ok(id);
            }
        }
        ensure!(
            Instant::now() < deadline,
            "no controller took over from {old}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for a generation after `epoch` to be recovered; returns its epoch.
pub(crate) async fn newer_generation(local: &LocalCluster, epoch: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recovered = local.wait_recovered(Duration::from_secs(30)).await?;
        if recovered > epoch {
            return Ok(recovered);
        }
        if Instant::now() > deadline {
            bail!("no generation after {epoch} was recovered within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_resume_after_losing_each_role_and_nothing_acknowledged_is_lost() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut local = LocalCluster::start(crate::exe(), dir.path(), &spec()).await?;
    let client = Arc::new(Client::new(&local.cluster)?);
    let writers = Writers::start(&client, WRITERS);
    writers.wait_for_progress("before any kill").await?;

    let mut killed_controller = 0;
    for victim in ["sequencer", "tlog", "proxy", "controller", "storage"] {
        let epoch = local.wait_recovered(Duration::from_secs(30)).await?;
        let killed = Instant::now();
        match victim {
            "sequencer" | "tlog" | "proxy" => {
                let kind = match victim {
                    "tlog" => RoleKind::TLog,
                    "proxy" => RoleKind::Proxy,
                    _ => RoleKind::Sequencer,
                };
                let i = worker_hosting(&local, kind, epoch).await?;
                local.workers[i].take().context("live")?.kill9().await?;
            }
            "controller" => {
                let id = controller_host(&local).await?;
                killed_controller = id;
                let process = local.coordinators.get_mut(&id).context("a coordinator")?;
                process.take().context("live")?.kill9().await?;
            }
            _ => {
                let (_, server) = local
                    .storage
                    .iter_mut()
                    .next()
                    .context("a storage server")?;
                server.take().context("live")?.kill9().await?;
            }
        }
        let next = match victim {
            "storage" => epoch,
            // A new controller adopts the generation: its roles all live.
            "controller" => {
                new_controller(&local, killed_controller).await?;
                epoch
            }
            _ => newer_generation(&local, epoch).await?,
        };
        writers
            .wait_for_progress(&format!("after killing the {victim}"))
            .await?;
        println!(
            "{victim} killed in generation {epoch}: generation {next}, commits resumed within {:?}",
            killed.elapsed()
        );
    }
    let finished = writers.finish().await?;

    let (pairs, more) = read_all(&client).await?;
    ensure!(!more);
    finished.check(pairs)?;
    Ok(local.stop().await?)
}

/// A recovered generation's read versions start at its floor, above the
/// version its TLogs begin at: with nothing committed after a recovery,
/// reads still go through (each new proxy pushes a first, empty
/// version), instead of waiting for someone's commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cluster_serves_reads_after_a_recovery_without_a_commit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut local = LocalCluster::start(crate::exe(), dir.path(), &spec()).await?;
    let client = Client::new(&local.cluster)?;
    let set = || {
        vec![proto::Mutation::SetValue {
            key: bytes::Bytes::from_static(b"w-idle"),
            value: bytes::Bytes::from_static(b"before"),
        }]
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = client.commit(set()).await {
        ensure!(Instant::now() < deadline, "no commit within 30 s: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let epoch = local.wait_recovered(Duration::from_secs(30)).await?;
    let i = worker_hosting(&local, RoleKind::TLog, epoch).await?;
    local.workers[i].take().context("live")?.kill9().await?;
    let next = newer_generation(&local, epoch).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let value = loop {
        // The client finds the new sequencer after a call to the old fails.
        let read = async {
            let version = client.read_version().await?;
            client.get(b"w-idle", version).await
        };
        match read.await {
            Ok(value) => break value,
            Err(e) if Instant::now() < deadline => {
                println!("reading in generation {next}: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("no read within 10 s of generation {next}, nothing committed: {e}"),
        }
    };
    ensure!(value.as_deref() == Some(&b"before"[..]), "{value:?}");
    Ok(local.stop().await?)
}

/// The core state as the coordinators hold it.
async fn core_state(local: &LocalCluster) -> Result<CoreState> {
    let coordinators = CoordinatorClient::new(
        &local.cluster.coordinator_addresses(),
        local.cluster.client_config()?,
    )?;
    Ok(coordinators.read_core_state().await?.0)
}

/// The TLog directories the workers keep.
fn tlog_dirs(dir: &std::path::Path) -> Result<usize> {
    let mut count = 0;
    for worker in std::fs::read_dir(dir)? {
        let worker = worker?;
        if !worker.file_name().to_string_lossy().starts_with("worker-") {
            continue;
        }
        for entry in std::fs::read_dir(worker.path())? {
            count += entry?.file_name().to_string_lossy().starts_with("tlog-") as usize;
        }
    }
    Ok(count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_recoveries_make_progress_and_old_generations_retire() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let outcome = back_to_back(dir.path()).await;
    if outcome.is_err() {
        eprintln!(
            "kept the cluster's directory and logs: {}",
            dir.keep().display()
        );
    }
    outcome
}

async fn back_to_back(dir: &std::path::Path) -> Result<()> {
    let kills = kills_from_env(8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed_from_env());
    let spec = ClusterSpec {
        // Storage servers make versions durable within a fifth of a
        // second, so generations retire soon after they end.
        storage_args: vec!["--window-versions".into(), "200000".into()],
        ..spec()
    };
    let mut local = LocalCluster::start(crate::exe(), dir, &spec).await?;
    let client = Arc::new(Client::new(&local.cluster)?);
    let writers = Writers::start(&client, WRITERS);
    writers.wait_for_progress("before any kill").await?;
    let mut most_generations = 0;
    for kill in 0..kills {
        // A kill while a relaunched worker is not yet heard would leave
        // the next generation on fewer workers than it has TLogs.
        local.wait_workers_heard(Duration::from_secs(30)).await?;
        let epoch = local.wait_recovered(Duration::from_secs(30)).await?;
        let victim = match rng.random_range(0..5) {
            0 => None,
            1 | 2 => Some(RoleKind::TLog),
            _ => Some(RoleKind::Sequencer),
        };
        let Some(kind) = victim else {
            let id = [100, 101][rng.random_range(0..2)];
            // Its teammate holds everything first: losing the data of both
            // at once is losing the data.
            let teammate = if id == 100 { 101 } else { 100 };
            // A recovery may have begun since the last one ended (a
            // relaunched worker found without a role it hosted).
            let now = read_version_within(&client, Duration::from_secs(30)).await?;
            crate::storage_rebuild::wait_rebuilt(&local.cluster, teammate, now).await?;
            let server = local.storage.get_mut(&id).and_then(Option::take);
            server.context("a live storage server")?.kill9().await?;
            std::fs::remove_dir_all(dir.join(format!("storage-{id}")))?;
            local
                .storage
                .insert(id, Some(local.start_storage(id).await?));
            writers
                .wait_for_progress(&format!("kill {kill} of storage server {id} and its data"))
                .await?;
            println!("kill {kill}: storage server {id} and its data in generation {epoch}");
            continue;
        };
        let i = worker_hosting(&local, kind, epoch).await?;
        local.workers[i].take().context("live")?.kill9().await?;
        local.workers[i] = Some(local.start_worker(i).await?);
        writers
            .wait_for_progress(&format!("kill {kill} of the {kind}'s worker"))
            .await?;
        // Usually a new generation took over. A controller that changed
        // meanwhile may instead have adopted this one, the worker being
        // back with its TLog reopened: commits went on either way.
        let next = local.wait_recovered(Duration::from_secs(30)).await?;
        let generations = core_state(&local).await?.generations.len();
        most_generations = most_generations.max(generations);
        // Never more than three old generations: they retire before the
        // next kill.
        let deadline = Instant::now() + Duration::from_secs(30);
        while core_state(&local).await?.generations.len() > 4 {
            ensure!(
                Instant::now() < deadline,
                "more than three old generations stay live"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("kill {kill}: the {kind}'s worker in generation {epoch}; generation {next}; {generations} generations live");
    }
    println!("at most {most_generations} generations were live at once");
    // Old generations retire once every storage server made them durable.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = core_state(&local).await?;
        if state.generations.len() == 1 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "old generations still live: {:?}",
            state
                .generations
                .iter()
                .map(|g| g.epoch)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finished = writers.finish().await?;
    // Their TLogs go too: only the current generation's remain.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tlog_dirs(dir)? != spec.tlogs {
        ensure!(
            Instant::now() < deadline,
            "{} TLog directories remain",
            tlog_dirs(dir)?
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (pairs, more) = read_all(&client).await?;
    ensure!(!more);
    finished.check(pairs)?;
    // Both servers of the team hold the same, whichever was lost.
    let version = client.read_version().await?;
    let first = crate::storage_rebuild::held_before(&local.cluster, 100, b"\xff", version).await?;
    let second = crate::storage_rebuild::held_before(&local.cluster, 101, b"\xff", version).await?;
    let differ: Vec<_> = first
        .iter()
        .zip(&second)
        .filter(|(a, b)| a != b)
        .take(5)
        .map(|(a, b)| {
            let key = String::from_utf8_lossy(&a.0).into_owned();
            let outcomes = finished.outcomes_of(&key);
            let last = &outcomes[outcomes.len().saturating_sub(4)..];
            (key, a.1.clone(), b.1.clone(), last.to_vec())
        })
        .collect();
    ensure!(
        first == second,
        "servers 100 and 101 hold {} and {} pairs, differing in {differ:?}",
        first.len(),
        second.len()
    );
    Ok(local.stop().await?)
}

/// A read version, asked again while the cluster is unavailable (between
/// generations) until `timeout` passes.
async fn read_version_within(client: &Client, timeout: Duration) -> Result<Version> {
    let deadline = Instant::now() + timeout;
    loop {
        match client.read_version().await {
            Ok(version) => return Ok(version),
            Err(ClientError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

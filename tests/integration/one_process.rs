//! The whole cluster as one process: a worker that also hosts the
//! coordinators and storage servers. Killed with SIGKILL under commits and
//! started again, it recovers a new generation by itself, keeps every
//! acknowledged commit, takes new ones, and `teamlog status` calls it
//! healthy.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use client::Client;
use testkit::{ClusterSpec, LocalCluster};

use crate::nemesis::Writers;

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_in_one_process_survives_its_kill_and_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        coordinators: 3,
        workers: 1,
        hosted_by_first_worker: true,
        tlogs: 2,
        proxies: 1,
        teams: 2,
        ..ClusterSpec::default()
    };
    let mut local = LocalCluster::start(crate::exe(), dir.path(), &spec).await?;
    ensure!(
        local.coordinators.is_empty() && local.storage.is_empty() && local.workers.len() == 1,
        "more than one process was started"
    );
    let client = Arc::new(Client::new(&local.cluster)?);
    let writers = Writers::start(&client, 2);
    writers.wait_for_progress("at the start").await?;
    let epoch = local.wait_recovered(DEADLINE).await?;

    local.workers[0].take().context("running")?.kill9().await?;
    local.workers[0] = Some(local.start_worker(0).await?);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while local.wait_recovered(DEADLINE).await? == epoch {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no generation after {epoch}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writers.wait_for_progress("after the restart").await?;
    let finished = writers.finish().await?;
    let pairs = loop {
        let version = client.read_version().await?;
        match client
            .get_range(b"w", b"x", 1_000_000, false, version)
            .await
        {
            Ok((pairs, more)) => {
                ensure!(!more);
                break pairs;
            }
            Err(e) => {
                ensure!(tokio::time::Instant::now() < deadline, "reads failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    finished.check(pairs)?;

    loop {
        let (healthy, json) = crate::status::status_json(&local.cluster_path).await?;
        if healthy {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "status stays unhealthy: {json:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(local.stop().await?)
}

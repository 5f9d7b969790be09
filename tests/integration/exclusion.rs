//! `teamlog exclude` and `teamlog include` on a recruited cluster under
//! concurrent commits: a storage server killed for good and then left out
//! no longer holds back its team's data on the TLogs nor the retirement of
//! old generations, and status is healthy again, naming it excluded. The
//! last server of a team cannot be left out, and a move onto its team
//! waits only for the servers that are in. Back while still excluded,
//! the server serves nothing; taken back in, it copies its team from its
//! teammate and ends up holding exactly what the teammate holds. With a
//! storage failure timeout, the controller does all that by itself: a
//! server silent past it is left out, status says the team runs without
//! it, and it is taken back when it answers again.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use std::sync::Arc;

use bytes::Bytes;
use client::Client;
use coordinator::client::CoordinatorClient;
use proto::StorageTeamId;
use testkit::LocalCluster;

use crate::nemesis::Writers;
use crate::storage_rebuild::{holds_what_its_teammate_holds, server_status, wait_rebuilt};

const DEADLINE: Duration = Duration::from_secs(120);
const LOST: u64 = 100;
const TEAMMATE: u64 = 101;

/// Runs `teamlog exclude` or `teamlog include` for `server`; returns
/// whether it succeeded and what it printed.
async fn exclusion(local: &LocalCluster, command: &str, server: u64) -> Result<(bool, String)> {
    let output = tokio::process::Command::new(crate::exe())
        .arg(command)
        .arg("--cluster")
        .arg(&local.cluster_path)
        .arg("--storage")
        .arg(server.to_string())
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

/// The live generations' epochs, and the servers the current one leaves out.
async fn generations(local: &LocalCluster) -> Result<(Vec<u64>, Vec<u64>)> {
    let coordinators = CoordinatorClient::new(
        &local.cluster.coordinator_addresses(),
        local.cluster.client_config()?,
    )?;
    let state = coordinators.read_core_state().await?.0;
    let left_out = state
        .current()
        .map(|g| g.excluded_servers.iter().copied().collect())
        .unwrap_or_default();
    Ok((
        state.generations.iter().map(|g| g.epoch).collect(),
        left_out,
    ))
}

/// Team 1 as the current generation's TLogs see it: the servers
/// registered for it on each, and the lowest version popped.
async fn team_one(local: &LocalCluster) -> Result<(Vec<Vec<u64>>, u64)> {
    let (_, json) = crate::status::status_json(&local.cluster_path).await?;
    let tlogs = json["tlogs"].as_array().context("a list of TLogs")?;
    let teams: Vec<serde_json::Value> = tlogs
        .iter()
        .flat_map(|t| t["status"]["teams"].as_array().cloned().unwrap_or_default())
        .filter(|team| team["team"] == 1)
        .collect();
    let servers = teams
        .iter()
        .map(|team| {
            let list = team["servers"].as_array().cloned().unwrap_or_default();
            list.iter().filter_map(|s| s.as_u64()).collect()
        })
        .collect();
    let popped = teams.iter().filter_map(|t| t["popped"].as_u64()).min();
    Ok((servers, popped.unwrap_or(0)))
}

/// A cluster of `spec` (team 1 holds every key the writers write; team 2,
/// from "x" on, none) under two writers, with `LOST` killed: the cluster,
/// its client, the writers and a read version taken after the kill.
async fn start_and_kill_lost(
    dir: &std::path::Path,
    spec: testkit::ClusterSpec,
) -> Result<(LocalCluster, Arc<Client>, Writers, proto::Version)> {
    let mut local = LocalCluster::start(crate::exe(), dir, &spec).await?;
    let client = Arc::new(Client::new(&local.cluster)?);
    let writers = Writers::start(&client, 2);
    writers.wait_for_progress("at the start").await?;
    let lost = local.storage.get_mut(&LOST).and_then(Option::take);
    lost.context("a running server")?.kill9().await?;
    let killed_at = client.read_version().await?;
    Ok((local, client, writers, killed_at))
}

/// Waits until the TLogs keep team 1 for the teammate alone, popped past
/// `killed_at`, and the generations the lost server held back retired.
async fn wait_team_one_on_the_teammate_alone(
    local: &LocalCluster,
    killed_at: proto::Version,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (servers, popped) = team_one(local).await?;
        let (epochs, _) = generations(local).await?;
        let registered_alone = !servers.is_empty() && servers.iter().all(|s| *s == [TEAMMATE]);
        if registered_alone && popped > killed_at.0 && epochs.len() == 1 {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "team 1 on the TLogs: servers {servers:?}, popped {popped} (killed at {killed_at}); \
             generations {epochs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_server_left_out_stops_holding_back_its_team_and_comes_back_by_copying() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let (mut local, client, writers, killed_at) =
        start_and_kill_lost(dir.path(), crate::two_teams_split_at("x")).await?;
    let cluster = local.cluster.clone();
    let (epochs, _) = generations(&local).await?;
    let (ok, said) = exclusion(&local, "exclude", LOST).await?;
    ensure!(ok, "exclude failed: {said}");
    ensure!(said.contains("left out of their teams"), "{said}");
    let (later, left_out) = generations(&local).await?;
    ensure!(
        left_out == vec![LOST],
        "the generation leaves out {left_out:?}"
    );
    ensure!(
        later.last() > epochs.last(),
        "no new generation: {epochs:?} then {later:?}"
    );
    writers
        .wait_for_progress("with the server left out")
        .await?;
    // A move onto team 1 waits for its servers that are in, not for the
    // one left out.
    let moved = client
        .move_range(
            Bytes::from_static(b"x"),
            Bytes::from_static(b"y"),
            StorageTeamId(1),
            DEADLINE,
            |_| {},
        )
        .await;
    ensure!(
        moved.as_ref().is_ok_and(|m| m.flipped.is_some()),
        "a move onto the team with a server left out: {moved:?}"
    );

    // The TLogs keep team 1 for the teammate alone, which pops past the
    // kill; the generations the lost server still needed retire.
    wait_team_one_on_the_teammate_alone(&local, killed_at).await?;
    let (healthy, json) = crate::status::status_json(&local.cluster_path).await?;
    let lost_row = json["storage_servers"]
        .as_array()
        .context("a list of storage servers")?
        .iter()
        .find(|s| s["id"] == LOST)
        .context("the lost server in status")?;
    ensure!(
        healthy && lost_row["excluded"] == true,
        "status with the lost server left out: {json:#}"
    );

    // Its teammate is the last of team 1: it stays in.
    let (ok, said) = exclusion(&local, "exclude", TEAMMATE).await?;
    ensure!(
        !ok && said.contains("with no server"),
        "leaving out the last server of a team: {said}"
    );
    ensure!(generations(&local).await?.1 == vec![LOST]);

    // Back while still left out: it says so and serves nothing.
    local
        .storage
        .insert(LOST, Some(local.start_storage(LOST).await?));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let status = server_status(&cluster, LOST).await;
        let waiting = status.as_ref().ok().and_then(|s| s.rebuilding.clone());
        if waiting.is_some_and(|why| why.contains("leaves this server out")) {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the server back while left out says {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Taken back in, it copies its team and reads on.
    let (ok, said) = exclusion(&local, "include", LOST).await?;
    ensure!(
        ok && said.contains("back in their teams"),
        "include: {said}"
    );
    let included = client.read_version().await?;
    wait_rebuilt(&cluster, LOST, included).await?;
    holds_what_its_teammate_holds(&cluster, &client, writers, (LOST, TEAMMATE), b"x").await?;
    Ok(local.stop().await?)
}

/// Waits until the current generation, its commit path recorded, leaves
/// out exactly `servers`.
async fn wait_left_out(local: &LocalCluster, servers: &[u64], what: &str) -> Result<()> {
    let coordinators = CoordinatorClient::new(
        &local.cluster.coordinator_addresses(),
        local.cluster.client_config()?,
    )?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let state = coordinators.read_core_state().await?.0;
        let current = state.current().filter(|g| g.commit_path.is_some());
        let left_out: Option<Vec<u64>> =
            current.map(|g| g.excluded_servers.iter().copied().collect());
        if left_out.as_deref() == Some(servers) {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: the generation leaves out {left_out:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_silent_past_the_timeout_is_left_out_and_taken_back_when_it_answers() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let spec = testkit::ClusterSpec {
        storage_failure_timeout: Some(Duration::from_secs(2)),
        ..crate::two_teams_split_at("x")
    };
    let (mut local, client, writers, killed_at) = start_and_kill_lost(dir.path(), spec).await?;
    let cluster = local.cluster.clone();
    wait_left_out(&local, &[LOST], "the server killed").await?;
    writers
        .wait_for_progress("with the server left out")
        .await?;
    // The TLogs keep team 1 for the teammate alone, and the generations
    // the lost server held back retire.
    wait_team_one_on_the_teammate_alone(&local, killed_at).await?;
    // Status tells the team runs short, and why.
    let (healthy, json) = crate::status::status_json(&local.cluster_path).await?;
    let said = json.to_string();
    let lost_row = &json["storage_servers"]
        .as_array()
        .context("a list of storage servers")?
        .iter()
        .find(|s| s["id"] == LOST)
        .context("the lost server in status")?;
    ensure!(
        !healthy
            && said.contains("storage server 100 failed")
            && said.contains("team-1")
            && lost_row["failed"] == true
            && lost_row["healthy"] == false
            && lost_row.get("excluded").is_none(),
        "status with the lost server left out as failed: {json:#}"
    );

    // Back, it is taken back by itself, copies its team and reads on.
    local
        .storage
        .insert(LOST, Some(local.start_storage(LOST).await?));
    wait_left_out(&local, &[], "the server back").await?;
    let included = client.read_version().await?;
    wait_rebuilt(&cluster, LOST, included).await?;
    let coordinators =
        CoordinatorClient::new(&cluster.coordinator_addresses(), cluster.client_config()?)?;
    let configuration = coordinators.read_configuration().await?;
    ensure!(
        configuration.left_out().is_empty(),
        "the configuration still leaves out {:?}",
        configuration.left_out()
    );
    holds_what_its_teammate_holds(&cluster, &client, writers, (LOST, TEAMMATE), b"x").await?;
    Ok(local.stop().await?)
}

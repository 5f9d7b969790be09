//! Three coordinator processes: registers written through any of them
//! survive kill -9 of the leader and then of every coordinator; with a
//! majority gone a write is not acknowledged (it may still take once the
//! majority is back) and writes resume then;
//! two writers racing at one revision never both win; a peer that is not
//! a member may not read or write. The cluster controller they elect moves
//! when the process hosting it dies, and notices a killed TLog.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use coordinator::client::{CoordinatorClient, CoordinatorError, WriteOutcome};
use proto::rpc::{CoordinatorStatusReply, ErrorCode, Message};
use proto::transport::tls::TlsSettings;
use proto::transport::{ClientConfig, RpcClient, RpcError};
use testkit::{ClusterSpec, LocalCluster};

/// The id every one of `live` coordinators names in the status field
/// `pick` (its leader, its controller), once they agree on one other than
/// `not`.
async fn agreed(
    client: &CoordinatorClient,
    live: usize,
    not: Option<u64>,
    what: &str,
    pick: fn(&CoordinatorStatusReply) -> Option<u64>,
) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let named: Vec<Option<u64>> = client
            .statuses()
            .await
            .into_iter()
            .filter_map(|(_, status)| status.ok())
            .map(|s| pick(&s))
            .collect();
        let distinct: BTreeSet<_> = named.iter().collect();
        if named.len() == live && distinct.len() == 1 {
            if let Some(Some(id)) = distinct.into_iter().next() {
                if not != Some(*id) {
                    return Ok(*id);
                }
            }
        }
        ensure!(
            Instant::now() < deadline,
            "the coordinators did not agree on a {what} other than {not:?}: {named:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn agreed_leader(client: &CoordinatorClient, live: usize) -> Result<u64> {
    agreed(client, live, None, "leader", |s| s.leader).await
}

async fn agreed_controller(
    client: &CoordinatorClient,
    live: usize,
    not: Option<u64>,
) -> Result<u64> {
    agreed(client, live, not, "controller", |s| s.controller).await
}

/// A cluster of three coordinators (no storage servers), and a member's
/// client of them.
async fn start(dir: &std::path::Path) -> Result<(LocalCluster, CoordinatorClient)> {
    let spec = ClusterSpec {
        coordinators: 3,
        teams: 1,
        storage: false,
        ..ClusterSpec::default()
    };
    let local = LocalCluster::start(crate::exe(), dir, &spec).await?;
    let cluster = &local.cluster;
    let client =
        CoordinatorClient::new(&cluster.coordinator_addresses(), cluster.client_config()?)?;
    Ok((local, client))
}

async fn write_next(client: &CoordinatorClient, name: &str, value: &str) -> Result<u64> {
    let current = client.read(name).await?;
    let outcome = client
        .write(name, current.revision, Bytes::from(value.to_owned()))
        .await?;
    ensure!(
        outcome.written,
        "write of {value} lost to {:?}",
        outcome.register
    );
    Ok(outcome.register.revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_survive_the_loss_of_a_minority_and_of_every_coordinator() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut local, client) = start(dir.path()).await?;
    let cluster = local.cluster.clone();

    ensure!(client.read("epoch").await?.revision == 0);
    ensure!(write_next(&client, "epoch", "1").await? == 1);

    // Two writers at the same revision: exactly one wins.
    let (a, b) = tokio::join!(
        client.write("epoch", 1, Bytes::from_static(b"a")),
        client.write("epoch", 1, Bytes::from_static(b"b")),
    );
    let (a, b) = (a?, b?);
    ensure!(a.written != b.written, "both or neither won: {a:?} {b:?}");
    let winner = if a.written { "a" } else { "b" };
    let read = client.read("epoch").await?;
    ensure!(read.revision == 2 && read.value == winner.as_bytes());

    // The leader dies: the other two elect one and writes go on.
    let leader = agreed_leader(&client, 3).await?;
    local
        .coordinators
        .get_mut(&leader)
        .and_then(Option::take)
        .context("running")?
        .kill9()
        .await?;
    ensure!(write_next(&client, "epoch", "after the leader died").await? == 3);

    // A second dies: no majority, so a write is not acknowledged.
    let second = *local
        .coordinators
        .iter()
        .find(|(_, c)| c.is_some())
        .context("two are running")?
        .0;
    local
        .coordinators
        .get_mut(&second)
        .and_then(Option::take)
        .context("running")?
        .kill9()
        .await?;
    let lonely =
        CoordinatorClient::new(&cluster.coordinator_addresses(), cluster.client_config()?)?
            .with_timeout(Duration::from_secs(2));
    match lonely
        .write("epoch", 3, Bytes::from_static(b"without a majority"))
        .await
    {
        Err(CoordinatorError::Unavailable { .. }) => {}
        other => bail!("a write without a majority: {other:?}"),
    }

    // Both come back; the register holds the acknowledged write or the
    // unacknowledged one the lone leader had logged, and writes resume.
    for id in [leader, second] {
        let restarted = local.start_coordinator(id).await?;
        local.coordinators.insert(id, Some(restarted));
    }
    // The unacknowledged write may take at any moment until then, even
    // between a read and the write that follows it; nothing else may.
    let last = loop {
        let read = client.read("epoch").await?;
        ensure!(
            (read.revision, read.value.as_ref()) == (3, "after the leader died".as_bytes())
                || (read.revision, read.value.as_ref()) == (4, "without a majority".as_bytes()),
            "{read:?}"
        );
        let outcome = client
            .write("epoch", read.revision, Bytes::from_static(b"last"))
            .await?;
        if outcome.written {
            break outcome.register.revision;
        }
        ensure!(
            (outcome.register.revision, outcome.register.value.as_ref())
                == (4, "without a majority".as_bytes()),
            "lost to {:?}",
            outcome.register
        );
    };

    // Every coordinator killed at once, then restarted: nothing is lost.
    let ids: Vec<u64> = local.coordinators.keys().copied().collect();
    for id in &ids {
        local
            .coordinators
            .get_mut(id)
            .and_then(Option::take)
            .context("running")?
            .kill9()
            .await?;
    }
    for id in &ids {
        let restarted = local.start_coordinator(*id).await?;
        local.coordinators.insert(*id, Some(restarted));
    }
    let read = client.read("epoch").await?;
    ensure!(
        read.revision == last && read.value == "last".as_bytes(),
        "{read:?}"
    );
    agreed_leader(&client, 3).await?;

    // A peer with only the CA is not a member: refused outright.
    let ca = &cluster.tls.as_ref().context("a local cluster runs TLS")?.ca;
    let outsider = ClientConfig {
        tls: Some(TlsSettings::load(ca, None)?.client()),
        ..ClientConfig::default()
    };
    let stranger = CoordinatorClient::new(&cluster.coordinator_addresses(), outsider)?;
    match stranger
        .write("epoch", last, Bytes::from_static(b"stranger"))
        .await
    {
        Err(CoordinatorError::Refused(why)) => ensure!(why.contains("Unauthorized"), "{why}"),
        other => bail!("a stranger's write: {other:?}"),
    }
    match stranger.read("epoch").await {
        Err(CoordinatorError::Refused(why)) => ensure!(why.contains("Unauthorized"), "{why}"),
        other => bail!("a stranger's read: {other:?}"),
    }
    ensure!(client.read("epoch").await?.revision == last);

    // A member's bad requests are refused with a reason and change nothing:
    // an overlong name, an oversize value, a raft message that does not
    // decode.
    let refused = |what: &str, outcome: Result<WriteOutcome, CoordinatorError>| match outcome {
        Err(CoordinatorError::Refused(_)) => Ok(()),
        other => Err(anyhow::anyhow!("{what}: {other:?}")),
    };
    refused(
        "a 300-byte name",
        client.write(&"n".repeat(300), 0, Bytes::new()).await,
    )?;
    refused(
        "a value over 1 MiB",
        client
            .write("epoch", last, Bytes::from(vec![0u8; (1 << 20) + 1]))
            .await,
    )?;
    let member =
        RpcClient::connect(cluster.coordinators[0].address, cluster.client_config()?).await?;
    match member
        .call(Message::Raft(Bytes::from_static(b"not json")))
        .await
    {
        Err(RpcError::Remote {
            code: ErrorCode::MalformedRequest,
            ..
        }) => {}
        other => bail!("a garbled raft message: {other:?}"),
    }
    let read = client.read("epoch").await?;
    ensure!(
        read.revision == last && read.value == "last".as_bytes(),
        "{read:?}"
    );
    Ok(local.stop().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_moves_when_the_process_hosting_it_dies() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut local, client) = start(dir.path()).await?;
    for _ in 0..2 {
        let live = local.coordinators.values().filter(|c| c.is_some()).count();
        let controller = agreed_controller(&client, live, None).await?;
        local
            .coordinators
            .get_mut(&controller)
            .and_then(Option::take)
            .context("the controller's host is running")?
            .kill9()
            .await?;
        agreed_controller(&client, live - 1, Some(controller)).await?;
        let restarted = local.start_coordinator(controller).await?;
        local.coordinators.insert(controller, Some(restarted));
    }
    Ok(local.stop().await?)
}

/// The controller's verdict on `role` `id`: how long it has taken it for
/// failed (`Some(None)`: alive), once the controller reports it.
async fn verdict(client: &CoordinatorClient, role: &str, id: u64) -> Option<Option<u64>> {
    client
        .statuses()
        .await
        .into_iter()
        .filter_map(|(_, status)| status.ok())
        .flat_map(|status| status.watched)
        .find(|w| w.role == role && w.id == id)
        .map(|w| w.failed_for_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_notices_a_killed_process_and_its_return() -> Result<()> {
    let kills = testkit::seed::kills_from_env(3);
    let dir = tempfile::tempdir()?;
    let (mut local, client) = start(dir.path()).await?;
    let cluster = local.cluster.clone();
    agreed_controller(&client, 3, None).await?;
    let mut noticed_ms = Vec::new();
    for kill in 0..kills {
        let victim = kill % cluster.tlogs.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while verdict(&client, "tlog", victim as u64).await != Some(None) {
            ensure!(Instant::now() < deadline, "tlog {victim} never seen alive");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let tlog = local.tlogs[victim].take().context("running")?;
        let killed = Instant::now();
        tlog.kill9().await?;
        loop {
            if let Some(Some(failed_for)) = verdict(&client, "tlog", victim as u64).await {
                let since_kill = killed.elapsed().as_millis() as u64;
                noticed_ms.push(since_kill.saturating_sub(failed_for));
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "tlog {victim}'s death went unnoticed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        local.tlogs[victim] = Some(local.start_tlog(victim).await?);
    }
    // Reported, not asserted: BENCHMARKS.md quotes it.
    noticed_ms.sort_unstable();
    println!("failure noticed after (ms, from kill -9): {noticed_ms:?}");
    Ok(local.stop().await?)
}

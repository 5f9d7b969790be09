//! The client side of the commit path against real processes: bad commits
//! are refused whole with clear errors and leave no trace; the `teamlog
//! client` command line commits; the non-broadcast mode writes no empty
//! versions yet still gives every TLog every version.

use std::process::Command;

use anyhow::{ensure, Result};
use bytes::Bytes;
use client::{Client, ClientError};
use cluster::placement::tlogs_for_team;
use proto::rpc::{ErrorCode, Message, SequenceRequest};
use proto::transport::{RpcClient, RpcError};
use proto::{BlockEntry, Mutation, ProxyId, StorageTeamId, Version};
use testkit::tlog_stream::read_team_entries;
use testkit::{ClusterSpec, LocalCluster};

/// These tests need no storage servers.
fn commit_only() -> ClusterSpec {
    ClusterSpec {
        storage: false,
        ..ClusterSpec::default()
    }
}

fn set(key: &[u8], value_len: usize) -> Mutation {
    Mutation::SetValue {
        key: Bytes::copy_from_slice(key),
        value: Bytes::from(vec![b'v'; value_len]),
    }
}

fn refused_code(result: Result<Version, ClientError>) -> Result<ErrorCode> {
    match result {
        Err(ClientError::Refused { code, .. }) => Ok(code),
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    }
}

/// Every mutation every team holds, from one TLog holding it.
async fn all_mutations(
    local: &LocalCluster,
    through: Version,
) -> Result<Vec<(StorageTeamId, Version, Mutation)>> {
    let cluster = &local.cluster;
    let mut out = Vec::new();
    for team in cluster.topology().all_teams() {
        let index = tlogs_for_team(team, cluster.tlogs.len(), cluster.replication)[0];
        let tlog =
            RpcClient::connect(cluster.tlogs[index].address, cluster.client_config()?).await?;
        for entry in read_team_entries(&tlog, team, Version(1), through).await? {
            if let BlockEntry::Message(m) = entry {
                out.push((team, m.version, m.mutation));
            }
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commits_are_refused_whole_and_leave_no_trace() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let local = LocalCluster::start(crate::exe(), dir.path(), &commit_only()).await?;
    let client = Client::new(&local.cluster)?;
    let good = set(b"fine", 1);
    let cases = [
        (vec![], ErrorCode::EmptyCommit),
        (
            vec![good.clone(), set(b"\xffsystem", 1)],
            ErrorCode::SystemKey,
        ),
        (
            vec![good.clone(), set(&[b'k'; 20_000], 1)],
            ErrorCode::KeyTooLarge,
        ),
        (
            vec![good.clone(), set(b"big", 200_000)],
            ErrorCode::ValueTooLarge,
        ),
        (
            vec![
                good.clone(),
                Mutation::ClearRange {
                    begin: Bytes::from_static(b"z"),
                    end: Bytes::from_static(b"a"),
                },
            ],
            ErrorCode::InvalidRange,
        ),
    ];
    for (mutations, code) in cases {
        ensure!(
            refused_code(client.commit(mutations).await)? == code,
            "expected {code}"
        );
    }
    // A member asking the sequencer for a version for a proxy that is not
    // in the cluster gets none, so no version is handed out that would
    // never reach the TLogs.
    let sequencer = RpcClient::connect(
        local.cluster.sequencer_address()?,
        local.cluster.client_config()?,
    )
    .await?;
    let stray = sequencer
        .call(Message::Sequence(SequenceRequest {
            proxy: ProxyId(99),
            request_num: 1,
            transactions: Vec::new(),
            committed: Version::ZERO,
        }))
        .await;
    ensure!(
        matches!(
            &stray,
            Err(RpcError::Remote {
                code: ErrorCode::MalformedRequest,
                ..
            })
        ),
        "{stray:?}"
    );
    let version = client.commit(vec![set(b"after", 1)]).await?;
    let written = all_mutations(&local, version).await?;
    ensure!(
        written.len() == 1,
        "only the good commit is written: {written:?}"
    );
    ensure!(written[0].2 == set(b"after", 1));
    ensure!(
        client.read_version().await? >= version,
        "read version below an acknowledged commit"
    );
    Ok(local.stop().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client_commits_single_mutations_and_batches() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let local = LocalCluster::start(crate::exe(), dir.path(), &commit_only()).await?;
    let run = |args: &[&str]| -> Result<String> {
        let output = Command::new(crate::exe())
            .arg("client")
            .arg("--cluster")
            .arg(&local.cluster_path)
            .args(args)
            .output()?;
        ensure!(
            output.status.success(),
            "client {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    };
    ensure!(run(&["set", "apple", "red"])?.contains("committed 1 mutation"));
    ensure!(run(&["clear", "apple"])?.contains("committed 1 mutation"));
    ensure!(run(&["clear-range", "a", "b\\xff"])?.contains("committed 1 mutation"));
    let batch = dir.path().join("batch.txt");
    std::fs::write(
        &batch,
        "# two sets and a clear\nset k1 v1\nset k2 v\\x00\nclear k1\n",
    )?;
    let out = run(&["commit", batch.to_str().expect("utf-8 path")])?;
    ensure!(out.contains("committed 3 mutation"), "{out}");
    let version: u64 = run(&["read-version"])?.trim().parse()?;
    let written = all_mutations(&local, Version(version)).await?;
    let mut mutations: Vec<(Version, Mutation)> =
        written.into_iter().map(|(_, v, m)| (v, m)).collect();
    mutations.sort_by_key(|(v, _)| *v);
    let kv = |k: &'static [u8], v: &'static [u8]| Mutation::SetValue {
        key: Bytes::from_static(k),
        value: Bytes::from_static(v),
    };
    let range = |b: &'static [u8], e: &'static [u8]| Mutation::ClearRange {
        begin: Bytes::from_static(b),
        end: Bytes::from_static(e),
    };
    let expected = vec![
        kv(b"apple", b"red"),
        range(b"apple", b"apple\x00"),
        range(b"a", b"b\xff"),
        kv(b"k1", b"v1"),
        kv(b"k2", b"v\x00"),
        range(b"k1", b"k1\x00"),
    ];
    let got: Vec<Mutation> = mutations.into_iter().map(|(_, m)| m).collect();
    ensure!(got == expected, "{got:?}");
    let refused = Command::new(crate::exe())
        .arg("client")
        .arg("--cluster")
        .arg(&local.cluster_path)
        .args(["set", "\\xffx", "1"])
        .env("RUST_BACKTRACE", "1")
        .output()?;
    ensure!(!refused.status.success());
    // One clear line, with no backtrace even when backtraces are asked for.
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        stderr.lines().count() == 1
            && stderr.starts_with("teamlog: ")
            && stderr.contains("system_key"),
        "{stderr}"
    );
    // A range reaching into the system keys is refused at once, not read
    // shard by shard for ever.
    let range = Command::new(crate::exe())
        .arg("client")
        .arg("--cluster")
        .arg(&local.cluster_path)
        .args(["get-range", "a", "\\xff\\x00"])
        .output()?;
    ensure!(!range.status.success());
    let stderr = String::from_utf8_lossy(&range.stderr);
    ensure!(stderr.contains("invalid range"), "{stderr}");
    Ok(local.stop().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_broadcast_uninvolved_teams_get_nothing_but_every_tlog_every_version() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        broadcast: false,
        shard_begins: vec!["m".into()],
        teams: 2,
        ..commit_only()
    };
    let local = LocalCluster::start(crate::exe(), dir.path(), &spec).await?;
    let client = Client::new(&local.cluster)?;
    let mut last = Version::ZERO;
    for i in 0..20 {
        last = client
            .commit(vec![set(format!("a{i}").as_bytes(), 1)])
            .await?;
    }
    let cluster = &local.cluster;
    for (i, tlog) in cluster.tlogs.iter().enumerate() {
        let tlog = RpcClient::connect(tlog.address, cluster.client_config()?).await?;
        let durable = tlog.status().await?.durable_version;
        // At or past: an idle proxy's empty batch may follow the last commit.
        ensure!(durable >= last, "tlog {i} is at {durable}, before {last}");
    }
    // Team 2 (keys from "m") was never involved: its stream is empty.
    for team in [StorageTeamId(1), StorageTeamId(2)] {
        let index = tlogs_for_team(team, cluster.tlogs.len(), cluster.replication)[0];
        let tlog =
            RpcClient::connect(cluster.tlogs[index].address, cluster.client_config()?).await?;
        let entries = read_team_entries(&tlog, team, Version(1), last).await?;
        let expected = if team == StorageTeamId(1) { 20 } else { 0 };
        ensure!(
            entries.len() == expected,
            "{team}: {} entries",
            entries.len()
        );
        ensure!(
            entries.iter().all(|e| matches!(e, BlockEntry::Message(_))),
            "no empty versions"
        );
    }
    Ok(local.stop().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_proxies_and_sequencer_commit_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut local = LocalCluster::start(crate::exe(), dir.path(), &commit_only()).await?;
    let mut only_first = local.cluster.clone();
    only_first.proxies.retain(|p| p.id == 1);
    let client = Client::new(&only_first)?;
    let before = client.commit(vec![set(b"before", 1)]).await?;
    local.proxies.remove(0).stop().await?;
    local.proxies.insert(0, local.start_proxy(1).await?);
    // A new connection to the restarted proxy, which must get versions again.
    let client = Client::new(&only_first)?;
    let after = client.commit(vec![set(b"after", 1)]).await?;
    ensure!(after > before, "{after} after {before}");
    // A clean sequencer restart: it starts after the TLogs' last version.
    local.sequencer.take().expect("running").stop().await?;
    local.sequencer = Some(local.start_sequencer().await?);
    let again = client.commit(vec![set(b"again", 1)]).await?;
    ensure!(again > after, "{again} after {after}");
    Ok(local.stop().await?)
}

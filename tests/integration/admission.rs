//! Admission control on a local cluster: while a team has no storage server
//! applying, its backlog on the TLogs grows until the proxies refuse its
//! commits (`overloaded`, and status says they are throttling), while other
//! teams' commits go on; once its servers are back and catch up, its
//! commits are taken again.

use std::time::Duration;

use anyhow::{ensure, Result};
use bytes::Bytes;
use client::{Client, ClientError};
use proto::rpc::ErrorCode;
use proto::Mutation;
use testkit::{ClusterSpec, LocalCluster};

/// Far enough that a slow machine settles, near enough to fail a hang.
const DEADLINE: Duration = Duration::from_secs(90);

fn set(key: String) -> Mutation {
    Mutation::SetValue {
        key: Bytes::from(key),
        value: Bytes::from(vec![b'v'; 10_000]),
    }
}

fn is_throttled(result: &Result<proto::Version, ClientError>) -> bool {
    matches!(
        result,
        Err(ClientError::Refused {
            code: ErrorCode::Overloaded,
            message,
        }) if message.contains("refused for now")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_without_servers_is_throttled_until_they_are_back() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        // Team 1 holds keys before "h", team 2 from "h".
        shard_begins: vec!["h".into(), "p".into()],
        proxy_args: vec!["--max-team-backlog-bytes".into(), "200000".into()],
        // Servers that keep little in memory pop soon after they apply, so a
        // healthy team's backlog stays well under the limit.
        storage_args: vec![
            "--window-versions".into(),
            "1000".into(),
            "--window-bytes".into(),
            "20000".into(),
        ],
        ..ClusterSpec::default()
    };
    let mut local = LocalCluster::start(crate::exe(), dir.path(), &spec).await?;
    let client = Client::new(&local.cluster)?;
    client.commit(vec![set("a-first".into())]).await?;

    // Team 1 loses both its servers, for good for now.
    for id in [100, 101] {
        if let Some(server) = local.storage.get_mut(&id).and_then(Option::take) {
            server.kill9().await?;
        }
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut written = 0;
    loop {
        let result = client.commit(vec![set(format!("a{written:06}"))]).await;
        if is_throttled(&result) {
            break;
        }
        result?;
        written += 1;
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{written} commits of 10 KB to a team without servers were all taken"
        );
    }
    ensure!(written >= 10, "throttled after only {written} commits");

    // Other teams go on, and status names the throttling.
    client.commit(vec![set("i-other-team".into())]).await?;
    let (healthy, json) = crate::status::status_json(&local.cluster_path).await?;
    ensure!(!healthy, "status exits 0 while proxies throttle");
    // The proxy that refused says so (the other may not have looked yet).
    let throttling = json["proxies"]
        .as_array()
        .expect("a list of proxies")
        .iter()
        .any(|p| {
            p["error"]
                .as_str()
                .unwrap_or_default()
                .starts_with("throttling")
        });
    ensure!(throttling, "no proxy reports throttling: {json:#}");

    // The servers come back and catch up: team 1 takes commits again.
    for id in [100, 101] {
        let server = local.start_storage(id).await?;
        local.storage.insert(id, Some(server));
    }
    loop {
        let result = client.commit(vec![set("a-after".into())]).await;
        if !is_throttled(&result) {
            result?;
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "team 1 stayed throttled after its servers came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(local.stop().await?)
}

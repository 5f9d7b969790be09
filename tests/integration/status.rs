//! `teamlog status` and the `--metrics` endpoints against real processes: a
//! local cluster reports every process healthy with versions that add up,
//! a killed storage server is reported unhealthy with a non-zero exit, and
//! the TLog, proxy and storage server each serve their metrics.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use client::Client;
use proto::transport::RpcClient;
use proto::{Mutation, Version};
use serde_json::Value;
use testkit::free_local_addrs;
use testkit::{ClusterSpec, LocalCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the cluster may take to settle before a test gives up.
const DEADLINE: Duration = Duration::from_secs(30);
/// Between two looks at a condition that is still false.
const POLL: Duration = Duration::from_millis(50);

fn set(key: &str, value: &str) -> Mutation {
    Mutation::SetValue {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(value.to_string()),
    }
}

/// Commits one mutation per key (each its own version); returns the last version.
async fn commit_some(client: &Client, keys: &[&str]) -> Result<Version> {
    let mut last = Version::ZERO;
    for key in keys {
        last = client.commit(vec![set(key, "value")]).await?;
    }
    Ok(last)
}

/// Runs `teamlog status --json`; returns its exit success and the JSON.
pub(crate) async fn status_json(cluster: &Path) -> Result<(bool, Value)> {
    let output = tokio::process::Command::new(crate::exe())
        .arg("status")
        .arg("--cluster")
        .arg(cluster)
        .arg("--json")
        .arg("--timeout-ms")
        .arg("5000")
        .output()
        .await?;
    let json = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "status printed no JSON: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok((output.status.success(), json))
}

/// Each unhealthy process of a `status --json` reply, as `role id: error`.
pub(crate) fn unhealthy_processes(json: &Value) -> Vec<String> {
    every_process(json)
        .into_iter()
        .filter(|p| p["healthy"] != true)
        .map(|p| format!("{} {}: {}", p["role"], p["id"], p["error"]))
        .collect()
}

fn every_process(json: &Value) -> Vec<&Value> {
    let mut all = vec![&json["sequencer"]];
    for list in ["coordinators", "proxies", "tlogs", "storage_servers"] {
        all.extend(json[list].as_array().expect("a list of processes"));
    }
    all
}

/// An integer field that must be there: a missing one fails the test
/// rather than comparing as `None`.
fn number(status: &Value, name: &str) -> u64 {
    status[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer {name} in {status:#}"))
}

fn caught_up(json: &Value, version: Version) -> bool {
    json["healthy"] == true
        && json["storage_servers"].as_array().is_some_and(|servers| {
            servers.iter().all(|s| {
                number(&s["status"], "lag_versions") == 0
                    && number(&s["status"], "applied_version") >= version.0
            })
        })
}

#[tokio::test]
async fn status_shows_every_process_healthy_then_a_killed_storage_server() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        coordinators: 3,
        ..ClusterSpec::default()
    };
    let mut local = LocalCluster::start(crate::exe(), dir.path(), &spec).await?;
    let client = Client::new(&local.cluster)?;
    let last = commit_some(&client, &["apple", "kiwi", "plum", "zucchini"]).await?;

    let started = Instant::now();
    let (ok, json) = loop {
        let (ok, json) = status_json(&local.cluster_path).await?;
        if caught_up(&json, last) {
            break (ok, json);
        }
        if started.elapsed() > DEADLINE {
            bail!("the storage servers did not catch up with {last}: {json:#}");
        }
        tokio::time::sleep(POLL).await;
    };
    assert!(ok, "status exits 0 when every process is healthy");
    let processes = every_process(&json);
    assert_eq!(processes.len(), 3 + 1 + 2 + 3 + 6);
    assert_eq!(json["processes"], 15);
    assert_eq!(json["unhealthy"], 0);
    for process in &processes {
        assert_eq!(process["healthy"], true, "{process:#}");
        assert_eq!(process["error"], Value::Null, "{process:#}");
        assert!(process["address"].is_string(), "{process:#}");
    }
    let committed = number(&json, "committed_version");
    assert!(committed >= last.0, "{json:#}");
    let sequencer = &json["sequencer"]["status"];
    assert!(number(sequencer, "last_version") >= committed);
    let commits: u64 = json["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| number(&p["status"], "commits"))
        .sum();
    assert_eq!(commits, 4);
    for tlog in json["tlogs"].as_array().unwrap() {
        let status = &tlog["status"];
        // Not the committed version in the same status: the processes are
        // asked at once, and an idle proxy's empty batch may commit between
        // the TLog's answer and the sequencer's.
        assert!(number(status, "durable_version") >= last.0, "{tlog:#}");
        assert_eq!(status["locked"], false);
        assert_eq!(status["poisoned"], false);
        assert!(number(status, "disk_bytes") > 0, "{tlog:#}");
        let teams = status["teams"].as_array().unwrap();
        assert!(!teams.is_empty(), "{tlog:#}");
        assert!(teams.iter().any(|t| number(t, "bytes") > 0), "{tlog:#}");
    }
    let leaders: std::collections::BTreeSet<u64> = json["coordinators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| number(&c["status"], "leader"))
        .collect();
    assert_eq!(
        leaders.len(),
        1,
        "the coordinators agree on a leader: {json:#}"
    );
    for server in json["storage_servers"].as_array().unwrap() {
        let status = &server["status"];
        let applied = number(status, "applied_version");
        assert!(applied >= last.0, "{server:#}");
        assert!(number(status, "durable_version") <= applied, "{server:#}");
        assert!(status["lag_seconds"].as_f64() == Some(0.0), "{server:#}");
        assert_eq!(status["teams"].as_array().unwrap().len(), 1, "{server:#}");
    }

    let text = tokio::process::Command::new(crate::exe())
        .args(["status", "--cluster"])
        .arg(&local.cluster_path)
        .output()
        .await?;
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout)?;
    assert!(text.starts_with("15 of 15 processes healthy"), "{text}");
    assert!(text.contains("team 1: "), "{text}");

    let victim = 100;
    let server = local.storage.remove(&victim).flatten().unwrap();
    server.kill9().await?;
    let (ok, json) = status_json(&local.cluster_path).await?;
    assert!(!ok, "status exits non-zero with a process down");
    assert_eq!(json["healthy"], false);
    assert_eq!(json["unhealthy"], 1);
    for server in json["storage_servers"].as_array().unwrap() {
        let is_victim = server["id"] == victim;
        assert_eq!(server["healthy"], !is_victim, "{server:#}");
        if is_victim {
            assert!(server["error"].is_string(), "{server:#}");
            assert_eq!(server["status"], Value::Null);
        }
    }

    // A locked TLog answers, but refuses every commit: unhealthy, with why.
    let tlog = RpcClient::connect(
        local.cluster.tlogs[1].address,
        local.cluster.client_config()?,
    )
    .await?;
    tlog.lock().await?;
    let (ok, json) = status_json(&local.cluster_path).await?;
    assert!(!ok);
    assert_eq!(json["unhealthy"], 2, "{json:#}");
    let locked = &json["tlogs"][1];
    assert_eq!(locked["healthy"], false, "{locked:#}");
    assert_eq!(locked["status"]["locked"], true, "{locked:#}");
    let error = locked["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("locked"), "{locked:#}");
    Ok(local.stop().await?)
}

/// Asks `addr` for `/metrics` with a hand-written HTTP/1.1 request.
pub(crate) async fn scrape(addr: SocketAddr) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let Some(body) = response.strip_prefix("HTTP/1.1 200 OK\r\n") else {
        bail!("not a 200 answer: {response}");
    };
    Ok(body.to_string())
}

/// The value of the first sample of `name` (labels allowed), if any.
pub(crate) fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            return None;
        }
        line.rsplit(' ').next()?.parse().ok()
    })
}

/// Scrapes until every name has a positive sample, or the deadline passes.
async fn wait_for_metrics(addr: SocketAddr, names: &[&str]) -> Result<String> {
    let started = Instant::now();
    loop {
        let metrics = scrape(addr).await?;
        let missing: Vec<&&str> = names
            .iter()
            .filter(|name| !sample(&metrics, name).is_some_and(|v| v > 0.0))
            .collect();
        if missing.is_empty() {
            return Ok(metrics);
        }
        if started.elapsed() > DEADLINE {
            bail!("no positive {missing:?} at {addr}:\n{metrics}");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn tlog_proxy_and_storage_serve_their_metrics() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports = free_local_addrs(3)?;
    let (tlog, proxy, storage) = (ports[0], ports[1], ports[2]);
    let metrics_args = |addr: SocketAddr| vec!["--metrics".to_string(), addr.to_string()];
    // One of each, so each gets its own --metrics address.
    let spec = ClusterSpec {
        proxies: 1,
        tlogs: 1,
        replication: 1,
        teams: 1,
        servers_per_team: 1,
        tlog_args: metrics_args(tlog),
        proxy_args: metrics_args(proxy),
        storage_args: metrics_args(storage),
        ..ClusterSpec::default()
    };
    let local = LocalCluster::start(crate::exe(), dir.path(), &spec).await?;
    let client = Client::new(&local.cluster)?;
    let last = commit_some(&client, &["a", "b", "c"]).await?;
    assert_eq!(client.get(b"a", last).await?, Some(Bytes::from("value")));

    let tlog_metrics = wait_for_metrics(
        tlog,
        &[
            "teamlog_tlog_durable_version",
            "teamlog_tlog_known_committed_version",
            "teamlog_tlog_memory_bytes",
            "teamlog_tlog_disk_bytes",
            "teamlog_tlog_team_bytes",
            "teamlog_tlog_commit_latency_seconds_count",
            "teamlog_tlog_fsync_seconds_count",
            "teamlog_tlog_sync_batch_bytes_count",
            "teamlog_tlog_peeks_total",
            "teamlog_tlog_peek_bytes_total",
        ],
    )
    .await?;
    assert!(sample(&tlog_metrics, "teamlog_tlog_durable_version") >= Some(last.0 as f64));
    assert!(
        tlog_metrics.contains("teamlog_tlog_fsync_seconds_bucket{le="),
        "a histogram, with buckets:\n{tlog_metrics}"
    );
    assert!(tlog_metrics.contains("teamlog_tlog_team_bytes{team=\"1\"}"));

    let proxy_metrics = wait_for_metrics(
        proxy,
        &[
            "teamlog_proxy_commits_total",
            "teamlog_proxy_commit_latency_seconds_count",
            "teamlog_proxy_batch_commits_count",
            "teamlog_proxy_batch_bytes_count",
            "teamlog_proxy_known_committed_version",
        ],
    )
    .await?;
    assert_eq!(
        sample(&proxy_metrics, "teamlog_proxy_commits_total"),
        Some(3.0)
    );

    let storage_metrics = wait_for_metrics(
        storage,
        &[
            "teamlog_storage_applied_version",
            "teamlog_storage_mutations_applied_total",
            "teamlog_storage_mutation_bytes_applied_total",
            "teamlog_storage_reads_total",
            "teamlog_storage_read_latency_seconds_count",
        ],
    )
    .await?;
    assert!(sample(&storage_metrics, "teamlog_storage_mutations_applied_total") >= Some(3.0));
    for gauge in [
        "teamlog_storage_lag_versions",
        "teamlog_storage_window_bytes",
    ] {
        let started = Instant::now();
        while sample(&scrape(storage).await?, gauge).is_none() {
            assert!(started.elapsed() < DEADLINE, "no {gauge}");
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(local.stop().await?)
}

//! Admission control on a local cluster.
//!
//! - A team whose servers are slow but keep up a little: the proxies pace
//!   new commits (status says so, and why) and refuse none, and the pace is
//!   lifted once the servers are back to speed.
//! - A team with no storage server applying: its backlog on the TLogs grows
//!   until the proxies refuse its commits (`overloaded`, and status says
//!   they are throttling), while other teams' commits go on; once its
//!   servers are back and catch up, its commits are taken again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use client::{Client, ClientError};
use proto::rpc::ErrorCode;
use proto::Mutation;
use testkit::{ClusterSpec, LocalCluster, Signal};

/// Far enough that a slow machine settles, near enough to fail a hang.
const DEADLINE: Duration = Duration::from_secs(90);

fn set(key: String) -> Mutation {
    Mutation::SetValue {
        key: Bytes::from(key),
        value: Bytes::from(vec![b'v'; 10_000]),
    }
}

/// Team 1 holds keys before "h", team 2 from "h" and team 3 from "p";
/// servers that keep little in memory pop soon after they apply, so a
/// healthy team's backlog stays well under the limit.
fn spec(max_team_backlog_bytes: u64) -> ClusterSpec {
    ClusterSpec {
        shard_begins: vec!["h".into(), "p".into()],
        proxy_args: vec![
            "--max-team-backlog-bytes".into(),
            max_team_backlog_bytes.to_string(),
        ],
        storage_args: crate::small_window_storage_args(),
        ..ClusterSpec::default()
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
    let mut local = LocalCluster::start(crate::exe(), dir.path(), &spec(200_000)).await?;
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

/// What each proxy's status says of pacing, by proxy (`None`: not pacing).
async fn delaying(local: &LocalCluster) -> Result<Vec<Option<String>>> {
    let (_, json) = crate::status::status_json(&local.cluster_path).await?;
    let proxies = json["proxies"].as_array().context("a list of proxies")?;
    Ok(proxies
        .iter()
        .map(|p| p["status"]["delaying"].as_str().map(str::to_owned))
        .collect())
}

/// Keeps storage servers slow: stopped most of the time, let run in short
/// spells (as a starved CPU would), until dropped.
struct Starved {
    pids: Vec<u32>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Starved {
    fn start(pids: Vec<u32>) -> Starved {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (pids, stop) = (pids.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    for pid in &pids {
                        let _ = testkit::signal(*pid, Signal::STOP);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    for pid in &pids {
                        let _ = testkit::signal(*pid, Signal::CONT);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Starved {
            pids,
            stop,
            task: Some(task),
        }
    }

    async fn end(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            task.await?;
        }
        Ok(())
    }
}

impl Drop for Starved {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for pid in &self.pids {
            let _ = testkit::signal(*pid, Signal::CONT);
        }
    }
}

/// Writers of 20 KB values under unique keys of team 1; every outcome but
/// an acknowledgement is kept to fail the test with.
struct BigWriters {
    acknowledged: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl BigWriters {
    fn start(client: &Arc<Client>, writers: u64) -> BigWriters {
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..writers)
            .map(|writer| {
                let (client, acknowledged, failures, count, stop) = (
                    client.clone(),
                    acknowledged.clone(),
                    failures.clone(),
                    count.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("a{writer}-{n:06}");
                        let value = big_value(&key);
                        let set = Mutation::SetValue {
                            key: Bytes::from(key.clone()),
                            value,
                        };
                        match client.commit(vec![set]).await {
                            Ok(_) => {
                                acknowledged.lock().unwrap().push(key);
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().unwrap().push(format!("{key}: {e}")),
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        BigWriters {
            acknowledged,
            failures,
            count,
            stop,
            tasks,
        }
    }

    /// Waits until `more` writes past the count now are acknowledged.
    async fn wait_for(&self, more: u64, what: &str) -> Result<()> {
        let target = self.count.load(Ordering::Relaxed) + more;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while self.count.load(Ordering::Relaxed) < target {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "{what}: fewer than {more} commits acknowledged within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn finish(self) -> Result<(Vec<String>, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await?;
        }
        let acknowledged = std::mem::take(&mut *self.acknowledged.lock().unwrap());
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        Ok((acknowledged, failures))
    }
}

fn big_value(key: &str) -> Bytes {
    let mut value = key.as_bytes().to_vec();
    value.resize(20_000, b'.');
    Bytes::from(value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_team_is_paced_not_refused_until_it_keeps_up_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let local = LocalCluster::start(crate::exe(), dir.path(), &spec(4_000_000)).await?;
    let client = Arc::new(Client::new(&local.cluster)?);
    client.commit(vec![set("a-first".into())]).await?;

    // Team 1's servers are starved of CPU: they apply, but slowly.
    let pids = [100, 101]
        .iter()
        .map(|id| {
            let server = local.storage.get(id).and_then(Option::as_ref);
            server
                .and_then(|s| s.pid())
                .context("a running storage server")
        })
        .collect::<Result<Vec<u32>>>()?;
    let starved = Starved::start(pids);
    let writers = BigWriters::start(&client, 4);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let why = loop {
        if let Some(why) = delaying(&local).await?.into_iter().flatten().next() {
            break why;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no proxy paced commits while team 1's servers were starved");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        why.starts_with("new commits limited to") && why.contains("team-1"),
        "{why}"
    );
    writers.wait_for(20, "while paced").await?;

    // Back to speed: the pace is lifted.
    starved.end().await?;
    loop {
        if delaying(&local).await?.iter().all(Option::is_none) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("proxies still pace commits after team 1's servers caught up");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writers.wait_for(20, "after the pace was lifted").await?;
    let (acknowledged, failures) = writers.finish().await?;
    ensure!(
        failures.is_empty(),
        "paced commits failed: {:?}",
        &failures[..failures.len().min(5)]
    );
    let version = client.read_version().await?;
    for key in &acknowledged {
        let value = client.get(key.as_bytes(), version).await?;
        ensure!(
            value.as_deref() == Some(&big_value(key)[..]),
            "{key} was acknowledged but reads {:?}",
            value.map(|v| v.len())
        );
    }
    Ok(local.stop().await?)
}

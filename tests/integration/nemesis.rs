//! A TLog killed with SIGKILL and relaunched from its own command line,
//! again and again, under concurrent commits: after each relaunch commits
//! resume (the proxies send the versions in flight again, and the TLog
//! takes each once), and at the end every acknowledged value is readable
//! and no key holds a value that was refused or never written.
//!
//! `TEAMLOG_KILLS` sets the number of kills (default 5); `TEAMLOG_SEED`
//! reproduces a run's choice of victims.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use bytes::Bytes;
use client::{Client, ClientError};
use proto::Mutation;
use rand::{Rng, SeedableRng};
use testkit::{kills_from_env, seed_from_env, ClusterSpec, LocalCluster};

const WRITERS: u64 = 4;
const KEYS_PER_WRITER: u64 = 40;
/// How long commits may take to resume after a relaunch.
const RESUME_DEADLINE: Duration = Duration::from_secs(30);

/// How each write ended, by key: (sequence number, outcome).
#[derive(Default)]
struct Outcomes {
    by_key: BTreeMap<String, Vec<(u64, Outcome)>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Outcome {
    Acknowledged,
    Refused,
    Unknown,
}

fn key(writer: u64, n: u64) -> String {
    format!("w{writer}-{:03}", n % KEYS_PER_WRITER)
}

/// Commits one write after another until told to stop, recording each
/// outcome; `acknowledged` counts the successes.
async fn write_until_stopped(
    client: Arc<Client>,
    writer: u64,
    outcomes: Arc<Mutex<Outcomes>>,
    acknowledged: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = key(writer, n);
        let set = Mutation::SetValue {
            key: Bytes::from(key.clone()),
            value: Bytes::from(format!("{writer}-{n}")),
        };
        let outcome = match client.commit(vec![set]).await {
            Ok(_) => Outcome::Acknowledged,
            Err(ClientError::Refused { .. }) => Outcome::Refused,
            Err(_) => Outcome::Unknown,
        };
        if outcome == Outcome::Acknowledged {
            acknowledged.fetch_add(1, Ordering::Relaxed);
        }
        outcomes
            .lock()
            .unwrap()
            .by_key
            .entry(key)
            .or_default()
            .push((n, outcome));
        n += 1;
    }
}

/// Waits until `count` passes `from + 4`, or the deadline.
async fn wait_for_commits(count: &AtomicU64, from: u64, what: &str) -> Result<()> {
    let started = Instant::now();
    while count.load(Ordering::Relaxed) < from + 4 {
        if started.elapsed() > RESUME_DEADLINE {
            bail!("{what}: no commit acknowledged within {RESUME_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Writers committing one write after another on their own keys, each
/// outcome recorded, until stopped.
pub(crate) struct Writers {
    outcomes: Arc<Mutex<Outcomes>>,
    acknowledged: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    pub(crate) fn start(client: &Arc<Client>, count: u64) -> Writers {
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..count)
            .map(|writer| {
                tokio::spawn(write_until_stopped(
                    client.clone(),
                    writer,
                    outcomes.clone(),
                    acknowledged.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Writers {
            outcomes,
            acknowledged,
            stop,
            tasks,
        }
    }

    /// Waits until a few more writes than now are acknowledged.
    pub(crate) async fn wait_for_progress(&self, what: &str) -> Result<()> {
        let now = self.acknowledged.load(Ordering::Relaxed);
        wait_for_commits(&self.acknowledged, now, what).await
    }

    /// Stops the writers; what they did is then checked against a read.
    pub(crate) async fn finish(self) -> Result<Finished> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await?;
        }
        Ok(Finished {
            outcomes: self.outcomes,
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
        })
    }
}

pub(crate) struct Finished {
    outcomes: Arc<Mutex<Outcomes>>,
    acknowledged: u64,
}

impl Finished {
    /// How each write to `key` ended, in order.
    pub(crate) fn outcomes_of(&self, key: &str) -> Vec<(u64, Outcome)> {
        let outcomes = self.outcomes.lock().unwrap();
        outcomes.by_key.get(key).cloned().unwrap_or_default()
    }

    /// Checks what the writers' keys hold (`pairs`, read after they
    /// stopped) against what they were told ([`check`]).
    pub(crate) fn check(&self, pairs: Vec<(Bytes, Bytes)>) -> Result<()> {
        let read: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        check(&self.outcomes.lock().unwrap(), &read)?;
        ensure!(self.acknowledged > 0, "no write was acknowledged");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_resume_after_each_tlog_kill_and_relaunch_and_nothing_is_lost() -> Result<()> {
    let kills = kills_from_env(5);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed_from_env());
    let dir = tempfile::tempdir()?;
    let mut local = LocalCluster::start(crate::exe(), dir.path(), &ClusterSpec::default()).await?;
    let client = Arc::new(Client::new(&local.cluster)?);
    let writers = Writers::start(&client, WRITERS);
    writers.wait_for_progress("before any kill").await?;

    for kill in 0..kills {
        let victim = rng.random_range(0..local.tlogs.len());
        let tlog = local.tlogs[victim].take().expect("running");
        tlog.kill9().await?;
        local.tlogs[victim] = Some(local.start_tlog(victim).await?);
        writers
            .wait_for_progress(&format!("kill {kill} of tlog {victim}"))
            .await?;
    }
    let finished = writers.finish().await?;
    let version = client.read_version().await?;
    let (pairs, more) = client
        .get_range(b"w", b"x", 1_000_000, false, version)
        .await?;
    ensure!(!more);
    finished.check(pairs)?;
    Ok(local.stop().await?)
}

/// Every key holds its last acknowledged write, or a later write whose
/// outcome is unknown; nothing acknowledged is lost, and nothing refused
/// or never made appears.
fn check(outcomes: &Outcomes, read: &BTreeMap<String, String>) -> Result<()> {
    for (key, writes) in &outcomes.by_key {
        let last_acknowledged = writes
            .iter()
            .filter(|(_, o)| *o == Outcome::Acknowledged)
            .map(|(n, _)| *n)
            .max();
        let found = read.get(key).map(|value| {
            let n: u64 = value
                .rsplit('-')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(u64::MAX);
            let outcome = writes.iter().find(|(m, _)| *m == n).map(|(_, o)| *o);
            (n, outcome)
        });
        let Some((n, outcome)) = found else {
            ensure!(
                last_acknowledged.is_none(),
                "{key}: an acknowledged write is lost"
            );
            continue;
        };
        let Some(outcome) = outcome else {
            bail!("{key}: holds write {n}, which was never made");
        };
        ensure!(
            outcome != Outcome::Refused,
            "{key}: holds refused write {n}"
        );
        if let Some(last) = last_acknowledged {
            ensure!(
                n >= last,
                "{key}: holds write {n}, older than acknowledged write {last}"
            );
            ensure!(
                outcome == Outcome::Unknown || n == last,
                "{key}: holds {n}, not the last acknowledged {last}"
            );
        }
    }
    Ok(())
}

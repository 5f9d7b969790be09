//! The closed-loop clients of the scaling experiment, and what they
//! measure: each client does one operation, waits its think time, and
//! does the next, until told to stop; every response time goes into the
//! bucket of the second it ended in.
//!
//! ```text
//!  client ─ 1-row read (read version + get) │ 1-row update │ 4-row update ─▶ Seconds
//!         ─ think ─▶ next
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use client::Client;
use proto::Mutation;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::bench::loaded::loaded_key;

/// What each client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// Reads one random row at a fresh read version.
    Read,
    /// Sets one random row.
    Update,
    /// Sets four random rows in one commit.
    Update4,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Read => "1-row reads",
            Operation::Update => "1-row updates",
            Operation::Update4 => "4-row updates",
        }
    }
}

/// The operations that ended in one second, and their response times.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Second {
    pub ops: u64,
    pub errors: u64,
    pub mean_us: u64,
    pub min_us: u64,
    pub max_us: u64,
    #[serde(skip)]
    sum_us: u64,
}

impl Second {
    /// `ops` operations of `mean_us` each.
    #[cfg(test)]
    pub fn of(ops: u64, mean_us: u64) -> Second {
        let mut second = Second::default();
        for _ in 0..ops {
            second.add(mean_us);
        }
        second
    }

    fn add(&mut self, us: u64) {
        if self.ops == 0 || us < self.min_us {
            self.min_us = us;
        }
        self.max_us = self.max_us.max(us);
        self.ops += 1;
        self.sum_us += us;
        self.mean_us = self.sum_us / self.ops;
    }
}

/// Per-second buckets, counted from `started`.
pub struct Seconds {
    started: Instant,
    buckets: Mutex<BTreeMap<u64, Second>>,
}

impl Seconds {
    pub fn new(started: Instant) -> Self {
        Seconds {
            started,
            buckets: Mutex::default(),
        }
    }

    fn record(&self, ended: Instant, took: Option<Duration>) {
        let second = ended.saturating_duration_since(self.started).as_secs();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(second).or_default();
        match took {
            Some(took) => bucket.add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX)),
            None => bucket.errors += 1,
        }
    }

    /// Every second from the first through `last`, empty ones too.
    pub fn through(&self, last: u64) -> Vec<Second> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        (0..=last)
            .map(|s| buckets.get(&s).copied().unwrap_or_default())
            .collect()
    }
}

/// What the clients do: `clients` of them, each doing `operation` on
/// random rows of `rows` and waiting `think` after each.
pub struct Load {
    pub operation: Operation,
    pub clients: usize,
    pub think: Duration,
    pub rows: u64,
    pub value_bytes: usize,
    pub seed: u64,
}

/// The running clients; `stop` ends them after their current operation.
pub struct Clients {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    pub fn start(client: &Arc<Client>, load: &Load, seconds: &Arc<Seconds>) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..load.clients as u64)
            .map(|i| {
                let (client, seconds, stop) = (client.clone(), seconds.clone(), stop.clone());
                let value = Bytes::from(vec![b'u'; load.value_bytes]);
                let mut rng = StdRng::seed_from_u64(load.seed.wrapping_add(i));
                let (operation, rows, think) = (load.operation, load.rows, load.think);
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let began = Instant::now();
                        let done = once(&client, operation, rows, &value, &mut rng).await;
                        let ended = Instant::now();
                        seconds.record(ended, done.ok().map(|()| ended - began));
                        if !think.is_zero() {
                            tokio::time::sleep(think).await;
                        }
                    }
                })
            })
            .collect();
        Clients { stop, tasks }
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn once(
    client: &Client,
    operation: Operation,
    rows: u64,
    value: &Bytes,
    rng: &mut StdRng,
) -> Result<()> {
    let set = |rng: &mut StdRng| Mutation::SetValue {
        key: loaded_key(rng.random_range(0..rows)),
        value: value.clone(),
    };
    match operation {
        Operation::Read => {
            let version = client.read_version().await?;
            client
                .get(&loaded_key(rng.random_range(0..rows)), version)
                .await?;
        }
        Operation::Update => {
            client.commit(vec![set(rng)]).await?;
        }
        Operation::Update4 => {
            client.commit((0..4).map(|_| set(rng)).collect()).await?;
        }
    }
    Ok(())
}

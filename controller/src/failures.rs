//! Storage servers that stop answering: after the cluster file's
//! `storage_failure_timeout_ms` the controller leaves such a server out of
//! its teams, as `teamlog exclude` would, and takes it back once it
//! answers again. While a server is away but in, the TLogs keep its teams'
//! data for it and no old generation retires, so one gone for good would
//! in the end fill the TLogs' disks and stop every commit. Left out, its
//! teammates serve alone, and status says the team runs short; taken back,
//! it copies its teams from a teammate before it serves.
//!
//! ```text
//!  per storage server, every 250 ms ─Status─▶ answers and not stopped? ─▶ last heard alive
//!  controller, every second: review(configuration, core state, what the probes heard)
//!     silent ≥ timeout, each of its teams keeps a holder ─▶ failed_servers += it ─▶ recovery
//!     failed, and answers ─▶ failed_servers -= it ─▶ recovery; it copies its teams back
//! ```
//!
//! One server is found failed at a time, and only while each of its teams
//! keeps another server that holds the team's data (`exclusion::to_follow`):
//! the last holder of a team stays in however long it is silent, and the
//! team waits for it. Silence counts from when this controller began to
//! probe, and starts over after its own process was paused, when nothing
//! it heard of others can be trusted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cluster::configuration::Configuration;
use cluster::core_state::CoreState;
use cluster::topology::Topology;
use coordinator::client::CoordinatorClient;
use proto::clock::Clock;
use proto::rpc::Message;
use proto::shard_map::ShardMap;
use proto::transport::{ClientConfig, Peer, RpcError};
use tokio::task::JoinSet;

use crate::exclusion;

/// How often each storage server is asked for its status.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// How long a probe waits for its answer; past it the connection is
/// dropped and made anew.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the reads and the write of one review may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(1);

/// What the probes last heard of one server.
#[derive(Clone, Copy, Debug)]
struct Heard {
    /// When it last answered without having stopped.
    alive_ms: u64,
    /// Whether its last answer came, and said it had not stopped.
    alive: bool,
    /// Whether its last answer said it holds its teams' data: it neither
    /// copies them nor waits to be taken back.
    serving: bool,
}

/// What the probes heard of every storage server, at one time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hearing {
    /// How long each server has not answered alive.
    pub silent_ms: BTreeMap<u64, u64>,
    /// Those whose last answer came and said they had not stopped.
    pub alive: BTreeSet<u64>,
    /// Those whose last answer said they hold their teams' data.
    pub serving: BTreeSet<u64>,
}

/// The probes of every storage server of the cluster file; they stop when
/// this is dropped.
pub struct StorageProbes {
    heard: Arc<Mutex<BTreeMap<u64, Heard>>>,
    _tasks: JoinSet<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl StorageProbes {
    /// Probes each of `servers` until dropped; each counts as heard from
    /// now.
    pub fn start(
        servers: &BTreeMap<u64, SocketAddr>,
        transport: &ClientConfig,
        clock: Arc<dyn Clock>,
    ) -> StorageProbes {
        let now = clock.now_ms();
        let heard = Arc::new(Mutex::new(
            servers
                .keys()
                .map(|id| {
                    let heard = Heard {
                        alive_ms: now,
                        alive: false,
                        serving: false,
                    };
                    (*id, heard)
                })
                .collect(),
        ));
        let mut tasks = JoinSet::new();
        for (id, address) in servers {
            let peer = Peer::new(*address, transport.clone());
            tasks.spawn(probe(*id, peer, heard.clone(), clock.clone()));
        }
        StorageProbes {
            heard,
            _tasks: tasks,
        }
    }

    /// What was heard, as of `now_ms`.
    pub fn hearing(&self, now_ms: u64) -> Hearing {
        let heard = lock(&self.heard);
        let mut hearing = Hearing::default();
        for (id, h) in heard.iter() {
            hearing
                .silent_ms
                .insert(*id, now_ms.saturating_sub(h.alive_ms));
            if h.alive {
                hearing.alive.insert(*id);
            }
            if h.alive && h.serving {
                hearing.serving.insert(*id);
            }
        }
        hearing
    }

    /// Whether `server` has not answered alive for `timeout_ms` as of
    /// `now_ms`.
    fn still_silent(&self, server: u64, now_ms: u64, timeout_ms: u64) -> bool {
        lock(&self.heard)
            .get(&server)
            .is_some_and(|h| !h.alive && now_ms.saturating_sub(h.alive_ms) >= timeout_ms)
    }

    /// Starts every silence over at `now_ms`: this process was paused,
    /// and what it did not hear meanwhile says nothing of the others.
    pub fn forgive(&self, now_ms: u64) {
        for h in lock(&self.heard).values_mut() {
            h.alive_ms = h.alive_ms.max(now_ms);
        }
    }
}

async fn probe(
    id: u64,
    peer: Peer,
    heard: Arc<Mutex<BTreeMap<u64, Heard>>>,
    clock: Arc<dyn Clock>,
) {
    let mut interval = tokio::time::interval(PROBE_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let answer = match peer.client().await {
            Ok(client) => match client
                .call_with_timeout(Message::Status, PROBE_TIMEOUT)
                .await
            {
                Ok(Message::StorageStatus(status)) => Some(status),
                Err(RpcError::Timeout) => {
                    peer.drop_connection(&client).await;
                    None
                }
                _ => None,
            },
            Err(_) => None,
        };
        let now = clock.now_ms();
        let mut heard = lock(&heard);
        let Some(h) = heard.get_mut(&id) else {
            return;
        };
        match answer.filter(|status| status.stopped.is_none()) {
            Some(status) => {
                *h = Heard {
                    alive_ms: now,
                    alive: true,
                    serving: exclusion::holds_its_teams(&status),
                };
            }
            None => {
                h.alive = false;
                h.serving = false;
            }
        }
    }
}

/// What a review of the failed servers found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Review {
    /// Failed servers that answer again: to be taken back.
    pub back: BTreeSet<u64>,
    /// A server to find failed now.
    pub failed: Option<u64>,
    /// What status says: each server left out as failed, and each one
    /// silent past the timeout that stays in, and why.
    pub lines: Vec<String>,
}

/// Which failed servers to take back and which silent one to leave out,
/// by `hearing`, for a cluster of `topology` whose configuration, core
/// state and shard map are these.
pub fn review(
    topology: &Topology,
    configuration: &Configuration,
    state: &CoreState,
    map: &ShardMap,
    hearing: &Hearing,
    timeout_ms: u64,
) -> Review {
    let silent = |server: &u64| hearing.silent_ms.get(server).copied().unwrap_or(0);
    let back: BTreeSet<u64> = configuration
        .failed_servers
        .intersection(&hearing.alive)
        .copied()
        .collect();
    let mut lines = Vec::new();
    let mut failed = None;
    let left_out = configuration.left_out();
    let mut candidates: Vec<(u64, u64)> = topology
        .private_teams
        .keys()
        .map(|s| (s.0, silent(&s.0)))
        .filter(|(s, silent)| *silent >= timeout_ms && !left_out.contains(s))
        .collect();
    candidates.sort_by_key(|(s, silent)| (std::cmp::Reverse(*silent), *s));
    let current = state
        .current()
        .map(|g| g.excluded_servers.clone())
        .unwrap_or_default();
    let holders = exclusion::holders(&hearing.serving, state);
    for (server, silent_ms) in candidates {
        let mut asked = configuration.clone();
        asked.failed_servers.insert(server);
        let kept_in = match exclusion::wanted(topology, &asked, map) {
            Err(why) => Some(why),
            Ok(wanted) => {
                let (follow, waiting) = exclusion::to_follow(topology, &current, &wanted, &holders);
                let prefix = format!("storage server {server} ");
                match follow.servers.contains(&server) {
                    true => None,
                    false => Some(
                        waiting
                            .into_iter()
                            .filter(|why| why.starts_with(&prefix))
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                }
            }
        };
        match kept_in {
            Some(why) => lines.push(format!(
                "storage server {server} has not answered for {} but stays in its teams: {why}",
                seconds(silent_ms)
            )),
            None => {
                failed = Some(server);
                break;
            }
        }
    }
    let gone = configuration
        .failed_servers
        .iter()
        .chain(&failed)
        .filter(|s| !back.contains(s) && !configuration.excluded_servers.contains(s));
    for server in gone {
        let teams: Vec<String> = topology
            .teams
            .iter()
            .filter(|(_, servers)| servers.iter().any(|s| s.0 == *server))
            .map(|(team, _)| team.to_string())
            .collect();
        lines.push(format!(
            "storage server {server} failed: it has not answered for {}, and {} run without it; \
             it is taken back once it answers (`teamlog exclude` leaves it out for good)",
            seconds(silent(server)),
            teams.join(", ")
        ));
    }
    Review {
        back,
        failed,
        lines,
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// Reviews the failed servers by what `probes` heard, and writes the
/// configuration when servers are to be left out or taken back (the
/// controller's watch then recovers into a generation that follows it).
/// What was heard is taken after the reads, and a server is written failed
/// only if it is still silent when the write is made: a server that
/// answered meanwhile (restarted, its link back) is not left out on what
/// was heard before.
pub async fn review_and_record(
    coordinators: &CoordinatorClient,
    topology: &Topology,
    initial_shards: &ShardMap,
    probes: &StorageProbes,
    clock: &dyn Clock,
    timeout: Duration,
) -> Result<Review, String> {
    let reads = async {
        tokio::try_join!(
            coordinators.read_configuration(),
            coordinators.read_core_state()
        )
    };
    let (configuration, (state, _)) = tokio::time::timeout(REVIEW_TIMEOUT, reads)
        .await
        .map_err(|_| "the configuration and the core state could not be read in time")?
        .map_err(|e| e.to_string())?;
    let map = match &state.shard_map {
        Some(snapshot) => snapshot.map().map_err(|e| e.to_string())?,
        None => initial_shards.clone(),
    };
    let timeout_ms = timeout.as_millis() as u64;
    let hearing = probes.hearing(clock.now_ms());
    let found = review(topology, &configuration, &state, &map, &hearing, timeout_ms);
    if found.back.is_empty() && found.failed.is_none() {
        return Ok(found);
    }
    let write = coordinators.update_configuration(|c| {
        c.failed_servers.retain(|s| !found.back.contains(s));
        let silent = found
            .failed
            .filter(|s| probes.still_silent(*s, clock.now_ms(), timeout_ms));
        c.failed_servers.extend(silent);
    });
    let written = tokio::time::timeout(REVIEW_TIMEOUT, write)
        .await
        .map_err(|_| "the configuration could not be written in time")?
        .map_err(|e| e.to_string())?;
    if let Some(server) = found.failed.filter(|s| written.failed_servers.contains(s)) {
        tracing::warn!(
            server,
            silent_ms = hearing.silent_ms.get(&server).copied().unwrap_or(0),
            "a storage server does not answer; leaving it out of its teams"
        );
    }
    if !found.back.is_empty() {
        tracing::info!(servers = ?found.back, "failed storage servers answer again; taking them back");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use cluster::core_state::Generation;
    use proto::Version;

    use super::*;
    use crate::exclusion::tests::{map, two_teams_of_two};

    const TIMEOUT: u64 = 5_000;

    /// Servers 100 and 101 make team 1, 200 and 201 team 2; each is
    /// silent as long as `silent` says (0 for the rest), and serves
    /// unless silent at all.
    fn hearing(silent: &[(u64, u64)]) -> Hearing {
        let mut hearing = Hearing::default();
        for server in [100, 101, 200, 201] {
            let ms = silent
                .iter()
                .find(|(s, _)| *s == server)
                .map_or(0, |(_, ms)| *ms);
            hearing.silent_ms.insert(server, ms);
            if ms == 0 {
                hearing.alive.insert(server);
                hearing.serving.insert(server);
            }
        }
        hearing
    }

    fn state(generations: &[&[u64]]) -> CoreState {
        let mut state = CoreState::initial();
        state.generations = generations
            .iter()
            .enumerate()
            .map(|(i, excluded)| Generation {
                epoch: i as u64 + 1,
                tlogs: Vec::new(),
                replication: 2,
                begin_version: Version(i as u64 * 100),
                floor: Version(i as u64 * 100),
                commit_path: None,
                end: None,
                excluded_servers: excluded.iter().copied().collect(),
            })
            .collect();
        state
    }

    fn run(configuration: &Configuration, state: &CoreState, hearing: &Hearing) -> Review {
        review(
            &two_teams_of_two(),
            configuration,
            state,
            &map(2),
            hearing,
            TIMEOUT,
        )
    }

    #[test]
    fn a_server_silent_past_the_timeout_is_failed_while_its_teammate_serves() {
        let none = Configuration::default();
        let one = state(&[&[]]);
        let under = run(&none, &one, &hearing(&[(100, TIMEOUT - 1)]));
        assert_eq!(under, Review::default());

        let past = run(&none, &one, &hearing(&[(100, TIMEOUT)]));
        assert_eq!(past.failed, Some(100));
        assert!(past.back.is_empty());
        assert_eq!(past.lines.len(), 1, "{:?}", past.lines);
        assert!(
            past.lines[0].starts_with("storage server 100 failed")
                && past.lines[0].contains("team-1"),
            "{:?}",
            past.lines
        );
    }

    #[test]
    fn one_server_is_failed_at_a_time_the_longest_silent_first() {
        let found = run(
            &Configuration::default(),
            &state(&[&[]]),
            &hearing(&[(100, TIMEOUT), (201, TIMEOUT + 1)]),
        );
        assert_eq!(found.failed, Some(201));
    }

    #[test]
    fn the_last_holder_of_a_team_stays_in_however_long_it_is_silent() {
        let none = Configuration::default();
        // Both of team 1 silent: neither goes, and status says why.
        let both = run(
            &none,
            &state(&[&[]]),
            &hearing(&[(100, TIMEOUT * 10), (101, TIMEOUT)]),
        );
        assert_eq!(both.failed, None);
        assert_eq!(both.lines.len(), 2, "{:?}", both.lines);
        assert!(
            both.lines.iter().all(|l| l.contains("stays in")),
            "{:?}",
            both.lines
        );

        // 101 answers, but a generation still in the core state left it
        // out: what it holds may be only in its memory.
        let left_out_before = state(&[&[], &[101], &[]]);
        let found = run(&none, &left_out_before, &hearing(&[(100, TIMEOUT)]));
        assert_eq!(found.failed, None);
        assert!(found.lines[0].contains("team-1"), "{:?}", found.lines);

        // 101 failed already: 100 is the last of team 1.
        let mut failed = Configuration::default();
        failed.failed_servers.insert(101);
        let found = run(
            &failed,
            &state(&[&[101]]),
            &hearing(&[(100, TIMEOUT), (101, TIMEOUT * 3)]),
        );
        assert_eq!(found.failed, None);
        assert!(found.back.is_empty());
        assert!(
            found.lines.iter().any(|l| l.contains("with no server")),
            "{:?}",
            found.lines
        );
    }

    #[test]
    fn a_failed_server_that_answers_is_taken_back_and_one_excluded_is_left_to_the_operator() {
        let mut configuration = Configuration::default();
        configuration.failed_servers.extend([100, 200]);
        let generation = state(&[&[100, 200]]);
        // 100 answers (left out, it waits to be taken back); 200 does not.
        let mut heard = hearing(&[(200, TIMEOUT * 2)]);
        heard.serving.remove(&100);
        let found = run(&configuration, &generation, &heard);
        assert_eq!(found.back, BTreeSet::from([100]));
        assert_eq!(found.failed, None);
        assert_eq!(found.lines.len(), 1, "{:?}", found.lines);
        assert!(
            found.lines[0].starts_with("storage server 200 failed"),
            "{:?}",
            found.lines
        );

        // Excluded by the operator as well: nothing to say of it.
        configuration.excluded_servers.insert(200);
        let found = run(&configuration, &generation, &heard);
        assert!(found.lines.is_empty(), "{:?}", found.lines);
    }
}

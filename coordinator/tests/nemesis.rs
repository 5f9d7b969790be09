//! Three coordinators in this process over in-memory disks, one of them
//! stopped and restarted again and again (the leader more often than
//! not) while writers race conditional writes on one register. No two
//! acknowledged writes may share a revision (that would be a lost update),
//! and the register ends at or past every acknowledged revision. A watcher
//! follows the register meanwhile: what its watches answer never goes
//! back, whichever coordinator leads. The seed (printed; `TEAMLOG_SEED`
//! replays it) fixes the schedule of stops. Apart from that, the leader's
//! disk fills up under the writers, and later has room again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coordinator::client::{CoordinatorClient, CoordinatorError};
use coordinator::disk::MemDisk;
use coordinator::service::{CoordinatorConfig, CoordinatorService};
use proto::transport::{serve, ServerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const REGISTER: &str = "nemesis";
const WRITERS: usize = 3;

struct Running {
    service: CoordinatorService,
    stop: oneshot::Sender<()>,
    served: JoinHandle<std::io::Result<()>>,
}

struct Node {
    config: CoordinatorConfig,
    disk: Arc<MemDisk>,
    running: Option<Running>,
}

impl Node {
    async fn start(&mut self) {
        let addr = self.config.members[&self.config.id];
        let listener = TcpListener::bind(addr)
            .await
            .expect("the node's port is free again");
        let service = CoordinatorService::start(&self.config, self.disk.clone())
            .await
            .expect("a coordinator starts over its disk");
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            listener,
            Arc::new(service.clone()),
            ServerConfig::default(),
            async {
                let _ = stopped.await;
            },
        ));
        self.running = Some(Running {
            service,
            stop,
            served,
        });
    }

    async fn stop(&mut self) {
        let running = self.running.take().expect("running");
        let _ = running.stop.send(());
        running
            .served
            .await
            .expect("serving ends")
            .expect("serving ends cleanly");
        running.service.shutdown().await;
    }

    fn leads(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| r.service.status().leader == Some(self.config.id))
    }
}

#[derive(Default)]
struct Outcomes {
    /// Acknowledged writes by revision: more than one at a revision is a
    /// lost update.
    acknowledged: BTreeMap<u64, Vec<String>>,
    unknown: usize,
}

async fn write_until_stopped(
    client: Arc<CoordinatorClient>,
    writer: usize,
    outcomes: Arc<Mutex<Outcomes>>,
    acknowledged: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let value = format!("w{writer}-{n}");
        let Ok(current) = client.read(REGISTER).await else {
            continue;
        };
        match client
            .write(REGISTER, current.revision, Bytes::from(value.clone()))
            .await
        {
            Ok(outcome) if outcome.written => {
                let mut outcomes = outcomes.lock().unwrap();
                outcomes
                    .acknowledged
                    .entry(outcome.register.revision)
                    .or_default()
                    .push(value);
                acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(CoordinatorError::Unavailable { .. }) => outcomes.lock().unwrap().unknown += 1,
            Err(other) => panic!("writer {writer}: {other}"),
        }
    }
}

/// Writers racing conditional writes on the register through one client.
struct Writing {
    client: Arc<CoordinatorClient>,
    outcomes: Arc<Mutex<Outcomes>>,
    acknowledged: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<()>>,
}

impl Writing {
    fn start(addrs: &[SocketAddr], writers: usize) -> Writing {
        let client = Arc::new(
            CoordinatorClient::new(addrs, Default::default())
                .unwrap()
                .with_timeout(Duration::from_secs(3)),
        );
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writers = (0..writers)
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
        Writing {
            client,
            outcomes,
            acknowledged,
            stop,
            writers,
        }
    }

    /// Waits until three more writes than `since` are acknowledged.
    async fn progress(&self, what: &str) {
        let since = self.acknowledged.load(Ordering::Relaxed);
        wait_for_progress(&self.acknowledged, since, what).await;
    }

    /// Stops the writers (and whatever else watches `stop`), and waits
    /// for them.
    async fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for writer in self.writers.drain(..) {
            writer.await.unwrap();
        }
    }

    /// Acknowledged writes that share a revision: lost updates.
    fn lost_updates(&self) -> Vec<(u64, Vec<String>)> {
        self.outcomes
            .lock()
            .unwrap()
            .acknowledged
            .iter()
            .filter(|(_, values)| values.len() > 1)
            .map(|(revision, values)| (*revision, values.clone()))
            .collect()
    }
}

/// Three coordinators over in-memory disks, started; and their addresses.
async fn start_three() -> (Vec<Node>, Vec<SocketAddr>) {
    let members: BTreeMap<u64, SocketAddr> = (1..=3).zip(free_addrs(3)).collect();
    let mut nodes: Vec<Node> = members
        .keys()
        .map(|id| Node {
            config: CoordinatorConfig::new(*id, members.clone()),
            disk: Arc::new(MemDisk::default()),
            running: None,
        })
        .collect();
    for node in &mut nodes {
        node.start().await;
    }
    let addrs = members.values().copied().collect();
    (nodes, addrs)
}

/// Watches the register until stopped; returns every revision the
/// watches answered with, in order.
async fn watch_until_stopped(client: Arc<CoordinatorClient>, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut answered = Vec::new();
    let mut seen = 0;
    while !stop.load(Ordering::Relaxed) {
        match client
            .watch(REGISTER, seen, Duration::from_millis(300))
            .await
        {
            Ok(register) => {
                answered.push(register.revision);
                seen = seen.max(register.revision);
            }
            Err(CoordinatorError::Unavailable { .. }) => {}
            Err(other) => panic!("watcher: {other}"),
        }
    }
    answered
}

async fn wait_for_progress(acknowledged: &AtomicU64, since: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged.load(Ordering::Relaxed) < since + 3 {
        assert!(
            Instant::now() < deadline,
            "{what}: no write acknowledged within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_never_share_a_revision_through_repeated_stops() {
    let seed = testkit::seed::seed_from_env();
    let stops = testkit::seed::kills_from_env(8);
    let mut rng = StdRng::seed_from_u64(seed);

    let (mut nodes, addrs) = start_three().await;
    let mut writing = Writing::start(&addrs, WRITERS);
    let client = writing.client.clone();
    let watcher = tokio::spawn(watch_until_stopped(client.clone(), writing.stop.clone()));
    writing.progress("before any stop").await;

    for round in 0..stops {
        let leader = nodes.iter().position(Node::leads);
        let victim = match leader {
            Some(leader) if rng.random_bool(0.7) => leader,
            _ => rng.random_range(0..nodes.len()),
        };
        nodes[victim].stop().await;
        writing
            .progress(&format!("stop {round} of {}", victim + 1))
            .await;
        nodes[victim].start().await;
    }
    writing.finish().await;
    let watched = watcher.await.unwrap();

    let last = client.read(REGISTER).await.unwrap();
    for node in &mut nodes {
        node.stop().await;
    }
    let doubled = writing.lost_updates();
    assert!(doubled.is_empty(), "lost updates: {doubled:?}");
    let outcomes = writing.outcomes.lock().unwrap();
    let (&highest, values) = outcomes
        .acknowledged
        .last_key_value()
        .expect("writes were acknowledged");
    assert!(
        last.revision >= highest,
        "the register is at {} below acknowledged revision {highest}",
        last.revision
    );
    if last.revision == highest {
        assert_eq!(last.value, values[0].as_bytes());
    }
    let went_back: Vec<_> = watched.windows(2).filter(|w| w[1] < w[0]).collect();
    assert!(went_back.is_empty(), "watches went back: {went_back:?}");
    assert!(
        watched.last().is_some_and(|r| *r > 0),
        "the watcher never saw a write: {watched:?}"
    );
    println!(
        "{} writes acknowledged, {} of unknown outcome, register at revision {}",
        writing.acknowledged.load(Ordering::Relaxed),
        outcomes.unknown,
        last.revision
    );
}

/// A watch answers once a write passes the revision it saw, with that
/// write; when nothing is written it answers after its wait, unchanged;
/// and a watch that saw less than the register holds answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_answers_with_the_write_that_passes_its_revision() {
    let (mut nodes, addrs) = start_three().await;
    let client = Arc::new(CoordinatorClient::new(&addrs, Default::default()).unwrap());
    let before = client.read(REGISTER).await.unwrap();

    let idle = client
        .watch(REGISTER, before.revision, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(idle.revision, before.revision);

    // The coordinators answer a longer wait after 5 s: without the write
    // waking it, this watch would answer with the old revision.
    let watching = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .watch(REGISTER, before.revision, Duration::from_secs(60))
                .await
        }
    });
    let written = client
        .write(REGISTER, before.revision, Bytes::from_static(b"moved"))
        .await
        .unwrap();
    assert!(written.written);
    let woken = watching.await.unwrap().unwrap();
    assert_eq!(woken.revision, written.register.revision);
    assert_eq!(&woken.value[..], b"moved");

    let behind = client
        .watch(REGISTER, before.revision, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(behind.revision, written.register.revision);
    for node in &mut nodes {
        node.stop().await;
    }
}

/// Waits, up to 30 s, until `done` holds.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let held = cluster::retry::wait_until(done, Duration::from_secs(30)).await;
    assert!(held, "{what}: not within 30 s");
}

/// The leader's disk fills up: it stalls rather than stops, says why in
/// its status, and the other two go on committing; it can be stopped and
/// started meanwhile; once there is room it writes what waited, catches up
/// and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_whose_disk_fills_waits_for_room_and_catches_up() {
    let (mut nodes, addrs) = start_three().await;
    let mut writing = Writing::start(&addrs, 1);
    writing.progress("before the disk fills").await;
    let leader = std::cell::Cell::new(None);
    wait_until("a leader", || {
        leader.set(nodes.iter().position(Node::leads));
        leader.get().is_some()
    })
    .await;
    let full = leader.get().expect("found");
    nodes[full].disk.fill(true);
    let status = |node: &Node| node.running.as_ref().expect("running").service.status();
    wait_until("the full coordinator says why", || {
        status(&nodes[full])
            .problem
            .is_some_and(|p| p.contains("no room"))
    })
    .await;
    writing.progress("with the leader's disk full").await;
    assert!(nodes[full].disk.refused_for_room() > 0);
    // Stopped while a write waits for room, it still stops; and it starts
    // again over the full disk.
    nodes[full].stop().await;
    nodes[full].start().await;

    nodes[full].disk.fill(false);
    writing.progress("with room again").await;
    writing.finish().await;
    let others = (0..nodes.len()).filter(|i| *i != full);
    let applied = others
        .map(|i| status(&nodes[i]).last_applied)
        .max()
        .unwrap();
    wait_until("the full coordinator catches up", || {
        let caught_up = status(&nodes[full]);
        caught_up.last_applied >= applied && caught_up.problem.is_none()
    })
    .await;
    let doubled = writing.lost_updates();
    assert!(doubled.is_empty(), "lost updates: {doubled:?}");
    for node in &mut nodes {
        node.stop().await;
    }
}

//! One run: the cluster's hosts, the workload and the faults on one
//! simulated network, stepped a millisecond at a time from a seed.
//!
//! ```text
//!  seed ─▶ knobs, fault plan, turmoil's rng, the roles' jitter
//!  loop: apply the faults due ─▶ sim.step() ─▶ … until the workload ends
//!  then: the history against the model ─▶ RunReport (trace, violations)
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::ClusterFile;
use coordinator::disk::MemDisk;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use storage_server::mem_engine::MemEngine;
use tlog::mem_store::MemStore;
use worker::{MemDisks, TLogDisks};

use crate::faults::{self, Disk, Fault, FaultKinds, Node, Scheduled};
use crate::history::{History, Outcome};
use crate::hosts::{self, DiskSlot};
use crate::knobs::Knobs;
use crate::layout::{self, coordinator_ids, storage_ids, worker_ids, Role, Shape, TLOGS};
use crate::net;
use crate::registers::{RegisterHistory, RegisterWorkload};
use crate::stray::{Stray, STRAY_HOST};
use crate::trace::Trace;
use crate::workload::{Workload, LIVENESS};

/// The workload's host name.
pub const WORKLOAD_HOST: &str = "workload";

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    /// Who places the commit path: the cluster file, or the controller.
    pub shape: Shape,
    /// Simulated time with faults (and workload) before the cluster is
    /// left alone to show it recovers.
    pub fault_window: Duration,
    /// About how often a fault starts.
    pub mean_fault_gap: Duration,
    /// What faults to draw; none runs without faults.
    pub fault_kinds: FaultKinds,
    /// A deliberately broken role to run instead of the real one.
    #[cfg(feature = "broken-variants")]
    pub broken: Option<crate::broken::Broken>,
}

impl SimOptions {
    pub fn new(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            shape: Shape::Pinned,
            fault_window: Duration::from_secs(5),
            mean_fault_gap: Duration::from_millis(500),
            fault_kinds: FaultKinds::ALL,
            #[cfg(feature = "broken-variants")]
            broken: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunReport {
    pub seed: u64,
    pub knobs: Knobs,
    pub trace: Vec<String>,
    pub digest: u64,
    pub violations: Vec<String>,
    pub acknowledged: usize,
    pub refused: usize,
    pub unknown: usize,
    pub reads: usize,
    pub faults: usize,
    pub simulated: Duration,
    pub wall: Duration,
}

/// Runs one seed. Runs in one process take turns: tokio numbers tasks
/// across the process, and a run's replay depends on its task ids (see
/// `align_task_ids`), so two at once would disturb each other.
pub fn run(options: &SimOptions) -> RunReport {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    align_task_ids();
    net::forget_links();
    // The roles' retry jitter (backon) draws from this thread's fastrand,
    // the coordinators' election timeouts from this thread's generator.
    fastrand::seed(options.seed);
    coordinator::runtime::seed_election_jitter(options.seed);
    let mut rng = StdRng::seed_from_u64(options.seed);
    let knobs = Knobs::draw(&mut rng, options.seed);
    let mut plan = faults::plan(
        &mut rng,
        options.shape,
        &knobs,
        options.fault_kinds,
        options.fault_window,
        options.mean_fault_gap,
    );
    if options.fault_kinds.full {
        plan.extend(faults::plan_disk_full(
            options.seed,
            options.shape,
            options.fault_window,
            options.mean_fault_gap,
        ));
    }
    let mut sim = turmoil::Builder::new()
        .rng_seed(rng.next_u64())
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(knobs.min_latency)
        .max_message_latency(knobs.max_latency)
        .simulation_duration(options.fault_window + 4 * LIVENESS)
        .build();
    let mut cluster = layout::cluster_file(options.shape, knobs.proxies);
    cluster.distribution = Some(knobs.distribution);
    if let Some(generation) = &mut cluster.generation {
        generation.storage_failure_timeout_ms = knobs.storage_failure_timeout_ms;
    }
    let trace = Trace::default();
    trace.note("driver", format!("cluster: {}", options.shape));
    // What each host's "disk" keeps across its restarts.
    let mut tlog_stores: Vec<MemStore> = Vec::new();
    let mut worker_disks: BTreeMap<u64, MemDisks> = BTreeMap::new();
    match options.shape {
        Shape::Pinned => {
            tlog_stores = (0..TLOGS).map(|_| MemStore::new()).collect();
            add_pinned_commit_path(&mut sim, options, &cluster, &knobs, &tlog_stores);
        }
        Shape::Recruited => {
            for id in worker_ids() {
                let disks = MemDisks::default();
                let opened: Arc<dyn TLogDisks> = Arc::new(disks.clone());
                #[cfg(feature = "broken-variants")]
                let opened: Arc<dyn TLogDisks> =
                    if options.broken == Some(crate::broken::Broken::TLogAcknowledgesBeforeSync) {
                        Arc::new(crate::broken::LaggingDisks(disks.clone()))
                    } else {
                        opened
                    };
                hosts::add_worker(&mut sim, id, opened, &cluster, &knobs);
                worker_disks.insert(id, disks);
            }
        }
    }
    #[cfg(feature = "broken-variants")]
    {
        crate::broken::Broken::arm(options.broken);
        if let Some(broken) = options.broken {
            trace.note("driver", format!("broken variant: {broken:?}"));
        }
    }
    let storage_engines: BTreeMap<u64, Arc<MemEngine>> = storage_ids()
        .into_iter()
        .map(|id| (id, Arc::new(MemEngine::new())))
        .collect();
    for (id, engine) in &storage_engines {
        hosts::add_storage(&mut sim, *id, Arc::clone(engine), &cluster, &knobs);
    }
    let coordinator_disks: BTreeMap<u64, DiskSlot> = coordinator_ids()
        .into_iter()
        .map(|id| (id, DiskSlot::default()))
        .collect();
    for (id, disk) in &coordinator_disks {
        hosts::add_coordinator(&mut sim, *id, Arc::clone(disk), &cluster);
    }
    let history = Rc::new(RefCell::new(History::default()));
    let register_history = Rc::new(RefCell::new(RegisterHistory::default()));
    let registers = RegisterWorkload {
        clients: knobs.register_clients,
        seed: options.seed,
        fault_end: options.fault_window,
        history: Rc::clone(&register_history),
        trace: trace.clone(),
    };
    let workload = Workload {
        cluster,
        exclude: options.fault_kinds.exclude,
        scale: options.fault_kinds.scale,
        clients: knobs.clients,
        seed: options.seed,
        fault_end: options.fault_window,
        history: Rc::clone(&history),
        trace: trace.clone(),
    };
    if options.fault_kinds.junk {
        let stray = Stray {
            seed: options.seed,
            shape: options.shape,
            fault_end: options.fault_window,
            trace: trace.clone(),
        };
        sim.client(STRAY_HOST, stray.run());
    }
    sim.client(WORKLOAD_HOST, async move {
        let (result, ()) = tokio::join!(workload.run(), registers.run());
        result
    });

    let mut driver = Driver {
        rng,
        tlog_stores,
        worker_disks,
        coordinator_disks,
        trace: trace.clone(),
        active: BTreeSet::new(),
        down: BTreeSet::new(),
        full: BTreeSet::new(),
        storage_engines,
        skipped: 0,
    };
    let agenda = Driver::agenda(&plan);
    let faults = plan.len();
    driver.step_until_done(&mut sim, agenda, options.fault_window);
    #[cfg(feature = "broken-variants")]
    crate::broken::Broken::arm(None);

    let history = history.borrow();
    for violation in history
        .violations()
        .into_iter()
        .chain(register_history.borrow().violations())
    {
        trace.violation(violation);
    }
    let count = |f: fn(&Outcome) -> bool| history.commits.iter().filter(|c| f(&c.outcome)).count();
    RunReport {
        seed: options.seed,
        knobs,
        trace: trace.lines(),
        digest: trace.digest(),
        violations: trace.violations(),
        acknowledged: count(|o| matches!(o, Outcome::Acknowledged(_))),
        refused: count(|o| matches!(o, Outcome::Refused(_))),
        unknown: count(|o| matches!(o, Outcome::Unknown(_))),
        reads: history.reads.len(),
        faults: faults - driver.skipped,
        simulated: sim.elapsed(),
        wall: started.elapsed(),
    }
}

/// The TLogs, the sequencer and the proxies a pinned cluster file places.
fn add_pinned_commit_path(
    sim: &mut turmoil::Sim<'_>,
    #[cfg_attr(not(feature = "broken-variants"), allow(unused_variables))] options: &SimOptions,
    cluster: &ClusterFile,
    knobs: &Knobs,
    tlog_stores: &[MemStore],
) {
    for (index, store) in tlog_stores.iter().enumerate() {
        #[cfg(feature = "broken-variants")]
        if options.broken == Some(crate::broken::Broken::TLogAcknowledgesBeforeSync) {
            let lagging = crate::broken::LaggingSyncStore::new(store.clone());
            hosts::add_tlog(sim, index, lagging, store.clone(), knobs);
            continue;
        }
        hosts::add_tlog(sim, index, store.clone(), store.clone(), knobs);
    }
    hosts::add_sequencer(sim, cluster);
    for id in 1..=knobs.proxies {
        hosts::add_proxy(sim, id, cluster, knobs);
    }
}

/// tokio keeps a runtime's tasks in four lists by task id (id mod 4), and
/// a crashed host's tasks are dropped list by list, which sets the order of
/// the connection closes the crash sends. Task ids count up across the
/// process, so each run starts them at the residue a fresh process starts
/// at: a seed then replays in any run of a process, not only the first.
fn align_task_ids() {
    const LISTS: u64 = 4;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime for aligning task ids");
    runtime.block_on(async {
        loop {
            let id: u64 = tokio::spawn(async {})
                .id()
                .to_string()
                .parse()
                .expect("a task id is a number");
            if id % LISTS == 0 {
                return;
            }
        }
    });
}

enum Action {
    Start(Scheduled),
    End(Fault),
}

struct Driver {
    rng: StdRng,
    /// The TLogs' stores, for the power loss a kill makes.
    tlog_stores: Vec<MemStore>,
    /// A recruited cluster's workers' TLog logs, likewise.
    worker_disks: BTreeMap<u64, MemDisks>,
    /// The coordinators' disks, for a failed write and the reopening after.
    coordinator_disks: BTreeMap<u64, DiskSlot>,
    trace: Trace,
    /// Links under a fault: one at a time per pair, since turmoil does not
    /// combine a hold with a cut.
    active: BTreeSet<(Node, Node)>,
    down: BTreeSet<Role>,
    /// Roles whose disk has no room.
    full: BTreeSet<Role>,
    /// The storage servers' engines, which a full disk refuses writes.
    storage_engines: BTreeMap<u64, Arc<MemEngine>>,
    /// Faults not started because their link or host already had one.
    skipped: usize,
}

impl Driver {
    /// What a crashed host's TLogs keep of what they had not synced.
    fn lose_power(&mut self, role: Role) {
        match role {
            Role::TLog(index) => self.tlog_stores[index].crash(self.rng.next_u64()),
            Role::Worker(id) => self.worker_disks[&id].crash(self.rng.next_u64()),
            _ => {}
        }
    }

    /// Leaves a TLog's or worker's disk no room for another segment, or a
    /// storage server's or a coordinator's for another write; or gives it
    /// room again.
    fn fill(&self, role: Role, full: bool) {
        match role {
            Role::TLog(index) if full => self.tlog_stores[index].fill(),
            Role::TLog(index) => self.tlog_stores[index].limit_segments(None),
            Role::Worker(id) => self.worker_disks[&id].fill(full),
            Role::Storage(id) => self.storage_engines[&id].set_full(full),
            Role::Coordinator(id) => self.coordinator_disk(id).fill(full),
            // Not planned: their disks hold no log and no store.
            Role::Sequencer | Role::Proxy(_) => {}
        }
    }

    /// Whether `role` met its full disk: a segment or a write refused.
    fn refused_for_space(&self, role: Role) -> bool {
        match role {
            Role::TLog(index) => self.tlog_stores[index].refused_for_space(),
            Role::Worker(id) => self.worker_disks[&id].refused_for_space(),
            Role::Storage(id) => self.storage_engines[&id].refused_for_space(),
            Role::Coordinator(id) => self.coordinator_disk(id).refused_for_room() > 0,
            Role::Sequencer | Role::Proxy(_) => false,
        }
    }

    fn coordinator_disk(&self, id: u64) -> Arc<MemDisk> {
        Arc::clone(
            &self.coordinator_disks[&id]
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
}

fn pair(a: Node, b: Node) -> (Node, Node) {
    (a.min(b), a.max(b))
}

impl Driver {
    /// Each fault's start by simulated time; its end is added when it
    /// starts, by the end of the window at the latest.
    fn agenda(plan: &[Scheduled]) -> BTreeMap<(Duration, usize), Action> {
        let mut agenda = BTreeMap::new();
        for (i, scheduled) in plan.iter().enumerate() {
            agenda.insert((scheduled.at, 2 * i), Action::Start(scheduled.clone()));
        }
        agenda
    }

    fn step_until_done(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        mut agenda: BTreeMap<(Duration, usize), Action>,
        window: Duration,
    ) {
        loop {
            let now = sim.elapsed();
            while let Some(entry) = agenda.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let ((_, order), action) = entry.remove_entry();
                match action {
                    Action::Start(scheduled) => {
                        if self.start(sim, now, &scheduled.fault) {
                            let end = (scheduled.at + scheduled.lasting).min(window).max(now);
                            agenda.insert((end, order + 1), Action::End(scheduled.fault));
                        }
                    }
                    Action::End(fault) => self.end(sim, now, &fault),
                }
            }
            match sim.step() {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    self.trace.note_at(sim.elapsed(), "sim", "the run failed");
                    self.trace.violation(format!("the simulation failed: {e}"));
                    return;
                }
            }
        }
    }

    fn start(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration, fault: &Fault) -> bool {
        match *fault {
            Fault::Kill(role) => {
                if !self.down.insert(role) {
                    self.skipped += 1;
                    return false;
                }
                sim.crash(role.host());
                // A power loss: what was not synced is kept, lost or torn.
                self.lose_power(role);
            }
            Fault::Cut { from, to, one_way } => {
                if !self.active.insert(pair(from, to)) {
                    self.skipped += 1;
                    return false;
                }
                if one_way {
                    sim.partition_oneway(from.host(), to.host());
                } else {
                    sim.partition(from.host(), to.host());
                }
                net::cut_link(sim.lookup(from.host()), sim.lookup(to.host()));
            }
            Fault::Clog(a, b) => {
                if !self.active.insert(pair(a, b)) {
                    self.skipped += 1;
                    return false;
                }
                sim.hold(a.host(), b.host());
            }
            Fault::SyncError(disk) => {
                if !self.down.insert(disk.role()) {
                    self.skipped += 1;
                    return false;
                }
                match disk {
                    Disk::TLog(index) => self.tlog_stores[index].fail_next_sync(),
                    Disk::Worker(id) => {
                        for store in self.worker_disks[&id].stores() {
                            store.fail_next_sync();
                        }
                    }
                    Disk::Coordinator(id) => self.coordinator_disk(id).fail_next_write(),
                }
            }
            Fault::DiskFull(role) => {
                if !self.full.insert(role) {
                    self.skipped += 1;
                    return false;
                }
                self.fill(role, true);
            }
        }
        self.trace.note_at(now, "fault", fault);
        true
    }

    fn end(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration, fault: &Fault) {
        match *fault {
            Fault::Kill(role) => {
                self.down.remove(&role);
                sim.bounce(role.host());
            }
            Fault::Cut { from, to, one_way } => {
                self.active.remove(&pair(from, to));
                if one_way {
                    sim.repair_oneway(from.host(), to.host());
                } else {
                    sim.repair(from.host(), to.host());
                }
                net::heal_link(sim.lookup(from.host()), sim.lookup(to.host()));
            }
            Fault::Clog(a, b) => {
                self.active.remove(&pair(a, b));
                sim.release(a.host(), b.host());
            }
            Fault::SyncError(disk) => {
                let role = disk.role();
                self.down.remove(&role);
                sim.crash(role.host());
                match disk {
                    // A failed fsync may have dropped what it did not
                    // sync: the disk keeps what a power loss would.
                    Disk::TLog(_) | Disk::Worker(_) => self.lose_power(role),
                    Disk::Coordinator(id) => {
                        let reopened = Arc::new(self.coordinator_disk(id).reopen());
                        *self.coordinator_disks[&id]
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = reopened;
                    }
                }
                sim.bounce(role.host());
            }
            Fault::DiskFull(role) => {
                self.full.remove(&role);
                let met = self.refused_for_space(role);
                self.fill(role, false);
                if met {
                    self.trace
                        .note_at(now, "fault", format!("end: {fault} (space was refused)"));
                    return;
                }
            }
        }
        self.trace.note_at(now, "fault", format!("end: {fault}"));
    }
}

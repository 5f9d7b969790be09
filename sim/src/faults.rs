//! Faults drawn from the seed: processes killed and restarted (a TLog
//! losing what it had not synced, pages torn), links cut both ways or one
//! way, and links clogged (messages held, then delivered). Each fault
//! lasts a while and ends; all end when the fault window does.
//!
//! ```text
//!  plan(rng) ─▶ [(at, Fault)] ─▶ driver: start at `at`, end at `at + lasting`
//! ```

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::knobs::Knobs;
use crate::layout::{
    coordinator_ids, storage_ids, worker_ids, Role, Shape, COORDINATORS, TLOGS, WORKERS,
};

/// A host faults act on: a role, or the workload's clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    Role(Role),
    Workload,
}

impl Node {
    pub fn host(self) -> String {
        match self {
            Node::Role(role) => role.host(),
            Node::Workload => crate::WORKLOAD_HOST.to_owned(),
        }
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Role(role) => role.fmt(f),
            Node::Workload => f.write_str("workload"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Killed; started again over what its disk kept when it ends.
    Kill(Role),
    /// No message between the two, or from the first to the second only.
    Cut { from: Node, to: Node, one_way: bool },
    /// Messages between the two held, and delivered when it ends.
    Clog(Node, Node),
    /// The next fsync of a TLog or a coordinator fails, which poisons it;
    /// when the fault ends, it is restarted (as an operator would) over
    /// what its disk kept.
    SyncError(Disk),
    /// A TLog's or a worker's disk has no room for another log segment,
    /// or a storage server's or a coordinator's for another write, until
    /// the fault ends (or log segments are removed).
    DiskFull(Role),
}

/// A disk whose fsync can fail: a TLog's, a worker's (its TLogs') or a
/// coordinator's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disk {
    TLog(usize),
    Worker(u64),
    Coordinator(u64),
}

impl Disk {
    /// The role whose process the disk belongs to.
    pub fn role(self) -> Role {
        match self {
            Disk::TLog(index) => Role::TLog(index),
            Disk::Worker(id) => Role::Worker(id),
            Disk::Coordinator(id) => Role::Coordinator(id),
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Kill(role) => write!(f, "kill {role}"),
            Fault::Cut {
                from,
                to,
                one_way: true,
            } => write!(f, "cut {from} -> {to}"),
            Fault::Cut { from, to, .. } => write!(f, "cut {from} <-> {to}"),
            Fault::Clog(a, b) => write!(f, "clog {a} <-> {b}"),
            Fault::SyncError(disk) => write!(f, "fsync error on {}", disk.role()),
            Fault::DiskFull(role) => write!(f, "disk full on {role}"),
        }
    }
}

/// Which kinds of fault a run draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultKinds {
    pub kill: bool,
    /// Links that lose what is sent over them while cut, breaking the
    /// connections across them (see `net`).
    pub cut: bool,
    /// Links that hold what is sent and deliver it late, as TCP does over
    /// a link that stalls.
    pub clog: bool,
    /// A TLog's or a coordinator's fsync failing.
    pub fsync: bool,
    /// A stray peer sending what the protocol does not expect (see
    /// `stray`); it runs beside the planned faults, not among them.
    pub junk: bool,
    /// A TLog's, a storage server's or a coordinator's disk with no room;
    /// planned apart (see [`plan_disk_full`]).
    pub full: bool,
    /// Storage servers left out of their teams and taken back (a
    /// recruited cluster's operator, see `operator`); beside the planned
    /// faults, not among them.
    pub exclude: bool,
    /// Whole teams emptied, taken out of the cluster and let back in, as
    /// `teamlog scale` does (a recruited cluster's operator). Not among
    /// the kinds drawn by default: it still finds open bugs.
    pub scale: bool,
}

impl FaultKinds {
    pub const ALL: FaultKinds = FaultKinds {
        kill: true,
        cut: true,
        clog: true,
        fsync: true,
        junk: true,
        full: true,
        exclude: true,
        scale: false,
    };

    pub const NONE: FaultKinds = FaultKinds {
        kill: false,
        cut: false,
        clog: false,
        fsync: false,
        junk: false,
        full: false,
        exclude: false,
        scale: false,
    };

    /// Kinds named in a list like `kill,clog`.
    pub fn parse(list: &str) -> Result<FaultKinds, String> {
        let mut kinds = FaultKinds::NONE;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "kill" => kinds.kill = true,
                "cut" => kinds.cut = true,
                "clog" => kinds.clog = true,
                "fsync" => kinds.fsync = true,
                "junk" => kinds.junk = true,
                "full" => kinds.full = true,
                "exclude" => kinds.exclude = true,
                "scale" => kinds.scale = true,
                other => {
                    return Err(format!(
                        "unknown fault kind {other:?} (kill, cut, clog, fsync, junk, full, \
                         exclude, scale)"
                    ))
                }
            }
        }
        Ok(kinds)
    }

    /// Whether any kind the plan draws from is on.
    fn any_planned(self) -> bool {
        self.kill || self.cut || self.clog || self.fsync
    }
}

impl std::fmt::Display for FaultKinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = [
            (self.kill, "kill"),
            (self.cut, "cut"),
            (self.clog, "clog"),
            (self.fsync, "fsync"),
            (self.junk, "junk"),
            (self.full, "full"),
            (self.exclude, "exclude"),
            (self.scale, "scale"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        f.write_str(&names.join(","))
    }
}

#[derive(Clone, Debug)]
pub struct Scheduled {
    pub at: Duration,
    pub lasting: Duration,
    pub fault: Fault,
}

/// The longest a fault lasts: well inside the commit path's retry windows
/// (5 s to the sequencer, 30 s to a TLog), which a pinned cluster needs,
/// having no recovery.
const MAX_LASTING_MS: u64 = 3_000;

/// Roles that may be killed: of a pinned cluster, those whose restart it
/// takes without recovery; of a recruited one, any worker (whatever
/// roles it hosts); and the storage servers and the coordinators (with
/// the controller one of them runs).
fn killable(shape: Shape) -> Vec<Role> {
    let mut roles: Vec<Role> = match shape {
        Shape::Pinned => (0..TLOGS).map(Role::TLog).collect(),
        Shape::Recruited => worker_ids().into_iter().map(Role::Worker).collect(),
    };
    roles.extend(storage_ids().into_iter().map(Role::Storage));
    roles.extend(coordinator_ids().into_iter().map(Role::Coordinator));
    roles
}

fn nodes(shape: Shape, knobs: &Knobs) -> Vec<Node> {
    let mut nodes: Vec<Node> = killable(shape).into_iter().map(Node::Role).collect();
    if shape == Shape::Pinned {
        nodes.push(Node::Role(Role::Sequencer));
        nodes.extend((1..=knobs.proxies).map(|id| Node::Role(Role::Proxy(id))));
    }
    nodes.push(Node::Workload);
    nodes
}

/// A disk whose next fsync fails.
fn failing_disk(rng: &mut StdRng, shape: Shape) -> Disk {
    if !rng.random_bool(0.5) {
        return Disk::Coordinator(rng.random_range(1..=COORDINATORS));
    }
    match shape {
        Shape::Pinned => Disk::TLog(rng.random_range(0..TLOGS)),
        Shape::Recruited => Disk::Worker(rng.random_range(1..=WORKERS)),
    }
}

/// Faults of `kinds` over `window`, about one every `mean_gap`.
pub fn plan(
    rng: &mut StdRng,
    shape: Shape,
    knobs: &Knobs,
    kinds: FaultKinds,
    window: Duration,
    mean_gap: Duration,
) -> Vec<Scheduled> {
    let killable = killable(shape);
    let nodes = nodes(shape, knobs);
    let mut faults = Vec::new();
    if !kinds.any_planned() {
        return faults;
    }
    let mut at = Duration::ZERO;
    loop {
        at += Duration::from_millis(rng.random_range(0..=2 * mean_gap.as_millis() as u64));
        if at >= window {
            return faults;
        }
        let lasting = Duration::from_millis(rng.random_range(10..=MAX_LASTING_MS));
        let kind = loop {
            let kind = rng.random_range(0..11);
            let allowed = match kind {
                0..=3 => kinds.kill,
                4..=7 => kinds.cut,
                8..=9 => kinds.clog,
                _ => kinds.fsync,
            };
            if allowed {
                break kind;
            }
        };
        let fault = match kind {
            0..=3 => Fault::Kill(killable[rng.random_range(0..killable.len())]),
            4..=7 => {
                let (from, to) = two(rng, &nodes);
                Fault::Cut {
                    from,
                    to,
                    one_way: rng.random_bool(0.5),
                }
            }
            8..=9 => {
                let (a, b) = two(rng, &nodes);
                Fault::Clog(a, b)
            }
            _ => Fault::SyncError(failing_disk(rng, shape)),
        };
        faults.push(Scheduled { at, lasting, fault });
    }
}

/// Keeps the disk-full faults' draws apart from the plan's.
const DISK_FULL_STREAM: u64 = 0x6675_6c6c;

/// Disks filling up over `window`, about one every four `mean_gap`s,
/// drawn from a stream of their own off `seed`: with them, every other
/// draw of a seed stays as it was.
pub fn plan_disk_full(
    seed: u64,
    shape: Shape,
    window: Duration,
    mean_gap: Duration,
) -> Vec<Scheduled> {
    let mut rng = StdRng::seed_from_u64(seed ^ DISK_FULL_STREAM);
    let mut faults = Vec::new();
    let mut at = Duration::ZERO;
    loop {
        at += Duration::from_millis(rng.random_range(0..=8 * mean_gap.as_millis() as u64));
        if at >= window {
            return faults;
        }
        let role = match (rng.random_range(0..5), shape) {
            (0..=1, _) => {
                let servers = storage_ids();
                Role::Storage(servers[rng.random_range(0..servers.len())])
            }
            (2, _) => Role::Coordinator(rng.random_range(1..=COORDINATORS)),
            (_, Shape::Pinned) => Role::TLog(rng.random_range(0..TLOGS)),
            (_, Shape::Recruited) => Role::Worker(rng.random_range(1..=WORKERS)),
        };
        faults.push(Scheduled {
            at,
            lasting: Duration::from_millis(rng.random_range(10..=MAX_LASTING_MS)),
            fault: Fault::DiskFull(role),
        });
    }
}

fn two(rng: &mut StdRng, nodes: &[Node]) -> (Node, Node) {
    let a = rng.random_range(0..nodes.len());
    let b = (a + rng.random_range(1..nodes.len())) % nodes.len();
    (nodes[a], nodes[b])
}

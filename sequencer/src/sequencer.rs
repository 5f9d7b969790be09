//! The sequencer's state machine: commit versions in request order, and the
//! committed version that read versions come from.
//!
//! Versions advance with time (about 1,000,000 per second) and by at least
//! one per request, so a version difference is a duration. Each proxy numbers
//! its requests; a retried request gets the versions it got the first time.
//!
//! Versions run at most [`MAX_VERSIONS_AHEAD`] past the committed version,
//! so what a generation leaves uncommitted when a recovery ends it is
//! bounded. A recovered generation's sequencer chains on from the recovery
//! version but hands out versions above a floor past that bound
//! ([`SequencerCore::after_recovery`]): a storage server that read the
//! ended generation's uncommitted tail never holds a version a client of
//! the new one reads at, so it reads on, and meets the recovery first.
//!
//! ```text
//!  ended:  … recovery version E … tail (never committed) ≤ max(E, its floor) + MAX
//!  next:   prev E ─▶ committed = floor (nothing between) ─▶ versions > floor
//! ```

use std::collections::{BTreeMap, BTreeSet};

use proto::rpc::GetCommitVersionReply;
use proto::{ProxyId, Version, MAX_VERSIONS_AHEAD};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SequencerError {
    #[error("{proxy} request {request_num} is older than its request {latest}")]
    StaleRequest {
        proxy: ProxyId,
        request_num: u64,
        latest: u64,
    },
    #[error("{version} reported committed but never handed out (last is {last})")]
    UnknownVersion { version: Version, last: Version },
    /// Versions go only to the cluster's proxies: a version handed to
    /// anyone else would never reach the TLogs and stop every later commit.
    #[error("{0} is not a proxy of this cluster")]
    UnknownProxy(ProxyId),
    /// The sequencer is stopping: it hands out no new versions, so that the
    /// ones out can commit before it goes. Ask again (its successor).
    #[error("the sequencer is stopping and hands out no new versions")]
    Stopping,
    /// A new generation's sequencer hands out nothing before its commit
    /// path is recorded on the coordinators, and the controller opens it.
    #[error("the sequencer is not open yet: its generation's recovery has not finished")]
    NotOpen,
    /// Commits have not kept up: a new version would run too far past the
    /// committed one. Ask again once commits go through.
    #[error("{last} was handed out and only {committed} is committed: no version further ahead")]
    TooFarAhead { last: Version, committed: Version },
}

pub struct SequencerCore {
    proxies: BTreeSet<ProxyId>,
    last: Version,
    committed: Version,
    /// Version and clock reading at start: versions follow the clock from here.
    origin: (Version, u64),
    answered: BTreeMap<ProxyId, (u64, GetCommitVersionReply)>,
    stopping: bool,
    open: bool,
}

impl SequencerCore {
    /// Starts after `last`, the highest version any TLog holds, handing
    /// versions to `proxies`.
    pub fn new(last: Version, proxies: &BTreeSet<ProxyId>, now_us: u64) -> Self {
        SequencerCore {
            proxies: proxies.clone(),
            last,
            committed: last,
            origin: (last, now_us),
            answered: BTreeMap::new(),
            stopping: false,
            open: true,
        }
    }

    /// The sequencer of a generation a recovery began at `recovery`: its
    /// chain goes on from there, and it hands out versions above `floor`,
    /// which counts as committed (no commit lies between the two).
    pub fn after_recovery(
        recovery: Version,
        floor: Version,
        proxies: &BTreeSet<ProxyId>,
        now_us: u64,
    ) -> Self {
        let floor = floor.max(recovery);
        SequencerCore {
            committed: floor,
            origin: (floor, now_us),
            ..SequencerCore::new(recovery, proxies, now_us)
        }
    }

    /// The same sequencer, handing out nothing until [`SequencerCore::open`].
    pub fn closed(mut self) -> Self {
        self.open = false;
        self
    }

    pub fn open(&mut self) {
        self.open = true;
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    pub fn commit_version(
        &mut self,
        proxy: ProxyId,
        request_num: u64,
        now_us: u64,
    ) -> Result<GetCommitVersionReply, SequencerError> {
        if !self.proxies.contains(&proxy) {
            return Err(SequencerError::UnknownProxy(proxy));
        }
        if let Some((latest, reply)) = self.answered.get(&proxy) {
            if request_num == *latest {
                return Ok(*reply);
            }
            if request_num < *latest {
                return Err(SequencerError::StaleRequest {
                    proxy,
                    request_num,
                    latest: *latest,
                });
            }
        }
        if self.stopping {
            return Err(SequencerError::Stopping);
        }
        if !self.open {
            return Err(SequencerError::NotOpen);
        }
        let ceiling = self.committed.0 + MAX_VERSIONS_AHEAD;
        let next = self.last.max(self.committed).0 + 1;
        if next > ceiling {
            return Err(SequencerError::TooFarAhead {
                last: self.last,
                committed: self.committed,
            });
        }
        let by_time = self.origin.0 .0 + now_us.saturating_sub(self.origin.1);
        let version = Version(by_time.min(ceiling).max(next));
        let reply = GetCommitVersionReply {
            prev_version: self.last,
            version,
        };
        self.last = version;
        self.answered.insert(proxy, (request_num, reply));
        Ok(reply)
    }

    pub fn report_committed(&mut self, version: Version) -> Result<(), SequencerError> {
        if version > self.last {
            return Err(SequencerError::UnknownVersion {
                version,
                last: self.last,
            });
        }
        self.committed = self.committed.max(version);
        Ok(())
    }

    /// A version every commit at or below which is durable on every TLog:
    /// each TLog takes versions in chain order, so a version durable
    /// everywhere implies all earlier ones are.
    pub fn read_version(&self) -> Version {
        self.committed
    }

    pub fn last_version(&self) -> Version {
        self.last
    }

    /// Hands out no new versions from now on; a retried request still gets
    /// the versions it got.
    pub fn stop_handing_out(&mut self) {
        self.stopping = true;
    }

    /// Whether every version handed out is known committed: a sequencer
    /// that stops now leaves no hole in the chain. (A recovered one's
    /// committed version starts at its floor, above the chain's start.)
    pub fn is_settled(&self) -> bool {
        self.committed >= self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: ProxyId = ProxyId(1);
    const P2: ProxyId = ProxyId(2);

    fn core(last: u64, now_us: u64) -> SequencerCore {
        SequencerCore::new(Version(last), &[P1, P2].into(), now_us)
    }

    #[test]
    fn versions_chain_and_follow_the_clock() {
        let mut s = core(100, 5_000);
        let a = s.commit_version(P1, 1, 5_000).unwrap();
        assert_eq!((a.prev_version, a.version), (Version(100), Version(101)));
        let b = s.commit_version(P2, 1, 7_000).unwrap();
        assert_eq!((b.prev_version, b.version), (Version(101), Version(2_100)));
        // A clock that stands still still moves versions by one.
        let c = s.commit_version(P1, 2, 7_000).unwrap();
        assert_eq!(
            (c.prev_version, c.version),
            (Version(2_100), Version(2_101))
        );
    }

    #[test]
    fn versions_run_at_most_max_ahead_of_the_committed_version() {
        let mut s = core(100, 0);
        // The clock ran far ahead, and nothing committed: capped.
        let a = s.commit_version(P1, 1, 60_000_000).unwrap();
        assert_eq!(a.version, Version(100 + MAX_VERSIONS_AHEAD));
        assert_eq!(
            s.commit_version(P2, 1, 60_000_000),
            Err(SequencerError::TooFarAhead {
                last: a.version,
                committed: Version(100),
            })
        );
        s.report_committed(a.version).unwrap();
        let b = s.commit_version(P2, 1, 60_000_000).unwrap();
        assert_eq!(b.prev_version, a.version);
        assert!(b.version > a.version && b.version.0 <= a.version.0 + MAX_VERSIONS_AHEAD);
    }

    /// Every version `s` can still hand out, with the clock racing ahead
    /// and nothing more committed: the highest is its tail's bound.
    fn tail(s: &mut SequencerCore) -> Version {
        let mut request = 1_000;
        let mut tail = s.last_version();
        while let Ok(reply) = s.commit_version(P1, request, 1_000_000 * request) {
            tail = reply.version;
            request += 1;
        }
        tail
    }

    #[test]
    fn a_recovered_sequencer_chains_from_the_recovery_version_above_its_floor() {
        let floor = Version(100 + MAX_VERSIONS_AHEAD + 1);
        let mut s = SequencerCore::after_recovery(Version(100), floor, &[P1, P2].into(), 0);
        assert_eq!(s.read_version(), floor, "nothing commits below the floor");
        assert!(s.is_settled());
        let first = s.commit_version(P1, 1, 0).unwrap();
        assert_eq!(first.prev_version, Version(100));
        assert!(first.version > floor);
        assert!(tail(&mut s).0 <= floor.0 + MAX_VERSIONS_AHEAD);
    }

    #[test]
    fn a_retry_gets_the_same_versions_and_an_old_request_is_refused() {
        let mut s = core(0, 0);
        let first = s.commit_version(P1, 4, 10).unwrap();
        assert_eq!(s.commit_version(P1, 4, 99).unwrap(), first);
        assert!(matches!(
            s.commit_version(P1, 3, 99),
            Err(SequencerError::StaleRequest { .. })
        ));
    }

    #[test]
    fn a_stopping_sequencer_hands_out_nothing_new_and_settles_once_all_commit() {
        let mut s = core(10, 0);
        let out = s.commit_version(P1, 1, 0).unwrap();
        s.stop_handing_out();
        assert_eq!(
            s.commit_version(P2, 1, 0),
            Err(SequencerError::Stopping),
            "a new request"
        );
        assert_eq!(s.commit_version(P1, 1, 0), Ok(out), "a retried request");
        assert!(!s.is_settled());
        s.report_committed(out.version).unwrap();
        assert!(s.is_settled());
    }

    #[test]
    fn read_versions_are_the_highest_committed() {
        let mut s = core(10, 0);
        let a = s.commit_version(P1, 1, 0).unwrap();
        let b = s.commit_version(P2, 1, 0).unwrap();
        assert_eq!(s.read_version(), Version(10));
        s.report_committed(b.version).unwrap();
        s.report_committed(a.version).unwrap();
        assert_eq!(s.read_version(), b.version);
        assert!(s.report_committed(Version(1_000)).is_err());
    }

    #[test]
    fn a_stranger_gets_no_version() {
        let mut s = core(10, 0);
        assert_eq!(
            s.commit_version(ProxyId(9), 1, 0),
            Err(SequencerError::UnknownProxy(ProxyId(9)))
        );
        assert_eq!(s.last_version(), Version(10), "nothing handed out");
        assert!(s.commit_version(P1, 1, 0).is_ok());
    }

    #[test]
    fn a_closed_sequencer_hands_out_nothing_until_opened() {
        let mut s = core(900, 0).closed();
        assert_eq!(s.commit_version(P1, 1, 0), Err(SequencerError::NotOpen));
        assert_eq!(s.last_version(), Version(900));
        assert_eq!(s.read_version(), Version(900));
        s.open();
        let first = s.commit_version(P1, 1, 0).unwrap();
        assert_eq!(first.prev_version, Version(900));
    }
}

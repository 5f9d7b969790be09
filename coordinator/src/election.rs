//! Electing one cluster controller through a coordinated register: a pure
//! candidate that says what to ask the coordinators next and learns from
//! their answers; `candidacy.rs` runs it.
//!
//! ```text
//!  register "controller" = { id, address }, revision r
//!  leader:    every renew interval, write at r ─▶ r + 1   (leads while now < sent + lease)
//!  follower:  read; once r has not moved for a lease since first seen, write at r (take over)
//! ```
//!
//! Why it is safe with clocks that are not synchronized (only their rates
//! must agree): a leader counts its lease from when it *sent* its last
//! successful write; a follower counts from when it first *saw* that
//! write's revision, which is later. So the leader stops leading before
//! any follower tries to take over, and the takeover is a conditional
//! write at the revision the follower saw: if the leader renewed in the
//! meantime, it fails.

use serde::{Deserialize, Serialize};

/// The register the controller's identity lives in.
pub const CONTROLLER_REGISTER: &str = "controller";

/// Who holds (or wants) the controller's role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub id: u64,
    pub address: String,
}

#[derive(Clone, Copy, Debug)]
pub struct ElectionConfig {
    /// How often a leader renews, and a follower reads.
    pub renew_every_ms: u64,
    /// How long a renewal holds.
    pub lease_ms: u64,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            renew_every_ms: 100,
            lease_ms: 500,
        }
    }
}

/// What to ask the coordinators next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Read,
    Write {
        expected_revision: u64,
        value: Vec<u8>,
    },
}

/// The register as a coordinator answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub revision: u64,
    pub value: Vec<u8>,
    /// Whether the request was this candidate's write and it took.
    pub written: bool,
}

#[derive(Clone, Debug)]
struct Seen {
    revision: u64,
    holder: Option<Holder>,
    /// When this candidate first saw this revision.
    since_ms: u64,
}

pub struct Candidate {
    me: Holder,
    config: ElectionConfig,
    seen: Option<Seen>,
    /// When the write that last won or renewed the role was sent.
    renewal_sent_ms: Option<u64>,
}

impl Candidate {
    pub fn new(me: Holder, config: ElectionConfig) -> Candidate {
        Candidate {
            me,
            config,
            seen: None,
            renewal_sent_ms: None,
        }
    }

    pub fn me(&self) -> &Holder {
        &self.me
    }

    /// Whether this candidate is the controller at `now_ms`.
    pub fn leads(&self, now_ms: u64) -> bool {
        self.renewal_sent_ms
            .is_some_and(|sent| now_ms < sent + self.config.lease_ms)
    }

    /// The controller as far as this candidate knows at `now_ms`: the
    /// register's holder, if the register moved within the last two leases.
    pub fn controller(&self, now_ms: u64) -> Option<&Holder> {
        let seen = self.seen.as_ref()?;
        let fresh = now_ms < seen.since_ms + 2 * self.config.lease_ms;
        fresh.then_some(seen.holder.as_ref()).flatten()
    }

    /// What to send at `now_ms`, if anything; `None` means wait a renew
    /// interval.
    pub fn next_request(&self, now_ms: u64) -> Option<Request> {
        let Some(seen) = &self.seen else {
            return Some(Request::Read);
        };
        let claim = Request::Write {
            expected_revision: seen.revision,
            value: serde_json::to_vec(&self.me).unwrap_or_default(),
        };
        if let Some(sent) = self.renewal_sent_ms {
            if self.leads(now_ms) && now_ms < sent + self.config.renew_every_ms {
                return None;
            }
            // Time to renew, or the lease lapsed here: renewing at the
            // revision this candidate wrote takes only if no one else
            // wrote since.
            return Some(claim);
        }
        // The register names this candidate (an earlier life of it, or a
        // write whose answer was lost): no one else holds the role, so a
        // write at that revision may claim it at once.
        let mine = seen.holder.as_ref() == Some(&self.me);
        if mine || now_ms >= seen.since_ms + self.config.lease_ms {
            return Some(claim);
        }
        Some(Request::Read)
    }

    /// Learns from the coordinators' answer to a request sent at `sent_ms`,
    /// received at `now_ms`.
    pub fn on_answer(&mut self, sent_ms: u64, now_ms: u64, answer: Answer) {
        let holder = serde_json::from_slice::<Holder>(&answer.value).ok();
        let moved = self
            .seen
            .as_ref()
            .is_none_or(|seen| seen.revision != answer.revision);
        if moved {
            self.seen = Some(Seen {
                revision: answer.revision,
                holder: holder.clone(),
                since_ms: now_ms,
            });
        }
        if answer.written {
            self.renewal_sent_ms = Some(sent_ms);
        } else if holder.as_ref() != Some(&self.me) || moved {
            // Someone else wrote: whatever this candidate held is gone.
            self.renewal_sent_ms = None;
        }
    }
}

#[cfg(test)]
mod tests;

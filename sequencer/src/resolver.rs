//! The resolver's state machine: batches strictly in version order, the
//! conflicts of conditional commits, and the metadata each proxy has not
//! seen yet.
//!
//! ```text
//!  proxy A: resolve(prev 10, v 12, [shard change]) ─┐
//!  proxy B: resolve(prev 12, v 15, [])  ────────────┴▶ B gets A's change at 12
//!  proxy B: resolve(prev 15, v 18, [read \xff/keyServers/[a, c) at 11]) ─▶ conflict: written at 12
//! ```
//!
//! A transaction conflicts when a key of its read ranges was written by a
//! transaction that did not conflict, after its read version and before
//! it (earlier in its own batch included). Only system keys are written
//! through metadata, so only they are checked; the writes of the last
//! [`CONFLICT_WINDOW_VERSIONS`] are kept, and a read older than that, or
//! than the resolver's start, conflicts. A conflicting transaction's
//! metadata is dropped: no proxy applies it.
//!
//! A batch whose predecessor has not been resolved waits (bounded in time).
//! Metadata is kept until every proxy has seen it. A proxy's retry of a
//! batch (same proxy, same versions) gets the answer the batch got, or, if
//! the batch is still waiting, the answer it will get: a reply lost on the
//! way must not break the chain.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proto::rpc::{KeyRange, ResolveReply, ResolveRequest, ResolveTransaction, VersionedMetadata};
use proto::{key_after, Mutation, ProxyId, Version};

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolverError {
    #[error("batch {prev}->{version} conflicts with the resolved chain at {last}")]
    VersionConflict {
        prev: Version,
        version: Version,
        last: Version,
    },
    #[error("batch {prev}->{version} waited too long for its predecessor (resolver is at {last})")]
    MissingPredecessor {
        prev: Version,
        version: Version,
        last: Version,
    },
    #[error("{0} is not a proxy of this cluster")]
    UnknownProxy(ProxyId),
}

/// How many versions of system-key writes are kept to check conditional
/// commits against: five seconds of versions.
pub const CONFLICT_WINDOW_VERSIONS: u64 = 5_000_000;

/// How long, and for how many batches, answers are kept for retries.
pub const RETRY_WINDOW_MS: u64 = 30_000;
pub const MAX_ANSWERS_KEPT: usize = 100_000;

/// An answer given, kept for a retry of the same batch.
struct Answered {
    proxy: ProxyId,
    prev: Version,
    reply: ResolveReply,
    at_ms: u64,
}

struct Waiting<T> {
    request: ResolveRequest,
    token: T,
    deadline_ms: u64,
}

pub struct ResolverCore<T> {
    last: Version,
    /// The last version each proxy resolved.
    seen: BTreeMap<ProxyId, Version>,
    log: VecDeque<(Version, ProxyId, Vec<Mutation>)>,
    /// The system keys written by transactions that did not conflict, by
    /// version, over the conflict window.
    writes: VecDeque<(Version, Vec<KeyRange>)>,
    /// Every write after this version is in `writes`.
    writes_from: Version,
    waiting: BTreeMap<Version, Waiting<T>>,
    wait_timeout_ms: u64,
    /// By version.
    answered: BTreeMap<Version, Answered>,
}

impl<T> ResolverCore<T> {
    pub fn new(last: Version, proxies: &BTreeSet<ProxyId>, wait_timeout_ms: u64) -> Self {
        ResolverCore {
            last,
            seen: proxies.iter().map(|p| (*p, last)).collect(),
            log: VecDeque::new(),
            writes: VecDeque::new(),
            writes_from: last,
            waiting: BTreeMap::new(),
            wait_timeout_ms,
            answered: BTreeMap::new(),
        }
    }

    pub fn last_version(&self) -> Version {
        self.last
    }

    /// Batches of metadata kept for proxies that have not seen them.
    pub fn retained(&self) -> usize {
        self.log.len()
    }

    pub fn resolve(
        &mut self,
        request: ResolveRequest,
        token: T,
        now_ms: u64,
    ) -> Vec<(T, Result<ResolveReply, ResolverError>)> {
        let (prev, version) = (request.prev_version, request.version);
        let conflict = ResolverError::VersionConflict {
            prev,
            version,
            last: self.last,
        };
        if !self.seen.contains_key(&request.proxy) {
            return vec![(token, Err(ResolverError::UnknownProxy(request.proxy)))];
        }
        if let Some(done) = self.answered.get(&version) {
            if done.proxy == request.proxy && done.prev == prev {
                return vec![(token, Ok(done.reply.clone()))];
            }
        }
        if let Some(waiting) = self.waiting.get_mut(&prev) {
            if waiting.request.proxy == request.proxy && waiting.request.version == version {
                // The earlier call's token is dropped: its caller retried,
                // so it no longer waits on it.
                waiting.token = token;
                return Vec::new();
            }
        }
        if version <= prev || prev < self.last || self.waiting.contains_key(&prev) {
            return vec![(token, Err(conflict))];
        }
        if prev > self.last {
            let deadline_ms = now_ms.saturating_add(self.wait_timeout_ms);
            self.waiting.insert(
                prev,
                Waiting {
                    request,
                    token,
                    deadline_ms,
                },
            );
            return Vec::new();
        }
        let mut answers = vec![(token, Ok(self.apply(request, now_ms)))];
        while let Some(next) = self.waiting.remove(&self.last) {
            answers.push((next.token, Ok(self.apply(next.request, now_ms))));
        }
        answers
    }

    fn apply(&mut self, request: ResolveRequest, now_ms: u64) -> ResolveReply {
        let reply = self.resolve_in_order(&request);
        self.answered.insert(
            request.version,
            Answered {
                proxy: request.proxy,
                prev: request.prev_version,
                reply: reply.clone(),
                at_ms: now_ms,
            },
        );
        self.forget_answers(now_ms);
        reply
    }

    /// Drops answers older than the retry window, and the oldest beyond
    /// the most kept.
    fn forget_answers(&mut self, now_ms: u64) {
        let over = self.answered.len().saturating_sub(MAX_ANSWERS_KEPT);
        let mut removed = 0;
        while let Some(entry) = self.answered.first_entry() {
            let expired = entry.get().at_ms.saturating_add(RETRY_WINDOW_MS) <= now_ms;
            if !expired && removed >= over {
                break;
            }
            entry.remove();
            removed += 1;
        }
    }

    /// Answers kept for retries.
    pub fn answers_kept(&self) -> usize {
        self.answered.len()
    }

    fn resolve_in_order(&mut self, request: &ResolveRequest) -> ResolveReply {
        let since = self.seen[&request.proxy];
        let metadata = self
            .log
            .iter()
            .filter(|(v, p, _)| *v > since && *p != request.proxy)
            .map(|(version, _, mutations)| VersionedMetadata {
                version: *version,
                mutations: mutations.clone(),
            })
            .collect();
        let mut conflicts = Vec::with_capacity(request.transactions.len());
        let mut written = Vec::new();
        let mut applied = Vec::new();
        for transaction in &request.transactions {
            let conflict = self.conflicts(transaction, &written);
            conflicts.push(conflict);
            if !conflict {
                written.extend(transaction.metadata.iter().map(written_range));
                applied.extend(transaction.metadata.iter().cloned());
            }
        }
        if !applied.is_empty() {
            self.log
                .push_back((request.version, request.proxy, applied));
        }
        if !written.is_empty() {
            self.writes.push_back((request.version, written));
        }
        while let Some((v, _)) = self
            .writes
            .front()
            .filter(|(v, _)| v.0.saturating_add(CONFLICT_WINDOW_VERSIONS) < request.version.0)
        {
            self.writes_from = *v;
            self.writes.pop_front();
        }
        self.seen.insert(request.proxy, request.version);
        self.last = request.version;
        let oldest_seen = self.seen.values().min().copied().unwrap_or(self.last);
        while self.log.front().is_some_and(|(v, _, _)| *v <= oldest_seen) {
            self.log.pop_front();
        }
        ResolveReply {
            metadata,
            conflicts,
        }
    }

    /// Whether a key `transaction` read was written after its read
    /// version: by an earlier version, or earlier in its batch (`batch`).
    fn conflicts(&self, transaction: &ResolveTransaction, batch: &[KeyRange]) -> bool {
        let reads = &transaction.read_ranges;
        if reads.is_empty() {
            return false;
        }
        if transaction.read_version < self.writes_from {
            return true;
        }
        let touches = |written: &KeyRange| reads.iter().any(|r| r.intersects(written));
        let later = self
            .writes
            .iter()
            .filter(|(v, _)| *v > transaction.read_version)
            .flat_map(|(_, ranges)| ranges);
        batch.iter().chain(later).any(touches)
    }

    /// Fails batches whose predecessor did not come in time, and forgets
    /// answers past the retry window.
    pub fn tick(&mut self, now_ms: u64) -> Vec<(T, Result<ResolveReply, ResolverError>)> {
        self.forget_answers(now_ms);
        let expired: Vec<Version> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.deadline_ms <= now_ms)
            .map(|(prev, _)| *prev)
            .collect();
        expired
            .into_iter()
            .map(|prev| {
                let w = self.waiting.remove(&prev).expect("listed above");
                let error = ResolverError::MissingPredecessor {
                    prev,
                    version: w.request.version,
                    last: self.last,
                };
                (w.token, Err(error))
            })
            .collect()
    }
}

/// The keys a system mutation writes.
fn written_range(mutation: &Mutation) -> KeyRange {
    match mutation {
        Mutation::SetValue { key, .. } | Mutation::AppendIfFits { key, .. } => KeyRange {
            begin: key.clone(),
            end: key_after(key),
        },
        Mutation::ClearRange { begin, end } => KeyRange {
            begin: begin.clone(),
            end: end.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    const A: ProxyId = ProxyId(1);
    const B: ProxyId = ProxyId(2);

    fn request(
        proxy: ProxyId,
        prev: u64,
        version: u64,
        metadata: &[&'static [u8]],
    ) -> ResolveRequest {
        ResolveRequest {
            proxy,
            prev_version: Version(prev),
            version: Version(version),
            transactions: vec![ResolveTransaction {
                metadata: metadata.iter().map(|k| set(k)).collect(),
                ..ResolveTransaction::default()
            }],
        }
    }

    fn set(key: &'static [u8]) -> Mutation {
        Mutation::SetValue {
            key: Bytes::from_static(key),
            value: Bytes::new(),
        }
    }

    /// A transaction that read `[begin, end)` at `read` and writes `writes`.
    fn reading(
        read: u64,
        begin: &'static [u8],
        end: &'static [u8],
        writes: &[&'static [u8]],
    ) -> ResolveTransaction {
        ResolveTransaction {
            read_version: Version(read),
            read_ranges: vec![KeyRange {
                begin: Bytes::from_static(begin),
                end: Bytes::from_static(end),
            }],
            write_ranges: Vec::new(),
            metadata: writes.iter().map(|k| set(k)).collect(),
        }
    }

    fn resolve_one(
        r: &mut ResolverCore<u32>,
        proxy: ProxyId,
        prev: u64,
        version: u64,
        transactions: Vec<ResolveTransaction>,
    ) -> ResolveReply {
        let request = ResolveRequest {
            proxy,
            prev_version: Version(prev),
            version: Version(version),
            transactions,
        };
        let mut out = r.resolve(request, 0, 0);
        out.pop().unwrap().1.unwrap()
    }

    #[test]
    fn a_read_written_after_its_version_conflicts_and_its_metadata_is_dropped() {
        let mut r = core();
        // A writes \xffb at 12.
        resolve_one(
            &mut r,
            A,
            10,
            12,
            vec![reading(10, b"\xffx", b"\xffy", &[b"\xffb"])],
        );
        // B read [\xffa, \xffc) at 11: the write at 12 is after it.
        let reply = resolve_one(
            &mut r,
            B,
            12,
            15,
            vec![
                reading(11, b"\xffa", b"\xffc", &[b"\xffa"]),
                reading(12, b"\xffa", b"\xffc", &[b"\xffc"]),
                // Reads what the one before it in the batch writes.
                reading(12, b"\xffc", b"\xffd", &[b"\xffe"]),
                ResolveTransaction::default(),
            ],
        );
        assert_eq!(reply.conflicts, vec![true, false, true, false]);
        // A learns only the metadata of B's transaction that went through.
        let reply = resolve_one(&mut r, A, 15, 16, Vec::new());
        assert_eq!(reply.metadata.len(), 1);
        assert_eq!(reply.metadata[0].mutations, vec![set(b"\xffc")]);
        // The dropped write to \xffa conflicts with nothing.
        let reply = resolve_one(
            &mut r,
            A,
            16,
            17,
            vec![reading(12, b"\xffa", b"\xffb", &[])],
        );
        assert_eq!(reply.conflicts, vec![false]);
    }

    #[test]
    fn a_read_older_than_the_window_or_the_start_conflicts() {
        let mut r = core();
        let reply = resolve_one(&mut r, A, 10, 12, vec![reading(9, b"\xffa", b"\xffb", &[])]);
        assert_eq!(reply.conflicts, vec![true]);
        resolve_one(
            &mut r,
            A,
            12,
            13,
            vec![reading(10, b"\xffx", b"\xffy", &[b"\xffq"])],
        );
        let far = 13 + CONFLICT_WINDOW_VERSIONS + 1;
        let reply = resolve_one(
            &mut r,
            A,
            13,
            far,
            vec![reading(12, b"\xffa", b"\xffb", &[])],
        );
        assert_eq!(reply.conflicts, vec![false], "nothing it read was written");
        let reply = resolve_one(
            &mut r,
            A,
            far,
            far + 1,
            vec![reading(12, b"\xffa", b"\xffb", &[])],
        );
        assert_eq!(
            reply.conflicts,
            vec![true],
            "the write at 13 left the window"
        );
    }

    fn core() -> ResolverCore<u32> {
        ResolverCore::new(Version(10), &[A, B].into_iter().collect(), 100)
    }

    fn versions(reply: &ResolveReply) -> Vec<u64> {
        reply.metadata.iter().map(|m| m.version.0).collect()
    }

    #[test]
    fn each_proxy_learns_the_others_metadata_once_in_version_order() {
        let mut r = core();
        let out = r.resolve(request(A, 10, 12, &[b"\xffa"]), 1, 0);
        assert!(out[0].1.as_ref().unwrap().metadata.is_empty());
        r.resolve(request(A, 12, 13, &[b"\xffb"]), 2, 0);
        let out = r.resolve(request(B, 13, 15, &[b"\xffc"]), 3, 0);
        assert_eq!(versions(out[0].1.as_ref().unwrap()), vec![12, 13]);
        let out = r.resolve(request(A, 15, 16, &[]), 4, 0);
        assert_eq!(versions(out[0].1.as_ref().unwrap()), vec![15]);
        let out = r.resolve(request(B, 16, 17, &[]), 5, 0);
        assert!(out[0].1.as_ref().unwrap().metadata.is_empty());
        assert_eq!(r.retained(), 0, "everything was seen by both proxies");
    }

    #[test]
    fn a_batch_waits_for_its_predecessor() {
        let mut r = core();
        assert!(r.resolve(request(B, 12, 14, &[]), 2, 0).is_empty());
        let out = r.resolve(request(A, 10, 12, &[b"\xffa"]), 1, 0);
        let tokens: Vec<u32> = out.iter().map(|(t, _)| *t).collect();
        assert_eq!(tokens, vec![1, 2]);
        assert_eq!(versions(out[1].1.as_ref().unwrap()), vec![12]);
        assert_eq!(r.last_version(), Version(14));
    }

    #[test]
    fn a_batch_whose_predecessor_never_comes_fails() {
        let mut r = core();
        r.resolve(request(B, 12, 14, &[]), 2, 0);
        assert!(r.tick(99).is_empty());
        let out = r.tick(100);
        assert!(matches!(
            out[0],
            (2, Err(ResolverError::MissingPredecessor { .. }))
        ));
    }

    #[test]
    fn a_retried_batch_gets_the_answer_it_got() {
        let mut r = core();
        r.resolve(request(A, 10, 12, &[b"\xffa"]), 1, 0);
        let first = r.resolve(request(B, 12, 14, &[]), 2, 0);
        r.resolve(request(A, 14, 15, &[]), 3, 0);
        let retry = r.resolve(request(B, 12, 14, &[]), 4, 10);
        assert_eq!(retry.len(), 1);
        assert_eq!(retry[0].0, 4);
        assert_eq!(retry[0].1, first[0].1, "the same reply, metadata included");
        assert_eq!(versions(retry[0].1.as_ref().unwrap()), vec![12]);
        assert_eq!(r.last_version(), Version(15), "nothing applied twice");
        // Another proxy's batch at a resolved version is still a conflict.
        let out = r.resolve(request(A, 12, 14, &[]), 5, 10);
        assert!(matches!(
            out[0].1,
            Err(ResolverError::VersionConflict { .. })
        ));
    }

    #[test]
    fn a_retry_of_a_waiting_batch_is_answered_when_it_resolves() {
        let mut r = core();
        assert!(r.resolve(request(B, 12, 14, &[]), 1, 0).is_empty());
        assert!(r.resolve(request(B, 12, 14, &[]), 2, 50).is_empty());
        let out = r.resolve(request(A, 10, 12, &[]), 3, 60);
        let tokens: Vec<u32> = out.iter().map(|(t, _)| *t).collect();
        assert_eq!(tokens, vec![3, 2], "the retry's token gets the answer");
        assert!(out.iter().all(|(_, reply)| reply.is_ok()));
    }

    #[test]
    fn answers_are_forgotten_after_the_retry_window() {
        let mut r = core();
        r.resolve(request(A, 10, 12, &[]), 1, 0);
        assert_eq!(r.answers_kept(), 1);
        assert!(r.tick(RETRY_WINDOW_MS - 1).is_empty());
        assert_eq!(r.answers_kept(), 1);
        r.tick(RETRY_WINDOW_MS);
        assert_eq!(r.answers_kept(), 0);
        let late = r.resolve(request(A, 10, 12, &[]), 2, RETRY_WINDOW_MS);
        assert!(matches!(
            late[0].1,
            Err(ResolverError::VersionConflict { .. })
        ));
    }

    #[test]
    fn batches_off_the_chain_are_refused() {
        let mut r = core();
        r.resolve(request(A, 10, 12, &[]), 1, 0);
        let out = r.resolve(request(B, 10, 11, &[]), 2, 0);
        assert!(matches!(
            out[0].1,
            Err(ResolverError::VersionConflict { .. })
        ));
        let out = r.resolve(request(ProxyId(9), 12, 13, &[]), 3, 0);
        assert!(matches!(out[0].1, Err(ResolverError::UnknownProxy(_))));
    }
}

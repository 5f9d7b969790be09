//! Rebuild: a server whose teams' log no longer reaches back to what it
//! holds (its data directory was lost, or it joins a cluster whose oldest
//! data was popped) copies its teams' key ranges from teammates, then
//! reads the log on from where the copy began.
//!
//! ```text
//!  shard map at v_first: the core state's snapshot ─┬─ metadata team (snapshot, v_first]
//!                      (pinned: the cluster file's)  └─▶ folded
//!  engine: clear the user keys, mark "copying"
//!  per team, per range the map gives it as a source:
//!      page ─GetRange at v_first, then at the committed version v_i─▶ a teammate ─▶ engine (sets)
//!  engine: durable = v_first, readable from v_last, copied ranges, team set,
//!         shard map, unmark
//!  cursor from v_first + 1: what changed while copying, where no page holds it
//! ```
//!
//! A page read at `v_i` already holds what the log brings in
//! `(v_first, v_i]`: the store skips those mutations of its keys (see
//! `copied`), as an append applied again would append twice. Once the log
//! passes `v_last` every read is exact; reads below `v_last` are refused
//! as too old. While copying the
//! server answers reads `future_version` (clients ask a teammate) and pops
//! nothing, so the TLogs keep its teams' data from its last pop on. A crash
//! while copying leaves the mark: the copy starts over.
//!
//! The shard map the copy goes by is the map at the version the copy
//! starts at, so the server knows from there on every range its teams
//! hold: changes after it reach it through its private team. With the
//! commit path recruited, that is the core state's snapshot carried to a
//! committed version by the metadata team's changes since
//! (`cursor::metadata_team`), and the first page is read at that version
//! (a teammate that let it go out of its window makes the copy start over
//! at a newer one). A first page read among the versions a generation
//! skipped (`Generation::unskipped`; at its start the committed version is
//! its floor) makes the copy durable as of the generation's begin, which
//! reads the same, so it is never above a version a later recovery may end
//! the generation at. Later pages are read at newer versions; a range that
//! a move took off the team meanwhile is refused by every teammate
//! (`wrong_shard_server`), and when the map as it is now says so, the
//! copy starts over by that map. A pinned cluster has no metadata team: its copy goes
//! by the cluster file's map, and a teammate that no longer owns a range
//! answers `wrong_shard_server` while the copy keeps asking, saying so in
//! status. Ranges moving onto a team, not yet its own, are not copied:
//! once the copy is done, the server adds them from their source as any
//! destination does. The team set is the cluster file's.

use std::time::Duration;

use bytes::Bytes;
use cluster::placement::tlogs_for_team;
use cursor::metadata_team::{read_from_any, ReadThrough};
use proto::rpc::{ErrorCode, GetRangeRequest, Message};
use proto::system_keys::{METADATA_TEAM, USER_KEYS_END};
use proto::transport::{Peer, RpcError};
use proto::units::binary_bytes;

use super::*;
use crate::copied::CopiedRanges;
use crate::versioned::{COPIED_RANGES_METADATA, DURABLE_VERSION_METADATA, READABLE_FROM_METADATA};

/// The metadata entry marking a copy under way: a store that holds it at
/// start is a partial copy and is copied again.
pub(super) const REBUILD_METADATA: &str = "rebuild";
const COPYING: &[u8] = b"copying";

/// The longest wait between failed page reads, and between starts of a copy.
pub(super) const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Whether the engine holds a copy that did not finish.
pub(super) fn copy_unfinished<E: KvEngine>(engine: &E) -> Result<bool, StoreError> {
    Ok(engine
        .metadata(REBUILD_METADATA)?
        .is_some_and(|mark| mark.as_ref() == COPYING))
}

/// One range of one team to copy.
struct Range {
    team: StorageTeamId,
    begin: Bytes,
    end: Bytes,
}

/// How a rebuild ended.
pub(super) enum Rebuilt {
    /// The store starts over from the copy.
    Done,
    /// The version the copy started at went out of a teammate's window,
    /// or a range it copies left the team since: it starts over.
    Again,
    /// The service was dropped.
    Dropped,
}

/// How the copy of one range ended.
enum Copied {
    Range,
    /// The first page's version went out of the teammate's window.
    TooOld,
    /// The shard map moved part of the range off the team after the
    /// version the copy goes by: no teammate will hold it again.
    LeftTeam,
    /// The service was dropped.
    Dropped,
}

/// Why a page of a range could not be read.
enum PageError {
    /// The first page's version went out of the teammate's window.
    TooOld,
    /// The teammate does not hold the range at the version asked.
    NotHeld(String),
    Failed(String),
}

/// The shard map the copy goes by, and where the copy starts, at a
/// version the map is exact at (that of its first page): with the commit
/// path recruited, the core state's snapshot carried by the metadata team
/// to a committed version; pinned, the cluster file's map, exact at no
/// version the copy can pick.
async fn map_to_copy_by<E: KvEngine>(
    inner: &Inner<E>,
) -> Result<(ShardMap, Option<CopyStart>), String> {
    let Some(coordinators) = inner.generations.coordinators() else {
        return Ok((inner.config.shards.clone(), None));
    };
    let (state, _) = coordinators
        .read_core_state()
        .await
        .map_err(|e| format!("reading the core state: {e}"))?;
    let (Some(current), Some(snapshot)) = (
        state.current().filter(|g| g.commit_path.is_some()),
        &state.shard_map,
    ) else {
        return Err("no generation is open".into());
    };
    let version = read_version(inner).await?;
    if version < snapshot.version {
        return Err(format!(
            "the committed version {version} is below the recorded map's {}: the sequencer \
             asked is not the current generation's",
            snapshot.version
        ));
    }
    let holding: Vec<SocketAddr> =
        tlogs_for_team(METADATA_TEAM, current.tlogs.len(), current.replication)
            .into_iter()
            .map(|i| current.tlogs[i])
            .collect();
    let (changes, _) = read_from_any(
        &holding,
        &inner.config.transport,
        snapshot.version,
        ReadThrough::Version(version),
    )
    .await?;
    let map = snapshot
        .advanced(version, &changes)
        .and_then(|advanced| advanced.map())
        .map_err(|e| e.to_string())?;
    Ok((
        map,
        Some(CopyStart {
            read_at: version,
            same_as: current.unskipped(version),
        }),
    ))
}

/// Where a copy by a committed version's map starts.
#[derive(Clone, Copy)]
struct CopyStart {
    /// The version the first page is read at.
    read_at: Version,
    /// The oldest version with the same state: the generation's begin when
    /// `read_at` is among the versions it skipped (at its start the
    /// committed version is its floor).
    same_as: Version,
}

/// Copies the server's teams from teammates and starts the store over
/// from the copy. `Err` is a failure no retry fixes.
pub(super) async fn rebuild<E: KvEngine>(inner: &Weak<Inner<E>>) -> Result<Rebuilt, String> {
    let Some(strong) = inner.upgrade() else {
        return Ok(Rebuilt::Dropped);
    };
    let id = strong.config.id;
    let teams = strong.config.teams.clone();
    strong.set_rebuilding(Some("reading the shard map to copy by".into()));
    drop(strong);
    let (strong, map, copy_start) = loop {
        let Some(strong) = inner.upgrade() else {
            return Ok(Rebuilt::Dropped);
        };
        match map_to_copy_by(&strong).await {
            Ok((map, copy_start)) => break (strong, map, copy_start),
            Err(reason) => {
                strong.set_rebuilding(Some(format!("no shard map to copy by: {reason}")));
                refresh_generations(&strong).await;
                drop(strong);
                tokio::time::sleep(MAX_RETRY_DELAY).await;
            }
        }
    };
    let ranges: Vec<Range> = teams
        .iter()
        .flat_map(|team| {
            map.split(b"", USER_KEYS_END)
                .into_iter()
                .filter(|(_, _, assignment)| assignment.src.contains(team))
                .map(|(begin, end, _)| Range {
                    team: *team,
                    begin,
                    end,
                })
        })
        .collect();
    for range in &ranges {
        if strong.config.others_of(range.team).is_empty() {
            return Err(format!(
                "the log no longer holds what {id} needs and {} has no other server to copy from",
                range.team
            ));
        }
    }
    tracing::warn!(server = %id, ranges = ranges.len(), "the log no longer holds what this server needs; copying its teams from teammates");
    strong.set_rebuilding(Some("starting".into()));
    let mut start = WriteBatch::new();
    start
        .clear_range(Bytes::new(), Bytes::from_static(USER_KEYS_END))
        .set_metadata(REBUILD_METADATA, Bytes::from_static(COPYING));
    let engine = strong.store().engine().clone();
    drop(strong);
    if !write_room_permitting(inner, start).await? {
        return Ok(Rebuilt::Dropped);
    }

    let start_at = copy_start.map(|s| s.read_at);
    let mut copy = Copy {
        start_at,
        ..Copy::default()
    };
    for range in &ranges {
        match copy.range(inner, range).await? {
            Copied::Range => {}
            Copied::Dropped => return Ok(Rebuilt::Dropped),
            Copied::TooOld | Copied::LeftTeam => return Ok(Rebuilt::Again),
        }
    }
    let Some(strong) = inner.upgrade() else {
        return Ok(Rebuilt::Dropped);
    };
    let (first, last) = match (copy.versions, start_at) {
        (Some(versions), _) => versions,
        // Nothing to copy: the log is read on from the map's version.
        (None, Some(version)) => (version, version),
        (None, None) => loop {
            match read_version(&strong).await {
                Ok(version) => break (version, version),
                Err(reason) => {
                    strong.set_rebuilding(Some(reason));
                    refresh_generations(&strong).await;
                    tokio::time::sleep(MAX_RETRY_DELAY).await;
                }
            }
        },
    };
    // A recovery that finds nothing committed in a generation ends it at
    // its begin, and nothing durable may lie above a recovery version: a
    // copy that began among the versions the generation skipped (its first
    // page read at `read_at`) is made as of its begin, which reads the same.
    let first = copy_start.map_or(first, |start| start.same_as);
    let set = TeamSet::new(strong.config.private_team, teams.clone());
    let mut finish = WriteBatch::new();
    finish
        .set_metadata(DURABLE_VERSION_METADATA, version_bytes(first))
        .set_metadata(READABLE_FROM_METADATA, version_bytes(last))
        .set_metadata(COPIED_RANGES_METADATA, copy.ranges.encode())
        .set_metadata(META_TEAM_SET, set.encode())
        .set_metadata(META_SHARD_MAP, map.encode())
        .set_metadata(META_ADDING, AddingRanges::default().encode(first))
        .set_metadata(REBUILD_METADATA, Bytes::new());
    if !write_room_permitting(inner, finish).await? {
        return Ok(Rebuilt::Dropped);
    }
    let store = VersionedStore::open(engine, strong.config.window).map_err(|e| e.to_string())?;
    let ownership = Ownership::new(map, teams, first);
    let mut adding = AddingRanges::new(strong.config.window.max_bytes / ADDING_BUFFER_SHARE);
    let (wanted, held) = ownership.ranges_now();
    adding.reconcile(first, &wanted, &held, Vec::new());
    *strong.ownership() = ownership;
    *strong.adding() = adding;
    strong.adding_changed.notify_one();
    *strong.store_mut() = store;
    strong.applied.set(first);
    strong.set_rebuilding(None);
    tracing::warn!(
        server = %id, %first, %last, pairs = copy.pairs, bytes = copy.bytes,
        "copied from teammates; reading the log on from the first version copied"
    );
    Ok(Rebuilt::Done)
}

#[derive(Default)]
struct Copy {
    /// The version the first page is read at, when the map is exact there.
    start_at: Option<Version>,
    /// The versions of the first and the last page read.
    versions: Option<(Version, Version)>,
    /// The key span of each page, with its read version.
    ranges: CopiedRanges,
    pairs: u64,
    bytes: u64,
}

impl Copy {
    /// Copies one range page by page.
    async fn range<E: KvEngine>(
        &mut self,
        inner: &Weak<Inner<E>>,
        range: &Range,
    ) -> Result<Copied, String> {
        let retry_policy = ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay(MAX_RETRY_DELAY)
            .without_max_times();
        let mut delays = retry_policy.build();
        let mut begin = range.begin.clone();
        let mut next_peer = 0;
        loop {
            let Some(strong) = inner.upgrade() else {
                return Ok(Copied::Dropped);
            };
            let peers = strong.config.others_of(range.team);
            let (peer_id, peer_addr) = peers[next_peer % peers.len()];
            let first_at = self.start_at.filter(|_| self.versions.is_none());
            let page = async {
                let version = match first_at {
                    Some(version) => version,
                    None => read_version(&strong).await.map_err(PageError::Failed)?,
                };
                let request = GetRangeRequest {
                    begin: begin.clone(),
                    end: range.end.clone(),
                    limit: MAX_RANGE_LIMIT,
                    reverse: false,
                    version,
                    copy: true,
                };
                let peer = Peer::new(peer_addr, strong.config.transport.clone());
                let reply = async { peer.client().await?.call(Message::GetRange(request)).await }
                    .await
                    .map_err(|e| match e {
                        RpcError::Remote {
                            code: ErrorCode::TransactionTooOld,
                            ..
                        } if first_at.is_some() => PageError::TooOld,
                        RpcError::Remote {
                            code: ErrorCode::WrongShardServer,
                            ..
                        } => PageError::NotHeld(e.to_string()),
                        e => PageError::Failed(e.to_string()),
                    })?;
                match reply {
                    Message::GetRangeReply(reply) => Ok((version, reply)),
                    other => Err(PageError::Failed(format!("answered {}", other.name()))),
                }
            };
            let (version, reply) = match page.await {
                Ok(page) => page,
                Err(PageError::TooOld) => return Ok(Copied::TooOld),
                Err(PageError::NotHeld(reason))
                    if self.start_at.is_some() && left_team(&strong, range, &begin).await =>
                {
                    tracing::info!(
                        team = %range.team, %reason,
                        "a range being copied left the team; copying again by the map as it is now"
                    );
                    return Ok(Copied::LeftTeam);
                }
                Err(PageError::NotHeld(reason) | PageError::Failed(reason)) => {
                    next_peer += 1;
                    strong.set_rebuilding(Some(format!(
                        "{}: {} pairs ({}) copied; {peer_id} at {peer_addr}: {reason}",
                        range.team,
                        self.pairs,
                        binary_bytes(self.bytes)
                    )));
                    refresh_generations(&strong).await;
                    drop(strong);
                    tokio::time::sleep(delays.next().unwrap_or(MAX_RETRY_DELAY)).await;
                    continue;
                }
            };
            delays = retry_policy.build();
            let mut batch = WriteBatch::new();
            for (key, value) in &reply.pairs {
                self.bytes += (key.len() + value.len()) as u64;
                batch.set(key.clone(), value.clone());
            }
            self.pairs += reply.pairs.len() as u64;
            if !batch.is_empty() && !write_room_permitting(inner, batch).await? {
                return Ok(Copied::Dropped);
            }
            self.versions = Some(match self.versions {
                Some((first, _)) => (first, version),
                None => (version, version),
            });
            strong.set_rebuilding(Some(format!(
                "{}: {} pairs ({}) copied from {peer_id}",
                range.team,
                self.pairs,
                binary_bytes(self.bytes)
            )));
            let page_end = reply.forward_end(&range.end);
            self.ranges.record(begin, page_end.clone(), version);
            if page_end == range.end {
                return Ok(Copied::Range);
            }
            begin = page_end;
        }
    }
}

/// Whether the shard map, as it is now, assigns part of what is left of
/// `range` (from `begin`) away from its team: it moved after the version
/// the copy goes by.
async fn left_team<E: KvEngine>(inner: &Inner<E>, range: &Range, begin: &Bytes) -> bool {
    match map_to_copy_by(inner).await {
        Ok((map, _)) => map
            .split(begin, &range.end)
            .into_iter()
            .any(|(_, _, assignment)| !assignment.src.contains(&range.team)),
        Err(_) => false,
    }
}

/// Reads the core state again, so that a read version is asked of the
/// current generation's sequencer: recoveries go on while the server
/// copies. What it says of ended generations does not matter here, as the
/// store starts over from the copy.
async fn refresh_generations<E: KvEngine>(inner: &Inner<E>) {
    if let Err(reason) = inner.generations.refresh().await {
        tracing::debug!(%reason, "the generations could not be refreshed");
    }
}

/// The committed version, from the sequencer.
async fn read_version<E: KvEngine>(inner: &Inner<E>) -> Result<Version, String> {
    inner
        .committed_version()
        .await
        .map_err(|e| format!("no read version: {e}"))
}

fn version_bytes(version: Version) -> Bytes {
    Bytes::copy_from_slice(&version.0.to_le_bytes())
}

/// Writes `batch` into the engine, waiting while the disk has no room for
/// it, as flushes do: a copy outlives a disk that fills and empties again
/// (a write that found no room left the engine as it was). Any other
/// failure ends the rebuild. False when the service was dropped.
async fn write_room_permitting<E: KvEngine>(
    inner: &Weak<Inner<E>>,
    batch: WriteBatch,
) -> Result<bool, String> {
    let mut delays = ExponentialBuilder::new()
        .with_jitter()
        .with_min_delay(NO_ROOM_RETRY_MIN)
        .with_max_delay(NO_ROOM_RETRY_MAX)
        .without_max_times()
        .build();
    loop {
        let Some(strong) = inner.upgrade() else {
            return Ok(false);
        };
        match strong.write_engine(batch.clone()).await {
            Ok(()) => return Ok(true),
            Err(e) if e.is_out_of_space() => {
                strong.set_rebuilding(Some(format!("waiting for room on the disk: {e}")));
            }
            Err(e) => return Err(e.to_string()),
        }
        drop(strong);
        tokio::time::sleep(delays.next().unwrap_or(NO_ROOM_RETRY_MAX)).await;
    }
}

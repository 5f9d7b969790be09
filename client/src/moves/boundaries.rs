//! Where shards begin and end: a split cuts a shard in two, both sides
//! keeping its teams, so each can move on its own; a merge joins two
//! neighbouring shards of the same teams into one, so that a cluster
//! whose hot ranges cooled down does not keep ever more shards.
//!
//! ```text
//!  split at k:  read the shard holding k ─▶ commit \xff/keyServers/k = its teams
//!  merge at k:  read the shards before and at k ─▶ same teams, neither moving ─▶
//!               commit: clear \xff/keyServers/k
//! ```
//!
//! Both are decided on the map as read and committed only if the map
//! there is unchanged since, as every commit of a move is.

use bytes::Bytes;
use proto::system_keys::{key_servers_key, ShardAssignment};
use proto::{key_after, Mutation, Version};

use super::{assign, check_range, source_teams, Decided, MoveError};
use crate::Client;

impl Client {
    /// Splits the shard holding `at` there, both sides keeping its
    /// assignment, so that each side can move on its own. Returns the
    /// split's version, or `None` when a shard begins at `at` already. A
    /// moving shard is not split: its move would stop, superseded.
    pub async fn split_shard(&self, at: Bytes) -> Result<Option<Version>, MoveError> {
        let end = key_after(&at);
        check_range(&at, &end)?;
        if at.is_empty() {
            return Ok(None);
        }
        let (decided, _) = self
            .commit_on_view(&at, &end, None, |view| {
                let Some(shard) = view.shards.first().filter(|s| s.begin != at) else {
                    return Ok(None);
                };
                if !shard.moving_to.is_empty() {
                    return Err(MoveError::AlreadyMoving {
                        begin: shard.begin.clone(),
                        to: shard.moving_to.clone(),
                    });
                }
                let both_sides = ShardAssignment {
                    src: source_teams(shard),
                    dest: Vec::new(),
                };
                Ok(Some(vec![assign(&at, both_sides)]))
            })
            .await?;
        Ok(match decided {
            Decided::Committed(version) => Some(version),
            Decided::AlreadySo(_) => None,
        })
    }

    /// Joins the shard holding `key` and the one after it, which must
    /// begin at `at`, into one. Returns the merge's version, or `None`
    /// when no shard begins at `at` any more. Refused
    /// ([`MoveError::NotMergeable`]) when the shard holding `key` does not
    /// end at `at` or the two are held by different teams, and
    /// ([`MoveError::AlreadyMoving`]) when either is moving.
    pub async fn merge_shards(&self, key: Bytes, at: Bytes) -> Result<Option<Version>, MoveError> {
        let end = key_after(&at);
        check_range(&key, &end)?;
        if at.is_empty() || key >= at {
            return Err(MoveError::InvalidRange(format!(
                "a merge joins the shard holding {key:?} to the one after it, not at {at:?}"
            )));
        }
        let (decided, _) = self
            .commit_on_view(&key, &end, None, |view| {
                let Some(i) = view.shards.iter().position(|s| s.begin == at) else {
                    return Ok(None);
                };
                let (left, right) = (&view.shards[0], &view.shards[i]);
                if i != 1 {
                    return Err(MoveError::NotMergeable(format!(
                        "the shard holding {key:?} ends at {:?}, not at {at:?}",
                        left.end
                    )));
                }
                for shard in [left, right] {
                    if !shard.moving_to.is_empty() {
                        return Err(MoveError::AlreadyMoving {
                            begin: shard.begin.clone(),
                            to: shard.moving_to.clone(),
                        });
                    }
                }
                let (left_teams, right_teams) = (source_teams(left), source_teams(right));
                if left_teams != right_teams {
                    return Err(MoveError::NotMergeable(format!(
                        "the shard before {at:?} is on {left_teams:?}, the one at it on \
                         {right_teams:?}"
                    )));
                }
                let boundary = key_servers_key(&at);
                Ok(Some(vec![Mutation::ClearRange {
                    end: key_after(&boundary),
                    begin: boundary,
                }]))
            })
            .await?;
        Ok(match decided {
            Decided::Committed(version) => Some(version),
            Decided::AlreadySo(_) => None,
        })
    }
}

//! The order a storage server's cursor must deliver in: strictly rising
//! `(version, subsequence)`, so nothing is applied twice or out of order.
//!
//! ```text
//!  cursor ─▶ (5, 1) (5, 2) (6, 1) ─▶ admitted, applied
//!            (6, 1) again, or (5, 3) after (6, 1) ─▶ refused: the server stops applying
//! ```
//!
//! An append applied twice, or a clear applied before the set it follows,
//! would leave a replica that differs from its teammates without any
//! later check noticing, so a server that is handed such a stream stops
//! and says why rather than apply it. One order is kept per cursor: a new
//! cursor (after a rollback) starts again from what the store holds.

use proto::{StorageTeamId, Subsequence, Version};

/// The last position a cursor delivered.
#[derive(Debug, Default)]
pub struct DeliveryOrder {
    last: Option<(Version, Subsequence, StorageTeamId)>,
}

impl DeliveryOrder {
    /// Takes the next delivered mutation's position, or says why it must
    /// not be applied.
    pub fn admit(
        &mut self,
        version: Version,
        subsequence: Subsequence,
        team: StorageTeamId,
    ) -> Result<(), String> {
        if let Some((last_version, last_subsequence, last_team)) = self.last {
            if (version, subsequence) <= (last_version, last_subsequence) {
                let what = match (version, subsequence) == (last_version, last_subsequence) {
                    true => "twice",
                    false => "out of order",
                };
                return Err(format!(
                    "the cursor delivered mutation {version}.{subsequence} of {team} {what}, \
                     after {last_version}.{last_subsequence} of {last_team}"
                ));
            }
        }
        self.last = Some((version, subsequence, team));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(version: u64, subsequence: u32) -> (Version, Subsequence) {
        (Version(version), Subsequence(subsequence))
    }

    #[test]
    fn rising_positions_are_admitted_and_a_repeat_or_a_step_back_is_refused() {
        let (a, b) = (StorageTeamId(1), StorageTeamId(2));
        let mut order = DeliveryOrder::default();
        for (version, subsequence) in [at(5, 1), at(5, 2), at(6, 1), at(9, 4)] {
            assert_eq!(order.admit(version, subsequence, a), Ok(()));
        }
        let twice = order.admit(Version(9), Subsequence(4), b).unwrap_err();
        assert!(twice.contains("9.4 of team-2 twice"), "{twice}");
        let back = order.admit(Version(9), Subsequence(3), a).unwrap_err();
        assert!(back.contains("out of order, after 9.4"), "{back}");
        let older = order.admit(Version(8), Subsequence(7), a).unwrap_err();
        assert!(older.contains("out of order"), "{older}");
        // A refused position leaves the order where it was.
        assert_eq!(order.admit(Version(10), Subsequence(1), a), Ok(()));
    }
}

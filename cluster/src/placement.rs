//! Where each team's stream lives: which TLogs of the cluster's list hold it.
//! Proxies write a team's blocks there and storage servers read them there,
//! so both must place teams the same way.

use proto::StorageTeamId;

/// The TLogs (indexes into the cluster's TLog list) that hold `team`:
/// `replication` consecutive ones starting at the team id modulo the count.
pub fn tlogs_for_team(team: StorageTeamId, tlog_count: usize, replication: usize) -> Vec<usize> {
    if tlog_count == 0 {
        return Vec::new();
    }
    let start = (team.0 % tlog_count as u64) as usize;
    (0..replication.min(tlog_count))
        .map(|i| (start + i) % tlog_count)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teams_spread_over_distinct_tlogs() {
        assert_eq!(tlogs_for_team(StorageTeamId(4), 3, 2), vec![1, 2]);
        assert_eq!(tlogs_for_team(StorageTeamId(5), 3, 2), vec![2, 0]);
        assert_eq!(tlogs_for_team(StorageTeamId(5), 2, 5), vec![1, 0]);
        assert!(tlogs_for_team(StorageTeamId(5), 0, 2).is_empty());
    }
}

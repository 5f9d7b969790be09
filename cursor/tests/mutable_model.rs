//! Property tests of the mutable team cursor against the model in
//! `common`: team T's data at version V is yielded exactly when T is in the
//! latest team set committed before V; the private team is always read;
//! another server's team-set writes change nothing; re-iteration holds
//! across team-set changes; `advance_to` still applies the changes it skips.

mod common;

use std::sync::Arc;

use common::{check_barrier, scenario, unordered, Driver, Scenario, PRIVATE_TEAM, SERVER};
use cursor::{MergeOrder, MutableTeamPeekCursor, Ordered, PeekCursor, TeamSet, Unordered};
use futures::executor::block_on;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use proto::{Subsequence, Version, VersionedMutation};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

fn cursor_for<O: MergeOrder>(
    scenario: &Scenario,
    source: Arc<cursor::MemorySource>,
) -> MutableTeamPeekCursor<Arc<cursor::MemorySource>, O> {
    let commits = scenario.commits(true);
    let initial = TeamSet::new(PRIVATE_TEAM, scenario.team_set_at_begin(&commits));
    MutableTeamPeekCursor::<_, O>::new(source, SERVER, initial, scenario.begin())
        .with_max_bytes(scenario.max_bytes)
        .with_max_versions(scenario.max_versions)
}

fn mutable<O: MergeOrder>(
    scenario: &Scenario,
    expected: &[VersionedMutation],
) -> Result<(), TestCaseError> {
    let commits = scenario.commits(true);
    let source = Arc::new(scenario.source(true));
    let mut cursor = cursor_for::<O>(scenario, source.clone());
    let mut driver = Driver::new(scenario, &source);
    driver.run(&mut cursor, &commits, |cursor, output| {
        check_barrier(cursor.complete_below(), expected, output)
    })?;
    prop_assert_eq!(&driver.output, expected);
    let final_set = commits
        .iter()
        .rev()
        .find_map(|c| c.team_set.clone())
        .filter(|_| {
            commits
                .iter()
                .any(|c| c.team_set.is_some() && c.version >= scenario.begin())
        })
        .unwrap_or_else(|| scenario.team_set_at_begin(&commits));
    prop_assert_eq!(cursor.team_set().teams, final_set);
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ordered_mutable_cursor_follows_the_team_set(scenario in scenario(true)) {
        let expected = scenario.expected(&scenario.commits(true), true);
        mutable::<Ordered>(&scenario, &expected)?;
    }

    #[test]
    fn unordered_mutable_cursor_follows_the_team_set(scenario in scenario(true)) {
        let expected = unordered(scenario.expected(&scenario.commits(true), true));
        mutable::<Unordered>(&scenario, &expected)?;
    }

    #[test]
    fn mutable_advance_to_applies_the_changes_it_skips(
        scenario in scenario(true),
        target_version in 0u64..100,
        target_subsequence in 0u32..4,
    ) {
        let target = (Version(target_version), Subsequence(target_subsequence));
        let commits = scenario.commits(true);
        let mut expected = scenario.expected(&commits, true);
        expected.retain(|m| (m.version, m.subsequence) >= target);
        let source = Arc::new(scenario.source(true));
        for commit in &commits {
            source.commit(commit.version, &commit.mutations).unwrap();
        }
        source.lock();
        let mut cursor = cursor_for::<Ordered>(&scenario, source.clone());
        let mut driver = Driver::new(&scenario, &source);
        let landed = block_on(cursor.advance_to(target.0, target.1))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        if landed {
            prop_assert_eq!(Some(cursor.get()), expected.first());
        } else {
            prop_assert!(cursor.is_end_of_stream());
        }
        driver.take_batch(&mut cursor)?;
        while !cursor.is_end_of_stream() {
            driver.drive_once(&mut cursor)?;
        }
        prop_assert_eq!(driver.output, expected);
    }
}

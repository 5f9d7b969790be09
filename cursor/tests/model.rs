//! Property tests of the single-team and broadcasted cursors against the
//! model in `common`, in both broadcast modes: output order, the barrier,
//! re-iteration after resets, end of stream, and `advance_to`.

mod common;

use std::sync::Arc;

use common::{check_barrier, scenario, unordered, Driver, Scenario};
use cursor::{
    BroadcastedStorageTeamPeekCursor, MergeOrder, Ordered, PeekCursor, StorageTeamPeekCursor,
    Unordered,
};
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

fn broadcasted<O: MergeOrder>(
    scenario: &Scenario,
    expected: &[VersionedMutation],
) -> Result<(), TestCaseError> {
    let commits = scenario.commits(false);
    let source = Arc::new(scenario.source(false));
    let mut cursor = BroadcastedStorageTeamPeekCursor::<_, O>::new(
        source.clone(),
        scenario.teams.iter().copied(),
        scenario.begin(),
    )
    .with_max_bytes(scenario.max_bytes)
    .with_max_versions(scenario.max_versions);
    let mut driver = Driver::new(scenario, &source);
    driver.run(&mut cursor, &commits, |cursor, output| {
        check_barrier(cursor.complete_below(), expected, output)
    })?;
    prop_assert_eq!(&driver.output, expected);
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ordered_merge_yields_the_model_by_version_and_subsequence(scenario in scenario(false)) {
        let expected = scenario.expected(&scenario.commits(false), false);
        broadcasted::<Ordered>(&scenario, &expected)?;
    }

    #[test]
    fn unordered_merge_yields_each_version_team_by_team(scenario in scenario(false)) {
        let expected = unordered(scenario.expected(&scenario.commits(false), false));
        broadcasted::<Unordered>(&scenario, &expected)?;
    }

    #[test]
    fn single_team_cursor_yields_its_team_in_order(scenario in scenario(false)) {
        let team = scenario.teams[0];
        let commits = scenario.commits(false);
        let expected: Vec<_> = scenario
            .expected(&commits, false)
            .into_iter()
            .filter(|m| m.team == team)
            .collect();
        let source = Arc::new(scenario.source(false));
        let mut cursor = StorageTeamPeekCursor::new(source.clone(), team, scenario.begin())
            .with_max_bytes(scenario.max_bytes)
        .with_max_versions(scenario.max_versions);
        let mut driver = Driver::new(&scenario, &source);
        driver.run(&mut cursor, &commits, |cursor, output| {
            check_barrier(cursor.complete_below(), &expected, output)
        })?;
        prop_assert_eq!(driver.output, expected);
    }

    #[test]
    fn both_modes_yield_the_same_mutations(scenario in scenario(false)) {
        let mut outputs = Vec::new();
        for broadcast in [true, false] {
            let scenario = Scenario { broadcast, ..scenario.clone() };
            let commits = scenario.commits(false);
            let source = Arc::new(scenario.source(false));
            let mut cursor = BroadcastedStorageTeamPeekCursor::<_, Ordered>::new(
                source.clone(),
                scenario.teams.iter().copied(),
                scenario.begin(),
            )
            .with_max_bytes(scenario.max_bytes)
        .with_max_versions(scenario.max_versions);
            let mut driver = Driver::new(&scenario, &source);
            driver.run(&mut cursor, &commits, |_, _| Ok(()))?;
            outputs.push(driver.output);
        }
        prop_assert_eq!(&outputs[0], &outputs[1]);
    }

    #[test]
    fn advance_to_lands_on_the_first_message_at_or_after_the_target(
        scenario in scenario(false),
        target_version in 0u64..100,
        target_subsequence in 0u32..4,
        ordered in any::<bool>(),
    ) {
        let target = (Version(target_version), Subsequence(target_subsequence));
        let commits = scenario.commits(false);
        let mut expected = scenario.expected(&commits, false);
        if !ordered {
            expected = unordered(expected);
        }
        expected.retain(|m| (m.version, m.subsequence) >= target);
        let source = Arc::new(scenario.source(false));
        for commit in &commits {
            source.commit(commit.version, &commit.mutations).unwrap();
        }
        source.lock();
        let teams = scenario.teams.iter().copied();
        let output = if ordered {
            let cursor = BroadcastedStorageTeamPeekCursor::<_, Ordered>::new(source.clone(), teams, scenario.begin());
            advance_then_drain(cursor.with_max_bytes(scenario.max_bytes)
        .with_max_versions(scenario.max_versions), &scenario, target)?
        } else {
            let cursor = BroadcastedStorageTeamPeekCursor::<_, Unordered>::new(source.clone(), teams, scenario.begin());
            advance_then_drain(cursor.with_max_bytes(scenario.max_bytes)
        .with_max_versions(scenario.max_versions), &scenario, target)?
        };
        prop_assert_eq!(output, expected);

        let team = scenario.teams[0];
        let mut single_expected = scenario.expected(&commits, false);
        single_expected.retain(|m| m.team == team && (m.version, m.subsequence) >= target);
        let single = StorageTeamPeekCursor::new(source, team, scenario.begin())
            .with_max_bytes(scenario.max_bytes)
        .with_max_versions(scenario.max_versions);
        prop_assert_eq!(advance_then_drain(single, &scenario, target)?, single_expected);
    }
}

/// Advances a fresh cursor over a finished epoch, checks where it landed,
/// then reads the rest with resets.
pub fn advance_then_drain<C: PeekCursor>(
    mut cursor: C,
    scenario: &Scenario,
    target: (Version, Subsequence),
) -> Result<Vec<VersionedMutation>, TestCaseError> {
    let source = scenario.source(false);
    let mut driver = Driver::new(scenario, &source);
    let landed = block_on(cursor.advance_to(target.0, target.1))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    if landed {
        let first = cursor.get();
        prop_assert!((first.version, first.subsequence) >= target);
    } else {
        prop_assert!(
            cursor.is_end_of_stream(),
            "advance_to stopped short of the end"
        );
    }
    driver.take_batch(&mut cursor)?;
    while !cursor.is_end_of_stream() {
        driver.drive_once(&mut cursor)?;
    }
    Ok(driver.output)
}

//! The simulation's checks against deliberately broken roles: each broken
//! variant must fail a seed within 200, and that seed must replay to the
//! same trace. Needs the `broken-variants` feature (the suite's command
//! turns it on).
#![cfg(feature = "broken-variants")]

use sim::broken::Broken;
use sim::{run, FaultKinds, RunReport, Shape, SimOptions};

const SEEDS: u64 = 200;

/// The first of `SEEDS` seeds from the suite's seed on which the checks
/// catch `broken`, replayed once more to show it replays.
fn caught(broken: Broken, shape: Shape, faults: FaultKinds) -> RunReport {
    let base = testkit::seed_from_env();
    for seed in base..base + SEEDS {
        let options = SimOptions {
            shape,
            fault_kinds: faults,
            broken: Some(broken),
            ..SimOptions::new(seed)
        };
        let report = run(&options);
        if report.violations.is_empty() {
            continue;
        }
        eprintln!(
            "{broken:?} caught by seed {seed} ({} seeds run, {shape} cluster): {}",
            seed - base + 1,
            report.violations[0]
        );
        let replay = run(&options);
        assert_eq!(replay.trace, report.trace, "seed {seed} did not replay");
        assert_eq!(replay.digest, report.digest);
        return report;
    }
    panic!(
        "{broken:?} went uncaught through seeds {base}..{}",
        base + SEEDS
    );
}

#[test]
fn a_tlog_that_acknowledges_before_its_fsync_is_caught() {
    let report = caught(
        Broken::TLogAcknowledgesBeforeSync,
        Shape::Pinned,
        FaultKinds::parse("kill").unwrap(),
    );
    assert!(report.trace.iter().any(|line| line.contains("kill")));
}

/// With recovery, a TLog that comes back without its acknowledged tail
/// no longer stops the cluster: a recovery ends its generation where the
/// surviving TLogs' logs end, and the committed versions past that end
/// are lost. The checks see what was lost (acknowledged commits missing,
/// a value read earlier gone, a storage server that made a lost version
/// durable refusing to roll back below it, a recovery refusing to end
/// below what a TLog knows committed), not only a cluster that stopped
/// committing.
#[test]
fn a_recruited_cluster_with_tlogs_that_acknowledge_before_their_fsync_loses_commits() {
    let report = caught(
        Broken::TLogAcknowledgesBeforeSync,
        Shape::Recruited,
        FaultKinds::parse("kill").unwrap(),
    );
    assert!(
        report
            .violations
            .iter()
            .any(|v| !v.starts_with("no commit was acknowledged")
                || v.contains("the locked TLogs disagree")),
        "{:?}",
        report.violations
    );
}

#[test]
fn a_storage_server_that_applies_an_append_twice_is_caught() {
    let report = caught(
        Broken::StorageAppliesAnAppendTwice,
        Shape::Pinned,
        FaultKinds::NONE,
    );
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("applied twice")),
        "{:?}",
        report.violations
    );
}

//! Seeds of the whole simulated cluster, with and without faults.

use sim::{run, RunReport, Shape, SimOptions};

/// A failing run's trace, to read with the assertion.
fn show(report: &RunReport) {
    if !report.violations.is_empty() {
        for line in &report.trace {
            eprintln!("{line}");
        }
    }
}

#[test]
fn without_faults_every_commit_is_acknowledged_and_read_back() {
    for shape in [Shape::Pinned, Shape::Recruited] {
        let report = run_clean(testkit::seed_from_env(), shape, "");
        // Only the commits that waited for the roles to start (and, of a
        // recruited cluster, for its first recovery) were refused.
        assert_eq!(report.unknown, 0, "{shape}");
        assert!(
            report
                .trace
                .iter()
                .all(|l| !l.contains("Refused") || l.contains("up-")),
            "{shape}"
        );
    }
}

/// In a recruited cluster the mover sends key ranges from team to team
/// while the clients write; every read and every replica still holds
/// what the model does, and each key is answered by one whole team.
#[test]
fn ranges_move_between_teams_under_writes_and_lose_nothing() {
    let seed = testkit::seed_from_env();
    let mut flipped = 0;
    // Three seeds: a run's moves may all find their range there already.
    for seed in seed..seed + 3 {
        let report = run_clean(seed, Shape::Recruited, "");
        flipped += report
            .trace
            .iter()
            .filter(|l| l.contains(" mover ") && l.contains("flipped Some"))
            .count();
    }
    assert!(
        flipped > 0,
        "no move went through in seeds {seed}..{}",
        seed + 3
    );
}

/// Two runs of one seed in one process: the second starts with the
/// process's state (task ids, thread-local generators) moved on. Of a
/// recruited cluster too, whose controller and workers start and stop
/// roles as recoveries go.
#[test]
fn a_seed_replays_to_the_same_trace() {
    for shape in [Shape::Pinned, Shape::Recruited] {
        let options = SimOptions {
            shape,
            ..SimOptions::new(testkit::seed_from_env())
        };
        let first = run(&options);
        let second = run(&options);
        if let Some(at) = (0..first.trace.len().min(second.trace.len()))
            .find(|&i| first.trace[i] != second.trace[i])
        {
            panic!(
                "seed {} ({shape} cluster) diverged at line {at}:\n  {}\n  {}",
                options.seed, first.trace[at], second.trace[at]
            );
        }
        assert_eq!(first.trace.len(), second.trace.len(), "{shape}");
        assert_eq!(first.digest, second.digest, "{shape}");
    }
}

/// A seed whose first fault, at time zero, fails a TLog's first fsync, so
/// its start fails: the process is down until the fault ends, as one that
/// exited would be, and the run goes on without violations.
#[test]
fn a_tlog_whose_start_a_failed_fsync_ends_is_down_until_restarted() {
    let report = run(&SimOptions::new(50_966_140_071_223));
    show(&report);
    let first_fault = report.trace.iter().find(|l| l.contains(" fault "));
    assert!(
        first_fault.is_some_and(|l| l.contains("0.000s") && l.contains("fsync error on tlog-")),
        "the seed no longer starts with a TLog's failed fsync: {first_fault:?}"
    );
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert!(report.acknowledged > 0);
}

/// A stray peer sends every kind of junk to the roles of both clusters:
/// each connection is closed or refused with an error (anything else is a
/// violation), and the cluster commits and reads back as without it.
#[test]
fn junk_from_a_stray_peer_is_closed_or_refused_and_loses_nothing() {
    let seed = testkit::seed_from_env();
    let mut stray_lines = Vec::new();
    for shape in [Shape::Pinned, Shape::Recruited] {
        let report = run_clean(seed, shape, "junk");
        stray_lines.extend(report.trace.into_iter().filter(|l| l.contains(" stray ")));
    }
    // Over both runs (some 60 connections), each kind that has an answer
    // got it from some role.
    for (junk, answer) in [
        ("ReplyAsRequest", "refused: UnknownMessage"),
        ("Oversize", "refused: FrameTooLarge"),
        ("NoMessage", "refused: MalformedRequest"),
    ] {
        assert!(
            stray_lines
                .iter()
                .any(|l| l.contains(junk) && l.contains(answer)),
            "no {junk} was {answer}: {stray_lines:#?}"
        );
    }
}

/// Disks fill up and empty again: a TLog's (a pinned TLog's, a recruited
/// worker's), whose log waits for room for its next segment without
/// holding up its host while a recruited cluster recovers elsewhere; a
/// storage server's, which applies into memory meanwhile; and a
/// coordinator's, whose raft writes wait for room while the others go on.
/// Nothing acknowledged is lost.
#[test]
fn full_disks_stall_their_roles_and_lose_nothing() {
    let seed = testkit::seed_from_env();
    let mut met = std::collections::BTreeSet::new();
    for shape in [Shape::Pinned, Shape::Recruited] {
        // Seeds until a log's, a storage server's and a coordinator's full
        // disk refused space: a disk may fill up only between a log's
        // rolls, or (with large segments drawn) a log may need no other
        // segment in the run.
        for seed in seed..seed + 60 {
            let report = run_clean(seed, shape, "full");
            for line in report
                .trace
                .iter()
                .filter(|l| l.contains("space was refused"))
            {
                let kind = if line.contains("storage-") {
                    "storage"
                } else if line.contains("coordinator-") {
                    "coordinator"
                } else {
                    "log"
                };
                met.insert((shape.to_string(), kind));
            }
            if met.iter().filter(|(s, _)| *s == shape.to_string()).count() == 3 {
                break;
            }
        }
    }
    assert_eq!(met.len(), 6, "full disks met only {met:?}");
}

/// Runs `seed` of a `shape` cluster with the fault kinds `faults` (none:
/// ""), which must end with commits acknowledged and no violation.
fn run_clean(seed: u64, shape: Shape, faults: &str) -> RunReport {
    let options = SimOptions {
        shape,
        fault_kinds: sim::FaultKinds::parse(faults).unwrap(),
        ..SimOptions::new(seed)
    };
    let report = run(&options);
    show(&report);
    assert!(
        report.violations.is_empty(),
        "seed {seed} ({shape}, {faults}): {:?}",
        report.violations
    );
    assert!(report.acknowledged > 0, "seed {seed} ({shape}, {faults})");
    report
}

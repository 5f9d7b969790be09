//! `teamlog sim` from the outside: 200 seeds of the simulated cluster with
//! processes killed (TLogs losing what they had not synced), links cut and
//! clogged, fsyncs failing, stray peers, full disks and (recruited) the
//! operator's exclusions, in two processes at once,
//! violate nothing, with the commit path pinned and with it recruited (and so
//! recovered) by the controller while key ranges move between teams; 20
//! seeds of the recruited cluster with 30 s of every kind of fault
//! violate nothing; one seed run twice prints the same trace digest, and
//! the seeds that once found bugs pass.

use std::process::{Command, Output};

use testkit::seed_from_env;

const SEEDS_PER_PROCESS: u64 = 100;

/// The fault kinds `teamlog sim` draws from by default.
const ALL_FAULTS: &str = "kill,cut,clog,fsync,junk,full,exclude";
/// Every kind, team removals included.
const SCALE_FAULTS: &str = "kill,cut,clog,fsync,junk,full,exclude,scale";

fn sim(args: &[String]) -> std::process::Child {
    Command::new(crate::exe())
        .arg("sim")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("teamlog sim starts")
}

fn show(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `SEEDS_PER_PROCESS` seeds from `first` in each of two processes at once,
/// with every kind of fault, of a `cluster` cluster: none may fail.
fn two_hundred_seeds_violate_nothing(cluster: &str, first: u64) {
    seeds_violate_nothing(cluster, first, SEEDS_PER_PROCESS, ALL_FAULTS, 5);
}

/// `per_process` seeds from `first` in each of two processes at once, with
/// `faults` for `window` simulated seconds, of a `cluster` cluster: none
/// may fail.
fn seeds_violate_nothing(cluster: &str, first: u64, per_process: u64, faults: &str, window: u64) {
    let runs: Vec<_> = (0..2)
        .map(|i| {
            sim(&[
                "--seed".into(),
                (first + i * per_process).to_string(),
                "--runs".into(),
                per_process.to_string(),
                "--faults".into(),
                faults.into(),
                "--fault-window-secs".into(),
                window.to_string(),
                "--cluster".into(),
                cluster.into(),
            ])
        })
        .collect();
    for run in runs {
        let output = run.wait_with_output().expect("teamlog sim ends");
        let stdout = show(&output);
        println!("{}", stdout.lines().last().unwrap_or_default());
        assert!(output.status.success(), "{stdout}");
        assert!(
            stdout.contains(&format!("{per_process} seeds, 0 failed")),
            "{stdout}"
        );
    }
}

#[test]
fn two_hundred_seeds_of_a_pinned_cluster_with_every_kind_of_fault_violate_nothing() {
    two_hundred_seeds_violate_nothing("pinned", seed_from_env() % (1 << 48));
}

/// Kills and fsync errors hit the workers, whatever roles they host, and
/// the coordinators that run the controller: each recovers the cluster.
#[test]
fn two_hundred_seeds_of_a_recruited_cluster_with_every_kind_of_fault_violate_nothing() {
    two_hundred_seeds_violate_nothing("recruited", seed_from_env() % (1 << 48));
}

/// Thirty simulated seconds of every kind of fault drawn by default,
/// stray peers, full disks and the operator's exclusions among them:
/// long enough for servers to fail past their timeout and come back, and
/// for moves, merges and recoveries to pile up.
#[test]
fn twenty_recruited_seeds_with_thirty_seconds_of_every_kind_of_fault_violate_nothing() {
    seeds_violate_nothing("recruited", seed_from_env() % (1 << 48), 10, ALL_FAULTS, 30);
}

#[test]
fn a_seed_replays_to_the_same_trace_in_another_process() {
    let seed = (seed_from_env() % (1 << 48)).to_string();
    for cluster in ["pinned", "recruited"] {
        let digest = || {
            let args = ["--seed", &seed, "--cluster", cluster].map(String::from);
            let output = sim(&args).wait_with_output().expect("teamlog sim ends");
            let stdout = show(&output);
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&format!("seed {seed} ")))
                .unwrap_or_else(|| panic!("no result line for seed {seed}: {stdout}"))
                .to_owned();
            line.split("trace digest ")
                .nth(1)
                .expect("a digest")
                .to_owned()
        };
        assert_eq!(digest(), digest(), "{cluster} cluster");
    }
}

/// Seeds that once found a bug, with their cluster, seconds of faults and
/// fault kinds: each stays a scenario worth replaying as the code changes
/// around it.
const SEEDS_THAT_FOUND_BUGS: &[(u64, &str, u64, &str)] = &[
    // A server left out briefly and taken back without noticing applied
    // from memory what a restart on a full disk could not read again,
    // while its teammate was to be left out too.
    (150121, "recruited", 5, ALL_FAULTS),
    // A server left out while cut from the coordinators, killed, and taken
    // back while down, restarted into a generation whose TLogs never knew
    // its private team, and stopped for good instead of copying its teams.
    (160025, "recruited", 5, ALL_FAULTS),
    // A server copying its team from a teammate kept asking for a range a
    // move had taken off the team after the map it copied by.
    (166143, "recruited", 30, ALL_FAULTS),
    // The controller left a restarted server out again on what it had
    // heard before the restart, after taking it back: the final reads met
    // it out.
    (202639263427259, "recruited", 5, "kill,cut,clog,fsync"),
    // A move taking over shards already moving to the same team cut them
    // into new ranges, which the destination copied afresh; the mover took
    // a status from before the start as ready and flipped the map, and
    // the shards were held by a server that had not copied them.
    (360079, "recruited", 60, ALL_FAULTS),
    // Likewise, with the only teammate that had copied them left out and
    // starting over from the other: both waited on each other for good.
    (360081, "recruited", 60, ALL_FAULTS),
    // A move onto a team that had just come back, its servers still left
    // out of the generation, waited on no server and flipped the map at
    // once: no server held the range.
    (360007, "recruited", 60, SCALE_FAULTS),
    // That takeover cut a range a destination had not finished copying:
    // the old range went on beside its new pieces, and a mutation of the
    // part they shared was redone over one page and lost under the other.
    (370136, "recruited", 60, SCALE_FAULTS),
];

#[test]
fn the_seeds_that_found_bugs_pass() {
    // All at once: the machine's cores share them.
    let runs: Vec<_> = SEEDS_THAT_FOUND_BUGS
        .iter()
        .map(|&(seed, cluster, window, faults)| {
            let args = [
                "--seed",
                &seed.to_string(),
                "--cluster",
                cluster,
                "--fault-window-secs",
                &window.to_string(),
                "--faults",
                faults,
            ]
            .map(String::from);
            (seed, cluster, window, sim(&args))
        })
        .collect();
    for (seed, cluster, window, run) in runs {
        let output = run.wait_with_output().expect("teamlog sim ends");
        let stdout = show(&output);
        assert!(
            stdout.contains("1 seeds, 0 failed"),
            "seed {seed} ({cluster}, {window} s of faults):\n{stdout}"
        );
    }
}

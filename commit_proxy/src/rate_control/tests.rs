use super::*;

const MIB: u64 = 1 << 20;
const HARD: u64 = 400 * MIB;
const POLL_US: u64 = 250_000;

fn samples(team: u64, backlog: u64, popped: u64) -> BTreeMap<StorageTeamId, TeamSample> {
    BTreeMap::from([(
        StorageTeamId(team),
        TeamSample {
            backlog,
            popped: Version(popped),
        },
    )])
}

fn rate(pace: &Option<Pace>) -> f64 {
    pace.as_ref().expect("a limit").bytes_per_second as f64
}

#[test]
fn a_backlog_under_a_quarter_of_the_hard_limit_sets_no_limit() {
    let mut control = RateControl::new(HARD);
    for poll in 0..10 {
        let pace = control.update(poll * POLL_US, &samples(1, HARD / 4, poll), poll * MIB);
        assert_eq!(pace, None, "poll {poll}");
    }
}

#[test]
fn a_growing_backlog_over_a_quarter_starts_below_the_rate_released_and_keeps_falling() {
    let mut control = RateControl::new(HARD);
    assert_eq!(control.update(0, &samples(1, 50 * MIB, 1), 0), None);
    // 10 MiB released in 250 ms: 40 MiB/s; the backlog grew past 100 MiB.
    let pace = control.update(POLL_US, &samples(1, 120 * MIB, 2), 10 * MIB);
    assert_eq!(rate(&pace), 0.75 * 40.0 * MIB as f64);
    let why = &pace.as_ref().unwrap().why;
    assert!(
        why.contains("team-1") && why.contains("120.0 MiB not yet durable, growing"),
        "{why}"
    );
    let mut last = rate(&pace);
    for poll in 2..60 {
        let pace = control.update(poll * POLL_US, &samples(1, 120 * MIB + poll * MIB, poll), 0);
        assert!(
            rate(&pace) <= last,
            "poll {poll}: the limit rose while the backlog grew"
        );
        last = rate(&pace);
    }
    assert_eq!(
        last, FLOOR_BYTES_PER_SECOND,
        "a growing backlog ends at the floor"
    );
}

#[test]
fn a_team_that_pops_nothing_for_a_while_is_left_to_the_hard_limit() {
    let mut control = RateControl::new(HARD);
    let stalled_after = STALL_AFTER.as_micros() as u64;
    let mut now = 0;
    let mut limited = false;
    // Its servers are gone: the backlog grows, the popped version stays.
    while now <= stalled_after + POLL_US {
        let pace = control.update(now, &samples(1, 150 * MIB + now / 1000, 7), 0);
        limited |= pace.is_some();
        now += POLL_US;
    }
    assert!(limited, "a team over a quarter was never limited");
    assert_eq!(
        control.update(now, &samples(1, 200 * MIB, 7), 0),
        None,
        "a stalled team still slows every commit"
    );
    // A pop brings it back under control.
    assert!(control
        .update(now + POLL_US, &samples(1, 210 * MIB, 8), 0)
        .is_some());
}

#[test]
fn a_team_over_the_hard_limit_is_refused_not_paced() {
    let mut control = RateControl::new(HARD);
    control.update(0, &samples(1, HARD, 1), 0);
    assert_eq!(control.update(POLL_US, &samples(1, HARD + 1, 2), MIB), None);
}

/// Proxies with unbounded demand share one team that drains `drain` bytes a
/// second; returns the backlog's peak and each proxy's admitted rate over
/// the second half of `seconds`.
fn run_model(shares: &[f64], demand: f64, drain: f64, seconds: u64) -> (f64, Vec<f64>) {
    let mut controls: Vec<RateControl> = shares.iter().map(|_| RateControl::new(HARD)).collect();
    let mut limits: Vec<Option<Pace>> = vec![None; shares.len()];
    let mut released = vec![0.0; shares.len()];
    let mut late = vec![0.0; shares.len()];
    let (mut backlog, mut peak) = (0.0_f64, 0.0_f64);
    let polls = seconds * 1_000_000 / POLL_US;
    let dt = POLL_US as f64 / 1e6;
    for poll in 0..polls {
        for (p, share) in shares.iter().enumerate() {
            let wanted = demand * share;
            let allowed = limits[p]
                .as_ref()
                .map_or(wanted, |l| (l.bytes_per_second as f64).min(wanted));
            released[p] += allowed * dt;
            backlog += allowed * dt;
            if poll >= polls / 2 {
                late[p] += allowed * dt;
            }
        }
        backlog = (backlog - drain * dt).max(0.0);
        peak = peak.max(backlog);
        let now = (poll + 1) * POLL_US;
        let sample = samples(1, backlog as u64, poll + 1);
        for (p, control) in controls.iter_mut().enumerate() {
            limits[p] = control.update(now, &sample, released[p] as u64);
        }
    }
    let late_seconds = (polls - polls / 2) as f64 * dt;
    (peak, late.iter().map(|b| b / late_seconds).collect())
}

#[test]
fn proxies_settle_near_what_a_slow_team_drains_and_never_reach_the_hard_limit() {
    let mib = MIB as f64;
    for (shares, demand, drain) in [
        (vec![1.0], 200.0 * mib, 20.0 * mib),
        (vec![0.5, 0.5], 200.0 * mib, 20.0 * mib),
        (vec![0.8, 0.2], 400.0 * mib, 5.0 * mib),
        (vec![0.4, 0.3, 0.3], 100.0 * mib, 60.0 * mib),
    ] {
        let (peak, rates) = run_model(&shares, demand, drain, 300);
        let total: f64 = rates.iter().sum();
        assert!(
            peak < HARD as f64,
            "{shares:?} {demand} {drain}: the backlog peaked at {peak}"
        );
        assert!(
            total > 0.6 * drain && total < 1.4 * drain,
            "{shares:?} {demand} {drain}: admitted {total} for a drain of {drain}"
        );
    }
}

#[test]
fn the_limit_is_lifted_once_the_team_keeps_up() {
    let mib = MIB as f64;
    // Demand under what the team drains: no limit ever binds.
    let (peak, rates) = run_model(&[0.5, 0.5], 30.0 * mib, 40.0 * mib, 60);
    assert_eq!(peak, 0.0);
    assert!((rates.iter().sum::<f64>() - 30.0 * mib).abs() < 1.0);
    // A slow team, then a fast one: the limit goes.
    let mut control = RateControl::new(HARD);
    control.update(0, &samples(1, 90 * MIB, 1), 0);
    assert!(control
        .update(POLL_US, &samples(1, 150 * MIB, 2), 20 * MIB)
        .is_some());
    let mut poll = 2;
    let mut backlog = 150 * MIB;
    let lifted = loop {
        backlog = backlog.saturating_sub(10 * MIB);
        if control
            .update(poll * POLL_US, &samples(1, backlog, poll), poll * 20 * MIB)
            .is_none()
        {
            break poll;
        }
        poll += 1;
        assert!(poll < 100, "still limited at a backlog of {backlog}");
    };
    assert!(
        backlog <= HARD / 4,
        "lifted at {backlog} after {lifted} polls"
    );
}

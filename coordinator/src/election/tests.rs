//! Candidates against one register in simulated time: messages take
//! random delays each way, clocks are offset from each other, candidates
//! are stopped (frozen, as a paused process would be: their clock runs on)
//! and replaced by new lives. At no simulated millisecond may two
//! candidates lead, and after a stop a live candidate leads again within
//! a bound. Every seed is printed when it fails.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::registers::{Command, Registers};

const CONFIG: ElectionConfig = ElectionConfig {
    renew_every_ms: 100,
    lease_ms: 500,
};
/// The longest one-way delay of a message.
const MAX_DELAY_MS: u64 = 60;

struct InFlight {
    request: Request,
    sent_local_ms: u64,
    arrives_at: u64,
    answer: Option<(Answer, u64)>,
}

struct Node {
    candidate: Candidate,
    clock_offset_ms: u64,
    alive: bool,
    in_flight: Option<InFlight>,
    next_at: u64,
}

impl Node {
    fn new(id: u64, rng: &mut StdRng) -> Node {
        Node {
            candidate: Candidate::new(
                Holder {
                    id,
                    address: format!("127.0.0.1:{}", 4000 + id),
                },
                CONFIG,
            ),
            clock_offset_ms: rng.random_range(0..100_000),
            alive: true,
            in_flight: None,
            next_at: 0,
        }
    }

    fn local(&self, now: u64) -> u64 {
        now + self.clock_offset_ms
    }
}

fn serve(registers: &mut Registers, request: &Request) -> Answer {
    match request {
        Request::Read => {
            let register = registers.read(CONTROLLER_REGISTER);
            Answer {
                revision: register.revision,
                value: register.value,
                written: false,
            }
        }
        Request::Write {
            expected_revision,
            value,
        } => {
            let outcome = registers.apply(&Command::Write {
                name: CONTROLLER_REGISTER.into(),
                expected_revision: *expected_revision,
                value: value.clone(),
            });
            Answer {
                revision: outcome.register.revision,
                value: outcome.register.value,
                written: outcome.written,
            }
        }
    }
}

/// Runs `seconds` of simulated time; `Err` names the first violation.
fn run(seed: u64, seconds: u64) -> Result<u64, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut registers = Registers::default();
    let mut nodes: Vec<Node> = (1..=3).map(|id| Node::new(id, &mut rng)).collect();
    let mut last_disruption = 0;
    let mut changes_of_leader = 0;
    let mut last_leader = None;
    // What happened, for the failure message.
    let mut trace: Vec<String> = Vec::new();
    for now in 0..seconds * 1000 {
        // Now and then a node stops (the leader more often than not), and
        // a stopped one comes back as a new life.
        if rng.random_bool(0.001) {
            let leader = nodes
                .iter()
                .position(|n| n.alive && n.candidate.leads(n.local(now)));
            let victim = match leader {
                Some(i) if rng.random_bool(0.7) => i,
                _ => rng.random_range(0..nodes.len()),
            };
            if nodes.iter().filter(|n| n.alive).count() > 1 {
                nodes[victim].alive = false;
                last_disruption = now;
                trace.push(format!("{now}: {} stops", victim + 1));
            }
        }
        if rng.random_bool(0.002) {
            if let Some(i) = nodes.iter().position(|n| !n.alive) {
                let id = nodes[i].candidate.me().id;
                nodes[i] = Node::new(id, &mut rng);
                nodes[i].next_at = now;
                last_disruption = now;
                trace.push(format!("{now}: {id} starts a new life"));
            }
        }
        for node in &mut nodes {
            let local = node.local(now);
            if let Some(flight) = &mut node.in_flight {
                if flight.answer.is_none() && flight.arrives_at <= now {
                    let answer = serve(&mut registers, &flight.request);
                    flight.answer = Some((answer, now + rng.random_range(0..=MAX_DELAY_MS)));
                }
                if matches!(&flight.answer, Some((_, back)) if *back <= now) {
                    let flight = node.in_flight.take().expect("in flight");
                    let (answer, _) = flight.answer.expect("answered");
                    if node.alive {
                        trace.push(format!(
                            "{now}: {} got {answer:?} for {:?}",
                            node.candidate.me().id,
                            flight.request
                        ));
                        node.candidate
                            .on_answer(flight.sent_local_ms, local, answer);
                        node.next_at = now + CONFIG.renew_every_ms / 2;
                    }
                }
            }
            if node.alive && node.in_flight.is_none() && now >= node.next_at {
                match node.candidate.next_request(local) {
                    Some(request) => {
                        node.in_flight = Some(InFlight {
                            request,
                            sent_local_ms: local,
                            arrives_at: now + rng.random_range(0..=MAX_DELAY_MS),
                            answer: None,
                        });
                    }
                    None => node.next_at = now + CONFIG.renew_every_ms / 2,
                }
            }
        }
        let leaders: Vec<u64> = nodes
            .iter()
            .filter(|n| n.candidate.leads(n.local(now)))
            .map(|n| n.candidate.me().id)
            .collect();
        if leaders.len() > 1 {
            return Err(format!(
                "at {now} ms, {leaders:?} all lead\n{}",
                tail(&trace)
            ));
        }
        let live_leader = nodes
            .iter()
            .find(|n| n.alive && n.candidate.leads(n.local(now)))
            .map(|n| n.candidate.me().id);
        if live_leader.is_some() && live_leader != last_leader {
            changes_of_leader += 1;
            trace.push(format!("{now}: {live_leader:?} leads"));
        }
        if live_leader.is_some() {
            last_leader = live_leader;
        }
        // A stop, then a lease for the old lease to lapse, one for the
        // others to see the register stand still, and message delays.
        let bound = 2 * CONFIG.lease_ms + 2 * CONFIG.renew_every_ms + 8 * MAX_DELAY_MS;
        if live_leader.is_none() && now > last_disruption + bound {
            return Err(format!(
                "at {now} ms, no live candidate has led since the disruption at \
                 {last_disruption} ms\n{}",
                tail(&trace)
            ));
        }
    }
    Ok(changes_of_leader)
}

fn tail(trace: &[String]) -> String {
    trace[trace.len().saturating_sub(60)..].join("\n")
}

#[test]
fn never_two_leaders_and_always_one_again_after_a_stop() {
    let first = testkit::seed::seed_from_env();
    let mut changes = 0;
    for seed in first..first + 100 {
        match run(seed, 20) {
            Ok(n) => changes += n,
            Err(violation) => panic!("seed {seed}: {violation}"),
        }
    }
    // The runs did change leaders, so the test exercised takeovers.
    assert!(
        changes > 100,
        "only {changes} changes of leader in 100 runs"
    );
}

#[test]
fn a_candidate_named_by_the_register_claims_it_at_once() {
    let me = Holder {
        id: 1,
        address: "a".into(),
    };
    let mut candidate = Candidate::new(me.clone(), CONFIG);
    assert_eq!(candidate.next_request(0), Some(Request::Read));
    candidate.on_answer(
        0,
        1,
        Answer {
            revision: 7,
            value: serde_json::to_vec(&me).unwrap(),
            written: false,
        },
    );
    assert!(!candidate.leads(1));
    assert!(matches!(
        candidate.next_request(1),
        Some(Request::Write {
            expected_revision: 7,
            ..
        })
    ));
}

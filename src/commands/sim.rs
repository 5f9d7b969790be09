//! `teamlog sim`: runs seeds of the whole cluster in the deterministic
//! simulation (the `sim` crate), checks each against its model, and prints
//! every failing seed with its trace. `--seed N` alone replays one seed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use sim::{run, FaultKinds, RunReport, Shape, SimOptions};

#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// The first seed; by default one drawn from the clock, and printed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Seeds to run: the first and those after it.
    #[arg(long, default_value_t = 1)]
    pub runs: u64,
    /// Simulated seconds of workload and faults in each run.
    #[arg(long, default_value_t = 5)]
    pub fault_window_secs: u64,
    /// About how often a fault starts (milliseconds of simulated time).
    #[arg(long, default_value_t = 500)]
    pub mean_fault_gap_ms: u64,
    /// The kinds of fault to draw, from kill (a process killed, a TLog
    /// losing what it had not synced), cut (a link that loses messages,
    /// breaking its connections), clog (a link that holds them) and fsync
    /// (a TLog's or coordinator's fsync failing; it is restarted when the
    /// fault ends), junk (a stray peer sending the roles what the
    /// protocol does not expect) and full (a TLog's disk with no room for
    /// another log segment, or a storage server's or a coordinator's for
    /// another write) and exclude (a recruited cluster's storage servers
    /// left out of their teams and taken back, one at a time); empty runs
    /// without faults. Also scale, not drawn by default: a recruited
    /// cluster's teams emptied, taken out and let back in, one at a time.
    #[arg(long, default_value = "kill,cut,clog,fsync,junk,full,exclude")]
    pub faults: String,
    /// Who places the commit path: `pinned` (the cluster file: TLogs,
    /// sequencer and proxies for ever) or `recruited` (the controller, on
    /// workers, recovering into a new generation when one fails; kills
    /// and fsync errors then hit workers, whatever roles they host).
    #[arg(long, default_value = "pinned")]
    pub cluster: String,
    /// Print each run's whole trace, not only a failing one's.
    #[arg(long)]
    pub trace: bool,
    /// Wall-clock seconds a seed may take before it is reported as stuck
    /// and the command fails: a livelock does not advance simulated time,
    /// so the simulation's own bound never ends it.
    #[arg(long, default_value_t = 600)]
    pub seed_timeout_secs: u64,
}

pub fn run_seeds(args: SimArgs) -> Result<()> {
    let first = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    println!(
        "seeds {first}..{}, {} cluster (replay one with --seed N --cluster {})",
        first + args.runs,
        args.cluster,
        args.cluster,
    );
    let kinds = FaultKinds::parse(&args.faults).map_err(anyhow::Error::msg)?;
    let shape = Shape::parse(&args.cluster).map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut simulated = Duration::ZERO;
    let watchdog = Watchdog::start(Duration::from_secs(args.seed_timeout_secs));
    for seed in first..first + args.runs {
        watchdog.starting(seed);
        let options = SimOptions {
            shape,
            fault_window: Duration::from_secs(args.fault_window_secs),
            mean_fault_gap: Duration::from_millis(args.mean_fault_gap_ms),
            fault_kinds: kinds,
            ..SimOptions::new(seed)
        };
        // A panic in the simulation (turmoil's, or a role's) fails this
        // seed, and the others still run.
        let report = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&options)))
        {
            Ok(report) => report,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                println!("seed {seed} FAILED: the simulation panicked: {why}");
                failed.push(seed);
                continue;
            }
        };
        simulated += report.simulated;
        print_report(&report, args.trace);
        if !report.violations.is_empty() {
            failed.push(seed);
        }
    }
    let wall = started.elapsed();
    println!(
        "{} seeds, {} failed; {:.1} simulated seconds in {:.1} s ({:.2} simulated seconds per second)",
        args.runs,
        failed.len(),
        simulated.as_secs_f64(),
        wall.as_secs_f64(),
        simulated.as_secs_f64() / wall.as_secs_f64().max(1e-9),
    );
    if !failed.is_empty() {
        bail!("seeds with violations: {failed:?}");
    }
    Ok(())
}

/// Ends the process when one seed runs longer than its limit, naming the
/// seed: a seed that never ends is a failure to replay, not a wait.
struct Watchdog {
    running: Arc<Mutex<(u64, Instant)>>,
}

impl Watchdog {
    fn start(limit: Duration) -> Watchdog {
        let running = Arc::new(Mutex::new((0, Instant::now())));
        let watched = Arc::clone(&running);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let (seed, since) = *watched.lock().unwrap_or_else(|e| e.into_inner());
            if since.elapsed() > limit {
                println!("seed {seed} FAILED: still running after {limit:?} of wall-clock time");
                std::process::exit(1);
            }
        });
        Watchdog { running }
    }

    fn starting(&self, seed: u64) {
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = (seed, Instant::now());
    }
}

fn print_report(report: &RunReport, whole_trace: bool) {
    let verdict = if report.violations.is_empty() {
        "ok"
    } else {
        "FAILED"
    };
    println!(
        "seed {} {verdict}: {} acknowledged, {} refused, {} unknown, {} reads, {} faults; \
         {:.1} s simulated in {:.1} s; trace digest {:016x}",
        report.seed,
        report.acknowledged,
        report.refused,
        report.unknown,
        report.reads,
        report.faults,
        report.simulated.as_secs_f64(),
        report.wall.as_secs_f64(),
        report.digest,
    );
    if whole_trace || !report.violations.is_empty() {
        println!("  knobs: {:?}", report.knobs);
        for line in &report.trace {
            println!("  {line}");
        }
    }
    for violation in &report.violations {
        println!("  violation: {violation}");
    }
}

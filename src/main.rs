//! `teamlog`: run a role, a local cluster, or a benchmark.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod commands;
mod dev;
mod replay;

#[derive(Parser)]
#[command(
    name = "teamlog",
    version,
    about = "A distributed, log-structured key-value storage core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one coordinator of a cluster.
    Coordinator(commands::coordinator::CoordinatorArgs),
    /// Run a worker: it hosts the TLogs, sequencer and proxies the cluster
    /// controller recruits.
    Server(commands::server::ServerArgs),
    /// Run one TLog.
    Tlog(commands::tlog::TLogArgs),
    /// Run the sequencer (and resolver) of a cluster.
    Sequencer(commands::roles::SequencerArgs),
    /// Run one commit proxy of a cluster.
    Proxy(commands::roles::ProxyArgs),
    /// Run one storage server of a cluster.
    Storage(commands::storage::StorageArgs),
    /// Set the storage teams a storage server consumes (it follows without a restart).
    Assign(commands::client::AssignArgs),
    /// Move a key range to another storage team, online: the team copies it
    /// while writes go on, then serves it.
    Move(commands::moves::MoveArgs),
    /// Take storage servers out of the cluster, whole teams at a time, or
    /// let them back in, online: the data distributor moves the shards.
    Scale(commands::scale::ScaleArgs),
    /// Leave storage servers out of their teams, online (a server lost for
    /// good, or going): a new generation's TLogs keep nothing for them.
    Exclude(commands::exclude::ExcludeArgs),
    /// Take storage servers left out by `exclude` back into their teams;
    /// each copies its teams from a teammate before it serves.
    Include(commands::exclude::ExcludeArgs),
    /// Commit mutations to a cluster.
    Client(commands::client::ClientArgs),
    /// Show every process of a cluster: health, versions, lag, TLog bytes per
    /// team. Exits non-zero when any process is unhealthy.
    Status(commands::status::StatusArgs),
    /// Make a cluster CA and member certificate for mutual TLS, and print
    /// the cluster file section naming them.
    TlsInit(commands::tls::TlsInitArgs),
    /// Start a local cluster and drive a commit workload through it.
    Dev(dev::DevArgs),
    /// Run seeds of the whole cluster in the deterministic simulation, with
    /// faults, each checked against a model; print any failing seed's trace.
    Sim(commands::sim::SimArgs),
    /// Workload traces.
    Workload {
        #[command(subcommand)]
        which: WorkloadCommand,
    },
    /// Replay a trace against a cluster (or straight into a TLog with `--path log`),
    /// measure it and check the final data against the trace's model.
    Replay(replay::ReplayArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum WorkloadCommand {
    /// Write a seeded synthetic trace (docs/TRACE_FORMAT.md).
    Generate(replay::generate::GenerateArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Durable commit throughput and latency of one TLog, next to raw fdatasync'd appends.
    Tlog(bench::tlog::TLogBenchArgs),
    /// Commits/s and latency through a local cluster, next to the TLog-only ceiling.
    Commit(bench::commit::CommitBenchArgs),
    /// A storage server catching up from a preloaded TLog, next to raw heed; then reads.
    Storage(bench::storage::StorageBenchArgs),
    /// Time from kill -9 of a process to the first acknowledged commit, by role.
    Recovery(bench::recovery::RecoveryBenchArgs),
    /// A storage server that lost its data copying its team from a teammate, next to a scan.
    Rebuild(bench::CopyBenchArgs),
    /// A loaded key range moving to another team on an idle cluster, next to a scan.
    Move(bench::CopyBenchArgs),
    /// Source document 001's experiment: a third team joins under load and the table spreads.
    Scale(bench::scale::ScaleBenchArgs),
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    // A simulation's hosts start and stop all the time; its own trace says
    // what happened, so only warnings join it (openraft warns of every
    // vote a fault disturbs, so only its errors).
    let default_filter = match cli.command {
        Command::Sim(_) => "warn,openraft=error",
        // openraft narrates every vote and append at info.
        _ => "info,openraft=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line with the chain of causes, whatever RUST_BACKTRACE says:
            // these are the user's errors to act on, not the program's bugs.
            eprintln!("teamlog: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Coordinator(args) => runtime.block_on(commands::coordinator::run(args)),
        Command::Server(args) => runtime.block_on(commands::server::run(args)),
        Command::Tlog(args) => runtime.block_on(commands::tlog::run_tlog(args)),
        Command::Sequencer(args) => runtime.block_on(commands::roles::run_sequencer(args)),
        Command::Proxy(args) => runtime.block_on(commands::roles::run_proxy(args)),
        Command::Storage(args) => runtime.block_on(commands::storage::run_process(args)),
        Command::Assign(args) => runtime.block_on(commands::client::assign(args)),
        Command::Move(args) => runtime.block_on(commands::moves::run(args)),
        Command::Scale(args) => runtime.block_on(commands::scale::run(args)),
        Command::Exclude(args) => runtime.block_on(commands::exclude::run(args, true)),
        Command::Include(args) => runtime.block_on(commands::exclude::run(args, false)),
        Command::Client(args) => runtime.block_on(commands::client::run(args)),
        Command::Status(args) => runtime.block_on(commands::status::run(args)),
        Command::TlsInit(args) => commands::tls::run(args),
        Command::Dev(args) => runtime.block_on(dev::run(args)),
        Command::Sim(args) => commands::sim::run_seeds(args),
        Command::Workload {
            which: WorkloadCommand::Generate(args),
        } => replay::generate::run(args),
        Command::Replay(args) => runtime.block_on(replay::run(args)),
        Command::Bench {
            which: BenchCommand::Tlog(args),
        } => runtime.block_on(bench::tlog::run_tlog_bench(args)),
        Command::Bench {
            which: BenchCommand::Commit(args),
        } => runtime.block_on(bench::commit::run(args)),
        Command::Bench {
            which: BenchCommand::Storage(args),
        } => runtime.block_on(bench::storage::run(args)),
        Command::Bench {
            which: BenchCommand::Recovery(args),
        } => runtime.block_on(bench::recovery::run(args)),
        Command::Bench {
            which: BenchCommand::Rebuild(args),
        } => runtime.block_on(bench::rebuild::run(args)),
        Command::Bench {
            which: BenchCommand::Move(args),
        } => runtime.block_on(bench::moves::run(args)),
        Command::Bench {
            which: BenchCommand::Scale(args),
        } => runtime.block_on(bench::scale::run(args)),
    }
}

/// glibc's allocator gives freed memory back to the kernel early: a
/// buffer over 128 KiB is mapped and unmapped each time, and a heap trims a
/// free top over twice that. So a TLog's commit and frame buffers were
/// faulted in and zeroed again on every commit. Heaps now keep up to 64 MiB
/// free, and only buffers over 16 MiB are mapped on their own. mimalloc
/// removed the faults too but slowed the commit proxies (BENCHMARKS.md,
/// TLog section).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt changes allocator settings only; it runs before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

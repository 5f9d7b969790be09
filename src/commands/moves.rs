//! `teamlog move`: moves a key range to another storage team while the
//! cluster serves it (see `client::moves`), printing how the copy stands;
//! run again after an interruption, it takes the move over; `--cancel`
//! takes back the moves under way in the range instead. A move onto a
//! team that is leaving (`teamlog scale`) is refused.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use proto::key_text::unescape;
use proto::system_keys::USER_KEYS_END;
use proto::StorageTeamId;

use client::Client;
use cluster::ClusterFile;
use coordinator::client::CoordinatorClient;

#[derive(clap::Args, Debug)]
pub struct MoveArgs {
    #[arg(long)]
    pub cluster: PathBuf,
    /// The range to move, `BEGIN..END` (key text, `\xNN` escapes); an
    /// empty END means the end of the user keys.
    #[arg(long)]
    pub range: String,
    /// The team that holds the range afterwards.
    #[arg(long, required_unless_present = "cancel", conflicts_with = "cancel")]
    pub to_team: Option<u64>,
    /// Take back the moves under way in the shards the range touches, and
    /// leave those shards on their source teams.
    #[arg(long)]
    pub cancel: bool,
    /// Seconds the destination has to copy the range before the move is
    /// taken back.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

pub async fn run(args: MoveArgs) -> Result<()> {
    let Some((begin, end)) = args.range.split_once("..") else {
        bail!("--range takes BEGIN..END, got {:?}", args.range);
    };
    let begin = unescape(begin)?;
    let end = match end {
        "" => bytes::Bytes::from_static(USER_KEYS_END),
        end => unescape(end)?,
    };
    let cluster = ClusterFile::load(&args.cluster)?;
    let client = Client::new(&cluster)?;
    let Some(to_team) = args.to_team else {
        let cancelled = client.cancel_moves(begin, end).await?;
        println!("took back the moves of {cancelled} shards");
        return Ok(());
    };
    refuse_leaving_team(&cluster, to_team).await?;
    // Figures change with every poll: a line a second, and at once when a
    // server becomes ready or is held back.
    let mut last_state = Vec::new();
    let mut last_printed: Option<std::time::Instant> = None;
    let outcome = client
        .move_range(
            begin,
            end,
            StorageTeamId(to_team),
            Duration::from_secs(args.timeout),
            |servers| {
                let line = servers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" | ");
                let state: Vec<_> = servers
                    .iter()
                    .map(|s| (s.ready, s.problem.clone()))
                    .collect();
                let due = last_printed.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
                if due || state != last_state {
                    println!("{line}");
                    last_state = state;
                    last_printed = Some(std::time::Instant::now());
                }
            },
        )
        .await?;
    match (outcome.started, outcome.flipped) {
        (Some(started), Some(flipped)) => println!(
            "moved to team {to_team}: started at version {started}, served by it from version {}",
            flipped.0 + 1
        ),
        _ => println!("team {to_team} holds the range already"),
    }
    Ok(())
}

/// Refuses a move onto a team that is leaving (`teamlog scale`): the
/// data distributor would move the range off it again. Only members may
/// read the configuration; for anyone else the move goes ahead.
async fn refuse_leaving_team(cluster: &ClusterFile, team: u64) -> Result<()> {
    if cluster.coordinators.is_empty() {
        return Ok(());
    }
    let coordinators =
        CoordinatorClient::new(&cluster.coordinator_addresses(), cluster.client_config()?)?;
    match coordinators.read_configuration().await {
        Ok(configuration) if configuration.leaving_teams.contains(&team) => bail!(
            "team {team} is leaving (`teamlog scale --remove-servers`), and the data \
             distributor would move the range off it again; let it back in first with \
             `teamlog scale --add-servers`"
        ),
        Ok(_) => Ok(()),
        Err(e) => {
            eprintln!("could not check whether team {team} is leaving: {e}");
            Ok(())
        }
    }
}

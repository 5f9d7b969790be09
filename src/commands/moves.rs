//! `teamlog move`: moves a key range to another storage team while the
//! cluster serves it (see `client::moves`), printing how the copy stands;
//! run again after an interruption, it takes the move over; `--cancel`
//! takes back the moves under way in the range instead.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use proto::key_text::unescape;
use proto::system_keys::USER_KEYS_END;
use proto::units::binary_bytes;
use proto::StorageTeamId;

use client::Client;
use cluster::ClusterFile;

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
    let mut last_line = String::new();
    let outcome = client
        .move_range(
            begin,
            end,
            StorageTeamId(to_team),
            Duration::from_secs(args.timeout),
            |servers| {
                let line = servers
                    .iter()
                    .map(|s| {
                        let state = match (&s.problem, s.ready) {
                            (_, true) => "ready".to_owned(),
                            (Some(problem), false) => problem.clone(),
                            (None, false) => "copying".to_owned(),
                        };
                        let copied = binary_bytes(s.bytes_copied);
                        format!("{}: {} pairs ({copied}), {state}", s.server, s.pairs_copied)
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                if line != last_line {
                    println!("{line}");
                    last_line = line;
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

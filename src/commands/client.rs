//! `teamlog client`: commit mutations from the command line.
//!
//! Keys and values are text; `\xNN` escapes give any byte. A batch file (or
//! stdin) has one mutation per line: `set KEY VALUE`, `append KEY SUFFIX`,
//! `clear KEY`, `clear-range BEGIN END`; blank lines and lines starting with `#` are
//! skipped. The whole batch commits atomically.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use proto::team_set::TeamSet;
use proto::{Mutation, StorageServerId, StorageTeamId, Version};

use client::Client;
use cluster::ClusterFile;
use proto::key_text::{escape, unescape};

/// The given version, or the latest committed one.
async fn version_or_latest(client: &Client, version: Option<u64>) -> Result<Version> {
    match version {
        Some(v) => Ok(Version(v)),
        None => Ok(client.read_version().await?),
    }
}

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    #[arg(long)]
    pub cluster: PathBuf,
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// Set KEY to VALUE.
    Set { key: String, value: String },
    /// Append SUFFIX to the value of KEY (absent counts as empty), unless
    /// the value would outgrow the largest a key may hold.
    Append { key: String, suffix: String },
    /// Clear KEY.
    Clear { key: String },
    /// Clear every key in [BEGIN, END).
    ClearRange { begin: String, end: String },
    /// Commit a batch of mutations from FILE, or from stdin when FILE is `-` or absent.
    Commit { file: Option<PathBuf> },
    /// Print a read version: every acknowledged commit is visible at it.
    ReadVersion,
    /// Print the value of KEY (at the latest committed version, or VERSION).
    Get {
        key: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Print the pairs of [BEGIN, END), one `key = value` per line.
    GetRange {
        begin: String,
        end: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        reverse: bool,
        #[arg(long)]
        version: Option<u64>,
    },
}

#[derive(clap::Args, Debug)]
pub struct AssignArgs {
    #[arg(long)]
    pub cluster: PathBuf,
    /// The storage server.
    #[arg(long)]
    pub server: u64,
    /// The storage teams it should consume, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub teams: Vec<u64>,
}

/// Commits a new team set for a server; the server follows it through its
/// private team, from the commit version + 1, without a restart.
pub async fn assign(args: AssignArgs) -> Result<()> {
    let cluster = ClusterFile::load(&args.cluster)?;
    let entry = cluster
        .storage_servers
        .iter()
        .find(|s| s.id == args.server)
        .with_context(|| format!("no storage server {} in the cluster file", args.server))?;
    for team in &args.teams {
        if !cluster.teams.iter().any(|t| t.id == *team) {
            bail!("no team {team} in the cluster file");
        }
    }
    let set = TeamSet::new(
        StorageTeamId(entry.private_team),
        args.teams.iter().map(|t| StorageTeamId(*t)),
    );
    let version = Client::new(&cluster)?
        .commit_system(vec![set.mutation(StorageServerId(args.server))])
        .await?;
    println!(
        "server {} consumes teams {:?} from version {}",
        args.server,
        args.teams,
        version.0 + 1
    );
    Ok(())
}

pub async fn run(args: ClientArgs) -> Result<()> {
    let cluster = ClusterFile::load(&args.cluster)?;
    let client = Client::new(&cluster)?;
    let mutations = match args.command {
        ClientCommand::ReadVersion => {
            println!("{}", client.read_version().await?);
            return Ok(());
        }
        ClientCommand::Get { key, version } => {
            let version = version_or_latest(&client, version).await?;
            match client.get(&unescape(&key)?, version).await? {
                Some(value) => println!("{}", escape(&value)),
                None => println!("(not found at version {version})"),
            }
            return Ok(());
        }
        ClientCommand::GetRange {
            begin,
            end,
            limit,
            reverse,
            version,
        } => {
            let version = version_or_latest(&client, version).await?;
            let (pairs, more) = client
                .get_range(
                    &unescape(&begin)?,
                    &unescape(&end)?,
                    limit,
                    reverse,
                    version,
                )
                .await?;
            for (key, value) in &pairs {
                println!("{} = {}", escape(key), escape(value));
            }
            if more {
                println!("(more after {limit} pairs)");
            }
            return Ok(());
        }
        ClientCommand::Set { key, value } => vec![set(&key, &value)?],
        ClientCommand::Append { key, suffix } => vec![append(&key, &suffix)?],
        ClientCommand::Clear { key } => vec![clear(&key)?],
        ClientCommand::ClearRange { begin, end } => vec![Mutation::ClearRange {
            begin: unescape(&begin)?,
            end: unescape(&end)?,
        }],
        ClientCommand::Commit { file } => parse_batch(&read_batch(file)?)?,
    };
    let count = mutations.len();
    let version = client.commit(mutations).await?;
    println!("committed {count} mutation(s) at version {version}");
    Ok(())
}

fn set(key: &str, value: &str) -> Result<Mutation> {
    Ok(Mutation::SetValue {
        key: unescape(key)?,
        value: unescape(value)?,
    })
}

fn append(key: &str, suffix: &str) -> Result<Mutation> {
    Ok(Mutation::AppendIfFits {
        key: unescape(key)?,
        suffix: unescape(suffix)?,
    })
}

/// Clearing one key is clearing [key, key + \x00).
fn clear(key: &str) -> Result<Mutation> {
    let begin = unescape(key)?;
    let mut end = begin.to_vec();
    end.push(0);
    Ok(Mutation::ClearRange {
        begin,
        end: Bytes::from(end),
    })
}

fn read_batch(file: Option<PathBuf>) -> Result<String> {
    match file {
        Some(path) if path.as_os_str() != "-" => {
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        }
        _ => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            Ok(text)
        }
    }
}

pub fn parse_batch(text: &str) -> Result<Vec<Mutation>> {
    let mut mutations = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let mutation = match words.as_slice() {
            ["set", key, value] => set(key, value)?,
            ["append", key, suffix] => append(key, suffix)?,
            ["clear", key] => clear(key)?,
            ["clear-range", begin, end] => Mutation::ClearRange {
                begin: unescape(begin)?,
                end: unescape(end)?,
            },
            _ => bail!(
                "line {}: expected `set K V`, `append K S`, `clear K` or `clear-range B E`: {line}",
                n + 1
            ),
        };
        mutations.push(mutation);
    }
    Ok(mutations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_parse_and_bad_lines_are_named() {
        let batch = "# setup\nset a 1\n\nclear b\nclear-range c d\\xff\nappend a \\x00z\n";
        let mutations = parse_batch(batch).unwrap();
        assert_eq!(mutations.len(), 4);
        assert_eq!(
            mutations[1],
            Mutation::ClearRange {
                begin: Bytes::from_static(b"b"),
                end: Bytes::from_static(b"b\x00")
            }
        );
        assert_eq!(
            mutations[2],
            Mutation::ClearRange {
                begin: Bytes::from_static(b"c"),
                end: Bytes::from_static(b"d\xff")
            }
        );
        assert_eq!(
            mutations[3],
            Mutation::AppendIfFits {
                key: Bytes::from_static(b"a"),
                suffix: Bytes::from_static(b"\x00z")
            }
        );
        let err = parse_batch("set a 1\nput b 2\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}

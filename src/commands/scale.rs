//! `teamlog scale`: takes storage servers out of a running cluster, or
//! lets them back in, while it serves. A cluster's teams are fixed in its
//! cluster file, so servers leave with their whole team:
//! `--remove-servers` records their teams as leaving in the configuration
//! (`cluster::configuration`), the data distributor moves every shard
//! they hold to the other teams, and the command waits, saying what is
//! left, until they hold nothing. Then it leaves their servers out
//! (`teamlog exclude`): the controller recovers into a generation without
//! their teams, so the TLogs keep nothing for them and the servers may be
//! shut down for good.
//! `--add-servers` takes them back in and lets their teams take shards
//! again: each server starts over (its team held nothing), and the
//! distributor evens the teams out onto them.
//!
//! ```text
//!  --remove-servers 300,301 ─▶ their teams, whole ─▶ configuration: leaving += {team-3}
//!     ─▶ wait: the recorded shard map names team-3 nowhere ─▶ "team-3 has left"
//!     ─▶ configuration: excluded += {300, 301} ─▶ wait: a generation without team-3
//!  --add-servers 300,301 ─▶ configuration: excluded -= {300, 301}, leaving -= {team-3}
//! ```

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use cluster::ClusterFile;
use coordinator::client::CoordinatorClient;

use crate::commands::exclude;
use proto::shard_map::ShardMap;

#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    #[arg(long)]
    pub cluster: PathBuf,
    /// Storage servers to take out, comma separated; they must make up
    /// whole teams, and at least one team must stay.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "add_servers",
        conflicts_with = "add_servers"
    )]
    pub remove_servers: Vec<u64>,
    /// Storage servers taken out before to let back in, comma separated,
    /// whole teams.
    #[arg(long, value_delimiter = ',')]
    pub add_servers: Vec<u64>,
    /// Return once the change is recorded, without waiting for the leaving
    /// teams to empty (nor leaving their servers out: `teamlog exclude`
    /// does that once they hold nothing).
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds to wait for the leaving teams to empty.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
}

/// How often the wait reads the recorded shard map.
const POLL: Duration = Duration::from_millis(500);

pub async fn run(args: ScaleArgs) -> Result<()> {
    let cluster = ClusterFile::load(&args.cluster)?;
    let settings = cluster.distribution.unwrap_or_default();
    if !cluster.is_recruited() || !settings.enabled {
        bail!(
            "only the data distributor of a cluster whose controller recruits the commit path \
             ([generation] in the cluster file, [distribution] enabled) moves shards off a team"
        );
    }
    let coordinators =
        CoordinatorClient::new(&cluster.coordinator_addresses(), cluster.client_config()?)?;
    let removing = !args.remove_servers.is_empty();
    let servers = match removing {
        true => &args.remove_servers,
        false => &args.add_servers,
    };
    let teams = whole_teams(&cluster, servers)?;
    let all: BTreeSet<u64> = cluster.teams.iter().map(|t| t.id).collect();
    let configuration = coordinators
        .update_configuration(|c| {
            if removing {
                // The last teams never leave: their shards would have
                // nowhere to go.
                let mut leaving = c.leaving_teams.clone();
                leaving.extend(&teams);
                if leaving.len() < all.len() {
                    c.leaving_teams = leaving;
                }
            } else {
                c.leaving_teams.retain(|t| !teams.contains(t));
                c.excluded_servers.retain(|s| !servers.contains(s));
            }
        })
        .await?;
    if removing && !teams.is_subset(&configuration.leaving_teams) {
        bail!(
            "teams {teams:?} cannot leave: with the teams leaving already ({:?}), no team \
             would stay to hold the shards",
            configuration.leaving_teams
        );
    }
    let names = |teams: &BTreeSet<u64>| format!("{teams:?}");
    if !removing {
        println!(
            "teams {} take shards again; the data distributor moves shards onto them while \
             the teams are uneven",
            names(&teams)
        );
        return Ok(());
    }
    println!(
        "teams {} are leaving (all leaving: {})",
        names(&teams),
        names(&configuration.leaving_teams)
    );
    if args.no_wait {
        return Ok(());
    }
    wait_empty(
        &cluster,
        &coordinators,
        &teams,
        Duration::from_secs(args.timeout),
    )
    .await?;
    println!("teams {} hold no shard", names(&teams));
    let servers: BTreeSet<u64> = args.remove_servers.iter().copied().collect();
    let timeout = Duration::from_secs(args.timeout);
    let epoch = exclude::leave_out(&cluster, &coordinators, &servers, false, timeout).await?;
    println!(
        "servers {servers:?} are out of the cluster from generation {}: the TLogs keep \
         nothing for them, and they may be stopped",
        epoch.unwrap_or_default()
    );
    Ok(())
}

/// The teams `servers` make up; an error unless they make up whole teams.
fn whole_teams(cluster: &ClusterFile, servers: &[u64]) -> Result<BTreeSet<u64>> {
    let named: BTreeSet<u64> = servers.iter().copied().collect();
    let mut teams = BTreeSet::new();
    for server in &named {
        let of: Vec<_> = cluster
            .teams
            .iter()
            .filter(|t| t.servers.contains(server))
            .collect();
        if of.is_empty() {
            bail!("server {server} is in no team of the cluster file");
        }
        for team in of {
            let missing: Vec<u64> = team
                .servers
                .iter()
                .filter(|s| !named.contains(s))
                .copied()
                .collect();
            if !missing.is_empty() {
                bail!(
                    "server {server} is in team {} with {missing:?}, not named: a team leaves \
                     or comes back whole (the cluster file fixes which servers make a team)",
                    team.id
                );
            }
            teams.insert(team.id);
        }
    }
    Ok(teams)
}

/// Waits until the recorded shard map names none of `teams`, saying how
/// many shards each holds whenever that changes.
async fn wait_empty(
    cluster: &ClusterFile,
    coordinators: &CoordinatorClient,
    teams: &BTreeSet<u64>,
    timeout: Duration,
) -> Result<()> {
    let started = tokio::time::Instant::now();
    let mut said = None;
    loop {
        let (state, _) = coordinators.read_core_state().await?;
        let map = match &state.shard_map {
            Some(snapshot) => snapshot.map()?,
            None => cluster.shard_map()?,
        };
        let held = held_by(&map, teams);
        if held.iter().all(|(_, shards)| *shards == 0) {
            return Ok(());
        }
        if said.as_ref() != Some(&held) {
            let left: Vec<String> = held
                .iter()
                .map(|(team, shards)| format!("team {team}: {} to move off", count(*shards)))
                .collect();
            println!("{}", left.join("; "));
            said = Some(held);
        }
        if started.elapsed() > timeout {
            bail!(
                "teams {teams:?} still hold shards after {timeout:?}; `teamlog status` shows \
                 what the data distributor is doing"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// "1 shard", "2 shards".
fn count(shards: usize) -> String {
    match shards {
        1 => "1 shard".to_owned(),
        n => format!("{n} shards"),
    }
}

/// How many shards of `map` each of `teams` holds, as a source or a
/// destination.
fn held_by(map: &ShardMap, teams: &BTreeSet<u64>) -> Vec<(u64, usize)> {
    teams
        .iter()
        .map(|team| {
            let shards = map
                .entries()
                .filter(|(_, a)| a.teams().any(|t| t.0 == *team))
                .count();
            (*team, shards)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_leave_with_their_whole_team_only() {
        let cluster: ClusterFile = toml::from_str(
            r#"
            replication = 1
            [[coordinators]]
            id = 1
            address = "127.0.0.1:4490"
            [generation]
            tlogs = 1
            proxies = 1
            [[storage_servers]]
            id = 10
            address = "127.0.0.1:4530"
            private_team = 1010
            [[storage_servers]]
            id = 11
            address = "127.0.0.1:4531"
            private_team = 1011
            [[storage_servers]]
            id = 20
            address = "127.0.0.1:4532"
            private_team = 1020
            [[teams]]
            id = 1
            servers = [10, 11]
            [[teams]]
            id = 2
            servers = [20]
            "#,
        )
        .unwrap();
        assert_eq!(
            whole_teams(&cluster, &[11, 10]).unwrap(),
            BTreeSet::from([1])
        );
        assert_eq!(
            whole_teams(&cluster, &[10, 11, 20]).unwrap(),
            BTreeSet::from([1, 2])
        );
        let half = whole_teams(&cluster, &[10]).unwrap_err().to_string();
        assert!(half.contains("team 1 with [11]"), "{half}");
        let unknown = whole_teams(&cluster, &[99]).unwrap_err().to_string();
        assert!(unknown.contains("server 99 is in no team"), "{unknown}");
    }
}

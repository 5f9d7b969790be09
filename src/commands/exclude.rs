//! `teamlog exclude` and `teamlog include`: leave storage servers out of
//! their teams, or take them back, online. Excluding is for a server that
//! is gone (its machine lost) or going: the controller recovers into a
//! generation whose proxies and TLogs leave it out, so the TLogs no longer
//! keep its teams' data until it pops, old generations retire without
//! waiting for it, and reads go to its teammates. Each team keeps at least
//! one server, unless it left (`teamlog scale --remove-servers`) and holds
//! no shard: an exclusion that would empty a team holding data is refused.
//! The controller leaves a server out only while a teammate holds the
//! team's data; until then `teamlog status` says why it waits.
//!
//! ```text
//!  exclude 102 ─▶ configuration: excluded_servers += {102}  (refused if a team would empty)
//!     controller, at once (it watches the configuration) ─▶ recovery: generation N+1 leaves 102 out
//!     ─▶ wait: the core state's current generation leaves out {102} ─▶ "left out from generation N+1"
//!  include 102 ─▶ configuration: excluded_servers -= {102} ─▶ … a generation takes it back;
//!     102 copies its teams from a teammate before it serves again
//! ```
//!
//! A server left out that still runs stops applying and serving; what it
//! held counts for nothing once it is back. The controller also leaves out
//! by itself a server silent for `storage_failure_timeout_ms`, and takes it
//! back when it answers; `exclude` makes that the operator's decision, and
//! `include` takes a server back whichever left it out.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use cluster::configuration::Configuration;
use cluster::ClusterFile;
use controller::exclusion;
use coordinator::client::CoordinatorClient;

#[derive(clap::Args, Debug)]
pub struct ExcludeArgs {
    #[arg(long)]
    pub cluster: PathBuf,
    /// Storage servers, by their id in the cluster file, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub storage: Vec<u64>,
    /// Return once the configuration is written, without waiting for a
    /// generation that follows it.
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds to wait for a generation that follows the configuration.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// How often the wait reads the core state.
const POLL: Duration = Duration::from_millis(200);

/// Leaves the servers out of their teams (`exclude`), or takes them back.
pub async fn run(args: ExcludeArgs, exclude: bool) -> Result<()> {
    let cluster = ClusterFile::load(&args.cluster)?;
    if !cluster.is_recruited() {
        bail!(
            "{} pins its commit path: only a cluster whose controller recruits it \
             ([generation]) can leave servers out, in a new generation",
            args.cluster.display()
        );
    }
    let named: BTreeSet<u64> = args.storage.iter().copied().collect();
    let known: BTreeSet<u64> = cluster.storage_servers.iter().map(|s| s.id).collect();
    if let Some(unknown) = named.difference(&known).next() {
        bail!("the cluster file has no storage server {unknown}");
    }
    let coordinators =
        CoordinatorClient::new(&cluster.coordinator_addresses(), cluster.client_config()?)?;
    let timeout = Duration::from_secs(args.timeout);
    let epoch = match exclude {
        true => leave_out(&cluster, &coordinators, &named, args.no_wait, timeout).await?,
        false => take_back(&coordinators, &named, args.no_wait, timeout).await?,
    };
    let Some(epoch) = epoch else {
        return Ok(());
    };
    match exclude {
        true => println!(
            "servers {named:?} are left out of their teams from generation {epoch}: the TLogs \
             keep nothing for them, and their teammates serve their data"
        ),
        false => println!(
            "servers {named:?} are back in their teams from generation {epoch}; each copies its \
             teams from a teammate before it serves (`teamlog status` shows the copy)"
        ),
    }
    Ok(())
}

/// Writes `servers` into the configuration's excluded servers unless that
/// would leave a team holding data with no server; then, unless `no_wait`,
/// waits for a generation that leaves them out and returns its epoch.
pub async fn leave_out(
    cluster: &ClusterFile,
    coordinators: &CoordinatorClient,
    servers: &BTreeSet<u64>,
    no_wait: bool,
    timeout: Duration,
) -> Result<Option<u64>> {
    let topology = cluster.topology();
    let (state, _) = coordinators.read_core_state().await?;
    let map = match &state.shard_map {
        Some(snapshot) => snapshot.map()?,
        None => cluster.shard_map()?,
    };
    let refusal = std::cell::RefCell::new(None);
    let configuration = coordinators
        .update_configuration(|c| {
            let mut asked = c.clone();
            asked.excluded_servers.extend(servers);
            match exclusion::wanted(&topology, &asked, &map) {
                Ok(_) => {
                    c.excluded_servers = asked.excluded_servers;
                    // The operator's word now: the controller takes it
                    // back only on `teamlog include`.
                    c.failed_servers.retain(|s| !servers.contains(s));
                }
                Err(why) => *refusal.borrow_mut() = Some(why),
            }
        })
        .await?;
    if !servers.is_subset(&configuration.excluded_servers) {
        let why = refusal.take();
        bail!(
            "servers {servers:?} cannot be left out: {}",
            why.unwrap_or_default()
        );
    }
    let left_out = |excluded: &BTreeSet<u64>| servers.is_subset(excluded);
    follow(
        coordinators,
        &configuration,
        (!no_wait).then_some(timeout),
        left_out,
    )
    .await
}

/// Takes `servers` out of the configuration's excluded servers; then,
/// unless `no_wait`, waits for a generation that has them back and returns
/// its epoch.
pub async fn take_back(
    coordinators: &CoordinatorClient,
    servers: &BTreeSet<u64>,
    no_wait: bool,
    timeout: Duration,
) -> Result<Option<u64>> {
    let configuration = coordinators
        .update_configuration(|c| {
            c.excluded_servers.retain(|s| !servers.contains(s));
            c.failed_servers.retain(|s| !servers.contains(s));
        })
        .await?;
    let back = |excluded: &BTreeSet<u64>| servers.is_disjoint(excluded);
    follow(
        coordinators,
        &configuration,
        (!no_wait).then_some(timeout),
        back,
    )
    .await
}

/// Says what `configuration` leaves out; then, given a `timeout`, waits
/// for a generation that leaves out what `wanted` accepts and returns its
/// epoch.
async fn follow(
    coordinators: &CoordinatorClient,
    configuration: &Configuration,
    timeout: Option<Duration>,
    wanted: impl Fn(&BTreeSet<u64>) -> bool,
) -> Result<Option<u64>> {
    println!(
        "the configuration leaves out storage servers {:?}",
        configuration.left_out()
    );
    let Some(timeout) = timeout else {
        return Ok(None);
    };
    Ok(Some(
        wait_for_generation(coordinators, wanted, timeout).await?,
    ))
}

/// Waits until the current generation leaves out what `wanted` accepts;
/// returns its epoch.
async fn wait_for_generation(
    coordinators: &CoordinatorClient,
    wanted: impl Fn(&BTreeSet<u64>) -> bool,
    timeout: Duration,
) -> Result<u64> {
    let started = tokio::time::Instant::now();
    loop {
        let (state, _) = coordinators.read_core_state().await?;
        if let Some(current) = state.current().filter(|g| g.commit_path.is_some()) {
            if wanted(&current.excluded_servers) {
                return Ok(current.epoch);
            }
        }
        if started.elapsed() > timeout {
            bail!(
                "no generation follows the configuration after {timeout:?}; `teamlog status` \
                 shows what the controller is doing (a server goes out only while a teammate \
                 holds its team's data)"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

//! The roles' real services as simulated hosts. Each host's software opens
//! its service over state that outlives the host (a TLog's `MemStore`, a
//! storage server's `MemEngine`), so a crash and restart recovers from
//! what the "disk" kept, as a real process would.
//!
//! ```text
//!  sim.host(ip, || open service over kept state ─▶ serve on ip:PORT until crashed)
//! ```

use std::sync::Arc;
use std::time::Duration;

use cluster::ClusterFile;
use commit_proxy::proxy::{ProxyConfig, ProxyService};
use coordinator::disk::MemDisk;
use coordinator::service::{CoordinatorConfig, CoordinatorService};
use proto::transport::{serve, ServerConfig, Service};
use proto::ProxyId;
use sequencer::service::{SequencerConfig, SequencerService, SequencerStart};
use storage_server::generations::LogDiscovery;
use storage_server::mem_engine::MemEngine;
use storage_server::server::{StorageConfig, StorageService};
use storage_server::versioned::WindowConfig;
use tlog::mem_store::MemStore;
use tlog::server::{TLogConfig, TLogService};
use tlog::store::LogStore;
use tlog::writer::WriterPlacement;

use crate::clock::SimClock;
use crate::knobs::Knobs;
use crate::layout::{coordinator_ids, Role, PORT};
use crate::net;

/// How long a starting role waits for those it needs.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

type HostResult = Result<(), Box<dyn std::error::Error>>;

/// Serves `service` on this host until the host is crashed.
async fn serve_forever(service: Arc<dyn Service>) -> HostResult {
    let listener = net::listen(PORT).await?;
    serve(
        listener,
        service,
        ServerConfig::default(),
        std::future::pending(),
    )
    .await?;
    Ok(())
}

/// What a process whose start an injected disk fault failed does: it has
/// exited, so it stays down until the fault's end restarts its host. Any
/// other failure to start is the run's failure.
async fn down_until_restarted(role: Role, error: impl std::fmt::Display) -> HostResult {
    tracing::warn!(?role, %error, "a disk fault failed the start; down until restarted");
    std::future::pending().await
}

/// A TLog host over `store`; `disk` is the memory the store lives in,
/// which says whether the fault plan failed one of its syncs.
pub fn add_tlog<S: LogStore + Clone>(
    sim: &mut turmoil::Sim<'_>,
    index: usize,
    store: S,
    disk: MemStore,
    knobs: &Knobs,
) {
    let mut config = TLogConfig::small();
    config.core.memory_budget = knobs.tlog_memory_budget;
    config.writer = WriterPlacement::RuntimeTask;
    sim.host(Role::TLog(index).ip(), move || {
        let store = store.clone();
        let disk = disk.clone();
        let config = config.clone();
        async move {
            match TLogService::open(Arc::new(store), &config, Arc::new(SimClock)) {
                Ok(service) => serve_forever(Arc::new(service)).await,
                Err(e) if disk.sync_failed() => down_until_restarted(Role::TLog(index), e).await,
                Err(e) => Err(e.into()),
            }
        }
    });
}

pub fn add_sequencer(sim: &mut turmoil::Sim<'_>, cluster: &ClusterFile) {
    let config = SequencerConfig {
        proxies: cluster.proxy_ids(),
        start: SequencerStart::AfterTLogs(cluster.tlog_addresses()),
        resolve_wait_timeout: Duration::from_secs(10),
        startup_timeout: STARTUP_TIMEOUT,
        transport: net::client_config(),
    };
    sim.host(Role::Sequencer.ip(), move || {
        let config = config.clone();
        async move {
            let service = SequencerService::start(&config, Arc::new(SimClock)).await?;
            serve_forever(Arc::new(service)).await
        }
    });
}

pub fn add_proxy(sim: &mut turmoil::Sim<'_>, id: u64, cluster: &ClusterFile, knobs: &Knobs) {
    let mut config = ProxyConfig::new(
        ProxyId(id),
        Role::Sequencer.addr(),
        cluster.tlog_addresses(),
        cluster.topology(),
        cluster
            .shard_map()
            .expect("the simulated cluster file is valid"),
    );
    config.max_batches_in_flight = knobs.max_batches_in_flight;
    config.batch_interval = knobs.batch_interval;
    config.max_batch_bytes = knobs.max_batch_bytes;
    config.idle_push_interval = knobs.idle_push_interval;
    config.transport = net::client_config();
    sim.host(Role::Proxy(id).ip(), move || {
        let config = config.clone();
        async move {
            let service = ProxyService::start(config, Arc::new(SimClock), STARTUP_TIMEOUT).await?;
            serve_forever(Arc::new(service)).await
        }
    });
}

pub fn add_storage(
    sim: &mut turmoil::Sim<'_>,
    id: u64,
    engine: Arc<MemEngine>,
    cluster: &ClusterFile,
    knobs: &Knobs,
) {
    let logs = LogDiscovery::Pinned {
        tlogs: cluster.tlog_addresses(),
        sequencer: Role::Sequencer.addr(),
    };
    let window = WindowConfig {
        max_versions: knobs.storage_window_versions,
        max_bytes: knobs.storage_window_bytes,
    };
    let mut config = StorageConfig::for_server(cluster, id, logs, window)
        .expect("the simulated cluster file names every server");
    config.transport = net::client_config();
    sim.host(Role::Storage(id).ip(), move || {
        let engine = Arc::clone(&engine);
        let config = config.clone();
        async move {
            let service = StorageService::start(engine, config)?;
            serve_forever(Arc::new(service)).await
        }
    });
}

/// A coordinator's disk as its next start finds it: the driver puts a
/// reopened one there after a failed write.
pub type DiskSlot = Arc<std::sync::Mutex<Arc<MemDisk>>>;

/// Coordinator `id` over the disk in `disk`, which each start opens.
pub fn add_coordinator(sim: &mut turmoil::Sim<'_>, id: u64, disk: DiskSlot) {
    let members = coordinator_ids()
        .into_iter()
        .map(|member| (member, Role::Coordinator(member).addr()))
        .collect();
    let mut config = CoordinatorConfig::new(id, members);
    config.transport = net::client_config();
    sim.host(Role::Coordinator(id).ip(), move || {
        let disk: Arc<MemDisk> = Arc::clone(&disk.lock().unwrap_or_else(|e| e.into_inner()));
        let config = config.clone();
        async move {
            match CoordinatorService::start(&config, Arc::clone(&disk) as _).await {
                Ok(service) => serve_forever(Arc::new(service)).await,
                Err(e) if disk.write_failed() => {
                    down_until_restarted(Role::Coordinator(id), e).await
                }
                Err(e) => Err(e.into()),
            }
        }
    });
}

//! The roles' real services as simulated hosts. Each host's software opens
//! its service over state that outlives the host (a TLog's `MemStore`, a
//! storage server's `MemEngine`), so a crash and restart recovers from
//! what the "disk" kept, as a real process would.
//!
//! ```text
//!  sim.host(ip, || open service over kept state ─▶ serve on ip:PORT until crashed)
//!  recruited: worker-N (its TLogs in MemDisks) ◀─Recruit─ controller (on the coordinator leading)
//! ```

use std::sync::Arc;
use std::time::Duration;

use cluster::cluster_file::GenerationShape;
use cluster::ClusterFile;
use commit_proxy::proxy::{ProxyConfig, ProxyService};
use controller::recovery::RecoveryConfig;
use controller::{Controller, ControllerConfig};
use coordinator::candidacy::Candidacy;
use coordinator::client::CoordinatorClient;
use coordinator::disk::MemDisk;
use coordinator::election::{ElectionConfig, Holder};
use coordinator::service::{CoordinatorConfig, CoordinatorService};
use proto::disk_writes::DiskWrites;
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
use worker::{RoleContext, TLogDisks, WorkerService};

use crate::layout::{coordinator_ids, Role};
use crate::net;

/// How long a starting role waits for those it needs.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

type HostResult = Result<(), Box<dyn std::error::Error>>;

/// Serves `service` as `role` until its host is crashed.
async fn serve_forever(role: Role, service: Arc<dyn Service>) -> HostResult {
    let listener = net::listen(role.addr()).await?;
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

/// A TLog's settings: its writer a task of the host's runtime.
fn tlog_config(knobs: &Knobs) -> TLogConfig {
    let mut config = TLogConfig::small();
    config.core.memory_budget = knobs.tlog_memory_budget;
    config.log.segment_size = knobs.tlog_segment_size;
    config.writer = WriterPlacement::RuntimeTask;
    config
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
    let config = tlog_config(knobs);
    sim.host(Role::TLog(index).ip(), move || {
        let store = store.clone();
        let disk = disk.clone();
        let config = config.clone();
        async move {
            match TLogService::open(Arc::new(store), &config, Arc::new(SimClock)) {
                Ok(service) => serve_forever(Role::TLog(index), Arc::new(service)).await,
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
            serve_forever(Role::Sequencer, Arc::new(service)).await
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
            serve_forever(Role::Proxy(id), Arc::new(service)).await
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
    let logs = if cluster.is_recruited() {
        LogDiscovery::Coordinated(Arc::new(coordinator_client(cluster, COORDINATOR_CALL)))
    } else {
        LogDiscovery::Pinned {
            tlogs: cluster.tlog_addresses(),
            sequencer: Role::Sequencer.addr(),
        }
    };
    let window = WindowConfig {
        max_versions: knobs.storage_window_versions,
        max_bytes: knobs.storage_window_bytes,
    };
    let mut config = StorageConfig::for_server(cluster, id, logs, window)
        .expect("the simulated cluster file names every server");
    config.transport = net::client_config();
    config.engine_writes = DiskWrites::OnTask;
    sim.host(Role::Storage(id).ip(), move || {
        let engine = Arc::clone(&engine);
        let config = config.clone();
        async move {
            let service = StorageService::start(engine, config)?;
            serve_forever(Role::Storage(id), Arc::new(service)).await
        }
    });
}

/// How long a call to the coordinators may take, for the roles that
/// read and watch the core state (a worker, a storage server).
const COORDINATOR_CALL: Duration = Duration::from_secs(1);

fn coordinator_client(cluster: &ClusterFile, timeout: Duration) -> CoordinatorClient {
    CoordinatorClient::new(&cluster.coordinator_addresses(), net::client_config())
        .expect("the simulated cluster file names its coordinators")
        .with_timeout(timeout)
}

/// Worker `id` of a recruited cluster, keeping its TLogs' logs in `disks`
/// across its restarts.
pub fn add_worker(
    sim: &mut turmoil::Sim<'_>,
    id: u64,
    disks: Arc<dyn TLogDisks>,
    cluster: &ClusterFile,
    knobs: &Knobs,
) {
    let ctx = RoleContext {
        disks,
        binder: Arc::new(net::SimBinder),
        clock: Arc::new(SimClock),
        cluster: cluster.clone(),
        transport: net::client_config(),
        server: ServerConfig::default(),
        tlog: tlog_config(knobs),
    };
    let cluster = cluster.clone();
    sim.host(Role::Worker(id).ip(), move || {
        let ctx = ctx.clone();
        let coordinators = coordinator_client(&cluster, COORDINATOR_CALL);
        async move {
            let listener = net::listen(Role::Worker(id).addr()).await?;
            let service = WorkerService::start(Role::Worker(id).addr(), ctx, coordinators).await?;
            serve(
                listener,
                Arc::new(service),
                ServerConfig::default(),
                std::future::pending(),
            )
            .await?;
            Ok(())
        }
    });
}

/// A coordinator's disk as its next start finds it: the driver puts a
/// reopened one there after a failed write.
pub type DiskSlot = Arc<std::sync::Mutex<Arc<MemDisk>>>;

/// Coordinator `id` over the disk in `disk`, which each start opens. Of a
/// recruited cluster, it stands for controller, and while it holds the
/// lease it recovers the cluster.
pub fn add_coordinator(sim: &mut turmoil::Sim<'_>, id: u64, disk: DiskSlot, cluster: &ClusterFile) {
    let members = coordinator_ids()
        .into_iter()
        .map(|member| (member, Role::Coordinator(member).addr()))
        .collect();
    let mut config = CoordinatorConfig::new(id, members);
    config.transport = net::client_config();
    let cluster = cluster.clone();
    sim.host(Role::Coordinator(id).ip(), move || {
        let disk: Arc<MemDisk> = Arc::clone(&disk.lock().unwrap_or_else(|e| e.into_inner()));
        let config = config.clone();
        let cluster = cluster.clone();
        async move {
            let service = match CoordinatorService::start(&config, Arc::clone(&disk) as _).await {
                Ok(service) => service,
                Err(e) if disk.write_failed() => {
                    return down_until_restarted(Role::Coordinator(id), e).await
                }
                Err(e) => return Err(e.into()),
            };
            let service = match &cluster.generation {
                Some(shape) => with_controller(service, id, &cluster, shape)?,
                None => service,
            };
            serve_forever(Role::Coordinator(id), Arc::new(service)).await
        }
    });
}

/// The coordinator's candidacy for controller, and the controller that
/// acts while it leads.
fn with_controller(
    service: CoordinatorService,
    id: u64,
    cluster: &ClusterFile,
    shape: &GenerationShape,
) -> Result<CoordinatorService, Box<dyn std::error::Error>> {
    let election = ElectionConfig::default();
    let me = Holder {
        id,
        address: Role::Coordinator(id).addr().to_string(),
    };
    let candidacy = Arc::new(Candidacy::start(
        coordinator_client(cluster, Duration::from_millis(election.lease_ms / 2)),
        me,
        election,
        Arc::new(SimClock),
    ));
    let recovery = RecoveryConfig {
        tlogs: shape.tlogs,
        replication: cluster.replication,
        proxies: shape.proxies,
    };
    let config = ControllerConfig::new(recovery, cluster, net::client_config())?;
    let controller = Controller::start(
        config,
        Arc::clone(&candidacy),
        coordinator_client(cluster, Duration::from_secs(2)),
        Arc::new(SimClock),
    );
    Ok(service
        .with_candidacy(candidacy)
        .with_controller(Arc::new(controller)))
}

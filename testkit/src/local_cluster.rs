//! A whole cluster as child processes on 127.0.0.1, for `teamlog dev` and
//! the integration tests.
//!
//! ```text
//!  dir/cluster.toml        written first, with free ports
//!  dir/tls/                the cluster's CA and member identity (mutual TLS)
//!  dir/coordinator-ID/     each coordinator's data
//!  dir/tlog-N/             each TLog's data
//!  dir/storage-ID/         each storage server's data
//!  dir/worker-N/           each worker's data (the TLogs it hosts), when the controller recruits
//!  coordinators ─▶ TLogs ─▶ sequencer ─▶ proxies ─▶ storage servers   started in this order, each waited for
//!  coordinators ─▶ workers ─▶ storage servers ─▶ wait for the first recovery   (recruited)
//! ```

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::rpc::{CoordinatorStatusReply, Message, RoleKind};
use proto::transport::{ClientConfig, RpcClient};

use cluster::cluster_file::{
    ClusterFile, CoordinatorEntry, Endpoint, GenerationShape, ProxyEntry, ShardEntry, StorageEntry,
    TeamEntry,
};

use cluster::tls_files::{self, TlsEntry};

use crate::process::{free_local_addrs, ChildProcess};
use crate::TestkitError;

/// Where a new local cluster's TLS files go, under its directory.
const TLS_DIR: &str = "tls";

/// The `teamlog tlog` flags that give a TLog the cluster's TLS files.
pub fn tlog_tls_args(tls: &TlsEntry) -> Vec<String> {
    let mut args = vec!["--tls-ca".to_string(), tls.ca.display().to_string()];
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        args.extend([
            "--tls-cert".to_string(),
            cert.display().to_string(),
            "--tls-key".to_string(),
            key.display().to_string(),
        ]);
    }
    args
}

/// The shape of a local cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// 0, 1, 3 or 5. None by default: no role needs them yet, and each
    /// runs raft, the controller election and, when it hosts the
    /// controller, a heartbeat to every process (`teamlog dev
    /// --coordinators N`).
    pub coordinators: usize,
    pub proxies: usize,
    pub tlogs: usize,
    pub replication: usize,
    pub teams: usize,
    pub servers_per_team: usize,
    pub broadcast: bool,
    /// Shard begins: shard i (i > 0) starts at `shard_begins[i - 1]`; shards
    /// go to teams round robin.
    pub shard_begins: Vec<String>,
    /// Extra arguments for every TLog.
    pub tlog_args: Vec<String>,
    /// Extra arguments for every proxy.
    pub proxy_args: Vec<String>,
    /// Whether to start the storage servers.
    pub storage: bool,
    /// Extra arguments for every storage server.
    pub storage_args: Vec<String>,
    /// Each process logs to `DIR/logs/ROLE.log` instead of this process's
    /// stderr.
    pub logs_in_dir: bool,
    /// Members talk mutual TLS, with a CA and identity made in `DIR/tls`;
    /// otherwise plain TCP, where every peer is trusted.
    pub tls: bool,
    /// With workers, the controller recruits each generation's `tlogs`
    /// TLogs, sequencer and `proxies` proxies on them (it needs
    /// coordinators); with none, the cluster file pins them.
    pub workers: usize,
    /// Extra arguments for every worker.
    pub worker_args: Vec<String>,
    /// The first worker also hosts every coordinator and storage server:
    /// with one worker, the whole cluster is one process.
    pub hosted_by_first_worker: bool,
    /// The data distributor's settings (`[distribution]`); its defaults
    /// when none.
    pub distribution: Option<cluster::DistributionSettings>,
    /// How long a storage server may be silent before the controller
    /// leaves it out (`[generation] storage_failure_timeout_ms`); the
    /// cluster file's default when none.
    pub storage_failure_timeout: Option<Duration>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            coordinators: 0,
            proxies: 2,
            tlogs: 3,
            replication: 2,
            teams: 3,
            servers_per_team: 2,
            broadcast: true,
            shard_begins: Vec::new(),
            tlog_args: Vec::new(),
            proxy_args: Vec::new(),
            storage: true,
            storage_args: Vec::new(),
            logs_in_dir: false,
            tls: true,
            workers: 0,
            worker_args: Vec::new(),
            hosted_by_first_worker: false,
            distribution: None,
            storage_failure_timeout: None,
        }
    }
}

impl ClusterSpec {
    /// A cluster file for this shape with free local ports.
    pub fn cluster_file(&self) -> Result<ClusterFile, TestkitError> {
        let servers = self.teams * self.servers_per_team;
        let mut addrs =
            free_local_addrs(self.coordinators + 1 + self.proxies + self.tlogs + servers)?
                .into_iter();
        let mut next = || addrs.next().expect("enough addresses");
        let coordinators = (1..=self.coordinators as u64)
            .map(|id| CoordinatorEntry {
                id,
                address: next(),
            })
            .collect();
        let sequencer = Endpoint { address: next() };
        let proxies = (1..=self.proxies as u64)
            .map(|id| ProxyEntry {
                id,
                address: next(),
            })
            .collect();
        let tlogs = (0..self.tlogs)
            .map(|_| Endpoint { address: next() })
            .collect();
        let mut storage_servers = Vec::new();
        let mut teams = Vec::new();
        for team in 1..=self.teams as u64 {
            let members: Vec<u64> = (0..self.servers_per_team as u64)
                .map(|i| team * 100 + i)
                .collect();
            for id in &members {
                storage_servers.push(StorageEntry {
                    id: *id,
                    address: next(),
                    private_team: 10_000 + id,
                });
            }
            teams.push(TeamEntry {
                id: team,
                servers: members,
            });
        }
        let begins = std::iter::once(String::new()).chain(self.shard_begins.iter().cloned());
        let shards = begins
            .enumerate()
            .map(|(i, begin)| ShardEntry {
                begin,
                team: 1 + (i % self.teams) as u64,
            })
            .collect();
        let recruited = self.workers > 0;
        let mut generation = GenerationShape::new(self.tlogs, self.proxies);
        if let Some(timeout) = self.storage_failure_timeout {
            generation.storage_failure_timeout_ms = timeout.as_millis() as u64;
        }
        let cluster = ClusterFile {
            replication: self.replication,
            broadcast: self.broadcast,
            coordinators,
            sequencer: (!recruited).then_some(sequencer),
            proxies: if recruited { Vec::new() } else { proxies },
            tlogs: if recruited { Vec::new() } else { tlogs },
            generation: recruited.then_some(generation),
            storage_servers,
            teams,
            shards,
            tls: None,
            distribution: self.distribution,
        };
        cluster.check()?;
        Ok(cluster)
    }
}

pub struct LocalCluster {
    pub cluster: ClusterFile,
    pub cluster_path: PathBuf,
    pub dir: PathBuf,
    exe: PathBuf,
    /// Where each process's log goes, when not to this process's stderr.
    pub log_dir: Option<PathBuf>,
    tlog_args: Vec<String>,
    proxy_args: Vec<String>,
    storage_args: Vec<String>,
    worker_args: Vec<String>,
    /// The first worker hosts the coordinators and storage servers too.
    hosted_by_first_worker: bool,
    /// Where each worker listens (workers are not in the cluster file).
    pub worker_addresses: Vec<SocketAddr>,
    /// By index, as `worker_addresses`.
    pub workers: Vec<Option<ChildProcess>>,
    /// By coordinator id.
    pub coordinators: std::collections::BTreeMap<u64, Option<ChildProcess>>,
    pub tlogs: Vec<Option<ChildProcess>>,
    pub sequencer: Option<ChildProcess>,
    pub proxies: Vec<ChildProcess>,
    /// By storage server id.
    pub storage: std::collections::BTreeMap<u64, Option<ChildProcess>>,
}

impl LocalCluster {
    /// Starts every process of the cluster in `dir`: the one its
    /// `cluster.toml` describes, or a new one of shape `spec` when the
    /// directory has no cluster file yet.
    pub async fn start(
        exe: &Path,
        dir: &Path,
        spec: &ClusterSpec,
    ) -> Result<LocalCluster, TestkitError> {
        std::fs::create_dir_all(dir).map_err(TestkitError::io(dir))?;
        let cluster_path = dir.join("cluster.toml");
        if !cluster_path.exists() {
            let mut cluster = spec.cluster_file()?;
            if spec.tls {
                tls_files::generate(&dir.join(TLS_DIR))?;
                cluster.tls = Some(TlsEntry {
                    ca: Path::new(TLS_DIR).join("ca.pem"),
                    cert: Some(Path::new(TLS_DIR).join("member.pem")),
                    key: Some(Path::new(TLS_DIR).join("member-key.pem")),
                });
            }
            cluster.save(&cluster_path)?;
        }
        // Loaded back, so that the TLS files' paths are resolved.
        let cluster = ClusterFile::load(&cluster_path)?;
        let mut local = LocalCluster {
            cluster,
            cluster_path,
            dir: dir.to_path_buf(),
            log_dir: spec.logs_in_dir.then(|| dir.join("logs")),
            exe: exe.to_path_buf(),
            tlog_args: spec.tlog_args.clone(),
            proxy_args: spec.proxy_args.clone(),
            storage_args: spec.storage_args.clone(),
            worker_args: spec.worker_args.clone(),
            hosted_by_first_worker: spec.hosted_by_first_worker,
            worker_addresses: free_local_addrs(spec.workers)?,
            workers: Vec::new(),
            coordinators: Default::default(),
            tlogs: Vec::new(),
            sequencer: None,
            proxies: Vec::new(),
            storage: Default::default(),
        };
        let coordinator_ids: Vec<u64> = local.cluster.coordinators.iter().map(|c| c.id).collect();
        for id in coordinator_ids
            .into_iter()
            .filter(|_| !spec.hosted_by_first_worker)
        {
            let coordinator = local.start_coordinator(id).await?;
            local.coordinators.insert(id, Some(coordinator));
        }
        if local.cluster.is_recruited() {
            for i in 0..local.worker_addresses.len() {
                let worker = local.start_worker(i).await?;
                local.workers.push(Some(worker));
            }
        } else {
            for i in 0..local.cluster.tlogs.len() {
                let tlog = local.start_tlog(i).await?;
                local.tlogs.push(Some(tlog));
            }
            local.sequencer = Some(local.start_sequencer().await?);
            for id in local
                .cluster
                .proxies
                .iter()
                .map(|p| p.id)
                .collect::<Vec<_>>()
            {
                let proxy = local.start_proxy(id).await?;
                local.proxies.push(proxy);
            }
        }
        if spec.storage && !spec.hosted_by_first_worker {
            let ids: Vec<u64> = local.cluster.storage_servers.iter().map(|s| s.id).collect();
            for id in ids {
                let server = local.start_storage(id).await?;
                local.storage.insert(id, Some(server));
            }
        }
        if local.cluster.is_recruited() {
            local.wait_recovered(Duration::from_secs(60)).await?;
        }
        Ok(local)
    }

    /// Starts (or restarts) coordinator `id` on its address and data dir.
    pub async fn start_coordinator(&self, id: u64) -> Result<ChildProcess, TestkitError> {
        let entry = self.cluster.coordinator(id)?;
        let args: Vec<OsString> = vec![
            "coordinator".into(),
            "--cluster".into(),
            self.cluster_path.clone().into(),
            "--id".into(),
            id.to_string().into(),
            "--data-dir".into(),
            self.dir.join(format!("coordinator-{id}")).into(),
        ];
        let log = self.log_path(&format!("coordinator-{id}"))?;
        ChildProcess::spawn_listening(&self.exe, &args, entry.address, log.as_deref()).await
    }

    /// Starts (or restarts) worker `i` on its address and data dir.
    pub async fn start_worker(&self, i: usize) -> Result<ChildProcess, TestkitError> {
        let address = self.worker_addresses[i];
        let mut args: Vec<OsString> = vec![
            "server".into(),
            "--cluster".into(),
            self.cluster_path.clone().into(),
            "--data-dir".into(),
            self.dir.join(format!("worker-{i}")).into(),
            "--listen".into(),
            address.to_string().into(),
        ];
        args.extend(self.worker_args.iter().map(OsString::from));
        if i == 0 && self.hosted_by_first_worker {
            for c in &self.cluster.coordinators {
                args.extend(["--coordinator".into(), c.id.to_string().into()]);
            }
            for s in &self.cluster.storage_servers {
                args.extend(["--storage".into(), s.id.to_string().into()]);
            }
        }
        let log = self.log_path(&format!("worker-{i}"))?;
        ChildProcess::spawn_listening(&self.exe, &args, address, log.as_deref()).await
    }

    /// Waits until the coordinators record a generation whose commit path
    /// is open to clients (the controller recovered it), for up to
    /// `timeout`; returns its epoch.
    pub async fn wait_recovered(&self, timeout: Duration) -> Result<u64, TestkitError> {
        let transport = self.cluster.client_config()?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no coordinator answered");
        loop {
            for coordinator in &self.cluster.coordinators {
                let asked = async {
                    let client = RpcClient::connect(coordinator.address, transport.clone()).await?;
                    client.call(Message::GetClusterInfo).await
                };
                match tokio::time::timeout(Duration::from_secs(1), asked).await {
                    Ok(Ok(Message::ClusterInfo(info))) if info.sequencer.is_some() => {
                        return Ok(info.epoch)
                    }
                    Ok(Ok(other)) => last = format!("{other:?}"),
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "a coordinator did not answer in time".into(),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TestkitError::NotRecovered { timeout, last });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The live worker (by index) hosting a `kind` role of generation
    /// `epoch`, if one does.
    pub async fn worker_hosting(
        &self,
        kind: RoleKind,
        epoch: u64,
    ) -> Result<Option<usize>, TestkitError> {
        let transport = self.cluster.client_config()?;
        for (i, worker) in self.workers.iter().enumerate() {
            if worker.is_none() {
                continue;
            }
            let asked = async {
                let client =
                    RpcClient::connect(self.worker_addresses[i], transport.clone()).await?;
                client.call(Message::Status).await
            };
            let status = asked.await.map_err(|source| TestkitError::Rpc {
                what: format!("asking worker {i} for its status"),
                source,
            })?;
            if let Message::WorkerStatus(status) = status {
                if status
                    .roles
                    .iter()
                    .any(|r| r.kind == kind && r.epoch == epoch)
                {
                    return Ok(Some(i));
                }
            }
        }
        Ok(None)
    }

    /// Waits until the controller hears from every running worker, for up
    /// to `timeout`.
    pub async fn wait_workers_heard(&self, timeout: Duration) -> Result<(), TestkitError> {
        let transport = self.cluster.client_config()?;
        let running: Vec<String> = self
            .workers
            .iter()
            .zip(&self.worker_addresses)
            .filter(|(w, _)| w.is_some())
            .map(|(_, a)| a.to_string())
            .collect();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            for status in self.coordinator_statuses(&transport).await? {
                let Some(report) = status.recovery else {
                    continue;
                };
                let heard = |a: &String| {
                    report
                        .workers
                        .iter()
                        .any(|w| &w.address == a && w.silent_ms < 300)
                };
                if running.iter().all(heard) {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TestkitError::NotRecovered {
                    timeout,
                    last: "the controller does not hear from every worker".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The coordinator hosting the cluster controller, as the first live
    /// coordinator that knows one says.
    pub async fn controller(&self) -> Result<Option<u64>, TestkitError> {
        let transport = self.cluster.client_config()?;
        let statuses = self.coordinator_statuses(&transport).await?;
        Ok(statuses.into_iter().find_map(|s| s.controller))
    }

    /// The statuses of the running coordinators that answer.
    async fn coordinator_statuses(
        &self,
        transport: &ClientConfig,
    ) -> Result<Vec<CoordinatorStatusReply>, TestkitError> {
        let mut statuses = Vec::new();
        for (id, process) in &self.coordinators {
            if process.is_none() {
                continue;
            }
            let address = self.cluster.coordinator(*id)?.address;
            let asked = async {
                let client = RpcClient::connect(address, transport.clone()).await?;
                client.call(Message::Status).await
            };
            if let Ok(Message::CoordinatorStatus(status)) = asked.await {
                statuses.push(status);
            }
        }
        Ok(statuses)
    }

    /// Starts (or restarts) the sequencer (with its resolver).
    pub async fn start_sequencer(&self) -> Result<ChildProcess, TestkitError> {
        let args: Vec<OsString> = vec![
            "sequencer".into(),
            "--cluster".into(),
            self.cluster_path.clone().into(),
        ];
        let log = self.log_path("sequencer")?;
        ChildProcess::spawn_listening(
            &self.exe,
            &args,
            self.cluster.sequencer_address()?,
            log.as_deref(),
        )
        .await
    }

    /// Starts (or restarts) proxy `id` on its address.
    pub async fn start_proxy(&self, id: u64) -> Result<ChildProcess, TestkitError> {
        let entry = self.cluster.proxy(id)?;
        let mut args: Vec<OsString> = vec![
            "proxy".into(),
            "--cluster".into(),
            self.cluster_path.clone().into(),
            "--id".into(),
            id.to_string().into(),
        ];
        args.extend(self.proxy_args.iter().map(OsString::from));
        let log = self.log_path(&format!("proxy-{id}"))?;
        ChildProcess::spawn_listening(&self.exe, &args, entry.address, log.as_deref()).await
    }

    /// Starts (or restarts) storage server `id` on its address and data dir.
    pub async fn start_storage(&self, id: u64) -> Result<ChildProcess, TestkitError> {
        let entry = self
            .cluster
            .storage_servers
            .iter()
            .find(|s| s.id == id)
            .ok_or(TestkitError::NoSuchStorageServer(id))?;
        let mut args: Vec<OsString> = vec![
            "storage".into(),
            "--cluster".into(),
            self.cluster_path.clone().into(),
            "--id".into(),
            id.to_string().into(),
            "--data-dir".into(),
            self.dir.join(format!("storage-{id}")).into(),
        ];
        args.extend(self.storage_args.iter().map(OsString::from));
        let log = self.log_path(&format!("storage-{id}"))?;
        ChildProcess::spawn_listening(&self.exe, &args, entry.address, log.as_deref()).await
    }

    /// Starts (or restarts) TLog `i` on its address and data dir.
    pub async fn start_tlog(&self, i: usize) -> Result<ChildProcess, TestkitError> {
        let mut args: Vec<String> = self.tlog_args.clone();
        if let Some(tls) = &self.cluster.tls {
            args.extend(tlog_tls_args(tls));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let data_dir = self.dir.join(format!("tlog-{i}"));
        let log = self.log_path(&format!("tlog-{i}"))?;
        ChildProcess::spawn_tlog_at(
            &self.exe,
            &data_dir,
            self.cluster.tlogs[i].address,
            &args,
            log.as_deref(),
        )
        .await
    }

    /// `LOG_DIR/NAME.log` when processes log to files (the folder is made
    /// on first use).
    fn log_path(&self, name: &str) -> Result<Option<PathBuf>, TestkitError> {
        let Some(dir) = &self.log_dir else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir).map_err(TestkitError::io(dir))?;
        Ok(Some(dir.join(format!("{name}.log"))))
    }

    /// Stops every process (SIGTERM): storage servers, workers, proxies,
    /// the sequencer, the TLogs, then the coordinators.
    pub async fn stop(self) -> Result<(), TestkitError> {
        for server in self.storage.into_values().flatten() {
            server.stop().await?;
        }
        for worker in self.workers.into_iter().flatten() {
            worker.stop().await?;
        }
        for proxy in self.proxies {
            proxy.stop().await?;
        }
        if let Some(sequencer) = self.sequencer {
            sequencer.stop().await?;
        }
        for tlog in self.tlogs.into_iter().flatten() {
            tlog.stop().await?;
        }
        for coordinator in self.coordinators.into_values().flatten() {
            coordinator.stop().await?;
        }
        Ok(())
    }
}

//! A real TLog inside the test's own process: the TLog service over a
//! `MemStore` (no disk), serving on a loopback port, so a test talks to it
//! over the wire as it would to a `teamlog tlog` process.
//!
//! ```text
//!  InProcessTLog::start() ─▶ TLogService<MemStore> ─serve─▶ 127.0.0.1:PORT ◀── RpcClient / TLogSource
//!        store() ─▶ the MemStore, to crash it (`MemStore::crash`) and reopen
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use proto::clock::SystemClock;
use proto::transport::{serve, RpcClient, Service};
use tlog::mem_store::MemStore;
use tlog::server::{TLogConfig, TLogService};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::TestkitError;

/// A TLog serving from this process; stopped when dropped.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use bytes::Bytes;
/// use proto::{StorageTeamId, Version};
/// use testkit::tlog_stream::{read_team, register_teams, set_commit, VersionChain};
/// use testkit::InProcessTLog;
///
/// let tlog = InProcessTLog::start().await?;
/// let client = tlog.client().await?;
/// let team = StorageTeamId(1);
/// register_teams(&client, &[team]).await?;
/// let chain = VersionChain::default();
/// let commit = set_commit(chain.next_pair(), team, Bytes::from("k"), Bytes::from("v"), &[]);
/// client.tlog_commit(commit).await.expect("durable");
/// let stream = read_team(&client, team, Version(1), Version(1)).await?;
/// assert_eq!(stream[&Version(1)].len(), 1);
/// tlog.stop().await;
/// # Ok::<(), testkit::TestkitError>(()) }).unwrap();
/// ```
pub struct InProcessTLog {
    pub addr: SocketAddr,
    pub service: TLogService<MemStore>,
    store: MemStore,
    stop: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<std::io::Result<()>>>,
}

impl InProcessTLog {
    /// A fresh TLog with [`TLogConfig::small`].
    pub async fn start() -> Result<InProcessTLog, TestkitError> {
        Self::start_with(MemStore::new(), TLogConfig::small()).await
    }

    /// A TLog over `store` (recovering what it holds) with `config`.
    pub async fn start_with(
        store: MemStore,
        config: TLogConfig,
    ) -> Result<InProcessTLog, TestkitError> {
        let service = TLogService::open(
            Arc::new(store.clone()),
            &config,
            Arc::new(SystemClock::default()),
        )?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(TestkitError::Ports)?;
        let addr = listener.local_addr().map_err(TestkitError::Ports)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let serving: Arc<dyn Service> = Arc::new(service.clone());
        let served = tokio::spawn(serve(listener, serving, config.server, async {
            let _ = stopped.await;
        }));
        Ok(InProcessTLog {
            addr,
            service,
            store,
            stop: Some(stop),
            served: Some(served),
        })
    }

    /// A client connected to it.
    pub async fn client(&self) -> Result<RpcClient, TestkitError> {
        RpcClient::connect(self.addr, Default::default())
            .await
            .map_err(|source| TestkitError::Rpc {
                what: format!("connecting to the tlog at {}", self.addr),
                source,
            })
    }

    /// Its store, to crash (`MemStore::crash`) and start again over.
    pub fn store(&self) -> &MemStore {
        &self.store
    }

    /// Stops serving and waits until the listener is closed.
    pub async fn stop(mut self) {
        self.shut_down();
        if let Some(served) = self.served.take() {
            let _ = served.await;
        }
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for InProcessTLog {
    fn drop(&mut self) {
        self.shut_down();
    }
}

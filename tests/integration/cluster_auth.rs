//! Who may ask what of a cluster that runs mutual TLS (as `LocalCluster`
//! and `teamlog dev` set it up): members may ask anything; a peer with
//! only the CA may commit and read, and its cluster-internal requests are
//! refused and change nothing; a peer that does not speak TLS, or presents
//! a certificate of another CA, gets no service at all.

use anyhow::{bail, ensure, Result};
use bytes::Bytes;
use client::Client;
use cluster::tls_files::{self, TlsEntry};
use proto::rpc::{
    ErrorCode, Message, PeekRequest, PopRequest, Recruit, RecruitRequest, RegisterTeamRequest,
    RegisterWorkerRequest, SequenceRequest,
};
use proto::transport::tls::{PemIdentity, TlsSettings};
use proto::transport::{ClientConfig, RpcClient, RpcError};
use proto::{Mutation, ProxyId, StorageServerId, StorageTeamId, Version};
use testkit::{ClusterSpec, LocalCluster};

fn unauthorized<T: std::fmt::Debug>(result: Result<T, RpcError>) -> Result<()> {
    match result {
        Err(RpcError::Remote {
            code: ErrorCode::Unauthorized,
            ..
        }) => Ok(()),
        other => bail!("expected unauthorized, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_may_steer_the_cluster() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        teams: 1,
        ..ClusterSpec::default()
    };
    let local = LocalCluster::start(crate::exe(), dir.path(), &spec).await?;
    let cluster = local.cluster.clone();
    let member = cluster.client_config()?;
    let ca = cluster
        .tls
        .as_ref()
        .expect("a local cluster runs TLS")
        .ca
        .clone();
    let outsider = ClientConfig {
        tls: Some(TlsSettings::load(&ca, None)?.client()),
        ..ClientConfig::default()
    };

    // An application with only the CA commits and reads.
    let app = Client::with_transport(&cluster, outsider.clone())?;
    let version = app
        .commit(vec![Mutation::SetValue {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        }])
        .await?;
    let read = app.get(b"k", version).await?;
    ensure!(read.as_deref() == Some(&b"v"[..]), "read {read:?}");

    // Its cluster-internal requests are refused, on a connection that
    // stays open.
    let tlog_addr = cluster.tlogs[0].address;
    let tlog = RpcClient::connect(tlog_addr, outsider.clone()).await?;
    unauthorized(tlog.lock().await)?;
    unauthorized(
        tlog.pop(PopRequest {
            team: StorageTeamId(1),
            server: StorageServerId(100),
            version: version.next(),
        })
        .await,
    )?;
    unauthorized(
        tlog.register_team(RegisterTeamRequest {
            team: StorageTeamId(77),
            servers: vec![StorageServerId(1)],
        })
        .await,
    )?;
    unauthorized(
        tlog.peek(PeekRequest {
            team: StorageTeamId(1),
            begin: Version(1),
            max_bytes: 1 << 20,
            timeout_ms: 0,
        })
        .await,
    )?;
    let sequencer = RpcClient::connect(cluster.sequencer_address()?, outsider.clone()).await?;
    unauthorized(
        sequencer
            .call(Message::Sequence(SequenceRequest {
                proxy: ProxyId(1),
                request_num: u64::MAX,
                transactions: Vec::new(),
                committed: Version::ZERO,
            }))
            .await,
    )?;

    // And they changed nothing: the TLog is not locked and knows no team
    // 77, and both proxies still get versions (had the sequencer taken
    // request number u64::MAX from proxy 1, it would refuse proxy 1's
    // lower numbers from then on). The client takes the proxies in turn.
    let status = RpcClient::connect(tlog_addr, member.clone())
        .await?
        .status()
        .await?;
    ensure!(!status.locked, "an outsider locked the TLog");
    ensure!(
        status.teams.iter().all(|t| t.team != StorageTeamId(77)),
        "an outsider registered a team"
    );
    let mut last = version;
    for round in 0..2 * cluster.proxies.len() {
        let next = app
            .commit(vec![Mutation::SetValue {
                key: Bytes::from_static(b"k"),
                value: Bytes::from(format!("w{round}")),
            }])
            .await?;
        ensure!(next > last, "commit {round} got {next} after {last}");
        last = next;
    }

    // Plain TCP gets no service.
    let plain = RpcClient::connect(tlog_addr, ClientConfig::default()).await?;
    let answer = plain.call(Message::Status).await;
    ensure!(
        matches!(answer, Err(RpcError::ConnectionClosed | RpcError::Io(_))),
        "plain TCP was answered: {answer:?}"
    );

    // A certificate of another CA is turned away at the handshake, though
    // its holder trusts this cluster's CA; and one that trusts only the
    // other CA does not trust this cluster's servers.
    let other_dir = tempfile::tempdir()?;
    let other: TlsEntry = tls_files::generate(other_dir.path())?;
    let read = |p: &std::path::Path| std::fs::read(p);
    let (other_cert, other_key) = (
        read(other.cert.as_ref().expect("made"))?,
        read(other.key.as_ref().expect("made"))?,
    );
    let impostor = TlsSettings::from_pem(
        &read(&ca)?,
        Some(PemIdentity {
            cert_chain: &other_cert,
            key: &other_key,
        }),
    )?;
    for config in [
        tls_files::client_config(Some(&impostor)),
        tls_files::client_config(Some(&other.settings()?)),
    ] {
        let refused = async { RpcClient::connect(tlog_addr, config).await?.lock().await }.await;
        ensure!(
            refused.is_err(),
            "a certificate of another CA was served: {refused:?}"
        );
    }

    let status = RpcClient::connect(tlog_addr, member)
        .await?
        .status()
        .await?;
    ensure!(!status.locked);
    Ok(local.stop().await?)
}

/// Where the controller recruits the commit path: an application with only
/// the CA finds the proxies through the coordinators and commits, but may
/// not recruit on a worker, register as one, or open a sequencer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_may_recruit_register_workers_or_open_a_sequencer() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        coordinators: 1,
        workers: 1,
        tlogs: 1,
        replication: 1,
        proxies: 1,
        teams: 1,
        servers_per_team: 1,
        ..ClusterSpec::default()
    };
    let local = LocalCluster::start(crate::exe(), dir.path(), &spec).await?;
    let cluster = local.cluster.clone();
    let ca = cluster
        .tls
        .as_ref()
        .expect("a local cluster runs TLS")
        .ca
        .clone();
    let outsider = ClientConfig {
        tls: Some(TlsSettings::load(&ca, None)?.client()),
        ..ClientConfig::default()
    };
    let app = Client::with_transport(&cluster, outsider.clone())?;
    app.commit(vec![Mutation::SetValue {
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"v"),
    }])
    .await?;

    let worker = RpcClient::connect(local.worker_addresses[0], outsider.clone()).await?;
    let roles_before = match worker.call(Message::Status).await? {
        Message::WorkerStatus(status) => status.roles,
        other => bail!("a worker answered status with {}", other.name()),
    };
    unauthorized(
        worker
            .call(Message::Recruit(RecruitRequest {
                epoch: 99,
                role: Recruit::Sequencer {
                    start_after: Version(0),
                    floor: Version(0),
                    proxies: vec![ProxyId(1)],
                },
            }))
            .await,
    )?;
    let coordinator = RpcClient::connect(cluster.coordinators[0].address, outsider.clone()).await?;
    unauthorized(
        coordinator
            .call(Message::RegisterWorker(RegisterWorkerRequest {
                address: "127.0.0.1:9".parse()?,
                roles: Vec::new(),
            }))
            .await,
    )?;
    let Message::ClusterInfo(info) = coordinator.call(Message::GetClusterInfo).await? else {
        bail!("a coordinator answered something else than the cluster info");
    };
    let sequencer = RpcClient::connect(info.sequencer.expect("recovered"), outsider).await?;
    unauthorized(sequencer.call(Message::OpenCommits(info.epoch)).await)?;
    // Nothing changed: the worker hosts what it did.
    let Message::WorkerStatus(status) = worker.call(Message::Status).await? else {
        bail!("a worker answered status with something else");
    };
    ensure!(status.roles == roles_before, "{:?}", status.roles);
    Ok(local.stop().await?)
}

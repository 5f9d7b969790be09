//! The steps of a recovery as the runtime carries them out: reads and
//! conditional writes of the core state, TLog locks, and recruits on the
//! workers, each answering with the events the recovery learns from.
//!
//! ```text
//!  Command ─execute─▶ coordinators │ lock_tlog │ recruit (recruit_tlogs, recruit_commit_path) ─▶ Event
//! ```

use super::*;

/// Carries out one command, sending what happened.
pub(super) async fn execute(
    inner: &Inner,
    command: Command,
    events: &mpsc::UnboundedSender<Outcome>,
    placed: &Mutex<Vec<Placed>>,
) {
    let outcome = match command {
        Command::ReadCoreState => read_core_state(inner).await,
        Command::LockTLogs { epoch, tlogs } => {
            // Every lock goes on until it answers or the recovery ends
            // (which drops this task); each answer counts as it comes.
            let mut locks = JoinSet::new();
            for (index, addr) in tlogs {
                let transport = inner.config.transport.clone();
                locks.spawn(async move { (index, lock_tlog(addr, transport).await) });
            }
            while let Some(done) = locks.join_next().await {
                if let Ok((index, reply)) = done {
                    let _ = events.send(Ok(vec![Event::TLogLocked {
                        epoch,
                        index,
                        reply,
                    }]));
                }
            }
            return;
        }
        Command::ReadShardChanges {
            epoch,
            tlogs,
            after,
            through,
        } => {
            let transport = &inner.config.transport;
            metadata::read_for_recovery(&tlogs, transport, after, through)
                .await
                .map(|changes| vec![Event::ShardChangesRead { epoch, changes }])
        }
        Command::RecruitTLogs {
            epoch,
            begin,
            count,
        } => recruit_tlogs(inner, epoch, begin, count, placed).await,
        Command::WriteCoreState {
            expected_revision,
            state,
        } => write_core_state(inner, expected_revision, &state).await,
        Command::RecruitCommitPath {
            epoch,
            start_after,
            floor,
            tlogs,
            proxies,
        } => {
            let start = (start_after, floor);
            recruit_commit_path(inner, epoch, start, tlogs, proxies, placed).await
        }
        Command::OpenCommitPath { epoch, sequencer } => {
            call(inner, sequencer, Message::OpenCommits(epoch))
                .await
                .map(|_| vec![Event::CommitPathOpened { epoch }])
        }
    };
    let _ = events.send(outcome);
}

pub(super) async fn read_core_state(inner: &Inner) -> Outcome {
    let (state, revision) = inner
        .coordinators
        .read_core_state()
        .await
        .map_err(|e| format!("reading the core state: {e}"))?;
    Ok(vec![Event::CoreStateRead { revision, state }])
}

pub(super) async fn write_core_state(
    inner: &Inner,
    expected_revision: u64,
    state: &CoreState,
) -> Outcome {
    let outcome = inner
        .coordinators
        .write(CORE_STATE_REGISTER, expected_revision, state.encode())
        .await
        .map_err(|e| format!("writing the core state: {e}"))?;
    if !outcome.written {
        return Err(format!(
            "the core state moved on to revision {} (another controller?)",
            outcome.register.revision
        ));
    }
    Ok(vec![Event::CoreStateWritten {
        revision: outcome.register.revision,
    }])
}

/// Locks the TLog at `addr`, trying until it answers; the recovery drops
/// this future when it ends first.
pub(super) async fn lock_tlog(addr: SocketAddr, transport: ClientConfig) -> proto::rpc::LockReply {
    let attempt = || async {
        let client = RpcClient::connect(addr, transport.clone()).await?;
        match tokio::time::timeout(LOCK_TIMEOUT, client.lock()).await {
            Ok(reply) => reply,
            Err(_) => Err(RpcError::Timeout),
        }
    };
    attempt
        .retry(endless_backoff())
        .notify(|e, _| tracing::debug!(%addr, error = %e, "lock failed; trying again"))
        .await
        .expect("an endless retry ends only with an answer")
}

/// How long one attempt to lock a TLog may take.
const LOCK_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn call(
    inner: &Inner,
    addr: SocketAddr,
    message: Message,
) -> Result<Message, String> {
    let name = message.name();
    let attempt = async {
        let client = RpcClient::connect(addr, inner.config.transport.clone()).await?;
        client.call(message).await
    };
    match tokio::time::timeout(inner.config.call_timeout, attempt).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(format!("{name} to {addr}: {e}")),
        Err(_) => Err(format!(
            "{name} to {addr}: no answer within {:?}",
            inner.config.call_timeout
        )),
    }
}

/// Recruits one role on `worker`; returns where it listens.
pub(super) async fn recruit(
    inner: &Inner,
    worker: SocketAddr,
    epoch: u64,
    role: Recruit,
    placed: &Mutex<Vec<Placed>>,
) -> Result<SocketAddr, String> {
    let what = format!("{}", role.kind());
    match call(
        inner,
        worker,
        Message::Recruit(RecruitRequest { epoch, role }),
    )
    .await?
    {
        Message::RecruitReply(address) => {
            lock(placed).push(Placed {
                what,
                address,
                worker,
                recruited_ms: inner.clock.now_ms(),
            });
            Ok(address)
        }
        other => Err(format!(
            "worker {worker} answered a recruit with {}",
            other.name()
        )),
    }
}

/// The live workers, rotated by `epoch` so that successive generations
/// spread over them.
pub(super) fn workers_for(inner: &Inner, epoch: u64) -> Result<Vec<SocketAddr>, String> {
    let mut workers = inner.live_workers();
    if workers.is_empty() {
        return Err("no live worker has registered".to_owned());
    }
    let shift = (epoch as usize) % workers.len();
    workers.rotate_left(shift);
    Ok(workers)
}

pub(super) async fn recruit_tlogs(
    inner: &Inner,
    epoch: u64,
    begin: proto::Version,
    count: usize,
    placed: &Mutex<Vec<Placed>>,
) -> Outcome {
    // A worker may be restarting: wait a little for enough of them before
    // TLogs share one, which a single loss could then make unrecoverable.
    let asked = tokio::time::Instant::now();
    while inner.live_workers().len() < count
        && (!inner.workers_had_time() || asked.elapsed() < SHARING_WAIT)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let workers = workers_for(inner, epoch)?;
    if workers.len() < count {
        tracing::warn!(
            workers = workers.len(),
            tlogs = count,
            "fewer live workers than TLogs: some share a process"
        );
    }
    // At once: a new TLog lays out its first segment, which takes a while.
    let tlogs = try_join_all((0..count).map(|index| {
        let role = Recruit::TLog {
            index: index as u64,
            begin,
        };
        recruit(inner, workers[index % workers.len()], epoch, role, placed)
    }))
    .await?;
    Ok(vec![Event::TLogsRecruited { epoch, tlogs }])
}

/// Recruits the sequencer, chaining on from `start_after` above `floor`,
/// and the proxies.
pub(super) async fn recruit_commit_path(
    inner: &Inner,
    epoch: u64,
    (start_after, floor): (proto::Version, proto::Version),
    tlogs: Vec<SocketAddr>,
    proxies: usize,
    placed: &Mutex<Vec<Placed>>,
) -> Outcome {
    let workers = workers_for(inner, epoch)?;
    let ids: Vec<ProxyId> = (1..=proxies as u64).map(ProxyId).collect();
    let sequencer = recruit(
        inner,
        workers[0],
        epoch,
        Recruit::Sequencer {
            start_after,
            floor,
            proxies: ids.clone(),
        },
        placed,
    )
    .await?;
    let addresses = try_join_all(ids.into_iter().enumerate().map(|(i, id)| {
        let role = Recruit::Proxy {
            id,
            sequencer,
            tlogs: tlogs.clone(),
        };
        recruit(inner, workers[(i + 1) % workers.len()], epoch, role, placed)
    }))
    .await?;
    Ok(vec![Event::CommitPathRecruited {
        epoch,
        path: CommitPath {
            sequencer,
            proxies: addresses,
        },
    }])
}

//! Probes of the workers that host the recovered generation's roles: a
//! status request every 100 ms over a connection kept open. A worker
//! killed outright closes that connection, and the connect that follows is
//! refused, so the controller knows at once; silence (a hung process, a
//! lost network) still takes the failure timeout of the registrations.
//!
//! ```text
//!  per worker: every 100 ms ─Status─▶ worker ─ok──────────────────▶ again
//!                                           ─connection closed─▶ connect again at once
//!              connect refused ─▶ gone: the controller recovers without waiting out the silence
//! ```
//!
//! Only a refused connect counts: nothing listens at the worker's address,
//! so its process, and every role in it, is gone. A timeout or a failed
//! handshake says nothing certain and is left to the failure timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::rpc::Message;
use proto::transport::{ClientConfig, Peer, RpcError};
use tokio::task::JoinSet;

/// How often each worker is asked for its status.
const PROBE_EVERY: Duration = Duration::from_millis(100);

/// How long a probe waits for its answer; past it the connection is
/// dropped and made anew.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// The probes of one recovered generation's workers; they stop when this
/// is dropped.
pub struct Probes {
    gone: Arc<Mutex<BTreeMap<SocketAddr, String>>>,
    _tasks: JoinSet<()>,
}

impl Probes {
    /// Probes each of `workers` until dropped.
    pub fn start(workers: BTreeSet<SocketAddr>, transport: &ClientConfig) -> Probes {
        let gone = Arc::new(Mutex::new(BTreeMap::new()));
        let mut tasks = JoinSet::new();
        for worker in workers {
            tasks.spawn(probe(Peer::new(worker, transport.clone()), gone.clone()));
        }
        Probes {
            gone,
            _tasks: tasks,
        }
    }

    /// Why `worker` is known to be gone, if it is.
    pub fn gone(&self, worker: SocketAddr) -> Option<String> {
        lock(&self.gone).get(&worker).cloned()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

async fn probe(peer: Peer, gone: Arc<Mutex<BTreeMap<SocketAddr, String>>>) {
    let mut interval = tokio::time::interval(PROBE_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let client = match peer.client().await {
            Ok(client) => client,
            Err(RpcError::Connect(e)) if e.kind() == ErrorKind::ConnectionRefused => {
                let why = format!("worker {} refuses connections: {e}", peer.addr());
                tracing::info!(%why, "a worker of the generation is gone");
                lock(&gone).insert(peer.addr(), why);
                return;
            }
            Err(_) => continue,
        };
        match client
            .call_with_timeout(Message::Status, PROBE_TIMEOUT)
            .await
        {
            // The connection broke: connect again now, which a dead
            // worker refuses.
            Err(RpcError::ConnectionClosed | RpcError::Io(_)) => interval.reset_immediately(),
            Err(RpcError::Timeout) => peer.drop_connection(&client).await,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proto::rpc::{ErrorCode, ErrorReply};
    use proto::transport::{serve, Responder, ServerConfig, Service};
    use tokio::net::TcpListener;

    /// Answers every request, counting them.
    #[derive(Default)]
    struct Answering(std::sync::atomic::AtomicUsize);

    impl Service for Answering {
        fn handle(&self, _: Message, responder: Responder) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            responder.reply(Err(ErrorReply::new(
                ErrorCode::UnknownMessage,
                "a stand-in for a worker",
            )));
        }
    }

    /// Waits, with a deadline, until `probes` finds `worker` gone.
    async fn gone_within(
        probes: &Probes,
        worker: SocketAddr,
        deadline: Duration,
    ) -> Option<String> {
        let until = tokio::time::Instant::now() + deadline;
        while tokio::time::Instant::now() < until {
            if let Some(why) = probes.gone(worker) {
                return Some(why);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        probes.gone(worker)
    }

    #[tokio::test]
    async fn a_worker_that_stops_listening_is_found_gone_and_one_that_answers_is_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stopping = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let asked = Arc::new(Answering::default());
        let served = tokio::spawn(serve(
            listener,
            asked.clone(),
            ServerConfig::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let answering_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let answering = answering_listener.local_addr().unwrap();
        let (_keep, kept) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(
            answering_listener,
            Arc::new(Answering::default()),
            ServerConfig::default(),
            async {
                let _ = kept.await;
            },
        ));
        let probes = Probes::start(
            BTreeSet::from([stopping, answering]),
            &ClientConfig::default(),
        );
        // Probed three times, it answered (an error reply is an answer):
        // not gone.
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        while asked.0.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            assert!(tokio::time::Instant::now() < until, "no probes came");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(probes.gone(stopping), None);

        let _ = stop.send(());
        served.await.unwrap().unwrap();
        let why = gone_within(&probes, stopping, Duration::from_secs(30))
            .await
            .expect("a worker whose address refuses connections is gone");
        assert!(why.contains("refuses connections"), "{why}");
        assert_eq!(probes.gone(answering), None);
    }
}

//! A stray peer: a host of its own that, while the faults run, connects
//! to the roles' listening addresses and sends what the protocol does not
//! expect. Roles must close or refuse such connections and go on serving:
//! the run's checks (every acknowledged commit read back, liveness after
//! the faults) hold with it as without it.
//!
//! ```text
//!  stray ──▶ role's address: bytes that are no frame │ a length past the cap
//!                            │ a frame that is no message │ a reply sent as a request
//!                            │ half a frame, held │ a burst of idle connections
//!  the role: closes the connection, or answers with an error (anything else is a violation)
//! ```
//!
//! The stray draws from a stream of its own, so a seed's knobs, faults,
//! clients and mover draw as they do without it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use proto::frame::{frame_header, DEFAULT_MAX_FRAME_LEN, FRAME_HEADER_LEN};
use proto::rpc::{Envelope, Message};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::TcpStream;

use crate::clock::now;
use crate::layout::{coordinator_ids, storage_ids, worker_ids, Role, Shape, TLOGS};
use crate::trace::Trace;

/// Keeps the stray's draws apart from everyone else's.
const STRAY_STREAM: u64 = 0x7374_7261;
/// The stray's host name.
pub const STRAY_HOST: &str = "stray";
/// How long the stray waits for a role to answer or close.
const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// Connections the stray keeps going at once.
const LANES: u64 = 4;
/// Idle connections one burst opens to one role.
const BURST: usize = 24;

/// What the stray sends on one connection.
#[derive(Clone, Copy, Debug)]
enum Junk {
    /// Random bytes, which read as a frame header of any length.
    Bytes,
    /// A header whose length is past any role's cap.
    Oversize,
    /// A well-formed frame whose payload is no envelope.
    NoMessage,
    /// A reply (`pop_reply`) sent as a request.
    ReplyAsRequest,
    /// A header and part of its payload, then nothing for a while.
    HalfFrame,
    /// Many connections at once, each sending half a header and holding.
    Burst,
}

const JUNK: [Junk; 6] = [
    Junk::Bytes,
    Junk::Oversize,
    Junk::NoMessage,
    Junk::ReplyAsRequest,
    Junk::HalfFrame,
    Junk::Burst,
];

pub struct Stray {
    pub seed: u64,
    pub shape: Shape,
    pub fault_end: Duration,
    pub trace: Trace,
}

/// What a role did with one connection's junk.
enum Answer {
    Closed,
    Error(String),
    /// Anything but an error: the role obeyed or answered junk.
    Obeyed(String),
    /// Nothing within the wait (a role down or slow, or one that waits
    /// for the rest of a frame).
    Silent,
}

impl Stray {
    /// Sends junk to random roles until the faults stop, from a few
    /// connections at a time, so that one held connection does not hold
    /// the rest back.
    pub async fn run(self) -> turmoil::Result {
        let lanes = (0..LANES).map(|lane| self.lane(lane));
        futures::future::join_all(lanes).await;
        Ok(())
    }

    /// One connection after another, each to a random role.
    async fn lane(&self, lane: u64) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ STRAY_STREAM ^ lane);
        let targets = targets(self.shape);
        while now() < self.fault_end {
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..400))).await;
            let role = targets[rng.random_range(0..targets.len())];
            let junk = JUNK[rng.random_range(0..JUNK.len())];
            let said = match send(&mut rng, role.addr(), junk).await {
                Ok(Answer::Closed) => "closed".to_owned(),
                Ok(Answer::Error(e)) => format!("refused: {e}"),
                Ok(Answer::Silent) => "no answer".to_owned(),
                Ok(Answer::Obeyed(what)) => {
                    self.trace
                        .violation(format!("{role} answered {junk:?} with {what}"));
                    continue;
                }
                Err(e) => format!("not connected: {e}"),
            };
            self.trace
                .note("stray", format!("{junk:?} to {role}: {said}"));
        }
    }
}

/// Sends `junk` to `addr` and reads what the role does with it.
async fn send(rng: &mut StdRng, addr: SocketAddr, junk: Junk) -> std::io::Result<Answer> {
    let Some(bytes) = junk_bytes(rng, junk) else {
        let mut held = Vec::with_capacity(BURST);
        for _ in 0..BURST {
            let mut stream = TcpStream::connect(addr).await?;
            stream.write_all(&[1, 0]).await?;
            held.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..2_000))).await;
        return Ok(Answer::Silent);
    };
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(&bytes).await?;
    Ok(answer(&mut stream).await)
}

/// What one connection of `junk` sends; `None` for a burst of them.
fn junk_bytes(rng: &mut StdRng, junk: Junk) -> Option<Vec<u8>> {
    Some(match junk {
        Junk::Bytes => {
            let mut bytes = vec![0u8; rng.random_range(1..512)];
            rng.fill_bytes(&mut bytes);
            bytes
        }
        Junk::Oversize => {
            let mut header = (DEFAULT_MAX_FRAME_LEN + 1).to_le_bytes().to_vec();
            header.extend_from_slice(&[0; 4]);
            header
        }
        Junk::NoMessage => frame(b"not an envelope"),
        Junk::ReplyAsRequest => {
            let envelope = Envelope {
                request_id: rng.next_u64(),
                message: Message::PopReply,
            };
            frame(&envelope.encode().into_bytes())
        }
        Junk::HalfFrame => {
            let whole = frame(&[7u8; 100]);
            whole[..rng.random_range(1..whole.len())].to_vec()
        }
        Junk::Burst => return None,
    })
}

/// The addresses a stray can reach: every role listening on a known port.
fn targets(shape: Shape) -> Vec<Role> {
    let mut roles: Vec<Role> = match shape {
        Shape::Pinned => {
            let mut roles: Vec<Role> = (0..TLOGS).map(Role::TLog).collect();
            roles.extend([Role::Sequencer, Role::Proxy(1)]);
            roles
        }
        Shape::Recruited => worker_ids().into_iter().map(Role::Worker).collect(),
    };
    roles.extend(storage_ids().into_iter().map(Role::Storage));
    roles.extend(coordinator_ids().into_iter().map(Role::Coordinator));
    roles
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let header = frame_header(payload, DEFAULT_MAX_FRAME_LEN).expect("a small frame");
    let mut frame = header.to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// Reads what the role sends back: the end of the connection, or one
/// frame, which must hold an error.
async fn answer(stream: &mut TcpStream) -> Answer {
    let read = async {
        let mut header = [0u8; FRAME_HEADER_LEN];
        stream.read_exact(&mut header).await?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("four bytes"));
        let mut payload = vec![0u8; len.min(1 << 20) as usize];
        stream.read_exact(&mut payload).await?;
        Ok::<_, std::io::Error>(payload)
    };
    match tokio::time::timeout(ANSWER_WAIT, read).await {
        Err(_) => Answer::Silent,
        Ok(Err(_)) => Answer::Closed,
        Ok(Ok(payload)) => match Envelope::decode(Bytes::from(payload)) {
            Ok(Envelope {
                message: Message::Error(e),
                ..
            }) => Answer::Error(format!("{:?}: {}", e.code, e.message)),
            Ok(other) => Answer::Obeyed(other.message.name().to_owned()),
            Err(e) => Answer::Obeyed(format!("a frame that is no envelope ({e})")),
        },
    }
}

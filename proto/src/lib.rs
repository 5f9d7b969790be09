//! What two teamlog processes must agree on: the domain types, the team
//! message block format, the RPC messages (flatbuffers) and the framed
//! transport that carries them.
//!
//! ```text
//! role code ── Message ──▶ rpc::Envelope::encode ──▶ frame::frame_header ──▶ TCP (vectored)
//!     ▲                                                                         │
//!     └──────── Message ◀── rpc::Envelope::decode ◀── frame::FrameCodec ◀───────┘
//!           (transport: RpcClient / serve multiplex requests by request id)
//! ```

pub mod block;
pub mod clock;
pub mod disk_writes;
pub mod frame;
mod generated;
pub mod key_text;
pub mod rpc;
pub mod scatter;
pub mod shard_map;
pub mod signal;
pub mod system_keys;
pub mod team_set;
pub mod transport;
pub mod types;
pub mod units;

pub use block::{BlockEntry, BlockError, TeamBlock, TeamBlockBuilder};
pub use frame::{FrameCodec, FrameError, DEFAULT_MAX_FRAME_LEN};
pub use rpc::{
    DecodeError, Envelope, ErrorCode, ErrorReply, LockReply, Message, PeekReply, PeekRequest,
    PopRequest, RegisterTeamRequest, TLogCommitReply, TLogCommitRequest, TLogStatusReply,
    TeamBlockData, TeamStatus,
};
pub use transport::{serve, ClientConfig, Responder, RpcClient, RpcError, ServerConfig, Service};
pub use types::*;

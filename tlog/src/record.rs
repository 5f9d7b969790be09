//! The payloads the TLog writes into its segmented log.
//!
//! Every record is one of these kinds. A segment always starts with a
//! `Snapshot` of the TLog's metadata, so dropping old segments never loses
//! pops, team registrations or the lock.
//!
//! ```text
//! record     := kind:u8 | body                    (little-endian)
//! Commit     := prev:u64 | version:u64 | known_committed:u64 | n:u32
//!               | (team:u64 | len:u32)^n | block^n
//! Pop        := team:u64 | server:u64 | version:u64
//! Register   := team:u64 | n:u32 | server:u64^n
//! Lock       := (empty)
//! Snapshot   := last_version:u64 | last_prev:u64 | known_committed:u64 | locked:u8
//!               | n:u32 | (team:u64 | server:u64 | version:u64)^n
//!               | m:u32 | (team:u64 | k:u32 | server:u64^k)^m
//! ```

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use proto::{StorageServerId, StorageTeamId, Version};

const KIND_COMMIT: u8 = 1;
const KIND_POP: u8 = 2;
const KIND_REGISTER: u8 = 3;
const KIND_LOCK: u8 = 4;
const KIND_SNAPSHOT: u8 = 5;
/// kind, three versions and the team count.
const COMMIT_HEADER_LEN: usize = 1 + 3 * 8 + 4;
/// team id and block length.
const TEAM_ENTRY_LEN: usize = 8 + 4;

/// A record payload that does not decode: a bug or an unsupported log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("undecodable TLog record: {0}")]
pub struct RecordError(pub &'static str);

/// The metadata a segment-starting snapshot carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub last_version: Version,
    pub last_prev_version: Version,
    pub known_committed_version: Version,
    pub locked: bool,
    pub pops: BTreeMap<(StorageTeamId, StorageServerId), Version>,
    pub registered: BTreeMap<StorageTeamId, Vec<StorageServerId>>,
}

impl Metadata {
    pub fn apply_commit(&mut self, commit: &CommitRecord) {
        self.last_version = commit.version;
        self.last_prev_version = commit.prev_version;
        self.known_committed_version = self
            .known_committed_version
            .max(commit.known_committed_version);
    }

    /// Folds one record into the metadata, as recovery and the writer do.
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Commit(commit) => self.apply_commit(commit),
            Record::Pop {
                team,
                server,
                version,
            } => {
                let popped = self.pops.entry((*team, *server)).or_default();
                *popped = (*popped).max(*version);
            }
            Record::Register { team, servers } => {
                self.registered.insert(*team, servers.clone());
            }
            Record::Lock => self.locked = true,
            Record::Snapshot(snapshot) => *self = snapshot.clone(),
        }
    }
}

/// One commit as stored: the blocks of every team it touched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    pub prev_version: Version,
    pub version: Version,
    pub known_committed_version: Version,
    pub blocks: Vec<(StorageTeamId, Bytes)>,
}

impl CommitRecord {
    pub fn block_bytes(&self) -> usize {
        self.blocks.iter().map(|(_, b)| b.len()).sum()
    }

    fn encode_into(&self, out: &mut BytesMut) {
        self.encode_head_into(out);
        for (_, block) in &self.blocks {
            out.put_slice(block);
        }
    }

    /// Everything before the blocks: the commit's versions and team table.
    fn encode_head_into(&self, out: &mut BytesMut) {
        out.put_u8(KIND_COMMIT);
        out.put_u64_le(self.prev_version.0);
        out.put_u64_le(self.version.0);
        out.put_u64_le(self.known_committed_version.0);
        out.put_u32_le(self.blocks.len() as u32);
        for (team, block) in &self.blocks {
            out.put_u64_le(team.0);
            out.put_u32_le(block.len() as u32);
        }
    }

    /// The record up to its blocks; the blocks follow it unchanged.
    pub fn encoded_head(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.head_len());
        self.encode_head_into(&mut out);
        out.freeze()
    }

    fn head_len(&self) -> usize {
        COMMIT_HEADER_LEN + self.blocks.len() * TEAM_ENTRY_LEN
    }

    /// Encodes the record into one exactly-sized buffer and re-points the
    /// blocks into it, so memory held for them is just this allocation
    /// (not the network buffers they arrived in).
    pub fn into_encoded(mut self) -> (Bytes, CommitRecord) {
        let mut out = BytesMut::with_capacity(self.head_len() + self.block_bytes());
        self.encode_into(&mut out);
        let payload = out.freeze();
        let mut offset = self.head_len();
        for (_, block) in &mut self.blocks {
            let len = block.len();
            *block = payload.slice(offset..offset + len);
            offset += len;
        }
        (payload, self)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Commit(CommitRecord),
    Pop {
        team: StorageTeamId,
        server: StorageServerId,
        version: Version,
    },
    Register {
        team: StorageTeamId,
        servers: Vec<StorageServerId>,
    },
    Lock,
    Snapshot(Metadata),
}

impl Record {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Record::Commit(c) => {
                out.reserve(c.head_len() + c.block_bytes());
                c.encode_into(&mut out);
            }
            Record::Pop {
                team,
                server,
                version,
            } => {
                out.put_u8(KIND_POP);
                out.put_u64_le(team.0);
                out.put_u64_le(server.0);
                out.put_u64_le(version.0);
            }
            Record::Register { team, servers } => {
                out.put_u8(KIND_REGISTER);
                out.put_u64_le(team.0);
                put_servers(&mut out, servers);
            }
            Record::Lock => out.put_u8(KIND_LOCK),
            Record::Snapshot(m) => {
                out.put_u8(KIND_SNAPSHOT);
                out.put_u64_le(m.last_version.0);
                out.put_u64_le(m.last_prev_version.0);
                out.put_u64_le(m.known_committed_version.0);
                out.put_u8(u8::from(m.locked));
                out.put_u32_le(m.pops.len() as u32);
                for ((team, server), version) in &m.pops {
                    out.put_u64_le(team.0);
                    out.put_u64_le(server.0);
                    out.put_u64_le(version.0);
                }
                out.put_u32_le(m.registered.len() as u32);
                for (team, servers) in &m.registered {
                    out.put_u64_le(team.0);
                    put_servers(&mut out, servers);
                }
            }
        }
        out.freeze()
    }

    /// Decodes a payload; block bytes are zero-copy slices of `payload`.
    pub fn decode(payload: Bytes) -> Result<Record, RecordError> {
        let mut r = Reader {
            buf: &payload,
            pos: 0,
        };
        let record = match r.u8()? {
            KIND_COMMIT => {
                let prev_version = Version(r.u64()?);
                let version = Version(r.u64()?);
                let known_committed_version = Version(r.u64()?);
                let n = r.u32()? as usize;
                let mut teams = Vec::with_capacity(n.min(r.remaining() / 12));
                for _ in 0..n {
                    teams.push((StorageTeamId(r.u64()?), r.u32()? as usize));
                }
                let mut blocks = Vec::with_capacity(teams.len());
                for (team, len) in teams {
                    let start = r.take(len)?;
                    blocks.push((team, payload.slice(start..start + len)));
                }
                Record::Commit(CommitRecord {
                    prev_version,
                    version,
                    known_committed_version,
                    blocks,
                })
            }
            KIND_POP => Record::Pop {
                team: StorageTeamId(r.u64()?),
                server: StorageServerId(r.u64()?),
                version: Version(r.u64()?),
            },
            KIND_REGISTER => Record::Register {
                team: StorageTeamId(r.u64()?),
                servers: r.servers()?,
            },
            KIND_LOCK => Record::Lock,
            KIND_SNAPSHOT => {
                let mut m = Metadata {
                    last_version: Version(r.u64()?),
                    last_prev_version: Version(r.u64()?),
                    known_committed_version: Version(r.u64()?),
                    locked: r.u8()? != 0,
                    ..Metadata::default()
                };
                for _ in 0..r.u32()? {
                    let key = (StorageTeamId(r.u64()?), StorageServerId(r.u64()?));
                    m.pops.insert(key, Version(r.u64()?));
                }
                for _ in 0..r.u32()? {
                    let team = StorageTeamId(r.u64()?);
                    m.registered.insert(team, r.servers()?);
                }
                Record::Snapshot(m)
            }
            _ => return Err(RecordError("unknown record kind")),
        };
        if r.remaining() != 0 {
            return Err(RecordError("trailing bytes"));
        }
        Ok(record)
    }
}

/// Reads only the header of a commit payload and the block of `team`, without
/// decoding other teams' blocks: the disk peek path runs this per record.
pub fn commit_block_for_team(
    payload: &Bytes,
    team: StorageTeamId,
) -> Result<Option<(Version, Option<Bytes>)>, RecordError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    if r.u8()? != KIND_COMMIT {
        return Ok(None);
    }
    let _prev = r.u64()?;
    let version = Version(r.u64()?);
    let _known_committed = r.u64()?;
    let n = r.u32()? as usize;
    let table_end = r.pos
        + n.checked_mul(12)
            .ok_or(RecordError("team table overflow"))?;
    if table_end > payload.len() {
        return Err(RecordError("team table truncated"));
    }
    let mut offset = table_end;
    for _ in 0..n {
        let id = StorageTeamId(r.u64()?);
        let len = r.u32()? as usize;
        if id == team {
            let end = offset + len;
            if end > payload.len() {
                return Err(RecordError("block truncated"));
            }
            return Ok(Some((version, Some(payload.slice(offset..end)))));
        }
        offset += len;
    }
    Ok(Some((version, None)))
}

fn put_servers(out: &mut BytesMut, servers: &[StorageServerId]) {
    out.put_u32_le(servers.len() as u32);
    for server in servers {
        out.put_u64_le(server.0);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Advances past `len` bytes and returns where they started.
    fn take(&mut self, len: usize) -> Result<usize, RecordError> {
        if self.remaining() < len {
            return Err(RecordError("truncated"));
        }
        let start = self.pos;
        self.pos += len;
        Ok(start)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let start = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[start..start + N]);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn servers(&mut self) -> Result<Vec<StorageServerId>, RecordError> {
        let n = self.u32()? as usize;
        let mut servers = Vec::with_capacity(n.min(self.remaining() / 8));
        for _ in 0..n {
            servers.push(StorageServerId(self.u64()?));
        }
        Ok(servers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_records() -> Vec<Record> {
        let mut meta = Metadata {
            last_version: Version(40),
            last_prev_version: Version(30),
            known_committed_version: Version(20),
            locked: true,
            ..Metadata::default()
        };
        meta.pops
            .insert((StorageTeamId(1), StorageServerId(2)), Version(9));
        meta.registered.insert(
            StorageTeamId(1),
            vec![StorageServerId(2), StorageServerId(3)],
        );
        vec![
            Record::Commit(CommitRecord {
                prev_version: Version(1),
                version: Version(5),
                known_committed_version: Version(1),
                blocks: vec![
                    (StorageTeamId(7), Bytes::from_static(b"abc")),
                    (StorageTeamId(9), Bytes::from_static(b"")),
                ],
            }),
            Record::Pop {
                team: StorageTeamId(7),
                server: StorageServerId(3),
                version: Version(4),
            },
            Record::Register {
                team: StorageTeamId(7),
                servers: vec![StorageServerId(3)],
            },
            Record::Lock,
            Record::Snapshot(meta),
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for record in sample_records() {
            assert_eq!(Record::decode(record.encode()), Ok(record));
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        for record in sample_records() {
            let bytes = record.encode();
            for cut in 0..bytes.len() {
                assert!(
                    Record::decode(bytes.slice(..cut)).is_err(),
                    "{record:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn encoded_commit_blocks_point_into_the_payload() {
        let Record::Commit(commit) = sample_records().remove(0) else {
            unreachable!()
        };
        let (payload, moved) = commit.clone().into_encoded();
        assert_eq!(moved, commit);
        assert_eq!(Record::decode(payload.clone()), Ok(Record::Commit(commit)));
        let range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
        assert!(range.contains(&(moved.blocks[0].1.as_ptr() as usize)));
    }

    #[test]
    fn team_block_lookup_reads_only_the_named_team() {
        let bytes = sample_records()[0].encode();
        assert_eq!(
            commit_block_for_team(&bytes, StorageTeamId(7)),
            Ok(Some((Version(5), Some(Bytes::from_static(b"abc")))))
        );
        assert_eq!(
            commit_block_for_team(&bytes, StorageTeamId(8)),
            Ok(Some((Version(5), None)))
        );
        let pop = sample_records()[1].encode();
        assert_eq!(commit_block_for_team(&pop, StorageTeamId(7)), Ok(None));
    }
}

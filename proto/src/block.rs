//! The team message block: one storage team's messages at one or more
//! versions, in the byte form that commit proxies send to TLogs, TLogs store
//! and TLogs hand back to storage servers in peek replies.
//!
//! ```text
//! commit proxy                 TLog                          storage server
//! TeamBlockBuilder ──bytes──▶ TeamBlock::parse (validate) ──▶ TeamBlock::entries
//!                             store the same bytes unchanged
//! ```
//!
//! Format (all integers little-endian):
//!
//! ```text
//! block   := format_version:u8 (=1) | team:u64 | section_count:u32 | section*
//! section := version:u64 | message_count:u32 | message*
//! message := subsequence:u32 | kind:u8 | len_a:u32 | a | len_b:u32 | b
//!            kind 1 = SetValue     (a = key,   b = value)
//!            kind 2 = ClearRange   (a = begin, b = end)
//!            kind 3 = AppendIfFits (a = key,   b = suffix)
//! ```
//!
//! A section with `message_count` 0 is an *empty version*: "the team had
//! nothing at this version". Section versions strictly increase, and inside a
//! section subsequences are at least 1 and strictly increase, so a block is
//! already in `(version, subsequence)` order and readers merge blocks without
//! sorting.
//!
//! [`TeamBlock::parse`] validates the whole block in one pass without
//! allocating; afterwards [`TeamBlock::entries`] hands out keys and values as
//! `Bytes` slices of the block, sharing its buffer.

use bytes::{BufMut, Bytes, BytesMut};

use crate::types::{Mutation, StorageTeamId, Subsequence, Version, VersionedMutation};

/// The only format version this code writes and reads.
pub const BLOCK_FORMAT_VERSION: u8 = 1;

const BLOCK_HEADER_LEN: usize = 1 + 8 + 4;
/// A message without its two payloads.
const MESSAGE_FIXED_LEN: usize = 4 + 1 + 4 + 4;

const SECTION_COUNT_OFFSET: usize = 1 + 8;

/// Why a block could not be built or parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum BlockError {
    #[error("block truncated: {needed} more bytes needed at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("unsupported block format version {0} (this code reads {BLOCK_FORMAT_VERSION})")]
    UnsupportedFormat(u8),
    #[error("unknown mutation kind {kind} at offset {offset}")]
    UnknownMutationKind { offset: usize, kind: u8 },
    #[error("version {version} does not follow version {previous}")]
    VersionNotIncreasing { previous: Version, version: Version },
    #[error("subsequence {subsequence} does not follow {previous} at version {version}")]
    SubsequenceNotIncreasing {
        version: Version,
        previous: Subsequence,
        subsequence: Subsequence,
    },
    #[error("subsequence 0 at version {version} (subsequences start at 1)")]
    ZeroSubsequence { version: Version },
    #[error("version {version} is already closed as an empty version")]
    VersionClosedAsEmpty { version: Version },
    #[error("{len} trailing bytes after the block at offset {offset}")]
    TrailingBytes { offset: usize, len: usize },
    #[error("{what} of {len} exceeds the format's u32 limit")]
    TooLarge { what: &'static str, len: usize },
}

/// Builds one team's block, refusing anything out of order so that a block
/// it produces always parses.
#[derive(Debug)]
pub struct TeamBlockBuilder {
    buf: BytesMut,
    section_count: u32,
    open: Option<OpenSection>,
}

/// The last section written: where its count lives, so it can be patched in
/// place and the buffer is a valid block after every push.
#[derive(Debug, Clone, Copy)]
struct OpenSection {
    version: Version,
    count_offset: usize,
    message_count: u32,
    last_subsequence: Subsequence,
}

impl TeamBlockBuilder {
    pub fn new(team: StorageTeamId) -> Self {
        let mut buf = BytesMut::with_capacity(256);
        buf.put_u8(BLOCK_FORMAT_VERSION);
        buf.put_u64_le(team.0);
        buf.put_u32_le(0);
        TeamBlockBuilder {
            buf,
            section_count: 0,
            open: None,
        }
    }

    /// Appends a message. Opens a new section when `version` is greater than
    /// the current one; refuses a smaller version, a subsequence not above the
    /// last one of the same version, subsequence 0, and appending to a version
    /// already closed as empty.
    pub fn push(
        &mut self,
        version: Version,
        subsequence: Subsequence,
        mutation: &Mutation,
    ) -> Result<(), BlockError> {
        if subsequence.0 == 0 {
            return Err(BlockError::ZeroSubsequence { version });
        }
        let (kind, a, b) = mutation.encode();
        let len_a = payload_len_u32(a.len())?;
        let len_b = payload_len_u32(b.len())?;

        let same_version = match self.open {
            Some(open) if version < open.version => {
                return Err(BlockError::VersionNotIncreasing {
                    previous: open.version,
                    version,
                });
            }
            Some(open) if version == open.version => {
                if open.message_count == 0 {
                    return Err(BlockError::VersionClosedAsEmpty { version });
                }
                if subsequence <= open.last_subsequence {
                    return Err(BlockError::SubsequenceNotIncreasing {
                        version,
                        previous: open.last_subsequence,
                        subsequence,
                    });
                }
                if open.message_count == u32::MAX {
                    return Err(BlockError::TooLarge {
                        what: "message count",
                        len: open.message_count as usize + 1,
                    });
                }
                true
            }
            _ => false,
        };
        if !same_version {
            self.open_section(version)?;
        }

        self.buf.reserve(MESSAGE_FIXED_LEN + a.len() + b.len());
        self.buf.put_u32_le(subsequence.0);
        self.buf.put_u8(kind);
        self.buf.put_u32_le(len_a);
        self.buf.put_slice(a);
        self.buf.put_u32_le(len_b);
        self.buf.put_slice(b);

        if let Some(open) = self.open.as_mut() {
            open.message_count += 1;
            open.last_subsequence = subsequence;
            let at = open.count_offset;
            self.buf[at..at + 4].copy_from_slice(&open.message_count.to_le_bytes());
        }
        Ok(())
    }

    /// Appends an empty-version section; refuses a version not above the last
    /// section's.
    pub fn push_empty_version(&mut self, version: Version) -> Result<(), BlockError> {
        if let Some(open) = self.open {
            if version <= open.version {
                return Err(BlockError::VersionNotIncreasing {
                    previous: open.version,
                    version,
                });
            }
        }
        self.open_section(version)
    }

    /// Whether no section has been added.
    pub fn is_empty(&self) -> bool {
        self.section_count == 0
    }

    /// The size of the block built so far.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }

    /// Writes a section header with a zero count; the caller has checked that
    /// `version` is above the last section's.
    fn open_section(&mut self, version: Version) -> Result<(), BlockError> {
        if self.section_count == u32::MAX {
            return Err(BlockError::TooLarge {
                what: "section count",
                len: self.section_count as usize + 1,
            });
        }
        self.section_count += 1;
        self.buf[SECTION_COUNT_OFFSET..SECTION_COUNT_OFFSET + 4]
            .copy_from_slice(&self.section_count.to_le_bytes());
        self.buf.put_u64_le(version.0);
        let count_offset = self.buf.len();
        self.buf.put_u32_le(0);
        self.open = Some(OpenSection {
            version,
            count_offset,
            message_count: 0,
            last_subsequence: Subsequence(0),
        });
        Ok(())
    }
}

fn payload_len_u32(len: usize) -> Result<u32, BlockError> {
    u32::try_from(len).map_err(|_| BlockError::TooLarge {
        what: "key or value length",
        len,
    })
}

/// A validated block. Cloning shares the buffer.
#[derive(Clone, Debug)]
pub struct TeamBlock {
    bytes: Bytes,
    team: StorageTeamId,
    section_count: usize,
    message_count: usize,
    first_version: Option<Version>,
    last_version: Option<Version>,
}

impl TeamBlock {
    /// Validates everything: format version, lengths, mutation kinds,
    /// ordering, and that nothing follows the last section.
    pub fn parse(bytes: Bytes) -> Result<TeamBlock, BlockError> {
        let mut r = Reader::new(&bytes);
        let format = r.u8()?;
        if format != BLOCK_FORMAT_VERSION {
            return Err(BlockError::UnsupportedFormat(format));
        }
        let team = StorageTeamId(r.u64()?);
        let section_count = r.u32()? as usize;

        let mut message_count = 0usize;
        let mut first_version = None;
        let mut last_version: Option<Version> = None;
        for _ in 0..section_count {
            let version = Version(r.u64()?);
            if let Some(previous) = last_version {
                if version <= previous {
                    return Err(BlockError::VersionNotIncreasing { previous, version });
                }
            }
            first_version.get_or_insert(version);
            last_version = Some(version);

            let count = r.u32()?;
            let mut previous = Subsequence(0);
            for _ in 0..count {
                let subsequence = Subsequence(r.u32()?);
                if subsequence.0 == 0 {
                    return Err(BlockError::ZeroSubsequence { version });
                }
                if subsequence <= previous {
                    return Err(BlockError::SubsequenceNotIncreasing {
                        version,
                        previous,
                        subsequence,
                    });
                }
                previous = subsequence;
                let kind_offset = r.pos;
                let kind = r.u8()?;
                if !Mutation::is_known_kind(kind) {
                    return Err(BlockError::UnknownMutationKind {
                        offset: kind_offset,
                        kind,
                    });
                }
                let len_a = r.u32()? as usize;
                r.skip(len_a)?;
                let len_b = r.u32()? as usize;
                r.skip(len_b)?;
            }
            message_count += count as usize;
        }
        if r.pos != bytes.len() {
            return Err(BlockError::TrailingBytes {
                offset: r.pos,
                len: bytes.len() - r.pos,
            });
        }
        Ok(TeamBlock {
            bytes,
            team,
            section_count,
            message_count,
            first_version,
            last_version,
        })
    }

    pub fn team(&self) -> StorageTeamId {
        self.team
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn first_version(&self) -> Option<Version> {
        self.first_version
    }

    pub fn last_version(&self) -> Option<Version> {
        self.last_version
    }

    pub fn section_count(&self) -> usize {
        self.section_count
    }

    /// Real messages, not counting empty versions.
    pub fn message_count(&self) -> usize {
        self.message_count
    }

    /// The version of every section, ascending.
    pub fn versions(&self) -> impl Iterator<Item = Version> + '_ {
        Sections {
            reader: Reader::new(&self.bytes).at(BLOCK_HEADER_LEN),
            remaining: self.section_count,
        }
    }

    /// In `(version, subsequence)` order: each version's messages, an empty
    /// version as one [`BlockEntry::EmptyVersion`].
    pub fn entries(&self) -> impl Iterator<Item = BlockEntry> + '_ {
        Entries {
            block: self,
            pos: BLOCK_HEADER_LEN,
            sections_left: self.section_count,
            messages_left: 0,
            version: Version::ZERO,
        }
    }
}

/// One entry of a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockEntry {
    Message(VersionedMutation),
    EmptyVersion {
        team: StorageTeamId,
        version: Version,
    },
}

impl BlockEntry {
    pub fn version(&self) -> Version {
        match self {
            BlockEntry::Message(m) => m.version,
            BlockEntry::EmptyVersion { version, .. } => *version,
        }
    }

    pub fn team(&self) -> StorageTeamId {
        match self {
            BlockEntry::Message(m) => m.team,
            BlockEntry::EmptyVersion { team, .. } => *team,
        }
    }

    /// `(version, subsequence)`, with an empty version at `(v, u64::MAX)` so
    /// that it sorts after every real message of its version.
    pub fn sort_key(&self) -> (Version, u64) {
        match self {
            BlockEntry::Message(m) => (m.version, u64::from(m.subsequence.0)),
            BlockEntry::EmptyVersion { version, .. } => (*version, u64::MAX),
        }
    }
}

/// Bounds-checked little-endian reads; every read past the end is an error.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn at(mut self, pos: usize) -> Self {
        self.pos = pos;
        self
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], BlockError> {
        match self.buf.get(self.pos..).and_then(<[u8]>::first_chunk::<N>) {
            Some(array) => {
                self.pos += N;
                Ok(*array)
            }
            None => Err(self.truncated(N)),
        }
    }

    fn truncated(&self, len: usize) -> BlockError {
        let available = self.buf.len().saturating_sub(self.pos);
        BlockError::Truncated {
            offset: self.pos,
            needed: len.saturating_sub(available),
        }
    }

    fn u8(&mut self) -> Result<u8, BlockError> {
        Ok(self.take::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, BlockError> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    fn u64(&mut self) -> Result<u64, BlockError> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    /// Moves past `len` bytes, returning where they start.
    fn skip(&mut self, len: usize) -> Result<usize, BlockError> {
        let start = self.pos;
        match start.checked_add(len) {
            Some(end) if end <= self.buf.len() => {
                self.pos = end;
                Ok(start)
            }
            _ => Err(self.truncated(len)),
        }
    }
}

struct Sections<'a> {
    reader: Reader<'a>,
    remaining: usize,
}

impl Iterator for Sections<'_> {
    type Item = Version;

    fn next(&mut self) -> Option<Version> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let version = Version(self.reader.u64().ok()?);
        let count = self.reader.u32().ok()?;
        for _ in 0..count {
            self.reader.skip(4 + 1).ok()?;
            let len_a = self.reader.u32().ok()? as usize;
            self.reader.skip(len_a).ok()?;
            let len_b = self.reader.u32().ok()? as usize;
            self.reader.skip(len_b).ok()?;
        }
        Some(version)
    }
}

/// Walks a block that `parse` already validated; the reads stay checked so
/// that even a broken invariant ends the iteration instead of panicking.
struct Entries<'a> {
    block: &'a TeamBlock,
    pos: usize,
    sections_left: usize,
    messages_left: u32,
    version: Version,
}

impl Iterator for Entries<'_> {
    type Item = BlockEntry;

    fn next(&mut self) -> Option<BlockEntry> {
        let bytes = &self.block.bytes;
        let mut r = Reader::new(bytes).at(self.pos);
        if self.messages_left == 0 {
            if self.sections_left == 0 {
                return None;
            }
            self.sections_left -= 1;
            self.version = Version(r.u64().ok()?);
            self.messages_left = r.u32().ok()?;
            if self.messages_left == 0 {
                self.pos = r.pos;
                return Some(BlockEntry::EmptyVersion {
                    team: self.block.team,
                    version: self.version,
                });
            }
        }
        let subsequence = Subsequence(r.u32().ok()?);
        let kind = r.u8().ok()?;
        let len_a = r.u32().ok()? as usize;
        let start_a = r.skip(len_a).ok()?;
        let len_b = r.u32().ok()? as usize;
        let start_b = r.skip(len_b).ok()?;
        let a = bytes.slice(start_a..start_a + len_a);
        let b = bytes.slice(start_b..start_b + len_b);
        let mutation = Mutation::decode(kind, a, b)?;
        self.pos = r.pos;
        self.messages_left -= 1;
        Some(BlockEntry::Message(VersionedMutation {
            version: self.version,
            subsequence,
            team: self.block.team,
            mutation,
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.block.message_count + self.block.section_count))
    }
}

#[cfg(test)]
mod tests;

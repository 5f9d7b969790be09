//! Bytes gathered for one vectored write: small pieces copied into a
//! staging buffer, large ones referenced where they already are.
//!
//! ```text
//!  extend_from_slice(header) push(small) push(large) extend_from_slice(pad)
//!  staged: [header|small ...............|pad]
//!  parts:  Staged(0..a)  Shared(large)  Staged(a..b)   ──slices()──▶ &[IoSlice]
//! ```
//!
//! Used where a copy of a large payload would cost more than an extra I/O
//! vector entry: frames on the wire, records in the TLog's log.

use std::io::IoSlice;
use std::ops::Range;

use bytes::Bytes;

/// Pieces up to this size are copied by [`Scatter::push`]: for them a copy
/// is cheaper than an I/O vector entry of their own.
pub const COPY_UP_TO: usize = 2048;

/// Linux's limit on I/O vector entries per call (IOV_MAX).
pub const MAX_SLICES: usize = 1024;

#[derive(Default)]
pub struct Scatter {
    staged: Vec<u8>,
    parts: Vec<Part>,
    len: usize,
}

enum Part {
    Staged(Range<usize>),
    Shared(Bytes),
}

impl Scatter {
    /// Appends a copy of `bytes`.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let start = self.staged.len();
        self.staged.extend_from_slice(bytes);
        self.len += bytes.len();
        let end = self.staged.len();
        match self.parts.last_mut() {
            Some(Part::Staged(range)) if range.end == start => range.end = end,
            _ => self.parts.push(Part::Staged(start..end)),
        }
    }

    /// Appends `bytes`: copied when small, referenced otherwise.
    pub fn push(&mut self, bytes: Bytes) {
        if bytes.len() <= COPY_UP_TO {
            self.extend_from_slice(&bytes);
        } else {
            self.len += bytes.len();
            self.parts.push(Part::Shared(bytes));
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.staged.clear();
        self.parts.clear();
        self.len = 0;
    }

    /// Everything appended, in order, for a vectored write (which takes
    /// at most [`MAX_SLICES`] at a time; see [`IoSlice::advance_slices`]
    /// for resuming after a short write).
    pub fn slices(&self) -> Vec<IoSlice<'_>> {
        self.parts
            .iter()
            .map(|part| {
                IoSlice::new(match part {
                    Part::Staged(range) => &self.staged[range.clone()],
                    Part::Shared(bytes) => bytes,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(scatter: &Scatter) -> Vec<u8> {
        scatter.slices().iter().flat_map(|s| s.to_vec()).collect()
    }

    #[test]
    fn pieces_come_out_in_order_with_large_ones_referenced() {
        let large = Bytes::from(vec![7u8; COPY_UP_TO + 1]);
        let mut scatter = Scatter::default();
        scatter.extend_from_slice(b"head");
        scatter.push(Bytes::from_static(b"small"));
        scatter.push(large.clone());
        scatter.extend_from_slice(b"tail");
        let mut expected = b"headsmall".to_vec();
        expected.extend_from_slice(&large);
        expected.extend_from_slice(b"tail");
        assert_eq!(joined(&scatter), expected);
        assert_eq!(scatter.len(), expected.len());
        let slices = scatter.slices();
        assert_eq!(
            slices.len(),
            3,
            "copies merge; the large piece stands alone"
        );
        assert_eq!(slices[1].as_ptr(), large.as_ptr(), "not copied");
        scatter.clear();
        assert!(scatter.is_empty() && scatter.slices().is_empty());
    }
}

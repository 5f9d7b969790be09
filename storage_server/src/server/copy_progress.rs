//! How each range being added is coming along, for status: when it last
//! got a page, how fast it copies, and how much is left by its source's
//! estimate.
//!
//! ```text
//!  fetch: copy began ─▶ began          a page installed ─▶ got_page(stored size)
//!         every ESTIMATE_INTERVAL ─ShardMetrics [next page, end)─▶ a source ─▶ estimated
//!  status ─▶ fill: idle_ms, size_left (estimate − copied since), size_per_sec
//! ```
//!
//! Sizes are stored sizes (`proto::rpc::stored_size`), the measure of the
//! source's byte sample, so that what is copied can be taken off what the
//! source estimated. The estimate is a sample's: it may be off by a few
//! units of the sample either way, and is taken again every few seconds.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use proto::rpc::AddingRangeStatus;
use tokio::time::Instant;

/// How often a source is asked again how much of a range is left.
pub(super) const ESTIMATE_INTERVAL: Duration = Duration::from_secs(2);

/// The copy rate is taken over this much time.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// The shortest time a rate is taken over, so that the first page of a
/// copy does not make it look boundless.
const MIN_RATE_SPAN: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct CopyProgress {
    ranges: BTreeMap<Bytes, RangeProgress>,
}

struct RangeProgress {
    began: Instant,
    last_page: Instant,
    /// The stored size of each page of the last `RATE_WINDOW`, by when
    /// it was installed.
    recent: VecDeque<(Instant, u64)>,
    estimate: Option<Estimate>,
}

/// What a source said was left, and what was copied since.
struct Estimate {
    at: Instant,
    left: u64,
    copied_since: u64,
}

impl RangeProgress {
    fn new(now: Instant) -> Self {
        RangeProgress {
            began: now,
            last_page: now,
            recent: VecDeque::new(),
            estimate: None,
        }
    }

    fn forget_before(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            self.recent.pop_front();
        }
    }

    fn size_per_sec(&self, now: Instant) -> u64 {
        let copied: u64 = self.recent.iter().map(|(_, size)| size).sum();
        let span = now
            .duration_since(self.began)
            .clamp(MIN_RATE_SPAN, RATE_WINDOW);
        (copied as f64 / span.as_secs_f64()) as u64
    }
}

impl CopyProgress {
    /// The copy of the range starting at `range` is under way.
    pub(super) fn began(&mut self, range: &Bytes, now: Instant) {
        self.ranges
            .entry(range.clone())
            .or_insert_with(|| RangeProgress::new(now));
    }

    /// A page of `size` stored bytes was installed.
    pub(super) fn got_page(&mut self, range: &Bytes, size: u64, now: Instant) {
        let progress = self
            .ranges
            .entry(range.clone())
            .or_insert_with(|| RangeProgress::new(now));
        progress.last_page = now;
        progress.recent.push_back((now, size));
        progress.forget_before(now);
        if let Some(estimate) = &mut progress.estimate {
            estimate.copied_since += size;
        }
    }

    /// Whether a source should be asked how much of the range is left.
    pub(super) fn wants_estimate(&self, range: &Bytes, now: Instant) -> bool {
        self.ranges
            .get(range)
            .and_then(|p| p.estimate.as_ref())
            .is_none_or(|e| now.duration_since(e.at) >= ESTIMATE_INTERVAL)
    }

    /// A source estimated that `left` stored bytes of the range are still
    /// to copy.
    pub(super) fn estimated(&mut self, range: &Bytes, left: u64, now: Instant) {
        let progress = self
            .ranges
            .entry(range.clone())
            .or_insert_with(|| RangeProgress::new(now));
        progress.estimate = Some(Estimate {
            at: now,
            left,
            copied_since: 0,
        });
    }

    /// Fills in how each range is coming along, and forgets the ranges no
    /// longer being added.
    pub(super) fn fill(&mut self, ranges: &mut [AddingRangeStatus], now: Instant) {
        self.ranges
            .retain(|range, _| ranges.iter().any(|r| r.begin == *range));
        for status in ranges {
            let progress = self
                .ranges
                .entry(status.begin.clone())
                .or_insert_with(|| RangeProgress::new(now));
            progress.forget_before(now);
            status.idle_ms = u64::try_from(now.duration_since(progress.last_page).as_millis())
                .unwrap_or(u64::MAX);
            status.size_per_sec = progress.size_per_sec(now);
            status.size_left = match (&progress.estimate, status.installed_to == status.end) {
                (_, true) => Some(0),
                (Some(e), false) => Some(e.left.saturating_sub(e.copied_since)),
                (None, false) => None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(begin: &'static [u8], installed_to: &'static [u8]) -> AddingRangeStatus {
        AddingRangeStatus {
            begin: Bytes::from_static(begin),
            end: Bytes::from_static(b"z"),
            installed_to: Bytes::from_static(installed_to),
            pairs_copied: 0,
            bytes_copied: 0,
            ready: false,
            problem: None,
            idle_ms: 0,
            size_left: None,
            size_per_sec: 0,
        }
    }

    #[test]
    fn what_is_left_is_the_estimate_less_what_came_since() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let range = Bytes::from_static(b"a");
        let mut progress = CopyProgress::default();
        progress.began(&range, at(0));
        assert!(progress.wants_estimate(&range, at(0)));
        let mut ranges = [status(b"a", b"a")];
        progress.fill(&mut ranges, at(0));
        assert_eq!(ranges[0].size_left, None, "no source has answered");

        progress.got_page(&range, 1_000, at(100));
        progress.estimated(&range, 10_000, at(200));
        assert!(!progress.wants_estimate(&range, at(1_000)));
        progress.got_page(&range, 3_000, at(1_500));
        progress.got_page(&range, 3_000, at(2_000));
        progress.fill(&mut ranges, at(2_000));
        assert_eq!(ranges[0].size_left, Some(4_000));
        assert_eq!(ranges[0].size_per_sec, 3_500, "7,000 over 2 s");
        assert_eq!(ranges[0].idle_ms, 0);

        // More copied than estimated: nothing left, not less.
        progress.got_page(&range, 9_000, at(2_100));
        progress.fill(&mut ranges, at(2_100));
        assert_eq!(ranges[0].size_left, Some(0));
        assert!(progress.wants_estimate(&range, at(2_200)));

        // The rate forgets pages older than its window; idle counts up.
        progress.fill(&mut ranges, at(9_000));
        assert_eq!(ranges[0].size_per_sec, 0);
        assert_eq!(ranges[0].idle_ms, 6_900);

        // A range installed to its end has nothing left, estimate or not.
        let mut done = [status(b"a", b"z")];
        progress.fill(&mut done, at(9_000));
        assert_eq!(done[0].size_left, Some(0));
    }

    #[test]
    fn the_first_page_does_not_make_the_rate_boundless() {
        let start = Instant::now();
        let range = Bytes::from_static(b"a");
        let mut progress = CopyProgress::default();
        progress.began(&range, start);
        progress.got_page(&range, 5_000, start + Duration::from_millis(10));
        let mut ranges = [status(b"a", b"b")];
        progress.fill(&mut ranges, start + Duration::from_millis(10));
        assert_eq!(ranges[0].size_per_sec, 5_000);
    }

    #[test]
    fn ranges_no_longer_added_are_forgotten() {
        let now = Instant::now();
        let mut progress = CopyProgress::default();
        progress.began(&Bytes::from_static(b"a"), now);
        progress.estimated(&Bytes::from_static(b"a"), 7, now);
        progress.fill(&mut [], now);
        assert!(progress.wants_estimate(&Bytes::from_static(b"a"), now));
    }
}

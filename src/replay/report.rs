//! What a replay measures and how it is shown: a recorder shared by the
//! replay's tasks, latency statistics, the JSON result and the human
//! summary (the plot is `plot.rs`).
//!
//! ```text
//!  replay tasks ─record_commit / record_read / record_lag / record_error─▶ Recorder
//!     (per-second buckets: counts + latency histograms; whole-run histograms)
//!  Recorder::finish ─▶ Measurements ─▶ ReplayResult ─▶ result.json, summary
//!                                                   └▶ plot.svg (throughput | latency)
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::Serialize;

use bytes::Bytes;

use crate::replay::trace::Mismatch;
use proto::key_text::escape;

/// Latencies of one kind of operation, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct LatencyStats {
    pub count: u64,
    pub min_us: u64,
    pub avg_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl LatencyStats {
    fn of(histogram: &Histogram<u64>) -> LatencyStats {
        if histogram.is_empty() {
            return LatencyStats::default();
        }
        LatencyStats {
            count: histogram.len(),
            min_us: histogram.min(),
            avg_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.5),
            p99_us: histogram.value_at_quantile(0.99),
            max_us: histogram.max(),
        }
    }
}

/// One second of the replay.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SecondPoint {
    pub second: u64,
    /// The time this bucket covers: 1, or less for the run's last second.
    pub seconds: f64,
    pub commits: u64,
    pub mutations: u64,
    pub reads: u64,
    pub commit_p50_us: u64,
    pub commit_p99_us: u64,
    pub read_p50_us: u64,
    pub read_p99_us: u64,
}

struct Bucket {
    commits: u64,
    mutations: u64,
    reads: u64,
    commit: Histogram<u64>,
    read: Histogram<u64>,
}

fn histogram(significant_figures: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, significant_figures).expect("valid histogram bounds")
}

impl Bucket {
    fn new() -> Bucket {
        // Two significant figures keep an hour of buckets small.
        Bucket {
            commits: 0,
            mutations: 0,
            reads: 0,
            commit: histogram(2),
            read: histogram(2),
        }
    }
}

#[derive(Default)]
struct Recorded {
    seconds: Vec<Bucket>,
    commit: Option<Histogram<u64>>,
    read: Option<Histogram<u64>>,
    lag: Option<Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    late_events: u64,
    max_lateness_us: u64,
}

/// Collects measurements from concurrent tasks.
pub struct Recorder {
    started: Instant,
    recorded: Mutex<Recorded>,
}

fn micros(latency: Duration) -> u64 {
    (latency.as_micros() as u64).max(1)
}

impl Recorder {
    pub fn new(started: Instant) -> Recorder {
        Recorder {
            started,
            recorded: Mutex::new(Recorded {
                commit: Some(histogram(3)),
                read: Some(histogram(3)),
                lag: Some(histogram(3)),
                ..Recorded::default()
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Recorded) -> T) -> T {
        f(&mut self.recorded.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn with_bucket(&self, f: impl FnOnce(&mut Bucket)) {
        let second = self.started.elapsed().as_secs() as usize;
        self.with(|r| {
            while r.seconds.len() <= second {
                r.seconds.push(Bucket::new());
            }
            f(&mut r.seconds[second]);
        })
    }

    /// An acknowledged commit of `mutations` mutations.
    pub fn record_commit(&self, latency: Duration, mutations: usize) {
        let us = micros(latency);
        self.with_bucket(|b| {
            b.commits += 1;
            b.mutations += mutations as u64;
            b.commit.saturating_record(us);
        });
        self.with(|r| r.commit.as_mut().expect("open").saturating_record(us));
    }

    pub fn record_read(&self, latency: Duration) {
        let us = micros(latency);
        self.with_bucket(|b| {
            b.reads += 1;
            b.read.saturating_record(us);
        });
        self.with(|r| r.read.as_mut().expect("open").saturating_record(us));
    }

    /// Acknowledgement to readable on every server of the team.
    pub fn record_lag(&self, lag: Duration) {
        self.with(|r| r.lag.as_mut().expect("open").saturating_record(micros(lag)));
    }

    pub fn record_error(&self, kind: &str) {
        self.with(|r| *r.errors.entry(kind.to_string()).or_default() += 1);
    }

    /// An event started `lateness` after its time.
    pub fn record_late(&self, lateness: Duration) {
        let us = micros(lateness);
        self.with(|r| {
            r.late_events += 1;
            r.max_lateness_us = r.max_lateness_us.max(us);
        });
    }

    /// Totals so far: (commits, reads, errors), for progress lines.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.with(|r| {
            (
                r.commit.as_ref().map_or(0, |h| h.len()),
                r.read.as_ref().map_or(0, |h| h.len()),
                r.errors.values().sum(),
            )
        })
    }

    pub fn finish(&self) -> Measurements {
        let elapsed = self.started.elapsed().as_secs_f64();
        self.with(|r| {
            let series: Vec<SecondPoint> = r
                .seconds
                .iter()
                .enumerate()
                .map(|(second, b)| SecondPoint {
                    second: second as u64,
                    seconds: (elapsed - second as f64).clamp(0.0, 1.0),
                    commits: b.commits,
                    mutations: b.mutations,
                    reads: b.reads,
                    commit_p50_us: LatencyStats::of(&b.commit).p50_us,
                    commit_p99_us: LatencyStats::of(&b.commit).p99_us,
                    read_p50_us: LatencyStats::of(&b.read).p50_us,
                    read_p99_us: LatencyStats::of(&b.read).p99_us,
                })
                .collect();
            let total = |f: fn(&SecondPoint) -> u64| series.iter().map(f).sum::<u64>() as f64;
            Measurements {
                seconds: elapsed,
                throughput: Throughput {
                    commits_per_s: total(|p| p.commits) / elapsed,
                    mutations_per_s: total(|p| p.mutations) / elapsed,
                    reads_per_s: total(|p| p.reads) / elapsed,
                },
                commit_latency: LatencyStats::of(r.commit.as_ref().expect("open")),
                read_latency: LatencyStats::of(r.read.as_ref().expect("open")),
                visibility_lag: LatencyStats::of(r.lag.as_ref().expect("open")),
                errors: r.errors.clone(),
                late_events: r.late_events,
                max_lateness_us: r.max_lateness_us,
                series,
            }
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub commits_per_s: f64,
    pub mutations_per_s: f64,
    pub reads_per_s: f64,
}

/// Everything the recorder measured.
#[derive(Clone, Debug, Serialize)]
pub struct Measurements {
    pub seconds: f64,
    pub throughput: Throughput,
    pub commit_latency: LatencyStats,
    pub read_latency: LatencyStats,
    pub visibility_lag: LatencyStats,
    /// Failed operations by kind (e.g. `commit_refused:not_committed`).
    pub errors: BTreeMap<String, u64>,
    /// Open loop: events that started more than 2 ms after their time.
    pub late_events: u64,
    pub max_lateness_us: u64,
    pub series: Vec<SecondPoint>,
}

/// The final comparison of the key space with the trace's model.
#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub passed: bool,
    pub version: u64,
    pub keys_read: usize,
    /// crc32c (hex) of the key space listed as `teamlog client get-range`
    /// prints it (`key = value` lines, escaped), to compare with later reads.
    pub digest: String,
    pub model_commits: usize,
    pub mismatch_count: usize,
    /// The first mismatches, in key order.
    pub mismatches: Vec<Mismatch>,
}

/// The JSON result of one replay.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayResult {
    pub trace: String,
    /// The seed the trace was generated from (0 for hand-written traces).
    pub trace_seed: u64,
    /// `cluster` or `log`.
    pub path: String,
    /// `open` or `closed`, with its parameters.
    pub mode: String,
    pub events: u64,
    pub commits: CommitCounts,
    pub reads: u64,
    #[serde(flatten)]
    pub measurements: Measurements,
    pub check: Option<CheckResult>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CommitCounts {
    pub acknowledged: u64,
    pub refused: u64,
    pub unknown: u64,
}

impl ReplayResult {
    pub fn summary(&self) -> String {
        let m = &self.measurements;
        let line = |name: &str, s: &LatencyStats| {
            format!(
                "{name:<15} n={:<8} min {:>7} us  avg {:>9.0} us  p50 {:>7} us  p99 {:>8} us  max {:>8} us\n",
                s.count, s.min_us, s.avg_us, s.p50_us, s.p99_us, s.max_us
            )
        };
        let mut out = format!(
            "replayed {} events ({}, path {}) in {:.2} s\n\
             commits: {} acknowledged, {} refused, {} unknown; reads: {}\n\
             throughput: {:.0} commits/s, {:.0} mutations/s, {:.0} reads/s\n",
            self.events,
            self.mode,
            self.path,
            m.seconds,
            self.commits.acknowledged,
            self.commits.refused,
            self.commits.unknown,
            self.reads,
            m.throughput.commits_per_s,
            m.throughput.mutations_per_s,
            m.throughput.reads_per_s,
        );
        out += &line("commit latency", &m.commit_latency);
        out += &line("read latency", &m.read_latency);
        out += &line("visibility lag", &m.visibility_lag);
        if m.late_events > 0 {
            let _ = writeln!(
                out,
                "late events: {} (worst {:.1} ms late)",
                m.late_events,
                m.max_lateness_us as f64 / 1e3
            );
        }
        for (kind, count) in &m.errors {
            let _ = writeln!(out, "errors: {kind}: {count}");
        }
        match &self.check {
            None => out += "check: skipped\n",
            Some(c) if c.passed => {
                let _ = writeln!(
                    out,
                    "check: passed ({} keys at version {} match {} commits)",
                    c.keys_read, c.version, c.model_commits
                );
            }
            Some(c) => {
                let _ = writeln!(out, "check: FAILED, {} mismatched keys:", c.mismatch_count);
                for m in &c.mismatches {
                    let _ = writeln!(
                        out,
                        "  {:?}: expected one of {:?}, found {:?}",
                        m.key, m.expected, m.actual
                    );
                }
            }
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")?;
        Ok(())
    }
}

/// The digest of a key space: crc32c of its `key = value` listing, as
/// `teamlog client get-range` prints it.
pub fn listing_digest(pairs: &BTreeMap<Bytes, Bytes>) -> String {
    let mut crc = 0u32;
    for (key, value) in pairs {
        let line = format!("{} = {}\n", escape(key), escape(value));
        crc = crc32c::crc32c_append(crc, line.as_bytes());
    }
    format!("{crc:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorder_buckets_by_second_and_a_partial_second_says_so() {
        let recorder = Recorder::new(Instant::now());
        recorder.record_commit(Duration::from_micros(300), 4);
        recorder.record_commit(Duration::from_micros(900), 2);
        recorder.record_read(Duration::from_micros(100));
        recorder.record_error("read:future_version");
        let m = recorder.finish();
        assert_eq!(m.series.len(), 1);
        assert_eq!(
            (
                m.series[0].commits,
                m.series[0].mutations,
                m.series[0].reads
            ),
            (2, 6, 1)
        );
        assert_eq!(m.commit_latency.count, 2);
        assert!(m.commit_latency.min_us <= 300 && m.commit_latency.max_us >= 899);
        assert_eq!(m.errors["read:future_version"], 1);
        assert!(m.series[0].seconds > 0.0 && m.series[0].seconds < 1.0);
    }
}

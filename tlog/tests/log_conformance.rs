//! Conformance suite for the store trait and the segmented log, run against
//! both `FileStore` (in a temporary directory) and `MemStore`.
//!
//! Each test body is written once, generic over a [`Disk`]: something that
//! hands out a fresh store over the same underlying data, which is how a test
//! "restarts the process". Randomized tests print their seed; rerun one with
//! `TEAMLOG_SEED=<seed>`.

use bytes::Bytes;
use tlog::file_store::FileStore;
use tlog::log::{
    ChecksummedPayload, LogConfig, LogError, LogPosition, RecordLocation, SegmentLog,
    FIRST_RECORD_OFFSET,
};
use tlog::store::{LogStore, StoreError};

mod common;

use common::*;

fn store_semantics<D: Disk>() {
    let disk = D::new();
    let store = disk.store();
    assert!(store.list().unwrap().is_empty());
    store.create(3, 8192).unwrap();
    store.create(1, 4096).unwrap();
    assert!(matches!(
        store.create(3, 8192),
        Err(StoreError::AlreadyExists(3))
    ));
    assert_eq!(store.list().unwrap(), vec![1, 3]);
    assert_eq!(store.capacity(3).unwrap(), 8192);

    let mut buf = vec![0xffu8; 100];
    assert_eq!(store.read_at(1, 0, &mut buf).unwrap(), 100);
    assert!(buf.iter().all(|&b| b == 0), "a new segment reads as zeros");

    store.write_at(1, 4000, b"hello").unwrap();
    store.sync(1).unwrap();
    let mut buf = [0u8; 5];
    assert_eq!(store.read_at(1, 4000, &mut buf).unwrap(), 5);
    assert_eq!(&buf, b"hello");
    let mut tail = [0u8; 200];
    assert_eq!(
        store.read_at(1, 4000, &mut tail).unwrap(),
        96,
        "short read at the end"
    );
    assert_eq!(store.read_at(1, 4096, &mut tail).unwrap(), 0);
    assert!(matches!(
        store.read_at(1, 4097, &mut tail),
        Err(StoreError::OutOfBounds { .. })
    ));
    assert!(matches!(
        store.write_at(1, 4094, b"abc"),
        Err(StoreError::OutOfBounds { .. })
    ));
    assert!(matches!(
        store.read_at(2, 0, &mut tail),
        Err(StoreError::NoSuchSegment(2))
    ));
    assert!(matches!(
        store.write_at(2, 0, b"x"),
        Err(StoreError::NoSuchSegment(2))
    ));
    assert!(matches!(store.sync(2), Err(StoreError::NoSuchSegment(2))));
    assert!(!store.describe(1).is_empty());

    let reopened = disk.store();
    assert_eq!(reopened.list().unwrap(), vec![1, 3]);
    let mut buf = [0u8; 5];
    reopened.read_at(1, 4000, &mut buf).unwrap();
    assert_eq!(&buf, b"hello", "synced data survives a reopen");

    reopened.remove(3).unwrap();
    assert!(matches!(
        reopened.remove(3),
        Err(StoreError::NoSuchSegment(3))
    ));
    assert_eq!(reopened.list().unwrap(), vec![1]);
    assert_eq!(disk.store().list().unwrap(), vec![1], "removal is durable");
}

fn reopen_yields_same_records<D: Disk>() {
    let disk = D::new();
    let (mut log, seen) = open(&disk, SMALL).unwrap();
    assert!(seen.is_empty());
    let mut written = Vec::new();
    for i in 0..20 {
        let p = payload(i, i * 7 % 90);
        written.push((log.append(&p).unwrap(), p));
        if i % 6 == 5 {
            log.sync().unwrap();
        }
    }
    log.sync().unwrap();
    let end = log.durable_end();
    drop(log);
    let (log, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(seen, written);
    assert_eq!(log.durable_end(), end);
    for w in written.windows(2) {
        assert_eq!(w[0].0.end().offset, w[1].0.offset, "records are contiguous");
        assert_eq!(w[0].0.offset % 8, 0);
    }
    let reader = log.reader();
    for (loc, p) in &written {
        assert_eq!(&reader.read(*loc).unwrap()[..], &p[..]);
    }
}

/// Shared payloads (large ones written from their own buffers, whole or in
/// parts) land like copied ones, on both sides of the size where copying
/// stops.
fn shared_payloads_read_back_like_copied_ones<D: Disk>() {
    let disk = D::new();
    let config = LogConfig {
        segment_size: 64 << 10,
    };
    let (mut log, _) = open(&disk, config.clone()).unwrap();
    let sizes = [0, 13, 2047, 2048, 2049, 5000, 7, 9000];
    let mut written = Vec::new();
    for (i, len) in sizes.into_iter().enumerate() {
        let p = payload(i, len);
        let whole = Bytes::from(p.clone());
        let location = match i % 3 {
            0 => log.append_shared(ChecksummedPayload::new(whole)),
            1 => log.append(&p),
            _ => {
                let (a, b) = (len / 3, len - len / 4);
                let parts = vec![whole.slice(..a), whole.slice(a..b), whole.slice(b..)];
                log.append_shared(ChecksummedPayload::from_parts(parts))
            }
        }
        .unwrap();
        written.push((location, p));
    }
    log.sync().unwrap();
    let reader = log.reader();
    for (location, p) in &written {
        assert_eq!(&reader.read(*location).unwrap()[..], &p[..]);
    }
    drop((log, reader));
    let (_, seen) = open(&disk, config).unwrap();
    assert_eq!(seen, written);
}

/// Appends `n` records of varying sizes, rolling as needed, syncing every
/// `sync_every`; returns what was written.
fn fill<S: LogStore>(
    log: &mut SegmentLog<S>,
    first: usize,
    n: usize,
    sync_every: usize,
) -> Records {
    let mut written = Vec::new();
    for i in first..first + n {
        let p = payload(i, 50 + i * 37 % 400);
        if log.needs_roll(p.len()) {
            log.roll().unwrap();
        }
        written.push((log.append(&p).unwrap(), p));
        if i % sync_every == sync_every - 1 {
            log.sync().unwrap();
        }
    }
    log.sync().unwrap();
    written
}

fn records_span_segments<D: Disk>() {
    let disk = D::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let first_segment = log.current_segment();
    let written = fill(&mut log, 0, 120, 4);
    assert!(log.segments().len() > 5, "segments: {:?}", log.segments());
    assert_eq!(log.disk_bytes(), 4096 * log.segments().len() as u64);
    let reader = log.reader();
    let start = LogPosition {
        segment: first_segment,
        offset: FIRST_RECORD_OFFSET,
    };
    assert_eq!(reader.begin(), start);
    let scanned: Records = reader
        .scan(start, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(l, p)| (l, p.to_vec()))
        .collect();
    assert_eq!(scanned, written, "one scan follows every segment");

    let mut pos = start;
    let mut chunked = Vec::new();
    loop {
        let batch = reader.scan(pos, 700).unwrap();
        let Some((last, _)) = batch.last() else { break };
        let bytes: u64 = batch.iter().map(|(l, _)| u64::from(l.len)).sum();
        assert!(
            batch.len() == 1 || bytes - u64::from(last.len) < 700,
            "scan overshot max_bytes"
        );
        pos = last.end();
        chunked.extend(batch.into_iter().map(|(l, p)| (l, p.to_vec())));
    }
    assert_eq!(chunked, written, "scans resumed at `end()` cross seals");
    assert!(reader.scan(pos, 1).unwrap().is_empty());

    drop((log, reader));
    let (mut log, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(seen, written);
    let more = fill(&mut log, 120, 30, 7);
    drop(log);
    let (_, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(seen, [written, more].concat());
}

fn reader_sees_only_synced<D: Disk>() {
    let disk = D::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let reader = log.reader();
    let start = reader.begin();
    let a = log.append(b"alpha").unwrap();
    assert!(reader.scan(start, usize::MAX).unwrap().is_empty());
    assert!(matches!(reader.read(a), Err(LogError::NotDurable { .. })));
    assert_eq!(reader.durable_end(), start);
    log.sync().unwrap();
    assert_eq!(reader.durable_end(), a.end());
    assert_eq!(&reader.read(a).unwrap()[..], b"alpha");
    let b = log.append(b"beta").unwrap();
    let seen = reader.scan(start, usize::MAX).unwrap();
    assert_eq!(seen.len(), 1, "the unsynced record stays invisible");
    assert!(matches!(reader.read(b), Err(LogError::NotDurable { .. })));
    assert!(matches!(
        reader.read(RecordLocation {
            segment: log.current_segment() + 1,
            offset: FIRST_RECORD_OFFSET,
            len: 40
        }),
        Err(LogError::NotDurable { .. })
    ));
    log.roll().unwrap();
    assert_eq!(
        &reader.read(b).unwrap()[..],
        b"beta",
        "roll syncs what was buffered"
    );
}

/// Records written (not synced) while an earlier write awaits its sync
/// become durable when a syncer on another thread syncs their point; a
/// point synced late never moves the durable end back.
fn writes_synced_from_another_thread<D: Disk>() {
    let disk = D::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let reader = log.reader();
    let start = reader.durable_end();
    let a = log.append(b"alpha").unwrap();
    let first = log.write().unwrap().expect("alpha to write");
    let b = log.append(b"beta").unwrap();
    let second = log.write().unwrap().expect("beta to write");
    assert_eq!(log.write().unwrap(), None, "nothing new to write");
    assert_eq!((first.end(), second.end()), (a.end(), b.end()));
    assert_eq!(reader.durable_end(), start, "written is not durable");
    let syncer = log.syncer();
    std::thread::spawn(move || syncer.sync(second))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(reader.durable_end(), b.end());
    log.syncer().sync(first).unwrap();
    assert_eq!(
        reader.durable_end(),
        b.end(),
        "an older point moved it back"
    );
    assert_eq!(&reader.read(a).unwrap()[..], b"alpha");
    drop(log);
    let (_, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(seen, vec![(a, b"alpha".to_vec()), (b, b"beta".to_vec())]);
}

fn concurrent_reader<D: Disk>() {
    let disk = D::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let reader = log.reader();
    const N: usize = 600;
    let handle = std::thread::spawn(move || {
        let mut pos = reader.begin();
        let mut got = 0;
        while got < N {
            let batch = reader.scan(pos, 1000).unwrap();
            let Some((last, _)) = batch.last() else {
                std::thread::yield_now();
                continue;
            };
            pos = last.end();
            for (_, p) in batch {
                assert_eq!(p.to_vec(), payload(got, 50 + got * 37 % 400));
                got += 1;
            }
        }
        got
    });
    fill(&mut log, 0, N, 3);
    assert_eq!(handle.join().unwrap(), N);
}

fn remove_segments_before<D: Disk>() {
    let disk = D::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let written = fill(&mut log, 0, 60, 5);
    let segments = log.segments();
    assert!(segments.len() >= 4);
    let cut = segments[2];
    let reader = log.reader();
    let old = written[0].0;
    log.remove_segments_before(cut).unwrap();
    assert_eq!(log.segments(), segments[2..].to_vec());
    assert_eq!(disk.store().list().unwrap(), segments[2..].to_vec());
    assert!(matches!(reader.read(old), Err(LogError::SegmentRemoved(s)) if s == old.segment));
    assert!(matches!(
        reader.scan(
            LogPosition {
                segment: old.segment,
                offset: old.offset
            },
            10
        ),
        Err(LogError::SegmentRemoved(_))
    ));
    assert_eq!(reader.begin().segment, cut);

    log.remove_segments_before(u64::MAX).unwrap();
    assert_eq!(
        log.segments(),
        vec![log.current_segment()],
        "the current segment stays"
    );
    let current = log.current_segment();
    log.roll().unwrap();
    log.remove_segments_before(log.current_segment()).unwrap();
    drop(log);
    let (mut log, seen) = open(&disk, SMALL).unwrap();
    assert!(seen.is_empty());
    assert_eq!(log.segments(), vec![current + 1]);
    let loc = log.append(b"after removal").unwrap();
    log.sync().unwrap();
    drop(log);
    let (_, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(
        seen,
        vec![(loc, b"after removal".to_vec())],
        "sequences continue across removal"
    );
}

fn record_too_large<D: Disk>() {
    let disk = D::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let max = LogConfig::max_payload(SMALL.segment_size) as usize;
    assert!(matches!(
        log.append(&vec![1u8; max + 1]),
        Err(LogError::RecordTooLarge { len, .. }) if len == max + 1
    ));
    assert!(!log.needs_roll(max));
    let loc = log.append(&vec![2u8; max]).unwrap();
    assert!(log.needs_roll(0), "a full segment needs a roll");
    assert!(matches!(log.append(b""), Err(LogError::SegmentFull { .. })));
    log.roll().unwrap();
    let small = log.append(b"").unwrap();
    log.sync().unwrap();
    drop(log);
    let (_, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(seen, vec![(loc, vec![2u8; max]), (small, Vec::new())]);
    assert!(matches!(
        SegmentLog::open(disk.store(), LogConfig { segment_size: 100 }, |_, _| Ok(())),
        Err(LogError::InvalidConfig(_))
    ));
}

/// A torn half record after the last synced one is cut off; appends
/// continue at its offset and the next open is clean.
fn torn_tail_truncated<D: Disk>() {
    let disk = D::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let a = log.append(&payload(0, 100)).unwrap();
    let b = log.append(&payload(1, 300)).unwrap();
    log.sync().unwrap();
    let c = log.append(&payload(2, 500)).unwrap();
    log.sync().unwrap();
    drop(log);
    // The write of c persisted only its first half.
    let half = u64::from(c.len) / 2;
    zero(
        &*disk.store(),
        c.segment,
        c.offset + half,
        (u64::from(c.len) - half) as usize,
    );

    let (mut log, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(seen, vec![(a, payload(0, 100)), (b, payload(1, 300))]);
    assert_eq!(log.durable_end(), b.end());
    let d = log.append(b"after the tear").unwrap();
    assert_eq!(d.offset, c.offset, "appends continue at the torn offset");
    log.sync().unwrap();
    drop(log);
    let (_, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2], (d, b"after the tear".to_vec()));
}

/// Pages of an unsynced batch persist out of order: the batch's first record
/// is missing while later ones of the same batch are intact. That is a torn
/// tail, not corruption.
fn torn_tail_out_of_order<D: Disk>() {
    let disk = D::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let a = log.append(&payload(0, 64)).unwrap();
    log.sync().unwrap();
    let batch: Vec<RecordLocation> = (1..4)
        .map(|i| log.append(&payload(i, 64)).unwrap())
        .collect();
    log.sync().unwrap();
    drop(log);
    zero(&*disk.store(), batch[0].segment, batch[0].offset, 8);
    let (mut log, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(seen, vec![(a, payload(0, 64))]);
    // Same size as the lost record, so the stale next record would sit
    // exactly where the log continues, with the next sequence number.
    let e = log.append(&payload(9, 64)).unwrap();
    assert_eq!(e, batch[0]);
    log.sync().unwrap();
    drop(log);
    let (_, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(
        seen.len(),
        2,
        "the stale later records were zeroed: {seen:?}"
    );
}

/// A flipped byte in a synced batch that a later synced batch follows is
/// corruption, reported with its place, and the log refuses to open.
fn corrupt_in_last_segment<D: Disk>() {
    let disk = D::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    log.append(&payload(0, 80)).unwrap();
    let victim = log.append(&payload(1, 80)).unwrap();
    log.sync().unwrap();
    log.append(&payload(2, 80)).unwrap();
    log.sync().unwrap();
    drop(log);
    flip(&*disk.store(), victim.segment, victim.offset + 40);
    expect_corrupt(open(&disk, SMALL), victim.segment, victim.offset);
    // Refusing to open must not have truncated anything.
    flip(&*disk.store(), victim.segment, victim.offset + 40);
    assert_eq!(open(&disk, SMALL).unwrap().1.len(), 3);
}

fn corrupt_in_earlier_segment<D: Disk>() {
    let disk = D::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let written = fill(&mut log, 0, 40, 100);
    drop(log);
    let victim = written[3].0;
    assert_ne!(victim.segment, written.last().unwrap().0.segment);
    flip(&*disk.store(), victim.segment, victim.offset + 33);
    expect_corrupt(open(&disk, SMALL), victim.segment, victim.offset);
    flip(&*disk.store(), victim.segment, victim.offset + 33);

    // The last record of a sealed segment lost entirely (zeroed) is
    // corruption too: the segment must end with its seal.
    let first_segment = written[0].0.segment;
    let last_in_first = written
        .iter()
        .rfind(|(l, _)| l.segment == first_segment)
        .unwrap()
        .0;
    let store = disk.store();
    zero(&*store, last_in_first.segment, last_in_first.offset, 64);
    expect_corrupt(
        open(&disk, SMALL),
        last_in_first.segment,
        last_in_first.offset,
    );
}

fn corrupt_segment_header<D: Disk>() {
    let disk = D::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let written = fill(&mut log, 0, 30, 4);
    drop(log);
    let first = written[0].0.segment;
    flip(&*disk.store(), first, 20);
    expect_corrupt(open(&disk, SMALL), first, 0);
    flip(&*disk.store(), first, 20);

    // A missing middle segment is reported, not skipped.
    let store = disk.store();
    let ids = store.list().unwrap();
    assert!(ids.len() >= 3);
    store.remove(ids[1]).unwrap();
    expect_corrupt(open(&disk, SMALL), ids[1], 0);
}

/// A crash between creating a segment and syncing its header leaves a last
/// segment without its own header: zeros, or a recycled file's stale header
/// and records. It is removed and the log continues.
fn interrupted_segment_creation<D: Disk>() {
    let disk = D::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let written = fill(&mut log, 0, 12, 3);
    let last = log.roll().unwrap();
    drop(log);
    zero(&*disk.store(), last, 0, 64);
    let (mut log, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(seen, written);
    assert_eq!(log.current_segment(), last, "the segment is created again");
    let more = fill(&mut log, 12, 3, 1);
    drop(log);
    let everything = [written, more].concat();
    assert_eq!(open(&disk, SMALL).unwrap().1, everything);

    // A recycled file, put in place before the crash but never headed.
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let oldest = log.segments()[0];
    let last = log.roll().unwrap();
    drop(log);
    let store = disk.store();
    let mut stale = vec![0u8; 1024];
    store.read_at(oldest, 0, &mut stale).unwrap();
    store.write_at(last, 0, &stale).unwrap();
    store.sync(last).unwrap();
    let (log, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(seen, everything);
    assert_eq!(log.current_segment(), last, "the segment is created again");
    drop(log);

    // The same bytes with data behind the header are corruption.
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let current = log.current_segment();
    log.append(b"x").unwrap();
    log.sync().unwrap();
    drop(log);
    zero(&*disk.store(), current, 0, 64);
    expect_corrupt(open(&disk, SMALL), current, 0);
}

macro_rules! conformance {
    ($module:ident, $disk:ty) => {
        mod $module {
            use super::*;
            #[test]
            fn store_semantics() {
                super::store_semantics::<$disk>()
            }
            #[test]
            fn reopen_yields_same_records() {
                super::reopen_yields_same_records::<$disk>()
            }
            #[test]
            fn shared_payloads_read_back_like_copied_ones() {
                super::shared_payloads_read_back_like_copied_ones::<$disk>()
            }
            #[test]
            fn records_span_segments() {
                super::records_span_segments::<$disk>()
            }
            #[test]
            fn reader_sees_only_synced() {
                super::reader_sees_only_synced::<$disk>()
            }
            #[test]
            fn writes_synced_from_another_thread() {
                super::writes_synced_from_another_thread::<$disk>()
            }
            #[test]
            fn concurrent_reader() {
                super::concurrent_reader::<$disk>()
            }
            #[test]
            fn remove_segments_before() {
                super::remove_segments_before::<$disk>()
            }
            #[test]
            fn record_too_large() {
                super::record_too_large::<$disk>()
            }
            #[test]
            fn torn_tail_truncated() {
                super::torn_tail_truncated::<$disk>()
            }
            #[test]
            fn torn_tail_out_of_order() {
                super::torn_tail_out_of_order::<$disk>()
            }
            #[test]
            fn corrupt_in_last_segment() {
                super::corrupt_in_last_segment::<$disk>()
            }
            #[test]
            fn corrupt_in_earlier_segment() {
                super::corrupt_in_earlier_segment::<$disk>()
            }
            #[test]
            fn corrupt_segment_header() {
                super::corrupt_segment_header::<$disk>()
            }
            #[test]
            fn interrupted_segment_creation() {
                super::interrupted_segment_creation::<$disk>()
            }
        }
    };
}

conformance!(file, FileDisk);
conformance!(mem, MemDisk);

#[test]
fn file_store_ignores_foreign_files_and_removes_interrupted_creations() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"hi").unwrap();
    std::fs::write(dir.path().join("00000000000000000007.seg.tmp"), b"partial").unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(!dir.path().join("00000000000000000007.seg.tmp").exists());
    store.create(7, 4096).unwrap();
    assert_eq!(store.describe(7), store.path(7).display().to_string());
    assert_eq!(std::fs::metadata(store.path(7)).unwrap().len(), 4096);
}

#[test]
fn file_store_recycles_removed_segments_as_spares() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    for id in 1..=4 {
        store.create(id, 4096).unwrap();
        store.write_at(id, 0, &[id as u8; 8]).unwrap();
    }
    // Creation may start a background fill; removals then top the pool up.
    for id in 1..=4 {
        store.remove(id).unwrap();
        assert!(!store.path(id).exists());
    }
    assert!(store.spare_count() <= tlog::file_store::MAX_SPARES);
    let spares_on_disk = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("spare-")
            })
            .count()
    };
    let before = store.spare_count();
    assert!(before >= 1);
    drop(store);
    // Spares outlive the process; a new segment reuses one (stale bytes and all).
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(store.spare_count(), spares_on_disk(dir.path()));
    store.create(9, 4096).unwrap();
    assert_eq!(std::fs::metadata(store.path(9)).unwrap().len(), 4096);
    let mut head = [0u8; 8];
    store.read_at(9, 0, &mut head).unwrap();
    assert!(
        head.iter().all(|b| *b == head[0]),
        "a recycled file keeps its old bytes"
    );
    assert_eq!(store.list().unwrap(), vec![9]);
}

//! The log under simulated crashes (the memory store's power loss and
//! failed syncs), and records written while earlier ones sync on another
//! thread. Randomized tests print their seed; rerun one with
//! `TEAMLOG_SEED=<seed>`.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tlog::log::{LogConfig, LogError, SyncPoint};
use tlog::mem_store::MemStore;
use tlog::store::{LogStore, SegmentId};

#[test]
fn mem_crash_keeps_synced_data_and_may_lose_the_rest() {
    let mem = MemStore::new();
    mem.create(1, 3 * 4096).unwrap();
    mem.write_at(1, 0, &[1u8; 4096]).unwrap();
    mem.sync(1).unwrap();
    mem.write_at(1, 4096, &[2u8; 8192]).unwrap();
    assert_eq!(mem.dirty_pages(1).unwrap(), 2);
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..64 {
        let m = MemStore::new();
        m.create(1, 3 * 4096).unwrap();
        m.write_at(1, 0, &[1u8; 4096]).unwrap();
        m.sync(1).unwrap();
        m.write_at(1, 4096, &[2u8; 8192]).unwrap();
        m.crash(seed);
        let mut image = vec![0u8; 3 * 4096];
        m.read_at(1, 0, &mut image).unwrap();
        assert!(
            image[..4096].iter().all(|&b| b == 1),
            "synced page lost (seed {seed})"
        );
        let kept = |page: &[u8]| page.iter().filter(|&&b| b == 2).count();
        outcomes.insert((kept(&image[4096..8192]), kept(&image[8192..])));
        assert_eq!(m.dirty_pages(1).unwrap(), 0);
    }
    assert!(outcomes.contains(&(0, 0)) && outcomes.contains(&(4096, 4096)));
    assert!(outcomes.contains(&(0, 4096)), "pages persist out of order");
    assert!(
        outcomes
            .iter()
            .any(|&(a, b)| (a > 0 && a < 4096) || (b > 0 && b < 4096)),
        "torn pages"
    );

    mem.corrupt(1, 10, 2).unwrap();
    let mut b = [0u8; 3];
    mem.read_at(1, 9, &mut b).unwrap();
    assert_eq!(b, [1, !1, !1]);
}

/// A failed sync poisons the log: this and every later call fail with
/// Poisoned, and the sync is not retried.
#[test]
fn sync_failure_poisons() {
    let disk = MemDisk::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let a = log.append(b"durable").unwrap();
    log.sync().unwrap();
    log.append(b"doomed").unwrap();
    disk.mem.fail_next_sync();
    assert!(matches!(log.sync(), Err(LogError::Poisoned)));
    assert!(log.is_poisoned());
    assert!(log.poison_cause().unwrap().contains("injected"));
    assert!(matches!(log.append(b"more"), Err(LogError::Poisoned)));
    assert!(matches!(log.sync(), Err(LogError::Poisoned)));
    assert!(matches!(log.roll(), Err(LogError::Poisoned)));
    assert!(matches!(
        log.remove_segments_before(9),
        Err(LogError::Poisoned)
    ));
    assert_eq!(log.durable_end(), a.end(), "nothing became durable");
    assert_eq!(
        log.reader()
            .scan(log.reader().begin(), usize::MAX)
            .unwrap()
            .len(),
        1
    );
    drop(log);
    // The failed batch never became durable: a crash drops it (or part).
    disk.mem.crash(7);
    let (_, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(seen[0], (a, b"durable".to_vec()));
    assert!(seen.len() <= 2);
}

/// A roll on a full disk neither poisons nor loses anything: it can be
/// retried once space is back, and a crash while the log waits for space
/// recovers every record (the sealed segment is the tail; recovery starts
/// the next).
#[test]
fn a_roll_without_space_waits_and_loses_nothing() {
    let disk = MemDisk::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let first = log.append(b"before the full disk").unwrap();
    disk.mem.fill();
    assert!(matches!(log.roll(), Err(LogError::OutOfSpace { .. })));
    assert!(matches!(log.roll(), Err(LogError::OutOfSpace { .. })));
    assert!(!log.is_poisoned());

    // A crash while waiting: the record is there, and the log opens.
    drop(log);
    disk.mem.crash(3);
    disk.mem.limit_segments(None);
    let (mut log, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(seen, vec![(first, b"before the full disk".to_vec())]);

    // Without a crash: once space is back the same roll goes through.
    disk.mem.fill();
    let second = log.append(b"sealed in before the wait").unwrap();
    assert!(matches!(log.roll(), Err(LogError::OutOfSpace { .. })));
    let seen = append_once_space_is_back(&disk, log, b"in the next segment");
    let payloads: Vec<&[u8]> = seen.iter().map(|(_, p)| p.as_slice()).collect();
    assert_eq!(
        payloads,
        [
            &b"before the full disk"[..],
            b"sealed in before the wait",
            b"in the next segment"
        ]
    );
    assert_eq!(seen[1].0, second);
}

/// Gives the disk room again, rolls and appends `payload` in the new
/// segment; then every record the log holds, as it reopens.
fn append_once_space_is_back(
    disk: &MemDisk,
    mut log: tlog::log::SegmentLog<MemStore>,
    payload: &[u8],
) -> Records {
    disk.mem.limit_segments(None);
    let next = log.roll().unwrap();
    let appended = log.append(payload).unwrap();
    log.sync().unwrap();
    assert_eq!(appended.segment, next);
    drop(log);
    open(disk, SMALL).unwrap().1
}

/// A log whose sealed tail has no room for the next segment (a crash while
/// the disk was full, and it still is) opens all the same, with every
/// record readable: appending waits for a roll, which goes through once
/// space is back.
#[test]
fn a_log_opens_on_a_full_disk_and_rolls_once_space_is_back() {
    let disk = MemDisk::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let first = log.append(b"before the full disk").unwrap();
    disk.mem.fill();
    assert!(matches!(log.roll(), Err(LogError::OutOfSpace { .. })));
    drop(log);
    disk.mem.crash(5);

    let (mut log, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(seen, vec![(first, b"before the full disk".to_vec())]);
    assert!(log.needs_roll(1), "a sealed segment takes no more records");
    assert!(matches!(log.roll(), Err(LogError::OutOfSpace { .. })));
    assert!(!log.is_poisoned());

    let seen = append_once_space_is_back(&disk, log, b"after the space came back");
    let payloads: Vec<&[u8]> = seen.iter().map(|(_, p)| p.as_slice()).collect();
    assert_eq!(
        payloads,
        [&b"before the full disk"[..], b"after the space came back"]
    );
}

/// A sync that fails on another thread poisons the log for its writer, and
/// is not retried.
#[test]
fn a_failed_sync_on_another_thread_poisons_the_writer() {
    let disk = MemDisk::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    log.append(b"doomed").unwrap();
    let point = log.write().unwrap().expect("a record to write");
    disk.mem.fail_next_sync();
    let syncer = log.syncer();
    let failed = std::thread::spawn(move || syncer.sync(point))
        .join()
        .unwrap();
    assert!(matches!(failed, Err(LogError::Poisoned)));
    assert!(log.poison_cause().unwrap().contains("injected"));
    assert!(matches!(log.append(b"more"), Err(LogError::Poisoned)));
    assert!(matches!(log.write(), Err(LogError::Poisoned)));
    assert!(matches!(log.syncer().sync(point), Err(LogError::Poisoned)));
}

/// A batch written while the one before it is still unsynced carries the
/// durable end from before both, so when the earlier batch's pages are lost
/// and the later one's persist, recovery sees a torn tail, not corruption.
#[test]
fn a_batch_written_during_a_sync_names_the_durable_end_before_it() {
    let disk = MemDisk::new();
    let (mut log, _) = open(&disk, SMALL).unwrap();
    let a = log.append(&payload(0, 64)).unwrap();
    log.sync().unwrap();
    let b = log.append(&payload(1, 64)).unwrap();
    log.write().unwrap();
    log.append(&payload(2, 64)).unwrap();
    log.write().unwrap();
    drop(log);
    zero(&*disk.store(), b.segment, b.offset, 8);
    let (_, seen) = open(&disk, SMALL).unwrap();
    assert_eq!(seen, vec![(a, payload(0, 64))]);
}

/// Random appends, writes, syncs (of the latest write or, as another
/// thread's syncer would, of an earlier one), rolls and removals, crashes at
/// random points:
/// every synced record is recovered exactly and in order, nothing that was
/// never appended appears, and recovery never reports corruption.
#[test]
fn crash_recovery_property() {
    let master = seed();
    for case in 0..150u64 {
        let case_seed = master.wrapping_add(case);
        crash_case(case_seed);
    }
}

fn crash_case(case_seed: u64) {
    let mut rng = StdRng::seed_from_u64(case_seed);
    let disk = MemDisk::new();
    let config = LogConfig {
        segment_size: [4096, 16384, 65536][rng.random_range(0..3)],
    };
    // Everything appended, oldest live first; the first `durable` are synced.
    let mut appended: Vec<Vec<u8>> = Vec::new();
    let mut segment_of: Vec<SegmentId> = Vec::new();
    let mut durable = 0usize;
    let mut next_id = 0usize;
    for round in 0..4 {
        let (mut log, seen) = match open(&disk, config.clone()) {
            Ok(x) => x,
            Err(e) => panic!("case seed {case_seed}, round {round}: recovery failed: {e}"),
        };
        let payloads: Vec<&Vec<u8>> = seen.iter().map(|(_, p)| p).collect();
        assert!(
            seen.len() >= durable && seen.len() <= appended.len(),
            "case seed {case_seed}, round {round}: recovered {} records, {durable} were synced, {} appended",
            seen.len(),
            appended.len()
        );
        assert!(
            payloads.iter().zip(&appended).all(|(a, b)| *a == b),
            "case seed {case_seed}, round {round}: recovered records differ from what was appended"
        );
        appended.truncate(seen.len());
        segment_of.truncate(seen.len());
        durable = seen.len();
        // Written, unsynced points, with how many records each covers.
        let mut written: Vec<(SyncPoint, usize)> = Vec::new();
        for _ in 0..rng.random_range(1..120) {
            match rng.random_range(0..100) {
                0..=74 => {
                    let len = rng.random_range(0..2000);
                    let p = payload(next_id, len);
                    next_id += 1;
                    if log.needs_roll(len) {
                        log.roll().unwrap();
                        durable = appended.len();
                    }
                    let loc = log.append(&p).unwrap();
                    appended.push(p);
                    segment_of.push(loc.segment);
                }
                75..=84 => {
                    if let Some(point) = log.write().unwrap() {
                        written.push((point, appended.len()));
                    }
                }
                85..=90 if !written.is_empty() => {
                    let (point, covered) = written.remove(rng.random_range(0..written.len()));
                    log.syncer().sync(point).unwrap();
                    durable = durable.max(covered);
                }
                85..=96 => {
                    log.sync().unwrap();
                    durable = appended.len();
                }
                _ => {
                    let cut = log.current_segment().saturating_sub(rng.random_range(0..3));
                    log.remove_segments_before(cut).unwrap();
                    let gone = segment_of.iter().take_while(|&&s| s < cut).count();
                    appended.drain(..gone);
                    segment_of.drain(..gone);
                    durable -= gone.min(durable);
                    for (_, covered) in &mut written {
                        *covered = covered.saturating_sub(gone);
                    }
                }
            }
        }
        if rng.random_bool(0.7) {
            // Crash in the middle of a sync: the batch was handed to the
            // store but never made durable, so any subset of its pages may
            // survive. (Otherwise the buffered batch never left memory.)
            disk.mem.fail_next_sync();
            let result = log.sync();
            assert!(log.buffered_bytes() == 0 || result.is_err());
        }
        drop(log);
        disk.mem.crash(rng.random());
    }
}

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Held ranges covering every key.
fn everything() -> Vec<(Bytes, Bytes)> {
    vec![(b(""), Bytes::from_static(USER_KEYS_END))]
}

fn set(key: &str, value: &str) -> Mutation {
    Mutation::SetValue {
        key: b(key),
        value: b(value),
    }
}

fn append(key: &str, suffix: &str) -> Mutation {
    Mutation::AppendIfFits {
        key: b(key),
        suffix: b(suffix),
    }
}

fn clear(begin: &str, end: &str) -> Mutation {
    Mutation::ClearRange {
        begin: b(begin),
        end: b(end),
    }
}

type Kv = BTreeMap<Bytes, Bytes>;

fn apply(kv: &mut Kv, mutation: &Mutation) {
    match mutation {
        Mutation::SetValue { key, value } => {
            kv.insert(key.clone(), value.clone());
        }
        Mutation::AppendIfFits { key, suffix } => {
            let mut value = kv.get(key).map(|v| v.to_vec()).unwrap_or_default();
            value.extend_from_slice(suffix);
            kv.insert(key.clone(), Bytes::from(value));
        }
        Mutation::ClearRange { begin, end } => {
            let doomed: Vec<Bytes> = kv
                .range(begin.clone()..end.clone())
                .map(|(k, _)| k.clone())
                .collect();
            for key in doomed {
                kv.remove(&key);
            }
        }
    }
}

fn within(kv: &Kv, begin: &str, end: &str) -> Kv {
    kv.range(b(begin)..b(end))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Reads a page of `request` from the source's state at `version`, at
/// most `limit` pairs, as a storage server's range read answers.
fn read_page(source: &Kv, request: &PageRequest, version: Version, limit: usize) -> Page {
    let mut pairs: Vec<(Bytes, Bytes)> = source
        .range(request.begin.clone()..request.end.clone())
        .map(|(k, v)| (k.clone(), v.clone()))
        .take(limit + 1)
        .collect();
    let more = pairs.len() > limit;
    pairs.truncate(limit);
    let end = match pairs.last() {
        Some((key, _)) if more => proto::key_after(key),
        _ => request.end.clone(),
    };
    Page {
        begin: request.begin.clone(),
        end,
        version,
        pairs,
    }
}

const KEYS: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let key = proptest::sample::select(KEYS.to_vec());
    prop_oneof![
        (key.clone(), "[x-z]{1,2}").prop_map(|(k, v)| set(k, &v)),
        (key.clone(), "[x-z]").prop_map(|(k, s)| append(k, &s)),
        (key.clone(), key).prop_map(|(x, y)| {
            let (lo, hi) = if x <= y { (x, y) } else { (y, x) };
            clear(lo, &format!("{hi}\0"))
        }),
    ]
}

/// One step of the destination's life.
#[derive(Clone, Debug)]
enum Step {
    /// The next version's mutation arrives and is applied.
    Apply,
    /// The fetch reads a page of at most this many pairs, at the newest
    /// committed version plus this lag's worth fewer (never below the
    /// request's floor).
    Fetch { limit: usize, lag: u64 },
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Apply),
        1 => (1usize..4, 0u64..4).prop_map(|(limit, lag)| Step::Fetch { limit, lag }),
    ]
}

/// Reads the next page the copy asks for, up to `end`, at `version`.
fn deliver_next(adding: &mut AddingRanges, end: &str, version: u64, pairs: &[(&str, &str)]) {
    let request = adding.next_request().unwrap();
    let page = Page {
        begin: request.begin.clone(),
        end: b(end),
        version: Version(version),
        pairs: pairs.iter().map(|(k, v)| (b(k), b(v))).collect(),
    };
    assert!(adding.deliver(&request, page));
}

proptest! {
    /// Whatever the order of applies and page reads, the versions the
    /// pages were read at and the buffer's bound, once every page is
    /// installed the destination holds exactly what the source holds.
    #[test]
    fn an_added_range_ends_equal_to_the_source(
        history in proptest::collection::vec(arb_mutation(), 1..40),
        steps in proptest::collection::vec(arb_step(), 1..120),
        stale in proptest::collection::vec(arb_mutation(), 0..4),
        buffer_limit in prop_oneof![Just(3u64), Just(1_000_000u64)],
    ) {
        let (range_begin, range_end) = ("b", "g");
        // Source states by version: version i + 1 holds history[..=i].
        let mut source_at = vec![Kv::new()];
        for m in &history {
            let mut next = source_at.last().unwrap().clone();
            apply(&mut next, m);
            source_at.push(next);
        }
        let newest = history.len() as u64;
        // The destination held something else there before.
        let mut dest = Kv::new();
        for m in &stale {
            apply(&mut dest, m);
        }
        let mut adding = AddingRanges::new(buffer_limit);
        adding.reconcile(Version::ZERO, &[(b(range_begin), b(range_end))], &everything(), Vec::new());
        let mut applied = 0u64;
        let fetch = |adding: &mut AddingRanges, limit: usize, version: u64| {
            if let Some(request) = adding.next_request() {
                let version = version.max(request.min_version.0).min(newest);
                let page = read_page(&source_at[version as usize], &request, Version(version), limit);
                adding.deliver(&request, page);
            }
        };
        let step = |adding: &mut AddingRanges, dest: &mut Kv, applied: &mut u64| {
            *applied += 1;
            let m = history[*applied as usize - 1].clone();
            for piece in adding.route(Version(*applied), m) {
                apply(dest, &piece);
            }
            for due in adding.take_due(Version(*applied)) {
                apply(dest, &due);
            }
        };
        for s in &steps {
            match s {
                Step::Apply if applied < newest => step(&mut adding, &mut dest, &mut applied),
                Step::Apply => {}
                Step::Fetch { limit, lag } => fetch(&mut adding, *limit, newest.saturating_sub(*lag)),
            }
        }
        // Then the log runs out and the fetch finishes.
        while applied < newest {
            step(&mut adding, &mut dest, &mut applied);
        }
        let mut rounds = 0;
        while adding.next_request().is_some() || adding.has_work_due(Version(applied)) {
            fetch(&mut adding, 2, newest);
            // A page is installed at the next version the store applies.
            applied += 1;
            for due in adding.take_due(Version(applied)) {
                apply(&mut dest, &due);
            }
            rounds += 1;
            prop_assert!(rounds < 100, "the copy does not finish");
        }
        prop_assert!(!adding.overlaps_missing(range_begin.as_bytes(), range_end.as_bytes(), Version(applied)));
        prop_assert_eq!(
            within(&dest, range_begin, range_end),
            within(&source_at[newest as usize], range_begin, range_end)
        );
    }
}

#[test]
fn mutations_outside_the_missing_part_apply_and_inside_wait() {
    let mut adding = AddingRanges::new(1 << 20);
    adding.reconcile(Version(10), &[(b("c"), b("f"))], &everything(), Vec::new());
    assert_eq!(
        adding.route(Version(11), set("a", "1")),
        vec![set("a", "1")]
    );
    assert!(adding.route(Version(11), set("d", "1")).is_empty());
    assert_eq!(
        adding.route(Version(12), clear("b", "g")),
        vec![clear("b", "c"), clear("f", "g")]
    );
    assert!(adding.overlaps_missing(b"d", b"e", Version(20)));
    assert!(adding.overlaps_missing(b"a", b"z", Version(20)));
    assert!(!adding.overlaps_missing(b"a", b"c", Version(20)));
    assert!(adding.overlaps_missing(b"c", b"c", Version(20)));
    assert!(!adding.overlaps_missing(b"f", b"f", Version(20)));
}

#[test]
fn a_page_waits_for_its_version_and_brings_what_followed() {
    let mut adding = AddingRanges::new(1 << 20);
    adding.reconcile(Version(10), &[(b("c"), b("f"))], &everything(), Vec::new());
    assert!(adding.route(Version(11), set("d", "old")).is_empty());
    let request = adding.next_request().unwrap();
    assert_eq!(request.min_version, Version(10));
    let page = Page {
        begin: b("c"),
        end: b("f"),
        version: Version(12),
        pairs: vec![(b("d"), b("old"))],
    };
    assert!(adding.deliver(&request, page));
    assert!(adding.next_request().is_none(), "one page at a time");
    assert!(!adding.has_work_due(Version(11)));
    assert!(adding.take_due(Version(11)).is_empty());
    assert!(adding.route(Version(13), append("d", "+")).is_empty());
    assert!(adding.has_work_due(Version(13)));
    assert_eq!(
        adding.take_due(Version(13)),
        vec![clear("c", "f"), set("d", "old"), append("d", "+")]
    );
    let status = &adding.status(Version(12))[0];
    assert!(!status.ready, "installed at 13, durable at 12");
    assert_eq!(adding.flush_wanted(Version(12)), Some(Version(13)));
    assert!(adding.status(Version(13))[0].ready);
    assert_eq!(adding.flush_wanted(Version(13)), None);
    assert_eq!(
        adding.route(Version(14), set("d", "x")),
        vec![set("d", "x")]
    );
}

#[test]
fn stale_pages_are_refused() {
    let mut adding = AddingRanges::new(1 << 20);
    adding.reconcile(Version(10), &[(b("c"), b("f"))], &everything(), Vec::new());
    let request = adding.next_request().unwrap();
    let page = |begin: &str, version| Page {
        begin: b(begin),
        end: b("f"),
        version: Version(version),
        pairs: Vec::new(),
    };
    assert!(!adding.deliver(&request, page("c", 9)), "below the floor");
    assert!(
        !adding.deliver(&request, page("d", 12)),
        "not where the range stands"
    );
    assert!(adding.deliver(&request, page("c", 12)));
    assert!(
        !adding.deliver(&request, page("c", 12)),
        "one waits already"
    );
}

#[test]
fn an_overflowing_buffer_is_dropped_and_later_pages_read_above_it() {
    let mut adding = AddingRanges::new(4);
    adding.reconcile(Version(10), &[(b("c"), b("f"))], &everything(), Vec::new());
    let request = adding.next_request().unwrap();
    let page = Page {
        begin: b("c"),
        end: b("f"),
        version: Version(11),
        pairs: Vec::new(),
    };
    assert!(adding.deliver(&request, page));
    assert!(adding.route(Version(12), set("d", "1234")).is_empty());
    // Past the bound: the waiting page (read below what was dropped) goes too.
    assert!(adding.route(Version(13), set("e", "1234")).is_empty());
    assert!(adding.take_due(Version(13)).is_empty());
    assert_eq!(adding.next_request().unwrap().min_version, Version(13));
}

#[test]
fn a_flip_ends_the_adding_and_a_range_given_away_is_cleared_after_the_change() {
    let mut adding = AddingRanges::new(1 << 20);
    adding.reconcile(Version(10), &[(b("c"), b("f"))], &everything(), Vec::new());
    let request = adding.next_request().unwrap();
    let page = Page {
        begin: b("c"),
        end: b("f"),
        version: Version(11),
        pairs: Vec::new(),
    };
    assert!(adding.deliver(&request, page));
    adding.take_due(Version(11));
    // The map flips to this server's team: the range is simply held now.
    adding.reconcile(Version(20), &[], &everything(), Vec::new());
    assert!(adding.status(Version(20)).is_empty());
    // A range given away is cleared at a version after the change.
    adding.reconcile(Version(30), &[], &[], vec![(b("c"), b("f"))]);
    assert!(!adding.has_work_due(Version(30)));
    assert!(adding.has_work_due(Version(31)));
    assert_eq!(adding.take_due(Version(31)), vec![clear("c", "f")]);
    // Until the clear is durable a restart must make it again.
    let stored = adding.encode(Version(30));
    let restored = AddingRanges::decode(&stored, Version(30), 1 << 20).unwrap();
    assert!(restored.has_work_due(Version(31)));
    adding.forget_durable(Version(31));
    assert!(adding.is_empty());
}

#[test]
fn an_incomplete_range_goes_on_while_held_and_stops_when_not() {
    let mut adding = AddingRanges::new(1 << 20);
    adding.reconcile(Version(10), &[(b("c"), b("f"))], &everything(), Vec::new());
    adding.reconcile(Version(20), &[], &everything(), Vec::new());
    assert_eq!(
        adding.status(Version(20)).len(),
        1,
        "flipped before it finished"
    );
    assert!(adding.overlaps_missing(b"d", b"d", Version(20)));
    adding.reconcile(Version(30), &[], &[], Vec::new());
    assert!(adding.status(Version(30)).is_empty(), "cancelled");
}

#[test]
fn a_rollback_forgets_installs_and_clears_above_it() {
    let mut adding = first_page_installed(vec![(b("c"), b("1"))]);
    assert_eq!(adding.next_request().unwrap().begin, b("d"));
    assert!(adding.route(Version(13), set("e", "1")).is_empty());
    adding.reconcile(
        Version(13),
        &[(b("c"), b("f"))],
        &everything(),
        vec![(b("x"), b("y"))],
    );
    adding.rollback_to(Version(11));
    assert_eq!(adding.next_request().unwrap().begin, b("c"));
    assert!(
        !adding.has_work_due(Version(20)),
        "the clear's change was rolled back"
    );
    // The buffered set above the rollback is gone: the log brings it again.
    let request = adding.next_request().unwrap();
    let page = Page {
        begin: b("c"),
        end: b("f"),
        version: Version(11),
        pairs: Vec::new(),
    };
    assert!(adding.deliver(&request, page));
    assert_eq!(adding.take_due(Version(12)), vec![clear("c", "f")]);
}

#[test]
fn state_round_trips_as_of_a_flush_and_refuses_damage() {
    let mut adding = AddingRanges::new(1 << 20);
    adding.reconcile(
        Version(10),
        &[(b("c"), b("f")), (b("m"), b("p"))],
        &everything(),
        Vec::new(),
    );
    let request = adding.next_request().unwrap();
    let page = Page {
        begin: b("c"),
        end: b("d"),
        version: Version(11),
        pairs: Vec::new(),
    };
    assert!(adding.deliver(&request, page));
    adding.take_due(Version(12));
    let at_11 = adding.encode(Version(11));
    let restored = AddingRanges::decode(&at_11, Version(11), 1 << 20).unwrap();
    assert_eq!(restored.next_request().unwrap().begin, b("c"));
    let at_12 = adding.encode(Version(12));
    let restored = AddingRanges::decode(&at_12, Version(12), 1 << 20).unwrap();
    let request = restored.next_request().unwrap();
    assert_eq!((request.begin, request.min_version), (b("d"), Version(12)));
    assert_eq!(restored.status(Version(12)).len(), 2);
    for cut in 0..at_12.len() {
        assert!(AddingRanges::decode(&at_12[..cut], Version(12), 1).is_err());
    }
    let mut long = at_12.to_vec();
    long.push(0);
    assert!(AddingRanges::decode(&long, Version(12), 1).is_err());
}

#[test]
fn a_key_reads_as_missing_below_the_version_its_page_was_installed_at() {
    let mut adding = AddingRanges::new(1 << 20);
    adding.reconcile(Version(10), &[(b("c"), b("f"))], &everything(), Vec::new());
    deliver_next(&mut adding, "f", 11, &[("d", "1")]);
    adding.take_due(Version(15));
    assert!(!adding.overlaps_missing(b"d", b"d", Version(15)));
    assert!(!adding.overlaps_missing(b"c", b"f", Version(16)));
    // Below the install, the store holds what was there before the copy.
    assert!(adding.overlaps_missing(b"d", b"d", Version(14)));
    assert!(adding.overlaps_missing(b"a", b"z", Version(14)));
    assert!(!adding.overlaps_missing(b"a", b"c", Version(14)));
}

/// A range copied whole at a version a recovery keeps, whose flip came
/// above the recovery version: the rollback forgets the flip, and the
/// range is back, still copied and ready, as the mover saw it.
#[test]
fn a_rollback_below_a_ranges_removal_brings_it_back_as_it_was() {
    let mut adding = AddingRanges::new(1 << 20);
    adding.reconcile(Version(10), &[(b("c"), b("f"))], &everything(), Vec::new());
    deliver_next(&mut adding, "f", 10, &[("d", "1")]);
    adding.take_due(Version(10));
    assert!(adding.status(Version(10))[0].ready);
    // The flip, and a move that begins above the recovery version.
    adding.reconcile(Version(12), &[], &everything(), Vec::new());
    adding.reconcile(Version(13), &[(b("x"), b("y"))], &[], Vec::new());
    let stored = adding.encode(Version(11));
    adding.rollback_to(Version(11));
    let status = adding.status(Version(10));
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!((&status[0].begin, status[0].ready), (&b("c"), true));
    assert!(adding.next_request().is_none(), "nothing to copy again");
    // A restart from a flush through 11 finds it so too.
    let restored = AddingRanges::decode(&stored, Version(11), 1 << 20).unwrap();
    let status = restored.status(Version(11));
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!((&status[0].begin, status[0].ready), (&b("c"), true));
    // Once the removal is durable, nothing brings it back.
    adding.reconcile(Version(12), &[], &everything(), Vec::new());
    adding.forget_durable(Version(12));
    adding.rollback_to(Version(12));
    assert!(adding.status(Version(12)).is_empty());
}

/// Adding `[c, f)` from version 10, with its first page, `[c, d)` read at
/// 11 with `pairs`, installed at 12.
fn first_page_installed(pairs: Vec<(Bytes, Bytes)>) -> AddingRanges {
    let mut adding = AddingRanges::new(1 << 20);
    adding.reconcile(Version(10), &[(b("c"), b("f"))], &everything(), Vec::new());
    let request = adding.next_request().unwrap();
    let page = Page {
        begin: b("c"),
        end: b("d"),
        version: Version(11),
        pairs,
    };
    assert!(adding.deliver(&request, page));
    adding.take_due(Version(12));
    adding
}

/// The ranges being added, as `(begin, end, installed to)`.
fn ranges(adding: &AddingRanges) -> Vec<(Bytes, Bytes, Bytes)> {
    adding
        .status(Version::ZERO)
        .into_iter()
        .map(|a| (a.begin, a.end, a.installed_to))
        .collect()
}

/// A move that takes over another's start cuts a range being added into
/// new ones: they replace it, and no two overlap, so a mutation is
/// buffered and redone once. An incomplete range partly given away goes
/// on as the part still held.
#[test]
fn a_range_cut_up_is_added_afresh_as_its_pieces_and_none_overlap() {
    let mut adding = first_page_installed(vec![(b("c"), b("1"))]);

    let pieces = [(b("c"), b("e")), (b("e"), b("f"))];
    adding.reconcile(Version(13), &pieces, &everything(), Vec::new());
    assert_eq!(
        ranges(&adding),
        vec![(b("c"), b("e"), b("c")), (b("e"), b("f"), b("e"))]
    );
    assert!(adding.route(Version(14), append("d", "x")).is_empty());
    let request = adding.next_request().unwrap();
    assert_eq!(
        (request.begin.clone(), request.min_version),
        (b("c"), Version(13))
    );
    let page = Page {
        begin: b("c"),
        end: b("e"),
        version: Version(13),
        pairs: vec![(b("c"), b("1")), (b("d"), b("0"))],
    };
    assert!(adding.deliver(&request, page));
    assert_eq!(
        adding.take_due(Version(15)),
        vec![
            clear("c", "e"),
            set("c", "1"),
            set("d", "0"),
            append("d", "x"),
        ]
    );

    // [e, f) given away before its copy was done, [c, e) flipped to this
    // server: only [e, f) leaves; a rollback brings the cut back.
    let mut adding = AddingRanges::new(1 << 20);
    adding.reconcile(Version(10), &[(b("c"), b("f"))], &everything(), Vec::new());
    let held = [(b("a"), b("e"))];
    adding.reconcile(Version(20), &[], &held, vec![(b("e"), b("f"))]);
    assert_eq!(ranges(&adding), vec![(b("c"), b("e"), b("c"))]);
    adding.rollback_to(Version(19));
    assert_eq!(ranges(&adding), vec![(b("c"), b("f"), b("c"))]);

    // Still held whole and wanted anew nowhere, an incomplete range goes
    // on as it was, pages installed included.
    let mut adding = first_page_installed(Vec::new());
    adding.reconcile(Version(20), &[], &everything(), Vec::new());
    assert_eq!(ranges(&adding), vec![(b("c"), b("f"), b("d"))]);
}

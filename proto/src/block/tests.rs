//! The builder's ordering rules, parse validation and round trips.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn set(key: &str, value: &str) -> Mutation {
    Mutation::SetValue {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn clear(begin: &str, end: &str) -> Mutation {
    Mutation::ClearRange {
        begin: Bytes::copy_from_slice(begin.as_bytes()),
        end: Bytes::copy_from_slice(end.as_bytes()),
    }
}

/// A block with messages at two versions and an empty version between them.
fn sample_block() -> Bytes {
    let mut b = TeamBlockBuilder::new(StorageTeamId(7));
    b.push(Version(10), Subsequence(1), &set("a", "1")).unwrap();
    b.push(Version(10), Subsequence(3), &clear("b", "c"))
        .unwrap();
    b.push_empty_version(Version(11)).unwrap();
    b.push(Version(15), Subsequence(2), &set("", "")).unwrap();
    b.finish()
}

#[test]
fn sample_block_parses_into_its_entries() {
    let block = TeamBlock::parse(sample_block()).unwrap();
    assert_eq!(block.team(), StorageTeamId(7));
    assert_eq!(block.section_count(), 3);
    assert_eq!(block.message_count(), 3);
    assert_eq!(block.first_version(), Some(Version(10)));
    assert_eq!(block.last_version(), Some(Version(15)));
    assert_eq!(
        block.versions().collect::<Vec<_>>(),
        vec![Version(10), Version(11), Version(15)]
    );
    let message = |version, subsequence, mutation| {
        BlockEntry::Message(VersionedMutation {
            version: Version(version),
            subsequence: Subsequence(subsequence),
            team: StorageTeamId(7),
            mutation,
        })
    };
    assert_eq!(
        block.entries().collect::<Vec<_>>(),
        vec![
            message(10, 1, set("a", "1")),
            message(10, 3, clear("b", "c")),
            BlockEntry::EmptyVersion {
                team: StorageTeamId(7),
                version: Version(11)
            },
            message(15, 2, set("", "")),
        ]
    );
}

#[test]
fn entries_share_the_block_buffer() {
    let bytes = sample_block();
    let block = TeamBlock::parse(bytes.clone()).unwrap();
    let range = bytes.as_ptr_range();
    for entry in block.entries() {
        if let BlockEntry::Message(m) = entry {
            if let Mutation::SetValue { key, .. } = &m.mutation {
                if !key.is_empty() {
                    assert!(range.contains(&key.as_ptr()), "key was copied");
                }
            }
        }
    }
}

#[test]
fn empty_builder_makes_an_empty_block() {
    let b = TeamBlockBuilder::new(StorageTeamId(3));
    assert!(b.is_empty());
    assert_eq!(b.len_bytes(), BLOCK_HEADER_LEN);
    let block = TeamBlock::parse(b.finish()).unwrap();
    assert_eq!(block.team(), StorageTeamId(3));
    assert_eq!(block.section_count(), 0);
    assert_eq!(block.first_version(), None);
    assert_eq!(block.last_version(), None);
    assert_eq!(block.entries().count(), 0);
}

#[test]
fn builder_refuses_a_smaller_version() {
    let mut b = TeamBlockBuilder::new(StorageTeamId(1));
    b.push(Version(5), Subsequence(1), &set("k", "v")).unwrap();
    assert_eq!(
        b.push(Version(4), Subsequence(9), &set("k", "v")),
        Err(BlockError::VersionNotIncreasing {
            previous: Version(5),
            version: Version(4)
        })
    );
}

#[test]
fn builder_refuses_a_subsequence_not_above_the_last() {
    let mut b = TeamBlockBuilder::new(StorageTeamId(1));
    b.push(Version(5), Subsequence(3), &set("k", "v")).unwrap();
    for subsequence in [2, 3] {
        assert_eq!(
            b.push(Version(5), Subsequence(subsequence), &set("k", "v")),
            Err(BlockError::SubsequenceNotIncreasing {
                version: Version(5),
                previous: Subsequence(3),
                subsequence: Subsequence(subsequence)
            })
        );
    }
    // A new version starts its own subsequence order.
    b.push(Version(6), Subsequence(1), &set("k", "v")).unwrap();
}

#[test]
fn builder_refuses_subsequence_zero() {
    let mut b = TeamBlockBuilder::new(StorageTeamId(1));
    assert_eq!(
        b.push(Version(5), Subsequence(0), &set("k", "v")),
        Err(BlockError::ZeroSubsequence {
            version: Version(5)
        })
    );
    assert!(b.is_empty(), "a refused push must not open a section");
}

#[test]
fn builder_refuses_messages_in_a_version_closed_as_empty() {
    let mut b = TeamBlockBuilder::new(StorageTeamId(1));
    b.push_empty_version(Version(5)).unwrap();
    assert_eq!(
        b.push(Version(5), Subsequence(1), &set("k", "v")),
        Err(BlockError::VersionClosedAsEmpty {
            version: Version(5)
        })
    );
}

#[test]
fn builder_refuses_an_empty_version_not_above_the_last_section() {
    let mut b = TeamBlockBuilder::new(StorageTeamId(1));
    b.push(Version(5), Subsequence(1), &set("k", "v")).unwrap();
    for version in [4, 5] {
        assert_eq!(
            b.push_empty_version(Version(version)),
            Err(BlockError::VersionNotIncreasing {
                previous: Version(5),
                version: Version(version)
            })
        );
    }
    b.push_empty_version(Version(6)).unwrap();
    assert_eq!(
        b.push_empty_version(Version(6)),
        Err(BlockError::VersionNotIncreasing {
            previous: Version(6),
            version: Version(6)
        })
    );
}

#[test]
fn refused_pushes_leave_the_block_valid() {
    let mut b = TeamBlockBuilder::new(StorageTeamId(1));
    b.push(Version(5), Subsequence(2), &set("k", "v")).unwrap();
    let len = b.len_bytes();
    assert!(b.push(Version(5), Subsequence(1), &set("x", "y")).is_err());
    assert!(b.push(Version(4), Subsequence(1), &set("x", "y")).is_err());
    assert!(b.push_empty_version(Version(5)).is_err());
    assert_eq!(b.len_bytes(), len);
    let block = TeamBlock::parse(b.finish()).unwrap();
    assert_eq!(block.message_count(), 1);
}

#[test]
fn parse_refuses_every_truncation() {
    let bytes = sample_block();
    for len in 0..bytes.len() {
        match TeamBlock::parse(bytes.slice(..len)) {
            Err(BlockError::Truncated { offset, needed }) => {
                assert!(offset <= len && needed > 0, "len {len}: {offset} {needed}");
            }
            other => panic!("prefix of {len} bytes gave {other:?}"),
        }
    }
}

#[test]
fn parse_refuses_trailing_bytes() {
    let mut bytes = sample_block().to_vec();
    let len = bytes.len();
    bytes.push(0);
    assert_eq!(
        TeamBlock::parse(Bytes::from(bytes)).unwrap_err(),
        BlockError::TrailingBytes {
            offset: len,
            len: 1
        }
    );
}

#[test]
fn parse_refuses_a_wrong_format_version() {
    for format in [0u8, 2, 255] {
        let mut bytes = sample_block().to_vec();
        bytes[0] = format;
        assert_eq!(
            TeamBlock::parse(Bytes::from(bytes)).unwrap_err(),
            BlockError::UnsupportedFormat(format)
        );
    }
}

const SECTION_HEADER_LEN: usize = 8 + 4;

/// Offset of the first message's kind byte in `sample_block`.
const FIRST_KIND_OFFSET: usize = BLOCK_HEADER_LEN + SECTION_HEADER_LEN + 4;
/// Offset of the second section's version in `sample_block`.
const SECOND_SECTION_OFFSET: usize =
    BLOCK_HEADER_LEN + SECTION_HEADER_LEN + 2 * MESSAGE_FIXED_LEN + 2 + 2;

#[test]
fn parse_refuses_an_unknown_mutation_kind() {
    let mut bytes = sample_block().to_vec();
    bytes[FIRST_KIND_OFFSET] = 9;
    assert_eq!(
        TeamBlock::parse(Bytes::from(bytes)).unwrap_err(),
        BlockError::UnknownMutationKind {
            offset: FIRST_KIND_OFFSET,
            kind: 9
        }
    );
}

#[test]
fn parse_refuses_versions_out_of_order() {
    let mut bytes = sample_block().to_vec();
    bytes[SECOND_SECTION_OFFSET..SECOND_SECTION_OFFSET + 8].copy_from_slice(&10u64.to_le_bytes());
    assert_eq!(
        TeamBlock::parse(Bytes::from(bytes)).unwrap_err(),
        BlockError::VersionNotIncreasing {
            previous: Version(10),
            version: Version(10)
        }
    );
}

#[test]
fn parse_refuses_subsequences_out_of_order_and_zero() {
    let second_subsequence = FIRST_KIND_OFFSET - 4 + MESSAGE_FIXED_LEN + 2;
    let mut bytes = sample_block().to_vec();
    bytes[second_subsequence..second_subsequence + 4].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(
        TeamBlock::parse(Bytes::from(bytes)).unwrap_err(),
        BlockError::SubsequenceNotIncreasing {
            version: Version(10),
            previous: Subsequence(1),
            subsequence: Subsequence(1)
        }
    );

    let mut bytes = sample_block().to_vec();
    bytes[FIRST_KIND_OFFSET - 4..FIRST_KIND_OFFSET].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(
        TeamBlock::parse(Bytes::from(bytes)).unwrap_err(),
        BlockError::ZeroSubsequence {
            version: Version(10)
        }
    );
}

#[test]
fn parse_refuses_a_huge_length_without_allocating() {
    let mut b = TeamBlockBuilder::new(StorageTeamId(1));
    b.push(Version(1), Subsequence(1), &set("k", "v")).unwrap();
    let mut bytes = b.finish().to_vec();
    let len_a = FIRST_KIND_OFFSET + 1;
    bytes[len_a..len_a + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        TeamBlock::parse(Bytes::from(bytes)),
        Err(BlockError::Truncated { .. })
    ));
}

#[test]
fn sort_key_puts_an_empty_version_after_its_messages() {
    let empty = BlockEntry::EmptyVersion {
        team: StorageTeamId(1),
        version: Version(5),
    };
    let message = BlockEntry::Message(VersionedMutation {
        version: Version(5),
        subsequence: Subsequence(u32::MAX),
        team: StorageTeamId(2),
        mutation: set("k", "v"),
    });
    assert!(message.sort_key() < empty.sort_key());
    assert_eq!(empty.version(), Version(5));
    assert_eq!(message.version(), Version(5));
    assert!(empty.sort_key() < (Version(6), 1));
}

/// A version's content: `None` is an empty version.
type Section = (u64, Option<Vec<(u32, Mutation)>>);

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from);
    prop_oneof![
        (bytes(), bytes()).prop_map(|(key, value)| Mutation::SetValue { key, value }),
        (bytes(), bytes()).prop_map(|(begin, end)| Mutation::ClearRange { begin, end }),
        (bytes(), bytes()).prop_map(|(key, suffix)| Mutation::AppendIfFits { key, suffix }),
    ]
}

/// Sections with strictly increasing versions and subsequences, built from
/// random positive gaps.
fn arb_sections() -> impl Strategy<Value = Vec<Section>> {
    let messages = proptest::collection::vec((1u32..4, arb_mutation()), 1..6);
    proptest::collection::vec(
        (1u64..1_000, proptest::option::weighted(0.7, messages)),
        0..12,
    )
    .prop_map(|raw| {
        let mut version = 0u64;
        raw.into_iter()
            .map(|(gap, messages)| {
                version += gap;
                let messages = messages.map(|m| {
                    let mut subsequence = 0u32;
                    m.into_iter()
                        .map(|(gap, mutation)| {
                            subsequence += gap;
                            (subsequence, mutation)
                        })
                        .collect()
                });
                (version, messages)
            })
            .collect()
    })
}

fn build(team: StorageTeamId, sections: &[Section]) -> Bytes {
    let mut b = TeamBlockBuilder::new(team);
    for (version, messages) in sections {
        match messages {
            None => b.push_empty_version(Version(*version)).unwrap(),
            Some(messages) => {
                for (subsequence, mutation) in messages {
                    b.push(Version(*version), Subsequence(*subsequence), mutation)
                        .unwrap();
                }
            }
        }
    }
    assert_eq!(b.is_empty(), sections.is_empty());
    let len = b.len_bytes();
    let bytes = b.finish();
    assert_eq!(bytes.len(), len);
    bytes
}

fn expected_entries(team: StorageTeamId, sections: &[Section]) -> Vec<BlockEntry> {
    let mut entries = Vec::new();
    for (version, messages) in sections {
        match messages {
            None => entries.push(BlockEntry::EmptyVersion {
                team,
                version: Version(*version),
            }),
            Some(messages) => entries.extend(messages.iter().map(|(subsequence, mutation)| {
                BlockEntry::Message(VersionedMutation {
                    version: Version(*version),
                    subsequence: Subsequence(*subsequence),
                    team,
                    mutation: mutation.clone(),
                })
            })),
        }
    }
    entries
}

proptest! {
    #[test]
    fn built_blocks_round_trip(team in any::<u64>(), sections in arb_sections()) {
        let team = StorageTeamId(team);
        let block = TeamBlock::parse(build(team, &sections)).unwrap();
        let expected = expected_entries(team, &sections);
        prop_assert_eq!(block.team(), team);
        prop_assert_eq!(block.section_count(), sections.len());
        prop_assert_eq!(
            block.message_count(),
            sections.iter().map(|(_, m)| m.as_ref().map_or(0, Vec::len)).sum::<usize>()
        );
        prop_assert_eq!(block.first_version(), sections.first().map(|s| Version(s.0)));
        prop_assert_eq!(block.last_version(), sections.last().map(|s| Version(s.0)));
        prop_assert_eq!(
            block.versions().collect::<Vec<_>>(),
            sections.iter().map(|s| Version(s.0)).collect::<Vec<_>>()
        );
        let entries: Vec<BlockEntry> = block.entries().collect();
        prop_assert!(entries.windows(2).all(|w| w[0].sort_key() < w[1].sort_key()));
        prop_assert_eq!(entries, expected);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(block) = TeamBlock::parse(Bytes::from(bytes)) {
            prop_assert_eq!(block.versions().count(), block.section_count());
            prop_assert!(block.entries().count() >= block.message_count());
        }
    }

    #[test]
    fn corrupted_blocks_never_panic(
        sections in arb_sections(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = build(StorageTeamId(1), &sections).to_vec();
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        if let Ok(block) = TeamBlock::parse(Bytes::from(bytes)) {
            let entries: Vec<BlockEntry> = block.entries().collect();
            let empty = entries
                .iter()
                .filter(|e| matches!(e, BlockEntry::EmptyVersion { .. }))
                .count();
            prop_assert_eq!(entries.len() - empty, block.message_count());
            prop_assert!(entries.windows(2).all(|w| w[0].sort_key() < w[1].sort_key()));
        }
    }
}

//! Workload traces: the JSON Lines format (`docs/TRACE_FORMAT.md`), a
//! streaming reader and writer, and the model a replay's final check
//! compares the cluster with.
//!
//! ```text
//!  trace.jsonl:  {"format":"teamlog-trace","version":1,"seed":..}   header
//!                {"at_us":0,"commit":[{"op":"set","key":..,"value":..}]}
//!                {"at_us":500,"read":{"op":"get","key":..}}          one event a line
//!  TraceReader ─▶ (line number, TraceEvent) ... ─▶ replay
//!  acknowledged commits (version, mutations) ─▶ Model ─▶ expected key space
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use bytes::Bytes;
use proto::{key_after, Mutation, Version};
use serde::{Deserialize, Serialize};

use proto::key_text::{escape, unescape};

/// The `format` field of every trace header.
pub const FORMAT_NAME: &str = "teamlog-trace";
/// The format version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: {reason}")]
    BadLine { line: u64, reason: String },
    /// A trace carries sets and clears: the replay model checks a final
    /// state, and appends of one version land in an order no client sees.
    #[error("a trace cannot carry {0}")]
    Unsupported(&'static str),
}

/// The first line of a trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceHeader {
    pub format: String,
    pub version: u32,
    /// The generator's seed (0 for hand-written traces).
    #[serde(default)]
    pub seed: u64,
    /// The generator's parameters, as it printed them; informative only.
    #[serde(default)]
    pub generator: serde_json::Value,
}

impl TraceHeader {
    pub fn new(seed: u64, generator: serde_json::Value) -> TraceHeader {
        TraceHeader {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            seed,
            generator,
        }
    }
}

/// One timed event of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// When to start it, in microseconds from the start of the replay.
    pub at_us: u64,
    pub op: TraceOp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceOp {
    /// One atomic commit. A single-key clear is a `ClearRange` of
    /// `[key, key\x00)`.
    Commit(Vec<Mutation>),
    Get(Bytes),
    GetRange {
        begin: Bytes,
        end: Bytes,
        limit: u32,
    },
}

// The wire shapes: what a line holds, with keys and values escaped.

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    at_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    commit: Option<Vec<MutationLine>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    read: Option<ReadLine>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum MutationLine {
    Set { key: String, value: String },
    Clear { key: String },
    ClearRange { begin: String, end: String },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum ReadLine {
    Get {
        key: String,
    },
    GetRange {
        begin: String,
        end: String,
        limit: u32,
    },
}

fn mutation_line(mutation: &Mutation) -> Result<MutationLine, TraceError> {
    Ok(match mutation {
        Mutation::SetValue { key, value } => MutationLine::Set {
            key: escape(key),
            value: escape(value),
        },
        Mutation::ClearRange { begin, end } if *end == key_after(begin) => {
            MutationLine::Clear { key: escape(begin) }
        }
        Mutation::ClearRange { begin, end } => MutationLine::ClearRange {
            begin: escape(begin),
            end: escape(end),
        },
        Mutation::AppendIfFits { .. } => return Err(TraceError::Unsupported("an append")),
    })
}

fn parse_mutation(line: MutationLine) -> anyhow::Result<Mutation> {
    Ok(match line {
        MutationLine::Set { key, value } => Mutation::SetValue {
            key: unescape(&key)?,
            value: unescape(&value)?,
        },
        MutationLine::Clear { key } => {
            let key = unescape(&key)?;
            Mutation::ClearRange {
                end: key_after(&key),
                begin: key,
            }
        }
        MutationLine::ClearRange { begin, end } => Mutation::ClearRange {
            begin: unescape(&begin)?,
            end: unescape(&end)?,
        },
    })
}

impl TraceEvent {
    /// The event as one line of JSON, without the newline.
    pub fn to_line(&self) -> Result<String, TraceError> {
        let (commit, read) = match &self.op {
            TraceOp::Commit(mutations) => (
                Some(
                    mutations
                        .iter()
                        .map(mutation_line)
                        .collect::<Result<_, _>>()?,
                ),
                None,
            ),
            TraceOp::Get(key) => (None, Some(ReadLine::Get { key: escape(key) })),
            TraceOp::GetRange { begin, end, limit } => (
                None,
                Some(ReadLine::GetRange {
                    begin: escape(begin),
                    end: escape(end),
                    limit: *limit,
                }),
            ),
        };
        let line = EventLine {
            at_us: self.at_us,
            commit,
            read,
        };
        Ok(serde_json::to_string(&line).expect("an event serializes"))
    }

    /// Parses one line; the error says what is wrong, without the line number.
    pub fn from_line(text: &str) -> anyhow::Result<TraceEvent> {
        let line: EventLine = serde_json::from_str(text)?;
        let op = match (line.commit, line.read) {
            (Some(mutations), None) => {
                anyhow::ensure!(
                    !mutations.is_empty(),
                    "a commit needs at least one mutation"
                );
                TraceOp::Commit(
                    mutations
                        .into_iter()
                        .map(parse_mutation)
                        .collect::<anyhow::Result<_>>()?,
                )
            }
            (None, Some(ReadLine::Get { key })) => TraceOp::Get(unescape(&key)?),
            (None, Some(ReadLine::GetRange { begin, end, limit })) => TraceOp::GetRange {
                begin: unescape(&begin)?,
                end: unescape(&end)?,
                limit,
            },
            _ => anyhow::bail!("an event has exactly one of \"commit\" and \"read\""),
        };
        Ok(TraceEvent {
            at_us: line.at_us,
            op,
        })
    }
}

/// Reads a trace one event at a time.
pub struct TraceReader {
    lines: std::io::Lines<BufReader<File>>,
    line: u64,
    path: String,
    pub header: TraceHeader,
}

impl TraceReader {
    pub fn open(path: &Path) -> Result<TraceReader, TraceError> {
        let io = |source| TraceError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut lines = BufReader::new(File::open(path).map_err(io)?).lines();
        let first = lines.next().transpose().map_err(io)?;
        let bad = |reason: String| TraceError::BadLine { line: 1, reason };
        let header: TraceHeader = serde_json::from_str(first.as_deref().unwrap_or(""))
            .map_err(|e| bad(format!("not a trace header: {e}")))?;
        if header.format != FORMAT_NAME {
            return Err(bad(format!(
                "format is {:?}, not {FORMAT_NAME:?}",
                header.format
            )));
        }
        if header.version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} (this teamlog reads {FORMAT_VERSION})",
                header.version
            )));
        }
        Ok(TraceReader {
            lines,
            line: 1,
            path: path.display().to_string(),
            header,
        })
    }
}

impl Iterator for TraceReader {
    /// The event and its line number.
    type Item = Result<(u64, TraceEvent), TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let text = match self.lines.next()? {
                Ok(text) => text,
                Err(source) => {
                    return Some(Err(TraceError::Io {
                        path: self.path.clone(),
                        source,
                    }))
                }
            };
            self.line += 1;
            // Blank lines are allowed, so hand-edited traces stay valid.
            if text.trim().is_empty() {
                continue;
            }
            let line = self.line;
            return Some(
                TraceEvent::from_line(&text)
                    .map(|event| (line, event))
                    .map_err(|e| TraceError::BadLine {
                        line,
                        reason: format!("{e:#}"),
                    }),
            );
        }
    }
}

/// Writes a trace one event at a time.
pub struct TraceWriter {
    out: BufWriter<File>,
    path: String,
}

impl TraceWriter {
    pub fn create(path: &Path, header: &TraceHeader) -> Result<TraceWriter, TraceError> {
        let io = |source| TraceError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut out = BufWriter::new(File::create(path).map_err(io)?);
        let header = serde_json::to_string(header).expect("a header serializes");
        writeln!(out, "{header}").map_err(io)?;
        Ok(TraceWriter {
            out,
            path: path.display().to_string(),
        })
    }

    pub fn write(&mut self, event: &TraceEvent) -> Result<(), TraceError> {
        writeln!(self.out, "{}", event.to_line()?).map_err(|source| TraceError::Io {
            path: self.path.clone(),
            source,
        })
    }

    pub fn finish(mut self) -> Result<(), TraceError> {
        self.out.flush().map_err(|source| TraceError::Io {
            path: self.path,
            source,
        })
    }
}

/// The values a key may hold; `None` is "absent".
pub type Outcomes = BTreeSet<Option<Bytes>>;

/// What the cluster should hold after a replay: the acknowledged commits
/// applied in version order. Commits sharing a version were ordered by a
/// proxy in a way the client cannot see, and commits with an unknown
/// result may or may not have applied, so a key may have several allowed
/// outcomes.
#[derive(Default)]
pub struct Model {
    acknowledged: BTreeMap<Version, Vec<Vec<Mutation>>>,
    unknown: Vec<Vec<Mutation>>,
}

/// A key whose value is not one the model allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub key: String,
    /// The allowed values (escaped), `null` for absent.
    pub expected: Vec<Option<String>>,
    pub actual: Option<String>,
}

impl Model {
    pub fn acknowledged(&mut self, version: Version, mutations: Vec<Mutation>) {
        self.acknowledged
            .entry(version)
            .or_default()
            .push(mutations);
    }

    /// A commit that may or may not have been applied.
    pub fn unknown(&mut self, mutations: Vec<Mutation>) {
        self.unknown.push(mutations);
    }

    pub fn commits(&self) -> usize {
        self.acknowledged.values().map(Vec::len).sum()
    }

    /// The allowed outcomes of every key that may be present; keys not
    /// listed must be absent.
    pub fn expected(&self) -> BTreeMap<Bytes, Outcomes> {
        let mut state: BTreeMap<Bytes, Outcomes> = BTreeMap::new();
        for commits in self.acknowledged.values() {
            // A clear range may run after another commit of the same
            // version, so it may clear the keys that commit sets.
            let set_here: BTreeSet<Bytes> = commits
                .iter()
                .flatten()
                .filter_map(|m| match m {
                    Mutation::SetValue { key, .. } => Some(key.clone()),
                    Mutation::ClearRange { .. } | Mutation::AppendIfFits { .. } => None,
                })
                .collect();
            let effects: Vec<BTreeMap<Bytes, Option<Bytes>>> = commits
                .iter()
                .map(|c| effect(&state, &set_here, c))
                .collect();
            // Each key touched at this version ends as one of the commits
            // that touched it left it: any of them may have been last.
            let mut outcomes: BTreeMap<Bytes, Outcomes> = BTreeMap::new();
            for effect in effects {
                for (key, value) in effect {
                    outcomes.entry(key).or_default().insert(value);
                }
            }
            state.extend(outcomes);
        }
        for commit in &self.unknown {
            for (key, value) in effect(&state, &BTreeSet::new(), commit) {
                state.entry(key).or_insert_with(absent).insert(value);
            }
        }
        state
    }

    /// Compares `actual` (the whole user key space) with the model.
    pub fn check(&self, actual: &BTreeMap<Bytes, Bytes>) -> Vec<Mismatch> {
        let expected = self.expected();
        let keys: BTreeSet<&Bytes> = expected.keys().chain(actual.keys()).collect();
        let mut mismatches = Vec::new();
        for key in keys {
            let allowed = expected.get(key).cloned().unwrap_or_else(absent);
            let value = actual.get(key).cloned();
            if !allowed.contains(&value) {
                mismatches.push(Mismatch {
                    key: escape(key),
                    expected: allowed.iter().map(|v| v.as_deref().map(escape)).collect(),
                    actual: value.as_deref().map(escape),
                });
            }
        }
        mismatches
    }
}

fn absent() -> Outcomes {
    Outcomes::from([None])
}

/// What one commit leaves in the keys it touches, given the keys that may
/// be present before it, in `state` or set by commits of its own version
/// (a clear range only matters for those).
fn effect(
    state: &BTreeMap<Bytes, Outcomes>,
    same_version: &BTreeSet<Bytes>,
    mutations: &[Mutation],
) -> BTreeMap<Bytes, Option<Bytes>> {
    let mut touched: BTreeMap<Bytes, Option<Bytes>> = BTreeMap::new();
    for mutation in mutations {
        match mutation {
            Mutation::SetValue { key, value } => {
                touched.insert(key.clone(), Some(value.clone()));
            }
            Mutation::ClearRange { begin, end } if begin < end => {
                let range = begin.clone()..end.clone();
                let present: Vec<Bytes> = state
                    .range(range.clone())
                    .map(|(k, _)| k.clone())
                    .chain(same_version.range(range.clone()).cloned())
                    .chain(touched.range(range).map(|(k, _)| k.clone()))
                    .collect();
                for key in present {
                    touched.insert(key, None);
                }
            }
            Mutation::ClearRange { .. } => {}
            // Traces carry no appends (`TraceError::Unsupported`).
            Mutation::AppendIfFits { .. } => {}
        }
    }
    touched
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Mutation {
        Mutation::SetValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    fn clear_range(begin: &str, end: &str) -> Mutation {
        Mutation::ClearRange {
            begin: Bytes::copy_from_slice(begin.as_bytes()),
            end: Bytes::copy_from_slice(end.as_bytes()),
        }
    }

    fn state(pairs: &[(&str, &str)]) -> BTreeMap<Bytes, Bytes> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    Bytes::copy_from_slice(k.as_bytes()),
                    Bytes::copy_from_slice(v.as_bytes()),
                )
            })
            .collect()
    }

    #[test]
    fn events_round_trip_through_a_file_with_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let header = TraceHeader::new(7, serde_json::json!({"keys": 3}));
        let binary = Bytes::from_static(b"k\xff\x00\\\"\n");
        let events = vec![
            TraceEvent {
                at_us: 0,
                op: TraceOp::Commit(vec![
                    Mutation::SetValue {
                        key: binary.clone(),
                        value: Bytes::from_static(b"\x01v"),
                    },
                    Mutation::ClearRange {
                        begin: binary.clone(),
                        end: key_after(&binary),
                    },
                    clear_range("a", "b"),
                ]),
            },
            TraceEvent {
                at_us: 10,
                op: TraceOp::Get(binary.clone()),
            },
            TraceEvent {
                at_us: 20,
                op: TraceOp::GetRange {
                    begin: Bytes::new(),
                    end: Bytes::from_static(b"\xff"),
                    limit: 5,
                },
            },
        ];
        let mut writer = TraceWriter::create(&path, &header).unwrap();
        for event in &events {
            writer.write(event).unwrap();
        }
        writer.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(r#""op":"clear","key":"k\\xff\\x00\\\\\"\\x0a""#),
            "{text}"
        );
        let reader = TraceReader::open(&path).unwrap();
        assert_eq!(reader.header, header);
        let read: Vec<TraceEvent> = reader.map(|r| r.unwrap().1).collect();
        assert_eq!(read, events);
    }

    #[test]
    fn bad_lines_are_reported_with_their_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let header = serde_json::to_string(&TraceHeader::new(1, serde_json::Value::Null)).unwrap();
        let good = r#"{"at_us":1,"read":{"op":"get","key":"a"}}"#;
        let lines = [
            header.as_str(),
            good,
            "",
            r#"{"at_us":2,"read":{"op":"get","key":"\\x4"}}"#,
            r#"{"at_us":3,"commit":[]}"#,
            r#"{"at_us":4}"#,
            r#"{"at_us":5,"read":{"op":"scan"}}"#,
            "not json",
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let results: Vec<_> = TraceReader::open(&path).unwrap().collect();
        assert_eq!(results[0].as_ref().unwrap().0, 2);
        let errors: Vec<String> = results[1..]
            .iter()
            .map(|r| r.as_ref().unwrap_err().to_string())
            .collect();
        for (error, line) in errors.iter().zip(4..) {
            assert!(error.starts_with(&format!("line {line}: ")), "{error}");
        }
        assert!(errors[0].contains("escape"), "{}", errors[0]);
        assert!(errors[1].contains("at least one mutation"), "{}", errors[1]);
        assert!(errors[2].contains("exactly one"), "{}", errors[2]);

        std::fs::write(&path, good).unwrap();
        let error = TraceReader::open(&path).err().unwrap().to_string();
        assert!(error.starts_with("line 1: not a trace header"), "{error}");
        std::fs::write(&path, header.replace(":1,", ":9,")).unwrap();
        let error = TraceReader::open(&path).err().unwrap().to_string();
        assert!(error.contains("format version 9"), "{error}");
    }

    #[test]
    fn the_model_applies_commits_in_version_order() {
        let mut model = Model::default();
        model.acknowledged(Version(3), vec![clear_range("a", "c")]);
        model.acknowledged(
            Version(1),
            vec![set("a", "1"), set("b", "1"), set("c", "1")],
        );
        model.acknowledged(Version(2), vec![set("b", "2")]);
        model.acknowledged(Version(4), vec![set("b", "4"), clear_range("b", "b\x00")]);
        assert!(model.check(&state(&[("c", "1")])).is_empty());
        let mismatches = model.check(&state(&[("a", "1"), ("c", "2")]));
        assert_eq!(
            mismatches,
            vec![
                Mismatch {
                    key: "a".into(),
                    expected: vec![None],
                    actual: Some("1".into()),
                },
                Mismatch {
                    key: "c".into(),
                    expected: vec![Some("1".into())],
                    actual: Some("2".into()),
                },
            ]
        );
    }

    #[test]
    fn commits_sharing_a_version_allow_any_of_their_outcomes() {
        let mut model = Model::default();
        model.acknowledged(Version(1), vec![set("k", "old"), set("x", "old")]);
        // One proxy batch: either order is possible for "k"; "x" is
        // touched by one commit only, so it is certain.
        model.acknowledged(Version(2), vec![set("k", "a"), clear_range("x", "y")]);
        model.acknowledged(Version(2), vec![clear_range("k", "l")]);
        for actual in [state(&[("k", "a")]), state(&[])] {
            assert!(model.check(&actual).is_empty(), "{actual:?}");
        }
        let mismatches = model.check(&state(&[("k", "old"), ("x", "old")]));
        assert_eq!(mismatches.len(), 2, "{mismatches:?}");
        assert_eq!(mismatches[0].expected, vec![None, Some("a".to_string())]);
        // A clear range may run after a set of the same version, even of
        // a key nothing wrote before.
        model.acknowledged(Version(2), vec![set("kz", "new")]);
        for actual in [state(&[("kz", "new")]), state(&[])] {
            assert!(model.check(&actual).is_empty(), "{actual:?}");
        }
        // A later single commit settles the ambiguity.
        model.acknowledged(Version(3), vec![set("k", "b")]);
        assert_eq!(model.check(&state(&[("k", "a")])).len(), 1);
        assert!(model.check(&state(&[("k", "b")])).is_empty());
    }

    #[test]
    fn a_commit_with_an_unknown_result_makes_its_keys_either() {
        let mut model = Model::default();
        model.acknowledged(Version(1), vec![set("k", "1")]);
        model.unknown(vec![set("k", "2"), set("n", "2")]);
        for actual in [
            state(&[("k", "1")]),
            state(&[("k", "2"), ("n", "2")]),
            state(&[("k", "1"), ("n", "2")]),
        ] {
            assert!(model.check(&actual).is_empty(), "{actual:?}");
        }
        assert_eq!(model.check(&state(&[("n", "3"), ("k", "1")])).len(), 1);
    }
}

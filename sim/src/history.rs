//! What the workload did and what it saw, and the checks against a model
//! of it. Every value is unique, so a value read names the one commit that
//! wrote it.
//!
//! ```text
//!  commits: (keys, value) ─▶ acknowledged at v │ refused (nothing applied) │ unknown
//!  reads:   (key, v) ─▶ value
//!  a read at v must see, of the acknowledged commits to its key at or
//!  below v, the highest; or the value of a commit whose outcome is unknown
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;
use proto::Version;

/// How a commit ended, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Acknowledged(Version),
    /// The cluster said nothing of it was applied.
    Refused(String),
    /// It may or may not have been applied; still in flight counts too.
    Unknown(String),
}

#[derive(Clone, Debug)]
pub struct Commit {
    pub keys: Vec<Bytes>,
    pub value: Bytes,
    pub outcome: Outcome,
}

#[derive(Clone, Debug)]
pub struct Read {
    pub key: Bytes,
    pub version: Version,
    pub value: Option<Bytes>,
    /// Who answered: the client library or a named replica.
    pub from: String,
}

#[derive(Default)]
pub struct History {
    pub commits: Vec<Commit>,
    pub reads: Vec<Read>,
}

impl History {
    /// Every read checked against the commits; one line per violation.
    pub fn violations(&self) -> Vec<String> {
        let by_value: BTreeMap<&Bytes, &Commit> =
            self.commits.iter().map(|c| (&c.value, c)).collect();
        // Commits of one batch share a version, and the client cannot tell
        // their order in it: any of them may be the one that stands.
        let mut acknowledged: BTreeMap<&Bytes, BTreeMap<Version, Vec<&Bytes>>> = BTreeMap::new();
        for commit in &self.commits {
            if let Outcome::Acknowledged(version) = commit.outcome {
                for key in &commit.keys {
                    acknowledged
                        .entry(key)
                        .or_default()
                        .entry(version)
                        .or_default()
                        .push(&commit.value);
                }
            }
        }
        let mut violations = Vec::new();
        for read in &self.reads {
            let expected: &[&Bytes] = acknowledged
                .get(&read.key)
                .and_then(|versions| versions.range(..=read.version).next_back())
                .map_or(&[], |(_, values)| values.as_slice());
            let as_expected = match &read.value {
                None => expected.is_empty(),
                Some(value) => expected.contains(&value),
            };
            if as_expected {
                continue;
            }
            let writer = read.value.as_ref().and_then(|v| by_value.get(v));
            let possible = writer.is_some_and(|commit| {
                commit.keys.contains(&read.key) && matches!(commit.outcome, Outcome::Unknown(_))
            });
            if !possible {
                violations.push(describe(read, expected, writer.copied()));
            }
        }
        violations
    }
}

fn describe(read: &Read, expected: &[&Bytes], writer: Option<&Commit>) -> String {
    let got = match (&read.value, writer) {
        (None, _) => "nothing".to_owned(),
        (Some(value), None) => format!("{value:?}, which no commit wrote"),
        (Some(value), Some(commit)) if !commit.keys.contains(&read.key) => {
            format!("{value:?}, which a commit wrote to other keys")
        }
        (Some(value), Some(commit)) => format!("{value:?} ({:?})", commit.outcome),
    };
    format!(
        "read of {:?} at {} from {} saw {got}; expected {}",
        read.key,
        read.version,
        read.from,
        if expected.is_empty() {
            "nothing".to_owned()
        } else {
            format!("one of {expected:?}")
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(keys: &[&str], value: &str, outcome: Outcome) -> Commit {
        Commit {
            keys: keys.iter().map(|k| Bytes::from(k.to_string())).collect(),
            value: Bytes::from(value.to_owned()),
            outcome,
        }
    }

    fn read(key: &str, version: u64, value: Option<&str>) -> Read {
        Read {
            key: Bytes::from(key.to_owned()),
            version: Version(version),
            value: value.map(|v| Bytes::from(v.to_owned())),
            from: "test".to_owned(),
        }
    }

    fn history(reads: Vec<Read>) -> History {
        History {
            commits: vec![
                commit(&["a", "b"], "1", Outcome::Acknowledged(Version(10))),
                commit(&["a"], "2", Outcome::Acknowledged(Version(20))),
                commit(&["a"], "3", Outcome::Unknown("timeout".into())),
                commit(&["a"], "4", Outcome::Refused("overloaded".into())),
                commit(&["c"], "5", Outcome::Acknowledged(Version(30))),
                commit(&["c", "a"], "6", Outcome::Acknowledged(Version(30))),
            ],
            reads,
        }
    }

    #[test]
    fn reads_of_the_latest_acknowledged_or_an_unknown_value_pass() {
        let reads = vec![
            read("a", 5, None),
            read("a", 10, Some("1")),
            read("a", 19, Some("1")),
            read("a", 25, Some("2")),
            read("b", 25, Some("1")),
            read("a", 15, Some("3")),
            // One batch wrote "c" twice; either may stand.
            read("c", 30, Some("5")),
            read("c", 30, Some("6")),
            read("a", 30, Some("6")),
        ];
        assert_eq!(history(reads).violations(), Vec::<String>::new());
    }

    #[test]
    fn lost_refused_future_foreign_and_invented_values_are_violations() {
        let reads = vec![
            read("a", 25, Some("1")),  // an acknowledged commit lost
            read("a", 25, None),       // everything lost
            read("a", 25, Some("4")),  // a refused commit applied
            read("a", 15, Some("2")),  // a commit seen below its version
            read("b", 25, Some("2")),  // a value on a key it was not written to
            read("a", 25, Some("zz")), // never written
            read("a", 30, Some("2")),  // older than the batch at 30
            read("c", 30, None),       // the batch at 30 lost
        ];
        assert_eq!(history(reads).violations().len(), 8);
    }
}

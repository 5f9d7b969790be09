//! What the workload did and what it saw, and the checks against a model
//! of it. Every commit appends one unique token to each of its keys, so a
//! value read is the key's whole history: the tokens of every commit that
//! reached it, in the order they applied.
//!
//! ```text
//!  commits: (keys, token) ─▶ acknowledged at v │ refused (nothing applied) │ unknown
//!  reads:   (key, v) ─▶ "t1;t2;…;"
//!  a read at v holds every acknowledged token of its key at or below v and
//!  none above, in version order, each once; unknown tokens may sit among
//!  them; reads of a key at rising versions extend one another
//! ```

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proto::Version;

/// What ends each token in a value.
pub const TOKEN_END: u8 = b';';

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
    /// Appended to each key, followed by [`TOKEN_END`].
    pub token: Bytes,
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

/// A read and the tokens its value holds.
type ReadTokens<'a> = (&'a Read, Vec<&'a [u8]>);

#[derive(Default)]
pub struct History {
    pub commits: Vec<Commit>,
    pub reads: Vec<Read>,
}

impl History {
    /// Every read checked against the commits and against the other reads
    /// of its key; one line per violation.
    pub fn violations(&self) -> Vec<String> {
        let by_token: BTreeMap<&[u8], &Commit> =
            self.commits.iter().map(|c| (&c.token[..], c)).collect();
        let mut acknowledged: BTreeMap<&Bytes, Vec<(Version, &[u8])>> = BTreeMap::new();
        for commit in &self.commits {
            if let Outcome::Acknowledged(version) = commit.outcome {
                for key in &commit.keys {
                    acknowledged
                        .entry(key)
                        .or_default()
                        .push((version, &commit.token[..]));
                }
            }
        }
        let no_commits = Vec::new();
        let mut violations = Vec::new();
        let mut by_key: BTreeMap<&Bytes, Vec<ReadTokens>> = BTreeMap::new();
        for read in &self.reads {
            let acknowledged = acknowledged.get(&read.key).unwrap_or(&no_commits);
            match check_read(read, &by_token, acknowledged) {
                Ok(tokens) => by_key.entry(&read.key).or_default().push((read, tokens)),
                Err(why) => violations.push(format!("{}: {why}", describe(read))),
            }
        }
        for reads in by_key.values_mut() {
            reads.sort_by_key(|(read, _)| read.version);
            for pair in reads.windows(2) {
                let ((earlier, before), (later, after)) = (&pair[0], &pair[1]);
                let consistent = if earlier.version == later.version {
                    before == after
                } else {
                    after.starts_with(before)
                };
                if !consistent {
                    violations.push(format!(
                        "{} does not extend {}",
                        describe(later),
                        describe(earlier)
                    ));
                }
            }
        }
        violations
    }
}

/// The tokens of one read, if they could be the key's history at the read's
/// version; otherwise what is wrong with them. `acknowledged` lists the
/// key's acknowledged commits.
fn check_read<'a>(
    read: &'a Read,
    by_token: &BTreeMap<&[u8], &Commit>,
    acknowledged: &[(Version, &[u8])],
) -> Result<Vec<&'a [u8]>, String> {
    let tokens = match &read.value {
        None => Vec::new(),
        Some(value) => match value.strip_suffix(&[TOKEN_END]) {
            Some(body) => body.split(|b| *b == TOKEN_END).collect(),
            None => return Err("the value is not a list of tokens".to_owned()),
        },
    };
    let mut seen = BTreeSet::new();
    let mut last_acknowledged = Version::ZERO;
    for token in &tokens {
        let shown = String::from_utf8_lossy(token);
        if !seen.insert(*token) {
            return Err(format!("token {shown} applied twice"));
        }
        let commit = match by_token.get(token) {
            None => return Err(format!("token {shown} was never written")),
            Some(commit) if !commit.keys.contains(&read.key) => {
                return Err(format!("token {shown} was written to other keys"))
            }
            Some(commit) => commit,
        };
        match &commit.outcome {
            Outcome::Refused(why) => {
                return Err(format!("token {shown} of a refused commit ({why})"))
            }
            Outcome::Acknowledged(version) if *version > read.version => {
                return Err(format!(
                    "token {shown} acknowledged at {version}, above the read"
                ))
            }
            Outcome::Acknowledged(version) if *version < last_acknowledged => {
                return Err(format!(
                    "token {shown} acknowledged at {version} after one at {last_acknowledged}"
                ))
            }
            Outcome::Acknowledged(version) => last_acknowledged = *version,
            Outcome::Unknown(_) => {}
        }
    }
    let lost: Vec<String> = acknowledged
        .iter()
        .filter(|(version, token)| *version <= read.version && !seen.contains(token))
        .map(|(version, token)| format!("{} at {version}", String::from_utf8_lossy(token)))
        .collect();
    if !lost.is_empty() {
        return Err(format!("acknowledged tokens missing: {}", lost.join(", ")));
    }
    Ok(tokens)
}

fn describe(read: &Read) -> String {
    let value = read
        .value
        .as_ref()
        .map_or("nothing".to_owned(), |v| format!("{v:?}"));
    format!(
        "read of {:?} at {} from {} ({value})",
        read.key, read.version, read.from
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(keys: &[&str], token: &str, outcome: Outcome) -> Commit {
        Commit {
            keys: keys.iter().map(|k| Bytes::from(k.to_string())).collect(),
            token: Bytes::from(token.to_owned()),
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

    fn violations(reads: Vec<Read>) -> usize {
        let found = history(reads).violations();
        println!("{found:#?}");
        found.len()
    }

    #[test]
    fn histories_with_every_acknowledged_token_in_order_pass() {
        let reads = vec![
            read("a", 5, None),
            read("a", 10, Some("1;")),
            read("a", 19, Some("1;3;")),
            read("a", 25, Some("1;3;2;")),
            read("b", 25, Some("1;")),
            // One batch wrote "c" twice, in an order no client sees.
            read("c", 30, Some("6;5;")),
            read("a", 30, Some("1;3;2;6;")),
        ];
        assert_eq!(violations(reads), 0);
        let other_order = vec![read("c", 30, Some("5;6;"))];
        assert_eq!(violations(other_order), 0);
    }

    #[test]
    fn each_kind_of_wrong_read_is_a_violation() {
        let wrong = [
            read("a", 25, Some("2;")),      // an acknowledged token lost
            read("a", 25, None),            // everything lost
            read("a", 25, Some("1;4;2;")),  // a refused commit applied
            read("a", 15, Some("1;2;")),    // a token seen below its version
            read("b", 25, Some("1;2;")),    // a token on a key it was not written to
            read("a", 25, Some("1;zz;2;")), // never written
            read("a", 25, Some("2;1;")),    // acknowledged tokens out of order
            read("a", 25, Some("1;2;2;")),  // applied twice
            read("a", 25, Some("1;2")),     // not a list of tokens
            read("c", 30, Some("5;")),      // half of the batch at 30 lost
        ];
        for read in wrong {
            let shown = describe(&read);
            assert_eq!(violations(vec![read]), 1, "{shown}");
        }
    }

    #[test]
    fn reads_of_a_key_that_do_not_extend_each_other_are_violations() {
        // Each read alone is possible: the unknown token may or may not
        // have applied; but once seen at 19 it cannot vanish at 25.
        let vanished = vec![read("a", 19, Some("1;3;")), read("a", 25, Some("1;2;"))];
        assert_eq!(violations(vanished), 1);
        let reordered = vec![read("c", 30, Some("5;6;")), read("c", 30, Some("6;5;"))];
        assert_eq!(violations(reordered), 1);
        let moved = vec![read("a", 19, Some("1;3;")), read("a", 25, Some("1;2;3;"))];
        assert_eq!(violations(moved), 1);
    }
}

//! The replicated state: named registers, each a value and a revision that
//! every write raises by one. Writes are conditional on the revision the
//! writer last read, so two writers that read the same state cannot both
//! win. Pure: the state machine applies committed commands here, in log
//! order, on every coordinator alike.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The longest register name a coordinator takes.
pub const MAX_NAME_LEN: usize = 256;
/// The largest register value a coordinator takes.
pub const MAX_VALUE_LEN: usize = 1 << 20;

/// What the coordinators agree on, entry by entry: the raft log's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets `name` to `value` if its revision is still `expected_revision`.
    Write {
        name: String,
        expected_revision: u64,
        value: Vec<u8>,
    },
}

/// A register as read: revision 0 and no value for one never written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub revision: u64,
    pub value: Vec<u8>,
}

/// The result of applying one entry: the register after it, and whether
/// the write took. Entries that are not writes (blank, membership) have
/// the default outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub register: Register,
    pub written: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registers {
    registers: BTreeMap<String, Register>,
}

impl Registers {
    pub fn read(&self, name: &str) -> Register {
        self.registers.get(name).cloned().unwrap_or_default()
    }

    pub fn apply(&mut self, command: &Command) -> Outcome {
        match command {
            Command::Write {
                name,
                expected_revision,
                value,
            } => {
                let current = self.read(name);
                if current.revision != *expected_revision {
                    return Outcome {
                        register: current,
                        written: false,
                    };
                }
                let register = Register {
                    revision: current.revision + 1,
                    value: value.clone(),
                };
                self.registers.insert(name.clone(), register.clone());
                Outcome {
                    register,
                    written: true,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, expected_revision: u64, value: &[u8]) -> Command {
        Command::Write {
            name: name.into(),
            expected_revision,
            value: value.to_vec(),
        }
    }

    #[test]
    fn a_register_never_written_reads_as_revision_zero() {
        assert_eq!(Registers::default().read("cluster"), Register::default());
    }

    #[test]
    fn a_write_takes_only_at_the_expected_revision() {
        let mut registers = Registers::default();
        let first = registers.apply(&write("cluster", 0, b"a"));
        assert!(first.written);
        assert_eq!(first.register.revision, 1);

        let stale = registers.apply(&write("cluster", 0, b"b"));
        assert!(!stale.written);
        assert_eq!(stale.register.value, b"a");
        assert_eq!(stale.register.revision, 1);

        let second = registers.apply(&write("cluster", 1, b"c"));
        assert!(second.written);
        assert_eq!(registers.read("cluster").value, b"c");
        assert_eq!(registers.read("cluster").revision, 2);
    }

    #[test]
    fn registers_are_independent() {
        let mut registers = Registers::default();
        assert!(registers.apply(&write("a", 0, b"1")).written);
        assert!(registers.apply(&write("b", 0, b"2")).written);
        assert!(!registers.apply(&write("a", 0, b"3")).written);
        assert_eq!(registers.read("b").value, b"2");
    }
}

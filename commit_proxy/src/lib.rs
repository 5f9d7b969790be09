//! Sequencer, resolver and commit proxy roles (see docs/ARCHITECTURE.md); filled in by the commit-path work.

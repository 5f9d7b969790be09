//! Peek cursors over TLog team streams (see docs/ARCHITECTURE.md); filled in by the cursor work.

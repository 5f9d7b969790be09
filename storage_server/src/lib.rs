//! The storage server role (see docs/ARCHITECTURE.md); filled in by the storage-server work.

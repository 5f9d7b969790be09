//! A deliberately broken storage server, compiled only with the
//! `broken-variants` feature: the simulation turns it on to show that its
//! checks catch a server that applies a mutation twice. Nothing else can
//! reach it, and builds without the feature do not contain it.
//!
//! The switch is per thread: a simulation runs every host on its own
//! thread, so runs on other threads (other tests) are not touched.

use std::cell::Cell;

thread_local! {
    static APPLY_AN_APPEND_TWICE: Cell<bool> = const { Cell::new(false) };
}

/// Makes the next append that a storage server on this thread applies
/// apply twice (once; the switch then turns itself off).
pub fn apply_the_next_append_twice(on: bool) {
    APPLY_AN_APPEND_TWICE.with(|switch| switch.set(on));
}

/// Whether to apply this append again; true once per switch-on.
pub(crate) fn take_apply_twice() -> bool {
    APPLY_AN_APPEND_TWICE.with(|switch| switch.replace(false))
}

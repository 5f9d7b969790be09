//! Seeds for randomized tests: every run prints its seed, and setting
//! `TEAMLOG_SEED` replays it.

/// The seed of a randomized run: `TEAMLOG_SEED` when set (to reproduce a
/// run), a random one otherwise; printed either way.
pub fn seed_from_env() -> u64 {
    let seed = std::env::var("TEAMLOG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed={seed} (set TEAMLOG_SEED to reproduce)");
    seed
}

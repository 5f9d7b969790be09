//! Seeds and sizes of randomized tests: every run prints its seed, and
//! setting `TEAMLOG_SEED` replays it; `TEAMLOG_KILLS` makes crash tests
//! longer.

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

/// How many kills a crash test makes: `TEAMLOG_KILLS` when set, `default`
/// otherwise; printed either way.
pub fn kills_from_env(default: usize) -> usize {
    let kills = std::env::var("TEAMLOG_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(default);
    println!("kills={kills} (set TEAMLOG_KILLS for more)");
    kills
}

//! `teamlog workload generate`: writes a seeded synthetic trace.
//!
//! ```text
//!  seed ─▶ rng ─▶ for each event i (at i / rate seconds):
//!            read?   (--reads)   get key | get_range key.. (limit 20)
//!            commit: --mutations-per-commit × set (--value-bytes) | clear | clear_range
//!          key = pick(--skew) ─▶ "<letter><index:08>", letter scattered over a..z
//!  ─▶ TraceWriter (--out)
//! ```
//!
//! The scattered first letter spreads even a hot key set over every shard
//! of a cluster split by letters (the local cluster splits at "h" and "p").

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use proto::Mutation;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::Serialize;

use crate::replay::trace::{TraceEvent, TraceHeader, TraceOp, TraceWriter};
use proto::key_after;

#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Value sizes, uniform in MIN..MAX bytes (inclusive).
    #[arg(long, default_value = "16..256", value_parser = parse_size_range)]
    pub value_bytes: (usize, usize),
    /// Key popularity: `uniform` or `zipf:THETA` (e.g. zipf:0.99).
    #[arg(long, default_value = "uniform", value_parser = parse_skew)]
    pub skew: Skew,
    /// Fraction of events that are reads.
    #[arg(long, default_value_t = 0.5)]
    pub reads: f64,
    /// Fraction of mutations that are clears (a tenth of those clear a range).
    #[arg(long, default_value_t = 0.05)]
    pub clears: f64,
    #[arg(long, default_value_t = 4)]
    pub mutations_per_commit: usize,
    /// Events per second.
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Seconds of trace.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Random when not given; printed either way.
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub enum Skew {
    Uniform,
    Zipf(f64),
}

fn parse_skew(text: &str) -> Result<Skew> {
    if text == "uniform" {
        return Ok(Skew::Uniform);
    }
    let Some(theta) = text.strip_prefix("zipf:") else {
        bail!("expected `uniform` or `zipf:THETA`");
    };
    let theta: f64 = theta.parse().context("THETA is a number")?;
    if !theta.is_finite() || theta <= 0.0 {
        bail!("THETA must be positive");
    }
    Ok(Skew::Zipf(theta))
}

fn parse_size_range(text: &str) -> Result<(usize, usize)> {
    let (min, max) = match text.split_once("..") {
        Some((min, max)) => (min.parse()?, max.parse()?),
        None => {
            let size = text.parse()?;
            (size, size)
        }
    };
    if min > max {
        bail!("MIN is above MAX");
    }
    Ok((min, max))
}

/// The parameters as recorded in the trace's header.
#[derive(Serialize)]
struct Recorded {
    generator: &'static str,
    keys: u64,
    value_bytes: [usize; 2],
    skew: String,
    reads: f64,
    clears: f64,
    mutations_per_commit: usize,
    rate: f64,
    duration: f64,
}

/// Picks key indexes by popularity.
enum KeyPicker {
    Uniform(u64),
    /// Ranks 1..=n; rank r is picked in proportion to 1 / r^theta.
    Zipf(Zipf<f64>),
}

impl KeyPicker {
    fn new(keys: u64, skew: Skew) -> Result<KeyPicker> {
        Ok(match skew {
            Skew::Uniform => KeyPicker::Uniform(keys),
            Skew::Zipf(theta) => {
                KeyPicker::Zipf(Zipf::new(keys as f64, theta).context("a Zipf skew over the keys")?)
            }
        })
    }

    fn pick(&self, rng: &mut StdRng) -> u64 {
        match self {
            KeyPicker::Uniform(keys) => rng.random_range(0..*keys),
            KeyPicker::Zipf(zipf) => (zipf.sample(rng) as u64).saturating_sub(1),
        }
    }
}

/// Key `index`: a scattered first letter, then the index, so neighbouring
/// (and hot, low) indexes land on different shards.
pub fn key_name(index: u64) -> Bytes {
    let scattered = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    let letter = (b'a' + (scattered % 26) as u8) as char;
    Bytes::from(format!("{letter}{index:08}"))
}

fn random_value(rng: &mut StdRng, (min, max): (usize, usize)) -> Bytes {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let len = rng.random_range(min..=max);
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
        .collect::<Vec<u8>>()
        .into()
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.keys == 0 || args.mutations_per_commit == 0 {
        bail!("--keys and --mutations-per-commit must be positive");
    }
    if !args.rate.is_finite()
        || args.rate <= 0.0
        || !args.duration.is_finite()
        || args.duration < 0.0
    {
        bail!("--rate must be positive and --duration not negative");
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("seed={seed}");
    let recorded = Recorded {
        generator: "teamlog workload generate",
        keys: args.keys,
        value_bytes: [args.value_bytes.0, args.value_bytes.1],
        skew: match args.skew {
            Skew::Uniform => "uniform".into(),
            Skew::Zipf(theta) => format!("zipf:{theta}"),
        },
        reads: args.reads,
        clears: args.clears,
        mutations_per_commit: args.mutations_per_commit,
        rate: args.rate,
        duration: args.duration,
    };
    let header = TraceHeader::new(seed, serde_json::to_value(recorded)?);
    let mut writer = TraceWriter::create(&args.out, &header)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let picker = KeyPicker::new(args.keys, args.skew)?;
    let events = (args.rate * args.duration).round() as u64;
    let (mut commits, mut reads) = (0u64, 0u64);
    for i in 0..events {
        let at_us = (i as f64 * 1e6 / args.rate) as u64;
        let op = if rng.random_bool(args.reads.clamp(0.0, 1.0)) {
            reads += 1;
            let key = key_name(picker.pick(&mut rng));
            if rng.random_bool(0.8) {
                TraceOp::Get(key)
            } else {
                // To the end of the key's letter.
                let end = Bytes::from(vec![key[0] + 1]);
                TraceOp::GetRange {
                    begin: key,
                    end,
                    limit: 20,
                }
            }
        } else {
            commits += 1;
            let mutations = (0..args.mutations_per_commit)
                .map(|_| {
                    let key = key_name(picker.pick(&mut rng));
                    if !rng.random_bool(args.clears.clamp(0.0, 1.0)) {
                        Mutation::SetValue {
                            key,
                            value: random_value(&mut rng, args.value_bytes),
                        }
                    } else if rng.random_bool(0.9) {
                        Mutation::ClearRange {
                            end: key_after(&key),
                            begin: key,
                        }
                    } else {
                        // A short range: this key up to the end of its
                        // hundred (about four keys share a letter there).
                        let mut end = key[..key.len() - 2].to_vec();
                        end.push(b'~');
                        Mutation::ClearRange {
                            begin: key,
                            end: end.into(),
                        }
                    }
                })
                .collect();
            TraceOp::Commit(mutations)
        };
        writer.write(&TraceEvent { at_us, op })?;
    }
    writer.finish()?;
    println!(
        "wrote {} events ({commits} commits, {reads} reads) to {}",
        events,
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_the_letters_and_zipf_favours_low_ranks() {
        let letters: std::collections::BTreeSet<u8> = (0..200).map(|i| key_name(i)[0]).collect();
        assert_eq!(letters.len(), 26);
        let picker = KeyPicker::new(1000, Skew::Zipf(1.2)).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let low = (0..1000).filter(|_| picker.pick(&mut rng) < 10).count();
        assert!(low > 500, "{low} of 1000 picks in the top 10 ranks");
        assert!(parse_skew("zipf:x").is_err());
        assert_eq!(parse_size_range("3..9").unwrap(), (3, 9));
        assert!(parse_size_range("9..3").is_err());
    }
}

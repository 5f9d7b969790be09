//! `teamlog workload generate` and `teamlog replay` end to end: a seeded
//! trace replayed open loop, re-timed and closed loop against a local
//! cluster of real processes, and straight into an in-memory TLog with
//! `--path log`; every final check passes, and a key written behind the
//! replay's back makes the check fail with that key named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Result};
use bytes::Bytes;
use client::Client;
use proto::Mutation;
use serde_json::Value;
use testkit::seed_from_env;
use testkit::{ClusterSpec, LocalCluster};

fn teamlog(args: &[&str]) -> Result<Output> {
    let output = Command::new(crate::exe()).args(args).output()?;
    println!(
        "$ teamlog {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// A 3-second trace of 300 events over 300 keys, seeded.
fn generate(dir: &Path, seed: u64) -> Result<PathBuf> {
    let trace = dir.join("trace.jsonl");
    let seed = seed.to_string();
    let output = teamlog(&[
        "workload",
        "generate",
        "--keys",
        "300",
        "--value-bytes",
        "8..64",
        "--skew",
        "zipf:0.9",
        "--reads",
        "0.3",
        "--clears",
        "0.1",
        "--mutations-per-commit",
        "3",
        "--rate",
        "100",
        "--duration",
        "3",
        "--seed",
        &seed,
        "--out",
        path_str(&trace),
    ])?;
    ensure!(output.status.success(), "generate failed");
    Ok(trace)
}

/// Replays with `extra` arguments, writing the result and plot into `dir`
/// under `name`; returns whether it succeeded and the JSON result.
fn replay(trace: &Path, dir: &Path, name: &str, extra: &[&str]) -> Result<(bool, Value)> {
    let result = dir.join(format!("{name}.json"));
    let plot = dir.join(format!("{name}.svg"));
    let mut args = vec![
        "replay",
        path_str(trace),
        "--result",
        path_str(&result),
        "--plot",
        path_str(&plot),
    ];
    args.extend_from_slice(extra);
    let output = teamlog(&args)?;
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&result)?)?;
    let svg = std::fs::read_to_string(&plot)?;
    ensure!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "not an SVG"
    );
    Ok((output.status.success(), json))
}

/// The fields every result has, and a replay that did something.
fn assert_sane(json: &Value) {
    for field in [
        "events",
        "commits",
        "reads",
        "throughput",
        "commit_latency",
        "read_latency",
        "visibility_lag",
        "errors",
        "late_events",
        "series",
        "check",
    ] {
        assert!(json.get(field).is_some(), "no {field:?} in {json}");
    }
    assert_eq!(json["events"], 300);
    assert!(json["throughput"]["commits_per_s"].as_f64().unwrap() > 0.0);
    assert!(json["throughput"]["reads_per_s"].as_f64().unwrap() > 0.0);
    for stats in ["commit_latency", "read_latency", "visibility_lag"] {
        assert!(json[stats]["count"].as_u64().unwrap() > 0, "{stats}");
        for field in ["min_us", "avg_us", "p50_us", "p99_us", "max_us"] {
            assert!(json[stats].get(field).is_some(), "{stats}.{field}");
        }
    }
    assert!(!json["series"].as_array().unwrap().is_empty());
}

fn passed(json: &Value) -> bool {
    json["check"]["passed"] == Value::Bool(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_replays_against_a_cluster_and_the_check_catches_a_stray_write() -> Result<()> {
    let seed = seed_from_env();
    let dir = tempfile::tempdir()?;
    let trace = generate(dir.path(), seed)?;
    let spec = ClusterSpec {
        shard_begins: vec!["h".into(), "p".into()],
        ..ClusterSpec::default()
    };
    let local = LocalCluster::start(crate::exe(), &dir.path().join("cluster"), &spec).await?;
    let cluster = path_str(&local.cluster_path).to_string();

    // Replaying the same trace again leaves the same final state, so one
    // cluster serves every mode.
    let modes: [(&str, Vec<&str>); 3] = [
        ("open", vec![]),
        ("rate", vec!["--rate", "400"]),
        ("closed", vec!["--clients", "4", "--think-ms", "1"]),
    ];
    for (name, extra) in modes {
        let mut args = vec!["--cluster", cluster.as_str()];
        args.extend(extra);
        let (ok, json) = replay(&trace, dir.path(), name, &args)?;
        assert!(ok && passed(&json), "{name}: {json}");
        assert_sane(&json);
        assert_eq!(json["commits"]["refused"], 0, "{name}: {json}");
    }

    // A key the trace never writes, set behind the replay's back.
    let client = Client::new(&local.cluster)?;
    client
        .commit(vec![Mutation::SetValue {
            key: Bytes::from_static(b"stray\xff"),
            value: Bytes::from_static(b"x"),
        }])
        .await?;
    let (ok, json) = replay(&trace, dir.path(), "stray", &["--cluster", &cluster])?;
    assert!(!ok && !passed(&json), "{json}");
    assert_eq!(json["check"]["mismatch_count"], 1, "{json}");
    let mismatch = &json["check"]["mismatches"][0];
    assert_eq!(mismatch["key"], "stray\\xff");
    assert_eq!(mismatch["expected"], serde_json::json!([null]));
    assert_eq!(mismatch["actual"], "x");

    // Without the check the same replay succeeds.
    let (ok, json) = replay(
        &trace,
        dir.path(),
        "unchecked",
        &["--cluster", &cluster, "--no-check"],
    )?;
    assert!(ok && json["check"].is_null(), "{json}");
    Ok(local.stop().await?)
}

#[test]
fn a_trace_replays_straight_into_a_memory_tlog_and_a_storage_server() -> Result<()> {
    let seed = seed_from_env();
    let dir = tempfile::tempdir()?;
    let trace = generate(dir.path(), seed)?;
    let data = path_str(dir.path()).to_string();
    for (name, extra) in [("log-open", vec![]), ("log-closed", vec!["--clients", "4"])] {
        let mut args = vec!["--path", "log", "--tlog", "mem", "--dir", data.as_str()];
        args.extend(extra);
        let (ok, json) = replay(&trace, dir.path(), name, &args)?;
        assert!(ok && passed(&json), "{name}: {json}");
        assert_sane(&json);
    }

    // A bad line stops the replay and is named.
    let text = std::fs::read_to_string(&trace)?;
    let mut lines: Vec<&str> = text.lines().collect();
    lines[3] = r#"{"at_us":1,"commit":[{"op":"put","key":"a"}]}"#;
    let broken = dir.path().join("broken.jsonl");
    std::fs::write(&broken, lines.join("\n"))?;
    let output = teamlog(&["replay", path_str(&broken), "--path", "log", "--dir", &data])?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 4"), "{stderr}");
    Ok(())
}

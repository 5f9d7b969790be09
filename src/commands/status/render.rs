//! `teamlog status`'s table: a row per process, with what it said, and
//! the controller's recoveries and workers under its coordinator, and the
//! ranges each storage server copies for moves under it.

use std::fmt::Write;

use proto::key_text::escape;
use proto::rpc::{AddingRangeStatus, RecoveryReport, TLogStatusReply};
use proto::system_keys::METADATA_TEAM;
use proto::units::{binary_bytes as bytes, copy_progress};
use proto::StorageTeamId;

use super::{ClusterStatus, ProcessStatus};

/// The controller's lines: the generation, a recovery under way, the
/// last recovery's phases, and the workers it hears from.
fn render_recovery(out: &mut String, report: &RecoveryReport) {
    let pad = "";
    let _ = writeln!(out, "{pad:51}controller: generation {}", report.epoch);
    for generation in &report.generations {
        let _ = writeln!(out, "{pad:51}  {generation}");
    }
    for line in &report.distribution {
        let _ = writeln!(out, "{pad:51}  data distribution: {line}");
    }
    if let Some(recovering) = &report.recovering {
        let _ = writeln!(out, "{pad:51}  recovering: {recovering}");
    }
    if !report.phases.is_empty() {
        let phases: Vec<String> = report
            .phases
            .iter()
            .map(|(name, ms)| format!("{name} {ms} ms"))
            .collect();
        let _ = writeln!(out, "{pad:51}  last recovery: {}", phases.join(", "));
    }
    if let Some(failure) = &report.last_failure {
        let _ = writeln!(out, "{pad:51}  last recovery abandoned: {failure}");
    }
    for worker in &report.workers {
        let _ = writeln!(
            out,
            "{pad:51}  worker {} (heard {} ms ago): {}",
            worker.address,
            worker.silent_ms,
            if worker.roles.is_empty() {
                "no roles".to_owned()
            } else {
                worker.roles.join(", ")
            }
        );
    }
}

pub fn render_text(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let committed = status
        .committed_version
        .map_or_else(|| "unknown".to_string(), |v| v.to_string());
    let _ = writeln!(
        out,
        "{} of {} processes healthy; committed version {committed}\n",
        status.processes - status.unhealthy,
        status.processes,
    );
    let _ = writeln!(
        out,
        "{:<11} {:>6}  {:<21} {:<8} DETAILS",
        "ROLE", "ID", "ADDRESS", "HEALTHY"
    );
    for coordinator in &status.coordinators {
        row(&mut out, coordinator, |s| {
            let known =
                |id: Option<u64>| id.map_or_else(|| "none".to_string(), |id| id.to_string());
            format!(
                "leader {}, term {}, applied {}, controller {}",
                known(s.leader),
                s.term,
                s.last_applied,
                known(s.controller)
            )
        });
        let watched = coordinator.status.iter().flat_map(|s| &s.watched);
        for process in watched.filter(|w| w.failed_for_ms.is_some()) {
            let _ = writeln!(
                out,
                "{:51}controller: {} {} ({}) failed {:.1} s ago",
                "",
                process.role,
                process.id,
                process.address,
                process.failed_for_ms.unwrap_or(0) as f64 / 1000.0
            );
        }
        let reports = coordinator
            .status
            .iter()
            .filter_map(|s| s.recovery.as_ref());
        for report in reports {
            render_recovery(&mut out, report);
        }
    }
    row(&mut out, &status.sequencer, |s| {
        format!("last {}, committed {}", s.last_version, s.committed_version)
    });
    for proxy in &status.proxies {
        row(&mut out, proxy, |s| {
            format!(
                "known committed {}, commits {}",
                s.known_committed_version, s.commits
            )
        });
        if let Some(delaying) = proxy.status.as_ref().and_then(|s| s.delaying.as_ref()) {
            let _ = writeln!(out, "{:51}{delaying}", "");
        }
    }
    for tlog in &status.tlogs {
        row(&mut out, tlog, tlog_details);
        for team in tlog.status.iter().flat_map(|s| &s.teams) {
            let servers: Vec<String> = team.servers.iter().map(|s| s.0.to_string()).collect();
            let readers = match team.team {
                METADATA_TEAM => "read by the controller".to_owned(),
                _ => format!("servers {}", servers.join(",")),
            };
            let _ = writeln!(
                out,
                "{:51}{}: {}, popped {}, {readers}",
                "",
                team_name(team.team),
                bytes(team.bytes),
                team.popped,
            );
        }
    }
    for server in &status.storage_servers {
        row(&mut out, server, |s| {
            let r = &s.reply;
            let teams: Vec<String> = r.teams.iter().map(|t| t.0.to_string()).collect();
            format!(
                "applied {}, durable {}, oldest readable {}, lag {} versions ({:.3} s), \
                 window {}, teams {}",
                r.applied_version,
                r.durable_version,
                r.oldest_readable_version,
                s.lag_versions,
                s.lag_seconds,
                bytes(r.window_bytes),
                teams.join(",")
            )
        });
        for adding in server.status.iter().flat_map(|s| &s.reply.adding) {
            let _ = writeln!(out, "{:51}{}", "", adding_line(adding));
        }
    }
    out
}

/// A range a storage server copies for a move, and how far it is.
pub(super) fn adding_line(adding: &AddingRangeStatus) -> String {
    let range = format!("[{}, {})", escape(&adding.begin), escape(&adding.end));
    if adding.ready {
        return format!("adding {range}: copied, waits for the move to flip");
    }
    let progress = copy_progress(
        adding.pairs_copied,
        adding.bytes_copied,
        adding.size_left,
        adding.size_per_sec,
    );
    format!("adding {range}: {progress}")
}

pub(super) fn tlog_details(s: &TLogStatusReply) -> String {
    let mut details = format!(
        "durable {}, known committed {}, memory {} of {}, disk {}",
        s.durable_version,
        s.known_committed_version,
        bytes(s.memory_bytes),
        bytes(s.memory_budget),
        bytes(s.disk_bytes)
    );
    if s.locked {
        details.push_str(", locked");
    }
    if s.poisoned {
        details.push_str(", POISONED");
    }
    if let Some(team) = s.truncation_blocker {
        let _ = write!(details, ", truncation held back by {}", team_name(team));
    }
    details
}

/// A team as status names it; the metadata team, which the controller
/// pops, by what it is.
fn team_name(team: StorageTeamId) -> String {
    if team == METADATA_TEAM {
        "the metadata team".to_owned()
    } else {
        format!("team {}", team.0)
    }
}

pub(super) fn row<T>(
    out: &mut String,
    process: &ProcessStatus<T>,
    details: impl FnOnce(&T) -> String,
) {
    let id = process
        .id
        .map_or_else(|| "-".to_string(), |id| id.to_string());
    let (healthy, details) = match (&process.status, &process.error) {
        (Some(status), None) if process.excluded => ("excluded", details(status)),
        (None, None) if process.excluded => ("excluded", "does not answer".to_owned()),
        (status, Some(error)) if process.failed => (
            "FAILED",
            match status {
                Some(status) => format!("{error} | {}", details(status)),
                None => format!("{error} | does not answer"),
            },
        ),
        (Some(status), None) => ("yes", details(status)),
        (Some(status), Some(error)) => ("NO", format!("{error} | {}", details(status))),
        (None, error) => ("NO", error.clone().unwrap_or_default()),
    };
    let _ = writeln!(
        out,
        "{:<11} {:>6}  {:<21} {:<8} {details}",
        process.role,
        id,
        process.address.to_string(),
        healthy
    );
}

//! Human output of the CLI: status tables and progress lines.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use jetsaga_core::saga::definition::SagaPolicy;
use jetsaga_core::saga::state::Millis;
use jetsaga_protocol::TaskKind;
use jetsaga_protocol::api::{
    AttemptOutcome, DefinitionListing, SagaDetail, SagaStats, SagaStatus, SagaSummary,
    ServiceStatus, Stats, StepState,
};
use std::time::{Duration, UNIX_EPOCH};

fn time(ms: Millis) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn span(from: Millis, to: Millis) -> String {
    let d = Duration::from_millis(to.saturating_sub(from));
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn reason(status: &SagaStatus) -> Option<String> {
    match status {
        SagaStatus::Compensating { reason }
        | SagaStatus::Compensated { reason }
        | SagaStatus::Failed { reason }
        | SagaStatus::Cancelled { reason } => Some(reason.clone()),
        SagaStatus::PartiallyCompensated {
            reason,
            stuck_steps,
        } => Some(format!(
            "{reason}; needs a person: {}",
            stuck_steps.join(", ")
        )),
        _ => None,
    }
}

fn last_error(step: &StepState) -> String {
    step.attempts
        .iter()
        .rev()
        .find_map(|a| match &a.outcome {
            Some(AttemptOutcome::Retryable { error }) | Some(AttemptOutcome::Fatal { error }) => {
                Some(error.clone())
            }
            Some(AttemptOutcome::TimedOut) => Some("timed out".into()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Attempts the step made of `kind`: the latest one's number, since numbers
/// go 1, 2, ... (the history may have dropped some from its middle).
fn attempts(step: &StepState, kind: TaskKind) -> usize {
    step.attempts
        .iter()
        .filter(|a| a.kind == kind)
        .map(|a| a.number as usize)
        .max()
        .unwrap_or(0)
}

fn duration(step: &StepState, kind: TaskKind) -> String {
    let mut of_kind = step.attempts.iter().filter(|a| a.kind == kind);
    let Some(first) = of_kind.next() else {
        return String::new();
    };
    let last = of_kind.next_back().unwrap_or(first);
    match last.finished_at {
        Some(end) => span(first.started_at, end),
        None => "…".into(),
    }
}

/// The full status of one saga: a header and a table of its steps.
pub(super) fn saga(detail: &SagaDetail) -> String {
    let s = &detail.saga;
    let mut out = format!(
        "saga      {}\ndefinition {} v{}\nstate     {}\n",
        s.id,
        s.name,
        s.definition_version,
        s.status.name()
    );
    if let Some(r) = reason(&s.status) {
        out.push_str(&format!("reason    {r}\n"));
    }
    if let Some(position) = detail.queue_position {
        out.push_str(&format!(
            "queued    position {position} in the start queue (a concurrency limit is reached; it starts when room frees)\n"
        ));
    }
    if s.generation > 0 {
        out.push_str(&format!(
            "retried   key generation {} (idempotency keys end in .g{})\n",
            s.generation, s.generation
        ));
    }
    out.push_str(&format!("created   {}\n", time(s.created_at)));
    if let Some(f) = s.finished_at {
        out.push_str(&format!(
            "finished  {} (took {})\n",
            time(f),
            span(s.created_at, f)
        ));
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "step",
        "service",
        "state",
        "attempts",
        "took",
        "compensation",
        "comp. attempts",
        "last error",
    ]);
    for (state, def) in s.steps.iter().zip(&detail.definition.steps) {
        table.add_row(vec![
            def.id.clone(),
            def.service.clone(),
            state.status.name().to_string(),
            attempts(state, TaskKind::Action).to_string(),
            duration(state, TaskKind::Action),
            def.compensation.clone().unwrap_or_else(|| "-".into()),
            attempts(state, TaskKind::Compensation).to_string(),
            last_error(state),
        ]);
    }
    out.push_str(&table.to_string());
    out
}

/// One line per change, for `saga watch`.
pub(super) fn progress_line(detail: &SagaDetail) -> String {
    let s = &detail.saga;
    let steps: Vec<String> = s
        .steps
        .iter()
        .zip(&detail.definition.steps)
        .map(|(st, d)| format!("{}={}", d.id, st.status.name()))
        .collect();
    format!(
        "{} {:22} {}",
        time(s.updated_at),
        s.status.name(),
        steps.join(" ")
    )
}

/// A saga listing.
pub(super) fn summaries(sagas: &[SagaSummary]) -> String {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(vec!["id", "saga", "state", "steps", "created", "took"]);
    for s in sagas {
        table.add_row(vec![
            s.id.clone(),
            s.name.clone(),
            s.state.to_string(),
            format!("{}/{}", s.steps_done, s.steps_total),
            time(s.created_at),
            s.finished_at
                .map(|f| span(s.created_at, f))
                .unwrap_or_default(),
        ]);
    }
    table.to_string()
}

/// A definitions listing.
pub(super) fn definitions(defs: &[DefinitionListing]) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "saga", "version", "steps", "services", "timeout", "triggers", "policy", "here",
    ]);
    for listing in defs {
        let d = &listing.definition;
        let mut services: Vec<&str> = d.steps.iter().map(|s| s.service.as_str()).collect();
        services.sort_unstable();
        services.dedup();
        table.add_row(vec![
            d.name.clone(),
            d.version.to_string(),
            d.steps.len().to_string(),
            services.join(", "),
            d.timeout
                .map(|t| humantime::format_duration(Duration::from_millis(t)).to_string())
                .unwrap_or_else(|| "-".into()),
            if d.triggers.is_empty() {
                "-".into()
            } else {
                d.triggers
                    .iter()
                    .map(|t| t.subject.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            SagaPolicy {
                enabled: d.policy.enabled,
                environments: d.policy.environments.clone(),
            }
            .summary(),
            if listing.enabled {
                "enabled".into()
            } else {
                "disabled".into()
            },
        ]);
    }
    table.to_string()
}

/// The start-up order of `deps resolve`: a table in order with each
/// service's level (services of one level can start in parallel), or why
/// there is none.
pub(super) fn deps_order(report: &crate::deps::Resolution) -> String {
    use crate::deps::HealthOutcome;
    let Some(order) = &report.order else {
        let mut out = String::from("no start-up order: the dependencies form a cycle\n");
        if !report.unordered.is_empty() {
            out.push_str(&format!(
                "waiting on the cycle: {}\n",
                report.unordered.join(", ")
            ));
        }
        return out;
    };
    let levels = report.levels.as_ref().map_or(0, Vec::len);
    let mut out = format!(
        "start-up order: {} services in {levels} levels\n",
        order.len()
    );
    let mut header = vec!["#", "level", "service", "version", "depends on"];
    if report.health.is_some() {
        header.push("health");
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    for (position, name) in order.iter().enumerate() {
        let Some(service) = report.service(name) else {
            continue;
        };
        let level = report
            .levels
            .iter()
            .flatten()
            .position(|l| l.contains(name))
            .map(|l| l.to_string())
            .unwrap_or_default();
        let depends_on: Vec<String> = service
            .depends_on
            .iter()
            .map(|d| {
                let mut text = d.name.clone();
                if let Some(req) = &d.version {
                    text.push_str(&format!(" {req}"));
                }
                if d.optional {
                    text.push_str(" (optional)");
                }
                text
            })
            .collect();
        let mut row = vec![
            (position + 1).to_string(),
            level,
            name.clone(),
            service.version.to_string(),
            depends_on.join(", "),
        ];
        if let Some(checks) = &report.health {
            row.push(match checks.iter().find(|c| &c.service == name) {
                None => "-".into(),
                Some(c) => match &c.outcome {
                    HealthOutcome::Healthy { status, elapsed_ms } => {
                        format!("ok ({status}, {elapsed_ms}ms)")
                    }
                    HealthOutcome::Unhealthy { .. } => "FAILED".into(),
                },
            });
        }
        table.add_row(row);
    }
    out.push_str(&table.to_string());
    out.push('\n');
    out
}

/// The verdict of `deps validate` when there is no error.
pub(super) fn deps_ok(report: &crate::deps::Resolution) -> String {
    if report.has_errors() {
        return String::new();
    }
    format!(
        "ok: {} services, start-up order in {} levels\n",
        report.services.len(),
        report.levels.as_ref().map_or(0, Vec::len)
    )
}

/// The problems of `deps resolve` / `deps validate`, one a line with its
/// code, then a count.
pub(super) fn deps_problems(report: &crate::deps::Resolution) -> String {
    let mut out = String::new();
    let (mut errors, mut notes) = (0, 0);
    for problem in &report.problems {
        let severity = if problem.is_error() {
            errors += 1;
            "error"
        } else {
            notes += 1;
            "note"
        };
        out.push_str(&format!("{severity}[{}]: {problem}\n", problem.code()));
    }
    if errors > 0 {
        out.push_str(&format!("{errors} error(s), {notes} note(s)\n"));
    }
    out
}

/// Services with their breaker state, held and in-flight tasks, and policy
/// (`jetsaga breaker list|status|reset`).
pub(super) fn breakers(services: &[ServiceStatus]) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "service",
        "breaker",
        "since",
        "failures",
        "held",
        "in flight",
        "max in flight",
        "breaker config",
    ]);
    for s in services {
        let state = match (s.state.as_str(), s.half_opens_at) {
            ("open", Some(at)) => format!("open (probe at {})", time(at)),
            ("half_open", _) => format!(
                "half_open ({} ok{})",
                s.successes,
                if s.probe_in_flight { ", probe out" } else { "" }
            ),
            (state, _) => state.to_string(),
        };
        table.add_row(vec![
            s.service.clone(),
            state,
            s.since.map_or_else(|| "-".into(), time),
            s.failures.to_string(),
            s.held.to_string(),
            s.in_flight.to_string(),
            s.max_in_flight
                .map_or_else(|| "-".into(), |n| n.to_string()),
            s.circuit_breaker.as_ref().map_or_else(
                || "-".into(),
                |c| {
                    format!(
                        "open after {} failures, close after {} probes, probe after {}",
                        c.failure_threshold,
                        c.success_threshold,
                        humantime::format_duration(Duration::from_millis(c.open_timeout))
                    )
                },
            ),
        ]);
    }
    table.to_string()
}

/// A breaker's latest transitions, oldest first (`jetsaga breaker
/// status|reset`); `None` when it has none.
pub(super) fn breaker_history(s: &ServiceStatus) -> Option<String> {
    if s.history.is_empty() {
        return None;
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(vec!["at", "from", "to", "cause"]);
    for t in &s.history {
        table.add_row(vec![
            time(t.at),
            t.from.clone(),
            t.to.clone(),
            t.cause.clone(),
        ]);
    }
    Some(table.to_string())
}

/// `jetsaga saga stats`: one row per definition, then the total.
pub(super) fn stats(stats: &SagaStats) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "saga",
        "total",
        "states",
        "success",
        "compensated",
        "avg",
        "p50",
        "p95",
    ]);
    let rows = stats
        .definitions
        .iter()
        .map(|d| (d.name.as_str(), &d.stats))
        .chain(std::iter::once(("(all)", &stats.overall)));
    for (name, s) in rows {
        table.add_row(stats_row(name, s));
    }
    let mut out = table.to_string();
    if let Some(after) = stats.created_after {
        out.push_str(&format!("\nsagas created since {}", time(after)));
    }
    out
}

fn stats_row(name: &str, s: &Stats) -> Vec<String> {
    let states = s
        .states
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(state, n)| format!("{state} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rate = |r: Option<f64>| r.map_or("-".into(), |r| format!("{:.1}%", r * 100.0));
    let ms = |f: fn(&jetsaga_protocol::api::Durations) -> u64| {
        s.duration.as_ref().map_or("-".into(), |d| span(0, f(d)))
    };
    vec![
        name.to_string(),
        s.total.to_string(),
        states,
        rate(s.success_rate),
        rate(s.compensation_rate),
        ms(|d| d.avg),
        ms(|d| d.p50),
        ms(|d| d.p95),
    ]
}

/// The engines and partitions of an installation (`jetsaga cluster status`),
/// lease expiry relative to `now`.
pub(super) fn cluster(status: &jetsaga_protocol::api::ClusterStatus, now: Millis) -> String {
    let mut partitions = Table::new();
    partitions.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "partition",
        "leader",
        "epoch",
        "lease expires",
        "journal record",
        "journal seq",
        "applied (engine: record)",
    ]);
    for p in &status.partitions {
        partitions.add_row(vec![
            p.partition.to_string(),
            p.leader.clone().unwrap_or_else(|| "none".into()),
            p.epoch.map_or_else(|| "-".into(), |e| e.to_string()),
            p.lease_expires_at.map_or_else(
                || "-".into(),
                |at| format!("in {} ms", at.saturating_sub(now)),
            ),
            p.journal_last_record.to_string(),
            p.journal_last_seq.to_string(),
            p.applied
                .iter()
                .map(|(engine, record)| format!("{engine}: {record}"))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    let mut engines = Table::new();
    engines
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(vec!["engine", "host", "pid", "leads", "started", "seen"]);
    for e in &status.engines {
        engines.add_row(vec![
            e.id.clone(),
            e.host.clone(),
            e.pid.to_string(),
            if e.partitions.is_empty() {
                "-".into()
            } else {
                e.partitions
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
            time(e.started_at),
            format!("{} ms ago", now.saturating_sub(e.seen_at)),
        ]);
    }
    format!("{partitions}\n{engines}")
}

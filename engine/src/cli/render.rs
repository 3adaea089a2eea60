//! Human output of the CLI: status tables and progress lines.

use crate::api::{SagaDetail, SagaSummary};
use crate::saga::definition::SagaDefinition;
use crate::saga::state::{AttemptOutcome, Millis, SagaStatus, StepState};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use jetsaga_worker::protocol::TaskKind;
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

fn attempts(step: &StepState, kind: TaskKind) -> usize {
    step.attempts.iter().filter(|a| a.kind == kind).count()
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
            s.state.clone(),
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
pub(super) fn definitions(defs: &[SagaDefinition]) -> String {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(vec!["saga", "version", "steps", "services", "timeout"]);
    for d in defs {
        let mut services: Vec<&str> = d.steps.iter().map(|s| s.service.as_str()).collect();
        services.sort_unstable();
        services.dedup();
        table.add_row(vec![
            d.name.clone(),
            d.version.to_string(),
            d.steps.len().to_string(),
            services.join(", "),
            d.timeout
                .map(|t| humantime::format_duration(t).to_string())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    table.to_string()
}

//! The JSON the request API answers, pinned: each reply type built from
//! core state and encoded, then compared byte for byte with a file under
//! `golden/`. A change of the wire shows up here first.
//!
//! `JETSAGA_BLESS=1 cargo test -p jetsaga-engine --lib api::golden` writes
//! the files anew; do that only for an intended change of the protocol.

use super::*;
use jetsaga_core::admission::ServiceStatus;
use jetsaga_core::saga::definition::{BreakerConfig, Format};
use jetsaga_core::saga::state::{Attempt, AttemptOutcome, StepState, StepStatus};
use jetsaga_protocol::TaskKind;
use jetsaga_protocol::api::SagaSummary;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

const DEFINITIONS: &str = r#"
sagas:
  order:
    timeout: 5m
    max_running: 4
    policy: { environments: [staging, production] }
    triggers:
      - subject: shop.order.placed
        input: { order_id: /data/id }
    steps:
      - id: charge
        service: payments
        operation: charge
        compensation: refund
        timeout: 30s
        retry: { max_attempts: 3, initial_delay: 500ms, max_delay: 5s, backoff_factor: 2, jitter: 0.2 }
      - id: ship
        service: shipping
        operation: ship
        timeout: 15s
        depends_on: [charge]
      - id: notify
        service: email
        operation: send
        timeout: 10s
        depends_on: [ship]
  plain:
    steps:
      - id: only
        service: s
        operation: o
        timeout: 1s
services:
  payments:
    max_in_flight: 8
    circuit_breaker: { failure_threshold: 5, success_threshold: 2, open_timeout: 30s }
"#;

fn file() -> DefinitionFile {
    Api::validate_definitions(DEFINITIONS, Format::Yaml).expect("valid definitions")
}

fn definition() -> SagaDefinition {
    let mut def = file().sagas.remove(0);
    def.version = 3;
    def
}

fn attempt(kind: TaskKind, number: u32, outcome: Option<AttemptOutcome>) -> Attempt {
    Attempt {
        kind,
        number,
        generation: if number > 1 { 1 } else { 0 },
        started_at: 1_000 + u64::from(number),
        finished_at: outcome.as_ref().map(|_| 2_000 + u64::from(number)),
        outcome,
    }
}

/// A saga touching every field: attempts of both kinds with every
/// outcome, step states with and without data, optional fields both ways.
fn saga(status: SagaStatus) -> Saga {
    Saga {
        id: "0190a000-0000-7000-8000-000000000001".into(),
        name: "order".into(),
        definition_version: 3,
        input: json!({"order_id": "o-1", "amount": 12.5, "tags": ["a"]}),
        idempotency_key: Some("key-1".into()),
        generation: 1,
        status,
        steps: vec![
            StepState {
                status: StepStatus::CompensationFailed {
                    error: "refund refused".into(),
                },
                attempts: vec![
                    attempt(
                        TaskKind::Action,
                        1,
                        Some(AttemptOutcome::Retryable {
                            error: "busy".into(),
                        }),
                    ),
                    attempt(TaskKind::Action, 2, Some(AttemptOutcome::Ok)),
                    attempt(TaskKind::Compensation, 1, Some(AttemptOutcome::TimedOut)),
                    attempt(
                        TaskKind::Compensation,
                        2,
                        Some(AttemptOutcome::Fatal {
                            error: "refund refused".into(),
                        }),
                    ),
                ],
                attempts_dropped: 0,
                output: Some(json!({"charge_id": "ch_1"})),
                action_base: 1,
                compensation_base: 0,
            },
            StepState {
                status: StepStatus::RetryWaiting {
                    attempt: 2,
                    due: 9_000,
                },
                attempts: vec![
                    attempt(TaskKind::Action, 1, Some(AttemptOutcome::Abandoned)),
                    attempt(TaskKind::Action, 2, None),
                ],
                attempts_dropped: 0,
                output: None,
                action_base: 0,
                compensation_base: 2,
            },
            StepState::default(),
        ],
        created_at: 1_000,
        updated_at: 5_000,
        finished_at: Some(6_000),
        trace_parent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        event_seq: 7,
    }
}

/// A saga with every optional field at its default.
fn bare_saga() -> Saga {
    Saga {
        id: "0190a000-0000-7000-8000-000000000002".into(),
        name: "plain".into(),
        definition_version: 1,
        input: Value::Null,
        idempotency_key: None,
        generation: 0,
        status: SagaStatus::Pending,
        steps: vec![StepState::default()],
        created_at: 10,
        updated_at: 10,
        finished_at: None,
        trace_parent: None,
        event_seq: 0,
    }
}

/// Every saga status, and every step status, once each.
fn statuses() -> (Vec<SagaStatus>, Vec<StepStatus>) {
    let reason = || "why".to_string();
    let sagas = vec![
        SagaStatus::Pending,
        SagaStatus::Running,
        SagaStatus::Compensating { reason: reason() },
        SagaStatus::Completed,
        SagaStatus::Compensated { reason: reason() },
        SagaStatus::Failed { reason: reason() },
        SagaStatus::PartiallyCompensated {
            reason: reason(),
            stuck_steps: vec!["charge".into()],
        },
        SagaStatus::Cancelled { reason: reason() },
    ];
    let steps = vec![
        StepStatus::Pending,
        StepStatus::Running { attempt: 1 },
        StepStatus::RetryWaiting { attempt: 2, due: 3 },
        StepStatus::Succeeded,
        StepStatus::Failed { error: "e".into() },
        StepStatus::Skipped,
        StepStatus::Compensating { attempt: 1 },
        StepStatus::CompensationRetryWaiting { attempt: 2, due: 3 },
        StepStatus::Compensated,
        StepStatus::NotCompensable,
        StepStatus::CompensationFailed { error: "e".into() },
    ];
    (sagas, steps)
}

fn service_status() -> Vec<ServiceStatus> {
    vec![
        ServiceStatus {
            service: "payments".into(),
            state: "open".into(),
            failures: 5,
            successes: 0,
            probe_in_flight: false,
            since: Some(100),
            half_opens_at: Some(30_100),
            held: 2,
            in_flight: 1,
            max_in_flight: Some(8),
            circuit_breaker: Some(BreakerConfig {
                failure_threshold: 5,
                success_threshold: 2,
                open_timeout: Duration::from_secs(30),
            }),
            history: vec![],
        },
        ServiceStatus {
            service: "email".into(),
            state: "none".into(),
            failures: 0,
            successes: 0,
            probe_in_flight: false,
            since: None,
            half_opens_at: None,
            held: 0,
            in_flight: 0,
            max_in_flight: None,
            circuit_breaker: None,
            history: vec![],
        },
    ]
}

/// A breaker forced open by an operator, with its history.
fn service_status_history() -> ServiceStatus {
    use jetsaga_core::admission::{BreakerCause, BreakerPhase, BreakerTransition};
    let mut status = service_status().remove(0);
    status.failures = 0;
    status.since = Some(200);
    status.half_opens_at = Some(30_200);
    status.history = vec![
        BreakerTransition {
            at: 100,
            from: BreakerPhase::Closed,
            to: BreakerPhase::Open,
            cause: BreakerCause::Failures,
        },
        BreakerTransition {
            at: 200,
            from: BreakerPhase::Open,
            to: BreakerPhase::Open,
            cause: BreakerCause::Forced,
        },
    ];
    status
}

/// Each reply the API gives, by file name, as it encodes today.
fn replies() -> Vec<(&'static str, Vec<u8>)> {
    let enc = |v: &dyn erased::Encode| v.encode();
    let detail = view::saga_detail(
        saga(SagaStatus::PartiallyCompensated {
            reason: "step charge failed".into(),
            stuck_steps: vec!["charge".into()],
        }),
        &definition(),
        None,
    );
    let mut pending = bare_saga();
    pending.status = SagaStatus::Pending;
    let queued = view::saga_detail(pending.clone(), &file().sagas.remove(0), Some(2));
    let (saga_statuses, step_statuses) = statuses();
    let every_status: Vec<Saga> = saga_statuses.into_iter().map(saga).collect();
    let summaries: Vec<SagaSummary> = every_status
        .iter()
        .chain([&pending])
        .map(view::saga_summary)
        .collect();
    let every_status: Vec<_> = every_status.into_iter().map(view::saga_view).collect();
    let every_step: Vec<_> = step_statuses
        .into_iter()
        .map(|status| {
            let mut s = bare_saga();
            s.steps[0].status = status;
            view::saga_view(s)
        })
        .collect();
    // A step whose attempt history was cut short: the view says how many
    // attempts it dropped.
    let truncated = {
        let mut s = bare_saga();
        s.steps[0].attempts_dropped = 476;
        view::saga_view(s)
    };
    let page = SagaPage {
        sagas: summaries.clone(),
        next: Some("0190a000-0000-7000-8000-000000000001".into()),
    };
    let last_page = SagaPage {
        sagas: vec![],
        next: None,
    };
    let listings: Vec<DefinitionListing> = file()
        .sagas
        .into_iter()
        .map(|definition| {
            let refusal = definition.policy.refusal(&definition.name, Some("dev"));
            DefinitionListing {
                enabled: refusal.is_none(),
                refusal,
                environment: Some("dev".into()),
                definition: view::definition_view(&definition),
            }
        })
        .collect();
    let applied = vec![
        AppliedDefinition {
            name: "order".into(),
            version: 2,
            changed: true,
        },
        AppliedDefinition {
            name: "plain".into(),
            version: 1,
            changed: false,
        },
    ];
    let started = [
        StartReply {
            saga_id: "s-1".into(),
            created: true,
            queued: false,
        },
        StartReply {
            saga_id: "s-2".into(),
            created: false,
            queued: true,
        },
    ];
    let services: Vec<_> = service_status()
        .into_iter()
        .map(view::service_status)
        .collect();
    vec![
        ("saga_detail.json", enc(&detail)),
        ("saga_detail_queued.json", enc(&queued)),
        ("saga_every_status.json", enc(&every_status)),
        ("saga_every_step_status.json", enc(&every_step)),
        ("saga_attempts_dropped.json", enc(&truncated)),
        ("saga_summaries.json", enc(&summaries)),
        ("saga_page.json", enc(&page)),
        ("saga_page_last.json", enc(&last_page)),
        ("definition_listings.json", enc(&listings)),
        ("definitions_applied.json", enc(&applied)),
        ("definition_file.json", enc(&view::definition_file(&file()))),
        ("start_replies.json", enc(&started)),
        ("service_status.json", enc(&services)),
        (
            "service_status_history.json",
            enc(&view::service_status(service_status_history())),
        ),
        ("saga_ref.json", enc(&SagaRef { id: "s-1".into() })),
    ]
}

/// Encoding through a trait object, so one list holds every reply type.
mod erased {
    pub(super) trait Encode {
        fn encode(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Vec<u8> {
            let mut out = serde_json::to_vec_pretty(self).expect("encodes");
            out.push(b'\n');
            out
        }
    }
}

#[test]
fn replies_encode_as_pinned() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/api/golden");
    let bless = std::env::var_os("JETSAGA_BLESS").is_some();
    for (name, bytes) in replies() {
        let path = dir.join(name);
        if bless {
            std::fs::write(&path, &bytes).expect("write golden file");
            continue;
        }
        let pinned = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            pinned == bytes,
            "{name} changed:\n--- pinned\n{}\n--- now\n{}",
            String::from_utf8_lossy(&pinned),
            String::from_utf8_lossy(&bytes)
        );
    }
}

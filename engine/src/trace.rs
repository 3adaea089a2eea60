//! OpenTelemetry traces of sagas, with ids derived from the saga instead of
//! live spans.
//!
//! The engine's work for one step attempt spans a dispatch and a result that
//! may arrive after an engine restart, so no span object is held across
//! events. Every id is derived from durable state:
//!
//! - the saga's **trace id** is the caller's, when the start carried a W3C
//!   `traceparent` (kept in [`Saga::trace_parent`]), else the 16 bytes of
//!   the saga id (a UUIDv7);
//! - the **saga span id** is a hash of the saga id, and its parent is the
//!   caller's span, if any;
//! - the **attempt span id** is a hash of (saga, step, kind, attempt), and
//!   its parent is the saga span.
//!
//! The task of an attempt carries `traceparent` = (trace id, attempt span
//! id) ([`task_traceparent`]), so a worker's handler span is a child of the
//! attempt span. The partition reports each transition to [`observe`], which
//! exports the spans of the attempts that ended in it (result applied, timed
//! out, abandoned) with their recorded start and end times, and the saga span
//! once the saga is terminal (`created_at` → `finished_at`). The spans are
//! built by the SDK tracer with the ids forced through [`DeterministicIds`],
//! the provider's id generator.
//!
//! Tracing is off unless [`init`] found an OTLP endpoint in the environment
//! (or a test [`install`]ed a provider); then every function here returns at
//! once.
//!
//! A transition is observed when it is applied, before its group commit is
//! flushed: an engine that crashes in between applies the event again after
//! the restart and exports the same spans (same ids) a second time.

use jetsaga_core::saga::definition::SagaDefinition;
use jetsaga_core::saga::state::{AttemptOutcome, Millis, Saga};
use jetsaga_protocol::TaskKind;
pub use jetsaga_protocol::trace_context::{HEADER_TRACEPARENT, TraceParent};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider, Tracer};
use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The engine's tracer, once tracing is on.
static TRACER: OnceLock<Tracer> = OnceLock::new();

thread_local! {
    /// Ids the next span built on this thread must have (see [`DeterministicIds`]).
    static NEXT_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Sets up trace export from the `OTEL_*` environment (service name default
/// `jetsaga-engine`): off, at the cost of one check per transition, unless
/// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
/// set. Hold the guard until the engine stopped: dropping it flushes.
pub fn init() -> TraceGuard {
    match provider_builder() {
        Some(builder) => {
            let provider = builder
                .with_id_generator(DeterministicIds::default())
                .build();
            install(&provider);
            tracing::info!("exporting traces over OTLP");
            TraceGuard::new(Some(provider))
        }
        None => TraceGuard::default(),
    }
}

/// A tracer provider builder exporting over OTLP/HTTP (protobuf) as the
/// standard `OTEL_*` variables say, with a batch span processor and the
/// resource `service.name` = `OTEL_SERVICE_NAME`, else `jetsaga-engine`.
/// `None` when tracing is off or the exporter cannot be built (logged).
fn provider_builder() -> Option<opentelemetry_sdk::trace::TracerProviderBuilder> {
    match jetsaga_protocol::telemetry::otlp_wanted(|name| std::env::var(name).ok()) {
        Ok(true) => {}
        Ok(false) => return None,
        Err(reason) => {
            tracing::warn!("{reason}");
            return None;
        }
    }
    // The exporter's HTTP client takes TLS from rustls with the process's
    // default crypto provider (an error if one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the OTLP span exporter; traces are off");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty()) {
        resource = resource.with_service_name("jetsaga-engine");
    }
    Some(
        SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_batch_exporter(exporter),
    )
}

/// Keeps trace export running; dropping it flushes the spans not yet
/// exported and shuts the exporter down.
#[derive(Debug, Default)]
#[must_use = "dropping the guard shuts tracing down"]
pub struct TraceGuard {
    /// The provider [`init`] installed, if tracing is on.
    provider: Option<SdkTracerProvider>,
}

impl TraceGuard {
    /// A guard over `provider` (`None`: tracing is off).
    pub fn new(provider: Option<SdkTracerProvider>) -> Self {
        Self { provider }
    }

    /// Whether spans are exported.
    pub fn enabled(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("could not flush the last spans: {e}");
        }
    }
}

/// Turns tracing on with `provider`, which must use [`DeterministicIds`] as
/// its id generator (else the spans get random ids and workers' spans lose
/// their parent). Only the first call in a process counts.
pub fn install(provider: &SdkTracerProvider) {
    let _ = TRACER.set(provider.tracer("jetsaga-engine"));
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// The id generator the engine's tracer provider must use: random ids,
/// except for the spans [`observe`] builds, whose ids it forces.
#[derive(Debug, Default, Clone)]
pub struct DeterministicIds {
    /// For every other span.
    random: RandomIdGenerator,
}

impl IdGenerator for DeterministicIds {
    fn new_trace_id(&self) -> TraceId {
        match NEXT_IDS.with(Cell::get) {
            Some((trace_id, _)) => trace_id,
            None => self.random.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        match NEXT_IDS.with(Cell::get) {
            Some((_, span_id)) => span_id,
            None => self.random.new_span_id(),
        }
    }
}

/// A validated, normalized `traceparent` from a start request's header
/// value; `None` (logged at debug) for a malformed one.
pub fn caller(value: Option<&str>) -> Option<String> {
    let value = value?;
    match value.parse::<TraceParent>() {
        Ok(tp) => Some(tp.to_string()),
        Err(e) => {
            tracing::debug!(error = %e, "ignoring the start's traceparent");
            None
        }
    }
}

/// [`caller`] of a NATS message's headers.
pub fn caller_from_headers(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    caller(headers?.get(HEADER_TRACEPARENT).map(|v| v.as_str()))
}

/// The caller's trace parent stored in `saga`, if valid.
fn caller_of(saga: &Saga) -> Option<TraceParent> {
    saga.trace_parent.as_deref().and_then(TraceParent::parse)
}

/// The saga's trace id: the caller's, else the saga id's 16 bytes.
pub fn saga_trace_id(saga: &Saga) -> [u8; 16] {
    match caller_of(saga) {
        Some(tp) => tp.trace_id,
        None => id_trace_id(&saga.id),
    }
}

/// The trace id of a saga started without a trace parent: its UUID's bytes
/// (a hash for an id that is not a UUID).
fn id_trace_id(saga_id: &str) -> [u8; 16] {
    match uuid::Uuid::parse_str(saga_id) {
        Ok(u) if !u.is_nil() => *u.as_bytes(),
        _ => {
            let hi = hash(&[b"trace-hi", saga_id.as_bytes()]);
            let lo = hash(&[b"trace-lo", saga_id.as_bytes()]);
            let mut out = [0u8; 16];
            out[..8].copy_from_slice(&hi.to_be_bytes());
            out[8..].copy_from_slice(&lo.to_be_bytes());
            out
        }
    }
}

/// The saga span's id: a hash of the saga id.
pub fn saga_span_id(saga_id: &str) -> [u8; 8] {
    hash(&[b"saga", saga_id.as_bytes()]).to_be_bytes()
}

/// The id of the span of attempt `attempt` of a step's action or
/// compensation: a hash of the four.
pub fn attempt_span_id(saga_id: &str, step_id: &str, kind: TaskKind, attempt: u32) -> [u8; 8] {
    hash(&[
        b"attempt",
        saga_id.as_bytes(),
        step_id.as_bytes(),
        kind.as_str().as_bytes(),
        &attempt.to_be_bytes(),
    ])
    .to_be_bytes()
}

/// FNV-1a over the parts (each followed by a separator byte, so that parts
/// cannot run into each other), mixed by SplitMix64's finalizer; never 0.
/// Stable across releases and platforms.
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h.max(1)
}

/// Trace flags of the saga's spans: the caller's, else sampled.
fn flags(saga: &Saga) -> u8 {
    caller_of(saga).map_or(1, |tp| tp.flags)
}

/// The `traceparent` header value of the task of an attempt: the saga's
/// trace, the attempt's span. `None` when tracing is off.
pub fn task_traceparent(
    saga: &Saga,
    step_id: &str,
    kind: TaskKind,
    attempt: u32,
) -> Option<String> {
    if !enabled() {
        return None;
    }
    Some(
        TraceParent {
            trace_id: saga_trace_id(saga),
            span_id: attempt_span_id(&saga.id, step_id, kind, attempt),
            flags: flags(saga),
        }
        .to_string(),
    )
}

/// Exports the spans a transition of `before` into `after` ended: every
/// attempt that finished in it, and the saga's once it became terminal.
/// Does nothing when tracing is off.
pub fn observe(def: &SagaDefinition, before: &Saga, after: &Saga) {
    let Some(tracer) = TRACER.get() else {
        return;
    };
    let trace_id = TraceId::from_bytes(saga_trace_id(after));
    let saga_span = SpanId::from_bytes(saga_span_id(&after.id));
    let saga_context = Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        saga_span,
        TraceFlags::new(flags(after)),
        true,
        TraceState::default(),
    ));
    for (i, (step, sd)) in after.steps.iter().zip(&def.steps).enumerate() {
        let earlier = before
            .steps
            .get(i)
            .map(|s| s.attempts.as_slice())
            .unwrap_or(&[]);
        for attempt in &step.attempts {
            let Some(finished_at) = attempt.finished_at else {
                continue;
            };
            let known = earlier.iter().any(|a| {
                a.kind == attempt.kind && a.number == attempt.number && a.finished_at.is_some()
            });
            if known {
                continue;
            }
            let (outcome, status) = match &attempt.outcome {
                Some(AttemptOutcome::Ok) | None => ("ok", Status::Ok),
                Some(AttemptOutcome::Retryable { error }) => {
                    ("retryable", Status::error(error.clone()))
                }
                Some(AttemptOutcome::Fatal { error }) => ("fatal", Status::error(error.clone())),
                Some(AttemptOutcome::TimedOut) => (
                    "timed_out",
                    Status::error("no result within the step's timeout"),
                ),
                Some(AttemptOutcome::Abandoned) => ("abandoned", Status::Unset),
            };
            let span_id = attempt_span_id(&after.id, &sd.id, attempt.kind, attempt.number);
            emit(
                tracer,
                (trace_id, SpanId::from_bytes(span_id)),
                &saga_context,
                format!("{} {}", sd.id, attempt.kind),
                (attempt.started_at, finished_at),
                vec![
                    KeyValue::new("saga.name", after.name.clone()),
                    KeyValue::new("saga.id", after.id.clone()),
                    KeyValue::new("step", sd.id.clone()),
                    KeyValue::new("service", sd.service.clone()),
                    KeyValue::new("kind", attempt.kind.as_str()),
                    KeyValue::new("attempt", i64::from(attempt.number)),
                    KeyValue::new("outcome", outcome),
                ],
                status,
            );
        }
    }
    if after.status.is_terminal() && !before.status.is_terminal() {
        let parent = match caller_of(after) {
            Some(tp) => tp.context(),
            None => Context::new(),
        };
        let state = after.status.name();
        let status = if state == "completed" {
            Status::Ok
        } else {
            Status::error(state)
        };
        emit(
            tracer,
            (trace_id, saga_span),
            &parent,
            format!("saga {}", after.name),
            (
                after.created_at,
                after.finished_at.unwrap_or(after.updated_at),
            ),
            vec![
                KeyValue::new("saga.name", after.name.clone()),
                KeyValue::new("saga.id", after.id.clone()),
                KeyValue::new("saga.version", i64::from(after.definition_version)),
                KeyValue::new("outcome", state),
            ],
            status,
        );
    }
}

/// Builds and ends one span with the given ids, parent, times and attributes.
#[allow(clippy::too_many_arguments)]
fn emit(
    tracer: &Tracer,
    ids: (TraceId, SpanId),
    parent: &Context,
    name: String,
    (start, end): (Millis, Millis),
    attributes: Vec<KeyValue>,
    status: Status,
) {
    use opentelemetry::trace::Span as _;
    NEXT_IDS.with(|n| n.set(Some(ids)));
    let mut span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_start_time(time(start))
        .with_attributes(attributes)
        .start_with_context(tracer, parent);
    NEXT_IDS.with(|n| n.set(None));
    let got = span.span_context().span_id();
    if got != ids.1 && span.is_recording() {
        static WARNED: OnceLock<()> = OnceLock::new();
        WARNED.get_or_init(|| {
            tracing::warn!(
                "the tracer provider does not use jetsaga_engine::trace::DeterministicIds; spans get random ids and workers' spans lose their parent"
            );
        });
    }
    span.set_status(status);
    span.end_with_timestamp(time(end.max(start)));
}

fn time(ms: Millis) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga(id: &str, trace_parent: Option<&str>) -> Saga {
        let mut s: Saga = serde_json::from_value(serde_json::json!({
            "id": id, "name": "order", "definition_version": 1, "input": null,
            "idempotency_key": null, "status": {"state": "running"}, "steps": [],
            "created_at": 1, "updated_at": 1, "finished_at": null,
        }))
        .unwrap();
        s.trace_parent = trace_parent.map(str::to_string);
        s
    }

    /// The task traceparent of `charge` attempt 1 of saga
    /// `0192f5a0-1234-7000-8000-00000000abcd`.
    const PINNED: &str = "00-0192f5a012347000800000000000abcd-88af9ce3ea31c18b-01";

    #[test]
    fn ids_are_derived_deterministically() {
        let id = "0192f5a0-1234-7000-8000-00000000abcd";
        let a = attempt_span_id(id, "charge", TaskKind::Action, 1);
        assert_eq!(a, attempt_span_id(id, "charge", TaskKind::Action, 1));
        assert_ne!(a, attempt_span_id(id, "charge", TaskKind::Action, 2));
        assert_ne!(a, attempt_span_id(id, "charge", TaskKind::Compensation, 1));
        assert_ne!(a, attempt_span_id(id, "charg", TaskKind::Action, 1));
        assert_ne!(a, saga_span_id(id));
        assert_ne!(
            saga_span_id(id),
            saga_span_id("0192f5a0-1234-7000-8000-00000000abce")
        );
        assert_ne!(a, [0; 8]);
        // Fixed forever: a task dispatched before an upgrade must still link
        // to the attempt span the upgraded engine exports.
        assert_eq!(
            TraceParent {
                trace_id: saga_trace_id(&saga(id, None)),
                span_id: attempt_span_id(id, "charge", TaskKind::Action, 1),
                flags: 1,
            }
            .to_string(),
            PINNED
        );
        // The trace id of a saga without a caller is its UUID.
        let s = saga(id, None);
        assert_eq!(
            saga_trace_id(&s),
            *uuid::Uuid::parse_str(id).unwrap().as_bytes()
        );
        assert_ne!(id_trace_id("not-a-uuid"), [0; 16]);
        assert_eq!(id_trace_id("not-a-uuid"), id_trace_id("not-a-uuid"));
    }

    #[test]
    fn the_callers_trace_wins_and_bad_headers_are_ignored() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let s = saga("0192f5a0-1234-7000-8000-00000000abcd", Some(tp));
        assert_eq!(saga_trace_id(&s), TraceParent::parse(tp).unwrap().trace_id);
        assert_eq!(flags(&s), 0);
        assert_eq!(caller(Some(tp)).as_deref(), Some(tp));
        assert_eq!(
            caller(Some(
                " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 "
            ))
            .as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(caller(Some("00-xyz")), None);
        assert_eq!(caller(None), None);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HEADER_TRACEPARENT, "junk");
        assert_eq!(caller_from_headers(Some(&headers)), None);
        // A saga whose stored trace parent is corrupt falls back to its id.
        let s = saga("0192f5a0-1234-7000-8000-00000000abcd", Some("junk"));
        assert_eq!(saga_trace_id(&s), id_trace_id(&s.id));
        assert_eq!(flags(&s), 1);
    }

    #[test]
    fn forced_ids_apply_to_one_span_only() {
        let ids_gen = DeterministicIds::default();
        let ids = (TraceId::from_bytes([7; 16]), SpanId::from_bytes([9; 8]));
        NEXT_IDS.with(|n| n.set(Some(ids)));
        assert_eq!((ids_gen.new_trace_id(), ids_gen.new_span_id()), ids);
        NEXT_IDS.with(|n| n.set(None));
        assert_ne!(ids_gen.new_span_id(), ids.1);
    }
}

//! OpenTelemetry traces across engine and SDK: the engine and an SDK worker
//! run in this process against a real nats-server, with one tracer provider
//! whose in-memory exporter catches the spans of both. A saga started with a
//! `traceparent` must read as one trace: caller → saga → step attempts →
//! the worker's task spans → the spans a handler opens itself.

use jetsaga_cli::client::Client;
use jetsaga_core::saga::definition::{self, Format};
use jetsaga_engine::config::{Config, NatsConfig};
use jetsaga_engine::trace::{self as engine_trace, DeterministicIds, TraceParent};
use jetsaga_protocol::api::SagaStatus;
use jetsaga_tests::NatsServer;
use jetsaga_worker::protocol::{ApiReply, StartReply, TaskKind};
use jetsaga_worker::{StepError, TaskContext, Worker};
use opentelemetry::Value as OtelValue;
use opentelemetry::trace::{SpanId, Status, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;

const DEFINITION: &str = r#"
sagas:
  traced_order:
    timeout: 1m
    steps:
      - id: reserve
        service: tr-stock
        operation: reserve
        timeout: 10s
        retry: quick
      - id: charge
        service: tr-pay
        operation: charge
        timeout: 10s
        depends_on: [reserve]
retry_policies:
  quick: { max_attempts: 3, initial_delay: 50ms, max_delay: 100ms, backoff_factor: 2, jitter: 0 }
"#;

/// The caller's trace context.
const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn attr_value(span: &SpanData, key: &str) -> Option<OtelValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_link_caller_saga_attempts_and_handlers() {
    // One provider for engine and worker, ids forced by the engine's generator.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_id_generator(DeterministicIds::default())
        .with_simple_exporter(exporter.clone())
        .build();
    engine_trace::install(&provider);
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("worker")));
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
    assert!(engine_trace::enabled());

    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        nats: NatsConfig::new(nats.url()),
        data_dir: dir.path().join("engine"),
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let engine = tokio::spawn(jetsaga_engine::engine::run(config, shutdown.clone()));

    let client = Client::new(nats.client().await, "jetsaga");
    let defs = definition::parse_str("traced.yaml", DEFINITION, Format::Yaml).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = client.apply(defs.sagas.clone()).await {
        assert!(Instant::now() < deadline, "engine not ready: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The first reserve attempt fails retryably: two attempt spans for it.
    static RESERVES: AtomicU32 = AtomicU32::new(0);
    let stock = Worker::builder("tr-stock")
        .handler("reserve", |_ctx: TaskContext, _: Value| async {
            let _work = tracing::info_span!("reserve stock").entered();
            if RESERVES.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(StepError::retryable("warehouse busy"));
            }
            Ok(json!({"reserved": true}))
        })
        .build(nats.client().await)
        .await
        .unwrap();
    let pay = Worker::builder("tr-pay")
        .handler("charge", |_ctx: TaskContext, _: Value| async {
            let _work = tracing::info_span!("charge card").entered();
            Ok(json!({"charged": true}))
        })
        .build(nats.client().await)
        .await
        .unwrap();
    let workers = CancellationToken::new();
    let w1 = tokio::spawn(stock.run(workers.clone()));
    let w2 = tokio::spawn(pay.run(workers.clone()));

    // Start through the NATS request API with the caller's traceparent.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", CALLER);
    let reply = nats
        .client()
        .await
        .request_with_headers(
            "jetsaga.api.saga.start",
            headers,
            serde_json::to_vec(&json!({"saga": "traced_order", "input": {"order": 7}}))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    let started = match serde_json::from_slice::<ApiReply<StartReply>>(&reply.payload).unwrap() {
        ApiReply::Ok(r) => r,
        ApiReply::Error(e) => panic!("start refused: {e:?}"),
    };
    let saga_id = started.saga_id;
    let done = client
        .wait_terminal(&saga_id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.saga.status, SagaStatus::Completed);
    assert_eq!(done.saga.trace_parent.as_deref(), Some(CALLER));

    let caller = TraceParent::parse(CALLER).unwrap();
    let trace_id = TraceId::from_bytes(caller.trace_id);
    let saga_span = SpanId::from_bytes(engine_trace::saga_span_id(&saga_id));
    let attempts = [("reserve", 1), ("reserve", 2), ("charge", 1)].map(|(step, n)| {
        (
            step,
            n,
            SpanId::from_bytes(engine_trace::attempt_span_id(
                &saga_id,
                step,
                TaskKind::Action,
                n,
            )),
        )
    });

    // Worker spans close after the result is acknowledged: wait for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let tasks = spans.iter().filter(|s| s.name == "task").count();
        let users = spans
            .iter()
            .filter(|s| s.name == "reserve stock" || s.name == "charge card")
            .count();
        if tasks >= 3 && users >= 3 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans missing: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // The saga span: the caller's child, in the caller's trace.
    let saga = spans
        .iter()
        .find(|s| s.span_context.span_id() == saga_span)
        .expect("saga span exported");
    assert_eq!(saga.name, "saga traced_order");
    assert_eq!(saga.span_context.trace_id(), trace_id);
    assert_eq!(saga.parent_span_id, SpanId::from_bytes(caller.span_id));
    assert_eq!(attr(saga, "saga.id").as_deref(), Some(saga_id.as_str()));
    assert_eq!(attr(saga, "outcome").as_deref(), Some("completed"));

    for (step, n, attempt_span) in attempts {
        // Each attempt: the saga span's child, with its recorded times.
        let attempt = spans
            .iter()
            .find(|s| s.span_context.span_id() == attempt_span)
            .unwrap_or_else(|| panic!("span of {step} attempt {n} exported"));
        assert_eq!(attempt.name, format!("{step} action"));
        assert_eq!(attempt.span_context.trace_id(), trace_id);
        assert_eq!(attempt.parent_span_id, saga_span);
        assert_eq!(attr(attempt, "step").as_deref(), Some(step));
        assert_eq!(attr(attempt, "attempt"), Some(n.to_string()));
        let outcome = if (step, n) == ("reserve", 1) {
            "retryable"
        } else {
            "ok"
        };
        assert_eq!(attr(attempt, "outcome").as_deref(), Some(outcome));
        assert!(attempt.start_time <= attempt.end_time);
        assert!(saga.start_time <= attempt.start_time && attempt.end_time <= saga.end_time);

        // The worker's task span: the attempt span's child (same trace).
        let task = spans
            .iter()
            .find(|s| s.name == "task" && s.parent_span_id == attempt_span)
            .unwrap_or_else(|| panic!("no worker span under {step} attempt {n}"));
        assert_eq!(task.span_context.trace_id(), trace_id);
        // Named and typed as the engine's spans: a search by `saga.id` finds both.
        assert_eq!(attr(task, "saga.id").as_deref(), Some(saga_id.as_str()));
        assert_eq!(attr(task, "step").as_deref(), Some(step));
        assert_eq!(attr_value(task, "attempt"), Some(OtelValue::I64(n.into())));
        assert_eq!(
            attr_value(attempt, "attempt"),
            Some(OtelValue::I64(n.into()))
        );
        assert_eq!(attr(task, "outcome").as_deref(), Some(outcome));
        // A failed handler's span has status ERROR with the error.
        if outcome == "ok" {
            assert_eq!(task.status, Status::Unset, "{step} attempt {n}");
        } else {
            assert_eq!(
                task.status,
                Status::error("warehouse busy"),
                "{step} attempt {n}"
            );
        }

        // The handler's own span nests under the task span.
        let user = spans
            .iter()
            .find(|s| s.parent_span_id == task.span_context.span_id())
            .unwrap_or_else(|| panic!("no handler span under the task of {step} attempt {n}"));
        assert_eq!(user.span_context.trace_id(), trace_id);
    }

    workers.cancel();
    w1.await.unwrap().unwrap();
    w2.await.unwrap().unwrap();
    shutdown.cancel();
    engine.await.unwrap().unwrap();
    provider.shutdown().unwrap();
}

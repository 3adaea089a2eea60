//! A result over the engine's `max_payload` that still names its attempt
//! (`Nats-Msg-Id`) fails that attempt as fatal at once, and the saga
//! compensates, instead of waiting for the step's timeout; against a real
//! engine process and nats-server, with a worker speaking the wire protocol.

mod common;

use common::{World, step};
use futures::StreamExt;
use jetsaga_protocol::api::{AttemptOutcome, SagaStatus};
use jetsaga_worker::protocol::{Outcome, Task, TaskResult, result_msg_id};
use serde_json::json;

const SAGA: &str = r#"
sagas:
  order:
    steps:
      - id: reserve
        service: echo
        operation: echo
        compensation: echo
      - id: pay
        service: raw
        operation: pay
        depends_on: [reserve]
        timeout: 10m
        retry: { max_attempts: 3, initial_delay: 100ms }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_result_fails_its_attempt_and_the_saga_compensates() {
    let world = World::start(&["--max-payload", "4096", "--http-listen", "127.0.0.1:0"]).await;
    world.apply_yaml(SAGA).await;
    let _echo = world
        .worker(
            jetsaga_worker::Worker::builder("echo")
                .handler(
                    "echo",
                    |_: jetsaga_worker::TaskContext, v: serde_json::Value| async move { Ok(v) },
                )
                .compensation(
                    "echo",
                    |_: jetsaga_worker::TaskContext, v: serde_json::Value| async move { Ok(v) },
                ),
        )
        .await;
    let js = async_nats::jetstream::new(world.nats.client().await);
    let tasks = js.get_stream("JETSAGA_TASKS").await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = tasks
        .get_or_create_consumer(
            "jetsaga-svc-raw",
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("jetsaga-svc-raw".into()),
                filter_subject: "jetsaga.task.raw".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();

    let id = world.start_saga("order", json!({"n": 1})).await;
    let msg = messages.next().await.unwrap().unwrap();
    let task: Task = serde_json::from_slice(&msg.payload).unwrap();
    msg.ack().await.unwrap();
    assert_eq!((task.step_id.as_str(), task.attempt), ("pay", 1));

    // A fatal error that repeats a large input: over max_payload (the
    // stream still takes it, up to max_payload + 64 KiB).
    let result = TaskResult {
        saga_id: task.saga_id.clone(),
        step_id: task.step_id.clone(),
        kind: task.kind,
        attempt: task.attempt,
        service: task.service.clone(),
        outcome: Outcome::Fatal {
            error: format!("card declined for input {}", "x".repeat(6000)),
        },
        replayed: false,
        worker: "raw".into(),
    };
    let payload = serde_json::to_vec(&result).unwrap();
    assert!(payload.len() > 4096);
    let mut headers = async_nats::HeaderMap::new();
    let msg_id = result_msg_id(&task.saga_id, &task.step_id, task.kind, task.attempt);
    headers.insert("Nats-Msg-Id", msg_id.as_str());
    headers.insert("Jetsaga-Saga-Id", task.saga_id.as_str());
    js.publish_with_headers("jetsaga.result.raw", headers, payload.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();

    // The step's timeout is 10 minutes: only the failure of the attempt
    // can finish the saga within the wait.
    let done = world.finished(&id).await;
    assert!(
        matches!(done.saga.status, SagaStatus::Compensated { .. }),
        "{:?}",
        done.saga.status
    );
    let pay = step(&done, "pay");
    assert_eq!(pay.attempts.len(), 1, "a fatal failure is not retried");
    match &pay.attempts[0].outcome {
        Some(AttemptOutcome::Fatal { error }) => assert!(
            error.starts_with(&format!(
                "the worker's result was {} bytes, over the engine's max_payload of 4096",
                payload.len()
            )),
            "{error}"
        ),
        other => panic!("expected a fatal attempt, got {other:?}"),
    }
    common::wait_metric(
        &world.engine.http_addr(),
        r#"engine_rejected_messages_total{reason="oversized"}"#,
        1.0,
    )
    .await;
}

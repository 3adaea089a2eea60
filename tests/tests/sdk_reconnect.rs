//! The worker SDK against a nats-server that changes under it: a restart
//! (the pending pull request is lost with it) and the server's
//! `max_payload` (the cap on handler output follows it).
//!
//! The engine is not run: its streams are created with
//! [`jetsaga_engine::bus::ensure_streams`] and tasks are published as the
//! engine publishes them, so that the timings are the worker's alone.

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use jetsaga_engine::bus::{StreamSettings, ensure_streams};
use jetsaga_tests::{NatsServer, wait_until};
use jetsaga_worker::protocol::{
    self, DEFAULT_MAX_PAYLOAD, HEADER_MSG_ID, Outcome, Subjects, Task, TaskKind, TaskResult,
};
use jetsaga_worker::{Worker, WorkerBuilder};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long one pull request of the SDK waits for tasks (its
/// `PULL_EXPIRES`). Before the fix, a pull lost with a restarted server was
/// waited for until `PULL_EXPIRES` + 5 s after it was sent (the async-nats
/// batch's own timer), so at least 5 s after the server died.
const PULL_EXPIRES: Duration = Duration::from_secs(3);

/// A client that retries every 50 ms after losing its server, so that the
/// moment it is connected again follows the server's restart closely (the
/// default backoff would add up to seconds of its own).
async fn eager_client(server: &NatsServer) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .connect(server.url())
        .await
        .expect("connect to the test nats-server")
}

/// The engine's streams with its `--max-payload` set to `max_payload`.
async fn engine_streams(js: &jetstream::Context, max_payload: usize) {
    let settings = StreamSettings {
        duplicate_window: Duration::from_secs(120),
        outcome_ttl: Duration::from_secs(3600),
        max_payload,
        replicas: 1,
    };
    ensure_streams(js, &Subjects::new(protocol::DEFAULT_PREFIX), &settings)
        .await
        .expect("create the engine's streams");
}

/// A task of service `blobs`, operation `make`, for saga `saga`.
fn task(saga: &str, input: serde_json::Value) -> Task {
    Task {
        saga_id: saga.into(),
        saga_name: "blob".into(),
        step_id: "make".into(),
        kind: TaskKind::Action,
        service: "blobs".into(),
        operation: "make".into(),
        attempt: 1,
        idempotency_key: protocol::idempotency_key(saga, "make", TaskKind::Action),
        input,
        context: Default::default(),
        timeout_ms: 30_000,
        partition: 0,
    }
}

/// Publishes `task` as the engine does, retrying while the server (just
/// restarted) does not answer yet.
async fn publish_task(js: &jetstream::Context, task: &Task) {
    let subject = Subjects::new(protocol::DEFAULT_PREFIX).task(&task.service);
    let body = serde_json::to_vec(task).expect("a task serializes");
    wait_until("the task to be stored", Duration::from_secs(20), || {
        let body = body.clone();
        let subject = subject.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            let id = protocol::task_msg_id(&task.saga_id, &task.step_id, task.kind, task.attempt);
            headers.insert(HEADER_MSG_ID, id.as_str());
            let ack = js
                .publish_with_headers(subject, headers, body.into())
                .await
                .ok()?;
            ack.await.ok().map(|_| ())
        }
    })
    .await;
}

/// Builds and runs a worker; cancelling the token drains it.
async fn run(builder: WorkerBuilder, client: async_nats::Client) -> CancellationToken {
    let worker = builder.build(client).await.expect("build the worker");
    let token = CancellationToken::new();
    tokio::spawn(worker.run(token.clone()));
    token
}

/// A `blobs` worker whose `make` handler reports each saga id it sees.
fn reporting_worker(seen: mpsc::UnboundedSender<String>) -> WorkerBuilder {
    Worker::builder("blobs").name("w1").handler(
        "make",
        move |ctx: jetsaga_worker::TaskContext, _: serde_json::Value| {
            let seen = seen.clone();
            async move {
                let _ = seen.send(ctx.saga_id().to_string());
                Ok(())
            }
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_pulls_again_at_once_after_a_server_restart() {
    jetsaga_tests::init_tracing();
    let mut server = NatsServer::start();
    let client = eager_client(&server).await;
    let js = jetstream::new(client.clone());
    engine_streams(&js, DEFAULT_MAX_PAYLOAD).await;
    let (tx, mut seen) = mpsc::unbounded_channel();
    let worker_client = eager_client(&server).await;
    let token = run(reporting_worker(tx), worker_client.clone()).await;

    // The worker is up and idle in a pull request.
    publish_task(&js, &task("before", serde_json::json!({}))).await;
    let first = tokio::time::timeout(Duration::from_secs(20), seen.recv()).await;
    assert_eq!(first.ok().flatten().as_deref(), Some("before"));
    let consumer: PullConsumer = js
        .get_consumer_from_stream(
            Subjects::new(protocol::DEFAULT_PREFIX).service_consumer("blobs"),
            Subjects::new(protocol::DEFAULT_PREFIX).tasks_stream(),
        )
        .await
        .expect("the worker created its consumer");
    wait_until(
        "the worker to wait in a pull request",
        Duration::from_secs(10),
        || {
            let mut consumer = consumer.clone();
            async move { (consumer.info().await.ok()?.num_waiting > 0).then_some(()) }
        },
    )
    .await;

    // A restarted nats-server has a new server id: the client is back once
    // it is connected to the new one.
    let old_server = worker_client.server_info().server_id;
    let killed = Instant::now();
    server.kill();
    server.restart();
    wait_until(
        "the worker's client to reconnect",
        Duration::from_secs(20),
        || {
            let back = worker_client.connection_state() == async_nats::connection::State::Connected
                && worker_client.server_info().server_id != old_server;
            async move { back.then_some(()) }
        },
    )
    .await;
    let reconnected = Instant::now();
    publish_task(&js, &task("after", serde_json::json!({}))).await;
    let second = tokio::time::timeout(Duration::from_secs(30), seen.recv()).await;
    let handled = Instant::now();
    assert_eq!(second.ok().flatten().as_deref(), Some("after"));

    let outage = reconnected - killed;
    let latency = handled - reconnected;
    eprintln!(
        "server down and client back after {outage:?}; task handled {latency:?} after the reconnect ({:?} after the kill)",
        handled - killed
    );
    // The pull lost with the server is re-sent once the client is back; a
    // worker that waited the lost pull out would hand the task over no
    // earlier than 5 s after the kill. PULL_EXPIRES is far above the
    // re-sent pull's latency (a pull request and one delivery) and below
    // that stall whenever the restart took less than 2 s.
    assert!(
        latency < PULL_EXPIRES,
        "the task published after the restart was handled {latency:?} after the worker's client reconnected; it waited for the lost pull request to expire"
    );
    token.cancel();
}

/// A consumer of the outcomes stream, as the engine has one: the tests
/// below read terminal results only, which are recorded there.
async fn results(js: &jetstream::Context) -> PullConsumer {
    let subjects = Subjects::new(protocol::DEFAULT_PREFIX);
    js.get_stream(subjects.outcomes_stream())
        .await
        .expect("outcomes stream")
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("test-results".into()),
            ..Default::default()
        })
        .await
        .expect("results consumer")
}

/// The next result on `consumer`.
async fn next_result(consumer: &PullConsumer) -> TaskResult {
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(Duration::from_secs(20))
        .messages()
        .await
        .expect("pull a result");
    let msg = batch
        .next()
        .await
        .expect("a result within 20 s")
        .expect("a result message");
    msg.ack().await.expect("ack the result");
    serde_json::from_slice(&msg.payload).expect("a result decodes")
}

/// A `blobs` worker whose `make` handler returns a string of `input` bytes.
fn blob_worker() -> WorkerBuilder {
    Worker::builder("blobs")
        .name("w1")
        .handler("make", |_, n: usize| async move { Ok("x".repeat(n)) })
}

/// Why the output of a success was dropped (too large to carry); panics
/// on any other outcome.
fn dropped(outcome: Outcome) -> String {
    match outcome {
        Outcome::Ok { output } => output[protocol::OUTPUT_DROPPED]
            .as_str()
            .unwrap_or_else(|| panic!("expected a dropped output, got {output}"))
            .to_string(),
        other => panic!("expected a success, got {:?}", other.as_str()),
    }
}

#[tokio::test]
async fn output_cap_follows_the_server_max_payload() {
    jetsaga_tests::init_tracing();
    let server = NatsServer::start_with_config("max_payload: 4MB");
    let client = server.client().await;
    assert_eq!(client.server_info().max_payload, 4 * 1024 * 1024);
    let js = jetstream::new(client.clone());
    // The engine started with --max-payload 3 MiB.
    engine_streams(&js, 3 * 1024 * 1024).await;
    let results = results(&js).await;
    let token = run(blob_worker(), client.clone()).await;

    // 1 MiB: twice the old fixed cap, well within this installation's.
    let mib = 1024 * 1024;
    publish_task(&js, &task("one-mib", serde_json::json!(mib))).await;
    let result = next_result(&results).await;
    assert_eq!(result.saga_id, "one-mib");
    match result.outcome {
        Outcome::Ok { output } => assert_eq!(output.as_str().map(str::len), Some(mib)),
        other => panic!("expected the 1 MiB output, got {:?}", other.as_str()),
    }

    // Over the engine's limit (3 MiB, under the server's 4 MiB): still a
    // success (the effect happened), its output replaced by a clear note
    // naming the size and the limit.
    publish_task(&js, &task("too-big", serde_json::json!(3 * mib))).await;
    let result = next_result(&results).await;
    assert_eq!(result.saga_id, "too-big");
    let error = dropped(result.outcome);
    let size = 3 * mib + 2; // the JSON string's quotes
    assert!(
        error.contains(&format!("handler output is {size} bytes"))
            && error.contains("more than the limit of"),
        "{error}"
    );
    token.cancel();
}

#[tokio::test]
async fn output_cap_follows_the_engine_max_payload_and_the_builder() {
    jetsaga_tests::init_tracing();
    let server = NatsServer::start_with_config("max_payload: 4MB");
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    // The engine with its default --max-payload (512 KiB) on a server that
    // takes 4 MiB: the engine's limit is the one that counts.
    engine_streams(&js, DEFAULT_MAX_PAYLOAD).await;
    let results = results(&js).await;
    let token = run(blob_worker(), client.clone()).await;

    publish_task(&js, &task("engine-limit", serde_json::json!(1024 * 1024))).await;
    let result = next_result(&results).await;
    let error = dropped(result.outcome);
    let limit = DEFAULT_MAX_PAYLOAD - 16 * 1024;
    assert!(
        error.contains(&format!("more than the limit of {limit}")),
        "{error}"
    );
    token.cancel();

    // An explicit cap below that.
    let token = run(
        blob_worker().name("w2").max_output_bytes(100 * 1024),
        client.clone(),
    )
    .await;
    let mut t = task("builder-limit", serde_json::json!(200 * 1024));
    t.step_id = "make2".into();
    t.idempotency_key = protocol::idempotency_key("builder-limit", "make2", TaskKind::Action);
    publish_task(&js, &t).await;
    let error = dropped(next_result(&results).await.outcome);
    assert!(
        error.contains(&format!("more than the limit of {}", 100 * 1024)),
        "{error}"
    );
    token.cancel();
}

//! The worker against a real nats-server: results, replay from the
//! recorded outcome, in-progress acks, garbage, shutdown drain.
//!
//! Each test starts its own `nats-server -js` on a free port of 127.0.0.1
//! with a temp store dir. The binary is `$JETSAGA_NATS_SERVER`, else
//! `.venv/bin/nats-server` of the workspace (`scripts/install-nats`).
//! The tests create the streams the engine would create.

use anyhow::{Context as _, Result, bail};
use async_nats::jetstream::{self, consumer::PullConsumer, stream};
use futures::StreamExt;
use jetsaga_worker::protocol::{
    self, HEADER_MSG_ID, HEADER_SAGA_ID, Outcome, Subjects, Task, TaskKind, TaskResult,
};
use jetsaga_worker::{StepError, TaskContext, Worker, WorkerBuilder};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A nats-server child process, killed on drop.
struct Server {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("JETSAGA_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("worker-sdk is inside the workspace")
        .join(".venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    panic!(
        "no nats-server for the worker-sdk JetStream tests: set JETSAGA_NATS_SERVER to a nats-server >= 2.12 binary, or run scripts/install-nats to get {}",
        venv.display()
    );
}

impl Server {
    /// Starts a nats-server on a free port. The port is probed free and
    /// then released, so a server of a test running alongside can take it
    /// first; ours then fails to bind and exits. The server is given a
    /// name of its own, and only a server answering with that name counts:
    /// otherwise it starts again on another port.
    async fn start() -> Result<Self> {
        for _ in 0..5 {
            if let Some(server) = Self::try_start().await? {
                return Ok(server);
            }
        }
        bail!("nats-server did not start on any of 5 free ports")
    }

    async fn try_start() -> Result<Option<Self>> {
        let store = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let name = format!("worker-sdk-test-{}-{port}", std::process::id());
        let child = Command::new(server_binary())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-n",
                &name,
            ])
            .arg("-sd")
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        let mut server = Server {
            child,
            port,
            _store: store,
        };
        for _ in 0..100 {
            if server.child.try_wait()?.is_some() {
                return Ok(None);
            }
            if let Ok(c) = async_nats::connect(server.url()).await {
                if c.server_info().server_name != name {
                    return Ok(None);
                }
                let js = jetstream::new(c);
                if js.query_account().await.is_ok() {
                    return Ok(Some(server));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("nats-server on port {port} did not become ready")
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Server, client and the streams the engine would create.
struct Env {
    server: Server,
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    /// What the engine reads: the results stream (retryable results and
    /// replays) and the outcomes stream (recorded outcomes), merged.
    results: tokio::sync::Mutex<Results>,
}

/// The messages of the results and outcomes streams, as they come.
type Results =
    futures::stream::Select<jetstream::consumer::pull::Stream, jetstream::consumer::pull::Stream>;

impl Env {
    async fn new() -> Result<Self> {
        let env = Self::without_streams().await?;
        env.create_tasks_stream().await?;
        Ok(env)
    }

    async fn without_streams() -> Result<Self> {
        let server = Server::start().await?;
        let client = async_nats::connect(server.url()).await?;
        let js = jetstream::new(client.clone());
        let subjects = Subjects::new(protocol::DEFAULT_PREFIX);
        let results_stream = js
            .create_stream(stream::Config {
                name: subjects.results_stream(),
                subjects: vec![subjects.results_wildcard()],
                retention: stream::RetentionPolicy::WorkQueue,
                ..Default::default()
            })
            .await?;
        // As the engine creates it (engine/src/streams.rs `outcomes_config`).
        let outcomes_stream = js
            .create_stream(stream::Config {
                name: subjects.outcomes_stream(),
                subjects: vec![subjects.outcomes_wildcard()],
                retention: stream::RetentionPolicy::Limits,
                max_messages_per_subject: 1,
                allow_direct: true,
                max_age: Duration::from_secs(3600),
                ..Default::default()
            })
            .await?;
        let mut merged = Vec::new();
        for stream in [&results_stream, &outcomes_stream] {
            let consumer: PullConsumer = stream
                .create_consumer(jetstream::consumer::pull::Config {
                    durable_name: Some("test-results".into()),
                    ..Default::default()
                })
                .await?;
            merged.push(consumer.messages().await?);
        }
        let (outcomes, results) = (merged.pop().unwrap(), merged.pop().unwrap());
        Ok(Self {
            server,
            client,
            js,
            subjects,
            results: tokio::sync::Mutex::new(futures::stream::select(results, outcomes)),
        })
    }

    async fn create_tasks_stream(&self) -> Result<()> {
        self.js
            .create_stream(stream::Config {
                name: self.subjects.tasks_stream(),
                subjects: vec![self.subjects.tasks_wildcard()],
                retention: stream::RetentionPolicy::WorkQueue,
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Publishes `task` as the engine would; `msg_id_suffix` lets a test
    /// publish the same task twice (a redelivery) past the dedup window.
    async fn publish_task(&self, task: &Task, msg_id_suffix: &str) -> Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        let id = protocol::task_msg_id(&task.saga_id, &task.step_id, task.kind, task.attempt);
        headers.insert(HEADER_MSG_ID, format!("{id}{msg_id_suffix}").as_str());
        self.js
            .publish_with_headers(
                self.subjects.task(&task.service),
                headers,
                serde_json::to_vec(task)?.into(),
            )
            .await?
            .await?;
        Ok(())
    }

    /// Next result (from either stream), with its subject and headers,
    /// waiting up to `wait`.
    async fn next_message(
        &self,
        wait: Duration,
    ) -> Result<Option<(TaskResult, String, async_nats::HeaderMap)>> {
        let mut results = self.results.lock().await;
        let msg = match tokio::time::timeout(wait, results.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => bail!("the results' pull streams ended"),
            Ok(Some(msg)) => msg.map_err(anyhow::Error::msg)?,
        };
        msg.ack().await.map_err(anyhow::Error::msg)?;
        let headers = msg.headers.clone().unwrap_or_default();
        Ok(Some((
            serde_json::from_slice(&msg.payload)?,
            msg.subject.to_string(),
            headers,
        )))
    }

    /// Next result, with its headers, waiting up to `wait`.
    async fn next_result(&self, wait: Duration) -> Result<(TaskResult, async_nats::HeaderMap)> {
        match self.next_message(wait).await? {
            Some((result, _, headers)) => Ok((result, headers)),
            None => bail!("no result within {wait:?}"),
        }
    }

    /// Asserts that no result arrives within `wait`.
    async fn no_result(&self, wait: Duration) -> Result<()> {
        if let Some((result, subject, _)) = self.next_message(wait).await? {
            bail!("unexpected result on {subject}: {result:?}");
        }
        Ok(())
    }

    /// The outcome recorded for `key` of a payments step of partition 0.
    async fn record(&self, key: &str) -> Result<Option<Outcome>> {
        let stream = self.js.get_stream(self.subjects.outcomes_stream()).await?;
        match stream
            .get_last_raw_message_by_subject(&self.subjects.outcome("payments", 0, key))
            .await
        {
            Ok(msg) => Ok(Some(
                serde_json::from_slice::<TaskResult>(&msg.payload)?.outcome,
            )),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn consumer_info(&self, service: &str) -> Result<jetstream::consumer::Info> {
        let mut c: PullConsumer = self
            .js
            .get_consumer_from_stream(
                self.subjects.service_consumer(service),
                self.subjects.tasks_stream(),
            )
            .await?;
        Ok(c.info().await?.clone())
    }

    /// Builds and runs `builder`; returns its shutdown token and join handle.
    async fn run(
        &self,
        builder: WorkerBuilder,
    ) -> Result<(
        CancellationToken,
        JoinHandle<Result<(), jetsaga_worker::WorkerError>>,
    )> {
        let worker = builder.build(self.client.clone()).await?;
        let token = CancellationToken::new();
        let handle = tokio::spawn(worker.run(token.clone()));
        Ok((token, handle))
    }
}

fn task(saga: &str, operation: &str, attempt: u32, input: serde_json::Value) -> Task {
    Task {
        saga_id: saga.into(),
        saga_name: "order".into(),
        step_id: "charge".into(),
        kind: TaskKind::Action,
        service: "payments".into(),
        operation: operation.into(),
        attempt,
        idempotency_key: protocol::idempotency_key(saga, "charge", TaskKind::Action),
        input,
        context: Default::default(),
        timeout_ms: 10_000,
        partition: 0,
    }
}

/// A payments worker counting how often each handler ran.
fn payments(calls: Arc<AtomicUsize>) -> WorkerBuilder {
    let c = calls.clone();
    Worker::builder("payments")
        .name("w1")
        .ack_wait(Duration::from_secs(1))
        .handler(
            "charge",
            move |ctx: TaskContext, input: serde_json::Value| {
                let calls = c.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    match input["mode"].as_str() {
                        Some("fatal") => Err(StepError::fatal("card declined")),
                        Some("retry") => Err(StepError::retryable("bank busy")),
                        Some("panic") => panic!("handler bug"),
                        Some("slow") => {
                            tokio::time::sleep(Duration::from_millis(
                                input["ms"].as_u64().unwrap_or(1000),
                            ))
                            .await;
                            Ok(json!({"slow": true}))
                        }
                        _ => Ok(json!({"charge_id": format!("ch-{}", ctx.idempotency_key())})),
                    }
                }
            },
        )
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "jetsaga_worker=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn result_then_replay_without_running_again() -> Result<()> {
    // The outcomes stream as the engine creates it: one replica, direct
    // gets allowed, so lookups read with `DIRECT.GET`.
    result_then_replay(Env::new().await?).await
}

#[tokio::test]
async fn replay_with_lookups_from_the_stream_leader() -> Result<()> {
    // A stream without direct gets (as a replicated one is read): lookups
    // go to the leader with `STREAM.MSG.GET`.
    let env = Env::new().await?;
    let mut config = env
        .js
        .get_stream(env.subjects.outcomes_stream())
        .await?
        .cached_info()
        .config
        .clone();
    config.allow_direct = false;
    env.js.update_stream(&config).await?;
    result_then_replay(env).await
}

async fn result_then_replay(env: Env) -> Result<()> {
    init_tracing();
    let calls = Arc::new(AtomicUsize::new(0));
    let (token, handle) = env.run(payments(calls.clone())).await?;

    let t = task("s1", "charge", 1, json!({}));
    env.publish_task(&t, "").await?;
    let (result, subject, headers) = env.next_message(WAIT).await?.context("no result for s1")?;
    // A terminal outcome is its own record, on its key's subject.
    assert_eq!(subject, "jetsaga.outcome.payments.0.s1.charge.action");
    assert_eq!(result.saga_id, "s1");
    assert_eq!(result.attempt, 1);
    assert_eq!(result.worker, "w1");
    assert!(!result.replayed);
    let expected = Outcome::Ok {
        output: json!({"charge_id": "ch-s1.charge.action"}),
    };
    assert_eq!(result.outcome, expected);
    assert_eq!(
        headers.get(HEADER_MSG_ID).map(|v| v.as_str()),
        Some("result.s1.charge.action.1")
    );
    assert_eq!(headers.get(HEADER_SAGA_ID).map(|v| v.as_str()), Some("s1"));
    assert_eq!(
        env.record(&t.idempotency_key).await?,
        Some(expected.clone())
    );

    // The same task delivered again: its record is this attempt's result,
    // which the engine has: nothing is published.
    env.publish_task(&t, ".again").await?;
    env.no_result(Duration::from_secs(1)).await?;
    assert_eq!(env.consumer_info("payments").await?.num_pending, 0);
    // A second attempt: replayed under its own result id, on the results
    // subject (the record stays as it is).
    env.publish_task(&task("s1", "charge", 2, json!({})), "")
        .await?;
    let (second, subject, headers) = env.next_message(WAIT).await?.context("no replay")?;
    assert_eq!(subject, "jetsaga.result.payments");
    assert!(second.replayed);
    assert_eq!(second.attempt, 2);
    assert_eq!(second.outcome, expected);
    assert_eq!(
        headers.get(HEADER_MSG_ID).map(|v| v.as_str()),
        Some("result.s1.charge.action.2")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran again");

    token.cancel();
    handle.await??;
    let info = env.consumer_info("payments").await?;
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_pending, 0);
    Ok(())
}

#[tokio::test]
async fn results_bear_the_tasks_result_token_in_their_id() -> Result<()> {
    init_tracing();
    let env = Env::new().await?;
    let (token, handle) = env.run(payments(Arc::new(AtomicUsize::new(0)))).await?;
    for (saga, mode, subject) in [
        ("t1", "ok", "jetsaga.outcome.payments.0.t1.charge.action"),
        ("t2", "retry", "jetsaga.result.payments"),
    ] {
        let t = task(saga, "charge", 1, json!({"mode": mode}));
        let mut headers = async_nats::HeaderMap::new();
        let id = protocol::task_msg_id(&t.saga_id, &t.step_id, t.kind, t.attempt);
        headers.insert(HEADER_MSG_ID, id.as_str());
        headers.insert(protocol::HEADER_RESULT_TOKEN, "0f1e2d3c4b5a6978");
        env.js
            .publish_with_headers(
                env.subjects.task("payments"),
                headers,
                serde_json::to_vec(&t)?.into(),
            )
            .await?
            .await?;
        let (_, got_subject, headers) = env.next_message(WAIT).await?.context("no result")?;
        assert_eq!(got_subject, subject);
        assert_eq!(
            headers.get(HEADER_MSG_ID).map(|v| v.as_str()),
            Some(format!("result.{saga}.charge.action.1.0f1e2d3c4b5a6978").as_str())
        );
    }
    token.cancel();
    handle.await??;
    Ok(())
}

#[tokio::test]
async fn fatal_is_recorded_retryable_and_panic_are_not() -> Result<()> {
    init_tracing();
    let env = Env::new().await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let (token, handle) = env.run(payments(calls.clone())).await?;

    let fatal = task("s2", "charge", 1, json!({"mode": "fatal"}));
    env.publish_task(&fatal, "").await?;
    let (r, _) = env.next_result(WAIT).await?;
    assert_eq!(
        r.outcome,
        Outcome::Fatal {
            error: "card declined".into()
        }
    );
    assert!(env.record(&fatal.idempotency_key).await?.is_some());
    env.publish_task(&task("s2", "charge", 2, json!({"mode": "fatal"})), "")
        .await?;
    let (r, _) = env.next_result(WAIT).await?;
    assert!(r.replayed);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let retry = task("s3", "charge", 1, json!({"mode": "retry"}));
    env.publish_task(&retry, "").await?;
    let (r, _) = env.next_result(WAIT).await?;
    assert!(matches!(r.outcome, Outcome::Retryable { .. }), "{r:?}");
    assert_eq!(env.record(&retry.idempotency_key).await?, None);
    env.publish_task(&task("s3", "charge", 2, json!({"mode": "retry"})), "")
        .await?;
    let (r, _) = env.next_result(WAIT).await?;
    assert!(!r.replayed);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    env.publish_task(&task("s4", "charge", 1, json!({"mode": "panic"})), "")
        .await?;
    let (r, _) = env.next_result(WAIT).await?;
    assert_eq!(
        r.outcome,
        Outcome::Retryable {
            error: "handler panicked: handler bug".into(),
            retry_after_ms: None
        }
    );
    // Still alive.
    env.publish_task(&task("s5", "nope", 1, json!({})), "")
        .await?;
    let (r, _) = env.next_result(WAIT).await?;
    assert_eq!(
        r.outcome,
        Outcome::Retryable {
            error: "worker w1 of service payments has no action handler for operation nope".into(),
            retry_after_ms: None
        }
    );

    token.cancel();
    handle.await??;
    Ok(())
}

#[tokio::test]
async fn garbage_is_terminated_and_the_worker_goes_on() -> Result<()> {
    init_tracing();
    let env = Env::new().await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let (token, handle) = env.run(payments(calls.clone())).await?;

    env.js
        .publish("jetsaga.task.payments", "not json".into())
        .await?
        .await?;
    env.js
        .publish("jetsaga.task.payments", r#"{"saga_id": 5}"#.into())
        .await?
        .await?;
    env.publish_task(&task("s6", "charge", 1, json!({})), "")
        .await?;
    let (r, _) = env.next_result(WAIT).await?;
    assert_eq!(r.saga_id, "s6");
    // ack_wait is 1s: a garbage message not terminated would come back.
    env.no_result(Duration::from_secs(3)).await?;
    let info = env.consumer_info("payments").await?;
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    token.cancel();
    handle.await??;
    Ok(())
}

#[tokio::test]
async fn progress_acks_keep_a_long_handler_from_redelivery() -> Result<()> {
    init_tracing();
    let env = Env::new().await?;
    let calls = Arc::new(AtomicUsize::new(0));
    // ack_wait 1s, handler 3.5s.
    let (token, handle) = env.run(payments(calls.clone())).await?;
    env.publish_task(
        &task("s7", "charge", 1, json!({"mode": "slow", "ms": 3500})),
        "",
    )
    .await?;
    let (r, _) = env.next_result(WAIT).await?;
    assert_eq!(
        r.outcome,
        Outcome::Ok {
            output: json!({"slow": true})
        }
    );
    assert!(!r.replayed);
    env.no_result(Duration::from_secs(2)).await?;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(env.consumer_info("payments").await?.num_redelivered, 0);
    token.cancel();
    handle.await??;
    Ok(())
}

#[tokio::test]
async fn shutdown_drains_in_flight_tasks() -> Result<()> {
    init_tracing();
    let env = Env::new().await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let (token, handle) = env.run(payments(calls.clone())).await?;
    for i in 0..3 {
        env.publish_task(
            &task(
                &format!("d{i}"),
                "charge",
                1,
                json!({"mode": "slow", "ms": 1500}),
            ),
            "",
        )
        .await?;
    }
    // Wait until all three handlers have started, then shut down.
    let started = tokio::time::Instant::now();
    while calls.load(Ordering::SeqCst) < 3 {
        assert!(started.elapsed() < WAIT, "handlers did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle).await???;
    // run returned: every result is published and every task acked.
    let info = env.consumer_info("payments").await?;
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_pending, 0);
    let mut sagas = Vec::new();
    for _ in 0..3 {
        let (r, _) = env.next_result(Duration::from_secs(1)).await?;
        assert!(matches!(r.outcome, Outcome::Ok { .. }));
        sagas.push(r.saga_id);
    }
    sagas.sort();
    assert_eq!(sagas, ["d0", "d1", "d2"]);

    // A task published after shutdown waits for the next worker.
    env.publish_task(&task("late", "charge", 1, json!({})), "")
        .await?;
    env.no_result(Duration::from_millis(500)).await?;
    let (token, handle) = env.run(payments(calls.clone())).await?;
    let (r, _) = env.next_result(WAIT).await?;
    assert_eq!(r.saga_id, "late");
    token.cancel();
    handle.await??;
    Ok(())
}

#[tokio::test]
async fn concurrency_is_bounded_and_workers_share_the_queue() -> Result<()> {
    init_tracing();
    let env = Env::new().await?;
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let builder = |name: &str| {
        let (running, peak) = (running.clone(), peak.clone());
        Worker::builder("payments")
            .name(name)
            .concurrency(3)
            .handler("charge", move |_ctx: TaskContext, _: serde_json::Value| {
                let (running, peak) = (running.clone(), peak.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            })
    };
    let (t1, h1) = env.run(builder("a")).await?;
    let (t2, h2) = env.run(builder("b")).await?;
    for i in 0..24 {
        env.publish_task(&task(&format!("c{i}"), "charge", 1, json!({})), "")
            .await?;
    }
    let mut by_worker = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..24 {
        let (r, _) = env.next_result(WAIT).await?;
        *by_worker.entry(r.worker).or_default() += 1;
    }
    assert!(
        peak.load(Ordering::SeqCst) <= 6,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert_eq!(by_worker.len(), 2, "both workers took tasks: {by_worker:?}");
    t1.cancel();
    t2.cancel();
    h1.await??;
    h2.await??;
    Ok(())
}

#[tokio::test]
async fn worker_waits_for_the_tasks_stream() -> Result<()> {
    init_tracing();
    let env = Env::without_streams().await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let (token, handle) = env.run(payments(calls)).await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!handle.is_finished());
    env.create_tasks_stream().await?;
    env.publish_task(&task("s8", "charge", 1, json!({})), "")
        .await?;
    let (r, _) = env.next_result(Duration::from_secs(20)).await?;
    assert_eq!(r.saga_id, "s8");
    token.cancel();
    handle.await??;
    drop(env.server);
    Ok(())
}

/// A payments worker whose handler stands for another run of the step that
/// records its fatal outcome, as attempt `recorded_attempt`, while this one
/// runs; this one then succeeds.
fn racing_payments(js: jetstream::Context, recorded_attempt: u32) -> WorkerBuilder {
    racing_payments_then(js, recorded_attempt, false)
}

/// As [`racing_payments`], this run failing retryably when
/// `then_retryable`.
fn racing_payments_then(
    js: jetstream::Context,
    recorded_attempt: u32,
    then_retryable: bool,
) -> WorkerBuilder {
    Worker::builder("payments").handler("charge", move |ctx: TaskContext, _: serde_json::Value| {
        let js = js.clone();
        async move {
            let other = TaskResult {
                saga_id: ctx.saga_id().into(),
                step_id: ctx.step_id().into(),
                kind: ctx.kind(),
                attempt: recorded_attempt,
                service: ctx.service().into(),
                outcome: Outcome::Fatal {
                    error: "declined by the other run".into(),
                },
                replayed: false,
                worker: "other".into(),
            };
            let subjects = Subjects::new(protocol::DEFAULT_PREFIX);
            let publish = jetstream::message::PublishMessage::build()
                .payload(serde_json::to_vec(&other).unwrap().into())
                .expected_last_subject_sequence(0);
            js.send_publish(
                subjects.outcome("payments", 0, ctx.idempotency_key()),
                publish,
            )
            .await
            .map_err(StepError::retryable)?
            .await
            .map_err(StepError::retryable)?;
            if then_retryable {
                return Err(StepError::retryable("the bank is busy"));
            }
            Ok(json!({"mine": true}))
        }
    })
}

#[tokio::test]
async fn first_recorded_outcome_wins_over_a_concurrent_run() -> Result<()> {
    init_tracing();
    let env = Env::new().await?;
    let recorded = Outcome::Fatal {
        error: "declined by the other run".into(),
    };
    // Attempt 1 recorded its outcome while attempt 2 ran: attempt 2
    // reports attempt 1's outcome, replayed, on the results subject.
    let (token, handle) = env.run(racing_payments(env.js.clone(), 1)).await?;
    let t = task("s9", "charge", 2, json!({}));
    env.publish_task(&t, "").await?;
    let (first, subject, _) = env.next_message(WAIT).await?.context("no record")?;
    assert_eq!(
        (first.attempt, subject.as_str()),
        (1, "jetsaga.outcome.payments.0.s9.charge.action")
    );
    let (r, subject, _) = env.next_message(WAIT).await?.context("no replay")?;
    assert_eq!(subject, "jetsaga.result.payments");
    assert_eq!((r.attempt, &r.outcome, r.replayed), (2, &recorded, true));
    assert_eq!(
        env.record(&t.idempotency_key).await?,
        Some(recorded.clone())
    );
    env.no_result(Duration::from_millis(500)).await?;
    token.cancel();
    handle.await??;

    // Another delivery of the same attempt recorded first: its record is
    // the attempt's result, and nothing more is published.
    let (token, handle) = env.run(racing_payments(env.js.clone(), 1)).await?;
    let t = task("s10", "charge", 1, json!({}));
    env.publish_task(&t, "").await?;
    let (r, subject, _) = env.next_message(WAIT).await?.context("no record")?;
    assert_eq!(subject, "jetsaga.outcome.payments.0.s10.charge.action");
    assert_eq!(
        (r.attempt, &r.outcome, r.worker.as_str()),
        (1, &recorded, "other")
    );
    env.no_result(Duration::from_secs(1)).await?;
    assert_eq!(env.consumer_info("payments").await?.num_ack_pending, 0);
    token.cancel();
    handle.await??;
    Ok(())
}

#[tokio::test]
async fn a_retryable_never_overtakes_an_outcome_recorded_meanwhile() -> Result<()> {
    init_tracing();
    let env = Env::new().await?;
    let recorded = Outcome::Fatal {
        error: "declined by the other run".into(),
    };
    // Another delivery of this very attempt recorded its outcome while
    // this one failed retryably: the record is the attempt's result, and
    // the retryable is not published.
    let (token, handle) = env
        .run(racing_payments_then(env.js.clone(), 1, true))
        .await?;
    env.publish_task(&task("s11", "charge", 1, json!({})), "")
        .await?;
    let (r, subject, _) = env.next_message(WAIT).await?.context("no record")?;
    assert_eq!(subject, "jetsaga.outcome.payments.0.s11.charge.action");
    assert_eq!((r.attempt, &r.outcome), (1, &recorded));
    env.no_result(Duration::from_secs(1)).await?;
    assert_eq!(env.consumer_info("payments").await?.num_ack_pending, 0);
    token.cancel();
    handle.await??;

    // An earlier attempt's: replayed for this one instead of the retryable.
    let (token, handle) = env
        .run(racing_payments_then(env.js.clone(), 1, true))
        .await?;
    env.publish_task(&task("s12", "charge", 2, json!({})), "")
        .await?;
    let (first, _, _) = env.next_message(WAIT).await?.context("no record")?;
    assert_eq!(first.attempt, 1);
    let (r, subject, _) = env.next_message(WAIT).await?.context("no replay")?;
    assert_eq!(subject, "jetsaga.result.payments");
    assert_eq!((r.attempt, &r.outcome, r.replayed), (2, &recorded, true));
    token.cancel();
    handle.await??;
    Ok(())
}

#[tokio::test]
async fn a_consumer_with_another_filter_is_refused() -> Result<()> {
    init_tracing();
    let env = Env::new().await?;
    let stream = env.js.get_stream(env.subjects.tasks_stream()).await?;
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(env.subjects.service_consumer("payments")),
            filter_subject: "jetsaga.task.other".into(),
            ..Default::default()
        })
        .await?;
    let err = Worker::builder("payments")
        .build(env.client.clone())
        .await
        .expect_err("a consumer filtering another subject must be refused");
    assert!(
        err.to_string().starts_with("E-WORKER-CONSUMER-CONFLICT"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn idle_shutdown_is_quick() -> Result<()> {
    init_tracing();
    let env = Env::new().await?;
    let (token, handle) = env.run(payments(Arc::new(AtomicUsize::new(0)))).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = tokio::time::Instant::now();
    token.cancel();
    handle.await??;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn no_task_is_lost_or_run_twice_across_a_shutdown() -> Result<()> {
    init_tracing();
    let env = Env::new().await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let builder = |name: &str| payments(calls.clone()).name(name).concurrency(4);
    let n = 60;
    for i in 0..n {
        env.publish_task(
            &task(
                &format!("m{i}"),
                "charge",
                1,
                json!({"mode": "slow", "ms": 40}),
            ),
            "",
        )
        .await?;
    }
    let (token, handle) = env.run(builder("first")).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    token.cancel();
    handle.await??;
    let (token, handle) = env.run(builder("second")).await?;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < n {
        let (r, _) = env.next_result(WAIT).await?;
        assert!(matches!(r.outcome, Outcome::Ok { .. }), "{r:?}");
        assert!(
            seen.insert(r.saga_id.clone()),
            "two results for {}",
            r.saga_id
        );
    }
    env.no_result(Duration::from_millis(1500)).await?;
    assert_eq!(calls.load(Ordering::SeqCst), n);
    token.cancel();
    handle.await??;
    Ok(())
}

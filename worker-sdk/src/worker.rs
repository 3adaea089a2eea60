//! [`WorkerBuilder`] registers handlers and connects; [`Worker::run`] pulls
//! and runs tasks until shut down.
//!
//! # JetStream pieces
//!
//! - The tasks stream ([`Subjects::tasks_stream`]) is created by the engine.
//!   A worker that starts first waits for it, retrying with jittered backoff
//!   and saying so in its log, until it appears or the worker is shut down.
//! - All workers of one service share ONE durable pull consumer
//!   ([`Subjects::service_consumer`], filter [`Subjects::task`], explicit
//!   acks, `ack_wait` as configured, unlimited deliveries). Whichever worker
//!   comes first creates it; the others use it as it is (its `ack_wait` wins).
//! - The outcomes stream ([`Subjects::outcomes_stream`]), where terminal
//!   outcomes are recorded (see the `store` module), is created by the
//!   engine too, and waited for in the same way: no task is pulled before
//!   it is open.
//!
//! # The loop
//!
//! The worker reserves free handler slots (at most `concurrency`), sends one
//! pull request for that many tasks (expiring after a few seconds), and
//! hands each task it receives to its own tokio task, which holds one slot
//! until the task's result is published (the acknowledgement that follows
//! does not hold it). What happens to one task is described in
//! the `delivery` module: record before result, result before ack.
//!
//! A pull request lives on the server that received it: a restarted
//! nats-server (or a dropped connection) forgets it without a word, and
//! waiting for it to expire would leave the worker idle while tasks queue
//! up. So the pull asks the server for an idle heartbeat every
//! [`PULL_HEARTBEAT`], and the worker sends a new pull at once when its
//! client has reconnected since the pull was sent, or when the server has
//! been silent (no task, no heartbeat) for [`PULL_SILENCE`] while
//! connected. A task the server delivered to the abandoned pull's inbox at
//! that very moment is delivered again after `ack_wait`.
//!
//! # Shutdown, in order
//!
//! When the token passed to [`Worker::run`] is cancelled:
//!
//! 1. no new pull request is sent; tasks still arriving for the open pull
//!    request in the next 300 ms are nak'ed at once so that another worker
//!    picks them up without waiting for `ack_wait`; then the pull's inbox
//!    is unsubscribed (the server does not deliver to a pull request nobody
//!    listens to; a task caught in flight at that instant is redelivered
//!    after `ack_wait`);
//! 2. every task already started runs to its end: handler (bounded by the
//!    task's deadline), record, result published, task acknowledged;
//! 3. `run` returns `Ok(())`.
//!
//! Dropping the `run` future instead stops waiting at once; tasks in flight
//! are then delivered again after `ack_wait` and replayed or re-run.

use crate::delivery::{self, Shared};
use crate::handler::{self, Handlers, OutputLimit};
use crate::protocol::{self, Outcome, Subjects, Task, TaskKind};
use crate::store::Records;
use crate::{StepError, TaskContext, WorkerError};
use async_nats::connection::State;
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
};
use async_nats::{StatusCode, Subscriber};
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

/// How long one pull request waits for tasks.
const PULL_EXPIRES: Duration = Duration::from_secs(3);
/// Idle heartbeat the server sends on an open pull request (the server
/// wants at most half of [`PULL_EXPIRES`]).
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
/// An open pull request that brought neither a task nor a heartbeat for
/// this long, while the client stayed connected, is taken as lost.
const PULL_SILENCE: Duration = Duration::from_secs(2);
/// How often an open pull request looks at the client's connection.
const CONNECTION_CHECK: Duration = Duration::from_millis(100);
/// How long a shutting-down worker keeps handing back (nak) tasks that
/// still arrive for its last pull request before dropping it.
const DRAIN_GRACE: Duration = Duration::from_millis(300);
/// Default handler slots per worker.
const DEFAULT_CONCURRENCY: usize = 16;
/// Default consumer `ack_wait`.
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Oldest nats-server release jetsaga works with.
const MIN_SERVER_VERSION: (u64, u64) = (2, 12);

/// Configures a [`Worker`]: which service it serves, its handlers, its limits.
///
/// Create one with [`Worker::builder`].
#[derive(Debug)]
pub struct WorkerBuilder {
    /// Service (work queue) served.
    service: String,
    /// Subject prefix of the installation.
    prefix: String,
    /// Handler slots.
    concurrency: usize,
    /// Consumer `ack_wait` when this worker creates the consumer.
    ack_wait: Duration,
    /// Identity reported in results; `None` for `<hostname>-<pid>`.
    name: Option<String>,
    /// Cap on handler output below the one derived from the server and the
    /// engine; `None` for that one alone.
    max_output: Option<usize>,
    /// Registered handlers.
    handlers: Handlers,
}

/// A worker of one service, connected and ready to [`run`](Worker::run).
#[derive(Debug)]
pub struct Worker {
    /// What the tasks share.
    shared: Arc<Shared>,
    /// The service's consumer and its effective `ack_wait`, once known.
    consumer: Option<(PullConsumer, Duration)>,
    /// Handler slots.
    concurrency: usize,
    /// `ack_wait` to create the consumer with.
    ack_wait: Duration,
}

impl Worker {
    /// Starts configuring a worker for `service` (the steps' `service:` in
    /// saga definitions; one work queue).
    pub fn builder(service: &str) -> WorkerBuilder {
        WorkerBuilder {
            service: service.to_string(),
            prefix: protocol::DEFAULT_PREFIX.to_string(),
            concurrency: DEFAULT_CONCURRENCY,
            ack_wait: DEFAULT_ACK_WAIT,
            name: None,
            max_output: None,
            handlers: Handlers::default(),
        }
    }

    /// Pulls and runs tasks until `shutdown` is cancelled, then stops
    /// pulling, finishes the handlers in flight (results published, tasks
    /// acknowledged) and returns. See the module docs for the exact order.
    ///
    /// Errors only if the service's consumer exists with a configuration
    /// this worker cannot use; everything transient (NATS unreachable, the
    /// engine not having created the stream yet) is retried with backoff.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let span = info_span!("worker", service = %self.shared.service, worker = %self.shared.name);
        async move {
            let tracker = TaskTracker::new();
            let result = self.pull_loop(&shutdown, &tracker).await;
            info!(
                in_flight = tracker.len(),
                "stopped pulling; waiting for tasks in flight"
            );
            tracker.close();
            tracker.wait().await;
            info!("worker stopped");
            result
        }
        .instrument(span)
        .await
    }

    /// Pulls until `shutdown`, spawning one task per message on `tracker`.
    async fn pull_loop(
        &mut self,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<(), WorkerError> {
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut backoff = loop_backoff();
        loop {
            let (consumer, ack_wait) = match self.consumer.take() {
                Some(c) => c,
                None => match self.wait_for_consumer(shutdown).await? {
                    Some(c) => c,
                    None => return Ok(()),
                },
            };

            // Reserve the slots the pull asks for: at least one, all free ones.
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let mut permits = vec![first];
            while permits.len() < self.concurrency {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }

            let pull = Pull::send(&consumer, &self.shared.js, permits.len());
            let mut batch = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                batch = pull => match batch {
                    Ok(batch) => batch,
                    Err(e) => {
                        let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                        warn!(error = %e, retry_in = ?delay, "pull request failed");
                        drop(permits);
                        if sleep_or_shutdown(delay, shutdown).await {
                            return Ok(());
                        }
                        continue; // self.consumer is None: look it up again
                    }
                },
            };

            // Set at shutdown: until when tasks still arriving for this pull
            // are handed back; then the pull's inbox is dropped, and the
            // server stops delivering to it.
            let mut draining: Option<tokio::time::Instant> = None;
            let mut failed = false;
            loop {
                let pulled = match draining {
                    // Past the grace period: treat the pull as ended.
                    Some(until) => tokio::time::timeout_at(until, batch.next())
                        .await
                        .unwrap_or(Pulled::Done),
                    None => tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => {
                            draining = Some(Instant::now() + DRAIN_GRACE);
                            continue;
                        }
                        pulled = batch.next() => pulled,
                    },
                };
                match pulled {
                    Pulled::Done => break,
                    Pulled::Lost(why) => {
                        if draining.is_none() {
                            info!("{why}; sending a new pull request");
                        }
                        break;
                    }
                    Pulled::Task(msg) => match permits.pop() {
                        Some(permit) if draining.is_none() => {
                            tracker.spawn(delivery::handle(
                                self.shared.clone(),
                                *msg,
                                ack_wait,
                                permit,
                            ));
                        }
                        _ => {
                            debug!("shutting down: handing a task back for redelivery");
                            if let Err(e) = msg.ack_with(jetstream::AckKind::Nak(None)).await {
                                debug!(error = %e, "nak failed; the task is redelivered after ack_wait");
                            }
                        }
                    },
                    Pulled::Failed(e) => {
                        warn!(error = %e, "pulling tasks failed");
                        failed = true;
                        break;
                    }
                }
            }
            drop(permits);
            drop(batch);
            if draining.is_some() {
                return Ok(());
            }
            if failed {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                if sleep_or_shutdown(delay, shutdown).await {
                    return Ok(());
                }
                continue; // look the consumer up again: it may have been deleted
            }
            backoff = loop_backoff();
            self.consumer = Some((consumer, ack_wait));
        }
    }

    /// Gets or creates the service's consumer, retrying transient failures
    /// until it works (`Some`) or `shutdown` is cancelled (`None`).
    async fn wait_for_consumer(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<(PullConsumer, Duration)>, WorkerError> {
        let mut backoff = loop_backoff();
        let mut tries = 0u32;
        loop {
            if shutdown.is_cancelled() {
                return Ok(None);
            }
            tries += 1;
            match ensure_consumer(&self.shared, self.ack_wait).await {
                Ok(c) => {
                    if tries > 1 {
                        info!("consumer ready; pulling tasks");
                    }
                    return Ok(Some(c));
                }
                Err(Setup::Conflict(e)) => return Err(e),
                Err(Setup::Transient(reason)) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    warn!(tries, retry_in = ?delay, "{reason}");
                    if sleep_or_shutdown(delay, shutdown).await {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// One pull request: the inbox its tasks come to and what watches over it.
///
/// Unlike the batch of async-nats, which waits for a lost request until it
/// would have expired (and 5 s more), it notices that the request is gone:
/// see the module docs.
struct Pull {
    /// Subscription to the pull's inbox; dropping it unsubscribes.
    inbox: Subscriber,
    /// Tasks the request may still bring.
    remaining: usize,
    /// JetStream context the tasks are acknowledged through.
    js: jetstream::Context,
    /// The client, to watch its connection.
    client: async_nats::Client,
    /// The client's count of connections made when the pull was sent.
    connects: u64,
    /// When the server was last heard from on this pull (or the pull sent).
    heard: Instant,
    /// Whether the client was seen disconnected since the pull was sent
    /// (then the server's silence is no sign of a lost pull).
    disconnected: bool,
    /// Ticks every [`CONNECTION_CHECK`].
    check: Interval,
}

/// What an open pull request brings next.
enum Pulled {
    /// A task (boxed: a message is large next to the other variants).
    Task(Box<jetstream::Message>),
    /// The request is over: expired, or it brought all it asked for.
    Done,
    /// The server has forgotten the request (why): send a new one now.
    Lost(String),
    /// The server ended the request with an error.
    Failed(String),
}

impl Pull {
    /// Subscribes to a new inbox and asks `consumer` for `n` tasks there.
    async fn send(
        consumer: &PullConsumer,
        js: &jetstream::Context,
        n: usize,
    ) -> Result<Pull, async_nats::Error> {
        let client = js.client();
        let connects = client.statistics().connects.load(Ordering::Relaxed);
        let inbox = client.new_inbox();
        let subscription = client.subscribe(inbox.clone()).await?;
        let request = pull::BatchConfig {
            batch: n,
            expires: Some(PULL_EXPIRES),
            idle_heartbeat: PULL_HEARTBEAT,
            ..Default::default()
        };
        consumer.request_batch(request, inbox.into()).await?;
        let mut check = tokio::time::interval(CONNECTION_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Pull {
            inbox: subscription,
            remaining: n,
            js: js.clone(),
            client,
            connects,
            heard: Instant::now(),
            disconnected: false,
            check,
        })
    }

    /// Waits for what the request brings next.
    async fn next(&mut self) -> Pulled {
        if self.remaining == 0 {
            return Pulled::Done;
        }
        loop {
            tokio::select! {
                msg = self.inbox.next() => {
                    let Some(msg) = msg else {
                        return Pulled::Failed("the pull's subscription ended".into());
                    };
                    self.heard = Instant::now();
                    match msg.status {
                        None | Some(StatusCode::OK) => {
                            self.remaining -= 1;
                            return Pulled::Task(Box::new(jetstream::Message {
                                message: msg,
                                context: self.js.clone(),
                            }));
                        }
                        Some(StatusCode::IDLE_HEARTBEAT) => continue,
                        // Expired (408) or nothing left to wait for (404).
                        Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND) => return Pulled::Done,
                        Some(status) => {
                            return Pulled::Failed(format!(
                                "the server ended the pull request: {status} {}",
                                msg.description.as_deref().unwrap_or("")
                            ));
                        }
                    }
                }
                _ = tokio::time::sleep_until(self.heard + PULL_SILENCE) => {
                    if self.disconnected {
                        // Not the server's fault: wait for the reconnect.
                        self.heard = Instant::now();
                        continue;
                    }
                    return Pulled::Lost(format!(
                        "no task and no heartbeat on the pull request for {PULL_SILENCE:?}"
                    ));
                }
                _ = self.check.tick() => {
                    // The counter, not the state: a restart can be over
                    // between two looks at the state.
                    let connects = self.client.statistics().connects.load(Ordering::Relaxed);
                    if connects != self.connects {
                        return Pulled::Lost(
                            "reconnected to NATS; the server does not know the pull request sent before".into(),
                        );
                    }
                    self.disconnected |= self.client.connection_state() != State::Connected;
                }
            }
        }
    }
}

/// Backoff of the pull loop and of waiting for the stream: jittered,
/// exponential, capped, endless.
fn loop_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .without_max_times()
        .build()
}

/// Sleeps `delay`; returns `true` if `shutdown` was cancelled first.
async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// Reads the engine's `max_payload` off the results stream (its largest
/// message size less [`protocol::STREAM_HEADROOM`](crate::protocol::STREAM_HEADROOM)) for the output cap. Keeps
/// what it knew when the stream cannot be read now; results the stream
/// would refuse then fail at publishing, as before.
async fn learn_engine_max_payload(shared: &Shared) {
    let name = shared.subjects.results_stream();
    let max_message_size = match shared.js.get_stream(&name).await {
        Ok(stream) => stream.cached_info().config.max_message_size,
        Err(e) => {
            debug!(stream = %name, error = %e, "cannot read the results stream's limits");
            return;
        }
    };
    let engine = usize::try_from(max_message_size)
        .ok()
        .filter(|&m| m > 0)
        .map_or(0, |m| {
            m.checked_sub(crate::protocol::STREAM_HEADROOM)
                .filter(|&n| n > 0)
                .unwrap_or(m)
        });
    shared.engine_max_payload.store(engine, Ordering::Relaxed);
    let limit = shared.output_limit();
    debug!(bytes = limit.bytes, source = %limit.source, "handler output cap");
}

/// Why the consumer could not be set up.
enum Setup {
    /// May work later (stream missing, NATS unreachable): the message to log.
    Transient(String),
    /// Will not work without a person.
    Conflict(WorkerError),
}

/// Gets the tasks stream and gets or creates the service's consumer on it.
/// Returns the consumer and its effective `ack_wait`.
async fn ensure_consumer(
    shared: &Shared,
    ack_wait: Duration,
) -> Result<(PullConsumer, Duration), Setup> {
    let subjects = &shared.subjects;
    let stream_name = subjects.tasks_stream();
    let consumer_name = subjects.service_consumer(&shared.service);
    let filter = subjects.task(&shared.service);
    let stream = shared.js.get_stream(&stream_name).await.map_err(|e| {
        Setup::Transient(format!(
            "tasks stream {stream_name} is not available ({e}); waiting for the engine to create it"
        ))
    })?;
    learn_engine_max_payload(shared).await;
    let config = pull::Config {
        durable_name: Some(consumer_name.clone()),
        description: Some(format!("jetsaga workers of service {}", shared.service)),
        filter_subject: filter.clone(),
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        deliver_policy: DeliverPolicy::All,
        ..Default::default()
    };
    let consumer: PullConsumer = stream
        .get_or_create_consumer(&consumer_name, config)
        .await
        .map_err(|e| {
            Setup::Transient(format!(
                "cannot get or create consumer {consumer_name} on stream {stream_name} ({e}); retrying"
            ))
        })?;
    let existing = &consumer.cached_info().config;
    let filters_ok = existing.filter_subject == filter
        || (existing.filter_subject.is_empty() && existing.filter_subjects == [filter.clone()]);
    let conflict = |detail: String| {
        Setup::Conflict(WorkerError::ConsumerConflict {
            stream: stream_name.clone(),
            consumer: consumer_name.clone(),
            detail,
        })
    };
    if !filters_ok {
        return Err(conflict(format!(
            "filters {:?}{:?} instead of {filter:?}",
            existing.filter_subject, existing.filter_subjects
        )));
    }
    if existing.ack_policy != AckPolicy::Explicit {
        return Err(conflict(format!(
            "has ack policy {:?} instead of explicit",
            existing.ack_policy
        )));
    }
    if shared.records.get().is_none() {
        let records = Records::open(&shared.js, subjects)
            .await
            .map_err(Setup::Transient)?;
        // Another setup may have opened them meanwhile: either will do.
        let _ = shared.records.set(records);
    }
    let effective = existing.ack_wait;
    if effective != ack_wait {
        warn!(
            consumer = %consumer_name,
            consumer_ack_wait = ?effective,
            configured_ack_wait = ?ack_wait,
            "the consumer exists with another ack_wait; using the consumer's"
        );
    }
    Ok((consumer, effective))
}

impl WorkerBuilder {
    /// Subject prefix of the installation (default [`protocol::DEFAULT_PREFIX`]).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// Most handlers running at once in this process (default 16).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// `ack_wait` of the service's consumer (default 30 s), used when this
    /// worker is the one that creates it. The worker sends in-progress acks
    /// every third of it, so it bounds how long a crashed worker's task
    /// waits before another worker gets it, not how long handlers may run.
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }

    /// Identity reported in results (default `<hostname>-<pid>`).
    pub fn name(mut self, worker_name: &str) -> Self {
        self.name = Some(worker_name.to_string());
        self
    }

    /// Caps a handler's output at `bytes` of JSON; a larger output is
    /// dropped, the step still succeeding with an output naming its size
    /// and the cap (`{"jetsaga_output_dropped": "..."}`).
    ///
    /// Without it the cap is what a result message can carry: the smaller
    /// of the NATS server's `max_payload` and the engine's `--max-payload`
    /// (read from the largest message size of the results stream, which the
    /// engine sets to `max_payload` + 64 KiB), less 16 KiB (a quarter under 64 KiB) for the result
    /// envelope. Set this when the results pass through something with a
    /// smaller limit; a value above the derived cap does not raise it.
    pub fn max_output_bytes(mut self, bytes: usize) -> Self {
        self.max_output = Some(bytes);
        self
    }

    /// Registers the action handler for `operation`.
    ///
    /// `I` is the saga input, decoded from JSON (use `serde_json::Value` to
    /// take it as it is, `serde::de::IgnoredAny` to ignore it); input that
    /// does not decode fails the step as fatal. `O` is the step's output,
    /// made available to later steps and to this step's compensation.
    pub fn handler<I, O, F, Fut>(mut self, operation: &str, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(TaskContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
    {
        self.handlers.insert(TaskKind::Action, operation, f);
        self
    }

    /// Registers the compensation handler for `operation` (the step's
    /// `compensation:` name). Same shape as [`handler`](Self::handler); the
    /// compensated step's output is in
    /// [`TaskContext::step_output`] under its step id.
    pub fn compensation<I, O, F, Fut>(mut self, operation: &str, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(TaskContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
    {
        self.handlers.insert(TaskKind::Compensation, operation, f);
        self
    }

    /// Runs the handler registered for `task` once, as the worker would
    /// (input decoding, deadline, panic capture, output encoding), without a
    /// server and without idempotency records. For unit tests of handlers.
    /// Needs a tokio runtime.
    pub async fn run_one(&self, task: Task) -> Outcome {
        let ctx = TaskContext::received(Arc::new(task));
        let limit = OutputLimit::offline(self.max_output);
        handler::execute(
            &self.handlers,
            &self.worker_name(),
            &self.service,
            ctx,
            &limit,
        )
        .await
    }

    /// Checks the settings, connects the JetStream pieces (opens the
    /// engine's outcomes stream for the idempotency records when it exists;
    /// gets or creates the service's durable
    /// consumer) and returns a worker ready to run.
    ///
    /// If the tasks stream does not exist yet (the engine creates it), this
    /// does not fail: [`Worker::run`] waits for it.
    pub async fn build(self, client: async_nats::Client) -> Result<Worker, WorkerError> {
        self.validate()?;
        check_server_version(&client)?;
        let name = self.worker_name();
        let subjects = Subjects::new(&self.prefix);
        let js = jetstream::new(client);
        if self.handlers.is_empty() {
            warn!(service = %self.service, "worker has no handlers; every task will be reported as retryable");
        }
        crate::metrics::register(&self.service);
        let shared = Arc::new(Shared {
            service: self.service,
            subjects,
            name,
            handlers: self.handlers,
            js,
            records: OnceLock::new(),
            max_output: self.max_output,
            engine_max_payload: AtomicUsize::new(0),
        });
        let consumer = match ensure_consumer(&shared, self.ack_wait).await {
            Ok(c) => Some(c),
            Err(Setup::Conflict(e)) => return Err(e),
            Err(Setup::Transient(reason)) => {
                info!(service = %shared.service, "consumer not ready yet, Worker::run will keep trying: {reason}");
                None
            }
        };
        Ok(Worker {
            shared,
            consumer,
            concurrency: self.concurrency,
            ack_wait: self.ack_wait,
        })
    }

    /// Checks the settings.
    fn validate(&self) -> Result<(), WorkerError> {
        let invalid = WorkerError::InvalidConfig;
        protocol::validate_prefix(&self.prefix).map_err(invalid)?;
        protocol::validate_token(&self.service)
            .map_err(|e| invalid(format!("service name {e}")))?;
        if self.concurrency == 0 {
            return Err(invalid("concurrency must be at least 1".into()));
        }
        if self.max_output == Some(0) {
            return Err(invalid(
                "max_output_bytes must be at least 1 (leave it unset to follow the server and the engine)".into(),
            ));
        }
        if self.ack_wait < Duration::from_millis(100) {
            return Err(invalid(format!(
                "ack_wait {:?} is too short; use at least 100ms (default 30s)",
                self.ack_wait
            )));
        }
        if let Some((kind, operation)) = self.handlers.first_duplicate() {
            return Err(WorkerError::DuplicateHandler {
                operation: operation.clone(),
                kind: *kind,
            });
        }
        Ok(())
    }

    /// The configured name or `<hostname>-<pid>`.
    fn worker_name(&self) -> String {
        self.name.clone().unwrap_or_else(default_name)
    }
}

/// `<hostname>-<pid>`.
fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .or_else(|_| std::fs::read_to_string("/etc/hostname"))
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "unknown-host".to_string());
    format!("{host}-{}", std::process::id())
}

/// Refuses servers older than [`MIN_SERVER_VERSION`] (older ones break KV).
fn check_server_version(client: &async_nats::Client) -> Result<(), WorkerError> {
    let version = client.server_info().version;
    match parse_version(&version) {
        Some(v) if v < MIN_SERVER_VERSION => Err(WorkerError::ServerTooOld { version }),
        Some(_) => Ok(()),
        None => {
            debug!(version = %version, "server version unknown (not connected yet?); not checking it");
            Ok(())
        }
    }
}

/// `(major, minor)` of a version such as `2.12.1` or `2.14.0-beta.2`.
fn parse_version(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split(['.', '-']);
    let major = parts.next()?.trim_start_matches('v').parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("2.12.1"), Some((2, 12)));
        assert_eq!(parse_version("v2.15.0-beta.2"), Some((2, 15)));
        assert_eq!(parse_version(""), None);
        assert!(parse_version("2.9.25").unwrap() < MIN_SERVER_VERSION);
        assert!(parse_version("3.0.0").unwrap() >= MIN_SERVER_VERSION);
    }

    #[test]
    fn settings_are_validated() {
        let ok = || Worker::builder("payments");
        assert!(ok().validate().is_ok());
        assert!(matches!(
            ok().concurrency(0).validate(),
            Err(WorkerError::InvalidConfig(_))
        ));
        assert!(matches!(
            ok().prefix("a..b").validate(),
            Err(WorkerError::InvalidConfig(_))
        ));
        assert!(matches!(
            Worker::builder("pay ments").validate(),
            Err(WorkerError::InvalidConfig(_))
        ));
        assert!(matches!(
            ok().ack_wait(Duration::ZERO).validate(),
            Err(WorkerError::InvalidConfig(_))
        ));
        let dup = ok()
            .handler("charge", |_, _: serde_json::Value| async { Ok(()) })
            .handler("charge", |_, _: serde_json::Value| async { Ok(()) });
        match dup.validate() {
            Err(e @ WorkerError::DuplicateHandler { .. }) => {
                assert!(
                    e.to_string().starts_with("E-WORKER-DUPLICATE-HANDLER"),
                    "{e}"
                )
            }
            other => panic!("expected a duplicate handler error, got {other:?}"),
        }
    }

    #[test]
    fn default_name_has_host_and_pid() {
        let name = default_name();
        assert!(
            name.ends_with(&format!("-{}", std::process::id())),
            "{name}"
        );
    }
}

//! One task message, from delivery to acknowledgement.
//!
//! The order is what makes effects happen once:
//!
//! 1. decode the [`Task`]; a message that is not one is terminated
//!    (`AckKind::Term`) so that it is not redelivered forever;
//! 2. look up the record of the task's idempotency key in the outcomes
//!    stream; if there is one, skip the handler: a record of this very
//!    attempt is its result already (nothing to publish), another
//!    attempt's is reported for this one (`replayed: true`) on the
//!    results subject;
//! 3. otherwise run the handler (its own tokio task, the task's deadline,
//!    panics caught) — see [`execute`];
//! 4. a terminal outcome (`ok` or `fatal`) is published as the result on
//!    its key's outcome subject, first write wins: that message is the
//!    record and the engine's copy at once. If another delivery wrote
//!    first, its outcome is reported instead (replayed on the results
//!    subject when it was another attempt's). A `retryable` outcome is not
//!    recorded: it is published on the results subject, unless a lookup
//!    made just before finds that another run recorded an outcome
//!    meanwhile, which is then reported instead;
//! 5. acknowledge the task with a double (confirmed) ack.
//!
//! Every publish carries `Nats-Msg-Id` = [`result_msg_id_with`] (with the
//! task's result token) and waits for the
//! stream's acknowledgement. In-progress acks are sent every `ack_wait / 3`
//! from 2 to 4, so a long handler does not get its task redelivered. If 2
//! or 4 still fail after retries, the task is not acknowledged but
//! negatively acknowledged with a delay: it is delivered again, and the
//! record (if 4 wrote it) makes the second delivery replay instead of
//! running the effect again. A crash at any point has the same effect as
//! that, after `ack_wait`.
//!
//! The [`crash_points`] `worker.after_handler` (after 3),
//! `worker.after_record` (once the outcome is recorded, in 4) and
//! `worker.after_publish` (once the result is published, before 5; for a
//! recorded outcome the same moment as after the record) let tests kill the
//! process at each of these places.

use crate::crash_points;
use crate::handler::{Handlers, OutputLimit, execute};
use crate::metrics;
use crate::protocol::{
    HEADER_RESULT_TOKEN, Outcome, Subjects, Task, TaskResult, result_msg_id_with,
};
use crate::store::{Found, RecordError, Recorded, Records, is_valid_key, result_headers};
use crate::task::TaskContext;
use async_nats::jetstream::{self, AckKind};
use backon::{ExponentialBuilder, Retryable};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

/// Delay before a task this worker could not finish is delivered again.
const RETRY_DELIVERY_AFTER: Duration = Duration::from_secs(5);
/// Delay before a task with an unreadable record is delivered again: a
/// person has to look at it, so do not spin.
const UNREADABLE_RECORD_DELIVERY_AFTER: Duration = Duration::from_secs(60);

/// What every task handled by one worker shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Service (work queue) served.
    pub(crate) service: String,
    /// Names of the installation's subjects.
    pub(crate) subjects: Subjects,
    /// Identity reported in results.
    pub(crate) name: String,
    /// Registered handlers.
    pub(crate) handlers: Handlers,
    /// JetStream context results are published with.
    pub(crate) js: jetstream::Context,
    /// Idempotency records, once the outcomes stream exists (the engine
    /// creates it; tasks are pulled only once it is open).
    pub(crate) records: std::sync::OnceLock<Records>,
    /// The worker's own cap on handler output (`max_output_bytes`), if set.
    pub(crate) max_output: Option<usize>,
    /// The engine's `max_payload` as read from the results stream's largest
    /// message size; 0 while unknown (or unlimited).
    pub(crate) engine_max_payload: AtomicUsize,
}

impl Shared {
    /// The cap on handler output now: see [`OutputLimit::new`]. The
    /// server's `max_payload` is read at each task, so that it follows a
    /// reconnect to another server.
    pub(crate) fn output_limit(&self) -> OutputLimit {
        let engine = self.engine_max_payload.load(Ordering::Relaxed);
        OutputLimit::new(
            self.js.client().max_payload(),
            (engine > 0).then_some(engine),
            self.max_output,
        )
    }
}

/// Why a task could not be finished (and is therefore not acknowledged).
#[derive(Debug, thiserror::Error)]
enum Unfinished {
    /// The idempotency record could not be read: running the handler
    /// might repeat an effect, so it was not run.
    #[error("could not look up the idempotency record, so the handler was not run: {0}")]
    Lookup(RecordError),
    /// The outcome could not be recorded.
    #[error("could not record the outcome: {0}")]
    Record(RecordError),
    /// The result could not be published.
    #[error("could not publish the result: {0}")]
    Publish(async_nats::Error),
}

/// Backoff for the steps of one delivery: jittered, exponential, bounded.
fn backoff(max_times: usize) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(max_times)
}

/// Handles one delivered message. `permit` is one unit of the worker's
/// concurrency, held until the result is published (or the task is handed
/// back), not across the acknowledgement: see [`process`].
pub(crate) async fn handle(
    shared: Arc<Shared>,
    msg: jetstream::Message,
    ack_wait: Duration,
    permit: OwnedSemaphorePermit,
) {
    let (stream_seq, delivered) = msg
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 0));
    let task: Task = match serde_json::from_slice(&msg.payload) {
        Ok(task) => task,
        Err(e) => {
            warn!(
                service = %shared.service,
                subject = %msg.subject,
                stream_seq,
                delivered,
                reason = %e,
                "message is not a jetsaga task; terminating it so that it is not redelivered"
            );
            if let Err(e) = msg.ack_with(AckKind::Term).await {
                warn!(stream_seq, error = %e, "could not terminate the message");
            }
            return;
        }
    };
    // Attribute names and types as on the engine's spans (`saga.id`, `step`,
    // an integer `attempt`), so one search finds both.
    let span = info_span!(
        "task",
        saga.id = %task.saga_id,
        step = %task.step_id,
        service = %task.service,
        attempt = i64::from(task.attempt),
        operation = %task.operation,
        kind = %task.kind,
        stream_seq,
        delivered,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    // A child of the engine's span of this step attempt, when tracing is on.
    crate::trace::link(&span, msg.headers.as_ref());
    process(&shared, &msg, task, ack_wait, permit)
        .instrument(span)
        .await;
}

/// Records `outcome` on the `task` span: its name, and for a failed
/// handler the OpenTelemetry status ERROR with the error.
fn record_outcome(span: &tracing::Span, outcome: &Outcome) {
    span.record("outcome", outcome.as_str());
    match outcome {
        Outcome::Ok { .. } => {}
        Outcome::Retryable { error, .. } | Outcome::Fatal { error } => {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", error.as_str());
        }
    }
}

/// Steps 2 to 6 for a decoded task.
///
/// The handler slot (`permit`) is given back before step 6: acknowledging
/// runs no handler and may take long for nothing. After a nats-server crash
/// that lost the consumer's latest delivery state, the server never answers
/// a confirmed ack of a delivery it forgot (it ignores acks above its
/// delivery pointer), so each such ack waits out every retry's timeout —
/// some 20 s — while the server delivers the task again to whoever pulls.
/// Holding the slot meanwhile stalled the whole worker (all its slots taken
/// by such acks, nobody pulling) past the steps' timeouts.
async fn process(
    shared: &Shared,
    msg: &jetstream::Message,
    task: Task,
    ack_wait: Duration,
    permit: OwnedSemaphorePermit,
) {
    debug!("task received");
    if task.service != shared.service {
        warn!(
            task_service = %task.service,
            "task names service {} but came on the queue of {}; handling it here",
            task.service,
            shared.service
        );
    }
    // Every result of this task bears its id: the same on each delivery
    // (so JetStream drops a repeat), and with the task's token, which no
    // other service's worker can read, so none can claim the id first.
    let token = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(HEADER_RESULT_TOKEN))
        .map(|v| v.as_str().to_string());
    let msg_id = result_msg_id_with(
        &task.saga_id,
        &task.step_id,
        task.kind,
        task.attempt,
        token.as_deref(),
    );
    let ctx = TaskContext::received(Arc::new(task));
    let work = async {
        let Some(records) = shared.records.get() else {
            // Tasks are pulled only once the outcomes stream is open.
            return Err(Unfinished::Lookup(RecordError::Unavailable(
                "the outcomes stream is not open yet".into(),
            )));
        };
        let report = produce_outcome(shared, records, &ctx, &msg_id).await?;
        let outcome = match report {
            Report::Recorded(outcome) => outcome,
            Report::Publish { outcome, replayed } => {
                // Recorded before the result leaves: the engine may close
                // the attempt span as soon as it applies the result, while
                // this span lasts until the acknowledgement.
                record_outcome(&tracing::Span::current(), &outcome);
                publish(shared, ctx.task(), &outcome, replayed, &msg_id).await?;
                outcome
            }
        };
        Ok::<_, Unfinished>(outcome)
    };
    let finished = with_progress(msg, ack_wait, work).await;
    drop(permit);
    let task = ctx.task();
    let handled = finished.as_ref().map_or("unfinished", Outcome::as_str);
    metrics::task_handled(&shared.service, &task.operation, task.kind, handled);
    match finished {
        Ok(outcome) => {
            crash_points::pass(crash_points::AFTER_PUBLISH);
            let ack = (|| msg.double_ack())
                .retry(backoff(3))
                .notify(|e, after| debug!(error = %e, ?after, "task ack failed; retrying"))
                .await;
            match ack {
                Ok(()) => debug!(outcome = outcome.as_str(), "task acknowledged"),
                Err(e) => warn!(
                    error = %e,
                    "result published but the task ack failed; the task will be redelivered and its result replayed"
                ),
            }
        }
        Err(e) => {
            let delay = match &e {
                Unfinished::Lookup(RecordError::Unreadable { .. }) => {
                    UNREADABLE_RECORD_DELIVERY_AFTER
                }
                _ => RETRY_DELIVERY_AFTER,
            };
            error!(error = %e, redeliver_in = ?delay, "task not finished; leaving it for redelivery");
            if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
                debug!(error = %e, "nak failed; the task is redelivered after ack_wait");
            }
        }
    }
}

impl Report {
    /// What is left to do for a recorded outcome: nothing when it is this
    /// attempt's result, else replaying it for this attempt.
    fn of(found: Found) -> Self {
        if found.this_attempt {
            Report::Recorded(found.outcome)
        } else {
            Report::Publish {
                outcome: found.outcome,
                replayed: true,
            }
        }
    }
}

/// What is left to do once the outcome is known.
enum Report {
    /// The outcome is recorded as this attempt's result, on its key's
    /// outcome subject, where the engine reads it: nothing to publish.
    Recorded(Outcome),
    /// The outcome is to be published on the results subject: retryable
    /// (not recorded), or `replayed` from a record.
    Publish {
        /// The outcome.
        outcome: Outcome,
        /// Whether it was read from the record rather than produced now.
        replayed: bool,
    },
}

/// Steps 2 to 4: the outcome, recorded when terminal, and what is left to
/// publish.
async fn produce_outcome(
    shared: &Shared,
    records: &Records,
    ctx: &TaskContext,
    msg_id: &str,
) -> Result<Report, Unfinished> {
    let task = ctx.task();
    let key = ctx.idempotency_key();
    if !is_valid_key(key) {
        // Without a valid key there is no record, so no exactly-once: refuse.
        let outcome = Outcome::Fatal {
            error: format!(
                "task has idempotency key {key:?}, which is not a valid key (subject tokens of letters, digits, - / _ = separated by dots); use protocol::idempotency_key"
            ),
        };
        warn!(key = %key, "task has an invalid idempotency key; reporting it as fatal");
        return Ok(Report::Publish {
            outcome,
            replayed: false,
        });
    }

    if let Some(found) = look_up(shared, records, task).await? {
        metrics::replayed(&shared.service);
        if found.this_attempt {
            info!(
                outcome = found.outcome.as_str(),
                "this attempt's outcome is recorded already, and so published; not running the handler"
            );
        } else {
            info!(
                outcome = found.outcome.as_str(),
                "outcome already recorded; replaying it without running the handler"
            );
        }
        return Ok(Report::of(found));
    }

    let started = Instant::now();
    let in_flight = metrics::InFlight::enter(&shared.service);
    let limit = shared.output_limit();
    let outcome = execute(
        &shared.handlers,
        &shared.name,
        &shared.service,
        ctx.clone(),
        &limit,
    )
    .await;
    drop(in_flight);
    let elapsed = started.elapsed();
    metrics::handler_ran(&shared.service, ctx.operation(), ctx.kind(), elapsed);
    let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    match &outcome {
        Outcome::Ok { .. } => info!(elapsed_ms, "handler succeeded"),
        Outcome::Fatal { error } => info!(elapsed_ms, error = %error, "handler failed (fatal)"),
        Outcome::Retryable { error, .. } => {
            warn!(elapsed_ms, error = %error, "handler failed (retryable)")
        }
    }
    crash_points::pass(crash_points::AFTER_HANDLER);
    if matches!(outcome, Outcome::Retryable { .. }) {
        // Not recorded: the next attempt must run the handler again. But
        // another delivery of the step running at the same time may have
        // recorded an outcome meanwhile (its effect happened): that one is
        // reported instead, so that a retryable never overtakes it.
        return Ok(match look_up(shared, records, task).await? {
            Some(found) => {
                warn!(
                    ours = outcome.as_str(),
                    recorded = found.outcome.as_str(),
                    "another run of this step recorded its outcome while this one failed retryably; reporting the recorded one"
                );
                Report::of(found)
            }
            None => Report::Publish {
                outcome,
                replayed: false,
            },
        });
    }

    // Recorded before it leaves, as in `process`.
    record_outcome(&tracing::Span::current(), &outcome);
    let result = result_of(shared, task, &outcome, false);
    let recorded = (|| records.record(&shared.js, &shared.subjects, task, &result, msg_id))
        .retry(backoff(8))
        .when(RecordError::is_transient)
        .notify(|e, after| warn!(error = %e, ?after, "recording the outcome failed; retrying"))
        .await
        .map_err(Unfinished::Record)?;
    crash_points::pass(crash_points::AFTER_RECORD);
    Ok(match recorded {
        Recorded::Ours => {
            debug!(outcome = outcome.as_str(), "outcome recorded as the result");
            Report::Recorded(outcome)
        }
        Recorded::Theirs(found) => {
            warn!(
                ours = outcome.as_str(),
                recorded = found.outcome.as_str(),
                this_attempt = found.this_attempt,
                "another run of this step recorded its outcome first; reporting that one (pass ctx.idempotency_key() to downstream services to make concurrent runs harmless)"
            );
            Report::of(found)
        }
    })
}

/// Looks up the record of `task`'s key, trying again while the stream does
/// not answer.
async fn look_up(
    shared: &Shared,
    records: &Records,
    task: &Task,
) -> Result<Option<Found>, Unfinished> {
    (|| records.lookup(&shared.subjects, task))
        .retry(backoff(5))
        .when(RecordError::is_transient)
        .notify(|e, after| warn!(error = %e, ?after, "idempotency lookup failed; retrying"))
        .await
        .map_err(Unfinished::Lookup)
}

/// The result message of `task` with `outcome`.
fn result_of(shared: &Shared, task: &Task, outcome: &Outcome, replayed: bool) -> TaskResult {
    TaskResult {
        saga_id: task.saga_id.clone(),
        step_id: task.step_id.clone(),
        kind: task.kind,
        attempt: task.attempt,
        service: task.service.clone(),
        outcome: outcome.clone(),
        replayed,
        worker: shared.name.clone(),
    }
}

/// Publishes a result that is not a record (retryable, or replayed) on the
/// results subject and waits for the stream's ack.
async fn publish(
    shared: &Shared,
    task: &Task,
    outcome: &Outcome,
    replayed: bool,
    msg_id: &str,
) -> Result<(), Unfinished> {
    let result = result_of(shared, task, outcome, replayed);
    let payload =
        bytes::Bytes::from(serde_json::to_vec(&result).expect("a TaskResult always serializes"));
    let subject = shared.subjects.result_in(&shared.service, task.partition);
    let send = || async {
        let headers = result_headers(msg_id, &task.saga_id);
        let ack = shared
            .js
            .publish_with_headers(subject.clone(), headers, payload.clone())
            .await?;
        Ok::<bool, async_nats::Error>(ack.await?.duplicate)
    };
    let duplicate = send
        .retry(backoff(8))
        .notify(|e, after| warn!(error = %e, ?after, "publishing the result failed; retrying"))
        .await
        .map_err(Unfinished::Publish)?;
    // `duplicate`: this attempt's result was published before (redelivery).
    debug!(
        outcome = outcome.as_str(),
        replayed, duplicate, "result published"
    );
    Ok(())
}

/// Runs `work` while telling the server every `ack_wait / 3` that the task
/// is still being worked on.
async fn with_progress<T>(
    msg: &jetstream::Message,
    ack_wait: Duration,
    work: impl Future<Output = T>,
) -> T {
    let period = (ack_wait / 3).max(Duration::from_millis(50));
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticker.tick() => {
                match msg.ack_with(AckKind::Progress).await {
                    Ok(()) => debug!("in-progress ack sent"),
                    Err(e) => warn!(error = %e, "in-progress ack failed; the task may be redelivered meanwhile"),
                }
            }
        }
    }
}

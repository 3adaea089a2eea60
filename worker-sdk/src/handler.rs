//! Handlers, type-erased, and running one of them for one task: input
//! decoding, deadline, panic capture and output encoding. Both the worker
//! loop and [`WorkerBuilder::run_one`](crate::WorkerBuilder::run_one) go
//! through [`execute`], so a unit test sees exactly what production does.

use crate::protocol::{DEFAULT_MAX_PAYLOAD, OUTPUT_DROPPED, Outcome, TaskKind};
use crate::{StepError, TaskContext};
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use tracing::Instrument;

/// Room kept in a result message for everything but the handler's output
/// (the result envelope and the headers).
pub(crate) const ENVELOPE_ROOM: usize = 16 * 1024;
/// Largest handler output accepted when nothing better is known (the
/// engine's default `max_payload` less [`ENVELOPE_ROOM`]; [`OutputLimit::offline`]).
#[cfg(test)]
pub(crate) const DEFAULT_MAX_OUTPUT_BYTES: usize = DEFAULT_MAX_PAYLOAD - ENVELOPE_ROOM;
/// nats-server's default `max_payload`, assumed while the server's is unknown.
const NATS_DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// Room left for the result envelope (ids, service, worker name) under a
/// message size limit of `max_payload`: [`ENVELOPE_ROOM`], or a quarter of
/// a limit so small that the fixed room would leave nothing.
fn envelope_room(max_payload: usize) -> usize {
    ENVELOPE_ROOM.min(max_payload / 4)
}

/// Largest handler output accepted, in bytes of JSON, and what sets it.
/// Bigger outputs would not fit in a result message that NATS carries and
/// the engine accepts; they fail the step instead of being redelivered
/// forever. Worked out per task from numbers only; the text of its source
/// is written only when an output is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutputLimit {
    /// The limit in bytes.
    pub(crate) bytes: usize,
    /// Where it comes from, for the error message.
    pub(crate) source: LimitSource,
}

/// What sets an [`OutputLimit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitSource {
    /// The NATS server's `max_payload`, less the envelope room.
    Server { max_payload: usize, room: usize },
    /// The engine's `max_payload`, less the envelope room.
    Engine { max_payload: usize, room: usize },
    /// The worker's `max_output_bytes`.
    Worker,
}

impl std::fmt::Display for LimitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitSource::Server { max_payload, room } => write!(
                f,
                "the NATS server's max_payload of {max_payload} bytes less {room} for the result envelope"
            ),
            LimitSource::Engine { max_payload, room } => write!(
                f,
                "the engine's max_payload of {max_payload} bytes less {room} for the result envelope"
            ),
            LimitSource::Worker => f.write_str("the worker's max_output_bytes"),
        }
    }
}

impl OutputLimit {
    /// The smallest of: the server's `max_payload` (0 when unknown) and the
    /// engine's (`None` when unknown), each less [`ENVELOPE_ROOM`], and the
    /// worker's own setting.
    pub(crate) fn new(
        server_max_payload: usize,
        engine_max_payload: Option<usize>,
        configured: Option<usize>,
    ) -> OutputLimit {
        let less_room = |max_payload: usize| max_payload - envelope_room(max_payload);
        let server = if server_max_payload == 0 {
            NATS_DEFAULT_MAX_PAYLOAD
        } else {
            server_max_payload
        };
        let mut limit = OutputLimit {
            bytes: less_room(server),
            source: LimitSource::Server {
                max_payload: server,
                room: envelope_room(server),
            },
        };
        if let Some(engine) = engine_max_payload.filter(|&e| less_room(e) < limit.bytes) {
            limit = OutputLimit {
                bytes: less_room(engine),
                source: LimitSource::Engine {
                    max_payload: engine,
                    room: envelope_room(engine),
                },
            };
        }
        if let Some(bytes) = configured.filter(|&b| b < limit.bytes) {
            limit = OutputLimit {
                bytes,
                source: LimitSource::Worker,
            };
        }
        limit
    }

    /// The limit without a server ([`WorkerBuilder::run_one`](crate::WorkerBuilder::run_one)):
    /// nats-server's and the engine's default `max_payload`, and the
    /// worker's setting, which only lowers it.
    pub(crate) fn offline(configured: Option<usize>) -> OutputLimit {
        OutputLimit::new(
            NATS_DEFAULT_MAX_PAYLOAD,
            Some(DEFAULT_MAX_PAYLOAD),
            configured,
        )
    }

    /// `outcome`, kept within the limit so that the result fits in a
    /// message the engine takes: an output over it is replaced by a note
    /// ([`OUTPUT_DROPPED`]), an error's text over it is cut to fit. The
    /// outcome itself never changes: a success whose output cannot be
    /// carried still happened, and must stay compensable.
    pub(crate) fn check(&self, outcome: Outcome) -> Outcome {
        match outcome {
            Outcome::Ok { output } => self.check_output(output),
            Outcome::Fatal { error } => Outcome::Fatal {
                error: self.cap_error(error),
            },
            Outcome::Retryable {
                error,
                retry_after_ms,
            } => Outcome::Retryable {
                error: self.cap_error(error),
                retry_after_ms,
            },
        }
    }

    /// `Ok` with `output`, or, if it is over the limit, `Ok` with an
    /// object whose one field [`OUTPUT_DROPPED`] says why it was dropped.
    fn check_output(&self, output: serde_json::Value) -> Outcome {
        let size = json_size(&output);
        if size <= self.bytes {
            return Outcome::Ok { output };
        }
        let why = format!(
            "handler output is {size} bytes of JSON, more than the limit of {} ({}), so it was dropped; the step succeeded (and is compensated on a rollback); store large data elsewhere and return a reference to it",
            self.bytes, self.source
        );
        tracing::error!("{why}");
        Outcome::Ok {
            output: serde_json::json!({ OUTPUT_DROPPED: why }),
        }
    }

    /// `error`, or its beginning and a note of the cut if its JSON is larger
    /// than the limit; the result is at most the limit in bytes of JSON.
    fn cap_error(&self, error: String) -> String {
        let size = json_str_size(&error);
        if size <= self.bytes {
            return error;
        }
        let note = format!(
            "… [error text cut: it was {size} bytes of JSON, more than the limit of {} ({})]",
            self.bytes, self.source
        );
        // Room for the characters kept: the limit less the quotes and the note.
        let room = self.bytes.saturating_sub(json_str_size(&note));
        let mut used = 0;
        let mut end = 0;
        for (i, c) in error.char_indices() {
            used += json_char_size(c);
            if used > room {
                break;
            }
            end = i + c.len_utf8();
        }
        let mut cut = error;
        cut.truncate(end);
        if json_str_size(&cut) + json_str_size(&note) - 2 <= self.bytes {
            cut.push_str(&note);
        }
        cut
    }
}

/// Bytes of `c` inside a JSON string, as serde_json writes it.
fn json_char_size(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Bytes of `s` as a JSON string, quotes included.
fn json_str_size(s: &str) -> usize {
    2 + s.chars().map(json_char_size).sum::<usize>()
}

/// Bytes of `value` as JSON, counted without writing them anywhere.
fn json_size(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // A `Value` always serializes.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// A registered handler: decodes the input, runs the user's function and
/// encodes its result. Decoding happens before the returned future runs.
pub(crate) type Handler = Arc<dyn Fn(TaskContext) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// Handlers of one worker, by kind and operation.
#[derive(Clone, Default)]
pub(crate) struct Handlers {
    /// Registered handlers.
    map: BTreeMap<(TaskKind, String), Handler>,
    /// (kind, operation) pairs registered more than once; reported by `build`.
    duplicates: Vec<(TaskKind, String)>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.map.keys().map(|(k, op)| format!("{k}:{op}")))
            .finish()
    }
}

impl Handlers {
    /// Registers `f` for `operation` of `kind`, wrapping it into a [`Handler`].
    pub(crate) fn insert<I, O, F, Fut>(&mut self, kind: TaskKind, operation: &str, f: F)
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(TaskContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
    {
        let op = operation.to_string();
        let handler: Handler = Arc::new(move |ctx: TaskContext| {
            let input = match I::deserialize(ctx.input_raw()) {
                Ok(input) => input,
                Err(e) => {
                    let error = format!("invalid input for {}: {e}", ctx.operation());
                    return Box::pin(std::future::ready(Outcome::Fatal { error }));
                }
            };
            let fut = f(ctx, input);
            Box::pin(async move { encode(fut.await) })
        });
        if self.map.insert((kind, op.clone()), handler).is_some() {
            self.duplicates.push((kind, op));
        }
    }

    /// The first operation registered twice, if any.
    pub(crate) fn first_duplicate(&self) -> Option<&(TaskKind, String)> {
        self.duplicates.first()
    }

    /// Whether no handler is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The handler for `operation` of `kind`.
    fn get(&self, kind: TaskKind, operation: &str) -> Option<&Handler> {
        self.map.get(&(kind, operation.to_string()))
    }
}

/// Turns a handler's result into the outcome to report. A success whose
/// output does not serialize stays a success (its effect happened), its
/// output replaced by a note ([`OUTPUT_DROPPED`]), as one too large is.
fn encode<O: Serialize>(result: Result<O, StepError>) -> Outcome {
    match result {
        Ok(output) => match serde_json::to_value(output) {
            Ok(output) => Outcome::Ok { output },
            Err(e) => {
                let why = format!(
                    "handler output cannot be serialized as JSON ({e}), so it was dropped; the step succeeded (and is compensated on a rollback)"
                );
                tracing::error!("{why}");
                Outcome::Ok {
                    output: serde_json::json!({ OUTPUT_DROPPED: why }),
                }
            }
        },
        Err(e) => e.into_outcome(),
    }
}

/// Runs the handler `handlers` has for the task of `ctx` and says what
/// happened. Never panics and never outlives the task's deadline: the
/// handler runs in its own tokio task, a panic becomes a retryable outcome,
/// and at the deadline the handler is cancelled and the outcome is retryable.
/// An output over `limit` is dropped, the success kept (see
/// [`OutputLimit::check`]).
pub(crate) async fn execute(
    handlers: &Handlers,
    worker_name: &str,
    service: &str,
    ctx: TaskContext,
    limit: &OutputLimit,
) -> Outcome {
    let Some(handler) = handlers.get(ctx.kind(), ctx.operation()) else {
        return Outcome::Retryable {
            error: format!(
                "worker {worker_name} of service {service} has no {} handler for operation {}",
                ctx.kind(),
                ctx.operation()
            ),
            retry_after_ms: None,
        };
    };
    let deadline = ctx.deadline();
    let fut = handler(ctx);
    let mut join = tokio::spawn(fut.in_current_span());
    match tokio::time::timeout_at(deadline, &mut join).await {
        Ok(Ok(outcome)) => limit.check(outcome),
        Ok(Err(e)) if e.is_panic() => {
            let panic = e.into_panic();
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            Outcome::Retryable {
                error: format!("handler panicked: {msg}"),
                retry_after_ms: None,
            }
        }
        Ok(Err(e)) => Outcome::Retryable {
            error: format!("handler was cancelled: {e}"),
            retry_after_ms: None,
        },
        Err(_elapsed) => {
            join.abort();
            Outcome::Retryable {
                error: "handler exceeded its deadline".to_string(),
                retry_after_ms: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::{Outcome, Task, TaskKind};
    use crate::{StepError, TaskContext, Worker, WorkerBuilder};
    use serde::{Deserialize, Serialize};
    use serde_json::json;
    use std::time::Duration;

    #[derive(Deserialize)]
    struct Order {
        qty: u32,
    }

    #[derive(Serialize)]
    struct Reserved {
        reserved: u32,
    }

    fn task(kind: TaskKind, operation: &str, input: serde_json::Value) -> Task {
        Task {
            saga_id: "s-1".into(),
            saga_name: "order".into(),
            step_id: "reserve".into(),
            kind,
            service: "inventory".into(),
            operation: operation.into(),
            attempt: 1,
            idempotency_key: crate::protocol::idempotency_key("s-1", "reserve", kind),
            input,
            context: Default::default(),
            timeout_ms: 1_000,
            partition: 0,
        }
    }

    fn worker() -> WorkerBuilder {
        Worker::builder("inventory")
            .name("test-worker")
            .handler("reserve", |_ctx: TaskContext, order: Order| async move {
                match order.qty {
                    0 => Err(StepError::fatal("nothing to reserve")),
                    1..=10 => Ok(Reserved {
                        reserved: order.qty,
                    }),
                    11..=20 => Err(StepError::retry_after(
                        "warehouse busy",
                        Duration::from_millis(1500),
                    )),
                    21..=30 => Err(StepError::retryable("warehouse down")),
                    99 => panic!("boom {}", order.qty),
                    _ => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(Reserved { reserved: 0 })
                    }
                }
            })
            .compensation(
                "release",
                |ctx: TaskContext, _: serde::de::IgnoredAny| async move {
                    Ok(json!({"released_for": ctx.idempotency_key()}))
                },
            )
    }

    #[tokio::test]
    async fn ok_output_is_json() {
        let out = worker()
            .run_one(task(TaskKind::Action, "reserve", json!({"qty": 3})))
            .await;
        assert_eq!(
            out,
            Outcome::Ok {
                output: json!({"reserved": 3})
            }
        );
    }

    #[tokio::test]
    async fn step_errors_map_to_outcomes() {
        let w = worker();
        let run = |qty: u32| w.run_one(task(TaskKind::Action, "reserve", json!({ "qty": qty })));
        assert_eq!(
            run(0).await,
            Outcome::Fatal {
                error: "nothing to reserve".into()
            }
        );
        assert_eq!(
            run(15).await,
            Outcome::Retryable {
                error: "warehouse busy".into(),
                retry_after_ms: Some(1500)
            }
        );
        assert_eq!(
            run(25).await,
            Outcome::Retryable {
                error: "warehouse down".into(),
                retry_after_ms: None
            }
        );
    }

    #[tokio::test]
    async fn bad_input_is_fatal() {
        let out = worker()
            .run_one(task(TaskKind::Action, "reserve", json!({"qty": "three"})))
            .await;
        match out {
            Outcome::Fatal { error } => {
                assert!(error.starts_with("invalid input for reserve: "), "{error}")
            }
            other => panic!("expected fatal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn missing_handler_is_retryable_and_kind_matters() {
        let out = worker()
            .run_one(task(TaskKind::Compensation, "reserve", json!({})))
            .await;
        assert_eq!(
            out,
            Outcome::Retryable {
                error: "worker test-worker of service inventory has no compensation handler for operation reserve".into(),
                retry_after_ms: None
            }
        );
        let out = worker()
            .run_one(task(TaskKind::Action, "release", json!({})))
            .await;
        assert!(matches!(out, Outcome::Retryable { .. }), "{out:?}");
    }

    #[tokio::test]
    async fn compensation_runs_with_its_own_key() {
        let out = worker()
            .run_one(task(TaskKind::Compensation, "release", json!(null)))
            .await;
        assert_eq!(
            out,
            Outcome::Ok {
                output: json!({"released_for": "s-1.reserve.compensation"})
            }
        );
    }

    #[tokio::test]
    async fn panic_is_retryable() {
        let out = worker()
            .run_one(task(TaskKind::Action, "reserve", json!({"qty": 99})))
            .await;
        assert_eq!(
            out,
            Outcome::Retryable {
                error: "handler panicked: boom 99".into(),
                retry_after_ms: None
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_cancels_the_handler() {
        let out = worker()
            .run_one(task(TaskKind::Action, "reserve", json!({"qty": 50})))
            .await;
        assert_eq!(
            out,
            Outcome::Retryable {
                error: "handler exceeded its deadline".into(),
                retry_after_ms: None
            }
        );
    }

    #[tokio::test]
    async fn an_oversized_output_is_dropped_and_the_success_kept() {
        let w = Worker::builder("blobs")
            .handler("make", |_, n: usize| async move { Ok("x".repeat(n)) });
        let mut t = task(
            TaskKind::Action,
            "make",
            json!(super::DEFAULT_MAX_OUTPUT_BYTES - 2),
        );
        t.service = "blobs".into();
        assert!(matches!(w.run_one(t.clone()).await, Outcome::Ok { output } if output.is_string()));
        t.input = json!(super::DEFAULT_MAX_OUTPUT_BYTES - 1);
        let dropped = |outcome: Outcome| match outcome {
            Outcome::Ok { output } => output[crate::protocol::OUTPUT_DROPPED]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| panic!("expected the dropped note, got {output}")),
            other => panic!("expected a success, got {other:?}"),
        };
        let why = dropped(w.run_one(t.clone()).await);
        assert!(
            why.starts_with(&format!(
                "handler output is {} bytes of JSON, more than the limit of {} (the engine's max_payload of 524288 bytes",
                super::DEFAULT_MAX_OUTPUT_BYTES + 1,
                super::DEFAULT_MAX_OUTPUT_BYTES
            )),
            "{why}"
        );
        // The worker's own cap.
        let w = w.max_output_bytes(1000);
        t.input = json!(999);
        let why = dropped(w.run_one(t).await);
        assert!(
            why.contains(
                "1001 bytes of JSON, more than the limit of 1000 (the worker's max_output_bytes)"
            ),
            "{why}"
        );
    }

    #[test]
    fn an_output_that_does_not_serialize_is_dropped_and_the_success_kept() {
        // JSON object keys must be strings.
        let output: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        match super::encode(Ok::<_, StepError>(output)) {
            Outcome::Ok { output } => assert!(
                output[crate::protocol::OUTPUT_DROPPED]
                    .as_str()
                    .is_some_and(
                        |why| why.starts_with("handler output cannot be serialized as JSON")
                    ),
                "{output}"
            ),
            other => panic!("expected a success, got {other:?}"),
        }
    }

    #[test]
    fn output_limit_is_the_smallest_known() {
        use super::{ENVELOPE_ROOM, LimitSource, OutputLimit};
        let mib = 1024 * 1024;
        // Server only (streams without a size limit).
        let l = OutputLimit::new(8 * mib, None, None);
        assert_eq!(l.bytes, 8 * mib - ENVELOPE_ROOM);
        assert!(
            l.source.to_string().contains("NATS server's max_payload"),
            "{}",
            l.source
        );
        // The engine's limit below the server's.
        let l = OutputLimit::new(mib, Some(512 * 1024), None);
        assert_eq!(l.bytes, 512 * 1024 - ENVELOPE_ROOM);
        assert!(
            l.source.to_string().contains("engine's max_payload"),
            "{}",
            l.source
        );
        // The server's below the engine's.
        assert_eq!(
            OutputLimit::new(mib, Some(4 * mib), None).bytes,
            mib - ENVELOPE_ROOM
        );
        // The worker's setting only ever lowers it.
        let l = OutputLimit::new(mib, None, Some(1000));
        assert_eq!((l.bytes, l.source), (1000, LimitSource::Worker));
        assert_eq!(
            OutputLimit::new(mib, None, Some(8 * mib)).bytes,
            mib - ENVELOPE_ROOM
        );
        // Unknown server (not connected yet): nats-server's default.
        assert_eq!(OutputLimit::new(0, None, None).bytes, mib - ENVELOPE_ROOM);
        // An engine run with a tiny max_payload keeps three quarters of it.
        let l = OutputLimit::new(mib, Some(4096), None);
        assert_eq!(l.bytes, 3072);
        assert!(l.source.to_string().contains("less 1024"), "{}", l.source);
        // Without a server: the defaults, and the worker's setting only lowers it.
        assert_eq!(
            OutputLimit::offline(Some(8 * mib)),
            OutputLimit::offline(None)
        );
        assert_eq!(OutputLimit::offline(Some(10)).bytes, 10);
    }

    #[tokio::test]
    async fn a_huge_error_keeps_its_outcome_and_fits_the_limit() {
        // A handler that repeats an input of the engine's whole max_payload
        // in its error: the result must still fit, and stay fatal.
        let input = "x".repeat(crate::protocol::DEFAULT_MAX_PAYLOAD);
        let w = Worker::builder("inventory")
            .handler("fail", |_ctx: TaskContext, input: String| async move {
                Err::<(), _>(StepError::fatal(format!("bad \"input\": {input}")))
            })
            .handler("busy", |_ctx: TaskContext, input: String| async move {
                Err::<(), _>(StepError::retry_after(
                    format!("busy\n{input}"),
                    Duration::from_secs(1),
                ))
            });
        let limit = super::DEFAULT_MAX_OUTPUT_BYTES;
        let out = w
            .run_one(task(TaskKind::Action, "fail", json!(input)))
            .await;
        let Outcome::Fatal { error } = out else {
            panic!("expected fatal, got {out:?}");
        };
        assert!(super::json_str_size(&error) <= limit, "{}", error.len());
        assert!(error.starts_with("bad \"input\": xxx"), "{}", &error[..40]);
        assert!(
            error.ends_with(&format!(
                "more than the limit of {limit} (the engine's max_payload of 524288 bytes less 16384 for the result envelope)]"
            )),
            "{}",
            &error[error.len() - 200..]
        );
        let out = w
            .run_one(task(TaskKind::Action, "busy", json!(input)))
            .await;
        let Outcome::Retryable {
            error,
            retry_after_ms,
        } = out
        else {
            panic!("expected retryable, got {out:?}");
        };
        assert_eq!(retry_after_ms, Some(1000));
        assert!(super::json_str_size(&error) <= limit);
        assert!(error.contains("error text cut"));

        // The worker's own cap applies too; a short error is left alone.
        let small = super::OutputLimit::offline(Some(100));
        let Outcome::Fatal { error } = small.check(Outcome::Fatal {
            error: "\u{1}".repeat(500),
        }) else {
            panic!("stays fatal");
        };
        assert!(super::json_str_size(&error) <= 100, "{error:?}");
        assert_eq!(
            small.check(Outcome::Fatal {
                error: "short".into()
            }),
            Outcome::Fatal {
                error: "short".into()
            }
        );
    }

    #[test]
    fn step_error_constructors_and_json_errors() {
        assert_eq!(
            StepError::retryable("x"),
            StepError::Retryable {
                message: "x".into(),
                retry_after: None
            }
        );
        assert!(!StepError::fatal("no").is_retryable());
        let json_err = serde_json::from_str::<u32>("\"a\"").unwrap_err();
        let e = StepError::from(json_err);
        assert!(!e.is_retryable());
        assert!(e.message().starts_with("invalid input: "), "{e}");
        assert_eq!(
            StepError::retry_after("later", Duration::from_secs(2)).into_outcome(),
            Outcome::Retryable {
                error: "later".into(),
                retry_after_ms: Some(2000)
            }
        );
    }
}

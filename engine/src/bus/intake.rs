//! Intake: the engine's durable consumers on the results and starts streams.
//!
//! Each message is decoded and checked here (size, JSON shape) and handed to
//! the partition, which acknowledges it only once the state change it causes
//! is durable. Messages that cannot be decoded are acknowledged at once (so
//! they are not redelivered forever), logged and counted.
//!
//! A result over `max_payload` is not read, but its `Nats-Msg-Id` header
//! (`result.<saga>.<step>.<kind>.<attempt>`, which workers set) still says
//! which attempt it answers: that attempt then fails as `fatal`, with an
//! error saying the result was too large ([`oversized_failure`]), as an
//! output too large to carry does in the SDK. Counted as `oversized` either
//! way; without the header the result is dropped.

use crate::crash_points;
use crate::metrics::reject;
use crate::partition::{Command, PartitionHandle, StartCommand, Starts};
use async_nats::jetstream::{self, consumer::PullConsumer};
use jetsaga_protocol::{
    ErrorCode, HEADER_MSG_ID, HEADER_SAGA_ID, Outcome, StartRequest, TaskResult,
    parse_result_msg_id,
};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Which stream a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Worker results.
    Results,
    /// Durable starts.
    Starts,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Results => "result",
            Source::Starts => "start",
        }
    }
}

/// Where a consumer's messages go.
#[derive(Clone)]
pub enum Feed {
    /// Results, to the partition whose consumer it is.
    Results(PartitionHandle),
    /// Durable starts, to the partition their key belongs to: through its
    /// handle when this engine leads it, else through its leader.
    Starts(Arc<dyn Starts>),
}

impl Feed {
    fn source(&self) -> Source {
        match self {
            Feed::Results(_) => Source::Results,
            Feed::Starts(_) => Source::Starts,
        }
    }
}

/// Consumes `consumer` until `shutdown`, feeding the partitions.
pub async fn run(
    feed: Feed,
    consumer: PullConsumer,
    max_payload: usize,
    prefix_tokens: usize,
    shutdown: CancellationToken,
) {
    let source = feed.source();
    // Starts for partitions led elsewhere are forwarded concurrently (up to
    // FORWARDS at once), each acknowledged when its leader answers, so
    // that one slow or leaderless partition does not hold up the others.
    let forwards = TaskTracker::new();
    let room = Arc::new(Semaphore::new(FORWARDS));
    super::consume_each(&consumer, source.label(), &shutdown, |msg| {
        let feed = feed.clone();
        let (forwards, room) = (forwards.clone(), room.clone());
        async move {
            let Some(cmd) = decode(source, msg, max_payload, prefix_tokens).await else {
                return true;
            };
            crash_points::pass(crash_points::INTAKE_BEFORE_SEND);
            match (feed, cmd) {
                (Feed::Results(partition), cmd) => partition.send(cmd).await.is_ok(),
                (
                    Feed::Starts(starts),
                    Command::Start {
                        start,
                        ack: Some(msg),
                        ..
                    },
                ) => match starts.local(start.idempotency_key.as_deref()) {
                    Some(partition) => partition
                        .send(Command::Start {
                            start,
                            reply: None,
                            ack: Some(msg),
                        })
                        .await
                        .is_ok(),
                    None => {
                        let Ok(permit) = room.acquire_owned().await else {
                            return false;
                        };
                        forwards.spawn(async move {
                            forward_start(&*starts, start, msg).await;
                            drop(permit);
                        });
                        true
                    }
                },
                (Feed::Starts(_), _) => true,
            }
        }
    })
    .await;
    forwards.close();
    forwards.wait().await;
}

/// Durable starts forwarded to other engines at once, at most.
const FORWARDS: usize = 64;

/// Starts `start` through the leader of its partition on another engine,
/// then acknowledges `msg`, as the partition does with its own (a refusal
/// too: the leader's door counts it); no leader leaves it to come again.
async fn forward_start(starts: &dyn Starts, start: StartCommand, msg: jetstream::Message) {
    match starts.start(start).await {
        Ok(_) => {
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, "start ack failed; the start comes again and its key finds the saga");
            }
        }
        Err(e)
            if matches!(
                e.error_code(),
                Some(ErrorCode::NoLeader | ErrorCode::Unavailable)
            ) =>
        {
            tracing::warn!(error = %e.message, "durable start not taken by its partition's leader; it comes again");
            let _ = msg
                .ack_with(jetstream::AckKind::Nak(Some(
                    std::time::Duration::from_secs(1),
                )))
                .await;
        }
        // Refused for good (the leader's door counted it): not again.
        Err(e) => {
            tracing::warn!(code = %e.code, error = %e.message, "durable start refused");
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, "could not acknowledge a refused start");
            }
        }
    }
}

/// Why a message is refused: the reason label logged and counted
/// (`oversized`, `malformed`) and a detail for the log line.
pub(crate) type Rejection = (&'static str, String);

/// Decodes one message into a command, or rejects (acks, logs, counts) it.
async fn decode(
    source: Source,
    msg: jetstream::Message,
    max_payload: usize,
    prefix_tokens: usize,
) -> Option<Command> {
    match source {
        Source::Results => match decode_result(
            msg.subject.as_str(),
            &msg.payload,
            max_payload,
            prefix_tokens,
        ) {
            Ok(result) => Some(Command::Result { result, msg }),
            Err((reason, detail)) => {
                let failure = (reason == OVERSIZED)
                    .then(|| {
                        oversized_failure(
                            msg.subject.as_str(),
                            prefix_tokens,
                            header(&msg, HEADER_MSG_ID).as_deref(),
                            header(&msg, HEADER_SAGA_ID).as_deref(),
                            msg.payload.len(),
                            max_payload,
                        )
                    })
                    .flatten();
                match failure {
                    Some(result) => {
                        reject(source.label(), reason, &detail);
                        tracing::warn!(
                            saga_id = %result.saga_id,
                            step = %result.step_id,
                            kind = %result.kind,
                            attempt = result.attempt,
                            "{detail}; failing that attempt as fatal"
                        );
                        Some(Command::Result { result, msg })
                    }
                    None => drop_message(source, msg, reason, &detail).await,
                }
            }
        },
        Source::Starts => {
            let msg_id = header(&msg, HEADER_MSG_ID);
            match decode_start(
                msg.subject.as_str(),
                &msg.payload,
                msg_id.as_deref(),
                max_payload,
                prefix_tokens,
            ) {
                Ok(mut start) => {
                    start.trace_parent = crate::trace::caller_from_headers(msg.headers.as_ref());
                    // Without a key, the message's place in the stream stands
                    // in for one, so a redelivery after a crash cannot start
                    // a second saga.
                    if start.idempotency_key.is_none() {
                        start.idempotency_key = stream_position(&msg);
                    }
                    Some(Command::Start {
                        start,
                        reply: None,
                        ack: Some(msg),
                    })
                }
                Err((reason, detail)) => drop_message(source, msg, reason, &detail).await,
            }
        }
    }
}

/// The value of header `name` of `msg`.
pub(crate) fn header(msg: &jetstream::Message, name: &str) -> Option<String> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

/// `<stream>:<sequence>` of `msg`: what identifies a message that carries no
/// id of its own, the same on every redelivery.
pub(crate) fn stream_position(msg: &jetstream::Message) -> Option<String> {
    msg.info()
        .ok()
        .map(|i| format!("{}:{}", i.stream, i.stream_sequence))
}

/// The reason a payload over `max_payload` is counted under.
pub(crate) const OVERSIZED: &str = "oversized";

/// The service a result subject names: `<prefix>.result.<service>`, or
/// `<prefix>.result.<service>.<partition>` for a saga of a partition other
/// than 0 (each partition's consumer reads its own), or the outcome subject
/// `<prefix>.outcome.<service>.<partition>.<idempotency key>`; the prefix
/// is `prefix_tokens` tokens.
fn result_service(subject: &str, prefix_tokens: usize) -> Option<&str> {
    let tokens: Vec<&str> = subject.splitn(prefix_tokens + 2, '.').collect();
    match tokens.as_slice() {
        [.., "result", rest] if tokens.len() == prefix_tokens + 2 => match rest.split_once('.') {
            None => Some(*rest),
            Some((service, partition)) if partition.parse::<u32>().is_ok() => Some(service),
            Some(_) => None,
        },
        [.., "outcome", rest] if tokens.len() == prefix_tokens + 2 => {
            let mut parts = rest.splitn(3, '.');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(service), Some(partition), Some(key))
                    if partition.parse::<u32>().is_ok() && !key.is_empty() =>
                {
                    Some(service)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The fatal failure of the attempt an oversized result answers, when its
/// `Nats-Msg-Id` (`msg_id`) names one and agrees with its `Jetsaga-Saga-Id`
/// (`saga_header`, when present); the service is the one the subject names
/// ([`result_service`]).
pub(crate) fn oversized_failure(
    subject: &str,
    prefix_tokens: usize,
    msg_id: Option<&str>,
    saga_header: Option<&str>,
    size: usize,
    max_payload: usize,
) -> Option<TaskResult> {
    let (saga_id, step_id, kind, attempt) = parse_result_msg_id(msg_id?)?;
    if saga_header.is_some_and(|s| s != saga_id) {
        return None;
    }
    let service = result_service(subject, prefix_tokens)?.to_string();
    Some(TaskResult {
        saga_id,
        step_id,
        kind,
        attempt,
        service,
        outcome: Outcome::Fatal {
            error: format!(
                "the worker's result was {size} bytes, over the engine's max_payload of {max_payload}, so the engine could not read it and failed the attempt; keep outputs and error texts smaller (store large data elsewhere and return a reference), or raise max_payload"
            ),
        },
        replayed: false,
        worker: String::new(),
    })
}

/// Refuses a payload over `max_payload` bytes.
pub(crate) fn check_size(
    subject: &str,
    payload: &[u8],
    max_payload: usize,
) -> Result<(), Rejection> {
    if payload.len() > max_payload {
        return Err((
            OVERSIZED,
            format!(
                "{} bytes on {subject}, over max_payload {max_payload}",
                payload.len()
            ),
        ));
    }
    Ok(())
}

/// Decodes the payload of a message on the results stream, and accepts it
/// only on its service's own subject: `<prefix>.result.<service>` or
/// `<prefix>.result.<service>.<partition>` (the
/// prefix being `prefix_tokens` tokens) with `<service>` the body's
/// `service`. The subject is what NATS permissions confine a service's
/// workers to; the partition then applies the result only to a step of that
/// service (`wrong_service`), so a worker allowed to publish on its own
/// result subject only can touch no other service's steps.
fn decode_result(
    subject: &str,
    payload: &[u8],
    max_payload: usize,
    prefix_tokens: usize,
) -> Result<TaskResult, Rejection> {
    check_size(subject, payload, max_payload)?;
    let result = serde_json::from_slice::<TaskResult>(payload)
        .map_err(|e| ("malformed", format!("undecodable result on {subject}: {e}")))?;
    if result_service(subject, prefix_tokens) != Some(result.service.as_str()) {
        return Err((
            "subject_mismatch",
            format!(
                "result for service `{}` published on {subject}: a result is accepted \
                 only on its own service's subjects, <prefix>.result.{} and \
                 <prefix>.outcome.{}.<partition>.<key>",
                result.service, result.service, result.service
            ),
        ));
    }
    Ok(result)
}

/// Decodes a message on the starts stream: the saga name comes from the
/// subject (`<prefix>.start.<saga>`, the prefix being `prefix_tokens`
/// tokens), the idempotency key from `msg_id` (the `Nats-Msg-Id` header),
/// else from the body.
fn decode_start(
    subject: &str,
    payload: &[u8],
    msg_id: Option<&str>,
    max_payload: usize,
    prefix_tokens: usize,
) -> Result<StartCommand, Rejection> {
    check_size(subject, payload, max_payload)?;
    let tokens: Vec<&str> = subject.split('.').collect();
    if tokens.len() != prefix_tokens + 2 {
        return Err((
            "malformed",
            format!("start subject {subject} is not <prefix>.start.<saga>"),
        ));
    }
    let saga = tokens[prefix_tokens + 1].to_string();
    let request: StartRequest = serde_json::from_slice(payload).map_err(|e| {
        (
            "malformed",
            format!("undecodable start on {subject}: {e}; expected {{\"input\": {{...}}}}"),
        )
    })?;
    let idempotency_key = msg_id.map(str::to_string).or(request.idempotency_key);
    Ok(StartCommand {
        saga,
        input: request.input,
        idempotency_key,
        trace_parent: None,
    })
}

async fn drop_message(
    source: Source,
    msg: jetstream::Message,
    reason: &str,
    detail: &str,
) -> Option<Command> {
    terminate(msg, source.label(), reason, detail).await;
    None
}

/// Refuses `msg` for good: logs and counts it ([`reject`]) under `source`,
/// and terminates it so that it is not redelivered.
pub(crate) async fn terminate(msg: jetstream::Message, source: &str, reason: &str, detail: &str) {
    reject(source, reason, detail);
    if let Err(e) = msg.ack_with(jetstream::AckKind::Term).await {
        tracing::warn!(error = %e, "could not terminate a rejected message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsaga_protocol::{Outcome, TaskKind};
    use proptest::prelude::*;
    use serde_json::Value;

    /// Pieces of JSON and of the protocol's field names: glued together at
    /// random they give text that is mostly invalid, sometimes valid, and
    /// often nearly valid, which reaches deeper into the decoders than
    /// random bytes do.
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"",
        "\\",
        " ",
        "null",
        "true",
        "false",
        "0",
        "-1",
        "4294967296",
        "18446744073709551616",
        "1e400",
        "0.5",
        "\"saga_id\"",
        "\"step_id\"",
        "\"kind\"",
        "\"action\"",
        "\"compensation\"",
        "\"attempt\"",
        "\"service\"",
        "\"outcome\"",
        "\"status\"",
        "\"ok\"",
        "\"retryable\"",
        "\"fatal\"",
        "\"error\"",
        "\"output\"",
        "\"retry_after_ms\"",
        "\"replayed\"",
        "\"worker\"",
        "\"saga\"",
        "\"input\"",
        "\"idempotency_key\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\u{1F600}",
    ];

    fn json_ish() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..48).prop_map(|p| p.concat())
    }

    /// Arbitrary JSON values (numbers limited to those JSON round-trips
    /// exactly).
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1_000_000i32..1_000_000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn task_result() -> impl Strategy<Value = TaskResult> {
        let outcome = prop_oneof![
            json_value().prop_map(|output| Outcome::Ok { output }),
            (".{0,16}", prop::option::of(any::<u64>())).prop_map(|(error, retry_after_ms)| {
                Outcome::Retryable {
                    error,
                    retry_after_ms,
                }
            }),
            ".{0,16}".prop_map(|error| Outcome::Fatal { error }),
        ];
        (
            (".{0,16}", ".{0,16}", any::<bool>(), any::<u32>()),
            (".{0,16}", outcome, any::<bool>(), ".{0,16}"),
        )
            .prop_map(
                |(
                    (saga_id, step_id, compensation, attempt),
                    (service, outcome, replayed, worker),
                )| {
                    TaskResult {
                        saga_id,
                        step_id,
                        kind: if compensation {
                            TaskKind::Compensation
                        } else {
                            TaskKind::Action
                        },
                        attempt,
                        service,
                        outcome,
                        replayed,
                        worker,
                    }
                },
            )
    }

    /// What both decoders must do with any payload: refuse it as oversized
    /// exactly when it is over the limit, else decode it or refuse it as
    /// malformed; never panic.
    fn check_any_payload(
        subject: &str,
        payload: &[u8],
        msg_id: Option<&str>,
        max_payload: usize,
        prefix_tokens: usize,
    ) -> Result<(), TestCaseError> {
        let result = decode_result(subject, payload, max_payload, prefix_tokens);
        let start = decode_start(subject, payload, msg_id, max_payload, prefix_tokens);
        if payload.len() > max_payload {
            let (reason, detail) = result.expect_err("an oversized result is refused");
            prop_assert_eq!(reason, "oversized");
            prop_assert!(
                detail.starts_with(&format!("{} bytes on ", payload.len())),
                "{}",
                detail
            );
            let (reason, _) = start.expect_err("an oversized start is refused");
            prop_assert_eq!(reason, "oversized");
            return Ok(());
        }
        match &result {
            Err((reason, detail)) if *reason == "malformed" => {
                prop_assert!(detail.starts_with("undecodable result on "), "{}", detail);
            }
            Err((reason, _)) => prop_assert_eq!(*reason, "subject_mismatch"),
            Ok(r) => {
                let tokens: Vec<&str> = subject.splitn(prefix_tokens + 2, '.').collect();
                prop_assert_eq!(tokens.len(), prefix_tokens + 2);
                prop_assert_eq!(tokens[prefix_tokens], "result");
                prop_assert_eq!(tokens[prefix_tokens + 1], r.service.as_str());
            }
        }
        match &start {
            Err((reason, detail)) => {
                prop_assert_eq!(*reason, "malformed");
                let well_shaped = subject.split('.').count() == prefix_tokens + 2;
                if well_shaped {
                    prop_assert!(detail.starts_with("undecodable start on "), "{}", detail);
                } else {
                    prop_assert!(detail.starts_with("start subject "), "{}", detail);
                }
            }
            Ok(cmd) => {
                let tokens: Vec<&str> = subject.split('.').collect();
                prop_assert_eq!(tokens.len(), prefix_tokens + 2);
                prop_assert_eq!(cmd.saga.as_str(), tokens[prefix_tokens + 1]);
                if let Some(id) = msg_id {
                    prop_assert_eq!(cmd.idempotency_key.as_deref(), Some(id));
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(
            payload in prop::collection::vec(any::<u8>(), 0..512),
            max_payload in 0usize..600,
            subject in "[a-z.]{0,24}",
            msg_id in prop::option::of(".{0,8}"),
            prefix_tokens in 0usize..4,
        ) {
            check_any_payload(&subject, &payload, msg_id.as_deref(), max_payload, prefix_tokens)?;
        }

        #[test]
        fn json_ish_text_never_panics(
            text in json_ish(),
            max_payload in prop_oneof![Just(usize::MAX), 0usize..256],
            subject in prop_oneof![Just("jetsaga.start.order".to_string()), ".{0,24}"],
            msg_id in prop::option::of(".{0,8}"),
            prefix_tokens in 0usize..4,
        ) {
            check_any_payload(&subject, text.as_bytes(), msg_id.as_deref(), max_payload, prefix_tokens)?;
        }

        /// A well-formed result on its service's subject decodes to itself
        /// within the limit and is refused as oversized one byte under it;
        /// on any other subject it is refused as `subject_mismatch`.
        #[test]
        fn results_decode_within_the_limit_and_are_oversized_beyond(
            result in task_result(),
            other in "[a-z]{1,8}",
        ) {
            // A service is one subject token: no dots.
            prop_assume!(!result.service.contains('.'));
            let payload = serde_json::to_vec(&result).unwrap();
            let subject = format!("jetsaga.result.{}", result.service);
            let decoded = decode_result(&subject, &payload, payload.len(), 1);
            prop_assert_eq!(decoded, Ok(result.clone()));
            let (reason, _) = decode_result(&subject, &payload, payload.len() - 1, 1)
                .expect_err("one byte over the limit");
            prop_assert_eq!(reason, "oversized");
            if other != result.service {
                let (reason, _) = decode_result(&format!("jetsaga.result.{other}"), &payload, payload.len(), 1)
                    .expect_err("another service's subject");
                prop_assert_eq!(reason, "subject_mismatch");
            }
        }

        /// A well-formed start takes the saga name from the subject and the
        /// idempotency key from the header before the body; one byte over
        /// the limit it is refused as oversized.
        #[test]
        fn starts_decode_within_the_limit_and_are_oversized_beyond(
            prefix in prop::collection::vec("[a-z0-9_-]{1,8}", 1..4),
            saga in "[a-z0-9_-]{1,16}",
            input in json_value(),
            body_key in prop::option::of(".{0,12}"),
            header_key in prop::option::of(".{0,12}"),
        ) {
            let subject = format!("{}.start.{saga}", prefix.join("."));
            let request = StartRequest {
                saga: String::new(),
                input: input.clone(),
                idempotency_key: body_key.clone(),
            };
            let payload = serde_json::to_vec(&request).unwrap();
            let start = decode_start(&subject, &payload, header_key.as_deref(), payload.len(), prefix.len())
                .expect("a well-formed start decodes");
            prop_assert_eq!(start.saga, saga);
            prop_assert_eq!(start.input, input);
            prop_assert_eq!(start.idempotency_key, header_key.clone().or(body_key));
            let (reason, _) = decode_start(&subject, &payload, header_key.as_deref(), payload.len() - 1, prefix.len())
                .expect_err("one byte over the limit");
            prop_assert_eq!(reason, "oversized");
        }
    }

    #[test]
    fn examples() {
        let ok = br#"{"saga_id":"s","step_id":"a","kind":"action","attempt":1,"service":"x","outcome":{"status":"ok"}}"#;
        let result = decode_result("jetsaga.result.x", ok, 4096, 1).unwrap();
        assert_eq!(
            result.outcome,
            Outcome::Ok {
                output: Value::Null
            }
        );
        let (reason, detail) = decode_result("jetsaga.result.x", b"not json", 4096, 1).unwrap_err();
        assert_eq!(reason, "malformed");
        assert!(
            detail.starts_with("undecodable result on jetsaga.result.x: "),
            "{detail}"
        );
        // A result is accepted only on its own service's subject: the
        // service token of the subject is the body's `service`.
        for subject in [
            "jetsaga.result.y",
            "jetsaga.result",
            "jetsaga.result.x.y",
            "jetsaga.result.y.3",
            "jetsaga.result.x.3.4",
            "jetsaga.task.x",
            "a.b.result.x",
            "jetsaga.outcome.y.0.s.a.action",
            "jetsaga.outcome.x.0",
            "jetsaga.outcome.x.p.s.a.action",
            "jetsaga.outcome.x",
        ] {
            let (reason, detail) = decode_result(subject, ok, 4096, 1).unwrap_err();
            assert_eq!(reason, "subject_mismatch", "{subject}");
            assert!(
                detail.contains(&format!("published on {subject}"))
                    && detail.ends_with("<prefix>.outcome.x.<partition>.<key>"),
                "{detail}"
            );
        }
        assert!(decode_result("a.b.result.x", ok, 4096, 2).is_ok());
        // A saga of partition 3 answers on `<prefix>.result.<service>.3`.
        assert!(decode_result("jetsaga.result.x.3", ok, 4096, 1).is_ok());
        // A terminal outcome comes on its key's subject of the outcomes
        // stream, `<prefix>.outcome.<service>.<partition>.<key>`.
        assert!(decode_result("jetsaga.outcome.x.0.s.a.action", ok, 4096, 1).is_ok());
        assert!(decode_result("a.b.outcome.x.7.s.a.action.g2", ok, 4096, 2).is_ok());
        let (reason, detail) =
            decode_start("jetsaga.start.order", b"{\"input\": ", None, 4096, 1).unwrap_err();
        assert_eq!(reason, "malformed");
        assert!(detail.ends_with("expected {\"input\": {...}}"), "{detail}");
        let (reason, detail) =
            decode_start("jetsaga.start.order", &[b' '; 11], None, 10, 1).unwrap_err();
        assert_eq!(
            (reason, detail.as_str()),
            (
                "oversized",
                "11 bytes on jetsaga.start.order, over max_payload 10"
            )
        );
        // An empty body is not a start; `{}` is one with null input.
        assert!(decode_start("jetsaga.start.order", b"", None, 10, 1).is_err());
        let start = decode_start("jetsaga.start.order", b"{}", Some("k"), 10, 1).unwrap();
        assert_eq!(
            (
                start.saga.as_str(),
                start.input,
                start.idempotency_key.as_deref()
            ),
            ("order", Value::Null, Some("k"))
        );
        // A subject without a saga token, or with extra tokens, is refused.
        for subject in ["jetsaga.start", "jetsaga.start.a.b"] {
            let (reason, detail) = decode_start(subject, b"{}", None, 10, 1).unwrap_err();
            assert_eq!(reason, "malformed");
            assert!(detail.contains("is not <prefix>.start.<saga>"), "{detail}");
        }
    }

    #[test]
    fn an_oversized_result_that_names_its_attempt_fails_it_as_fatal() {
        let id = jetsaga_protocol::result_msg_id("s-1", "pay", TaskKind::Action, 2);
        let result = oversized_failure(
            "acme.prod.result.payments",
            2,
            Some(&id),
            Some("s-1"),
            9000,
            4096,
        )
        .expect("the header names the attempt");
        assert_eq!(
            (
                result.saga_id.as_str(),
                result.step_id.as_str(),
                result.kind,
                result.attempt
            ),
            ("s-1", "pay", TaskKind::Action, 2)
        );
        assert_eq!(result.service, "payments");
        assert!(!result.replayed);
        // A saga of partition 3 answers on `<prefix>.result.<service>.3`.
        let in_partition = oversized_failure(
            "acme.prod.result.payments.3",
            2,
            Some(&id),
            None,
            9000,
            4096,
        )
        .expect("the header names the attempt");
        assert_eq!(in_partition.service, "payments");
        let Outcome::Fatal { error } = &result.outcome else {
            panic!("fatal: {result:?}");
        };
        assert!(
            error.starts_with(
                "the worker's result was 9000 bytes, over the engine's max_payload of 4096"
            ),
            "{error}"
        );
        // Without the header the attempt is unknown, and a saga header that
        // disagrees makes the header untrustworthy: dropped as before.
        assert_eq!(
            oversized_failure("jetsaga.result.p", 1, None, Some("s-1"), 9000, 4096),
            None
        );
        assert_eq!(
            oversized_failure("jetsaga.result.p", 1, Some(&id), Some("s-2"), 9000, 4096),
            None
        );
        assert_eq!(
            oversized_failure("jetsaga.result.p", 1, Some("junk"), None, 9000, 4096),
            None
        );
        assert!(oversized_failure("jetsaga.result.p", 1, Some(&id), None, 9000, 4096).is_some());
    }
}

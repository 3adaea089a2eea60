//! Intake: the engine's durable consumers on the results and starts streams.
//!
//! Each message is decoded and checked here (size, JSON shape) and handed to
//! the partition, which acknowledges it only once the state change it causes
//! is durable. Messages that cannot be decoded are acknowledged at once (so
//! they are not redelivered forever), logged and counted.

use crate::partition::{Command, PartitionHandle, StartCommand, reject};
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use jetsaga_worker::protocol::{HEADER_MSG_ID, StartRequest, TaskResult};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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

/// Consumes `consumer` until `shutdown`, feeding the partition.
pub async fn run(
    source: Source,
    consumer: PullConsumer,
    partition: PartitionHandle,
    max_payload: usize,
    prefix_tokens: usize,
    shutdown: CancellationToken,
) {
    loop {
        let messages = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = consumer.stream().max_messages_per_batch(256).messages() => m,
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, source = source.label(), "cannot pull; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = messages.next() => n,
            };
            match next {
                Some(Ok(msg)) => {
                    if let Some(cmd) = decode(source, msg, max_payload, prefix_tokens).await
                        && partition.send(cmd).await.is_err()
                    {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, source = source.label(), "pull stream error");
                }
                None => break,
            }
        }
    }
}

/// Decodes one message into a command, or rejects (acks, logs, counts) it.
async fn decode(
    source: Source,
    msg: jetstream::Message,
    max_payload: usize,
    prefix_tokens: usize,
) -> Option<Command> {
    if msg.payload.len() > max_payload {
        let detail = format!(
            "{} bytes on {}, over max_payload {max_payload}",
            msg.payload.len(),
            msg.subject
        );
        return drop_message(source, msg, "oversized", &detail).await;
    }
    match source {
        Source::Results => match serde_json::from_slice::<TaskResult>(&msg.payload) {
            Ok(result) => Some(Command::Result { result, msg }),
            Err(e) => {
                let detail = format!("undecodable result on {}: {e}", msg.subject);
                drop_message(source, msg, "malformed", &detail).await
            }
        },
        Source::Starts => {
            // Subject: <prefix>.start.<saga>
            let saga_from_subject = msg
                .subject
                .split('.')
                .nth(prefix_tokens + 1)
                .unwrap_or_default()
                .to_string();
            let request: StartRequest = match serde_json::from_slice(&msg.payload) {
                Ok(r) => r,
                Err(e) => {
                    let detail = format!(
                        "undecodable start on {}: {e}; expected {{\"input\": {{...}}}}",
                        msg.subject
                    );
                    return drop_message(source, msg, "malformed", &detail).await;
                }
            };
            let key = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(HEADER_MSG_ID))
                .map(|v| v.as_str().to_string())
                .or(request.idempotency_key);
            Some(Command::Start {
                start: StartCommand {
                    saga: saga_from_subject,
                    input: request.input,
                    idempotency_key: key,
                },
                reply: None,
                ack: Some(msg),
            })
        }
    }
}

async fn drop_message(
    source: Source,
    msg: jetstream::Message,
    reason: &str,
    detail: &str,
) -> Option<Command> {
    reject(source.label(), reason, detail);
    if let Err(e) = msg.ack_with(jetstream::AckKind::Term).await {
        tracing::warn!(error = %e, "could not terminate a rejected message");
    }
    None
}

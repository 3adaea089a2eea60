//! The engine's NATS request API: every client door (CLI, `nats req`, code)
//! turns into the same partition commands and store reads.
//!
//! Requests go to `<prefix>.api.<op>` (see [`Op`]); replies are
//! [`ApiReply`] JSON envelopes. The engine serves them in the queue group
//! `jetsaga-engine`, so several engines could share the load.

use crate::partition::{PartitionHandle, StartCommand, api_error};
use crate::saga::definition::{self, SagaDefinition};
use crate::saga::state::{Millis, Saga};
use crate::store::{SagaFilter, Store};
use async_nats::Message;
use futures::StreamExt;
use jetsaga_worker::protocol::{ApiError, ApiReply, HEADER_START_KEY, StartRequest, Subjects};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Queue group of the API subscription.
pub const QUEUE_GROUP: &str = "jetsaga-engine";

/// The API operations, as they appear in the subject `<prefix>.api.<op>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `saga.start`: [`StartRequest`] → [`jetsaga_worker::protocol::StartReply`].
    SagaStart,
    /// `saga.get`: [`SagaRef`] → [`SagaDetail`].
    SagaGet,
    /// `saga.list`: [`SagaFilter`] → `Vec<`[`SagaSummary`]`>`.
    SagaList,
    /// `saga.cancel`: [`CancelRequest`] → [`SagaDetail`].
    SagaCancel,
    /// `def.apply`: [`ApplyRequest`] → `Vec<`[`AppliedDefinition`]`>`.
    DefApply,
    /// `def.list`: `{}` → `Vec<SagaDefinition>` (current versions).
    DefList,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 6] = [
        Op::SagaStart,
        Op::SagaGet,
        Op::SagaList,
        Op::SagaCancel,
        Op::DefApply,
        Op::DefList,
    ];

    /// The subject suffix of the operation.
    pub fn name(self) -> &'static str {
        match self {
            Op::SagaStart => "saga.start",
            Op::SagaGet => "saga.get",
            Op::SagaList => "saga.list",
            Op::SagaCancel => "saga.cancel",
            Op::DefApply => "def.apply",
            Op::DefList => "def.list",
        }
    }
}

/// Names one saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaRef {
    /// Saga id.
    pub id: String,
}

/// Asks to cancel a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// Saga id.
    pub id: String,
    /// Compensate the completed steps.
    #[serde(default)]
    pub compensate: bool,
    /// Why (recorded in the saga).
    #[serde(default)]
    pub reason: Option<String>,
}

/// A saga with the definition version it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaDetail {
    /// The saga.
    pub saga: Saga,
    /// Its definition.
    pub definition: SagaDefinition,
}

/// One line of a saga listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaSummary {
    /// Saga id.
    pub id: String,
    /// Definition name.
    pub name: String,
    /// State name.
    pub state: String,
    /// Steps succeeded or compensated so far / steps in all.
    pub steps_done: usize,
    /// Steps in all.
    pub steps_total: usize,
    /// Created at.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
    /// Finished at.
    pub finished_at: Option<Millis>,
}

impl From<&Saga> for SagaSummary {
    fn from(s: &Saga) -> Self {
        use crate::saga::state::StepStatus as S;
        Self {
            id: s.id.clone(),
            name: s.name.clone(),
            state: s.status.name().to_string(),
            steps_done: s
                .steps
                .iter()
                .filter(|st| matches!(st.status, S::Succeeded | S::Compensated | S::NotCompensable))
                .count(),
            steps_total: s.steps.len(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            finished_at: s.finished_at,
        }
    }
}

/// Definitions to apply (already parsed by the client; validated again here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The definitions.
    pub definitions: Vec<SagaDefinition>,
}

/// The outcome of applying one definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedDefinition {
    /// Definition name.
    pub name: String,
    /// Current version.
    pub version: u32,
    /// Whether a new version was stored.
    pub changed: bool,
}

/// Serves the API until `shutdown`.
pub async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    store: Arc<dyn Store>,
    partition: PartitionHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut sub = client
        .queue_subscribe(subjects.api_wildcard(), QUEUE_GROUP.into())
        .await?;
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(256));
    let api_prefix = format!("{}.", subjects.api(""));
    let api_prefix = api_prefix.trim_end_matches('.').to_string() + ".";
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let ctx = (
            client.clone(),
            store.clone(),
            partition.clone(),
            api_prefix.clone(),
        );
        tracker.spawn(async move {
            let (client, store, partition, api_prefix) = ctx;
            let Some(reply) = msg.reply.clone() else {
                tracing::debug!(subject = %msg.subject, "API request without a reply subject ignored");
                return;
            };
            let op = msg.subject.strip_prefix(api_prefix.as_str()).unwrap_or_default().to_string();
            let body = handle(&op, &msg, &*store, &partition).await;
            if let Err(e) = client.publish(reply, body.into()).await {
                tracing::warn!(error = %e, "cannot send an API reply");
            }
            drop(permit);
        });
    }
    let _ = sub.unsubscribe().await;
    tracker.close();
    tracker.wait().await;
    Ok(())
}

fn reply<T: Serialize>(r: Result<T, ApiError>) -> Vec<u8> {
    let envelope = match r {
        Ok(v) => ApiReply::Ok(v),
        Err(e) => {
            if e.code != "E-NOT-FOUND" {
                crate::partition::reject("api", &e.code, &e.message);
            }
            ApiReply::Error(e)
        }
    };
    serde_json::to_vec(&envelope).unwrap_or_else(|_| {
        b"{\"error\":{\"code\":\"E-INTERNAL\",\"message\":\"cannot encode reply\"}}".to_vec()
    })
}

fn parse<T: for<'de> Deserialize<'de>>(op: &str, payload: &[u8]) -> Result<T, ApiError> {
    let payload: &[u8] = if payload.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        payload
    };
    serde_json::from_slice(payload)
        .map_err(|e| api_error("E-BAD-REQUEST", format!("malformed {op} request: {e}")))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    api_error("E-INTERNAL", e.to_string())
}

async fn handle(
    op: &str,
    msg: &Message,
    store: &dyn Store,
    partition: &PartitionHandle,
) -> Vec<u8> {
    let payload = &msg.payload[..];
    match op {
        "saga.start" => reply(async {
            let mut req: StartRequest = parse(op, payload)?;
            if let Some(key) = msg.headers.as_ref().and_then(|h| h.get(HEADER_START_KEY)) {
                req.idempotency_key = Some(key.as_str().to_string());
            }
            if req.saga.is_empty() {
                return Err(api_error("E-BAD-REQUEST", "the start request names no saga (field `saga`)"));
            }
            partition
                .start(StartCommand {
                    saga: req.saga,
                    input: req.input,
                    idempotency_key: req.idempotency_key,
                })
                .await
        }.await),
        "saga.get" => reply(async {
            let req: SagaRef = parse(op, payload)?;
            detail(store, &req.id)
        }.await),
        "saga.list" => reply(async {
            let filter: SagaFilter = parse(op, payload)?;
            if let Some(state) = &filter.state
                && !crate::saga::state::SagaStatus::NAMES.contains(&state.as_str())
            {
                return Err(api_error(
                    "E-BAD-REQUEST",
                    format!("unknown state {state:?}; use one of {}", crate::saga::state::SagaStatus::NAMES.join(", ")),
                ));
            }
            let sagas = store.list_sagas(&filter).map_err(internal)?;
            Ok(sagas.iter().map(SagaSummary::from).collect::<Vec<_>>())
        }.await),
        "saga.cancel" => reply(async {
            let req: CancelRequest = parse(op, payload)?;
            let reason = req.reason.unwrap_or_else(|| {
                if req.compensate { "cancelled with compensation".into() } else { "cancelled".into() }
            });
            let saga = partition.cancel(req.id.clone(), req.compensate, reason).await?;
            detail(store, &saga.id)
        }.await),
        "def.apply" => reply(async {
            let req: ApplyRequest = parse(op, payload)?;
            let mut out = Vec::new();
            for def in &req.definitions {
                definition::validate(def)
                    .map_err(|e| api_error("E-INVALID-DEFINITION", format!("{}: {e}", e.code())))?;
            }
            for def in &req.definitions {
                let applied = store.put_definition(def).map_err(internal)?;
                tracing::info!(saga = %applied.name, version = applied.version, changed = applied.changed, "definition applied");
                out.push(AppliedDefinition { name: applied.name, version: applied.version, changed: applied.changed });
            }
            Ok(out)
        }.await),
        "def.list" => reply(store.list_definitions().map_err(internal)),
        other => reply::<()>(Err(api_error(
            "E-UNKNOWN-OPERATION",
            format!("no API operation {other:?}; known: {}", Op::ALL.map(Op::name).join(", ")),
        ))),
    }
}

fn detail(store: &dyn Store, id: &str) -> Result<SagaDetail, ApiError> {
    let saga = store
        .saga(id)
        .map_err(internal)?
        .ok_or_else(|| api_error("E-NOT-FOUND", format!("no saga with id {id}")))?;
    let definition = store
        .definition(&saga.name, saga.definition_version)
        .map_err(internal)?
        .ok_or_else(|| internal(format!("saga {id} has no stored definition")))?;
    Ok(SagaDetail { saga, definition })
}

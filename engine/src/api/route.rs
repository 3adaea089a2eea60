//! Which engine answers: the leader of the partition answers from its own
//! partition and store; every other engine forwards the request to it, on
//! the subject only the leader of the request's partition serves
//! (`<prefix>.lead.<partition>.<op>`),
//! and relays its answer. During a takeover no engine serves that subject
//! for a moment: a forwarded request waits for the new leader (up to the
//! forward timeout) instead of failing.

use crate::partition::{PartitionHandle, api_error};
use crate::triggers::ApplyGuard;
use async_nats::HeaderMap;
use jetsaga_protocol::{ApiError, ApiReply, ErrorCode, Op, Subjects};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Which partitions this engine leads right now, with the handle to each
/// partition it leads.
#[derive(Clone)]
pub struct Role {
    handles: Arc<RwLock<Vec<Option<PartitionHandle>>>>,
    /// The leader's trigger consumer's guard ([`crate::triggers`]); the
    /// leader of partition 0 runs it.
    triggers: Arc<RwLock<Option<ApplyGuard>>>,
    step_down: Arc<Vec<Notify>>,
}

impl Default for Role {
    fn default() -> Self {
        Self::of(1)
    }
}

impl Role {
    /// A role in an installation of `partitions`, leading none yet.
    pub fn of(partitions: u32) -> Self {
        let n = partitions.max(1) as usize;
        Self {
            handles: Arc::new(RwLock::new(vec![None; n])),
            triggers: Arc::default(),
            step_down: Arc::new((0..n).map(|_| Notify::new()).collect()),
        }
    }

    /// A role that always leads its one partition through `handle` (a
    /// single engine without a cluster, or a test).
    pub fn leading(handle: PartitionHandle) -> Self {
        let role = Self::default();
        role.set(0, Some(handle));
        role
    }

    /// The installation's partition count.
    pub fn partitions(&self) -> u32 {
        self.step_down.len() as u32
    }

    /// Leads `partition` through `handle` from now on (`None`: no longer
    /// leads it).
    pub fn set(&self, partition: u32, handle: Option<PartitionHandle>) {
        if let Some(slot) = self
            .handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(partition as usize)
        {
            *slot = handle;
        }
    }

    /// The handle of `partition` while this engine leads it.
    pub fn handle(&self, partition: u32) -> Option<PartitionHandle> {
        self.handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(partition as usize)
            .cloned()
            .flatten()
    }

    /// The partitions this engine leads now.
    pub fn led(&self) -> Vec<u32> {
        self.handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .enumerate()
            .filter(|(_, h)| h.is_some())
            .map(|(p, _)| p as u32)
            .collect()
    }

    /// Sets the guard of the trigger consumer the leader runs.
    pub fn set_triggers(&self, guard: Option<ApplyGuard>) {
        *self.triggers.write().unwrap_or_else(|e| e.into_inner()) = guard;
    }

    /// The guard of the trigger consumer, while this engine leads.
    pub fn triggers(&self) -> Option<ApplyGuard> {
        self.triggers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks the engine to hand `partition` over (`cluster.step-down`).
    pub fn request_step_down(&self, partition: u32) {
        // Only a term waiting now hears it: none is kept for the next one.
        if let Some(n) = self.step_down.get(partition as usize) {
            n.notify_waiters();
        }
    }

    /// Completes when a step-down of `partition` was asked for.
    pub async fn step_down_requested(&self, partition: u32) {
        match self.step_down.get(partition as usize) {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    }
}

/// Sends requests to the leader of a partition.
#[derive(Clone)]
pub struct Forwarder {
    client: async_nats::Client,
    subjects: Subjects,
    /// The partition whose leader it sends to.
    partition: u32,
    /// How long a request waits for a leader in all.
    wait: Duration,
}

impl Forwarder {
    /// Forwards over `client` to the leader of `subjects`' installation,
    /// waiting up to `wait` for one.
    pub fn new(client: async_nats::Client, subjects: Subjects, wait: Duration) -> Self {
        Self {
            client,
            subjects,
            partition: 0,
            wait,
        }
    }

    /// The same forwarder, to the leader of `partition`.
    pub fn to(&self, partition: u32) -> Self {
        Self {
            partition,
            ..self.clone()
        }
    }

    /// Sends `op` with `request` to the leader and answers its reply.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: Op,
        request: &Req,
        headers: Option<HeaderMap>,
    ) -> Result<Resp, ApiError> {
        let payload: bytes::Bytes = serde_json::to_vec(request)
            .map_err(|e| api_error(ErrorCode::Internal, format!("cannot encode {op}: {e}")))?
            .into();
        let subject = self.subjects.leader_api(self.partition, op);
        let deadline = Instant::now() + self.wait;
        let mut pause = Duration::from_millis(20);
        loop {
            let mut request = async_nats::Request::new()
                .payload(payload.clone())
                .timeout(Some(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(100)),
                ));
            if let Some(h) = &headers {
                request = request.headers(h.clone());
            }
            let no_leader = match self.client.send_request(subject.clone(), request).await {
                Ok(msg) => match serde_json::from_slice::<ApiReply<Resp>>(&msg.payload) {
                    Ok(ApiReply::Ok(v)) => return Ok(v),
                    Ok(ApiReply::Error(e)) if e.error_code() == Some(ErrorCode::NoLeader) => {
                        e.message
                    }
                    Ok(ApiReply::Error(e)) => return Err(e),
                    Err(e) => {
                        return Err(api_error(
                            ErrorCode::Internal,
                            format!("the leader's answer to {op} does not decode: {e}"),
                        ));
                    }
                },
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    format!("no engine leads partition {} right now", self.partition)
                }
                Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                    return Err(api_error(
                        ErrorCode::Unavailable,
                        format!(
                            "the leader did not answer {op} in time, so its outcome is unknown; retry a start only with its idempotency key (the same key is the same saga)"
                        ),
                    ));
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() + pause >= deadline {
                return Err(api_error(
                    ErrorCode::NoLeader,
                    format!(
                        "{no_leader}; waited {:?} for a leader to take {op}; retry",
                        self.wait
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}

/// The refusal of a request that reached an engine which does not lead
/// `partition`.
pub fn not_leader(partition: u32) -> ApiError {
    api_error(
        ErrorCode::NoLeader,
        format!("this engine does not lead partition {partition} (the lease moved); retry"),
    )
}

//! The engine's request API: one transport-agnostic service, [`Api`], and the
//! adapters that turn requests into calls of it.
//!
//! - [`serve`]: NATS request/reply. Requests go to `<prefix>.api.<op>` (see
//!   [`Op`]); replies are [`ApiReply`] JSON envelopes. The engine serves them
//!   in the queue group `jetsaga-engine`, so several engines could share the
//!   load.
//! - [`http`]: JSON over HTTP under `/v1`, documented at `/openapi.json`;
//!   [`auth`] says which bearer tokens may call which of its routes.
//!
//! Requests and replies are the messages of [`jetsaga_protocol::api`];
//! [`view`] turns the engine's records into them.
//!
//! Both adapters only decode requests, call [`Api`] and encode what it
//! returns, so a saga started over HTTP and one started over NATS with the
//! same idempotency key are the same saga, and every error carries the same
//! code through either door.

use crate::partition::{PartitionHandle, StartCommand, api_error};
use async_nats::Message;
use futures::StreamExt;
use jetsaga_core::saga::definition::ServicePolicy;
use jetsaga_core::saga::definition::{
    self, DefinitionError, DefinitionFile, DefinitionLimits, Format, SagaDefinition,
};
use jetsaga_core::saga::state::{Millis, Saga, SagaStatus};
use jetsaga_protocol::api::{
    AppliedDefinition, BreakerReset, CancelRequest, ClusterStatus, DefListRequest,
    DefinitionListing, ForcedState, GetRequest, ListRequest, MAX_LIST_LIMIT, RetryRequest,
    SagaDetail, SagaPage, SagaRef, SagaStats, ServiceOverview, ServiceRef, ServiceStatus,
    StatsRequest, StepDownReply, StepDownRequest,
};
use jetsaga_protocol::{
    ApiError, ApiReply, ErrorCode, HEADER_START_KEY, StartReply, StartRequest, Subjects,
};
use jetsaga_store::{DEFAULT_LIST_LIMIT, SagaFilter, Store};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod auth;
#[cfg(test)]
mod golden;
pub mod http;
pub mod https;
pub mod route;
pub mod session;
mod stats;
pub mod view;

/// Where a request goes ([`Api::route`]).
enum Route {
    /// This engine leads: its partition.
    Local(PartitionHandle),
    /// Another engine leads: forward.
    Forward(Box<route::Forwarder>),
    /// Another engine leads, and this request was forwarded already.
    Refuse,
}

/// The handle of partition `$p` when this engine leads it, or returns the
/// answer of its leader (or the refusal) from the enclosing method.
macro_rules! routed {
    ($self:ident, $p:expr, $op:expr, $req:expr) => {
        routed!($self, $p, $op, $req, None)
    };
    ($self:ident, $p:expr, $op:expr, $req:expr, $headers:expr) => {
        match $self.route($p) {
            Route::Local(handle) => handle,
            Route::Forward(f) => return f.call($op, $req, $headers).await,
            Route::Refuse => return Err(route::not_leader($p)),
        }
    };
}

/// Queue group of the API subscription.
pub const QUEUE_GROUP: &str = "jetsaga-engine";

/// The API operations, as they appear in the subject `<prefix>.api.<op>`.
/// [`serve`] decodes their requests and answers them as:
///
/// - `saga.start`: [`StartRequest`] → [`jetsaga_protocol::StartReply`];
///   `saga.get`: [`GetRequest`] → [`SagaDetail`]; `saga.list`: [`ListRequest`]
///   → `Vec<`[`SagaSummary`]`>`; `saga.cancel`: [`CancelRequest`] →
///   [`SagaDetail`]; `saga.retry`: [`RetryRequest`] → [`SagaDetail`];
///   `saga.delete`: [`SagaRef`] → [`SagaRef`] (the deleted saga);
///   `saga.stats`: [`StatsRequest`] → [`SagaStats`].
/// - `def.apply`: [`ApplyRequest`] → `Vec<`[`AppliedDefinition`]`>`;
///   `def.list`: [`DefListRequest`] → `Vec<`[`DefinitionListing`]`>` (a
///   page of the current versions, by name).
/// - `breaker.list`: `{}` → `Vec<`[`ServiceStatus`]`>`; `breaker.get` and
///   `breaker.reset`: [`BreakerReset`] → [`ServiceStatus`].
pub use jetsaga_protocol::Op;

/// Definitions to apply (already parsed by the client; validated again here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The definitions.
    pub definitions: Vec<SagaDefinition>,
    /// The file's service policies (`services:`; [`jetsaga_core::admission`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServicePolicy>,
}

/// How far a saga's `created_at` may lie before the time in its id (a
/// UUIDv7 made right after `created_at` was read). Bounds the id range a
/// `created_before` listing scans; generous, so that no saga is missed.
const ID_CLOCK_SLACK_MS: Millis = 60_000;

/// Sagas read from the store per round while a time range is filtered.
const SCAN_PAGE: usize = 256;

/// Requests one NATS API subscription ([`serve`]) handles at once; the
/// next waits in the subscription until one is answered.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 256;

/// How long [`Api::services`] waits for one work queue's depth.
pub const QUEUE_DEPTH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Sagas read from the store per round by [`Api::stats`].
const STATS_PAGE: usize = 1024;

/// The API's business logic, shared by every transport: each method is one
/// operation, returning the value to send or an [`ApiError`] with its stable
/// code. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    /// Each partition's store (this engine's copy), by partition number.
    stores: Arc<[Arc<dyn Store>]>,
    /// The partition every request goes to, for the API serving requests
    /// forwarded to the leader of one partition.
    pin: Option<u32>,
    /// Where starts without a key go next when no partition is led here.
    next: Arc<std::sync::atomic::AtomicU32>,
    /// The handles of the partitions this engine leads.
    role: route::Role,
    /// Where requests go while it does not (`None`: they are refused).
    forward: Option<route::Forwarder>,
    /// The cluster, for `cluster.status`.
    cluster: Option<crate::cluster::Cluster>,
    /// The engine's environment, shown with each definition's policy.
    environment: Option<String>,
    /// The size limits applied definitions must keep to.
    definition_limits: DefinitionLimits,
    /// JetStream and the installation's subjects, for the services' queue
    /// depths.
    queues: Option<(async_nats::jetstream::Context, Subjects)>,
}

impl Api {
    /// The API over `store` (reads) and `partition` (state changes).
    pub fn new(store: Arc<dyn Store>, partition: PartitionHandle) -> Self {
        Self::routed(vec![store], route::Role::leading(partition), None)
    }

    /// The API of an engine in a cluster: it answers from its partition
    /// while `role` leads, and forwards every request with `forward` (or
    /// refuses it, `None`) while it does not.
    /// `stores` holds each partition's store, by number, as many as `role`
    /// has partitions.
    pub fn routed(
        stores: Vec<Arc<dyn Store>>,
        role: route::Role,
        forward: Option<route::Forwarder>,
    ) -> Self {
        Self {
            stores: stores.into(),
            pin: None,
            next: Arc::default(),
            role,
            forward,
            cluster: None,
            environment: None,
            definition_limits: DefinitionLimits::default(),
            queues: None,
        }
    }

    /// Reads the services' queue depths ([`Api::services`]) from the work
    /// queues of `subjects`' installation over `client`.
    pub fn with_queues(mut self, client: async_nats::Client, subjects: Subjects) -> Self {
        self.queues = Some((async_nats::jetstream::new(client), subjects));
        self
    }

    /// Answers `cluster.status` from `cluster`.
    pub fn with_cluster(mut self, cluster: crate::cluster::Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The same API for partition `partition` alone, refusing
    /// (`E-NO-LEADER`) instead of forwarding while it does not lead it:
    /// what serves the requests forwarded to that partition's leader.
    pub fn leader_of(&self, partition: u32) -> Self {
        Self {
            forward: None,
            pin: Some(partition),
            ..self.clone()
        }
    }

    /// The same API for partition `partition` alone, forwarding to its
    /// leader.
    fn only(&self, partition: u32) -> Self {
        Self {
            pin: Some(partition),
            ..self.clone()
        }
    }

    /// The installation's partition count.
    fn partitions(&self) -> u32 {
        self.role.partitions()
    }

    /// Whether a request spans every partition (not pinned to one, more
    /// than one).
    fn spans(&self) -> bool {
        self.pin.is_none() && self.partitions() > 1
    }

    /// The partition of saga `id`.
    fn of_saga(&self, id: &str) -> u32 {
        self.pin
            .unwrap_or_else(|| jetsaga_protocol::partition::of_saga(id, self.partitions()))
    }

    /// The partition of idempotency key `key`.
    fn of_key(&self, key: &str) -> u32 {
        self.pin
            .unwrap_or_else(|| jetsaga_protocol::partition::of_key(key, self.partitions()))
    }

    /// The partition of a start without a key: one this engine leads
    /// (no hop to another engine), in turn, else any, in turn.
    fn pick(&self) -> u32 {
        if let Some(p) = self.pin {
            return p;
        }
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let led = self.role.led();
        if led.is_empty() {
            turn % self.partitions()
        } else {
            led[turn as usize % led.len()]
        }
    }

    /// The partition a request about no saga in particular reads.
    fn home(&self) -> u32 {
        self.pin.unwrap_or(0)
    }

    /// This engine's store of `partition`.
    fn store(&self, partition: u32) -> &Arc<dyn Store> {
        &self.stores[(partition as usize).min(self.stores.len() - 1)]
    }

    /// Where a request for `partition` goes now.
    fn route(&self, partition: u32) -> Route {
        match self.role.handle(partition) {
            Some(handle) => Route::Local(handle),
            None => match &self.forward {
                Some(f) => Route::Forward(Box::new(f.to(partition))),
                None => Route::Refuse,
            },
        }
    }

    /// Sets the size limits applied definitions must keep to (the engine's
    /// `max_definition_*`); the defaults otherwise.
    pub fn with_definition_limits(mut self, limits: DefinitionLimits) -> Self {
        self.definition_limits = limits;
        self
    }

    /// The size limits applied definitions must keep to.
    pub fn definition_limits(&self) -> DefinitionLimits {
        self.definition_limits
    }

    /// Sets the engine's environment, against which `def.list` evaluates
    /// each definition's policy.
    pub fn with_environment(mut self, environment: Option<String>) -> Self {
        self.environment = environment;
        self
    }

    /// Checks the trigger subjects of applied definitions against the
    /// streams with `guard`, and waits after an apply until they are captured.
    pub fn with_triggers(self, guard: crate::triggers::ApplyGuard) -> Self {
        self.role.set_triggers(Some(guard));
        self
    }

    /// Starts a saga, or answers the saga its idempotency key already
    /// started (`created: false`); returns once the start is durable.
    pub async fn start(&self, req: StartRequest) -> Result<StartReply, ApiError> {
        self.start_traced(req, None).await
    }

    /// [`start`](Self::start) for a caller in a trace: `trace_parent` is the
    /// W3C `traceparent` of the request (a malformed one is ignored), and
    /// becomes the parent of the saga's span.
    pub async fn start_traced(
        &self,
        req: StartRequest,
        trace_parent: Option<&str>,
    ) -> Result<StartReply, ApiError> {
        if req.saga.is_empty() {
            return Err(api_error(
                ErrorCode::BadRequest,
                "the start request names no saga (field `saga`)",
            ));
        }
        let headers = trace_parent.map(|tp| {
            let mut h = async_nats::HeaderMap::new();
            h.insert(crate::trace::HEADER_TRACEPARENT, tp);
            h
        });
        let p = match &req.idempotency_key {
            Some(key) => self.of_key(key),
            None => self.pick(),
        };
        let partition = routed!(self, p, Op::SagaStart, &req, headers);
        partition
            .start(StartCommand {
                saga: req.saga,
                input: req.input,
                idempotency_key: req.idempotency_key,
                trace_parent: crate::trace::caller(trace_parent),
            })
            .await
    }

    /// One saga with its steps, attempt history and definition.
    pub async fn get(&self, id: &str) -> Result<SagaDetail, ApiError> {
        routed!(
            self,
            self.of_saga(id),
            Op::SagaGet,
            &GetRequest {
                id: Some(id.to_string()),
                idempotency_key: None,
            }
        );
        self.get_local(id).await
    }

    /// [`Api::get`] from this engine's store.
    async fn get_local(&self, id: &str) -> Result<SagaDetail, ApiError> {
        let store = self.store(self.of_saga(id));
        let saga = store
            .saga(id)
            .map_err(internal)?
            .ok_or_else(|| api_error(ErrorCode::NotFound, format!("no saga with id {id}")))?;
        let definition = store
            .definition(&saga.name, saga.definition_version)
            .map_err(internal)?
            .ok_or_else(|| internal(format!("saga {id} has no stored definition")))?;
        let queue_position = if saga.status == SagaStatus::Pending {
            store.queue_position(id).map_err(internal)?
        } else {
            None
        };
        Ok(view::saga_detail(saga, &definition, queue_position))
    }

    /// The saga started with idempotency key `key` ([`Api::get`]), or
    /// `E-NOT-FOUND`. Only reads: a start with that key not yet consumed
    /// stays unconsumed.
    pub async fn get_by_key(&self, key: &str) -> Result<SagaDetail, ApiError> {
        let p = self.of_key(key);
        routed!(
            self,
            p,
            Op::SagaGet,
            &GetRequest {
                id: None,
                idempotency_key: Some(key.to_string()),
            }
        );
        let id = self
            .store(p)
            .saga_by_idempotency_key(key)
            .map_err(internal)?
            .ok_or_else(|| {
                api_error(
                    ErrorCode::NotFound,
                    format!("no saga with idempotency key {key:?}"),
                )
            })?;
        self.get_local(&id).await
    }

    /// `saga.get`: by `id` or by `idempotency_key`, exactly one of them.
    pub async fn get_saga(&self, req: &GetRequest) -> Result<SagaDetail, ApiError> {
        match (&req.id, &req.idempotency_key) {
            (Some(id), None) => self.get(id).await,
            (None, Some(key)) => self.get_by_key(key).await,
            _ => Err(api_error(
                ErrorCode::BadRequest,
                "saga.get names a saga by exactly one of `id` and `idempotency_key`",
            )),
        }
    }

    /// Counts per state, success and compensation rates and durations of
    /// the stored sagas, per definition and overall ([`SagaStats`]).
    ///
    /// One scan of the sagas (of the `saga` definition's name index when
    /// given), newest first, on a blocking thread: `since` stops it at the
    /// first saga id (a UUIDv7) older than `now - since`, so its cost
    /// follows the sagas in the window, not the store.
    ///
    /// With more than one partition, each partition's sagas are read from
    /// this engine's copy of it: current for the partitions it leads,
    /// behind by the standby lag for the others.
    pub async fn stats(&self, req: &StatsRequest) -> Result<SagaStats, ApiError> {
        let stores: Vec<Arc<dyn Store>> = if self.spans() {
            self.stores.to_vec()
        } else {
            routed!(self, self.home(), Op::SagaStats, req);
            vec![self.store(self.home()).clone()]
        };
        let created_after = req
            .since
            .map(|since| crate::partition::now_ms().saturating_sub(since));
        let name = req.saga.clone();
        tokio::task::spawn_blocking(move || {
            // Counted page by page, headers only: what stays of a saga
            // read is its state and duration, whatever the store holds.
            let mut summary = stats::Summary::default();
            'stores: for store in stores {
                let mut cursor = None;
                loop {
                    let page = store
                        .list_saga_headers(&SagaFilter {
                            state: None,
                            name: name.clone(),
                            before: cursor.take(),
                            limit: STATS_PAGE,
                        })
                        .map_err(internal)?;
                    let exhausted = page.len() < STATS_PAGE;
                    cursor = page.last().map(|s| s.id.clone());
                    for saga in page {
                        if let (Some(after), Some(id_ms)) =
                            (created_after, uuid_v7_millis(&saga.id))
                            && id_ms < after
                        {
                            continue 'stores;
                        }
                        if created_after.is_none_or(|a| saga.created_at >= a) {
                            summary.add(&saga);
                        }
                    }
                    if exhausted {
                        continue 'stores;
                    }
                }
            }
            Ok(summary.finish(created_after))
        })
        .await
        .map_err(internal)?
    }

    /// A page of sagas, newest first, with the cursor of the next page.
    ///
    /// The store indexes sagas by id, state and name, not by time. A time
    /// range is applied to the sagas read, page by page, using that ids are
    /// UUIDv7s made when the saga is created: `created_before` bounds the
    /// ids scanned from above (with a minute to spare for clock skew) and the
    /// scan stops at the first id older than `created_after`.
    ///
    /// With more than one partition, each partition's leader answers its
    /// page and the pages are merged by id.
    pub async fn list(&self, req: &ListRequest) -> Result<SagaPage, ApiError> {
        if self.spans() {
            return self.list_merged(req).await;
        }
        let p = self.home();
        // Forwarded as a page (cursor included): see `handle`.
        routed!(self, p, Op::SagaList, req);
        if let Some(cursor) = &req.before {
            check_cursor(cursor)?;
        }
        if let (Some(after), Some(before)) = (req.created_after, req.created_before)
            && after >= before
        {
            return Err(api_error(
                ErrorCode::BadRequest,
                format!(
                    "empty time range: created_after ({after}) must be earlier than created_before ({before})"
                ),
            ));
        }
        let limit = match req.limit {
            0 => DEFAULT_LIST_LIMIT,
            n if n <= MAX_LIST_LIMIT => n,
            n => return Err(limit_refused(n)),
        };
        // One more than asked tells whether there is a next page.
        let want = limit.saturating_add(1);
        let mut sagas = if req.created_after.is_none() && req.created_before.is_none() {
            self.store(p)
                .list_sagas(&SagaFilter {
                    state: req.state.map(|s| s.name().to_string()),
                    name: req.name.clone(),
                    before: req.before.clone(),
                    limit: want,
                })
                .map_err(internal)?
        } else {
            self.list_in_time_range(p, req, want)?
        };
        let next = if sagas.len() > limit {
            sagas.truncate(limit);
            sagas.last().map(|s| s.id.clone())
        } else {
            None
        };
        Ok(SagaPage {
            sagas: sagas.iter().map(view::saga_summary).collect(),
            next,
        })
    }

    /// A page of every partition's sagas: each partition's page, merged.
    async fn list_merged(&self, req: &ListRequest) -> Result<SagaPage, ApiError> {
        let limit = match req.limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n,
        };
        let pages = futures::future::try_join_all(
            (0..self.partitions()).map(|p| async move { self.only(p).list(req).await }),
        )
        .await?;
        let more = pages.iter().any(|page| page.next.is_some());
        let mut sagas: Vec<_> = pages.into_iter().flat_map(|page| page.sagas).collect();
        sagas.sort_by(|a, b| b.id.cmp(&a.id));
        let next = if sagas.len() > limit || more {
            sagas.truncate(limit);
            sagas.last().map(|s| s.id.clone())
        } else {
            None
        };
        Ok(SagaPage { sagas, next })
    }

    fn list_in_time_range(
        &self,
        p: u32,
        req: &ListRequest,
        want: usize,
    ) -> Result<Vec<Saga>, ApiError> {
        let in_range = |s: &Saga| {
            req.created_after.is_none_or(|a| s.created_at >= a)
                && req.created_before.is_none_or(|b| s.created_at < b)
        };
        let mut cursor = req.before.clone();
        if let Some(b) = req.created_before {
            let bound = uuid_v7_floor(b.saturating_add(ID_CLOCK_SLACK_MS));
            cursor = Some(match cursor {
                Some(c) if c < bound => c,
                _ => bound,
            });
        }
        let mut out = Vec::new();
        loop {
            let page = self
                .store(p)
                .list_sagas(&SagaFilter {
                    state: req.state.map(|s| s.name().to_string()),
                    name: req.name.clone(),
                    before: cursor.clone(),
                    limit: SCAN_PAGE,
                })
                .map_err(internal)?;
            let exhausted = page.len() < SCAN_PAGE;
            for saga in page {
                cursor = Some(saga.id.clone());
                // `created_at` is read before the id is made: an id older
                // than `created_after` is a saga created before it, and so
                // is every id after it in this newest-first scan.
                if let (Some(after), Some(id_ms)) = (req.created_after, uuid_v7_millis(&saga.id))
                    && id_ms < after
                {
                    return Ok(out);
                }
                if in_range(&saga) {
                    out.push(saga);
                    if out.len() >= want {
                        return Ok(out);
                    }
                }
            }
            if exhausted {
                return Ok(out);
            }
        }
    }

    /// Cancels a saga (with or without compensating what completed) and
    /// returns it as it is once the cancel is durable.
    pub async fn cancel(&self, req: CancelRequest) -> Result<SagaDetail, ApiError> {
        let partition = routed!(self, self.of_saga(&req.id), Op::SagaCancel, &req);
        let reason = req.reason.unwrap_or_else(|| {
            if req.compensate {
                "cancelled with compensation".into()
            } else {
                "cancelled".into()
            }
        });
        let saga = partition
            .cancel(req.id.clone(), req.compensate, reason)
            .await?;
        self.get_local(&saga.id).await
    }

    /// Retries a finished saga whose cause was fixed, and returns it as it
    /// is once the retry is durable: a `partially_compensated` saga resumes
    /// its rollback, a `failed` or `compensated` one runs forward again
    /// (with `compensation_only`, only the former is accepted). Any other
    /// state answers `E-NOT-APPLICABLE`.
    pub async fn retry(&self, req: RetryRequest) -> Result<SagaDetail, ApiError> {
        let partition = routed!(self, self.of_saga(&req.id), Op::SagaRetry, &req);
        let saga = partition
            .retry(req.id.clone(), req.compensation_only)
            .await?;
        self.get_local(&saga.id).await
    }

    /// Deletes a terminal saga once the deletion is durable: its record,
    /// its timers and the binding of its idempotency key (the key may then
    /// start a new saga). A saga that is not terminal answers
    /// `E-NOT-APPLICABLE`; an unknown id `E-NOT-FOUND`.
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        let p = self.of_saga(id);
        let partition = match self.route(p) {
            Route::Local(handle) => handle,
            Route::Forward(f) => {
                let _: SagaRef = f
                    .call(Op::SagaDelete, &SagaRef { id: id.to_string() }, None)
                    .await?;
                return Ok(());
            }
            Route::Refuse => return Err(route::not_leader(p)),
        };
        partition.delete(id.to_string()).await
    }

    /// Validates every definition, then stores each as a new version of its
    /// name (unless identical to the current one). Nothing is stored when
    /// any definition is invalid.
    pub async fn apply_definitions(
        &self,
        definitions: &[SagaDefinition],
    ) -> Result<Vec<AppliedDefinition>, ApiError> {
        self.apply(definitions, &[]).await
    }

    /// The current version of every definition, by name, each with whether
    /// its policy lets it start in this engine's environment.
    pub async fn definitions(&self) -> Result<Vec<DefinitionListing>, ApiError> {
        if let Route::Local(_) = self.route(self.home()) {
            return Ok(self.listings(
                self.store(self.home())
                    .list_definitions()
                    .map_err(internal)?,
            ));
        }
        // Page through the leader's.
        let mut out: Vec<DefinitionListing> = Vec::new();
        loop {
            let page = self
                .definition_page(&DefListRequest {
                    after: out.last().map(|d| d.definition.name.clone()),
                    limit: MAX_LIST_LIMIT,
                })
                .await?;
            let full = page.len() == MAX_LIST_LIMIT;
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }

    /// A page of the current definitions ([`Op::DefList`]): by name, after
    /// `req.after`, at most `req.limit` (0: [`MAX_LIST_LIMIT`]).
    pub async fn definition_page(
        &self,
        req: &DefListRequest,
    ) -> Result<Vec<DefinitionListing>, ApiError> {
        routed!(self, self.home(), Op::DefList, req);
        let limit = match req.limit {
            0 => MAX_LIST_LIMIT,
            n if n <= MAX_LIST_LIMIT => n,
            n => return Err(limit_refused(n)),
        };
        let mut definitions = self
            .store(self.home())
            .list_definitions()
            .map_err(internal)?;
        definitions.sort_by(|a, b| a.name.cmp(&b.name));
        let page = definitions
            .into_iter()
            .filter(|d| req.after.as_ref().is_none_or(|after| d.name > *after))
            .take(limit)
            .collect();
        Ok(self.listings(page))
    }

    fn listings(&self, definitions: Vec<SagaDefinition>) -> Vec<DefinitionListing> {
        let environment = self.environment.as_deref();
        definitions
            .into_iter()
            .map(|definition| {
                let refusal = definition.policy.refusal(&definition.name, environment);
                DefinitionListing {
                    enabled: refusal.is_none(),
                    refusal,
                    environment: self.environment.clone(),
                    definition: view::definition_view(&definition),
                }
            })
            .collect()
    }

    /// Applies a definitions file's contents: validates the sagas and the
    /// service policies, then stores the sagas (each as a new version of
    /// its name, unless identical to the current one) and the policies
    /// (replacing the service's: latest applied wins) and puts the
    /// policies to use, once that is durable. Nothing is stored when any
    /// of them is invalid.
    pub async fn apply(
        &self,
        definitions: &[SagaDefinition],
        services: &[ServicePolicy],
    ) -> Result<Vec<AppliedDefinition>, ApiError> {
        definition::validate_services(services).map_err(invalid_services)?;
        for def in definitions {
            definition::validate_within(definition::REQUEST_SOURCE, def, &self.definition_limits)
                .map_err(|e| {
                    api_error(ErrorCode::InvalidDefinition, format!("{}: {e}", e.code()))
                })?;
        }
        if self.spans() {
            return self.apply_everywhere(definitions, services).await;
        }
        let partition = routed!(
            self,
            self.home(),
            Op::DefApply,
            &ApplyRequest {
                definitions: definitions.to_vec(),
                services: services.to_vec(),
            }
        );
        // The trigger consumers are set up again only when a definition's
        // triggers change, not on every apply.
        let mut triggers_changed = false;
        let triggers = self.role.triggers();
        if let Some(guard) = &triggers {
            let current = self
                .store(self.home())
                .list_definitions()
                .map_err(internal)?;
            guard.check(definitions, &current).await?;
            triggers_changed = definitions.iter().any(|def| {
                let before = current
                    .iter()
                    .find(|c| c.name == def.name)
                    .map_or(&[][..], |c| c.triggers.as_slice());
                before != def.triggers.as_slice()
            });
        }
        // Stored by the partition, so that the journal has them.
        let applied = partition
            .definitions(definitions.to_vec(), services.to_vec())
            .await?;
        for policy in services {
            tracing::info!(service = %policy.service, max_in_flight = ?policy.max_in_flight, circuit_breaker = ?policy.circuit_breaker, "service policy applied");
        }
        let out = applied
            .into_iter()
            .map(|applied| {
                tracing::info!(saga = %applied.name, version = applied.version, changed = applied.changed, "definition applied");
                AppliedDefinition {
                    name: applied.name,
                    version: applied.version,
                    changed: applied.changed,
                }
            })
            .collect();
        if let Some(guard) = &triggers
            && triggers_changed
        {
            guard.applied().await;
        }
        Ok(out)
    }

    /// [`Api::apply`] in every partition, one after the other from
    /// partition 0, each through its leader; answers partition 0's. A
    /// partition that fails stops it: applying the same file again applies
    /// it to the partitions that lack it (the others find it unchanged).
    async fn apply_everywhere(
        &self,
        definitions: &[SagaDefinition],
        services: &[ServicePolicy],
    ) -> Result<Vec<AppliedDefinition>, ApiError> {
        let mut first: Option<Vec<AppliedDefinition>> = None;
        for p in 0..self.partitions() {
            match Box::pin(self.only(p).apply(definitions, services)).await {
                Ok(applied) => match &first {
                    None => first = Some(applied),
                    // Each partition numbers its versions: after an apply
                    // that failed part-way and another file since, they can
                    // disagree. Said, not hidden.
                    Some(zero) => {
                        for (a, b) in zero.iter().zip(&applied) {
                            if a.version != b.version {
                                tracing::warn!(saga = %a.name, partition_0 = a.version, partition = p, version = b.version, "the partitions number this definition's versions differently (an earlier apply failed part-way); each saga keeps the version of its own partition");
                            }
                        }
                    }
                },
                Err(mut e) if p > 0 => {
                    e.message = format!(
                        "applied to partitions 0 to {}, not to partition {p}: {}; apply the file again",
                        p - 1,
                        e.message
                    );
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(first.unwrap_or_default())
    }

    /// Every service with a policy: its breaker, held and in-flight tasks
    /// (with more than one partition, each partition's, added up by
    /// [`merge_services`]).
    pub async fn breakers(&self) -> Result<Vec<ServiceStatus>, ApiError> {
        if self.spans() {
            let all = futures::future::try_join_all(
                (0..self.partitions()).map(|p| async move { self.only(p).breakers().await }),
            )
            .await?;
            return Ok(merge_services(all.into_iter().flatten()));
        }
        let partition = routed!(self, self.home(), Op::BreakerList, &serde_json::json!({}));
        let services = partition.services().await?;
        Ok(services.into_iter().map(view::service_status).collect())
    }

    /// Every service a current definition has a step on or a policy names,
    /// by name: the definitions that use it, its queue depth (`None` when
    /// NATS does not answer within [`QUEUE_DEPTH_WAIT`], or without
    /// [`with_queues`](Self::with_queues)), and its breaker status when a
    /// policy names it.
    pub async fn services(&self) -> Result<Vec<ServiceOverview>, ApiError> {
        let policies = self.breakers().await?;
        let mut services: std::collections::BTreeMap<String, ServiceOverview> = policies
            .into_iter()
            .map(|status| {
                let overview = ServiceOverview {
                    service: status.service.clone(),
                    sagas: Vec::new(),
                    queue_depth: None,
                    status: Some(status),
                };
                (overview.service.clone(), overview)
            })
            .collect();
        for def in self
            .store(self.home())
            .list_definitions()
            .map_err(internal)?
        {
            for step in &def.steps {
                let entry =
                    services
                        .entry(step.service.clone())
                        .or_insert_with(|| ServiceOverview {
                            service: step.service.clone(),
                            sagas: Vec::new(),
                            queue_depth: None,
                            status: None,
                        });
                if !entry.sagas.contains(&def.name) {
                    entry.sagas.push(def.name.clone());
                }
            }
        }
        if let Some((js, subjects)) = &self.queues {
            for overview in services.values_mut() {
                let depth = crate::metrics::queue_depth(js, subjects, &overview.service);
                overview.queue_depth = match tokio::time::timeout(QUEUE_DEPTH_WAIT, depth).await {
                    Ok(Ok(depth)) => Some(depth),
                    Ok(Err(e)) => {
                        tracing::debug!(service = %overview.service, error = %e, "cannot read the queue depth");
                        None
                    }
                    Err(_) => None,
                };
            }
        }
        Ok(services.into_values().collect())
    }

    /// Version `version` of definition `name`; `E-NOT-FOUND` when it has
    /// none. Versions never change once stored, so this engine's store
    /// answers, leader or not.
    pub fn definition_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<jetsaga_protocol::api::SagaDefinition, ApiError> {
        let definition = self
            .store(self.home())
            .definition(name, version)
            .map_err(internal)?
            .ok_or_else(|| {
                api_error(
                    ErrorCode::NotFound,
                    format!("no version {version} of definition {name:?}"),
                )
            })?;
        Ok(view::definition_view(&definition))
    }

    /// One service's breaker, held and in-flight tasks; `E-NOT-FOUND` when
    /// no policy names it.
    pub async fn breaker(&self, service: &str) -> Result<ServiceStatus, ApiError> {
        if self.spans() {
            let all = futures::future::try_join_all(
                (0..self.partitions()).map(|p| async move { self.only(p).breaker(service).await }),
            )
            .await?;
            return merge_services(all)
                .pop()
                .ok_or_else(|| internal("no partition"));
        }
        let partition = routed!(
            self,
            self.home(),
            Op::BreakerGet,
            &ServiceRef {
                service: service.to_string()
            }
        );
        let status = partition.service(service.to_string()).await?;
        Ok(view::service_status(status))
    }

    /// Closes a service's breaker and releases its held tasks (as its
    /// in-flight limit allows), or forces it into `state` (open: held from
    /// now); answers once that is durable.
    /// `E-NOT-FOUND` when no policy names the service, `E-NOT-APPLICABLE`
    /// when it has no breaker.
    pub async fn reset_breaker(
        &self,
        service: &str,
        state: Option<ForcedState>,
    ) -> Result<ServiceStatus, ApiError> {
        if self.spans() {
            let mut all = Vec::new();
            for p in 0..self.partitions() {
                all.push(Box::pin(self.only(p).reset_breaker(service, state)).await?);
            }
            return merge_services(all)
                .pop()
                .ok_or_else(|| internal("no partition"));
        }
        let partition = routed!(
            self,
            self.home(),
            Op::BreakerReset,
            &BreakerReset {
                service: service.to_string(),
                state,
            }
        );
        let state = state.map(|s| match s {
            ForcedState::Open => jetsaga_core::admission::ForcedState::Open,
            ForcedState::Closed => jetsaga_core::admission::ForcedState::Closed,
        });
        let status = partition.reset_breaker(service.to_string(), state).await?;
        Ok(view::service_status(status))
    }

    /// Parses and validates a definitions file sent as text (errors name
    /// the source `request`) within the default size limits. Pure: stores
    /// nothing, so it needs no engine.
    pub fn validate_definitions(
        text: &str,
        format: Format,
    ) -> Result<DefinitionFile, DefinitionError> {
        Self::validate_definitions_within(text, format, &DefinitionLimits::default())
    }

    /// Like [`validate_definitions`](Self::validate_definitions), within `limits`.
    pub fn validate_definitions_within(
        text: &str,
        format: Format,
        limits: &DefinitionLimits,
    ) -> Result<DefinitionFile, DefinitionError> {
        definition::parse_str_within(definition::REQUEST_SOURCE, text, format, limits)
    }

    /// The engines and partitions of the installation (`cluster.status`),
    /// from what every engine records in NATS: any engine answers it.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ApiError> {
        match &self.cluster {
            Some(cluster) => crate::cluster::members::status(cluster)
                .await
                .map_err(|e| api_error(ErrorCode::Unavailable, e)),
            None => Err(api_error(
                ErrorCode::NotApplicable,
                "this engine runs without a cluster",
            )),
        }
    }

    /// Hands partition `req.partition` over (`cluster.step-down`): its
    /// leader drains it, releases its lease, and does not take it again
    /// for a lease TTL, so that another engine takes it.
    pub async fn step_down(&self, req: &StepDownRequest) -> Result<StepDownReply, ApiError> {
        if req.partition >= self.partitions() {
            return Err(api_error(
                ErrorCode::BadRequest,
                format!(
                    "no partition {}; the installation has {}",
                    req.partition,
                    self.partitions()
                ),
            ));
        }
        routed!(self, req.partition, Op::ClusterStepDown, req);
        let Some(cluster) = &self.cluster else {
            return Err(api_error(
                ErrorCode::NotApplicable,
                "this engine runs without a cluster: there is nobody to hand over to",
            ));
        };
        self.role.request_step_down(req.partition);
        Ok(StepDownReply {
            partition: req.partition,
            released_by: cluster.engine.clone(),
        })
    }

    /// Reads from the store, to tell that it is open and readable.
    pub fn check_store(&self) -> Result<(), ApiError> {
        for store in self.stores.iter() {
            store.next_timer().map_err(|e| {
                api_error(
                    ErrorCode::Unavailable,
                    format!("the store cannot be read: {e}"),
                )
            })?;
        }
        Ok(())
    }
}

/// Durable starts and triggered starts go where API starts go.
impl crate::partition::Starts for Api {
    fn local(&self, key: Option<&str>) -> Option<PartitionHandle> {
        let p = match key {
            Some(key) => self.of_key(key),
            None => self.pick(),
        };
        self.role.handle(p)
    }

    fn start(
        &self,
        start: StartCommand,
    ) -> futures::future::BoxFuture<'static, Result<StartReply, ApiError>> {
        let api = self.clone();
        Box::pin(async move {
            let request = StartRequest {
                saga: start.saga,
                input: start.input,
                idempotency_key: start.idempotency_key,
            };
            api.start_traced(request, start.trace_parent.as_deref())
                .await
        })
    }
}

/// The services of every partition, one status per service: counts and
/// in-flight limits (each holds per partition) added up, the breaker in its
/// most closed-off state (open before half-open before closed), its
/// history merged by time.
fn merge_services(all: impl IntoIterator<Item = ServiceStatus>) -> Vec<ServiceStatus> {
    fn rank(state: &str) -> u8 {
        match state {
            "open" => 2,
            "half_open" => 1,
            _ => 0,
        }
    }
    let mut by_name: std::collections::BTreeMap<String, ServiceStatus> = Default::default();
    for s in all {
        match by_name.get_mut(&s.service) {
            None => {
                by_name.insert(s.service.clone(), s);
            }
            Some(m) => {
                if rank(&s.state) > rank(&m.state) {
                    m.state = s.state.clone();
                    m.since = s.since;
                    m.half_opens_at = s.half_opens_at;
                }
                m.failures += s.failures;
                m.successes += s.successes;
                m.probe_in_flight |= s.probe_in_flight;
                m.held += s.held;
                m.in_flight += s.in_flight;
                // The limit holds per partition: their sum is the most
                // in flight over all of them.
                m.max_in_flight = match (m.max_in_flight, s.max_in_flight) {
                    (Some(a), Some(b)) => Some(a.saturating_add(b)),
                    (a, b) => a.or(b),
                };
                m.history.extend(s.history);
                m.history.sort_by_key(|t| t.at);
            }
        }
    }
    by_name.into_values().collect()
}

/// The smallest UUIDv7 string whose time is `ms`: every id made at `ms` or
/// later sorts at or after it, every id made earlier before it.
fn uuid_v7_floor(ms: Millis) -> String {
    let ms = ms.min((1 << 48) - 1);
    format!(
        "{:08x}-{:04x}-0000-0000-000000000000",
        ms >> 16,
        ms & 0xffff
    )
}

/// Refuses a list cursor (`before`) that is not a saga id: a UUIDv7 in
/// its canonical form (lowercase, hyphenated), as the previous page's
/// `next` gives it. Anything else would page through the ids by string
/// order from an arbitrary point.
fn check_cursor(cursor: &str) -> Result<(), ApiError> {
    let canonical = uuid::Uuid::parse_str(cursor)
        .ok()
        .filter(|u| u.get_version_num() == 7)
        .is_some_and(|u| u.hyphenated().to_string() == cursor);
    if canonical {
        return Ok(());
    }
    let shown: String = cursor.chars().take(64).collect();
    Err(api_error(
        ErrorCode::BadRequest,
        format!(
            "before must be a saga id, a UUIDv7 such as 0190a000-0000-7000-8000-000000000001 \
             (the `next` of the previous page), got {shown:?}"
        ),
    ))
}

/// The refusal of a list `limit` over [`MAX_LIST_LIMIT`].
fn limit_refused(limit: usize) -> ApiError {
    api_error(
        ErrorCode::BadRequest,
        format!(
            "limit {limit} is over {MAX_LIST_LIMIT}; ask for at most {MAX_LIST_LIMIT} and page on (`before` for sagas, `after` for definitions)"
        ),
    )
}

/// The time in a UUIDv7 id, in ms since the Unix epoch.
fn uuid_v7_millis(id: &str) -> Option<Millis> {
    let uuid = uuid::Uuid::parse_str(id).ok()?;
    if uuid.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

/// Subscribes to the API's subjects for [`serve`]. When it returns, the
/// server has the subscription (a round trip to it followed), so a request
/// sent from then on finds a responder: the engine says it is ready only
/// after this.
pub async fn listen(
    client: &async_nats::Client,
    subjects: &Subjects,
) -> anyhow::Result<async_nats::Subscriber> {
    let sub = client
        .queue_subscribe(subjects.api_wildcard(), QUEUE_GROUP.into())
        .await?;
    client.flush().await?;
    Ok(sub)
}

/// Which subjects a [`serve`] loop answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `<prefix>.api.<op>`, served by every engine in a queue group.
    Api,
    /// `<prefix>.lead.<partition>.<op>`, served by the partition's leader
    /// only: requests other engines forward ([`route`]).
    Leader(u32),
}

/// Subscribes to the subject only the leader of `partition` serves
/// ([`Door::Leader`]); like [`listen`], returns once the server has it.
pub async fn listen_as_leader(
    client: &async_nats::Client,
    subjects: &Subjects,
    partition: u32,
) -> anyhow::Result<async_nats::Subscriber> {
    let sub = client
        .queue_subscribe(subjects.leader_api_wildcard(partition), QUEUE_GROUP.into())
        .await?;
    client.flush().await?;
    Ok(sub)
}

/// Serves the API over NATS on `sub` (from [`listen`] or
/// [`listen_as_leader`], as `door` says) until `shutdown`.
pub async fn serve(
    client: async_nats::Client,
    mut sub: async_nats::Subscriber,
    subjects: Subjects,
    api: Api,
    door: Door,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT));
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let ctx = (client.clone(), api.clone(), subjects.clone());
        tracker.spawn(async move {
            let (client, api, subjects) = ctx;
            let Some(reply) = msg.reply.clone() else {
                tracing::debug!(subject = %msg.subject, "API request without a reply subject ignored");
                return;
            };
            let name = match door {
                Door::Api => subjects.api_op_name(&msg.subject),
                Door::Leader(p) => subjects.leader_api_op_name(p, &msg.subject),
            }
            .unwrap_or_default();
            let body = match name.parse::<Op>() {
                Ok(op) => handle(op, &msg, &api, door).await,
                Err(other) => unknown_op(&other),
            };
            let body = fit(body, client.server_info().max_payload, name);
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

/// `body`, or when it is over the connection's `max_payload` (which the
/// server would refuse, leaving the caller to time out) an
/// `E-REPLY-TOO-LARGE` error saying what to ask for instead.
fn fit(body: Vec<u8>, max_payload: usize, op: &str) -> Vec<u8> {
    if body.len() <= max_payload {
        return body;
    }
    reply::<()>(Err(api_error(
        ErrorCode::ReplyTooLarge,
        format!(
            "the answer to {op} is {} bytes, over the NATS max payload of {max_payload} bytes; ask for less (a smaller `limit` for saga.list and def.list), read it over the HTTP API, or raise the server's max_payload",
            body.len()
        ),
    )))
}

fn reply<T: Serialize>(r: Result<T, ApiError>) -> Vec<u8> {
    let envelope = match r {
        Ok(v) => ApiReply::Ok(v),
        Err(e) => {
            if e.error_code() != Some(ErrorCode::NotFound) {
                crate::metrics::reject("api", &e.code, &e.message);
            }
            ApiReply::Error(e)
        }
    };
    serde_json::to_vec(&envelope).unwrap_or_else(|_| {
        format!(
            r#"{{"error":{{"code":"{}","message":"cannot encode reply"}}}}"#,
            ErrorCode::Internal
        )
        .into_bytes()
    })
}

fn unknown_op(name: &str) -> Vec<u8> {
    reply::<()>(Err(api_error(
        ErrorCode::UnknownOperation,
        format!(
            "no API operation {name:?}; known: {}",
            Op::ALL.map(Op::name).join(", ")
        ),
    )))
}

fn parse<T: for<'de> Deserialize<'de>>(op: Op, payload: &[u8]) -> Result<T, ApiError> {
    let payload: &[u8] = if payload.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        payload
    };
    serde_json::from_slice(payload).map_err(|e| {
        api_error(
            ErrorCode::BadRequest,
            format!("malformed {op} request: {e}"),
        )
    })
}

fn invalid_services(e: DefinitionError) -> ApiError {
    api_error(ErrorCode::InvalidDefinition, format!("{}: {e}", e.code()))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    api_error(ErrorCode::Internal, e.to_string())
}

async fn handle(op: Op, msg: &Message, api: &Api, door: Door) -> Vec<u8> {
    let payload = &msg.payload[..];
    match op {
        Op::SagaStart => reply(
            async {
                let mut req: StartRequest = parse(op, payload)?;
                if let Some(key) = msg.headers.as_ref().and_then(|h| h.get(HEADER_START_KEY)) {
                    req.idempotency_key = Some(key.as_str().to_string());
                }
                let traceparent = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(crate::trace::HEADER_TRACEPARENT));
                api.start_traced(req, traceparent.map(|v| v.as_str())).await
            }
            .await,
        ),
        Op::SagaGet => reply(
            async {
                let req: GetRequest = parse(op, payload)?;
                api.get_saga(&req).await
            }
            .await,
        ),
        // Forwarded lists answer the whole page, cursor included.
        Op::SagaList if matches!(door, Door::Leader(_)) => reply(
            async {
                let req: ListRequest = parse(op, payload)?;
                api.list(&req).await
            }
            .await,
        ),
        Op::SagaList => reply(
            async {
                let req: ListRequest = parse(op, payload)?;
                Ok(api.list(&req).await?.sagas)
            }
            .await,
        ),
        Op::ClusterStatus => reply(api.cluster_status().await),
        Op::ClusterStepDown => reply(
            async {
                let req: StepDownRequest = parse(op, payload)?;
                api.step_down(&req).await
            }
            .await,
        ),
        Op::SagaCancel => reply(
            async {
                let req: CancelRequest = parse(op, payload)?;
                api.cancel(req).await
            }
            .await,
        ),
        Op::SagaRetry => reply(
            async {
                let req: RetryRequest = parse(op, payload)?;
                api.retry(req).await
            }
            .await,
        ),
        Op::SagaDelete => reply(
            async {
                let req: SagaRef = parse(op, payload)?;
                api.delete(&req.id).await?;
                Ok(req)
            }
            .await,
        ),
        Op::SagaStats => reply(
            async {
                let req: StatsRequest = parse(op, payload)?;
                api.stats(&req).await
            }
            .await,
        ),
        Op::DefApply => reply(
            async {
                let req: ApplyRequest = parse(op, payload)?;
                api.apply(&req.definitions, &req.services).await
            }
            .await,
        ),
        Op::BreakerList => reply(api.breakers().await),
        Op::BreakerGet => reply(
            async {
                let req: ServiceRef = parse(op, payload)?;
                api.breaker(&req.service).await
            }
            .await,
        ),
        Op::BreakerReset => reply(
            async {
                let req: BreakerReset = parse(op, payload)?;
                api.reset_breaker(&req.service, req.state).await
            }
            .await,
        ),
        Op::DefList => reply(
            async {
                let req: DefListRequest = parse(op, payload)?;
                api.definition_page(&req).await
            }
            .await,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_over_the_max_payload_becomes_an_error_that_fits() {
        let body = reply(Ok(vec!["x".repeat(2000)]));
        assert_eq!(fit(body.clone(), body.len(), "saga.list"), body);
        let refused = fit(body.clone(), body.len() - 1, "saga.list");
        assert!(refused.len() < body.len());
        let ApiReply::<()>::Error(e) = serde_json::from_slice(&refused).unwrap() else {
            panic!("an error envelope");
        };
        assert_eq!(e.error_code(), Some(ErrorCode::ReplyTooLarge));
        for part in [
            body.len().to_string(),
            (body.len() - 1).to_string(),
            "saga.list".into(),
        ] {
            assert!(e.message.contains(&part), "{part} in {}", e.message);
        }
    }

    #[test]
    fn list_limits_over_the_cap_are_refused() {
        let e = limit_refused(MAX_LIST_LIMIT + 1);
        assert_eq!(e.error_code(), Some(ErrorCode::BadRequest));
        assert!(e.message.contains("1001"), "{}", e.message);
    }

    #[test]
    fn uuid_v7_floor_orders_ids_by_time() {
        let ms: Millis = 1_795_332_022_075;
        let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            ms / 1000,
            (ms % 1000) as u32 * 1_000_000,
        ))
        .to_string();
        assert_eq!(uuid_v7_millis(&id), Some(ms));
        assert!(uuid_v7_floor(ms) <= id);
        assert!(id < uuid_v7_floor(ms + 1));
        assert!(uuid_v7_floor(ms - 1) < uuid_v7_floor(ms));
        assert_eq!(uuid_v7_millis("0001"), None);
        assert_eq!(uuid_v7_millis("550e8400-e29b-41d4-a716-446655440000"), None);
    }

    #[test]
    fn a_list_cursor_is_a_canonical_uuid_v7() {
        let id = uuid::Uuid::now_v7();
        assert!(check_cursor(&id.to_string()).is_ok());
        for bad in [
            String::new(),
            "x".into(),
            "zzzz".into(),
            "550e8400-e29b-41d4-a716-446655440000".into(), // v4
            id.to_string().to_uppercase(),
            id.simple().to_string(),
            format!("{{{id}}}"),
            format!("{id} "),
        ] {
            let e = check_cursor(&bad).expect_err(&bad);
            assert_eq!(e.error_code(), Some(ErrorCode::BadRequest), "{bad}");
            assert!(e.message.contains("UUIDv7"), "{}", e.message);
        }
    }

    #[test]
    fn list_requests_read_the_old_filter_shape() {
        let req: ListRequest =
            serde_json::from_str(r#"{"state":"running","name":"n","before":"x","limit":3}"#)
                .unwrap();
        let expected = ListRequest {
            state: Some(jetsaga_protocol::api::SagaState::Running),
            name: Some("n".into()),
            before: Some("x".into()),
            limit: 3,
            ..ListRequest::default()
        };
        assert_eq!(req, expected);
        // What a client built from the store's filter sends reads the same.
        let filter = serde_json::to_vec(&SagaFilter {
            state: Some("running".into()),
            name: Some("n".into()),
            before: Some("x".into()),
            limit: 3,
        })
        .unwrap();
        assert_eq!(
            serde_json::from_slice::<ListRequest>(&filter).unwrap(),
            expected
        );
        assert_eq!(
            serde_json::to_vec(&expected).unwrap(),
            filter,
            "the same bytes"
        );
        let req: ListRequest =
            serde_json::from_str(r#"{"created_after":5,"created_before":9}"#).unwrap();
        assert_eq!((req.created_after, req.created_before), (Some(5), Some(9)));
    }
}

//! A client of the engine's NATS request API, used by the CLI and by tests,
//! and usable from any Rust program. [`Client::connect`] takes a URL;
//! [`Client::connect_with`] a [`NatsConfig`] with credentials and TLS.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jetsaga_cli::client::ClientError> {
//! use jetsaga_cli::client::Client;
//! let client = Client::connect("nats://127.0.0.1:4222", "jetsaga").await?;
//! let started = client
//!     .start("deploy_environment", serde_json::json!({"environment": "staging"}), Some("deploy-42"))
//!     .await?;
//! let done = client.wait_terminal(&started.saga_id, std::time::Duration::from_secs(60)).await?;
//! println!("{} is {}", done.saga.id, done.saga.status.name());
//! # Ok(()) }
//! ```

use async_nats::client::{Request, RequestErrorKind};
use futures::StreamExt;
use jetsaga_core::saga::definition::SagaDefinition;
use jetsaga_engine::api::{ApplyRequest, Op};
use jetsaga_engine::config::{ConfigError, NatsConfig, connect_hint, connect_options};
use jetsaga_protocol::api::{
    AppliedDefinition, CancelRequest, DefListRequest, DefinitionListing, GetRequest, ListRequest,
    RetryRequest, SagaDetail, SagaRef, SagaStats, SagaSummary, ServiceRef, ServiceStatus,
    StatsRequest,
};
use jetsaga_protocol::{ApiError, ApiReply, ErrorCode, StartReply, StartRequest, Subjects};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Definitions asked for per `def.list` page.
const DEFINITION_PAGE: usize = 100;

/// Errors of the API client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// NATS could not be reached, or refused the credentials or TLS.
    #[error(
        "{code}: cannot connect to NATS at {url}: {source}; {}",
        connect_hint(source),
        code = ErrorCode::NatsConnect,
    )]
    Connect {
        /// URL tried.
        url: String,
        /// Cause.
        source: async_nats::ConnectError,
    },
    /// Nobody serves the API on this prefix.
    #[error(
        "{code}: no jetsaga engine answers on {subject}; start one with `jetsaga dev` or `jetsaga server`, and check --prefix",
        code = ErrorCode::NoEngine,
    )]
    NoEngine {
        /// Subject asked.
        subject: String,
    },
    /// The engine did not answer in time.
    #[error("{code}: the engine did not answer {subject} within {timeout:?}", code = ErrorCode::Timeout)]
    Timeout {
        /// Subject asked.
        subject: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The engine answered with an error.
    #[error("{}: {}", .0.code, .0.message)]
    Api(ApiError),
    /// Another NATS failure.
    #[error("{code}: {0}", code = ErrorCode::Nats)]
    Nats(String),
    /// The reply could not be decoded.
    #[error("{code}: cannot decode the engine's reply: {0}", code = ErrorCode::Decode)]
    Decode(serde_json::Error),
    /// The connection settings cannot work (two authentication methods, an
    /// unreadable credentials file, ...).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl ClientError {
    /// The stable error code: an [`ErrorCode`]'s string, or for
    /// [`ClientError::Api`] the code as the engine sent it (a newer engine's
    /// code included; [`ApiError::error_code`] reads it as an [`ErrorCode`]).
    pub fn code(&self) -> &str {
        match self {
            ClientError::Connect { .. } => ErrorCode::NatsConnect.as_str(),
            ClientError::NoEngine { .. } => ErrorCode::NoEngine.as_str(),
            ClientError::Timeout { .. } => ErrorCode::Timeout.as_str(),
            ClientError::Api(e) => &e.code,
            ClientError::Nats(_) => ErrorCode::Nats.as_str(),
            ClientError::Decode(_) => ErrorCode::Decode.as_str(),
            ClientError::Config(e) => e.code().as_str(),
        }
    }
}

/// A client of one installation's API.
#[derive(Debug, Clone)]
pub struct Client {
    nats: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
}

impl Client {
    /// Connects to NATS at `url` (one URL or a comma-separated list) for the
    /// installation with subject `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, ClientError> {
        Self::connect_with(&NatsConfig::new(url), prefix).await
    }

    /// Connects to NATS as `nats` says (URLs, credentials, TLS) for the
    /// installation with subject `prefix`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), jetsaga_cli::client::ClientError> {
    /// use jetsaga_cli::client::Client;
    /// use jetsaga_engine::config::{NatsConfig, Secret};
    /// let nats = NatsConfig {
    ///     user: Some("app".into()),
    ///     password: Some(Secret::new(std::env::var("NATS_PASSWORD").unwrap_or_default())),
    ///     ..NatsConfig::new("nats://nats.internal:4222")
    /// };
    /// let client = Client::connect_with(&nats, "jetsaga").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(nats: &NatsConfig, prefix: &str) -> Result<Self, ClientError> {
        let url = &nats.url;
        let addrs =
            jetsaga_engine::config::server_addrs(url).map_err(|e| ClientError::Connect {
                url: url.to_string(),
                source: e.into(),
            })?;
        let nats = connect_options(nats)?
            .name("jetsaga-cli")
            .connect(addrs)
            .await
            .map_err(|source| ClientError::Connect {
                url: url.to_string(),
                source,
            })?;
        Ok(Self::new(nats, prefix))
    }

    /// Wraps an existing NATS client.
    pub fn new(nats: async_nats::Client, prefix: &str) -> Self {
        Self {
            nats,
            subjects: Subjects::new(prefix),
            timeout: Duration::from_secs(10),
        }
    }

    /// Sets how long to wait for each reply (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The underlying NATS client.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: Op,
        body: &Req,
    ) -> Result<Resp, ClientError> {
        let subject = self.subjects.api(op);
        let payload = serde_json::to_vec(body).map_err(ClientError::Decode)?;
        let request = Request::new()
            .payload(payload.into())
            .timeout(Some(self.timeout));
        let msg = self
            .nats
            .send_request(subject.clone(), request)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => ClientError::NoEngine {
                    subject: subject.clone(),
                },
                RequestErrorKind::TimedOut => ClientError::Timeout {
                    subject: subject.clone(),
                    timeout: self.timeout,
                },
                _ => ClientError::Nats(e.to_string()),
            })?;
        match serde_json::from_slice::<ApiReply<Resp>>(&msg.payload).map_err(ClientError::Decode)? {
            ApiReply::Ok(v) => Ok(v),
            ApiReply::Error(e) => Err(ClientError::Api(e)),
        }
    }

    /// Starts saga `saga` with `input`; the same `idempotency_key` always
    /// gives the same saga.
    pub async fn start(
        &self,
        saga: &str,
        input: serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<StartReply, ClientError> {
        let req = StartRequest {
            saga: saga.to_string(),
            input,
            idempotency_key: idempotency_key.map(str::to_string),
        };
        self.call(Op::SagaStart, &req).await
    }

    /// One saga with its definition.
    pub async fn get(&self, id: &str) -> Result<SagaDetail, ClientError> {
        self.call(Op::SagaGet, &SagaRef { id: id.to_string() })
            .await
    }

    /// The saga started with idempotency key `key`, or `E-NOT-FOUND`.
    /// Only reads: unlike a start with the same key, it never starts one.
    pub async fn get_by_key(&self, key: &str) -> Result<SagaDetail, ClientError> {
        let req = GetRequest {
            id: None,
            idempotency_key: Some(key.to_string()),
        };
        self.call(Op::SagaGet, &req).await
    }

    /// Counts, rates and durations of the stored sagas `req` selects.
    pub async fn stats(&self, req: &StatsRequest) -> Result<SagaStats, ClientError> {
        self.call(Op::SagaStats, req).await
    }

    /// Sagas matching `filter`, newest first.
    pub async fn list(&self, filter: &ListRequest) -> Result<Vec<SagaSummary>, ClientError> {
        self.call(Op::SagaList, filter).await
    }

    /// Cancels a saga, compensating its completed steps if `compensate`.
    pub async fn cancel(
        &self,
        id: &str,
        compensate: bool,
        reason: Option<String>,
    ) -> Result<SagaDetail, ClientError> {
        let req = CancelRequest {
            id: id.to_string(),
            compensate,
            reason,
        };
        self.call(Op::SagaCancel, &req).await
    }

    /// Retries a finished saga: a `partially_compensated` one resumes its
    /// rollback, a `failed` or `compensated` one runs forward again from
    /// the start. Returns the saga once the retry is durable.
    pub async fn retry(&self, id: &str) -> Result<SagaDetail, ClientError> {
        let req = RetryRequest {
            id: id.to_string(),
            compensation_only: false,
        };
        self.call(Op::SagaRetry, &req).await
    }

    /// Resumes the rollback of a `partially_compensated` saga; any other
    /// state is refused (`E-NOT-APPLICABLE`).
    pub async fn retry_compensation(&self, id: &str) -> Result<SagaDetail, ClientError> {
        let req = RetryRequest {
            id: id.to_string(),
            compensation_only: true,
        };
        self.call(Op::SagaRetry, &req).await
    }

    /// Deletes a finished saga (its idempotency key may then start a new one).
    pub async fn delete(&self, id: &str) -> Result<(), ClientError> {
        let _: SagaRef = self
            .call(Op::SagaDelete, &SagaRef { id: id.to_string() })
            .await?;
        Ok(())
    }

    /// Applies definitions (stored as new versions where they changed).
    pub async fn apply(
        &self,
        definitions: Vec<SagaDefinition>,
    ) -> Result<Vec<AppliedDefinition>, ClientError> {
        let req = ApplyRequest {
            definitions,
            services: Vec::new(),
        };
        self.call(Op::DefApply, &req).await
    }

    /// Applies a parsed definitions file: its sagas (new versions where they
    /// changed) and its service policies (`services:`, each replacing the
    /// service's policy).
    pub async fn apply_file(
        &self,
        file: &jetsaga_core::saga::definition::DefinitionFile,
    ) -> Result<Vec<AppliedDefinition>, ClientError> {
        self.apply_all(file.sagas.clone(), file.services.clone())
            .await
    }

    /// Applies definitions and service policies together: nothing is stored
    /// when any of them is invalid.
    pub async fn apply_all(
        &self,
        definitions: Vec<SagaDefinition>,
        services: Vec<jetsaga_core::saga::definition::ServicePolicy>,
    ) -> Result<Vec<AppliedDefinition>, ClientError> {
        let req = ApplyRequest {
            definitions,
            services,
        };
        self.call(Op::DefApply, &req).await
    }

    /// The engines and partitions of the installation.
    pub async fn cluster_status(
        &self,
    ) -> Result<jetsaga_protocol::api::ClusterStatus, ClientError> {
        self.call(Op::ClusterStatus, &serde_json::json!({})).await
    }

    /// Has the leader of `partition` hand it over to another engine.
    pub async fn step_down(
        &self,
        partition: u32,
    ) -> Result<jetsaga_protocol::api::StepDownReply, ClientError> {
        let req = jetsaga_protocol::api::StepDownRequest { partition };
        self.call(Op::ClusterStepDown, &req).await
    }

    /// Every service with a policy: breaker state, held and in-flight tasks.
    pub async fn breakers(&self) -> Result<Vec<ServiceStatus>, ClientError> {
        self.call(Op::BreakerList, &serde_json::json!({})).await
    }

    /// One service's breaker state, held and in-flight tasks.
    pub async fn breaker(&self, service: &str) -> Result<ServiceStatus, ClientError> {
        let req = ServiceRef {
            service: service.to_string(),
        };
        self.call(Op::BreakerGet, &req).await
    }

    /// Closes a service's breaker and releases its held tasks, or forces
    /// it into `state`.
    pub async fn reset_breaker(
        &self,
        service: &str,
        state: Option<jetsaga_protocol::api::ForcedState>,
    ) -> Result<ServiceStatus, ClientError> {
        let req = jetsaga_protocol::api::BreakerReset {
            service: service.to_string(),
            state,
        };
        self.call(Op::BreakerReset, &req).await
    }

    /// The current version of every definition.
    pub async fn definitions(
        &self,
    ) -> Result<Vec<jetsaga_protocol::api::SagaDefinition>, ClientError> {
        self.definition_pages(|d: &jetsaga_protocol::api::SagaDefinition| &d.name)
            .await
    }

    /// The current version of every definition, each with whether its
    /// policy lets it start in the engine's environment.
    pub async fn definition_listing(&self) -> Result<Vec<DefinitionListing>, ClientError> {
        self.definition_pages(|d: &DefinitionListing| &d.definition.name)
            .await
    }

    /// Every current definition, read page by page (`def.list` with
    /// `after`), so that no one reply has to hold them all; a page over
    /// the NATS max payload (`E-REPLY-TOO-LARGE`) is asked again smaller.
    async fn definition_pages<T: DeserializeOwned>(
        &self,
        name: impl Fn(&T) -> &String,
    ) -> Result<Vec<T>, ClientError> {
        let mut out: Vec<T> = Vec::new();
        let mut limit = DEFINITION_PAGE;
        loop {
            let req = DefListRequest {
                after: out.last().map(|d| name(d).clone()),
                limit,
            };
            let page: Vec<T> = match self.call(Op::DefList, &req).await {
                Err(ClientError::Api(e))
                    if e.error_code() == Some(ErrorCode::ReplyTooLarge) && limit > 1 =>
                {
                    limit /= 2;
                    continue;
                }
                r => r?,
            };
            // An engine that does not page answers everything at once.
            let last = page.len() != limit;
            out.extend(page);
            if last {
                return Ok(out);
            }
        }
    }

    /// Calls `on_change` with the saga each time it changes, until it is
    /// terminal or `timeout` passes; returns its last state.
    pub async fn watch(
        &self,
        id: &str,
        timeout: Duration,
        mut on_change: impl FnMut(&SagaDetail),
    ) -> Result<SagaDetail, ClientError> {
        let mut progress = self
            .nats
            .subscribe(self.subjects.progress(id))
            .await
            .map_err(|e| ClientError::Nats(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last: Option<SagaDetail> = None;
        loop {
            let detail = self.get(id).await?;
            if last.as_ref() != Some(&detail) {
                on_change(&detail);
            }
            if detail.saga.status.is_terminal() {
                return Ok(detail);
            }
            last = Some(detail);
            // Progress notifications are best effort (core NATS); the
            // periodic re-read covers a missed one.
            tokio::select! {
                _ = progress.next() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ClientError::Timeout { subject: self.subjects.progress(id), timeout });
                }
            }
        }
    }

    /// Waits until the saga is terminal (or `timeout` passes).
    pub async fn wait_terminal(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<SagaDetail, ClientError> {
        self.watch(id, timeout, |_| {}).await
    }
}

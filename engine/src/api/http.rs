//! The engine's HTTP API: JSON under `/v1`, plus `/health`, `/ready` and
//! `/openapi.json` (the OpenAPI document of all of it).
//!
//! Every `/v1` route decodes its request, calls [`Api`] (the same service the
//! NATS request API calls) and encodes the answer; an error is
//! `{"error": {"code": "E-...", "message": "..."}}`, the `error` of the NATS
//! envelope, with the HTTP status [`status_of`] gives its code. One table of
//! routes (`routes()`) builds the router, and a test checks it against the
//! OpenAPI document ([`openapi`]) both ways.
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/sagas` | start a saga (`Idempotency-Key` header: 201 when created, 200 with the existing saga) |
//! | `GET /v1/sagas` | list sagas, newest first, with filters and a `next` cursor |
//! | `GET /v1/sagas/{id}` | one saga with its steps, attempts and definition |
//! | `GET /v1/sagas/by-key/{key}` | the saga an idempotency key started (only reads) |
//! | `GET /v1/stats` | counts per state, success and compensation rates, durations |
//! | `POST /v1/sagas/{id}/cancel` | cancel a saga, compensating or not |
//! | `POST /v1/sagas/{id}/retry` | retry a finished saga: resume its rollback, or run it again |
//! | `DELETE /v1/sagas/{id}` | delete a finished saga (204) |
//! | `GET /v1/definitions` | the current version of every definition |
//! | `GET /v1/definitions/{name}/versions/{version}` | one stored version of a definition |
//! | `POST /v1/definitions` | apply a definitions file (YAML or JSON) |
//! | `POST /v1/definitions/validate` | check a definitions file, reporting every problem |
//! | `GET /v1/breakers` | every service with a policy: breaker state, held and in-flight tasks |
//! | `GET /v1/breakers/{service}` | one service's breaker state, held and in-flight tasks |
//! | `POST /v1/breakers/{service}/reset` | close a service's breaker, releasing its held tasks; body `{"state": "open"}` forces it open |
//! | `GET /v1/services` | every service of a definition or policy: queue depth, breaker, held and in-flight tasks |
//! | `GET /v1/cluster` | the engines and partitions: each partition's leader |
//! | `GET /health` | the process serves (always 200, also beyond `http_max_connections`: [`overflow`]) |
//! | `GET /ready` | the store is readable and NATS connected (200), or why not (503) |
//! | `GET /openapi.json` | the OpenAPI document |
//! | `GET /metrics` | Prometheus metrics, text exposition format ([`crate::metrics`]) |
//!
//! The web console is served under `/ui/` ([`console`]), outside the
//! OpenAPI document: its pages and its login, session and logout calls.
//!
//! When tokens are configured (`http_tokens`, [`super::auth`]), every route
//! but `/health`, `/ready`, `/metrics` and `/openapi.json` needs
//! `Authorization: Bearer <token>` (or the console's session cookie,
//! [`super::session`]) of the role the route table gives it:
//! 401 `E-UNAUTHENTICATED` without a known token, 403 `E-FORBIDDEN` below
//! the role. Those four stay open for probes and scrapers; none of them
//! reveals a saga, and the OpenAPI document is the public contract. With
//! `http_tls_cert` and `http_tls_key` the listener speaks HTTPS
//! ([`super::https`]).
//!
//! Request bodies must be sent with a JSON (or, for definitions, YAML)
//! `Content-Type`: besides telling the formats apart, that keeps a web page
//! from posting to an engine on `localhost` without a CORS preflight.

use super::auth::{Caller, Refusal, Role, Tokens};
use super::session::{self, Sessions};
use super::{Api, view};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use hyper_util::service::TowerToHyperService;
use jetsaga_core::saga::definition::{DefinitionError, DefinitionLimits, Format};
use jetsaga_core::saga::state::Millis;
use jetsaga_protocol::api::{
    AppliedDefinitions, BreakerList, BreakerResetBody, CancelRequest, CancelSagaRequest,
    ClusterStatus, DefinitionFile, DefinitionList, ListRequest, RetryRequest, RetrySagaRequest,
    SagaDefinition, SagaDetail, SagaPage, SagaState, SagaStats, SagaStatus, ServiceList,
    ServiceStatus, StartReply, StatsRequest,
};
use jetsaga_protocol::{ApiError, ErrorCode, HEADER_START_KEY, StartRequest};
use jetsaga_store::DEFAULT_LIST_LIMIT;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::{IntoParams, OpenApi, ToSchema};

mod connection;
mod console;
mod overflow;

pub use connection::{HEADER_TIMEOUT, TLS_HANDSHAKE_TIMEOUT};

/// Room for the JSON around a saga input: bodies may be this much larger
/// than `max_payload` (inputs themselves are held to `max_payload`).
pub const BODY_HEADROOM: usize = 64 * 1024;

pub use jetsaga_protocol::api::MAX_LIST_LIMIT;

/// How long requests in flight may take to finish once the engine drains.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
#[derive(Clone)]
struct HttpState {
    /// The service; `None` once the server stopped, so that connections
    /// still open then do not keep the partition alive.
    api: watch::Receiver<Option<Api>>,
    /// The engine's NATS connection, for `/ready`.
    nats: async_nats::Client,
    /// Cancelled when the engine drains.
    shutdown: CancellationToken,
    /// Largest request body, in bytes.
    body_limit: usize,
    /// How long a request body may take to arrive.
    body_timeout: Duration,
    /// The size limits of definitions sent to validate or apply.
    definition_limits: DefinitionLimits,
    /// The OpenAPI document, rendered once.
    openapi: Bytes,
    /// Who may call.
    auth: Arc<Auth>,
}

impl HttpState {
    fn api(&self) -> Result<Api, HttpError> {
        self.api.borrow().clone().ok_or_else(|| {
            HttpError::new(
                ErrorCode::Unavailable,
                "the engine is shutting down; retry against a running engine",
            )
        })
    }
}

// ---------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------

/// One route: a method and a path, written as in the OpenAPI document, and
/// the handler that serves it.
struct Route {
    /// HTTP method.
    method: Method,
    /// Path, with `{name}` for path parameters.
    path: &'static str,
    /// The role a token needs to call it when tokens are configured; `None`
    /// for the routes that stay open.
    role: Option<Role>,
    /// The handler, to be routed for a method.
    handler: Box<dyn FnOnce(MethodFilter) -> MethodRouter<HttpState>>,
}

impl Route {
    /// A route callers of `role` and above may call.
    fn new<H, T>(method: Method, path: &'static str, role: Role, handler: H) -> Route
    where
        H: Handler<T, HttpState>,
        T: 'static,
    {
        Route {
            role: Some(role),
            ..Route::open(method, path, handler)
        }
    }

    /// A route anyone may call, tokens or not.
    fn open<H, T>(method: Method, path: &'static str, handler: H) -> Route
    where
        H: Handler<T, HttpState>,
        T: 'static,
    {
        Route {
            method,
            path,
            role: None,
            handler: Box::new(move |filter| on(filter, handler)),
        }
    }
}

/// Every route the HTTP API serves. The router is built from this table,
/// and a test checks that it and the OpenAPI document ([`openapi`]) name
/// the same routes.
fn routes() -> Vec<Route> {
    use Role::{Admin, Operate, Read};
    vec![
        Route::new(Method::POST, "/v1/sagas", Operate, start_saga),
        Route::new(Method::GET, "/v1/sagas", Read, list_sagas),
        Route::new(Method::GET, "/v1/sagas/{id}", Read, get_saga),
        Route::new(Method::GET, "/v1/sagas/by-key/{key}", Read, get_saga_by_key),
        Route::new(Method::GET, "/v1/stats", Read, saga_stats),
        Route::new(Method::POST, "/v1/sagas/{id}/cancel", Operate, cancel_saga),
        Route::new(Method::POST, "/v1/sagas/{id}/retry", Operate, retry_saga),
        Route::new(Method::DELETE, "/v1/sagas/{id}", Operate, delete_saga),
        Route::new(Method::GET, "/v1/definitions", Read, list_definitions),
        Route::new(
            Method::GET,
            "/v1/definitions/{name}/versions/{version}",
            Read,
            get_definition_version,
        ),
        Route::new(Method::POST, "/v1/definitions", Admin, apply_definitions),
        Route::new(
            Method::POST,
            "/v1/definitions/validate",
            Admin,
            validate_definitions,
        ),
        Route::new(Method::GET, "/v1/breakers", Read, list_breakers),
        Route::new(Method::GET, "/v1/breakers/{service}", Read, get_breaker),
        Route::new(Method::GET, "/v1/services", Read, list_services),
        Route::new(Method::GET, "/v1/cluster", Read, cluster_status),
        Route::new(
            Method::POST,
            "/v1/breakers/{service}/reset",
            Admin,
            reset_breaker,
        ),
        Route::open(Method::GET, "/health", health),
        Route::open(Method::GET, "/ready", ready),
        Route::open(Method::GET, "/openapi.json", openapi_json),
        Route::open(Method::GET, "/metrics", prometheus_metrics),
    ]
}

/// The router over `api`, answering errors in the API's JSON shape (unknown
/// routes and methods included) and refusing bodies over `max_payload` plus
/// [`BODY_HEADROOM`].
fn router(
    api: watch::Receiver<Option<Api>>,
    nats: async_nats::Client,
    max_payload: usize,
    body_timeout: Duration,
    auth: Auth,
    shutdown: CancellationToken,
) -> Router {
    let body_limit = max_payload.saturating_add(BODY_HEADROOM);
    let openapi = openapi()
        .to_json()
        .expect("the OpenAPI document encodes as JSON");
    let definition_limits = api
        .borrow()
        .as_ref()
        .map_or_else(DefinitionLimits::default, Api::definition_limits);
    let auth = Arc::new(auth);
    let state = HttpState {
        api,
        definition_limits,
        nats,
        shutdown,
        body_limit,
        body_timeout,
        openapi: Bytes::from(openapi),
        auth: auth.clone(),
    };
    routed(&auth)
        .merge(console::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// A router with every route of [`routes`], each under the method and
/// path the table gives and behind a [`Guard`] of its role, waiting for
/// its state.
fn routed(auth: &Arc<Auth>) -> Router<HttpState> {
    routes().into_iter().fold(Router::new(), |router, route| {
        let filter = MethodFilter::try_from(route.method.clone())
            .unwrap_or_else(|e| panic!("route {} {}: {e}", route.method, route.path));
        let mut handler = (route.handler)(filter);
        if let Some(needs) = route.role {
            let guard = Guard {
                auth: auth.clone(),
                needs,
            };
            handler = handler.route_layer(middleware::from_fn_with_state(guard, authorize));
        }
        router.route(route.path, handler)
    })
}

/// Who may call the HTTP API: the bearer tokens, and the console's
/// sessions opened with them.
#[derive(Default)]
struct Auth {
    /// The configured tokens; none leaves every route open.
    tokens: Tokens,
    /// The console's sessions ([`session`]).
    sessions: Sessions,
    /// Whether the listener speaks HTTPS (the session cookie is `Secure`).
    secure: bool,
}

impl Auth {
    /// Who sent a request with `headers`, when it may call a route of
    /// `method` that `needs` a role; `None` when no tokens are configured.
    ///
    /// A bearer token, when the request has an `Authorization` header;
    /// otherwise the console's session cookie, whose requests that change
    /// something must also carry the session's CSRF value
    /// ([`session::CSRF_HEADER`]).
    fn caller(
        &self,
        headers: &HeaderMap,
        method: &Method,
        needs: Role,
    ) -> Result<Option<Caller>, Refusal> {
        if !self.tokens.enabled() {
            return Ok(None);
        }
        if let Some(authorization) = headers.get(header::AUTHORIZATION) {
            return self
                .tokens
                .check(Some(authorization.to_str().unwrap_or_default()), needs);
        }
        let cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let id = session::cookie_value(cookies).ok_or(Refusal::Missing)?;
        let session = self.sessions.get(id).ok_or(Refusal::Session)?;
        let csrf = headers
            .get(session::CSRF_HEADER)
            .and_then(|v| v.to_str().ok());
        if !method.is_safe() && !session.csrf_matches(csrf) {
            return Err(Refusal::Csrf);
        }
        if session.caller.role < needs {
            return Err(Refusal::Forbidden {
                caller: session.caller,
                needs,
            });
        }
        Ok(Some(session.caller))
    }
}

/// What a route's guard knows: who may call, and the role the route needs.
#[derive(Clone)]
struct Guard {
    auth: Arc<Auth>,
    needs: Role,
}

/// Lets a request through to its route when its bearer token (or console
/// session) has the route's role, or no tokens are configured, and logs
/// who made a request that changes something; refuses it otherwise, before
/// its body is read.
async fn authorize(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    match guard.auth.caller(request.headers(), &method, guard.needs) {
        Ok(None) => next.run(request).await,
        Ok(Some(Caller { name, role })) => {
            let response = next.run(request).await;
            if !method.is_safe() {
                tracing::info!(
                    token = %name,
                    %role,
                    %method,
                    path,
                    status = response.status().as_u16(),
                    "http request"
                );
            }
            response
        }
        Err(refusal) => refuse_caller(&refusal, &method, &path),
    }
}

/// The answer to a request its token may not make: 401 with
/// `WWW-Authenticate: Bearer` (RFC 6750) or 403; counted by reason.
fn refuse_caller(refusal: &Refusal, method: &Method, path: &str) -> Response {
    crate::metrics::http_auth_refused(refusal.reason());
    let (code, message, challenge) = match refusal {
        Refusal::Missing => (
            ErrorCode::Unauthenticated,
            format!(
                "{method} {path} needs a bearer token (`Authorization: Bearer <token>`); `jetsaga config new-token` makes one"
            ),
            "Bearer realm=\"jetsaga\"",
        ),
        Refusal::Malformed => (
            ErrorCode::Unauthenticated,
            "the Authorization header is not `Bearer <token>`".to_string(),
            "Bearer realm=\"jetsaga\", error=\"invalid_request\"",
        ),
        Refusal::Unknown => (
            ErrorCode::Unauthenticated,
            "the bearer token is none of the engine's http_tokens".to_string(),
            "Bearer realm=\"jetsaga\", error=\"invalid_token\"",
        ),
        Refusal::Session => (
            ErrorCode::Unauthenticated,
            "the console session is over (it expired, was logged out, or the engine restarted); log in again".to_string(),
            "Bearer realm=\"jetsaga\", error=\"invalid_token\"",
        ),
        Refusal::Csrf => (
            ErrorCode::Forbidden,
            format!(
                "{method} {path} with a console session cookie needs the session's `X-Jetsaga-Csrf` header; a request from another site cannot have it"
            ),
            "",
        ),
        Refusal::Forbidden { caller, needs } => (
            ErrorCode::Forbidden,
            format!(
                "token {} has role {}; {method} {path} needs {needs} or above",
                caller.name, caller.role
            ),
            "",
        ),
    };
    let mut response = HttpError::new(code, message).into_response();
    if !challenge.is_empty() {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    response
}

/// What bounds the HTTP API's connections (`http_*` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a connection may take to send a request's headers, counted
    /// from when it opens or its previous answer was sent; then it is
    /// closed. This also closes idle keep-alive connections.
    pub header_timeout: Duration,
    /// How long a handler waits for a request body in full before it
    /// answers 408 `E-REQUEST-TIMEOUT`.
    pub body_timeout: Duration,
    /// Most connections open at once; more are answered 503
    /// `E-TOO-MANY-CONNECTIONS` and closed, probes excepted ([`overflow`]).
    pub max_connections: usize,
}

impl Limits {
    /// The limits the configuration sets.
    pub fn of(config: &crate::config::Config) -> Limits {
        Limits {
            header_timeout: config.http_header_timeout,
            body_timeout: config.http_body_timeout,
            max_connections: config.http_max_connections,
        }
    }
}

/// Who may call the HTTP API and how connections are protected
/// (`http_tokens`, `http_tls_*` in the configuration).
#[derive(Clone, Default)]
pub struct Security {
    /// The bearer tokens; none leaves every route open.
    pub tokens: Tokens,
    /// TLS on every connection, when set.
    pub tls: Option<TlsAcceptor>,
}

impl Security {
    /// What the configuration sets, its certificate and key read now.
    pub fn of(config: &crate::config::Config) -> Result<Security, super::https::TlsError> {
        let tls = match (&config.http_tls_cert, &config.http_tls_key) {
            (Some(cert), Some(key)) => Some(super::https::acceptor(cert, key)?),
            _ => None,
        };
        Ok(Security {
            tokens: Tokens::new(&config.http_tokens),
            tls,
        })
    }
}

/// Serves the HTTP API on `listener` until `shutdown`, then lets requests
/// in flight finish (at most [`DRAIN_TIMEOUT`]) and returns.
///
/// Each connection is served by hyper's HTTP/1 connection with a header
/// read timeout, after a TLS handshake (bounded by the same timeout) when
/// `security.tls` is set; a semaphore of `limits.max_connections` permits
/// bounds how many are open, and a connection that finds none is served
/// only if it is a probe of `/health` or `/ready`, and refused otherwise
/// ([`overflow`]).
pub async fn serve(
    listener: TcpListener,
    api: Api,
    nats: async_nats::Client,
    max_payload: usize,
    limits: Limits,
    security: Security,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (gate, api) = watch::channel(Some(api));
    let app = router(
        api,
        nats,
        max_payload,
        limits.body_timeout,
        Auth {
            secure: security.tls.is_some(),
            tokens: security.tokens,
            sessions: Sessions::default(),
        },
        shutdown.clone(),
    );
    let tls = security.tls;
    let service = TowerToHyperService::new(app);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut once = http1.clone();
    once.keep_alive(false);
    let overflow = overflow::Overflow {
        http1: once,
        service: service.clone(),
        shutdown: shutdown.clone(),
        probes: Arc::new(Semaphore::new(overflow::PROBE_CONNECTIONS)),
        max_connections: limits.max_connections,
    };
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: give the
                    // connections open a moment to end.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let (tls, overflow) = (tls.clone(), overflow.clone());
            connections.spawn(async move {
                match tls {
                    None => overflow.handle(stream).await,
                    Some(tls) => {
                        let handshake =
                            connection::handshake(&tls, stream, overflow::REFUSAL_TIMEOUT);
                        if let Some(stream) = handshake.await {
                            overflow.handle(stream).await;
                        }
                    }
                }
            });
            continue;
        };
        let (http1, service, shutdown, tls) = (
            http1.clone(),
            service.clone(),
            shutdown.clone(),
            tls.clone(),
        );
        connections.spawn(async move {
            match tls {
                None => connection::serve(&http1, stream, service, shutdown).await,
                Some(tls) => {
                    let handshake = connection::handshake(&tls, stream, limits.header_timeout);
                    if let Some(stream) = handshake.await {
                        connection::serve(&http1, stream, service, shutdown).await;
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "HTTP requests still open after the drain timeout; closing");
    }
    // Whatever connection lingers, it no longer holds the partition.
    gate.send_replace(None);
    Ok(())
}

/// How long the accept loop pauses after an accept error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// The HTTP status of an error code ([`ErrorCode::http_status`]); 500 for
/// a code no [`ErrorCode`] has.
pub fn status_of(code: &str) -> StatusCode {
    code.parse::<ErrorCode>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c.http_status()).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorInfo,
}

/// An error: the `error` of the NATS API's envelope, plus the problems of
/// a definitions file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorInfo {
    /// Stable code (docs/ERRORS.md); it decides the HTTP status.
    pub code: String,
    /// What happened and what to do, for people.
    pub message: String,
    /// For `E-INVALID-DEFINITION`: every problem found, each with its `E-DEF-*` code.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Problem>,
}

/// One problem of a definitions file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Its `E-DEF-*` code.
    pub code: String,
    /// The full message, naming the saga, step and field.
    pub message: String,
    /// The saga it is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga: Option<String>,
    /// The step it is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The file-level retry policy it is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<String>,
    /// The field, as a dotted path within the saga, step or policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Line in the body (syntax errors), from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// Column in the body (syntax errors), from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
}

impl From<&DefinitionError> for Problem {
    fn from(e: &DefinitionError) -> Self {
        let place = e.place();
        let (line, column) = match e {
            DefinitionError::Parse { line, column, .. } => (*line, *column),
            _ => (None, None),
        };
        Problem {
            code: e.code().to_string(),
            message: e.to_string(),
            saga: place.and_then(|p| p.saga.clone()),
            step: place.and_then(|p| p.step.clone()),
            retry_policy: place.and_then(|p| p.policy.clone()),
            field: place.and_then(|p| p.field.clone()),
            line,
            column,
        }
    }
}

/// An error answer; its status follows its code ([`status_of`]).
#[derive(Debug, Clone, PartialEq)]
struct HttpError(ErrorInfo);

impl HttpError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HttpError(ErrorInfo {
            code: code.as_str().to_string(),
            message: message.into(),
            details: Vec::new(),
        })
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    fn invalid_definitions(e: &DefinitionError) -> Self {
        HttpError(ErrorInfo {
            code: ErrorCode::InvalidDefinition.as_str().to_string(),
            message: e.to_string(),
            details: e.errors().into_iter().map(Problem::from).collect(),
        })
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(ErrorInfo {
            code: e.code,
            message: e.message,
            details: Vec::new(),
        })
    }
}

impl HttpError {
    /// The answer, without logging it as a refused request.
    fn quiet(self) -> Response {
        // What is left of a body not read in full cannot be told from the
        // next request: the connection ends with this answer.
        let unread = [ErrorCode::RequestTimeout, ErrorCode::PayloadTooLarge];
        let close = unread
            .map(ErrorCode::as_str)
            .contains(&self.0.code.as_str());
        let mut response = json(status_of(&self.0.code), &ErrorBody { error: self.0 });
        if close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl IntoResponse for HttpError {
    /// The answer; refused requests are logged and counted like the NATS
    /// API's (`rejected: ...`, `source="http"`), unknown ids and routes not.
    fn into_response(self) -> Response {
        let quiet = [ErrorCode::NotFound, ErrorCode::MethodNotAllowed];
        if !quiet.map(ErrorCode::as_str).contains(&self.0.code.as_str()) {
            crate::metrics::reject("http", &self.0.code, &self.0.message);
        }
        self.quiet()
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            serde_json::json!({"error": {"code": ErrorCode::Internal, "message": format!("cannot encode the answer: {e}")}})
                .to_string(),
        )
            .into_response(),
    }
}

async fn no_route(method: Method, uri: Uri) -> HttpError {
    HttpError::new(
        ErrorCode::NotFound,
        format!(
            "no route {method} {}; the routes are listed in /openapi.json",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> HttpError {
    HttpError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} does not take {method}; see /openapi.json (the Allow header lists what it takes)",
            uri.path()
        ),
    )
}

// ---------------------------------------------------------------------------
// Extractors: every failure answers in the API's JSON error shape
// ---------------------------------------------------------------------------

/// The media type of a `Content-Type` header, lowercased, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

fn is_json(media_type: &str) -> bool {
    media_type == "application/json"
        || (media_type.starts_with("application/") && media_type.ends_with("+json"))
}

async fn body_bytes(req: Request, state: &HttpState) -> Result<Bytes, HttpError> {
    let too_large = || {
        HttpError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the request body is over the engine's limit of {} bytes (max_payload plus {BODY_HEADROOM} bytes); pass a reference to large data instead",
                state.body_limit
            ),
        )
    };
    // A declared length over the limit is refused before any body is read.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.body_limit as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(state.body_timeout, Bytes::from_request(req, state));
    let Ok(read) = read.await else {
        return Err(HttpError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} (http_body_timeout); send it at once",
                humantime::format_duration(state.body_timeout)
            ),
        ));
    };
    read.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            HttpError::bad_request(format!(
                "cannot read the request body: {}",
                rejection.body_text()
            ))
        }
    })
}

/// A JSON request body decoded into `T`. An empty body reads as `{}`.
struct JsonBody<T>(T);

impl<T> FromRequest<HttpState> for JsonBody<T>
where
    T: for<'de> Deserialize<'de> + Send,
{
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &HttpState) -> Result<Self, HttpError> {
        if !media_type(req.headers()).is_some_and(|m| is_json(&m)) {
            return Err(HttpError::new(
                ErrorCode::UnsupportedMediaType,
                "send the request body as JSON, with `Content-Type: application/json`",
            ));
        }
        let bytes = body_bytes(req, state).await?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| HttpError::bad_request(format!("malformed JSON body: {e}")))
    }
}

/// An optional JSON request body decoded into `T`: no body (or one of
/// whitespace only) is `T::default()` whatever the `Content-Type`; a body
/// must be JSON.
struct OptionalJsonBody<T>(T);

impl<T> FromRequest<HttpState> for OptionalJsonBody<T>
where
    T: for<'de> Deserialize<'de> + Default + Send,
{
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &HttpState) -> Result<Self, HttpError> {
        let json = media_type(req.headers()).is_some_and(|m| is_json(&m));
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        if !json {
            return Err(HttpError::new(
                ErrorCode::UnsupportedMediaType,
                "send the request body as JSON, with `Content-Type: application/json`",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(OptionalJsonBody)
            .map_err(|e| HttpError::bad_request(format!("malformed JSON body: {e}")))
    }
}

/// A definitions file in the request body, YAML or JSON as its
/// `Content-Type` says.
struct DefinitionsBody {
    /// The text.
    text: String,
    /// Its syntax.
    format: Format,
}

impl FromRequest<HttpState> for DefinitionsBody {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &HttpState) -> Result<Self, HttpError> {
        let format = match media_type(req.headers()).as_deref() {
            Some("application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml") => {
                Format::Yaml
            }
            Some(m) if is_json(m) => Format::Json,
            _ => {
                return Err(HttpError::new(
                    ErrorCode::UnsupportedMediaType,
                    "send a definitions file with `Content-Type: application/yaml` or `application/json`",
                ));
            }
        };
        let bytes = body_bytes(req, state).await?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|e| HttpError::bad_request(format!("the request body is not UTF-8: {e}")))?;
        Ok(DefinitionsBody { text, format })
    }
}

// ---------------------------------------------------------------------------
// Request and response bodies
// ---------------------------------------------------------------------------

/// Query of `GET /v1/sagas`. Empty values count as absent.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only sagas in this state.
    #[param(value_type = Option<SagaState>)]
    pub state: Option<String>,
    /// Only sagas of this definition.
    pub saga: Option<String>,
    /// At most this many (1 to 1000, default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// Only sagas created before this saga id: the `next` of the previous page.
    pub before: Option<String>,
    /// Only sagas created at or after this time: RFC 3339 in UTC
    /// (`2026-05-01T12:00:00Z`) or milliseconds since the Unix epoch.
    pub created_after: Option<String>,
    /// Only sagas created before this time: RFC 3339 in UTC or milliseconds.
    pub created_before: Option<String>,
}

impl ListParams {
    fn into_request(self) -> Result<ListRequest, HttpError> {
        let some = |v: Option<String>| v.filter(|v| !v.is_empty());
        let limit = match some(self.limit) {
            None => DEFAULT_LIST_LIMIT,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => n,
                _ => {
                    return Err(HttpError::bad_request(format!(
                        "limit {v:?} is not a number from 1 to {MAX_LIST_LIMIT}"
                    )));
                }
            },
        };
        let state = some(self.state)
            .map(|v| v.parse::<SagaState>())
            .transpose()
            .map_err(|e| HttpError::bad_request(e.to_string()))?;
        Ok(ListRequest {
            state,
            name: some(self.saga),
            before: some(self.before),
            limit,
            created_after: some(self.created_after)
                .map(|v| parse_time("created_after", &v))
                .transpose()?,
            created_before: some(self.created_before)
                .map(|v| parse_time("created_before", &v))
                .transpose()?,
        })
    }
}

/// A time in a query: milliseconds since the Unix epoch, or RFC 3339 in UTC.
fn parse_time(name: &str, value: &str) -> Result<Millis, HttpError> {
    if let Ok(ms) = value.parse::<Millis>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(value)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as Millis)
        .ok_or_else(|| {
            HttpError::bad_request(format!(
                "{name} {value:?} is not a time: use RFC 3339 in UTC (2026-05-01T12:00:00Z) or milliseconds since the Unix epoch"
            ))
        })
}

/// Liveness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Readiness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// `ready`.
    pub status: String,
    /// The NATS connection: `connected`.
    pub nats: String,
    /// The store: `open`.
    pub store: String,
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

/// Start a saga.
///
/// With an `Idempotency-Key` (header, or `idempotency_key` in the body), the
/// same key always answers the same saga, whichever door (HTTP, NATS, CLI,
/// durable start) used it first: 201 when this request created it, 200 when
/// it already existed. The answer comes once the start is durable.
#[utoipa::path(
    post,
    path = "/v1/sagas",
    tag = "sagas",
    params(("Idempotency-Key" = Option<String>, Header, description = "The same key always gives the same saga (1 to 256 bytes)")),
    request_body(content = StartRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Started", body = StartReply,
            headers(("Location" = String, description = "Path of the saga"))),
        (status = 200, description = "The idempotency key's existing saga", body = StartReply,
            headers(("Location" = String, description = "Path of the saga"))),
        (status = 400, description = "E-BAD-REQUEST: malformed body, no saga named, bad key", body = ErrorBody),
        (status = 409, description = "E-IDEMPOTENCY-CONFLICT: the key started a saga of another definition; E-SAGA-DISABLED: the definition's policy disables it (in this engine's environment)", body = ErrorBody),
        (status = 413, description = "E-PAYLOAD-TOO-LARGE: input over max_payload", body = ErrorBody),
        (status = 415, description = "E-UNSUPPORTED-MEDIA-TYPE: body not sent as JSON", body = ErrorBody),
        (status = 422, description = "E-UNKNOWN-SAGA: no such definition", body = ErrorBody),
        (status = 503, description = "E-UNAVAILABLE: the engine is shutting down", body = ErrorBody),
        (status = 500, description = "E-INTERNAL", body = ErrorBody),
    )
)]
async fn start_saga(
    State(state): State<HttpState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Result<Response, HttpError> {
    let api = state.api()?;
    let mut request = start_request(body)?;
    if let Some(value) = headers.get(HEADER_START_KEY) {
        let key = value.to_str().map_err(|_| {
            HttpError::bad_request("the Idempotency-Key header must be visible ASCII")
        })?;
        request.idempotency_key = Some(key.to_string());
    }
    let traceparent = headers
        .get(crate::trace::HEADER_TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    let reply = api.start_traced(request, traceparent).await?;
    let status = if reply.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = HeaderValue::from_str(&format!("/v1/sagas/{}", reply.saga_id))
        .map_err(|e| HttpError::new(ErrorCode::Internal, format!("bad saga id: {e}")))?;
    let mut response = json(status, &reply);
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// A start request's body. Unlike NATS and durable starts, this door
/// refuses unknown fields and wants `saga`: a typo here would otherwise
/// start a saga without the input or key that was meant.
fn start_request(body: serde_json::Map<String, Value>) -> Result<StartRequest, HttpError> {
    let malformed = |e: String| HttpError::bad_request(format!("malformed JSON body: {e}"));
    if let Some(unknown) = body
        .keys()
        .find(|k| !StartRequest::FIELDS.contains(&k.as_str()))
    {
        let expected = StartRequest::FIELDS.map(|f| format!("`{f}`")).join(", ");
        return Err(malformed(format!(
            "unknown field `{unknown}`, expected one of {expected}"
        )));
    }
    if !body.contains_key("saga") {
        return Err(malformed("missing field `saga`".into()));
    }
    serde_json::from_value(Value::Object(body)).map_err(|e| malformed(e.to_string()))
}

/// List sagas, newest first.
///
/// Filters combine. Pass the answer's `next` as `before` for the next page;
/// no `next` means the last page. A time range is applied to the sagas read
/// from the store (which indexes by id, state and name), bounded by the time
/// in the saga ids.
#[utoipa::path(
    get,
    path = "/v1/sagas",
    tag = "sagas",
    params(ListParams),
    responses(
        (status = 200, description = "A page of sagas", body = SagaPage),
        (status = 400, description = "E-BAD-REQUEST: unknown state, bad limit or time, unknown parameter", body = ErrorBody),
        (status = 500, description = "E-INTERNAL", body = ErrorBody),
    )
)]
async fn list_sagas(
    State(state): State<HttpState>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(params) = query.map_err(|e| {
        HttpError::bad_request(format!(
            "{}; known parameters: state, saga, limit, before, created_after, created_before",
            e.body_text()
        ))
    })?;
    let request = params.into_request()?;
    let page = state.api()?.list(&request).await?;
    Ok(json(StatusCode::OK, &page))
}

/// One saga: its state, every step's state and attempt history, and the
/// definition version it runs.
#[utoipa::path(
    get,
    path = "/v1/sagas/{id}",
    tag = "sagas",
    params(("id" = String, Path, description = "Saga id")),
    responses(
        (status = 200, description = "The saga", body = SagaDetail),
        (status = 404, description = "E-NOT-FOUND: no saga with this id", body = ErrorBody),
        (status = 500, description = "E-INTERNAL", body = ErrorBody),
    )
)]
async fn get_saga(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, HttpError> {
    let id = saga_id(path)?;
    let detail = state.api()?.get(&id).await?;
    Ok(json(StatusCode::OK, &detail))
}

/// Cancel a saga: stop it (`compensate: false`, state `cancelled`) or roll
/// back what completed (`compensate: true`). Answers the saga once the
/// cancel is durable.
#[utoipa::path(
    post,
    path = "/v1/sagas/{id}/cancel",
    tag = "sagas",
    params(("id" = String, Path, description = "Saga id")),
    request_body(content = CancelSagaRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The saga after the cancel", body = SagaDetail),
        (status = 400, description = "E-BAD-REQUEST: malformed body", body = ErrorBody),
        (status = 404, description = "E-NOT-FOUND: no saga with this id", body = ErrorBody),
        (status = 409, description = "E-NOT-APPLICABLE: the saga is finished, or already compensating", body = ErrorBody),
        (status = 415, description = "E-UNSUPPORTED-MEDIA-TYPE: body not sent as JSON", body = ErrorBody),
        (status = 503, description = "E-UNAVAILABLE: the engine is shutting down", body = ErrorBody),
        (status = 500, description = "E-INTERNAL", body = ErrorBody),
    )
)]
async fn cancel_saga(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<CancelSagaRequest>,
) -> Result<Response, HttpError> {
    let id = saga_id(path)?;
    let detail = state
        .api()?
        .cancel(CancelRequest {
            id,
            compensate: body.compensate,
            reason: body.reason,
        })
        .await?;
    Ok(json(StatusCode::OK, &detail))
}

/// Retry a finished saga once its cause is fixed: a `partially_compensated`
/// saga resumes its rollback (failed compensations run again, an action
/// whose outcome was unknown is dispatched again under its idempotency
/// key); a `failed` or `compensated` one runs forward again from the start
/// under new idempotency keys. Answers the saga once the retry is durable.
#[utoipa::path(
    post,
    path = "/v1/sagas/{id}/retry",
    tag = "sagas",
    params(("id" = String, Path, description = "Saga id")),
    request_body(content = RetrySagaRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The saga after the retry", body = SagaDetail),
        (status = 400, description = "E-BAD-REQUEST: malformed body", body = ErrorBody),
        (status = 404, description = "E-NOT-FOUND: no saga with this id", body = ErrorBody),
        (status = 409, description = "E-NOT-APPLICABLE: the saga is not failed, compensated or partially_compensated (with compensation_only: not partially_compensated)", body = ErrorBody),
        (status = 415, description = "E-UNSUPPORTED-MEDIA-TYPE: body not sent as JSON", body = ErrorBody),
        (status = 503, description = "E-UNAVAILABLE: the engine is shutting down", body = ErrorBody),
        (status = 500, description = "E-INTERNAL", body = ErrorBody),
    )
)]
async fn retry_saga(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<RetrySagaRequest>,
) -> Result<Response, HttpError> {
    let id = saga_id(path)?;
    let detail = state
        .api()?
        .retry(RetryRequest {
            id,
            compensation_only: body.compensation_only,
        })
        .await?;
    Ok(json(StatusCode::OK, &detail))
}

/// Delete a finished saga: its record, its timers and the binding of its
/// idempotency key (which may then start a new saga). Answers once the
/// deletion is durable.
#[utoipa::path(
    delete,
    path = "/v1/sagas/{id}",
    tag = "sagas",
    params(("id" = String, Path, description = "Saga id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "E-BAD-REQUEST: bad saga id", body = ErrorBody),
        (status = 404, description = "E-NOT-FOUND: no saga with this id", body = ErrorBody),
        (status = 409, description = "E-NOT-APPLICABLE: the saga is not finished; cancel it first", body = ErrorBody),
        (status = 503, description = "E-UNAVAILABLE: the engine is shutting down", body = ErrorBody),
        (status = 500, description = "E-INTERNAL", body = ErrorBody),
    )
)]
async fn delete_saga(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, HttpError> {
    let id = saga_id(path)?;
    state.api()?.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The saga started with this idempotency key (the `Idempotency-Key` of
/// `POST /v1/sagas`, the key of a durable start). Only reads: it never
/// starts a saga, not even for a durable start not yet consumed.
#[utoipa::path(
    get,
    path = "/v1/sagas/by-key/{key}",
    tag = "sagas",
    params(("key" = String, Path, description = "Idempotency key of the saga's start")),
    responses(
        (status = 200, description = "The saga", body = SagaDetail),
        (status = 404, description = "E-NOT-FOUND: no saga with this idempotency key", body = ErrorBody),
        (status = 500, description = "E-INTERNAL", body = ErrorBody),
    )
)]
async fn get_saga_by_key(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, HttpError> {
    let key = path
        .map(|Path(key)| key)
        .map_err(|e| HttpError::bad_request(format!("bad idempotency key: {}", e.body_text())))?;
    let detail = state.api()?.get_by_key(&key).await?;
    Ok(json(StatusCode::OK, &detail))
}

/// Query of `GET /v1/stats`. Empty values count as absent.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsParams {
    /// Only sagas of this definition.
    pub saga: Option<String>,
    /// Only sagas created within this long before now: a duration
    /// (`90s`, `15m`, `24h`, `7d`) or milliseconds.
    pub since: Option<String>,
}

impl StatsParams {
    fn into_request(self) -> Result<StatsRequest, HttpError> {
        let since = match self.since.filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(parse_since(&v).ok_or_else(|| {
                HttpError::bad_request(format!(
                    "since {v:?} is not a duration (such as 15m, 24h, 7d) or milliseconds"
                ))
            })?),
        };
        Ok(StatsRequest {
            saga: self.saga.filter(|v| !v.is_empty()),
            since,
        })
    }
}

/// A `since` of `GET /v1/stats`: milliseconds, or a duration such as `24h`.
fn parse_since(v: &str) -> Option<u64> {
    v.parse::<u64>().ok().or_else(|| {
        humantime::parse_duration(v)
            .ok()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

/// Counts per state, success rate (`completed` of the finished), compensation
/// rate (`compensated` and `partially_compensated` of the finished), and the
/// average, p50, p95 and longest duration of the finished sagas: per
/// definition and overall, over the sagas the store keeps. One scan of the
/// stored sagas; `since` bounds it to the sagas created in the window.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "sagas",
    params(StatsParams),
    responses(
        (status = 200, description = "The statistics", body = SagaStats),
        (status = 400, description = "E-BAD-REQUEST: bad `since`, unknown parameter", body = ErrorBody),
        (status = 500, description = "E-INTERNAL", body = ErrorBody),
    )
)]
async fn saga_stats(
    State(state): State<HttpState>,
    query: Result<Query<StatsParams>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(params) = query.map_err(|e| {
        HttpError::bad_request(format!("{}; known parameters: saga, since", e.body_text()))
    })?;
    let stats = state.api()?.stats(&params.into_request()?).await?;
    Ok(json(StatusCode::OK, &stats))
}

fn saga_id(path: Result<Path<String>, PathRejection>) -> Result<String, HttpError> {
    path.map(|Path(id)| id)
        .map_err(|e| HttpError::bad_request(format!("bad saga id: {}", e.body_text())))
}

/// The current version of every definition.
#[utoipa::path(
    get,
    path = "/v1/definitions",
    tag = "definitions",
    responses(
        (status = 200, description = "The definitions", body = DefinitionList),
        (status = 500, description = "E-INTERNAL", body = ErrorBody),
    )
)]
async fn list_definitions(State(state): State<HttpState>) -> Result<Response, HttpError> {
    let definitions = state.api()?.definitions().await?;
    Ok(json(StatusCode::OK, &DefinitionList { definitions }))
}

/// One stored version of a definition (versions run from 1 to the
/// current one, which `GET /v1/definitions` shows). A version never
/// changes once stored.
#[utoipa::path(
    get,
    path = "/v1/definitions/{name}/versions/{version}",
    tag = "definitions",
    params(
        ("name" = String, Path, description = "Definition name"),
        ("version" = u32, Path, description = "Version, from 1"),
    ),
    responses(
        (status = 200, description = "The definition version", body = SagaDefinition),
        (status = 400, description = "E-BAD-REQUEST: the version is not a number", body = ErrorBody),
        (status = 404, description = "E-NOT-FOUND: no such definition or version", body = ErrorBody),
        (status = 500, description = "E-INTERNAL", body = ErrorBody),
    )
)]
async fn get_definition_version(
    State(state): State<HttpState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, HttpError> {
    let (name, version) = path
        .map(|Path(p)| p)
        .map_err(|e| HttpError::bad_request(format!("bad path: {}", e.body_text())))?;
    let version = version.parse::<u32>().map_err(|_| {
        HttpError::bad_request(format!("version {version:?} is not a number from 1"))
    })?;
    let definition = state.api()?.definition_version(&name, version)?;
    Ok(json(StatusCode::OK, &definition))
}

/// Apply a definitions file: each saga whose definition changed gets a new
/// version; running sagas keep theirs. Nothing is stored when the file has
/// a problem.
#[utoipa::path(
    post,
    path = "/v1/definitions",
    tag = "definitions",
    request_body(description = "A definitions file, as `jetsaga def apply` reads (README: A definition)",
        content((String = "application/yaml"), (String = "application/json"))),
    responses(
        (status = 200, description = "Applied", body = AppliedDefinitions),
        (status = 400, description = "E-BAD-REQUEST: the body is not UTF-8", body = ErrorBody),
        (status = 413, description = "E-PAYLOAD-TOO-LARGE: body over the limit", body = ErrorBody),
        (status = 415, description = "E-UNSUPPORTED-MEDIA-TYPE: neither YAML nor JSON", body = ErrorBody),
        (status = 422, description = "E-INVALID-DEFINITION: every problem in `details`, each with its E-DEF-* code", body = ErrorBody),
        (status = 500, description = "E-INTERNAL", body = ErrorBody),
    )
)]
async fn apply_definitions(
    State(state): State<HttpState>,
    body: DefinitionsBody,
) -> Result<Response, HttpError> {
    let file = parse_definitions(&body, &state.definition_limits)?;
    let applied = state.api()?.apply(&file.sagas, &file.services).await?;
    Ok(json(StatusCode::OK, &AppliedDefinitions { applied }))
}

// ----- service breakers and in-flight limits (`jetsaga_core::admission`) -----

/// Every service with a policy (`services:` in a definitions file): its
/// circuit breaker's state, its held and in-flight tasks, its limits.
#[utoipa::path(
    get,
    path = "/v1/breakers",
    tag = "services",
    responses(
        (status = 200, description = "The services", body = BreakerList),
        (status = 503, description = "E-UNAVAILABLE: the engine is shutting down", body = ErrorBody),
    )
)]
async fn list_breakers(State(state): State<HttpState>) -> Result<Response, HttpError> {
    let services = state.api()?.breakers().await?;
    Ok(json(StatusCode::OK, &BreakerList { services }))
}

/// One service's circuit breaker state, held and in-flight tasks, limits.
#[utoipa::path(
    get,
    path = "/v1/breakers/{service}",
    tag = "services",
    params(("service" = String, Path, description = "Service name")),
    responses(
        (status = 200, description = "The service", body = ServiceStatus),
        (status = 404, description = "E-NOT-FOUND: no policy names this service", body = ErrorBody),
        (status = 503, description = "E-UNAVAILABLE: the engine is shutting down", body = ErrorBody),
    )
)]
async fn get_breaker(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, HttpError> {
    let service = service_name(path)?;
    Ok(json(StatusCode::OK, &state.api()?.breaker(&service).await?))
}

/// Close a service's circuit breaker; its held tasks are released in order
/// (as its in-flight limit allows). With a body `{"state": "open"}` the
/// breaker is forced open instead (its tasks are held from now; it
/// half-opens after its `open_timeout`); `{"state": "closed"}` forces it
/// closed. No body is a plain reset. Answers once that is durable.
#[utoipa::path(
    post,
    path = "/v1/breakers/{service}/reset",
    tag = "services",
    params(("service" = String, Path, description = "Service name")),
    request_body(content = Option<BreakerResetBody>, content_type = "application/json",
        description = "Optional: the state to force; no body closes the breaker"),
    responses(
        (status = 200, description = "Reset: the service as it is now", body = ServiceStatus),
        (status = 400, description = "E-BAD-REQUEST: a malformed body", body = ErrorBody),
        (status = 415, description = "E-UNSUPPORTED-MEDIA-TYPE: a body that is not JSON", body = ErrorBody),
        (status = 404, description = "E-NOT-FOUND: no policy names this service", body = ErrorBody),
        (status = 409, description = "E-NOT-APPLICABLE: the service has no circuit breaker", body = ErrorBody),
        (status = 503, description = "E-UNAVAILABLE: the engine is shutting down", body = ErrorBody),
    )
)]
async fn reset_breaker(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
    OptionalJsonBody(body): OptionalJsonBody<BreakerResetBody>,
) -> Result<Response, HttpError> {
    let service = service_name(path)?;
    Ok(json(
        StatusCode::OK,
        &state.api()?.reset_breaker(&service, body.state).await?,
    ))
}

/// Every service a current definition has a step on or a policy names:
/// the tasks in its work queue, and its breaker, held and in-flight tasks
/// when a policy names it.
#[utoipa::path(
    get,
    path = "/v1/services",
    tag = "services",
    responses(
        (status = 200, description = "The services, by name", body = ServiceList),
        (status = 503, description = "E-UNAVAILABLE: the engine is shutting down", body = ErrorBody),
        (status = 500, description = "E-INTERNAL", body = ErrorBody),
    )
)]
async fn list_services(State(state): State<HttpState>) -> Result<Response, HttpError> {
    let services = state.api()?.services().await?;
    Ok(json(StatusCode::OK, &ServiceList { services }))
}

/// The engines of the installation and each partition's leader, lease and
/// journal, from what every engine records in NATS (any engine answers).
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "cluster",
    responses(
        (status = 200, description = "The engines and partitions", body = ClusterStatus),
        (status = 503, description = "E-UNAVAILABLE: NATS does not answer", body = ErrorBody),
        (status = 409, description = "E-NOT-APPLICABLE: the engine runs without a cluster", body = ErrorBody),
    )
)]
async fn cluster_status(State(state): State<HttpState>) -> Result<Response, HttpError> {
    Ok(json(StatusCode::OK, &state.api()?.cluster_status().await?))
}

fn service_name(path: Result<Path<String>, PathRejection>) -> Result<String, HttpError> {
    path.map(|Path(s)| s)
        .map_err(|e| HttpError::bad_request(format!("bad service name: {}", e.body_text())))
}

/// Check a definitions file without storing anything.
#[utoipa::path(
    post,
    path = "/v1/definitions/validate",
    tag = "definitions",
    request_body(description = "A definitions file",
        content((String = "application/yaml"), (String = "application/json"))),
    responses(
        (status = 200, description = "Valid: the sagas as the engine would store them", body = DefinitionFile),
        (status = 400, description = "E-BAD-REQUEST: the body is not UTF-8", body = ErrorBody),
        (status = 413, description = "E-PAYLOAD-TOO-LARGE: body over the limit", body = ErrorBody),
        (status = 415, description = "E-UNSUPPORTED-MEDIA-TYPE: neither YAML nor JSON", body = ErrorBody),
        (status = 422, description = "E-INVALID-DEFINITION: every problem in `details`, each with its E-DEF-* code", body = ErrorBody),
    )
)]
async fn validate_definitions(
    State(state): State<HttpState>,
    body: DefinitionsBody,
) -> Result<Response, HttpError> {
    let file = parse_definitions(&body, &state.definition_limits)?;
    Ok(json(StatusCode::OK, &view::definition_file(&file)))
}

fn parse_definitions(
    body: &DefinitionsBody,
    limits: &DefinitionLimits,
) -> Result<jetsaga_core::saga::definition::DefinitionFile, HttpError> {
    Api::validate_definitions_within(&body.text, body.format, limits)
        .map_err(|e| HttpError::invalid_definitions(&e))
}

/// Liveness: 200 while the process serves HTTP.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses((status = 200, description = "Alive", body = Health))
)]
async fn health() -> Response {
    json(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
        },
    )
}

/// Readiness: 200 when the engine's store is readable and its NATS
/// connection is up; 503 saying what is not, otherwise (NATS down, engine
/// draining).
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "E-UNAVAILABLE: not ready; the message says why", body = ErrorBody),
    )
)]
async fn ready(State(state): State<HttpState>) -> Response {
    let mut reasons = Vec::new();
    if state.shutdown.is_cancelled() {
        reasons.push("the engine is shutting down".to_string());
    }
    // Without the service the server has stopped, which shutdown explains.
    if let Ok(api) = state.api()
        && let Err(e) = api.check_store()
    {
        reasons.push(e.message);
    }
    use async_nats::connection::State as Nats;
    match state.nats.connection_state() {
        Nats::Connected => {}
        Nats::Disconnected => {
            reasons.push("the NATS connection is down (reconnecting)".to_string())
        }
        Nats::Pending => reasons.push("the NATS connection is not established yet".to_string()),
    }
    if reasons.is_empty() {
        json(
            StatusCode::OK,
            &Readiness {
                status: "ready".into(),
                nats: "connected".into(),
                store: "open".into(),
            },
        )
    } else {
        // Probes poll this: a 503 is an answer, not a refused request to log.
        HttpError::new(
            ErrorCode::Unavailable,
            format!("not ready: {}", reasons.join("; ")),
        )
        .quiet()
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Value))
)]
async fn openapi_json(State(state): State<HttpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        state.openapi.clone(),
    )
        .into_response()
}

/// Prometheus metrics of the engine (saga_*, engine_*), in the text
/// exposition format; deploy/README.md lists them.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Every metric, Prometheus text format 0.0.4", content_type = "text/plain; version=0.0.4", body = String),
        (status = 503, description = "E-UNAVAILABLE: the program embedding the engine installed a metrics recorder of its own", body = ErrorBody),
    )
)]
async fn prometheus_metrics() -> Response {
    match crate::metrics::render() {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(jetsaga_protocol::telemetry::PROMETHEUS_TEXT_FORMAT),
            )],
            text,
        )
            .into_response(),
        // Scrapers poll this: the answer is not a refused request to log.
        None => HttpError::new(
            ErrorCode::Unavailable,
            "this process exports its metrics through a recorder of its own, not on /metrics",
        )
        .quiet(),
    }
}

// ---------------------------------------------------------------------------
// The OpenAPI document
// ---------------------------------------------------------------------------

#[derive(OpenApi)]
#[openapi(
    info(
        title = "jetsaga engine",
        description = "The HTTP API of the jetsaga saga engine. Errors are `{\"error\": {\"code\", \"message\"}}` with stable codes (docs/ERRORS.md). The same operations are served over NATS (docs/PROTOCOL.md)."
    ),
    paths(
        start_saga,
        list_sagas,
        get_saga,
        get_saga_by_key,
        saga_stats,
        cancel_saga,
        retry_saga,
        delete_saga,
        list_definitions,
        get_definition_version,
        apply_definitions,
        validate_definitions,
        list_breakers,
        get_breaker,
        reset_breaker,
        list_services,
        cluster_status,
        health,
        ready,
        openapi_json,
        prometheus_metrics,
    ),
    components(schemas(SagaStatus, ErrorBody)),
    tags(
        (name = "sagas", description = "Saga instances"),
        (name = "definitions", description = "Saga definitions"),
        (name = "services", description = "Services: queue depth, circuit breakers and in-flight limits"),
        (name = "cluster", description = "Engines and partitions"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
struct ApiDoc;

/// The OpenAPI document of the HTTP API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn document() -> Value {
        serde_json::to_value(openapi()).expect("the document encodes")
    }

    /// (method, path) of every operation in the OpenAPI document.
    fn documented() -> BTreeSet<(String, String)> {
        let doc = document();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in METHODS {
                if item.get(method).is_some() {
                    out.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn the_route_table_and_the_openapi_document_name_the_same_routes() {
        let table = routes();
        let served: BTreeSet<(String, String)> = table
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(served.len(), table.len(), "a route is listed twice");
        let documented = documented();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from the OpenAPI document: {undocumented:?}"
        );
        assert!(
            unserved.is_empty(),
            "documented routes the router does not serve: {unserved:?}"
        );
        // Building the router checks that no two routes overlap.
        let _ = routed(&Arc::default()).merge(console::routes());
    }

    #[test]
    fn documented_error_statuses_are_the_statuses_of_their_codes() {
        let doc = document();
        let mut checked = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in METHODS {
                let Some(responses) = item.get(method).and_then(|op| op["responses"].as_object())
                else {
                    continue;
                };
                for (status, response) in responses {
                    let description = response["description"].as_str().unwrap_or_default();
                    let Some(code) = description
                        .split(':')
                        .next()
                        .filter(|c| c.starts_with("E-"))
                    else {
                        continue;
                    };
                    assert_eq!(
                        status_of(code).as_str(),
                        status,
                        "{method} {path}: {code} is documented under {status}"
                    );
                    if status != "200" {
                        let schema = &response["content"]["application/json"]["schema"]["$ref"];
                        assert_eq!(
                            schema, "#/components/schemas/ErrorBody",
                            "{method} {path} {status} answers an ErrorBody"
                        );
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 20, "only {checked} error responses documented");
    }

    #[test]
    fn the_document_describes_service_breakers() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        for name in [
            "BreakerList",
            "ServiceStatus",
            "BreakerTransition",
            "BreakerResetBody",
            "BreakerConfig",
            "ServicePolicy",
        ] {
            assert!(schemas.get(name).is_some(), "no schema {name}");
        }
        let reset = &doc["paths"]["/v1/breakers/{service}/reset"]["post"]["responses"];
        assert!(
            reset.get("409").is_some(),
            "reset documents E-NOT-APPLICABLE"
        );
    }

    #[test]
    fn the_document_describes_the_saga_detail() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        for name in [
            "SagaDetail",
            "Saga",
            "SagaStatus",
            "StepState",
            "StepStatus",
            "Attempt",
            "AttemptOutcome",
            "SagaDefinition",
            "StepDefinition",
            "RetryPolicy",
            "TaskKind",
            "SagaPage",
            "ErrorBody",
        ] {
            assert!(schemas.get(name).is_some(), "no schema {name}");
        }
        assert_eq!(
            schemas["TaskKind"]["enum"],
            serde_json::json!(["action", "compensation"])
        );
    }

    #[test]
    fn metrics_are_documented_as_prometheus_text() {
        let doc = document();
        let ok = &doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
        let types: Vec<&String> = ok.as_object().expect("content").keys().collect();
        assert_eq!(types, ["text/plain; version=0.0.4"], "{ok}");
        assert!(
            jetsaga_protocol::telemetry::PROMETHEUS_TEXT_FORMAT.starts_with(types[0].as_str()),
            "served as documented"
        );
    }

    #[test]
    fn codes_map_to_statuses() {
        for (code, status) in [
            ("E-BAD-REQUEST", 400),
            ("E-BAD-INPUT", 400),
            ("E-NOT-FOUND", 404),
            ("E-NOT-APPLICABLE", 409),
            ("E-IDEMPOTENCY-CONFLICT", 409),
            ("E-SAGA-DISABLED", 409),
            ("E-PAYLOAD-TOO-LARGE", 413),
            ("E-UNSUPPORTED-MEDIA-TYPE", 415),
            ("E-UNKNOWN-SAGA", 422),
            ("E-INVALID-DEFINITION", 422),
            ("E-DEF-CYCLE", 422),
            ("E-UNAVAILABLE", 503),
            ("E-INTERNAL", 500),
            ("E-SOMETHING-NEW", 500),
        ] {
            assert_eq!(status_of(code).as_u16(), status, "{code}");
        }
    }

    #[test]
    fn content_types_are_read_without_parameters() {
        let mut headers = HeaderMap::new();
        assert_eq!(media_type(&headers), None);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert_eq!(media_type(&headers).as_deref(), Some("application/json"));
        assert!(is_json("application/json"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }

    #[test]
    fn list_queries_are_checked() {
        let params = |f: fn(&mut ListParams)| {
            let mut p = ListParams::default();
            f(&mut p);
            p.into_request()
        };
        let req = params(|_| {}).unwrap();
        assert_eq!(req.limit, DEFAULT_LIST_LIMIT);
        let req = params(|p| {
            p.state = Some(String::new());
            p.saga = Some("order".into());
            p.limit = Some("5".into());
            p.created_after = Some("2026-05-01T12:00:00Z".into());
            p.created_before = Some("1777640400001".into());
        })
        .unwrap();
        assert_eq!(req.state, None, "an empty value is absent");
        assert_eq!(req.name.as_deref(), Some("order"));
        assert_eq!(req.limit, 5);
        assert_eq!(req.created_after, Some(1_777_636_800_000));
        assert_eq!(req.created_before, Some(1_777_640_400_001));
        for bad in ["0", "1001", "ten"] {
            let e = params_limit(bad).unwrap_err();
            assert_eq!(e.0.code, "E-BAD-REQUEST", "{bad}");
        }
        let e = params(|p| p.created_after = Some("yesterday".into())).unwrap_err();
        assert!(e.0.message.contains("created_after"), "{}", e.0.message);
    }

    fn params_limit(limit: &str) -> Result<ListRequest, HttpError> {
        ListParams {
            limit: Some(limit.into()),
            ..ListParams::default()
        }
        .into_request()
    }

    #[test]
    fn definition_problems_carry_their_codes_and_places() {
        let text = "sagas:\n  x:\n    steps:\n      - id: a\n        service: s\n        operation: o\n        depends_on: [nope]\n      - id: a\n        service: s\n        operation: o\n";
        let e = Api::validate_definitions(text, Format::Yaml).unwrap_err();
        let HttpError(info) = HttpError::invalid_definitions(&e);
        assert_eq!(info.code, "E-INVALID-DEFINITION");
        let codes: Vec<&str> = info.details.iter().map(|p| p.code.as_str()).collect();
        assert!(codes.contains(&"E-DEF-UNKNOWN-DEPENDENCY"), "{codes:?}");
        assert!(codes.contains(&"E-DEF-DUPLICATE-STEP"), "{codes:?}");
        assert!(info.details.iter().all(|p| p.saga.as_deref() == Some("x")));
        let e = Api::validate_definitions("sagas: [unclosed", Format::Yaml).unwrap_err();
        let HttpError(info) = HttpError::invalid_definitions(&e);
        assert_eq!(info.details[0].code, "E-DEF-PARSE");
        assert!(info.details[0].line.is_some());
    }
}

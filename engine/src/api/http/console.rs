//! The web console: its pages under `/ui/`, built into the binary (plain
//! HTML, CSS and JavaScript modules from the crate's `console/` folder, no
//! build step), and the calls that log it in and out.
//!
//! | route | does |
//! |---|---|
//! | `GET /ui/` | the console (one page; it reads the JSON API under `/v1`) |
//! | `GET /ui/{asset}` | its script, style sheet and icon |
//! | `GET /ui/session` | who the console is logged in as, and its CSRF value |
//! | `POST /ui/login` | `{"token": "..."}`: opens a session, answered as a cookie |
//! | `POST /ui/logout` | ends the session |
//!
//! The pages and `/ui/session` are open: they hold no data, and the
//! console asks the API for everything it shows, under the role of its
//! session ([`crate::api::session`]). With no `http_tokens` configured
//! the console needs no login and every action is offered.

use super::{HttpError, HttpState, JsonBody, json};
use crate::api::auth::{Caller, Role};
use crate::api::session::{self, CSRF_HEADER, LIFETIME, set_cookie};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use jetsaga_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A file of the console: its name under `/ui/`, media type and bytes.
struct Asset {
    name: &'static str,
    media_type: &'static str,
    body: &'static str,
}

/// Every file of the console, built into the binary.
const ASSETS: [Asset; 4] = [
    Asset {
        name: "index.html",
        media_type: "text/html; charset=utf-8",
        body: include_str!("../../../console/index.html"),
    },
    Asset {
        name: "app.js",
        media_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../console/app.js"),
    },
    Asset {
        name: "style.css",
        media_type: "text/css; charset=utf-8",
        body: include_str!("../../../console/style.css"),
    },
    Asset {
        name: "icon.svg",
        media_type: "image/svg+xml",
        body: include_str!("../../../console/icon.svg"),
    },
];

/// What the console's pages may load and do: only files and calls of this
/// engine, no inline script, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The console's routes, to merge into the API's router.
pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { asset("index.html") }))
        .route("/ui/session", get(current_session))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route(
            "/ui/{asset}",
            get(|Path(name): Path<String>| async move { asset(&name) }),
        )
}

/// A file of the console, or `E-NOT-FOUND`.
fn asset(name: &str) -> Response {
    let Some(file) = ASSETS.iter().find(|a| a.name == name) else {
        return HttpError::new(
            ErrorCode::NotFound,
            format!("the console has no file {name:?}; open /ui/"),
        )
        .into_response();
    };
    let mut response = (StatusCode::OK, file.body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, file.media_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        // The files change with the binary: always ask.
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Who the console is logged in as (`GET /ui/session`, and the answer to
/// a login).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionInfo {
    /// Whether the engine has tokens (else there is no login, and every
    /// action is allowed).
    auth: bool,
    /// The token's name, when logged in.
    name: Option<String>,
    /// The role the console acts with: the token's, `admin` without
    /// tokens, `null` when not logged in.
    role: Option<Role>,
    /// The value to send as `X-Jetsaga-Csrf` with every request that
    /// changes something.
    csrf: Option<String>,
    /// When the session ends (ms since the Unix epoch).
    expires_at: Option<u64>,
}

impl SessionInfo {
    fn of(session: &session::Session) -> SessionInfo {
        SessionInfo {
            auth: true,
            name: Some(session.caller.name.clone()),
            role: Some(session.caller.role),
            csrf: Some(session.csrf.clone()),
            expires_at: Some(session.expires_at),
        }
    }
}

/// The session the request's cookie names, with its id.
fn session_of(state: &HttpState, headers: &HeaderMap) -> Option<(String, session::Session)> {
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let id = session::cookie_value(cookies)?;
    let found = state.auth.sessions.get(id)?;
    Some((id.to_string(), found))
}

async fn current_session(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let info = if !state.auth.tokens.enabled() {
        SessionInfo {
            auth: false,
            name: None,
            role: Some(Role::Admin),
            csrf: None,
            expires_at: None,
        }
    } else if let Some((_, session)) = session_of(&state, &headers) {
        SessionInfo::of(&session)
    } else {
        SessionInfo {
            auth: true,
            name: None,
            role: None,
            csrf: None,
            expires_at: None,
        }
    };
    no_store(json(StatusCode::OK, &info))
}

/// The body of `POST /ui/login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    /// A token of the engine's `http_tokens`.
    token: String,
}

/// Opens a session for a known token; the answer's cookie carries it.
/// An unknown token is refused 401 and counted like a refused bearer token.
async fn login(
    State(state): State<HttpState>,
    JsonBody(body): JsonBody<LoginRequest>,
) -> Result<Response, HttpError> {
    let auth = &state.auth;
    if !auth.tokens.enabled() {
        return Err(HttpError::new(
            ErrorCode::NotApplicable,
            "the engine has no http_tokens: the console needs no login",
        ));
    }
    let presented = format!("Bearer {}", body.token.trim());
    let caller: Caller = match auth.tokens.check(Some(&presented), Role::Read) {
        Ok(Some(caller)) => caller,
        Ok(None) => unreachable!("tokens are configured"),
        Err(refusal) => {
            crate::metrics::http_auth_refused(refusal.reason());
            let message = if body.token.trim().is_empty() {
                "enter a token: the console logs in with one of the engine's http_tokens"
            } else {
                "this token is none of the engine's http_tokens; check it, or make one with `jetsaga config new-token`"
            };
            return Err(HttpError::new(ErrorCode::Unauthenticated, message));
        }
    };
    tracing::info!(token = %caller.name, role = %caller.role, "console login");
    let (id, session) = auth.sessions.open(caller);
    let mut response = json(StatusCode::OK, &SessionInfo::of(&session));
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie_header(&set_cookie(&id, LIFETIME, auth.secure))?,
    );
    Ok(no_store(response))
}

/// Ends the cookie's session (with its CSRF value, like any request that
/// changes something) and clears the cookie.
async fn logout(State(state): State<HttpState>, headers: HeaderMap) -> Result<Response, HttpError> {
    if let Some((id, session)) = session_of(&state, &headers) {
        let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !session.csrf_matches(csrf) {
            crate::metrics::http_auth_refused(crate::api::auth::Refusal::Csrf.reason());
            return Err(HttpError::new(
                ErrorCode::Forbidden,
                "logging out needs the session's `X-Jetsaga-Csrf` header",
            ));
        }
        state.auth.sessions.close(&id);
        tracing::info!(token = %session.caller.name, "console logout");
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie_header(&set_cookie("", Duration::ZERO, state.auth.secure))?,
    );
    Ok(response)
}

fn cookie_header(value: &str) -> Result<HeaderValue, HttpError> {
    HeaderValue::from_str(value)
        .map_err(|e| HttpError::new(ErrorCode::Internal, format!("bad cookie: {e}")))
}

/// `response`, not to be cached (it names a session).
fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

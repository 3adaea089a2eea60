//! The console's sessions: a token presented once to `POST /ui/login`
//! becomes a random session id in a cookie, which then stands for the
//! token's [`Caller`] on the HTTP API until it expires or is logged out.
//!
//! Sessions live in this engine's memory only: a restart logs everyone
//! out, and a session opened on one engine is unknown to the others. Each
//! lasts [`LIFETIME`] from login (not extended by use); at most
//! [`MAX_SESSIONS`] are kept, the one closest to its end giving way.
//! The store keys them by the SHA-256 digest of their id, so that looking
//! one up reveals nothing of the ids kept.
//!
//! A session also holds a CSRF value, handed to the console at login and
//! required in the [`CSRF_HEADER`] of every state-changing request the
//! cookie authenticates ([`Session::csrf_matches`]).
//!
//! ```
//! use jetsaga_engine::api::auth::{Caller, Role};
//! use jetsaga_engine::api::session::Sessions;
//!
//! let sessions = Sessions::default();
//! let caller = Caller { name: "ops".into(), role: Role::Operate };
//! let (id, session) = sessions.open(caller.clone());
//! assert_eq!(sessions.get(&id).unwrap().caller, caller);
//! assert!(session.csrf_matches(Some(session.csrf.as_str())));
//! sessions.close(&id);
//! assert!(sessions.get(&id).is_none());
//! ```

use super::auth::{Caller, TokenDigest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The session cookie's name.
pub const COOKIE: &str = "jetsaga_session";

/// The header a cookie-authenticated request that changes something must
/// carry, with the session's CSRF value.
pub const CSRF_HEADER: &str = "x-jetsaga-csrf";

/// How long a session lasts from login.
pub const LIFETIME: Duration = Duration::from_secs(8 * 60 * 60);

/// Most sessions kept at once.
pub const MAX_SESSIONS: usize = 10_000;

/// One logged-in console.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who logged in: the token's name and role.
    pub caller: Caller,
    /// The value the [`CSRF_HEADER`] must carry.
    pub csrf: String,
    /// When it ends, in ms since the Unix epoch (for the console to show).
    pub expires_at: u64,
    /// When it ends, by the monotonic clock (what is checked).
    ends: Instant,
}

impl Session {
    /// Whether `header` (the request's [`CSRF_HEADER`]) is this session's
    /// CSRF value, compared in constant time.
    pub fn csrf_matches(&self, header: Option<&str>) -> bool {
        header.is_some_and(|h| TokenDigest::of(h).ct_eq(&TokenDigest::of(&self.csrf)))
    }
}

/// The sessions of one engine. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Sessions {
    by_digest: Arc<Mutex<HashMap<TokenDigest, Session>>>,
    lifetime: Duration,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::with_lifetime(LIFETIME)
    }
}

impl Sessions {
    /// Sessions that last `lifetime` from login.
    pub fn with_lifetime(lifetime: Duration) -> Sessions {
        Sessions {
            by_digest: Arc::default(),
            lifetime,
        }
    }

    /// Opens a session for `caller`: its id (the cookie's value) and the
    /// session.
    pub fn open(&self, caller: Caller) -> (String, Session) {
        let id = random_hex();
        let now = Instant::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let session = Session {
            caller,
            csrf: random_hex(),
            expires_at: u64::try_from((wall + self.lifetime).as_millis()).unwrap_or(u64::MAX),
            ends: now + self.lifetime,
        };
        let mut all = self.lock();
        all.retain(|_, s| s.ends > now);
        if all.len() >= MAX_SESSIONS
            && let Some(oldest) = all.iter().min_by_key(|(_, s)| s.ends).map(|(k, _)| *k)
        {
            all.remove(&oldest);
        }
        all.insert(TokenDigest::of(&id), session.clone());
        (id, session)
    }

    /// The live session `id` names; `None` when it is unknown or over (an
    /// ended session is removed).
    pub fn get(&self, id: &str) -> Option<Session> {
        let key = TokenDigest::of(id);
        let mut all = self.lock();
        match all.get(&key) {
            Some(s) if s.ends > Instant::now() => Some(s.clone()),
            Some(_) => {
                all.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends session `id` (logout); nothing when there is none.
    pub fn close(&self, id: &str) {
        self.lock().remove(&TokenDigest::of(id));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenDigest, Session>> {
        self.by_digest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The value of the session cookie among a request's `Cookie` headers.
pub fn cookie_value<'a>(cookie_headers: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    cookie_headers
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that stores session `id` for `max_age`: never
/// readable by scripts, never sent by another site's request, `Secure`
/// when the listener speaks HTTPS. An empty `id` with a zero `max_age`
/// deletes the cookie.
pub fn set_cookie(id: &str, max_age: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        max_age.as_secs()
    )
}

/// 256 random bits as hex.
fn random_hex() -> String {
    use rand::TryRngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::Role;

    fn caller() -> Caller {
        Caller {
            name: "viewer".into(),
            role: Role::Read,
        }
    }

    #[test]
    fn sessions_end_and_close() {
        let sessions = Sessions::with_lifetime(Duration::ZERO);
        let (id, _) = sessions.open(caller());
        assert!(sessions.get(&id).is_none(), "a session over is refused");
        let sessions = Sessions::default();
        let (a, sa) = sessions.open(caller());
        let (b, sb) = sessions.open(caller());
        assert_ne!(a, b);
        assert_ne!(sa.csrf, sb.csrf);
        assert_eq!(a.len(), 64);
        assert!(sessions.get("guessed").is_none());
        sessions.close(&a);
        assert!(sessions.get(&a).is_none());
        assert_eq!(sessions.get(&b).unwrap().caller, caller());
    }

    #[test]
    fn csrf_values_are_checked() {
        let (_, s) = Sessions::default().open(caller());
        assert!(s.csrf_matches(Some(&s.csrf)));
        assert!(!s.csrf_matches(None));
        assert!(!s.csrf_matches(Some("")));
        assert!(!s.csrf_matches(Some(&s.csrf[1..])));
    }

    #[test]
    fn the_cookie_is_found_and_set() {
        assert_eq!(
            cookie_value(["a=1; jetsaga_session=abc ; b=2"]),
            Some("abc")
        );
        assert_eq!(cookie_value(["a=1", "jetsaga_session=x"]), Some("x"));
        assert_eq!(cookie_value(["jetsaga_session="]), None);
        assert_eq!(cookie_value(["other_jetsaga_session=x"]), None);
        let plain = set_cookie("abc", LIFETIME, false);
        assert_eq!(
            plain,
            "jetsaga_session=abc; HttpOnly; SameSite=Strict; Path=/; Max-Age=28800"
        );
        assert!(set_cookie("abc", LIFETIME, true).ends_with("; Secure"));
    }
}

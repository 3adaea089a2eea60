//! Who may call the HTTP API: bearer tokens, each with a name and a
//! [`Role`], configured as `http_tokens` and stored only as SHA-256 digests.
//!
//! A request presents `Authorization: Bearer <token>`; [`Tokens::check`]
//! hashes the token, compares the digest with every configured one in
//! constant time, and compares the token's role with the route's. The
//! roles are ordered: each can do what the one below it can.
//!
//! | role | may |
//! |---|---|
//! | `read` | get, list, stats, definitions list, breakers list and get |
//! | `operate` | also start, cancel, retry and delete sagas |
//! | `admin` | also apply and validate definitions, reset breakers |
//!
//! The web console logs in with a token once and is then known by a
//! session cookie instead ([`super::session`]).
//!
//! With no tokens configured every route is open, as it is for `jetsaga
//! dev` on `127.0.0.1`.
//!
//! ```
//! use jetsaga_engine::api::auth::{HttpToken, Role, Tokens, new_token};
//!
//! let token = new_token();
//! let tokens = Tokens::new(&[HttpToken::of("ops", Role::Operate, &token)]);
//! let caller = tokens.check(Some(&format!("Bearer {token}")), Role::Read).unwrap();
//! assert_eq!(caller.map(|c| c.name), Some("ops".to_string()));
//! assert!(tokens.check(Some(&format!("Bearer {token}")), Role::Admin).is_err());
//! assert!(tokens.check(Some("Bearer guessed"), Role::Read).is_err());
//! ```

pub use crate::config::tokens::{HttpToken, Role, TOKEN_PREFIX, TokenDigest, new_token, validate};

/// The caller a token identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    Malformed,
    /// A bearer token no configured digest matches.
    Unknown,
    /// A console session cookie that names no live session (it expired,
    /// was logged out, or the engine restarted since the login).
    Session,
    /// A request that changes something, authenticated by a console
    /// session cookie, without the session's CSRF value in its header.
    Csrf,
    /// A known token whose role is below the route's.
    Forbidden {
        /// Who asked.
        caller: Caller,
        /// The role the route needs.
        needs: Role,
    },
}

impl Refusal {
    /// The `reason` label of `engine_http_auth_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Unknown => "unknown",
            Refusal::Session => "session",
            Refusal::Csrf => "csrf",
            Refusal::Forbidden { .. } => "forbidden",
        }
    }

    /// Every reason, for the metric's series at zero.
    pub const REASONS: [&'static str; 6] = crate::metrics::AUTH_REFUSED_REASONS;
}

/// The configured tokens, as the HTTP API checks them.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<HttpToken>);

impl Tokens {
    /// The checker of `tokens`; none means every route is open.
    pub fn new(tokens: &[HttpToken]) -> Tokens {
        Tokens(tokens.to_vec())
    }

    /// Whether any token is configured (else every route is open).
    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Who the `Authorization` header `authorization` identifies, when it
    /// may call a route that `needs` a role: `None` when no tokens are
    /// configured. The presented token's digest is compared with every
    /// configured digest, each in constant time.
    pub fn check(
        &self,
        authorization: Option<&str>,
        needs: Role,
    ) -> Result<Option<Caller>, Refusal> {
        if !self.enabled() {
            return Ok(None);
        }
        let header = authorization.ok_or(Refusal::Missing)?;
        let token = bearer(header).ok_or(Refusal::Malformed)?;
        let digest = TokenDigest::of(token);
        let mut found = None;
        for known in &self.0 {
            if known.sha256.ct_eq(&digest) {
                found = Some(known);
            }
        }
        let known = found.ok_or(Refusal::Unknown)?;
        let caller = Caller {
            name: known.name.clone(),
            role: known.role,
        };
        if caller.role < needs {
            return Err(Refusal::Forbidden { caller, needs });
        }
        Ok(Some(caller))
    }
}

/// The token of an `Authorization: Bearer <token>` header value (the
/// scheme in any case, RFC 9110).
fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn digests_are_sha256_in_hex() {
        // SHA-256("test"), a well-known value.
        assert_eq!(TokenDigest::of("test").to_string(), DIGEST);
        let parsed: TokenDigest = DIGEST.to_uppercase().parse().unwrap();
        assert_eq!(parsed, TokenDigest::of("test"));
        for bad in ["", "abc", &DIGEST[1..], &format!("{}zz", &DIGEST[2..])] {
            let e = bad.parse::<TokenDigest>().unwrap_err();
            assert!(e.contains("64 hex digits"), "{e}");
        }
    }

    #[test]
    fn the_compact_form_round_trips() {
        let list = HttpToken::parse_list(&format!(" ops:operate:{DIGEST} ,, root:admin:{DIGEST}"))
            .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "ops");
        assert_eq!(list[0].role, Role::Operate);
        assert_eq!(list[1].role, Role::Admin);
        assert_eq!(list[0].to_string(), format!("ops:operate:{DIGEST}"));
        assert_eq!(list[0].to_string().parse::<HttpToken>().unwrap(), list[0]);
        let e = HttpToken::parse_list("ops:operate").unwrap_err();
        assert!(e.contains("name:role:sha256"), "{e}");
        let e = HttpToken::parse_list(&format!("ops:root:{DIGEST}")).unwrap_err();
        assert!(e.contains("read, operate and admin"), "{e}");
        let e = HttpToken::parse_list("ops:read:1234").unwrap_err();
        assert!(e.contains("SHA-256"), "{e}");
    }

    #[test]
    fn the_yaml_line_reads_back() {
        let token = HttpToken::of("viewer", Role::Read, "secret");
        let text = format!("{}\n", token.yaml_line());
        let read: Vec<HttpToken> =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(read, vec![token]);
        let e =
            serde_saphyr::from_str::<Vec<HttpToken>>("- { name: a, role: read, sha256: \"00\" }\n")
                .unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
        assert!(
            serde_saphyr::from_str::<Vec<HttpToken>>(&format!(
                "- {{ name: a, role: root, sha256: \"{DIGEST}\" }}\n"
            ))
            .is_err()
        );
    }

    #[test]
    fn names_are_unique_and_valid() {
        let a = HttpToken::of("a", Role::Read, "1");
        let b = HttpToken::of("b", Role::Admin, "2");
        assert!(validate(&[a.clone(), b.clone()]).is_ok());
        let twice = HttpToken::of("a", Role::Admin, "3");
        let e = validate(&[a.clone(), twice]).unwrap_err();
        assert!(e.contains("used twice"), "{e}");
        let same_token = HttpToken::of("c", Role::Admin, "1");
        let e = validate(&[a, same_token]).unwrap_err();
        assert!(e.contains("digest of another token"), "{e}");
        for bad in ["", "a b", "a:b", "a,b"] {
            let e = validate(&[HttpToken::of(bad, Role::Read, "x")]).unwrap_err();
            assert!(e.contains("http_tokens: name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn new_tokens_are_long_random_and_distinct() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert!(
            a[TOKEN_PREFIX.len()..]
                .bytes()
                .all(|c| c.is_ascii_hexdigit())
        );
    }

    #[test]
    fn roles_are_ordered_and_checked() {
        let tokens = Tokens::new(&[
            HttpToken::of("viewer", Role::Read, "r"),
            HttpToken::of("ops", Role::Operate, "o"),
            HttpToken::of("root", Role::Admin, "a"),
        ]);
        let check = |header: Option<&str>, needs| tokens.check(header, needs);
        assert_eq!(check(None, Role::Read), Err(Refusal::Missing));
        assert_eq!(
            check(Some("Basic cjpy"), Role::Read),
            Err(Refusal::Malformed)
        );
        assert_eq!(check(Some("Bearer"), Role::Read), Err(Refusal::Malformed));
        assert_eq!(
            check(Some("Bearer a b"), Role::Read),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            check(Some("Bearer nope"), Role::Read),
            Err(Refusal::Unknown)
        );
        for (token, role) in [("r", Role::Read), ("o", Role::Operate), ("a", Role::Admin)] {
            for needs in Role::ALL {
                let got = check(Some(&format!("bearer  {token} ")), needs);
                if role >= needs {
                    assert_eq!(got.unwrap().unwrap().role, role);
                } else {
                    assert!(
                        matches!(got, Err(Refusal::Forbidden { needs: n, .. }) if n == needs),
                        "{role} on {needs}"
                    );
                }
            }
        }
        // No tokens: open.
        assert_eq!(Tokens::default().check(None, Role::Admin), Ok(None));
    }
}

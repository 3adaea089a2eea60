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

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;
use subtle::ConstantTimeEq;

/// What a token may do; each role includes the ones before it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read sagas, statistics, definitions and breakers.
    Read,
    /// Also start, cancel, retry and delete sagas.
    Operate,
    /// Also apply and validate definitions and reset breakers.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Read, Role::Operate, Role::Admin];

    /// Its name in the configuration: `read`, `operate`, `admin`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim())
            .ok_or_else(|| format!("unknown role {s:?}; the roles are read, operate and admin"))
    }
}

/// The SHA-256 digest of a token; written as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// Equal to `other`, compared in constant time.
    fn ct_eq(&self, other: &TokenDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({self})")
    }
}

impl FromStr for TokenDigest {
    type Err = String;

    fn from_str(s: &str) -> Result<TokenDigest, String> {
        let s = s.trim();
        let bytes = s.as_bytes();
        if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!(
                "sha256 {s:?} is not a SHA-256 digest: write its 64 hex digits (`jetsaga config new-token` prints one)"
            ));
        }
        let mut digest = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
            digest[i] = u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
        }
        Ok(TokenDigest(digest))
    }
}

impl Serialize for TokenDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TokenDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TokenDigest, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One configured token (`http_tokens` in the configuration): its name,
/// which logs show, its role and its digest. The token itself is not kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToken {
    /// Who holds it, as logs name it: letters, digits, `_` and `-`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The SHA-256 of the token.
    pub sha256: TokenDigest,
}

impl HttpToken {
    /// The entry for `token`.
    pub fn of(name: &str, role: Role, token: &str) -> HttpToken {
        HttpToken {
            name: name.to_string(),
            role,
            sha256: TokenDigest::of(token),
        }
    }

    /// Tokens in the compact form of `JETSAGA_HTTP_TOKENS` and
    /// `--http-tokens`: `name:role:sha256`, comma separated.
    pub fn parse_list(text: &str) -> Result<Vec<HttpToken>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::parse)
            .collect()
    }

    /// The line of a YAML configuration file's `http_tokens:` list.
    pub fn yaml_line(&self) -> String {
        format!(
            "- {{ name: {}, role: {}, sha256: \"{}\" }}",
            self.name, self.role, self.sha256
        )
    }
}

impl FromStr for HttpToken {
    type Err = String;

    /// `name:role:sha256`.
    fn from_str(s: &str) -> Result<HttpToken, String> {
        let mut parts = s.trim().splitn(3, ':');
        let (Some(name), Some(role), Some(sha256)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "{s:?} is not name:role:sha256 (such as ops:operate:<64 hex digits>)"
            ));
        };
        Ok(HttpToken {
            name: name.trim().to_string(),
            role: role.parse()?,
            sha256: sha256.parse()?,
        })
    }
}

impl fmt::Display for HttpToken {
    /// The compact form, `name:role:sha256`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.name, self.role, self.sha256)
    }
}

/// Checks the names of `tokens`: each valid and used once. (Roles and
/// digests are checked as they are read.)
pub fn validate(tokens: &[HttpToken]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for token in tokens {
        jetsaga_protocol::validate_token(&token.name)
            .map_err(|e| format!("http_tokens: name {e}"))?;
        if !seen.insert(token.name.as_str()) {
            return Err(format!(
                "http_tokens: the name {:?} is used twice; give each token its own name",
                token.name
            ));
        }
    }
    let mut digests = std::collections::BTreeSet::new();
    for token in tokens {
        if !digests.insert(token.sha256.0) {
            return Err(format!(
                "http_tokens: {:?} has the digest of another token; make a token for each with `jetsaga config new-token`",
                token.name
            ));
        }
    }
    Ok(())
}

/// A fresh token: `jsg_` and 64 hex digits, 256 bits from the operating
/// system's random source.
pub fn new_token() -> String {
    use rand::TryRngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{TOKEN_PREFIX}{hex}")
}

/// What every token [`new_token`] makes starts with, so that secret
/// scanners can tell them.
pub const TOKEN_PREFIX: &str = "jsg_";

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
            Refusal::Forbidden { .. } => "forbidden",
        }
    }

    /// Every reason, for the metric's series at zero.
    pub const REASONS: [&'static str; 4] = ["missing", "malformed", "unknown", "forbidden"];
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

//! The HTTP API's bearer tokens as the configuration holds them
//! (`http_tokens`): each a name, a [`Role`] and the token's SHA-256 digest;
//! the check itself is [`crate::api::auth`]'s.

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
    pub(crate) fn ct_eq(&self, other: &TokenDigest) -> bool {
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

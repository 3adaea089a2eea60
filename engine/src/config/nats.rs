//! How the engine and the CLI reach NATS: server URLs, one authentication
//! method, TLS; and [`connect_options`], the one place these become
//! `async_nats::ConnectOptions`.

use super::ConfigError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the default configuration looks for NATS.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// How to reach NATS.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NatsConfig {
    /// Server URL(s), comma separated (`nats://a:4222,nats://b:4222`); a
    /// `tls://` URL requires TLS. Credentials do not belong in the URL (the
    /// engine logs it): use `user`/`password`, `token`, `nkey` or `creds`.
    pub url: String,
    /// Credentials file (a user JWT and its nkey seed, as `nsc` writes it).
    pub creds: Option<PathBuf>,
    /// User name; needs `password`.
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<Secret>,
    /// Authentication token.
    pub token: Option<Secret>,
    /// NKey seed (`SU...`), or a file holding one.
    pub nkey: Option<Nkey>,
    /// TLS settings.
    pub tls: TlsConfig,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_NATS_URL.into(),
            creds: None,
            user: None,
            password: None,
            token: None,
            nkey: None,
            tls: TlsConfig::default(),
        }
    }
}

/// TLS towards NATS. Without any of these, TLS is still used when the URL is
/// `tls://` or the server requires it, verified against the system roots.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) that signed the server's certificate.
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate (mutual TLS); needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key; needs `cert`.
    pub key: Option<PathBuf>,
    /// Refuse to connect without TLS.
    pub required: bool,
}

/// A secret string (password, token, seed). It prints, debug-prints and
/// serializes as `***`; [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// What a secret shows instead of its value.
pub const MASK: &str = "***";

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself: hand it only to what needs it (the NATS client).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// A string; a number or boolean is taken as its text (YAML reads
    /// `password: 123456` as a number). Errors never show the value.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret::new(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret::new(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Secret, E> {
                Ok(Secret::new(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret::new(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// An NKey seed given directly, or the file that holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Nkey {
    /// The seed itself (`SU` and 56 more base32 characters).
    Seed(Secret),
    /// A file whose (trimmed) content is the seed, as `nk -gen user` writes it.
    File(PathBuf),
}

impl Nkey {
    /// A seed if `text` has a seed's shape (`S`, 58 characters of base32),
    /// else the path of a file holding one.
    pub fn parse(text: &str) -> Nkey {
        let text = text.trim();
        let seed_shaped = text.len() == 58
            && text.starts_with('S')
            && text
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b));
        if seed_shaped {
            Nkey::Seed(Secret::new(text))
        } else {
            Nkey::File(PathBuf::from(text))
        }
    }

    /// The seed, read from its file if need be, and checked to be one.
    pub fn seed(&self) -> Result<Secret, ConfigError> {
        let seed = match self {
            Nkey::Seed(seed) => seed.clone(),
            Nkey::File(path) => Secret::new(read_secret_file(path, "nats.nkey")?.trim()),
        };
        nkeys::KeyPair::from_seed(seed.expose()).map_err(|e| {
            let from = match self {
                Nkey::Seed(_) => String::from("the value"),
                Nkey::File(path) => format!("the content of {}", path.display()),
            };
            // `e` describes the seed's form, never its characters.
            ConfigError::Invalid(format!("nats.nkey: {from} is not an nkey seed: {e}"))
        })?;
        Ok(seed)
    }
}

impl Serialize for Nkey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Nkey::Seed(seed) => seed.serialize(s),
            Nkey::File(path) => path.serialize(s),
        }
    }
}

/// The one authentication method a [`NatsConfig`] names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NatsAuth<'a> {
    /// None: the server lets anyone in (or the URL carries credentials).
    None,
    /// `user` and `password`.
    UserPassword {
        /// User name.
        user: &'a str,
        /// Password.
        password: &'a Secret,
    },
    /// A token.
    Token(&'a Secret),
    /// An nkey seed (or its file).
    Nkey(&'a Nkey),
    /// A credentials file (JWT and seed).
    Creds(&'a Path),
}

impl NatsConfig {
    /// A configuration for `url` with no credentials and no TLS settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// The authentication method; an error when none is complete or more
    /// than one is given.
    pub fn auth(&self) -> Result<NatsAuth<'_>, ConfigError> {
        let mut given: Vec<(&str, NatsAuth<'_>)> = Vec::new();
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                given.push(("user/password", NatsAuth::UserPassword { user, password }))
            }
            (Some(_), None) => {
                return Err(ConfigError::Invalid(
                    "nats.user is set without nats.password".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "nats.password is set without nats.user".into(),
                ));
            }
            (None, None) => {}
        }
        if let Some(token) = &self.token {
            given.push(("token", NatsAuth::Token(token)));
        }
        if let Some(nkey) = &self.nkey {
            given.push(("nkey", NatsAuth::Nkey(nkey)));
        }
        if let Some(creds) = &self.creds {
            given.push(("creds", NatsAuth::Creds(creds)));
        }
        match given.as_slice() {
            [] => Ok(NatsAuth::None),
            [(_, auth)] => Ok(*auth),
            many => {
                let names: Vec<&str> = many.iter().map(|(name, _)| *name).collect();
                Err(ConfigError::Invalid(format!(
                    "more than one NATS authentication method is set ({}); keep one",
                    names.join(", ")
                )))
            }
        }
    }

    /// Checks the values without touching files or the network: the URLs
    /// parse and carry no credentials, one authentication method, client
    /// certificate and key together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.url.trim().is_empty() {
            return Err(ConfigError::Invalid("nats.url is empty".into()));
        }
        let addrs =
            server_addrs(&self.url).map_err(|e| ConfigError::Invalid(format!("nats.url: {e}")))?;
        if addrs.is_empty() {
            return Err(ConfigError::Invalid("nats.url names no server".into()));
        }
        if addrs
            .iter()
            .any(|a| a.has_user_pass() || a.username().is_some())
        {
            return Err(ConfigError::Invalid(
                "nats.url carries credentials; the engine logs its URL, so give them as nats.user and nats.password (or nats.token), which are masked".into(),
            ));
        }
        self.auth()?;
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => Err(ConfigError::Invalid(
                "nats.tls.cert is set without nats.tls.key".into(),
            )),
            (None, Some(_)) => Err(ConfigError::Invalid(
                "nats.tls.key is set without nats.tls.cert".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// The `async_nats` options for `nats`: its authentication method and TLS
/// settings (the caller adds a connection name and connects).
///
/// Reads the credentials or nkey seed file, and checks that TLS files exist,
/// so a wrong path is an `E-CONFIG` error naming the key rather than a TLS
/// error from the connection. Refuses more than one authentication method.
pub fn connect_options(nats: &NatsConfig) -> Result<async_nats::ConnectOptions, ConfigError> {
    let mut options = async_nats::ConnectOptions::new();
    options = match nats.auth()? {
        NatsAuth::None => options,
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.to_string(), password.expose().to_string())
        }
        NatsAuth::Token(token) => options.token(token.expose().to_string()),
        NatsAuth::Nkey(nkey) => options.nkey(nkey.seed()?.expose().to_string()),
        NatsAuth::Creds(path) => {
            let text = read_secret_file(path, "nats.creds")?;
            // The parser's errors say what is missing, not what is there.
            options.credentials(&text).map_err(|e| {
                ConfigError::Invalid(format!(
                    "nats.creds: {} is not a NATS credentials file: {e}",
                    path.display()
                ))
            })?
        }
    };
    if let Some(ca) = &nats.tls.ca {
        require_file(ca, "nats.tls.ca")?;
        options = options.add_root_certificates(ca.clone());
    }
    match (&nats.tls.cert, &nats.tls.key) {
        (Some(cert), Some(key)) => {
            require_file(cert, "nats.tls.cert")?;
            require_file(key, "nats.tls.key")?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        (None, None) => {}
        _ => {
            return Err(ConfigError::Invalid(
                "nats.tls.cert and nats.tls.key go together".into(),
            ));
        }
    }
    if nats.tls.required {
        options = options.require_tls(true);
    }
    Ok(options)
}

/// The kind of a failed connection, with a failed TLS handshake told apart:
/// async-nats reports a certificate the client does not trust (or a
/// handshake the server broke off) as an I/O error, which would send the
/// reader looking for a server that is there.
pub fn connect_error_kind(error: &async_nats::ConnectError) -> async_nats::ConnectErrorKind {
    use async_nats::ConnectErrorKind as K;
    match error.kind() {
        K::Io if tls_handshake_failed(error) => K::Tls,
        kind => kind,
    }
}

/// Whether a rustls error is among `error`'s causes (an I/O error carries
/// it as its inner error, which `source()` skips).
fn tls_handshake_failed(error: &async_nats::ConnectError) -> bool {
    use async_nats::rustls::Error as TlsError;
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        let io_inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if e.is::<TlsError>() || io_inner.is_some_and(|inner| inner.is::<TlsError>()) {
            return true;
        }
        cause = e.source();
    }
    false
}

/// What to do about a failed connection, by its kind.
pub fn connect_hint(error: &async_nats::ConnectError) -> &'static str {
    use async_nats::ConnectErrorKind as K;
    match connect_error_kind(error) {
        K::AuthorizationViolation | K::Authentication => {
            "the server refused the credentials: check nats.user/nats.password (--nats-user, --nats-password), nats.token, nats.nkey or nats.creds, and which one the server expects"
        }
        K::Tls => {
            "TLS failed: check nats.tls.ca, nats.tls.cert and nats.tls.key (--nats-tls-*), that the server has TLS enabled, and that its certificate names the host in nats.url"
        }
        K::ServerParse => "check nats.url (--nats-url, JETSAGA_NATS_URL)",
        K::Dns | K::Io | K::TimedOut | K::MaxReconnects => {
            "is nats-server running there? (`jetsaga dev` starts one)"
        }
    }
}

fn read_secret_file(path: &Path, key: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("{key}: cannot read {}: {e}", path.display())))
}

fn require_file(path: &Path, key: &str) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .map_err(|e| ConfigError::Invalid(format!("{key}: cannot read {}: {e}", path.display())))
        .and_then(|m| {
            if m.is_file() {
                Ok(())
            } else {
                Err(ConfigError::Invalid(format!(
                    "{key}: {} is not a file",
                    path.display()
                )))
            }
        })
}

/// The servers of a comma-separated URL list (`nats://a:4222,nats://b:4222`).
pub fn server_addrs(urls: &str) -> std::io::Result<Vec<async_nats::ServerAddr>> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>().map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{u}: {e}"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> String {
        nkeys::KeyPair::new_user().seed().unwrap()
    }

    fn nats() -> NatsConfig {
        NatsConfig::default()
    }

    #[test]
    fn secrets_never_show() {
        let config = NatsConfig {
            user: Some("app".into()),
            password: Some(Secret::new("hunter2")),
            ..nats()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("***"), "{debug}");
        let json = serde_json::to_string(&config).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert_eq!(Secret::new("x").to_string(), "***");
        let seed = seed();
        let debug = format!("{:?}", Nkey::parse(&seed));
        assert!(!debug.contains(&seed), "{debug}");
    }

    #[test]
    fn secrets_deserialize_from_numbers_without_echoing_bad_values() {
        let s: Secret = serde_json::from_str("123456").unwrap();
        assert_eq!(s.expose(), "123456");
        let err = serde_json::from_str::<Secret>("[\"hunter2\"]").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn nkey_is_a_seed_or_a_file() {
        let seed = seed();
        assert!(matches!(Nkey::parse(&seed), Nkey::Seed(_)));
        assert_eq!(
            Nkey::parse("/etc/jetsaga/user.nk"),
            Nkey::File("/etc/jetsaga/user.nk".into())
        );
        assert_eq!(Nkey::parse(&seed).seed().unwrap().expose(), seed);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("user.nk");
        std::fs::write(&file, format!("{seed}\n")).unwrap();
        assert_eq!(
            Nkey::parse(file.to_str().unwrap()).seed().unwrap().expose(),
            seed
        );
        std::fs::write(&file, "not a seed").unwrap();
        let err = Nkey::File(file.clone()).seed().unwrap_err().to_string();
        assert!(err.starts_with("E-CONFIG: nats.nkey"), "{err}");
        assert!(!err.contains("not a seed"), "echoes the content: {err}");
        let err = Nkey::File(dir.path().join("missing")).seed().unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    #[test]
    fn one_auth_method() {
        assert_eq!(nats().auth().unwrap(), NatsAuth::None);
        let token = NatsConfig {
            token: Some("t".into()),
            ..nats()
        };
        assert!(matches!(token.auth().unwrap(), NatsAuth::Token(_)));
        let both = NatsConfig {
            user: Some("a".into()),
            password: Some("b".into()),
            ..token.clone()
        };
        let err = both.auth().unwrap_err().to_string();
        assert!(err.contains("user/password, token"), "{err}");
        let half = NatsConfig {
            user: Some("a".into()),
            ..nats()
        };
        assert!(
            half.validate()
                .unwrap_err()
                .to_string()
                .contains("without nats.password")
        );
        let half = NatsConfig {
            password: Some("b".into()),
            ..nats()
        };
        assert!(
            half.validate()
                .unwrap_err()
                .to_string()
                .contains("without nats.user")
        );
    }

    #[test]
    fn urls_parse_and_carry_no_credentials() {
        assert!(nats().validate().is_ok());
        assert!(
            NatsConfig::new("nats://a:4222, tls://b:4223")
                .validate()
                .is_ok()
        );
        for bad in ["", " , ", "nats://a:4222,::bad::"] {
            assert!(NatsConfig::new(bad).validate().is_err(), "{bad:?}");
        }
        for creds in ["nats://u:p@a:4222", "nats://tok@a:4222"] {
            let err = NatsConfig::new(creds).validate().unwrap_err().to_string();
            assert!(err.contains("carries credentials"), "{err}");
            assert!(!err.contains(creds), "echoes the URL: {err}");
        }
    }

    #[test]
    fn tls_files_are_checked() {
        let cert_only = NatsConfig {
            tls: TlsConfig {
                cert: Some("c.pem".into()),
                ..TlsConfig::default()
            },
            ..nats()
        };
        assert!(
            cert_only
                .validate()
                .unwrap_err()
                .to_string()
                .contains("nats.tls.key")
        );
        let missing = NatsConfig {
            tls: TlsConfig {
                ca: Some("/nonexistent/ca.pem".into()),
                required: true,
                ..TlsConfig::default()
            },
            ..nats()
        };
        let err = connect_options(&missing).unwrap_err().to_string();
        assert!(err.contains("nats.tls.ca"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, "").unwrap();
        let present = NatsConfig {
            tls: TlsConfig {
                ca: Some(pem.clone()),
                cert: Some(pem.clone()),
                key: Some(pem),
                required: true,
            },
            ..nats()
        };
        assert!(connect_options(&present).is_ok());
    }

    #[test]
    fn creds_files_are_read_and_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.creds");
        std::fs::write(&file, "hunter2").unwrap();
        let config = NatsConfig {
            creds: Some(file),
            ..nats()
        };
        let err = connect_options(&config).unwrap_err().to_string();
        assert!(err.contains("not a NATS credentials file"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_refused_certificate_is_a_tls_failure_not_a_missing_server() {
        use async_nats::rustls::{CertificateError, Error as TlsError};
        use async_nats::{ConnectError, ConnectErrorKind as K};
        // What async-nats returns when the server's certificate is not trusted.
        let untrusted = ConnectError::with_source(
            K::Io,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                TlsError::InvalidCertificate(CertificateError::UnknownIssuer),
            ),
        );
        assert_eq!(connect_error_kind(&untrusted), K::Tls);
        assert!(connect_hint(&untrusted).starts_with("TLS failed"));
        let refused = ConnectError::with_source(
            K::Io,
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(connect_error_kind(&refused), K::Io);
        assert!(connect_hint(&refused).contains("is nats-server running there?"));
    }

    #[test]
    fn url_lists_are_split() {
        let addrs = server_addrs("nats://a:4222, nats://b:4223").unwrap();
        assert_eq!(addrs.len(), 2);
        assert!(server_addrs("nats://a:4222,::bad::").is_err());
    }
}

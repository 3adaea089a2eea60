//! The stable error codes of jetsaga, one [`ErrorCode`] per code that the
//! engine, the CLI, the store or the SDK can emit (`docs/ERRORS.md`).
//!
//! Each code's string, HTTP status and meaning are one row of the table
//! below, so they cannot drift apart:
//!
//! ```
//! use jetsaga_protocol::ErrorCode;
//! let code: ErrorCode = "E-NOT-FOUND".parse().unwrap();
//! assert_eq!(code, ErrorCode::NotFound);
//! assert_eq!(code.http_status(), 404);
//! assert_eq!(code.to_string(), "E-NOT-FOUND");
//! ```
//!
//! On the wire a code stays a string ([`crate::ApiError::code`]): a client
//! reading a code this version does not know keeps it as sent, and
//! [`crate::ApiError::error_code`] answers `None` for it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Declares [`ErrorCode`] and its properties from one table:
/// `Variant = "CODE", status, "meaning";`.
macro_rules! error_codes {
    ($($variant:ident = $code:literal, $status:literal, $meaning:literal;)*) => {
        /// A stable error code: its string never changes meaning between
        /// releases (messages may be reworded).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $(
                #[doc = concat!("`", $code, "`: ", $meaning, ".")]
                $variant,
            )*
        }

        impl ErrorCode {
            /// Every code, in the order of `docs/ERRORS.md`.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The stable string, such as `E-NOT-FOUND`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// The HTTP status the engine's HTTP API answers the code with
            /// (500 for codes no HTTP request can get).
            pub const fn http_status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }

            /// What the code means, in one line.
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $meaning,)*
                }
            }
        }

        impl FromStr for ErrorCode {
            type Err = UnknownErrorCode;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($code => Ok(ErrorCode::$variant),)*
                    _ => Err(UnknownErrorCode(s.to_string())),
                }
            }
        }
    };
}

error_codes! {
    // Definitions.
    DefIo = "E-DEF-IO", 422, "a definitions file or directory cannot be read";
    DefParse = "E-DEF-PARSE", 422, "the YAML or JSON of a definition does not parse or has a wrong field";
    DefEmpty = "E-DEF-EMPTY", 422, "a file defines no saga, or a saga has no steps";
    DefName = "E-DEF-NAME", 422, "a name in a definition is not a valid subject token";
    DefDuration = "E-DEF-DURATION", 422, "a duration cannot be parsed or is out of range";
    DefRetry = "E-DEF-RETRY", 422, "a retry policy field is out of range";
    DefUnknownPolicy = "E-DEF-UNKNOWN-POLICY", 422, "a step names a retry policy the file does not define";
    DefDuplicateStep = "E-DEF-DUPLICATE-STEP", 422, "two steps of one saga share an id";
    DefUnknownDependency = "E-DEF-UNKNOWN-DEPENDENCY", 422, "`depends_on` names a step the saga does not have";
    DefLimit = "E-DEF-LIMIT", 422, "a saga's `max_running` is not a whole number from 1 to 4294967295";
    DefCycle = "E-DEF-CYCLE", 422, "the dependencies of a saga's steps form a cycle";
    DefTrigger = "E-DEF-TRIGGER", 422, "a trigger's subject or input mapping is invalid";
    DefPolicy = "E-DEF-POLICY", 422, "a saga's `policy` is invalid";
    DefService = "E-DEF-SERVICE", 422, "a service policy under `services:` is invalid";
    DefTooLarge = "E-DEF-TOO-LARGE", 422, "a definition has more steps, fan-out or bytes than the engine allows";
    DefMany = "E-DEF-MANY", 422, "several definition problems, one per line";
    // Store.
    StoreLocked = "E-STORE-LOCKED", 500, "another process holds the store directory";
    StoreOpen = "E-STORE-OPEN", 500, "the store cannot be opened";
    StoreIo = "E-STORE-IO", 500, "a store read, write or flush failed";
    StoreEncode = "E-STORE-ENCODE", 500, "a record could not be encoded";
    StoreCompact = "E-STORE-COMPACT", 500, "the store could not be compacted";
    StoreCorrupt = "E-STORE-CORRUPT", 500, "a stored record cannot be decoded";
    // NATS.
    NatsConnect = "E-NATS-CONNECT", 500, "no connection to NATS: unreachable, refused credentials or TLS failed";
    NatsVersion = "E-NATS-VERSION", 500, "the NATS server is older than 2.12";
    NatsJetStream = "E-NATS-JETSTREAM", 500, "the NATS server or account has JetStream disabled";
    NatsStream = "E-NATS-STREAM", 500, "the engine could not create, update or find one of its streams";
    NatsConsumer = "E-NATS-CONSUMER", 500, "the engine could not create its consumer";
    Nats = "E-NATS", 500, "another NATS failure in the client";
    // Engine.
    Config = "E-CONFIG", 500, "the configuration cannot work";
    ConfigFile = "E-CONFIG-FILE", 500, "the configuration file cannot be read or does not parse";
    ConfigEnv = "E-CONFIG-ENV", 500, "a `JETSAGA_*` variable has a value of the wrong form";
    Engine = "E-ENGINE", 500, "a part of the engine failed while running";
    Partitions = "E-PARTITIONS", 500, "the installation records another number of partitions than the engine was started with";
    Journal = "E-JOURNAL", 500, "a partition's journal cannot be read, written or applied";
    Deposed = "E-DEPOSED", 500, "another engine took over a partition this engine led";
    HttpListen = "E-HTTP-LISTEN", 500, "the HTTP API cannot listen on its address";
    HttpInsecure = "E-HTTP-INSECURE", 500, "the HTTP API would listen on an address other than loopback with no token configured";
    HttpTls = "E-HTTP-TLS", 500, "the HTTP API's certificate or key cannot be read or used";
    // `jetsaga dev`.
    DevNoNats = "E-DEV-NO-NATS", 500, "no nats-server binary was found";
    DevNatsStart = "E-DEV-NATS-START", 500, "the nats-server child could not be started or did not become ready";
    // Request API.
    BadRequest = "E-BAD-REQUEST", 400, "the request does not decode or has an invalid field";
    UnknownSaga = "E-UNKNOWN-SAGA", 422, "no definition has the saga name given";
    NotFound = "E-NOT-FOUND", 404, "no saga has the id given, no service policy names the service, or no such route";
    NotApplicable = "E-NOT-APPLICABLE", 409, "the saga's (or breaker's) state does not allow the operation";
    PayloadTooLarge = "E-PAYLOAD-TOO-LARGE", 413, "the saga input or body is larger than `max_payload`";
    IdempotencyConflict = "E-IDEMPOTENCY-CONFLICT", 409, "the idempotency key already started a saga of another definition";
    SagaDisabled = "E-SAGA-DISABLED", 409, "the definition's policy refuses new sagas in this engine";
    InvalidDefinition = "E-INVALID-DEFINITION", 422, "an applied definition does not validate";
    UnsupportedMediaType = "E-UNSUPPORTED-MEDIA-TYPE", 415, "an HTTP body without a JSON (or YAML) content type";
    MethodNotAllowed = "E-METHOD-NOT-ALLOWED", 405, "the HTTP route does not take this method";
    Unauthenticated = "E-UNAUTHENTICATED", 401, "an HTTP request without a bearer token, with a malformed one, or with one the engine does not know";
    Forbidden = "E-FORBIDDEN", 403, "the HTTP request's token has a role below the one the route needs";
    Unavailable = "E-UNAVAILABLE", 503, "the engine is shutting down or not ready";
    NoLeader = "E-NO-LEADER", 503, "no engine leads the partition the request needs (a takeover is in progress)";
    ReplyTooLarge = "E-REPLY-TOO-LARGE", 500, "the answer is larger than the NATS connection's max payload";
    RequestTimeout = "E-REQUEST-TIMEOUT", 408, "an HTTP request body did not arrive within `http_body_timeout`";
    TooManyConnections = "E-TOO-MANY-CONNECTIONS", 503, "the HTTP API already has `http_max_connections` connections open";
    UnknownOperation = "E-UNKNOWN-OPERATION", 500, "no request API operation of that name";
    Internal = "E-INTERNAL", 500, "the engine failed to read its store or to encode its reply";
    // Client and CLI.
    NoEngine = "E-NO-ENGINE", 500, "NATS is reachable but no engine serves the request API";
    Timeout = "E-TIMEOUT", 500, "the engine did not answer, or the saga did not finish, in time";
    Decode = "E-DECODE", 500, "the engine's reply is not what this client expects";
    BadInput = "E-BAD-INPUT", 400, "a saga input is not valid JSON or its file cannot be read";
    // Worker SDK.
    WorkerConfig = "E-WORKER-CONFIG", 500, "a worker builder setting is unusable";
    WorkerDuplicateHandler = "E-WORKER-DUPLICATE-HANDLER", 500, "two handlers registered for the same operation and kind";
    WorkerServerVersion = "E-WORKER-SERVER-VERSION", 500, "the NATS server is older than 2.12";
    WorkerConsumerConflict = "E-WORKER-CONSUMER-CONFLICT", 500, "the service's consumer exists with other settings";
    // Metrics.
    MetricsListen = "E-METRICS-LISTEN", 500, "the metrics server cannot listen on its address";
    MetricsRecorder = "E-METRICS-RECORDER", 500, "the process already has another metrics recorder";
    // Dependency resolution.
    DepsGlob = "E-DEPS-GLOB", 500, "a `--manifest` pattern is invalid or matches no file";
    DepsIo = "E-DEPS-IO", 500, "a manifest file cannot be read";
    DepsParse = "E-DEPS-PARSE", 500, "a manifest is not valid";
    DepsDuplicate = "E-DEPS-DUPLICATE", 500, "two manifests declare the same service";
    DepsMissing = "E-DEPS-MISSING", 500, "a required dependency is declared by no manifest";
    DepsVersion = "E-DEPS-VERSION", 500, "a dependency's declared version does not satisfy the requirement";
    DepsCycle = "E-DEPS-CYCLE", 500, "the service dependencies form a cycle";
    DepsHealth = "E-DEPS-HEALTH", 500, "a health URL did not answer 2xx in time";
    DepsOptional = "N-DEPS-OPTIONAL", 500, "a note, not an error: an optional dependency is in no manifest";
}

/// A code equals its stable string: `ErrorCode::NotFound == "E-NOT-FOUND"`.
impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A code string no [`ErrorCode`] has (from a newer engine, or not a code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownErrorCode(pub String);

impl fmt::Display for UnknownErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown error code {:?}", self.0)
    }
}

impl std::error::Error for UnknownErrorCode {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn strings_round_trip() {
        let mut seen = BTreeSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} twice");
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{code}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
            assert!(!code.meaning().is_empty());
        }
        assert!("E-SOMETHING-NEW".parse::<ErrorCode>().is_err());
        assert!(serde_json::from_str::<ErrorCode>("\"E-SOMETHING-NEW\"").is_err());
    }

    #[test]
    fn statuses_follow_the_documented_table() {
        use ErrorCode::*;
        for (code, status) in [
            (BadRequest, 400),
            (BadInput, 400),
            (NotFound, 404),
            (MethodNotAllowed, 405),
            (Unauthenticated, 401),
            (Forbidden, 403),
            (NotApplicable, 409),
            (IdempotencyConflict, 409),
            (SagaDisabled, 409),
            (PayloadTooLarge, 413),
            (UnsupportedMediaType, 415),
            (UnknownSaga, 422),
            (InvalidDefinition, 422),
            (Unavailable, 503),
            (NoLeader, 503),
            (RequestTimeout, 408),
            (TooManyConnections, 503),
            (ReplyTooLarge, 500),
            (Internal, 500),
            (UnknownOperation, 500),
        ] {
            assert_eq!(code.http_status(), status, "{code}");
        }
        for code in ErrorCode::ALL
            .iter()
            .filter(|c| c.as_str().starts_with("E-DEF-"))
        {
            assert_eq!(code.http_status(), 422, "{code}");
        }
    }

    /// `docs/ERRORS.md` documents exactly the codes there are: a table row
    /// whose first cell names codes (`` | `E-X` | `` or `` | `E-X`, `E-Y` | ``).
    #[test]
    fn errors_md_lists_exactly_the_codes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/ERRORS.md");
        let text = std::fs::read_to_string(path).expect("docs/ERRORS.md is readable");
        let documented: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| {
                l.strip_prefix("| `")?
                    .split_once(" |")
                    .map(|(cell, _)| cell)
            })
            .flat_map(|cell| cell.split(", ").map(|c| c.trim_matches('`')))
            .filter(|c| c.starts_with("E-") || c.starts_with("N-"))
            .collect();
        let known: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let undocumented: Vec<_> = known.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&known).collect();
        assert!(
            undocumented.is_empty(),
            "codes missing from docs/ERRORS.md: {undocumented:?}"
        );
        assert!(
            unknown.is_empty(),
            "documented codes with no ErrorCode: {unknown:?}"
        );
    }

    /// The codes the request API and the HTTP API answer.
    const ANSWERED: &[ErrorCode] = &[
        ErrorCode::BadRequest,
        ErrorCode::UnknownSaga,
        ErrorCode::NotFound,
        ErrorCode::NotApplicable,
        ErrorCode::PayloadTooLarge,
        ErrorCode::IdempotencyConflict,
        ErrorCode::SagaDisabled,
        ErrorCode::InvalidDefinition,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::Unavailable,
        ErrorCode::NoLeader,
        ErrorCode::ReplyTooLarge,
        ErrorCode::RequestTimeout,
        ErrorCode::TooManyConnections,
        ErrorCode::UnknownOperation,
        ErrorCode::Internal,
    ];

    /// `docs/PROTOCOL.md` stands alone: every code it names exists, and its
    /// "Error codes" section lists exactly the codes a request can be
    /// answered with (and the definition problems' `E-DEF-*`), each with
    /// its HTTP status.
    #[test]
    fn protocol_md_lists_the_answered_codes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
        let text = std::fs::read_to_string(path).expect("docs/PROTOCOL.md is readable");
        let named: BTreeSet<&str> = text
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|t| {
                (t.starts_with("E-") || t.starts_with("N-"))
                    && t.chars().all(|c| c.is_ascii_uppercase() || c == '-')
                    && !t.ends_with('-')
            })
            .collect();
        assert!(named.len() > 20, "only {} codes found", named.len());
        for code in &named {
            assert!(
                code.parse::<ErrorCode>().is_ok(),
                "PROTOCOL.md names {code}, no ErrorCode"
            );
        }
        let section = text
            .split("\n## Error codes\n")
            .nth(1)
            .expect("an Error codes section");
        let section = section.split("\n## ").next().unwrap();
        let mut listed = BTreeSet::new();
        for row in section.lines().filter_map(|l| l.strip_prefix("| `")) {
            let mut cells = row.split(" | ");
            let code: ErrorCode = cells.next().unwrap().trim_end_matches('`').parse().unwrap();
            if let Some(status) = cells.next().and_then(|c| c.parse::<u16>().ok()) {
                assert_eq!(status, code.http_status(), "{code}");
            }
            listed.insert(code.as_str());
        }
        let expected: BTreeSet<&str> = ANSWERED
            .iter()
            .chain(
                ErrorCode::ALL
                    .iter()
                    .filter(|c| c.as_str().starts_with("E-DEF-")),
            )
            .map(|c| c.as_str())
            .collect();
        assert_eq!(listed, expected);
    }
}

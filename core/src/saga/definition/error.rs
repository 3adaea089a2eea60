//! Why a definition was rejected, where, and under which stable code.

use jetsaga_protocol::ErrorCode;
use std::fmt;

/// Where in a definition a problem is: source, then saga, step or retry
/// policy, then field. Displays as ``file.yaml: saga `s`, step `t`: field `timeout` ``.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Place {
    /// The file name (or `request` for a definition sent to the engine).
    pub source_name: String,
    /// The saga, if the problem is inside one.
    pub saga: Option<String>,
    /// The step's id (or `#n`, its 1-based position, when the id itself is invalid).
    pub step: Option<String>,
    /// The file-level retry policy, if the problem is inside one.
    pub policy: Option<String>,
    /// The field, as a dotted path relative to the saga, step or policy (`retry.jitter`).
    pub field: Option<String>,
}

impl Place {
    pub(super) fn new(source_name: &str) -> Self {
        Place {
            source_name: source_name.to_owned(),
            ..Place::default()
        }
    }
    pub(super) fn saga(&self, name: &str) -> Self {
        Place {
            saga: Some(name.to_owned()),
            ..self.clone()
        }
    }
    pub(super) fn step(&self, label: String) -> Self {
        Place {
            step: Some(label),
            ..self.clone()
        }
    }
    pub(super) fn policy(&self, name: &str) -> Self {
        Place {
            policy: Some(name.to_owned()),
            ..self.clone()
        }
    }
    pub(super) fn field(&self, field: &str) -> Self {
        Place {
            field: Some(field.to_owned()),
            ..self.clone()
        }
    }
}

/// Writes a user-supplied name with control characters escaped,
/// so one error stays on one line whatever the input.
pub(super) struct Escaped<'a>(pub(super) &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source_name)?;
        let mut sep = ": ";
        if let Some(saga) = &self.saga {
            write!(f, "{sep}saga `{}`", Escaped(saga))?;
            sep = ", ";
        }
        if let Some(step) = &self.step {
            write!(f, "{sep}step `{}`", Escaped(step))?;
            sep = ", ";
        }
        if let Some(policy) = &self.policy {
            write!(f, "{sep}retry policy `{}`", Escaped(policy))?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        Ok(())
    }
}

/// Why a definition was rejected; [`DefinitionError::code`] gives a stable code.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// The file could not be read (`E-DEF-IO`).
    #[error("{source_name}: cannot read the file: {error}")]
    Io {
        /// The file.
        source_name: String,
        /// The I/O error.
        #[source]
        error: std::io::Error,
    },
    /// The YAML or JSON parser rejected the text (`E-DEF-PARSE`): a syntax
    /// error, a value of the wrong type, an unknown or missing field, a duplicate key.
    #[error("{source_name}: {}{message}", position(*line, *column))]
    Parse {
        /// The file.
        source_name: String,
        /// 1-based line of the problem, when the parser knows it.
        line: Option<u64>,
        /// 1-based column of the problem, when the parser knows it.
        column: Option<u64>,
        /// The parser's message.
        message: String,
    },
    /// The file defines no saga, or a saga has no steps (`E-DEF-EMPTY`).
    #[error("{place}: {reason}")]
    Empty {
        /// Where.
        place: Box<Place>,
        /// What is missing.
        reason: String,
    },
    /// A saga name, step id, service, operation or compensation is not a
    /// valid subject token (`E-DEF-NAME`).
    #[error("{place}: invalid {what}: {reason}")]
    InvalidName {
        /// Where.
        place: Box<Place>,
        /// Which kind of name (`saga name`, `step id`, `service`, ...).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A duration is unparsable, zero where it must be positive, not a whole
    /// number of milliseconds, or longer than [`MAX_DURATION`](super::MAX_DURATION) (`E-DEF-DURATION`).
    #[error("{place}: {reason}")]
    InvalidDuration {
        /// Where.
        place: Box<Place>,
        /// What is wrong with it.
        reason: String,
    },
    /// A retry policy field is out of range (`E-DEF-RETRY`).
    #[error("{place}: {reason}")]
    InvalidRetry {
        /// Where.
        place: Box<Place>,
        /// What is wrong with it.
        reason: String,
    },
    /// A step names a retry policy the file does not define (`E-DEF-UNKNOWN-POLICY`).
    #[error(
        "{place}: unknown retry policy `{}` ({})",
        Escaped(name),
        known_list("retry_policies", known)
    )]
    UnknownPolicy {
        /// Where.
        place: Box<Place>,
        /// The name used.
        name: String,
        /// The policies the file defines, in file order.
        known: Vec<String>,
    },
    /// Two steps of a saga share an id (`E-DEF-DUPLICATE-STEP`); positions are 1-based.
    #[error(
        "{place}: duplicate step id `{}`: steps #{first} and #{second} both use it; step ids must be unique within a saga",
        Escaped(id)
    )]
    DuplicateStep {
        /// Where (the second step).
        place: Box<Place>,
        /// The id.
        id: String,
        /// 1-based position of the first step with this id.
        first: usize,
        /// 1-based position of the later step with this id.
        second: usize,
    },
    /// `depends_on` names a step the saga does not have (`E-DEF-UNKNOWN-DEPENDENCY`).
    #[error(
        "{place}: unknown step `{}` ({})",
        Escaped(dependency),
        known_list("steps", known)
    )]
    UnknownDependency {
        /// Where.
        place: Box<Place>,
        /// The step id named.
        dependency: String,
        /// The saga's step ids, in file order.
        known: Vec<String>,
    },
    /// A built definition's `depends_on` holds an index past its last step
    /// (`E-DEF-UNKNOWN-DEPENDENCY`).
    #[error("{place}: step index {index} is out of range (the saga has {steps} steps)")]
    DependencyOutOfRange {
        /// Where.
        place: Box<Place>,
        /// The index.
        index: usize,
        /// How many steps the saga has.
        steps: usize,
    },
    /// The dependencies form a cycle (`E-DEF-CYCLE`). `path` reads "depends
    /// on" from left to right and ends where it starts: `a -> b -> a`.
    #[error("{place}: dependency cycle {}; remove one of these dependencies", path.iter().map(|s| Escaped(s).to_string()).collect::<Vec<_>>().join(" -> "))]
    Cycle {
        /// Where (the saga).
        place: Box<Place>,
        /// Step ids along the cycle, first repeated at the end.
        path: Vec<String>,
    },
    /// A trigger is invalid (`E-DEF-TRIGGER`): its subject, or its `input` mapping.
    #[error("{place}: {reason}")]
    InvalidTrigger {
        /// Where (`triggers[i].subject`, `triggers[i].input.<field>`).
        place: Box<Place>,
        /// What is wrong with it.
        reason: String,
    },
    /// A saga `policy` is invalid (`E-DEF-POLICY`).
    #[error("{place}: {reason}")]
    InvalidSagaPolicy {
        /// Where (`policy.environments`).
        place: Box<Place>,
        /// What is wrong with it.
        reason: String,
    },
    /// `max_running` is not a positive whole number (`E-DEF-LIMIT`).
    #[error("{place}: {reason}")]
    InvalidLimit {
        /// Where (`max_running`).
        place: Box<Place>,
        /// What is wrong with it.
        reason: String,
    },
    /// A definition is over one of its size limits (`E-DEF-TOO-LARGE`):
    /// steps per saga, fan-out, or file size ([`DefinitionLimits`](super::DefinitionLimits)).
    #[error("{place}: {reason}")]
    TooLarge {
        /// Where (the file, the saga's `steps`, or a step).
        place: Box<Place>,
        /// Which limit, and the value over it.
        reason: String,
    },
    /// A service policy under `services:` is invalid (`E-DEF-SERVICE`).
    #[error(
        "{source_name}: service `{}`: field `{field}`: {reason}",
        Escaped(service)
    )]
    InvalidService {
        /// The file.
        source_name: String,
        /// The service.
        service: String,
        /// The field (`max_in_flight`, `circuit_breaker.open_timeout`, ...).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Several problems, in file order (`E-DEF-MANY`); displays one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<DefinitionError>),
}

fn position(line: Option<u64>, column: Option<u64>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("line {l} column {c}: "),
        (Some(l), None) => format!("line {l}: "),
        _ => String::new(),
    }
}

fn known_list(what: &str, known: &[String]) -> String {
    const SHOWN: usize = 20;
    if known.is_empty() {
        return format!("no {what} are defined");
    }
    let mut list: Vec<String> = known
        .iter()
        .take(SHOWN)
        .map(|k| Escaped(k).to_string())
        .collect();
    if known.len() > SHOWN {
        list.push(format!("and {} more", known.len() - SHOWN));
    }
    format!("known: {}", list.join(", "))
}

impl DefinitionError {
    /// Stable code of this error, such as `E-DEF-CYCLE` (see the module docs).
    pub fn code(&self) -> ErrorCode {
        match self {
            DefinitionError::Io { .. } => ErrorCode::DefIo,
            DefinitionError::Parse { .. } => ErrorCode::DefParse,
            DefinitionError::Empty { .. } => ErrorCode::DefEmpty,
            DefinitionError::InvalidName { .. } => ErrorCode::DefName,
            DefinitionError::InvalidDuration { .. } => ErrorCode::DefDuration,
            DefinitionError::InvalidRetry { .. } => ErrorCode::DefRetry,
            DefinitionError::UnknownPolicy { .. } => ErrorCode::DefUnknownPolicy,
            DefinitionError::DuplicateStep { .. } => ErrorCode::DefDuplicateStep,
            DefinitionError::UnknownDependency { .. }
            | DefinitionError::DependencyOutOfRange { .. } => ErrorCode::DefUnknownDependency,
            DefinitionError::Cycle { .. } => ErrorCode::DefCycle,
            DefinitionError::InvalidTrigger { .. } => ErrorCode::DefTrigger,
            DefinitionError::InvalidSagaPolicy { .. } => ErrorCode::DefPolicy,
            DefinitionError::InvalidLimit { .. } => ErrorCode::DefLimit,
            DefinitionError::InvalidService { .. } => ErrorCode::DefService,
            DefinitionError::TooLarge { .. } => ErrorCode::DefTooLarge,
            DefinitionError::Many(_) => ErrorCode::DefMany,
        }
    }

    /// The individual problems: the inner errors of [`DefinitionError::Many`],
    /// otherwise this error alone.
    pub fn errors(&self) -> Vec<&DefinitionError> {
        match self {
            DefinitionError::Many(errors) => errors.iter().flat_map(|e| e.errors()).collect(),
            other => vec![other],
        }
    }

    /// Where the problem is, for errors found after parsing.
    pub fn place(&self) -> Option<&Place> {
        match self {
            DefinitionError::Empty { place, .. }
            | DefinitionError::InvalidName { place, .. }
            | DefinitionError::InvalidDuration { place, .. }
            | DefinitionError::InvalidRetry { place, .. }
            | DefinitionError::UnknownPolicy { place, .. }
            | DefinitionError::DuplicateStep { place, .. }
            | DefinitionError::UnknownDependency { place, .. }
            | DefinitionError::DependencyOutOfRange { place, .. }
            | DefinitionError::Cycle { place, .. }
            | DefinitionError::InvalidTrigger { place, .. }
            | DefinitionError::InvalidSagaPolicy { place, .. }
            | DefinitionError::InvalidLimit { place, .. }
            | DefinitionError::TooLarge { place, .. } => Some(place.as_ref()),
            DefinitionError::Io { .. }
            | DefinitionError::Parse { .. }
            | DefinitionError::InvalidService { .. }
            | DefinitionError::Many(_) => None,
        }
    }

    /// `Ok` for no errors, the error itself for one, [`DefinitionError::Many`] for more.
    pub(super) fn collect(mut errs: Vec<DefinitionError>) -> Result<(), DefinitionError> {
        match errs.len() {
            0 => Ok(()),
            1 => Err(errs.remove(0)),
            _ => Err(DefinitionError::Many(errs)),
        }
    }
}

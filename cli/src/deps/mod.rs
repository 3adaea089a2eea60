//! Service dependency resolution for deployments (`jetsaga deps`).
//!
//! Each service of a deployment describes itself in a manifest, YAML or
//! JSON:
//!
//! ```yaml
//! name: payments                          # a token: letters, digits, '_', '-'
//! version: 1.4.2                          # semver
//! health: http://127.0.0.1:8081/health    # optional, probed by --check-health
//! depends_on:                             # optional
//!   - name: ledger
//!     version: ">=1.2, <2"                # semver requirement, optional (any version)
//!   - name: fraud-check
//!     optional: true                      # may be absent from the deployment
//! ```
//!
//! or the service-block shape, recognised by its top-level `service` key:
//!
//! ```yaml
//! service:
//!   name: executor
//!   version: 1.5.0
//!   health_check: http://executor:8090/health   # optional: its own health URL
//!   dependencies:                               # optional
//!     - name: analyzer
//!       version: ">=1.2.0"
//!       required: true                          # default; false = optional
//!       health_check: http://analyzer:8080/health  # the dependency's health URL
//! ```
//!
//! A dependency's `health_check` is probed (by `--check-health`) as the
//! health URL of that service when its own manifest declares none; the
//! first such URL, by dependent name, counts. Errors name fields as the
//! file writes them (`service.dependencies[1].version`).
//!
//! [`resolve`] turns the manifests into a start-up order (Kahn's algorithm,
//! ties broken by service name) and levels (services that can start in
//! parallel), and reports every problem at once, each with a stable code
//! (docs/ERRORS.md):
//!
//! | code | meaning |
//! |------|---------|
//! | `E-DEPS-GLOB` | a `--manifest` pattern is invalid or matches no file (the command stops, exit 2) |
//! | `E-DEPS-IO` | a manifest file cannot be read |
//! | `E-DEPS-PARSE` | a manifest is not valid: syntax, unknown or missing field, bad version, requirement, name or URL |
//! | `E-DEPS-DUPLICATE` | two manifests declare the same service name |
//! | `E-DEPS-MISSING` | a required dependency is declared by no manifest |
//! | `E-DEPS-VERSION` | a dependency's declared version does not satisfy the requirement |
//! | `E-DEPS-CYCLE` | the dependencies form a cycle, so no start-up order exists |
//! | `E-DEPS-HEALTH` | with `--check-health`: a health URL did not answer 2xx in time |
//! | `N-DEPS-OPTIONAL` | a note, not an error: an optional dependency is absent |
//!
//! Cycles: for every service on a cycle, at least one reported cycle passes
//! through it; each reported cycle is the shortest through the first
//! (by name) service not yet covered (see `deps/graph.rs`). All
//! elementary cycles are not listed: a dense cluster has exponentially many.
//!
//! ```
//! use jetsaga_cli::deps::{parse_manifest, resolve};
//! use jetsaga_core::saga::definition::Format;
//!
//! let ledger = parse_manifest("ledger.yaml", "name: ledger\nversion: 1.3.0\n", Format::Yaml).unwrap();
//! let payments = parse_manifest(
//!     "payments.yaml",
//!     "name: payments\nversion: 1.4.2\ndepends_on: [{name: ledger, version: '>=1.2, <2'}]\n",
//!     Format::Yaml,
//! )
//! .unwrap();
//! let resolution = resolve(vec![payments, ledger], Vec::new());
//! assert_eq!(resolution.order, Some(vec!["ledger".to_string(), "payments".to_string()]));
//! assert!(resolution.problems.is_empty());
//! ```

pub(crate) mod graph;
pub(crate) mod health;

pub use health::{HealthCheck, HealthOutcome, check_health};

use clap::{Args, Subcommand};
use jetsaga_core::saga::definition::Format;
use jetsaga_protocol::ErrorCode;
use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `jetsaga deps ...`.
#[derive(Debug, Subcommand)]
pub enum DepsCommand {
    /// Print the start-up order of the services (and their levels: services
    /// of one level can start in parallel) and every problem; exit 1 on any
    /// error, 2 when no manifest could be found.
    Resolve(DepsArgs),
    /// Print only the problems (or `ok`); exit 1 on any error, 2 when no
    /// manifest could be found.
    Validate(DepsArgs),
}

impl DepsCommand {
    /// The arguments of either subcommand.
    pub fn args(&self) -> &DepsArgs {
        match self {
            DepsCommand::Resolve(args) | DepsCommand::Validate(args) => args,
        }
    }
}

/// The arguments of `deps resolve` and `deps validate`.
#[derive(Debug, Args)]
pub struct DepsArgs {
    /// Manifest files: glob patterns such as 'services/*/manifest.yaml'
    /// (quote them) or plain paths; repeatable. A pattern matching nothing
    /// is an error.
    #[arg(long = "manifest", value_name = "GLOB", required = true, num_args = 1..)]
    pub manifests: Vec<String>,
    /// Probe every declared health URL (concurrently); one that does not
    /// answer 2xx within --health-timeout is an E-DEPS-HEALTH error.
    #[arg(long)]
    pub check_health: bool,
    /// How long each health probe may take.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub health_timeout: Duration,
}

/// Errors that stop `jetsaga deps` before any manifest is checked.
#[derive(Debug, thiserror::Error)]
pub enum DepsError {
    /// A `--manifest` pattern is invalid, cannot be walked, or matches no
    /// file (`E-DEPS-GLOB`).
    #[error("{code}: --manifest {pattern:?}: {message}", code = ErrorCode::DepsGlob)]
    Glob {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        message: String,
    },
}

/// One service as its manifest declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The file it was read from, as given (errors name it).
    pub file: String,
    /// The service name, unique in a deployment.
    pub name: String,
    /// The version the service declares.
    pub version: Version,
    /// URL answering 2xx when the service is healthy.
    pub health: Option<String>,
    /// What the service needs to be up before it starts, in file order.
    pub depends_on: Vec<Dependency>,
}

/// One entry of a manifest's `depends_on`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// The service depended on.
    pub name: String,
    /// Versions accepted; `None` accepts any.
    pub version: Option<VersionReq>,
    /// Whether the deployment may lack the service. A declared optional
    /// dependency still orders the start-up and still has its version checked.
    pub optional: bool,
    /// The dependency's health URL as this manifest gives it (the
    /// service-block shape's `health_check`); a declared service without a
    /// health URL of its own is probed at the first one given (by
    /// dependent name).
    pub health: Option<String>,
}

/// A problem found in the manifests, with a stable code ([`Problem::code`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "code")]
pub enum Problem {
    /// The file cannot be read (`E-DEPS-IO`).
    #[serde(rename = "E-DEPS-IO")]
    #[error("{file}: cannot read the manifest: {message}")]
    Io {
        /// The manifest file.
        file: String,
        /// The operating system's reason.
        message: String,
    },
    /// The manifest is not valid (`E-DEPS-PARSE`).
    #[serde(rename = "E-DEPS-PARSE")]
    #[error("{file}: {}{message}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
    Parse {
        /// The manifest file.
        file: String,
        /// The field at fault (`version`, `depends_on[1].version`), when known.
        field: Option<String>,
        /// What is wrong, with the position for syntax errors.
        message: String,
    },
    /// Two manifests declare one name (`E-DEPS-DUPLICATE`); the first file
    /// (in path order) is kept.
    #[serde(rename = "E-DEPS-DUPLICATE")]
    #[error(
        "service `{service}` is declared twice, in {first} and in {second}; remove or rename one"
    )]
    Duplicate {
        /// The name declared twice.
        service: String,
        /// The manifest kept.
        first: String,
        /// The manifest ignored.
        second: String,
    },
    /// A required dependency is declared by no manifest (`E-DEPS-MISSING`).
    #[serde(rename = "E-DEPS-MISSING")]
    #[error(
        "{service} ({file}) requires `{dependency}`, which no manifest declares; add its manifest or mark the dependency `optional: true`"
    )]
    Missing {
        /// The service with the dependency.
        service: String,
        /// Its manifest.
        file: String,
        /// The undeclared service.
        dependency: String,
    },
    /// An optional dependency is declared by no manifest (`N-DEPS-OPTIONAL`,
    /// a note, not an error).
    #[serde(rename = "N-DEPS-OPTIONAL")]
    #[error(
        "{service} ({file}): optional dependency `{dependency}` is not in this deployment; {service} starts without it"
    )]
    OptionalMissing {
        /// The service with the dependency.
        service: String,
        /// Its manifest.
        file: String,
        /// The absent service.
        dependency: String,
    },
    /// A dependency's version does not satisfy the requirement (`E-DEPS-VERSION`).
    #[serde(rename = "E-DEPS-VERSION")]
    #[error(
        "{service} ({file}) requires {dependency} {requirement}, but {dependency} declares version {declared} ({dependency_file})"
    )]
    Version {
        /// The service with the requirement.
        service: String,
        /// Its manifest.
        file: String,
        /// The service depended on.
        dependency: String,
        /// The requirement, as semver writes it.
        requirement: String,
        /// The version the dependency declares.
        declared: String,
        /// The dependency's manifest.
        dependency_file: String,
    },
    /// The dependencies form a cycle (`E-DEPS-CYCLE`): no start-up order exists.
    #[serde(rename = "E-DEPS-CYCLE")]
    #[error("dependency cycle {}: no start-up order exists; remove one of these dependencies", path.join(" -> "))]
    Cycle {
        /// Service names along "depends on" edges, the first repeated at the end.
        path: Vec<String>,
    },
    /// A health URL did not answer 2xx in time (`E-DEPS-HEALTH`).
    #[serde(rename = "E-DEPS-HEALTH")]
    #[error("{service}: health check {url} failed: {error}")]
    Health {
        /// The service probed.
        service: String,
        /// Its health URL.
        url: String,
        /// Why it counts as unhealthy.
        error: String,
    },
}

impl Problem {
    /// The stable code, as in docs/ERRORS.md.
    pub fn code(&self) -> ErrorCode {
        match self {
            Problem::Io { .. } => ErrorCode::DepsIo,
            Problem::Parse { .. } => ErrorCode::DepsParse,
            Problem::Duplicate { .. } => ErrorCode::DepsDuplicate,
            Problem::Missing { .. } => ErrorCode::DepsMissing,
            Problem::OptionalMissing { .. } => ErrorCode::DepsOptional,
            Problem::Version { .. } => ErrorCode::DepsVersion,
            Problem::Cycle { .. } => ErrorCode::DepsCycle,
            Problem::Health { .. } => ErrorCode::DepsHealth,
        }
    }

    /// Whether it fails `deps validate` (everything but notes).
    pub fn is_error(&self) -> bool {
        !matches!(self, Problem::OptionalMissing { .. })
    }

    /// The JSON form: the variant's fields plus `code`, `severity`
    /// (`error` or `note`) and `message`.
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        value["severity"] = if self.is_error() { "error" } else { "note" }.into();
        value["message"] = self.to_string().into();
        value
    }
}

// ---------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------

/// jetsaga's own manifest shape: `name`, `version`, `health`, `depends_on`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    #[serde(default)]
    health: Option<String>,
    #[serde(default)]
    depends_on: Vec<RawDependency>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDependency {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    optional: bool,
}

/// The service-block shape: everything under a top-level `service`, its
/// dependencies in `dependencies` with `required` (default true) and the
/// dependency's `health_check` URL.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceBlockFile {
    service: ServiceBlock,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceBlock {
    name: String,
    version: String,
    #[serde(default)]
    health_check: Option<String>,
    #[serde(default)]
    dependencies: Vec<ServiceBlockDependency>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceBlockDependency {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default = "yes")]
    required: bool,
    #[serde(default)]
    health_check: Option<String>,
}

fn yes() -> bool {
    true
}

/// Which shape a manifest is written in: a top-level `service` key means
/// the service-block shape.
#[derive(Deserialize)]
#[serde(rename = "manifest")]
struct Shape {
    #[serde(default)]
    service: Option<serde::de::IgnoredAny>,
}

/// A manifest of either shape, with the names its fields have in the file
/// (so errors name what the author wrote).
struct Normalized {
    name: String,
    version: String,
    health: Option<String>,
    dependencies: Vec<(String, Option<String>, bool, Option<String>)>,
    /// `""` or `"service."`.
    prefix: &'static str,
    /// `health` or `health_check`.
    health_field: &'static str,
    /// `depends_on` or `dependencies`.
    list_field: &'static str,
}

impl From<RawManifest> for Normalized {
    fn from(raw: RawManifest) -> Self {
        Normalized {
            name: raw.name,
            version: raw.version,
            health: raw.health,
            dependencies: raw
                .depends_on
                .into_iter()
                .map(|d| (d.name, d.version, d.optional, None))
                .collect(),
            prefix: "",
            health_field: "health",
            list_field: "depends_on",
        }
    }
}

impl From<ServiceBlockFile> for Normalized {
    fn from(raw: ServiceBlockFile) -> Self {
        let raw = raw.service;
        Normalized {
            name: raw.name,
            version: raw.version,
            health: raw.health_check,
            dependencies: raw
                .dependencies
                .into_iter()
                .map(|d| (d.name, d.version, !d.required, d.health_check))
                .collect(),
            prefix: "service.",
            health_field: "health_check",
            list_field: "dependencies",
        }
    }
}

/// The files the `--manifest` patterns match, sorted and without repeats.
pub fn manifest_files(patterns: &[String]) -> Result<Vec<PathBuf>, DepsError> {
    let mut files = BTreeSet::new();
    for pattern in patterns {
        let glob_error = |message: String| DepsError::Glob {
            pattern: pattern.clone(),
            message,
        };
        let paths = glob::glob(pattern).map_err(|e| glob_error(e.to_string()))?;
        let mut matched = false;
        for path in paths {
            let path = path.map_err(|e| glob_error(e.to_string()))?;
            if path.is_file() {
                matched = true;
                files.insert(path);
            }
        }
        if !matched {
            return Err(glob_error("matches no file".into()));
        }
    }
    Ok(files.into_iter().collect())
}

/// Reads and parses the manifest at `path` (format by extension, else
/// sniffed); errors name the file as `path` displays.
pub fn read_manifest(path: &Path) -> Result<Manifest, Vec<Problem>> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        vec![Problem::Io {
            file: file.clone(),
            message: e.to_string(),
        }]
    })?;
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Err(vec![Problem::Parse {
            file,
            field: None,
            message: "the file is not valid UTF-8; save it as UTF-8".into(),
        }]);
    };
    let format = Format::from_path(path).unwrap_or_else(|| Format::sniff(text));
    parse_manifest(&file, text, format)
}

/// Parses and checks manifest `text`; `file` names it in every problem.
/// Reports every invalid field at once.
pub fn parse_manifest(file: &str, text: &str, format: Format) -> Result<Manifest, Vec<Problem>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let syntax = |message: String| {
        vec![Problem::Parse {
            file: file.to_owned(),
            field: None,
            message: message.replace('\n', " "),
        }]
    };
    fn from_text<T: serde::de::DeserializeOwned>(text: &str, format: Format) -> Result<T, String> {
        match format {
            Format::Yaml => serde_saphyr::from_str_with_options(
                text,
                jetsaga_core::saga::definition::yaml_options(),
            )
            .map_err(|e| e.to_string()),
            Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
        }
    }
    let shape: Shape = from_text(text, format).map_err(syntax)?;
    let raw: Normalized = if shape.service.is_some() {
        from_text::<ServiceBlockFile>(text, format)
            .map_err(syntax)?
            .into()
    } else {
        from_text::<RawManifest>(text, format)
            .map_err(syntax)?
            .into()
    };
    let (prefix, list) = (raw.prefix, raw.list_field);
    let mut problems = Vec::new();
    let mut bad = |field: String, message: String| {
        problems.push(Problem::Parse {
            file: file.to_owned(),
            field: Some(format!("{prefix}{field}")),
            message,
        })
    };
    if let Err(e) = jetsaga_protocol::validate_token(&raw.name) {
        bad("name".into(), format!("service name {e}"));
    }
    let version = Version::parse(raw.version.trim())
        .map_err(|e| {
            bad(
                "version".into(),
                format!(
                    "{:?} is not a semver version such as 1.4.2: {e}",
                    raw.version
                ),
            )
        })
        .ok();
    if let Some(url) = &raw.health
        && let Err(message) = check_health_url(url)
    {
        bad(raw.health_field.into(), message);
    }
    let mut depends_on = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, (name, version, optional, health)) in raw.dependencies.iter().enumerate() {
        if let Err(e) = jetsaga_protocol::validate_token(name) {
            bad(format!("{list}[{i}].name"), format!("service name {e}"));
        }
        if let Some(first) = seen.insert(name, i) {
            bad(
                format!("{list}[{i}].name"),
                format!("`{name}` is already listed at {prefix}{list}[{first}]"),
            );
        }
        let requirement = match version {
            None => None,
            Some(req) => match VersionReq::parse(req.trim()) {
                Ok(req) => Some(req),
                Err(e) => {
                    bad(
                        format!("{list}[{i}].version"),
                        format!("{req:?} is not a semver requirement such as \">=1.2, <2\": {e}"),
                    );
                    None
                }
            },
        };
        if let Some(url) = health
            && let Err(message) = check_health_url(url)
        {
            bad(format!("{list}[{i}].health_check"), message);
        }
        depends_on.push(Dependency {
            name: name.clone(),
            version: requirement,
            optional: *optional,
            health: health.clone(),
        });
    }
    match version {
        Some(version) if problems.is_empty() => Ok(Manifest {
            file: file.to_owned(),
            name: raw.name,
            version,
            health: raw.health,
            depends_on,
        }),
        _ => Err(problems),
    }
}

/// Whether `url` can be probed: an http or https URL.
fn check_health_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        Ok(u) => Err(format!(
            "{url:?} has scheme {:?}; use an http:// or https:// URL",
            u.scheme()
        )),
        Err(e) => Err(format!("{url:?} is not a URL: {e}")),
    }
}

// ---------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------

/// What [`resolve`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The services, sorted by name (a duplicate name keeps its first file).
    pub services: Vec<Manifest>,
    /// Service names in start-up order; `None` when a cycle leaves no order.
    pub order: Option<Vec<String>>,
    /// The level of each service (0: depends on nothing declared, else one
    /// more than its highest dependency), as groups of names that can start
    /// in parallel; `None` when there is no order.
    pub levels: Option<Vec<Vec<String>>>,
    /// Services on no cycle that cannot be ordered because they depend on
    /// one, sorted.
    pub unordered: Vec<String>,
    /// Every problem, errors and notes, in a stable order: the ones given
    /// to [`resolve`], duplicates, per service (by name) its dependencies'
    /// problems, cycles, then health.
    pub problems: Vec<Problem>,
    /// The probes of `--check-health`, by service name.
    pub health: Option<Vec<HealthCheck>>,
}

impl Resolution {
    /// Whether any problem is an error.
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(Problem::is_error)
    }

    /// The process exit code: 0 without errors, 1 with.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.has_errors())
    }

    /// The manifest of `name`.
    pub fn service(&self, name: &str) -> Option<&Manifest> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Adds the health probes' results: an [`Problem::Health`] per failure.
    pub fn add_health(&mut self, checks: Vec<HealthCheck>) {
        for check in &checks {
            if let HealthOutcome::Unhealthy { error } = &check.outcome {
                self.problems.push(Problem::Health {
                    service: check.service.clone(),
                    url: check.url.clone(),
                    error: error.clone(),
                });
            }
        }
        self.health = Some(checks);
    }

    /// The JSON report of `deps resolve` (`with_order`) or `deps validate`:
    /// `ok`, `problems` and, when probed, `health`; with the order also
    /// `services`, `order`, `levels` and `unordered`.
    pub fn to_json(&self, with_order: bool) -> Value {
        let mut report = json!({
            "ok": !self.has_errors(),
            "problems": self.problems.iter().map(Problem::to_json).collect::<Vec<_>>(),
        });
        if with_order {
            report["services"] = self
                .services
                .iter()
                .map(|s| {
                    json!({
                        "name": s.name,
                        "version": s.version.to_string(),
                        "file": s.file,
                        "health": s.health,
                        "depends_on": s.depends_on.iter().map(|d| json!({
                            "name": d.name,
                            "version": d.version.as_ref().map(ToString::to_string),
                            "optional": d.optional,
                            "health": d.health,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            report["order"] = json!(self.order);
            report["levels"] = json!(self.levels);
            report["unordered"] = json!(self.unordered);
        }
        if let Some(health) = &self.health {
            report["health"] = json!(health);
        }
        report
    }
}

/// Reads every manifest the patterns match: the manifests that parsed and
/// the problems of those that did not.
pub fn load(patterns: &[String]) -> Result<(Vec<Manifest>, Vec<Problem>), DepsError> {
    let mut manifests = Vec::new();
    let mut problems = Vec::new();
    for file in manifest_files(patterns)? {
        match read_manifest(&file) {
            Ok(manifest) => manifests.push(manifest),
            Err(found) => problems.extend(found),
        }
    }
    Ok((manifests, problems))
}

/// Orders `manifests` and checks their dependencies; `problems` (say, of
/// manifests that did not parse) come first in the result.
pub fn resolve(mut manifests: Vec<Manifest>, mut problems: Vec<Problem>) -> Resolution {
    manifests.sort_by(|a, b| (&a.name, &a.file).cmp(&(&b.name, &b.file)));
    let mut services: Vec<Manifest> = Vec::with_capacity(manifests.len());
    for manifest in manifests {
        match services.last() {
            Some(kept) if kept.name == manifest.name => problems.push(Problem::Duplicate {
                service: manifest.name.clone(),
                first: kept.file.clone(),
                second: manifest.file,
            }),
            _ => services.push(manifest),
        }
    }
    // A dependency's health URL given by a dependent (`health_check`)
    // stands for a service that declares none of its own.
    let given: HashMap<String, String> = services
        .iter()
        .rev()
        .flat_map(|s| &s.depends_on)
        .filter_map(|d| Some((d.name.clone(), d.health.clone()?)))
        .collect();
    for service in &mut services {
        if service.health.is_none() {
            service.health = given.get(&service.name).cloned();
        }
    }
    let index: HashMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut deps = vec![Vec::new(); services.len()];
    for (i, service) in services.iter().enumerate() {
        for dep in &service.depends_on {
            let Some(&target) = index.get(dep.name.as_str()) else {
                let (service, file, dependency) =
                    (service.name.clone(), service.file.clone(), dep.name.clone());
                problems.push(if dep.optional {
                    Problem::OptionalMissing {
                        service,
                        file,
                        dependency,
                    }
                } else {
                    Problem::Missing {
                        service,
                        file,
                        dependency,
                    }
                });
                continue;
            };
            deps[i].push(target);
            let declared = &services[target];
            if let Some(req) = &dep.version
                && !req.matches(&declared.version)
            {
                problems.push(Problem::Version {
                    service: service.name.clone(),
                    file: service.file.clone(),
                    dependency: dep.name.clone(),
                    requirement: req.to_string(),
                    declared: declared.version.to_string(),
                    dependency_file: declared.file.clone(),
                });
            }
        }
    }
    let layering = graph::layering(&deps);
    let name = |i: usize| services[i].name.clone();
    let (order, levels, unordered) = if layering.order.len() == services.len() {
        let mut levels: Vec<Vec<String>> = Vec::new();
        for (i, level) in layering.level.iter().enumerate() {
            let level = level.unwrap_or_default();
            if levels.len() <= level {
                levels.resize_with(level + 1, Vec::new);
            }
            levels[level].push(name(i));
        }
        let order = layering.order.iter().map(|&i| name(i)).collect();
        (Some(order), Some(levels), Vec::new())
    } else {
        let cycles = graph::cycle_cover(&deps, &layering);
        let on_cycle: BTreeSet<usize> = cycles.iter().flatten().copied().collect();
        for cycle in &cycles {
            problems.push(Problem::Cycle {
                path: cycle.iter().map(|&i| name(i)).collect(),
            });
        }
        let unordered = (0..services.len())
            .filter(|i| layering.level[*i].is_none() && !on_cycle.contains(i))
            .map(name)
            .collect();
        (None, None, unordered)
    };
    Resolution {
        services,
        order,
        levels,
        unordered,
        problems,
        health: None,
    }
}

/// Runs `deps resolve` / `deps validate` up to the report: loads the
/// manifests, resolves them, probes health when asked.
pub async fn run(cmd: &DepsCommand) -> Result<Resolution, DepsError> {
    let args = cmd.args();
    let (manifests, problems) = load(&args.manifests)?;
    let mut resolution = resolve(manifests, problems);
    if args.check_health {
        let checks = check_health(&resolution.services, args.health_timeout).await;
        resolution.add_health(checks);
    }
    Ok(resolution)
}

#[cfg(test)]
mod tests;

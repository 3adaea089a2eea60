//! Reading definition text: formats, the YAML and JSON parsers and their
//! error positions; the text becomes the file's raw shape ([`super::raw`]),
//! which [`super::build`] turns into the model.

use std::path::Path;

use super::build::build_file;
use super::error::DefinitionError;
use super::raw::RawFile;
use super::{DefinitionFile, DefinitionLimits};

/// Syntax of a definition file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// YAML 1.2 (a single document).
    Yaml,
    /// JSON.
    Json,
}

impl Format {
    /// The format named by `path`'s extension (`.yaml`, `.yml`, `.json`, any case).
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    /// Guesses the format of `text`: JSON if its first non-blank character is `{`, else YAML.
    pub fn sniff(text: &str) -> Format {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.trim_start().starts_with('{') {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}

/// Reads, parses and validates the definition file at `path`.
///
/// The format follows the extension (`.yaml`, `.yml`, `.json`); any other
/// file is sniffed with [`Format::sniff`]. Errors name the file as `path`
/// displays. Applies the default [`DefinitionLimits`].
pub fn parse_file(path: &Path) -> Result<DefinitionFile, DefinitionError> {
    parse_file_within(path, &DefinitionLimits::default())
}

/// Like [`parse_file`], refusing what is over `limits` (`E-DEF-TOO-LARGE`);
/// a file over the size limit is not read past it.
pub fn parse_file_within(
    path: &Path,
    limits: &DefinitionLimits,
) -> Result<DefinitionFile, DefinitionError> {
    use std::io::Read;
    let source_name = path.display().to_string();
    let io = |error| DefinitionError::Io {
        source_name: source_name.clone(),
        error,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(limits.max_file_bytes as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(io)?;
    if bytes.len() > limits.max_file_bytes {
        // Name the file's whole size, not the prefix read.
        let len = std::fs::metadata(path).map_or(0, |m| m.len() as usize);
        limits.check_file(&source_name, len.max(bytes.len()))?;
    }
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() as u64 + 1;
            let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&valid[line_start..])
                .chars()
                .count() as u64
                + 1;
            return Err(DefinitionError::Parse {
                source_name,
                line: Some(line),
                column: Some(column),
                message: "the file is not valid UTF-8; save it as UTF-8".into(),
            });
        }
    };
    let format = Format::from_path(path).unwrap_or_else(|| Format::sniff(text));
    parse_str_within(&source_name, text, format, limits)
}

/// Parses and validates definition `text` in `format`; `source_name` (a file
/// name, say) prefixes every error message. Applies the default [`DefinitionLimits`].
pub fn parse_str(
    source_name: &str,
    text: &str,
    format: Format,
) -> Result<DefinitionFile, DefinitionError> {
    parse_str_within(source_name, text, format, &DefinitionLimits::default())
}

/// Like [`parse_str`], refusing what is over `limits` (`E-DEF-TOO-LARGE`);
/// text over the size limit is not parsed.
pub fn parse_str_within(
    source_name: &str,
    text: &str,
    format: Format,
    limits: &DefinitionLimits,
) -> Result<DefinitionFile, DefinitionError> {
    limits.check_file(source_name, text.len())?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw = match format {
        Format::Yaml => parse_yaml(source_name, text)?,
        Format::Json => parse_json(source_name, text)?,
    };
    build_file(source_name, raw, limits)
}

/// How every YAML file the engine reads is parsed (definitions, the
/// configuration, service manifests): no source snippet in errors (callers
/// name the place themselves), and a duplicate key is an error, never
/// silently merged.
pub fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options
}

fn parse_yaml(source_name: &str, text: &str) -> Result<RawFile, DefinitionError> {
    serde_saphyr::from_str_with_options::<RawFile>(text, yaml_options()).map_err(|e| {
        let location = e.location();
        let mut render = serde_saphyr::RenderOptions::new(&YAML_MESSAGES);
        render.snippets = serde_saphyr::SnippetMode::Off;
        DefinitionError::Parse {
            source_name: source_name.to_owned(),
            line: location.map(|l| l.line()),
            column: location.map(|l| l.column()),
            message: one_line(&e.render_with_options(render)),
        }
    })
}

/// Renders serde-saphyr's user-facing messages (no hints about parser
/// options) without their "at line X, column Y" suffix:
/// [`DefinitionError::Parse`] carries the position itself.
struct YamlMessages;

static YAML_MESSAGES: YamlMessages = YamlMessages;

struct NoLocationSuffix;

impl serde_saphyr::Localizer for NoLocationSuffix {
    fn attach_location<'a>(
        &self,
        base: std::borrow::Cow<'a, str>,
        _loc: serde_saphyr::Location,
    ) -> std::borrow::Cow<'a, str> {
        base
    }
}

impl serde_saphyr::MessageFormatter for YamlMessages {
    fn localizer(&self) -> &dyn serde_saphyr::Localizer {
        &NoLocationSuffix
    }
    fn format_message<'a>(&self, err: &'a serde_saphyr::Error) -> std::borrow::Cow<'a, str> {
        serde_saphyr::MessageFormatter::format_message(&serde_saphyr::UserMessageFormatter, err)
    }
}

fn parse_json(source_name: &str, text: &str) -> Result<RawFile, DefinitionError> {
    serde_json::from_str::<RawFile>(text).map_err(|e| {
        let (line, column) = if e.line() == 0 {
            (None, None)
        } else {
            (Some(e.line() as u64), Some(e.column() as u64))
        };
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full);
        DefinitionError::Parse {
            source_name: source_name.to_owned(),
            line,
            column,
            message: one_line(message),
        }
    })
}

fn one_line(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

//! Triggers: subjects whose messages each start one saga, and the mapping
//! of a message body to the saga's input.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use super::entries::Entries;
use super::error::{DefinitionError, Escaped, Place};

/// A trigger of a saga definition: every message on `subject` starts one
/// saga, deduplicated by the event's id (see the engine's `triggers` module).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// NATS subject; `*` matches one token, a final `>` the rest.
    pub subject: String,
    /// Saga input field → where its value is in the message body: a JSON
    /// pointer (`/data/id`) or a dotted path (`data.id`). Absent: the input
    /// is the CloudEvent's `data` for a CloudEvent, else the whole body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrigger {
    subject: String,
    #[serde(default)]
    input: Option<Entries<String>>,
}

pub(super) fn build_triggers(raw: Vec<RawTrigger>) -> Vec<Trigger> {
    raw.into_iter()
        .map(|t| Trigger {
            subject: t.subject,
            input: t.input.map(|e| e.0.into_iter().collect()),
        })
        .collect()
}

/// Checks that `subject` is a NATS subject a trigger may listen on: dot
/// separated non-empty tokens without whitespace, `*` and `>` only as whole
/// tokens, `>` only last, not a `$` system subject (`$JS.`, `$KV.`, …), not
/// a reply inbox (`_INBOX.`), not wildcards alone (`>`, `*.>`, `*.*.*`),
/// and not a subject of any installation's engine (`<prefix>.<kind>.…` for
/// every kind of [`jetsaga_protocol::SUBJECT_KINDS`] but `event`: `task`,
/// `result`, `start`, `api`, `progress`, `journal`, `lead`), whose streams
/// capture or serve it. Lifecycle events (`<prefix>.event.…`) pass here:
/// the engine checks them against its own prefix when the definition is
/// applied.
///
/// A wildcard where an installation's prefix or kind could stand
/// (`acme.*.payments`, `orders.>`) is not refused: it could match
/// `acme.task.payments` of an installation with prefix `acme`, but so could
/// almost any application subject with a wildcard, and refusing those would
/// refuse legitimate triggers. Start-up names the stream that overlaps
/// when that happens.
pub fn validate_trigger_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("the subject is empty".into());
    }
    if subject.len() > 255 {
        return Err(format!(
            "the subject is {} bytes long; at most 255",
            subject.len()
        ));
    }
    if subject.starts_with('$') {
        return Err(format!(
            "`{}` is a system subject; triggers listen on application subjects",
            Escaped(subject)
        ));
    }
    if subject == "_INBOX" || subject.starts_with("_INBOX.") {
        return Err(format!(
            "`{}` is a reply inbox; triggers listen on application subjects",
            Escaped(subject)
        ));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!(
                "`{}` has an empty token (a leading, trailing or double dot)",
                Escaped(subject)
            ));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("`{}` contains whitespace", Escaped(subject)));
        }
        if token.len() > 1 && (token.contains('*') || token.contains('>')) {
            return Err(format!(
                "`{}`: the wildcards `*` and `>` must be whole tokens",
                Escaped(subject)
            ));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err(format!(
                "`{}`: `>` may only be the last token",
                Escaped(subject)
            ));
        }
    }
    if tokens.iter().all(|t| *t == "*" || *t == ">") {
        return Err(format!(
            "`{}` is wildcards alone: it would capture every message of that shape, the engine subjects of every installation among them; name the subjects (`orders.>`, `orders.*.created`)",
            Escaped(subject)
        ));
    }
    if let Some((prefix, kind)) = jetsaga_protocol::installation_subject(subject)
        && kind != "event"
    {
        return Err(format!(
            "`{}` is a jetsaga engine subject (the {kind} subjects of an installation with prefix `{}`), which that installation's streams capture; a trigger there would break it. Trigger on an application subject (one without a `{kind}` token after the first)",
            Escaped(subject),
            Escaped(prefix)
        ));
    }
    Ok(())
}

/// The JSON pointer a trigger's `input` path stands for: a path starting
/// with `/` (or empty, the whole body) is one already; a dotted path
/// (`data.id`, `data.items.0`) is turned into one.
pub fn input_pointer(path: &str) -> Result<String, String> {
    if path.is_empty() || path.starts_with('/') {
        let mut chars = path.chars();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return Err(format!(
                    "`{}` is not a JSON pointer: `~` must be followed by 0 or 1",
                    Escaped(path)
                ));
            }
        }
        return Ok(path.to_string());
    }
    let mut pointer = String::new();
    for segment in path.split('.') {
        if segment.is_empty() {
            return Err(format!(
                "`{}` has an empty segment; write `data.id` or a JSON pointer such as `/data/id`",
                Escaped(path)
            ));
        }
        pointer.push('/');
        pointer.push_str(&segment.replace('~', "~0").replace('/', "~1"));
    }
    Ok(pointer)
}

pub(super) fn check_triggers(saga: &Place, triggers: &[Trigger], errs: &mut Vec<DefinitionError>) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, trigger) in triggers.iter().enumerate() {
        let field = |f: &str| Box::new(saga.field(&format!("triggers[{i}].{f}")));
        if let Err(reason) = validate_trigger_subject(&trigger.subject) {
            errs.push(DefinitionError::InvalidTrigger {
                place: field("subject"),
                reason,
            });
        }
        if let Some(first) = seen.insert(&trigger.subject, i) {
            errs.push(DefinitionError::InvalidTrigger {
                place: field("subject"),
                reason: format!(
                    "subject `{}` is already the subject of triggers[{first}]; list each subject once",
                    Escaped(&trigger.subject)
                ),
            });
        }
        let Some(input) = &trigger.input else {
            continue;
        };
        if input.is_empty() {
            errs.push(DefinitionError::InvalidTrigger {
                place: field("input"),
                reason: "the mapping is empty; map at least one input field, or remove `input` to pass the event's data".into(),
            });
        }
        for (name, path) in input {
            if name.is_empty() {
                errs.push(DefinitionError::InvalidTrigger {
                    place: field("input"),
                    reason: "an input field name is empty".into(),
                });
            }
            if let Err(reason) = input_pointer(path) {
                errs.push(DefinitionError::InvalidTrigger {
                    place: field(&format!("input.{name}")),
                    reason,
                });
            }
        }
    }
}

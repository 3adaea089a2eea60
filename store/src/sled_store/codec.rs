//! How keys and values are spelled in bytes (the layout in the module
//! docs), and the errors of reading them back.

use crate::StoreError;
use jetsaga_core::saga::state::{Millis, Saga, StepState, TimerKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sled::transaction::TransactionError;

/// Key separator between variable-length parts.
pub(super) const SEP: u8 = 0x00;
/// `a ‖ 0x00 ‖ b`.
pub(super) fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + 1 + b.len());
    key.extend_from_slice(a);
    key.push(SEP);
    key.extend_from_slice(b);
    key
}

/// `finished_at u64 ‖ saga id`: the `finished` key of a terminal saga
/// (`None` for one that is not terminal). A terminal saga always has
/// `finished_at`; `updated_at` stands in should it lack one.
pub(super) fn finished_key(saga: &Saga) -> Option<Vec<u8>> {
    if !saga.status.is_terminal() {
        return None;
    }
    let at = saga.finished_at.unwrap_or(saga.updated_at);
    Some(finished_key_at(at, saga.id.as_bytes()))
}

/// `at u64 ‖ id`.
pub(super) fn finished_key_at(at: Millis, id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + id.len());
    key.extend_from_slice(&at.to_be_bytes());
    key.extend_from_slice(id);
    key
}
/// `saga id ‖ 0x00 ‖ index u32`: the `saga_steps` key of a saga's step.
pub(super) fn step_key(id: &[u8], index: u32) -> Vec<u8> {
    join(id, &index.to_be_bytes())
}

/// Key of held task `seq` in the `admission` tree.
pub(super) fn held_key(seq: u64) -> Vec<u8> {
    join_prefix(b'h', &seq.to_be_bytes())
}

/// Key of `service`'s breaker in the `admission` tree.
pub(super) fn breaker_key(service: &str) -> Vec<u8> {
    join_prefix(b'b', service.as_bytes())
}

pub(super) fn join_prefix(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(rest.len() + 1);
    key.push(prefix);
    key.extend_from_slice(rest);
    key
}

pub(super) fn definition_key(name: &str, version: u32) -> Vec<u8> {
    join(name.as_bytes(), &version.to_be_bytes())
}

/// `saga id ‖ 0x00 ‖ timer JSON`: the `timer_index` key, and the tail of the
/// `timers` key.
pub(super) fn timer_ident(saga_id: &str, timer: &TimerKind) -> Result<Vec<u8>, StoreError> {
    let kind = encode("timer_index", saga_id.as_bytes(), timer)?;
    Ok(join(saga_id.as_bytes(), &kind))
}

pub(super) fn timer_key(due: Millis, ident: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + ident.len());
    key.extend_from_slice(&due.to_be_bytes());
    key.extend_from_slice(ident);
    key
}

pub(super) fn u64_of(tree: &str, key: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        key: printable(tree, key),
        source: serde::de::Error::custom(format!("expected 8 bytes, found {}", bytes.len())),
    })?;
    Ok(u64::from_be_bytes(arr))
}

pub(super) fn u32_of(tree: &str, key: &[u8], bytes: &[u8]) -> Result<u32, StoreError> {
    let arr: [u8; 4] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        key: printable(tree, key),
        source: serde::de::Error::custom(format!("expected 4 bytes, found {}", bytes.len())),
    })?;
    Ok(u32::from_be_bytes(arr))
}

/// A key as text for error messages: `tree/part/part`.
pub(super) fn printable(tree: &str, key: &[u8]) -> String {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).replace('\0', "/");
    let shown = match tree {
        "outbox" | "queued" => match <[u8; 8]>::try_from(key) {
            Ok(seq) => u64::from_be_bytes(seq).to_string(),
            Err(_) => text(key),
        },
        "timers" | "finished" if key.len() >= 8 => {
            let (due, ident) = key.split_at(8);
            let due = u64::from_be_bytes(due.try_into().unwrap_or_default());
            format!("{due}/{}", text(ident))
        }
        "saga_steps" if key.len() >= 5 => {
            let (id, index) = key.split_at(key.len() - 4);
            let index = u32::from_be_bytes(index.try_into().unwrap_or_default());
            format!("{}{index}", text(id))
        }
        "definitions" if key.len() >= 5 => {
            let (name, version) = key.split_at(key.len() - 4);
            let version = u32::from_be_bytes(version.try_into().unwrap_or_default());
            format!("{}v{version}", text(name))
        }
        _ => text(key),
    };
    format!("{tree}/{shown}")
}

pub(super) fn decode<T: DeserializeOwned>(
    tree: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: printable(tree, key),
        source,
    })
}

pub(super) fn encode<T: Serialize + ?Sized>(
    tree: &str,
    key: &[u8],
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        key: printable(tree, key),
        source,
    })
}

/// First byte of a frame, `0x01 ‖ header length u32 ‖ header JSON ‖ body`:
/// an outbox row (body: the raw payload) or a saga in one row (body: its
/// input and steps). Rows written as JSON start with `{`.
const FRAME: u8 = 0x01;

/// A frame of `header` (encoded) and a body `write_body` appends, for the
/// row `tree`/`key`.
pub(super) fn frame(
    tree: &str,
    key: &[u8],
    header: &[u8],
    body_hint: usize,
    write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), StoreError>,
) -> Result<Vec<u8>, StoreError> {
    let len = u32::try_from(header.len()).map_err(|_| StoreError::Encode {
        key: printable(tree, key),
        source: serde::ser::Error::custom("a frame header over 4 GiB"),
    })?;
    let mut row = Vec::with_capacity((5 + header.len()).saturating_add(body_hint));
    row.push(FRAME);
    row.extend_from_slice(&len.to_be_bytes());
    row.extend_from_slice(header);
    write_body(&mut row)?;
    Ok(row)
}

/// Whether a row is a frame (else JSON).
pub(super) fn is_frame(row: &[u8]) -> bool {
    row.first() == Some(&FRAME)
}

/// A frame's header and body.
pub(super) type Framed<'a> = (&'a [u8], &'a [u8]);

/// A frame's header and body; `None` for a row that is not a frame.
pub(super) fn unframe<'a>(
    tree: &str,
    key: &[u8],
    row: &'a [u8],
) -> Result<Option<Framed<'a>>, StoreError> {
    let Some((&FRAME, rest)) = row.split_first() else {
        return Ok(None);
    };
    let corrupt = |what: &str| StoreError::Corrupt {
        key: printable(tree, key),
        source: serde::de::Error::custom(what),
    };
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("a frame shorter than its header length"))?;
    let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
    if rest.len() < len {
        return Err(corrupt("a frame shorter than its header"));
    }
    Ok(Some(rest.split_at(len)))
}

/// What a saga in one row holds besides its header.
#[derive(Serialize)]
struct BodyRef<'a> {
    input: &'a Value,
    steps: &'a [StepState],
}

#[derive(Deserialize)]
struct Body {
    input: Value,
    steps: Vec<StepState>,
}

/// Saga `saga` in one `sagas` row: a frame of its header (`header`,
/// encoded) and `{"input": …, "steps": […]}`, so that reading the header
/// alone does not decode the steps. `None` once the row would pass `max`
/// bytes (the serialiser is stopped there, so this costs at most about
/// `max` bytes' work for a saga whose strings are short).
pub(super) fn encode_one_row_within(
    id: &[u8],
    header: &[u8],
    saga: &Saga,
    max: usize,
) -> Result<Option<Vec<u8>>, StoreError> {
    /// Appends to the row, and fails past `max` (which stops serde).
    struct Capped<'a> {
        row: &'a mut Vec<u8>,
        max: usize,
    }
    impl std::io::Write for Capped<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.row.len() + buf.len() > self.max {
                return Err(std::io::ErrorKind::FileTooLarge.into());
            }
            self.row.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut too_large = false;
    let row = frame(
        "sagas",
        id,
        header,
        max.min(crate::ONE_ROW_MAX).saturating_sub(header.len()),
        |row| {
            let body = BodyRef {
                input: &saga.input,
                steps: &saga.steps,
            };
            match serde_json::to_writer(Capped { row, max }, &body) {
                Ok(()) => Ok(()),
                Err(e) if e.is_io() => {
                    too_large = true;
                    Ok(())
                }
                Err(source) => Err(StoreError::Encode {
                    key: printable("sagas", id),
                    source,
                }),
            }
        },
    )?;
    Ok((!too_large && row.len() <= max).then_some(row))
}

/// Whether a `sagas` row holds the whole saga.
pub(super) fn is_one_row(row: &[u8]) -> bool {
    is_frame(row)
}

/// A `sagas` row decoded: the whole saga of one in one row, the header
/// (`steps` empty, `input` null) of one stored in parts.
pub(super) fn decode_saga_row(id: &[u8], row: &[u8]) -> Result<Saga, StoreError> {
    let Some((header, body)) = unframe("sagas", id, row)? else {
        return decode("sagas", id, row);
    };
    let mut saga: Saga = decode("sagas", id, header)?;
    let body: Body = decode("sagas", id, body)?;
    saga.input = body.input;
    saga.steps = body.steps;
    Ok(saga)
}

/// The header of a `sagas` row, either form (`steps` empty, `input` null).
pub(super) fn decode_header(id: &[u8], row: &[u8]) -> Result<Saga, StoreError> {
    match unframe("sagas", id, row)? {
        Some((header, _)) => decode("sagas", id, header),
        None => decode("sagas", id, row),
    }
}

pub(super) fn tx_error(error: TransactionError<StoreError>) -> StoreError {
    match error {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Io(e),
    }
}

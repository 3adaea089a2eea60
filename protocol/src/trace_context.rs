//! W3C trace context (`traceparent`) as carried by tasks and start requests.
//!
//! The engine puts a [`HEADER_TRACEPARENT`] header on every task it
//! dispatches while tracing is on: the trace of the saga and, as parent, the
//! span of the step attempt the task belongs to. Workers parent their handler
//! spans on it, so a whole saga reads as one trace. With the `otel` feature,
//! [`TraceParent::span_context`] and [`TraceParent::context`] turn it into
//! OpenTelemetry's types.

use std::fmt;
use std::str::FromStr;

/// Header of a task (and of a start request) carrying the W3C trace context.
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// A W3C trace context (`traceparent`, version `00`):
/// `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// Trace id; never all zeros.
    pub trace_id: [u8; 16],
    /// Span id of the parent; never all zeros.
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

/// Why a `traceparent` value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParentError {
    /// The value refused (at most 64 characters of it).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for TraceParentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed traceparent {:?}: {}", self.value, self.reason)
    }
}

impl std::error::Error for TraceParentError {}

impl TraceParent {
    /// Whether the caller sampled the trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Parses a header value; `None` (never a panic) for anything that is
    /// not a valid trace parent.
    pub fn parse(value: &str) -> Option<Self> {
        value.parse().ok()
    }
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    /// Parses version `00` exactly, and higher versions by their first four
    /// fields as the W3C recommendation asks; rejects version `ff`, bad
    /// lengths, non-hex or uppercase digits and all-zero ids.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let err = |reason| TraceParentError {
            value: value.chars().take(64).collect(),
            reason,
        };
        let value = value.trim();
        let mut parts = value.split('-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err("expected version-traceid-spanid-flags"));
        };
        let version = hex::<1>(version).ok_or_else(|| err("version is not 2 hex digits"))?[0];
        if version == 0xff {
            return Err(err("version ff is invalid"));
        }
        if version == 0 && parts.next().is_some() {
            return Err(err("version 00 has exactly four fields"));
        }
        let trace_id = hex::<16>(trace).ok_or_else(|| err("trace id is not 32 hex digits"))?;
        let span_id = hex::<8>(span).ok_or_else(|| err("parent id is not 16 hex digits"))?;
        let flags = hex::<1>(flags).ok_or_else(|| err("flags are not 2 hex digits"))?[0];
        if trace_id == [0; 16] {
            return Err(err("trace id is all zeros"));
        }
        if span_id == [0; 8] {
            return Err(err("parent id is all zeros"));
        }
        Ok(Self {
            trace_id,
            span_id,
            flags,
        })
    }
}

impl fmt::Display for TraceParent {
    /// Formats as version `00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.span_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

/// `N` bytes from exactly `2 * N` lowercase hex digits.
fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(feature = "otel")]
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

#[cfg(feature = "otel")]
impl TraceParent {
    /// The remote span context this trace parent names.
    pub fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        )
    }

    /// An OpenTelemetry context whose (remote) parent span is this one.
    pub fn context(&self) -> opentelemetry::Context {
        opentelemetry::Context::new().with_remote_span_context(self.span_context())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips() {
        let tp: TraceParent = EXAMPLE.parse().unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.span_id[7], 0xb7);
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), EXAMPLE);
        #[cfg(feature = "otel")]
        {
            let sc = tp.span_context();
            assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        }
        // A later version: the first four fields count, the rest is ignored.
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-ever";
        let tp = TraceParent::parse(future).unwrap();
        assert!(!tp.sampled());
        assert_eq!(
            tp.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "-",
            "garbage",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47é6-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad:?} was accepted");
            let err = bad.parse::<TraceParent>().unwrap_err();
            assert!(
                err.to_string().starts_with("malformed traceparent"),
                "{err}"
            );
        }
    }
}

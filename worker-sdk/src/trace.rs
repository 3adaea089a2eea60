//! OpenTelemetry traces: the W3C `traceparent` a task carries, and (feature
//! `otlp`) the exporter setup of worker processes.
//!
//! The engine puts a [`HEADER_TRACEPARENT`] header on every task it
//! dispatches while tracing is on: the trace of the saga and, as parent, the
//! span of the step attempt the task belongs to. The worker makes its
//! `task` span (the one every handler runs in) a child of that remote span
//! ([`link`]), so the `tracing` spans a handler opens nest under it and the
//! whole saga reads as one trace: caller → saga → step attempt → handler.
//!
//! Linking needs a [`tracing_opentelemetry`] layer in the process's
//! subscriber; without one it does nothing. With the `otlp` feature,
//! [`init`] sets up an OTLP exporter from the standard `OTEL_*` environment
//! variables and [`layer`] gives the layer to add to your subscriber:
//!
//! ```no_run
//! # #[cfg(feature = "otlp")] {
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//!
//! // Off (and free) unless OTEL_EXPORTER_OTLP_ENDPOINT or
//! // OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set.
//! let _trace = jetsaga_worker::trace::init();
//! tracing_subscriber::registry()
//!     .with(tracing_subscriber::fmt::layer())
//!     .with(jetsaga_worker::trace::layer())
//!     .init();
//! // ... run workers; dropping `_trace` flushes the spans not yet exported.
//! # }
//! ```

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed traceparent {value:?}: {reason}")]
pub struct TraceParentError {
    /// The value refused (at most 64 characters of it).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl TraceParent {
    /// Whether the caller sampled the trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

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

/// The trace parent in NATS `headers`, if there is a valid one.
pub fn from_headers(headers: Option<&async_nats::HeaderMap>) -> Option<TraceParent> {
    TraceParent::parse(headers?.get(HEADER_TRACEPARENT)?.as_str())
}

/// Makes `span` a child of the remote span named by the `traceparent` in
/// `headers`. Does nothing when there is none (or a malformed one) or when
/// the subscriber has no [`tracing_opentelemetry`] layer.
pub fn link(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if span.is_disabled() {
        return;
    }
    if let Some(parent) = from_headers(headers) {
        // `Err` only says that no OpenTelemetry layer is installed.
        let _ = span.set_parent(parent.context());
    }
}

#[cfg(feature = "otlp")]
pub use otlp::{TraceGuard, init, layer, provider_builder};

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer, TracerProviderBuilder};
    use std::sync::OnceLock;

    /// The provider [`init`] installed, for [`layer`].
    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    /// Whether the environment asks for traces: an OTLP endpoint is set
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`),
    /// `OTEL_TRACES_EXPORTER` is unset or `otlp`, and `OTEL_SDK_DISABLED`
    /// is not `true`.
    fn wanted() -> bool {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return false;
        }
        match var("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return false,
            Some(other) => {
                tracing::warn!(
                    exporter = other,
                    "OTEL_TRACES_EXPORTER names an exporter jetsaga does not have (only `otlp` and `none`); traces are off"
                );
                return false;
            }
        }
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
        match endpoint {
            None => false,
            Some(e)
                if !(e.trim_start().starts_with("http://")
                    || e.trim_start().starts_with("https://")) =>
            {
                tracing::warn!(
                    endpoint = %e,
                    "the OTLP endpoint must be an http:// or https:// URL (OTLP over HTTP/protobuf; gRPC is not built in); traces are off"
                );
                false
            }
            Some(_) => true,
        }
    }

    /// A tracer provider builder exporting over OTLP/HTTP (protobuf) as the
    /// standard `OTEL_*` variables say, with a batch span processor and the
    /// resource `service.name` = `OTEL_SERVICE_NAME`, else `default_service`.
    /// `None` when tracing is off (see [`init`]) or the exporter cannot be
    /// built (logged).
    pub fn provider_builder(default_service: &str) -> Option<TracerProviderBuilder> {
        if !wanted() {
            return None;
        }
        // The exporter's HTTP client takes TLS from rustls with the process's
        // default crypto provider (an error if one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the OTLP span exporter; traces are off");
                return None;
            }
        };
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty()) {
            resource = resource.with_service_name(default_service.to_string());
        }
        Some(
            SdkTracerProvider::builder()
                .with_resource(resource.build())
                .with_batch_exporter(exporter),
        )
    }

    /// Flushes and shuts the tracer provider down when dropped. Hold it for
    /// the life of the process (drop it after the work is done).
    #[derive(Debug, Default)]
    #[must_use = "dropping the guard shuts tracing down"]
    pub struct TraceGuard {
        /// The provider to shut down; `None` when tracing is off.
        provider: Option<SdkTracerProvider>,
    }

    impl TraceGuard {
        /// A guard that shuts `provider` down when dropped.
        pub fn new(provider: Option<SdkTracerProvider>) -> Self {
            Self { provider }
        }

        /// Whether traces are exported.
        pub fn enabled(&self) -> bool {
            self.provider.is_some()
        }
    }

    impl Drop for TraceGuard {
        fn drop(&mut self) {
            if let Some(provider) = self.provider.take()
                && let Err(e) = provider.shutdown()
            {
                eprintln!("could not flush the last spans: {e}");
            }
        }
    }

    /// Sets up trace export for a worker process from the `OTEL_*`
    /// environment (service name default `jetsaga-worker`) and makes it the
    /// global tracer provider; off, at no cost, when no OTLP endpoint is set.
    /// Call it once, before building the subscriber with [`layer`].
    pub fn init() -> TraceGuard {
        let Some(builder) = provider_builder("jetsaga-worker") else {
            return TraceGuard::default();
        };
        let provider = builder.build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        let _ = PROVIDER.set(provider.clone());
        TraceGuard::new(Some(provider))
    }

    /// The layer that turns `tracing` spans into OpenTelemetry spans of the
    /// provider [`init`] set up; `None` (a layer that does nothing) when
    /// tracing is off.
    pub fn layer<S>() -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, Tracer>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let provider = PROVIDER.get()?;
        Some(tracing_opentelemetry::layer().with_tracer(provider.tracer("jetsaga-worker")))
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
        let sc = tp.span_context();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
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

    #[test]
    fn headers_without_a_valid_traceparent_link_nothing() {
        assert_eq!(from_headers(None), None);
        let mut headers = async_nats::HeaderMap::new();
        assert_eq!(from_headers(Some(&headers)), None);
        headers.insert(HEADER_TRACEPARENT, "nonsense");
        assert_eq!(from_headers(Some(&headers)), None);
        link(&tracing::Span::none(), Some(&headers));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HEADER_TRACEPARENT, EXAMPLE);
        assert_eq!(from_headers(Some(&headers)), TraceParent::parse(EXAMPLE));
        // No OpenTelemetry layer installed: linking is a no-op, not an error.
        link(&tracing::info_span!("t"), Some(&headers));
    }
}

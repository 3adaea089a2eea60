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
//! The `task` span carries the engine's attribute names and types
//! (`saga.id`, `step`, `service`, an integer `attempt`, `kind`), plus
//! `operation` and the handler's `outcome`; a failed handler (retryable or
//! fatal) sets its status to ERROR with the error. The outcome is recorded
//! before the result is published. The span itself lasts until the task is
//! acknowledged, after the publish, so it ends a little after its parent
//! attempt span, which the engine closes when it applies the result.
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

pub use jetsaga_protocol::trace_context::{HEADER_TRACEPARENT, TraceParent, TraceParentError};

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

    /// Whether the environment asks for traces
    /// ([`jetsaga_protocol::telemetry::otlp_wanted`]).
    fn wanted() -> bool {
        jetsaga_protocol::telemetry::otlp_wanted(|name| std::env::var(name).ok()).unwrap_or_else(
            |reason| {
                tracing::warn!("{reason}");
                false
            },
        )
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

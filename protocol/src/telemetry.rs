//! What operators see of every jetsaga process, whichever language it is
//! written in: the Prometheus text format and histogram buckets, and the
//! `OTEL_*` environment that turns trace export on.

/// Content type of the Prometheus text exposition format, as `/metrics`
/// answers it.
pub const PROMETHEUS_TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram buckets of every `*_seconds` metric, the engine's and the
/// workers': 5 ms to an hour, so that both a quick handler and a saga that
/// waits out minutes of retries fall in a bucket of their size.
pub const DURATION_BUCKETS: [f64; 18] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// Whether the environment asks for trace export over OTLP/HTTP: an endpoint
/// is set (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_ENDPOINT`), `OTEL_TRACES_EXPORTER` is unset or `otlp`,
/// and `OTEL_SDK_DISABLED` is not `true`. `Err` says why a setting that was
/// made cannot be honoured (traces are then off).
pub fn otlp_wanted(var: impl Fn(&str) -> Option<String>) -> Result<bool, String> {
    let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    match var("OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(false),
        Some(other) => {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={other} names an exporter jetsaga does not have (only `otlp` and `none`); traces are off"
            ));
        }
    }
    let endpoint =
        var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
    match endpoint {
        None => Ok(false),
        Some(e)
            if !(e.trim_start().starts_with("http://")
                || e.trim_start().starts_with("https://")) =>
        {
            Err(format!(
                "the OTLP endpoint {e:?} must be an http:// or https:// URL (OTLP over HTTP/protobuf; gRPC is not built in); traces are off"
            ))
        }
        Some(_) => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn wanted(vars: &[(&str, &str)]) -> Result<bool, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        otlp_wanted(|name| vars.get(name).cloned())
    }

    #[test]
    fn otlp_export_follows_the_otel_environment() {
        assert_eq!(wanted(&[]), Ok(false));
        assert_eq!(
            wanted(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]),
            Ok(true)
        );
        assert_eq!(
            wanted(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c")]),
            Ok(true)
        );
        assert_eq!(
            wanted(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_SDK_DISABLED", "TRUE")
            ]),
            Ok(false)
        );
        assert_eq!(
            wanted(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_TRACES_EXPORTER", "none")
            ]),
            Ok(false)
        );
        assert!(
            wanted(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_TRACES_EXPORTER", "zipkin")
            ])
            .is_err()
        );
        assert!(wanted(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc://c:4317")]).is_err());
    }
}

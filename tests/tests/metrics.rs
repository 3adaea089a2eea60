//! Prometheus metrics end to end: a real engine (`--http-listen`) and the
//! example deploy workers (`--metrics-listen`) run sagas that complete,
//! retry, roll back and fail a compensation; their `/metrics` must count
//! exactly that, carry every metric the Grafana dashboard and the alert
//! rules in `deploy/` query, and no saga id in any label.

mod common;

use common::World;
use jetsaga_protocol::api::SagaStatus;
use jetsaga_worker::protocol::Subjects;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SAGA: &str = "deploy_environment";

/// A breaker on `manifest` that the run never trips.
const SERVICE_POLICY: &str = r#"
sagas:
  manifest_only:
    steps:
      - { id: register, service: manifest, operation: register }
services:
  manifest:
    max_in_flight: 1000
    circuit_breaker: { failure_threshold: 1000 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_and_workers_export_what_the_dashboard_and_alerts_query() {
    let world = World::start(&["--http-listen", "127.0.0.1:0"]).await;
    let engine_addr = world.engine.http_addr();
    world.apply_example(SAGA).await;
    // A service policy, so that the breaker and held-task gauges the
    // dashboard and the alerts query exist (`crate::admission`).
    world.apply_yaml(SERVICE_POLICY).await;
    let worker_addr = format!("127.0.0.1:{}", jetsaga_tests::free_port());
    let _workers = world.example_workers("deploy-workers", &["--metrics-listen", &worker_addr]);

    // Two complete (one after a retry), one rolls back, one rolls back
    // only in part: deploy_containers' compensation fails for good.
    let runs = [
        ("completed", json!({"environment": "m-ok"})),
        (
            "completed",
            json!({"environment": "m-retry", "faults": {"deploy_containers": {"fail": "retryable", "times": 1}}}),
        ),
        (
            "compensated",
            json!({"environment": "m-undo", "faults": {"configure_gateway": {"fail": "fatal"}}}),
        ),
        (
            "partially_compensated",
            json!({"environment": "m-stuck", "faults": {
                "configure_gateway": {"fail": "fatal"},
                "deploy_containers": {"compensation": "fatal"}
            }}),
        ),
    ];
    let mut started = Vec::new();
    for (_, input) in &runs {
        let s = world.client.start(SAGA, input.clone(), None).await.unwrap();
        started.push(s.saga_id);
    }
    for ((expected, _), id) in runs.iter().zip(&started) {
        let done = world.finished(id).await;
        assert_eq!(
            done.saga.status.name(),
            *expected,
            "{id}: {:?}",
            common::step_states(&done)
        );
        if let SagaStatus::PartiallyCompensated { stuck_steps, .. } = &done.saga.status {
            assert!(stuck_steps.contains(&"deploy_containers".to_string()));
        }
    }
    // A result that is not JSON: refused and counted.
    let nats = world.nats.client().await;
    nats.publish(
        Subjects::new("jetsaga").result("manifest"),
        "not json".into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();

    let step = |step: &str, service: &str, outcome: &str| {
        format!(r#"saga_name="{SAGA}",step="{step}",service="{service}",outcome="{outcome}""#)
    };
    let saga = |status: &str| format!(r#"saga_name="{SAGA}",status="{status}""#);
    let mut engine_expected: Vec<(String, Expect)> = vec![
        (
            format!("saga_executions_total{{{}}}", saga("completed")),
            Expect::Is(2.0),
        ),
        (
            format!("saga_executions_total{{{}}}", saga("compensated")),
            Expect::Is(1.0),
        ),
        (
            format!("saga_executions_total{{{}}}", saga("partially_compensated")),
            Expect::Is(1.0),
        ),
        (
            format!("saga_executions_total{{{}}}", saga("failed")),
            Expect::Is(0.0),
        ),
        (
            format!("saga_executions_total{{{}}}", saga("cancelled")),
            Expect::Is(0.0),
        ),
        (
            format!("saga_duration_seconds_count{{{}}}", saga("completed")),
            Expect::Is(2.0),
        ),
        (
            format!(
                r#"saga_duration_seconds_bucket{{{},le="+Inf"}}"#,
                saga("compensated")
            ),
            Expect::Is(1.0),
        ),
        (
            format!(r#"saga_active{{saga_name="{SAGA}"}}"#),
            Expect::Is(0.0),
        ),
        // Attempts of actions, by outcome.
        (
            format!(
                "saga_step_attempts_total{{{}}}",
                step("register_manifest", "manifest", "ok")
            ),
            Expect::Is(4.0),
        ),
        (
            format!(
                "saga_step_attempts_total{{{}}}",
                step("deploy_containers", "container-engine", "retryable")
            ),
            Expect::Is(1.0),
        ),
        (
            format!(
                "saga_step_attempts_total{{{}}}",
                step("deploy_containers", "container-engine", "ok")
            ),
            Expect::Is(4.0),
        ),
        (
            format!(
                "saga_step_attempts_total{{{}}}",
                step("configure_gateway", "gateway", "fatal")
            ),
            Expect::Is(2.0),
        ),
        (
            format!(
                "saga_step_attempts_total{{{}}}",
                step("mark_ready", "environment", "ok")
            ),
            Expect::Is(2.0),
        ),
        (
            format!(
                r#"saga_step_duration_seconds_count{{saga_name="{SAGA}",step="deploy_containers",service="container-engine"}}"#
            ),
            Expect::Is(5.0),
        ),
        // Compensations: both steps of the rollback, and the one that failed.
        (
            format!(
                "saga_compensations_total{{{}}}",
                step("deploy_containers", "container-engine", "ok")
            ),
            Expect::Is(1.0),
        ),
        (
            format!(
                "saga_compensations_total{{{}}}",
                step("deploy_containers", "container-engine", "fatal")
            ),
            Expect::Is(1.0),
        ),
        (
            format!(
                "saga_compensations_total{{{}}}",
                step("register_manifest", "manifest", "ok")
            ),
            Expect::Is(1.0),
        ),
        // Series no attempt reached yet exist at zero.
        (
            format!(
                "saga_step_attempts_total{{{}}}",
                step("mark_ready", "environment", "timed_out")
            ),
            Expect::Is(0.0),
        ),
        (
            format!(
                "saga_compensations_total{{{}}}",
                step("register_manifest", "manifest", "abandoned")
            ),
            Expect::Is(0.0),
        ),
        (
            r#"engine_breaker_transitions_total{service="manifest",to="open"}"#.to_string(),
            Expect::Is(0.0),
        ),
        (
            r#"engine_rejected_messages_total{reason="malformed"}"#.to_string(),
            Expect::AtLeast(1.0),
        ),
        ("engine_outbox_backlog".to_string(), Expect::Is(0.0)),
        ("engine_timer_backlog".to_string(), Expect::Is(0.0)),
        ("engine_step_timeouts".to_string(), Expect::Is(0.0)),
    ];
    // Every service's queue, polled from JetStream: drained.
    for service in ["manifest", "container-engine", "gateway", "environment"] {
        engine_expected.push((
            format!(r#"saga_queue_depth{{service="{service}"}}"#),
            Expect::Is(0.0),
        ));
    }
    let task = |service: &str, operation: &str, kind: &str, outcome: &str| {
        format!(
            r#"worker_tasks_total{{service="{service}",operation="{operation}",kind="{kind}",outcome="{outcome}"}}"#
        )
    };
    let mut worker_expected: Vec<(String, Expect)> = vec![
        (task("container-engine", "deploy", "action", "ok"), Expect::Is(4.0)),
        (task("container-engine", "deploy", "action", "retryable"), Expect::Is(1.0)),
        (task("container-engine", "stop", "compensation", "ok"), Expect::Is(1.0)),
        (task("container-engine", "stop", "compensation", "fatal"), Expect::Is(1.0)),
        (task("gateway", "configure_routes", "action", "fatal"), Expect::Is(2.0)),
        (task("manifest", "deregister", "compensation", "ok"), Expect::Is(1.0)),
        (
            r#"worker_handler_duration_seconds_count{service="container-engine",operation="deploy",kind="action"}"#
                .to_string(),
            Expect::Is(5.0),
        ),
    ];
    for service in ["manifest", "container-engine", "gateway", "environment"] {
        worker_expected.push((
            format!(r#"worker_in_flight{{service="{service}"}}"#),
            Expect::Is(0.0),
        ));
        worker_expected.push((
            format!(r#"worker_replays_total{{service="{service}"}}"#),
            Expect::Is(0.0),
        ));
    }

    // Workers count a task just after publishing its result, and the
    // engine polls its gauges every few seconds: wait for both to settle.
    let engine = settled("engine", &engine_addr, &engine_expected).await;
    let worker = settled("worker", &worker_addr, &worker_expected).await;

    // Every metric the dashboard and the alerts query is in the scrapes.
    let exported: BTreeSet<String> = engine
        .samples
        .iter()
        .chain(&worker.samples)
        .flat_map(|s| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| s.name.strip_suffix(suffix))
                .map(str::to_string);
            [Some(s.name.clone()), base].into_iter().flatten()
        })
        .collect();
    let queried = queried_metrics();
    for name in [
        "saga_executions_total",
        "saga_duration_seconds",
        "saga_step_duration_seconds",
        "worker_handler_duration_seconds",
        "engine_timer_backlog",
    ] {
        assert!(
            queried.contains(name),
            "the extraction missed {name}: {queried:?}"
        );
    }
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "queried by deploy/ but not exported: {missing:?}\nexported: {exported:?}"
    );

    // No label value is a saga id (or any other UUID).
    for scrape in [&engine, &worker] {
        for sample in &scrape.samples {
            for (label, value) in &sample.labels {
                assert!(
                    !has_uuid(value),
                    "{}{{{label}={value:?}}}: ids make a series per saga",
                    sample.name
                );
            }
        }
    }
    for id in &started {
        assert!(
            !engine.text.contains(id.as_str()),
            "saga id {id} in the engine's metrics"
        );
    }

    // The route is documented as the text format; both serve it as such.
    let doc = get(&engine_addr, "/openapi.json").await;
    let doc: Value = serde_json::from_slice(&doc.body).unwrap();
    assert!(
        doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
            .get("text/plain; version=0.0.4")
            .is_some(),
        "{}",
        doc["paths"]["/metrics"]
    );
    for addr in [&engine_addr, &worker_addr] {
        let a = get(addr, "/metrics").await;
        assert_eq!(a.status, 200);
        assert!(
            a.content_type.starts_with("text/plain; version=0.0.4"),
            "{addr}: {}",
            a.content_type
        );
    }
}

/// What a series' value must be.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Is(f64),
    AtLeast(f64),
}

impl Expect {
    fn holds(self, value: Option<f64>) -> bool {
        match (self, value) {
            (Expect::Is(v), Some(x)) => x == v,
            (Expect::AtLeast(v), Some(x)) => x >= v,
            (_, None) => false,
        }
    }
}

/// Scrapes `addr` until every expectation holds (at most 30 s), then
/// returns the scrape; fails listing the ones that do not.
async fn settled(who: &str, addr: &str, expected: &[(String, Expect)]) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scrape = scrape(addr).await;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(series, expect)| !expect.holds(scrape.value(series)))
            .map(|(series, expect)| {
                format!("{series}: {:?}, expected {expect:?}", scrape.value(series))
            })
            .collect();
        if wrong.is_empty() {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "{who} metrics at {addr}:\n  {}\n\n{}",
            wrong.join("\n  "),
            scrape.text
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One sample of a scrape.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    /// `name{k="v",...}` in the scrape's label order.
    fn series(&self) -> String {
        if self.labels.is_empty() {
            return self.name.clone();
        }
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

/// A parsed `/metrics` answer.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of `series` (written as the exporter writes it).
    fn value(&self, series: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.series() == series)
            .map(|s| s.value)
    }
}

async fn scrape(addr: &str) -> Scrape {
    let answer = get(addr, "/metrics").await;
    assert_eq!(answer.status, 200, "GET {addr}/metrics");
    let text = String::from_utf8(answer.body).expect("UTF-8");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| parse_sample(l).unwrap_or_else(|| panic!("cannot parse sample {l:?}")))
        .collect();
    Scrape { text, samples }
}

/// Parses `name{k="v",...} value` (label values without escaped quotes,
/// which ours never have).
fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}')?;
            let mut labels = Vec::new();
            let mut rest = body;
            while !rest.is_empty() {
                let (key, after) = rest.split_once("=\"")?;
                let (value, after) = after.split_once('"')?;
                labels.push((key.to_string(), value.to_string()));
                rest = after.strip_prefix(',').unwrap_or(after);
            }
            (name, labels)
        }
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Whether `s` contains something shaped like a UUID (8-4-4-4-12 hex).
fn has_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(36).any(|w| {
        w.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
    })
}

/// Every metric named by the dashboard's queries (panel targets and
/// variables) and by the alert rules, histogram series reduced to their
/// base name; `up` (Prometheus's own) left out.
fn queried_metrics() -> BTreeSet<String> {
    let root = jetsaga_tests::workspace_root().join("deploy");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/dashboards/jetsaga.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    let dashboard_exprs = exprs.len();
    assert!(
        dashboard_exprs > 20,
        "only {dashboard_exprs} dashboard queries found"
    );
    let alerts: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root.join("prometheus/alerts.yml")).unwrap(),
    )
    .unwrap();
    for group in alerts["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(exprs.len() > dashboard_exprs + 10, "alert rules not found");
    exprs
        .iter()
        .flat_map(|e| metric_names(e))
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| n.strip_suffix(suffix))
                .map_or(n.clone(), str::to_string)
        })
        .filter(|n| n != "up")
        .collect()
}

/// Every `targets[].expr` of the dashboard's panels (rows included) and
/// every variable query (`label_values(metric, label)`).
fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(targets) = map.get("targets").and_then(Value::as_array) {
                out.extend(
                    targets
                        .iter()
                        .filter_map(|t| t["expr"].as_str().map(str::to_string)),
                );
            }
            if let Some(q) = map.get("definition").and_then(Value::as_str)
                && q.starts_with("label_values(")
            {
                out.push(q.to_string());
            }
            for (key, v) in map {
                if key != "targets" {
                    collect_exprs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The metric names in a PromQL expression: identifiers that are not
/// functions, keywords, label names (in `{...}`, `by (...)` and the like)
/// or Grafana variables.
fn metric_names(expr: &str) -> Vec<String> {
    // `label_values(metric, label)`: the label is no metric.
    if let Some(args) = expr.strip_prefix("label_values(") {
        let metric = args.split(',').next().unwrap_or_default().trim();
        return vec![metric.to_string()];
    }
    // Followed by a label list in parentheses, or by nothing of interest.
    const KEYWORDS: [&str; 11] = [
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "bool",
        "offset",
        "group_left",
        "group_right",
    ];
    // Aggregation operators: `sum by (x) (...)` puts no `(` right after them.
    const AGGREGATIONS: [&str; 12] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    // Drop what is not a metric: label matchers, ranges, strings.
    let mut plain = String::new();
    let mut closing: Option<char> = None;
    for c in expr.chars() {
        match closing {
            Some(end) if c == end => closing = None,
            Some(_) => {}
            None => match c {
                '{' => closing = Some('}'),
                '[' => closing = Some(']'),
                '"' => closing = Some('"'),
                _ => plain.push(c),
            },
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || c == '.' {
            // A number (`0.95`, `1e3`), not the start of a name.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$') {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':' | '$'))
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut next = i;
        while next < chars.len() && chars[next] == ' ' {
            next += 1;
        }
        let call = chars.get(next) == Some(&'(');
        if AGGREGATIONS.contains(&word.as_str()) {
            continue;
        }
        if word.starts_with('$') || KEYWORDS.contains(&word.as_str()) {
            // `by (a, b)` and friends: skip the label list.
            if call && !word.starts_with('$') {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
            }
            continue;
        }
        if call {
            continue; // a function
        }
        names.push(word);
    }
    names
}

/// A fresh engine with no traffic: the counters whose label sets are known
/// up front exist at zero, so the dashboard's panels (rejected messages
/// among them) show 0 rather than "No data".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_engine_exports_known_counters_at_zero() {
    let world = World::start(&["--http-listen", "127.0.0.1:0"]).await;
    let addr = world.engine.http_addr();
    let reasons = [
        "stale",
        "terminal",
        "not_applicable",
        "malformed",
        "oversized",
        "subject_mismatch",
        "unknown_saga",
        "unknown_definition",
        "unknown_step",
        "wrong_service",
        "unpublishable",
        "trigger_subject",
        "trigger_id",
        "trigger_mapping",
        "trigger_unmatched",
        "header_timeout",
        "tls_handshake_timeout",
    ];
    let types = [
        "saga.started",
        "saga.compensating",
        "saga.retried",
        "saga.completed",
        "saga.compensated",
        "saga.partially_compensated",
        "saga.failed",
        "saga.cancelled",
        "step.succeeded",
        "step.retrying",
        "step.failed",
        "step.compensated",
        "step.compensation_failed",
    ];
    let expected: Vec<(String, Expect)> = reasons
        .iter()
        .map(|r| format!(r#"engine_rejected_messages_total{{reason="{r}"}}"#))
        .chain(
            types
                .iter()
                .map(|t| format!(r#"engine_events_total{{type="{t}"}}"#)),
        )
        .chain(
            ["missing", "malformed", "unknown", "forbidden"]
                .iter()
                .map(|r| format!(r#"engine_http_auth_refused_total{{reason="{r}"}}"#)),
        )
        .chain([
            "engine_publish_duplicates_total".to_string(),
            "engine_pruned_sagas_total".to_string(),
        ])
        .map(|series| (series, Expect::Is(0.0)))
        .collect();
    settled("fresh engine", &addr, &expected).await;
}

/// The breaker-state panel names the gauge's values.
#[test]
fn breaker_panel_names_the_states() {
    let path = jetsaga_tests::workspace_root().join("deploy/grafana/dashboards/jetsaga.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panel = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == "Circuit breaker state by service")
        .expect("breaker panel");
    let options = &panel["fieldConfig"]["defaults"]["mappings"][0]["options"];
    for (value, text) in [("0", "closed"), ("1", "half-open"), ("2", "open")] {
        assert_eq!(options[value]["text"], text, "{value}: {panel}");
    }
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<BTreeSet<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (le, saga_name) (rate(saga_duration_seconds_bucket{saga_name=~"$saga_name"}[$__rate_interval])))"#
        ),
        BTreeSet::from(["saga_duration_seconds_bucket".to_string()])
    );
    assert_eq!(
        names("engine_outbox_backlog > 100 and deriv(engine_outbox_backlog[10m]) > 0"),
        BTreeSet::from(["engine_outbox_backlog".to_string()])
    );
    assert_eq!(
        names(
            "max by (service) (saga_queue_depth) > 100\nand\nmax by (service) (deriv(saga_queue_depth[15m])) > 0"
        ),
        BTreeSet::from(["saga_queue_depth".to_string()])
    );
    assert_eq!(
        names(r#"sum(increase(a_total{x="1"}[$__range])) / sum(increase(b_total[$__range]))"#),
        BTreeSet::from(["a_total".to_string(), "b_total".to_string()])
    );
    assert_eq!(
        names("label_values(saga_active, saga_name)"),
        BTreeSet::from(["saga_active".to_string()])
    );
    assert_eq!(
        names(r#"up{job="jetsaga-engine"} == 0"#),
        BTreeSet::from(["up".to_string()])
    );
    assert_eq!(
        names("sum by (reason) (rate(x_total[5m])) > 1e3 * 0.5"),
        BTreeSet::from(["x_total".to_string()])
    );
    assert!(has_uuid("x-0192f5a0-1234-7000-8000-00000000abcd"));
    assert!(!has_uuid("container-engine"));
}

/// An HTTP answer.
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// `GET path` over plain HTTP/1.1, one request per connection.
async fn get(addr: &str, path: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("answer within 30 s")
        .expect("read the answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of the head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        body = dechunk(&body);
    }
    Answer {
        status,
        content_type: headers.get("content-type").cloned().unwrap_or_default(),
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
    out
}

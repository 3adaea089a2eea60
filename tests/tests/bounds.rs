//! What the engine does with answers and connections that could grow
//! without bound: list limits in every door, NATS replies over the
//! server's max payload, HTTP connections that stall or crowd in. Against
//! a real engine process and nats-server.

mod common;

use common::{World, metric_value, metric_value_once_served, wait_metric};
use jetsaga_protocol::ApiReply;
use jetsaga_protocol::api::{DefinitionListing, SagaDetail};
use jetsaga_tests::{NatsServer, wait_until};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The server's max payload in these tests: small, so that large answers
/// are quick to build.
const SMALL_MAX_PAYLOAD: usize = 32 * 1024;

/// Sagas `range` (`saga_000`...) of 20 steps each, about 5 KB each as JSON.
fn many_definitions(range: std::ops::Range<usize>) -> String {
    let mut yaml = String::from("sagas:\n");
    for s in range {
        yaml.push_str(&format!("  saga_{s:03}:\n    steps:\n"));
        for t in 0..20 {
            yaml.push_str(&format!(
                "      - id: step_{t:02}_with_a_rather_long_name\n        service: service_of_saga_{s:03}\n        operation: operation_number_{t:02}\n"
            ));
        }
    }
    yaml
}

/// A raw NATS request to the API operation `op`, its reply decoded.
async fn request(world: &World, op: &str, body: Value) -> ApiReply<Value> {
    let nats = world.nats.client().await;
    let msg = nats
        .request(
            format!("jetsaga.api.{op}"),
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap_or_else(|e| panic!("{op}: no answer: {e}"));
    serde_json::from_slice(&msg.payload).expect("an API reply envelope")
}

fn error_of(reply: ApiReply<Value>) -> jetsaga_protocol::ApiError {
    match reply {
        ApiReply::Error(e) => e,
        ApiReply::Ok(v) => panic!("expected an error, got {v}"),
    }
}

async fn small_world() -> World {
    let nats = NatsServer::builder()
        .config(&format!("max_payload: {SMALL_MAX_PAYLOAD}"))
        .start();
    World::on(
        nats,
        &["--max-payload", "30000", "--http-listen", "127.0.0.1:0"],
        &[],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_the_max_payload_is_refused_and_definitions_are_paged() {
    let world = small_world().await;
    // Four at a time, so that each apply request fits.
    for first in (0..40).step_by(4) {
        world.apply_yaml(&many_definitions(first..first + 4)).await;
    }

    // All 40 at once do not fit: an answer saying so, not a timeout.
    let e = error_of(request(&world, "def.list", json!({})).await);
    assert_eq!(e.code, "E-REPLY-TOO-LARGE", "{}", e.message);
    assert!(
        e.message.contains(&SMALL_MAX_PAYLOAD.to_string()) && e.message.contains("limit"),
        "names the limit and what to do: {}",
        e.message
    );
    let http = world.engine.http_addr();
    let series = r#"engine_rejected_messages_total{reason="E-REPLY-TOO-LARGE"}"#;
    assert!(metric_value(&http, series).await.unwrap_or(0.0) >= 1.0);

    // A page of them does, and the next page follows the last name.
    let page = match request(&world, "def.list", json!({"limit": 3})).await {
        ApiReply::Ok(v) => serde_json::from_value::<Vec<DefinitionListing>>(v).expect("listings"),
        ApiReply::Error(e) => panic!("{e:?}"),
    };
    let names: Vec<&str> = page.iter().map(|d| d.definition.name.as_str()).collect();
    assert_eq!(names, ["saga_000", "saga_001", "saga_002"]);
    let next = match request(&world, "def.list", json!({"limit": 2, "after": "saga_002"})).await {
        ApiReply::Ok(v) => serde_json::from_value::<Vec<DefinitionListing>>(v).expect("listings"),
        ApiReply::Error(e) => panic!("{e:?}"),
    };
    let names: Vec<&str> = next.iter().map(|d| d.definition.name.as_str()).collect();
    assert_eq!(names, ["saga_003", "saga_004"]);

    // The client (and so `jetsaga def list`) reads them all, page by page.
    let all = world.client.definition_listing().await.expect("def list");
    assert_eq!(all.len(), 40);
    assert_eq!(all[39].definition.name, "saga_039");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_whose_detail_is_over_the_max_payload_answers_an_error() {
    let world = small_world().await;
    // A 28 KB input fits a start, but not the detail: the input, its
    // definition of 20 steps and their states.
    world.apply_yaml(&many_definitions(0..1)).await;
    let input = json!({"blob": "x".repeat(28_000)});
    let id = world
        .client
        .start("saga_000", input, None)
        .await
        .expect("start")
        .saga_id;
    let e = error_of(request(&world, "saga.get", json!({"id": id})).await);
    assert_eq!(e.code, "E-REPLY-TOO-LARGE", "{}", e.message);
    assert!(
        e.message.contains("saga.get") && e.message.contains("HTTP"),
        "{}",
        e.message
    );
    // The HTTP door has no such limit.
    let http = world.engine.http_addr();
    let (status, body) =
        common::http_exchange(&http, "GET", &format!("/v1/sagas/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    let detail: SagaDetail = serde_json::from_str(&body).expect("a saga detail");
    assert_eq!(detail.saga.id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_limits_over_the_cap_are_refused_over_nats_as_over_http() {
    let world = World::start(&[]).await;
    for limit in [1001u64, 100_000, 1_000_000_000_000] {
        let e = error_of(request(&world, "saga.list", json!({"limit": limit})).await);
        assert_eq!(e.code, "E-BAD-REQUEST", "saga.list limit {limit}");
        assert!(e.message.contains("1000"), "{}", e.message);
        let e = error_of(request(&world, "def.list", json!({"limit": limit})).await);
        assert_eq!(e.code, "E-BAD-REQUEST", "def.list limit {limit}");
    }
    match request(&world, "saga.list", json!({"limit": 1000})).await {
        ApiReply::Ok(v) => assert_eq!(v, json!([])),
        ApiReply::Error(e) => panic!("limit 1000 is allowed: {e:?}"),
    }
}

// ---------------------------------------------------------------------------
// HTTP connections
// ---------------------------------------------------------------------------

/// Longest a test waits for the engine to close a stalled connection: far
/// above the 1 s timeouts of these tests, far below the minutes a
/// connection stayed open without them.
const CLOSE_BOUND: Duration = Duration::from_secs(20);

/// An engine serving HTTP with `flags` on a server of its own.
async fn http_world(flags: &[&str]) -> (World, String) {
    let mut extra = vec!["--http-listen", "127.0.0.1:0"];
    extra.extend_from_slice(flags);
    let world = World::start(&extra).await;
    let addr = world.engine.http_addr();
    (world, addr)
}

/// Sends `sent`, then reads until the engine closes the connection (at
/// most [`CLOSE_BOUND`]): what it answered, if anything.
async fn answer_before_close(addr: &str, sent: &[u8], what: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(sent).await.expect("send");
    let mut raw = Vec::new();
    let read = tokio::time::timeout(CLOSE_BOUND, async {
        // A reset is a close too.
        let _ = stream.read_to_end(&mut raw).await;
    })
    .await;
    assert!(
        read.is_ok(),
        "{what}: the connection is still open after {CLOSE_BOUND:?}"
    );
    String::from_utf8_lossy(&raw).to_string()
}

/// Reads one answer (head and `Content-Length` body) off a kept-alive
/// connection.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let n = tokio::time::timeout(CLOSE_BOUND, stream.read(&mut chunk))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "closed before answering: {text}");
        raw.extend_from_slice(&chunk[..n]);
    }
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: engine\r\n\r\n";
const READY: &[u8] = b"GET /ready HTTP/1.1\r\nHost: engine\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http_connections_are_closed_after_their_timeouts() {
    let (_world, addr) =
        http_world(&["--http-header-timeout", "1s", "--http-body-timeout", "1s"]).await;
    let header_timeouts = r#"engine_rejected_messages_total{reason="header_timeout"}"#;
    assert_eq!(metric_value(&addr, header_timeouts).await, Some(0.0));

    // Silent, half a head: closed without an answer to a request, and
    // counted.
    let silent = answer_before_close(&addr, b"", "a silent connection").await;
    assert!(!silent.contains(" 200 "), "{silent}");
    let half = answer_before_close(&addr, b"GET /health HTTP/1.1\r\nHost: en", "half a head").await;
    assert!(!half.contains(" 200 "), "{half}");

    wait_metric(&addr, header_timeouts, 2.0).await;

    // Idle after an answer: the answer, then the close, which is what
    // keep-alive is for and not counted (checked below, once the close is
    // long past).
    let idle = answer_before_close(&addr, HEALTH, "an idle kept-alive connection").await;
    assert!(idle.starts_with("HTTP/1.1 200"), "{idle}");

    // Half a body: 408, then the close.
    let half_body = b"POST /v1/sagas HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"saga\": ";
    let answer = answer_before_close(&addr, half_body, "half a body").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("E-REQUEST-TIMEOUT"), "{answer}");
    let series = r#"engine_rejected_messages_total{reason="E-REQUEST-TIMEOUT"}"#;
    assert_eq!(metric_value(&addr, series).await, Some(1.0));
    assert_eq!(metric_value(&addr, header_timeouts).await, Some(2.0));

    // And the engine serves on.
    let (status, _) = common::http_exchange(&addr, "GET", "/health", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    // A body timeout far beyond the wait: only the early check answers.
    let (_world, addr) = http_world(&["--http-body-timeout", "1h"]).await;
    let head = b"POST /v1/sagas HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\nContent-Length: 1000000000000000000\r\n\r\n";
    let answer = answer_before_close(&addr, head, "a declared 10^18 bytes").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("E-PAYLOAD-TOO-LARGE"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_and_counted_but_probes_are_answered() {
    // Held connections are not timed out here.
    let (_world, addr) =
        http_world(&["--http-max-connections", "2", "--http-header-timeout", "1h"]).await;
    // Two connections, each answered once (so accepted), kept open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        stream.write_all(HEALTH).await.expect("send");
        assert!(read_answer(&mut stream).await.starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    // A third is refused, with an answer saying why: silent, or with any
    // request but a probe.
    let refused = answer_before_close(&addr, b"", "a silent connection over the limit").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("E-TOO-MANY-CONNECTIONS"), "{refused}");
    let sagas = b"GET /v1/sagas HTTP/1.1\r\nHost: engine\r\n\r\n";
    let refused = answer_before_close(&addr, sagas, "a request over the limit").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("E-TOO-MANY-CONNECTIONS"), "{refused}");

    // The liveness and readiness probes are answered all the same, and
    // their connections closed after the answer (answer_before_close waits
    // for the close).
    let health = answer_before_close(&addr, HEALTH, "/health over the limit").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(r#""status":"ok""#), "{health}");
    let ready = answer_before_close(&addr, READY, "/ready over the limit").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains(r#""status":"ready""#), "{ready}");

    // Once one closes, /metrics is served: the two refusals are counted, the
    // probes are not. Until the engine has seen the close, /metrics itself
    // is refused, and counted too.
    drop(held.pop());
    let series = r#"engine_rejected_messages_total{reason="E-TOO-MANY-CONNECTIONS"}"#;
    let metrics_refused = std::sync::atomic::AtomicUsize::new(0);
    let (counter, at) = (&metrics_refused, addr.as_str());
    let refusals = wait_until(
        "/metrics on a freed connection",
        CLOSE_BOUND,
        || async move {
            let value = metric_value_once_served(at, series).await;
            if value.is_none() {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            value
        },
    )
    .await;
    let metrics_refused = metrics_refused.into_inner();
    assert_eq!(refusals, (2 + metrics_refused) as f64);
    // The held connection was served throughout.
    let mut kept = held.pop().expect("one held");
    kept.write_all(HEALTH).await.expect("send");
    assert!(read_answer(&mut kept).await.starts_with("HTTP/1.1 200"));
}

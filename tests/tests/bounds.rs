//! What the engine does with answers and connections that could grow
//! without bound: list limits in every door, NATS replies over the
//! server's max payload, HTTP connections that stall or crowd in. Against
//! a real engine process and nats-server.

mod common;

use common::{World, metric_value};
use jetsaga_protocol::ApiReply;
use jetsaga_protocol::api::{DefinitionListing, SagaDetail};
use jetsaga_tests::NatsServer;
use serde_json::{Value, json};

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

//! Reading a saga by the idempotency key it was started with (`saga.get`
//! with `idempotency_key`, `GET /v1/sagas/by-key/{key}`, `jetsaga saga
//! status --key`), which never starts one, and the step ids of a saga
//! detail; against a real engine process and nats-server.

mod common;

use common::{World, http_exchange, text};
use jetsaga_protocol::api::SagaDetail;
use jetsaga_protocol::{ApiReply, Subjects};
use serde_json::{Value, json};
use std::time::Duration;

/// Two steps, so that pairing steps by position and by id can differ.
const TWO_STEPS: &str = r#"
sagas:
  two_steps:
    steps:
      - id: first
        service: echo
        operation: echo
        timeout: 30s
      - id: second
        service: echo
        operation: echo
        timeout: 30s
"#;

fn step_ids(detail: &SagaDetail) -> Vec<Option<String>> {
    detail.saga.steps.iter().map(|s| s.id.clone()).collect()
}

/// A raw `saga.get` over NATS with `body`.
async fn raw_get(world: &World, body: Value) -> ApiReply<Value> {
    let nats = world.nats.client().await;
    let subject = Subjects::new("jetsaga").api(jetsaga_protocol::Op::SagaGet);
    let msg = nats
        .request(subject, serde_json::to_vec(&body).unwrap().into())
        .await
        .expect("saga.get answers");
    serde_json::from_slice(&msg.payload).expect("an API envelope")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_is_read_by_its_idempotency_key_through_every_door_with_step_ids() {
    let world = World::start(&["--http-listen", "127.0.0.1:0"]).await;
    let http = world.engine.http_addr();
    world.apply_yaml(TWO_STEPS).await;
    let _w = world.echo_worker().await;
    let started = world
        .client
        .start("two_steps", json!({"n": 1}), Some("order-7"))
        .await
        .expect("start");
    let done = world.finished(&started.saga_id).await;
    let ids = vec![Some("first".to_string()), Some("second".to_string())];
    assert_eq!(step_ids(&done), ids, "saga.get by id carries step ids");

    // NATS client.
    let by_key = world.client.get_by_key("order-7").await.expect("found");
    assert_eq!(by_key.saga.id, started.saga_id);
    assert_eq!(by_key, done);

    // HTTP, by key and by id, with the step ids on the wire.
    let (status, body) = http_exchange(&http, "GET", "/v1/sagas/by-key/order-7", None).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["saga"]["id"], json!(started.saga_id));
    assert_eq!(v["saga"]["steps"][0]["id"], "first");
    assert_eq!(v["saga"]["steps"][1]["id"], "second");
    let (status, body) = http_exchange(
        &http,
        "GET",
        &format!("/v1/sagas/{}", started.saga_id),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["saga"]["steps"][1]["id"], "second");

    // CLI.
    let out = world.cli(&["--output", "json", "saga", "status", "--key", "order-7"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["saga"]["id"], json!(started.saga_id));
    assert_eq!(v["saga"]["steps"][0]["id"], "first");
    let out = world.cli(&["saga", "status", "--key", "order-7"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&started.saga_id));

    // An unknown key is E-NOT-FOUND in every door, and starts nothing.
    let e = world.client.get_by_key("order-8").await.unwrap_err();
    assert_eq!(e.code(), "E-NOT-FOUND", "{e}");
    assert!(e.to_string().contains("order-8"), "{e}");
    let (status, body) = http_exchange(&http, "GET", "/v1/sagas/by-key/order-8", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("E-NOT-FOUND"), "{body}");
    let out = world.cli(&["saga", "status", "--key", "order-8"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("E-NOT-FOUND"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(world.sagas_of("two_steps").await.len(), 1);

    // saga.get names a saga by exactly one of id and idempotency_key.
    for body in [
        json!({}),
        json!({"id": started.saga_id, "idempotency_key": "order-7"}),
    ] {
        let ApiReply::Error(e) = raw_get(&world, body.clone()).await else {
            panic!("{body} is refused");
        };
        assert_eq!(e.code, "E-BAD-REQUEST", "{body}: {}", e.message);
    }
    let ApiReply::Ok(v) = raw_get(&world, json!({"idempotency_key": "order-7"})).await else {
        panic!("found by key");
    };
    assert_eq!(v["saga"]["id"], json!(started.saga_id));
}

/// `$JS.API.CONSUMER.PAUSE`: pauses the consumer until `until`
/// (RFC 3339), or resumes it when `None`.
async fn pause_consumer(
    nats: &async_nats::Client,
    stream: &str,
    consumer: &str,
    until: Option<&str>,
) {
    let body = match until {
        Some(t) => json!({"pause_until": t}),
        None => json!({}),
    };
    let reply = nats
        .request(
            format!("$JS.API.CONSUMER.PAUSE.{stream}.{consumer}"),
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .expect("the pause request answers");
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(v.get("error").is_none(), "pause refused: {v}");
    assert_eq!(v["paused"], json!(until.is_some()), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_by_key_never_starts_a_durable_start_not_yet_consumed() {
    let world = World::start(&["--http-listen", "127.0.0.1:0"]).await;
    let http = world.engine.http_addr();
    world.apply_yaml(TWO_STEPS).await;
    let _w = world.echo_worker().await;
    let subjects = Subjects::new("jetsaga");
    let nats = world.nats.client().await;
    let js = async_nats::jetstream::new(nats.clone());
    let (stream, consumer) = (subjects.starts_stream(), subjects.engine_consumer());

    // The engine's consumer of durable starts is paused: a start published
    // now is durable in the stream and not consumed.
    pause_consumer(&nats, &stream, &consumer, Some("2999-01-01T00:00:00Z")).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "durable-1");
    js.publish_with_headers(
        "jetsaga.start.two_steps",
        headers,
        r#"{"input":{"n":2}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .expect("the start is stored in the stream");

    for _ in 0..3 {
        let e = world.client.get_by_key("durable-1").await.unwrap_err();
        assert_eq!(e.code(), "E-NOT-FOUND", "{e}");
        let (status, body) = http_exchange(&http, "GET", "/v1/sagas/by-key/durable-1", None).await;
        assert_eq!(status, 404, "{body}");
    }
    let mut starts = js.get_stream(&stream).await.unwrap();
    assert_eq!(
        starts.info().await.unwrap().state.messages,
        1,
        "the start is still waiting in the stream"
    );
    assert!(
        world.sagas_of("two_steps").await.is_empty(),
        "no saga created"
    );

    // Resumed, the engine consumes the start: the lookup then finds the
    // saga that start created, its only one. The engine's pull that was
    // waiting while the consumer was paused may get the message only once
    // a new pull follows its expiry (30 s), hence the generous wait.
    pause_consumer(&nats, &stream, &consumer, None).await;
    let found = jetsaga_tests::wait_until(
        "the durable start to be consumed",
        Duration::from_secs(120),
        || async { world.client.get_by_key("durable-1").await.ok() },
    )
    .await;
    assert_eq!(found.saga.input, json!({"n": 2}));
    assert_eq!(found.saga.idempotency_key.as_deref(), Some("durable-1"));
    let all = world.sagas_of("two_steps").await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, found.saga.id);
}

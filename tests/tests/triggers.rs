//! Event-triggered sagas against a real engine process and nats-server:
//! plain core publishes on a trigger subject start one saga per event id
//! (CloudEvent `id`, else `Nats-Msg-Id`), forever and not only within the
//! stream's duplicate window; bad events are refused and counted while the
//! engine keeps going; events published while the engine is down start
//! their sagas after a restart, none twice; one saga's lifecycle event
//! triggers another; subjects the engine cannot capture are refused.

mod common;

use common::{World, http_exchange};
use jetsaga_protocol::api::SagaStatus;
use jetsaga_tests::{NatsServer, wait_until};
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

const ORDERS: &str = r#"
sagas:
  fulfil_order:
    triggers:
      - subject: orders.created
        input:
          order_id: /data/id
          amount: data.total
    steps:
      - id: only
        service: echo
        operation: echo
        timeout: 10s
  restock:
    triggers:
      - subject: stock.low.*
    steps:
      - id: only
        service: echo
        operation: echo
        timeout: 10s
"#;

fn cloud_event(id: &str, data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "specversion": "1.0",
        "id": id,
        "source": "shop",
        "type": "com.example.order.created",
        "data": data,
    }))
    .unwrap()
}

/// Waits until definition `saga` has exactly `n` sagas, and returns them
/// (with their inputs), oldest first.
async fn wait_sagas(world: &World, saga: &str, n: usize) -> Vec<Value> {
    let ids = wait_until(&format!("{n} sagas of {saga}"), WAIT, || async {
        let list = world.sagas_of(saga).await;
        (list.len() >= n).then_some(list)
    })
    .await;
    assert_eq!(ids.len(), n, "{saga}: more sagas than events: {ids:?}");
    let mut inputs = Vec::new();
    for summary in ids.iter().rev() {
        let detail = world.client.get(&summary.id).await.unwrap();
        assert_eq!(
            detail
                .saga
                .idempotency_key
                .as_deref()
                .map(|k| k.starts_with(&format!("trigger:{saga}:"))),
            Some(true),
            "{detail:?}"
        );
        inputs.push(detail.saga.input);
    }
    inputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_id_starts_one_saga_with_the_mapped_input() {
    // A short duplicate window: the second copy of a Nats-Msg-Id below
    // arrives after it, so only the engine's key binding can drop it.
    let world = World::start(&["--http-listen", "127.0.0.1:0", "--duplicate-window", "1s"]).await;
    let http = world.engine.http_addr();
    world.apply_yaml(ORDERS).await;
    let _echo = world.echo_worker().await;
    let nats = world.nats.client().await;

    // The same CloudEvent twice, as `nats pub` sends it: one saga.
    for _ in 0..2 {
        nats.publish(
            "orders.created",
            cloud_event("ce-1", json!({"id": "o-1", "total": 12.5})).into(),
        )
        .await
        .unwrap();
    }
    // Another id: a second saga. Messages are taken in order, so once it
    // exists the repeat before it has been handled.
    nats.publish(
        "orders.created",
        cloud_event("ce-2", json!({"id": "o-2", "total": 3})).into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    let inputs = wait_sagas(&world, "fulfil_order", 2).await;
    assert_eq!(
        inputs,
        vec![
            json!({"order_id": "o-1", "amount": 12.5}),
            json!({"order_id": "o-2", "amount": 3})
        ]
    );
    let created = world.sagas_of("fulfil_order").await;
    let detail = world.client.get(&created[1].id).await.unwrap();
    assert_eq!(
        detail.saga.idempotency_key.as_deref(),
        Some("trigger:fulfil_order:ce-1")
    );
    world.finished(&created[0].id).await;
    world.finished(&created[1].id).await;

    // Not a CloudEvent: deduplicated by Nats-Msg-Id, and the input is the
    // whole body (no mapping).
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "low-1");
    nats.publish_with_headers(
        "stock.low.widgets",
        headers.clone(),
        r#"{"sku":"w"}"#.into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    assert_eq!(
        wait_sagas(&world, "restock", 1).await,
        vec![json!({"sku": "w"})]
    );
    // Past the stream's duplicate window (1 s), the same id again: the
    // stream keeps it, the engine's key binding drops it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.publish_with_headers("stock.low.widgets", headers, r#"{"sku":"w"}"#.into())
        .await
        .unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "low-2");
    nats.publish_with_headers("stock.low.gadgets", headers, r#"{"sku":"g"}"#.into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    assert_eq!(
        wait_sagas(&world, "restock", 2).await,
        vec![json!({"sku": "w"}), json!({"sku": "g"})]
    );

    // Garbage, and an event without the mapped field: refused, counted,
    // and the next good event still starts its saga.
    nats.publish("orders.created", "not json".into())
        .await
        .unwrap();
    nats.publish(
        "orders.created",
        cloud_event("ce-3", json!({"id": "o-3"})).into(),
    )
    .await
    .unwrap();
    nats.publish(
        "orders.created",
        cloud_event("ce-4", json!({"id": "o-4", "total": 1})).into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    let inputs = wait_sagas(&world, "fulfil_order", 3).await;
    assert_eq!(inputs[2], json!({"order_id": "o-4", "amount": 1}));
    for (series, want) in [
        (r#"engine_rejected_messages_total{reason="malformed"}"#, 1.0),
        (
            r#"engine_rejected_messages_total{reason="trigger_mapping"}"#,
            1.0,
        ),
        (r#"engine_triggered_starts_total{saga="fulfil_order"}"#, 3.0),
        (r#"engine_triggered_starts_total{saga="restock"}"#, 2.0),
    ] {
        common::wait_metric(&http, series, want).await;
    }

    // `def list` shows the triggers.
    let (status, body) = http_exchange(&http, "GET", "/v1/definitions", None).await;
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    let fulfil = list["definitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "fulfil_order")
        .unwrap();
    assert_eq!(fulfil["triggers"][0]["subject"], "orders.created");
    assert_eq!(fulfil["triggers"][0]["input"]["order_id"], "/data/id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_the_engine_is_down_start_after_a_restart() {
    let mut world = World::start(&[]).await;
    world.apply_yaml(ORDERS).await;
    let _echo = world.echo_worker().await;
    let nats = world.nats.client().await;
    let publish = |id: &'static str| {
        let nats = nats.clone();
        async move {
            nats.publish(
                "orders.created",
                cloud_event(id, json!({"id": id, "total": 1})).into(),
            )
            .await
            .unwrap();
            nats.flush().await.unwrap();
        }
    };
    publish("k-1").await;
    wait_sagas(&world, "fulfil_order", 1).await;

    world.engine.kill();
    // While it is down: two new events and a repeat of the first.
    publish("k-2").await;
    publish("k-1").await;
    publish("k-3").await;
    world.engine.restart();
    let inputs = wait_sagas(&world, "fulfil_order", 3).await;
    let mut ids: Vec<&str> = inputs
        .iter()
        .map(|i| i["order_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["k-1", "k-2", "k-3"]);

    // Killed again right after a publish, then the first events once
    // more: still one saga per id.
    publish("k-4").await;
    world.engine.kill();
    publish("k-2").await;
    world.engine.restart();
    publish("k-5").await;
    let inputs = wait_sagas(&world, "fulfil_order", 5).await;
    // k-4 may have been pulled by the killed engine and not acknowledged:
    // then it comes back after the ack wait, behind k-5.
    let mut ids: Vec<&str> = inputs
        .iter()
        .map(|i| i["order_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["k-1", "k-2", "k-3", "k-4", "k-5"]);
    for s in world.sagas_of("fulfil_order").await {
        world.finished(&s.id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifecycle_event_of_one_saga_triggers_another() {
    let mut world = World::start(&[]).await;
    world
        .apply_yaml(
            r#"
sagas:
  place_order:
    steps:
      - id: only
        service: echo
        operation: echo
        timeout: 10s
  notify_customer:
    triggers:
      - subject: jetsaga.event.place_order.saga.completed
        input:
          order_saga: /data/saga_id
          state: /data/state
    steps:
      - id: only
        service: echo
        operation: echo
        timeout: 10s
"#,
        )
        .await;
    let _echo = world.echo_worker().await;
    let first = world
        .client
        .start("place_order", json!({}), None)
        .await
        .unwrap();
    let second = world
        .client
        .start("place_order", json!({}), None)
        .await
        .unwrap();
    world.finished(&first.saga_id).await;
    world.finished(&second.saga_id).await;
    let mut inputs = wait_sagas(&world, "notify_customer", 2).await;
    inputs.sort_by_key(|i| i["order_saga"].as_str().unwrap().to_string());
    let mut expected = vec![
        json!({"order_saga": first.saga_id, "state": "completed"}),
        json!({"order_saga": second.saga_id, "state": "completed"}),
    ];
    expected.sort_by_key(|i| i["order_saga"].as_str().unwrap().to_string());
    assert_eq!(inputs, expected);
    // Each keyed by the lifecycle event's CloudEvent id.
    for s in world.sagas_of("notify_customer").await {
        let detail = world.finished(&s.id).await;
        let key = detail.saga.idempotency_key.unwrap();
        assert!(
            key.starts_with("trigger:notify_customer:event.") && key.ends_with(".saga.completed"),
            "{key}"
        );
    }

    // After a kill and a restart the durable consumer on the events stream
    // goes on where it was: the next completion triggers once more, and the
    // earlier ones do not trigger again.
    world.engine.kill();
    world.engine.restart();
    let third = world
        .client
        .start("place_order", json!({}), None)
        .await
        .unwrap();
    world.finished(&third.saga_id).await;
    let inputs = wait_sagas(&world, "notify_customer", 3).await;
    assert_eq!(
        inputs
            .iter()
            .filter(|i| i["order_saga"] == third.saga_id.as_str())
            .count(),
        1,
        "{inputs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_the_engine_cannot_capture_are_refused_at_apply() {
    let world = World::start(&[]).await;
    let js = world.nats.jetstream().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "SHOP".into(),
        subjects: vec!["shop.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let apply = |subject: &str| {
        let yaml = format!(
            "sagas:\n  t:\n    triggers:\n      - subject: {subject}\n    steps:\n      - {{id: a, service: echo, operation: echo}}\n"
        );
        let parsed = jetsaga_core::saga::definition::parse_str(
            "t.yaml",
            &yaml,
            jetsaga_core::saga::definition::Format::Yaml,
        )
        .unwrap();
        let client = world.client.clone();
        async move { client.apply(parsed.sagas).await }
    };
    let e = apply("shop.orders.created").await.unwrap_err().to_string();
    assert!(
        e.starts_with("E-INVALID-DEFINITION: E-DEF-TRIGGER: "),
        "{e}"
    );
    assert!(e.contains("captured by stream `SHOP`"), "{e}");
    // Any installation's engine subjects are refused by validation.
    for subject in ["jetsaga.start.t", "acme.task.payments"] {
        let bad = jetsaga_core::saga::definition::parse_str(
            "t.yaml",
            &format!("sagas:\n  t:\n    triggers:\n      - subject: {subject}\n    steps:\n      - {{id: a, service: echo, operation: echo}}\n"),
            jetsaga_core::saga::definition::Format::Yaml,
        )
        .unwrap_err();
        assert_eq!(bad.code(), "E-DEF-TRIGGER");
        assert!(
            bad.to_string().contains("is a jetsaga engine subject"),
            "{bad}"
        );
    }
    // Not a subject at all: refused by validation, naming the field.
    let bad = jetsaga_core::saga::definition::parse_str(
        "t.yaml",
        "sagas:\n  t:\n    triggers:\n      - subject: 'orders..x'\n    steps:\n      - {id: a, service: echo, operation: echo}\n",
        jetsaga_core::saga::definition::Format::Yaml,
    )
    .unwrap_err();
    assert_eq!(bad.code(), "E-DEF-TRIGGER");
    assert!(
        bad.to_string()
            .starts_with("t.yaml: saga `t`: field `triggers[0].subject`: "),
        "{bad}"
    );
    // Nothing was stored; a capturable subject is.
    assert!(world.client.definitions().await.unwrap().is_empty());
    apply("orders.*.created").await.unwrap();
    assert_eq!(world.client.definitions().await.unwrap().len(), 1);
    // Another saga's subject overlapping it in part cannot share the stream.
    let yaml = "sagas:\n  u:\n    triggers:\n      - subject: orders.eu.*\n    steps:\n      - {id: a, service: echo, operation: echo}\n";
    let parsed = jetsaga_core::saga::definition::parse_str(
        "u.yaml",
        yaml,
        jetsaga_core::saga::definition::Format::Yaml,
    )
    .unwrap();
    let e = world
        .client
        .apply(parsed.sagas)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("overlaps in part the trigger subject `orders.*.created` of saga `t`"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_names_the_stream_of_another_installation_that_took_a_subject() {
    // Another installation's trigger stream captured `jetsaga.task.payments`
    // (as an engine that did not refuse such a trigger let it).
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "ACME_TRIGGERS".into(),
        subjects: vec!["jetsaga.task.payments".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = jetsaga_tests::run_command(
        &jetsaga_tests::bin_path("jetsaga"),
        &[
            "--nats-url",
            &nats.url(),
            "server",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("E-NATS-STREAM: cannot create stream JETSAGA_TASKS: stream ACME_TRIGGERS (of another installation, or made by hand) already captures subject `jetsaga.task.payments`, which overlaps JETSAGA_TASKS's `jetsaga.task.>`")
            && err.contains("change the trigger that captures `jetsaga.task.payments`")
            && err.contains("another prefix"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggered_sagas_live_in_their_keys_partitions() {
    // One engine leading three partitions: each event's saga goes to the
    // partition of its key (`trigger:<saga>:<event id>`), and runs there.
    let world = World::start(&["--partitions", "3"]).await;
    world.apply_yaml(ORDERS).await;
    let _echo = world.echo_worker().await;
    let nats = world.nats.client().await;
    for i in 0..9 {
        nats.publish(
            "orders.created",
            cloud_event(
                &format!("ce-{i}"),
                json!({"id": format!("o-{i}"), "total": i}),
            )
            .into(),
        )
        .await
        .unwrap();
    }
    nats.flush().await.unwrap();
    wait_sagas(&world, "fulfil_order", 9).await;
    let mut partitions = std::collections::BTreeSet::new();
    for summary in world.sagas_of("fulfil_order").await {
        let detail = world.finished(&summary.id).await;
        assert_eq!(detail.saga.status, SagaStatus::Completed, "{detail:?}");
        let key = detail.saga.idempotency_key.expect("a trigger key");
        let p = jetsaga_protocol::partition::of_saga(&summary.id, 3);
        assert_eq!(p, jetsaga_protocol::partition::of_key(&key, 3), "{key}");
        partitions.insert(p);
    }
    assert!(
        partitions.len() > 1,
        "nine keys over three partitions: {partitions:?}"
    );
}

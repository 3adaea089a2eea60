//! Definition policies against a real engine process and nats-server: a
//! disabled saga is refused through every door (API client, CLI, HTTP,
//! NATS request, durable start, trigger) with `E-SAGA-DISABLED` naming the
//! policy; a saga restricted to environments starts in a listed one and is
//! refused elsewhere or where the engine has none; `def list` shows it all.

mod common;

use common::{World, http_exchange, metric_value};
use jetsaga_worker::protocol::{ApiReply, StartReply};
use serde_json::{Value, json};

const DEFINITIONS: &str = r#"
sagas:
  nightly_cleanup:
    policy: { enabled: false }
    triggers:
      - subject: cleanup.requested
    steps:
      - { id: only, service: echo, operation: echo, timeout: 10s }
  staged_rollout:
    policy: { environments: [staging, production] }
    steps:
      - { id: only, service: echo, operation: echo, timeout: 10s }
  prod_migration:
    policy: { environments: [production] }
    steps:
      - { id: only, service: echo, operation: echo, timeout: 10s }
  plain:
    steps:
      - { id: only, service: echo, operation: echo, timeout: 10s }
"#;

async fn rejected(http: &str, reason: &str, want: f64) {
    let series = format!(r#"engine_rejected_messages_total{{reason="{reason}"}}"#);
    common::wait_metric(http, &series, want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_saga_is_refused_through_every_door() {
    let world = World::start(&["--http-listen", "127.0.0.1:0", "--environment", "staging"]).await;
    let http = world.engine.http_addr();
    world.apply_yaml(DEFINITIONS).await;
    let _echo = world.echo_worker().await;
    let names_policy = |message: &str| {
        assert!(
            message.contains("saga `nightly_cleanup` is disabled by its policy (policy.enabled: false; this engine's environment is `staging`)"),
            "{message}"
        );
    };

    // API client.
    let e = world
        .client
        .start("nightly_cleanup", json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "E-SAGA-DISABLED");
    names_policy(&e.to_string());

    // CLI.
    let out = world.cli(&["saga", "start", "nightly_cleanup", "--input", "{}"]);
    assert!(!out.status.success());
    let stderr = common::text(&out.stderr);
    assert!(stderr.contains("E-SAGA-DISABLED"), "{stderr}");
    names_policy(&stderr);

    // HTTP: 409.
    let (status, body) = http_exchange(
        &http,
        "POST",
        "/v1/sagas",
        Some(r#"{"saga":"nightly_cleanup","input":{}}"#),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "E-SAGA-DISABLED");
    names_policy(body["error"]["message"].as_str().unwrap());

    // NATS request, as `nats req jetsaga.api.saga.start`.
    let nats = world.nats.client().await;
    let reply = nats
        .request(
            "jetsaga.api.saga.start",
            r#"{"saga":"nightly_cleanup","input":{}}"#.into(),
        )
        .await
        .unwrap();
    match serde_json::from_slice::<ApiReply<StartReply>>(&reply.payload).unwrap() {
        ApiReply::Error(error) => {
            assert_eq!(error.code, "E-SAGA-DISABLED");
            names_policy(&error.message);
        }
        other => panic!("a disabled saga started: {other:?}"),
    }
    // Every refusal above was counted once, before it was answered.
    let series = r#"engine_rejected_messages_total{reason="E-SAGA-DISABLED"}"#;
    let before = metric_value(&http, series).await.expect("refusals counted");
    assert_eq!(before, 4.0);

    // A durable start and a trigger: acknowledged, refused, counted.
    let js = async_nats::jetstream::new(nats.clone());
    js.publish("jetsaga.start.nightly_cleanup", r#"{"input":{}}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    nats.publish("cleanup.requested", r#"{"why":"nightly"}"#.into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    rejected(&http, "E-SAGA-DISABLED", before + 2.0).await;
    assert!(world.sagas_of("nightly_cleanup").await.is_empty());

    // Restricted to environments: staging is listed, production only is not.
    let started = world
        .client
        .start("staged_rollout", json!({}), None)
        .await
        .unwrap();
    assert!(started.created);
    world.finished(&started.saga_id).await;
    let e = world
        .client
        .start("prod_migration", json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "E-SAGA-DISABLED");
    assert!(
        e.to_string().contains(
            "saga `prod_migration` is disabled in environment `staging` by its policy (policy.environments: [production])"
        ),
        "{e}"
    );

    // `def list`: JSON (CLI and HTTP) and the table.
    let out = world.cli(&["--output", "json", "def", "list"]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let by_name = |name: &str| {
        listed
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("{name} listed"))
            .clone()
    };
    let cleanup = by_name("nightly_cleanup");
    assert_eq!(cleanup["policy"], json!({"enabled": false}));
    assert_eq!(cleanup["enabled"], false);
    assert_eq!(cleanup["environment"], "staging");
    assert!(
        cleanup["refusal"]
            .as_str()
            .unwrap()
            .contains("policy.enabled: false")
    );
    let staged = by_name("staged_rollout");
    assert_eq!(
        staged["policy"],
        json!({"enabled": true, "environments": ["staging", "production"]})
    );
    assert_eq!(staged["enabled"], true);
    assert_eq!(by_name("prod_migration")["enabled"], false);
    assert_eq!(by_name("plain")["enabled"], true);
    assert!(by_name("plain").get("policy").is_none());
    let (status, body) = http_exchange(&http, "GET", "/v1/definitions", None).await;
    assert_eq!(status, 200, "{body}");
    let over_http: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(over_http["definitions"].as_array().unwrap().len(), 4);
    let out = world.cli(&["def", "list"]);
    let table = common::text(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.contains("nightly_cleanup"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("cleanup.requested") && row.contains("disabled"),
        "{row}"
    );
    let row = table
        .lines()
        .find(|l| l.contains("staged_rollout"))
        .unwrap();
    assert!(
        row.contains("environments: staging, production") && row.contains("enabled"),
        "{row}"
    );

    // Enabling it again (a new version) lets it start.
    world
        .apply_yaml(&DEFINITIONS.replace("policy: { enabled: false }", "policy: { enabled: true }"))
        .await;
    let started = world
        .client
        .start("nightly_cleanup", json!({}), None)
        .await
        .unwrap();
    world.finished(&started.saga_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_environment_restricted_sagas_do_not_start() {
    let world = World::start(&[]).await;
    world.apply_yaml(DEFINITIONS).await;
    let e = world
        .client
        .start("staged_rollout", json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "E-SAGA-DISABLED");
    assert!(
        e.to_string().contains("this engine has no environment set; set `environment` in the engine configuration (JETSAGA_ENVIRONMENT, --environment)"),
        "{e}"
    );
    let listed = world.client.definition_listing().await.unwrap();
    let staged = listed
        .iter()
        .find(|d| d.definition.name == "staged_rollout")
        .unwrap();
    assert!(!staged.enabled);
    assert_eq!(staged.environment, None);
    let plain = listed
        .iter()
        .find(|d| d.definition.name == "plain")
        .unwrap();
    assert!(plain.enabled && plain.refusal.is_none());
}

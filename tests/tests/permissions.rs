//! The subject permissions of `deploy/nats/permissions.conf`, end to end: a
//! nats-server started with that file, the engine as its `engine` user, SDK
//! workers as `payments` and `email`, the harness as `operator`. A worker of
//! `payments` runs its own service's steps; the server refuses it another
//! service's results and tasks (permission violations); a result it may
//! publish, on its own subject, for another service's step is refused by
//! the engine (`subject_mismatch`). A read-only client reads and cannot act.

mod common;

use async_nats::{Event, ServerError};
use common::World;
use jetsaga_engine::config::{NatsConfig, Secret};
use jetsaga_protocol::TaskKind;
use jetsaga_protocol::api::{SagaStatus, StepStatus};
use jetsaga_tests::{NatsServer, workspace_root};
use jetsaga_worker::{TaskContext, Worker};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const DEFINITIONS: &str = r#"
sagas:
  pay:
    steps:
      - id: charge
        service: payments
        operation: charge
        timeout: 60s
  mail:
    steps:
      - id: send
        service: email
        operation: send
        timeout: 60s
"#;

/// How long a permission violation may take to come back.
const VIOLATION: Duration = Duration::from_secs(20);

/// The password `deploy/nats/permissions.conf` gives `user`.
fn password(user: &str) -> String {
    format!("{user}-pw-change-me")
}

/// A client of `nats` as `user`, with the errors the server sends it.
async fn connect_as(
    nats: &NatsServer,
    user: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let Event::ServerError(ServerError::Other(e)) = event {
                    let _ = tx.send(e);
                }
            }
        })
        .connect(nats.url())
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    (client, rx)
}

/// Publishes `payload` on `subject` and waits for the server's permission
/// violation for it.
async fn assert_denied(
    client: &async_nats::Client,
    errors: &mut mpsc::UnboundedReceiver<String>,
    subject: &str,
    payload: Vec<u8>,
) {
    client
        .publish(subject.to_string(), payload.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let needle = format!("publish to \"{subject}\"");
    tokio::time::timeout(VIOLATION, async {
        loop {
            let e = errors.recv().await.expect("the connection is open");
            let e = e.to_lowercase();
            if e.contains("permissions violation") && e.contains(&needle.to_lowercase()) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no permission violation for {subject}"));
}

/// Runs an SDK worker of `service` (operation `op` answers `output`) on
/// `client` until the token is cancelled.
async fn worker(
    client: async_nats::Client,
    service: &str,
    op: &str,
    output: Value,
) -> CancellationToken {
    let worker = Worker::builder(service)
        .handler(op, move |_: TaskContext, _: Value| {
            let output = output.clone();
            async move { Ok(output) }
        })
        .build(client)
        .await
        .unwrap_or_else(|e| panic!("a {service} worker builds under its permissions: {e}"));
    let token = CancellationToken::new();
    tokio::spawn(worker.run(token.clone()));
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_is_confined_to_its_own_services_tasks_and_results() {
    let config = std::fs::read_to_string(workspace_root().join("deploy/nats/permissions.conf"))
        .expect("deploy/nats/permissions.conf");
    let nats = NatsServer::builder()
        .config(&config)
        .client_config(NatsConfig {
            user: Some("operator".into()),
            password: Some(Secret::new(password("operator"))),
            ..NatsConfig::default()
        })
        .start();
    let engine_pw = password("engine");
    let world = World::on(
        nats,
        &["--nats-user", "engine"],
        &[("JETSAGA_NATS_PASSWORD", &engine_pw)],
    )
    .await;
    world.apply_yaml(DEFINITIONS).await;

    // Its own work goes through.
    let (payments, mut denied) = connect_as(&world.nats, "payments").await;
    let _payments_worker = worker(
        payments.clone(),
        "payments",
        "charge",
        json!({"charged": true}),
    )
    .await
    .drop_guard();
    let paid = world.start_saga("pay", json!({})).await;
    let done = world.finished(&paid).await;
    assert_eq!(done.saga.status, SagaStatus::Completed, "{done:?}");
    assert_eq!(done.saga.steps[0].output, Some(json!({"charged": true})));

    // An email step waits for a worker of its own.
    let mail = world.start_saga("mail", json!({})).await;
    let detail = world.client.get(&mail).await.unwrap();
    assert_eq!(
        detail.saga.steps[0].status,
        StepStatus::Running { attempt: 1 }
    );
    let forged = |service: &str| {
        serde_json::to_vec(
            &json!({"saga_id": mail, "step_id": "send", "kind": "action",
            "attempt": 1, "service": service, "outcome": {"status": "ok", "output": "forged"}}),
        )
        .unwrap()
    };

    // The server refuses it email's result subject, email's tasks (pulling
    // from email's consumer, or making a consumer of its own on them), and
    // reading the tasks stream directly.
    assert_denied(
        &payments,
        &mut denied,
        "jetsaga.result.email",
        forged("email"),
    )
    .await;
    assert_denied(
        &payments,
        &mut denied,
        "$JS.API.CONSUMER.MSG.NEXT.JETSAGA_TASKS.jetsaga-svc-email",
        br#"{"batch":1}"#.to_vec(),
    )
    .await;
    let sneaky = json!({"stream_name": "JETSAGA_TASKS", "config": {"durable_name": "sneaky",
        "filter_subject": "jetsaga.task.email", "ack_policy": "explicit"}});
    assert_denied(
        &payments,
        &mut denied,
        "$JS.API.CONSUMER.CREATE.JETSAGA_TASKS.sneaky.jetsaga.task.email",
        serde_json::to_vec(&sneaky).unwrap(),
    )
    .await;
    assert_denied(
        &payments,
        &mut denied,
        "$JS.API.STREAM.MSG.GET.JETSAGA_TASKS",
        br#"{"last_by_subj":"jetsaga.task.email"}"#.to_vec(),
    )
    .await;

    // Nor may it record an outcome for email's step: the record subjects
    // of the outcomes stream are per service.
    let key = jetsaga_protocol::idempotency_key(&mail, "send", TaskKind::Action);
    assert_denied(
        &payments,
        &mut denied,
        &format!("jetsaga.outcome.email.0.{key}"),
        forged("email"),
    )
    .await;

    // On its own result subject it may publish, but the engine applies a
    // result only to a step of the subject's service.
    let js = async_nats::jetstream::new(payments.clone());
    let refused = |subject: String, payload: Vec<u8>, reason: &'static str| {
        let (js, world) = (js.clone(), &world);
        async move {
            let from = world.engine.process.log_len();
            js.publish(subject, payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
            world.engine.process.wait_for_log_from(
                from,
                &format!("reason=\"{reason}\""),
                VIOLATION,
            );
        }
    };
    refused(
        "jetsaga.result.payments".into(),
        forged("email"),
        "subject_mismatch",
    )
    .await;
    refused(
        "jetsaga.result.payments".into(),
        forged("payments"),
        "wrong_service",
    )
    .await;
    // The same on its own outcome subjects (stored there, on payments'
    // subject: no record of email's step).
    refused(
        format!("jetsaga.outcome.payments.0.{key}"),
        forged("email"),
        "subject_mismatch",
    )
    .await;

    // A read-only client reads, and cannot act.
    let (viewer, mut viewer_denied) = connect_as(&world.nats, "viewer").await;
    let reply = viewer
        .request(
            "jetsaga.api.saga.get",
            json!({"id": mail}).to_string().into(),
        )
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["ok"]["saga"]["id"], json!(mail), "{reply}");
    let reply = viewer
        .request("jetsaga.api.saga.stats", "{}".into())
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(
        reply["ok"]["overall"]["total"].as_u64() >= Some(1),
        "{reply}"
    );
    assert_denied(
        &viewer,
        &mut viewer_denied,
        "jetsaga.api.saga.cancel",
        json!({"id": mail, "compensate": false})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_denied(
        &viewer,
        &mut viewer_denied,
        "jetsaga.start.mail",
        b"{}".to_vec(),
    )
    .await;

    // Nothing forged reached the email step: its own worker completes it.
    let detail = world.client.get(&mail).await.unwrap();
    assert_eq!(
        detail.saga.steps[0].status,
        StepStatus::Running { attempt: 1 }
    );
    // Nor can it have email's result dropped by publishing, on its own
    // subjects, a message with the id email's result would bear without
    // the task's token (which only email's workers can read): JetStream
    // de-duplicates ids per stream, whatever the subject.
    let predictable = jetsaga_protocol::result_msg_id(&mail, "send", TaskKind::Action, 1);
    for subject in [
        "jetsaga.result.payments".to_string(),
        format!("jetsaga.outcome.payments.0.{key}.squat"),
    ] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", predictable.as_str());
        js.publish_with_headers(subject, headers, forged("payments").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let (email, _) = connect_as(&world.nats, "email").await;
    let _email_worker = worker(email, "email", "send", json!("sent"))
        .await
        .drop_guard();
    let done = world.finished(&mail).await;
    assert_eq!(done.saga.status, SagaStatus::Completed, "{done:?}");
    assert_eq!(done.saga.steps[0].output, Some(json!("sent")));
}

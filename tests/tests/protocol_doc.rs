//! What docs/PROTOCOL.md tells a worker written with a plain NATS client
//! about the JetStream API, checked against a real nats-server: consumer
//! creation that never changes a shared consumer, and the outcome record
//! (first write wins, 10071, the direct get and `STREAM.MSG.GET` reply
//! shapes) on the outcomes stream as the engine creates it. And the
//! document itself: self-contained (no links or paths into the repository,
//! which an outside team does not have), and never telling a reader to
//! look a saga up with `saga.start`, which starts it when its durable start
//! is still waiting.

use async_nats::jetstream;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jetsaga_engine::bus::{StreamSettings, ensure_streams};
use jetsaga_protocol::Subjects;
use jetsaga_tests::NatsServer;
use serde_json::{Value, json};
use std::time::Duration;

/// A JetStream API request; the JSON reply.
async fn api(client: &async_nats::Client, subject: &str, body: Value) -> Value {
    let reply = client
        .request(
            subject.to_string(),
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&reply.payload).unwrap()
}

fn consumer_create(ack_wait: Duration, action: Option<&str>) -> Value {
    let mut body = json!({"stream_name": "JETSAGA_TASKS", "config": {
        "durable_name": "jetsaga-svc-payments",
        "filter_subject": "jetsaga.task.payments",
        "ack_policy": "explicit",
        "ack_wait": ack_wait.as_nanos() as u64,
        "max_deliver": -1,
        "deliver_policy": "all"
    }});
    if let Some(action) = action {
        body["action"] = json!(action);
    }
    body
}

#[tokio::test]
async fn consumer_create_with_action_create_never_changes_a_shared_consumer() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: "JETSAGA_TASKS".into(),
        subjects: vec!["jetsaga.task.>".into()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    let create = "$JS.API.CONSUMER.CREATE.JETSAGA_TASKS.jetsaga-svc-payments.jetsaga.task.payments";
    let info = "$JS.API.CONSUMER.INFO.JETSAGA_TASKS.jetsaga-svc-payments";
    let ack_wait = |reply: &Value| reply["config"]["ack_wait"].as_u64();

    // Before it exists, CONSUMER.INFO answers 10014.
    let missing = api(&client, info, json!({})).await;
    assert_eq!(missing["error"]["err_code"], 10014, "{missing}");

    // The documented payload creates it, and is idempotent.
    let thirty = Duration::from_secs(30);
    let first = api(&client, create, consumer_create(thirty, Some("create"))).await;
    assert_eq!(ack_wait(&first), Some(30_000_000_000), "{first}");
    let again = api(&client, create, consumer_create(thirty, Some("create"))).await;
    assert!(again.get("error").is_none(), "{again}");

    // Other settings with `"action": "create"`: refused with 10148, the
    // shared consumer unchanged.
    let sixty = Duration::from_secs(60);
    let refused = api(&client, create, consumer_create(sixty, Some("create"))).await;
    assert_eq!(refused["error"]["err_code"], 10148, "{refused}");
    let unchanged = api(&client, info, json!({})).await;
    assert_eq!(ack_wait(&unchanged), Some(30_000_000_000), "{unchanged}");

    // Without an action the same request silently updates it.
    let updated = api(&client, create, consumer_create(sixty, None)).await;
    assert!(updated.get("error").is_none(), "{updated}");
    let changed = api(&client, info, json!({})).await;
    assert_eq!(ack_wait(&changed), Some(60_000_000_000), "{changed}");
}

#[tokio::test]
async fn outcome_lookups_and_records_as_documented() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    // The streams as the engine creates them.
    let settings = StreamSettings {
        duplicate_window: Duration::from_secs(120),
        outcome_ttl: Duration::from_secs(24 * 3600),
        max_payload: 512 * 1024,
        replicas: 1,
    };
    ensure_streams(&js, &Subjects::new("jetsaga"), &settings)
        .await
        .unwrap();
    let stream = "JETSAGA_OUTCOMES";
    let key = "0192f5a0-1234-7000-8000-00000000abcd.pay.action";
    let subject = format!("jetsaga.outcome.payments.0.{key}");

    // No record: a direct get answers status 404 and no payload; a
    // STREAM.MSG.GET answers 404 / 10037.
    let direct_subject = format!("$JS.API.DIRECT.GET.{stream}.{subject}");
    let direct = client
        .request(direct_subject.clone(), Vec::new().into())
        .await
        .unwrap();
    assert_eq!(
        direct.status,
        Some(async_nats::StatusCode::NOT_FOUND),
        "{direct:?}"
    );
    assert!(direct.payload.is_empty());
    let get = format!("$JS.API.STREAM.MSG.GET.{stream}");
    let none = api(&client, &get, json!({"last_by_subj": subject})).await;
    assert_eq!(
        none["type"],
        "io.nats.jetstream.api.v1.stream_msg_get_response"
    );
    assert_eq!(none["error"]["code"], 404, "{none}");
    assert_eq!(none["error"]["err_code"], 10037, "{none}");

    // The record: the result, published first-write-wins.
    let headers = |msg_id: &str| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        headers.insert("Jetsaga-Saga-Id", "0192f5a0-1234-7000-8000-00000000abcd");
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        headers
    };
    let result = |attempt: u32| {
        serde_json::to_vec(&json!({
            "saga_id": "0192f5a0-1234-7000-8000-00000000abcd", "step_id": "pay",
            "kind": "action", "attempt": attempt, "service": "payments",
            "outcome": {"status": "ok", "output": {"charge_id": "ch_1"}},
            "replayed": false, "worker": "w"}))
        .unwrap()
    };
    let msg_id = "result.0192f5a0-1234-7000-8000-00000000abcd.pay.action.1";
    let ack = js
        .publish_with_headers(subject.clone(), headers(msg_id), result(1).into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, stream);

    // The direct get answers the message itself: its payload, its headers
    // and `Nats-Sequence` among them.
    let found = client
        .request(direct_subject.clone(), Vec::new().into())
        .await
        .unwrap();
    assert_eq!(found.payload.as_ref(), result(1).as_slice());
    let found_headers = found.headers.expect("a record has headers");
    assert_eq!(
        found_headers.get("Nats-Sequence").map(|v| v.as_str()),
        Some(ack.sequence.to_string().as_str())
    );
    assert_eq!(
        found_headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(msg_id)
    );
    // STREAM.MSG.GET: base64 `data`, and in base64 `hdrs` the headers it
    // was published with.
    let found = api(&client, &get, json!({"last_by_subj": subject})).await;
    let message = &found["message"];
    assert_eq!(message["subject"], subject.as_str(), "{found}");
    assert_eq!(message["seq"], ack.sequence, "{found}");
    let hdrs = STANDARD.decode(message["hdrs"].as_str().unwrap()).unwrap();
    let hdrs = String::from_utf8(hdrs).unwrap();
    assert!(hdrs.starts_with("NATS/1.0\r\n"), "{hdrs:?}");
    assert!(
        hdrs.contains(&format!("Nats-Msg-Id: {msg_id}\r\n")),
        "{hdrs:?}"
    );
    assert!(hdrs.ends_with("\r\n\r\n"), "{hdrs:?}");
    let data = STANDARD.decode(message["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, result(1));

    // The same publish again (its ack lost): 10071 as well, the
    // expectation being checked before the duplicate window; the record
    // read back is this attempt's own, so it is ours.
    let again = js
        .publish_with_headers(subject.clone(), headers(msg_id), result(1).into())
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(again.to_string().contains("10071"), "{again}");
    // Another attempt's first write: 10071, a record exists; the record is
    // unchanged.
    let second = js
        .publish_with_headers(
            subject.clone(),
            headers("result.0192f5a0-1234-7000-8000-00000000abcd.pay.action.2"),
            result(2).into(),
        )
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(second.to_string().contains("10071"), "{second}");
    let kept = api(&client, &get, json!({"last_by_subj": subject})).await;
    assert_eq!(kept["message"]["seq"], ack.sequence, "{kept}");
    // Without the expectation a second message is refused all the same
    // (discard new, per subject): a careless writer cannot replace a record.
    let careless = js
        .publish(subject.clone(), result(3).into())
        .await
        .unwrap()
        .await;
    assert!(careless.is_err(), "{careless:?}");
    let kept = api(&client, &get, json!({"last_by_subj": subject})).await;
    assert_eq!(kept["message"]["seq"], ack.sequence, "{kept}");
}

/// docs/PROTOCOL.md, without its fenced code blocks.
fn protocol_prose() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    let text = std::fs::read_to_string(path).expect("docs/PROTOCOL.md");
    let mut prose = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    prose
}

/// The targets of the Markdown links in `text`: inline `[text](target)`
/// and reference definitions `[label]: target`.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets: Vec<String> = text
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target.to_string()))
        .collect();
    targets.extend(text.lines().filter_map(|line| {
        let (label, target) = line.trim_start().strip_prefix('[')?.split_once("]:")?;
        (!label.is_empty()).then(|| target.trim().to_string())
    }));
    targets
}

/// Words of `text` that name a file or folder of the repository: Markdown
/// or Rust files, or paths under its top-level folders.
fn repository_paths(text: &str) -> Vec<String> {
    const FOLDERS: &[&str] = &[
        "docs/",
        "deploy/",
        "engine/",
        "core/",
        "cli/",
        "protocol/",
        "store/",
        "tests/",
        "examples/",
        "worker-sdk/",
        "scripts/",
    ];
    text.split(|c: char| c.is_whitespace() || "`()[]<>,;:\"'".contains(c))
        .map(|w| w.trim_end_matches('.'))
        .filter(|w| {
            let file = w.split('#').next().unwrap_or(w);
            file.ends_with(".md")
                || file.ends_with(".rs")
                || FOLDERS.iter().any(|f| w.starts_with(f))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn the_protocol_document_links_only_to_itself_and_the_web() {
    let prose = protocol_prose();
    let outside: Vec<String> = link_targets(&prose)
        .into_iter()
        .filter(|t| !(t.starts_with('#') || t.starts_with("https://") || t.starts_with("http://")))
        .collect();
    assert!(
        outside.is_empty(),
        "PROTOCOL.md must be self-contained; it links to {outside:?}: inline what the reader needs"
    );
    let paths = repository_paths(&prose);
    assert!(
        paths.is_empty(),
        "PROTOCOL.md must be self-contained; it names {paths:?}: inline what the reader needs"
    );
}

#[test]
fn the_checks_of_the_protocol_document_catch_what_they_look_for() {
    let text = "See [SECURITY.md](SECURITY.md), [x](../README.md#a), [ok](#limits), \
        [web](https://nats.io) and docs/BENCHMARKS.md (Scale) or `engine/src/api/http.rs`.\n\
        [ref]: ERRORS.md\n";
    assert_eq!(
        link_targets(text),
        [
            "SECURITY.md",
            "../README.md#a",
            "#limits",
            "https://nats.io",
            "ERRORS.md"
        ]
    );
    assert_eq!(
        repository_paths(text),
        [
            "SECURITY.md",
            "SECURITY.md",
            "../README.md#a",
            "docs/BENCHMARKS.md",
            "engine/src/api/http.rs",
            "ERRORS.md"
        ]
    );
    assert_eq!(
        reads_with_saga_start(
            "Nothing is sent back. Read the saga with `saga.start` using the same key."
        ),
        ["Read the saga with `saga.start` using the same key"]
    );
    assert!(
        reads_with_saga_start(
            "This lookup only reads: unlike a `saga.start` with the same key, it never creates a saga."
        )
        .is_empty()
    );
}

/// The sentences of `text` that tell a reader to read or look up a saga by
/// means of `saga.start` ("read it with `saga.start`", "look it up using
/// `saga.start`").
fn reads_with_saga_start(text: &str) -> Vec<String> {
    const READS: &[&str] = &["read", "look up", "look it up", "lookup", "find", "fetch"];
    const MEANS: &[&str] = &["with", "using", "via", "through", "by", "call", "send"];
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    joined
        .split(". ")
        .map(|s| s.trim().trim_end_matches('.').to_string())
        .filter(|sentence| {
            let lower = sentence.to_lowercase();
            let Some(at) = lower.find("`saga.start`") else {
                return false;
            };
            let before = &lower[..at];
            let means = before
                .split_whitespace()
                .last()
                .is_some_and(|w| MEANS.contains(&w.trim_start_matches('(')));
            means && READS.iter().any(|r| before.contains(r))
        })
        .collect()
}

#[test]
fn the_protocol_document_never_reads_a_saga_with_saga_start() {
    let found = reads_with_saga_start(&protocol_prose());
    assert!(
        found.is_empty(),
        "PROTOCOL.md tells a reader to read a saga with `saga.start`, which starts it when its durable start was not consumed yet; use `saga.get` with `idempotency_key`: {found:?}"
    );
}

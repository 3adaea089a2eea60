//! The command verbs of runbooks written for other saga tools work as
//! `jetsaga` commands: `saga execute`, `saga list --state running`,
//! `saga cancel --compensate`, `circuit-breaker list|status|reset
//! --force-state closed`, `events publish --type --source`, `events
//! subscribe --channels` and `events log --tail`.

mod common;

use common::{World, text};
use serde_json::Value;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// `one_step` on `echo`, `stuck` on a service no worker serves, and a
/// breaker on `echo`.
const DEFS: &str = r#"
sagas:
  one_step:
    step_events: true
    steps:
      - { id: only, service: echo, operation: echo, timeout: 30s }
  stuck:
    steps:
      - { id: wait, service: nobody, operation: wait, timeout: 1h }
services:
  echo:
    circuit_breaker: { failure_threshold: 3, open_timeout: 1h }
"#;

fn ok_json(out: &std::process::Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_verbs_run_as_jetsaga_commands() {
    let world = World::start(&[]).await;
    world.apply_yaml(DEFS).await;
    let _echo = world.echo_worker().await;

    // saga execute NAME --input '{...}', then saga status ID.
    let out = world.cli(&["saga", "execute", "one_step", "--input", r#"{"n": 7}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let done = text(&out.stdout).trim().to_string();
    world.finished(&done).await;
    let status = ok_json(&world.cli(&["--output", "json", "saga", "status", &done]));
    assert_eq!(status["saga"]["id"], done.as_str());
    assert_eq!(status["saga"]["status"]["state"], "completed");

    // events log --tail N: the last N lifecycle events, oldest first, then
    // exit. The relay publishes after the commit: wait for the last one.
    let log = |n: &str| -> Vec<String> {
        let out = world.cli(&["--output", "json", "events", "log", "--tail", n]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| {
                let event: Value = serde_json::from_str(l).expect("a CloudEvent a line");
                assert_eq!(event["data"]["saga_id"], done.as_str(), "{l}");
                event["type"].as_str().expect("type").to_string()
            })
            .collect()
    };
    jetsaga_tests::wait_until(
        "the saga.completed event",
        Duration::from_secs(20),
        || async { (log("1") == ["io.jetsaga.saga.completed"]).then_some(()) },
    )
    .await;
    assert_eq!(
        log("2"),
        ["io.jetsaga.step.succeeded", "io.jetsaga.saga.completed"]
    );
    assert_eq!(
        log("100"),
        [
            "io.jetsaga.saga.started",
            "io.jetsaga.step.succeeded",
            "io.jetsaga.saga.completed"
        ]
    );

    // saga list --state running shows the stuck saga and not the finished one;
    // saga cancel ID --compensate ends it.
    let stuck = world.start_saga("stuck", serde_json::json!({})).await;
    let running = ok_json(&world.cli(&["--output", "json", "saga", "list", "--state", "running"]));
    let ids: Vec<&str> = running
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [stuck.as_str()], "{running}");
    let cancelled =
        ok_json(&world.cli(&["--output", "json", "saga", "cancel", &stuck, "--compensate"]));
    assert_eq!(cancelled["saga"]["id"], stuck.as_str());
    // Its step is out with a service nobody serves: the rollback waits for
    // that outcome, so the saga compensates, not stops.
    assert_eq!(
        cancelled["saga"]["status"]["state"], "compensating",
        "{cancelled}"
    );

    // circuit-breaker list | status SERVICE | reset SERVICE --force-state closed.
    let list = ok_json(&world.cli(&["--output", "json", "circuit-breaker", "list"]));
    assert_eq!(list[0]["service"], "echo", "{list}");
    let status = ok_json(&world.cli(&["--output", "json", "circuit-breaker", "status", "echo"]));
    assert_eq!(status["state"], "closed");
    let reset = ok_json(&world.cli(&[
        "--output",
        "json",
        "circuit-breaker",
        "reset",
        "echo",
        "--force-state",
        "closed",
    ]));
    assert_eq!(
        (&reset["service"], &reset["state"]),
        (&"echo".into(), &"closed".into())
    );

    // events subscribe --channels 'environment.lifecycle.*' receives what
    // events publish --type T --source S sends, as a CloudEvent on subject T.
    let mut sub = tokio::process::Command::new(jetsaga_tests::bin_path("jetsaga"))
        .args([
            "--nats-url",
            &world.nats.url(),
            "--output",
            "json",
            "events",
            "subscribe",
            "--channels",
            "environment.lifecycle.*,other.channel",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn jetsaga events subscribe");
    let mut lines = tokio::io::BufReader::new(sub.stdout.take().expect("stdout")).lines();
    // Core NATS keeps nothing for a subscriber that is not there yet: publish
    // until the subscriber has one.
    let line = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let out = world.cli(&[
                "events",
                "publish",
                "--type",
                "environment.lifecycle.created",
                "--source",
                "executor",
                "--data",
                r#"{"environment": "dev-1"}"#,
            ]);
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
            let next = tokio::time::timeout(Duration::from_millis(300), lines.next_line());
            if let Ok(line) = next.await {
                return line.expect("read").expect("a line");
            }
        }
    })
    .await
    .expect("events subscribe printed nothing");
    sub.kill().await.expect("kill");
    let got: Value = serde_json::from_str(&line).expect("json line");
    assert_eq!(got["subject"], "environment.lifecycle.created");
    let event = &got["data"];
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "environment.lifecycle.created");
    assert_eq!(event["source"], "executor");
    assert_eq!(event["data"]["environment"], "dev-1");
    assert!(event["id"].as_str().is_some_and(|id| !id.is_empty()));
}

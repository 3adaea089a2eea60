//! Saga statistics (`saga.stats`, `GET /v1/stats`, `jetsaga saga stats`)
//! over a store holding sagas in several states: the three doors agree,
//! and `saga` and `since` select; against a real engine and nats-server.

mod common;

use common::{World, http_exchange, text};
use jetsaga_protocol::api::{SagaStats, StatsRequest};
use jetsaga_worker::{StepError, TaskContext, Worker};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

const DEFS: &str = r#"
sagas:
  flaky:
    steps:
      - id: reserve
        service: stock
        operation: reserve
        compensation: release
        timeout: 30s
      - id: charge
        service: stock
        operation: charge
        timeout: 30s
  stuck:
    steps:
      - id: wait
        service: nobody
        operation: wait
        timeout: 1h
"#;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn http_stats(addr: &str, query: &str) -> SagaStats {
    let (status, body) = http_exchange(addr, "GET", &format!("/v1/stats{query}"), None).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("stats decode")
}

fn cli_stats(world: &World, args: &[&str]) -> SagaStats {
    let mut all = vec!["--output", "json", "saga", "stats"];
    all.extend_from_slice(args);
    let out = world.cli(&all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stats decode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_states_rates_and_durations_alike_through_every_door() {
    let world = World::start(&["--http-listen", "127.0.0.1:0"]).await;
    let http = world.engine.http_addr();
    world.apply_yaml(DEFS).await;
    let _w = world
        .worker(
            Worker::builder("stock")
                .handler("reserve", |_: TaskContext, _: Value| async {
                    Ok(json!("r"))
                })
                .handler("charge", |_: TaskContext, input: Value| async move {
                    if input["fail"] == json!(true) {
                        Err::<Value, _>(StepError::fatal("card refused"))
                    } else {
                        Ok(json!("c"))
                    }
                })
                .compensation("release", |_: TaskContext, _: Value| async {
                    Ok(json!("released"))
                }),
        )
        .await;

    // Three completed and one compensated `flaky` sagas, all finished
    // before any `stuck` saga is created.
    let mut flaky = Vec::new();
    for fail in [false, false, true, false] {
        let id = world.start_saga("flaky", json!({ "fail": fail })).await;
        flaky.push(world.finished(&id).await);
    }
    let durations: Vec<u64> = flaky
        .iter()
        .map(|d| d.saga.finished_at.unwrap() - d.saga.created_at)
        .collect();
    let last_flaky_created = flaky.iter().map(|d| d.saga.created_at).max().unwrap();
    let last_flaky_finished = flaky
        .iter()
        .filter_map(|d| d.saga.finished_at)
        .max()
        .unwrap();

    // Two `stuck` sagas (no worker serves them): one stays running, one is
    // cancelled.
    let running = world.start_saga("stuck", json!({})).await;
    let cancelled = world.start_saga("stuck", json!({})).await;
    world
        .client
        .cancel(&cancelled, false, None)
        .await
        .expect("cancel");
    let window_start = world.client.get(&running).await.unwrap().saga.created_at;
    assert!(
        last_flaky_created < window_start,
        "the flaky sagas ({last_flaky_created}, finished by {last_flaky_finished}) are older than the stuck ones ({window_start})"
    );

    let nats = world
        .client
        .stats(&StatsRequest::default())
        .await
        .expect("saga.stats");
    assert_eq!(http_stats(&http, "").await, nats, "HTTP agrees with NATS");
    assert_eq!(cli_stats(&world, &[]), nats, "the CLI agrees with NATS");

    let all = &nats.overall;
    assert_eq!(nats.created_after, None);
    assert_eq!(all.total, 6);
    assert_eq!(all.finished, 5);
    for (state, n) in [
        ("completed", 3),
        ("compensated", 1),
        ("running", 1),
        ("cancelled", 1),
        ("failed", 0),
        ("pending", 0),
    ] {
        assert_eq!(all.states[state], n, "{state}");
    }
    let names: Vec<&str> = nats.definitions.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["flaky", "stuck"]);
    let f = &nats.definitions[0].stats;
    assert_eq!((f.total, f.finished), (4, 4));
    assert_eq!(f.success_rate, Some(0.75));
    assert_eq!(f.compensation_rate, Some(0.25));
    let d = f.duration.clone().expect("durations of finished sagas");
    let mut sorted = durations.clone();
    sorted.sort_unstable();
    assert_eq!(d.avg, durations.iter().sum::<u64>() / 4);
    assert_eq!((d.p50, d.p95, d.max), (sorted[1], sorted[3], sorted[3]));
    let s = &nats.definitions[1].stats;
    assert_eq!((s.total, s.finished), (2, 1));
    assert_eq!(s.success_rate, Some(0.0));
    assert_eq!(s.states["running"], 1);

    // `saga` keeps one definition.
    let only = world
        .client
        .stats(&StatsRequest {
            saga: Some("flaky".into()),
            since: None,
        })
        .await
        .unwrap();
    assert_eq!(http_stats(&http, "?saga=flaky").await, only);
    assert_eq!(cli_stats(&world, &["--saga", "flaky"]), only);
    assert_eq!(only.definitions.len(), 1);
    assert_eq!(only.overall, only.definitions[0].stats);
    assert_eq!(only.overall, *f);

    // `since` covering everything keeps everything and says where it starts.
    let asked = now_ms();
    let hour = world
        .client
        .stats(&StatsRequest {
            saga: None,
            since: Some(3_600_000),
        })
        .await
        .unwrap();
    assert_eq!(hour.overall, nats.overall);
    let after = hour.created_after.expect("created_after");
    assert!(
        (asked - 3_600_000..=now_ms() - 3_600_000).contains(&after),
        "{after}"
    );
    let cli = cli_stats(&world, &["--since", "1h"]);
    assert_eq!(cli.overall, nats.overall);
    assert_eq!(http_stats(&http, "?since=1h").await.overall, nats.overall);

    // A window that starts after the flaky sagas were created leaves them
    // out (the engine's clock only moves on, so its window starts at or
    // after the stuck sagas' creation).
    let since = now_ms() - window_start;
    let recent = world
        .client
        .stats(&StatsRequest {
            saga: None,
            since: Some(since),
        })
        .await
        .unwrap();
    assert!(recent.overall.total <= 2, "{recent:?}");
    assert!(recent.definitions.iter().all(|d| d.name == "stuck"));
    let via_http = http_stats(&http, &format!("?since={since}")).await;
    assert!(via_http.definitions.iter().all(|d| d.name == "stuck"));

    // Bad input is refused with a stable code.
    let (status, body) = http_exchange(&http, "GET", "/v1/stats?since=soon", None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("E-BAD-REQUEST"), "{body}");
    let (status, body) = http_exchange(&http, "GET", "/v1/stats?state=running", None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("known parameters: saga, since"), "{body}");

    // The table names every definition and the rates.
    let out = world.cli(&["saga", "stats"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    for part in ["flaky", "stuck", "(all)", "75.0%", "25.0%"] {
        assert!(table.contains(part), "{part} in {table}");
    }
}

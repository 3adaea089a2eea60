//! Smoke test of the `scale` binary: tiny numbers, a short long run, and its
//! JSON checked for sane figures (counts as seeded, every unfinished saga
//! resumed, latencies positive and ordered, the finished ones pruned by a
//! short retention, only unfinished ones left). No timing assertions.

mod common;

use common::num;
use jetsaga_tests::{NatsServer, bin_path, run_command};
use serde_json::Value;
use std::time::Duration;

fn check_latency(what: &str, l: &Value, calls: u64) {
    assert_eq!(l["calls"].as_u64(), Some(calls), "{what}: {l}");
    let (p50, p99, max) = (num(&l["p50_ms"]), num(&l["p99_ms"]), num(&l["max_ms"]));
    assert!(p50 > 0.0, "{what}: p50 {p50}");
    assert!(p50 <= p99 && p99 <= max, "{what}: {l}");
}

#[test]
fn scale_runs_with_tiny_numbers_and_reports_sane_figures() {
    let nats = NatsServer::start();
    let (url, jetsaga) = (nats.url(), bin_path("jetsaga"));
    let args = [
        "--nats-url",
        url.as_str(),
        "--jetsaga",
        jetsaga.to_str().expect("utf-8 path"),
        "--finished",
        "200",
        "--unfinished",
        "20",
        "--calls",
        "20",
        "--cli-calls",
        "2",
        "--long-run",
        "8s",
        "--retention",
        "2s",
        "--rate",
        "10",
        "--sample-every",
        "2s",
    ];
    let out = run_command(&bin_path("scale"), &args, &[], Duration::from_secs(300));
    assert!(
        out.status.success(),
        "scale failed: {}\n{}",
        common::text(&out.stderr),
        common::text(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("scale prints JSON");

    let seed = &report["seed"];
    assert_eq!(seed["finished"], 200);
    assert_eq!(seed["unfinished"], 20);
    assert_eq!(seed["stored_sagas"], 220);
    assert!(num(&seed["sagas_per_s"]) > 0.0);

    let store = &report["store"];
    check_latency("store status", &store["status"], 20);
    assert_eq!(store["unfinished_sagas"]["count"], 20);
    assert!(num(&store["size_on_disk_bytes"]) > 0.0);
    assert!(num(&report["data_dir_bytes"]) > 0.0);

    let engine = &report["engine"];
    assert_eq!(engine["resumed_unfinished"], 20, "{engine}");
    let (resume, ready) = (num(&engine["resume_ms"]), num(&engine["ready_ms"]));
    assert!(resume > 0.0 && ready > 0.0, "{engine}");
    check_latency("api status", &engine["status"], 20);
    let stats = &engine["stats"];
    for label in ["all", "one_definition", "last_hour"] {
        check_latency(&format!("stats {label}"), &stats[label], 5);
    }
    assert_eq!(stats["all"]["sagas"], 220, "{stats}");
    let one = stats["one_definition"]["sagas"].as_u64().expect("sagas");
    assert!(one > 0 && one < 220, "{stats}");
    assert!(stats["last_hour"]["sagas"].as_u64().expect("sagas") <= 220);
    check_latency("cli status", &engine["cli"]["status"], 2);
    for (who, lists) in [("store", &store["list"]), ("api", &engine["list"])] {
        let lists = lists.as_object().expect("list measurements");
        assert_eq!(lists.len(), 2, "{who}");
        for (label, l) in lists {
            check_latency(&format!("{who} list {label}"), l, 20);
            // 200 finished: every 20th compensated-ish of two names; 20 running of two.
            let rows = l["rows"].as_u64().expect("rows");
            assert!(rows > 0 && rows <= 50, "{who} {label}: {rows} rows");
        }
    }

    let prune = &report["prune_backlog"];
    assert_eq!(prune["pruned"], 200.0, "{prune}");
    assert_eq!(prune["stored_sagas_after"], 20.0, "{prune}");
    assert!(num(&prune["pruned_ms"]) > 0.0, "{prune}");

    let compact = &report["compact"];
    assert_eq!(compact["report"]["sagas"], 20, "{compact}");
    assert_eq!(compact["resumed_unfinished"], 20, "{compact}");
    assert!(num(&compact["report"]["after_bytes"]) > 0.0, "{compact}");
    assert!(num(&compact["resume_ms"]) > 0.0, "{compact}");

    let long = &report["long_run"];
    let samples = long["samples"].as_array().expect("samples");
    assert!(samples.len() >= 3, "{long}");
    let started = long["started"].as_u64().expect("started");
    assert!(started > 0, "{long}");
    assert_eq!(long["failed_starts"], 0, "{long}");
    let last = samples.last().expect("a sample");
    assert!(num(&last["finished"]) > 0.0, "sagas finished: {long}");
    assert!(num(&last["store_bytes"]) > 0.0, "{long}");
    assert!(num(&last["data_dir_bytes"]) > 0.0, "{long}");
    // Stored sagas never exceed what was started.
    for s in samples {
        assert!(num(&s["stored_sagas"]) <= started as f64, "{s}");
    }
}

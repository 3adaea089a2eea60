//! Smoke test of the `bench` binary: a tiny run in both modes, its JSON
//! checked for sane numbers (every saga finished as expected, rates and
//! latencies positive and ordered, ratios finite). No timing assertions.

mod common;

use common::num;
use jetsaga_tests::{bin_path, nats_server_binary, run_command};
use serde_json::Value;
use std::time::Duration;

fn run_bench(extra: &[&str]) -> Value {
    let server = nats_server_binary();
    let mut args = vec![
        "--nats-server",
        server.to_str().expect("utf-8 path"),
        "--sagas",
        "20",
        "--steps",
        "2",
        "--concurrency",
        "4",
        "--json",
    ];
    args.extend_from_slice(extra);
    // `--nats-server` is the same binary `JETSAGA_NATS_SERVER` names, if set.
    let out = run_command(&bin_path("bench"), &args, &[], Duration::from_secs(300));
    assert!(
        out.status.success(),
        "bench failed: {}\n{}",
        common::text(&out.stderr),
        common::text(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("bench prints JSON")
}

fn check_latency(l: &Value) {
    let (p50, p90, p99) = (num(&l["p50_ms"]), num(&l["p90_ms"]), num(&l["p99_ms"]));
    assert!(p50 > 0.0, "p50 {p50}");
    assert!(p50 <= p90 && p90 <= p99, "p50 {p50} p90 {p90} p99 {p99}");
}

fn check(report: &Value, state: &str, round_trips_per_saga: u64) {
    let e = &report["engine"];
    let f = &report["floor"];
    assert_eq!(e["states"][state], 20, "states: {}", e["states"]);
    assert_eq!(e["states"].as_object().expect("states").len(), 1);
    let trips = e["step_round_trips"].as_u64().expect("round trips");
    assert_eq!(trips, 20 * round_trips_per_saga);
    assert_eq!(f["round_trips"].as_u64(), Some(trips));
    for v in [
        &e["sagas_per_s"],
        &e["steps_per_s"],
        &f["round_trips_per_s"],
        &e["peak_rss_bytes"],
        &e["store_bytes_per_saga"],
    ] {
        assert!(num(v) > 0.0, "{v} in {report}");
    }
    for side in [e, f] {
        assert!(num(&side["process_cpu_s"]) >= 0.0, "{side}");
        // CPU is read in clock ticks, so a tiny run may show none at all.
        let per_trip = num(&side["cpu_us_per_round_trip"]);
        assert!(per_trip.is_finite() && per_trip >= 0.0, "{side}");
    }
    check_latency(&e["latency"]);
    check_latency(&f["latency"]);
    for r in [
        "throughput_engine_over_floor",
        "p50_latency_per_step_engine_over_floor",
    ] {
        let x = num(&report["ratios"][r]);
        assert!(x.is_finite() && x > 0.0, "{r} = {x}");
    }
}

#[test]
fn bench_runs_forward() {
    let report = run_bench(&[]);
    // Two no-op steps each.
    check(&report, "completed", 2);
}

#[test]
fn bench_runs_compensation() {
    let report = run_bench(&["--compensation"]);
    // Step 1 succeeds, step 2 fails for good, step 1 is compensated.
    check(&report, "compensated", 3);
}

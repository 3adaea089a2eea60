//! `jetsaga deps`, run as the built binary: the example manifests resolve
//! to a fixed start-up order; the broken fixture set reports every problem
//! with its code; `--check-health` probes a real engine's `/health` and a
//! closed port.

mod common;

use common::{Engine, READY};
use jetsaga_tests::{NatsServer, bin_path, free_port, run_command, workspace_root};
use serde_json::Value;
use std::path::Path;
use std::process::Output;

/// Runs `jetsaga deps ARGS...`.
fn deps(args: &[&str]) -> Output {
    let mut all = vec!["deps"];
    all.extend_from_slice(args);
    run_command(&bin_path("jetsaga"), &all, &[], READY)
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            common::text(&out.stdout),
            common::text(&out.stderr)
        )
    })
}

fn pattern(dir: &Path, glob: &str) -> String {
    format!("{}/{glob}", dir.display())
}

fn examples() -> String {
    pattern(
        &workspace_root().join("examples/deploy-manifests"),
        "*/manifest.yaml",
    )
}

fn broken() -> String {
    pattern(
        &workspace_root().join("tests/fixtures/deps-broken"),
        "*/manifest.*",
    )
}

fn codes(report: &Value) -> Vec<String> {
    report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p["code"].as_str().expect("code").to_string())
        .collect()
}

#[test]
fn example_manifests_resolve_to_a_fixed_order() {
    let out = deps(&["resolve", "--manifest", &examples(), "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::text(&out.stderr));
    let report = json(&out);
    assert_eq!(report["ok"], true);
    let order: Vec<&str> = report["order"]
        .as_array()
        .expect("order")
        .iter()
        .map(|s| s.as_str().expect("name"))
        .collect();
    assert_eq!(
        order,
        [
            "nats",
            "engine",
            "analytics",
            "email",
            "calendar",
            "ingest",
            "invoicing",
            "manifest",
            "container-engine",
            "gateway",
            "environment",
            "parser",
            "embedder",
            "catalog",
            "payments",
            "whatsapp",
        ]
    );
    assert_eq!(
        report["levels"],
        serde_json::json!([
            ["nats"],
            ["engine"],
            [
                "analytics",
                "email",
                "ingest",
                "invoicing",
                "manifest",
                "whatsapp"
            ],
            ["calendar", "container-engine", "parser", "payments"],
            ["embedder", "gateway"],
            ["catalog", "environment"],
        ])
    );
    // whatsapp's optional SMS fallback is not deployed: a note, not an error.
    assert_eq!(codes(&report), ["N-DEPS-OPTIONAL"]);
    assert_eq!(report["problems"][0]["dependency"], "sms-fallback");

    // The table says the same, in the same order.
    let table = deps(&["resolve", "--manifest", &examples()]);
    assert_eq!(
        table.status.code(),
        Some(0),
        "{}",
        common::text(&table.stderr)
    );
    let text = common::text(&table.stdout);
    assert!(
        text.starts_with("start-up order: 16 services in 6 levels\n"),
        "{text}"
    );
    let rows: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split('┆').nth(2).map(str::trim))
        .filter(|s| !s.is_empty() && *s != "service")
        .collect();
    assert_eq!(rows, order);
    assert!(text.contains("invoicing >=3, <4"), "{text}");
    assert!(
        common::text(&table.stderr).contains("note[N-DEPS-OPTIONAL]"),
        "{}",
        common::text(&table.stderr)
    );

    let validate = deps(&["validate", "--manifest", &examples()]);
    assert_eq!(
        validate.status.code(),
        Some(0),
        "{}",
        common::text(&validate.stderr)
    );
    assert_eq!(
        common::text(&validate.stdout),
        "ok: 16 services, start-up order in 6 levels\n"
    );
}

#[test]
fn broken_manifests_report_every_problem_and_exit_1() {
    let out = deps(&["resolve", "--manifest", &broken()]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out.stdout));
    let err = common::text(&out.stderr);
    for code in [
        "E-DEPS-PARSE",
        "E-DEPS-DUPLICATE",
        "E-DEPS-MISSING",
        "E-DEPS-VERSION",
        "E-DEPS-CYCLE",
        "N-DEPS-OPTIONAL",
    ] {
        assert!(
            err.contains(&format!("[{code}]: ")),
            "{code} missing:\n{err}"
        );
    }
    assert!(err.contains("dependency cycle a -> b -> c -> a:"), "{err}");
    assert!(
        err.contains("dependency cycle selfish -> selfish:"),
        "{err}"
    );
    assert!(err.contains("typo/manifest.yaml: "), "{err}");
    assert!(err.contains("depend_on"), "{err}");
    assert!(err.contains("6 error(s), 1 note(s)"), "{err}");
    // No order exists, and stdout says so.
    assert!(
        common::text(&out.stdout).starts_with("no start-up order: the dependencies form a cycle"),
        "{}",
        common::text(&out.stdout)
    );

    let out = deps(&["resolve", "--manifest", &broken(), "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report = json(&out);
    assert_eq!(report["ok"], false);
    assert_eq!(report["order"], Value::Null);
    assert_eq!(
        codes(&report),
        [
            "E-DEPS-PARSE",
            "E-DEPS-DUPLICATE",
            "E-DEPS-VERSION",
            "E-DEPS-MISSING",
            "N-DEPS-OPTIONAL",
            "E-DEPS-CYCLE",
            "E-DEPS-CYCLE",
        ]
    );
    let problems = report["problems"].as_array().expect("problems");
    let cycles: Vec<&Value> = problems
        .iter()
        .filter(|p| p["code"] == "E-DEPS-CYCLE")
        .map(|p| &p["path"])
        .collect();
    assert_eq!(
        cycles,
        [
            &serde_json::json!(["a", "b", "c", "a"]),
            &serde_json::json!(["selfish", "selfish"])
        ]
    );
    let version = &problems[2];
    assert_eq!(
        (&version["service"], &version["dependency"]),
        (&Value::from("api"), &Value::from("db"))
    );
    assert_eq!(
        (&version["requirement"], &version["declared"]),
        (&Value::from(">=2"), &Value::from("1.5.0"))
    );
    let duplicate = problems[1]["message"].as_str().expect("message");
    assert!(
        duplicate.contains("db-copy/manifest.json") && duplicate.contains("db/manifest.yaml"),
        "{duplicate}"
    );

    // validate prints only the problems, and fails the same way.
    let out = deps(&["validate", "--manifest", &broken()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(common::text(&out.stdout), "");
    assert!(common::text(&out.stderr).contains("error[E-DEPS-CYCLE]"));
}

#[test]
fn patterns_that_match_nothing_stop_with_exit_2() {
    let out = deps(&[
        "validate",
        "--manifest",
        &examples(),
        "--manifest",
        "no/such/*.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out.stdout));
    assert!(
        common::text(&out.stderr)
            .contains("E-DEPS-GLOB: --manifest \"no/such/*.yaml\": matches no file"),
        "{}",
        common::text(&out.stderr)
    );
}

#[tokio::test]
async fn check_health_probes_a_real_engine_and_a_closed_port() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::start(
        &nats.url(),
        &dir.path().join("engine"),
        &["--http-listen", "127.0.0.1:0"],
    );
    let addr = engine.http_addr();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    std::fs::write(
        manifests.join("engine.yaml"),
        format!("name: engine\nversion: 0.1.0\nhealth: http://{addr}/health\n"),
    )
    .expect("write");
    // Nothing listens on a free port.
    std::fs::write(
        manifests.join("ghost.json"),
        format!(
            r#"{{"name": "ghost", "version": "1.0.0", "health": "http://127.0.0.1:{}/health",
                "depends_on": [{{"name": "engine", "version": "^0.1"}}]}}"#,
            free_port()
        ),
    )
    .expect("write");
    let glob = pattern(&manifests, "*");
    let args = [
        "resolve",
        "--manifest",
        &glob,
        "--check-health",
        "--health-timeout",
        "5s",
    ];

    let mut with_json = args.to_vec();
    with_json.extend(["--output", "json"]);
    let out = deps(&with_json);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out.stderr));
    let report = json(&out);
    assert_eq!(report["order"], serde_json::json!(["engine", "ghost"]));
    let health = report["health"].as_array().expect("health");
    assert_eq!(health.len(), 2, "{health:?}");
    assert_eq!(health[0]["service"], "engine");
    assert_eq!(health[0]["state"], "healthy");
    assert_eq!(health[0]["status"], 200);
    assert_eq!(health[1]["service"], "ghost");
    assert_eq!(health[1]["state"], "unhealthy");
    assert_eq!(codes(&report), ["E-DEPS-HEALTH"]);
    assert_eq!(report["problems"][0]["service"], "ghost");

    let out = deps(&args);
    assert_eq!(out.status.code(), Some(1));
    let text = common::text(&out.stdout);
    let row = |name: &str| {
        text.lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{text}"))
            .to_string()
    };
    assert!(row("engine").contains("ok (200, "), "{text}");
    assert!(row("ghost").contains("FAILED"), "{text}");
    assert!(
        common::text(&out.stderr)
            .contains("error[E-DEPS-HEALTH]: ghost: health check http://127.0.0.1:"),
        "{}",
        common::text(&out.stderr)
    );
}

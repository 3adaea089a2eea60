//! Configuration end to end: `jetsaga config check`, an engine configured by
//! a file against nats-servers that require credentials, a refused
//! password, and JSON logs.

mod common;

use common::{READY, World};
use jetsaga_cli::client::Client;
use jetsaga_engine::config::{NatsConfig, Nkey, Secret};
use jetsaga_tests::{ChildProcess, NatsServer, bin_path, run_command};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const RUN: Duration = Duration::from_secs(60);

const ONE_STEP: &str = r#"
sagas:
  one_step:
    steps:
      - id: only
        service: nobody
        operation: wait
        timeout: 10s
"#;

fn jetsaga(args: &[&str], envs: &[(&str, &str)]) -> Output {
    run_command(&bin_path("jetsaga"), args, envs, RUN)
}

/// An engine config file for `nats_url` with `extra` lines, its store under `dir`.
fn engine_config(dir: &Path, nats_url: &str, extra: &str) -> PathBuf {
    let store = dir.join("store");
    common::write(
        dir,
        "jetsaga.yaml",
        &format!(
            "# An engine configured by file only.\nnats:\n  url: {nats_url}\n{extra}data_dir: {}\nack_wait: 5s\n",
            store.display()
        ),
    )
}

/// `jetsaga server --config FILE` (nothing else on the command line),
/// once it is ready.
fn engine_from_file(config: &Path, envs: &[(&str, &str)]) -> ChildProcess {
    let config = config.display().to_string();
    let engine = ChildProcess::spawn(
        "engine",
        &bin_path("jetsaga"),
        &["server", "--config", &config],
        envs,
    );
    engine.wait_for_log("engine ready", READY);
    engine
}

#[test]
fn config_check_shows_values_their_sources_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = common::write(
        dir.path(),
        "f.yaml",
        "nats:\n  url: nats://10.0.0.1:4222\n  user: app\n  password: hunter2-in-file\nreplicas: 3\nbatch_size: 10\nack_wait: 30s\n",
    );
    let file = file.display().to_string();
    let out = jetsaga(
        &["config", "check", "--config", &file, "--ack-wait", "3s"],
        &[("JETSAGA_BATCH_SIZE", "7")],
    );
    let (stdout, stderr) = (common::text(&out.stdout), common::text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        &format!("# configuration file: {file}"),
        "  url: \"nats://10.0.0.1:4222\"  # file",
        "  user: \"app\"  # file",
        "  password: \"***\"  # file",
        "replicas: 3  # file",
        "batch_size: 7  # env JETSAGA_BATCH_SIZE",
        "ack_wait: \"3s\"  # flag --ack-wait",
        "max_payload: 524288  # default",
    ] {
        assert!(stdout.contains(line), "{line:?} missing:\n{stdout}");
    }
    assert!(
        stderr.contains("ok: the configuration is valid"),
        "{stderr}"
    );
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));

    // JSON, with the password from the environment this time.
    let out = jetsaga(
        &["--output", "json", "config", "check", "--config", &file],
        &[("JETSAGA_NATS_PASSWORD", "hunter2-in-env")],
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(report["valid"], true);
    assert_eq!(report["config"]["nats"]["password"], "***");
    assert_eq!(report["config"]["replicas"], 3);
    assert_eq!(
        report["sources"]["nats.password"],
        json!({"from": "env", "var": "JETSAGA_NATS_PASSWORD"})
    );
    assert_eq!(report["sources"]["replicas"]["from"], "file");
    assert!(!common::text(&out.stdout).contains("hunter2"));

    // Invalid: shown, then refused with the reason.
    let out = jetsaga(
        &["config", "check", "--config", &file, "--replicas", "7"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out.stdout));
    assert!(common::text(&out.stdout).contains("replicas: 7  # flag --replicas"));
    assert!(
        common::text(&out.stderr).contains("error: E-CONFIG: replicas 7 is out of range"),
        "{}",
        common::text(&out.stderr)
    );
    let out = jetsaga(
        &["--output", "json", "config", "check", "--config", &file],
        &[("JETSAGA_NATS_TOKEN", "t")],
    );
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(report["valid"], false);
    assert_eq!(report["error"]["code"], "E-CONFIG");

    // An unknown key names itself and the file.
    let typo = common::write(
        dir.path(),
        "typo.yaml",
        "nats:\n  url: nats://a:4222\n  pasword: x\n",
    );
    let out = jetsaga(
        &["config", "check", "--config", typo.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = common::text(&out.stderr);
    assert!(
        err.contains(&format!(
            "error: E-CONFIG-FILE: {}: unknown key `nats.pasword` at line 3",
            typo.display()
        )),
        "{err}"
    );
    // A variable that does not parse names itself.
    let out = jetsaga(&["config", "check"], &[("JETSAGA_MAX_PAYLOAD", "lots")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::text(&out.stderr).contains("error: E-CONFIG-ENV: JETSAGA_MAX_PAYLOAD"),
        "{}",
        common::text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_configured_by_file_authenticates_with_user_and_password() {
    jetsaga_tests::init_tracing();
    let nats = NatsServer::builder()
        .config("authorization { user: app, password: \"s3cret-pw\" }")
        .start();
    let dir = tempfile::tempdir().unwrap();
    let config = engine_config(
        dir.path(),
        &nats.url(),
        "  user: app\n  password: s3cret-pw\n",
    );
    let mut engine = engine_from_file(&config, &[]);

    // The CLI reads the same file; the flags work without one.
    let config_arg = config.display().to_string();
    let defs = common::write(dir.path(), "defs.yaml", ONE_STEP);
    let out = jetsaga(
        &[
            "--config",
            &config_arg,
            "def",
            "apply",
            defs.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let url = nats.url();
    let out = jetsaga(
        &[
            "--nats-url",
            &url,
            "--nats-user",
            "app",
            "def",
            "list",
            "--output",
            "json",
        ],
        &[("JETSAGA_NATS_PASSWORD", "s3cret-pw")],
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert!(common::text(&out.stdout).contains("one_step"));

    // The Rust client with the same settings.
    let client = Client::connect_with(
        &NatsConfig {
            user: Some("app".into()),
            password: Some(Secret::new("s3cret-pw")),
            ..NatsConfig::new(nats.url())
        },
        "jetsaga",
    )
    .await
    .expect("client connects with user and password");
    let started = client.start("one_step", json!({}), None).await.unwrap();
    let detail = client.get(&started.saga_id).await.unwrap();
    assert_eq!(detail.saga.status.name(), "running");

    // Without credentials the server refuses, and the error says what to check.
    let out = jetsaga(&["--nats-url", &url, "def", "list"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::text(&out.stderr);
    assert!(err.contains("E-NATS-CONNECT"), "{err}");
    assert!(err.contains("authorization violation"), "{err}");
    assert!(err.contains("--nats-user"), "{err}");

    engine.terminate();
    assert!(!engine.log().contains("s3cret-pw"), "{}", engine.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_authenticates_with_a_token_from_the_environment() {
    jetsaga_tests::init_tracing();
    let nats = NatsServer::builder()
        .config("authorization { token: \"tok-8d1f\" }")
        .start();
    let dir = tempfile::tempdir().unwrap();
    let config = engine_config(dir.path(), &nats.url(), "");
    let mut engine = engine_from_file(&config, &[("JETSAGA_NATS_TOKEN", "tok-8d1f")]);
    let client = Client::connect_with(
        &NatsConfig {
            token: Some(Secret::new("tok-8d1f")),
            ..NatsConfig::new(nats.url())
        },
        "jetsaga",
    )
    .await
    .expect("client connects with the token");
    assert!(client.definitions().await.unwrap().is_empty());
    engine.terminate();
    assert!(!engine.log().contains("tok-8d1f"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_authenticates_with_an_nkey_seed_file() {
    jetsaga_tests::init_tracing();
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let nats = NatsServer::builder()
        .config(&format!(
            "authorization {{ users: [ {{ nkey: \"{}\" }} ] }}",
            user.public_key()
        ))
        .start();
    let dir = tempfile::tempdir().unwrap();
    let seed_file = common::write(dir.path(), "engine.nk", &format!("{seed}\n"));
    let config = engine_config(
        dir.path(),
        &nats.url(),
        &format!("  nkey: {}\n", seed_file.display()),
    );
    let mut engine = engine_from_file(&config, &[]);
    let client = Client::connect_with(
        &NatsConfig {
            nkey: Some(Nkey::parse(&seed)),
            ..NatsConfig::new(nats.url())
        },
        "jetsaga",
    )
    .await
    .expect("client connects with the seed");
    assert!(client.definitions().await.unwrap().is_empty());
    engine.terminate();
    assert!(!engine.log().contains(&seed));
}

#[test]
fn a_wrong_password_is_a_clear_connect_error() {
    let nats = NatsServer::builder()
        .config("authorization { user: app, password: \"right-pw\" }")
        .start();
    let dir = tempfile::tempdir().unwrap();
    let config = engine_config(
        dir.path(),
        &nats.url(),
        "  user: app\n  password: wrong-pw\n",
    );
    let out = jetsaga(&["server", "--config", config.to_str().unwrap()], &[]);
    let err = common::text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "error: E-NATS-CONNECT: cannot connect to NATS at {}",
            nats.url()
        )),
        "{err}"
    );
    assert!(err.contains("authorization violation"), "{err}");
    assert!(
        err.contains("the server refused the credentials: check nats.user/nats.password"),
        "{err}"
    );
    assert!(
        !err.contains("wrong-pw") && !err.contains("right-pw"),
        "{err}"
    );
    assert!(!err.contains("engine ready"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_and_carry_the_saga_id() {
    let world = World::start(&["--log-format", "json"]).await;
    world.apply_yaml(ONE_STEP).await;
    let started = world
        .client
        .start("one_step", json!({}), None)
        .await
        .unwrap();
    let id = started.saga_id;
    world
        .client
        .cancel(&id, false, Some("test".into()))
        .await
        .unwrap();
    world.engine.process.wait_for_log("saga finished", READY);

    let log = world.engine.process.log();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for line in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line.get(field).is_some(), "no {field}: {line}");
        }
    }
    let about_the_saga: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "saga started" || l["message"] == "saga finished")
        .collect();
    assert_eq!(about_the_saga.len(), 2, "{log}");
    for line in about_the_saga {
        assert_eq!(line["saga_id"], id.as_str(), "{line}");
        assert_eq!(line["saga"], "one_step", "{line}");
    }
    let ready = lines
        .iter()
        .find(|l| l["message"] == "engine ready")
        .expect("engine ready line");
    assert_eq!(ready["level"], "INFO");
    assert_eq!(ready["prefix"], "jetsaga");
}

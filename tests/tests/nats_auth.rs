//! The NATS connection options end to end: nats-servers that require a
//! user and password, a token, an nkey, a credentials file (JWTs minted here
//! under an operator the server trusts), TLS (server certificate from a CA
//! made here) and mutual TLS; against each the `jetsaga` engine process, the
//! CLI, and a worker (an example worker binary, or an SDK worker in this
//! process) with the same settings run a saga to completion. Refused
//! credentials, an unknown CA and a server without the TLS a client requires
//! end the engine and the worker binary with a clear error.

mod common;

use common::tls::TestCa;
use common::{ONE_STEP, World};
use jetsaga_cli::client::Client;
use jetsaga_engine::config::{NatsConfig, Nkey, Secret, TlsConfig};
use jetsaga_protocol::api::SagaStatus;
use jetsaga_tests::{NatsServer, bin_path, run_command};
use rcgen::ExtendedKeyUsagePurpose;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// How long a CLI command or a failing process may take.
const RUN: Duration = Duration::from_secs(60);

/// The saga `payment-workers` serves.
const PAYMENT: &str = "collect_payment";

/// Who runs the saga's steps.
#[derive(Debug, Clone, Copy)]
enum Workers {
    /// `payment-workers`, with the same `--nats-*` flags and variables as
    /// the engine, serving [`PAYMENT`].
    Binary,
    /// An SDK worker in this process on the harness's client (built from
    /// the same [`NatsConfig`] as the engine's), serving [`ONE_STEP`].
    Sdk,
}

/// One way of connecting, given to every party: `--nats-*` flags and
/// `JETSAGA_NATS_*` variables for the processes, a [`NatsConfig`] (url
/// aside) for the clients in this process.
struct Access {
    flags: Vec<String>,
    envs: Vec<(&'static str, String)>,
    config: NatsConfig,
}

impl Access {
    fn flags(&self) -> Vec<&str> {
        self.flags.iter().map(String::as_str).collect()
    }

    fn envs(&self) -> Vec<(&str, &str)> {
        self.envs.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    /// The secrets the processes must never log.
    fn secrets(&self) -> Vec<String> {
        let c = &self.config;
        let seed = c.nkey.as_ref().map(|n| n.seed().expect("seed"));
        [c.password.as_ref(), c.token.as_ref(), seed.as_ref()]
            .into_iter()
            .flatten()
            .map(|s| s.expose().to_string())
            .collect()
    }
}

/// `jetsaga --nats-url URL <access flags> ARGS` with the access variables.
fn cli(nats: &NatsServer, access: &Access, args: &[&str]) -> Output {
    let url = nats.url();
    let mut all = vec!["--nats-url", url.as_str()];
    all.extend(access.flags());
    all.extend_from_slice(args);
    run_command(&bin_path("jetsaga"), &all, &access.envs(), RUN)
}

/// A server started with `server_config` whose harness clients connect as
/// `access` says.
fn server(server_config: &str, access: &Access) -> NatsServer {
    NatsServer::builder()
        .config(server_config)
        .client_config(access.config.clone())
        .start()
}

/// Engine, CLI and workers all connect as `access` says; a saga started
/// with the CLI runs to completion.
async fn a_saga_runs_end_to_end(nats: NatsServer, access: &Access, workers: Workers) {
    let mut world = World::on(nats, &access.flags(), &access.envs()).await;
    world.client = Client::connect_with(&world.nats.nats_config(), "jetsaga")
        .await
        .expect("the Rust client connects with the same settings");

    let (definitions, saga) = match workers {
        Workers::Binary => (
            jetsaga_tests::workspace_root()
                .join("examples/definitions")
                .join(format!("{PAYMENT}.yaml")),
            PAYMENT,
        ),
        Workers::Sdk => (
            common::write(world.dir.path(), "defs.yaml", ONE_STEP),
            "one_step",
        ),
    };
    let out = cli(
        &world.nats,
        access,
        &["def", "apply", definitions.to_str().expect("utf-8 path")],
    );
    assert!(
        out.status.success(),
        "def apply: {}",
        common::text(&out.stderr)
    );

    let binary = matches!(workers, Workers::Binary).then(|| {
        world.example_workers_with_env("payment-workers", &access.flags(), &access.envs())
    });
    let _sdk = match workers {
        Workers::Sdk => Some(world.echo_worker().await),
        Workers::Binary => None,
    };

    let out = cli(
        &world.nats,
        access,
        &["saga", "start", saga, "--input", "{}"],
    );
    assert!(
        out.status.success(),
        "saga start: {}",
        common::text(&out.stderr)
    );
    let id = common::text(&out.stdout).trim().to_string();
    let done = world.finished(&id).await;
    assert_eq!(done.saga.status, SagaStatus::Completed, "{done:?}");

    let logs = [Some(&world.engine.process), binary.as_ref()];
    for log in logs.into_iter().flatten().map(|p| p.log()) {
        for secret in access.secrets() {
            assert!(!log.contains(&secret), "a secret was logged:\n{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_workers_take_a_comma_separated_server_list() {
    // The first server in the list is down: the workers go on to the next.
    let world = World::start(&[]).await;
    world.apply_example(PAYMENT).await;
    let down = format!("nats://127.0.0.1:{}", jetsaga_tests::free_port());
    let servers = format!("{down},{}", world.nats.url());
    let _workers =
        world.example_workers_with_env("payment-workers", &["--nats-url", &servers], &[]);
    let id = world.start_saga(PAYMENT, json!({})).await;
    assert_eq!(world.finished(&id).await.saga.status, SagaStatus::Completed);
}

/// What a process that could not connect printed, checked to be a clear
/// failure: exit code 1, `needles` in its stderr, no panic.
fn assert_refused(what: &str, out: &Output, needles: &[&str]) -> String {
    let err = common::text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "{what}: {needle:?} missing in:\n{err}"
        );
    }
    assert!(!err.contains("panicked"), "{what} panicked:\n{err}");
    err
}

/// `jetsaga server` with `access`, expected to exit before it is ready.
fn engine_fails(nats: &NatsServer, access: &Access, dir: &Path) -> Output {
    let url = nats.url();
    let data = dir.join("refused-engine");
    let mut args = vec![
        "--nats-url",
        url.as_str(),
        "server",
        "--data-dir",
        data.to_str().expect("utf-8 path"),
    ];
    args.extend(access.flags());
    run_command(&bin_path("jetsaga"), &args, &access.envs(), RUN)
}

/// `payment-workers` with `access`, expected to exit before it is ready.
fn workers_fail(nats: &NatsServer, access: &Access, dir: &Path) -> Output {
    let url = nats.url();
    let ledger = dir.join("refused-ledger");
    let mut args = vec![
        "--nats-url",
        url.as_str(),
        "--ledger-dir",
        ledger.to_str().expect("utf-8 path"),
    ];
    args.extend(access.flags());
    run_command(&bin_path("payment-workers"), &args, &access.envs(), RUN)
}

// ---------------------------------------------------------------------------
// User and password, token, nkey.

const USER_PASSWORD: &str = "authorization { user: app, password: \"pw-4f2a9\" }";

fn user_password(password: &str) -> Access {
    Access {
        // The password from the environment, as the flag's help advises.
        flags: vec!["--nats-user".into(), "app".into()],
        envs: vec![("JETSAGA_NATS_PASSWORD", password.into())],
        config: NatsConfig {
            user: Some("app".into()),
            password: Some(Secret::new(password)),
            ..NatsConfig::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password() {
    let access = user_password("pw-4f2a9");
    let nats = server(USER_PASSWORD, &access);
    a_saga_runs_end_to_end(nats, &access, Workers::Binary).await;
}

#[test]
fn a_wrong_password_ends_engine_and_workers_with_a_clear_error() {
    let nats = server(USER_PASSWORD, &user_password("pw-4f2a9"));
    let dir = tempfile::tempdir().expect("temp dir");
    let wrong = user_password("not-the-pw");

    let out = engine_fails(&nats, &wrong, dir.path());
    let err = assert_refused(
        "engine",
        &out,
        &[
            &format!(
                "error: E-NATS-CONNECT: cannot connect to NATS at {}",
                nats.url()
            ),
            "authorization violation",
            "the server refused the credentials",
        ],
    );
    assert!(!err.contains("not-the-pw"), "{err}");

    let out = workers_fail(&nats, &wrong, dir.path());
    let err = assert_refused(
        "payment-workers",
        &out,
        &[
            &format!("E-NATS-CONNECT: cannot connect to NATS at {}", nats.url()),
            "the server refused the credentials",
        ],
    );
    assert!(!err.contains("not-the-pw"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token() {
    let access = Access {
        flags: vec![],
        envs: vec![("JETSAGA_NATS_TOKEN", "tok-77c1e".into())],
        config: NatsConfig {
            token: Some(Secret::new("tok-77c1e")),
            ..NatsConfig::default()
        },
    };
    let nats = server("authorization { token: \"tok-77c1e\" }", &access);
    a_saga_runs_end_to_end(nats, &access, Workers::Sdk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_seed_file() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().expect("seed");
    let keys = tempfile::tempdir().expect("temp dir");
    let seed_file = common::write(keys.path(), "user.nk", &format!("{seed}\n"));
    let access = Access {
        flags: vec!["--nats-nkey".into(), seed_file.display().to_string()],
        envs: vec![],
        config: NatsConfig {
            nkey: Some(Nkey::parse(&seed)),
            ..NatsConfig::default()
        },
    };
    let nats = server(
        &format!(
            "authorization {{ users: [ {{ nkey: \"{}\" }} ] }}",
            user.public_key()
        ),
        &access,
    );
    a_saga_runs_end_to_end(nats, &access, Workers::Binary).await;
}

// ---------------------------------------------------------------------------
// TLS.

/// nats-server's `tls { }` block with the server certificate `(cert, key)`;
/// with `client_ca`, clients must present a certificate it signed.
fn tls_block(cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let mut block = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 5\n",
        cert.display(),
        key.display()
    );
    if let Some(ca) = client_ca {
        block.push_str(&format!(
            "  ca_file: \"{}\"\n  verify: true\n",
            ca.display()
        ));
    }
    block.push('}');
    block
}

/// Requiring TLS, trusting `ca`, presenting `client` (cert, key) when given.
fn tls_access(ca: &Path, client: Option<&(PathBuf, PathBuf)>) -> Access {
    let mut flags = vec![
        "--nats-tls-required".to_string(),
        "--nats-tls-ca".to_string(),
        ca.display().to_string(),
    ];
    if let Some((cert, key)) = client {
        flags.extend([
            "--nats-tls-cert".to_string(),
            cert.display().to_string(),
            "--nats-tls-key".to_string(),
            key.display().to_string(),
        ]);
    }
    Access {
        flags,
        envs: vec![],
        config: NatsConfig {
            tls: TlsConfig {
                ca: Some(ca.to_path_buf()),
                cert: client.map(|(cert, _)| cert.clone()),
                key: client.map(|(_, key)| key.clone()),
                required: true,
            },
            ..NatsConfig::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let ca = TestCa::new("jetsaga-test-ca");
    let (cert, key) = ca.server_cert();
    let access = tls_access(&ca.ca_file, None);
    let nats = server(&tls_block(&cert, &key, None), &access);
    a_saga_runs_end_to_end(nats, &access, Workers::Binary).await;
}

#[test]
fn requiring_tls_refuses_a_server_without_it() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("jetsaga-test-ca");
    let access = tls_access(&ca.ca_file, None);
    let out = engine_fails(&nats, &access, dir.path());
    assert_refused("engine", &out, &["E-NATS-CONNECT", "TLS failed"]);
    let out = workers_fail(&nats, &access, dir.path());
    assert_refused("payment-workers", &out, &["E-NATS-CONNECT", "TLS failed"]);
}

#[test]
fn an_unknown_ca_ends_engine_and_workers_with_a_clear_error() {
    let ca = TestCa::new("jetsaga-test-ca");
    let (cert, key) = ca.server_cert();
    let nats = server(
        &tls_block(&cert, &key, None),
        &tls_access(&ca.ca_file, None),
    );
    let other = TestCa::new("some-other-ca");
    let wrong = tls_access(&other.ca_file, None);

    let out = engine_fails(&nats, &wrong, other.dir.path());
    assert_refused(
        "engine",
        &out,
        &[
            &format!(
                "error: E-NATS-CONNECT: cannot connect to NATS at {}",
                nats.url()
            ),
            "TLS failed: check nats.tls.ca",
        ],
    );
    let out = workers_fail(&nats, &wrong, other.dir.path());
    assert_refused(
        "payment-workers",
        &out,
        &[
            &format!("E-NATS-CONNECT: cannot connect to NATS at {}", nats.url()),
            "TLS failed: check nats.tls.ca",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    let ca = TestCa::new("jetsaga-test-ca");
    let (cert, key) = ca.server_cert();
    let client_cert = ca.issue(
        "client",
        &["jetsaga-client"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let access = tls_access(&ca.ca_file, Some(&client_cert));
    let nats = server(&tls_block(&cert, &key, Some(&ca.ca_file)), &access);

    // Without a client certificate the server refuses the CLI.
    let out = cli(&nats, &tls_access(&ca.ca_file, None), &["def", "list"]);
    assert_refused("def list", &out, &["E-NATS-CONNECT", "TLS failed"]);

    a_saga_runs_end_to_end(nats, &access, Workers::Sdk).await;
}

// ---------------------------------------------------------------------------
// Credentials file: a user JWT and its seed, under an operator trusted by
// the server (decentralized authentication, as `nsc` sets it up).

/// A NATS JWT (`ed25519-nkey`) about `subject`, signed by `issuer`, with
/// `nats` as its NATS-specific claims.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let issued_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let claims = json!({
        "jti": uuid::Uuid::now_v7().simple().to_string().to_uppercase(),
        "iat": issued_at,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        b64.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        b64.encode(claims.to_string())
    );
    let signature = issuer.sign(signed.as_bytes()).expect("sign the JWT");
    format!("{signed}.{}", b64.encode(signature))
}

/// An account JWT without limits; with JetStream (unlimited) when
/// `jetstream` (never on the system account).
fn account_jwt(
    operator: &nkeys::KeyPair,
    account: &nkeys::KeyPair,
    name: &str,
    jetstream: bool,
) -> String {
    let mut limits = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    if jetstream {
        for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[key] = json!(-1);
        }
    }
    nats_jwt(
        operator,
        &account.public_key(),
        name,
        json!({
            "limits": limits,
            "default_permissions": { "pub": {}, "sub": {} },
            "type": "account",
            "version": 2,
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_file() {
    let operator = nkeys::KeyPair::new_operator();
    let (system, app) = (nkeys::KeyPair::new_account(), nkeys::KeyPair::new_account());
    let user = nkeys::KeyPair::new_user();
    let user_jwt = nats_jwt(
        &app,
        &user.public_key(),
        "jetsaga",
        json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2,
        }),
    );
    let keys = tempfile::tempdir().expect("temp dir");
    let creds = common::write(
        keys.path(),
        "jetsaga.creds",
        &format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().expect("seed")
        ),
    );
    let server_config = format!(
        "trusted_keys: [\"{}\"]\nsystem_account: \"{}\"\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{}\"\n  {}: \"{}\"\n}}",
        operator.public_key(),
        system.public_key(),
        system.public_key(),
        account_jwt(&operator, &system, "SYS", false),
        app.public_key(),
        account_jwt(&operator, &app, "APP", true),
    );
    let access = Access {
        flags: vec!["--nats-creds".into(), creds.display().to_string()],
        envs: vec![],
        config: NatsConfig {
            creds: Some(creds.clone()),
            ..NatsConfig::default()
        },
    };
    let nats = server(&server_config, &access);

    // Without the file the server refuses.
    let out = cli(&nats, &no_credentials(), &["def", "list"]);
    assert_refused(
        "def list",
        &out,
        &["E-NATS-CONNECT", "authorization violation"],
    );

    a_saga_runs_end_to_end(nats, &access, Workers::Binary).await;
}

/// No credentials, no TLS settings.
fn no_credentials() -> Access {
    Access {
        flags: vec![],
        envs: vec![],
        config: NatsConfig::default(),
    }
}

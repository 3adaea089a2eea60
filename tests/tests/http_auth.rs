//! Who may call the engine's HTTP API, against a real engine process and
//! nats-server: bearer tokens and their roles (401, 403, what each role
//! may do), the routes that stay open, the refusals counted, the refusal to
//! listen beyond loopback without tokens, HTTPS, and `config new-token`.

mod common;

use common::World;
use common::tls::TestCa;
use jetsaga_engine::api::auth::{HttpToken, Role, new_token};
use jetsaga_tests::{bin_path, run_command, wait_until};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

const DEFS: &str = r#"
sagas:
  stuck:
    steps:
      - id: wait
        service: nobody
        operation: wait
        timeout: 10m
"#;

/// A token of each role, and the flag that configures all three.
struct Tokens {
    read: String,
    operate: String,
    admin: String,
}

impl Tokens {
    fn new() -> Tokens {
        Tokens {
            read: new_token(),
            operate: new_token(),
            admin: new_token(),
        }
    }

    /// `--http-tokens=viewer:read:<sha256>,ops:operate:...,root:admin:...`
    fn flag(&self) -> String {
        let entries = [
            HttpToken::of("viewer", Role::Read, &self.read),
            HttpToken::of("ops", Role::Operate, &self.operate),
            HttpToken::of("root", Role::Admin, &self.admin),
        ];
        let list: Vec<String> = entries.iter().map(ToString::to_string).collect();
        format!("--http-tokens={}", list.join(","))
    }
}

/// An answer: status, headers (names lowercased) and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {self:?}"))
            .to_string()
    }
}

/// One request with an optional bearer token over `stream` (HTTP/1.0: the
/// answer ends with the connection).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &str,
) -> Answer {
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: engine\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("send");
    stream.write_all(body.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("answer within 30 s")
        .expect("read the answer");
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").expect("end of the head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The plain HTTP API at `addr`.
struct Http {
    addr: String,
}

impl Http {
    async fn send(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
        let content_type = if path.starts_with("/v1/definitions") {
            "application/yaml"
        } else {
            "application/json"
        };
        let stream = TcpStream::connect(&self.addr).await.expect("connect");
        exchange(stream, method, path, token, content_type, body).await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.send("GET", path, token, "").await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_have_roles_and_refusals_are_counted() {
    let tokens = Tokens::new();
    let world = World::start(&["--http-listen", "127.0.0.1:0", &tokens.flag()]).await;
    let http = Http {
        addr: world.engine.http_addr(),
    };
    let (read, operate, admin) = (
        Some(tokens.read.as_str()),
        Some(tokens.operate.as_str()),
        Some(tokens.admin.as_str()),
    );

    // Probes, scrapers and the contract stay open.
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        let a = http.get(path, None).await;
        assert_eq!(a.status, 200, "{path}: {a:?}");
    }

    // No token, a malformed header, an unknown token: 401 with a challenge.
    let a = http.get("/v1/sagas", None).await;
    assert_eq!((a.status, a.code().as_str()), (401, "E-UNAUTHENTICATED"));
    assert!(
        a.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{a:?}"
    );
    let a = http.send("POST", "/v1/sagas", None, "{}").await;
    assert_eq!(a.status, 401, "{a:?}");
    let stream = TcpStream::connect(&http.addr).await.unwrap();
    let mut raw = stream;
    raw.write_all(b"GET /v1/sagas HTTP/1.0\r\nAuthorization: Basic dTpw\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    raw.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.0 401"), "{text}");
    let a = http.get("/v1/sagas", Some(&new_token())).await;
    assert_eq!((a.status, a.code().as_str()), (401, "E-UNAUTHENTICATED"));
    assert!(
        a.header("www-authenticate")
            .is_some_and(|v| v.contains("invalid_token")),
        "{a:?}"
    );

    // admin: definitions apply and validate, breaker reset.
    let a = http.send("POST", "/v1/definitions", admin, DEFS).await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = http
        .send("POST", "/v1/definitions/validate", admin, DEFS)
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = http
        .send("POST", "/v1/breakers/nobody/reset", admin, "")
        .await;
    assert_eq!(a.code(), "E-NOT-FOUND", "past the guard: {a:?}");

    // operate: no definitions, no breaker reset.
    for (method, path, body) in [
        ("POST", "/v1/definitions", DEFS),
        ("POST", "/v1/definitions/validate", DEFS),
        ("POST", "/v1/breakers/nobody/reset", ""),
    ] {
        let a = http.send(method, path, operate, body).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (403, "E-FORBIDDEN"),
            "{path}"
        );
        let message = a.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.contains("ops") && message.contains("admin"),
            "{message}"
        );
    }
    // operate: start, cancel, retry, delete.
    let a = http
        .send(
            "POST",
            "/v1/sagas",
            operate,
            &json!({"saga": "stuck"}).to_string(),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.json()["saga_id"].as_str().unwrap().to_string();

    // read: reads only.
    for path in [
        "/v1/sagas".to_string(),
        format!("/v1/sagas/{id}"),
        "/v1/stats".to_string(),
        "/v1/definitions".to_string(),
        "/v1/breakers".to_string(),
    ] {
        let a = http.get(&path, read).await;
        assert_eq!(a.status, 200, "{path}: {a:?}");
    }
    let a = http.get("/v1/breakers/nobody", read).await;
    assert_eq!(a.code(), "E-NOT-FOUND", "past the guard: {a:?}");
    for (method, path, body) in [
        ("POST", "/v1/sagas".to_string(), json!({"saga": "stuck"})),
        ("POST", format!("/v1/sagas/{id}/cancel"), json!({})),
        ("POST", format!("/v1/sagas/{id}/retry"), json!({})),
        ("DELETE", format!("/v1/sagas/{id}"), json!({})),
    ] {
        let a = http.send(method, &path, read, &body.to_string()).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (403, "E-FORBIDDEN"),
            "{path}"
        );
    }

    let a = http
        .send("POST", &format!("/v1/sagas/{id}/cancel"), operate, "{}")
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = http
        .send("POST", &format!("/v1/sagas/{id}/retry"), operate, "{}")
        .await;
    assert_eq!(a.code(), "E-NOT-APPLICABLE", "past the guard: {a:?}");
    let a = http
        .send("DELETE", &format!("/v1/sagas/{id}"), operate, "")
        .await;
    assert_eq!(a.status, 204, "{a:?}");
    // admin may do what operate and read may.
    let a = http.get("/v1/sagas", admin).await;
    assert_eq!(a.status, 200);

    // Every refusal counted, by reason.
    for (reason, count) in [
        ("missing", 2.0),
        ("malformed", 1.0),
        ("unknown", 1.0),
        ("forbidden", 7.0),
    ] {
        common::wait_metric(
            &http.addr,
            &format!(r#"engine_http_auth_refused_total{{reason="{reason}"}}"#),
            count,
        )
        .await;
    }
    // Requests that change something are logged with the token's name.
    world
        .engine
        .process
        .wait_for_log("token=root", common::READY);
    let log = world.engine.process.log();
    let logged = |token: &str, method: &str, path: &str| {
        log.lines().any(|l| {
            l.contains("http request")
                && l.contains(&format!("token={token} "))
                && l.contains(&format!("method={method} "))
                && l.contains(path)
        })
    };
    assert!(logged("ops", "POST", "/v1/sagas"), "{log}");
    assert!(logged("ops", "DELETE", &format!("/v1/sagas/{id}")), "{log}");
    assert!(logged("root", "POST", "/v1/definitions"), "{log}");
    assert!(
        !logged("viewer", "GET", "/v1/sagas"),
        "reads are not logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_beyond_loopback_needs_tokens_or_http_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let out = run_command(
        &bin_path("jetsaga"),
        &["server", "--data-dir", &data, "--http-listen", "0.0.0.0:0"],
        &[],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let stderr = common::text(&out.stderr);
    assert!(
        stderr.contains("E-HTTP-INSECURE") && stderr.contains("--http-insecure"),
        "{stderr}"
    );

    let world = World::start(&["--http-listen", "0.0.0.0:0", "--http-insecure"]).await;
    let port = world
        .engine
        .http_addr()
        .rsplit_once(':')
        .unwrap()
        .1
        .to_string();
    let http = Http {
        addr: format!("127.0.0.1:{port}"),
    };
    let a = http.get("/v1/sagas", None).await;
    assert_eq!(a.status, 200, "open behind a proxy: {a:?}");
}

/// A connection that does not finish its TLS handshake within
/// `http_header_timeout` is closed and counted, and so is one that finishes
/// it and then sends no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_https_connections_are_closed_and_counted() {
    let ca = TestCa::new("http-ca");
    let (cert, key) = ca.server_cert();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let world = World::start(&[
        "--http-listen",
        "127.0.0.1:0",
        "--http-tls-cert",
        &cert,
        "--http-tls-key",
        &key,
        "--http-header-timeout",
        "1s",
    ])
    .await;
    let addr = world.engine.http_addr();
    let https = Https::new(addr.clone(), &ca);
    let counted = |reason: &'static str| {
        let https = &https;
        async move {
            let a = https.get("/metrics", None).await;
            assert_eq!(a.status, 200, "{a:?}");
            let series = format!(r#"engine_rejected_messages_total{{reason="{reason}"}}"#);
            common::series_value(&a.body, &series)
        }
    };
    assert_eq!(counted("tls_handshake_timeout").await, Some(0.0));
    assert_eq!(counted("header_timeout").await, Some(0.0));

    // No handshake at all: closed after the timeout.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut raw = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), silent.read_to_end(&mut raw)).await;
    assert!(closed.is_ok(), "still open without a handshake");
    wait_until(
        "the handshake timeout counted",
        Duration::from_secs(15),
        || async { (counted("tls_handshake_timeout").await == Some(1.0)).then_some(()) },
    )
    .await;

    // A handshake, then no request: closed and counted as such.
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = https
        .connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let closed = tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut raw)).await;
    assert!(closed.is_ok(), "still open without a request");
    wait_until(
        "the header timeout counted",
        Duration::from_secs(15),
        || async { (counted("header_timeout").await == Some(1.0)).then_some(()) },
    )
    .await;
    assert_eq!(counted("tls_handshake_timeout").await, Some(1.0));
}

/// A TLS client of the engine's HTTPS listener that trusts `ca`.
struct Https {
    addr: String,
    connector: tokio_rustls::TlsConnector,
}

impl Https {
    fn new(addr: String, ca: &TestCa) -> Https {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca.ca_file).expect("CA file") {
            roots.add(cert.expect("CA certificate")).expect("a root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Https {
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.send("GET", path, token, "").await
    }

    async fn send(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
        let tcp = TcpStream::connect(&self.addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        exchange(tls, method, path, token, "application/json", body).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_token() {
    let ca = TestCa::new("http-ca");
    let (cert, key) = ca.server_cert();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());

    // Files that cannot work stop the engine at start.
    let garbage = common::write(ca.dir.path(), "garbage.pem", "not PEM\n");
    let garbage = garbage.display().to_string();
    for (c, k, says) in [
        (garbage.as_str(), key.as_str(), "http_tls_cert"),
        (cert.as_str(), garbage.as_str(), "http_tls_key"),
        (cert.as_str(), "/nonexistent/key.pem", "cannot read"),
    ] {
        let out = run_command(
            &bin_path("jetsaga"),
            &[
                "server",
                "--http-listen",
                "127.0.0.1:0",
                "--http-tls-cert",
                c,
                "--http-tls-key",
                k,
            ],
            &[],
            Duration::from_secs(30),
        );
        assert!(!out.status.success());
        let stderr = common::text(&out.stderr);
        assert!(
            stderr.contains("E-HTTP-TLS") && stderr.contains(says),
            "{stderr}"
        );
    }

    let tokens = Tokens::new();
    let world = World::start(&[
        "--http-listen",
        "127.0.0.1:0",
        "--http-tls-cert",
        &cert,
        "--http-tls-key",
        &key,
        &tokens.flag(),
    ])
    .await;
    let addr = world.engine.http_addr();
    let https = Https::new(addr.clone(), &ca);
    let a = https.get("/v1/sagas", Some(&tokens.read)).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.json()["sagas"].is_array());
    let a = https.get("/v1/sagas", None).await;
    assert_eq!((a.status, a.code().as_str()), (401, "E-UNAUTHENTICATED"));
    let a = https.get("/health", None).await;
    assert_eq!(a.status, 200);
    // The console's session cookie is Secure under HTTPS.
    let login = json!({ "token": tokens.operate }).to_string();
    let a = https.send("POST", "/ui/login", None, &login).await;
    assert_eq!(a.status, 200, "{a:?}");
    let cookie = a.header("set-cookie").expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.ends_with("; Secure"),
        "{cookie}"
    );
    // Plain HTTP gets no answer from an HTTPS listener.
    let mut plain = TcpStream::connect(&addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), plain.read_to_end(&mut raw)).await;
    assert!(
        !raw.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_token_configures_an_engine_that_accepts_it() {
    let out = run_command(
        &bin_path("jetsaga"),
        &["config", "new-token", "--role", "operate", "--name", "ops"],
        &[],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let stdout = common::text(&out.stdout);
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            .trim()
            .to_string()
    };
    let token = field("token:");
    let yaml = field("yaml:");
    assert!(
        token.starts_with("jsg_") && token.len() >= 4 + 32,
        "{token}"
    );
    assert!(
        !yaml.contains(&token),
        "the entry holds the digest only: {yaml}"
    );
    assert!(
        common::text(&out.stderr).contains("secret"),
        "the advice goes to stderr"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = common::write(
        dir.path(),
        "jetsaga.yaml",
        &format!("http_tokens:\n  {yaml}\n"),
    );
    let world = World::start(&[
        "--config",
        config.to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
    ])
    .await;
    let http = Http {
        addr: world.engine.http_addr(),
    };
    let a = http.get("/v1/sagas", Some(&token)).await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = http
        .send("POST", "/v1/definitions", Some(&token), DEFS)
        .await;
    assert_eq!((a.status, a.code().as_str()), (403, "E-FORBIDDEN"));
    let a = http.get("/v1/sagas", None).await;
    assert_eq!(a.status, 401);

    // The JSON form carries the same pieces.
    let out = run_command(
        &bin_path("jetsaga"),
        &["--output", "json", "config", "new-token", "--role", "read"],
        &[],
        Duration::from_secs(30),
    );
    let made: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let token = made["token"].as_str().unwrap();
    let entry: HttpToken = made["env"]
        .as_str()
        .unwrap()
        .strip_prefix("JETSAGA_HTTP_TOKENS=")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        entry,
        HttpToken::of(made["name"].as_str().unwrap(), Role::Read, token)
    );
    assert_eq!(made["sha256"], entry.sha256.to_string());
}

/// The shipped deployments set tokens that parse and validate (the engines
/// there listen on 0.0.0.0 and would not start without them).
#[test]
fn the_shipped_deployments_configure_tokens() {
    let root = jetsaga_tests::workspace_root();
    for file in [
        "deploy/kubernetes/engine-http-tokens.yaml",
        "deploy/systemd/jetsaga.env",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        let value = text
            .lines()
            .map(str::trim)
            .find_map(|l| {
                l.strip_prefix("JETSAGA_HTTP_TOKENS=")
                    .or_else(|| l.strip_prefix("JETSAGA_HTTP_TOKENS: "))
            })
            .unwrap_or_else(|| panic!("{file} sets no JETSAGA_HTTP_TOKENS"));
        let tokens = HttpToken::parse_list(value).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!tokens.is_empty(), "{file}");
        jetsaga_engine::api::auth::validate(&tokens).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let statefulset =
        std::fs::read_to_string(root.join("deploy/kubernetes/engine-statefulset.yaml")).unwrap();
    assert!(statefulset.contains("name: JETSAGA_HTTP_TOKENS"));
    assert!(statefulset.contains("name: jetsaga-http-tokens"));
    let kustomization =
        std::fs::read_to_string(root.join("deploy/kubernetes/kustomization.yaml")).unwrap();
    assert!(kustomization.contains("engine-http-tokens.yaml"));
}

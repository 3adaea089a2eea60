//! The web console at `/ui/`, in a real browser: headless Chromium driven
//! over WebDriver (chromedriver) against a real engine process with tokens,
//! whose sagas are driven to every state by an in-process worker. It checks
//! what the pages show, that a `read` token sees no action and is refused
//! by the server, that an `operate` token's actions work (each confirmed
//! first), that a wrong token is refused with a message and counted, and
//! the session cookie's flags and CSRF check. It writes screenshots of the
//! main pages to `docs/console/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test` installs
//! them); `JETSAGA_CHROMIUM` and `JETSAGA_CHROMEDRIVER` point elsewhere.

mod common;

use common::{READY, World};
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use jetsaga_engine::api::auth::{HttpToken, Role, new_token};
use jetsaga_protocol::api::SagaState;
use jetsaga_tests::{ChildProcess, free_port, wait_until, workspace_root};
use jetsaga_worker::{StepError, TaskContext, Worker};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the browser may take to show something.
const SHOWN: Duration = Duration::from_secs(20);

/// An order: reserve stock, then charge and notify side by side, then ship.
/// What each step does follows the saga's input (see [`shop_worker`]).
const DEFS: &str = r#"
sagas:
  order:
    timeout: 30m
    steps:
      - id: reserve
        service: stock
        operation: reserve
        compensation: release
        timeout: 30s
        retry: { max_attempts: 3, initial_delay: 100ms, max_delay: 1s, backoff_factor: 2, jitter: 0 }
      - id: charge
        service: payments
        operation: charge
        compensation: refund
        timeout: 30s
        retry: { max_attempts: 3, initial_delay: 300ms, max_delay: 1s, backoff_factor: 2, jitter: 0 }
        depends_on: [reserve]
      - id: notify
        service: mail
        operation: send
        timeout: 30s
        depends_on: [reserve]
      - id: ship
        service: shipping
        operation: ship
        timeout: 10m
        depends_on: [charge, notify]
services:
  payments:
    max_in_flight: 8
    circuit_breaker: { failure_threshold: 50, success_threshold: 1, open_timeout: 30s }
"#;

/// A token of each role and the flag that configures them.
struct Tokens {
    read: String,
    operate: String,
}

impl Tokens {
    fn new() -> Tokens {
        Tokens {
            read: new_token(),
            operate: new_token(),
        }
    }

    fn flag(&self) -> String {
        let list = [
            HttpToken::of("viewer", Role::Read, &self.read),
            HttpToken::of("ops", Role::Operate, &self.operate),
        ];
        let list: Vec<String> = list.iter().map(ToString::to_string).collect();
        format!("--http-tokens={}", list.join(","))
    }
}

/// Workers for every service of `order`. Input fields: `out_of_stock`
/// (reserve fails: the saga fails with nothing to undo), `declined` (charge
/// fails: it compensates), `flaky` (charge fails once, retryably), `hold`
/// (ship never ends). Release fails while `release_broken` is set.
async fn shop_workers(world: &World, release_broken: Arc<AtomicBool>) -> Vec<common::WorkerGuard> {
    fn flag(input: &Value, name: &str) -> bool {
        input[name].as_bool().unwrap_or(false)
    }
    let stock = Worker::builder("stock")
        .handler("reserve", |_: TaskContext, input: Value| async move {
            if flag(&input, "out_of_stock") {
                return Err(StepError::fatal("item 42 is out of stock"));
            }
            Ok(json!({"reservation": "r-1042", "items": 3}))
        })
        .compensation("release", move |_: TaskContext, _: Value| {
            let broken = release_broken.clone();
            async move {
                if broken.load(Ordering::SeqCst) {
                    Err(StepError::fatal("warehouse API answered 503"))
                } else {
                    Ok(json!({"released": true}))
                }
            }
        });
    let payments = Worker::builder("payments")
        .handler("charge", |ctx: TaskContext, input: Value| async move {
            if flag(&input, "declined") {
                return Err(StepError::fatal("card declined (insufficient funds)"));
            }
            if flag(&input, "flaky") && ctx.attempt() == 1 {
                return Err(StepError::retryable("payment gateway timed out"));
            }
            Ok(json!({"charge": "ch_3PqR", "amount": 4200}))
        })
        .compensation("refund", |_: TaskContext, _: Value| async {
            Ok(json!({"refund": "re_1"}))
        });
    let mail = Worker::builder("mail").handler("send", |_: TaskContext, _: Value| async {
        Ok(json!({"message": "m-77"}))
    });
    let shipping =
        Worker::builder("shipping").handler("ship", |_: TaskContext, input: Value| async move {
            if flag(&input, "hold") {
                std::future::pending::<()>().await;
            }
            Ok(json!({"tracking": "1Z999"}))
        });
    let mut guards = Vec::new();
    for builder in [stock, payments, mail, shipping] {
        guards.push(world.worker(builder).await);
    }
    guards
}

/// A program the test needs: `$env`, else `default`; a clear panic when
/// it is missing.
fn program(env: &str, default: &str, package: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: install Debian's {package} (`apt-get install -y chromium chromium-driver`, which scripts/test does when it can), or set {env}",
        path.display()
    );
    path
}

/// Headless Chromium under chromedriver, each with its own profile.
struct Chrome {
    browser: Browser,
    /// Ends Chromium with it (and its process group) when dropped.
    _driver: ChildProcess,
    _profile: tempfile::TempDir,
}

impl Chrome {
    async fn start() -> Chrome {
        let chromium = program("JETSAGA_CHROMIUM", "/usr/bin/chromium", "chromium");
        let chromedriver = program(
            "JETSAGA_CHROMEDRIVER",
            "/usr/bin/chromedriver",
            "chromium-driver",
        );
        let port = free_port();
        let driver = ChildProcess::spawn(
            "chromedriver",
            &chromedriver,
            &[&format!("--port={port}")],
            &[],
        );
        driver.wait_for_log("started successfully", READY);
        let profile = tempfile::tempdir().expect("profile dir");
        // The machine may have no network: without these, Chromium waits
        // on refused connections (updates, sync, QUIC probes).
        let args = [
            "--headless".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-quic".to_string(),
            "--no-first-run".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--window-size=1440,900".to_string(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        });
        let caps = caps.as_object().expect("an object").clone();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let browser = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session with headless Chromium");
        browser
            .set_window_size(1440, 900)
            .await
            .expect("window size");
        Chrome {
            browser,
            _driver: driver,
            _profile: profile,
        }
    }
}

/// The element `css` selects once it is shown (bounded poll).
async fn shown(b: &Browser, css: &str) -> Element {
    let css = css.to_string();
    wait_until(&format!("{css} shown"), SHOWN, || {
        let (b, css) = (b.clone(), css.clone());
        async move {
            let e = b.find(Locator::Css(&css)).await.ok()?;
            e.is_displayed().await.ok()?.then_some(e)
        }
    })
    .await
}

/// Waits until the text of `css` contains `needle`; returns the text.
async fn text_shows(b: &Browser, css: &str, needle: &str) -> String {
    let (css, needle) = (css.to_string(), needle.to_string());
    wait_until(&format!("{css} to show {needle:?}"), SHOWN, || {
        let (b, css, needle) = (b.clone(), css.clone(), needle.clone());
        async move {
            let text = b.find(Locator::Css(&css)).await.ok()?.text().await.ok()?;
            text.contains(&needle).then_some(text)
        }
    })
    .await
}

/// Whether anything matches `css` now.
async fn present(b: &Browser, css: &str) -> bool {
    !b.find_all(Locator::Css(css))
        .await
        .expect("find")
        .is_empty()
}

/// Saves the viewport as `docs/console/<name>.png`.
async fn screenshot(b: &Browser, name: &str) {
    let png = b.screenshot().await.expect("screenshot");
    let dir = workspace_root().join("docs/console");
    std::fs::create_dir_all(&dir).expect("docs/console");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write the screenshot");
}

/// Logs in with `token` from the login form, submitted with Enter.
async fn log_in(b: &Browser, token: &str) {
    let input = shown(b, "#token").await;
    input.clear().await.expect("clear");
    input
        .send_keys(&format!("{token}{}", char::from(Key::Enter)))
        .await
        .expect("type the token");
}

/// A request of the page's own script (with its session cookie): the
/// answer's status and error code.
async fn fetch_in_page(b: &Browser, method: &str, path: &str, csrf: bool) -> (u64, String) {
    let script = r#"
        const [method, path, csrf] = arguments;
        const headers = {"Content-Type": "application/json"};
        if (csrf) {
            const s = await (await fetch("/ui/session")).json();
            headers["X-Jetsaga-Csrf"] = s.csrf;
        }
        const r = await fetch(path, {method, headers, body: method === "GET" ? undefined : "{}"});
        const body = await r.json().catch(() => ({}));
        return [r.status, body.error ? body.error.code : ""];
    "#;
    let answer = b
        .execute(
            &format!("return (async () => {{ {script} }})(...arguments);"),
            vec![json!(method), json!(path), json!(csrf)],
        )
        .await
        .expect("script runs");
    (
        answer[0].as_u64().expect("status"),
        answer[1].as_str().unwrap_or_default().to_string(),
    )
}

/// One plain HTTP/1.0 exchange; answers status, head and body.
async fn http(addr: &str, request: String) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("answer within 30 s")
        .expect("read");
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head.to_string(), body.to_string())
}

/// `engine_http_auth_refused_total{reason}` from `/metrics`.
async fn refused(addr: &str, reason: &str) -> u64 {
    let (_, _, body) = http(addr, "GET /metrics HTTP/1.0\r\n\r\n".into()).await;
    let series = format!(r#"engine_http_auth_refused_total{{reason="{reason}"}}"#);
    body.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// Waits until saga `id` is in `state` (through the NATS API).
async fn in_state(world: &World, id: &str, state: SagaState) {
    wait_until(&format!("saga {id} {state:?}"), common::FINISH, || {
        let (c, id) = (world.client.clone(), id.to_string());
        async move { (c.get(&id).await.ok()?.saga.status.state() == state).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_sagas_and_acts_by_role() {
    let tokens = Tokens::new();
    let world = World::start(&["--http-listen", "127.0.0.1:0", &tokens.flag()]).await;
    let addr = world.engine.http_addr();
    world.apply_yaml(DEFS).await;
    let release_broken = Arc::new(AtomicBool::new(false));
    let _workers = shop_workers(&world, release_broken.clone()).await;

    // Sagas in every state.
    let start = |input: Value, key: Option<&'static str>| {
        let c = world.client.clone();
        async move { c.start("order", input, key).await.expect("start").saga_id }
    };
    let completed = start(
        json!({"customer": "c-7", "flaky": true}),
        Some("order-2024-0042"),
    )
    .await;
    let compensated = start(json!({"customer": "c-8", "declined": true}), None).await;
    in_state(&world, &completed, SagaState::Completed).await;
    in_state(&world, &compensated, SagaState::Compensated).await;
    release_broken.store(true, Ordering::SeqCst);
    let failed = start(json!({"customer": "c-9", "out_of_stock": true}), None).await;
    let partial = start(json!({"customer": "c-10", "declined": true}), None).await;
    let running = start(json!({"customer": "c-11", "hold": true}), None).await;
    let to_cancel = start(json!({"customer": "c-12", "hold": true}), None).await;
    in_state(&world, &failed, SagaState::Failed).await;
    in_state(&world, &partial, SagaState::PartiallyCompensated).await;
    in_state(&world, &running, SagaState::Running).await;
    in_state(&world, &to_cancel, SagaState::Running).await;

    let chrome = Chrome::start().await;
    let b = &chrome.browser;
    let base = format!("http://{addr}");

    // Not logged in: the login form. A wrong token is refused with a
    // message, and counted.
    let unknown_before = refused(&addr, "unknown").await;
    b.goto(&format!("{base}/ui/"))
        .await
        .expect("open the console");
    log_in(b, &new_token()).await;
    text_shows(b, "#login-error", "none of the engine's http_tokens").await;
    assert_eq!(refused(&addr, "unknown").await, unknown_before + 1);
    assert!(!present(b, "#sagas").await, "nothing shown without a login");
    // The session cookie cannot be read by the page's scripts.
    let cookies = b.execute("return document.cookie", vec![]).await.unwrap();
    assert_eq!(cookies, json!(""));

    // read: the sagas of every state, filters and search.
    log_in(b, &tokens.read).await;
    text_shows(b, "#role", "read").await;
    for (id, state) in [
        (&completed, "completed"),
        (&compensated, "compensated"),
        (&failed, "failed"),
        (&partial, "partially_compensated"),
        (&running, "running"),
    ] {
        shown(
            b,
            &format!("#sagas tr[data-id='{id}'][data-state='{state}']"),
        )
        .await;
    }
    text_shows(b, "#counts [data-count='running'] b", "2").await;
    text_shows(b, "#live-label", "Live").await;

    shown(b, "#f-state")
        .await
        .select_by_value("failed")
        .await
        .expect("choose a state");
    shown(b, "#f-apply").await.click().await.expect("apply");
    shown(b, &format!("#sagas tr[data-id='{failed}']")).await;
    wait_until("only failed sagas listed", SHOWN, || async {
        let rows = b.find_all(Locator::Css("#sagas tbody tr")).await.ok()?;
        let mut states = Vec::new();
        for row in rows {
            states.push(row.attr("data-state").await.ok()??);
        }
        (states == ["failed"]).then_some(())
    })
    .await;
    assert!(
        b.current_url()
            .await
            .unwrap()
            .as_str()
            .contains("state=failed")
    );

    // A filter on time: nothing was created in the future.
    b.goto(&format!("{base}/ui/#/sagas?after=2999-01-01T00:00:00"))
        .await
        .unwrap();
    text_shows(b, "#sagas tbody", "No saga matches").await;

    // Search by idempotency key, submitted with Enter.
    b.goto(&format!("{base}/ui/#/sagas")).await.unwrap();
    shown(b, "#f-search")
        .await
        .send_keys(&format!("order-2024-0042{}", char::from(Key::Enter)))
        .await
        .unwrap();
    text_shows(b, "#facts", &completed).await;
    text_shows(b, "#timeline", "payment gateway timed out").await;
    text_shows(b, "#facts", "order-2024-0042").await;

    // A compensated saga: its DAG, timeline, partition and leader; no
    // action for read, and the server refuses one anyway.
    b.goto(&format!("{base}/ui/#/saga/{compensated}"))
        .await
        .unwrap();
    shown(
        b,
        "#dag g.node[data-step='reserve'][data-state='compensated']",
    )
    .await;
    shown(b, "#dag g.node[data-step='charge'][data-state='failed']").await;
    shown(
        b,
        "#dag g.node[data-step='notify'][data-state='not_compensable']",
    )
    .await;
    shown(b, "#dag g.node[data-step='ship'][data-state='skipped']").await;
    text_shows(b, "#timeline", "card declined (insufficient funds)").await;
    text_shows(b, "#timeline", "compensation #1").await;
    text_shows(b, "#partition", "0, led by ").await;
    text_shows(b, "#read-only", "operate").await;
    assert!(
        !present(b, "#actions [data-action]").await,
        "read sees no action"
    );
    let forbidden_before = refused(&addr, "forbidden").await;
    let (status, code) =
        fetch_in_page(b, "POST", &format!("/v1/sagas/{running}/cancel"), true).await;
    assert_eq!((status, code.as_str()), (403, "E-FORBIDDEN"));
    assert_eq!(refused(&addr, "forbidden").await, forbidden_before + 1);

    // Log out: the cookie no longer works.
    shown(b, "#logout").await.click().await.unwrap();
    shown(b, "#logged-out").await;
    let (status, code) = fetch_in_page(b, "GET", "/v1/sagas", false).await;
    assert_eq!((status, code.as_str()), (401, "E-UNAUTHENTICATED"));

    // operate: the pages, photographed, then the actions.
    log_in(b, &tokens.operate).await;
    text_shows(b, "#role", "operate").await;
    b.goto(&format!("{base}/ui/#/sagas")).await.unwrap();
    shown(b, &format!("#sagas tr[data-id='{running}']")).await;
    screenshot(b, "sagas").await;

    b.goto(&format!("{base}/ui/#/saga/{compensated}"))
        .await
        .unwrap();
    shown(
        b,
        "#dag g.node[data-step='reserve'][data-state='compensated']",
    )
    .await;
    shown(b, "#actions [data-action='retry']").await;
    screenshot(b, "saga").await;

    b.goto(&format!("{base}/ui/#/definition/order"))
        .await
        .unwrap();
    shown(b, "#dag g.node[data-step='ship']").await;
    text_shows(b, "#def-steps", "refund").await;
    text_shows(b, "#policy", "30 min").await;
    text_shows(b, "#version", "version 1 (current)").await;
    screenshot(b, "definition").await;
    b.goto(&format!("{base}/ui/#/definitions")).await.unwrap();
    text_shows(b, "#definitions tr[data-definition='order']", "enabled").await;

    b.goto(&format!("{base}/ui/#/services")).await.unwrap();
    text_shows(b, "#services tr[data-service='payments']", "closed").await;
    text_shows(
        b,
        "#services tr[data-service='shipping'] [data-cell='depth']",
        "",
    )
    .await;
    text_shows(
        b,
        "#services tr[data-service='payments'] [data-cell='in-flight']",
        "/ 8",
    )
    .await;
    let depth = text_shows(b, "#services tr[data-service='shipping']", "shipping").await;
    assert!(!depth.contains('?'), "the queue depth is read: {depth}");
    screenshot(b, "services").await;

    // Cancel a running saga: asked first; keeping it changes nothing.
    b.goto(&format!("{base}/ui/#/saga/{to_cancel}"))
        .await
        .unwrap();
    shown(b, "#actions [data-action='cancel']")
        .await
        .click()
        .await
        .unwrap();
    shown(b, "#confirm").await;
    let focused = b.active_element().await.unwrap().attr("id").await.unwrap();
    assert_eq!(
        focused.as_deref(),
        Some("confirm-no"),
        "the dialog takes the focus"
    );
    b.active_element()
        .await
        .unwrap()
        .send_keys(&char::from(Key::Escape).to_string())
        .await
        .unwrap();
    wait_until("the dialog closes", SHOWN, || async {
        (!b.find(Locator::Css("#confirm"))
            .await
            .ok()?
            .is_displayed()
            .await
            .ok()?)
        .then_some(())
    })
    .await;
    assert_eq!(
        world
            .client
            .get(&to_cancel)
            .await
            .unwrap()
            .saga
            .status
            .state(),
        SagaState::Running,
        "not cancelled without a confirmation"
    );
    // A request of the session without its CSRF header is refused.
    let csrf_before = refused(&addr, "csrf").await;
    let (status, code) =
        fetch_in_page(b, "POST", &format!("/v1/sagas/{to_cancel}/cancel"), false).await;
    assert_eq!((status, code.as_str()), (403, "E-FORBIDDEN"));
    assert_eq!(refused(&addr, "csrf").await, csrf_before + 1);
    shown(b, "#actions [data-action='cancel']")
        .await
        .click()
        .await
        .unwrap();
    shown(b, "#confirm-yes").await.click().await.unwrap();
    text_shows(b, "h1", "cancelled").await;
    in_state(&world, &to_cancel, SagaState::Cancelled).await;

    // Resume a rollback once its cause is fixed.
    release_broken.store(false, Ordering::SeqCst);
    b.goto(&format!("{base}/ui/#/saga/{partial}"))
        .await
        .unwrap();
    text_shows(b, "#facts", "reserve").await;
    shown(b, "#actions [data-action='resume']")
        .await
        .click()
        .await
        .unwrap();
    shown(b, "#confirm-yes").await.click().await.unwrap();
    in_state(&world, &partial, SagaState::Compensated).await;
    shown(
        b,
        "#dag g.node[data-step='reserve'][data-state='compensated']",
    )
    .await;

    // Cancel and compensate; delete.
    b.goto(&format!("{base}/ui/#/saga/{running}"))
        .await
        .unwrap();
    shown(b, "#actions [data-action='compensate']")
        .await
        .click()
        .await
        .unwrap();
    shown(b, "#confirm-yes").await.click().await.unwrap();
    // Its `ship` task is still out: the rollback waits for it.
    in_state(&world, &running, SagaState::Compensating).await;
    text_shows(b, "h1", "compensating").await;

    b.goto(&format!("{base}/ui/#/saga/{failed}")).await.unwrap();
    shown(b, "#actions [data-action='delete']")
        .await
        .click()
        .await
        .unwrap();
    shown(b, "#confirm-yes").await.click().await.unwrap();
    text_shows(b, "#flash", "deleted").await;
    wait_until("the saga deleted", SHOWN, || async {
        world.client.get(&failed).await.is_err().then_some(())
    })
    .await;
    shown(b, "#sagas").await;

    chrome
        .browser
        .close()
        .await
        .expect("end the WebDriver session");
}

/// The session cookie's flags and lifecycle, and the open console of an
/// engine without tokens, over plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_are_http_only_cookies_with_csrf() {
    let tokens = Tokens::new();
    let world = World::start(&["--http-listen", "127.0.0.1:0", &tokens.flag()]).await;
    let addr = world.engine.http_addr();

    // The page itself is open, with a strict content security policy.
    let (status, head, body) = http(&addr, "GET /ui/ HTTP/1.0\r\n\r\n".into()).await;
    assert_eq!(status, 200, "{head}");
    assert!(body.contains("app.js"), "{body}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    let (status, _, _) = http(&addr, "GET /ui/nope.js HTTP/1.0\r\n\r\n".into()).await;
    assert_eq!(status, 404);

    let login = |token: &str| {
        let body = json!({ "token": token }).to_string();
        format!(
            "POST /ui/login HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let (status, _, body) = http(&addr, login("jsg_wrong")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("E-UNAUTHENTICATED"), "{body}");
    let (status, _, body) = http(&addr, login("")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("enter a token"), "{body}");

    let (status, head, body) = http(&addr, login(&tokens.operate)).await;
    assert_eq!(status, 200, "{head}{body}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "not Secure over plain HTTP: {cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["role"], "operate");
    assert_eq!(info["name"], "ops");
    let csrf = info["csrf"].as_str().unwrap().to_string();
    assert!(
        !body.contains(session.split('=').nth(1).unwrap()),
        "the id is only in the cookie"
    );

    // The cookie authenticates reads; writes also need the CSRF header.
    let (status, _, _) = http(
        &addr,
        format!("GET /v1/sagas HTTP/1.0\r\nCookie: {session}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    let cancel = |extra: &str| {
        format!(
            "POST /v1/sagas/nope/cancel HTTP/1.0\r\nCookie: {session}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n{extra}\r\n{{}}"
        )
    };
    let (status, _, body) = http(&addr, cancel("")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("X-Jetsaga-Csrf"), "{body}");
    let (status, _, _) = http(&addr, cancel("X-Jetsaga-Csrf: wrong\r\n")).await;
    assert_eq!(status, 403);
    let (status, _, body) = http(&addr, cancel(&format!("X-Jetsaga-Csrf: {csrf}\r\n"))).await;
    assert_eq!(status, 404, "past the guard: {body}");
    // A bearer token still works as before, and wins over a cookie.
    let (status, _, _) = http(
        &addr,
        format!(
            "GET /v1/sagas HTTP/1.0\r\nAuthorization: Bearer {}\r\nCookie: {session}\r\n\r\n",
            tokens.read
        ),
    )
    .await;
    assert_eq!(status, 200);

    // Logout needs the CSRF value too; then the cookie is refused.
    let logout =
        |extra: &str| format!("POST /ui/logout HTTP/1.0\r\nCookie: {session}\r\n{extra}\r\n");
    let (status, _, _) = http(&addr, logout("")).await;
    assert_eq!(status, 403);
    let (status, head, _) = http(&addr, logout(&format!("X-Jetsaga-Csrf: {csrf}\r\n"))).await;
    assert_eq!(status, 204);
    assert!(head.contains("Max-Age=0"), "{head}");
    let session_before = refused(&addr, "session").await;
    let (status, _, body) = http(
        &addr,
        format!("GET /v1/sagas HTTP/1.0\r\nCookie: {session}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 401);
    assert!(body.contains("log in again"), "{body}");
    assert_eq!(refused(&addr, "session").await, session_before + 1);
    drop(world);

    // Without tokens the console needs no login.
    let world = World::start(&["--http-listen", "127.0.0.1:0"]).await;
    let addr = world.engine.http_addr();
    let (status, _, body) = http(&addr, "GET /ui/session HTTP/1.0\r\n\r\n".into()).await;
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (info["auth"].clone(), info["role"].clone()),
        (json!(false), json!("admin"))
    );
    let (status, _, body) = http(&addr, login("anything")).await;
    assert_eq!(status, 409, "{body}");
}

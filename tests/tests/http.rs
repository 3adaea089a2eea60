//! The engine's HTTP API, against a real engine process (`--http-listen
//! 127.0.0.1:0`) and nats-server: every route, the error shapes and status
//! codes, and that each answer's status is one `/openapi.json` documents.

mod common;

use common::{World, metric_value};
use jetsaga_protocol::api::SagaState;
use jetsaga_worker::{TaskContext, Worker};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEFS: &str = r#"
sagas:
  one_step:
    steps:
      - id: only
        service: echo
        operation: echo
        timeout: 10s
  stuck:
    steps:
      - id: wait
        service: nobody
        operation: wait
        timeout: 10m
"#;

/// An HTTP/1.1 answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The error code of an error answer (checking the error shape).
    fn code(&self) -> String {
        let body = self.json();
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        body["error"]["code"]
            .as_str()
            .expect("error.code")
            .to_string()
    }
}

/// A tiny HTTP/1.1 client (one request per connection) and the engine's
/// OpenAPI document, which every answer is checked against.
struct Http {
    addr: String,
    doc: Value,
}

impl Http {
    async fn new(world: &World) -> Http {
        let mut http = Http {
            addr: world.engine.http_addr(),
            doc: Value::Null,
        };
        let doc = http.send("GET", "/openapi.json", &[], b"").await;
        assert_eq!(doc.status, 200);
        http.doc = doc.json();
        http
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let stream = TcpStream::connect(&self.addr).await.expect("connect");
        let (mut read, mut write) = stream.into_split();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let body = body.to_vec();
        // Write while reading: the server may answer before it read it all.
        let writer = tokio::spawn(async move {
            let _ = write.write_all(head.as_bytes()).await;
            let _ = write.write_all(&body).await;
            write
        });
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut raw))
            .await
            .expect("answer within 30 s")
            .expect("read the answer");
        drop(writer.await);
        parse_answer(&raw)
    }

    async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, &[], b"").await
    }

    async fn post_json(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        self.send("POST", path, &all, body.to_string().as_bytes())
            .await
    }

    async fn post_yaml(&self, path: &str, text: &str) -> Answer {
        self.send(
            "POST",
            path,
            &[("Content-Type", "application/yaml")],
            text.as_bytes(),
        )
        .await
    }

    /// Asserts that `/openapi.json` documents `status` for `method template`.
    fn documented(&self, method: &str, template: &str, answer: &Answer) {
        let status = answer.status.to_string();
        let op = &self.doc["paths"][template][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {template} is not documented");
        assert!(
            op["responses"].get(&status).is_some(),
            "{method} {template} answered {status}, which the document does not list: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }
}

fn parse_answer(raw: &[u8]) -> Answer {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&data[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
}

/// Polls `GET /v1/sagas/{id}` until the saga is terminal.
async fn finished(http: &Http, id: &str) -> Value {
    jetsaga_tests::wait_until("saga finishes", common::FINISH, || async {
        let a = http.get(&format!("/v1/sagas/{id}")).await;
        let detail = a.json();
        let state = detail["saga"]["status"]["state"].as_str()?;
        SagaState::from_name(state)
            .is_some_and(SagaState::is_terminal)
            .then_some(detail)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_applied_listed_and_validated() {
    let world = World::start(&["--http-listen", "127.0.0.1:0"]).await;
    let http = Http::new(&world).await;

    let a = http.post_yaml("/v1/definitions", DEFS).await;
    http.documented("POST", "/v1/definitions", &a);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        a.json()["applied"],
        json!([
            {"name": "one_step", "version": 1, "changed": true},
            {"name": "stuck", "version": 1, "changed": true},
        ])
    );
    // The same content again is no new version; JSON works as well as YAML.
    let as_json = json!({"sagas": {"one_step": {"steps": [
        {"id": "only", "service": "echo", "operation": "echo", "timeout": "10s"}
    ]}}});
    let a = http.post_json("/v1/definitions", &as_json, &[]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        a.json()["applied"],
        json!([{"name": "one_step", "version": 1, "changed": false}])
    );

    let a = http.get("/v1/definitions").await;
    http.documented("GET", "/v1/definitions", &a);
    assert_eq!(a.status, 200);
    let names: Vec<String> = a.json()["definitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["one_step", "stuck"]);
    // The NATS door sees the same definitions.
    assert_eq!(world.client.definitions().await.unwrap().len(), 2);

    // Validate: the sagas as they would be stored, nothing stored.
    let a = http
        .post_yaml(
            "/v1/definitions/validate",
            "sagas:\n  fresh:\n    steps:\n      - {id: a, service: s, operation: o}\n",
        )
        .await;
    http.documented("POST", "/v1/definitions/validate", &a);
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["sagas"][0]["name"], "fresh");
    assert_eq!(a.json()["sagas"][0]["steps"][0]["timeout"], 30_000);
    assert_eq!(world.client.definitions().await.unwrap().len(), 2);

    // Every problem of a bad file, each with its code and place.
    let bad = "sagas:\n  x:\n    steps:\n      - {id: a, service: s, operation: o, depends_on: [nope]}\n      - {id: b, service: s, operation: o, depends_on: [c]}\n      - {id: c, service: s, operation: o, depends_on: [b]}\n      - {id: a, service: s, operation: o}\n";
    for path in ["/v1/definitions/validate", "/v1/definitions"] {
        let a = http.post_yaml(path, bad).await;
        http.documented("POST", path, &a);
        assert_eq!(a.status, 422);
        assert_eq!(a.code(), "E-INVALID-DEFINITION");
        let details = a.json()["error"]["details"].as_array().unwrap().clone();
        let codes: Vec<&str> = details
            .iter()
            .map(|d| d["code"].as_str().unwrap())
            .collect();
        for code in [
            "E-DEF-UNKNOWN-DEPENDENCY",
            "E-DEF-DUPLICATE-STEP",
            "E-DEF-CYCLE",
        ] {
            assert!(codes.contains(&code), "{path}: {codes:?}");
        }
        assert!(details.iter().all(|d| d["saga"] == "x"), "{details:?}");
    }
    assert_eq!(
        world.client.definitions().await.unwrap().len(),
        2,
        "nothing applied"
    );
    let a = http
        .post_yaml("/v1/definitions/validate", "sagas: [unclosed")
        .await;
    assert_eq!(a.status, 422);
    let details = &a.json()["error"]["details"];
    assert_eq!(details[0]["code"], "E-DEF-PARSE");
    assert!(details[0]["line"].is_u64(), "{details}");

    // Neither YAML nor JSON.
    let a = http
        .send(
            "POST",
            "/v1/definitions/validate",
            &[("Content-Type", "text/plain")],
            DEFS.as_bytes(),
        )
        .await;
    http.documented("POST", "/v1/definitions/validate", &a);
    assert_eq!(
        (a.status, a.code().as_str()),
        (415, "E-UNSUPPORTED-MEDIA-TYPE")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_are_started_read_and_cancelled() {
    let world = World::start(&["--http-listen", "127.0.0.1:0", "--max-payload", "4096"]).await;
    let http = Http::new(&world).await;
    assert_eq!(http.post_yaml("/v1/definitions", DEFS).await.status, 200);
    let _w = world.echo_worker().await;

    // Start: 201 with the Location of the saga, then 200 with the same saga.
    let start = json!({"saga": "one_step", "input": {"n": 1}});
    let key = [("Idempotency-Key", "order-1")];
    let a = http.post_json("/v1/sagas", &start, &key).await;
    http.documented("POST", "/v1/sagas", &a);
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let id = a.json()["saga_id"].as_str().unwrap().to_string();
    assert_eq!(a.json()["created"], true);
    let location = a.header("location").unwrap().to_string();
    assert_eq!(location, format!("/v1/sagas/{id}"));
    let b = http.post_json("/v1/sagas", &start, &key).await;
    http.documented("POST", "/v1/sagas", &b);
    assert_eq!(b.status, 200);
    assert_eq!(b.json(), json!({"saga_id": id, "created": false}));
    assert_eq!(b.header("location"), Some(location.as_str()));
    // The key in the body works too, and the NATS door gives the same saga.
    let b = http
        .post_json(
            "/v1/sagas",
            &json!({"saga": "one_step", "idempotency_key": "order-1"}),
            &[],
        )
        .await;
    assert_eq!(
        (b.status, b.json()["saga_id"].as_str()),
        (200, Some(id.as_str()))
    );
    let nats = world
        .client
        .start("one_step", json!({}), Some("order-1"))
        .await
        .unwrap();
    assert_eq!((nats.saga_id.as_str(), nats.created), (id.as_str(), false));

    // Get: the saga, its steps with their attempts, and its definition.
    let done = finished(&http, &id).await;
    let a = http.get(&location).await;
    http.documented("GET", "/v1/sagas/{id}", &a);
    assert_eq!(a.status, 200);
    assert_eq!(done["saga"]["status"]["state"], "completed");
    assert_eq!(done["saga"]["input"], json!({"n": 1}));
    assert_eq!(done["saga"]["idempotency_key"], "order-1");
    assert_eq!(done["saga"]["steps"][0]["status"]["state"], "succeeded");
    assert_eq!(
        done["saga"]["steps"][0]["attempts"][0]["outcome"]["outcome"],
        "ok"
    );
    assert_eq!(done["definition"]["steps"][0]["id"], "only");

    // Cancel: 409 on a finished saga, 200 and `cancelled` on a running one.
    let cancel = |id: &str| format!("/v1/sagas/{id}/cancel");
    let a = http.post_json(&cancel(&id), &json!({}), &[]).await;
    http.documented("POST", "/v1/sagas/{id}/cancel", &a);
    assert_eq!((a.status, a.code().as_str()), (409, "E-NOT-APPLICABLE"));
    // Refused once, counted once: by the door that answered it, under its
    // code, not by the partition as well.
    let rejected = |reason: &str| format!(r#"engine_rejected_messages_total{{reason="{reason}"}}"#);
    assert_eq!(
        metric_value(&http.addr, &rejected("E-NOT-APPLICABLE")).await,
        Some(1.0)
    );
    // `terminal` exists at zero from the start, and the partition did not
    // count this refusal under it.
    assert_eq!(
        metric_value(&http.addr, &rejected("terminal")).await,
        Some(0.0)
    );
    let stuck = http
        .post_json("/v1/sagas", &json!({"saga": "stuck"}), &[])
        .await;
    assert_eq!(stuck.status, 201);
    let stuck = stuck.json()["saga_id"].as_str().unwrap().to_string();
    let a = http
        .post_json(
            &cancel(&stuck),
            &json!({"compensate": false, "reason": "operator said so"}),
            &[],
        )
        .await;
    http.documented("POST", "/v1/sagas/{id}/cancel", &a);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        a.json()["saga"]["status"],
        json!({"state": "cancelled", "reason": "operator said so"})
    );
    let a = http
        .post_json(&cancel("no-such-id"), &json!({"compensate": true}), &[])
        .await;
    assert_eq!((a.status, a.code().as_str()), (404, "E-NOT-FOUND"));
    let a = http
        .post_json(&cancel(&stuck), &json!({"compensate": "yes"}), &[])
        .await;
    assert_eq!((a.status, a.code().as_str()), (400, "E-BAD-REQUEST"));

    // Errors, each in the JSON shape with the status of its code.
    let a = http.get("/v1/sagas/no-such-id").await;
    http.documented("GET", "/v1/sagas/{id}", &a);
    assert_eq!((a.status, a.code().as_str()), (404, "E-NOT-FOUND"));
    let a = http
        .post_json("/v1/sagas", &json!({"saga": "no_such_saga"}), &[])
        .await;
    http.documented("POST", "/v1/sagas", &a);
    assert_eq!((a.status, a.code().as_str()), (422, "E-UNKNOWN-SAGA"));
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("one_step")
    );
    let a = http
        .send(
            "POST",
            "/v1/sagas",
            &[("Content-Type", "application/json")],
            b"{\"saga\": \"one_step\", \"input\": ",
        )
        .await;
    http.documented("POST", "/v1/sagas", &a);
    assert_eq!((a.status, a.code().as_str()), (400, "E-BAD-REQUEST"));
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
    let a = http
        .post_json("/v1/sagas", &json!({"saga": "one_step", "imput": {}}), &[])
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (400, "E-BAD-REQUEST"),
        "unknown fields are refused"
    );
    let a = http
        .send("POST", "/v1/sagas", &[], br#"{"saga": "one_step"}"#)
        .await;
    http.documented("POST", "/v1/sagas", &a);
    assert_eq!(
        (a.status, a.code().as_str()),
        (415, "E-UNSUPPORTED-MEDIA-TYPE")
    );
    let a = http
        .post_json("/v1/sagas", &json!({"saga": "stuck"}), &key)
        .await;
    http.documented("POST", "/v1/sagas", &a);
    assert_eq!(
        (a.status, a.code().as_str()),
        (409, "E-IDEMPOTENCY-CONFLICT")
    );
    // An input over max_payload (4096) in a body the server accepts...
    let big = json!({"saga": "one_step", "input": "x".repeat(5000)});
    let a = http.post_json("/v1/sagas", &big, &[]).await;
    http.documented("POST", "/v1/sagas", &a);
    assert_eq!((a.status, a.code().as_str()), (413, "E-PAYLOAD-TOO-LARGE"));
    // ...and a body over max_payload + 64 KiB, refused while it is read.
    let huge = format!(
        r#"{{"saga": "one_step", "input": "{}"}}"#,
        "x".repeat(4096 + 64 * 1024)
    );
    let a = http
        .send(
            "POST",
            "/v1/sagas",
            &[("Content-Type", "application/json")],
            huge.as_bytes(),
        )
        .await;
    http.documented("POST", "/v1/sagas", &a);
    assert_eq!((a.status, a.code().as_str()), (413, "E-PAYLOAD-TOO-LARGE"));

    // Unknown routes and methods answer in the same shape.
    let a = http.get("/v1/nothing").await;
    assert_eq!((a.status, a.code().as_str()), (404, "E-NOT-FOUND"));
    let a = http.send("DELETE", "/v1/sagas", &[], b"").await;
    assert_eq!((a.status, a.code().as_str()), (405, "E-METHOD-NOT-ALLOWED"));
    assert!(
        a.header("allow").is_some_and(|v| v.contains("POST")),
        "{a:?}"
    );

    // Still serving.
    let a = http
        .post_json("/v1/sagas", &json!({"saga": "one_step", "input": {}}), &[])
        .await;
    assert_eq!(a.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_are_listed_with_filters_and_pages() {
    let world = World::start(&["--http-listen", "127.0.0.1:0"]).await;
    let http = Http::new(&world).await;
    assert_eq!(http.post_yaml("/v1/definitions", DEFS).await.status, 200);
    let _w = world.echo_worker().await;

    // Five completed `one_step` sagas and two running `stuck` ones, each
    // created a few milliseconds after the one before.
    let mut ids = Vec::new();
    for n in 0..7 {
        let saga = if n % 3 == 2 { "stuck" } else { "one_step" };
        let a = http
            .post_json("/v1/sagas", &json!({"saga": saga, "input": {"n": n}}), &[])
            .await;
        assert_eq!(a.status, 201);
        ids.push(a.json()["saga_id"].as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut created = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let detail = if n % 3 == 2 {
            http.get(&format!("/v1/sagas/{id}")).await.json()
        } else {
            finished(&http, id).await
        };
        created.push(detail["saga"]["created_at"].as_u64().unwrap());
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let listed = |a: &Answer| -> Vec<String> {
        a.json()["sagas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };

    // Everything, newest first, on one page: no `next`.
    let a = http.get("/v1/sagas").await;
    http.documented("GET", "/v1/sagas", &a);
    assert_eq!(a.status, 200);
    assert_eq!(listed(&a), newest_first);
    assert_eq!(a.json()["next"], Value::Null);
    assert_eq!(a.json()["sagas"][0]["name"], "one_step");
    assert_eq!(a.json()["sagas"][0]["steps_total"], 1);

    // Pages of three, following `next`.
    let mut pages = Vec::new();
    let mut path = "/v1/sagas?limit=3".to_string();
    loop {
        let a = http.get(&path).await;
        assert_eq!(a.status, 200);
        pages.push(listed(&a));
        match a.json()["next"].as_str() {
            Some(next) => path = format!("/v1/sagas?limit=3&before={next}"),
            None => break,
        }
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(pages.concat(), newest_first);

    // Filters: state and definition (empty values are absent).
    let a = http.get("/v1/sagas?state=running&saga=").await;
    assert_eq!(listed(&a), [ids[5].clone(), ids[2].clone()]);
    let a = http
        .get("/v1/sagas?state=completed&saga=one_step&limit=2")
        .await;
    assert_eq!(listed(&a), [ids[6].clone(), ids[4].clone()]);
    assert_eq!(a.json()["next"], ids[4].as_str());

    // A time range on created_at: [created_after, created_before).
    let a = http
        .get(&format!(
            "/v1/sagas?created_after={}&created_before={}",
            created[2], created[5]
        ))
        .await;
    assert_eq!(listed(&a), [ids[4].clone(), ids[3].clone(), ids[2].clone()]);
    let a = http
        .get(&format!("/v1/sagas?created_after={}&limit=2", created[3]))
        .await;
    assert_eq!(listed(&a), [ids[6].clone(), ids[5].clone()]);
    let next = a.json()["next"].as_str().unwrap().to_string();
    let a = http
        .get(&format!(
            "/v1/sagas?created_after={}&limit=2&before={next}",
            created[3]
        ))
        .await;
    assert_eq!(listed(&a), [ids[4].clone(), ids[3].clone()]);
    assert_eq!(a.json()["next"], Value::Null);
    let a = http
        .get("/v1/sagas?created_before=2000-01-01T00:00:00Z")
        .await;
    assert_eq!(listed(&a), Vec::<String>::new());
    let a = http
        .get("/v1/sagas?created_after=2000-01-01T00:00:00Z&state=running")
        .await;
    assert_eq!(listed(&a), [ids[5].clone(), ids[2].clone()]);

    // Bad queries.
    for bad in [
        "/v1/sagas?state=bogus",
        "/v1/sagas?limit=0",
        "/v1/sagas?limit=lots",
        "/v1/sagas?status=running",
        "/v1/sagas?created_after=yesterday",
        "/v1/sagas?created_after=5&created_before=5",
        "/v1/sagas?before=garbage",
        "/v1/sagas?before=550e8400-e29b-41d4-a716-446655440000",
    ] {
        let a = http.get(bad).await;
        http.documented("GET", "/v1/sagas", &a);
        assert_eq!(
            (a.status, a.code().as_str()),
            (400, "E-BAD-REQUEST"),
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_the_openapi_document() {
    let mut world = World::start(&["--http-listen", "127.0.0.1:0"]).await;
    let http = Http::new(&world).await;

    // The document lists the API's routes.
    assert!(http.doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/sagas",
        "/v1/sagas/{id}",
        "/v1/sagas/{id}/cancel",
        "/v1/definitions",
        "/v1/definitions/validate",
        "/health",
        "/ready",
        "/openapi.json",
    ] {
        assert!(http.doc["paths"][path].is_object(), "{path} undocumented");
    }

    let a = http.get("/health").await;
    http.documented("GET", "/health", &a);
    assert_eq!((a.status, a.json()), (200, json!({"status": "ok"})));
    let a = http.get("/ready").await;
    http.documented("GET", "/ready", &a);
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["status"], "ready");

    // NATS gone: not ready (saying why), still alive.
    world.nats.kill();
    let a = jetsaga_tests::wait_until("not ready", Duration::from_secs(20), || async {
        let a = http.get("/ready").await;
        (a.status == 503).then_some(a)
    })
    .await;
    http.documented("GET", "/ready", &a);
    assert_eq!(a.code(), "E-UNAVAILABLE");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("NATS"),
        "{:?}",
        a.json()
    );
    assert_eq!(http.get("/health").await.status, 200);

    // Back: ready again.
    world.nats.restart();
    jetsaga_tests::wait_until("ready again", Duration::from_secs(30), || async {
        (http.get("/ready").await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_stops_with_the_engine() {
    let mut world = World::start(&["--http-listen", "127.0.0.1:0"]).await;
    let http = Http::new(&world).await;
    assert_eq!(http.get("/health").await.status, 200);
    let status = world.engine.process.terminate();
    assert!(
        status.success(),
        "{status:?}\n{}",
        world.engine.process.log()
    );
    assert!(
        TcpStream::connect(&http.addr).await.is_err(),
        "still listening after the engine stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_are_retried_and_deleted() {
    const FLIPS: &str = r#"
sagas:
  flips:
    steps:
      - id: only
        service: flip
        operation: flip
        timeout: 10s
        retry: { max_attempts: 1 }
"#;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let world = World::start(&["--http-listen", "127.0.0.1:0"]).await;
    let http = Http::new(&world).await;
    assert_eq!(http.post_yaml("/v1/definitions", DEFS).await.status, 200);
    assert_eq!(http.post_yaml("/v1/definitions", FLIPS).await.status, 200);
    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    let _w = world
        .worker(
            Worker::builder("flip").handler("flip", move |ctx: TaskContext, _: Value| {
                let b = b.clone();
                async move {
                    if b.load(Ordering::SeqCst) {
                        Err(jetsaga_worker::StepError::fatal("broken"))
                    } else {
                        Ok(json!({"key": ctx.idempotency_key()}))
                    }
                }
            }),
        )
        .await;
    let retry = |id: &str| format!("/v1/sagas/{id}/retry");
    let saga = |id: &str| format!("/v1/sagas/{id}");

    // A failed saga, retried once fixed: 200 with the saga running again.
    let a = http
        .post_json("/v1/sagas", &json!({"saga": "flips"}), &[])
        .await;
    let id = a.json()["saga_id"].as_str().unwrap().to_string();
    assert_eq!(
        finished(&http, &id).await["saga"]["status"]["state"],
        "failed"
    );
    // Only a partially compensated saga has a rollback to resume.
    let a = http
        .post_json(&retry(&id), &json!({"compensation_only": true}), &[])
        .await;
    http.documented("POST", "/v1/sagas/{id}/retry", &a);
    assert_eq!((a.status, a.code().as_str()), (409, "E-NOT-APPLICABLE"));
    broken.store(false, Ordering::SeqCst);
    // The body is JSON like every other (an empty one reads as `{}`).
    let a = http.send("POST", &retry(&id), &[], b"").await;
    http.documented("POST", "/v1/sagas/{id}/retry", &a);
    assert_eq!(
        (a.status, a.code().as_str()),
        (415, "E-UNSUPPORTED-MEDIA-TYPE")
    );
    let a = http
        .send(
            "POST",
            &retry(&id),
            &[("Content-Type", "application/json")],
            b"",
        )
        .await;
    http.documented("POST", "/v1/sagas/{id}/retry", &a);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["saga"]["generation"], 1);
    let done = finished(&http, &id).await;
    assert_eq!(done["saga"]["status"]["state"], "completed");
    let attempts = &done["saga"]["steps"][0]["attempts"];
    assert_eq!(attempts[1]["number"], 2);
    assert_eq!(attempts[1]["generation"], 1);
    assert_eq!(
        done["saga"]["steps"][0]["output"]["key"],
        format!("{id}.only.action.g1")
    );
    // Completed: nothing to retry; unknown ids are 404; bad bodies 400.
    let a = http.post_json(&retry(&id), &json!({}), &[]).await;
    http.documented("POST", "/v1/sagas/{id}/retry", &a);
    assert_eq!((a.status, a.code().as_str()), (409, "E-NOT-APPLICABLE"));
    let a = http.post_json(&retry("nope"), &json!({}), &[]).await;
    http.documented("POST", "/v1/sagas/{id}/retry", &a);
    assert_eq!((a.status, a.code().as_str()), (404, "E-NOT-FOUND"));
    let a = http
        .post_json(&retry(&id), &json!({"compensate": true}), &[])
        .await;
    http.documented("POST", "/v1/sagas/{id}/retry", &a);
    assert_eq!((a.status, a.code().as_str()), (400, "E-BAD-REQUEST"));

    // Delete: 409 while running, 204 once finished, then 404.
    let stuck = http
        .post_json("/v1/sagas", &json!({"saga": "stuck"}), &[])
        .await;
    let stuck = stuck.json()["saga_id"].as_str().unwrap().to_string();
    let a = http.send("DELETE", &saga(&stuck), &[], b"").await;
    http.documented("DELETE", "/v1/sagas/{id}", &a);
    assert_eq!((a.status, a.code().as_str()), (409, "E-NOT-APPLICABLE"));
    assert_eq!(http.get(&saga(&stuck)).await.status, 200);
    let a = http.send("DELETE", &saga(&id), &[], b"").await;
    http.documented("DELETE", "/v1/sagas/{id}", &a);
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
    assert!(a.body.is_empty());
    let a = http.get(&saga(&id)).await;
    assert_eq!((a.status, a.code().as_str()), (404, "E-NOT-FOUND"));
    let a = http.send("DELETE", &saga(&id), &[], b"").await;
    http.documented("DELETE", "/v1/sagas/{id}", &a);
    assert_eq!((a.status, a.code().as_str()), (404, "E-NOT-FOUND"));
    // The route takes GET and DELETE only.
    let a = http.send("PUT", &saga(&id), &[], b"").await;
    assert_eq!(a.status, 405);
    let allow = a.header("allow").unwrap_or_default().to_ascii_uppercase();
    assert!(allow.contains("DELETE") && allow.contains("GET"), "{allow}");
}

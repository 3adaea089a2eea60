//! The engine process's life: a store it cannot have (locked by another
//! engine, corrupt, not a directory), a graceful stop with sagas in flight,
//! and nats-server crashing under it. All against the real `jetsaga` binary
//! and a real nats-server.

mod common;

use common::{Engine, FINISH, READY, WorkerGuard, World, step, step_states};
use jetsaga_protocol::api::{ListRequest, SagaState};
use jetsaga_store::{Change, GroupCommit, OutboxMessage, OutboxTable, SledStore};
use jetsaga_tests::{ChildProcess, NatsServer, bin_path};
use jetsaga_worker::{TaskContext, Worker};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// How long an engine that cannot open its store may take to give up.
const REFUSE: Duration = Duration::from_secs(15);

/// `hold` waits at the gate; `after` runs once `hold` succeeded, so the
/// engine must dispatch it after whatever happened while `hold` was held.
/// The timeouts are far longer than any test, so no attempt times out.
const GATED: &str = r#"
sagas:
  gated:
    steps:
      - id: hold
        service: gate
        operation: wait
        timeout: 5m
      - id: after
        service: gate
        operation: echo
        timeout: 5m
        depends_on: [hold]
"#;

/// An in-process worker of service `gate`: `wait` reports the saga id of
/// every task it receives on `entered`, then holds it until `open` gives it
/// a permit; `echo` answers at once.
struct Gate {
    _worker: WorkerGuard,
    open: Arc<Semaphore>,
    entered: mpsc::UnboundedReceiver<String>,
}

impl Gate {
    async fn start(world: &World) -> Gate {
        let open = Arc::new(Semaphore::new(0));
        let (tx, entered) = mpsc::unbounded_channel();
        let o = open.clone();
        let worker = world
            .worker(
                Worker::builder("gate")
                    .handler("wait", move |ctx: TaskContext, input: Value| {
                        let (open, tx) = (o.clone(), tx.clone());
                        async move {
                            let _ = tx.send(ctx.saga_id().to_string());
                            open.acquire().await.expect("gate open").forget();
                            Ok(input)
                        }
                    })
                    .handler(
                        "echo",
                        |_: TaskContext, input: Value| async move { Ok(input) },
                    ),
            )
            .await;
        Gate {
            _worker: worker,
            open,
            entered,
        }
    }

    /// Waits until the handler holds a task of every saga in `ids`.
    async fn wait_holding(&mut self, ids: &[String]) {
        let mut want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        let entered = &mut self.entered;
        tokio::time::timeout(READY, async {
            while !want.is_empty() {
                let id = entered.recv().await.expect("gate worker running");
                want.remove(id.as_str());
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the gate worker did not receive the tasks of {ids:?}"));
    }

    /// Lets every held and future `wait` task through (a task delivered
    /// again while held takes a permit too, so there are plenty).
    fn release(&self) {
        self.open.add_permits(10_000);
    }
}

/// Asserts that a process's output shows no Rust panic.
fn assert_no_panic(what: &str, log: &str) {
    for needle in ["panicked at", "stack backtrace", "RUST_BACKTRACE"] {
        assert!(
            !log.contains(needle),
            "{what} printed a panic ({needle:?}):\n{log}"
        );
    }
}

/// Runs `jetsaga server` on `data_dir`, expects it to exit by itself, with
/// a non-zero code, within [`REFUSE`], and returns its output.
fn refused_engine(nats_url: &str, data_dir: &Path) -> String {
    let dir = data_dir.display().to_string();
    let process = ChildProcess::spawn(
        "refused-engine",
        &bin_path("jetsaga"),
        &["--nats-url", nats_url, "server", "--data-dir", &dir],
        &[("JETSAGA_LOG", "info,jetsaga_engine=debug")],
    );
    let status = process.wait_for_exit(REFUSE);
    let log = process.log();
    assert!(
        matches!(status.code(), Some(code) if code != 0),
        "expected a non-zero exit code, got {status}; output:\n{log}"
    );
    assert!(
        !log.contains("engine ready"),
        "the engine started on {dir}:\n{log}"
    );
    assert_no_panic("the engine", &log);
    log
}

/// Asserts that `log` has `lines` in this order.
fn assert_in_order(log: &str, lines: &[&str]) {
    let mut from = 0;
    for line in lines {
        match log[from..].find(line) {
            Some(at) => from += at + line.len(),
            None => panic!("{line:?} missing, or not after {lines:?}'s earlier lines:\n{log}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_engine_on_a_locked_store_refuses_and_the_first_keeps_serving() {
    let mut world = World::start(&[]).await;
    world.apply_yaml(common::ONE_STEP).await;
    let _w = world.echo_worker().await;
    let first = world.start_saga("one_step", json!({"n": 1})).await;
    world.finished(&first).await;

    let log = refused_engine(&world.nats.url(), &world.engine.data_dir);
    assert!(log.contains("E-STORE-LOCKED"), "{log}");
    assert!(
        log.contains(&world.engine.data_dir.display().to_string()),
        "the message names the directory: {log}"
    );

    // The first engine did not notice: it serves the API and runs sagas.
    assert!(world.engine.process.try_wait().is_none(), "engine A exited");
    let second = world.start_saga("one_step", json!({"n": 2})).await;
    let done = world.finished(&second).await;
    assert_eq!(
        done.saga.status.name(),
        "completed",
        "{:?}",
        step_states(&done)
    );

    // The lock goes with the engine: once it stopped, another one opens the
    // store and finds both sagas.
    let status = world.engine.process.terminate();
    assert!(status.success(), "engine A exited with {status}");
    let other = Engine::start(&world.nats.url(), &world.engine.data_dir, &[]);
    let all = world
        .client
        .list(&ListRequest {
            name: Some("one_step".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: BTreeSet<&str> = all.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from([first.as_str(), second.as_str()]));
    drop(other);
}

/// A store with a few megabytes of history (written, flushed, partly
/// deleted), spanning many sled segments.
async fn write_store_with_history(dir: &Path) {
    let store = SledStore::open(dir).expect("new store");
    for i in 0..300u32 {
        let change = Change {
            outbox: vec![OutboxMessage {
                subject: format!("jetsaga.task.s{i}"),
                msg_id: format!("m{i}"),
                headers: vec![],
                payload: vec![b'x'; 8000],
            }],
            ..Change::default()
        };
        store.commit(change).expect("commit");
        if i % 3 == 0 {
            store.flush().await.expect("flush");
        }
        if i % 5 == 0 {
            let seqs: Vec<u64> = store
                .outbox(u64::MAX, 3)
                .expect("outbox")
                .iter()
                .map(|(seq, _)| *seq)
                .collect();
            store.outbox_remove(&seqs).expect("remove");
        }
    }
    store.flush().await.expect("flush");
}

/// A copy of the store `from` in `to` with bytes `range` of its data file
/// zeroed.
fn damaged_copy(from: &Path, to: &Path, range: std::ops::Range<usize>) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(from.join("conf"), to.join("conf")).unwrap();
    let mut db = std::fs::read(from.join("db")).unwrap();
    let end = range.end.min(db.len());
    db[range.start..end].fill(0);
    std::fs::write(to.join("db"), db).unwrap();
}

/// A store that sled panics on while opening: one whole segment of a store
/// with history zeroed, the later ones intact. Which segment does it depends
/// on where sled put the pages (its flusher thread runs on its own time),
/// so every segment is tried from the newest down until the store's own
/// open reports sled's panic.
async fn store_sled_panics_on(base: &Path) -> PathBuf {
    const SEGMENT: usize = 512 * 1024; // sled's default segment size
    let original = base.join("original");
    write_store_with_history(&original).await;
    let len = std::fs::metadata(original.join("db")).unwrap().len() as usize;
    for segment in (1..len.div_ceil(SEGMENT)).rev() {
        let range = segment * SEGMENT..(segment + 1) * SEGMENT;
        let probe = base.join(format!("probe-{segment}"));
        damaged_copy(&original, &probe, range.clone());
        let opened = SledStore::open(&probe);
        if let Err(e) = &opened
            && e.to_string().contains("sled panicked")
        {
            let chosen = base.join(format!("damaged-{segment}"));
            damaged_copy(&original, &chosen, range);
            return chosen;
        }
    }
    panic!("no zeroed segment of a {len}-byte store made sled panic while opening");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_unusable_store_is_refused_with_a_clear_error_and_no_panic() {
    jetsaga_tests::init_tracing();
    // A reachable server: if the engine fails, it is because of the store.
    let nats = NatsServer::start();
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();

    // A config file that is not sled's.
    let garbage_conf = dir.path().join("garbage-conf");
    std::fs::create_dir(&garbage_conf).unwrap();
    std::fs::write(
        garbage_conf.join("conf"),
        b"this is not a sled config file at all",
    )
    .unwrap();
    let log = refused_engine(&url, &garbage_conf);
    assert!(log.contains("E-STORE-OPEN"), "{log}");
    assert!(log.contains("corrupted"), "{log}");

    // A real store whose data file is replaced by a megabyte of noise.
    let garbage_db = dir.path().join("garbage-db");
    {
        let store = SledStore::open(&garbage_db).unwrap();
        store.flush().await.unwrap();
    }
    let mut x: u32 = 0x2545_f491;
    let noise: Vec<u8> = (0..1_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    // A new file, not the old one rewritten: sled's lock is on the old one,
    // and sled threads of this process may hold it a moment after the drop.
    std::fs::remove_file(garbage_db.join("db")).unwrap();
    std::fs::write(garbage_db.join("db"), noise).unwrap();
    let log = refused_engine(&url, &garbage_db);
    assert!(log.contains("E-STORE-OPEN"), "{log}");

    // A store damaged in the middle, in a way sled answers with a panic.
    let damaged = store_sled_panics_on(&dir.path().join("history")).await;
    let log = refused_engine(&url, &damaged);
    assert!(log.contains("E-STORE-OPEN"), "{log}");

    // A data dir that is a regular file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let log = refused_engine(&url, &file);
    assert!(log.contains("E-STORE-OPEN"), "{log}");
    assert!(log.contains("Not a directory"), "{log}");

    // An unreadable store. Permissions do not stop root, so as root the
    // regular file above stands in for it.
    let store = dir.path().join("unreadable");
    {
        SledStore::open(&store).unwrap();
    }
    let probe = dir.path().join("probe");
    std::fs::write(&probe, b"").unwrap();
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&probe).unwrap()) == 0;
    if root {
        eprintln!("running as root: chmod 000 does not make a directory unreadable; skipped");
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o000)).unwrap();
        let log = refused_engine(&url, &store);
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(log.contains("E-STORE-OPEN"), "{log}");
        assert!(log.contains("Permission denied"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_order_exits_0_and_a_restart_finishes_the_sagas_in_flight() {
    let mut world = World::start(&[]).await;
    world.apply_yaml(GATED).await;
    let mut gate = Gate::start(&world).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = world.start_saga("gated", json!({ "n": n })).await;
        ids.push(id);
    }
    gate.wait_holding(&ids).await;

    let status = world.engine.process.terminate();
    let log = world.engine.process.log();
    assert_eq!(status.code(), Some(0), "{status}; output:\n{log}");
    assert_in_order(
        &log,
        &["engine draining", "partition stopped", "engine stopped"],
    );
    assert_no_panic("the engine", &log);

    // A durable start published while no engine runs waits in its stream.
    let js = world.nats.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "while-down");
    js.publish_with_headers(
        "jetsaga.start.gated",
        headers,
        r#"{"input":{"n":"while down"}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    world.engine.restart();
    world
        .engine
        .process
        .wait_for_log("partition resumed unfinished=3", READY);
    gate.release();

    for id in &ids {
        let done = world.finished(id).await;
        assert_eq!(
            done.saga.status.name(),
            "completed",
            "{:?}",
            step_states(&done)
        );
        // The result of the attempt held across the restart was applied:
        // nothing had to be tried again.
        assert_eq!(step(&done, "hold").attempts.len(), 1, "{done:?}");
        assert_eq!(step(&done, "after").attempts.len(), 1, "{done:?}");
    }
    let all = jetsaga_tests::wait_until("the start sent while down", FINISH, || {
        let client = world.client.clone();
        async move {
            let all = client
                .list(&ListRequest {
                    name: Some("gated".into()),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .ok()?;
            (all.len() == 4 && all.iter().all(|s| s.state == SagaState::Completed)).then_some(all)
        }
    })
    .await;
    let late = all.iter().find(|s| !ids.contains(&s.id)).unwrap();
    let late = world.client.get(&late.id).await.unwrap();
    assert_eq!(late.saga.input, json!({"n": "while down"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_and_workers_ride_out_a_nats_server_crash() {
    let mut world = World::start(&[]).await;
    world.apply_yaml(common::ONE_STEP).await;
    world.apply_yaml(GATED).await;
    let _echo = world.echo_worker().await;
    let mut gate = Gate::start(&world).await;

    // Before the crash: some sagas done, some held in the middle of a step.
    let mut done_before = Vec::new();
    for n in 0..3 {
        let id = world
            .client
            .start(
                "one_step",
                json!({ "before": n }),
                Some(&format!("before-{n}")),
            )
            .await
            .unwrap()
            .saga_id;
        done_before.push(id);
    }
    for id in &done_before {
        world.finished(id).await;
    }
    let mut held = Vec::new();
    for n in 0..2 {
        let id = world
            .client
            .start("gated", json!({ "held": n }), Some(&format!("held-{n}")))
            .await
            .unwrap()
            .saga_id;
        held.push(id);
    }
    gate.wait_holding(&held).await;

    // kill -9 and back on the same port and store (file storage).
    let engine_log = world.engine.process.log_len();
    world.nats.kill();
    world.nats.restart();
    world
        .engine
        .process
        .wait_for_log_from(engine_log, "event: connected", READY);

    // After: new sagas start (retried until the API answers again: the key
    // makes a retry of a start that did happen harmless), and the held
    // ones finish.
    let mut after = Vec::new();
    for n in 0..3 {
        let key = format!("after-{n}");
        let id = jetsaga_tests::wait_until("the API answers again", READY, || {
            let (client, key) = (world.client.clone(), key.clone());
            async move {
                client
                    .start("one_step", json!({ "after": n }), Some(&key))
                    .await
                    .ok()
            }
        })
        .await
        .saga_id;
        after.push(id);
    }
    gate.release();

    for id in done_before.iter().chain(&held).chain(&after) {
        let done = world.finished(id).await;
        assert_eq!(
            done.saga.status.name(),
            "completed",
            "{id}: {:?}",
            step_states(&done)
        );
    }
    let all = world
        .client
        .list(&ListRequest {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 8, "one saga per start: {all:?}");
    assert!(
        world.engine.process.try_wait().is_none(),
        "the engine exited:\n{}",
        world.engine.process.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_started_before_nats_waits_for_it_then_serves() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    // The server is gone when the engine starts (same port and store later).
    nats.stop();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::spawn("engine-before-nats", &url, &dir.path().join("data"), &[]);
    let line = engine
        .process
        .wait_for_log("NATS is not reachable yet; retrying", READY);
    assert!(line.contains("WARN"), "the retry is a warning: {line}");
    assert!(
        engine.process.try_wait().is_none(),
        "the engine keeps waiting for NATS instead of exiting:\n{}",
        engine.process.log()
    );
    nats.restart();
    engine.wait_ready();
    let client = jetsaga_cli::client::Client::connect(&url, "jetsaga")
        .await
        .unwrap();
    let page = client.list(&ListRequest::default()).await;
    assert!(page.is_ok(), "the engine answers once NATS is up: {page:?}");
}

//! Tests of the harness itself: servers start, crash, come back with their
//! data on the same port; child processes' logs can be waited on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use jetsaga_tests::{
    ChildProcess, NatsCluster, NatsServer, free_port, init_tracing, nats_server_binary,
    nats_server_version, run_command,
};

/// Bound for everything that should take well under a second.
const SHORT: Duration = Duration::from_secs(20);

/// Creates a file-storage stream `name` on subject `name.>` with `replicas`.
async fn file_stream(js: &jetstream::Context, name: &str, replicas: usize) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{name}.>")],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .expect("create stream")
}

#[test]
fn installed_server_is_recent_enough() {
    let version = nats_server_version();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap());
    let (major, minor) = (parts.next().unwrap(), parts.next().unwrap());
    assert!((major, minor) >= (2, 12), "{version}");
}

#[tokio::test]
async fn file_stream_survives_kill_and_restart_on_the_same_port() {
    init_tracing();
    let mut server = NatsServer::start();
    let (port, store) = (server.port(), server.store_dir().to_path_buf());
    assert_ne!(port, 4222);
    let client = server.client().await;
    assert!(client.server_info().version.starts_with("2."));
    let js = jetstream::new(client.clone());
    file_stream(&js, "SELFTEST", 1).await;
    let ack = js
        .publish("SELFTEST.one", "durable".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.sequence, 1);

    // A client stays connected through the crash, so the server side has
    // sockets to drop (TIME_WAIT) when it dies.
    let old_pid = server.pid();
    server.kill();
    assert!(!server.is_running());
    server.restart();
    assert!(server.is_running());
    assert_ne!(server.pid(), old_pid);
    assert_eq!(server.port(), port);
    assert_eq!(server.store_dir(), store);
    assert!(server.log().matches("Server is ready").count() >= 2);

    let js = server.jetstream().await;
    let mut stream = js.get_stream("SELFTEST").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    let message = stream.get_raw_message(1).await.unwrap();
    assert_eq!(message.subject.as_str(), "SELFTEST.one");
    assert_eq!(&message.payload[..], b"durable");

    // The client connected before the crash reconnects to the new process.
    let reconnected = tokio::time::timeout(SHORT, async {
        let js = jetstream::new(client);
        js.publish("SELFTEST.two", "again".into())
            .await?
            .await
            .map_err(async_nats::Error::from)
    })
    .await
    .expect("old client reconnects")
    .unwrap();
    assert_eq!(reconnected.sequence, 2);
}

#[tokio::test]
async fn graceful_stop_and_restart_keeps_the_stream() {
    let mut server = NatsServer::builder()
        .jetstream_config("sync_interval: always")
        .start();
    let js = server.jetstream().await;
    file_stream(&js, "STOPPED", 1).await;
    for i in 0..10 {
        js.publish(format!("STOPPED.{i}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    server.stop();
    assert!(!server.is_running());
    assert!(server.log().contains("Server Exiting"));
    server.restart();
    // The "restored" line belongs to this run only.
    server.wait_for_log("Starting restore for stream", SHORT);
    let js = server.jetstream().await;
    let mut stream = js.get_stream("STOPPED").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 10);
}

#[tokio::test]
async fn extra_config_reaches_the_server() {
    let server = NatsServer::start_with_config("max_payload: 65536");
    let client = server.client().await;
    assert_eq!(client.server_info().max_payload, 65536);
    assert!(server.config_path().is_file());
}

#[test]
fn servers_get_distinct_ports() {
    let a = NatsServer::start();
    let b = NatsServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
}

#[test]
fn child_process_log_can_be_waited_on() {
    let child = ChildProcess::spawn("version", &nats_server_binary(), &["--version"], &[]);
    let line = child.wait_for_log("nats-server: v", SHORT);
    assert!(line.contains(nats_server_version()), "{line}");
    assert!(child.wait_for_exit(SHORT).success());
    assert!(child.log().contains("nats-server: v"));
}

#[test]
fn waiting_fails_fast_when_the_process_exits() {
    let child = ChildProcess::spawn("version", &nats_server_binary(), &["--version"], &[]);
    // Far longer than the test may take: the exit must end the wait.
    let waited = std::time::Instant::now();
    let panic = catch_unwind(AssertUnwindSafe(|| {
        child.wait_for_log("never printed", Duration::from_secs(600));
    }))
    .expect_err("waiting for a line that never comes must panic");
    assert!(waited.elapsed() < Duration::from_secs(60));
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("exited"), "{message}");
    assert!(
        message.contains("nats-server: v"),
        "has the log tail: {message}"
    );
}

#[test]
fn waiting_times_out_with_the_log_tail() {
    let port = free_port().to_string();
    let child = ChildProcess::spawn(
        "nats",
        &nats_server_binary(),
        &["-a", "127.0.0.1", "-p", &port],
        &[],
    );
    child.wait_for_log("Server is ready", SHORT);
    let panic = catch_unwind(AssertUnwindSafe(|| {
        child.wait_for_log("never printed", Duration::from_millis(200));
    }))
    .expect_err("must time out");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("did not log"), "{message}");
    assert!(message.contains("Server is ready"), "{message}");
}

#[test]
fn child_process_terminates_gracefully_and_kills() {
    let binary = nats_server_binary();
    let port = free_port().to_string();
    let args = ["-a", "127.0.0.1", "-p", port.as_str()];
    let mut child = ChildProcess::spawn("nats", &binary, &args, &[]);
    child.wait_for_log("Server is ready", SHORT);
    assert!(child.pid() > 0);
    assert!(child.try_wait().is_none());
    let offset = child.log_len();
    child.terminate();
    assert!(child.try_wait().is_some());
    assert!(child.log()[offset as usize..].contains("Server Exiting"));

    let mut child = ChildProcess::spawn("nats", &binary, &args, &[]);
    child.wait_for_log("Server is ready", SHORT);
    child.kill();
    let status = child.try_wait().expect("reaped");
    assert!(!status.success());
}

#[test]
fn run_command_captures_output() {
    let output = run_command(&nats_server_binary(), &["--version"], &[], SHORT);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("nats-server: v"));
}

#[tokio::test]
async fn three_node_cluster_replicates_and_survives_a_node_crash() {
    init_tracing();
    let mut cluster = NatsCluster::start(3);
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.url_list().split(',').count(), 3);
    let js = jetstream::new(cluster.client().await);
    file_stream(&js, "REPLICATED", 3).await;
    // A replicated stream takes writes once its Raft group has elected a
    // leader, which can follow the create's answer on a loaded machine.
    jetsaga_tests::wait_until("the new stream's leader", SHORT, || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("REPLICATED").await.ok()?;
            let info = stream.info().await.ok()?;
            info.cluster.as_ref()?.leader.clone()
        }
    })
    .await;
    let ack = publish_when_accepted(&js, "REPLICATED.a", "1").await;
    assert_eq!(ack.sequence, 1);

    cluster.kill(2);
    // Two of three nodes keep the quorum: writes still succeed.
    let ack = publish_when_accepted(&js, "REPLICATED.b", "2").await;
    assert_eq!(ack.sequence, 2);

    cluster.restart(2);
    let node = cluster.node(2);
    assert!(node.is_running());
    let js = jetstream::new(node.client().await);
    let messages = jetsaga_tests::wait_until("node 3 to catch up", SHORT, || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("REPLICATED").await.ok()?;
            let info = stream.info().await.ok()?;
            (info.state.messages == 2).then_some(info.state.messages)
        }
    })
    .await;
    assert_eq!(messages, 2);
}

/// Publishes until the stream acknowledges. Right after a stream is created
/// the node this client talks to may not yet know of its subjects (the
/// publish meets "no responders"), and right after a node dies the stream
/// may be electing a new leader; both pass within `SHORT`. The subject is
/// the message id, so a retry after a lost acknowledgement is deduplicated.
async fn publish_when_accepted(
    js: &jetstream::Context,
    subject: &'static str,
    payload: &'static str,
) -> jetstream::publish::PublishAck {
    tokio::time::timeout(SHORT, async {
        loop {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .message_id(subject);
            match js.send_publish(subject, publish).await {
                Ok(ack) => match ack.await {
                    Ok(ack) => break ack,
                    Err(e) => tracing::debug!("publish ack: {e}"),
                },
                Err(e) => tracing::debug!("publish: {e}"),
            }
            // Back off between retries while the cluster settles.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the stream accepts a write on {subject}"))
}

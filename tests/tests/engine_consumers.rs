//! The engine's consumers created anew at a takeover
//! (`bus::reset_engine_consumer`, then `bus::engine_consumer`), against a
//! real nats-server: on the outcomes stream, which keeps what was
//! acknowledged, the new consumer reads from the first message after the
//! old one's ack floor (what the dead leader had pulled and not
//! acknowledged comes again at once, what it had applied does not); on a
//! work queue, from its start (it holds only what was not acknowledged).

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use jetsaga_engine::bus::{self, StreamSettings, ensure_streams};
use jetsaga_protocol::Subjects;
use jetsaga_tests::NatsServer;
use std::time::Duration;

const ACK_WAIT: Duration = Duration::from_secs(30);

/// The next `n` messages of `consumer`, acknowledged with `ack` when set.
async fn pull(consumer: &PullConsumer, n: usize, ack: Option<AckKind>) -> Vec<u64> {
    let mut batch = consumer
        .fetch()
        .max_messages(n)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("fetch");
    let mut seqs = Vec::new();
    while let Some(msg) = batch.next().await {
        let msg = msg.expect("a message");
        seqs.push(msg.info().expect("a JetStream message").stream_sequence);
        if let Some(kind) = ack {
            msg.double_ack_with(kind).await.expect("ack");
        }
    }
    seqs
}

/// A nats-server with the engine's streams.
async fn engine_streams() -> (NatsServer, jetstream::Context, Subjects) {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    let subjects = Subjects::new("jetsaga");
    let settings = StreamSettings {
        duplicate_window: Duration::from_secs(120),
        outcome_ttl: Duration::from_secs(3600),
        max_payload: 64 * 1024,
        replicas: 1,
    };
    ensure_streams(&js, &subjects, &settings)
        .await
        .expect("streams");
    (nats, js, subjects)
}

#[tokio::test]
async fn a_reset_consumer_reads_the_outcomes_again_from_after_the_ack_floor() {
    let (_nats, js, subjects) = engine_streams().await;
    for i in 1..=10 {
        js.publish(
            subjects.outcome("payments", 0, &format!("s{i}.charge.action")),
            "{}".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let (stream, name) = (
        subjects.outcomes_stream(),
        subjects.engine_outcomes_consumer_of(0),
    );
    let consumer = || {
        bus::engine_consumer(
            &js,
            &stream,
            name.clone(),
            subjects.outcomes_of(0),
            ACK_WAIT,
            None,
        )
    };
    // The leader applied 1 to 4, then pulled 5 to 7 and died.
    let first = consumer().await.expect("consumer");
    assert_eq!(pull(&first, 4, Some(AckKind::Ack)).await, [1, 2, 3, 4]);
    assert_eq!(pull(&first, 3, None).await, [5, 6, 7]);

    let restart = bus::reset_engine_consumer(&js, &stream, &name)
        .await
        .expect("reset")
        .expect("there was a consumer to reset");
    assert_eq!(restart.after, 4);
    let again = bus::engine_consumer(
        &js,
        &stream,
        name.clone(),
        subjects.outcomes_of(0),
        ACK_WAIT,
        Some(restart),
    )
    .await
    .expect("consumer again");
    // What was pulled and not acknowledged comes again at once, then the
    // rest; nothing applied before comes again.
    assert_eq!(
        pull(&again, 10, Some(AckKind::Ack)).await,
        [5, 6, 7, 8, 9, 10]
    );
    // A consumer that still exists is used as it is (a restart of the same
    // engine, no reset): nothing comes again.
    let same = consumer().await.expect("the same consumer");
    let mut same_info = same.clone();
    let info = same_info.info().await.expect("info");
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
}

#[tokio::test]
async fn a_reset_consumer_reads_a_work_queue_from_its_start() {
    let (_nats, js, subjects) = engine_streams().await;
    for _ in 0..5 {
        js.publish(subjects.result("payments"), "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let (stream, name) = (subjects.results_stream(), subjects.engine_consumer_of(0));
    let first = bus::engine_consumer(
        &js,
        &stream,
        name.clone(),
        subjects.results_of(0, 1),
        ACK_WAIT,
        None,
    )
    .await
    .expect("consumer");
    // Applied 1 and 2 (removed from the work queue), pulled 3, died.
    assert_eq!(pull(&first, 2, Some(AckKind::Ack)).await, [1, 2]);
    assert_eq!(pull(&first, 1, None).await, [3]);
    let restart = bus::reset_engine_consumer(&js, &stream, &name)
        .await
        .expect("reset")
        .expect("there was a consumer to reset");
    assert_eq!(restart.after, 0, "a work queue is read from its start");
    let again = bus::engine_consumer(
        &js,
        &stream,
        name,
        subjects.results_of(0, 1),
        ACK_WAIT,
        Some(restart),
    )
    .await
    .expect("consumer again");
    assert_eq!(pull(&again, 10, Some(AckKind::Ack)).await, [3, 4, 5]);
}

"""The worker's contract (docs/PROTOCOL.md) against a real nats-server, with
the engine's streams set up by the test as the engine sets them up, and the
test playing the engine: it publishes tasks and reads what the worker
records and publishes. The end-to-end tests with the real engine are in
test_sagas.py and the files after it."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from harness import NatsServer
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from jetsaga import StepError, TaskContext, Worker, WorkerError
from jetsaga.jetstream import last_msg

PREFIX = "jetsaga"


async def setup_streams(js: Any) -> None:
    for name, subjects in (("TASKS", "task"), ("RESULTS", "result")):
        await js.add_stream(
            StreamConfig(
                name=f"JETSAGA_{name}",
                subjects=[f"{PREFIX}.{subjects}.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                max_msg_size=576 * 1024,
            )
        )
    await js.add_stream(
        StreamConfig(
            name="JETSAGA_OUTCOMES",
            subjects=[f"{PREFIX}.outcome.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_msgs_per_subject=1,
            allow_direct=True,
            max_age=24 * 3600.0,
        )
    )


def task(n: int = 1, **over: Any) -> dict[str, Any]:
    doc = {
        "saga_id": f"saga-{n}",
        "saga_name": "t",
        "step_id": "charge",
        "kind": "action",
        "service": "pay",
        "operation": "charge",
        "attempt": 1,
        "idempotency_key": f"saga-{n}.charge.action",
        "input": {"amount": n},
        "timeout_ms": 10_000,
    }
    doc.update(over)
    return doc


class Bench:
    """A nats-server with the engine's streams, a worker of service ``pay``
    running in this process, and what its handler saw."""

    def __init__(self, nc: Any, js: Any) -> None:
        self.nc = nc
        self.js = js
        self.calls: list[dict[str, Any]] = []
        self.registry = CollectorRegistry()
        self.worker = Worker(
            "pay",
            ack_wait=1.0,
            name="bench",
            metrics_registry=self.registry,
            metrics_port=0,
            metrics_addr="127.0.0.1",
        )
        self.hooks: dict[int, Any] = {}

        @self.worker.handler("charge")
        async def charge(ctx: TaskContext, input: dict[str, Any]) -> dict[str, Any]:
            self.calls.append({"key": ctx.idempotency_key, "attempt": ctx.attempt})
            hook = self.hooks.get(input["amount"])
            if hook is not None:
                return await hook(ctx)  # type: ignore[no-any-return]
            return {"charged": input["amount"], "attempt": ctx.attempt}

    async def send(
        self, doc: dict[str, Any] | bytes, headers: dict[str, str] | None = None
    ) -> None:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        await self.js.publish(f"{PREFIX}.task.pay", body, headers=headers)

    def metric(self, name: str, **labels: str) -> float | None:
        value = self.registry.get_sample_value(name, {"service": "pay", **labels})
        return None if value is None else float(value)

    async def record(self, doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]] | None:
        part = doc.get("partition", 0)
        msg = await last_msg(
            self.nc,
            "JETSAGA_OUTCOMES",
            f"{PREFIX}.outcome.pay.{part}.{doc['idempotency_key']}",
            direct=True,
        )
        return None if msg is None else (json.loads(msg.data), msg.headers)

    async def results(self, n: int, subject: str = f"{PREFIX}.result.pay") -> list[Any]:
        sub = await self.js.pull_subscribe(subject, durable=None, stream="JETSAGA_RESULTS")
        msgs = await sub.fetch(n, timeout=10)
        out = []
        for m in msgs:
            out.append((json.loads(m.data), dict(m.headers or {})))
            await m.ack()
        return out

    async def settled(self) -> None:
        """Waits until the tasks stream is empty (every task acked or terminated)."""
        for _ in range(200):
            info = await self.js.stream_info("JETSAGA_TASKS")
            if info.state.messages == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("tasks were not all acknowledged")


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    server = NatsServer(tmp_path)
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await setup_streams(js)
        b = Bench(nc, js)
        run = asyncio.ensure_future(b.worker.run(nc=nc, handle_signals=False))
        await asyncio.wait_for(b.worker.ready.wait(), 10)
        try:
            yield b
        finally:
            b.worker.stop()
            await asyncio.wait_for(run, 15)
    finally:
        await nc.close()
        server.kill()


async def test_a_terminal_outcome_is_recorded_on_its_subject_and_the_task_acked(
    bench: Bench,
) -> None:
    t = task(1)
    await bench.send(t)
    await bench.settled()
    assert bench.calls == [{"key": t["idempotency_key"], "attempt": 1}]
    found = await bench.record(t)
    assert found is not None
    body, headers = found
    assert body == {
        "saga_id": "saga-1",
        "step_id": "charge",
        "kind": "action",
        "attempt": 1,
        "service": "pay",
        "outcome": {"status": "ok", "output": {"charged": 1, "attempt": 1}},
        "replayed": False,
        "worker": "bench",
    }
    assert headers["Nats-Msg-Id"] == "result.saga-1.charge.action.1"
    assert headers["Jetsaga-Saga-Id"] == "saga-1"
    assert headers["Nats-Expected-Last-Subject-Sequence"] == "0"
    info = await bench.js.stream_info("JETSAGA_RESULTS")
    assert info.state.messages == 0, "a recorded outcome is not also published as a result"


async def test_a_second_delivery_replays_the_record_without_running_the_handler(
    bench: Bench,
) -> None:
    first = task(2)
    await bench.send(first)
    await bench.settled()
    again = task(2, attempt=2)
    await bench.send(again, headers={"Jetsaga-Result-Token": "9f3a"})
    await bench.settled()
    assert len(bench.calls) == 1
    [(body, headers)] = await bench.results(1)
    assert body["attempt"] == 2 and body["replayed"] is True
    assert body["outcome"] == {"status": "ok", "output": {"charged": 2, "attempt": 1}}
    assert headers["Nats-Msg-Id"] == "result.saga-2.charge.action.2.9f3a"
    assert "Nats-Expected-Last-Subject-Sequence" not in headers


async def test_the_same_task_again_is_acknowledged_without_a_second_result(
    bench: Bench,
) -> None:
    t = task(8)
    await bench.send(t)
    await bench.settled()
    await bench.send(t)  # the same attempt delivered again (a lost ack)
    await bench.settled()
    assert len(bench.calls) == 1
    info = await bench.js.stream_info("JETSAGA_RESULTS")
    assert info.state.messages == 0, "the record is that attempt's result already"
    assert bench.metric("worker_replays_total") == 1


async def test_retryable_outcomes_are_not_recorded(bench: Bench) -> None:
    async def busy(ctx: TaskContext) -> Any:
        raise StepError.retryable("busy", retry_after=2)

    bench.hooks[3] = busy
    t = task(3, partition=4)
    await bench.send(t)
    await bench.settled()
    [(body, _)] = await bench.results(1, f"{PREFIX}.result.pay.4")
    assert body["outcome"] == {"status": "retryable", "error": "busy", "retry_after_ms": 2000}
    assert await bench.record(t) is None
    bench.hooks.clear()
    await bench.send(task(3, partition=4, attempt=2))
    await bench.settled()
    assert [c["attempt"] for c in bench.calls] == [1, 2]
    found = await bench.record(t)
    assert found is not None and found[0]["attempt"] == 2


async def test_when_another_attempt_recorded_first_its_outcome_is_reported(
    bench: Bench,
) -> None:
    t = task(4)

    async def overtaken(ctx: TaskContext) -> Any:
        # Another delivery of the step records a fatal outcome meanwhile.
        theirs = {**t, "attempt": 7}
        body = {
            "saga_id": t["saga_id"],
            "step_id": "charge",
            "kind": "action",
            "attempt": 7,
            "service": "pay",
            "outcome": {"status": "fatal", "error": "declined"},
            "replayed": False,
            "worker": "other",
        }
        await bench.js.publish(
            f"{PREFIX}.outcome.pay.0.{theirs['idempotency_key']}",
            json.dumps(body).encode(),
            headers={"Nats-Expected-Last-Subject-Sequence": "0"},
        )
        return {"charged": 4}

    bench.hooks[4] = overtaken
    await bench.send(t)
    await bench.settled()
    [(body, _)] = await bench.results(1)
    assert body["attempt"] == 1 and body["replayed"] is True
    assert body["outcome"] == {"status": "fatal", "error": "declined"}
    found = await bench.record(t)
    assert found is not None and found[0]["attempt"] == 7, "the first record stays"


async def test_garbage_is_terminated_and_a_long_handler_keeps_its_task(bench: Bench) -> None:
    async def slow(ctx: TaskContext) -> Any:
        await asyncio.sleep(3.5)  # the handler's own work; ack_wait is 1 s
        return {"slow": True}

    bench.hooks[5] = slow
    await bench.send(b"this is not a task")
    await bench.send(task(5))
    await bench.settled()
    assert len(bench.calls) == 1, "in-progress acks kept the task from being redelivered"
    consumer = await bench.js.consumer_info("JETSAGA_TASKS", "jetsaga-svc-pay")
    assert consumer.num_redelivered == 0
    assert consumer.config.ack_wait == 1.0
    assert consumer.config.filter_subject == "jetsaga.task.pay"


async def test_a_legacy_idempotency_record_is_replayed(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await setup_streams(js)
        kv = await js.create_key_value(bucket="JETSAGA_IDEMPOTENCY", history=1)
        await kv.put("saga-9.charge.action", b'{"status":"ok","output":{"old":true}}')
        bench = Bench(nc, js)
        run = asyncio.ensure_future(bench.worker.run(nc=nc, handle_signals=False))
        await asyncio.wait_for(bench.worker.ready.wait(), 10)
        await bench.send(task(9, attempt=3))
        await bench.settled()
        [(body, _)] = await bench.results(1)
        assert bench.calls == []
        assert body["outcome"] == {"status": "ok", "output": {"old": True}}
        assert body["replayed"] is True and body["attempt"] == 3
        assert (await kv.status()).values == 1, "nothing new is written to the bucket"
        # A removed record (a DEL marker) is no record: the handler runs.
        await kv.put("saga-12.charge.action", b'{"status":"fatal","error":"old"}')
        await kv.delete("saga-12.charge.action")
        await bench.send(task(12))
        await bench.settled()
        assert [c["key"] for c in bench.calls] == ["saga-12.charge.action"]
        bench.calls.clear()
        # A bucket deleted while the worker runs is no longer looked at.
        await js.delete_key_value("JETSAGA_IDEMPOTENCY")
        await bench.send(task(10))
        await bench.settled()
        assert [c["key"] for c in bench.calls] == ["saga-10.charge.action"]
        bench.worker.stop()
        await asyncio.wait_for(run, 15)
    finally:
        await nc.close()
        server.kill()


SPANS = InMemorySpanExporter()


def tracer_provider() -> None:
    """Installs an in-memory span exporter as the global provider, once."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(SPANS))
        trace.set_tracer_provider(provider)


async def test_metrics_are_served_under_the_rust_sdks_names(bench: Bench) -> None:
    await bench.send(task(6))
    await bench.settled()
    await bench.send(task(6, attempt=2))
    await bench.settled()
    labels = {"operation": "charge", "kind": "action"}
    assert bench.metric("worker_tasks_total", **labels, outcome="ok") == 2
    assert bench.metric("worker_replays_total") == 1
    assert bench.metric("worker_handler_duration_seconds_count", **labels) == 1
    assert bench.metric("worker_in_flight") == 0
    port = bench.worker.metrics_server.server_port
    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    )
    assert (
        b'worker_tasks_total{kind="action",operation="charge",outcome="ok",service="pay"} 2.0'
        in (text)
    )


async def test_the_task_span_is_a_child_of_the_engines_attempt_span(bench: Bench) -> None:
    tracer_provider()
    SPANS.clear()
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    parent = "5d7f2b0c6e1a9f34"
    await bench.send(task(7), headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    await bench.settled()
    [span] = [s for s in SPANS.get_finished_spans() if s.name == "task"]
    assert f"{span.context.trace_id:032x}" == trace_id
    assert span.parent is not None and f"{span.parent.span_id:016x}" == parent
    assert span.attributes["saga.id"] == "saga-7"
    assert span.attributes["attempt"] == 1
    assert span.attributes["outcome"] == "ok"


async def test_an_existing_consumer_is_used_as_it_is_or_refused_when_it_filters_otherwise(
    tmp_path: Path,
) -> None:
    server = NatsServer(tmp_path)
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await setup_streams(js)
        # Another worker created the consumer with its own ack_wait: used as it is.
        await js.add_consumer(
            "JETSAGA_TASKS",
            ConsumerConfig(
                durable_name="jetsaga-svc-pay", filter_subject="jetsaga.task.pay",
                ack_policy=AckPolicy.EXPLICIT, ack_wait=7.0, max_deliver=-1,
            ),
        )  # fmt: skip
        bench = Bench(nc, js)
        run = asyncio.ensure_future(bench.worker.run(nc=nc, handle_signals=False))
        await asyncio.wait_for(bench.worker.ready.wait(), 10)
        await bench.send(task(11))
        await bench.settled()
        assert len(bench.calls) == 1
        info = await js.consumer_info("JETSAGA_TASKS", "jetsaga-svc-pay")
        assert info.config.ack_wait == 7.0, "the worker did not change the shared consumer"
        bench.worker.stop()
        await asyncio.wait_for(run, 15)

        # A consumer of that name filtering another subject: refused.
        await js.delete_consumer("JETSAGA_TASKS", "jetsaga-svc-pay")
        await js.add_consumer(
            "JETSAGA_TASKS",
            ConsumerConfig(
                durable_name="jetsaga-svc-pay", filter_subject="jetsaga.task.other",
                ack_policy=AckPolicy.EXPLICIT,
            ),
        )  # fmt: skip
        with pytest.raises(WorkerError) as e:
            await asyncio.wait_for(Bench(nc, js).worker.run(nc=nc, handle_signals=False), 10)
        assert e.value.code == "E-WORKER-CONSUMER-CONFLICT"
        assert "jetsaga.task.other" in e.value.message
    finally:
        await nc.close()
        server.kill()


async def test_cancelling_run_finishes_the_tasks_in_flight_first(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await setup_streams(js)
        bench = Bench(nc, js)
        started = asyncio.Event()

        async def slow(ctx: TaskContext) -> Any:
            started.set()
            await asyncio.sleep(1.0)
            return {"slow": True}

        bench.hooks[13] = slow
        run = asyncio.ensure_future(bench.worker.run(nc=nc, handle_signals=False))
        await asyncio.wait_for(bench.worker.ready.wait(), 10)
        await bench.send(task(13))
        await asyncio.wait_for(started.wait(), 10)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, 15)
        # By the time run() gave up, the task was recorded and acknowledged.
        assert (await js.stream_info("JETSAGA_TASKS")).state.messages == 0
        found = await bench.record(task(13))
        assert found is not None and found[0]["outcome"]["output"] == {"slow": True}
    finally:
        await nc.close()
        server.kill()

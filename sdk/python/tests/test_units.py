"""Unit tests without a server: names, task decoding, outcomes, the output
cap and handlers run through Worker.run_one (what production runs)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import BaseModel

from jetsaga import StepError, TaskContext, Worker
from jetsaga.names import Names, is_valid_key, result_msg_id
from jetsaga.outcome import Outcome, OutputLimit, RecordedResult, dumps, result_body
from jetsaga.records import reads_direct
from jetsaga.task import Task, TaskDecodeError


def task_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "saga_id": "s-1",
        "saga_name": "order",
        "step_id": "reserve",
        "kind": "action",
        "service": "inventory",
        "operation": "reserve",
        "attempt": 1,
        "idempotency_key": "s-1.reserve.action",
        "input": {"qty": 3},
        "timeout_ms": 1000,
    }
    doc.update(over)
    return doc


def test_names_follow_the_protocol() -> None:
    n = Names("acme.prod")
    assert n.stream_prefix == "ACME_PROD"
    assert n.tasks_stream == "ACME_PROD_TASKS"
    assert n.outcomes_stream == "ACME_PROD_OUTCOMES"
    assert n.legacy_bucket == "ACME_PROD_IDEMPOTENCY"
    assert n.service_consumer("pay") == "acme-prod-svc-pay"
    assert n.task("pay") == "acme.prod.task.pay"
    assert n.result("pay", 0) == "acme.prod.result.pay"
    assert n.result("pay", 3) == "acme.prod.result.pay.3"
    assert n.outcome("pay", 0, "s.a.action") == "acme.prod.outcome.pay.0.s.a.action"
    assert Names().outcomes_stream == "JETSAGA_OUTCOMES"
    assert result_msg_id("s", "a", "action", 2) == "result.s.a.action.2"
    assert result_msg_id("s", "a", "action", 2, "9f3a") == "result.s.a.action.2.9f3a"
    assert result_msg_id("s", "a", "action", 2, "a.b") == "result.s.a.action.2"
    with pytest.raises(ValueError, match="invalid subject prefix"):
        Names("bad prefix")
    with pytest.raises(ValueError):
        Names("a..b")


def test_keys_that_cannot_be_subject_tails_are_refused() -> None:
    assert is_valid_key("0192f5a0-1234-7000-8000-00000000abcd.charge.action.g1")
    for bad in ["", ".a", "a.", "a b", "a*", "a>", "a..b"]:
        assert not is_valid_key(bad), bad


def test_tasks_decode_and_garbage_is_refused_with_the_reason() -> None:
    t = Task.decode(json.dumps(task_doc(partition=2, extra="ignored")).encode())
    assert (t.partition, t.context, t.input) == (2, {}, {"qty": 3})
    assert Task.decode(json.dumps(task_doc()).encode()).partition == 0
    for payload, reason in [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (json.dumps(task_doc(kind="undo")).encode(), "`kind`"),
        (json.dumps(task_doc(attempt="1")).encode(), "`attempt`"),
        (json.dumps({k: v for k, v in task_doc().items() if k != "saga_id"}).encode(), "`saga_id`"),
        (json.dumps(task_doc(context=[1])).encode(), "`context`"),
    ]:
        with pytest.raises(TaskDecodeError, match=reason):
            Task.decode(payload)


def test_outcomes_and_results_have_the_wire_shape() -> None:
    task = Task.from_dict(task_doc())
    body = json.loads(result_body(task, Outcome.ok({"a": 1}), replayed=True, worker="w"))
    assert body == {
        "saga_id": "s-1",
        "step_id": "reserve",
        "kind": "action",
        "attempt": 1,
        "service": "inventory",
        "outcome": {"status": "ok", "output": {"a": 1}},
        "replayed": True,
        "worker": "w",
    }
    assert Outcome.retryable("x", 20).to_json() == {
        "status": "retryable",
        "error": "x",
        "retry_after_ms": 20,
    }
    assert Outcome.retryable("x").to_json() == {"status": "retryable", "error": "x"}
    assert Outcome.from_json({"status": "fatal", "error": "no"}) == Outcome.fatal("no")
    assert Outcome.from_json({"status": "ok"}) == Outcome.ok(None)
    with pytest.raises(ValueError):
        Outcome.from_json({"status": "maybe"})
    rec = RecordedResult.decode(result_body(task, Outcome.fatal("no"), replayed=False, worker=""))
    assert rec.is_of(task) and rec.outcome == Outcome.fatal("no")
    other = Task.from_dict(task_doc(attempt=2))
    assert not rec.is_of(other)


def test_direct_gets_only_on_a_single_replica_stream_that_allows_them() -> None:
    assert reads_direct({"allow_direct": True, "num_replicas": 1})
    assert not reads_direct({"allow_direct": False, "num_replicas": 1})
    assert not reads_direct({"allow_direct": True, "num_replicas": 3})


def test_output_limit_is_the_smallest_source() -> None:
    limit = OutputLimit.derive(1024 * 1024, 512 * 1024, None)
    assert limit.bytes == 512 * 1024 - 16 * 1024 and "engine" in limit.source
    assert OutputLimit.derive(64 * 1024, None, None).bytes == 48 * 1024
    assert OutputLimit.derive(1024 * 1024, None, 100).source == "the worker's max_output_bytes"
    assert OutputLimit.derive(40_000, None, None).bytes == 30_000


def test_an_output_over_the_limit_is_dropped_and_an_error_text_is_cut() -> None:
    limit = OutputLimit(100, "the worker's max_output_bytes")
    assert limit.check(Outcome.ok("x" * 50)) == Outcome.ok("x" * 50)
    big = limit.check(Outcome.ok("x" * 200))
    assert big.status == "ok" and list(big.output) == ["jetsaga_output_dropped"]
    assert "202 bytes of JSON, more than the limit of 100" in big.output["jetsaga_output_dropped"]
    assert "so it was dropped; the step succeeded" in big.output["jetsaga_output_dropped"]
    wide = OutputLimit(300, "the worker's max_output_bytes")
    long = wide.check(Outcome.retryable("é\n" * 300, 5))
    assert long.status == "retryable" and long.retry_after_ms == 5
    assert len(dumps(long.error)) <= 300
    assert long.error.startswith("é\né\n") and "error text cut: it was 1202 bytes" in long.error
    fatal = limit.check(Outcome.fatal("y" * 1000))
    assert fatal.status == "fatal" and len(dumps(fatal.error)) <= 100


class Order(BaseModel):
    qty: int


def make_worker() -> Worker:
    w = Worker("inventory", name="test-worker", max_output_bytes=1000)

    @w.handler("reserve")
    async def reserve(ctx: TaskContext, order: Order) -> dict[str, int]:
        if order.qty == 0:
            raise StepError.fatal("nothing to reserve")
        if order.qty == 11:
            raise StepError.retryable("warehouse busy", retry_after=1.5)
        if order.qty == 99:
            raise RuntimeError("boom")
        if order.qty == 100:
            await asyncio.sleep(3600)
        if order.qty == 500:
            return {"blob": "z" * 5000}  # type: ignore[dict-item]
        if order.qty == 501:
            return {"when": object()}  # type: ignore[dict-item]
        return {"reserved": order.qty, "attempt": ctx.attempt}

    @w.compensation("release")
    async def release(ctx: TaskContext, input: Any) -> Any:
        return {"released": ctx.step_output(ctx.step_id), "input": input}

    return w


async def test_handlers_report_their_outcomes() -> None:
    w = make_worker()
    assert await w.run_one(task_doc()) == Outcome.ok({"reserved": 3, "attempt": 1})
    assert await w.run_one(task_doc(input={"qty": 0})) == Outcome.fatal("nothing to reserve")
    assert await w.run_one(task_doc(input={"qty": 11})) == Outcome.retryable("warehouse busy", 1500)
    boom = await w.run_one(task_doc(input={"qty": 99}))
    assert boom.status == "retryable" and "RuntimeError: boom" in boom.error
    big = await w.run_one(task_doc(input={"qty": 500}))
    assert big.status == "ok"
    assert "more than the limit of 1000" in big.output["jetsaga_output_dropped"]
    odd = await w.run_one(task_doc(input={"qty": 501}))
    assert odd.status == "ok"
    assert "cannot be serialized as JSON" in odd.output["jetsaga_output_dropped"]


async def test_input_that_does_not_validate_is_fatal() -> None:
    w = make_worker()
    bad = await w.run_one(task_doc(input={"qty": "many"}))
    assert bad.status == "fatal" and bad.error.startswith("invalid input for reserve")


async def test_a_handler_past_its_deadline_is_retryable() -> None:
    w = make_worker()
    late = await w.run_one(task_doc(input={"qty": 100}, timeout_ms=50))
    assert late == Outcome.retryable("handler exceeded its deadline")


async def test_compensations_see_the_step_output_and_unknown_operations_are_retryable() -> None:
    w = make_worker()
    out = await w.run_one(
        task_doc(kind="compensation", operation="release", context={"reserve": {"n": 1}})
    )
    assert out == Outcome.ok({"released": {"n": 1}, "input": {"qty": 3}})
    none = await w.run_one(task_doc(operation="ship"))
    assert none.status == "retryable"
    assert "has no action handler for operation ship" in none.error


def test_registration_refuses_mistakes() -> None:
    w = Worker("svc")

    @w.handler("op")
    async def op(ctx: TaskContext, input: Any) -> None:
        return None

    with pytest.raises(ValueError, match="registered already"):
        w.handler("op")(op)
    with pytest.raises(TypeError, match="async"):
        w.handler("sync")(lambda ctx, i: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="service"):
        Worker("a.b")


def test_task_context_has_the_documented_fields() -> None:
    ctx = TaskContext(Task.from_dict(task_doc(context={"a": 1})))
    assert (ctx.saga_id, ctx.saga_name, ctx.step_id, ctx.kind, ctx.attempt) == (
        "s-1",
        "order",
        "reserve",
        "action",
        1,
    )
    assert ctx.idempotency_key == "s-1.reserve.action"
    assert ctx.input == {"qty": 3}
    assert ctx.step_output("a") == 1 and ctx.step_output("b") is None
    assert 0 < ctx.time_left() <= 1.0
    assert ctx.deadline.tzinfo is not None

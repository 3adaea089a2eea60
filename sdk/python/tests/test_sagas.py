"""create_booking sagas end to end: the real engine, the Python example
workers (examples/python/booking_workers.py) as a process, their ledgers."""

from __future__ import annotations

import asyncio
import signal
import time

from conftest import World
from harness import duplicates, effect_ops, ledgers


async def test_happy_path(world: World) -> None:
    world.booking_workers("py-workers")
    started = await world.client.start(
        "create_booking", {"booking_id": "bk_1"}, idempotency_key="bk_1"
    )
    saga = await world.client.wait(started.id, timeout=60)
    assert saga.state == "completed", saga.status
    assert [s.state for s in saga.steps] == ["succeeded"] * 4
    assert all(len(s.attempts) == 1 for s in saga.steps)
    assert saga.output("create_nf")["nf_number"].startswith("nf_")
    assert saga.output("add_calendar")["notified"] == ["ana@example.com", "+5511987654321"]
    books = ledgers(world.ledger_dir)
    assert {s: effect_ops(e) for s, e in books.items()} == {
        "invoicing": ["create_nf"],
        "email": ["send_email"],
        "whatsapp": ["send_whatsapp"],
        "calendar": ["add_event"],
    }
    assert all(duplicates(e) == [] for e in books.values())
    nf = books["invoicing"][0]
    assert nf["saga_id"] == started.id and nf["worker"] == "py-workers"
    assert nf["idempotency_key"] == f"{started.id}.create_nf.action"
    assert nf["effect"].startswith(f"issued fiscal note {saga.output('create_nf')['nf_number']}")


async def test_retryable_then_success(world: World) -> None:
    world.booking_workers("py-workers")
    faults = {"send_email": {"fail": "retryable", "times": 2}}
    started = await world.client.start("create_booking", {"faults": faults})
    saga = await world.client.wait(started.id, timeout=60)
    assert saga.state == "completed", saga.status
    email = saga.step("send_email")
    outcomes = [a.get("outcome", {}).get("outcome") for a in email.attempts]
    assert outcomes == ["retryable", "retryable", "ok"]
    assert (
        "injected retryable failure of send_email action (attempt 1)"
        in (email.attempts[0]["outcome"]["error"])
    )
    assert effect_ops(ledgers(world.ledger_dir)["email"]) == ["send_email"]


async def test_fatal_then_compensation(world: World) -> None:
    world.booking_workers("py-workers")
    started = await world.client.start(
        "create_booking", {"faults": {"add_calendar": {"fail": "fatal"}}}
    )
    saga = await world.client.wait(started.id, timeout=60)
    assert saga.state == "compensated", saga.status
    assert {s.id: s.state for s in saga.steps} == {
        "create_nf": "compensated",
        "send_email": "compensated",
        "send_whatsapp": "compensated",
        "add_calendar": "failed",
    }
    assert "injected fatal failure of add_calendar" in saga.step("add_calendar").status["error"]
    books = ledgers(world.ledger_dir)
    assert {s: effect_ops(e) for s, e in books.items()} == {
        "invoicing": ["cancel_nf", "create_nf"],
        "email": ["send_email", "send_email_correction"],
        "whatsapp": ["send_whatsapp", "send_whatsapp_correction"],
        "calendar": [],
    }
    assert all(duplicates(e) == [] for e in books.values())
    # The compensation cancels the note the action issued.
    issued = next(e for e in books["invoicing"] if e["operation"] == "create_nf")
    cancelled = next(e for e in books["invoicing"] if e["operation"] == "cancel_nf")
    nf = issued["effect"].split()[3]
    assert nf.startswith("nf_") and cancelled["effect"].startswith(f"cancelled fiscal note {nf} ")
    assert cancelled["kind"] == "compensation"
    assert cancelled["idempotency_key"] == f"{started.id}.create_nf.compensation"


async def test_sigterm_drains_the_tasks_in_flight(world: World) -> None:
    workers = world.booking_workers("py-draining")
    started = await world.client.start(
        "create_booking", {"faults": {"create_nf": {"delay_ms": 1500}}}
    )
    workers.wait_for_log("injected delay of 1500 ms into create_nf")
    workers.signal(signal.SIGTERM)
    assert workers.wait_exit(20) == 0
    workers.wait_for_log("all workers drained; bye", timeout=1)
    # The handler ran to its end and its result was out before the exit:
    # the engine applies it with no worker running.
    deadline = time.monotonic() + 15
    while (saga := await world.client.status(started.id)).step("create_nf").state != "succeeded":
        assert time.monotonic() < deadline, saga.step("create_nf").status
        await asyncio.sleep(0.05)
    assert effect_ops(ledgers(world.ledger_dir)["invoicing"]) == ["create_nf"]
    # Nobody serves the next steps until a worker comes back.
    assert saga.step("send_email").state in ("pending", "running")
    world.booking_workers("py-back")
    assert (await world.client.wait(started.id, timeout=60)).state == "completed"

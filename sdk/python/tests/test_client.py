"""The client against the real engine, without workers."""

from __future__ import annotations

import pytest
from conftest import World

from jetsaga import Client, EngineError


async def test_start_is_idempotent_and_sagas_are_found_by_id_key_and_state(world: World) -> None:
    c = world.client
    started = await c.start("create_booking", {"booking_id": "b1"}, idempotency_key="b1")
    assert started.created and not started.queued
    again = await c.start("create_booking", {"booking_id": "other"}, idempotency_key="b1")
    assert (again.id, again.created) == (started.id, False)

    saga = await c.status(started.id)
    assert (saga.id, saga.name, saga.state) == (started.id, "create_booking", "running")
    assert [s.id for s in saga.steps] == [
        "create_nf",
        "send_email",
        "send_whatsapp",
        "add_calendar",
    ]
    assert saga.step("create_nf").state == "running"
    assert saga.input == {"booking_id": "b1"}
    assert (await c.get_by_key("b1")).id == started.id

    running = await c.list(state="running")
    assert [s.id for s in running] == [started.id]
    assert await c.list(state="completed") == []


async def test_engine_errors_carry_their_codes(world: World) -> None:
    c = world.client
    with pytest.raises(EngineError) as e:
        await c.start("nope", {})
    assert e.value.code == "E-UNKNOWN-SAGA"
    with pytest.raises(EngineError) as e:
        await c.get_by_key("never-used")
    assert e.value.code == "E-NOT-FOUND"
    with pytest.raises(EngineError) as e:
        await c.status("01a20220-9f3b-7092-90de-1c6d0b7bbe09")
    assert e.value.code == "E-NOT-FOUND"
    with pytest.raises(EngineError) as e:
        await c.list(state="sleeping")
    assert e.value.code == "E-BAD-REQUEST"
    other = await Client.connect(world.nats.url, prefix="elsewhere")
    try:
        with pytest.raises(EngineError) as e:
            await other.start("create_booking", {})
        assert e.value.code == "E-NO-ENGINE"
    finally:
        await other.close()


async def test_cancel_retry_and_wait(world: World) -> None:
    c = world.client
    started = await c.start("create_booking", {}, idempotency_key="to-cancel")
    with pytest.raises(EngineError) as e:
        await c.retry(started.id)
    assert e.value.code == "E-NOT-APPLICABLE"
    with pytest.raises(EngineError) as e:
        await c.wait(started.id, timeout=0.3)
    assert e.value.code == "E-TIMEOUT"
    cancelled = await c.cancel(started.id, reason="customer asked")
    assert cancelled.state == "cancelled" and cancelled.reason == "customer asked"
    done = await c.wait(started.id, timeout=5)
    assert done.terminal and done.state == "cancelled"
    with pytest.raises(EngineError) as e:
        await c.cancel(started.id, compensate=True)
    assert e.value.code == "E-NOT-APPLICABLE"

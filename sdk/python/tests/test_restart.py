"""nats-server killed and restarted (same port, same store) while a Python
worker runs a step: the worker reconnects and pulls again at once (no stall),
and every effect still happens once."""

from __future__ import annotations

import time

from conftest import World
from harness import duplicates, effect_ops, ledgers


async def test_a_nats_server_restart_mid_run_stalls_nothing(world: World) -> None:
    workers = world.booking_workers("py-workers")
    slow = {"send_email": {"delay_ms": 1500, "times": 1}}
    first = await world.client.start("create_booking", {"faults": slow})
    workers.wait_for_log("injected delay of 1500 ms into send_email")
    world.nats.restart()

    saga = await world.client.wait(first.id, timeout=60)
    assert saga.state == "completed", saga.status
    # After the restart a new saga is served at once: the worker's pull
    # request did not die with the old server.
    began = time.monotonic()
    second = await world.client.start("create_booking", {"booking_id": "after-restart"})
    saga2 = await world.client.wait(second.id, timeout=30)
    assert saga2.state == "completed", saga2.status
    assert time.monotonic() - began < 15
    workers.wait_for_log("NATS: reconnected", timeout=1)

    books = ledgers(world.ledger_dir)
    for service, op in {"invoicing": "create_nf", "email": "send_email",
                        "whatsapp": "send_whatsapp", "calendar": "add_event"}.items():  # fmt: skip
        assert effect_ops(books[service]) == [op, op], service
    # A step whose task came again after the restart ran under its key: no
    # second effect, at most a suppressed duplicate.
    assert sum(len(duplicates(e)) for e in books.values()) <= 1

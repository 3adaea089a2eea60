"""A Python worker killed at each crash point (the SDK's test hook
JETSAGA_PY_CRASH_AT, os._exit(137)) and replaced: the saga completes with
exactly one effect per step; a crash after the handler runs the handler
again (its duplicate suppressed by the ledger's idempotency key), a crash
after the record finds the record instead of running the handler."""

from __future__ import annotations

import pytest
from conftest import World
from harness import duplicates, effect_ops, ledgers

#: ack_wait of the calendar consumer, created by the worker that crashes:
#: how soon its task is delivered again.
ACK_WAIT = "2"


@pytest.mark.parametrize("point", ["after_handler", "after_record", "after_publish"])
async def test_a_worker_killed_at_a_crash_point_changes_no_effect_count(
    world: World, point: str
) -> None:
    world.booking_workers(
        "py-others", "--service", "invoicing", "--service", "email", "--service", "whatsapp"
    )
    doomed = world.booking_workers(
        "py-calendar-1",
        "--service",
        "calendar",
        "--ack-wait",
        ACK_WAIT,
        env={"JETSAGA_PY_CRASH_AT": point},
    )
    started = await world.client.start("create_booking", {"booking_id": f"crash-{point}"})
    assert doomed.wait_exit(60) == 137
    assert f"crash point {point} reached" in doomed.text()

    survivor = world.booking_workers("py-calendar-2", "--service", "calendar")
    saga = await world.client.wait(started.id, timeout=60)
    assert saga.state == "completed", saga.status
    calendar = saga.step("add_calendar")
    # The same task (attempt 1) came again after ack_wait, before the step's timeout.
    assert [a["number"] for a in calendar.attempts] == [1]

    books = ledgers(world.ledger_dir)
    assert {s: effect_ops(e) for s, e in books.items()} == {
        "invoicing": ["create_nf"],
        "email": ["send_email"],
        "whatsapp": ["send_whatsapp"],
        "calendar": ["add_event"],
    }
    assert [e["worker"] for e in books["calendar"] if "duplicate_of" not in e] == ["py-calendar-1"]
    if point == "after_handler":
        # Nothing was recorded: the handler ran again, the ledger suppressed it.
        assert [d["worker"] for d in duplicates(books["calendar"])] == ["py-calendar-2"]
        assert survivor.count("already recorded") == 0
    else:
        assert duplicates(books["calendar"]) == []
        # The record of attempt 1 is the engine's result already: the task
        # delivered again is acknowledged without running the handler.
        survivor.wait_for_log("already recorded for this attempt (ok); acknowledging the task")
    for service in ("invoicing", "email", "whatsapp"):
        assert duplicates(books[service]) == []

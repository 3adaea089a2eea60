"""A Python and a Rust worker serving the same service queues at once, and
sharing the effect ledgers: every saga completes with exactly one effect per
step, and both languages did some of the work."""

from __future__ import annotations

import asyncio

from conftest import World
from harness import duplicates, effect_ops, ledgers

SAGAS = 10


async def test_python_and_rust_workers_share_the_queues(world: World) -> None:
    world.booking_workers("py-workers", "--concurrency", "4")
    world.rust_workers("booking-workers", "rust-workers", "--concurrency", "4")
    started = [
        await world.client.start("create_booking", {"booking_id": f"bk_{i}"}) for i in range(SAGAS)
    ]
    sagas = await asyncio.gather(*(world.client.wait(s.id, timeout=90) for s in started))
    assert [s.state for s in sagas] == ["completed"] * SAGAS
    books = ledgers(world.ledger_dir)
    ops = {"invoicing": "create_nf", "email": "send_email", "whatsapp": "send_whatsapp",
           "calendar": "add_event"}  # fmt: skip
    assert {s: effect_ops(e) for s, e in books.items()} == {
        s: [op] * SAGAS for s, op in ops.items()
    }
    assert all(duplicates(e) == [] for e in books.values())
    workers = {e["worker"] for entries in books.values() for e in entries}
    assert workers == {"py-workers", "rust-workers"}, workers
    # The same outputs whichever language ran a step.
    for saga in sagas:
        nf = saga.output("create_nf")["nf_number"]
        line = next(e for e in books["invoicing"] if e["saga_id"] == saga.id)
        assert nf in line["effect"]

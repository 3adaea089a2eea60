"""What the worker does with what it cannot use: a message on its queue that
is not a task is terminated (not redelivered, nothing run), and an output
larger than a result may carry is dropped while the success is kept, so that
a rollback compensates the step's effect."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import World

from jetsaga import StepError, TaskContext, Worker

DEFINITION = """
sagas:
  blob:
    steps:
      - id: make
        service: pyblob
        operation: make
        compensation: unmake
        timeout: 10s
      - id: check
        service: pyblob
        operation: check
        timeout: 10s
        depends_on: [make]
        retry:
          max_attempts: 2
          initial_delay: 100ms
          max_delay: 1s
          backoff_factor: 2
          jitter: 0
"""


async def test_garbage_is_terminated_and_an_oversized_output_is_dropped(world: World) -> None:
    path = world.dir / "blob.yaml"
    path.write_text(DEFINITION)
    world.engine.apply(path)
    calls: list[tuple[str, Any]] = []
    worker = Worker("pyblob", name="py-blob", ack_wait=2.0)

    @worker.handler("make")
    async def make(ctx: TaskContext, input: dict[str, Any]) -> dict[str, Any]:
        calls.append(("make", input["size"]))
        return {"blob": "x" * input["size"]}

    @worker.handler("check")
    async def check(ctx: TaskContext, input: dict[str, Any]) -> None:
        calls.append(("check", ctx.step_output("make")))
        if input.get("reject"):
            raise StepError.fatal("rejected")

    @worker.compensation("unmake")
    async def unmake(ctx: TaskContext, input: dict[str, Any]) -> None:
        calls.append(("unmake", ctx.step_output("make")))

    run = asyncio.ensure_future(worker.run(nc=world.client.nc, handle_signals=False))
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        js = world.client.nc.jetstream()
        await js.publish("jetsaga.task.pyblob", b"{not a task")

        small = await world.client.start("blob", {"size": 10})
        done = await world.client.wait(small.id, timeout=30)
        assert done.state == "completed" and done.output("make") == {"blob": "x" * 10}

        big = await world.client.start("blob", {"size": 600_000, "reject": True})
        rolled = await world.client.wait(big.id, timeout=30)
        assert rolled.state == "compensated", rolled.status
        make_step = rolled.step("make")
        # The effect happened: a success, with a note in place of the output,
        # so the rollback compensated it.
        assert make_step.state == "compensated"
        assert [a["outcome"]["outcome"] for a in make_step.attempts if a["kind"] == "action"] == [
            "ok"
        ]
        why = make_step.output["jetsaga_output_dropped"]
        assert "handler output is 600011 bytes of JSON, more than the limit of" in why, why
        assert "max_payload" in why and "so it was dropped; the step succeeded" in why
        assert calls[2:] == [
            ("make", 600_000),
            ("check", {"jetsaga_output_dropped": why}),
            ("unmake", {"jetsaga_output_dropped": why}),
        ]

        # The garbage was terminated: nothing is left on the queue, nothing
        # was redelivered, and no handler saw it.
        info = await js.consumer_info("JETSAGA_TASKS", "jetsaga-svc-pyblob")
        assert info.num_ack_pending == 0 and info.num_pending == 0
        assert info.num_redelivered == 0
        assert (await js.stream_info("JETSAGA_TASKS")).state.messages == 0
        assert calls[:2] == [("make", 10), ("check", {"blob": "x" * 10})]
    finally:
        worker.stop()
        await asyncio.wait_for(run, 15)

"""What the worker does with what it cannot use: a message on its queue that
is not a task is terminated (not redelivered, nothing run), and an output
larger than a result may carry fails the step as fatal, with the sizes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from conftest import World

from jetsaga import TaskContext, Worker

DEFINITION = """
sagas:
  blob:
    steps:
      - id: make
        service: pyblob
        operation: make
        timeout: 10s
        retry:
          max_attempts: 2
          initial_delay: 100ms
          max_delay: 1s
          backoff_factor: 2
          jitter: 0
"""


async def test_garbage_is_terminated_and_an_oversized_output_is_fatal(world: World) -> None:
    path = world.dir / "blob.yaml"
    path.write_text(DEFINITION)
    world.engine.apply(path)
    calls: list[dict[str, Any]] = []
    worker = Worker("pyblob", name="py-blob", ack_wait=2.0)

    @worker.handler("make")
    async def make(ctx: TaskContext, input: dict[str, Any]) -> dict[str, Any]:
        calls.append(input)
        return {"blob": "x" * input["size"]}

    run = asyncio.ensure_future(worker.run(nc=world.client.nc, handle_signals=False))
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        js = world.client.nc.jetstream()
        await js.publish("jetsaga.task.pyblob", b"{not a task")

        small = await world.client.start("blob", {"size": 10})
        done = await world.client.wait(small.id, timeout=30)
        assert done.state == "completed" and done.output("make") == {"blob": "x" * 10}

        big = await world.client.start("blob", {"size": 600_000})
        failed = await world.client.wait(big.id, timeout=30)
        assert failed.state == "failed", failed.status
        step = failed.step("make")
        error = step.status["error"]
        assert "handler output is 600011 bytes of JSON, more than the limit of" in error, error
        assert "max_payload" in error
        # fatal: not retried although the policy allows a second attempt.
        assert len(step.attempts) == 1
        assert [c["size"] for c in calls] == [10, 600_000]

        # The garbage was terminated: nothing is left on the queue, nothing
        # was redelivered, and no handler saw it.
        info = await js.consumer_info("JETSAGA_TASKS", "jetsaga-svc-pyblob")
        assert info.num_ack_pending == 0 and info.num_pending == 0
        assert info.num_redelivered == 0
        stream = await js.stream_info("JETSAGA_TASKS")
        assert stream.state.messages == 0, json.dumps(stream.state.__dict__, default=str)
    finally:
        worker.stop()
        await asyncio.wait_for(run, 15)

"""A Python worker under the subject permissions the project ships
(deploy/nats/permissions.conf): its contract needs nothing beyond what its
service's user may do there."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from harness import REPO, Engine, NatsServer

from jetsaga import Client, TaskContext, Worker

DEFINITION = """
sagas:
  pay:
    steps:
      - id: charge
        service: payments
        operation: charge
        compensation: refund
        timeout: 10s
      - id: notify
        service: email
        operation: send
        timeout: 10s
        depends_on: [charge]
"""


def password(config: str, user: str) -> str:
    m = re.search(rf'user: {user}, password: "([^"]+)"', config)
    assert m, user
    return m.group(1)


async def test_workers_run_under_the_shipped_permissions(tmp_path: Path) -> None:
    config = (REPO / "deploy" / "nats" / "permissions.conf").read_text()
    nats = NatsServer(tmp_path, extra_config=config)
    engine = Engine(
        nats,
        tmp_path,
        env={"JETSAGA_NATS_PASSWORD": password(config, "engine")},
        nats_user="engine",
    )
    (tmp_path / "pay.yaml").write_text(DEFINITION)
    op_pw = password(config, "operator")
    engine.cli(
        "def",
        "apply",
        str(tmp_path / "pay.yaml"),
        "--nats-user",
        "operator",
        env={"JETSAGA_NATS_PASSWORD": op_pw},
    )
    client = await Client.connect(nats.url, user="operator", password=op_pw)
    workers = []
    runs = []
    try:
        for service, op in (("payments", "charge"), ("email", "send")):
            w = Worker(service, name=f"py-{service}")

            @w.handler(op)
            async def handle(ctx: TaskContext, input: Any) -> dict[str, str]:
                return {"done": ctx.step_id}

            workers.append(w)
            runs.append(
                asyncio.ensure_future(
                    w.run(
                        nats.url,
                        user=service,
                        password=password(config, service),
                        handle_signals=False,
                    )
                )
            )
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in workers)), 30)
        started = await client.start("pay", {}, idempotency_key="perm-1")
        saga = await client.wait(started.id, timeout=30)
        assert saga.state == "completed", saga.status
        assert saga.output("charge") == {"done": "charge"}
        assert saga.output("notify") == {"done": "notify"}
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*runs, return_exceptions=True)
        await client.close()
        engine.process.kill()
        nats.kill()

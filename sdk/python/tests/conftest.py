"""Fixtures of the integration tests: one nats-server, one engine and a
client per test (see harness.py for where the binaries come from)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import REPO, Engine, NatsServer, Process, python_worker

from jetsaga import Client

EXAMPLES = REPO / "examples" / "python"
BOOKING_WORKERS = EXAMPLES / "booking_workers.py"
DEFINITIONS = REPO / "examples" / "definitions"


@dataclass
class World:
    dir: Path
    nats: NatsServer
    engine: Engine
    client: Client
    procs: list[Process]

    @property
    def ledger_dir(self) -> Path:
        return self.dir / "ledger"

    def booking_workers(
        self, name: str, *args: str, env: dict[str, str] | None = None, wait: bool = True
    ) -> Process:
        """The Python create_booking workers (all four services unless ``--service``)."""
        p = python_worker(
            name,
            BOOKING_WORKERS,
            self.dir,
            self.nats.url,
            "--ledger-dir",
            str(self.ledger_dir),
            "--name",
            name,
            *args,
            env=env,
        )
        self.procs.append(p)
        if wait:
            p.wait_for_log("workers ready")
        return p

    def rust_workers(self, binary: str, name: str, *args: str) -> Process:
        from harness import bin_path

        p = Process(
            name,
            [
                bin_path(binary),
                "--nats-url",
                self.nats.url,
                "--ledger-dir",
                str(self.ledger_dir),
                "--name",
                name,
                *args,
            ],
            self.dir / f"{name}.log",
            {"RUST_LOG": "info"},
        )
        self.procs.append(p)
        p.wait_for_log("workers ready")
        return p


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    nats = NatsServer(tmp_path)
    engine = Engine(nats, tmp_path)
    procs: list[Process] = [engine.process, nats.process]
    try:
        engine.apply(DEFINITIONS / "create_booking.yaml")
        client = await Client.connect(nats.url, timeout=3.0)
        w = World(tmp_path, nats, engine, client, procs)
        try:
            yield w
        finally:
            await client.close()
    finally:
        # Workers first, then the engine, then the server.
        for p in reversed(procs):
            p.kill()

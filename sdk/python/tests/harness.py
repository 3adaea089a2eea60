"""Integration-test harness: real nats-server processes and the real
``jetsaga`` engine binary, and worker processes, each logging to a file.

- nats-server: ``$JETSAGA_NATS_SERVER``, else ``<repo>/.venv/bin/nats-server``
  (``scripts/install-nats``), else ``PATH``. Every server gets a free port on
  127.0.0.1 (never 4222) and its own store directory, and can be killed and
  restarted on both.
- the engine and the Rust example workers: ``$JETSAGA_BIN`` (the engine
  binary itself), else the directory ``$JETSAGA_TARGET_DIR``, else
  ``$CARGO_TARGET_DIR/debug``, else ``<repo>/target/debug``
  (``cargo build --workspace --bins``; ``scripts/test`` does it).

Readiness is awaited on log lines, bounded, failing with the log's tail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
READY_TIMEOUT = 30.0


def nats_server_binary() -> str:
    env = os.environ.get("JETSAGA_NATS_SERVER")
    if env:
        return env
    local = REPO / ".venv" / "bin" / "nats-server"
    if local.is_file():
        return str(local)
    found = shutil.which("nats-server")
    if found:
        return found
    raise RuntimeError("nats-server not found: run scripts/install-nats or set JETSAGA_NATS_SERVER")


def target_dir() -> Path:
    if os.environ.get("JETSAGA_TARGET_DIR"):
        return Path(os.environ["JETSAGA_TARGET_DIR"])
    if os.environ.get("CARGO_TARGET_DIR"):
        d = Path(os.environ["CARGO_TARGET_DIR"])
        return (d if d.is_absolute() else REPO / d) / "debug"
    return REPO / "target" / "debug"


def bin_path(name: str) -> str:
    if name == "jetsaga" and os.environ.get("JETSAGA_BIN"):
        path = Path(os.environ["JETSAGA_BIN"])
    else:
        path = target_dir() / name
    if not path.is_file():
        raise RuntimeError(
            f"{path} not found: run `cargo build --workspace --bins` first (scripts/test does "
            "it), or set JETSAGA_TARGET_DIR / JETSAGA_BIN"
        )
    return str(path)


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 4222:
            return port


def wait_until(what: str, timeout: float, check: Callable[[], Any], every: float = 0.05) -> Any:
    """Polls ``check`` until it returns something truthy, which it returns."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies (Linux), so that a
    test run killed from outside leaves no server behind."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Process:
    """A child process in its own process group, its output in ``log``."""

    def __init__(
        self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawn()

    def spawn(self) -> None:
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        env = {**os.environ, "NO_COLOR": "1", **(self.env or {})}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def text(self, since: int = 0) -> str:
        with open(self.log, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.text().splitlines()[-n:])

    def wait_for_log(
        self, needle: str, timeout: float = READY_TIMEOUT, since: int | None = None
    ) -> str:
        start = self.offset if since is None else since
        deadline = time.monotonic() + timeout
        while True:
            for line in self.text(start).splitlines():
                if needle in line:
                    return line
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}) before logging {needle!r}:\n"
                    f"{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not log {needle!r} within {timeout}s:\n{self.tail()}"
                )
            time.sleep(0.05)

    def count(self, needle: str) -> int:
        return self.text().count(needle)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s:\n{self.tail()}"
            ) from None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        if not self.running:
            assert self.proc is not None
            return self.proc.returncode
        self.signal(signal.SIGTERM)
        try:
            return self.wait_exit(timeout)
        finally:
            self.kill()


class NatsServer:
    """A nats-server with JetStream on a free port, its own store dir."""

    def __init__(self, workdir: Path, name: str = "nats", extra_config: str = "") -> None:
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.store = self.dir / "store"
        self.config = self.dir / "nats.conf"
        self.config.write_text(
            f'server_name: "{name}"\nlisten: "127.0.0.1:{self.port}"\n'
            f'jetstream {{\n  store_dir: "{self.store}"\n}}\n{extra_config}\n'
        )
        self.process = Process(
            name, [nats_server_binary(), "--config", str(self.config)], self.dir / "nats.log"
        )
        self.wait_ready()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        self.process.wait_for_log("Server is ready")

    def kill(self) -> None:
        self.process.kill()

    def restart(self) -> None:
        self.process.kill()
        self.process.spawn()
        self.wait_ready()


class Engine:
    """``jetsaga server`` with its own store dir (``env``: extra variables,
    ``JETSAGA_NATS_PASSWORD`` say)."""

    def __init__(
        self,
        nats: NatsServer,
        workdir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        nats_user: str | None = None,
    ) -> None:
        self.nats = nats
        self.data = workdir / "engine"
        user = ["--nats-user", nats_user] if nats_user else []
        argv = [
            bin_path("jetsaga"), "--nats-url", nats.url, "server", "--data-dir", str(self.data),
            *user, *extra,
        ]  # fmt: skip
        self.process = Process(
            "engine", argv, workdir / "engine.log", {"JETSAGA_LOG": "info", **(env or {})}
        )
        self.process.wait_for_log("engine ready")

    def cli(self, *args: str, env: dict[str, str] | None = None) -> str:
        out = subprocess.run(
            [bin_path("jetsaga"), *args, "--nats-url", self.nats.url],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})},
        )
        if out.returncode != 0:
            raise AssertionError(f"jetsaga {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
        return out.stdout

    def apply(self, path: Path) -> None:
        self.cli("def", "apply", str(path))


def python_worker(
    name: str,
    script: Path,
    workdir: Path,
    nats_url: str,
    *args: str,
    env: dict[str, str] | None = None,
) -> Process:
    """Starts a Python worker script, waiting until every worker is ready."""
    argv = [sys.executable, "-u", str(script), "--nats-url", nats_url, *args]
    return Process(name, argv, workdir / f"{name}.log", env)


def ledger(path: Path) -> list[dict[str, Any]]:
    import json

    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def effects(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if "duplicate_of" not in e]


def duplicates(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if "duplicate_of" in e]


@contextlib.contextmanager
def stopping(*procs: Process) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.kill()


def ledgers(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """Every service's ledger lines under ``directory``, by service."""
    return {p.stem: ledger(p) for p in sorted(directory.glob("*.jsonl"))}


def effect_ops(entries: list[dict[str, Any]]) -> list[str]:
    """The operations of the effect lines (duplicates left out), sorted."""
    return sorted(e["operation"] for e in effects(entries))

"""The effect ledger of the example workers, the same file format and rules
as the Rust examples' (examples/src/ledger.rs), so Python and Rust workers of
one service can share a ledger file.

Each service appends one JSON line per effect to ``<dir>/<service>.jsonl``,
fsynced before the handler reports success. The ledger stands in for a
downstream service that honours idempotency keys: the first time a key is
seen its effect line is written; every later attempt with that key writes a
``{"duplicate_of": key, ...}`` line instead. Appends happen under an
exclusive ``flock`` after reading what other processes appended, so
suppression holds across processes (and languages) too.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIELDS = (
    "at_ms", "service", "operation", "kind", "saga_id", "step_id", "idempotency_key",
    "attempt", "worker", "effect",
)  # fmt: skip


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Entry:
    """One line: an effect, or (``duplicate_of`` set) a suppressed repeat."""

    at_ms: int
    service: str
    operation: str
    kind: str
    saga_id: str
    step_id: str
    idempotency_key: str
    attempt: int
    worker: str
    effect: str

    def line(self, duplicate: bool) -> bytes:
        doc: dict[str, Any] = {}
        if duplicate:
            doc["duplicate_of"] = self.idempotency_key
        doc.update({f: getattr(self, f) for f in FIELDS})
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class Ledger:
    """The ledger of one service: ``<dir>/<service>.jsonl``."""

    def __init__(self, directory: str | os.PathLike[str], service: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.path = Path(directory) / f"{service}.jsonl"
        self.service = service
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._applied: set[str] = set()
        self._read_upto = 0
        self._lock = threading.Lock()
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            try:
                self._catch_up()
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _catch_up(self) -> None:
        size = os.fstat(self._fd).st_size
        if size <= self._read_upto:
            return
        data = os.pread(self._fd, size - self._read_upto, self._read_upto)
        last_nl = data.rfind(b"\n")
        if last_nl < 0:
            return
        for line in data[: last_nl + 1].split(b"\n"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and "duplicate_of" not in doc and "idempotency_key" in doc:
                self._applied.add(doc["idempotency_key"])
        self._read_upto += last_nl + 1

    def apply(self, entry: Entry) -> bool:
        """Writes the effect (``True``) or, for a key seen before, a
        duplicate line (``False``); fsynced before it returns."""
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._catch_up()
                first = entry.idempotency_key not in self._applied
                if os.fstat(self._fd).st_size > self._read_upto:
                    os.write(self._fd, b"\n")  # a torn line: end it
                os.write(self._fd, entry.line(duplicate=not first))
                os.fsync(self._fd)
                self._read_upto = os.fstat(self._fd).st_size
                if first:
                    self._applied.add(entry.idempotency_key)
                return first
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    async def apply_async(self, entry: Entry) -> bool:
        return await asyncio.to_thread(self.apply, entry)

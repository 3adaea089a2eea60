"""Outcomes and result messages (docs/PROTOCOL.md, "Result messages"), and the
cap on what a result may carry."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from .task import Task

Status = Literal["ok", "retryable", "fatal"]

log = logging.getLogger("jetsaga.worker")

#: nats-server's default ``max_payload``, assumed while the server's is unknown.
NATS_DEFAULT_MAX_PAYLOAD = 1024 * 1024
#: The engine's default ``max_payload``.
ENGINE_DEFAULT_MAX_PAYLOAD = 512 * 1024
#: Room kept in a result message for everything but the handler's output.
ENVELOPE_ROOM = 16 * 1024
#: What the engine adds to ``max_payload`` for its streams' largest message.
STREAM_HEADROOM = 64 * 1024
#: The one field of the output a success reports in place of an output too
#: large to carry; its value says why it was dropped.
OUTPUT_DROPPED = "jetsaga_output_dropped"


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8, as the engine writes it; raises ValueError/TypeError."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@dataclass(frozen=True)
class Outcome:
    """What happened to one attempt: ``ok`` (with ``output``), ``retryable``
    (with ``error`` and maybe ``retry_after_ms``) or ``fatal`` (with ``error``)."""

    status: Status
    output: Any = None
    error: str = ""
    retry_after_ms: int | None = None

    @classmethod
    def ok(cls, output: Any = None) -> Outcome:
        return cls("ok", output=output)

    @classmethod
    def fatal(cls, error: str) -> Outcome:
        return cls("fatal", error=error)

    @classmethod
    def retryable(cls, error: str, retry_after_ms: int | None = None) -> Outcome:
        return cls("retryable", error=error, retry_after_ms=retry_after_ms)

    @property
    def terminal(self) -> bool:
        """Whether it is recorded (``ok`` or ``fatal``); ``retryable`` never is."""
        return self.status != "retryable"

    def to_json(self) -> dict[str, Any]:
        if self.status == "ok":
            return {"status": "ok", "output": self.output}
        if self.status == "fatal":
            return {"status": "fatal", "error": self.error}
        doc: dict[str, Any] = {"status": "retryable", "error": self.error}
        if self.retry_after_ms is not None:
            doc["retry_after_ms"] = self.retry_after_ms
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> Outcome:
        """Reads an outcome object; raises ValueError when it is not one."""
        if not isinstance(doc, dict):
            raise ValueError("an outcome is a JSON object")
        status = doc.get("status")
        if status == "ok":
            return cls.ok(doc.get("output"))
        error = doc.get("error")
        if not isinstance(error, str):
            raise ValueError(f"outcome {status!r} without a string `error`")
        if status == "fatal":
            return cls.fatal(error)
        if status == "retryable":
            after = doc.get("retry_after_ms")
            if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
                raise ValueError("`retry_after_ms` is not an integer")
            return cls.retryable(error, after)
        raise ValueError(f"unknown outcome status {status!r}")


@dataclass(frozen=True)
class RecordedResult:
    """A result message as read back from a record subject."""

    saga_id: str
    step_id: str
    kind: str
    attempt: int
    outcome: Outcome

    @classmethod
    def decode(cls, payload: bytes) -> RecordedResult:
        """Raises ValueError when ``payload`` is not a result message."""
        doc = json.loads(payload)
        if not isinstance(doc, dict):
            raise ValueError("a result is a JSON object")
        fields = {k: doc.get(k) for k in ("saga_id", "step_id", "kind")}
        for name, value in fields.items():
            if not isinstance(value, str):
                raise ValueError(f"result field `{name}` is missing or not a string")
        attempt = doc.get("attempt")
        if isinstance(attempt, bool) or not isinstance(attempt, int):
            raise ValueError("result field `attempt` is missing or not an integer")
        return cls(
            saga_id=str(fields["saga_id"]),
            step_id=str(fields["step_id"]),
            kind=str(fields["kind"]),
            attempt=attempt,
            outcome=Outcome.from_json(doc.get("outcome")),
        )

    def is_of(self, task: Task) -> bool:
        """Whether this record was written for ``task``'s own attempt."""
        return (
            self.saga_id == task.saga_id
            and self.step_id == task.step_id
            and self.kind == task.kind
            and self.attempt == task.attempt
        )


def result_body(task: Task, outcome: Outcome, *, replayed: bool, worker: str) -> bytes:
    """The JSON body of the result of ``task``'s attempt."""
    return dumps(
        {
            "saga_id": task.saga_id,
            "step_id": task.step_id,
            "kind": task.kind,
            "attempt": task.attempt,
            "service": task.service,
            "outcome": outcome.to_json(),
            "replayed": replayed,
            "worker": worker,
        }
    )


def unserializable(error: Exception) -> Outcome:
    """The success of a handler whose output is not JSON: its effect
    happened, so it stays a success, its output replaced by a note."""
    why = (
        f"handler output cannot be serialized as JSON ({error}), so it was dropped; the step "
        "succeeded (and is compensated on a rollback); return JSON-ready data"
    )
    log.error("%s", why)
    return Outcome.ok({OUTPUT_DROPPED: why})


def _envelope_room(max_payload: int) -> int:
    return min(ENVELOPE_ROOM, max_payload // 4)


def json_str_size(text: str) -> int:
    """Bytes of ``text`` as a JSON string, quotes included."""
    return len(dumps(text))


@dataclass(frozen=True)
class OutputLimit:
    """Largest handler output accepted, in bytes of JSON, and what sets it."""

    bytes: int
    source: str

    @classmethod
    def derive(
        cls,
        server_max_payload: int,
        engine_max_payload: int | None,
        configured: int | None,
    ) -> OutputLimit:
        """The smallest of the server's and the engine's ``max_payload``, each
        less the envelope room, and the worker's own ``max_output_bytes``."""
        server = server_max_payload or NATS_DEFAULT_MAX_PAYLOAD
        room = _envelope_room(server)
        limit = cls(
            server - room,
            f"the NATS server's max_payload of {server} bytes less {room} for the result envelope",
        )
        if engine_max_payload:
            room = _envelope_room(engine_max_payload)
            if engine_max_payload - room < limit.bytes:
                limit = cls(
                    engine_max_payload - room,
                    f"the engine's max_payload of {engine_max_payload} bytes less {room} "
                    "for the result envelope",
                )
        if configured is not None and configured < limit.bytes:
            limit = cls(configured, "the worker's max_output_bytes")
        return limit

    @classmethod
    def offline(cls, configured: int | None = None) -> OutputLimit:
        """Without a server: both defaults, lowered by ``configured``."""
        return cls.derive(NATS_DEFAULT_MAX_PAYLOAD, ENGINE_DEFAULT_MAX_PAYLOAD, configured)

    def check(self, outcome: Outcome) -> Outcome:
        """``outcome`` as it can be carried: a success whose output is over
        the limit stays a success (its effect happened, and a rollback must
        compensate it) with the output replaced by ``{OUTPUT_DROPPED: why}``;
        an error text over the limit is cut to fit (the status stays)."""
        if outcome.status == "ok":
            try:
                size = len(dumps(outcome.output))
            except (TypeError, ValueError) as e:
                return unserializable(e)
            if size <= self.bytes:
                return outcome
            why = (
                f"handler output is {size} bytes of JSON, more than the limit of {self.bytes} "
                f"({self.source}), so it was dropped; the step succeeded (and is compensated "
                "on a rollback); store large data elsewhere and return a reference to it"
            )
            log.error("%s", why)
            return Outcome.ok({OUTPUT_DROPPED: why})
        error = self.cap_error(outcome.error)
        if error is outcome.error:
            return outcome
        return Outcome(outcome.status, error=error, retry_after_ms=outcome.retry_after_ms)

    def cap_error(self, error: str) -> str:
        """``error``, or its beginning and a note of the cut, within the limit."""
        size = json_str_size(error)
        if size <= self.bytes:
            return error
        note = (
            f"… [error text cut: it was {size} bytes of JSON, more than the limit of "
            f"{self.bytes} ({self.source})]"
        )
        room = max(0, self.bytes - json_str_size(note))
        used = 0
        end = 0
        for i, c in enumerate(error):
            used += json_str_size(c) - 2
            if used > room:
                break
            end = i + 1
        cut = error[:end]
        if json_str_size(cut) + json_str_size(note) - 2 <= self.bytes:
            cut += note
        return cut

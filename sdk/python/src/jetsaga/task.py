"""Task messages and the context a handler gets (docs/PROTOCOL.md, "Task messages")."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

Kind = Literal["action", "compensation"]
KINDS: tuple[Kind, ...] = ("action", "compensation")

_U32_MAX = 2**32 - 1


class TaskDecodeError(ValueError):
    """The message is not a jetsaga task."""


@dataclass(frozen=True)
class Task:
    """One task, as the engine publishes it on ``<prefix>.task.<service>``."""

    saga_id: str
    saga_name: str
    step_id: str
    kind: Kind
    service: str
    operation: str
    attempt: int
    idempotency_key: str
    input: Any
    timeout_ms: int
    context: Mapping[str, Any] = field(default_factory=dict)
    partition: int = 0
    #: The task message's ``Jetsaga-Result-Token`` header, if any.
    result_token: str | None = None

    @classmethod
    def decode(cls, payload: bytes) -> Task:
        """Decodes a task message body; raises :class:`TaskDecodeError`."""
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as e:
            raise TaskDecodeError(f"not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise TaskDecodeError(f"not a JSON object but {type(doc).__name__}")
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Task:
        def text(name: str) -> str:
            value = doc.get(name)
            if not isinstance(value, str):
                raise TaskDecodeError(f"field `{name}` is missing or not a string")
            return value

        def integer(name: str, *, default: int | None = None, least: int = 0) -> int:
            value = doc.get(name)
            if value is None and default is not None:
                return default
            if isinstance(value, bool) or not isinstance(value, int):
                raise TaskDecodeError(f"field `{name}` is missing or not an integer")
            if not least <= value <= (2**64 - 1 if name == "timeout_ms" else _U32_MAX):
                raise TaskDecodeError(f"field `{name}` is out of range: {value}")
            return value

        kind = text("kind")
        if kind not in KINDS:
            raise TaskDecodeError(f"field `kind` is {kind!r}, not 'action' or 'compensation'")
        context = doc.get("context")
        if context is None:
            context = {}
        if not isinstance(context, dict):
            raise TaskDecodeError("field `context` is not an object")
        return cls(
            saga_id=text("saga_id"),
            saga_name=text("saga_name"),
            step_id=text("step_id"),
            kind=kind,
            service=text("service"),
            operation=text("operation"),
            attempt=integer("attempt"),
            idempotency_key=text("idempotency_key"),
            input=doc.get("input"),
            timeout_ms=integer("timeout_ms"),
            context=context,
            partition=integer("partition", default=0),
        )


class TaskContext:
    """What a handler knows about the task it runs.

    ``deadline`` is when the worker stops waiting for the handler (the
    task's ``timeout_ms`` from when the worker received it), as an aware UTC
    datetime; :meth:`time_left` gives the seconds left.
    """

    def __init__(self, task: Task, received: float | None = None) -> None:
        self._task = task
        self._received_mono = time.monotonic() if received is None else received
        self._deadline_mono = self._received_mono + task.timeout_ms / 1000.0
        self.deadline: datetime = datetime.now(timezone.utc) + timedelta(
            seconds=self._deadline_mono - time.monotonic()
        )

    @property
    def task(self) -> Task:
        """The task message itself."""
        return self._task

    @property
    def saga_id(self) -> str:
        return self._task.saga_id

    @property
    def saga_name(self) -> str:
        return self._task.saga_name

    @property
    def step_id(self) -> str:
        return self._task.step_id

    @property
    def kind(self) -> Kind:
        """``"action"`` or ``"compensation"``."""
        return self._task.kind

    @property
    def service(self) -> str:
        return self._task.service

    @property
    def operation(self) -> str:
        return self._task.operation

    @property
    def attempt(self) -> int:
        """Attempt number of this kind, from 1."""
        return self._task.attempt

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt of this step's action (or compensation):
        pass it to the services you call so a repeated attempt has no second
        effect."""
        return self._task.idempotency_key

    @property
    def input(self) -> Any:
        """The saga's input, as given at start (``None`` if none was)."""
        return self._task.input

    @property
    def partition(self) -> int:
        return self._task.partition

    @property
    def deadline_monotonic(self) -> float:
        """The deadline on the ``time.monotonic()`` clock."""
        return self._deadline_mono

    def time_left(self) -> float:
        """Seconds until the deadline (negative once past)."""
        return self._deadline_mono - time.monotonic()

    def step_output(self, step_id: str) -> Any:
        """The output of an earlier succeeded step (for a compensation, also
        the compensated step's own), ``None`` when there is none."""
        return self._task.context.get(step_id)

    def has_output(self, step_id: str) -> bool:
        """Whether ``step_id`` has an output in this task's context."""
        return step_id in self._task.context

    def __repr__(self) -> str:
        t = self._task
        return (
            f"TaskContext(saga_id={t.saga_id!r}, step_id={t.step_id!r}, kind={t.kind!r}, "
            f"operation={t.operation!r}, attempt={t.attempt})"
        )

"""A client of the engine's request API (docs/PROTOCOL.md, "The request API"):
``<prefix>.api.<op>`` over core NATS, every reply ``{"ok": ...}`` or
``{"error": {"code", "message"}}``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .connection import NatsOptions, connect
from .errors import EngineError
from .names import DEFAULT_PREFIX, Names

#: Codes after which :meth:`Client.wait` asks again (until its deadline).
TRANSIENT_CODES = frozenset({"E-TIMEOUT", "E-NO-ENGINE", "E-UNAVAILABLE", "E-NO-LEADER"})

TERMINAL_STATES = frozenset(
    {"completed", "compensated", "failed", "partially_compensated", "cancelled"}
)


@dataclass(frozen=True)
class Started:
    """The answer to a start: the saga's ``id``, whether this call
    ``created`` it, and whether it waits in the start queue (``queued``)."""

    id: str
    created: bool
    queued: bool = False


@dataclass(frozen=True)
class Step:
    """One step of a saga as the engine reports it."""

    id: str
    state: str
    attempts: list[dict[str, Any]]
    output: Any = None
    status: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Saga:
    """A saga's detail (``saga.get``, ``saga.cancel``, ``saga.retry``)."""

    id: str
    name: str
    state: str
    status: dict[str, Any]
    input: Any
    idempotency_key: str | None
    steps: list[Step]
    created_at: int
    updated_at: int
    finished_at: int | None
    queue_position: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def reason(self) -> str | None:
        """Why it compensated, failed or was cancelled, if it says."""
        reason = self.status.get("reason")
        return reason if isinstance(reason, str) else None

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(f"saga {self.name} has no step {step_id!r}")

    def output(self, step_id: str) -> Any:
        """The output of step ``step_id`` (``None`` when it has none)."""
        return self.step(step_id).output

    @classmethod
    def from_detail(cls, detail: Mapping[str, Any]) -> Saga:
        saga = detail["saga"]
        definition = detail.get("definition") or {}
        def_steps = definition.get("steps") or []
        steps = []
        for i, s in enumerate(saga.get("steps") or []):
            step_id = s.get("id") or (def_steps[i]["id"] if i < len(def_steps) else str(i))
            status = s.get("status") or {}
            steps.append(
                Step(
                    id=step_id,
                    state=str(status.get("state", "")),
                    attempts=list(s.get("attempts") or []),
                    output=s.get("output"),
                    status=dict(status),
                    raw=dict(s),
                )
            )
        status = saga.get("status") or {}
        return cls(
            id=saga["id"],
            name=saga["name"],
            state=str(status.get("state", "")),
            status=dict(status),
            input=saga.get("input"),
            idempotency_key=saga.get("idempotency_key"),
            steps=steps,
            created_at=int(saga.get("created_at") or 0),
            updated_at=int(saga.get("updated_at") or 0),
            finished_at=saga.get("finished_at"),
            queue_position=detail.get("queue_position"),
            raw=dict(detail),
        )


@dataclass(frozen=True)
class SagaSummary:
    """One saga of a list."""

    id: str
    name: str
    state: str
    steps_done: int
    steps_total: int
    created_at: int
    updated_at: int
    finished_at: int | None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SagaSummary:
        return cls(
            id=doc["id"],
            name=doc["name"],
            state=doc["state"],
            steps_done=int(doc.get("steps_done") or 0),
            steps_total=int(doc.get("steps_total") or 0),
            created_at=int(doc.get("created_at") or 0),
            updated_at=int(doc.get("updated_at") or 0),
            finished_at=doc.get("finished_at"),
        )


class Client:
    """The engine's request API. Create with :meth:`connect`."""

    def __init__(
        self, nc: NATS, *, prefix: str = DEFAULT_PREFIX, timeout: float = 10.0, own: bool = False
    ) -> None:
        self._nc = nc
        self._names = Names(prefix)
        self._timeout = timeout
        self._own = own

    @classmethod
    async def connect(
        cls,
        nats_url: str | Sequence[str] | None = None,
        *,
        nc: NATS | None = None,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 10.0,
        creds: str | None = None,
        nkey: str | None = None,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_required: bool = False,
    ) -> Client:
        """Connects to NATS (or uses ``nc``, which :meth:`close` then leaves open)."""
        if nc is not None:
            return cls(nc, prefix=prefix, timeout=timeout)
        options = NatsOptions.from_env(
            url=nats_url,
            creds=creds,
            nkey=nkey,
            token=token,
            user=user,
            password=password,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_required=tls_required or None,
            name="jetsaga-py-client",
        )
        return cls(await connect(options), prefix=prefix, timeout=timeout, own=True)

    @property
    def nc(self) -> NATS:
        return self._nc

    async def close(self) -> None:
        if self._own:
            await self._nc.drain()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def request(
        self,
        op: str,
        body: Mapping[str, Any],
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Sends request ``op`` and returns the ``ok`` value; raises :class:`EngineError`."""
        subject = self._names.api(op)
        try:
            reply = await self._nc.request(
                subject,
                json.dumps(body).encode(),
                timeout=timeout or self._timeout,
                headers=headers,
            )
        except nats.errors.NoRespondersError:
            raise EngineError(
                "E-NO-ENGINE",
                f"no engine answers on {subject}: is `jetsaga server` running "
                f"with prefix {self._names.prefix!r}?",
            ) from None
        except nats.errors.TimeoutError:
            raise EngineError(
                "E-TIMEOUT", f"no answer to {op} within {timeout or self._timeout}s"
            ) from None
        try:
            envelope = json.loads(reply.data)
        except ValueError:
            raise EngineError("E-BAD-REPLY", f"{op}: the reply is not JSON") from None
        if isinstance(envelope, dict) and "ok" in envelope:
            return envelope["ok"]
        if isinstance(envelope, dict) and isinstance(envelope.get("error"), dict):
            err = envelope["error"]
            raise EngineError(str(err.get("code", "E-UNKNOWN")), str(err.get("message", "")))
        raise EngineError("E-BAD-REPLY", f"{op}: the reply is not an envelope: {envelope!r}")

    async def start(
        self,
        saga: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        traceparent: str | None = None,
    ) -> Started:
        """Starts saga ``saga`` with ``input``; the same key always answers the same saga."""
        body: dict[str, Any] = {"saga": saga, "input": input}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        headers = {"traceparent": traceparent} if traceparent else None
        ok = await self.request("saga.start", body, headers=headers)
        return Started(
            id=ok["saga_id"], created=bool(ok["created"]), queued=bool(ok.get("queued", False))
        )

    async def status(self, saga_id: str) -> Saga:
        """The saga's detail; ``E-NOT-FOUND`` for an unknown id."""
        return Saga.from_detail(await self.request("saga.get", {"id": saga_id}))

    async def get_by_key(self, idempotency_key: str) -> Saga:
        """The saga the start key ``idempotency_key`` started; ``E-NOT-FOUND`` if none."""
        return Saga.from_detail(
            await self.request("saga.get", {"idempotency_key": idempotency_key})
        )

    async def list(
        self,
        *,
        state: str | None = None,
        name: str | None = None,
        limit: int | None = None,
        before: str | None = None,
        created_after: int | None = None,
        created_before: int | None = None,
    ) -> list[SagaSummary]:
        """Sagas, newest first (one page: pass the last id as ``before`` for the next)."""
        body = {
            k: v
            for k, v in {
                "state": state,
                "name": name,
                "limit": limit,
                "before": before,
                "created_after": created_after,
                "created_before": created_before,
            }.items()
            if v is not None
        }
        return [SagaSummary.from_json(s) for s in await self.request("saga.list", body)]

    async def cancel(
        self, saga_id: str, *, compensate: bool = False, reason: str | None = None
    ) -> Saga:
        """Cancels the saga (rolling it back with ``compensate``)."""
        body: dict[str, Any] = {"id": saga_id, "compensate": compensate}
        if reason is not None:
            body["reason"] = reason
        return Saga.from_detail(await self.request("saga.cancel", body))

    async def retry(self, saga_id: str, *, compensation_only: bool = False) -> Saga:
        """Retries a saga that ended badly."""
        return Saga.from_detail(
            await self.request(
                "saga.retry", {"id": saga_id, "compensation_only": compensation_only}
            )
        )

    async def delete(self, saga_id: str) -> None:
        """Deletes a terminal saga."""
        await self.request("saga.delete", {"id": saga_id})

    async def wait(self, saga_id: str, timeout: float = 60.0, *, poll: float = 0.5) -> Saga:
        """Waits until the saga is terminal and returns it. Follows the
        engine's progress notifications and reads the saga on each one, and
        every ``poll`` seconds anyway (notifications are best effort).
        A read that times out or finds no engine (a reconnect, an engine
        restart or takeover) is tried again. Raises
        ``EngineError("E-TIMEOUT")`` when ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        woken = asyncio.Event()

        async def on_progress(_: Msg) -> None:
            woken.set()

        sub = await self._nc.subscribe(self._names.progress(saga_id), cb=on_progress)
        state = "unknown"
        try:
            while True:
                left = deadline - time.monotonic()
                try:
                    saga = Saga.from_detail(
                        await self.request(
                            "saga.get", {"id": saga_id}, timeout=max(0.1, min(self._timeout, left))
                        )
                    )
                except EngineError as e:
                    # A reconnect or an engine takeover in progress: ask again.
                    if e.code not in TRANSIENT_CODES:
                        raise
                else:
                    if saga.terminal:
                        return saga
                    state = saga.state
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EngineError(
                        "E-TIMEOUT", f"saga {saga_id} is still {state} after {timeout}s"
                    )
                woken.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout=min(poll, left))
        finally:
            await sub.unsubscribe()

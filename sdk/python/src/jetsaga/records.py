"""Outcome records: a step's terminal result, written once on its record
subject ``<prefix>.outcome.<service>.<partition>.<key>`` of the outcomes
stream (``Nats-Expected-Last-Subject-Sequence: 0``: the first write wins),
is at once the engine's copy of the result and the step's idempotency record.

Lookups read the last message on that subject: with a direct get when the
stream has one replica and allows direct gets (that replica holds every
acknowledged write), else with ``STREAM.MSG.GET``, which the leader answers.
A legacy idempotency bucket (``<PREFIX>_IDEMPOTENCY``, from before the
outcomes stream) is read too while it exists (``STREAM.MSG.GET``), never
written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS

from .jetstream import (
    STREAM_NOT_FOUND,
    WRONG_LAST_SEQUENCE,
    JsError,
    StoredMsg,
    last_msg,
    publish,
)
from .names import Names
from .outcome import Outcome, RecordedResult
from .task import Task

log = logging.getLogger("jetsaga.worker")


class RecordUnreadable(Exception):
    """A record exists but is not a jetsaga result: a person must look at it."""


@dataclass(frozen=True)
class Ours:
    """Our outcome is the record (maybe from an earlier try whose ack was lost)."""


@dataclass(frozen=True)
class Theirs:
    """Another run recorded its outcome first: ``result``, the step's
    outcome (when it answers this very attempt, the engine has it already
    and nothing more is published)."""

    result: RecordedResult


Recorded = Ours | Theirs


def reads_direct(config: dict[str, Any]) -> bool:
    """Whether a stream of this config is read with direct gets."""
    return bool(config.get("allow_direct")) and int(config.get("num_replicas") or 1) <= 1


class Records:
    """The outcomes stream of one installation, and the legacy bucket if any."""

    def __init__(self, nc: NATS, names: Names, *, direct: bool, legacy: bool) -> None:
        self._nc = nc
        self._names = names
        self._direct = direct
        self._legacy = legacy

    @property
    def direct(self) -> bool:
        return self._direct

    @property
    def has_legacy(self) -> bool:
        return self._legacy

    async def lookup(self, task: Task) -> RecordedResult | Outcome | None:
        """The recorded result of ``task``'s step (an Outcome alone when it
        comes from the legacy bucket), ``None`` when there is none. Raises
        :class:`JsError` when the lookup fails, :class:`RecordUnreadable`
        when a record does not decode."""
        subject = self._names.outcome(task.service, task.partition, task.idempotency_key)
        msg = await last_msg(self._nc, self._names.outcomes_stream, subject, direct=self._direct)
        if msg is not None:
            return self._decode(msg)
        if not self._legacy:
            return None
        bucket = self._names.legacy_bucket
        try:
            msg = await last_msg(
                self._nc, f"KV_{bucket}", f"$KV.{bucket}.{task.idempotency_key}", direct=False
            )
        except JsError as e:
            if e.err_code != STREAM_NOT_FOUND:
                raise JsError(
                    e.code,
                    e.err_code,
                    f"{e.description}; reading the bucket of earlier records {bucket} needs "
                    f"$JS.API.STREAM.MSG.GET.KV_{bucket} (docs/PROTOCOL.md, subject "
                    "permissions): allow it, or delete the bucket once its records aged out",
                ) from None
            log.info(
                "the bucket of earlier idempotency records %s is gone; no longer looking there",
                bucket,
            )
            self._legacy = False
            return None
        if msg is None or "KV-Operation" in msg.headers:
            return None
        try:
            return Outcome.from_json(json.loads(msg.data))
        except ValueError as e:
            raise RecordUnreadable(
                f"the legacy idempotency record {task.idempotency_key} in {bucket} is not an "
                f"outcome ({e}); inspect it with `nats kv get {bucket} {task.idempotency_key}`"
            ) from None

    def _decode(self, msg: StoredMsg) -> RecordedResult:
        try:
            return RecordedResult.decode(msg.data)
        except ValueError as e:
            raise RecordUnreadable(
                f"the record on {msg.subject} (sequence {msg.seq} of "
                f"{self._names.outcomes_stream}) is not a jetsaga result ({e})"
            ) from None

    async def record(self, task: Task, body: bytes, headers: dict[str, str]) -> Recorded:
        """Publishes the result ``body`` of a terminal outcome on the task's
        record subject, first write wins. Raises :class:`JsError` on other
        errors (the caller retries)."""
        subject = self._names.outcome(task.service, task.partition, task.idempotency_key)
        try:
            ack = await publish(
                self._nc,
                subject,
                body,
                {**headers, "Nats-Expected-Last-Subject-Sequence": "0"},
            )
            if not ack.duplicate:
                return Ours()
            # A message with this attempt's id was stored within the
            # duplicate window (a server that checks the id before the
            # expectation): read which outcome the record holds.
        except JsError as e:
            if e.err_code != WRONG_LAST_SEQUENCE:
                # 10164 (a replicated stream still writing the subject's
                # record) and the rest: the caller tries again.
                raise
        found = await last_msg(self._nc, self._names.outcomes_stream, subject, direct=self._direct)
        if found is None:
            raise JsError(0, 0, f"{subject}: a record exists but could not be read back yet")
        theirs = self._decode(found)
        if theirs.is_of(task) and theirs.outcome.to_json() == json.loads(body).get("outcome"):
            # Ours, written by an earlier try whose ack was lost.
            return Ours()
        return Theirs(theirs)

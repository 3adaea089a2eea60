"""Subject, stream and consumer names of one jetsaga installation.

Every name derives from the installation's subject prefix (default
``jetsaga``); see docs/PROTOCOL.md, "Names".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "jetsaga"

_PREFIX_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def _stream_prefix(prefix: str) -> str:
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in prefix).upper()


@dataclass(frozen=True)
class Names:
    """The names derived from ``prefix``."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        tokens = self.prefix.split(".")
        if not self.prefix or not all(_PREFIX_TOKEN.fullmatch(t) for t in tokens):
            raise ValueError(
                f"invalid subject prefix {self.prefix!r}: one or more tokens of ASCII letters, "
                "digits, '_' and '-', separated by dots"
            )

    @property
    def stream_prefix(self) -> str:
        """``<PREFIX>``: upper-cased, non-alphanumerics replaced by ``_``."""
        return _stream_prefix(self.prefix)

    @property
    def tasks_stream(self) -> str:
        return f"{self.stream_prefix}_TASKS"

    @property
    def results_stream(self) -> str:
        return f"{self.stream_prefix}_RESULTS"

    @property
    def outcomes_stream(self) -> str:
        return f"{self.stream_prefix}_OUTCOMES"

    @property
    def legacy_bucket(self) -> str:
        """The idempotency bucket of the protocol before the outcomes stream."""
        return f"{self.stream_prefix}_IDEMPOTENCY"

    def task(self, service: str) -> str:
        return f"{self.prefix}.task.{service}"

    def service_consumer(self, service: str) -> str:
        return f"{self.prefix.replace('.', '-')}-svc-{service}"

    def result(self, service: str, partition: int) -> str:
        """Where a result goes: ``<prefix>.result.S`` for partition 0, else ``...S.P``."""
        if partition == 0:
            return f"{self.prefix}.result.{service}"
        return f"{self.prefix}.result.{service}.{partition}"

    def outcome(self, service: str, partition: int, idempotency_key: str) -> str:
        """The record subject of a task: ``<prefix>.outcome.S.P.K`` (P always written)."""
        return f"{self.prefix}.outcome.{service}.{partition}.{idempotency_key}"

    def api(self, op: str) -> str:
        return f"{self.prefix}.api.{op}"

    def progress(self, saga_id: str) -> str:
        return f"{self.prefix}.progress.{saga_id}"

    def start(self, saga: str) -> str:
        return f"{self.prefix}.start.{saga}"


#: Header of a task: a random token, the same on every delivery of the task,
#: that its results carry at the end of their ``Nats-Msg-Id``.
HEADER_RESULT_TOKEN = "Jetsaga-Result-Token"

_RESULT_TOKEN = re.compile(r"[A-Za-z0-9]{1,64}")


def result_msg_id(
    saga_id: str, step_id: str, kind: str, attempt: int, token: str | None = None
) -> str:
    """``Nats-Msg-Id`` of a result: ``result.<saga>.<step>.<kind>.<attempt>``,
    followed by ``.<token>`` when the task carries a usable result token
    (1 to 64 ASCII letters and digits)."""
    plain = f"result.{saga_id}.{step_id}.{kind}.{attempt}"
    if token is not None and _RESULT_TOKEN.fullmatch(token):
        return f"{plain}.{token}"
    return plain


_KEY_TOKEN = re.compile(r"[-/_=.A-Za-z0-9]+")


def is_valid_key(key: str) -> bool:
    """Whether ``key`` can be the tail of a subject (a valid NATS KV key)."""
    return (
        bool(_KEY_TOKEN.fullmatch(key))
        and not key.startswith(".")
        and not key.endswith(".")
        and ".." not in key
    )

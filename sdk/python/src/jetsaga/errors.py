"""Errors: :class:`StepError` is what a handler raises when its effect did not
happen; :class:`EngineError` is what the engine answered a client request
with; :class:`WorkerError` is what setting up a worker can fail with."""

from __future__ import annotations


class StepError(Exception):
    """Why a handler's effect did not happen, and whether trying again can help.

    Raise ``StepError.retryable(...)`` (the engine tries the step again, not
    before ``retry_after`` seconds when given) or ``StepError.fatal(...)``
    (the step fails for good and the saga compensates).
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.is_retryable = retryable
        self.retry_after = retry_after

    @classmethod
    def retryable(cls, message: str, *, retry_after: float | None = None) -> StepError:
        """The effect did not happen and may if tried again (a timeout, a rate limit)."""
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must not be negative")
        return cls(message, retryable=True, retry_after=retry_after)

    @classmethod
    def fatal(cls, message: str) -> StepError:
        """The effect did not happen and never will: the saga compensates."""
        return cls(message, retryable=False)

    def __repr__(self) -> str:
        kind = "retryable" if self.is_retryable else "fatal"
        return f"StepError.{kind}({self.message!r})"


class EngineError(Exception):
    """An error the engine answered a request with, or one the client saw.

    ``code`` is the engine's stable code (``E-UNKNOWN-SAGA``, ``E-NOT-FOUND``,
    ...; docs/PROTOCOL.md, "Error codes"), kept as received when unknown.
    The client adds ``E-NO-ENGINE`` (no engine answered), ``E-TIMEOUT``
    (the request or a wait timed out) and ``E-BAD-REPLY`` (an answer that
    is not an envelope).
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class WorkerError(Exception):
    """A worker cannot run without a person acting (a conflicting consumer,
    an invalid setting). ``code`` is stable (``E-WORKER-CONSUMER-CONFLICT``,
    ``E-WORKER-CONFIG``, ``E-NATS-VERSION``)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

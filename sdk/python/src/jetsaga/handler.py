"""Handlers and running one of them for one task: input decoding (pydantic
models validated), deadline, unexpected exceptions and output encoding.

Both the worker and :meth:`Worker.run_one` go through :func:`execute`, so a
unit test sees exactly what production does.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import StepError
from .outcome import Outcome, OutputLimit, unserializable
from .task import Kind, TaskContext

log = logging.getLogger("jetsaga.worker")

HandlerFn = Callable[[TaskContext, Any], Awaitable[Any]]


def _model_of(fn: Callable[..., Any]) -> Any:
    """The pydantic model the handler's input parameter is annotated with, if any."""
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 2:
        raise TypeError(f"handler {getattr(fn, '__qualname__', fn)!r} must take (ctx, input)")
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: no model
        return None
    annotation = hints.get(params[1].name)
    if isinstance(annotation, type) and hasattr(annotation, "model_validate"):
        return annotation
    return None


@dataclass(frozen=True)
class Handler:
    """A registered handler: the user's function and its input model."""

    fn: HandlerFn
    model: Any

    @classmethod
    def of(cls, fn: HandlerFn) -> Handler:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"handler {getattr(fn, '__qualname__', fn)!r} must be an async function"
            )
        return cls(fn, _model_of(fn))

    def decode_input(self, ctx: TaskContext) -> Any:
        """The input to call the handler with; raises StepError.fatal when
        it does not validate into the handler's model."""
        if self.model is None:
            return ctx.input
        try:
            return self.model.model_validate(ctx.input)
        except Exception as e:
            raise StepError.fatal(f"invalid input for {ctx.operation}: {e}") from None


class Handlers:
    """The handlers of one worker, by (kind, operation)."""

    def __init__(self) -> None:
        self._map: dict[tuple[Kind, str], Handler] = {}

    def add(self, kind: Kind, operation: str, fn: HandlerFn) -> None:
        if (kind, operation) in self._map:
            raise ValueError(f"a {kind} handler for operation {operation!r} is registered already")
        self._map[(kind, operation)] = Handler.of(fn)

    def get(self, kind: Kind, operation: str) -> Handler | None:
        return self._map.get((kind, operation))

    def __len__(self) -> int:
        return len(self._map)


def _encode_output(value: Any) -> Any:
    """A handler's return value as JSON-ready data (pydantic models dumped)."""
    if hasattr(value, "model_dump") and callable(value.model_dump):
        return value.model_dump(mode="json")
    return value


async def execute(
    handlers: Handlers,
    worker_name: str,
    service: str,
    ctx: TaskContext,
    limit: OutputLimit,
) -> Outcome:
    """Runs the handler for ``ctx``'s task and says what happened. Never
    raises (but lets cancellation through), never outlives the task's deadline."""
    handler = handlers.get(ctx.kind, ctx.operation)
    if handler is None:
        return Outcome.retryable(
            f"worker {worker_name} of service {service} has no {ctx.kind} handler "
            f"for operation {ctx.operation}"
        )
    try:
        arg = handler.decode_input(ctx)
        value = await asyncio.wait_for(handler.fn(ctx, arg), timeout=max(0.0, ctx.time_left()))
    except StepError as e:
        if e.is_retryable:
            after = None if e.retry_after is None else int(e.retry_after * 1000)
            return limit.check(Outcome.retryable(e.message, after))
        return limit.check(Outcome.fatal(e.message))
    except asyncio.TimeoutError as e:
        if ctx.time_left() > 0:  # the handler's own timeout, not the deadline
            return limit.check(Outcome.retryable(f"handler raised TimeoutError: {e}"))
        return Outcome.retryable("handler exceeded its deadline")
    except asyncio.CancelledError:
        raise
    except Exception as e:
        log.exception("handler raised an unexpected exception")
        return limit.check(Outcome.retryable(f"handler raised {type(e).__name__}: {e}"))
    try:
        output = _encode_output(value)
    except Exception as e:
        return unserializable(e)
    return limit.check(Outcome.ok(output))

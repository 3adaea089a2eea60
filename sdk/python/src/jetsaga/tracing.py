"""OpenTelemetry spans of the handlers, as children of the engine's span of
the step attempt (the task's ``traceparent`` header). Active only when
``opentelemetry-api`` is installed (extra ``otel``); the application sets up
the SDK and exporter as it likes. Attribute names are the engine's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from .task import Task

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _PROPAGATOR: Any = TraceContextTextMapPropagator()
    _TRACER: Any = _trace.get_tracer("jetsaga.worker")
except ImportError:  # pragma: no cover - optional dependency
    _trace = None  # type: ignore[assignment]
    _PROPAGATOR = None


@contextlib.contextmanager
def task_span(task: Task, headers: Mapping[str, str] | None) -> Iterator[Any]:
    """A span ``task`` for the handling of ``task``, or ``None`` without OpenTelemetry."""
    if _trace is None:
        yield None
        return
    carrier = {}
    if headers and "traceparent" in headers:
        carrier["traceparent"] = headers["traceparent"]
    parent = _PROPAGATOR.extract(carrier)
    tracer = _trace.get_tracer("jetsaga.worker")
    with tracer.start_as_current_span(
        "task",
        context=parent,
        kind=_trace.SpanKind.CONSUMER,
        attributes={
            "saga.id": task.saga_id,
            "step": task.step_id,
            "service": task.service,
            "attempt": task.attempt,
            "operation": task.operation,
            "kind": task.kind,
        },
    ) as span:
        yield span


def record_outcome(span: Any, status: str, error: str) -> None:
    """Records the outcome on the span; an error status for failures."""
    if span is None or _trace is None:
        return
    span.set_attribute("outcome", status)
    if status != "ok":
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, error))

"""Prometheus metrics of the worker, named as the Rust SDK's:

| metric | type | labels |
|---|---|---|
| ``worker_handler_duration_seconds`` | histogram | ``service``, ``operation``, ``kind`` |
| ``worker_in_flight`` | gauge | ``service`` |
| ``worker_replays_total`` | counter | ``service`` |
| ``worker_tasks_total`` | counter | ``service``, ``operation``, ``kind``, ``outcome`` |

``outcome`` is ``ok``, ``retryable``, ``fatal`` or ``unfinished`` (handed
back for redelivery). Recorded only when ``prometheus_client`` is installed
(extra ``metrics``); served when the worker is given ``metrics_port``.
"""

from __future__ import annotations

from typing import Any, ClassVar

DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip


class Metrics:
    """The worker's metrics in one registry (``prometheus_client``'s default
    one unless given), or nothing when the package is missing."""

    _instances: ClassVar[dict[int, Metrics]] = {}

    def __init__(self, registry: Any = None) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            self.enabled = False
            return
        self.enabled = True
        self.registry = registry if registry is not None else prom.REGISTRY
        self.duration = prom.Histogram(
            "worker_handler_duration_seconds",
            "Run time of step handlers (actions and compensations), replays excluded",
            ["service", "operation", "kind"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = prom.Gauge(
            "worker_in_flight",
            "Handlers running now in this process",
            ["service"],
            registry=self.registry,
        )
        self.replays = prom.Counter(
            "worker_replays",
            "Tasks answered from their idempotency record instead of running the handler again",
            ["service"],
            registry=self.registry,
        )
        self.tasks = prom.Counter(
            "worker_tasks",
            "Tasks handled, by outcome (ok, retryable, fatal; unfinished: handed back "
            "for redelivery)",
            ["service", "operation", "kind", "outcome"],
            registry=self.registry,
        )

    @classmethod
    def shared(cls, registry: Any = None) -> Metrics:
        """One instance per registry (metrics cannot be registered twice)."""
        key = id(registry)
        if key not in cls._instances:
            cls._instances[key] = cls(registry)
        return cls._instances[key]

    def register(self, service: str) -> None:
        if self.enabled:
            self.in_flight.labels(service).inc(0)
            self.replays.labels(service).inc(0)

    def handler_started(self, service: str) -> None:
        if self.enabled:
            self.in_flight.labels(service).inc()

    def handler_ended(self, service: str, operation: str, kind: str, seconds: float) -> None:
        if self.enabled:
            self.in_flight.labels(service).dec()
            self.duration.labels(service, operation, kind).observe(seconds)

    def replayed(self, service: str) -> None:
        if self.enabled:
            self.replays.labels(service).inc()

    def handled(self, service: str, operation: str, kind: str, outcome: str) -> None:
        if self.enabled:
            self.tasks.labels(service, operation, kind, outcome).inc()


def serve(port: int, addr: str = "0.0.0.0", registry: Any = None) -> Any:
    """Serves ``GET /metrics`` on ``addr:port`` in a background thread;
    returns the server (``server.server_port`` is the port, useful with 0)."""
    try:
        import prometheus_client as prom
    except ImportError:
        raise RuntimeError(
            "metrics_port needs prometheus_client: pip install 'jetsaga[metrics]'"
        ) from None
    server, _thread = prom.start_http_server(port, addr=addr, registry=registry or prom.REGISTRY)
    return server

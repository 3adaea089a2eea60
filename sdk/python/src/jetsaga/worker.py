"""A worker of one service: register handlers, then :meth:`Worker.run`.

All workers of a service share one durable pull consumer,
``<prefix'>-svc-<service>`` on ``<PREFIX>_TASKS``, created by whichever
comes first (``action: create``: an existing consumer is never changed).
The tasks and outcomes streams are the engine's: a worker waits for both.

The loop reserves the free handler slots, sends one pull request for that
many tasks (expiring after 3 s, idle heartbeat every second) and runs each
task it receives (see :mod:`jetsaga.delivery`). A pull request lives on the
server that received it, so a new one is sent at once after a reconnect or
when neither a task nor a heartbeat came for 2 s.

Shutdown (SIGINT/SIGTERM, ``stop()``, or cancelling ``run``): no new pull;
tasks still arriving for the open pull in the next 300 ms are handed back
(``-NAK``); every task already started runs to its end (handler, result,
ack); then ``run`` returns (or re-raises the cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from . import crash, delivery, metrics
from .connection import NatsOptions, connect
from .errors import WorkerError
from .handler import HandlerFn, Handlers, execute
from .jetstream import API, CONSUMER_EXISTS, JsError, api, stream_info
from .names import DEFAULT_PREFIX, Names
from .outcome import STREAM_HEADROOM, Outcome, OutputLimit
from .records import Records, reads_direct
from .task import Task, TaskContext

log = logging.getLogger("jetsaga.worker")

PULL_EXPIRES = 3.0
PULL_HEARTBEAT = 1.0
PULL_SILENCE = 2.0
CONNECTION_CHECK = 0.1
DRAIN_GRACE = 0.3
MIN_SERVER_VERSION = (2, 12)

F = TypeVar("F", bound=HandlerFn)


class Worker:
    """A worker of ``service`` (the steps' ``service:``; one work queue).

    ``concurrency``: handlers running at once. ``ack_wait``: the consumer's
    ack wait in seconds when this worker creates it. ``max_output_bytes``
    lowers the cap on a handler's output (the default is what a result can
    carry). ``metrics_port`` serves Prometheus metrics on that port.
    """

    def __init__(
        self,
        service: str,
        *,
        concurrency: int = 16,
        prefix: str = DEFAULT_PREFIX,
        name: str | None = None,
        ack_wait: float = 30.0,
        max_output_bytes: int | None = None,
        metrics_port: int | None = None,
        metrics_addr: str = "0.0.0.0",
        metrics_registry: Any = None,
    ) -> None:
        if not service or any(c in service for c in ". *>\t\r\n"):
            raise ValueError(f"invalid service name {service!r}: one subject token")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if ack_wait <= 0:
            raise ValueError("ack_wait must be positive")
        self.service = service
        self.names = Names(prefix)
        self.concurrency = concurrency
        self.name = name or f"{service}@{socket.gethostname()}:{os.getpid()}"
        self.ack_wait = ack_wait
        self.max_output_bytes = max_output_bytes
        self.metrics_port = metrics_port
        self.metrics_addr = metrics_addr
        self.metrics = metrics.Metrics.shared(metrics_registry)
        self._metrics_registry = metrics_registry
        self.metrics_server: Any = None
        self._handlers = Handlers()
        self._stop = asyncio.Event()
        #: Set once the worker pulls tasks (its streams and consumer are ready).
        self.ready = asyncio.Event()

    # -- registration -------------------------------------------------------

    def handler(self, operation: str) -> Callable[[F], F]:
        """Registers the decorated ``async def f(ctx, input)`` as the action of ``operation``."""

        def register(fn: F) -> F:
            self._handlers.add("action", operation, fn)
            return fn

        return register

    def compensation(self, operation: str) -> Callable[[F], F]:
        """Registers the decorated function as the compensation ``operation``."""

        def register(fn: F) -> F:
            self._handlers.add("compensation", operation, fn)
            return fn

        return register

    async def run_one(self, task: Task | dict[str, Any]) -> Outcome:
        """Runs the handler for ``task`` once as the worker would (input
        validation, deadline, output cap), without a server or records."""
        if isinstance(task, dict):
            task = Task.from_dict(task)
        return await execute(
            self._handlers,
            self.name,
            self.service,
            TaskContext(task),
            OutputLimit.offline(self.max_output_bytes),
        )

    # -- running ------------------------------------------------------------

    def stop(self) -> None:
        """Asks a running worker to drain and return."""
        self._stop.set()

    async def run(
        self,
        nats_url: str | list[str] | None = None,
        *,
        nc: NATS | None = None,
        creds: str | None = None,
        nkey: str | None = None,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_required: bool = False,
        handle_signals: bool = True,
    ) -> None:
        """Pulls and runs tasks until SIGINT/SIGTERM, :meth:`stop` or
        cancellation; then drains (see the module docs) and returns.

        Give either ``nc`` (an existing nats-py connection, left open) or
        the connection settings (unset ones come from the engine's
        ``JETSAGA_NATS_*`` variables). Raises :class:`WorkerError` when the
        service's consumer or the server cannot be used.
        """
        if len(self._handlers) == 0:
            log.warning(
                "worker of %s has no handlers; every task is reported retryable", self.service
            )
        if self.metrics_port is not None and self.metrics_server is None:
            self.metrics_server = metrics.serve(
                self.metrics_port, self.metrics_addr, self._metrics_registry
            )
            log.info(
                "metrics listening addr=%s:%d", self.metrics_addr, self.metrics_server.server_port
            )
        self.metrics.register(self.service)
        crash.armed()  # a typo in the test hook fails now, not at the first task
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, self._on_signal)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        own = nc is None
        tasks: set[asyncio.Task[None]] = set()
        try:
            if nc is None:
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
                    name=self.name,
                )
                try:
                    nc = await connect(options, retry=self._stop)
                except asyncio.CancelledError:
                    if self._stop.is_set():
                        return
                    raise
                log.info("connected to NATS")
            try:
                await self._serve(nc, tasks)
            except asyncio.CancelledError:
                await self._drain(tasks)
                raise
            await self._drain(tasks)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            self._stop.clear()
            self.ready.clear()
            if own and nc is not None:
                try:
                    await nc.drain()
                except Exception:
                    await nc.close()

    def _on_signal(self) -> None:
        if self._stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(130)
        log.info("signal received: draining")
        self._stop.set()

    async def _drain(self, tasks: set[asyncio.Task[None]]) -> None:
        if tasks:
            log.info("stopped pulling; waiting for %d task(s) in flight", len(tasks))
            await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
        log.info("worker of %s stopped", self.service)

    async def _sleep(self, seconds: float) -> bool:
        """Sleeps; ``True`` when asked to stop meanwhile."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def _serve(self, nc: NATS, tasks: set[asyncio.Task[None]]) -> None:
        version = nc.connected_server_version
        if (version.major, version.minor) < MIN_SERVER_VERSION:
            raise WorkerError(
                "E-NATS-VERSION",
                f"nats-server {version} is too old: jetsaga needs 2.12 or newer",
            )
        shared = await self._setup(nc)
        if shared is None:
            return
        ack_wait = await self._consumer(nc)
        if ack_wait is None:
            return
        log.info(
            "worker ready service=%s worker=%s consumer=%s ack_wait=%.1fs",
            self.service,
            self.name,
            self.names.service_consumer(self.service),
            ack_wait,
        )
        self.ready.set()
        await self._pull_loop(nc, shared, ack_wait, tasks)

    async def _setup(self, nc: NATS) -> delivery.Shared | None:
        """Waits for the engine's streams and reads how to look records up."""
        names = self.names
        delay = 0.2
        tries = 0
        while True:
            tries += 1
            missing = []
            outcomes: dict[str, Any] | None = None
            results: dict[str, Any] | None = None
            try:
                if await stream_info(nc, names.tasks_stream) is None:
                    missing.append(names.tasks_stream)
                outcomes = await stream_info(nc, names.outcomes_stream)
                if outcomes is None:
                    missing.append(names.outcomes_stream)
                results = await stream_info(nc, names.results_stream)
                legacy = await stream_info(nc, f"KV_{names.legacy_bucket}")
            except JsError as e:
                missing.append(f"(the streams cannot be read: {e})")
            if not missing and outcomes is not None:
                break
            log.warning(
                "waiting for the engine to create %s (try %d; retrying in %.1fs)",
                ", ".join(missing),
                tries,
                delay,
            )
            if await self._sleep(delay):
                return None
            delay = min(delay * 2, 10.0)
        direct = reads_direct(outcomes.get("config", {}))
        # Read while it exists, records or not: a worker of the earlier
        # version may still be writing there.
        has_legacy = legacy is not None
        if has_legacy:
            log.info("legacy idempotency bucket %s found: lookups read it too", names.legacy_bucket)
        engine_max: int | None = None
        if results is not None:
            size = int(results.get("config", {}).get("max_msg_size") or 0)
            if size > 0:
                engine_max = size - STREAM_HEADROOM if size > STREAM_HEADROOM else size
        return delivery.Shared(
            nc=nc,
            names=names,
            service=self.service,
            worker_name=self.name,
            handlers=self._handlers,
            records=Records(nc, names, direct=direct, legacy=has_legacy),
            metrics=self.metrics,
            max_output=self.max_output_bytes,
            engine_max_payload=engine_max,
        )

    async def _consumer(self, nc: NATS) -> float | None:
        """Gets or creates the service's consumer; its ``ack_wait`` in seconds."""
        stream = self.names.tasks_stream
        durable = self.names.service_consumer(self.service)
        subject = self.names.task(self.service)
        request = {
            "stream_name": stream,
            "config": {
                "durable_name": durable,
                "description": f"jetsaga workers of service {self.service}",
                "filter_subject": subject,
                "ack_policy": "explicit",
                "ack_wait": int(self.ack_wait * 1e9),
                "max_deliver": -1,
                "deliver_policy": "all",
            },
            "action": "create",
        }
        delay = 0.2
        while True:
            try:
                try:
                    info = await api(
                        nc, f"{API}.CONSUMER.CREATE.{stream}.{durable}.{subject}", request, 5.0
                    )
                except JsError as e:
                    if e.err_code != CONSUMER_EXISTS:
                        raise
                    info = await api(nc, f"{API}.CONSUMER.INFO.{stream}.{durable}", None, 5.0)
                break
            except JsError as e:
                log.warning(
                    "cannot get or create consumer %s on %s (%s); retrying in %.1fs",
                    durable,
                    stream,
                    e,
                    delay,
                )
                if await self._sleep(delay):
                    return None
                delay = min(delay * 2, 10.0)
        config = info.get("config", {})
        filters = config.get("filter_subjects") or []
        if not (config.get("filter_subject") == subject or filters == [subject]):
            raise WorkerError(
                "E-WORKER-CONSUMER-CONFLICT",
                f"consumer {durable} on {stream} filters {config.get('filter_subject')!r}"
                f"{filters!r} instead of {subject!r}; delete it or fix it",
            )
        if config.get("ack_policy") != "explicit":
            raise WorkerError(
                "E-WORKER-CONSUMER-CONFLICT",
                f"consumer {durable} on {stream} has ack policy {config.get('ack_policy')!r} "
                "instead of explicit; delete it or fix it",
            )
        ack_wait = int(config.get("ack_wait") or 0) / 1e9 or self.ack_wait
        if abs(ack_wait - self.ack_wait) > 1e-3:
            log.warning(
                "consumer %s exists with ack_wait %.1fs; using it (configured %.1fs)",
                durable,
                ack_wait,
                self.ack_wait,
            )
        return ack_wait

    async def _pull_loop(
        self, nc: NATS, shared: delivery.Shared, ack_wait: float, tasks: set[asyncio.Task[None]]
    ) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        stream = self.names.tasks_stream
        durable = self.names.service_consumer(self.service)
        next_subject = f"{API}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        stop_wait = asyncio.ensure_future(self._stop.wait())
        backoff = 0.2
        try:
            while not self._stop.is_set():
                acquire = asyncio.ensure_future(slots.acquire())
                done, _ = await asyncio.wait(
                    {acquire, stop_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                if acquire not in done:
                    acquire.cancel()
                    return
                reserved = 1
                while reserved < self.concurrency and not slots.locked():
                    await slots.acquire()
                    reserved += 1
                try:
                    reserved, failed = await self._one_pull(
                        nc, shared, ack_wait, tasks, slots, next_subject, reserved
                    )
                finally:
                    for _ in range(reserved):
                        slots.release()
                if self._stop.is_set():
                    return
                if failed:
                    if await self._sleep(backoff):
                        return
                    backoff = min(backoff * 2, 10.0)
                else:
                    backoff = 0.2
        finally:
            stop_wait.cancel()

    async def _one_pull(
        self,
        nc: NATS,
        shared: delivery.Shared,
        ack_wait: float,
        tasks: set[asyncio.Task[None]],
        slots: asyncio.Semaphore,
        next_subject: str,
        reserved: int,
    ) -> tuple[int, bool]:
        """Sends one pull request for ``reserved`` tasks and hands out what
        it brings; returns the slots still reserved and whether it failed."""
        reconnects = nc.stats["reconnects"]
        inbox = nc.new_inbox()
        try:
            sub = await nc.subscribe(inbox)
            await nc.publish(
                next_subject,
                (
                    b'{"batch":%d,"expires":%d,"idle_heartbeat":%d}'
                    % (reserved, int(PULL_EXPIRES * 1e9), int(PULL_HEARTBEAT * 1e9))
                ),
                reply=inbox,
            )
        except Exception as e:
            log.warning("pull request failed: %s", e)
            return reserved, True
        heard = time.monotonic()
        disconnected = False
        draining_until: float | None = None
        try:
            while True:
                now = time.monotonic()
                if draining_until is None and self._stop.is_set():
                    draining_until = now + DRAIN_GRACE
                if draining_until is not None and now >= draining_until:
                    return reserved, False
                if reserved == 0 and draining_until is None:
                    return reserved, False
                try:
                    msg = await sub.next_msg(timeout=CONNECTION_CHECK)
                except nats.errors.TimeoutError:
                    if nc.stats["reconnects"] != reconnects:
                        log.info(
                            "reconnected to NATS; the server does not know the pull "
                            "request sent before: sending a new one"
                        )
                        return reserved, False
                    if not nc.is_connected:
                        disconnected = True
                    if time.monotonic() - heard > PULL_SILENCE:
                        if disconnected:
                            heard = time.monotonic()
                            continue
                        log.info(
                            "no task and no heartbeat on the pull request for %.0fs; "
                            "sending a new one",
                            PULL_SILENCE,
                        )
                        return reserved, False
                    continue
                except (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
                    return reserved, True
                heard = time.monotonic()
                status = (msg.headers or {}).get("Status") if not msg.data else None
                if status is not None:
                    if status == "100":
                        continue
                    if status in ("404", "408", "409"):
                        return reserved, False
                    log.warning(
                        "the server ended the pull request: %s %s",
                        status,
                        (msg.headers or {}).get("Description", ""),
                    )
                    return reserved, True
                if draining_until is not None or reserved == 0:
                    log.debug("shutting down: handing a task back for redelivery")
                    try:
                        await msg.nak()
                    except Exception as e:
                        log.debug("nak failed (%s); redelivered after ack_wait", e)
                    continue
                reserved -= 1
                self._spawn(shared, msg, ack_wait, tasks, slots)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _spawn(
        self,
        shared: delivery.Shared,
        msg: Msg,
        ack_wait: float,
        tasks: set[asyncio.Task[None]],
        slots: asyncio.Semaphore,
    ) -> None:
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                slots.release()

        job = asyncio.ensure_future(delivery.handle(shared, msg, ack_wait, release))
        tasks.add(job)
        job.add_done_callback(tasks.discard)
        job.add_done_callback(_log_crash)


def _log_crash(job: asyncio.Task[None]) -> None:
    if not job.cancelled() and job.exception() is not None:
        log.error("task handling failed", exc_info=job.exception())

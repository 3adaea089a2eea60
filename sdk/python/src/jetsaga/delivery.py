"""One task message, from delivery to acknowledgement (docs/PROTOCOL.md,
"The worker's contract"):

1. decode the task; a message that is not one is terminated (``+TERM``);
2. look up the record on the task's record subject; found: do not run the
   handler, publish the recorded outcome for this attempt with
   ``replayed: true`` on the results subject, then ack; a failed lookup
   hands the task back (``-NAK``, 5 s) without running the handler;
3. run the handler under the task's deadline;
4. a terminal outcome (``ok``, ``fatal``) is published on the record
   subject with ``Nats-Expected-Last-Subject-Sequence: 0``: it is the record
   and the engine's result at once. If another attempt recorded first, its
   outcome is replayed for this attempt on the results subject. A
   ``retryable`` outcome is not recorded: it goes to the results subject,
   unless a second lookup finds that another run recorded an outcome
   meanwhile, which is then reported instead;
5. ``+ACK`` the task with a confirmed ack.

In-progress acks (``+WPI``) go out every ``ack_wait / 3`` from 2 to 4.
Whatever cannot be finished after retries is handed back with ``-NAK`` and a
delay; the record makes the next delivery a replay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from . import crash, tracing
from .handler import Handlers, execute
from .jetstream import JsError, publish
from .metrics import Metrics
from .names import HEADER_RESULT_TOKEN, Names, is_valid_key, result_msg_id
from .outcome import Outcome, OutputLimit, RecordedResult, result_body
from .records import Ours, Records, RecordUnreadable
from .task import Task, TaskContext, TaskDecodeError

log = logging.getLogger("jetsaga.worker")

#: Delay before a task this worker could not finish is delivered again.
RETRY_DELIVERY_AFTER = 5.0
#: Delay before a task whose record does not decode is delivered again: a
#: person has to look at it, so do not spin.
UNREADABLE_RECORD_DELIVERY_AFTER = 60.0

T = TypeVar("T")


@dataclass
class Shared:
    """What every task handled by one worker shares."""

    nc: NATS
    names: Names
    service: str
    worker_name: str
    handlers: Handlers
    records: Records
    metrics: Metrics
    max_output: int | None = None
    engine_max_payload: int | None = None
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)

    def output_limit(self) -> OutputLimit:
        """Read per task, so that it follows a reconnect to another server."""
        return OutputLimit.derive(self.nc.max_payload, self.engine_max_payload, self.max_output)


class Unfinished(Exception):
    """The task cannot be finished now; it is handed back for redelivery."""

    def __init__(self, message: str, delay: float = RETRY_DELIVERY_AFTER):
        super().__init__(message)
        self.delay = delay


async def retrying(
    what: str,
    call: Callable[[], Awaitable[T]],
    tries: int,
    *,
    transient: type[BaseException] | tuple[type[BaseException], ...] = JsError,
) -> T:
    """``call()``, tried up to ``tries`` times with jittered exponential
    backoff (0.1 s to 5 s) while it raises ``transient``."""
    delay = 0.1
    for attempt in range(1, tries + 1):
        try:
            return await call()
        except transient as e:
            if attempt == tries:
                raise
            pause = random.uniform(delay / 2, delay)
            log.warning("%s failed (%s); retrying in %.2fs", what, e, pause)
            await asyncio.sleep(pause)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


def _headers(task: Task) -> dict[str, str]:
    msg_id = result_msg_id(task.saga_id, task.step_id, task.kind, task.attempt, task.result_token)
    return {
        "Nats-Msg-Id": msg_id,
        "Jetsaga-Saga-Id": task.saga_id,
    }


async def handle(shared: Shared, msg: Msg, ack_wait: float, release: Callable[[], None]) -> None:
    """Handles one delivered message; ``release`` gives back its handler
    slot, once the result is out (the ack that follows does not hold it)."""
    try:
        try:
            task = Task.decode(msg.data)
        except TaskDecodeError as e:
            seq = _stream_seq(msg)
            log.warning(
                "message %s on %s is not a jetsaga task (%s); terminating it so that it is "
                "not redelivered",
                seq,
                msg.subject,
                e,
            )
            release()
            try:
                await msg.term()
            except Exception as err:
                log.warning("could not terminate message %s: %s", seq, err)
            return
        token = (msg.headers or {}).get(HEADER_RESULT_TOKEN)
        if token is not None:
            task = dataclasses.replace(task, result_token=token)
        await _process(shared, msg, task, ack_wait, release)
    finally:
        release()


def _stream_seq(msg: Msg) -> str:
    try:
        return str(msg.metadata.sequence.stream)
    except Exception:
        return "?"


async def _process(
    shared: Shared, msg: Msg, task: Task, ack_wait: float, release: Callable[[], None]
) -> None:
    if task.service != shared.service:
        log.warning(
            "task names service %s but came on the queue of %s; handling it here",
            task.service,
            shared.service,
        )
    ctx = TaskContext(task)
    headers: Mapping[str, str] | None = msg.headers
    with tracing.task_span(task, headers) as span:
        try:
            outcome = await _with_progress(msg, ack_wait, _work(shared, ctx))
        except Unfinished as e:
            release()
            shared.metrics.handled(shared.service, task.operation, task.kind, "unfinished")
            log.error(
                "task %s/%s attempt %d not finished (%s); handing it back, redelivery in %.0fs",
                task.saga_id,
                task.step_id,
                task.attempt,
                e,
                e.delay,
            )
            try:
                await msg.nak(delay=e.delay)
            except Exception as err:
                log.debug("nak failed (%s); the task is redelivered after ack_wait", err)
            return
        tracing.record_outcome(span, outcome.status, outcome.error)
    release()
    shared.metrics.handled(shared.service, task.operation, task.kind, outcome.status)
    try:
        await retrying("task ack", lambda: msg.ack_sync(timeout=5.0), 3, transient=Exception)
        log.debug("task acknowledged (%s)", outcome.status)
    except Exception as e:
        log.warning(
            "result published but the task ack failed (%s); the task will be redelivered "
            "and its result replayed",
            e,
        )


async def _work(shared: Shared, ctx: TaskContext) -> Outcome:
    """Steps 2 to 4; returns the outcome reported."""
    task = ctx.task
    if not is_valid_key(task.idempotency_key):
        # No record subject without a valid key, so no exactly-once: refuse.
        outcome = Outcome.fatal(
            f"task has idempotency key {task.idempotency_key!r}, which cannot be a subject "
            "token sequence"
        )
        await _publish_result(shared, task, outcome, replayed=False)
        crash.passing("after_publish")
        return outcome

    found = await _look_up(shared, task)
    if found is not None:
        shared.metrics.replayed(shared.service)
        if isinstance(found, RecordedResult) and found.is_of(task):
            # Recorded by an earlier delivery of this very task (its ack
            # was lost, or its worker died): the engine has that result.
            message = "outcome of %s already recorded for this attempt (%s); acknowledging the task"
        else:
            message = "outcome of %s already recorded (%s); replaying it, the handler not run"
        log.info(message, task.idempotency_key, _recorded_outcome(found).status)
        return await _report_recorded(shared, task, found)

    started = time.monotonic()
    shared.metrics.handler_started(shared.service)
    try:
        outcome = await execute(
            shared.handlers, shared.worker_name, shared.service, ctx, shared.output_limit()
        )
    finally:
        elapsed = time.monotonic() - started
        shared.metrics.handler_ended(shared.service, task.operation, task.kind, elapsed)
    where = f"saga {task.saga_id} step {task.step_id} {task.kind} attempt {task.attempt}"
    if outcome.status == "retryable":
        log.warning("%s: handler failed (retryable) in %.3fs: %s", where, elapsed, outcome.error)
    elif outcome.status == "fatal":
        log.info("%s: handler failed (fatal) in %.3fs: %s", where, elapsed, outcome.error)
    else:
        log.info("%s: handler succeeded in %.3fs", where, elapsed)
    crash.passing("after_handler")

    if not outcome.terminal:
        # Not recorded. But another delivery of the step running at the same
        # time may have recorded an outcome meanwhile (its effect happened):
        # that one is reported instead, so that a retryable never overtakes it.
        again = await _look_up(shared, task)
        if again is not None:
            log.warning(
                "another run of this step recorded its outcome (%s) while this one failed "
                "retryably; reporting the recorded one",
                _recorded_outcome(again).status,
            )
            return await _report_recorded(shared, task, again)
        await _publish_result(shared, task, outcome, replayed=False)
        crash.passing("after_publish")
        return outcome

    body = result_body(task, outcome, replayed=False, worker=shared.worker_name)
    try:
        recorded = await retrying(
            "recording the outcome", lambda: shared.records.record(task, body, _headers(task)), 6
        )
    except JsError as e:
        raise Unfinished(f"could not record the outcome: {e}") from None
    except RecordUnreadable as e:
        raise Unfinished(str(e), UNREADABLE_RECORD_DELIVERY_AFTER) from None
    crash.passing("after_record")
    if isinstance(recorded, Ours):
        crash.passing("after_publish")
        return outcome
    log.warning(
        "another run of this step recorded its outcome first (%s, ours %s); reporting that one "
        "(pass ctx.idempotency_key to downstream services to make concurrent runs harmless)",
        recorded.result.outcome.status,
        outcome.status,
    )
    return await _report_recorded(shared, task, recorded.result)


async def _look_up(shared: Shared, task: Task) -> RecordedResult | Outcome | None:
    """The record of ``task``'s key (an Outcome alone from the legacy
    bucket); a lookup that keeps failing leaves the task unfinished."""
    try:
        return await retrying("outcome lookup", lambda: shared.records.lookup(task), 3)
    except JsError as e:
        raise Unfinished(
            f"could not look up the outcome record, so the handler's outcome is not reported: {e}"
        ) from None
    except RecordUnreadable as e:
        raise Unfinished(str(e), UNREADABLE_RECORD_DELIVERY_AFTER) from None


def _recorded_outcome(found: RecordedResult | Outcome) -> Outcome:
    return found.outcome if isinstance(found, RecordedResult) else found


async def _report_recorded(shared: Shared, task: Task, found: RecordedResult | Outcome) -> Outcome:
    """Reports a recorded outcome for ``task``'s attempt: nothing to publish
    when the record is this very attempt's result (the engine has it),
    else a replay on the results subject."""
    outcome = _recorded_outcome(found)
    if not (isinstance(found, RecordedResult) and found.is_of(task)):
        await _publish_result(shared, task, outcome, replayed=True)
    crash.passing("after_publish")
    return outcome


async def _publish_result(shared: Shared, task: Task, outcome: Outcome, *, replayed: bool) -> None:
    """Publishes the result of ``task``'s attempt on its results subject."""
    body = result_body(task, outcome, replayed=replayed, worker=shared.worker_name)
    subject = shared.names.result(shared.service, task.partition)
    try:
        ack = await retrying(
            "publishing the result",
            lambda: publish(shared.nc, subject, body, _headers(task)),
            6,
        )
    except JsError as e:
        raise Unfinished(f"could not publish the result: {e}") from None
    log.debug(
        "result published (%s, replayed=%s, duplicate=%s)", outcome.status, replayed, ack.duplicate
    )


async def _with_progress(msg: Msg, ack_wait: float, work: Awaitable[T]) -> T:
    """Runs ``work`` while telling the server every ``ack_wait / 3`` that
    the task is still being worked on."""
    period = max(ack_wait / 3, 0.05)
    job: asyncio.Future[T] = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({job}, timeout=period)
            if done:
                return job.result()
            try:
                await msg.in_progress()
                log.debug("in-progress ack sent")
            except Exception as e:
                log.warning("in-progress ack failed (%s); the task may be redelivered", e)
    finally:
        if not job.done():
            job.cancel()

"""Crash points: a test hook, not a feature.

With ``JETSAGA_PY_CRASH_AT`` set to one of ``after_handler``,
``after_record`` or ``after_publish``, the worker process exits at once
(``os._exit(137)``, as if killed) the first time a task passes that place:

| point | the process dies when |
|---|---|
| ``after_handler`` | the handler returned (its effect happened), nothing recorded |
| ``after_record`` | a terminal outcome is on its record subject (acknowledged) |
| ``after_publish`` | the result is published (for a terminal outcome: the record), |
|  | the task not acknowledged |

The integration tests (``tests/test_crash_points.py``) drive each one.
"""

from __future__ import annotations

import logging
import os
import sys

VARIABLE = "JETSAGA_PY_CRASH_AT"
POINTS = ("after_handler", "after_record", "after_publish")

log = logging.getLogger("jetsaga.worker")


def armed() -> str | None:
    """The crash point the environment arms, if any (read at each pass)."""
    point = os.environ.get(VARIABLE) or None
    if point is not None and point not in POINTS:
        raise ValueError(f"{VARIABLE}={point!r}: not one of {', '.join(POINTS)}")
    return point


def passing(point: str) -> None:
    """Passes crash point ``point``: exits the process now if it is armed."""
    if armed() == point:
        log.error("crash point %s reached: exiting with 137", point)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(137)

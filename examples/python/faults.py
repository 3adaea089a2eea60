"""Fault injection driven by the saga input, as in the Rust examples
(examples/src/faults.rs): ``{"faults": {"<step_id>": {"fail": "retryable",
"times": 2, "delay_ms": 500, "compensation": "fatal", "compensation_times": 1,
"compensation_delay_ms": 100}}}``. Faults strike before the effect, so a
failed attempt has no effect."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from jetsaga import StepError

log = logging.getLogger("examples.faults")

FIELDS = {"fail", "times", "delay_ms", "compensation", "compensation_times",
          "compensation_delay_ms"}  # fmt: skip
MODES = ("fatal", "retryable")


def _spec(input: Any, step_id: str) -> dict[str, Any] | None:
    if not isinstance(input, dict):
        return None
    faults = input.get("faults")
    if not isinstance(faults, dict) or step_id not in faults:
        return None
    spec = faults[step_id]
    if not isinstance(spec, dict):
        raise StepError.fatal(f"invalid `faults.{step_id}`: not an object")
    unknown = set(spec) - FIELDS
    if unknown:
        raise StepError.fatal(f"invalid `faults.{step_id}`: unknown field(s) {sorted(unknown)}")
    for key in ("fail", "compensation"):
        if spec.get(key) is not None and spec[key] not in MODES:
            raise StepError.fatal(f"invalid `faults.{step_id}.{key}`: {spec[key]!r}")
    return spec


async def inject(input: Any, step_id: str, kind: str, attempt: int) -> None:
    """Sleeps and fails as the input asks for this attempt, if it does."""
    spec = _spec(input, step_id)
    if spec is None:
        return
    if kind == "action":
        mode, times, delay = spec.get("fail"), spec.get("times"), spec.get("delay_ms")
    else:
        mode = spec.get("compensation")
        times = spec.get("compensation_times")
        delay = spec.get("compensation_delay_ms")
    if times is not None and attempt > times:
        return
    if delay:
        log.info("injected delay of %d ms into %s %s (attempt %d)", delay, step_id, kind, attempt)
        await asyncio.sleep(delay / 1000)
    if mode is None:
        return
    msg = f"injected {mode} failure of {step_id} {kind} (attempt {attempt})"
    log.info(msg)
    raise StepError.fatal(msg) if mode == "fatal" else StepError.retryable(msg)

"""The services of the ``create_booking`` saga (examples/definitions/
create_booking.yaml): invoicing, email, whatsapp and calendar, with the
effects, outputs and ledger lines of the Rust examples
(examples/src/services/{invoicing,email,whatsapp,calendar}.rs).

Only the operations of ``create_booking`` are here; a worker of a shared
service queue that serves other sagas too must register their operations
as well (the Rust ``invoicing`` also serves ``collect_payment``).
"""

from __future__ import annotations

import logging
from typing import Any

from jetsaga import StepError, TaskContext, Worker
from pydantic import BaseModel

from faults import inject
from ledger import Entry, Ledger, now_ms

log = logging.getLogger("examples.booking")

SERVICES = ("invoicing", "email", "whatsapp", "calendar")


class Customer(BaseModel):
    id: str = "cus_1001"
    name: str = "Ana Souza"
    email: str = "ana@example.com"
    phone: str = "+5511987654321"
    tax_id: str = "123.456.789-09"


class BookingInput(BaseModel):
    booking_id: str = "bk_2001"
    customer: Customer = Customer()
    service_name: str = "haircut"
    starts_at: str = "2030-07-01T10:00:00-03:00"
    duration_min: int = 45
    amount_cents: int = 12_000
    currency: str = "BRL"


def derive_id(prefix: str, key: str) -> str:
    """``<prefix>_<12 hex digits of FNV-1a 64(key)>``, as the Rust examples."""
    h = 0xCBF29CE484222325
    for b in key.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{prefix}_{h & 0xFFFFFFFFFFFF:012x}"


def resource_id(ctx: TaskContext, prefix: str) -> str:
    """The same id for a step's action, its retries and its compensation."""
    return derive_id(prefix, f"{ctx.saga_id}.{ctx.step_id}.action")


def money(cents: int, currency: str) -> str:
    return f"{cents // 100}.{cents % 100:02} {currency}"


def prior_str(ctx: TaskContext, step_id: str, field: str) -> str | None:
    out = ctx.step_output(step_id)
    if isinstance(out, dict) and isinstance(out.get(field), str):
        return str(out[field])
    return None


class Env:
    """What the handlers of one service share: its ledger and the worker's name."""

    def __init__(self, ledger: Ledger, worker: str) -> None:
        self.ledger = ledger
        self.worker = worker

    async def perform(self, ctx: TaskContext, effect: str) -> bool:
        """Injects the faults the input asks for, then applies the effect
        under the task's idempotency key; ``True`` the first time."""
        await inject(ctx.input, ctx.step_id, ctx.kind, ctx.attempt)
        entry = Entry(
            at_ms=now_ms(),
            service=ctx.service,
            operation=ctx.operation,
            kind=ctx.kind,
            saga_id=ctx.saga_id,
            step_id=ctx.step_id,
            idempotency_key=ctx.idempotency_key,
            attempt=ctx.attempt,
            worker=self.worker,
            effect=effect,
        )
        try:
            first = await self.ledger.apply_async(entry)
        except OSError as e:
            raise StepError.retryable(f"ledger write failed: {e}") from e
        if first:
            log.info("%s", effect)
        else:
            log.warning(
                "duplicate suppressed by the downstream idempotency key %s: %s",
                ctx.idempotency_key,
                effect,
            )
        return first


def register_invoicing(w: Worker, env: Env) -> None:
    @w.handler("create_nf")
    async def create_nf(ctx: TaskContext, input: BookingInput) -> dict[str, Any]:
        if not input.customer.tax_id:
            raise StepError.fatal("a fiscal note needs the customer's tax id")
        nf = resource_id(ctx, "nf")
        await env.perform(
            ctx,
            f"issued fiscal note {nf} of {money(input.amount_cents, input.currency)} to "
            f"{input.customer.name} ({input.customer.tax_id}) for booking {input.booking_id}",
        )
        return {"nf_number": nf, "amount_cents": input.amount_cents, "currency": input.currency}

    @w.compensation("cancel_nf")
    async def cancel_nf(ctx: TaskContext, input: BookingInput) -> dict[str, Any]:
        nf = prior_str(ctx, ctx.step_id, "nf_number") or resource_id(ctx, "nf")
        await env.perform(ctx, f"cancelled fiscal note {nf} of booking {input.booking_id}")
        return {"nf_number": nf, "cancelled": True}


def _check_address(addr: str) -> None:
    if "@" not in addr:
        raise StepError.fatal(f"invalid e-mail address {addr!r}")


def register_email(w: Worker, env: Env) -> None:
    @w.handler("send_email")
    async def send_email(ctx: TaskContext, input: BookingInput) -> dict[str, Any]:
        _check_address(input.customer.email)
        nf = prior_str(ctx, "create_nf", "nf_number") or "-"
        message_id = resource_id(ctx, "msg")
        await env.perform(
            ctx,
            f"e-mailed {input.customer.email} the confirmation of {input.service_name} at "
            f"{input.starts_at} (fiscal note {nf})",
        )
        return {"message_id": message_id, "to": input.customer.email}

    @w.compensation("send_email_correction")
    async def send_email_correction(ctx: TaskContext, input: BookingInput) -> dict[str, Any]:
        original = prior_str(ctx, ctx.step_id, "message_id") or resource_id(ctx, "msg")
        await env.perform(
            ctx,
            f"e-mailed {input.customer.email} that booking {input.booking_id} was cancelled "
            f"(corrects {original})",
        )
        return {"corrects": original}


def register_whatsapp(w: Worker, env: Env) -> None:
    @w.handler("send_whatsapp")
    async def send_whatsapp(ctx: TaskContext, input: BookingInput) -> dict[str, Any]:
        if not input.customer.phone.startswith("+"):
            raise StepError.fatal(f"phone {input.customer.phone!r} is not in E.164 form")
        nf = prior_str(ctx, "create_nf", "nf_number") or "-"
        message_id = resource_id(ctx, "wa")
        await env.perform(
            ctx,
            f"sent WhatsApp to {input.customer.phone}: {input.service_name} booked for "
            f"{input.starts_at} (fiscal note {nf})",
        )
        return {"message_id": message_id, "to": input.customer.phone}

    @w.compensation("send_whatsapp_correction")
    async def send_correction(ctx: TaskContext, input: BookingInput) -> dict[str, Any]:
        original = prior_str(ctx, ctx.step_id, "message_id") or resource_id(ctx, "wa")
        await env.perform(
            ctx,
            f"sent WhatsApp to {input.customer.phone}: booking {input.booking_id} cancelled "
            f"(corrects {original})",
        )
        return {"corrects": original}


def register_calendar(w: Worker, env: Env) -> None:
    @w.handler("add_event")
    async def add_event(ctx: TaskContext, input: BookingInput) -> dict[str, Any]:
        notified = [
            v
            for v in (prior_str(ctx, "send_email", "to"), prior_str(ctx, "send_whatsapp", "to"))
            if v is not None
        ]
        event_id = resource_id(ctx, "evt")
        await env.perform(
            ctx,
            f"added calendar event {event_id}: {input.service_name} for {input.customer.name} "
            f"at {input.starts_at} ({input.duration_min} min)",
        )
        return {"event_id": event_id, "notified": notified}

    @w.compensation("remove_event")
    async def remove_event(ctx: TaskContext, input: BookingInput) -> dict[str, Any]:
        event_id = prior_str(ctx, ctx.step_id, "event_id") or resource_id(ctx, "evt")
        await env.perform(ctx, f"removed calendar event {event_id} of booking {input.booking_id}")
        return {"event_id": event_id, "removed": True}


REGISTER = {
    "invoicing": register_invoicing,
    "email": register_email,
    "whatsapp": register_whatsapp,
    "calendar": register_calendar,
}

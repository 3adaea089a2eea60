#!/usr/bin/env python3
"""Workers of the create_booking saga in Python (invoicing, email, whatsapp,
calendar): the counterpart of the Rust ``booking-workers`` binary, with the
same flags, environment variables and ledger.

    python examples/python/booking_workers.py --nats-url nats://127.0.0.1:4222 \\
        --ledger-dir .jetsaga/ledger [--service email ...]

Logs ``workers ready`` once every worker pulls tasks; the first SIGINT or
SIGTERM drains the tasks in flight, a second one exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

from jetsaga import NatsOptions, Worker
from jetsaga.connection import connect

from booking import REGISTER, SERVICES, Env
from ledger import Ledger

log = logging.getLogger("booking-workers")


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="booking-workers", description=__doc__.split("\n\n")[0])
    p.add_argument("--nats-url", default=env("JETSAGA_NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument("--nats-creds", default=env("JETSAGA_NATS_CREDS"))
    p.add_argument("--nats-nkey", default=env("JETSAGA_NATS_NKEY"))
    p.add_argument("--nats-token", default=env("JETSAGA_NATS_TOKEN"))
    p.add_argument("--nats-user", default=env("JETSAGA_NATS_USER"))
    p.add_argument("--nats-password", default=env("JETSAGA_NATS_PASSWORD"))
    p.add_argument("--nats-tls-ca", default=env("JETSAGA_NATS_TLS_CA"))
    p.add_argument("--nats-tls-cert", default=env("JETSAGA_NATS_TLS_CERT"))
    p.add_argument("--nats-tls-key", default=env("JETSAGA_NATS_TLS_KEY"))
    p.add_argument("--prefix", default=env("JETSAGA_PREFIX", "jetsaga"))
    p.add_argument("--ledger-dir", default=env("JETSAGA_LEDGER_DIR", ".jetsaga/ledger"))
    p.add_argument("--concurrency", type=int, default=int(env("JETSAGA_CONCURRENCY", "16")))
    p.add_argument("--name", default=env("JETSAGA_WORKER_NAME"))
    p.add_argument(
        "--ack-wait",
        type=float,
        default=float(env("JETSAGA_ACK_WAIT_SECS", "30")),
        help="consumer ack_wait in seconds, when this process creates it",
    )
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument(
        "--service",
        action="append",
        default=[],
        help="run only this service (repeatable; default: all four)",
    )
    args = p.parse_args(argv)
    wanted = args.service or [s for s in env("JETSAGA_SERVICES", "").split(",") if s]
    for s in wanted:
        if s not in SERVICES:
            p.error(f"unknown service {s!r}; this program runs: {', '.join(SERVICES)}")
    args.services = list(dict.fromkeys(wanted)) or list(SERVICES)
    return args


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    name = args.name or f"booking-workers-py@{socket.gethostname()}:{os.getpid()}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    workers: list[Worker] = []

    def on_signal() -> None:
        if stop.is_set():
            os._exit(130)
        log.info("signal received: draining")
        stop.set()
        for w in workers:
            w.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    options = NatsOptions.from_env(
        url=args.nats_url,
        creds=args.nats_creds,
        nkey=args.nats_nkey,
        token=args.nats_token,
        user=args.nats_user,
        password=args.nats_password,
        tls_ca=args.nats_tls_ca,
        tls_cert=args.nats_tls_cert,
        tls_key=args.nats_tls_key,
        name=name,
    )
    try:
        nc = await connect(options, retry=stop)
    except asyncio.CancelledError:
        return 0
    for i, service in enumerate(args.services):
        w = Worker(
            service,
            concurrency=args.concurrency,
            prefix=args.prefix,
            name=name,
            ack_wait=args.ack_wait,
            metrics_port=args.metrics_port if i == 0 else None,
        )
        REGISTER[service](w, Env(Ledger(args.ledger_dir, service), name))
        workers.append(w)
    runs = [asyncio.ensure_future(w.run(nc=nc, handle_signals=False)) for w in workers]

    async def announce() -> None:
        await asyncio.gather(*(w.ready.wait() for w in workers))
        log.info(
            "workers ready services=%s worker=%s ledger_dir=%s",
            ",".join(args.services),
            name,
            args.ledger_dir,
        )

    announcer = asyncio.ensure_future(announce())
    done, _ = await asyncio.wait(runs, return_when=asyncio.FIRST_EXCEPTION)
    announcer.cancel()
    failed = [r for r in done if r.exception() is not None]
    if failed:
        for w in workers:
            w.stop()
        await asyncio.gather(*runs, return_exceptions=True)
        log.error("worker failed: %s", failed[0].exception())
        await nc.close()
        return 1
    await asyncio.gather(*runs)
    await nc.drain()
    log.info("all workers drained; bye")
    return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=os.environ.get("JETSAGA_PY_LOG", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    sys.exit(asyncio.run(main(sys.argv[1:])))

"""Connecting to NATS with the settings the engine takes: server URL(s), one
way to authenticate (credentials file, nkey seed, token, user and password)
and TLS (CA, client certificate and key)."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NATS

log = logging.getLogger("jetsaga")

DEFAULT_URL = "nats://127.0.0.1:4222"


@dataclass(frozen=True)
class NatsOptions:
    """How to reach NATS; mirrors the engine's ``--nats-*`` settings.

    ``url`` is one URL, a comma-separated list or a sequence of URLs.
    ``nkey`` is a seed (``SU...``) or a file holding one.
    """

    url: str | Sequence[str] = DEFAULT_URL
    creds: str | None = None
    nkey: str | None = None
    token: str | None = None
    user: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_required: bool = False
    name: str | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> NatsOptions:
        """The engine's ``JETSAGA_NATS_*`` variables, then ``overrides``."""
        env = os.environ
        values: dict[str, Any] = {
            "url": env.get("JETSAGA_NATS_URL") or DEFAULT_URL,
            "creds": env.get("JETSAGA_NATS_CREDS") or None,
            "nkey": env.get("JETSAGA_NATS_NKEY") or None,
            "token": env.get("JETSAGA_NATS_TOKEN") or None,
            "user": env.get("JETSAGA_NATS_USER") or None,
            "password": env.get("JETSAGA_NATS_PASSWORD") or None,
            "tls_ca": env.get("JETSAGA_NATS_TLS_CA") or None,
            "tls_cert": env.get("JETSAGA_NATS_TLS_CERT") or None,
            "tls_key": env.get("JETSAGA_NATS_TLS_KEY") or None,
            "tls_required": env.get("JETSAGA_NATS_TLS_REQUIRED", "").lower()
            in ("1", "true", "yes"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def servers(self) -> list[str]:
        urls = [self.url] if isinstance(self.url, str) else list(self.url)
        out = [u.strip() for part in urls for u in part.split(",") if u.strip()]
        if not out:
            raise ValueError("no NATS server URL given")
        return out

    def validate(self) -> None:
        """Raises ValueError for settings the engine refuses too."""
        methods = [
            m
            for m, on in (
                ("creds", self.creds),
                ("nkey", self.nkey),
                ("token", self.token),
                ("user/password", self.user or self.password),
            )
            if on
        ]
        if len(methods) > 1:
            raise ValueError(f"choose one NATS authentication method, not {' and '.join(methods)}")
        if bool(self.user) != bool(self.password):
            raise ValueError("a NATS user needs a password, and a password a user")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("a TLS client certificate needs its key, and a key its certificate")
        for label, path in (
            ("credentials file", self.creds),
            ("TLS CA file", self.tls_ca),
            ("TLS certificate", self.tls_cert),
            ("TLS key", self.tls_key),
        ):
            if path and not os.path.isfile(path):
                raise ValueError(f"NATS {label} {path!r} does not exist")
        self.servers()

    def tls_context(self) -> ssl.SSLContext | None:
        wants = (
            self.tls_ca
            or self.tls_cert
            or self.tls_required
            or any(u.startswith("tls://") for u in self.servers())
        )
        if not wants:
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert and self.tls_key:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``nats.connect``."""
        self.validate()
        kwargs: dict[str, Any] = {
            "servers": self.servers(),
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
        }
        if self.name:
            kwargs["name"] = self.name
        if self.creds:
            kwargs["user_credentials"] = self.creds
        if self.nkey:
            if os.path.isfile(self.nkey):
                kwargs["nkeys_seed"] = self.nkey
            else:
                kwargs["nkeys_seed_str"] = self.nkey.strip()
        if self.token:
            kwargs["token"] = self.token
        if self.user:
            kwargs["user"] = self.user
            kwargs["password"] = self.password
        tls = self.tls_context()
        if tls is not None:
            kwargs["tls"] = tls
        return kwargs


async def _log_error(e: Exception) -> None:
    log.warning("NATS: %s", e)


async def _log_disconnect() -> None:
    log.warning("NATS: disconnected")


async def _log_reconnect() -> None:
    log.info("NATS: reconnected")


async def connect(options: NatsOptions, *, retry: asyncio.Event | None = None) -> NATS:
    """Connects. With ``retry`` (a stop event), keeps trying with backoff
    while the server is unreachable, until connected or the event is set
    (then raises ``asyncio.CancelledError``)."""
    kwargs = options.connect_kwargs()
    kwargs.update(
        error_cb=_log_error, disconnected_cb=_log_disconnect, reconnected_cb=_log_reconnect
    )
    # nats-py applies its reconnect settings to the first connect too, where
    # unlimited attempts would retry refused credentials forever: connect
    # once without them (retrying here while no server answers), then let
    # the connection reconnect for good.
    kwargs.update(allow_reconnect=False, max_reconnect_attempts=1)
    delay = 0.2
    while True:
        try:
            nc: NATS = await nats.connect(**kwargs)
            if options.tls_required and not nc._server_info.get("tls_required"):
                await nc.close()
                raise ValueError(
                    f"the NATS server at {options.url} does not use TLS, and tls_required "
                    "refuses to connect without it"
                )
            nc.options["allow_reconnect"] = True
            nc.options["max_reconnect_attempts"] = -1
            return nc
        except (OSError, nats.errors.NoServersError, asyncio.TimeoutError) as e:
            if retry is None:
                raise
            log.warning("cannot reach NATS at %s (%s); retrying in %.1fs", options.url, e, delay)
            try:
                await asyncio.wait_for(retry.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass
            else:
                raise asyncio.CancelledError from None
            delay = min(delay * 2, 5.0)

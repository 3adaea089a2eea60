"""The few JetStream API calls a worker makes, sent as plain requests so that
every field and error code is the one docs/PROTOCOL.md names."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

API = "$JS.API"

#: ``err_code`` of "stream not found".
STREAM_NOT_FOUND = 10059
#: ``err_code`` of "no message found".
NO_MESSAGE_FOUND = 10037
#: ``err_code`` of "wrong last sequence" (an expectation header failed).
WRONG_LAST_SEQUENCE = 10071
#: ``err_code`` of "consumer already exists" (with another config).
CONSUMER_EXISTS = 10148


class JsError(Exception):
    """A JetStream API error reply (``code``, ``err_code``), or ``code`` 0
    for a transport problem (timeout, no responders, disconnected)."""

    def __init__(self, code: int, err_code: int, description: str):
        super().__init__(f"{description} (code {code}, err_code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


async def api(nc: NATS, subject: str, body: dict[str, Any] | None, timeout: float) -> Any:
    """A JSON request to the JetStream API; raises :class:`JsError`."""
    payload = b"" if body is None else json.dumps(body).encode()
    try:
        reply = await nc.request(subject, payload, timeout=timeout)
    except nats.errors.NoRespondersError:
        raise JsError(503, 0, f"no responders on {subject} (is JetStream enabled?)") from None
    except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError) as e:
        raise JsError(0, 0, f"{subject}: {type(e).__name__}") from None
    return _decode(reply.data, subject)


def _decode(data: bytes, subject: str) -> Any:
    try:
        doc = json.loads(data)
    except ValueError:
        raise JsError(0, 0, f"{subject}: the reply is not JSON: {data[:200]!r}") from None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err = doc["error"]
        raise JsError(
            int(err.get("code") or 0),
            int(err.get("err_code") or 0),
            str(err.get("description") or "JetStream error"),
        )
    return doc


async def stream_info(nc: NATS, stream: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """The stream's info, ``None`` when it does not exist."""
    try:
        info = await api(nc, f"{API}.STREAM.INFO.{stream}", None, timeout)
    except JsError as e:
        if e.err_code == STREAM_NOT_FOUND or e.code == 404:
            return None
        raise
    return info if isinstance(info, dict) else None


@dataclass(frozen=True)
class StoredMsg:
    """A message read back from a stream."""

    subject: str
    seq: int
    headers: dict[str, str]
    data: bytes


def _parse_headers(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    lines = raw.decode("utf-8", "replace").split("\r\n")
    for line in lines[1:]:
        if not line or ":" not in line:
            continue
        name, value = line.split(":", 1)
        out[name.strip()] = value.strip()
    return out


async def last_msg(
    nc: NATS, stream: str, subject: str, *, direct: bool, timeout: float = 5.0
) -> StoredMsg | None:
    """The last message on ``subject`` in ``stream``, ``None`` when there is
    none: a direct get (``$JS.API.DIRECT.GET.<stream>.<subject>``, answered
    by any replica) or ``STREAM.MSG.GET`` (answered by the leader)."""
    if direct:
        try:
            reply = await nc.request(f"{API}.DIRECT.GET.{stream}.{subject}", b"", timeout=timeout)
        except nats.errors.NoRespondersError:
            raise JsError(503, 0, f"direct get on {stream}: no responders") from None
        except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError) as e:
            raise JsError(0, 0, f"direct get on {stream}: {type(e).__name__}") from None
        headers = dict(reply.headers or {})
        status = headers.get("Status")
        if status and not reply.data:
            if status == "404":
                return None
            raise JsError(int(status), 0, f"direct get: {headers.get('Description', '')}")
        return StoredMsg(
            subject=headers.get("Nats-Subject", subject),
            seq=int(headers.get("Nats-Sequence", "0") or 0),
            headers=headers,
            data=reply.data,
        )
    try:
        doc = await api(nc, f"{API}.STREAM.MSG.GET.{stream}", {"last_by_subj": subject}, timeout)
    except JsError as e:
        if e.err_code == NO_MESSAGE_FOUND or (e.code == 404 and e.err_code != STREAM_NOT_FOUND):
            return None
        raise
    msg = doc.get("message") or {}
    hdrs = msg.get("hdrs")
    data = msg.get("data")
    return StoredMsg(
        subject=str(msg.get("subject", subject)),
        seq=int(msg.get("seq", 0)),
        headers=_parse_headers(base64.b64decode(hdrs)) if hdrs else {},
        data=base64.b64decode(data) if data else b"",
    )


@dataclass(frozen=True)
class PubAck:
    stream: str
    seq: int
    duplicate: bool


async def publish(
    nc: NATS, subject: str, body: bytes, headers: dict[str, str], timeout: float = 5.0
) -> PubAck:
    """A JetStream publish that waits for the stream's ack; raises
    :class:`JsError` (with the server's ``err_code``)."""
    try:
        reply = await nc.request(subject, body, timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError:
        raise JsError(503, 0, f"no stream captures {subject}") from None
    except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError) as e:
        raise JsError(0, 0, f"publish on {subject}: {type(e).__name__}") from None
    doc = _decode(reply.data, subject)
    if not isinstance(doc, dict) or "seq" not in doc:
        raise JsError(0, 0, f"publish on {subject}: unexpected reply {reply.data[:200]!r}")
    return PubAck(str(doc.get("stream", "")), int(doc["seq"]), bool(doc.get("duplicate", False)))

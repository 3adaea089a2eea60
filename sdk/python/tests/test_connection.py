"""Connection settings: authentication against a real nats-server, and the
settings the engine refuses refused here too."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import NatsServer

from jetsaga import Client, EngineError, NatsOptions


async def test_token_and_user_password_authenticate(tmp_path: Path) -> None:
    token = NatsServer(tmp_path, "tok", 'authorization { token: "s3cret" }')
    users = NatsServer(
        tmp_path, "users", 'authorization { users: [ { user: "ana", password: "pw" } ] }'
    )
    try:
        for client in (
            await Client.connect(token.url, token="s3cret"),
            await Client.connect(users.url, user="ana", password="pw"),
        ):
            # Connected and authenticated: the request reaches the server,
            # where no engine answers.
            with pytest.raises(EngineError) as e:
                await client.list()
            assert e.value.code == "E-NO-ENGINE"
            await client.close()
        with pytest.raises(Exception, match=r"[Aa]uthorization"):
            c = await Client.connect(token.url, token="wrong")
            await c.close()
    finally:
        token.kill()
        users.kill()


def test_invalid_settings_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one NATS authentication method"):
        NatsOptions(token="t", user="u", password="p").validate()
    with pytest.raises(ValueError, match="needs a password"):
        NatsOptions(user="u").validate()
    with pytest.raises(ValueError, match="needs its key"):
        NatsOptions(tls_cert=str(tmp_path / "c.pem")).validate()
    with pytest.raises(ValueError, match="does not exist"):
        NatsOptions(creds=str(tmp_path / "missing.creds")).validate()
    opts = NatsOptions(url="nats://a:1, nats://b:2", token="t")
    assert opts.servers() == ["nats://a:1", "nats://b:2"]
    kwargs = opts.connect_kwargs()
    assert kwargs["token"] == "t" and kwargs["max_reconnect_attempts"] == -1
    seed = tmp_path / "user.nk"
    seed.write_text("SUAAAAAA\n")
    assert NatsOptions(nkey=str(seed)).connect_kwargs()["nkeys_seed"] == str(seed)
    assert NatsOptions(nkey="SUAAAAAA").connect_kwargs()["nkeys_seed_str"] == "SUAAAAAA"

"""Connection settings: authentication against a real nats-server, and the
settings the engine refuses refused here too."""

from __future__ import annotations

import os
import subprocess
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


async def test_an_nkey_seed_file_authenticates(tmp_path: Path) -> None:
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed + b"\n")
    server = NatsServer(tmp_path, "nk", f'authorization {{ users: [ {{ nkey: "{public}" }} ] }}')
    try:
        client = await Client.connect(server.url, nkey=str(seed_file))
        with pytest.raises(EngineError) as e:
            await client.list()
        assert e.value.code == "E-NO-ENGINE"
        await client.close()
        with pytest.raises(Exception, match=r"[Aa]uthorization"):
            await Client.connect(server.url)
    finally:
        server.kill()


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certs(d: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))  # fmt: skip
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):  # fmt: skip
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
                "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1",
                "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))  # fmt: skip
    return {k: str(d / k) for k in ("ca.pem", "server.pem", "server.key", "client.pem",
                                    "client.key")}  # fmt: skip


async def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    server = NatsServer(
        tmp_path, "tls",
        f'tls {{ cert_file: "{certs["server.pem"]}", key_file: "{certs["server.key"]}", '
        f'ca_file: "{certs["ca.pem"]}", verify: true }}',
    )  # fmt: skip
    try:
        client = await Client.connect(
            server.url, tls_ca=certs["ca.pem"], tls_cert=certs["client.pem"],
            tls_key=certs["client.key"],
        )  # fmt: skip
        with pytest.raises(EngineError) as e:
            await client.list()
        assert e.value.code == "E-NO-ENGINE"
        await client.close()
        # Without the client certificate the server refuses the handshake.
        with pytest.raises(Exception):  # noqa: B017
            await Client.connect(server.url, tls_ca=certs["ca.pem"])
    finally:
        server.kill()


async def test_tls_required_refuses_a_server_without_tls(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    try:
        with pytest.raises(ValueError, match="does not use TLS"):
            await Client.connect(server.url, tls_required=True)
    finally:
        server.kill()

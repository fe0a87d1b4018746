"""dualgate/edge/tls.py: the server context, its reload, and the ASGI TLS extension, over real
handshakes on loopback (an asyncio server, as the HTTP core will use, in a thread)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from dualgate import Config
from dualgate.config import ConfigError
from dualgate.edge.tls import (
    TLSContextHolder,
    build_context,
    tls_scope_extension,
    verify_mode,
)
from tests.proxies import Certs, make_certs

TIMEOUT = 10.0


def tls_config(certs: Certs, **options: Any) -> Config:
    options.setdefault("ssl_certfile", str(certs.server_cert_file))
    options.setdefault("ssl_keyfile", str(certs.server_key_file))
    return Config(app="x:y", **options)


@contextmanager
def tls_server(holder: TLSContextHolder) -> Iterator[int]:
    """An asyncio server on holder.listener_context; each connection gets the JSON of its
    TLS scope extension and is closed."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        writer.write(json.dumps(holder.scope_extension(ssl_object)).encode())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        server = await asyncio.start_server(
            handle, "127.0.0.1", 0, ssl=holder.listener_context, ssl_handshake_timeout=TIMEOUT
        )
        state["port"] = server.sockets[0].getsockname()[1]
        state["stop"] = stop = asyncio.Event()
        state["loop"] = asyncio.get_running_loop()
        ready.set()
        async with server:
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(TIMEOUT)
    try:
        yield int(state["port"])
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(TIMEOUT)
        assert not thread.is_alive()


def fetch(port: int, context: ssl.SSLContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """Handshake, read the server's JSON; (extension, server certificate as the client saw it)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        peer = sock.getpeercert()
        assert peer is not None
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        # A refused client certificate: under TLS 1.3 the client's handshake ends before the
        # server's check, so the refusal shows as an alert or a bare close on the first read.
        raise ConnectionError("closed without an answer")
    return json.loads(data), dict(peer)


def common_name(peer: dict[str, Any]) -> str:
    return str(next(value for ((key, value),) in peer["subject"] if key == "commonName"))


# -- the context --------------------------------------------------------------------------


def test_context_settings(tls_certs: Certs) -> None:
    context = build_context(tls_config(tls_certs))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    assert context.check_hostname is False


def test_tls_1_1_client_is_refused(tls_certs: Certs) -> None:
    holder = TLSContextHolder(tls_config(tls_certs))
    client = tls_certs.client_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the point is an old client
        client.minimum_version = ssl.TLSVersion.TLSv1
        client.maximum_version = ssl.TLSVersion.TLSv1_1
    client.set_ciphers("ALL:@SECLEVEL=0")
    with tls_server(holder) as port, pytest.raises(ssl.SSLError):
        fetch(port, client)


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("none", ssl.CERT_NONE),
        ("optional", ssl.CERT_OPTIONAL),
        ("required", ssl.CERT_REQUIRED),
        ("REQUIRED", ssl.CERT_REQUIRED),
        ("0", ssl.CERT_NONE),
        ("1", ssl.CERT_OPTIONAL),
        ("2", ssl.CERT_REQUIRED),
        (2, ssl.CERT_REQUIRED),
        (ssl.CERT_OPTIONAL, ssl.CERT_OPTIONAL),
    ],
)
def test_verify_modes(value: str | int, mode: ssl.VerifyMode) -> None:
    assert verify_mode(value) == mode


@pytest.mark.parametrize("value", ["3", "yes", "", -1, "cert_required"])
def test_bad_verify_mode(value: str | int) -> None:
    with pytest.raises(ValueError, match="none, optional or required"):
        verify_mode(value)


def test_alpn_and_extension_over_tls13(tls_certs: Certs) -> None:
    # --http2 off: ALPN offers http/1.1 alone (with HTTP/2 on, h2 first: tests/h2/).
    holder = TLSContextHolder(tls_config(tls_certs, http2="off"))
    client = tls_certs.client_context()
    client.set_alpn_protocols(["h2", "http/1.1"])
    with tls_server(holder) as port:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
            client.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            assert sock.selected_alpn_protocol() == "http/1.1"
            cipher = sock.cipher()
            assert cipher is not None
        extension, _ = fetch(port, tls_certs.client_context())
    assert extension["tls_version"] == 0x0304
    tls13_suites = {
        "TLS_AES_128_GCM_SHA256": 0x1301,
        "TLS_AES_256_GCM_SHA384": 0x1302,
        "TLS_CHACHA20_POLY1305_SHA256": 0x1303,
    }
    assert extension["cipher_suite"] == tls13_suites[cipher[0]]
    assert extension["server_cert"] == tls_certs.server.cert_chain_pems[0].bytes().decode()
    assert extension["client_cert_chain"] == []
    assert extension["client_cert_name"] is None
    assert extension["client_cert_error"] is None


def test_ciphers_and_tls12_extension(tls_certs: Certs) -> None:
    holder = TLSContextHolder(tls_config(tls_certs, ssl_ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
    client = tls_certs.client_context()
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls_server(holder) as port:
        extension, _ = fetch(port, client)
    assert extension["tls_version"] == 0x0303
    assert extension["cipher_suite"] == 0xC02B  # RFC 5289 TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256


def test_client_certificate_required(tls_certs: Certs) -> None:
    config = tls_config(tls_certs, ssl_ca_certs=str(tls_certs.ca_file), ssl_cert_reqs="required")
    holder = TLSContextHolder(config)
    with tls_server(holder) as port:
        extension, _ = fetch(port, tls_certs.client_context(with_client_cert=True))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            fetch(port, tls_certs.client_context())
        stranger = make_certs(tls_certs.ca_file.parent / "stranger")
        foreign = tls_certs.client_context()
        foreign.load_cert_chain(stranger.client_cert_file, stranger.client_key_file)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            fetch(port, foreign)
    client_pem = tls_certs.client.cert_chain_pems[0].bytes().decode()
    assert extension["client_cert_chain"] == [client_pem]
    name = extension["client_cert_name"]
    assert name.startswith("CN=dualgate-test-client,OU="), name
    assert ",O=trustme" in name


def test_client_certificate_optional(tls_certs: Certs) -> None:
    config = tls_config(tls_certs, ssl_ca_certs=str(tls_certs.ca_file), ssl_cert_reqs="1")
    holder = TLSContextHolder(config)
    with tls_server(holder) as port:
        without, _ = fetch(port, tls_certs.client_context())
        with_cert, _ = fetch(port, tls_certs.client_context(with_client_cert=True))
    assert without["client_cert_chain"] == []
    assert len(with_cert["client_cert_chain"]) == 1


def test_extension_from_a_plain_ssl_socket(tls_certs: Certs) -> None:
    """tls_scope_extension takes an SSLSocket as well as asyncio's SSLObject."""
    context = build_context(tls_config(tls_certs))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(TIMEOUT)
        result: dict[str, Any] = {}

        def serve() -> None:
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                result.update(tls_scope_extension(tls, "PEM"))
                tls.sendall(b"x")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as raw,
            tls_certs.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            assert sock.recv(1) == b"x"
        thread.join(TIMEOUT)
    assert result["server_cert"] == "PEM"
    assert result["tls_version"] in (0x0303, 0x0304)


# -- errors at start-up --------------------------------------------------------------------


def test_missing_certfile(tls_certs: Certs, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(
        ConfigError, match=f"--ssl-certfile {missing}: no certificate read: No such"
    ):
        build_context(tls_config(tls_certs, ssl_certfile=str(missing)))


def test_key_that_does_not_match(tls_certs: Certs) -> None:
    with pytest.raises(ConfigError, match="private key does not belong to the certificate"):
        build_context(tls_config(tls_certs, ssl_keyfile=str(tls_certs.client_key_file)))


def test_missing_keyfile(tls_certs: Certs, tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(ConfigError, match=f"--ssl-keyfile {missing}: no private key read"):
        build_context(tls_config(tls_certs, ssl_keyfile=str(missing)))


def test_combined_certfile_without_keyfile(tls_certs: Certs) -> None:
    config = tls_config(
        tls_certs, ssl_certfile=str(tls_certs.server_combined_file), ssl_keyfile=None
    )
    assert build_context(config).minimum_version == ssl.TLSVersion.TLSv1_2


def test_garbage_certfile(tls_certs: Certs, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"--ssl-certfile .*no certificate or crl found"):
        build_context(tls_config(tls_certs, ssl_certfile=str(garbage)))


def encrypted_key(certs: Certs, path: Path, password: bytes) -> Path:
    key = serialization.load_pem_private_key(certs.server_key_file.read_bytes(), None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
    )
    return path


def test_keyfile_password(tls_certs: Certs, tmp_path: Path) -> None:
    key = encrypted_key(tls_certs, tmp_path / "encrypted.key", b"s3cret")
    context = build_context(
        tls_config(tls_certs, ssl_keyfile=str(key), ssl_keyfile_password="s3cret")
    )
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(ConfigError, match="wrong or missing --ssl-keyfile-password"):
        build_context(tls_config(tls_certs, ssl_keyfile=str(key), ssl_keyfile_password="wrong"))
    # No password at all: an error, not OpenSSL asking on the terminal (stdin is not read).
    with pytest.raises(ConfigError, match="wrong or missing --ssl-keyfile-password"):
        build_context(tls_config(tls_certs, ssl_keyfile=str(key)))


def test_bad_ca_file(tls_certs: Certs, tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("nothing here\n")
    config = tls_config(tls_certs, ssl_ca_certs=str(garbage), ssl_cert_reqs="required")
    with pytest.raises(ConfigError, match=f"--ssl-ca-certs {garbage}: cannot load"):
        build_context(config)


def test_no_certfile_no_tls() -> None:
    with pytest.raises(ConfigError, match="needs --ssl-certfile"):
        build_context(Config(app="x:y"))


# -- reload --------------------------------------------------------------------------------


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def recorded(name: str) -> Iterator[list[logging.LogRecord]]:
    """Records of one logger, whether or not a running server set it not to propagate."""
    logger = logging.getLogger(name)
    handler = _ListHandler()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def install(source: Certs, target: Certs) -> None:
    """Put `source`'s server certificate and key where `target`'s files are (a renewal)."""
    shutil.copyfile(source.server_cert_file, target.server_cert_file)
    shutil.copyfile(source.server_key_file, target.server_key_file)


def test_reload_serves_the_new_certificate_and_keeps_it_when_the_next_is_broken(
    tls_certs: Certs, tmp_path: Path
) -> None:
    renewed = make_certs(tmp_path / "renewed", common_name="renewed-server")
    holder = TLSContextHolder(tls_config(tls_certs))
    trusting_both = tls_certs.client_context()
    trusting_both.load_verify_locations(renewed.ca_file)
    with tls_server(holder) as port:
        extension, peer = fetch(port, trusting_both)
        assert common_name(peer) == "dualgate-test-server"

        install(renewed, tls_certs)
        assert holder.reload() is True
        extension, peer = fetch(port, trusting_both)
        assert common_name(peer) == "renewed-server"
        assert extension["server_cert"] == renewed.server.cert_chain_pems[0].bytes().decode()

        # A broken renewal: the certificate is garbage. The old context stays.
        tls_certs.server_cert_file.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
        with recorded("dualgate.error") as records:
            assert holder.reload() is False
        errors = [r for r in records if r.levelno >= logging.WARNING]
        assert len(errors) == 1, errors
        assert errors[0].levelno == logging.ERROR
        assert errors[0].exc_info is None
        message = errors[0].getMessage()
        assert "TLS reload failed, still serving the previous certificate" in message
        assert str(tls_certs.server_cert_file) in message
        assert "\n" not in message
        _, peer = fetch(port, trusting_both)
        assert common_name(peer) == "renewed-server"

        # A half-done renewal: new certificate, old key. Still the previous one.
        fresh = make_certs(tmp_path / "fresh", common_name="fresh-server")
        shutil.copyfile(fresh.server_cert_file, tls_certs.server_cert_file)
        assert holder.reload() is False
        _, peer = fetch(port, trusting_both)
        assert common_name(peer) == "renewed-server"


def test_reload_reaches_the_ca_store(tls_certs: Certs, tmp_path: Path) -> None:
    other = make_certs(tmp_path / "other")
    ca_file = tmp_path / "clients-ca.pem"
    shutil.copyfile(tls_certs.ca_file, ca_file)
    config = tls_config(tls_certs, ssl_ca_certs=str(ca_file), ssl_cert_reqs="required")
    holder = TLSContextHolder(config)
    other_client = tls_certs.client_context()
    other_client.load_cert_chain(other.client_cert_file, other.client_key_file)
    with tls_server(holder) as port:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            fetch(port, other_client)
        shutil.copyfile(other.ca_file, ca_file)
        assert holder.reload() is True
        extension, _ = fetch(port, other_client)
    assert len(extension["client_cert_chain"]) == 1

"""The edge settings of Config: defaults, the environment, and one clear error per bad value."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from dualgate import Config
from dualgate.cli import build_parser
from dualgate.config import ConfigError
from tests.test_cli import run_cli, the_one_line


def config(**options: Any) -> Config:
    return Config(app="x:y", **options)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    made = config()
    assert made.proxy_headers is True
    assert made.forwarded_allow_ips == "127.0.0.1,unix:"
    assert made.forwarded_trust_hops is None
    assert made.proxy_protocol is False
    assert made.ssl_certfile is None
    assert made.ssl_cert_reqs == "none"


def test_forwarded_allow_ips_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8")
    assert config().forwarded_allow_ips == "10.0.0.0/8"
    # An explicit setting wins over the environment.
    assert config(forwarded_allow_ips="*").forwarded_allow_ips == "*"


def test_bad_forwarded_allow_ips_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/33")
    with pytest.raises(ConfigError, match=re.escape("--forwarded-allow-ips: '10.0.0.0/33'")):
        config()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"forwarded_allow_ips": "10.0.0.1/24"}, "--forwarded-allow-ips: '10.0.0.1/24'"),
        ({"forwarded_allow_ips": "localhost"}, "not an IP address, a CIDR network"),
        ({"forwarded_trust_hops": 0}, "--forwarded-trust-hops must be greater than 0"),
        ({"ssl_keyfile": "k.pem"}, "--ssl-keyfile needs --ssl-certfile"),
        ({"ssl_keyfile_password": "pw"}, "--ssl-keyfile-password needs --ssl-certfile"),
        ({"ssl_ca_certs": "ca.pem"}, "--ssl-ca-certs needs --ssl-certfile"),
        ({"ssl_ciphers": "ECDHE+AESGCM"}, "--ssl-ciphers needs --ssl-certfile"),
        ({"ssl_cert_reqs": "required"}, "--ssl-cert-reqs needs --ssl-certfile"),
        ({"ssl_cert_reqs": "always"}, "--ssl-cert-reqs takes none, optional or required"),
        ({"ssl_cert_reqs": 3}, "--ssl-cert-reqs takes none, optional or required"),
        (
            {"ssl_certfile": "c.pem", "ssl_cert_reqs": "2"},
            "--ssl-cert-reqs optional/required needs --ssl-ca-certs",
        ),
        (
            {"ssl_certfile": "c.pem", "ssl_ciphers": "NO-SUCH-CIPHER"},
            "--ssl-ciphers: OpenSSL selects no cipher",
        ),
    ],
)
def test_invalid_values(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config(**options)


def test_valid_tls_settings() -> None:
    made = config(
        ssl_certfile="c.pem",
        ssl_keyfile="k.pem",
        ssl_keyfile_password="pw",
        ssl_ca_certs="ca.pem",
        ssl_cert_reqs=1,
        ssl_ciphers="ECDHE+AESGCM",
    )
    assert made.ssl_cert_reqs == 1


def test_flags_come_from_the_fields() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "x:y",
            "--no-proxy-headers",
            "--forwarded-allow-ips",
            "10.0.0.0/8,unix:",
            "--forwarded-trust-hops",
            "2",
            "--proxy-protocol",
            "--ssl-certfile",
            "c.pem",
            "--ssl-cert-reqs",
            "optional",
        ]
    )
    assert args.proxy_headers is False
    assert args.forwarded_allow_ips == "10.0.0.0/8,unix:"
    assert args.forwarded_trust_hops == 2
    assert args.proxy_protocol is True
    assert args.ssl_certfile == "c.pem"
    assert args.ssl_cert_reqs == "optional"


def test_help_tells_where_the_trust_default_comes_from(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    assert "$FORWARDED_ALLOW_IPS, else 127.0.0.1,unix:" in " ".join(text.split())


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--forwarded-allow-ips", "10.0.0.0/33"], "--forwarded-allow-ips"),
        (["--ssl-keyfile", "key.pem"], "--ssl-keyfile"),
        (["--ssl-certfile", "c.pem", "--ssl-cert-reqs", "maybe"], "--ssl-cert-reqs"),
        (["--forwarded-trust-hops", "0"], "--forwarded-trust-hops"),
    ],
)
def test_cli_refuses_with_one_line(tmp_path: Path, args: list[str], flag: str) -> None:
    (tmp_path / "good.py").write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return [b'']\n"
    )
    line = the_one_line(*run_cli("good:application", *args, cwd=tmp_path))
    assert flag in line, line

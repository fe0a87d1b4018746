"""TLS: the server's SSLContext from Config, reloadable, and the ASGI `tls` scope extension.

    holder = TLSContextHolder(config)   # raises ConfigError naming the setting that is wrong
    loop.create_server(..., ssl=holder.listener_context)
    holder.reload()                     # SIGHUP: True, or False and one error line, old kept
    scope["extensions"]["tls"] = holder.scope_extension(ssl_object)

`listener_context` is a fixed context whose SNI callback (which OpenSSL calls on every
ClientHello, with or without a server name) hands the handshake to the holder's current
context, so a reload reaches new connections without touching the listening socket. A
connection that reads a PROXY header before its handshake takes `holder.context` itself
(tls_bio.py).

Settings: TLS 1.2 at least; ALPN offers h2 then http/1.1 while HTTP/2 is on (--http2), else
only http/1.1 (h2/preface.py); client
certificates per `--ssl-cert-reqs` (none/optional/required, or uvicorn's 0/1/2), checked
against `--ssl-ca-certs`; `--ssl-ciphers` restricts TLS 1.2 suites (OpenSSL syntax; TLS 1.3
suites are OpenSSL's own).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from dualgate.errors import ConfigError
from dualgate.h2.preface import alpn_protocols, http2_enabled
from dualgate.logs import error_logger

if TYPE_CHECKING:
    from dualgate.config import Config

__all__ = [
    "TLSContextHolder",
    "build_context",
    "check_ciphers",
    "tls_scope_extension",
    "verify_mode",
]


_VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
    "0": ssl.CERT_NONE,
    "1": ssl.CERT_OPTIONAL,
    "2": ssl.CERT_REQUIRED,
}

# The versions ssl.SSLObject.version() names, as the wire numbers the ASGI spec asks for.
_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

# RFC 4514 section 3 short names, keyed by the long names OpenSSL gives getpeercert(); other
# attributes are written as their dotted OID (section 2.3) when known here.
_DN_NAMES = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
    "emailAddress": "1.2.840.113549.1.9.1",
    "serialNumber": "2.5.4.5",
    "surname": "2.5.4.4",
    "givenName": "2.5.4.42",
    "title": "2.5.4.12",
}

_cipher_ids: dict[str, int] | None = None


def verify_mode(value: str | int) -> ssl.VerifyMode:
    """`--ssl-cert-reqs`: none/optional/required, or uvicorn's 0/1/2 (ValueError otherwise)."""
    mode = _VERIFY_MODES.get(str(value).strip().lower())
    if mode is None:
        raise ValueError(f"takes none, optional or required (or 0, 1, 2), got {value!r}")
    return mode


def check_ciphers(ciphers: str) -> None:
    """ValueError when OpenSSL selects no cipher from this string."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
    except ssl.SSLError:
        raise ValueError(f"OpenSSL selects no cipher from {ciphers!r}") from None


def build_context(config: Config) -> ssl.SSLContext:
    """A server-side context from the ssl_* settings; ConfigError names what failed."""
    if config.ssl_certfile is None:
        raise ConfigError("TLS needs --ssl-certfile")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # A TLS 1.2 client may not renegotiate: it costs the server a handshake per request, and
    # the memory-BIO path (tls_bio.py) never has to read in the middle of a write.
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(alpn_protocols(http2_enabled(config)))
    if config.ssl_ciphers:
        try:
            context.set_ciphers(config.ssl_ciphers)
        except ssl.SSLError:
            raise ConfigError(
                f"--ssl-ciphers: OpenSSL selects no cipher from {config.ssl_ciphers!r}"
            ) from None
    _load_chain(context, config.ssl_certfile, config.ssl_keyfile, config.ssl_keyfile_password)
    mode = verify_mode(config.ssl_cert_reqs)
    if config.ssl_ca_certs is not None:
        try:
            context.load_verify_locations(cafile=config.ssl_ca_certs)
        except OSError as exc:
            raise ConfigError(
                f"--ssl-ca-certs {config.ssl_ca_certs}: cannot load: {_reason(exc)}"
            ) from None
    context.verify_mode = mode
    return context


def _load_chain(
    context: ssl.SSLContext, certfile: str, keyfile: str | None, password: str | None
) -> None:
    # The certificate file is read on its own first, so an error names the right file.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=certfile)
    except OSError as exc:
        raise ConfigError(
            f"--ssl-certfile {certfile}: no certificate read: {_reason(exc)}"
        ) from None
    key_flag = f"--ssl-keyfile {keyfile}" if keyfile else f"--ssl-certfile {certfile}"
    try:
        # Never None: OpenSSL would ask for a missing password on the terminal.
        context.load_cert_chain(certfile, keyfile, password if password is not None else str)
    except OSError as exc:
        if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
            reason = "the private key does not belong to the certificate"
        elif _is_encrypted(keyfile or certfile):
            reason = "cannot decrypt the private key: wrong or missing --ssl-keyfile-password"
        else:
            reason = f"no private key read: {_reason(exc)}"
        raise ConfigError(f"{key_flag}: {reason}") from None


def _is_encrypted(keyfile: str) -> bool:
    try:
        with open(keyfile, "rb") as file:
            return b"ENCRYPTED" in file.read(1 << 20)
    except OSError:
        return False


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        # "[X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found (_ssl.c:4154)"
        text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        return text.split(" (_ssl.c", 1)[0]
    return exc.strerror or str(exc)


def _server_cert_pem(certfile: str) -> str | None:
    """The first certificate of the cert file, as PEM: the one the server presents."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    try:
        with open(certfile, encoding="ascii", errors="replace") as file:
            text = file.read()
    except OSError:
        return None
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        return None
    try:
        der = ssl.PEM_cert_to_DER_cert(text[start : stop + len(end)])
    except ValueError:
        return None
    return ssl.DER_cert_to_PEM_cert(der)


class TLSContextHolder:
    """The current server context, rebuilt from the files on `reload()`."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.listener_context = self.context = build_context(config)
        self.listener_context.sni_callback = self._hand_over
        self.server_cert = _server_cert_pem(config.ssl_certfile or "")

    def _hand_over(self, ssl_object: ssl.SSLObject, server_name: str | None, _: Any) -> None:
        # Every new handshake gets the newest context (certificate, key and CA store).
        if self.context is not self.listener_context:
            ssl_object.context = self.context

    def reload(self) -> bool:
        """Load the files again. On failure keep the current context and log one line."""
        try:
            context = build_context(self._config)
        except (ConfigError, OSError, ValueError) as exc:
            error_logger.error("TLS reload failed, still serving the previous certificate: %s", exc)
            return False
        self.context = context
        self.server_cert = _server_cert_pem(self._config.ssl_certfile or "")
        error_logger.info("TLS certificate reloaded from %s", self._config.ssl_certfile)
        return True

    def scope_extension(self, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
        return tls_scope_extension(ssl_object, self.server_cert)


def tls_scope_extension(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, server_cert: str | None
) -> dict[str, Any]:
    """The ASGI TLS extension (asgiref specs/tls.rst, version 0.2) of one finished handshake.

    The client chain is the client's certificate alone, on every Python: before 3.13 nothing
    else can be seen, and 3.13's `get_unverified_chain` on the server side lists the trust
    anchor too, which the client never sent (and on 3.13.0 it fails outright on a connection
    without a client certificate). `client_cert_name` needs a verified certificate (cert-reqs
    optional or required); a failed verification ends the handshake, so `client_cert_error`
    is always None here.
    """
    chain: list[str] = []
    leaf = ssl_object.getpeercert(binary_form=True)
    if leaf:
        chain = [ssl.DER_cert_to_PEM_cert(leaf)]
    name = None
    if chain:
        subject = (ssl_object.getpeercert() or {}).get("subject")
        if subject:
            name = _rfc4514(subject)
    cipher = ssl_object.cipher()
    version = ssl_object.version()
    return {
        "server_cert": server_cert,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version) if version else None,
        "cipher_suite": _cipher_suite(cipher[0]) if cipher else None,
    }


def _cipher_suite(name: str) -> int | None:
    """The IANA number of an OpenSSL cipher name (OpenSSL's id carries it in its low 16 bits)."""
    global _cipher_ids
    if _cipher_ids is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_ciphers("ALL:@SECLEVEL=0")
        _cipher_ids = {cipher["name"]: cipher["id"] & 0xFFFF for cipher in context.get_ciphers()}
    return _cipher_ids.get(name)


def _rfc4514(subject: Any) -> str:
    """getpeercert()'s subject (RDNs in certificate order) as an RFC 4514 string."""
    rdns = []
    for rdn in reversed(subject):
        rdns.append("+".join(f"{_DN_NAMES.get(key, key)}={_escape(value)}" for key, value in rdn))
    return ",".join(rdns)


def _escape(value: str) -> str:
    # RFC 4514 section 2.4.
    out = []
    for index, char in enumerate(value):
        if (
            char in '"+,;<>\\'
            or (index == 0 and char in "# ")
            or (index == len(value) - 1 and char == " ")
        ):
            out.append("\\" + char)
        elif char == "\0":
            out.append("\\00")
        else:
            out.append(char)
    return "".join(out)

"""gunicorn's settings, read as dualgate's: what the gunicorn worker serves with, or why it won't.

    refusal(cfg)      # None, or the one line naming the first setting dualgate cannot honour
    options(cfg)      # Config keyword arguments for what gunicorn's settings mean to dualgate

A setting left at gunicorn's default is never refused: the arbiter sets every one of them.
A setting given a value dualgate cannot carry out is refused, so the worker never serves
something other than what gunicorn announced ("Listening at: https://..." is served as
HTTPS, or not at all). README "gunicorn" lists the map; the rules that need more than a name:

- TLS (certfile, keyfile, ca_certs, cert_reqs, ciphers) goes to the ssl_* settings and
  edge/tls.py's context: TLS 1.2 and newer, as gunicorn's default context (which ignores
  ssl_version since gunicorn 21). A ssl_version naming an older protocol, a ssl_context hook
  and suppress_ragged_eofs off are refused; do_handshake_on_connect changes nothing under
  asyncio, whose TLS transport completes the handshake before it reads a request either way.
- forwarded_allow_ips is dualgate's trust list, with "unix:" added: gunicorn trusts every
  unix-socket peer. From a trusted peer dualgate takes the client, scheme and host of
  X-Forwarded-For/-Proto/-Host/-Port and Forwarded (edge/forwarded.py), where gunicorn's own
  workers take the scheme alone.
- secure_scheme_headers: dualgate reads X-Forwarded-Proto (and Forwarded's proto=); gunicorn's
  default and {"X-FORWARDED-PROTO": "https"} are accepted, any other dict refused.
- proxy_protocol (v1, v2, auto) is dualgate's --proxy-protocol, which reads either version
  and needs the header on every connection, from a peer on the one trust list: so
  proxy_allow_ips must list what forwarded_allow_ips lists, and TLS is refused with it
  (gunicorn reads the header inside TLS, dualgate and HAProxy put it before).
- access_log_format: gunicorn's logger formats each line from what the worker hands it
  (gunicorn_access.py), which has no response headers ({name}o) and no environ keys beyond
  the CGI/WSGI ones the worker builds ({name}e).
"""

from __future__ import annotations

import re
import ssl
from typing import Any

from dualgate.config import Config
from dualgate.errors import ConfigError

__all__ = ["LOGGED_ENVIRON", "in_gunicorns_words", "options", "refusal"]

# The environ keys gunicorn_access.py builds for the logger (besides HTTP_*): what a
# {name}e atom may name.
LOGGED_ENVIRON = frozenset(
    (
        "request_method",
        "script_name",
        "path_info",
        "query_string",
        "raw_uri",
        "server_name",
        "server_port",
        "server_protocol",
        "remote_addr",
        "remote_port",
        "content_type",
        "content_length",
        "https",
        "wsgi.url_scheme",
        "wsgi.multiprocess",
        "wsgi.multithread",
        "wsgi.run_once",
        "wsgi.version",
        "wsgi.input_terminated",
    )
)

# The secure_scheme_headers, set by hand, that dualgate's X-Forwarded-Proto reading carries out
# (left at gunicorn's default, of which dualgate reads X-Forwarded-Proto, it is not refused).
_SCHEME_HEADERS = ({"X-FORWARDED-PROTO": "https"},)
# ssl_version values meaning "negotiate the newest": gunicorn ignores the setting, and its
# default context, like dualgate's, serves TLS 1.2 and 1.3 whatever it says.
_NEGOTIATING = frozenset(("TLS", "TLS_SERVER", "SSLv23", "TLSv1_2"))
# dualgate's flags for the values mapped from gunicorn's settings.
_GUNICORN_NAMES = {
    "--ssl-certfile": "certfile",
    "--ssl-keyfile": "keyfile",
    "--ssl-ca-certs": "ca_certs",
    "--ssl-cert-reqs": "cert_reqs",
    "--ssl-ciphers": "ciphers",
    "--forwarded-allow-ips": "forwarded_allow_ips",
    "--root-path": "root_path",
    "--backlog": "backlog",
    "--threads": "threads",
    "--limit-concurrency": "worker_connections",
    "--timeout-keep-alive": "keepalive",
    "--timeout-graceful-shutdown": "graceful_timeout",
    "--max-head-size": "limit_request_line",
    "--loop": "asgi_loop",
    "--ws-max-size": "websocket_max_message_size",
}
_ATOM = re.compile(r"%\(([^)]*)\)")
# Settings dualgate has nothing for, refused whenever they differ from gunicorn's default.
_FIXED = {
    "ssl_context": "dualgate builds its own TLS context from certfile, keyfile, ca_certs, "
    "cert_reqs and ciphers (and reloads it on SIGHUP)",
    "suppress_ragged_eofs": "dualgate's TLS always takes an EOF without close_notify as the "
    "end of the connection",
    "pre_request": "dualgate calls no per-request hook",
    "post_request": "dualgate calls no per-request hook",
    "sendfile": "dualgate always uses sendfile() for a plain-HTTP wsgi.file_wrapper",
    "forwarder_headers": "dualgate takes no environ variable from a request header",
    "asgi_disconnect_grace_period": "dualgate never cancels an ASGI request; the application "
    "gets http.disconnect and finishes in its own time",
    "http_parser": "dualgate parses requests with its own reader",
    "permit_obsolete_folding": "dualgate's request reader has fixed rules",
    "strip_header_spaces": "dualgate's request reader has fixed rules",
    "permit_unconventional_http_method": "dualgate's request reader has fixed rules",
    "permit_unconventional_http_version": "dualgate's request reader has fixed rules",
    "casefold_http_method": "dualgate's request reader has fixed rules",
    "protocol": "dualgate speaks HTTP/1.1 only, not uWSGI",
}


def refusal(cfg: Any) -> str | None:
    """The one line naming the first setting dualgate cannot honour, or None: what options()
    refuses, or what dualgate's Config refuses of the mapped values, in gunicorn's words."""
    try:
        Config(app=_no_app, **options(cfg))
    except ConfigError as exc:
        return in_gunicorns_words(str(exc))
    return None


def in_gunicorns_words(text: str) -> str:
    """A dualgate error about a mapped value, naming gunicorn's setting instead of the flag."""
    for flag, name in _GUNICORN_NAMES.items():
        if flag in text:
            return f"gunicorn setting {name}: {text.replace(flag, name)}"
    return text


def _no_app(environ: Any, start_response: Any) -> Any:
    """Stands in for the application, which a settings check does not load."""
    raise NotImplementedError


def options(cfg: Any) -> dict[str, Any]:
    """Config keyword arguments (all but the application) for gunicorn's settings `cfg`;
    ConfigError naming the gunicorn setting when one cannot be honoured."""
    for name, why in _FIXED.items():
        if _changed(cfg, name):
            raise _refuse(name, why)
    protocols = list(_get(cfg, "http_protocols", ["h1"]))  # gunicorn allows h1 and h2 only
    if _get(cfg, "header_map", "drop") != "drop":
        raise _refuse("header_map", "dualgate drops header names with an underscore (drop)")
    _check_access_log_format(cfg.access_log_format)
    found: dict[str, Any] = {
        "backlog": cfg.backlog,
        "threads": max(1, cfg.threads),
        "timeout_graceful_shutdown": float(cfg.graceful_timeout),
        "limit_concurrency": max(1, cfg.worker_connections),
        "log_level": str(cfg.loglevel).lower(),
        # gunicorn's logger writes the access lines (--access-logfile, its format, statsd).
        "access_log": False,
        "loop": _get(cfg, "asgi_loop", "auto"),
        "lifespan": _get(cfg, "asgi_lifespan", "auto"),
        # HTTP/2 exactly when gunicorn announced it (ALPN under TLS, prior knowledge on plain).
        "http2": "on" if "h2" in protocols else "off",
    }
    if cfg.keepalive > 0:
        found["timeout_keep_alive"] = float(cfg.keepalive)
    root = str(_get(cfg, "root_path", ""))
    if root:
        if not root.startswith("/") or root.endswith("/"):
            raise _refuse(
                "root_path", f"dualgate needs it to start with / and not end with /, got {root!r}"
            )
        found["root_path"] = root
    size = _get(cfg, "websocket_max_message_size", 16 * 1024 * 1024)
    if size <= 0:
        raise _refuse("websocket_max_message_size", "dualgate always limits a message (0)")
    found["ws_max_size"] = size
    found.update(_edge(cfg))
    found.update(_tls(cfg))
    return found


def _edge(cfg: Any) -> dict[str, Any]:
    headers = {str(k).upper(): v for k, v in cfg.secure_scheme_headers.items()}
    if _changed(cfg, "secure_scheme_headers") and headers not in _SCHEME_HEADERS:
        raise _refuse(
            "secure_scheme_headers",
            "dualgate reads the scheme from X-Forwarded-Proto (http/https) and Forwarded "
            'only: use {"X-FORWARDED-PROTO": "https"}',
        )
    trusted = list(cfg.forwarded_allow_ips)
    found: dict[str, Any] = {
        "proxy_headers": True,
        # gunicorn trusts a unix-socket peer whatever the list says.
        "forwarded_allow_ips": ",".join([*trusted, "unix:"]),
    }
    mode = _get(cfg, "proxy_protocol", "off")
    if mode not in (False, "off"):  # a bool before gunicorn 24
        if cfg.is_ssl:
            raise _refuse(
                "proxy_protocol",
                "with certfile gunicorn reads the PROXY header inside TLS; dualgate reads it "
                "before the handshake, where HAProxy sends it",
            )
        if set(cfg.proxy_allow_ips) != set(trusted):
            raise _refuse(
                "proxy_allow_ips",
                "dualgate trusts PROXY headers from forwarded_allow_ips; give both the same list",
            )
        found["proxy_protocol"] = True
    return found


def _tls(cfg: Any) -> dict[str, Any]:
    names = _protocol_names(cfg.ssl_version)
    if names.isdisjoint(_NEGOTIATING):
        raise _refuse("ssl_version", f"dualgate serves TLS 1.2 and newer, not {min(names)}")
    if not cfg.is_ssl:
        return {}  # gunicorn ignores the other SSL settings without a certificate too
    if not cfg.certfile:
        raise _refuse("keyfile", "it needs certfile")
    found: dict[str, Any] = {"ssl_certfile": cfg.certfile, "ssl_keyfile": cfg.keyfile}
    if cfg.ciphers:
        found["ssl_ciphers"] = cfg.ciphers
    if cfg.ca_certs:
        found["ssl_ca_certs"] = cfg.ca_certs
    reqs = int(cfg.cert_reqs)
    if reqs not in (0, 1, 2):
        raise _refuse("cert_reqs", f"takes 0, 1 or 2, got {reqs}")
    if reqs and not cfg.ca_certs:
        raise _refuse(
            "cert_reqs",
            "without ca_certs gunicorn checks client certificates against the system's CAs; "
            "dualgate needs ca_certs",
        )
    found["ssl_cert_reqs"] = str(reqs)
    return found


def _protocol_names(version: str | int) -> set[str]:
    """ssl_version as the ssl module's PROTOCOL_ names (a number may have two: TLS, SSLv23)."""
    if isinstance(version, str):
        return {version.removeprefix("PROTOCOL_")}
    names = {
        name.removeprefix("PROTOCOL_")
        for name in dir(ssl)
        if name.startswith("PROTOCOL_") and getattr(ssl, name) == version
    }
    return names or {str(version)}


def _check_access_log_format(text: str) -> None:
    for atom in _ATOM.findall(text):
        name = atom.lower()
        if not (name.startswith("{") and name[-2:] in ("}o", "}e")):
            continue
        inner = name[1:-2]
        if name.endswith("}o"):
            raise _refuse("access_log_format", f"{atom}: dualgate does not keep response headers")
        if not inner.startswith("http_") and inner not in LOGGED_ENVIRON:
            raise _refuse(
                "access_log_format",
                f"{atom}: the logger sees the request's CGI and WSGI variables only, not the "
                "application's environ",
            )


def _get(cfg: Any, name: str, default: Any) -> Any:
    """A setting's value; `default` (its meaning when absent) on a gunicorn without it: the
    extra allows gunicorn 22, which has no ASGI, HTTP/2 or header_map settings."""
    setting = cfg.settings.get(name)
    return default if setting is None else setting.get()


def _changed(cfg: Any, name: str) -> bool:
    setting = cfg.settings.get(name)
    if setting is None:
        return False  # a gunicorn without this setting
    return bool(setting.get() != setting.validator(setting.default))


def _refuse(name: str, why: str) -> ConfigError:
    return ConfigError(f"gunicorn setting {name}: {why}; dualgate's worker cannot honour it")

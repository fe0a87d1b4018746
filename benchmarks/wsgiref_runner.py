"""Serve MODULE:ATTR with the stdlib wsgiref server, exactly as the seed does.

Plain `make_server` (single-threaded, HTTP/1.0, no keep-alive) is the baseline on purpose. The
only change is a handler whose log_message does nothing: wsgiref writes one stderr line per
request, and writing that to a pipe or file would be measured as server time. With
`--certfile`/`--keyfile` the listening socket is wrapped in TLS (the TLS scenarios' baseline).
"""

from __future__ import annotations

import argparse
import importlib
import ssl
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("app", help="MODULE:ATTR")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certfile", help="serve HTTPS with this certificate chain")
    parser.add_argument("--keyfile", help="the private key of --certfile")
    args = parser.parse_args()
    module, _, attr = args.app.partition(":")
    app = getattr(importlib.import_module(module), attr)
    with make_server("127.0.0.1", args.port, app, handler_class=QuietHandler) as httpd:
        if args.certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(args.certfile, args.keyfile)
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        httpd.serve_forever()


if __name__ == "__main__":
    main()

"""WSGI apps wrapped in WSGI-to-ASGI adapters, so one ASGI server can compare the adapters.

Attributes are named ADAPTER_SCENARIO (for example `a2wsgi_upload`) and built on first access,
so a missing adapter package fails only the server that asks for it.
"""

from __future__ import annotations

import importlib
from typing import Any

ADAPTERS = {
    "dualgate": ("dualgate", "WSGIMiddleware"),
    "a2wsgi": ("a2wsgi", "WSGIMiddleware"),
    "asgiref": ("asgiref.wsgi", "WsgiToAsgi"),
}
SCENARIOS = {
    "hello": "benchmarks.apps.hello",
    "download": "benchmarks.apps.download",
    "upload": "benchmarks.apps.upload",
}


def __getattr__(name: str) -> Any:
    adapter, _, scenario = name.partition("_")
    if adapter not in ADAPTERS or scenario not in SCENARIOS:
        raise AttributeError(name)
    module, attr = ADAPTERS[adapter]
    # Imported by name: dualgate.WSGIMiddleware may not exist yet, and that must fail at start-up
    # of this one server, not at import of the harness.
    wrapper = getattr(importlib.import_module(module), attr)
    wsgi_app = importlib.import_module(SCENARIOS[scenario]).application
    wrapped = wrapper(wsgi_app)
    globals()[name] = wrapped
    return wrapped

"""Several applications under one server, each under its own path prefix (`--mount`)."""

from __future__ import annotations

from dualgate.protocol import RequestCycle, RequestHandler
from dualgate.wsgi import path_info_from_raw

__all__ = ["MountRouter"]


class MountRouter:
    """Hands each request to the handler of the longest prefix that matches its path."""

    def __init__(self, routes: list[tuple[str, RequestHandler]]) -> None:
        self.routes = sorted(routes, key=lambda route: len(route[0]), reverse=True)

    def __call__(self, cycle: RequestCycle) -> None:
        target = cycle.target
        if not target.startswith(b"/"):
            # Absolute-form: only the path decides.
            rest = target.partition(b"://")[2]
            slash = rest.find(b"/")
            target = rest[slash:] if slash >= 0 else b"/"
        path = path_info_from_raw(target.partition(b"?")[0])
        for prefix, handler in self.routes:
            if prefix == "" or path == prefix or path.startswith(prefix + "/"):
                handler(cycle)
                return
        cycle.respond_error(404, "Not Found\n")

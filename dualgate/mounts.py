"""Several applications under one server, each under its own path prefix (`--mount`)."""

from __future__ import annotations

from urllib.parse import quote

from dualgate.http.cycle import RequestCycle
from dualgate.http.paths import strip_root_path
from dualgate.http.state import RequestHandler
from dualgate.wsgi.bridge import path_info_from_raw

__all__ = ["MountRouter"]


class MountRouter:
    """Hands each request to the handler of the longest prefix that matches its path."""

    def __init__(self, routes: list[tuple[str, RequestHandler]]) -> None:
        self.routes = sorted(routes, key=lambda route: len(route[0]), reverse=True)

    def __call__(self, cycle: RequestCycle) -> None:
        target = cycle.request.target
        path = path_info_from_raw(target.partition(b"?")[0])
        # With --root-path, each handler's root path is ROOT + PREFIX: prefixes match the path
        # below the root path, and a root path that a proxy stripped goes back on the target, so
        # every handler finds its whole mount point in it.
        root = cycle.config.root_path
        if root:
            below = strip_root_path(path, root)
            if below is not None:
                path = below or "/"
            elif target.startswith(b"/"):
                cycle.request = cycle.request.with_target(
                    quote(root, safe="/").encode("ascii") + target
                )
        for prefix, handler in self.routes:
            if strip_root_path(path, prefix) is not None:
                handler(cycle)
                return
        cycle.respond_error(404, "Not Found\n")

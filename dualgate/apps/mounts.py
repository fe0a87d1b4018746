"""Several applications under one server, each under its own path prefix (`--mount`)."""

from __future__ import annotations

from dualgate.http.cycle import RequestCycle
from dualgate.http.paths import strip_root_path
from dualgate.http.state import RequestHandler
from dualgate.wsgi.bridge import path_info_from_raw

__all__ = ["MountRouter"]


class MountRouter:
    """Hands each request to the handler of the longest prefix that matches its path.

    With --root-path ROOT, each handler's root path is ROOT + PREFIX, and prefixes match the
    path below ROOT; a request whose target lacks ROOT (a proxy stripped it) is matched as it
    came. The cycle goes on as it came too: each handler was built knowing ROOT (its
    `proxy_root`), and puts back what a proxy stripped itself.
    """

    def __init__(self, routes: list[tuple[str, RequestHandler]], root_path: str = "") -> None:
        self.routes = sorted(routes, key=lambda route: len(route[0]), reverse=True)
        self.root_path = root_path

    def __call__(self, cycle: RequestCycle) -> None:
        path = path_info_from_raw(cycle.request.target.partition(b"?")[0])
        root = self.root_path
        if root:
            below = strip_root_path(path, root)
            if below is not None:
                path = below or "/"
        for prefix, handler in self.routes:
            if strip_root_path(path, prefix) is not None:
                handler(cycle)
                return
        cycle.respond_error(404, "Not Found\n")

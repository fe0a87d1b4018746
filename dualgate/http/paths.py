"""The one rule for "this path lies under that root path" (root_path, SCRIPT_NAME, mounts).

A root is a whole number of path segments: "/api" holds "/api" and "/api/users" but not
"/apix", which a plain `startswith` would wrongly take (and then serve "/apix" with
PATH_INFO "x").
"""

from __future__ import annotations

__all__ = ["strip_root_path"]


def strip_root_path(path: str, root: str) -> str | None:
    """The rest of `path` below `root` ("" when `path` is `root`), or None when it is not under.

    `root` is given without a trailing slash; the empty root holds every path, unchanged.
    """
    if not root:
        return path
    if path.startswith(root):
        rest = path[len(root) :]
        if not rest or rest[0] == "/":
            return rest
    return None

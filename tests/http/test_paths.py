"""dualgate.http.paths.strip_root_path: a root path holds whole segments only."""

from __future__ import annotations

import pytest

from dualgate.http.paths import strip_root_path


@pytest.mark.parametrize(
    ("path", "root", "rest"),
    [
        ("/api", "/api", ""),
        ("/api/", "/api", "/"),
        ("/api/users/7", "/api", "/users/7"),
        ("/a/b/c", "/a/b", "/c"),
        ("/api//x", "/api", "//x"),
        # Not under the root: a longer segment, a parent, a sibling, another case.
        ("/apix", "/api", None),
        ("/apix/users", "/api", None),
        ("/", "/api", None),
        ("/ap", "/api", None),
        ("/other/api", "/api", None),
        ("/API/users", "/api", None),
        ("", "/api", None),
        # The empty root holds every path, unchanged.
        ("/users", "", "/users"),
        ("/", "", "/"),
        ("", "", ""),
        ("*", "", "*"),
    ],
)
def test_strip_root_path(path: str, root: str, rest: str | None) -> None:
    assert strip_root_path(path, root) == rest


def test_rest_and_root_rebuild_the_path() -> None:
    # What SCRIPT_NAME + PATH_INFO must give back (PEP 3333 "URL Reconstruction").
    for path in ("/app", "/app/", "/app/x/y", "/app/%20"):
        rest = strip_root_path(path, "/app")
        assert rest is not None
        assert "/app" + rest == path

"""Django's WSGI handler end to end, over real sockets, through every WSGI feeder.

Settings are configured here, minimally, the first time they are needed; when some other test
configured Django first, this module's URLs and hosts are put in place with override_settings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.wsgi_feeders import WSGIUrl, client, url_port


def hello(request: Any, name: str) -> Any:
    from django.http import JsonResponse  # type: ignore[import-untyped]

    return JsonResponse(
        {
            "greeting": f"hello {name}",
            "host": request.get_host(),  # checked against ALLOWED_HOSTS
            "method": request.method,
            "path": request.path,
            "path_info": request.path_info,
            "script_name": request.META["SCRIPT_NAME"],
            "query": request.GET.getlist("q"),
            "header": request.headers.get("X-Custom"),
            "body": request.body.decode("utf-8"),
        }
    )


def _urlpatterns() -> list[Any]:
    from django.urls import path  # type: ignore[import-untyped]

    return [path("hello/<str:name>", hello)]


def __getattr__(name: str) -> Any:
    # ROOT_URLCONF names this module; Django reads `urlpatterns` only once it is configured.
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)


SETTINGS: dict[str, Any] = {
    "DEBUG": False,
    "SECRET_KEY": "dualgate-test-only",
    "ALLOWED_HOSTS": ["127.0.0.1", "localhost"],
    "ROOT_URLCONF": __name__,
    "MIDDLEWARE": [],
    "INSTALLED_APPS": [],
    "DATABASES": {},
    "USE_TZ": True,
}


@pytest.fixture
def django_app() -> Iterator[Any]:
    import django  # type: ignore[import-untyped]
    from django.conf import settings  # type: ignore[import-untyped]
    from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]
    from django.test.utils import override_settings  # type: ignore[import-untyped]

    if not settings.configured:
        settings.configure(**SETTINGS)
        django.setup()
    overrides = {key: SETTINGS[key] for key in ("DEBUG", "ALLOWED_HOSTS", "ROOT_URLCONF")}
    with override_settings(**overrides, MIDDLEWARE=[]):
        yield get_wsgi_application()


def test_django_view(wsgi_url: WSGIUrl, django_app: Any) -> None:
    url = wsgi_url(django_app)
    with client(url) as http:
        response = http.post(
            "/hello/dj?q=1&q=2", content=b"payload", headers={"X-Custom": "custom value"}
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "greeting": "hello dj",
        "host": f"127.0.0.1:{url_port(url)}",
        "method": "POST",
        "path": "/hello/dj",
        "path_info": "/hello/dj",
        "script_name": "",
        "query": ["1", "2"],
        "header": "custom value",
        "body": "payload",
    }


def test_django_under_a_root_path(wsgi_url: WSGIUrl, django_app: Any) -> None:
    with client(wsgi_url(django_app, root_path="/site")) as http:
        data = http.get("/site/hello/x").json()
    assert data["script_name"] == "/site"
    assert data["path_info"] == "/hello/x"
    assert data["path"] == "/site/hello/x"


def test_django_404_and_bad_host(wsgi_url: WSGIUrl, django_app: Any) -> None:
    with client(wsgi_url(django_app)) as http:
        assert http.get("/nope").status_code == 404
        # Host checking sees the Host header the client sent.
        assert http.get("/hello/x", headers={"Host": "evil.example"}).status_code == 400
        assert json.loads(http.get("/hello/again").content)["greeting"] == "hello again"

"""Loading an application: MODULE:ATTR imported (never eval), a factory called, and its
interface (WSGI or ASGI 3) decided once.

A failure is an `AppLoadError` whose message tells "the module named is missing" from "an
import inside it failed"; for the latter it carries the application's own traceback (file and
line), which `errors.report` prints before the one line.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from dualgate.config import Config
from dualgate.errors import AppLoadError, application_traceback

__all__ = ["LoadedApp", "load_app"]


@dataclass(frozen=True)
class LoadedApp:
    """An application with its interface decided: "wsgi" or "asgi" (ASGI 3 single callable)."""

    interface: Literal["asgi", "wsgi"]
    app: Callable[..., Any]
    source: str


def load_app(target: str | Callable[..., Any], config: Config) -> LoadedApp:
    """Import MODULE:ATTR (or take a callable) and decide its interface once."""
    if isinstance(target, str):
        app = _import_from_string(target, config.app_dir)
        source = target
        if config.factory:
            try:
                app = app()
            except Exception as exc:
                raise AppLoadError(
                    f"the factory {target} raised {type(exc).__name__}: {exc}",
                    traceback=application_traceback(exc, __file__),
                ) from exc
    else:
        app, source = target, getattr(target, "__qualname__", repr(target))
    if not callable(app):
        raise AppLoadError(f"{source} is not callable (it is a {type(app).__name__})")
    interface = config.interface if config.interface != "auto" else _detect_interface(app)
    if interface == "asgi":
        from asgiref.compatibility import guarantee_single_callable

        app = guarantee_single_callable(app)  # type: ignore[no-untyped-call]
    return LoadedApp(interface=interface, app=app, source=source)


def _detect_interface(app: Callable[..., Any]) -> Literal["asgi", "wsgi"]:
    # ASGI 3: a coroutine function, or an object whose __call__ is one. ASGI 2: a class whose
    # instances are awaited per connection. Anything else is called like WSGI.
    if inspect.isclass(app):
        call = getattr(app, "__call__", None)  # noqa: B004 - the class's instance method
        return "asgi" if inspect.iscoroutinefunction(call) else "wsgi"
    if inspect.iscoroutinefunction(app):
        return "asgi"
    call = getattr(app, "__call__", None)  # noqa: B004
    return "asgi" if inspect.iscoroutinefunction(call) else "wsgi"


def _import_from_string(target: str, app_dir: str) -> Any:
    module_name, sep, attrs = target.partition(":")
    if not sep or not module_name or not attrs:
        raise AppLoadError(f"application {target!r} must be given as MODULE:ATTR")
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Tell "the module named on the command line is missing" from "an import inside it failed".
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise AppLoadError(
                f"could not import module {module_name!r} (looked in {path})"
            ) from exc
        # An import inside it failed: where is the application's business (file and line).
        raise AppLoadError(
            f"importing {module_name!r} failed: {exc}",
            traceback=application_traceback(exc, __file__),
        ) from exc
    except Exception as exc:
        raise AppLoadError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}",
            traceback=application_traceback(exc, __file__),
        ) from exc
    instance: Any = module
    for attr in attrs.split("."):
        try:
            instance = getattr(instance, attr)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attrs!r}") from None
    return instance

"""The failures that cross layers, their exit codes, and the one line that tells of them.

A leaf: it imports nothing of dualgate, so the settings (config.py), the edge (TLS), the
interfaces (ASGI lifespan) and the process layer can all raise and read these without importing
each other. The command line, each worker process, the supervisor and the gunicorn worker all
report a failure to start through `report` and `exit_code_for`, so they say it alike. One
failure says more than its line: an exception raised by the application's own code while it was
imported, whose traceback (file and line) comes first.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable

__all__ = [
    "EXIT_APP_LOAD",
    "EXIT_CONFIG",
    "EXIT_LIFESPAN",
    "EXIT_WORKERS_FAILED",
    "AppLoadError",
    "ConfigError",
    "LifespanFailure",
    "application_traceback",
    "exit_code_for",
    "report",
    "reporting_failures",
]

EXIT_APP_LOAD = 1
EXIT_CONFIG = 2
EXIT_LIFESPAN = 3
# The supervisor gave up: workers failed to start too many times in a row.
EXIT_WORKERS_FAILED = 4


class ConfigError(ValueError):
    """A setting has a value dualgate cannot run with; the message names the setting."""


class AppLoadError(ValueError):
    """The application named on the command line cannot be loaded; the message says why, and
    `traceback` where in the application's code, when its own code raised."""

    def __init__(self, message: str, *, traceback: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback


class LifespanFailure(RuntimeError):
    """Start-up (or, with --lifespan on, the lifespan protocol itself) failed."""


def application_traceback(exc: BaseException, *ours: str) -> str:
    """The traceback of what an application raised, from its own first frame on: the frames
    of the files `ours` and of importlib above it say nothing of where the problem is."""
    tb = exc.__traceback__
    while tb is not None and (
        tb.tb_frame.f_code.co_filename in (*ours, importlib.__file__)
        or tb.tb_frame.f_code.co_filename.startswith("<frozen importlib")
    ):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code of a failure to start that one line explains; None for anything else."""
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, AppLoadError):
        return EXIT_APP_LOAD
    if isinstance(exc, LifespanFailure):
        return EXIT_LIFESPAN
    if isinstance(exc, OSError):
        return EXIT_APP_LOAD
    return None


def report(problem: BaseException | str) -> None:
    """One line on stderr: `dualgate: error: ...`, an OSError told by its strerror (and the
    address or path it was about, when it names one); an
    application's traceback before it, when there is one."""
    if isinstance(problem, AppLoadError) and problem.traceback:
        print(problem.traceback, end="", file=sys.stderr, flush=True)
    text = str(problem)
    if isinstance(problem, OSError) and problem.strerror:
        text = problem.strerror
        if problem.filename:
            text = f"{text}: {problem.filename}"
    print(f"dualgate: error: {text}", file=sys.stderr, flush=True)


def reporting_failures(serve: Callable[[], int]) -> int:
    """`serve()`, with a failure to start told in one line and turned into an exit code."""
    try:
        return serve()
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        code = exit_code_for(exc)
        if code is None:
            raise
        report(exc)
        return code

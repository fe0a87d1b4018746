"""`--reload`: replace the worker(s) when a watched file changes (development only).

The supervisor keeps the listening socket open across reloads, so a request made meanwhile
waits in its queue and is served by the next worker, never refused. A change that breaks the
application's import is reported once by the worker that fails; the supervisor then waits for
the next change (the previous worker, if one was serving, keeps serving until then).

Watching: watchfiles (an optional extra) is given each directory to watch, non-recursively,
from a walk that never enters .git, virtual environments (any directory with a pyvenv.cfg),
node_modules, __pycache__ or the other directories below: a recursive watch would put an
inotify watch on every directory of a virtual environment before filtering a single event. A
directory created later is picked up by walking again. Workers are spawned, never forked, while
the watcher thread runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import importlib.util
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dualgate.config import Config
from dualgate.errors import ConfigError
from dualgate.hooks import ServerFactory
from dualgate.logs import error_logger
from dualgate.logsetup import configure_logging
from dualgate.procs.supervisor import Supervisor

if TYPE_CHECKING:
    from watchfiles import Change

__all__ = ["IGNORED_DIRS", "Watcher", "run_reloader"]

IGNORED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        "__pycache__",
        ".venv",
        "venv",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".idea",
    }
)
DEFAULT_INCLUDE = ("*.py",)
# A virtual environment is recognised by its marker files, whatever its directory's name.
_ENVIRONMENT_MARKERS = ("pyvenv.cfg", "conda-meta")
_STOP_CHECK_MS = 500


def run_reloader(config: Config, serve: ServerFactory) -> int:
    """Supervise workers serving what `serve` builds, replacing them on each change."""
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        raise ConfigError("--reload needs watchfiles: pip install 'dualgate[reload]'") from None
    configure_logging(config)
    roots = [Path(d).resolve() for d in config.reload_dir or (".",)]
    for root in roots:
        if not root.is_dir():
            raise ConfigError(f"--reload-dir {root} is not a directory")
    read_fd, write_fd = os.pipe()
    watcher = Watcher(
        roots, (*DEFAULT_INCLUDE, *config.reload_include), config.reload_exclude, write_fd
    )
    watcher.start()
    try:
        # Spawned: forking while the watcher's threads run is not safe.
        supervised = dataclasses.replace(config, workers=config.workers or 1, start_method="spawn")
        return Supervisor(supervised, serve, change_fd=read_fd).run()
    finally:
        watcher.stop()
        os.close(read_fd)
        os.close(write_fd)


class Watcher:
    """Watches `roots` from a thread and writes one line per batch of relevant changes to `fd`."""

    def __init__(
        self,
        roots: Iterable[Path],
        include: Iterable[str],
        exclude: Iterable[str],
        fd: int,
    ) -> None:
        self.roots = list(roots)
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self._fd = fd
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dualgate-reload", daemon=True)

    def start(self) -> None:
        directories = self.directories()
        error_logger.info(
            "Reloading on changes to %s in %d director%s under %s",
            ", ".join(self.include),
            len(directories),
            "y" if len(directories) == 1 else "ies",
            ", ".join(str(root) for root in self.roots),
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def directories(self) -> list[str]:
        """Every directory to watch, walking around the pruned ones."""
        found: list[str] = []
        for root in self.roots:
            for path, dirs, _files in os.walk(root):
                dirs[:] = sorted(d for d in dirs if not self.pruned(os.path.join(path, d)))
                found.append(path)
        return found

    def pruned(self, directory: str) -> bool:
        name = os.path.basename(directory)
        if name in IGNORED_DIRS or self._excluded(directory):
            return True
        return any(os.path.exists(os.path.join(directory, m)) for m in _ENVIRONMENT_MARKERS)

    def wanted(self, path: str) -> bool:
        """A changed path that should reload: included, not excluded, not in a pruned tree."""
        relative = self._relative(path)
        if any(part in IGNORED_DIRS for part in Path(relative).parts[:-1]):
            return False
        if self._excluded(path):
            return False
        name = os.path.basename(path)
        return any(
            fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(relative, pattern)
            for pattern in self.include
        )

    def _excluded(self, path: str) -> bool:
        relative = self._relative(path)
        parts = Path(relative).parts
        return any(
            fnmatch.fnmatch(relative, pattern) or any(fnmatch.fnmatch(p, pattern) for p in parts)
            for pattern in self.exclude
        )

    def _relative(self, path: str) -> str:
        for root in self.roots:
            with contextlib.suppress(ValueError):
                return str(Path(path).relative_to(root))
        return path

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._watch_until_tree_changes():
                    return
        except Exception:
            error_logger.exception("The --reload watcher failed; changes are no longer seen")

    def _watch_until_tree_changes(self) -> bool:
        """Watch the current walk; True when directories came or went and it must walk again."""
        import watchfiles

        directories = self.directories()
        watched = set(directories)
        for changes in _watch(directories, self._stop):
            relevant = sorted({path for _change, path in changes if self.wanted(path)})
            for path in relevant:
                _forget_bytecode(path)
            if relevant:
                shown = ", ".join(self._relative(path) for path in relevant[:3])
                more = f" and {len(relevant) - 3} more" if len(relevant) > 3 else ""
                os.write(self._fd, f"{shown}{more} changed\n".encode())
            for change, path in changes:
                added_dir = change == watchfiles.Change.added and os.path.isdir(path)
                if (added_dir and not self.pruned(path)) or (
                    change == watchfiles.Change.deleted and path in watched
                ):
                    return True
        return False


def _forget_bytecode(path: str) -> None:
    # A .pyc records its source's mtime in whole seconds and its size: an edit within the same
    # second that keeps the size (VERSION = "1" -> "2") would load the old code from it.
    if path.endswith(".py"):
        with contextlib.suppress(OSError, ValueError, NotImplementedError):
            os.unlink(importlib.util.cache_from_source(path))


def _watch(directories: list[str], stop: threading.Event) -> Iterator[set[tuple[Change, str]]]:
    import watchfiles

    yield from watchfiles.watch(
        *directories,
        watch_filter=None,
        recursive=False,
        stop_event=stop,
        rust_timeout=_STOP_CHECK_MS,
        raise_interrupt=False,
        debounce=400,
        step=50,
    )

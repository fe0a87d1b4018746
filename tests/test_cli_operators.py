"""What operators expect of `dualgate serve`: --help grouped with every default, --version,
hints for gunicorn's and uvicorn's flags, and an application that cannot be imported told
plainly, with --workers too. Real processes throughout."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dualgate.cli import HINTS
from dualgate.config import SECTIONS
from dualgate.procs.policy import backoff
from dualgate.version import __version__
from tests.processes import Process, dualgate_argv

CLI_TIMEOUT = 30.0


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dualgate", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def test_help_is_grouped_by_topic_and_shows_every_default(tmp_path: Path) -> None:
    done = run("serve", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    titles = [f"\n{title}:\n" for title in SECTIONS.values()]
    places = [text.find(title) for title in titles]
    assert -1 not in places and places == sorted(places), places
    # Each flag's entry: its invocation, then its help, up to the next flag.
    entries = {
        entry.split("\n")[0].split("  ")[0].strip(): " ".join(entry.split("\n\n")[0].split())
        for entry in re.split(r"\n  (?=--)", text.split("\nthe application:\n", 1)[1])
        if entry.startswith("--")
    }
    assert entries["--proxy-headers / --no-proxy-headers"].endswith("(default: on)")
    assert entries["--access-log / --no-access-log"].endswith("(default: on)")
    assert entries["--reuse-port / --no-reuse-port"].endswith("(default: off)")
    assert entries["--port PORT"].endswith("(default: 8000)")
    assert entries["--workers WORKERS"].endswith("(default: one process, no supervisor)")
    # Every flag's help says its default, once.
    missing = [flag for flag, help in entries.items() if help.count("(default:") != 1]
    assert missing == ["--print-config", "--version"], missing


@pytest.mark.parametrize("args", [["--version"], ["serve", "--version"]])
def test_version(tmp_path: Path, args: list[str]) -> None:
    done = run(*args, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"dualgate {__version__}\n")


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["-w", "2"], "--workers"),
        (["-w4"], "--workers"),
        (["-b", "0.0.0.0:80"], "--bind"),
        (["--timeout", "30"], "--timeout-worker-healthcheck"),
        (["--timeout=30"], "--timeout-keep-alive"),
        (["-k", "uvicorn.workers.UvicornWorker"], "--interface"),
        (["--max-requests", "100"], "--limit-max-requests"),
    ],
)
def test_a_gunicorn_habit_gets_a_hint_not_an_alias(
    tmp_path: Path, args: list[str], names: str
) -> None:
    done = run("serve", "x:y", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    flag = args[0].split("=")[0][:2] if not args[0].startswith("--") else args[0].split("=")[0]
    assert line.startswith(f"dualgate: error: {flag} is not a dualgate flag: "), line
    assert names in line, line


def test_threads_is_fine_as_it_is_and_abbreviations_are_refused(tmp_path: Path) -> None:
    assert "--threads" not in HINTS
    done = run("serve", "x:y", "--threads", "4", "--print-config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "threads = 4" in done.stdout
    done = run("serve", "x:y", "--work", "2", cwd=tmp_path)
    assert done.returncode == 2
    assert "unrecognized arguments: --work" in done.stderr


BROKEN = """
import os


def connect():
    return os.environ["DATABASE_URL"]


DATABASE = connect()
"""


def test_an_exception_while_importing_shows_where(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    done = run("serve", "broken:application", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert f'  File "{tmp_path / "broken.py"}", line 9, in <module>' in lines
    assert f'  File "{tmp_path / "broken.py"}", line 6, in connect' in lines
    assert not any("importlib" in line or "dualgate" in line for line in lines[:-1]), lines
    assert lines[-1] == "dualgate: error: importing 'broken' failed: KeyError: 'DATABASE_URL'"


def test_a_missing_module_stays_one_line(tmp_path: Path) -> None:
    done = run("serve", "dualgate_absent_module:application", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"dualgate: error: could not import module 'dualgate_absent_module' (looked in {tmp_path})"
    ]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_workers_that_cannot_import_the_app_exit_1_at_once(
    tmp_path: Path, start_method: str
) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    args = ("broken:application", "--port", "0", "--workers", "3", "--start-method", start_method)
    started = time.monotonic()
    process = Process(dualgate_argv(*args), tmp_path)
    try:
        code = process.wait(timeout=CLI_TIMEOUT)
    finally:
        process.stop()
    elapsed = time.monotonic() - started
    assert code == 1, process.stderr
    # Not one retry: the first back-off alone would be longer than a start that gives up.
    assert "Failed start 1 of" not in process.stderr and "giving up" not in process.stderr
    assert elapsed < 10 + backoff(1), elapsed
    assert "KeyError: 'DATABASE_URL'" in process.stderr
    assert f'File "{tmp_path / "broken.py"}", line 9' in process.stderr
    assert "dualgate: error: importing 'broken' failed: KeyError: 'DATABASE_URL'" in process.stderr
    assert not process.children()

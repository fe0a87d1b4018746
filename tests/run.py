"""The whole test suite from nothing but Python and pip: `python tests/run.py`.

This is README's test command and the last step of `.ci/run`. It does all the set-up itself:

1. The system programs the suite runs for real (nginx and HAProxy in front of the server, curl
   and nghttp2's clients): installed with apt-get when one is missing and this runs as root;
   otherwise one line names what to install, and it exits 2.
2. This Python: `pip install -e '.[test]'`, then `python -m pytest -q`.
3. Every other Python version the package declares (its "Programming Language :: Python :: 3.N"
   classifiers) that the machine has, on PATH as `python3.N` or under pyenv: a virtual
   environment in `.venvs/3.N` with `.[test]`, and the suite again. `--this-python` skips this.

Arguments after `--` go to pytest. The exit status is 0 only when every run passed; pytest's
"no tests collected" (5) is a failure here, as an empty run proves nothing. The last line adds
up every run's counts (read from pytest's JUnit XML report), `total: N passed, N failed`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".venvs"
# Program on PATH -> the Debian package that brings it.
SYSTEM_PROGRAMS = {
    "nginx": "nginx",
    "haproxy": "haproxy",
    "curl": "curl",
    "nghttp": "nghttp2-client",
    "h2load": "nghttp2-client",
}
# Debian installs nginx and haproxy in /usr/sbin, which a non-root PATH may lack.
SBIN = ("/usr/sbin", "/sbin")


def _say(message: str) -> None:
    print(f"tests/run.py: {message}", file=sys.stderr, flush=True)


def _missing_programs() -> list[str]:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return sorted(
        {
            package
            for program, package in SYSTEM_PROGRAMS.items()
            if not shutil.which(program, path=path)
        }
    )


def install_system_programs() -> int:
    missing = _missing_programs()
    if not missing:
        return 0
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _say(f"the suite needs these system packages: {' '.join(missing)}; install them first")
        return 2
    _say(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            _say(f"{' '.join(argv)} failed with exit code {done.returncode}")
            return 2
    return 0


def declared_versions() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = (
        re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c)
        for c in project.get("classifiers", [])
    )
    return sorted({m.group(1) for m in found if m}, key=lambda v: int(v.split(".")[1]))


def find_interpreter(version: str) -> Path | None:
    """A working `python3.N`: on PATH, else the newest pyenv build of that version."""
    candidates: list[Path] = []
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(Path(on_path))
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(pyenv_root.glob(f"versions/{version}.*/bin/python{version}"), reverse=True)
    for candidate in candidates:
        # A pyenv shim for a version that is not selected exists but fails: ask each one.
        probe = subprocess.run(
            [str(candidate), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def _pip_install(python: Path | str) -> int:
    argv = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    return subprocess.run([*argv, "-e", ".[test]"], cwd=ROOT).returncode


def _counts(report: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) from a JUnit XML report; (0, 0, 0) when there is none."""
    if not report.exists():
        return (0, 0, 0)
    suite = ElementTree.parse(report).getroot()
    if suite.tag != "testsuite":
        inner = suite.find("testsuite")
        suite = suite if inner is None else inner
    total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    return (total - failed - skipped, failed, skipped)


def run_suite(
    python: Path | str, label: str, pytest_args: list[str]
) -> tuple[int, tuple[int, int, int]]:
    _say(f"{label}: installing dualgate with its test extra")
    if _pip_install(python) != 0:
        _say(f"{label}: pip install failed")
        return 1, (0, 0, 0)
    _say(f"{label}: running the suite")
    VENVS.mkdir(exist_ok=True)
    report = VENVS / f"junit-{label}.xml"
    report.unlink(missing_ok=True)
    argv = [str(python), "-m", "pytest", "-q", f"--junitxml={report}", *pytest_args]
    status = subprocess.run(argv, cwd=ROOT).returncode
    if status == 5:
        _say(f"{label}: pytest collected no tests, which counts as a failure")
        return 1, (0, 0, 0)
    return status, _counts(report)


def venv_python(version: str, interpreter: Path) -> Path | None:
    venv = VENVS / version
    python = venv / "bin" / "python"
    if not python.exists():
        _say(f"{version}: making a virtual environment in {venv.relative_to(ROOT)}")
        if subprocess.run([str(interpreter), "-m", "venv", str(venv)]).returncode != 0:
            return None
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests/run.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--this-python", action="store_true", help="run the suite on this Python only"
    )
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    if (status := install_system_programs()) != 0:
        return status
    this = f"{sys.version_info.major}.{sys.version_info.minor}"
    results = {this: run_suite(sys.executable, this, args.pytest_args)}
    if not args.this_python:
        for version in declared_versions():
            if version == this:
                continue
            interpreter = find_interpreter(version)
            if interpreter is None:
                _say(f"{version}: not on this machine, not tested here")
                continue
            python = venv_python(version, interpreter)
            results[version] = (
                (1, (0, 0, 0)) if python is None else run_suite(python, version, args.pytest_args)
            )
    summary = ", ".join(f"{v}: {'passed' if s == 0 else 'FAILED'}" for v, (s, _) in results.items())
    _say(f"Python {summary}")
    passed, failed, skipped = (sum(c[i] for _, c in results.values()) for i in range(3))
    failed += sum(1 for status, counts in results.values() if status != 0 and counts[1] == 0)
    print(f"total: {passed} passed, {failed} failed, {skipped} skipped", flush=True)
    return 0 if all(status == 0 for status, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

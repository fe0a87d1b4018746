"""`dualgate serve` refusing to start: one clear stderr line, no traceback, non-zero exit."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

CLI_TIMEOUT = 30.0


def run_cli(*args: str, cwd: Path) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "dualgate", "serve", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    return result.returncode, result.stderr


def the_one_line(code: int, stderr: str) -> str:
    assert code != 0, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {stderr!r}"
    return lines[0]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "broken_import.py").write_text(
        "import dualgate_no_such_dependency\n\ndef application(environ, start_response):\n"
        "    return []\n"
    )
    (tmp_path / "no_attr.py").write_text("something_else = 1\n")
    (tmp_path / "not_callable.py").write_text("application = 42\n")
    (tmp_path / "good.py").write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return [b'']\n"
    )
    return tmp_path


def test_missing_module(app_dir: Path) -> None:
    line = the_one_line(
        *run_cli("dualgate_missing_mod:application", "--app-dir", str(app_dir), cwd=app_dir)
    )
    assert "dualgate_missing_mod" in line, line


def test_failing_import_inside_module_is_not_reported_as_missing(app_dir: Path) -> None:
    missing = the_one_line(
        *run_cli("dualgate_missing_mod:application", "--app-dir", str(app_dir), cwd=app_dir)
    )
    code, stderr = run_cli("broken_import:application", "--app-dir", str(app_dir), cwd=app_dir)
    # The import that failed is shown where it is (file and line), then the one line, which
    # names the real culprit and is not the "module missing" one.
    assert code == 1, stderr
    assert f'File "{app_dir / "broken_import.py"}", line 1, in <module>' in stderr, stderr
    broken = stderr.strip().splitlines()[-1]
    assert "dualgate_no_such_dependency" in broken, broken
    assert broken.replace("broken_import", "M") != missing.replace("dualgate_missing_mod", "M")


def test_missing_attribute(app_dir: Path) -> None:
    line = the_one_line(*run_cli("no_attr:application", "--app-dir", str(app_dir), cwd=app_dir))
    assert "application" in line, line


def test_attribute_not_callable(app_dir: Path) -> None:
    line = the_one_line(
        *run_cli("not_callable:application", "--app-dir", str(app_dir), cwd=app_dir)
    )
    assert "callable" in line, line


def test_port_taken(app_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        line = the_one_line(
            *run_cli(
                "good:application",
                "--app-dir",
                str(app_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                cwd=app_dir,
            )
        )
    assert "in use" in line.lower(), line


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--port", "abc"), ("--port", "70000"), ("--threads", "0"), ("--timeout-keep-alive", "x")],
)
def test_bad_flag_value(app_dir: Path, flag: str, value: str) -> None:
    line = the_one_line(
        *run_cli("good:application", "--app-dir", str(app_dir), flag, value, cwd=app_dir)
    )
    assert flag in line, line


def test_http_httptools_without_httptools_is_one_line_and_exit_2(app_dir: Path) -> None:
    # httptools is installed for the tests; this child runs as if it were not.
    hide = (
        "import sys; sys.modules['httptools'] = None; "
        "from dualgate.cli import main; sys.exit(main())"
    )
    args = ["serve", "good:application", "--app-dir", str(app_dir), "--http", "httptools"]
    result = subprocess.run(
        [sys.executable, "-c", hide, *args],
        cwd=app_dir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    line = the_one_line(result.returncode, result.stderr)
    assert result.returncode == 2
    assert "--http httptools" in line and "not installed" in line, line


def test_a_taken_port_is_one_line_naming_the_address(app_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = run_cli(
            "good:application", "--host", "127.0.0.1", "--port", str(port), cwd=app_dir
        )
    line = the_one_line(code, stderr)
    assert line == f"dualgate: error: Address already in use: 127.0.0.1:{port}"
    assert code == 1


def test_a_unix_socket_in_a_missing_directory_is_one_line_naming_it(
    app_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "absent" / "s.sock"
    code, stderr = run_cli("good:application", "--uds", str(path), cwd=app_dir)
    assert the_one_line(code, stderr) == (
        f"dualgate: error: No such file or directory: unix:{path}"
    )

"""Settings from the environment, an env file and a TOML config file, by precedence: real
`dualgate serve` processes, and the env file read against python-dotenv itself."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from dotenv import dotenv_values

from dualgate.settings import read_env_file
from tests.processes import Process, dualgate_argv, get

CLI_TIMEOUT = 30.0
SERVING = re.compile(r"Serving .* on http://127\.0\.0\.1:(\d+)")

# Answers with the variables the test asks about, as the application's environment has them.
ENV_APP = """
import os

def application(environ, start_response):
    names = environ["QUERY_STRING"].split(",")
    body = ";".join(f"{name}={os.environ.get(name, '-')}" for name in names).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def cli(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`dualgate serve ARGS` run to its end, in an environment without DUALGATE_* variables."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("DUALGATE_")}
    full.pop("WEB_CONCURRENCY", None)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dualgate", "serve", *args],
        cwd=cwd,
        env=full,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def printed(*args: str, cwd: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """--print-config as {key: 'value  # origin'}."""
    done = cli(*args, "--print-config", cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    rows = {}
    for line in done.stdout.splitlines():
        key, sep, rest = line.partition(" = ")
        if sep and not key.startswith("#"):
            value, _, origin = rest.partition("  # ")
            rows[key] = f"{value.strip()} # {origin.strip()}"
    return rows


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "envapp.py").write_text(ENV_APP)
    return tmp_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_flag_from_the_environment_is_served_on(app_dir: Path) -> None:
    port = free_port()
    env = {"DUALGATE_PORT": str(port), "DUALGATE_APP": "envapp:application"}
    process = Process(dualgate_argv(), app_dir, env)
    try:
        found = SERVING.search(process.wait_for(SERVING.pattern))
        assert found is not None and int(found.group(1)) == port, process.stderr
        status, _, body = get(port, "/?DUALGATE_PORT")
        assert status == b"HTTP/1.1 200 OK"
        assert body == f"DUALGATE_PORT={port}".encode()
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("text", "shown"),
    [("false", "false"), ("0", "false"), ("No", "false"), ("off", "false"), ("on", "true")],
)
def test_booleans_take_every_spelling(app_dir: Path, text: str, shown: str) -> None:
    rows = printed("x:y", cwd=app_dir, env={"DUALGATE_ACCESS_LOG": text})
    assert rows["access-log"] == f"{shown} # environment: DUALGATE_ACCESS_LOG"


def test_repeatable_settings_from_the_environment(app_dir: Path) -> None:
    env = {
        "DUALGATE_BIND": "127.0.0.1:0, unix:/tmp/x.sock",
        "DUALGATE_HEADER": "X-A: 1, 2\nX-B: 3",
    }
    rows = printed("x:y", cwd=app_dir, env=env)
    assert rows["bind"].startswith('["127.0.0.1:0", "unix:/tmp/x.sock"] #')
    assert rows["header"].startswith('["X-A: 1, 2", "X-B: 3"] #')


def test_the_env_file_reaches_the_application_and_the_real_environment_wins(
    app_dir: Path,
) -> None:
    (app_dir / "app.env").write_text(
        "# the application's settings\n"
        "export DATABASE_URL='postgres://db/app'  # quoted, then a comment\n"
        "\n"
        'GREETING="two\\nlines"\n'
        "SHADOWED=from-file\n"
        "DUALGATE_APP=envapp:application\n"
    )
    process = Process(
        dualgate_argv("--env-file", "app.env", "--port", "0"), app_dir, {"SHADOWED": "real"}
    )
    try:
        found = SERVING.search(process.wait_for(SERVING.pattern))
        assert found is not None
        _, _, body = get(int(found.group(1)), "/?DATABASE_URL,GREETING,SHADOWED")
    finally:
        process.stop()
    assert body == b"DATABASE_URL=postgres://db/app;GREETING=two\nlines;SHADOWED=real"


def test_precedence_command_line_environment_env_file_config_file_defaults(
    app_dir: Path,
) -> None:
    (app_dir / "dualgate.toml").write_text(
        "port = 1001\nthreads = 3\nbacklog = 10\nlimit-concurrency = 7\naccess_log = false\n"
    )
    (app_dir / ".env").write_text("DUALGATE_PORT=1002\nDUALGATE_THREADS=4\nDUALGATE_BACKLOG=11\n")
    env = {"DUALGATE_PORT": "1003", "DUALGATE_THREADS": "5"}
    rows = printed(
        "x:y",
        "--port",
        "1004",
        "--env-file",
        ".env",
        "--config",
        "dualgate.toml",
        cwd=app_dir,
        env=env,
    )
    assert rows["port"] == "1004 # command line"
    assert rows["threads"] == "5 # environment: DUALGATE_THREADS"
    assert rows["backlog"] == "11 # .env: DUALGATE_BACKLOG"
    assert rows["limit-concurrency"] == "7 # dualgate.toml"
    assert rows["access-log"] == "false # dualgate.toml"
    assert rows["timeout-read"] == "60.0 # default"


def test_the_config_file_named_by_the_environment_names_the_app(app_dir: Path) -> None:
    (app_dir / "site.toml").write_text(
        'app = "envapp:application"\nheader = "X-Site: 1"\nmount = ["/api=envapp:application"]\n'
    )
    rows = printed(cwd=app_dir, env={"DUALGATE_CONFIG": "site.toml"})
    assert rows["app"] == '"envapp:application" # site.toml'
    assert rows["header"] == '["X-Site: 1"] # site.toml'


def test_web_concurrency_is_the_default_for_workers(app_dir: Path) -> None:
    assert printed("x:y", cwd=app_dir, env={"WEB_CONCURRENCY": "3"})["workers"] == (
        "3 # environment: WEB_CONCURRENCY"
    )
    (app_dir / "dualgate.toml").write_text("workers = 2\n")
    env = {"WEB_CONCURRENCY": "3", "DUALGATE_CONFIG": "dualgate.toml"}
    assert printed("x:y", cwd=app_dir, env=env)["workers"] == "2 # dualgate.toml"
    line = one_error_line(cli("x:y", cwd=app_dir, env={"WEB_CONCURRENCY": "many"}))
    assert line.startswith("dualgate: error: WEB_CONCURRENCY=many: "), line


def test_print_config_hides_the_key_password_and_lists_what_it_ignored(app_dir: Path) -> None:
    env = {"DUALGATE_SSL_KEYFILE_PASSWORD": "hunter2", "DUALGATE_PROT": "1"}
    done = cli("x:y", "--ssl-certfile", "c.pem", "--print-config", cwd=app_dir, env=env)
    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stdout
    assert "# ignored, no setting of dualgate: DUALGATE_PROT (environment)" in done.stdout


@pytest.mark.parametrize(
    ("env", "files", "args", "expected"),
    [
        ({"DUALGATE_PORT": "abc"}, {}, [], "DUALGATE_PORT=abc: --port takes a whole number"),
        ({"DUALGATE_PORT": "70000"}, {}, [], "DUALGATE_PORT=70000: --port must be between"),
        ({"DUALGATE_ACCESS_LOG": "maybe"}, {}, [], "DUALGATE_ACCESS_LOG=maybe: --access-log"),
        ({"DUALGATE_LOOP": "tokio"}, {}, [], "DUALGATE_LOOP=tokio: --loop takes one of"),
        ({"DUALGATE_BIND": "nowhere"}, {}, [], "DUALGATE_BIND=nowhere: --bind takes"),
        ({}, {"dualgate.toml": "prot = 8000\n"}, ["--config", "dualgate.toml"],
         "dualgate.toml: unknown key 'prot' (did you mean 'port'?)"),
        ({}, {"dualgate.toml": "no-access-log = true\n"}, ["--config", "dualgate.toml"],
         "dualgate.toml: unknown key 'no-access-log'"),
        ({}, {"dualgate.toml": 'port = "8000"\n'}, ["--config", "dualgate.toml"],
         "dualgate.toml: port = \"8000\": --port takes a whole number"),
        ({}, {"dualgate.toml": "threads = 0\n"}, ["--config", "dualgate.toml"],
         "dualgate.toml: --threads must be greater than 0"),
        ({}, {"dualgate.toml": "port = \n"}, ["--config", "dualgate.toml"],
         "dualgate.toml: Invalid value"),
        ({}, {}, ["--config", "absent.toml"], "--config absent.toml: No such file"),
        ({}, {".env": "DUALGATE_THREADS=x\n"}, ["--env-file", ".env"],
         ".env: DUALGATE_THREADS=x: --threads takes a whole number"),
        ({}, {".env": "A=1\nB='unterminated\n"}, ["--env-file", ".env"],
         ".env: line 2: cannot read \"B='unterminated\""),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_its_source(
    app_dir: Path, env: dict[str, str], files: dict[str, str], args: list[str], expected: str
) -> None:
    for name, text in files.items():
        (app_dir / name).write_text(text)
    line = one_error_line(cli("envapp:application", *args, cwd=app_dir, env=env))
    assert line.startswith(f"dualgate: error: {expected}"), line


ENV_FILES = [
    "A=1\nB=two words\n# a comment\n\nexport C=3\n",
    'A=\'single # kept\'\nB="double \\n escapes \\" \\\\"\nC=plain # comment\nD=plain#kept\n',
    "A=\"over\ntwo lines\"\nB='it\\'s'\nC='no \\n escape'\n",
    "  export   SPACED  =  value  \n'QUOTED_KEY'=v\nEMPTY=\nNAME_ALONE\n",
    "A=x\nB=${A}y\nC=${DUALGATE_TEST_UNSET:-fallback}\nD='${A}'\nE=\"${A}\"\n",
    "A=1\r\nB=2\r\n",
    "A = \"x\" # after a quoted value\nB='y'   \n",
]


@pytest.mark.parametrize("text", ENV_FILES)
def test_the_env_file_is_read_as_python_dotenv_reads_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / ".env"
    path.write_bytes(text.encode())
    theirs = {k: v for k, v in dotenv_values(path).items() if v is not None}
    assert read_env_file(str(path), {}) == theirs
    assert theirs  # the case says something

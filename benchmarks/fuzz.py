"""Coverage-guided fuzzing of the request reader with atheris (libFuzzer), for a bounded time.

    pip install '.[fuzz]'
    python -m benchmarks.fuzz --seconds 300 [--http h11|httptools] [--out DIR] [--merge]

Each input is a byte stream plus fuzzer-chosen cut points and options, checked by
benchmarks/fuzz_target.py (its docstring lists the invariants: only the documented events,
nothing after a refusal, body bytes within Content-Length, well-formed heads, the same events
however the bytes are cut, CLOSED after EOF), with the reader's heads read by h11 (the default)
or llhttp (`--http httptools`). The seed corpus is benchmarks/fuzz_corpus/, made
from the differential corpus in tests/corpus/requests/; new inputs go to a scratch directory
(`--out`, else a temporary one), so a run never changes the repository unless `--merge` asks
for the inputs that reach new coverage to be added to the seeds.

libFuzzer runs in a child process with `-max_total_time`, and the child is killed if it
outlives that by a minute. Every input that broke an invariant or raised is saved under
`crashes/` and replayed here without atheris, to print what broke. Exit status: 0 when nothing
was found, 1 when something was, 2 when atheris is missing.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "benchmarks" / "fuzz_corpus"
MAX_LEN = 8192
# libFuzzer's own limits per input: a hang or a runaway allocation is a finding too.
PER_INPUT_SECONDS = 10
RSS_LIMIT_MB = 2048
CHILD_SLACK = 60.0
# The head parser the child's readers use; an environment variable, not a flag, because
# libFuzzer reads the child's command line (and runs it again for -merge).
HTTP_ENV = "DUALGATE_FUZZ_HTTP"


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args[:1] == ["--child"]:
        return _child(args[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time (default 60)")
    parser.add_argument("--out", type=Path, help="scratch directory (default: a temporary one)")
    parser.add_argument(
        "--merge", action="store_true", help="add inputs that reach new coverage to the seeds"
    )
    parser.add_argument(
        "--http",
        choices=("h11", "httptools"),
        default="h11",
        help="the reader's head parser (default h11)",
    )
    options = parser.parse_args(args)
    os.environ[HTTP_ENV] = options.http
    try:
        import atheris  # noqa: F401  (only to know it is there: the child runs it)
    except ImportError:
        print(
            "benchmarks.fuzz needs atheris, which is not installed: pip install '.[fuzz]'",
            file=sys.stderr,
        )
        return 2
    out = options.out or Path(tempfile.mkdtemp(prefix="dualgate-fuzz-"))
    corpus, crashes = out / "corpus", out / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    log = out / "fuzz.log"
    flags = [
        f"-max_total_time={options.seconds}",
        f"-timeout={PER_INPUT_SECONDS}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={MAX_LEN}",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
    ]
    print(
        f"fuzzing the request reader ({options.http}) for {options.seconds} s; "
        f"log and inputs in {out}"
    )
    finished = _run_child([*flags, str(corpus), str(SEEDS)], log, options.seconds + CHILD_SLACK)
    print(_summary(log.read_text(errors="replace")))
    if options.merge:
        merge_log = out / "merge.log"
        _run_child(["-merge=1", f"-max_len={MAX_LEN}", str(SEEDS), str(corpus)], merge_log, 600)
        print(f"merged: {len(list(SEEDS.iterdir()))} seed inputs now in {SEEDS}")
    found = sorted(path for path in crashes.iterdir() if path.is_file())
    for path in found:
        print(f"\n{path}:\n{_replay(path.read_bytes())}")
    if not finished:
        print(f"the fuzzer outlived its time by {CHILD_SLACK:.0f} s and was killed")
    print(f"\n{len(found)} input(s) broke an invariant" if found else "\nnothing found")
    return 1 if found or not finished else 0


def _run_child(flags: list[str], log: Path, deadline: float) -> bool:
    """Run libFuzzer in a child process, its output to `log`; False if it had to be killed."""
    argv = [sys.executable, "-m", "benchmarks.fuzz", "--child", *flags]
    with log.open("wb") as sink:
        child = subprocess.Popen(argv, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        try:
            child.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            return False
    return True


def _summary(log: str) -> str:
    """libFuzzer's last progress line and final statistics."""
    lines = [line for line in log.splitlines() if re.match(r"#\d+\s+(DONE|pulse|NEW|REDUCE)", line)]
    stats = [line for line in log.splitlines() if line.startswith("stat::")]
    return "\n".join([*lines[-1:], *stats]) or log[-2000:]


def _replay(data: bytes) -> str:
    """What one saved input does to the reader, without atheris."""
    from benchmarks.fuzz_target import reader_factory, run_one

    try:
        run_one(data, reader_factory(os.environ.get(HTTP_ENV, "h11")))
    except BaseException:  # a finding: show it whatever it is
        return traceback.format_exc(limit=-3)
    return "passes when replayed (a per-input timeout or memory limit, see fuzz.log)"


def _child(flags: list[str]) -> int:
    import atheris

    # Only what the reader runs is instrumented for coverage.
    with atheris.instrument_imports(include=["dualgate", "h11", "benchmarks.fuzz_target"]):
        from benchmarks.fuzz_target import reader_factory, run_one

    make_reader = reader_factory(os.environ.get(HTTP_ENV, "h11"))

    # libFuzzer runs the program again for -merge, as a shell command line from argv[0]:
    # name this same child, so that works under `python -m`.
    program = f"{shlex.quote(sys.executable)} -m benchmarks.fuzz --child"
    atheris.Setup([program, *flags], lambda data: run_one(data, make_reader))
    atheris.Fuzz()  # libFuzzer exits the process itself
    return 0


if __name__ == "__main__":
    sys.exit(main())

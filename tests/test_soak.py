"""The soak's short form: `python -m benchmarks.soak` for half a minute, every verdict passing.

It starts its own dualgate, so this runs it as a subprocess, as one would by hand, and reads
the report it writes (soak.json). tests/test_soak_verdicts.py shows that each check can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.soak.traffic import WORKERS

ROOT = Path(__file__).resolve().parent.parent
VERDICTS = {
    "no wrong answer",
    "every dropped stream closed",
    "descriptors and threads back to baseline",
    "no upward memory trend",
    "graceful SIGTERM finishes requests in flight",
    "no unexpected server errors",
}


def test_a_short_soak_passes_every_check(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "benchmarks.soak", "--minutes", "0.5", "--no-plot"]
    done = subprocess.run(
        [*argv, "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads((tmp_path / "soak.json").read_text())
    verdicts = {verdict["name"]: verdict for verdict in report["verdicts"]}
    assert set(verdicts) == VERDICTS
    failed = [f"{name}: {v['detail']}" for name, v in verdicts.items() if not v["passed"]]
    assert not failed, failed
    assert done.returncode == 0, done.stdout + done.stderr
    # Every kind of client ran, and the load was load.
    assert set(report["figures"]["operations"]) == set(WORKERS)
    assert report["figures"]["answers_during_load"] > 500
    assert not (tmp_path / "soak.png").exists()
    assert "all checks passed" in done.stdout

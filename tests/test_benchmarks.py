"""CI smoke run of the benchmarks: ``make benchmark`` runs end to end (on one test case; its
figures are for a person to read, speed targets are not asserted in tests)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_make_benchmark_runs_both_paths(tmp_path):
    # -o: the virtualenv running this test is not rebuilt; `demo` writes the demo bundle itself
    venv = Path(sys.prefix)
    completed = subprocess.run(
        [
            "make",
            "-o",
            str(venv / ".installed"),
            "benchmark",
            f"VENV={venv}",
            f"DEMO={tmp_path / 'demo'}",
            "BENCHMARK_ARGS=--cases 1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "1 test cases" in out
    for section in ("[checkpoint submission]", "[scheme quantized by the harness]"):
        assert section in out
    assert "side by side: checkpoint overhead" in out

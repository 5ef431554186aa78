"""Time budgets that follow the machine: a test that waits on wall-clock time (a container's
time limit, a margin over it, a speed assertion) scales its seconds by how much slower this
machine is right now than the development box, measured by a calibration run at the moment of
use, so a loaded CI runner (load 6-9 on 2 cores) gets proportionally longer budgets instead of
a flaky failure. Budgets never shrink below their nominal value."""

from __future__ import annotations

import time

REFERENCE_S = 0.05
"""The calibration workload's best-of-five time on the 2-core development box (AMD EPYC, load
~6 from two other sessions; 0.06 s measured, rounded down)."""
RUNS = 5


def _workload() -> int:
    """CPU-bound pure Python, what contention slows first (process start-up, imports)."""
    return sum(i * i for i in range(300_000))


def slowdown() -> float:
    """How many times slower than the reference this machine runs the workload now (≥ 1)."""
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        _workload()
        best = min(best, time.perf_counter() - start)
    return max(1.0, best / REFERENCE_S)


def budget(seconds: float) -> float:
    """``seconds`` of the reference machine, on this one now."""
    return seconds * slowdown()

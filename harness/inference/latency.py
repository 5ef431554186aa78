"""Latency protocol: warm-up calls, then timed calls; median and 95th percentile in ms."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def time_calls(call: Callable[[], object], warmup: int, runs: int) -> list[float]:
    """Call ``call`` ``warmup`` times untimed, then ``runs`` times; wall-clock seconds of each."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def latency_stats(seconds: list[float]) -> dict:
    """Median and p95 (linear interpolation) in milliseconds, with the number of runs."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
        "runs": len(ms),
    }

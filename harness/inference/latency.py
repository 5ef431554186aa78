"""Latency protocol: warm-up calls, then timed calls; and the paired protocol real backends report,
the FP32 reference and the entry timed interleaved in one process, with the entry's speed-up and
its bootstrap confidence interval.

Timings on a shared machine drift with the load of other processes, and contention slows the two
networks unequally: on a 2-vCPU worker whose vCPUs share a core with other jobs, an INT8
network's calls slow down by up to 15% in phases while FP32's barely move, so per-call ratios
drift with the phase. Each pair therefore times FP32 and the entry alternately ``burst`` times
(A B A B A B, or B A B A B A in every other pair), and the speed-up compares the least disturbed
calls: the fastest FP32 call over the fastest entry call. Its point value and 95% interval are
the median and percentiles of that ratio's bootstrap distribution, resampling whole pairs. The
latency medians and IQRs reported beside it are of every timed call, as a user would see them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from harness.errors import HarnessError

PROTOCOL_WARMUP = 2
"""Untimed calls of each network before the pairs: the first call of a compiled network pays
for lazy allocation and kernel selection, the second for caches warmed by the other network."""
PROTOCOL_PAIRS = 15
PROTOCOL_BURST = 3
"""Interleaved FP32/entry pairs (at least ``MIN_PAIRS``), each of ``PROTOCOL_BURST`` calls per
side. Measured on the shared 2-core dev machine, eight re-runs of the demo SegResNet (UNet) on
OpenVINO gave speed-ups spread (max - min over the median) by 4.6% (0.9%) with this estimator,
against 11.8% (0.8%) for the median of per-pair ratios of the pairs' fastest calls and 8-10% for
ratios of low quantiles; one call per side and pair spread by 6-13% over five re-runs."""
MIN_PAIRS = 10
BOOTSTRAP_RESAMPLES = 2000
"""Bootstrap resamples of the pairs: percentile bounds of a 95% interval settle to about 1% of
their width at this count."""
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
"""Fixed so that re-running the protocol on the same timings reproduces the interval."""
UNITS = ("per_volume", "per_patch_batch")
"""What one timed call covers: sliding-window inference over a test volume, or one patch batch."""


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


def latency_stats(seconds: Sequence[float]) -> dict:
    """Median and p95 (linear interpolation) in milliseconds, with the number of runs."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
        "runs": len(ms),
    }


def spread_stats(seconds: Sequence[float]) -> dict:
    """Median, quartiles and interquartile range in milliseconds (linear interpolation)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        raise HarnessError("no timings to summarise")
    p25, median, p75 = np.percentile(ms, [25, 50, 75])
    return {
        "median_ms": float(median),
        "iqr_ms": float(p75 - p25),
        "p25_ms": float(p25),
        "p75_ms": float(p75),
    }


def interleaved_pairs(
    fp32: Callable[[], object],
    entry: Callable[[], object],
    *,
    warmup: int,
    pairs: int,
    burst: int = 1,
) -> tuple[list[list[float]], list[list[float]]]:
    """Seconds of ``fp32`` and of ``entry`` per pair, ``burst`` calls of each per pair, after
    ``warmup`` untimed calls of each. Within a pair the calls alternate; the side that starts
    alternates between pairs (FP32 first in even pairs) so that neither always runs on caches the
    other warmed."""
    if pairs < MIN_PAIRS:
        raise HarnessError(f"the latency protocol needs at least {MIN_PAIRS} pairs, got {pairs}")
    if warmup < 0 or burst < 1:
        raise HarnessError("warmup must be >= 0 and burst >= 1")
    for _ in range(warmup):
        fp32()
        entry()
    times: dict[str, list[list[float]]] = {"fp32": [], "entry": []}
    for pair in range(pairs):
        order = (("fp32", fp32), ("entry", entry))
        calls = {"fp32": [], "entry": []}
        for _ in range(burst):
            for name, call in order if pair % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                call()
                calls[name].append(time.perf_counter() - start)
        times["fp32"].append(calls["fp32"])
        times["entry"].append(calls["entry"])
    return times["fp32"], times["entry"]


def speedup_interval(
    fp32: Sequence[Sequence[float]],
    entry: Sequence[Sequence[float]],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """Speed-up of the entry over FP32 from paired timings (one sequence of seconds per pair and
    side): the fastest FP32 call over the fastest entry call (> 1: the entry is faster), as the
    median and percentile interval of its bootstrap distribution over resampled pairs."""
    if len(fp32) != len(entry) or not fp32:
        raise HarnessError("speed-up needs equally many FP32 and entry pairs, at least one")
    if not all(len(pair) for pair in (*fp32, *entry)):
        raise HarnessError("every pair needs at least one timing per side")
    a = np.array([min(pair) for pair in fp32], dtype=np.float64)
    b = np.array([min(pair) for pair in entry], dtype=np.float64)
    if np.any(a <= 0) or np.any(b <= 0):
        raise HarnessError("timings must be positive")
    if not 0 < confidence < 1:
        raise HarnessError("confidence must lie in (0, 1)")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, a.size, size=(resamples, a.size))
    ratios = a[picks].min(axis=1) / b[picks].min(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, median, high = np.percentile(ratios, [tail, 50, 100 - tail])
    return {"median": float(median), "ci95": [float(low), float(high)]}


@dataclass(frozen=True)
class LatencyProtocol:
    """The paired protocol's settings: ``threads`` intra-op threads for both networks (and for
    the inferer's own torch ops), ``warmup`` untimed calls of each, ``pairs`` timed pairs of
    ``burst`` calls per side, and what one call covers (``unit``, one of ``UNITS``)."""

    threads: int = 1
    warmup: int = PROTOCOL_WARMUP
    pairs: int = PROTOCOL_PAIRS
    burst: int = PROTOCOL_BURST
    unit: str = "per_volume"

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise HarnessError("the latency protocol needs at least one thread")
        if self.pairs < MIN_PAIRS:
            raise HarnessError(f"the latency protocol needs at least {MIN_PAIRS} pairs")
        if self.burst < 1:
            raise HarnessError("the latency protocol needs at least one call per side and pair")
        if self.unit not in UNITS:
            raise HarnessError(f"unit must be one of {', '.join(UNITS)}")

    def measure(self, fp32: Callable[[], object], entry: Callable[[], object]) -> dict:
        """Time ``fp32`` and ``entry`` interleaved under this protocol (torch limited to
        ``threads`` meanwhile); the result document's ``latency_protocol`` entry."""
        with torch_threads(self.threads):
            fp32_s, entry_s = interleaved_pairs(
                fp32, entry, warmup=self.warmup, pairs=self.pairs, burst=self.burst
            )
        return self.summary(fp32_s, entry_s)

    def summary(self, fp32: Sequence[Sequence[float]], entry: Sequence[Sequence[float]]) -> dict:
        """The ``latency_protocol`` entry of paired timings (seconds, one list per pair): spread
        of every call, speed-up of the fastest calls (``speedup_interval``)."""
        return {
            "threads": self.threads,
            "warmup": self.warmup,
            "pairs": len(entry),
            "entry": spread_stats([t for calls in entry for t in calls]),
            "fp32": spread_stats([t for calls in fp32 for t in calls]),
            "speedup": speedup_interval(fp32, entry),
            "unit": self.unit,
        }


@contextmanager
def torch_threads(threads: int):
    """Run the block with torch's intra-op thread count set to ``threads``, then restore it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

"""Calibration robustness: how much a post-training quantization's accuracy depends on which
calibration volumes it saw (the open question of the real-INT8 study, arXiv 2501.17343).

The platform can measure this for every method it runs itself (reference-method baselines, the
study's schemes, quantizer containers): the same method is re-run K times, each on a calibration
set resampled from the track's calibration pool — as many cases as the pool, drawn with replacement
(a bootstrap of the pool, so a case may come twice and another not at all), draw d by a ``numpy``
generator seeded with (track seed, ``RESAMPLE_STREAM``, d); a draw holding the same cases as an
earlier one (as a multiset: the order of calibration cases does not matter) is skipped, so the K
sets differ (fewer when the pool has fewer distinct resamples) — and each re-run is scored on the
same test cases. The spread of the K mean DSCs is reported as "± calibration": their sample
standard deviation (ddof = 1), with the values, their range and the case ids of every resample.

With fewer than two calibration cases every resample is the pool itself: nothing is re-run and
the spread is undetermined (``sd`` None), as the compare page treats a single test case.
"""

from __future__ import annotations

import copy
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from harness.containers.protocol import build_container_input
from harness.data.dataset import Case
from harness.entry.baseline import compute_baseline
from harness.errors import SubmissionError
from harness.models.calibration import calibration_batches
from harness.track.loaded import LoadedTrack

RESAMPLE_STREAM = 26
"""Separates the resampling stream from the track's other seeded draws (test-case bootstrap)."""
MIN_POOL = 2
MAX_DRAWS_PER_RESAMPLE = 100
"""Draws tried per resample asked for before settling for fewer distinct ones (a pool of two
cases has three distinct resamples)."""


def resampled_calibration_sets(
    pool: Sequence[Case], resamples: int, seed: int
) -> list[tuple[Case, ...]]:
    """``resamples`` distinct bootstrap resamples of the calibration ``pool`` (see the module
    docstring); empty when the pool has fewer than ``MIN_POOL`` cases."""
    if resamples < 0:
        raise ValueError(f"calibration resamples must be >= 0, got {resamples}")
    if len(pool) < MIN_POOL:
        return []
    sets, seen = [], set()
    for draw in range(resamples * MAX_DRAWS_PER_RESAMPLE):
        if len(sets) == resamples:
            break
        rng = np.random.default_rng([seed, RESAMPLE_STREAM, draw])
        picks = rng.integers(0, len(pool), size=len(pool))
        key = tuple(sorted(picks.tolist()))
        if key not in seen:
            seen.add(key)
            sets.append(tuple(pool[i] for i in picks))
    return sets


def with_calibration(track: LoadedTrack, cases: Sequence[Case]) -> LoadedTrack:
    """``track`` calibrated on ``cases`` instead of its pool: the same dataset, network and
    cached FP32 run (a shallow copy whose calibration batches are those cases')."""
    other = copy.copy(track)
    other.__dict__["calibration"] = calibration_batches(tuple(cases), track.model_spec)
    return other


def calibration_spread(
    track: LoadedTrack, rerun: Callable[[LoadedTrack], dict], resamples: int
) -> dict:
    """Re-run ``rerun`` (a result document from a track) on ``resamples`` resampled calibration
    sets of ``track``; the ``calibration`` summary: resamples, the mean DSC of each re-run, their
    standard deviation (``sd``, None when undetermined) and range, each resample's case ids."""
    sets = resampled_calibration_sets(track.calibration_cases, resamples, track.spec.seed)
    values = [float(rerun(with_calibration(track, cases))["summary"]["mean_dsc"]) for cases in sets]
    return spread_summary(values, [[c.case_id for c in cases] for cases in sets], resamples)


def baseline_calibration_spread(
    track: LoadedTrack, method: str, scheme: str, resamples: int, workdir: Path
) -> dict:
    """The ``calibration`` summary of a reference baseline (``method`` under ``scheme``),
    re-quantized and scored on each resampled calibration set (artifacts in ``workdir``). A
    re-run's efficiency is not measured: only its accuracy enters the spread, and its graph's
    latency is the baseline's own (a resample changes scales, not the graph)."""
    runs = iter(range(resamples))

    def rerun(on: LoadedTrack) -> dict:
        folder = Path(workdir) / f"calibration-resample-{next(runs)}"
        result = compute_baseline(
            on, method=method, scheme=scheme, workdir=folder, fp32=track.fp32_run, efficiency=False
        ).result
        shutil.rmtree(folder, ignore_errors=True)
        return result

    return calibration_spread(track, rerun, resamples)


def spread_summary(values: list[float], case_ids: list[list[str]], resamples: int) -> dict:
    """The ``calibration`` summary of a result from the re-runs' mean DSCs."""
    sd = float(np.std(values, ddof=1)) if len(values) >= MIN_POOL else None
    return {
        "resamples": resamples,
        "mean_dsc": values,
        "sd": sd if sd is None or math.isfinite(sd) else None,
        "range": float(max(values) - min(values)) if values else None,
        "calibration_cases": case_ids,
    }


def container_calibration_spread(
    track: LoadedTrack,
    rerun: Callable[[Path, Path], dict],
    resamples: int,
    workdir: Path,
) -> dict:
    """The ``calibration`` summary of a quantizer container: ``rerun(input_dir, workdir)`` runs
    its image again on an ``/input`` built from each resampled calibration set (a case drawn
    twice is two files) and returns the scored result. A re-run the harness rejects (the
    quantizer fails on that set) is counted in ``failed`` and left out of the spread."""
    sets = resampled_calibration_sets(track.calibration_cases, resamples, track.spec.seed)
    values, case_ids, failed = [], [], 0
    for number, cases in enumerate(sets):
        folder = Path(workdir) / f"calibration-resample-{number}"
        try:
            input_dir = build_container_input(track, folder / "input", cases)
            values.append(float(rerun(input_dir, folder)["summary"]["mean_dsc"]))
            case_ids.append([case.case_id for case in cases])
        except SubmissionError:
            failed += 1
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return spread_summary(values, case_ids, resamples) | {"failed": failed}

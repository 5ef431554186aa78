"""The demo dataset: phantoms in MSD layout with the demo's fixed splits (``harness.demo`` writes
the whole demo bundle: this dataset, the shipped models and their sources)."""

from __future__ import annotations

from pathlib import Path

from harness.data.dataset import write_splits
from harness.data.phantom_sizes import PhantomSize
from harness.data.phantoms import write_phantom_dataset

DEMO_SEED = 0
DEMO_CASES = 28
DEMO_SPLITS = {"train": range(0, 16), "calibration": range(16, 20), "test": range(20, 28)}


def phantom_splits(cases: int) -> dict[str, list[str]]:
    """Train / calibration / test case ids: the demo's fixed split, else about 55/15/30%."""
    if cases == DEMO_CASES:
        ranges = DEMO_SPLITS
    else:
        n_test, n_cal = max(1, round(cases * 0.3)), max(1, round(cases * 0.15))
        n_train = cases - n_test - n_cal
        ranges = {
            "train": range(0, n_train),
            "calibration": range(n_train, n_train + n_cal),
            "test": range(n_train + n_cal, cases),
        }
    return {name: [f"phantom_{i:03d}" for i in r] for name, r in ranges.items()}


def make_phantoms(
    out: Path, cases: int, seed: int, progress: bool = False, size: PhantomSize = "demo"
) -> Path:
    """Write a phantom dataset of ``size`` in MSD layout with its ``splits.json``."""
    if cases < 3:
        raise ValueError("need at least 3 cases (train, calibration and test)")
    write_phantom_dataset(out, cases=cases, seed=seed, progress=progress, size=size)
    write_splits(out, phantom_splits(cases))
    return out

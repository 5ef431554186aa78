"""NSD on the bounding box of the scored classes vs on the whole volume: seconds, transient memory
and equality, on one clinical-size phantom (512×512×200 at 0.8×0.8×2.5 mm, 13 organ classes).

The reference label map is ``harness.data.phantoms.make_phantom(size="clinical")``; the prediction
is that map shifted by 2 voxels along each in-plane axis and 1 slice, with 0.2% of the organ
voxels dropped to background and stray organ voxels sprinkled in the body (a segmentation's kind
of error). Both NSD definitions are computed on the foreground classes two ways, interleaved over
``ROUNDS`` rounds: ``whole`` runs the all-class surface pass (``surfels_by_class`` /
``surface_voxels_by_class``) on the full maps, ``cropped`` is ``nsd_per_class``, which cuts both
maps to the bounding box of the classes' voxels first. Peak memory is numpy's allocations under
``tracemalloc`` (the pass's transient arrays), seconds the median round.

    .venv/bin/python benchmarks/nsd_crop.py
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import numpy as np

from harness.data.phantoms import CLINICAL_SPACING_MM, make_phantom
from harness.scoring.metrics import NsdDefinition, nsd_per_class
from harness.scoring.surfaces import CaseSurfaces, surfaces_of

TOLERANCE_MM = 2.0
ROUNDS = 3
SHIFT = (2, 2, 1)
"""Voxels the prediction is displaced along each axis: 1.6 mm in-plane and 2.5 mm across slices,
about the tolerance, so NSD is neither 0 nor 1."""
DROPPED, STRAY = 0.002, 0.0005
BODY_HU = -500
"""Voxels above this are the body (air is -1000 HU): stray voxels fall inside it, as a network's
false positives do; one far outside the body would stretch the box to the whole field of view."""


def prediction(label: np.ndarray, body: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pred = np.roll(label, SHIFT, axis=(0, 1, 2))
    organ = pred > 0
    pred[organ & (rng.random(label.shape, dtype=np.float32) < DROPPED)] = 0
    stray = body & (rng.random(label.shape, dtype=np.float32) < STRAY)
    pred[stray] = rng.integers(1, int(label.max()) + 1, int(stray.sum()), dtype=pred.dtype)
    return pred


def whole(pred: np.ndarray, label: np.ndarray, ids: list[int], definition: NsdDefinition):
    """NSD without the crop: the same surface passes on the full maps."""
    spacing = np.asarray(CLINICAL_SPACING_MM, dtype=np.float64)
    found = CaseSurfaces(
        tuple(pred.shape),
        definition,
        surfaces_of(pred, ids, spacing, definition),
        surfaces_of(label, ids, spacing, definition),
    )
    return nsd_per_class(
        pred, label, ids, CLINICAL_SPACING_MM, TOLERANCE_MM, definition, surfaces=found
    )


def cropped(pred: np.ndarray, label: np.ndarray, ids: list[int], definition: NsdDefinition):
    return nsd_per_class(pred, label, ids, CLINICAL_SPACING_MM, TOLERANCE_MM, definition)


def measure(run, *args) -> tuple[float, float, dict[int, float]]:
    """(seconds, peak MiB of numpy allocations, values) of one call."""
    tracemalloc.start()
    start = time.perf_counter()
    values = run(*args)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak, values


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    image, label, _ = make_phantom(seed=0, index=0, size="clinical")
    pred = prediction(label, image > BODY_HU, np.random.default_rng(0))
    ids = [int(c) for c in np.unique(label) if c > 0]
    box = [np.flatnonzero(np.any(label > 0, axis=tuple(a for a in range(3) if a != axis)))
           for axis in range(3)]  # fmt: skip
    extent = [int(b[-1] - b[0] + 1) for b in box]
    share = np.prod(extent) / label.size
    print(
        f"clinical phantom {label.shape}, {len(ids)} organ classes, organs' box {extent} "
        f"({share:.0%} of the volume); tolerance {TOLERANCE_MM} mm"
    )
    print(f"{'definition':<10} {'path':<8} {'seconds':>8} {'peak MiB':>9}  mean NSD")
    for definition in NsdDefinition:
        rows = {"whole": [], "cropped": []}
        values = {}
        for _ in range(ROUNDS):
            for name, run in (("whole", whole), ("cropped", cropped)):
                seconds, peak, values[name] = measure(run, pred, label, ids, definition)
                rows[name].append((seconds, peak))
        for name, measured in rows.items():
            seconds = statistics.median(s for s, _ in measured)
            peak = max(p for _, p in measured)
            mean = np.mean(list(values[name].values()))
            print(f"{definition.value:<10} {name:<8} {seconds:>8.2f} {peak:>9.0f}  {mean:.6f}")
        same = values["whole"] == values["cropped"]
        ratio = statistics.median(s for s, _ in rows["whole"]) / statistics.median(
            s for s, _ in rows["cropped"]
        )
        print(f"{definition.value}: values identical: {same}; cropped is {ratio:.2f}× faster")
        if not same:
            raise SystemExit("the crop changed an NSD value")


if __name__ == "__main__":
    main()

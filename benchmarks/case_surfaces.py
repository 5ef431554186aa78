"""Scoring one clinical case's NSD and HD95: each metric finding both maps' surfaces itself
(``separate``, as before), the surfaces found once for both (``shared``), and the label's part
found once per track and reused (``cached``, what a track's second and later runs do): seconds
and equality, on one clinical-size phantom (512×512×200 at 0.8×0.8×2.5 mm, 13 organ classes).

The label and the prediction are those of ``benchmarks/nsd_crop.py`` (the phantom's label map
shifted, with dropped and stray voxels). The three paths run interleaved over ``--rounds``
rounds; seconds are the median round, with the load average beside them.

    .venv/bin/python benchmarks/case_surfaces.py [--definition subvoxel|voxel] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from nsd_crop import BODY_HU, TOLERANCE_MM, prediction

from harness.data.phantoms import CLINICAL_SPACING_MM, make_phantom
from harness.scoring.definitions import NsdDefinition
from harness.scoring.hausdorff import hd95_per_class
from harness.scoring.metrics import nsd_per_class
from harness.scoring.surfaces import case_surfaces, label_surfaces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--definition", choices=[d.value for d in NsdDefinition],
                        default=NsdDefinition.SUBVOXEL.value)  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    definition = NsdDefinition(args.definition)
    image, label, _ = make_phantom(seed=0, index=0, size="clinical")
    pred = prediction(label, image > BODY_HU, np.random.default_rng(0))
    del image
    ids = [int(c) for c in np.unique(label) if c > 0]
    spacing = np.asarray(CLINICAL_SPACING_MM, np.float64)
    cached_part = label_surfaces(label, ids, spacing, definition)

    def scores(surfaces=None) -> tuple[dict, dict]:
        nsd = nsd_per_class(pred, label, ids, spacing, TOLERANCE_MM, definition, surfaces=surfaces)
        hd95 = hd95_per_class(pred, label, ids, spacing, definition, surfaces=surfaces)
        return nsd, hd95

    paths = {
        "separate": lambda: scores(),
        "shared": lambda: scores(
            case_surfaces(pred, label_surfaces(label, ids, spacing, definition), ids, spacing)
        ),
        "cached": lambda: scores(case_surfaces(pred, cached_part, ids, spacing)),
    }
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    loads: list[float] = []
    values = {}
    for _ in range(args.rounds):
        for name, run in paths.items():
            loads.append(os.getloadavg()[0])
            start = time.perf_counter()
            values[name] = run()
            seconds[name].append(time.perf_counter() - start)
    print(f"clinical phantom {label.shape}, {len(ids)} classes, {definition.value} NSD + HD95; "
          f"load {min(loads):.2f}-{max(loads):.2f}")  # fmt: skip
    base = statistics.median(seconds["separate"])
    for name in paths:
        median = statistics.median(seconds[name])
        same = values[name] == values["separate"]
        print(f"{name:<9} {median:7.2f} s  {base / median:4.2f}× of separate  identical: {same}")
    if any(values[name] != values["separate"] for name in paths):
        raise SystemExit("a path changed a value")


if __name__ == "__main__":
    main()

"""Evaluate one network on a list of labelled cases: preprocess → sliding window → argmax in the
label's grid → per-class DSC, NSD and HD95; every stage timed.

The stages are pipelined: while the network runs on case i (calling thread), one background thread
reads and preprocesses case i+1 and another restores and scores case i-1. Torch, numpy, zlib and
scipy's KDTree release the GIL, so on a machine with a core to spare the wall-clock cost of
everything but inference mostly disappears. At most ``PIPELINE_DEPTH`` cases are held in memory
beyond the one being inferred. Results do not depend on the overlap: each stage is a pure function
of its inputs.

Memory per case: a case read ahead holds its preprocessed image (float32, 4 bytes a voxel of the
network's grid) and its label (int16, 2 bytes a voxel of the original grid); the original image is
dropped once preprocessed, since restoring needs only its grid. Inference streams (see
``harness.inference.sliding_window``): a slab accumulator of K · roi_a · (voxels / n_a) floats and
a uint8 label map, never the K full-volume logits. A case being scored holds the label, the
prediction and its restored int16 copy. For a 512×512×200 CT case inferred on its own grid that
is ~0.3 GB per case held, ahead or behind, which ``PIPELINE_DEPTH`` bounds.
Each case reports its seconds per stage and the process's peak RSS when it was scored; each
inferred case is reported to the progress listener (``harness.progress``) as a count only, never
by its id (test cases are hidden)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from harness.data.dataset import Case
from harness.data.preprocessing import preprocess, read_case, restore_to_grid
from harness.inference.efficiency import peak_rss_mb
from harness.inference.sliding_window import label_dtype, predict_labels
from harness.models.reference import ModelSpec
from harness.progress import report
from harness.scoring.hausdorff import hd95_per_class
from harness.scoring.metrics import (
    DEFAULT_NSD_DEFINITION,
    NsdDefinition,
    dice_per_class,
    mean_over_classes,
    nsd_per_class,
)
from harness.scoring.surfaces import LabelSurfaces, case_surfaces, label_surfaces

#: Cases read ahead of, and scored behind, the one being inferred.
PIPELINE_DEPTH = 2
LabelSurfacesSource = Callable[
    [str, Path, np.ndarray, Sequence[int], Sequence[float], NsdDefinition], LabelSurfaces
]
"""(case id, label file, label map, class ids, spacing, definition) → the label's surfaces."""
SCORING_STAGE = "inferring test cases"
"""The progress stage ``evaluate_cases`` reports by default (an entry's run)."""
FP32_SCORING_STAGE = "inferring test cases with the FP32 reference"
"""The progress stage of the FP32 reference's run (the track's, once per worker)."""


class StageTimer:
    """Accumulates wall-clock seconds per named stage (thread-safe; stages may overlap)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] += seconds

    @contextmanager
    def stage(self, name: str, *also: StageTimer) -> Iterator[None]:
        """Time the block as ``name`` here and in each timer of ``also``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            for timer in (self, *also):
                timer.add(name, elapsed)


@dataclass
class CaseMetrics:
    """Per-class DSC, NSD and HD95 (mm) of one case (class id → value); the seconds of each of
    its stages and the process's peak resident set size (MiB, high-water mark) once it was
    scored. ``hd95`` is empty where it was not computed."""

    case_id: str
    dsc: dict[int, float]
    nsd: dict[int, float]
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    hd95: dict[int, float] = field(default_factory=dict)

    @property
    def mean_dsc(self) -> float:
        return mean_over_classes(self.dsc)

    @property
    def mean_nsd(self) -> float:
        return mean_over_classes(self.nsd)

    @property
    def mean_hd95(self) -> float | None:
        """Mean HD95 over the classes (mm; None when not computed)."""
        return mean_over_classes(self.hd95) if self.hd95 else None

    def to_json(self) -> dict:
        """A JSON-ready form (class ids as strings); ``from_json`` restores it exactly (JSON
        floats round-trip bit for bit)."""
        return {
            "case_id": self.case_id,
            "dsc": {str(k): v for k, v in self.dsc.items()},
            "nsd": {str(k): v for k, v in self.nsd.items()},
            "hd95": {str(k): v for k, v in self.hd95.items()},
            "seconds": dict(self.seconds),
            "peak_rss_mb": self.peak_rss_mb,
        }

    @classmethod
    def from_json(cls, data: dict) -> CaseMetrics:
        def per_class(values: dict) -> dict[int, float]:
            return {int(k): float(v) for k, v in values.items()}

        return cls(
            case_id=str(data["case_id"]),
            dsc=per_class(data["dsc"]),
            nsd=per_class(data["nsd"]),
            seconds={str(k): float(v) for k, v in data.get("seconds", {}).items()},
            peak_rss_mb=data.get("peak_rss_mb"),
            hd95=per_class(data.get("hd95", {})),
        )


@dataclass(frozen=True)
class _Scoring:
    """What scoring a case needs once it is preprocessed: its reference label and spacing, the
    grids to restore the prediction between, and the timer of its own stages."""

    case_id: str
    label_path: Path
    label: np.ndarray
    spacing: tuple[float, float, float]
    network_affine: torch.Tensor
    label_affine: torch.Tensor
    label_shape: tuple[int, int, int]
    timer: StageTimer


@dataclass
class EvaluationRun:
    """Metrics of every case, busy seconds per stage, and the wall-clock seconds of the run."""

    cases: list[CaseMetrics]
    timer: StageTimer = field(default_factory=StageTimer)
    wall_seconds: float = 0.0

    def to_json(self) -> dict:
        """A JSON-ready form; ``from_json`` restores it exactly."""
        return {
            "cases": [c.to_json() for c in self.cases],
            "seconds": dict(self.timer.seconds),
            "wall_seconds": self.wall_seconds,
        }

    @classmethod
    def from_json(cls, data: dict) -> EvaluationRun:
        timer = StageTimer()
        for name, seconds in data.get("seconds", {}).items():
            timer.add(str(name), float(seconds))
        cases = [CaseMetrics.from_json(c) for c in data["cases"]]
        return cls(cases, timer, float(data.get("wall_seconds", 0.0)))

    @classmethod
    def of_cases(cls, cases: Sequence[CaseMetrics], order: Sequence[str]) -> EvaluationRun:
        """The run of cases scored apart (chunks on several workers), in the order ``order``
        of their ids — the serial run's order — their stage seconds summed: exactly the
        per-case figures one run of them all computes. Raises ``ValueError`` when a case of
        ``order`` is missing or one is scored twice."""
        by_id: dict[str, CaseMetrics] = {}
        for case in cases:
            if case.case_id in by_id:
                raise ValueError(f"case {case.case_id!r} was scored twice")
            by_id[case.case_id] = case
        missing = [case_id for case_id in order if case_id not in by_id]
        if missing or len(by_id) != len(order):
            raise ValueError(
                f"{len(missing)} case(s) unscored, {len(by_id)} given for {len(order)}"
            )
        timer = StageTimer()
        for case in cases:
            for name, seconds in case.seconds.items():
                timer.add(name, seconds)
        return cls([by_id[case_id] for case_id in order], timer, 0.0)


def evaluate_cases(
    model: nn.Module,
    spec: ModelSpec,
    cases: tuple[Case, ...],
    labels: dict[int, str],
    nsd_tolerance_mm: float,
    timer: StageTimer | None = None,
    progress: bool = False,
    desc: str = "evaluate",
    nsd_definition: NsdDefinition | str = DEFAULT_NSD_DEFINITION,
    label_lut: Sequence[int] | None = None,
    stage: str = SCORING_STAGE,
    label_surfaces_of: LabelSurfacesSource | None = None,
) -> EvaluationRun:
    """Run ``model`` on ``cases`` and score it against their labels on the foreground classes
    (NSD at ``nsd_tolerance_mm`` by ``nsd_definition``, see ``harness.scoring.metrics``; HD95 on
    the same surfaces, see ``harness.scoring.hausdorff``). ``label_lut`` relabels the prediction
    first: model class i becomes dataset label ``label_lut[i]`` (None: the model's class ids are
    the dataset's label ids). Each inferred case is reported as a step of ``stage`` (a fixed
    name: ``desc`` may hold a worker's path). ``label_surfaces_of``: the labels' surfaces, e.g.
    cached (``harness.track.surface_cache``; None: found for this run, see ``_case_scores``)."""
    timer = timer or StageTimer()
    lut = None if label_lut is None else torch.tensor(label_lut).to(label_dtype(max(label_lut) + 1))
    classes = tuple(sorted(c for c in labels if c != 0))
    definition = NsdDefinition(nsd_definition)
    model.eval()
    start = time.perf_counter()

    def load(case: Case) -> tuple[_Scoring, torch.Tensor]:
        own = StageTimer()
        with timer.stage("io", own):
            loaded = read_case(case, labels)
        with timer.stage("preprocess", own):
            image = preprocess(loaded, spec.preprocessing)
        grid = (image.affine, loaded.image.affine, tuple(loaded.image.shape[1:]))
        scoring = _Scoring(loaded.case_id, case.label, loaded.label, loaded.spacing, *grid, own)
        return scoring, image

    def score(case: _Scoring, prediction: torch.Tensor) -> CaseMetrics:
        with timer.stage("postprocess", case.timer):
            if lut is not None:
                prediction = lut[prediction.long()]
            restored = restore_to_grid(
                prediction, case.network_affine, case.label_affine, case.label_shape
            )
        with timer.stage("metrics", case.timer):
            dsc, nsd, hd95 = _case_scores(
                restored, case, classes, nsd_tolerance_mm, definition, label_surfaces_of
            )
        return CaseMetrics(
            case.case_id, dsc, nsd, dict(case.timer.seconds), peak_rss_mb(), hd95=hd95
        )

    with (
        ThreadPoolExecutor(1, thread_name_prefix="harness-load") as loader,
        ThreadPoolExecutor(1, thread_name_prefix="harness-score") as scorer,
    ):
        ahead: deque[Future] = deque(loader.submit(load, c) for c in cases[:PIPELINE_DEPTH])
        scored: list[Future] = []
        try:
            for i in tqdm(range(len(cases)), desc=desc, disable=not progress, leave=False):
                case, image = ahead.popleft().result()
                if i + PIPELINE_DEPTH < len(cases):
                    ahead.append(loader.submit(load, cases[i + PIPELINE_DEPTH]))
                if len(scored) > PIPELINE_DEPTH:
                    scored[-PIPELINE_DEPTH - 1].result()  # bound the cases waiting to be scored
                with timer.stage("inference", case.timer):
                    prediction = predict_labels(model, image, spec.sliding_window)
                del image
                scored.append(scorer.submit(score, case, prediction))
                del case, prediction
                report(stage, i + 1, len(cases))
            results = [f.result() for f in scored]
        except BaseException:
            for future in (*ahead, *scored):
                future.cancel()
            raise
    return EvaluationRun(results, timer, time.perf_counter() - start)


def _case_scores(
    restored: np.ndarray,
    case: _Scoring,
    classes: Sequence[int],
    nsd_tolerance_mm: float,
    definition: NsdDefinition,
    label_surfaces_of: LabelSurfacesSource | None,
) -> tuple[dict[int, float], dict[int, float], dict[int, float]]:
    """(DSC, NSD, HD95) per class of one restored prediction; both maps' surfaces found once for
    NSD and HD95, the label's by ``label_surfaces_of`` (None: found here)."""
    spacing = np.asarray(case.spacing, np.float64)
    if label_surfaces_of is None:
        label_part = label_surfaces(case.label, classes, spacing, definition)
    else:
        label_part = label_surfaces_of(
            case.case_id, case.label_path, case.label, classes, case.spacing, definition
        )
    surfaces = case_surfaces(restored, label_part, classes, spacing)
    dsc = dice_per_class(restored, case.label, classes)
    nsd = nsd_per_class(
        restored, case.label, classes, case.spacing, nsd_tolerance_mm, definition,
        surfaces=surfaces,
    )  # fmt: skip
    hd95 = hd95_per_class(
        restored, case.label, classes, case.spacing, definition, surfaces=surfaces
    )
    return dsc, nsd, hd95

"""Evaluate one network on a list of labelled cases: preprocess → sliding window → argmax in the
label's grid → per-class DSC and NSD; every stage timed.

The stages are pipelined: while the network runs on case i (calling thread), one background thread
reads and preprocesses case i+1 and another restores and scores case i-1. Torch, numpy, zlib and
scipy's KDTree release the GIL, so on a machine with a core to spare the wall-clock cost of
everything but inference mostly disappears. At most ``PIPELINE_DEPTH`` cases are held in memory
beyond the one being inferred. Results do not depend on the overlap: each stage is a pure function
of its inputs."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from harness.data.dataset import Case
from harness.data.preprocessing import LoadedCase, preprocess, read_case, restore_to_original
from harness.inference.sliding_window import predict_labels
from harness.models.reference import ModelSpec
from harness.scoring.metrics import (
    DEFAULT_NSD_DEFINITION,
    NsdDefinition,
    dice_per_class,
    mean_over_classes,
    nsd_per_class,
)

#: Cases read ahead of, and scored behind, the one being inferred.
PIPELINE_DEPTH = 2


class StageTimer:
    """Accumulates wall-clock seconds per named stage (thread-safe; stages may overlap)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self.seconds[name] += elapsed


@dataclass
class CaseMetrics:
    """Per-class DSC and NSD of one case (class id → value)."""

    case_id: str
    dsc: dict[int, float]
    nsd: dict[int, float]

    @property
    def mean_dsc(self) -> float:
        return mean_over_classes(self.dsc)

    @property
    def mean_nsd(self) -> float:
        return mean_over_classes(self.nsd)


@dataclass
class EvaluationRun:
    """Metrics of every case, busy seconds per stage, and the wall-clock seconds of the run."""

    cases: list[CaseMetrics]
    timer: StageTimer = field(default_factory=StageTimer)
    wall_seconds: float = 0.0


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
) -> EvaluationRun:
    """Run ``model`` on ``cases`` and score it against their labels on the foreground classes
    (NSD at ``nsd_tolerance_mm`` by ``nsd_definition``, see ``harness.scoring.metrics``)."""
    timer = timer or StageTimer()
    classes = tuple(sorted(c for c in labels if c != 0))
    model.eval()
    start = time.perf_counter()

    def load(case: Case) -> tuple[LoadedCase, torch.Tensor]:
        with timer.stage("io"):
            loaded = read_case(case, labels)
        with timer.stage("preprocess"):
            return loaded, preprocess(loaded, spec.preprocessing)

    def score(loaded: LoadedCase, image: torch.Tensor, prediction: torch.Tensor) -> CaseMetrics:
        with timer.stage("postprocess"):
            restored = restore_to_original(prediction, image, loaded.image)
        with timer.stage("metrics"):
            dsc = dice_per_class(restored, loaded.label, classes)
            nsd = nsd_per_class(
                restored, loaded.label, classes, loaded.spacing, nsd_tolerance_mm, nsd_definition
            )
            return CaseMetrics(loaded.case_id, dsc, nsd)

    with (
        ThreadPoolExecutor(1, thread_name_prefix="harness-load") as loader,
        ThreadPoolExecutor(1, thread_name_prefix="harness-score") as scorer,
    ):
        ahead: deque[Future] = deque(loader.submit(load, c) for c in cases[:PIPELINE_DEPTH])
        scored: list[Future] = []
        try:
            for i in tqdm(range(len(cases)), desc=desc, disable=not progress, leave=False):
                loaded, image = ahead.popleft().result()
                if i + PIPELINE_DEPTH < len(cases):
                    ahead.append(loader.submit(load, cases[i + PIPELINE_DEPTH]))
                if len(scored) > PIPELINE_DEPTH:
                    scored[-PIPELINE_DEPTH - 1].result()  # bound the cases waiting to be scored
                with timer.stage("inference"):
                    prediction = predict_labels(model, image, spec.sliding_window)
                scored.append(scorer.submit(score, loaded, image, prediction))
                del loaded, image, prediction
            results = [f.result() for f in scored]
        except BaseException:
            for future in (*ahead, *scored):
                future.cancel()
            raise
    return EvaluationRun(results, timer, time.perf_counter() - start)

"""LoadedTrack: a track with its dataset parsed, its FP32 model loaded and its FP32 reference run
cached, reused across the submissions a worker evaluates on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    import onnx

from harness.artifacts.checks import OnnxInterface, PrecisionLimits, TrackChecks
from harness.backends import Backend, get_backend
from harness.data.dataset import Case, Dataset, load_dataset
from harness.data.preprocessing import preprocess, read_case
from harness.errors import DatasetError, ModelSpecError
from harness.inference.context import agreement_warning, full_context_fraction
from harness.models.calibration import calibration_batches
from harness.models.interface import SPEC_FILE
from harness.models.reference import (
    WEIGHTS_FILE,
    ModelSpec,
    load_network,
    read_spec,
    weights_sha256,
)
from harness.onnxruntime_session import graph_reference
from harness.scoring.context import whole_volume_agreement
from harness.scoring.evaluation import (
    FP32_SCORING_STAGE,
    SCORING_STAGE,
    EvaluationRun,
    StageTimer,
    evaluate_cases,
)
from harness.track import run_cache
from harness.track.labels import label_lut
from harness.track.spec import TrackSpec, graph_backend_refusal
from harness.track.surface_cache import LabelSurfaceCache


@dataclass
class LoadedTrack:
    """``timer`` holds the seconds spent on the track itself (load, calibration data, the FP32
    reference run), reported in every result computed on it."""

    spec: TrackSpec
    dataset: Dataset
    model_spec: ModelSpec
    model: nn.Module
    timer: StageTimer = field(default_factory=StageTimer)

    @classmethod
    def open(cls, spec: TrackSpec) -> LoadedTrack:
        timer = StageTimer()
        with timer.stage("load"):
            dataset = load_dataset(spec.dataset_dir)
            model_spec = read_spec(spec.model_dir)
            check_backend_runs(model_spec, get_backend(spec.backend))
            if model_spec.has_torch_network:
                model = load_network(model_spec, spec.model_dir)
            else:
                model = graph_reference(spec.model_dir / model_spec.weights_file)
        track = cls(spec, dataset, model_spec, model, timer)
        track.label_lut  # noqa: B018 -- refuse labels naming other organs before any work
        return track

    def torch_model(self, purpose: str) -> nn.Module:
        """The reference as a torch network, for ``purpose`` (say, "RTN"), which needs one; an
        ONNX reference has none."""
        if not self.model_spec.has_torch_network:
            raise ModelSpecError(
                f"{purpose} needs a torch network; the reference model "
                f"{self.model_spec.name!r} is an ONNX graph, quantized on its ONNX backend only"
            )
        return self.model

    @property
    def backend(self) -> Backend:
        return get_backend(self.spec.backend)

    @property
    def test_cases(self) -> tuple[Case, ...]:
        """The cases scored; an empty test split is an error (there would be nothing to rank)."""
        cases = self.dataset.split(self.spec.test_split)
        if not cases:
            raise DatasetError(
                f"the test split {self.spec.test_split!r} of dataset {self.dataset.name!r} holds "
                "no cases: there is nothing to score"
            )
        return cases

    @property
    def calibration_cases(self) -> tuple[Case, ...]:
        return self.dataset.split(self.spec.calibration_split)

    @cached_property
    def label_lut(self) -> list[int] | None:
        """The dataset label id of each model class, or None when the model's labels are the
        dataset's (``harness.track.labels``; refuses labels that name other organs)."""
        mapping = dict(self.spec.label_map)
        return label_lut(self.model_spec.labels, self.dataset.labels, mapping)

    @cached_property
    def calibration(self) -> list[torch.Tensor]:
        """Calibration patch batches, read once per track (unlabeled)."""
        with self.timer.stage("calibration_data"):
            return calibration_batches(self.calibration_cases, self.model_spec)

    @property
    def fp32_run(self) -> EvaluationRun:
        """The FP32 reference evaluated once per track: every submission's ↓Δ% is against it."""
        return self.reference_run()

    def reference_run(self, progress: bool = False) -> EvaluationRun:
        """``fp32_run``: read from the shared cache (``harness.track.run_cache``) or computed on
        first use (with a progress bar when ``progress``) and cached; kept in this process."""
        if "_fp32_run" not in self.__dict__:
            key = self.fp32_run_key
            run = run_cache.load_run(key)
            if run is None:
                with self.timer.stage("fp32_reference"):
                    run = self.run(self.model, progress, desc="fp32", stage=FP32_SCORING_STAGE)
                run_cache.store_run(key, run)
            self.__dict__["_fp32_run"] = run
        return self.__dict__["_fp32_run"]

    @cached_property
    def fp32_run_key(self) -> str:
        """The cache key of this track's FP32 run: the weights, model spec, dataset fingerprint
        and scoring settings (``run_cache.run_key`` adds the harness digest)."""
        return run_cache.run_key(
            {
                "weights": self.weights_sha256,
                "model_spec": (self.spec.model_dir / SPEC_FILE).read_text(),
                "dataset": run_cache.dataset_fingerprint(
                    self.dataset.root / "dataset.json", self.test_cases
                ),
                "test_cases": [c.case_id for c in self.test_cases],
                "nsd": [self.spec.nsd_tolerance_mm, self.spec.nsd_definition],
                "label_lut": self.label_lut,
            }
        )

    def warm(self, fp32_run: bool = True) -> None:
        """Compute now what every evaluation of an upload reads — the FP32 run (unless not
        ``fp32_run``: a chunk of cases does not compare with it), the calibration patches, the
        FP32 file size, and where the backend needs them the latency volume and the reference
        graph — so that a process forked afterwards (``harness.entry.isolation``) starts with
        them and this one keeps them."""
        if fp32_run:
            self.reference_run()
        needed = ["calibration", "fp32_size_bytes"]
        needed += ["latency_volume"] if self.backend.measures_latency else []
        needed += ["fp32_graph"] if self.backend.scores("onnx") else []
        for name in needed:
            getattr(self, name)

    @cached_property
    def latency_volume(self) -> torch.Tensor:
        """The first test case, preprocessed (its label is never read): the volume real backends
        time entries on, read once per track."""
        case = self.test_cases[0]
        return preprocess(read_case(case, with_label=False), self.model_spec.preprocessing)

    @cached_property
    def weights_sha256(self) -> str:
        """Digest of the FP32 weights this track loaded, recorded in every result."""
        return weights_sha256(self.spec.model_dir)

    @cached_property
    def fp32_size_bytes(self) -> int:
        """File bytes of the FP32 reference in the form the track's backend runs: its ONNX export
        on ONNX backends, its float32 weights file (``model.safetensors``) on the simulator, as
        a checkpoint's size is its files' bytes."""
        if self.backend.scores("checkpoint"):
            return (self.spec.model_dir / WEIGHTS_FILE).stat().st_size
        return self.fp32_onnx.stat().st_size

    @cached_property
    def fp32_onnx(self) -> Path:
        """The FP32 ONNX export of the reference network (made once per process and weights)."""
        from harness.artifacts.onnx.export import reference_onnx

        return reference_onnx(self.model, self.model_spec, self.spec.model_dir, self.weights_sha256)

    @cached_property
    def fp32_graph(self) -> onnx.ModelProto:
        """``fp32_onnx`` parsed, once per track: what ONNX uploads are matched against."""
        import onnx  # only ONNX tracks need it (0.7 s of a command's start-up)

        return onnx.load(str(self.fp32_onnx), load_external_data=False)

    def checks(self, spec: TrackSpec | None = None) -> TrackChecks:
        """What an artifact is checked against on this track (``spec``: this track's, or a
        variant of it with other limits, as the FP32 row's); the reference graph is parsed only
        on backends that score ONNX."""
        spec = spec or self.spec
        return TrackChecks(
            limits=PrecisionLimits(
                weight_bits=spec.weight_bits,
                activation_bits=spec.activation_bits,
                max_float_mac_fraction=spec.max_float_mac_fraction,
            ),
            granularities=spec.granularities,
            bits_per_weight_budget=spec.budget,
            division=spec.division,
            interface=OnnxInterface.for_model(self.model_spec),
            reference_network=self.model,
            reference_graph=self.fp32_graph if self.backend.scores("onnx") else None,
            threads=spec.latency_threads,
            sw_batch_size=self.model_spec.sliding_window.sw_batch_size,
        )

    @cached_property
    def context_check(self) -> dict:
        """The measured context check (``harness.inference.context``) on the first calibration
        case: sliding-window vs whole-volume mean DSC (None where the volume is too large or the
        network refuses its size), the static full-context fraction where the receptive field
        is known, and the warning (None when neither is below its bound). Once run, its warning
        is among ``warnings()``."""
        window = self.model_spec.sliding_window
        field = self.model_spec.receptive_field
        case = self.calibration_cases[0]
        image = preprocess(read_case(case, self.dataset.labels), self.model_spec.preprocessing)
        classes = sorted(c for c in self.dataset.labels if c != 0)
        network = self.torch_model("the whole-volume context check")
        agreement = whole_volume_agreement(network, image, window, classes)
        return {
            "case": case.case_id,
            "whole_volume_agreement": agreement,
            "full_context_fraction": (
                None if field is None else full_context_fraction(field, window.roi_size)
            ),
            "warning": agreement_warning(agreement),
        }

    def warnings(self) -> list[str]:
        """What every result on this track warns about: the model spec's warnings, and the
        measured context check's once it has run."""
        measured = self.__dict__.get("context_check", {}).get("warning")
        return self.model_spec.warnings() + ([measured] if measured else [])

    def track_info(self) -> dict:
        return {
            "model": self.model_spec.name,
            "architecture": self.model_spec.architecture,
            "family": self.model_spec.family,
            "weights_sha256": self.weights_sha256,
            "dataset": self.dataset.name,
            "test_cases": [c.case_id for c in self.test_cases],
            "calibration_cases": [c.case_id for c in self.calibration_cases],
            "nsd_tolerance_mm": self.spec.nsd_tolerance_mm,
            "nsd_definition": self.spec.nsd_definition,
            "backend": self.spec.backend,
        }

    def run(
        self,
        model: nn.Module,
        progress: bool,
        desc: str,
        stage: str = SCORING_STAGE,
        case_ids: Sequence[str] | None = None,
    ) -> EvaluationRun:
        """``model`` scored on the track's test cases, or those of them named by ``case_ids``
        (a chunk of a fanned-out evaluation; ``stage``: its progress step's name)."""
        cases = self.test_cases
        if case_ids is not None:
            unknown = set(case_ids) - {c.case_id for c in cases}
            if unknown:
                raise DatasetError(f"{len(unknown)} case(s) named are not test cases of the track")
            cases = tuple(c for c in cases if c.case_id in set(case_ids))
        return evaluate_cases(
            model,
            self.model_spec,
            cases,
            self.dataset.labels,
            self.spec.nsd_tolerance_mm,
            progress=progress,
            desc=desc,
            nsd_definition=self.spec.nsd_definition,
            label_lut=self.label_lut,
            stage=stage,
            label_surfaces_of=self.label_surfaces,
        )

    @cached_property
    def label_surfaces(self) -> LabelSurfaceCache:
        """The test labels' surfaces, found once for every run scored here and shared with other
        workers through the cache (``harness.track.surface_cache``)."""
        return LabelSurfaceCache(self.dataset.labels)


def check_backend_runs(model_spec: ModelSpec, backend: Backend) -> None:
    """An ONNX reference runs on ONNX backends only."""
    refusal = None if model_spec.has_torch_network else graph_backend_refusal(backend)
    if refusal is not None:
        raise ModelSpecError(f"{model_spec.name!r}: {refusal}")

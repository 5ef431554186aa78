"""Evaluate one submission on a track: the FP32 reference, a named simulated scheme, or a
quantized checkpoint. Returns the result document (see ``result.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from harness.artifacts.checkpoint import describe_checkpoint, load_checkpoint
from harness.backends.onnx_submission import onnx_efficiency, open_onnx_submission
from harness.data.calibration import calibration_batches
from harness.data.dataset import Case, Dataset, load_dataset
from harness.errors import CheckpointError
from harness.inference.evaluation import EvaluationRun, StageTimer, evaluate_cases
from harness.models.reference import ModelSpec, load_reference_model, weights_sha256
from harness.scoring.result import build_result
from harness.track.spec import TrackSpec
from reference_methods.simulator.scheme import QuantConfig, quantize


@dataclass(frozen=True)
class Submission:
    """What is evaluated: ``fp32`` (the reference), a ``scheme`` name, a ``checkpoint`` or an
    ``onnx`` file (on an onnxruntime-cpu or tensorrt track)."""

    kind: Literal["fp32", "scheme", "checkpoint", "onnx"]
    scheme: str | None = None
    checkpoint: Path | None = None
    onnx: Path | None = None

    @property
    def label(self) -> str:
        return {
            "fp32": "fp32",
            "scheme": self.scheme,
            "checkpoint": str(self.checkpoint),
            "onnx": str(self.onnx),
        }[self.kind]


@dataclass
class LoadedTrack:
    """A track with its dataset parsed and its FP32 model loaded, reused across submissions."""

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
            model_spec, model = load_reference_model(spec.model_dir)
        return cls(spec, dataset, model_spec, model, timer)

    @property
    def test_cases(self) -> tuple[Case, ...]:
        return self.dataset.split(self.spec.test_split)

    @property
    def calibration_cases(self) -> tuple[Case, ...]:
        return self.dataset.split(self.spec.calibration_split)

    @cached_property
    def calibration(self) -> list[torch.Tensor]:
        """Calibration patch batches, read once per track (unlabeled)."""
        with self.timer.stage("calibration_data"):
            return calibration_batches(self.calibration_cases, self.model_spec)

    @cached_property
    def fp32_run(self) -> EvaluationRun:
        """The FP32 reference evaluated once per track: every submission's ↓Δ% is against it."""
        return self.run(self.model, progress=False, desc="fp32")

    def track_info(self) -> dict:
        return {
            "model": self.model_spec.name,
            "architecture": self.model_spec.architecture,
            "family": self.model_spec.family,
            "weights_sha256": weights_sha256(self.spec.model_dir),
            "dataset": self.dataset.name,
            "test_cases": [c.case_id for c in self.test_cases],
            "calibration_cases": [c.case_id for c in self.calibration_cases],
            "nsd_tolerance_mm": self.spec.nsd_tolerance_mm,
            "backend": self.spec.backend,
        }

    def run(self, model: nn.Module, progress: bool, desc: str) -> EvaluationRun:
        return evaluate_cases(
            model,
            self.model_spec,
            self.test_cases,
            self.dataset.labels,
            self.spec.nsd_tolerance_mm,
            progress=progress,
            desc=desc,
        )

    def quantized_model(self, submission: Submission, timer: StageTimer) -> tuple[nn.Module, dict]:
        """The network a submission stands for, with the precision read from it."""
        if submission.kind == "fp32":
            return self.model, {"weight_bits": 32, "activation_bits": 32, "granularity": "none"}
        if submission.kind == "onnx":
            with timer.stage("verify"):
                model, precision = open_onnx_submission(self, Path(submission.onnx))
            self._check_precision(precision)
            return model, precision
        if self.spec.backend != "simulated":
            raise CheckpointError(
                f"a {self.spec.backend} track scores ONNX files; export the checkpoint with "
                "`harness export-onnx --checkpoint` and submit that"
            )
        if submission.kind == "scheme":
            config = QuantConfig.from_scheme(submission.scheme)
            calibration = self.calibration
            with timer.stage("quantize"):
                model = quantize(self.model, config, calibration)
            precision = {
                "weight_bits": config.weight_bits,
                "activation_bits": config.activation_bits,
                "granularity": config.granularity.value,
            }
        else:
            with timer.stage("quantize"):
                model = load_checkpoint(submission.checkpoint, self.model)
                precision = describe_checkpoint(submission.checkpoint)
        self._check_precision(precision)
        return model, precision

    def _check_precision(self, precision: dict) -> None:
        limit_w, limit_a = self.spec.weight_bits, self.spec.activation_bits
        weight_bits, act_bits = precision.get("weight_bits"), precision.get("activation_bits")
        if limit_w is not None and (weight_bits is None or weight_bits > limit_w):
            raise CheckpointError(
                f"track allows at most {limit_w}-bit weights; the submission uses {weight_bits}-bit"
            )
        if limit_a is not None and (act_bits is None or act_bits > limit_a):
            raise CheckpointError(
                f"track allows at most {limit_a}-bit activations; the submission uses "
                f"{act_bits if act_bits is not None else 'floating-point'} activations"
            )


def evaluate_submission(
    track: LoadedTrack,
    submission: Submission,
    *,
    fp32: EvaluationRun | None = None,
    progress: bool = False,
) -> tuple[dict, EvaluationRun]:
    """Result document of ``submission`` and its run, against ``fp32`` or the track's cached FP32
    reference run."""
    timer = StageTimer()
    model, precision = track.quantized_model(submission, timer)
    if fp32 is None and submission.kind != "fp32":
        fp32 = track.fp32_run
    run = track.run(model, progress, submission.label)
    efficiency = None
    if submission.kind == "onnx":
        with timer.stage("efficiency"):
            efficiency = onnx_efficiency(track, model, Path(submission.onnx))
    extra = dict(track.timer.seconds) | dict(timer.seconds)
    result = build_result(
        run,
        labels=track.dataset.labels,
        track=track.track_info(),
        submission={"kind": submission.kind, "scheme": submission.label, "precision": precision},
        fp32=fp32 if submission.kind != "fp32" else None,
        seed=track.spec.seed,
        extra_timings=extra,
        efficiency=efficiency,
    )
    return result, run

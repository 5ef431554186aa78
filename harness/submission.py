"""Evaluate one submission on a track — the FP32 reference, a named simulated scheme, a quantized
checkpoint or an ONNX file — into its result document (see ``harness.scoring.result``).

This is the harness entry point a worker calls for an upload: the artifact is opened by the
track's backend (which verifies it), its precision checked against the track once, here, then
it is scored and measured. ``SubmissionError`` means the artifact is at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.artifacts.kinds import ARTIFACT_KINDS
from harness.artifacts.precision import check_precision
from harness.backends import Backend, OpenedArtifact, backend_names, get_backend
from harness.data.preprocessing import preprocess, read_case
from harness.errors import CheckpointError, SubmissionError
from harness.inference.evaluation import EvaluationRun, StageTimer
from harness.inference.latency import LatencyProtocol
from harness.scoring.result import build_result
from harness.track.loaded import LoadedTrack
from reference_methods.simulator.scheme import QuantConfig, quantize

StageCallback = Callable[[str], None]
"""Told ``"running"`` once the artifact is verified and scoring starts (the site shows it)."""
FP32_PRECISION = {"weight_bits": 32, "activation_bits": 32, "granularity": "none"}


@dataclass(frozen=True)
class Submission:
    """What is evaluated: ``fp32`` (the reference), a ``scheme`` name (quantized here by the
    simulator), a ``checkpoint`` folder or an ``onnx`` file."""

    kind: Literal["fp32", "scheme", "checkpoint", "onnx"]
    scheme: str | None = None
    checkpoint: Path | None = None
    onnx: Path | None = None

    @property
    def artifact(self) -> Path | None:
        return {"checkpoint": self.checkpoint, "onnx": self.onnx}.get(self.kind)

    @property
    def label(self) -> str:
        return {
            "fp32": "fp32",
            "scheme": self.scheme,
            "checkpoint": str(self.checkpoint),
            "onnx": str(self.onnx),
        }[self.kind]


def open_submission(
    track: LoadedTrack, submission: Submission, timer: StageTimer
) -> OpenedArtifact:
    """The network a submission stands for and the precision read from it, checked against the
    track's limits."""
    if submission.kind == "fp32":
        return OpenedArtifact(track.model, FP32_PRECISION | {"size_bytes": track.fp32_size_bytes})
    backend = track.backend
    if submission.kind == "scheme":
        if not backend.scores("checkpoint"):  # a scheme is what a checkpoint would hold
            raise _wrong_kind("checkpoint", backend)
        config = QuantConfig.from_scheme(submission.scheme)
        calibration = track.calibration
        with timer.stage("quantize"):
            network = quantize(track.torch_model("a simulated scheme"), config, calibration)
        opened = OpenedArtifact(
            network,
            {
                "weight_bits": config.weight_bits,
                "activation_bits": config.activation_bits,
                "granularity": config.granularity.value,
            },
        )
    else:
        if not backend.scores(submission.kind):
            raise _wrong_kind(submission.kind, backend)
        with timer.stage("verify"):
            opened = backend.open(
                Path(submission.artifact),
                spec=track.spec,
                model_spec=track.model_spec,
                reference=track.model,
            )
            digest = ARTIFACT_KINDS[submission.kind].digest(Path(submission.artifact))
            opened = OpenedArtifact(opened.network, opened.precision | {"artifact_sha256": digest})
    spec = track.spec
    check_precision(
        opened.precision,
        weight_bits=spec.weight_bits,
        activation_bits=spec.activation_bits,
        granularities=spec.granularities,
        bits_per_weight_budget=spec.budget,
    )
    return opened


def _wrong_kind(kind: str, backend: Backend) -> SubmissionError:
    """The error for an artifact kind the track's backend does not score, naming what to do."""
    if kind == "checkpoint":
        return CheckpointError(
            f"a {backend.name} track scores {backend.artifact_kinds[0].plural}; export the "
            "checkpoint with `harness export-onnx --checkpoint` and submit that"
        )
    where = [name for name in backend_names() if get_backend(name).scores(kind)]
    return SubmissionError(
        f"{ARTIFACT_KINDS[kind].label} submissions are scored on {' or '.join(where)} tracks; "
        f"this track's backend is {backend.name}"
    )


def evaluate_submission(
    track: LoadedTrack,
    submission: Submission,
    *,
    fp32: EvaluationRun | None = None,
    progress: bool = False,
    about: Mapping | None = None,
    timings: Mapping[str, float] | None = None,
    on_stage: StageCallback | None = None,
) -> tuple[dict, EvaluationRun]:
    """Result document of ``submission`` and its run, against ``fp32`` or the track's cached FP32
    reference run. ``about`` is submission metadata (method, scheme label, container) recorded in
    the document's ``submission`` entry; ``timings`` are seconds of stages run before this call
    (a quantizer container, a baseline's quantization)."""
    timer = StageTimer()
    opened = open_submission(track, submission, timer)
    if fp32 is None and submission.kind != "fp32":
        fp32 = track.fp32_run
    if on_stage is not None:
        on_stage("running")
    run = track.run(opened.network, progress, submission.label)
    efficiency = None
    artifact = submission.artifact
    if artifact is not None:
        with timer.stage("efficiency"):
            efficiency = _efficiency(track, opened, Path(artifact))
    entry = {"kind": submission.kind, "scheme": submission.label, "precision": opened.precision}
    result = build_result(
        run,
        labels=track.dataset.labels,
        track=track.track_info(),
        submission=entry | dict(about or {}),
        fp32=fp32 if submission.kind != "fp32" else None,
        seed=track.spec.seed,
        accuracy_gate=track.spec.accuracy_gate,
        fp32_size_bytes=track.fp32_size_bytes if submission.kind != "fp32" else None,
        extra_timings=dict(track.timer.seconds) | dict(timer.seconds) | dict(timings or {}),
        efficiency=efficiency,
        warnings=track.model_spec.warnings(),
    )
    return result, run


def _efficiency(track: LoadedTrack, opened: OpenedArtifact, artifact: Path) -> dict | None:
    """The backend's efficiency figures, measured on the first test volume, with the FP32
    reference (exported as ONNX once per process) timed interleaved under the track's latency
    protocol (None where the backend measures none)."""
    backend = track.backend
    if not backend.measures_latency:
        return None
    case = track.test_cases[0]
    volume = preprocess(read_case(case, track.dataset.labels), track.model_spec.preprocessing)
    measured = backend.measure_efficiency(
        opened,
        artifact,
        volume=volume,
        window=track.model_spec.sliding_window,
        fp32=track.fp32_onnx,
        protocol=LatencyProtocol(threads=track.spec.latency_threads),
    )
    return None if measured is None else measured | {"latency_case": case.case_id}

"""Evaluate one submission on a track — the FP32 reference, a named simulated scheme, a quantized
checkpoint or an ONNX file — into its result document (see ``harness.scoring.result``).

The entry point a worker calls for an upload: the artifact is opened by the track's backend, which
verifies it once and checks its precision against the track by the one precision check before
the engine loads it (``Backend.open``); on an engine other than ONNX Runtime, the engine's output
on the first calibration patch is compared with ONNX Runtime's on the same file and an upload it
does not run faithfully is refused (``harness.entry.engine_agreement``); then it is scored and
measured, reusing the verified artifact.
``SubmissionError`` means the artifact is at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from harness.artifacts.kinds import ARTIFACT_KINDS
from harness.artifacts.precision import check_for_track
from harness.backends import Backend, OpenedArtifact, backend_names, get_backend
from harness.entry.engine_agreement import check_engine_agreement
from harness.entry.evaluated import Evaluated
from harness.entry.isolation import run_isolated
from harness.errors import CheckpointError, HarnessError, SubmissionError
from harness.scoring.evaluation import CaseMetrics, EvaluationRun, StageTimer
from harness.scoring.result import build_result
from harness.track.loaded import LoadedTrack
from reference_methods.simulator.scheme import QuantConfig, quantize

StageCallback = Callable[[str], None]
"""Told ``"running"`` once the artifact is verified and scoring starts (the site shows it)."""
FP32_PRECISION = {"weight_bits": 32, "activation_bits": 32, "granularity": "none"}


@dataclass(frozen=True)
class Submission:
    """What is evaluated: ``fp32`` (the reference: its torch network, or with ``onnx`` its FP32
    export run on the track's backend), a ``scheme`` name (quantized here by the simulator), a
    ``checkpoint`` folder or an ``onnx`` file."""

    kind: Literal["fp32", "scheme", "checkpoint", "onnx"]
    scheme: str | None = None
    checkpoint: Path | None = None
    onnx: Path | None = None

    @property
    def artifact(self) -> Path | None:
        return {"checkpoint": self.checkpoint, "onnx": self.onnx, "fp32": self.onnx}.get(self.kind)

    @property
    def artifact_kind(self) -> str | None:
        """The artifact kind of the file evaluated (None: no file)."""
        if self.artifact is None:
            return None
        return "onnx" if self.kind == "fp32" else self.kind

    @property
    def label(self) -> str:
        return {
            "fp32": "fp32",
            "scheme": self.scheme,
            "checkpoint": str(self.checkpoint),
            "onnx": str(self.onnx),
        }[self.kind]


def open_submission(
    track: LoadedTrack, submission: Submission, timer: StageTimer, *, own_file: bool = False
) -> OpenedArtifact:
    """The network a submission stands for and the precision read from it, checked against the
    track's limits (the FP32 reference has none: its export is checked as the reference network
    only); an ONNX file on an engine other than ONNX Runtime with the engine's deviation from
    ONNX Runtime recorded, and refused beyond the tolerance unless it is the harness's
    ``own_file`` (a baseline: the engine's own PTQ, or an export whose placement was already
    chosen by that deviation)."""
    backend = track.backend
    if submission.kind == "fp32" and submission.artifact is None:
        return OpenedArtifact(track.model, FP32_PRECISION | {"size_bytes": track.fp32_size_bytes})
    if submission.kind == "scheme":
        if not backend.scores("checkpoint"):  # a scheme is what a checkpoint would hold
            raise _wrong_kind("checkpoint", backend)
        config = QuantConfig.from_scheme(submission.scheme)
        calibration = track.calibration
        with timer.stage("quantize"):
            network = quantize(track.torch_model("a simulated scheme"), config, calibration)
        precision = {
            "weight_bits": config.weight_bits,
            "activation_bits": config.activation_bits,
            "granularity": config.granularity.value,
        }
        check_for_track(precision, track.checks())
        return OpenedArtifact(network, precision)
    if not backend.scores(submission.artifact_kind):
        raise _wrong_kind(submission.artifact_kind, backend)
    checks = track.checks(_unlimited(track) if submission.kind == "fp32" else None)
    with timer.stage("verify"):
        opened = backend.open(Path(submission.artifact), checks)
        precision = opened.precision | {"artifact_sha256": opened.verified.sha256}
        if submission.kind == "onnx":
            deviation = _engine_deviation(track, opened, enforce=not own_file)
            if deviation is not None:
                precision["engine_deviation"] = deviation
    return replace(opened, precision=precision)


def _engine_deviation(track: LoadedTrack, opened: OpenedArtifact, *, enforce: bool) -> float | None:
    """The engine's deviation from ONNX Runtime on the file, on the first calibration patch
    (None on ONNX Runtime itself); with ``enforce``, ``SubmissionError`` beyond the tolerance
    (``harness.entry.engine_agreement``)."""
    batches = track.calibration
    if not batches:
        raise HarnessError("the track has no calibration patch to check the engine on")
    return check_engine_agreement(
        track.backend.name,
        opened.network,
        opened.verified.path,
        batches[0][:1],
        track.spec.latency_threads,
        enforce=enforce,
    )


def _unlimited(track: LoadedTrack):
    """The track's spec without precision limits: the FP32 reference is held to none."""
    return replace(track.spec, weight_bits=None, activation_bits=None, bits_per_weight_budget=None)


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
    own_file: bool = False,
    cases: Sequence[CaseMetrics] | None = None,
    efficiency: bool = True,
) -> Evaluated:
    """Result document of ``submission`` and its run, against ``fp32`` or the track's cached FP32
    reference run. ``about`` is submission metadata (method, scheme label, container) recorded in
    the document's ``submission`` entry; ``timings`` are seconds of stages run before this call
    (a quantizer container, a baseline's quantization). The FP32 reference's torch network is
    not run again: its row is the track's cached run. ``own_file``: the artifact is the
    harness's own (a baseline), see ``open_submission``. ``cases``: every test case already
    scored, in chunks (``harness.entry.fan_out``): the document is assembled from them, the
    artifact verified and its efficiency measured here, as in the serial run. ``efficiency``
    False: no efficiency figures (a calibration re-run, scored only for its accuracy)."""
    timer = StageTimer()
    opened = open_submission(track, submission, timer, own_file=own_file)
    torch_reference = submission.kind == "fp32" and submission.artifact is None
    if fp32 is None and not torch_reference:
        fp32 = track.fp32_run
    if on_stage is not None:
        on_stage("running")
    if torch_reference:  # its run is the track's cached one
        run = track.reference_run(progress)
    elif cases is not None:
        run = EvaluationRun.of_cases(cases, [c.case_id for c in track.test_cases])
    else:
        run = track.run(opened.network, progress, submission.label)
    measured = None
    if efficiency and opened.verified is not None:
        with timer.stage("efficiency"):
            measured = _efficiency(track, opened)
    entry = {"kind": submission.kind, "scheme": submission.label, "precision": opened.precision}
    result = build_result(
        run,
        labels=track.dataset.labels,
        track=track.track_info(),
        submission=entry | dict(about or {}),
        fp32=None if torch_reference else fp32,
        seed=track.spec.seed,
        accuracy_gate=track.spec.accuracy_gate,
        fp32_size_bytes=None if torch_reference else track.fp32_size_bytes,
        extra_timings=dict(track.timer.seconds) | dict(timer.seconds) | dict(timings or {}),
        efficiency=measured,
        warnings=track.warnings(),
        public_fraction=track.spec.public_fraction,
    )
    return Evaluated(result, run, submission.artifact)


def evaluate_untrusted(
    track: LoadedTrack,
    submission: Submission,
    *,
    about: Mapping | None = None,
    on_stage: StageCallback | None = None,
    fp32: EvaluationRun | None = None,
    cases: Sequence[CaseMetrics] | None = None,
    timings: Mapping[str, float] | None = None,
    efficiency: bool = True,
) -> dict:
    """``evaluate_submission``'s result document for an untrusted artifact (an upload, or what a
    quantizer container wrote; assembled from ``cases`` when they were scored in chunks, with
    ``timings`` such as their wall-clock seconds), evaluated in a child process
    (``harness.entry.isolation``): an engine crash is the artifact's fault. What every
    evaluation of the track reads (the FP32 run and export, the calibration patches, the
    latency volume) is computed first, here, so that the worker keeps it for the next one.
    ``efficiency``: as in ``evaluate_submission``."""
    track.warm()

    def work(stage: Callable[[str], None]) -> dict:
        return evaluate_submission(
            track,
            submission,
            fp32=fp32,
            about=about,
            timings=timings,
            on_stage=stage,
            cases=cases,
            efficiency=efficiency,
        ).result

    return run_isolated(work, engine=track.spec.backend, on_stage=on_stage)


def _efficiency(track: LoadedTrack, opened: OpenedArtifact) -> dict | None:
    """The backend's efficiency figures, measured on the first test volume (read and
    preprocessed once per track), with the FP32 reference timed interleaved under the track's
    latency protocol (None where the backend measures none)."""
    backend = track.backend
    if not backend.measures_latency:
        return None
    measured = backend.measure_efficiency(
        opened,
        volume=track.latency_volume,
        window=track.model_spec.sliding_window,
        fp32=track.fp32_onnx,
        protocol=track.spec.latency_protocol,
    )
    return None if measured is None else measured | {"latency_case": track.test_cases[0].case_id}

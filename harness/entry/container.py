"""The quantizer-container entry point: run a participant's image sandboxed on the track's
``/input`` (``harness.containers``), then verify and evaluate what it wrote to ``/output`` exactly
like an upload of the track's artifact kind: in a child process (``evaluate_untrusted``), so an
engine that crashes on the output takes down the child, and the quantizer is rejected."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import docker

from harness.containers.images import PinnedImage
from harness.containers.protocol import output_artifact
from harness.containers.sandbox import ContainerLimits, ContainerOutcome, run_quantizer_container
from harness.entry.evaluated import Evaluated
from harness.entry.upload import Submission, evaluate_untrusted
from harness.errors import SubmissionError
from harness.scoring.evaluation import EvaluationRun
from harness.track.loaded import LoadedTrack


class QuantizerRejected(SubmissionError):
    """The quantizer or its output is at fault; ``outcome`` is its run (logs, exit status)."""

    def __init__(self, message: str, outcome: ContainerOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


def evaluate_quantizer_container(
    *,
    image: PinnedImage,
    track: LoadedTrack,
    workdir: str | Path,
    helper_image: str,
    limits: ContainerLimits | None = None,
    gpu: bool = False,
    worker: str = "",
    client: docker.DockerClient | None = None,
    input_dir: str | Path | None = None,
    fp32: EvaluationRun | None = None,
    about: Mapping | None = None,
    efficiency: bool = True,
) -> Evaluated:
    """Run the quantizer, verify its output exactly like an upload of the track's kind
    (checkpoint or ONNX, see ``output_artifact``) and evaluate it in a child process (the
    ``Evaluated`` has no run: it stays in the child). ``about`` is submission
    metadata for the result document (its ``scheme`` defaults to the pinned image);
    ``efficiency`` False skips the efficiency figures (a calibration re-run). A quantizer
    or output at fault raises ``QuantizerRejected`` (a ``SubmissionError``) with its run; a
    failing engine raises ``docker.errors``."""
    outcome = run_quantizer_container(
        image=image,
        track=track,
        workdir=workdir,
        helper_image=helper_image,
        limits=limits,
        gpu=gpu,
        worker=worker,
        client=client,
        input_dir=input_dir,
    )
    if not outcome.ok:
        raise QuantizerRejected(outcome.error, outcome)
    entry = {"scheme": f"container {image.digest}"} | dict(about or {})
    entry["container"] = outcome.result_entry(image)
    try:
        kind, path = output_artifact(outcome.output_dir, track.spec.backend)
        result = evaluate_untrusted(
            track,
            Submission(kind.name, **{kind.name: path}),
            fp32=fp32,
            about=entry,
            timings={"container": outcome.seconds},
            efficiency=efficiency,
        )
    except SubmissionError as error:
        message = f"the quantizer's output was rejected: {error}"
        raise QuantizerRejected(message, outcome) from error
    return Evaluated(result, None, path, outcome)

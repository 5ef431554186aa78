"""The evaluation of one submission, stage by stage: a thin adapter between a Submission row and
the harness's three entry points — ``harness.entry.upload.evaluate_untrusted`` (an upload, in
a child process), ``harness.entry.baseline.compute_baseline`` (a reference baseline) and
``harness.entry.container.evaluate_quantizer_container`` (a quantizer container, through
``container_runs``) — whose result document it stores as it is, columns from the harness's
``ResultSummary``.

Stages are written to the row under ``select_for_update`` (``stages``). The harness verifies the
artifact (format, precision against the track) before scoring it. A ``SubmissionError`` (the
artifact is at fault) ends the run ``rejected`` with the harness's message; a
``BackendUnavailable`` (this worker lacks the track's engine or accelerator: an environment
limit, not a bug) ends it ``failed`` with that reason and where the job can run, no traceback;
any other error ends it ``failed`` (not counted in the quota; the traceback is logged for the
maintainers);
infrastructure errors (database, broker, storage) propagate so that the Celery task retries.
Running it again on a finished submission does nothing. Every stored result is kept as the
submission's next ``EvaluationVersion``; its ``Evaluation`` (one row per submission) is the
latest, the one ranked."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files.base import File

from harness.analysis.calibration_robustness import baseline_calibration_spread
from harness.entry.baseline import compute_baseline, compute_reference
from harness.entry.upload import evaluate_untrusted
from harness.errors import BackendUnavailable, SubmissionError
from harness.progress import reporting
from harness.track.loaded import LoadedTrack
from leaderboard.submissions import fan_out
from leaderboard.submissions.artifacts import harness_upload
from leaderboard.submissions.container_runs import run_container
from leaderboard.submissions.models import Kind, Status, Submission
from leaderboard.submissions.results import about_of, finish, store_evaluation
from leaderboard.submissions.stages import MAX_ATTEMPTS, advance, enter_running, fail, start
from leaderboard.submissions.worker import (
    Progress,
    heartbeat,
    is_out_of_memory,
    memory_limit_message,
    open_track,
)

__all__ = ["MAX_ATTEMPTS", "fail", "run", "start", "store_evaluation"]
logger = logging.getLogger(__name__)
EVALUATED_KINDS = frozenset({Kind.FP32, Kind.SCHEME, Kind.CHECKPOINT, Kind.ONNX, Kind.CONTAINER})
"""Kinds the workers evaluate (containers on the ``containers`` queue, see ``tasks.queue_for``)."""


def _store_artifact(submission: Submission, path: Path) -> None:
    """Keep a baseline's artifact (checkpoint folder → zip, or ONNX file) for reproduction."""
    if path.is_dir():
        path = Path(shutil.make_archive(str(path.parent / "checkpoint"), "zip", path))
    with open(path, "rb") as handle:
        submission.artifact.save(path.name, File(handle), save=False)
    Submission.objects.filter(pk=submission.pk).update(artifact=submission.artifact.name)


def _evaluate(
    submission: Submission, track: LoadedTrack, workdir: Path, log: list[str], worker: str
) -> dict:
    """The result document of ``submission``, through the harness entry point for its kind."""

    def on_stage(stage: str) -> None:
        if stage == "running":
            log.append("artifact verified")
            enter_running(submission.pk, log)

    if submission.kind == Kind.CONTAINER:
        about = about_of(submission)
        return run_container(submission, track, workdir, log, worker=worker, about=about).result
    if submission.kind == Kind.FP32:
        return compute_reference(track, on_stage=on_stage).result
    if submission.kind == Kind.SCHEME:
        baseline = compute_baseline(
            track,
            method=submission.reference_method or "rtn",
            scheme=submission.scheme,
            workdir=workdir,
            about=about_of(submission),
            on_stage=on_stage,
        )
        _store_artifact(submission, baseline.artifact)
        resamples = submission.track.calibration_resamples
        if resamples:
            spread = baseline_calibration_spread(
                track, submission.reference_method or "rtn", submission.scheme, resamples, workdir
            )
            baseline.result["summary"]["calibration"] = spread
        return baseline.result
    if submission.kind not in EVALUATED_KINDS:
        raise SubmissionError(f"{submission.get_kind_display()} submissions cannot be evaluated")
    upload = harness_upload(
        submission, workdir
    )  # untrusted: run in a child process (an engine crash
    # is the artifact's fault, rejected and counted in the quota)
    return evaluate_untrusted(track, upload, about=about_of(submission), on_stage=on_stage)


def run(submission_id: int, *, worker: str = "") -> str:
    """Evaluate one submission through every stage, beating its heartbeat; returns its final
    status. ``worker`` names the Celery worker in the labels of the containers it starts (see
    ``remove_orphans``)."""
    submission = start(submission_id)
    if submission is None:
        return Submission.objects.get(pk=submission_id).status
    progress = Progress()
    with heartbeat(submission_id, progress), reporting(progress):
        return _run(submission, submission_id, worker)


def _run(submission: Submission, submission_id: int, worker: str) -> str:
    settings.MEDQUANT_WORK_DIR.mkdir(parents=True, exist_ok=True)
    log = [f"attempt {submission.attempts} on track {submission.track.slug}"]
    try:
        track = open_track(submission.track)
    except Exception as error:
        logger.exception("track %s could not be loaded", submission.track.slug)
        fail(submission_id, f"the track could not be loaded: {error}")
        return Status.FAILED
    with tempfile.TemporaryDirectory(dir=settings.MEDQUANT_WORK_DIR) as tmp:
        try:
            if fan_out.applies(submission, track):
                return fan_out.dispatch(submission, track, log)
            result = _evaluate(submission, track, Path(tmp), log, worker)
        except SubmissionError as error:
            log.append(f"rejected: {error}")
            advance(submission_id, Status.REJECTED, error=str(error), log="\n".join(log))
            return Status.REJECTED
        except BackendUnavailable as error:
            message = (
                f"{error} (this worker cannot run {submission.track.backend} tracks: a worker on "
                f"the '{submission.track.queue}' queue that has it evaluates them; re-run it there)"
            )
            logger.warning("submission %s: %s", submission_id, message)
            log.append(message)
            advance(submission_id, Status.FAILED, error=message, log="\n".join(log))
            return Status.FAILED
        except (MemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            message = memory_limit_message()
            log.append(f"rejected: {message}")
            advance(submission_id, Status.REJECTED, error=message, log="\n".join(log))
            return Status.REJECTED
    advance(submission_id, Status.SCORING)
    return finish(submission, submission_id, result, log)

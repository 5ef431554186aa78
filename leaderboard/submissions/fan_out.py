"""An upload's test cases fanned out over the workers: the evaluation task verifies the artifact
and sends one ``score_chunk`` task per chunk of ``Track.cases_per_task`` cases (on the track's
participant queue); each chunk stores its cases' metrics as ``CaseScore`` rows; the chunk that
completes the set moves the submission to ``scoring`` and sends ``assemble``, which builds the
result document from them (``harness.entry.fan_out``: identical case for case to the serial
run), measures efficiency in one process and stores it as the serial run does.

Idempotent at every step: a case is stored once per round (``CaseScore``'s unique constraint;
a retried or duplicated chunk skips the cases already stored), a chunk or an assembly on a
submission no longer at its stage does nothing, and the evaluation task sent again by the
reconciler (a lost chunk or assembly message, a worker killed) sends only the chunks still
missing — or the assembly when none is. While chunks wait on the broker the reconciler does not
take the quiet submission for abandoned (``reconciler``)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from harness.entry.fan_out import case_chunks, score_untrusted_cases, verify_untrusted
from harness.entry.upload import evaluate_untrusted
from harness.errors import SubmissionError
from harness.scoring.evaluation import CaseMetrics
from harness.track.loaded import LoadedTrack
from leaderboard.submissions.artifacts import harness_upload
from leaderboard.submissions.models import CaseScore, Kind, Status, Submission
from leaderboard.submissions.results import about_of, finish
from leaderboard.submissions.routing import publish
from leaderboard.submissions.stages import advance, enter_running
from leaderboard.submissions.worker import (
    heartbeat,
    is_out_of_memory,
    memory_limit_message,
    open_track,
)

logger = logging.getLogger(__name__)
FANNED_KINDS = frozenset({Kind.CHECKPOINT, Kind.ONNX})
"""Uploads: scored as they are. A baseline (quantized on the worker first) and a quantizer
container (run first, in the sandbox) are evaluated by one task."""
SCORING_STAGE = "scoring test cases over the workers"


def applies(submission: Submission, track: LoadedTrack) -> bool:
    """Whether ``submission``'s cases are fanned out: an upload on a track with more test cases
    than ``cases_per_task``."""
    per_task = submission.track.cases_per_task
    return submission.kind in FANNED_KINDS and 0 < per_task < len(track.test_cases)


def current_round(submission: Submission) -> int:
    """The evaluation version being computed: one past the latest stored."""
    return (submission.versions.aggregate(latest=Max("version"))["latest"] or 0) + 1


def dispatch(submission: Submission, track: LoadedTrack, log: list[str]) -> str:
    """Verify the upload (``SubmissionError`` when it is refused), then send the chunks whose
    cases are not all stored yet, or the assembly when every case is; ``running`` (or
    ``scoring``)."""
    with tempfile.TemporaryDirectory(dir=settings.MEDQUANT_WORK_DIR) as tmp:
        verify_untrusted(track, harness_upload(submission, Path(tmp)))
    track.reference_run()  # computed (or read) once here, cached for every chunk's worker
    round_ = current_round(submission)
    ids = [case.case_id for case in track.test_cases]
    chunks = case_chunks(ids, submission.track.cases_per_task)
    stored = set(
        CaseScore.objects.filter(submission=submission, round=round_).values_list(
            "case_id", flat=True
        )
    )
    missing = [chunk for chunk in chunks if not stored.issuperset(chunk)]
    log.append(
        f"artifact verified; {len(ids)} test cases in {len(chunks)} tasks of at most "
        f"{submission.track.cases_per_task} ({len(missing)} to score)"
    )
    enter_running(submission.pk, log)
    _write_progress(submission.pk, len(stored), len(ids))
    if not missing:
        advance(submission.pk, Status.SCORING)
        publish("assemble", submission, round=round_)
        return Status.SCORING
    for chunk in missing:
        publish("score_chunk", submission, round=round_, case_ids=chunk, total=len(ids))
    return Status.RUNNING


def _write_progress(submission_id: int, done: int, total: int) -> None:
    Submission.objects.filter(pk=submission_id).update(
        progress_stage=SCORING_STAGE,
        progress_done=done,
        progress_total=total,
        heartbeat_at=timezone.now(),
    )


def score_chunk(
    submission_id: int, round_: int, case_ids: list[str], total: int, worker: str
) -> str:
    """Score the cases of ``case_ids`` not stored yet, store them, and when they complete the
    set of ``total`` test cases, move to ``scoring`` and send the assembly. The submission's
    status afterwards."""
    submission = Submission.objects.select_related("track").get(pk=submission_id)
    if submission.status != Status.RUNNING or current_round(submission) != round_:
        return submission.status
    stored = set(
        CaseScore.objects.filter(
            submission=submission, round=round_, case_id__in=case_ids
        ).values_list("case_id", flat=True)
    )
    todo = [case_id for case_id in case_ids if case_id not in stored]
    if todo:
        with heartbeat(submission_id):
            track = open_track(submission.track)
            with tempfile.TemporaryDirectory(dir=settings.MEDQUANT_WORK_DIR) as tmp:
                upload = harness_upload(submission, Path(tmp))
                try:
                    scored = score_untrusted_cases(track, upload, todo)
                except SubmissionError as error:
                    return _reject(submission_id, str(error))
                except (MemoryError, RuntimeError) as error:
                    if not is_out_of_memory(error):
                        raise
                    return _reject(submission_id, memory_limit_message())
        for metrics in scored:
            _store_case(submission, round_, metrics, worker)
    return _after_chunk(submission_id, round_, total)


def _store_case(submission: Submission, round_: int, metrics: CaseMetrics, worker: str) -> None:
    """One row per case and round: a case a duplicated chunk stored first is left as it is."""
    try:
        with transaction.atomic():
            CaseScore.objects.get_or_create(
                submission=submission,
                round=round_,
                case_id=metrics.case_id,
                defaults={"metrics": metrics.to_json(), "worker": worker},
            )
    except IntegrityError:  # stored by a concurrent duplicate between the read and the write
        pass


def _after_chunk(submission_id: int, round_: int, total: int) -> str:
    """Progress written; the assembly sent by the chunk that completes the set (once: the row
    lock orders the chunks, and only one sees ``running`` with every case stored)."""
    with transaction.atomic():
        submission = (
            Submission.objects.select_for_update().select_related("track").get(pk=submission_id)
        )
        if submission.status != Status.RUNNING:
            return submission.status
        done = CaseScore.objects.filter(submission=submission, round=round_).count()
        _write_progress(submission_id, done, total)
        if done >= total:
            submission.advance(Status.SCORING)
            transaction.on_commit(lambda: publish("assemble", submission, round=round_))
            return Status.SCORING
    return Status.RUNNING


def _reject(submission_id: int, message: str) -> str:
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission_id)
        if submission.status not in (Status.RUNNING, Status.SCORING):
            return submission.status
    log = (submission.log + f"\nrejected: {message}").strip()
    advance(submission_id, Status.REJECTED, error=message, log=log)
    return Status.REJECTED


def assemble(submission_id: int, round_: int) -> str:
    """The result document from the stored cases (the artifact verified again and its
    efficiency measured here), stored as the serial run stores it. The status afterwards."""
    submission = Submission.objects.select_related("track").get(pk=submission_id)
    if submission.status != Status.SCORING or current_round(submission) != round_:
        return submission.status
    rows = CaseScore.objects.filter(submission=submission, round=round_)
    cases = [CaseMetrics.from_json(row.metrics) for row in rows]
    with heartbeat(submission_id):
        track = open_track(submission.track)
        with tempfile.TemporaryDirectory(dir=settings.MEDQUANT_WORK_DIR) as tmp:
            upload = harness_upload(submission, Path(tmp))
            started = submission.running_at or submission.created_at
            wall = (timezone.now() - started).total_seconds()
            try:
                result = evaluate_untrusted(
                    track,
                    upload,
                    about=about_of(submission),
                    cases=cases,
                    timings={"evaluation_wall": wall},
                )
            except SubmissionError as error:
                return _reject(submission_id, str(error))
    log = submission.log.splitlines() + [f"{len(cases)} cases assembled"]
    return finish(submission, submission_id, result, log)

"""Storing a result document: the submission's next ``EvaluationVersion`` and its latest
``Evaluation`` (the columns from the harness's ``ResultSummary`` on the split the track ranks),
the submission ended ``done`` and its board re-ranked — what the serial evaluation
(``pipeline``) and the assembly of a fanned-out one (``fan_out``) both end with."""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from harness.entry.summary import ResultSummary
from leaderboard.submissions.models import (
    FINISHED,
    Evaluation,
    EvaluationVersion,
    Status,
    Submission,
)
from leaderboard.tracks import ranking

logger = logging.getLogger(__name__)


def about_of(submission: Submission) -> dict:
    """Submission metadata the harness records in the result document."""
    about = {"scheme": submission.scheme or submission.method}
    if submission.reference_method:
        about["method"] = submission.reference_method
    return about


def store_evaluation(
    submission: Submission, result: dict, summary: ResultSummary | None = None
) -> Evaluation:
    """Store a result document (its ``summary`` on the split the track ranks on, when the caller
    has read it already) as the next version of ``submission`` and as its latest Evaluation, the
    columns on that split (the caller holds the row lock)."""
    split = submission.track.ranked_split
    columns = (summary or ResultSummary.of(result, split)).columns()
    scores = {"track": submission.track, "result": result, "created_at": timezone.now()} | columns
    latest = submission.versions.aggregate(latest=Max("version"))["latest"] or 0
    EvaluationVersion.objects.create(submission=submission, version=latest + 1, **scores)
    evaluation, _ = Evaluation.objects.update_or_create(submission=submission, defaults=scores)
    return evaluation


def finish(submission: Submission, submission_id: int, result: dict, log: list[str]) -> str:
    """Store ``result`` as the submission's next version and end it ``done`` (ranked); nothing
    when another attempt has finished it meanwhile (``stages``: the first to finish decides)."""
    summary = ResultSummary.of(result, submission.track.ranked_split)
    log.append(summary.verification)
    with transaction.atomic():
        locked = (
            Submission.objects.select_for_update().select_related("track").get(pk=submission_id)
        )
        if locked.status in FINISHED:
            logger.info("submission %s finished by another attempt: result not stored", locked.pk)
            return locked.status
        if locked.track.ranked_split != submission.track.ranked_split:  # published meanwhile
            summary = ResultSummary.of(result, locked.track.ranked_split)
        store_evaluation(locked, result, summary)
        log.append(summary.scores_line())
        locked.advance(Status.DONE, log="\n".join(log))
        ranking.refresh(locked.track)
    return Status.DONE

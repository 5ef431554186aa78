"""Maintainer actions on submissions: re-evaluate one or many (the old result is replaced), and
re-rank after curation."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction

from leaderboard.submissions.models import Evaluation, Status, Submission
from leaderboard.submissions.tasks import enqueue
from leaderboard.tracks import ranking


def reevaluate(submissions: Iterable[Submission]) -> int:
    """Reset each submission to ``queued`` (dropping its Evaluation) and enqueue it again."""
    count, tracks = 0, {}
    with transaction.atomic():
        for submission in submissions:
            locked = Submission.objects.select_for_update().get(pk=submission.pk)
            Evaluation.objects.filter(submission=locked).delete()
            locked.status = Status.QUEUED
            locked.validating_at = locked.running_at = locked.scoring_at = None
            locked.finished_at = None
            locked.error = ""
            locked.attempts = 0  # a re-evaluation is a fresh run: interruptions start over
            locked.save()
            enqueue(locked)
            tracks[locked.track_id] = locked.track
            count += 1
        for track in tracks.values():
            ranking.refresh(track)
    return count


def refresh_ranks(submissions: Iterable[Submission]) -> None:
    """Re-rank the tracks of ``submissions`` after they were hidden, shown or disqualified."""
    for track in {s.track_id: s.track for s in submissions}.values():
        ranking.refresh(track)

"""Maintainer actions on submissions: re-evaluate one or many (the new result is added as the
next version; the old one stays, and stays on the board, until the new one exists), and re-rank
after curation."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction

from leaderboard.submissions.models import Status, Submission
from leaderboard.submissions.tasks import enqueue
from leaderboard.tracks import ranking


def reevaluate(submissions: Iterable[Submission]) -> int:
    """Reset each submission to ``queued`` with a fresh count of attempts and enqueue it again;
    its results are kept (the board ranks the latest while the new one is computed)."""
    count, tracks = 0, {}
    with transaction.atomic():
        for submission in submissions:
            locked = Submission.objects.select_for_update().get(pk=submission.pk)
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

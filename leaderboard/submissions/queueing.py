"""Where a pending submission stands: its place in its queue, the step its worker reports, and an
estimate of when it is done from the track's recent evaluation times; and cancelling a queued one.

Researchers' submissions and reference baselines wait on separate queues served by separate
workers (``tasks.queue_for``), so a researcher's place counts only other researchers'
submissions."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from leaderboard.submissions.models import IN_FLIGHT, PENDING, Status, Submission
from leaderboard.submissions.tasks import queue_for

RECENT_EVALUATIONS = 20
"""The track's latest finished evaluations whose median duration makes the estimate: recent
enough to follow a changed worker, enough to ignore one outlier."""


@dataclass(frozen=True)
class QueueState:
    """A pending submission's standing. ``position``: 1 = next to be evaluated (None once a
    worker holds it); ``in_flight``: submissions of its queue being evaluated now (itself
    excluded); ``typical_s``: median evaluation seconds of the track's recent finished ones
    (None: none yet); ``estimate_s``: seconds until done, reckoned with one worker as
    (waiting ahead + in flight + itself) × typical, less what it has run already."""

    position: int | None
    in_flight: int
    stage: str
    done: int
    total: int
    typical_s: float | None
    estimate_s: float | None

    def lines(self) -> list[str]:
        """The standing in words, as the submission page, its poll and the CLI show it."""
        lines = []
        if self.position is not None:
            running = f" ({self.in_flight} being evaluated now)" if self.in_flight else ""
            lines.append(f"queue position {self.position}{running}")
        if self.stage:
            count = f": {self.done} of {self.total}" if self.total else ""
            lines.append(f"step: {self.stage}{count}")
        if self.estimate_s is not None:
            lines.append(
                f"estimated done in about {_duration(self.estimate_s)} (evaluations on this "
                f"track take about {_duration(self.typical_s)})"
            )
        else:
            lines.append("no estimate yet: nothing has been evaluated on this track")
        return lines

    def as_dict(self) -> dict:
        return {
            "lines": self.lines(),
            "position": self.position,
            "in_flight": self.in_flight,
            "stage": self.stage,
            "done": self.done,
            "total": self.total,
            "typical_s": self.typical_s,
            "estimate_s": self.estimate_s,
        }


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def typical_seconds(submission: Submission) -> float | None:
    """Median seconds from validation to the end of the track's recent finished evaluations of
    the same kind (of any kind when none of it has finished yet)."""
    finished = Submission.objects.filter(
        track_id=submission.track_id,
        status__in=(Status.DONE, Status.REJECTED),
        validating_at__isnull=False,
        finished_at__isnull=False,
    ).order_by("-finished_at")
    for rows in (finished.filter(kind=submission.kind), finished):
        spans = [
            (end - start).total_seconds()
            for start, end in rows.values_list("validating_at", "finished_at")[:RECENT_EVALUATIONS]
        ]
        if spans:
            return statistics.median(spans)
    return None


def _same_queue(submission: Submission) -> list[Submission]:
    """Other pending submissions that wait on or run from ``submission``'s queue (one query)."""
    queue = queue_for(submission)
    others = (
        Submission.objects.filter(status__in=PENDING, is_baseline=submission.is_baseline)
        .exclude(pk=submission.pk)
        .select_related("track")
    )
    return [other for other in others if queue_for(other) == queue]


def queue_state(submission: Submission) -> QueueState | None:
    """The standing of a pending submission (None once it has finished)."""
    if not submission.is_pending:
        return None
    typical = typical_seconds(submission)
    others = _same_queue(submission)
    in_flight = sum(other.status in IN_FLIGHT for other in others)
    position = None
    if submission.status == Status.QUEUED:
        mine = (submission.created_at, submission.pk)
        ahead = sum(
            other.status == Status.QUEUED and (other.created_at, other.pk) < mine
            for other in others
        )
        position = ahead + 1
        estimate = None if typical is None else (ahead + in_flight + 1) * typical
    else:
        running = (timezone.now() - submission.validating_at).total_seconds()
        estimate = None if typical is None else max(typical - running, 0.0)
    return QueueState(
        position=position,
        in_flight=in_flight,
        stage=submission.progress_stage,
        done=submission.progress_done,
        total=submission.progress_total,
        typical_s=typical,
        estimate_s=estimate,
    )


def cancel(submission_id: int) -> bool:
    """End a queued submission ``cancelled`` (not counted in the quota); False when a worker has
    it already or it has finished. A message still on the broker finds it finished and does
    nothing (``stages.start``)."""
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission_id)
        if submission.status != Status.QUEUED:
            return False
        submission.advance(
            Status.CANCELLED, log=(submission.log + "\ncancelled by its submitter").strip()
        )
        return True

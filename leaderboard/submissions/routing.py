"""Where and how a submission's Celery messages go: its queue, its time limit, the header that
names it on the broker, and publishing a task by name (``publish``), which the modules the
tasks call use without importing the tasks module."""

from __future__ import annotations

from leaderboard.celery import BASELINE_QUEUE_SUFFIX, app
from leaderboard.config import HARD_LIMIT_MARGIN_S
from leaderboard.submissions.models import Kind, Submission

CONTAINER_QUEUE = "containers"
SUBMISSION_HEADER = "submission_id"
"""Message header naming the submission (the reconciler reads it off the broker's queues)."""
TASKS = "leaderboard.submissions.tasks"


def queue_for(submission: Submission) -> str:
    """Quantizer containers run on the ``containers`` queue; a reference baseline (or the FP32
    row) on the baseline queue of the track's backend, which its own workers serve; the rest
    where the track says."""
    if submission.kind == Kind.CONTAINER:
        return CONTAINER_QUEUE
    if submission.is_baseline:
        return submission.track.queue + BASELINE_QUEUE_SUFFIX
    return submission.track.queue


def time_limit_s(submission: Submission) -> int:
    """The task's soft time limit: the track's evaluation limit, plus its quantizer limit for a
    container."""
    track = submission.track
    extra = track.quantizer_timeout_s if submission.kind == Kind.CONTAINER else 0
    return track.time_limit_s + extra


def publish(task: str, submission: Submission, **kwargs) -> None:
    """Send the task ``tasks.<task>`` for ``submission`` with ``kwargs`` on its queue, under its
    time limit and with its header (the reconciler sees its work waiting on the broker)."""
    limit = time_limit_s(submission)
    app.send_task(
        f"{TASKS}.{task}",
        kwargs={"submission_id": submission.pk} | kwargs,
        queue=queue_for(submission),
        soft_time_limit=limit,
        time_limit=limit + HARD_LIMIT_MARGIN_S,
        headers={SUBMISSION_HEADER: submission.pk},
    )

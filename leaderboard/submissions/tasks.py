"""Celery tasks of the submissions app, the helper that enqueues them after commit, and the
clean-up of quantizer containers a killed worker left behind (at worker start)."""

from __future__ import annotations

import logging
import resource

import docker.errors
import requests.exceptions
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_ready
from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from harness.containers.sandbox import remove_orphans
from leaderboard.config import HARD_LIMIT_MARGIN_S
from leaderboard.submissions import fan_out, pipeline
from leaderboard.submissions.models import Submission
from leaderboard.submissions.routing import (
    CONTAINER_QUEUE,
    SUBMISSION_HEADER,
    queue_for,
    time_limit_s,
)

__all__ = ["CONTAINER_QUEUE", "SUBMISSION_HEADER", "queue_for", "time_limit_s"]

logger = logging.getLogger(__name__)
INFRASTRUCTURE_ERRORS = (
    OperationalError,
    InterfaceError,
    BrokerError,
    ConnectionError,
    docker.errors.DockerException,  # the Docker engine of a container worker failed
    requests.exceptions.ConnectionError,
)


RETRY_BACKOFF_MAX_S = 30
MAX_RETRIES = 60
"""Infrastructure retries: exponential backoff from 5 s, capped at 30 s (a worker retries within
half a minute of the service's return), 60 times — about half an hour, longer than a realistic
database or broker outage; then the reconciler's own passes (``reconciler.py``) take over."""


evaluation_task = shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=INFRASTRUCTURE_ERRORS,
    retry_backoff=5,
    retry_backoff_max=RETRY_BACKOFF_MAX_S,
    max_retries=MAX_RETRIES,
)
"""The decorator of every task that evaluates (part of) a submission: acknowledged late and
rejected when its worker is lost (so redelivered), infrastructure errors retried."""


@evaluation_task
def evaluate(self, *, submission_id: int) -> str:
    """Evaluate one submission (idempotent: a finished one is left as it is)."""
    return _guarded(
        self, submission_id, lambda: pipeline.run(submission_id, worker=self.request.hostname or "")
    )


@evaluation_task
def score_chunk(self, *, submission_id: int, round: int, case_ids: list[str], total: int) -> str:
    """Score one chunk of a fanned-out submission's test cases (``fan_out.score_chunk``;
    idempotent: cases stored already are skipped)."""
    return _guarded(
        self,
        submission_id,
        lambda: fan_out.score_chunk(
            submission_id, round, case_ids, total, worker=self.request.hostname or ""
        ),
    )


@evaluation_task
def assemble(self, *, submission_id: int, round: int) -> str:
    """Assemble and store the result of a fanned-out submission (``fan_out.assemble``;
    idempotent: a submission no longer ``scoring`` is left as it is)."""
    return _guarded(self, submission_id, lambda: fan_out.assemble(submission_id, round))


def _guarded(task, submission_id: int, work) -> str:
    """``work()`` with an evaluation's error handling: over the time limit or crashed, the
    submission ends ``failed``; infrastructure errors propagate (the task retries)."""
    try:
        return work()
    except SoftTimeLimitExceeded:
        limit = time_limit_s(Submission.objects.get(pk=submission_id))
        _record_failure(
            submission_id, f"evaluation stopped: it exceeded the track's {limit} s limit"
        )
        return "failed"
    except INFRASTRUCTURE_ERRORS:
        if task.request.retries >= task.max_retries:
            _record_failure(
                submission_id, "evaluation failed: infrastructure unavailable, retries ran out"
            )
        raise
    except Exception as error:
        logger.exception("evaluation of submission %s crashed", submission_id)
        _record_failure(
            submission_id,
            f"evaluation failed with an internal error ({type(error).__name__}); "
            "the maintainers can see the details and will re-run it",
        )
        return "failed"


def _record_failure(submission_id: int, message: str) -> None:
    """End the submission ``failed``; when the database cannot take it now, hand the write to
    ``record_failure`` (retried like an evaluation). Should the broker be down as well, the
    reconciler finds the submission pending and quiet and runs it again."""
    try:
        pipeline.fail(submission_id, message)
    except INFRASTRUCTURE_ERRORS as error:
        logger.warning("could not record submission %s failed (%s); retrying", submission_id, error)
        record_failure.apply_async(
            kwargs={"submission_id": submission_id, "message": message},
            queue=settings.CELERY_TASK_DEFAULT_QUEUE,
            countdown=5,
        )


@shared_task(
    acks_late=True,
    autoretry_for=INFRASTRUCTURE_ERRORS,
    retry_backoff=5,
    retry_backoff_max=RETRY_BACKOFF_MAX_S,
    max_retries=MAX_RETRIES,
)
def record_failure(*, submission_id: int, message: str) -> None:
    """Record ``failed`` with ``message`` (a failure the evaluating task could not write)."""
    pipeline.fail(submission_id, message)


def send(submission: Submission) -> None:
    """Publish the evaluation message now (the reconciler's re-enqueue; idempotent to repeat)."""
    limit = time_limit_s(submission)
    evaluate.apply_async(
        kwargs={"submission_id": submission.pk},
        queue=queue_for(submission),
        soft_time_limit=limit,
        time_limit=limit + HARD_LIMIT_MARGIN_S,
        headers={SUBMISSION_HEADER: submission.pk},
    )


def enqueue(submission: Submission) -> None:
    """Send the evaluation once the current transaction commits (never for a rolled-back row);
    the row's heartbeat says when (a message lost before it is consumed is re-sent by the
    reconciler). A broker that is down at commit leaves the row queued for the reconciler."""
    Submission.objects.filter(pk=submission.pk).update(heartbeat_at=timezone.now())

    def publish() -> None:
        try:
            send(submission)
        except BrokerError as error:
            logger.error("submission %s not sent (%s): the reconciler will", submission.pk, error)

    transaction.on_commit(publish)


def limit_memory(limit_bytes: int) -> None:
    """Cap this process's address space at ``limit_bytes`` (0: no cap): an allocation beyond it
    raises ``MemoryError`` (``pipeline.run`` rejects the submission) instead of exhausting the
    host."""
    if limit_bytes > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit_bytes = min(limit_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, hard))


@worker_process_init.connect
def limit_evaluation_memory(**_) -> None:
    """Each pool child (the process that evaluates) runs under
    ``MEDQUANT_EVALUATION_MEMORY_BYTES``; the worker's main process is not capped."""
    limit_memory(settings.MEDQUANT_EVALUATION_MEMORY_BYTES)


@worker_ready.connect
def remove_container_orphans(sender, **_) -> None:
    """On a worker consuming the ``containers`` queue of a site that accepts containers
    (``MEDQUANT_CONTAINERS``): remove the quantizer containers and volumes this worker (same
    hostname) left behind when it was killed. A worker that cannot reach Docker logs it and serves
    on (its container tasks are retried)."""
    if not settings.MEDQUANT_CONTAINERS:
        return
    if CONTAINER_QUEUE not in sender.app.amqp.queues.consume_from:
        return
    try:
        removed = remove_orphans(worker=sender.hostname)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        logger.error("could not remove orphaned quantizer containers: %s", error)
        return
    logger.info("removed %d orphaned quantizer container(s)/volume(s)", removed)

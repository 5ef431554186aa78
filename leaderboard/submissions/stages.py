"""State transitions of a submission's evaluation, each under the row's ``select_for_update``:
claimed by a worker (counting attempts), running, and ended ``failed`` by the trusted side.

A finished submission is never moved by a task: two attempts can be alive at once (the
reconciler re-sends an evaluation whose worker went quiet, and the quiet one may only have been
slow, say through a database outage), and the first to finish decides. Without this the later
one would move a ``done`` submission back to running and store its result a second time."""

from __future__ import annotations

import os
import re
import tempfile

from django.conf import settings
from django.db import transaction

from leaderboard.submissions.models import FINISHED, Status, Submission

MAX_ATTEMPTS = 3
"""A submission interrupted this many times (its worker died or lost its message) ends
``failed``: something about it takes workers down, and retrying it again would keep doing so."""


SHOWN_FIELDS = ("error", "log")
"""Fields shown to the submitter, kept free of the trusted side's paths (``without_paths``)."""


def _trusted_folders() -> list[tuple[str, str]]:
    """(folder, placeholder) of the worker's folders an error message may name, both as
    configured and resolved, longest first (a folder inside another is replaced first)."""
    folders = {
        settings.MEDQUANT_WORK_DIR: "<work>",
        settings.MEDIA_ROOT: "<media>",
        tempfile.gettempdir(): "<tmp>",
        settings.BASE_DIR: "<site>",
    }
    named = {str(f): p for f, p in folders.items()} | {
        os.path.realpath(f): p for f, p in folders.items()
    }
    return sorted(named.items(), key=lambda item: -len(item[0]))


def without_paths(text: str) -> str:
    """``text`` with every trusted folder (the work folder, media, the temporary folder, the
    site's install) replaced by a placeholder: what an engine or checker says about the file
    it was given reaches the submitter without the worker's paths."""
    for folder, placeholder in _trusted_folders():
        if folder != os.sep:  # a folder ends where a path component does
            text = re.sub(re.escape(folder) + r"(?![\w.-])", placeholder, text)
    return text


def _shown(fields: dict) -> dict:
    return {k: without_paths(v) if k in SHOWN_FIELDS else v for k, v in fields.items()}


def advance(submission_id: int, status: Status, **fields) -> Submission:
    """Move the submission to ``status`` with ``fields`` (``error`` and ``log`` without the
    worker's paths) unless it has finished (see the module docstring). A rejected upload's
    stored file is deleted once that is committed (its digest stays on the row): a refused
    artifact is never scored, so keeping it (a container archive can be gigabytes) would only
    fill the storage."""
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission_id)
        if submission.status in FINISHED:
            return submission
        if status == Status.REJECTED and submission.artifact and not submission.is_baseline:
            storage, name = submission.artifact.storage, submission.artifact.name
            fields["artifact"] = ""
            transaction.on_commit(lambda: storage.delete(name))
        submission.advance(status, **_shown(fields))
        return submission


def start(submission_id: int) -> Submission | None:
    """Claim the submission for evaluation; None when it is already finished (idempotence) or
    has now been interrupted ``MAX_ATTEMPTS`` times (it is then ended ``failed``)."""
    with transaction.atomic():
        submission = (
            Submission.objects.select_for_update().select_related("track").get(pk=submission_id)
        )
        if submission.status in FINISHED:  # a result is stored in the transaction that ends it
            return None
        if submission.attempts >= MAX_ATTEMPTS:
            message = f"evaluation failed: it was interrupted {submission.attempts} times"
            submission.advance(Status.FAILED, error=message)
            return None
        submission.attempts += 1
        submission.advance(
            Status.VALIDATING, error="", progress_stage="", progress_done=0, progress_total=0
        )
        return submission


def enter_running(submission_id: int, log: list[str]) -> None:
    """The running stage with the log so far (a container entered it when its quantizer
    started; its stage timestamp is kept)."""
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission_id)
        if submission.status in FINISHED:
            return
        if submission.status == Status.RUNNING:
            submission.log = without_paths("\n".join(log))
            submission.save(update_fields=["log"])
        else:
            submission.advance(Status.RUNNING, log=without_paths("\n".join(log)))


def fail(submission_id: int, message: str) -> None:
    """End a submission ``failed`` with ``message`` unless it already finished."""
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission_id)
        if submission.status not in FINISHED:
            log = (submission.log + "\n" + message).strip()
            submission.advance(Status.FAILED, **_shown({"error": message, "log": log}))

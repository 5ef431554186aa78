"""Accepting a submission (web form, API and CLI share this): the track is open, the kind suits
its backend, the daily quota allows it, the artifact passes its upload checks; then the row is
created and its evaluation enqueued after commit."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.files.base import File
from django.db import transaction

from harness.errors import SubmissionError
from leaderboard.accounts.models import team_of
from leaderboard.submissions.artifacts import (
    check_checkpoint_zip,
    check_image_archive,
    check_onnx,
    pack_checkpoint_pair,
    sha256_of,
)
from leaderboard.submissions.models import Kind, Submission
from leaderboard.submissions.pipeline import EVALUATED_KINDS
from leaderboard.submissions.tasks import enqueue
from leaderboard.tracks.models import Track

UPLOAD_KINDS = (Kind.CHECKPOINT, Kind.ONNX, Kind.CONTAINER)
CONTAINERS_DISABLED = (
    "this site does not run quantizer containers: no container workers are configured. A "
    "maintainer enables them with MEDQUANT_CONTAINERS=1 on the site and a Celery worker on the "
    "`containers` queue with access to Docker (see the README); until then, submit the quantized "
    "checkpoint or ONNX file your quantizer writes"
)


def accepted_kinds(track: Track) -> tuple[str, ...]:
    """Submission kinds a track takes: the artifact kinds its backend scores (checkpoints on the
    simulator, ONNX on real backends), and quantizer containers where container workers run
    (``MEDQUANT_CONTAINERS``), each only once the workers evaluate it
    (``pipeline.EVALUATED_KINDS``). A closed track that admits only entries the platform
    quantized (``Track.platform_ptq_only``) takes containers only."""
    kinds = tuple(Kind(kind.name) for kind in track.backend_runner.artifact_kinds)
    if not track.admits_uploads:
        kinds = ()
    if settings.MEDQUANT_CONTAINERS:
        kinds += (Kind.CONTAINER,)
    return tuple(k for k in kinds if k in EVALUATED_KINDS)


def check_track(user, track: Track) -> None:
    """Raise ValidationError unless ``user`` may submit to ``track`` now (checked again under
    the quota lock when the row is inserted, see ``_check_quota``)."""
    if not track.is_public and not user.is_staff:
        raise ValidationError({"track": "no such track"})
    if not track.is_open():
        raise ValidationError({"track": f"track {track.slug} is not open for submissions"})
    _check_quota(user, track)


def _lock_quota(user) -> None:
    """Serialise the quota check and insert of one user's submissions: a row lock on the user
    (PostgreSQL); SQLite's write transactions already run one at a time (``IMMEDIATE`` mode,
    see ``config._sqlite``)."""
    get_user_model().objects.select_for_update().filter(pk=user.pk).first()


def _check_quota(user, track: Track) -> None:
    used = Submission.objects.counted_for_quota(user, track).count()
    if used >= track.daily_quota:
        raise ValidationError(
            {
                "track": f"daily quota reached: {used} of {track.daily_quota} submissions to this "
                "track in the last 24 hours (failed and cancelled runs do not count); try later"
            }
        )


def _check_image_reference(reference: str) -> None:
    """A registry reference must name an image on the configured registry."""
    registry = settings.MEDQUANT_CONTAINER_REGISTRY
    if not registry:
        raise ValidationError(
            {"image": "no container registry is configured here: upload the image as a "
                      "`docker save` tarball instead"}
        )  # fmt: skip
    if not reference.startswith(f"{registry}/") or any(c.isspace() for c in reference):
        raise ValidationError(
            {"image": f"the image must be on {registry}, e.g. {registry}/team/quantizer:v1"}
        )


def _container(archive: File | None, image: str) -> File | None:
    """A quantizer container: an uploaded ``docker save`` tarball or a registry reference."""
    if archive and image:
        raise ValidationError(
            {"image": "give either an image tarball or a registry reference, not both"}
        )
    if image:
        _check_image_reference(image)
        return None
    if not archive:
        raise ValidationError(
            {"artifact": "upload the quantizer image as a tarball (`docker save -o q.tar IMAGE`)"}
        )
    try:
        check_image_archive(archive)
    except SubmissionError as error:
        raise ValidationError({"artifact": str(error)}) from error
    return archive


def _artifact(kind: str, archive: File | None, manifest: File | None, weights: File | None):
    if kind == Kind.CHECKPOINT:
        if archive and (manifest or weights):
            raise ValidationError(
                {"artifact": "upload either one zip or manifest.json + weights.safetensors"}
            )
        if archive:
            try:
                check_checkpoint_zip(archive, archive.size)
            except SubmissionError as error:
                raise ValidationError({"artifact": str(error)}) from error
            return archive
        if manifest and weights:
            try:
                return pack_checkpoint_pair(manifest, weights)
            except SubmissionError as error:
                raise ValidationError({"weights": str(error)}) from error
        raise ValidationError(
            {"artifact": "a checkpoint needs a zip, or both manifest.json and weights.safetensors"}
        )
    if kind == Kind.ONNX:
        if not archive:
            raise ValidationError({"artifact": "upload the .onnx file"})
        try:
            check_onnx(archive)
        except SubmissionError as error:
            raise ValidationError({"artifact": str(error)}) from error
        return archive
    raise ValidationError({"kind": f"{kind!r} cannot be uploaded"})


def accept(
    user,
    *,
    track: Track,
    kind: str,
    method: str,
    description: str = "",
    paper_url: str = "",
    code_url: str = "",
    archive: File | None = None,
    manifest: File | None = None,
    weights: File | None = None,
    image: str = "",
    metadata: dict | None = None,
) -> Submission:
    """Create the submission and enqueue its evaluation, or raise ValidationError by field.
    ``image`` is a quantizer container's registry reference (instead of an uploaded tarball);
    ``metadata`` the checked structured fields (``metadata.metadata``)."""
    if kind == Kind.CONTAINER and not settings.MEDQUANT_CONTAINERS:
        raise ValidationError({"kind": CONTAINERS_DISABLED})
    if kind not in accepted_kinds(track):
        names = ", ".join(Kind(k).label for k in accepted_kinds(track)) or "nothing yet"
        raise ValidationError({"kind": f"this track accepts: {names}"})
    check_track(user, track)
    if kind == Kind.CONTAINER:
        artifact = _container(archive, image)
    else:
        artifact = _artifact(kind, archive, manifest, weights)
    digest = sha256_of(artifact) if artifact else ""
    with transaction.atomic():
        _lock_quota(user)
        _check_quota(user, track)
        submission = Submission(
            track=track,
            user=user,
            team=team_of(user),
            kind=kind,
            method=method,
            description=description,
            paper_url=paper_url,
            code_url=code_url,
            artifact_sha256=digest,
            image_reference=image if kind == Kind.CONTAINER else "",
            **(metadata or {}),
        )
        submission.save()
        if artifact:
            submission.artifact.save(artifact.name.rsplit("/", 1)[-1], artifact, save=True)
        enqueue(submission)
    return submission

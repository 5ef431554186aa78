"""Quantizer containers on the site: the image pinned (pulled by the digest recorded at its first
run, or its uploaded ``docker save`` archive checked and loaded), then the harness entry point
runs it sandboxed and evaluates its output; its logs are kept on the row either way. Where the
track asks for it, the image is run again on resampled calibration sets (``± calibration``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import docker
from django.conf import settings

from harness.analysis.calibration_robustness import container_calibration_spread
from harness.containers.images import (
    PinnedImage,
    load_image_archive,
    pin_registry_image,
    pinned_reference,
)
from harness.containers.sandbox import ContainerLimits, ContainerOutcome
from harness.entry.container import QuantizerRejected, evaluate_quantizer_container
from harness.entry.evaluated import Evaluated
from harness.track.loaded import LoadedTrack
from leaderboard.submissions.models import Status, Submission
from leaderboard.submissions.stages import advance


def _pin_image(client: docker.DockerClient, submission: Submission, workdir: Path) -> PinnedImage:
    """The container's image: pulled from the registry (by the digest recorded at its first run,
    when it is re-evaluated), or its uploaded ``docker save`` tarball checked and loaded; either
    way pinned by digest (``ImageError`` says what is wrong)."""
    if submission.image_reference:
        reference = pinned_reference(submission.image_reference, submission.image_digest)
        pull = bool(settings.MEDQUANT_CONTAINER_REGISTRY)
        return pin_registry_image(client, reference, pull=pull)
    archive = workdir / "image.tar"
    with submission.artifact.open("rb") as src, open(archive, "wb") as out:
        shutil.copyfileobj(src, out)
    try:
        max_bytes = settings.MEDQUANT_MAX_IMAGE_BYTES
        return load_image_archive(client, archive, max_bytes=max_bytes, workdir=workdir)
    finally:
        archive.unlink()


def run_container(
    submission: Submission,
    track: LoadedTrack,
    workdir: Path,
    log: list[str],
    *,
    worker: str,
    about: dict,
) -> Evaluated:
    """Validating: pin the image; running: the harness runs it sandboxed on the track's
    ``/input`` and evaluates its ``/output`` like an upload. Its logs are kept either way."""
    client = docker.from_env()
    try:
        image = _pin_image(client, submission, workdir)
        log.append(f"quantizer image pinned: {image.digest} ({image.source})")
        advance(submission.pk, Status.RUNNING, image_digest=image.digest, log="\n".join(log))
        overrides = {"output_bytes": settings.MEDQUANT_MAX_ARTIFACT_BYTES}
        limits = ContainerLimits.for_track(
            track.spec, **overrides | settings.MEDQUANT_CONTAINER_LIMITS
        )
        run = {
            "image": image, "track": track, "workdir": workdir / "container", "limits": limits,
            "helper_image": settings.MEDQUANT_CONTAINER_HELPER_IMAGE, "client": client,
            "gpu": settings.MEDQUANT_CONTAINER_GPU, "worker": worker, "about": about,
        }  # fmt: skip
        try:
            evaluated = evaluate_quantizer_container(**run)
        except QuantizerRejected as rejected:
            _record_container(submission, rejected.outcome, log)
            raise
        _record_container(submission, evaluated.container, log)
        if submission.track.calibration_resamples:
            evaluated.result["summary"]["calibration"] = _calibration_spread(
                track, run, submission.track.calibration_resamples, workdir
            )
    finally:
        client.close()
    return evaluated


def _calibration_spread(track: LoadedTrack, run: dict, resamples: int, workdir: Path) -> dict:
    """The same image run again on resampled calibration sets (``± calibration``), scored for
    accuracy only (its efficiency is the first run's: a resample changes scales, not the graph)."""

    def rerun(input_dir: Path, folder: Path) -> dict:
        again = run | {"workdir": folder / "container", "input_dir": input_dir, "efficiency": False}
        return evaluate_quantizer_container(**again).result

    return container_calibration_spread(track, rerun, resamples, workdir / "resamples")


def _record_container(submission: Submission, outcome: ContainerOutcome, log: list[str]) -> None:
    Submission.objects.filter(pk=submission.pk).update(container_log=_storable(outcome.logs))
    log.append(
        f"quantizer container {outcome.status} after {outcome.seconds:.1f} s "
        f"(exit status {outcome.exit_code}, "
        f"peak memory {outcome.peak_memory_bytes / 2**20:.0f} MiB)"
    )


def _storable(text: str) -> str:
    """Container output as database text (PostgreSQL refuses NUL characters)."""
    return text.replace("\x00", "\ufffd")

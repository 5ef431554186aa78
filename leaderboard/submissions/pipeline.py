"""The evaluation of one submission, stage by stage: a thin adapter between a Submission row and
``harness.submission.evaluate_submission``.

Stages are written to the row under ``select_for_update``; the artifact is verified (format,
precision vs the track) before it is scored. A quantizer container is pinned while validating,
run sandboxed (``harness.containers.sandbox``) while running, and its ``/output`` is then verified and
scored exactly like an upload. A problem with the artifact ends the run
``rejected`` with the harness's message; an unexpected error ends it ``failed``; infrastructure
errors (database, broker, storage) propagate so that the Celery task retries. Running it again on
a finished submission does nothing; the Evaluation is one row per submission.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import docker
from django.conf import settings
from django.core.files.base import File
from django.db import transaction

from harness.artifacts.checkpoint import describe_checkpoint, save_checkpoint
from harness.artifacts.onnx.export import export_qdq, int8_model
from harness.containers.images import PinnedImage, load_image_archive, pin_registry_image
from harness.containers.sandbox import ContainerLimits, output_submission, run_quantizer_container
from harness.errors import HarnessError
from harness.submission import LoadedTrack, evaluate_submission
from harness.submission import Submission as HarnessSubmission
from leaderboard.submissions.artifacts import ArtifactError, unpack_checkpoint
from leaderboard.submissions.models import FINISHED, Evaluation, Kind, Status, Submission
from leaderboard.tracks import ranking
from leaderboard.tracks.models import Track
from reference_methods.methods import quantize_with
from reference_methods.simulator.scheme import QuantConfig

logger = logging.getLogger(__name__)
CACHED_TRACKS = 4
MAX_ATTEMPTS = 3
EVALUATED_KINDS = frozenset({Kind.SCHEME, Kind.CHECKPOINT, Kind.ONNX, Kind.CONTAINER})
"""Kinds turned into something the harness scores: by ``_prepare``, containers by
``_run_container`` (on the ``containers`` queue, see ``tasks.queue_for``)."""
ONNX_NAME = "model.onnx"


class Rejected(Exception):
    """The artifact is at fault; the message is for the submitter."""


_open_tracks: OrderedDict[str, LoadedTrack] = OrderedDict()


def open_track(track: Track) -> LoadedTrack:
    """Load the track (dataset, FP32 model, FP32 run) once per worker process and spec."""
    spec = track.to_spec()
    key = repr(spec.to_dict())
    if key not in _open_tracks:
        loaded = LoadedTrack.open(spec)
        loaded.fp32_run  # noqa: B018 -- evaluated now: a track that cannot run fails here
        _open_tracks[key] = loaded
        while len(_open_tracks) > CACHED_TRACKS:
            _open_tracks.popitem(last=False)
    _open_tracks.move_to_end(key)
    return _open_tracks[key]


def granularity_label(precision: dict) -> str:
    """Short granularity name of a verified artifact: adaptive, per-channel or per-tensor (a
    checkpoint's weight and activation scales), or the ONNX verifier's weight granularity."""
    if "weight_granularities" not in precision:
        return precision.get("granularity", "")
    acts = set(precision.get("activation_granularities") or [])
    weights = set(precision.get("weight_granularities") or [])
    if "per-voxel" in acts:
        return "adaptive"
    if weights <= {"per-tensor"} and acts <= {"per-tensor"}:
        return "per-tensor"
    if "per-channel" in weights or "per-channel" in acts:
        return "per-channel"
    return "+".join(sorted(weights | acts))


def _advance(submission_id: int, status: Status, **fields) -> Submission:
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission_id)
        submission.advance(status, **fields)
        return submission


def start(submission_id: int) -> Submission | None:
    """Claim the submission for evaluation; None when it is already finished (idempotence) or
    has now been interrupted ``MAX_ATTEMPTS`` times (it is then ended ``failed``)."""
    with transaction.atomic():
        submission = (
            Submission.objects.select_for_update().select_related("track").get(pk=submission_id)
        )
        if (
            submission.status in FINISHED
            or Evaluation.objects.filter(submission=submission).exists()
        ):
            return None
        if submission.attempts >= MAX_ATTEMPTS:
            message = f"evaluation failed: it was interrupted {submission.attempts} times"
            submission.advance(Status.FAILED, error=message)
            return None
        submission.attempts += 1
        submission.advance(Status.VALIDATING, error="")
        return submission


def _check_precision(track: Track, precision: dict) -> None:
    weight_bits, act_bits = precision.get("weight_bits"), precision.get("activation_bits")
    if weight_bits is None or weight_bits > track.weight_bits:
        raise Rejected(
            f"this track allows at most {track.weight_bits}-bit weights; the checkpoint really "
            f"uses {weight_bits}-bit weights"
        )
    if track.activation_bits is not None and (act_bits is None or act_bits > track.activation_bits):
        used = f"{act_bits}-bit" if act_bits is not None else "floating-point"
        raise Rejected(
            f"this track allows at most {track.activation_bits}-bit activations; the checkpoint "
            f"uses {used} activations"
        )
    label = granularity_label(precision)
    if track.granularities and label not in track.granularities:
        raise Rejected(f"granularity {label!r} is not allowed here; allowed: {track.granularities}")


def _baseline_checkpoint(submission: Submission, track: LoadedTrack, workdir: Path) -> Path:
    """Quantize the reference model by the submission's reference method (RTN when none) under
    its reference scheme, with the method's default options → a checkpoint."""
    method = submission.reference_method or "rtn"
    try:
        config = QuantConfig.from_scheme(submission.scheme)
        model = quantize_with(method, track.model, config, track.calibration)
    except ValueError as error:
        raise Rejected(f"baseline {method} {submission.scheme!r} cannot run: {error}") from error
    reference = {"method": method, "scheme": submission.scheme}
    return save_checkpoint(model, workdir / "checkpoint", reference=reference)


def _baseline_onnx(track: LoadedTrack, workdir: Path) -> Path:
    """The standard INT8 deployment of the reference model (per-channel RTN weights, static
    per-tensor activations) as Q/DQ ONNX: the baseline of ONNX-backend tracks."""
    model = int8_model(track.model, track.calibration)
    return export_qdq(model, track.model_spec, track.calibration, workdir / ONNX_NAME)


def _store_artifact(submission: Submission, path: Path) -> None:
    """Keep a baseline's artifact (checkpoint folder → zip, or ONNX file) for reproduction."""
    if path.is_dir():
        path = Path(shutil.make_archive(str(path.parent / "checkpoint"), "zip", path))
    with open(path, "rb") as handle:
        submission.artifact.save(path.name, File(handle), save=False)
    Submission.objects.filter(pk=submission.pk).update(artifact=submission.artifact.name)


def _prepare(submission: Submission, track: LoadedTrack, workdir: Path) -> HarnessSubmission:
    """Validating stage: what the harness evaluates. A checkpoint is unpacked and verified here
    (its precision read from its tensors); an ONNX file is verified by the harness when opened."""
    onnx_track = submission.track.backend != Track.Backend.SIMULATED
    if submission.kind == Kind.SCHEME and onnx_track:
        path = _baseline_onnx(track, workdir)
        _store_artifact(submission, path)
        return HarnessSubmission("onnx", onnx=path)
    if submission.kind == Kind.SCHEME:
        ckpt = _baseline_checkpoint(submission, track, workdir)
        _store_artifact(submission, ckpt)
    elif submission.kind == Kind.CHECKPOINT:
        with submission.artifact.open("rb") as stream:
            try:
                ckpt = unpack_checkpoint(stream, submission.artifact.size, workdir / "checkpoint")
            except ArtifactError as error:
                raise Rejected(str(error)) from error
    elif submission.kind == Kind.ONNX and onnx_track:
        path = workdir / ONNX_NAME
        with submission.artifact.open("rb") as src, open(path, "wb") as out:
            shutil.copyfileobj(src, out)
        return HarnessSubmission("onnx", onnx=path)
    else:
        raise Rejected(
            f"{submission.get_kind_display()} submissions cannot be evaluated on the "
            f"{submission.track.get_backend_display()} backend of this track"
        )
    _check_precision(submission.track, describe_checkpoint(ckpt))
    return HarnessSubmission("checkpoint", checkpoint=ckpt)


def _pin_image(client: docker.DockerClient, submission: Submission, workdir: Path) -> PinnedImage:
    """The container's image: pulled from the registry (by the digest recorded at its first run,
    when it is re-evaluated), or its uploaded ``docker save`` tarball checked and loaded; either
    way pinned by digest (``ImageError`` says what is wrong)."""
    if submission.image_reference:
        reference = submission.image_reference
        if submission.image_digest:
            name = reference.partition("@")[0]
            repository = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
            reference = f"{repository}@{submission.image_digest}"
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


def _run_container(
    submission: Submission, track: LoadedTrack, workdir: Path, log: list[str], worker: str
) -> tuple[HarnessSubmission, dict]:
    """Validating: pin the image; running: run it sandboxed on the track's ``/input`` (its logs
    kept for the submitter); then its ``/output`` must be exactly the artifact an upload to this
    track would be, with the same precision checks. Returns it and the run's result entry."""
    client = docker.from_env()
    try:
        image = _pin_image(client, submission, workdir)
        log.append(f"quantizer image pinned: {image.digest} ({image.source})")
        _advance(submission.pk, Status.RUNNING, image_digest=image.digest, log="\n".join(log))
        overrides = {"output_bytes": settings.MEDQUANT_MAX_ARTIFACT_BYTES}
        limits = ContainerLimits.for_track(
            track.spec, **overrides | settings.MEDQUANT_CONTAINER_LIMITS
        )
        outcome = run_quantizer_container(
            image=image,
            track=track,
            workdir=workdir / "container",
            helper_image=settings.MEDQUANT_CONTAINER_HELPER_IMAGE,
            limits=limits,
            gpu=settings.MEDQUANT_CONTAINER_GPU,
            worker=worker,
            client=client,
        )
    finally:
        client.close()
    Submission.objects.filter(pk=submission.pk).update(container_log=_storable(outcome.logs))
    log.append(
        f"quantizer container {outcome.status} after {outcome.seconds:.1f} s "
        f"(exit status {outcome.exit_code}, "
        f"peak memory {outcome.peak_memory_bytes / 2**20:.0f} MiB)"
    )
    if not outcome.ok:
        raise Rejected(_storable(outcome.error))
    try:
        artifact = output_submission(outcome.output_dir, track.spec.backend)
        if artifact.kind == "checkpoint":
            _check_precision(submission.track, describe_checkpoint(artifact.checkpoint))
    except (HarnessError, Rejected) as error:
        raise Rejected(f"the quantizer's output was rejected: {error}") from error
    return artifact, outcome.result_entry(image)


def _storable(text: str) -> str:
    """Container output as database text (PostgreSQL refuses NUL characters)."""
    return text.replace("\x00", "\ufffd")


def _enter_running(submission_id: int, log: list[str]) -> None:
    """The running stage with the log so far (a container entered it when its quantizer
    started; its stage timestamp is kept)."""
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission_id)
        if submission.status == Status.RUNNING:
            submission.log = "\n".join(log)
            submission.save(update_fields=["log"])
        else:
            submission.advance(Status.RUNNING, log="\n".join(log))


def _latency_ms(result: dict) -> float | None:
    """Real-backend median latency per volume when measured (ONNX), else the simulated
    inference time per test volume."""
    per_volume = result.get("efficiency", {}).get("latency_ms", {}).get("per_volume", {})
    if per_volume.get("median_ms") is not None:
        return per_volume["median_ms"]
    inference_s = result["timings"].get("inference")
    return 1000 * inference_s / result["summary"]["num_cases"] if inference_s else None


def store_evaluation(submission: Submission, result: dict) -> Evaluation:
    """Write (or overwrite) the one Evaluation row of ``submission`` from a result document."""
    summary = result["summary"]
    precision = result["submission"]["precision"]
    track = submission.track
    size = precision.get("size_bytes")
    evaluation, _ = Evaluation.objects.update_or_create(
        submission=submission,
        defaults={
            "track": track,
            "result": result,
            "mean_dsc": summary["mean_dsc"],
            "mean_nsd": summary["mean_nsd"],
            "dsc_drop_pct": summary["dsc_drop_pct"],
            "dsc_ci_low": summary["dsc_ci95"][0],
            "dsc_ci_high": summary["dsc_ci95"][1],
            "fp32_mean_dsc": summary["fp32_mean_dsc"],
            "gate_passed": summary["mean_dsc"] >= track.accuracy_gate * summary["fp32_mean_dsc"],
            "weight_bits": precision.get("weight_bits"),
            "activation_bits": precision.get("activation_bits"),
            "granularity": granularity_label(precision),
            "size_mb": size / 1e6 if size else None,
            "latency_ms": _latency_ms(result),
        },
    )
    return evaluation


def _verified(precision: dict) -> str:
    acts = precision.get("activation_bits")
    return (
        f"verified: {precision.get('weight_bits')}-bit weights, "
        f"{f'{acts}-bit' if acts else 'floating-point'} activations, "
        f"{precision.get('granularity')}, {precision.get('size_bytes', 0) / 1e6:.3f} MB"
    )


def run(submission_id: int, *, worker: str = "") -> str:
    """Evaluate one submission through every stage; returns its final status. ``worker`` names
    the Celery worker in the labels of the containers it starts (see ``remove_orphans``)."""
    submission = start(submission_id)
    if submission is None:
        return Submission.objects.get(pk=submission_id).status
    settings.MEDQUANT_WORK_DIR.mkdir(parents=True, exist_ok=True)
    log = [f"attempt {submission.attempts} on track {submission.track.slug}"]
    try:
        track = open_track(submission.track)
    except HarnessError as error:
        fail(submission_id, f"the track could not be loaded: {error}")
        return Status.FAILED
    with tempfile.TemporaryDirectory(dir=settings.MEDQUANT_WORK_DIR) as tmp:
        container = None
        try:
            if submission.kind == Kind.CONTAINER:
                harness_submission, container = _run_container(
                    submission, track, Path(tmp), log, worker
                )
            else:
                harness_submission = _prepare(submission, track, Path(tmp))
            log.append(f"artifact ready: {harness_submission.kind}")
            _enter_running(submission_id, log)
            result, _ = evaluate_submission(track, harness_submission)
        except (Rejected, HarnessError, ValueError) as error:
            log.append(f"rejected: {error}")
            _advance(submission_id, Status.REJECTED, error=str(error), log="\n".join(log))
            return Status.REJECTED
    result["submission"]["scheme"] = submission.scheme or submission.method
    if submission.reference_method:
        result["submission"]["method"] = submission.reference_method
    if container:
        result["submission"]["container"] = container
        result["timings"]["container"] = container["seconds"]
    log.append(_verified(result["submission"]["precision"]))
    _advance(submission_id, Status.SCORING)
    with transaction.atomic():
        locked = (
            Submission.objects.select_for_update().select_related("track").get(pk=submission_id)
        )
        evaluation = store_evaluation(locked, result)
        gate = "passed" if evaluation.gate_passed else "failed"
        log.append(
            f"mean DSC {evaluation.mean_dsc:.4f} (FP32 {evaluation.fp32_mean_dsc:.4f}), "
            f"mean NSD {evaluation.mean_nsd:.4f}; accuracy gate {gate}"
        )
        locked.advance(Status.DONE, log="\n".join(log))
        ranking.refresh(locked.track)
    return Status.DONE


def fail(submission_id: int, message: str) -> None:
    """End a submission ``failed`` with ``message`` unless it already finished."""
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission_id)
        if submission.status not in FINISHED:
            submission.advance(
                Status.FAILED, error=message, log=(submission.log + "\n" + message).strip()
            )

"""The evaluation of one submission, stage by stage: a thin adapter between a Submission row and
the harness's three entry points — ``harness.submission.evaluate_submission`` (an upload),
``harness.baselines.compute_baseline`` (a reference baseline) and
``harness.containers.sandbox.evaluate_quantizer_container`` (a quantizer container) — whose
result document it stores as it is.

Stages are written to the row under ``select_for_update``. The harness verifies the artifact
(format, precision against the track) before scoring it. A ``SubmissionError`` (the artifact is at
fault) ends the run ``rejected`` with the harness's message; any other error ends it ``failed`` (not
counted in the quota; the traceback is logged for the maintainers); infrastructure errors (database,
broker, storage) propagate so that the Celery task retries. Running it again on a finished
submission does nothing. Every stored result is kept as the submission's next
``EvaluationVersion``; its ``Evaluation`` (one row per submission) is the latest, the one ranked."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
from django.conf import settings
from django.core.files.base import File
from django.db import DatabaseError, connection, transaction
from django.db.models import Max
from django.utils import timezone

from harness.analysis.calibration_robustness import baseline_calibration_spread
from harness.artifacts.precision import granularity_label
from harness.baselines import compute_baseline, compute_reference
from harness.containers.images import PinnedImage, load_image_archive, pin_registry_image
from harness.containers.sandbox import ContainerLimits, evaluate_quantizer_container
from harness.errors import SubmissionError
from harness.submission import Submission as HarnessSubmission
from harness.submission import evaluate_submission
from harness.track.loaded import LoadedTrack
from leaderboard.submissions.artifacts import ArtifactError, unpack_checkpoint
from leaderboard.submissions.models import (
    FINISHED,
    Evaluation,
    EvaluationVersion,
    Kind,
    Status,
    Submission,
)
from leaderboard.tracks import ranking
from leaderboard.tracks.models import Track

logger = logging.getLogger(__name__)
CACHED_TRACKS = 4
MAX_ATTEMPTS = 3
EVALUATED_KINDS = frozenset({Kind.FP32, Kind.SCHEME, Kind.CHECKPOINT, Kind.ONNX, Kind.CONTAINER})
"""Kinds the workers evaluate (containers on the ``containers`` queue, see ``tasks.queue_for``)."""
ONNX_NAME = "model.onnx"


HEARTBEAT_S = 10
"""How often a worker evaluating a submission writes its heartbeat (the reconciler takes a
pending submission quiet for ``reconciler.QUIET_S`` as abandoned by a dead worker)."""


@contextmanager
def heartbeat(submission_id: int, every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Write ``heartbeat_at`` now and every ``every_s`` seconds until the block ends (from a
    thread with its own database connection; a failed beat is retried at the next one). Inside a
    caller's transaction (the pipeline run in-process, as the tests do) the beats would wait on
    the row lock that transaction holds: there only the stage writes count."""
    if connection.in_atomic_block:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        try:
            while True:
                try:
                    Submission.objects.filter(pk=submission_id).update(heartbeat_at=timezone.now())
                except DatabaseError as error:
                    logger.warning(
                        "heartbeat of submission %s not written: %s", submission_id, error
                    )
                    connection.close()
                if stop.wait(every_s):
                    return
        finally:
            connection.close()

    thread = threading.Thread(target=beat, name=f"heartbeat-{submission_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Rejected(Exception):
    """The artifact is at fault; the message is for the submitter."""


OUT_OF_MEMORY_MARKERS = ("bad allocation", "bad_alloc", "Failed to allocate memory")
"""How native runtimes (ONNX Runtime, OpenVINO) report an allocation refused by the limit."""


def memory_limit_message() -> str:
    limit = settings.MEDQUANT_EVALUATION_MEMORY_BYTES
    return f"exceeds the memory limit of {limit / 2**20:.0f} MiB per evaluation"


def is_out_of_memory(error: BaseException) -> bool:
    """A ``MemoryError``, or a native runtime's failed allocation (under the evaluation's
    address-space limit, see ``tasks.limit_memory``)."""
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in OUT_OF_MEMORY_MARKERS)


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
        if submission.status in FINISHED:  # a result is stored in the transaction that ends it
            return None
        if submission.attempts >= MAX_ATTEMPTS:
            message = f"evaluation failed: it was interrupted {submission.attempts} times"
            submission.advance(Status.FAILED, error=message)
            return None
        submission.attempts += 1
        submission.advance(Status.VALIDATING, error="")
        return submission


def _store_artifact(submission: Submission, path: Path) -> None:
    """Keep a baseline's artifact (checkpoint folder → zip, or ONNX file) for reproduction."""
    if path.is_dir():
        path = Path(shutil.make_archive(str(path.parent / "checkpoint"), "zip", path))
    with open(path, "rb") as handle:
        submission.artifact.save(path.name, File(handle), save=False)
    Submission.objects.filter(pk=submission.pk).update(artifact=submission.artifact.name)


def _upload(submission: Submission, workdir: Path) -> HarnessSubmission:
    """An uploaded checkpoint (unpacked safely) or ONNX file, as the harness submission it is."""
    if submission.kind == Kind.CHECKPOINT:
        with submission.artifact.open("rb") as stream:
            try:
                ckpt = unpack_checkpoint(stream, submission.artifact.size, workdir / "checkpoint")
            except ArtifactError as error:
                raise Rejected(str(error)) from error
        return HarnessSubmission("checkpoint", checkpoint=ckpt)
    path = workdir / ONNX_NAME
    with submission.artifact.open("rb") as src, open(path, "wb") as out:
        shutil.copyfileobj(src, out)
    return HarnessSubmission("onnx", onnx=path)


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
) -> dict:
    """Validating: pin the image; running: the harness runs it sandboxed on the track's
    ``/input`` and evaluates its ``/output`` like an upload. Returns the result document."""
    client = docker.from_env()
    try:
        image = _pin_image(client, submission, workdir)
        log.append(f"quantizer image pinned: {image.digest} ({image.source})")
        _advance(submission.pk, Status.RUNNING, image_digest=image.digest, log="\n".join(log))
        overrides = {"output_bytes": settings.MEDQUANT_MAX_ARTIFACT_BYTES}
        limits = ContainerLimits.for_track(
            track.spec, **overrides | settings.MEDQUANT_CONTAINER_LIMITS
        )
        evaluation = evaluate_quantizer_container(
            image=image,
            track=track,
            workdir=workdir / "container",
            helper_image=settings.MEDQUANT_CONTAINER_HELPER_IMAGE,
            limits=limits,
            gpu=settings.MEDQUANT_CONTAINER_GPU,
            worker=worker,
            client=client,
            about=_about(submission),
        )
    finally:
        client.close()
    outcome = evaluation.outcome
    Submission.objects.filter(pk=submission.pk).update(container_log=_storable(outcome.logs))
    log.append(
        f"quantizer container {outcome.status} after {outcome.seconds:.1f} s "
        f"(exit status {outcome.exit_code}, "
        f"peak memory {outcome.peak_memory_bytes / 2**20:.0f} MiB)"
    )
    if evaluation.error is not None:
        raise Rejected(_storable(evaluation.error))
    return evaluation.result


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


def _about(submission: Submission) -> dict:
    """Submission metadata the harness records in the result document."""
    about = {"scheme": submission.scheme or submission.method}
    if submission.reference_method:
        about["method"] = submission.reference_method
    return about


def _evaluate(
    submission: Submission, track: LoadedTrack, workdir: Path, log: list[str], worker: str
) -> dict:
    """The result document of ``submission``, through the harness entry point for its kind."""

    def on_stage(stage: str) -> None:
        if stage == "running":
            log.append("artifact verified")
            _enter_running(submission.pk, log)

    if submission.kind == Kind.CONTAINER:
        return _run_container(submission, track, workdir, log, worker)
    if submission.kind == Kind.FP32:
        return compute_reference(track, on_stage=on_stage).result
    if submission.kind == Kind.SCHEME:
        baseline = compute_baseline(
            track,
            method=submission.reference_method or "rtn",
            scheme=submission.scheme,
            workdir=workdir,
            about=_about(submission),
            on_stage=on_stage,
        )
        _store_artifact(submission, baseline.artifact)
        resamples = submission.track.calibration_resamples
        if resamples:
            spread = baseline_calibration_spread(
                track, submission.reference_method or "rtn", submission.scheme, resamples, workdir
            )
            baseline.result["summary"]["calibration"] = spread
        return baseline.result
    if submission.kind not in EVALUATED_KINDS:
        raise Rejected(f"{submission.get_kind_display()} submissions cannot be evaluated")
    result, _ = evaluate_submission(
        track, _upload(submission, workdir), about=_about(submission), on_stage=on_stage
    )
    return result


def _latency_ms(result: dict) -> float | None:
    """Real-backend median latency per volume when measured (ONNX), else the simulated
    inference time per test volume."""
    per_volume = result.get("efficiency", {}).get("latency_ms", {}).get("per_volume", {})
    if per_volume.get("median_ms") is not None:
        return per_volume["median_ms"]
    inference_s = result["timings"].get("inference")
    return 1000 * inference_s / result["summary"]["num_cases"] if inference_s else None


def _speedup(result: dict) -> dict:
    """The interleaved FP32/entry latency ratio with its 95% CI, when the backend measured it."""
    protocol = result.get("efficiency", {}).get("latency_protocol") or {}
    return protocol.get("speedup") or {}


def store_evaluation(submission: Submission, result: dict) -> Evaluation:
    """Store a result document as the next version of ``submission`` and as its latest
    Evaluation (the caller holds the submission's row lock)."""
    summary = result["summary"]
    precision = result["submission"]["precision"]
    size = precision.get("size_bytes")
    compression = result.get("compression", {})
    speedup = _speedup(result)
    low, high = speedup.get("ci95", (None, None))
    scores = {
        "track": submission.track,
        "result": result,
        "mean_dsc": summary["mean_dsc"],
        "mean_nsd": summary["mean_nsd"],
        "mean_hd95": summary.get("mean_hd95"),
        "calibration_sd": (summary.get("calibration") or {}).get("sd"),
        "dsc_drop_pct": summary["dsc_drop_pct"],
        "dsc_ci_low": summary["dsc_ci95"][0],
        "dsc_ci_high": summary["dsc_ci95"][1],
        "fp32_mean_dsc": summary["fp32_mean_dsc"],
        "gate_passed": summary["accuracy_gate"]["passed"],
        "weight_bits": precision.get("weight_bits"),
        "activation_bits": precision.get("activation_bits"),
        "granularity": granularity_label(precision),
        "size_mb": size / 1e6 if size else None,
        "latency_ms": _latency_ms(result),
        "bits_per_weight": precision.get("bits_per_weight"),
        "x_smaller": compression.get("x_smaller"),
        "x_faster": speedup.get("median"),
        "x_faster_ci_low": low,
        "x_faster_ci_high": high,
        "artifact_digest": precision.get("artifact_sha256", ""),
        "created_at": timezone.now(),
    }
    latest = submission.versions.aggregate(latest=Max("version"))["latest"] or 0
    EvaluationVersion.objects.create(submission=submission, version=latest + 1, **scores)
    evaluation, _ = Evaluation.objects.update_or_create(submission=submission, defaults=scores)
    return evaluation


def _verified(precision: dict) -> str:
    acts = precision.get("activation_bits")
    bpw = precision.get("bits_per_weight")
    return (
        f"verified: {precision.get('weight_bits')}-bit weights, "
        f"{f'{acts}-bit' if acts else 'floating-point'} activations, "
        f"{precision.get('granularity')}, {precision.get('size_bytes', 0) / 1e6:.3f} MB"
        + (f", {bpw:.2f} bits per weight" if bpw is not None else "")
    )


def run(submission_id: int, *, worker: str = "") -> str:
    """Evaluate one submission through every stage, beating its heartbeat; returns its final
    status. ``worker`` names the Celery worker in the labels of the containers it starts (see
    ``remove_orphans``)."""
    submission = start(submission_id)
    if submission is None:
        return Submission.objects.get(pk=submission_id).status
    with heartbeat(submission_id):
        return _run(submission, submission_id, worker)


def _run(submission: Submission, submission_id: int, worker: str) -> str:
    settings.MEDQUANT_WORK_DIR.mkdir(parents=True, exist_ok=True)
    log = [f"attempt {submission.attempts} on track {submission.track.slug}"]
    try:
        track = open_track(submission.track)
    except Exception as error:
        logger.exception("track %s could not be loaded", submission.track.slug)
        fail(submission_id, f"the track could not be loaded: {error}")
        return Status.FAILED
    with tempfile.TemporaryDirectory(dir=settings.MEDQUANT_WORK_DIR) as tmp:
        try:
            result = _evaluate(submission, track, Path(tmp), log, worker)
        except (Rejected, SubmissionError) as error:
            log.append(f"rejected: {error}")
            _advance(submission_id, Status.REJECTED, error=str(error), log="\n".join(log))
            return Status.REJECTED
        except (MemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            message = memory_limit_message()
            log.append(f"rejected: {message}")
            _advance(submission_id, Status.REJECTED, error=message, log="\n".join(log))
            return Status.REJECTED
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

"""Registering stored datasets, reference models and tracks, and queueing reference baselines
(shared by the management commands and the demo seed)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import slugify

from harness.artifacts.onnx.export import export_fp32
from harness.backends import backend_names, get_backend
from harness.data.dataset import load_dataset
from harness.entry.baseline import Baseline, baselines_for
from harness.errors import HarnessError
from harness.models.importers import import_model as import_source
from harness.models.reference import load_reference_model, read_spec
from harness.track.spec import precision_prefix
from leaderboard.submissions.models import Kind, Submission
from leaderboard.submissions.tasks import enqueue
from leaderboard.tracks.models import Dataset, ReferenceModel, Track

BASELINE_USER = "baselines"


def import_dataset(root: Path, slug: str | None = None, description: str = "") -> Dataset:
    """Register (or update) a dataset folder after checking that the harness can read it."""
    root = Path(root).resolve()
    dataset = load_dataset(root)
    for split in ("calibration", "test"):
        dataset.split(split)
    obj, _ = Dataset.objects.update_or_create(
        slug=slug or slugify(dataset.name),
        defaults={"name": dataset.name, "root": str(root), "description": description},
    )
    return obj


def import_model(directory: Path, slug: str | None = None) -> ReferenceModel:
    """Register (or update) a reference-model folder (model.json + model.safetensors, or
    model.onnx for an ONNX graph); a folder registered before keeps its slug unless ``slug``
    says otherwise (registering it again never makes a second model)."""
    directory = Path(directory).resolve()
    spec = read_spec(directory / "model.json")
    if not (directory / spec.weights_file).is_file():
        raise HarnessError(f"{directory} has no {spec.weights_file}")
    known = ReferenceModel.objects.filter(directory=str(directory)).first()
    obj, _ = ReferenceModel.objects.update_or_create(
        slug=slug or (known.slug if known else slugify(spec.name)),
        defaults={
            "name": spec.name,
            "directory": str(directory),
            "architecture": spec.architecture,
            "family": spec.family,
        },
    )
    return obj


def import_model_source(
    source: Path, out_dir: Path, *, slug: str, **options: str | None
) -> ReferenceModel:
    """Import an nnU-Net v2 folder or MONAI bundle (``harness.models.importers``) into the
    reference-model folder ``out_dir`` and register it; ``options`` are the importer's
    (``name``, ``configuration``, ``fold``, ``checkpoint``)."""
    import_source(source, out_dir, **{k: v for k, v in options.items() if v is not None})
    return import_model(out_dir, slug=slug)


def export_onnx(model: ReferenceModel) -> Path:
    """Write the FP32 ONNX export participants download (``model.onnx``) unless it exists."""
    path = model.path / "model.onnx"
    if not path.is_file():
        spec, network = load_reference_model(model.path)
        export_fp32(network, spec, path)
    return path


def backend_available(backend: str) -> bool:
    """Whether this machine can evaluate tracks on ``backend`` (registered, and its
    ``unavailable_reason`` is None)."""
    return backend in backend_names() and get_backend(backend).unavailable_reason() is None


def create_track(
    dataset: Dataset,
    model: ReferenceModel,
    *,
    weight_bits: int,
    activation_bits: int | None,
    backend: str = "simulated",
    **fields,
) -> Track:
    """Create (or update) the track of ``model`` on ``dataset`` at the given precision; a track
    its own checks refuse (``Track.clean``) is not saved and raises ``HarnessError``."""
    precision = precision_prefix(weight_bits, activation_bits)
    slug = slugify(f"{model.slug}-{dataset.slug}-{precision}-{backend}")
    title = f"{model.name} on {dataset.name}, {precision.upper()} ({backend})"
    track = Track.objects.filter(slug=slug).first() or Track(slug=slug)
    values = {
        "title": title,
        "dataset": dataset,
        "reference_model": model,
        "backend": backend,
        "weight_bits": weight_bits,
        "activation_bits": activation_bits,
        "tie_breakers": ["-mean_nsd", "size_mb", "created_at"],
    } | fields
    for name, value in values.items():
        setattr(track, name, value)
    try:
        track.full_clean()
    except ValidationError as error:
        raise HarnessError(f"track {slug}: {'; '.join(error.messages)}") from None
    track.save()
    return track


def baseline_user():
    user, _ = get_user_model().objects.get_or_create(
        username=BASELINE_USER, defaults={"is_active": False}
    )
    return user


def baseline_schemes(track: Track) -> list[Baseline]:
    """A track's reference baselines, as the harness defines them (``harness.entry.baseline``)."""
    return baselines_for(track.to_spec())


FP32_REFERENCE_LABEL = "FP32 reference"


def queue_reference(track: Track, *, force: bool = False) -> Submission | None:
    """Queue the track's FP32 reference row (evaluated on its backend, shown on its board, never
    ranked) unless it exists (``force``: replace it); None when kept."""
    with transaction.atomic():
        existing = Submission.objects.filter(track=track, kind=Kind.FP32)
        if existing.exists() and not force:
            return None
        existing.delete()
        reference = Submission.objects.create(
            track=track,
            user=baseline_user(),
            kind=Kind.FP32,
            scheme="fp32",
            method=FP32_REFERENCE_LABEL,
            description="the FP32 reference model on this track's backend (not ranked)",
            is_baseline=True,
        )
        enqueue(reference)
        return reference


def queue_track_rows(
    track: Track, *, force: bool = False, methods: Collection[str] = ()
) -> list[Submission]:
    """Queue what a board starts with: its FP32 reference row, then its baselines (only those of
    ``methods`` when given)."""
    reference = queue_reference(track, force=force)
    return ([reference] if reference else []) + queue_baselines(track, force=force, methods=methods)


def queue_baselines(
    track: Track, *, force: bool = False, methods: Collection[str] = ()
) -> list[Submission]:
    """Queue the track's reference baselines (only those of ``methods`` when given); existing
    ones are kept unless ``force`` (then they are replaced)."""
    queued = []
    with transaction.atomic():
        for baseline in baseline_schemes(track):
            if methods and baseline.method not in methods:
                continue
            existing = Submission.objects.filter(
                track=track,
                is_baseline=True,
                scheme=baseline.scheme,
                # rows made before baselines recorded their method were RTN
                reference_method__in=("rtn", "")
                if baseline.method == "rtn"
                else (baseline.method,),
            )
            if existing.exists() and not force:
                continue
            existing.delete()
            submission = Submission.objects.create(
                track=track,
                user=baseline_user(),
                kind=Kind.SCHEME,
                scheme=baseline.scheme,
                reference_method=baseline.method,
                method=baseline.label,
                description=baseline.description,
                is_baseline=True,
            )
            enqueue(submission)
            queued.append(submission)
    return queued

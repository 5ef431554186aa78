"""Fixtures of the site tests (imported by tests/test_site_*.py, test_api_*.py and
test_worker_*.py): quantized checkpoints of the tiny phantom track and the track registered in
the site's database."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from harness.artifacts.checkpoint.save import save_checkpoint
from harness.artifacts.checkpoint.storage import MANIFEST_NAME, WEIGHTS_NAME
from harness.data.dataset import load_dataset
from harness.models.calibration import calibration_batches
from harness.models.reference import load_reference_model
from reference_methods.simulator.scheme import QuantConfig, quantize


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_track, tmp_path_factory) -> dict[str, Path]:
    """Checkpoint folders of the tiny UNet: ``w8a8`` and ``w4a4`` (per-channel, RTN)."""
    dataset_dir, model_dir = tiny_track
    spec, model = load_reference_model(model_dir)
    calibration = calibration_batches(load_dataset(dataset_dir).split("calibration"), spec)
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    return {
        name: save_checkpoint(
            quantize(model, QuantConfig.from_scheme(f"{name}-per-channel"), calibration),
            root / name,
        )
        for name in ("w8a8", "w4a4")
    }


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def checkpoint_zip(ckpt: Path, folder: str = "") -> bytes:
    """The checkpoint folder as zip bytes (optionally inside ``folder``)."""
    prefix = f"{folder}/" if folder else ""
    return zip_bytes({prefix + n: (ckpt / n).read_bytes() for n in (MANIFEST_NAME, WEIGHTS_NAME)})


@pytest.fixture
def site_storage(settings, tmp_path):
    """Uploaded artifacts and worker scratch space in a temporary folder."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDQUANT_WORK_DIR = tmp_path / "work"
    return tmp_path


@pytest.fixture
def tiny_tracks(db, tiny_track, site_storage):
    """The tiny model on the tiny phantom dataset as tracks {"w8a8": …, "w4a4": …}. Its layers are
    so narrow (27 to 216 weights per output channel) that float32 scales alone cost up to 1.2 bits
    per weight, so its budget is raised from the default weight bits + 0.5."""
    from leaderboard.tracks.seeding import create_track, import_dataset, import_model

    dataset_dir, model_dir = tiny_track
    dataset = import_dataset(dataset_dir, slug="tiny")
    model = import_model(model_dir)
    return {
        f"w{bits}a{bits}": create_track(
            dataset, model, weight_bits=bits, activation_bits=bits, bits_per_weight_budget=bits + 1
        )
        for bits in (8, 4)
    }

"""Shared fixtures: a tiny phantom track (4 cases, an untrained UNet) for fast CLI tests."""

from pathlib import Path

import pytest
import torch

from harness.data.demo import make_phantoms
from harness.models.reference import ModelSpec, save_reference_model

TINY_UNET_SPEC = {
    "version": 1,
    "name": "tiny-unet",
    "architecture": "UNet",
    "kwargs": {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 6,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 1,
    },
    "labels": {
        "0": "background",
        "1": "liver",
        "2": "spleen",
        "3": "kidneys",
        "4": "aorta",
        "5": "vertebra",
    },
    "preprocessing": {
        "orientation": "RAS",
        "spacing": [12.0, 12.0, 16.0],
        "intensity_window": [-200.0, 600.0],
    },
    "sliding_window": {"roi_size": [16, 16, 16], "overlap": 0.0, "sw_batch_size": 1},
}


@pytest.fixture(scope="session")
def tiny_track(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset dir, model dir): 4 phantom cases (1 test, 1 calibration), untrained tiny UNet."""
    root = tmp_path_factory.mktemp("tiny_track")
    dataset = make_phantoms(root / "dataset", cases=4, seed=1)
    spec = ModelSpec.from_dict(TINY_UNET_SPEC)
    torch.manual_seed(0)
    model_dir = save_reference_model(spec.build(), spec, root / "model")
    return dataset, model_dir


@pytest.fixture(scope="session")
def docker_client():
    """A Docker engine: the running one, or dockerd started here (root only) and stopped after the
    session; the tests using it are skipped, with the reason, only when neither is possible."""
    from container_images.engine import start_engine

    engine = start_engine()
    if isinstance(engine, str):
        pytest.skip(engine)
    yield engine.client
    engine.stop()


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """The demo's phantom dataset (28 cases, fixed seed and splits), written once per session."""
    from harness.data.demo import DEMO_CASES, DEMO_SEED

    return make_phantoms(tmp_path_factory.mktemp("demo") / "dataset", DEMO_CASES, DEMO_SEED)

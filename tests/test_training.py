"""Training: deterministic for a seed, learns on phantoms, patches sampled inside the volume."""

import numpy as np
import pytest
import torch

from harness.data.dataset import load_dataset
from harness.models.reference import read_spec
from harness.models.training import TrainConfig, load_training_volumes, sample_patch, train

pytestmark = pytest.mark.training


@pytest.fixture(scope="module")
def volumes(tiny_track):
    dataset_dir, model_dir = tiny_track
    dataset = load_dataset(dataset_dir)
    spec = read_spec(model_dir)
    return spec, load_training_volumes(dataset.split("train"), dataset.labels, spec.preprocessing)


def test_training_is_deterministic_for_a_seed(volumes):
    spec, vols = volumes
    config = TrainConfig(iterations=5, seed=7)
    a = train(spec, vols, config, progress=False).state_dict()
    b = train(spec, vols, config, progress=False).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train(spec, vols, TrainConfig(iterations=5, seed=8), progress=False).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_training_reduces_the_loss(volumes):
    from monai.losses import DiceCELoss

    spec, vols = volumes
    image, label = vols[0]
    x, y = sample_patch(image, label, (16, 16, 16), np.random.default_rng(0), foreground=True)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    before = train(spec, vols, TrainConfig(iterations=1, learning_rate=1e-9), progress=False)
    after = train(spec, vols, TrainConfig(iterations=60), progress=False)
    with torch.no_grad():
        l0 = loss(before(x[None]), y[None, None]).item()
        l1 = loss(after(x[None]), y[None, None]).item()
    assert l1 < 0.8 * l0


def test_patches_are_roi_sized_even_for_small_volumes():
    image, label = torch.rand(1, 10, 20, 5), torch.zeros(10, 20, 5, dtype=torch.int64)
    label[2:4, 5:8, 1:3] = 1
    x, y = sample_patch(image, label, (16, 16, 16), np.random.default_rng(0), foreground=True)
    assert x.shape == (1, 16, 16, 16) and y.shape == (16, 16, 16)
    assert int((y == 1).sum()) == int((label == 1).sum())


def test_retraining_a_shipped_spec_defaults_to_its_recorded_settings():
    recorded = {"iterations": 800, "learning_rate": 1e-3, "seed": 0, "dataset": "AbdomenPhantom"}
    config = TrainConfig.from_overrides(recorded, iterations=None, learning_rate=None, seed=5)
    assert (config.iterations, config.learning_rate, config.seed) == (800, 1e-3, 5)
    assert TrainConfig.from_overrides({}, iterations=None).iterations == TrainConfig().iterations

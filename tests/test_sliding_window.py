"""Sliding-window inference: covers the volume, deterministic, batch size does not matter, the
same logits as MONAI's whole-volume inferer while holding only a slab of them."""

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet

from harness.data.phantoms import make_phantom
from harness.inference import sliding_window
from harness.inference.sliding_window import (
    PatchGrid,
    SlidingWindowSpec,
    label_dtype,
    predict_labels,
    predict_logits,
    predict_probabilities,
)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,)).eval()


def test_probabilities_cover_the_whole_volume_and_sum_to_one(model):
    image = torch.rand(1, 40, 37, 21)
    probs = predict_probabilities(model, image, SlidingWindowSpec(roi_size=(16, 16, 16)))
    assert probs.shape == (3, 40, 37, 21)
    assert torch.allclose(probs.sum(0), torch.ones(40, 37, 21), atol=1e-5)


def test_inference_is_deterministic_and_independent_of_patch_batch_size(model):
    image = torch.rand(1, 40, 37, 21)
    a = predict_probabilities(model, image, SlidingWindowSpec((16, 16, 16), sw_batch_size=1))
    b = predict_probabilities(model, image, SlidingWindowSpec((16, 16, 16), sw_batch_size=8))
    c = predict_probabilities(model, image, SlidingWindowSpec((16, 16, 16), sw_batch_size=8))
    assert torch.equal(b, c)
    assert torch.allclose(a, b, atol=1e-5)


def test_volume_smaller_than_roi_is_padded_and_cropped_back(model):
    probs = predict_probabilities(model, torch.rand(1, 10, 12, 9), SlidingWindowSpec((16, 16, 16)))
    assert probs.shape == (3, 10, 12, 9)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"roi_size": (16, 16)}, "three positive integers"),
        ({"roi_size": (16, 16, 16), "overlap": 1.0}, "overlap must be in"),
        ({"roi_size": (16, 16, 16), "sw_batch_size": 0}, "sw_batch_size"),
    ],
)
def test_invalid_sliding_window_specs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SlidingWindowSpec(**kwargs)


def _monai_logits(model, image, spec: SlidingWindowSpec) -> torch.Tensor:
    """What the harness computed before streaming: MONAI's whole-volume inferer."""
    inferer = SlidingWindowInferer(
        roi_size=spec.roi_size,
        sw_batch_size=spec.sw_batch_size,
        overlap=spec.overlap,
        mode=spec.mode,
        cache_roi_weight_map=True,
    )
    with torch.no_grad():
        return torch.as_tensor(inferer(image[None], model))[0]


@pytest.mark.parametrize(
    "shape, spec, axis",
    [
        ((40, 37, 21), SlidingWindowSpec((16, 16, 16)), 0),
        ((10, 12, 9), SlidingWindowSpec((16, 16, 16), sw_batch_size=1), 0),  # padded on all axes
        ((20, 50, 33), SlidingWindowSpec((16, 8, 16), overlap=0.5, mode="constant"), 1),
        ((30, 30, 60), SlidingWindowSpec((16, 16, 16), sw_batch_size=3), 2),
        ((7, 40, 30), SlidingWindowSpec((8, 16, 16), overlap=0.0, sw_batch_size=2), 1),
    ],
)
def test_streamed_logits_equal_monais_whole_volume_inferer(model, shape, spec, axis):
    image = torch.rand(1, *shape)
    assert PatchGrid.of(shape, spec).axis == axis
    ours, monai = predict_logits(model, image, spec), _monai_logits(model, image, spec)
    assert ours.shape == monai.shape == (3, *shape)
    if axis == 0:  # MONAI's own patch order and batches: the same float operations
        assert torch.equal(ours, monai)
    else:  # only the order of each voxel's weighted sum differs
        assert torch.allclose(ours, monai, rtol=0, atol=1e-5)
    assert torch.equal(predict_labels(model, image, spec).long(), monai.max(dim=0).indices)


def test_the_accumulator_spans_one_roi_along_the_axis_that_minimises_it(model, monkeypatch):
    spec = SlidingWindowSpec((16, 16, 8))
    shape = (64, 40, 48)
    grid = PatchGrid.of(shape, spec)
    assert grid.axis == 2  # 8 / 48 is the smallest roi fraction
    assert grid.buffer_shape(spec.roi_size) == (64, 40, 8)
    allocated: list[tuple[int, ...]] = []
    zeros = torch.zeros

    def recording_zeros(size, *args, **kwargs):
        allocated.append(tuple(size))
        return zeros(size, *args, **kwargs)

    monkeypatch.setattr(sliding_window.torch, "zeros", recording_zeros)
    labels = predict_labels(model, torch.rand(1, *shape), spec)
    assert labels.shape == shape
    assert sorted(allocated) == [(1, 1, 64, 40, 8), (3, 64, 40, 8)]


def test_label_maps_use_the_smallest_integer_type(model):
    labels = predict_labels(model, torch.rand(1, 20, 18, 11), SlidingWindowSpec((16, 16, 16)))
    assert labels.dtype == torch.uint8
    assert label_dtype(256) == torch.uint8 and label_dtype(257) == torch.int16
    with pytest.raises(ValueError, match="int16"):
        label_dtype(40000)


def test_demo_volumes_get_monais_labels_from_the_shipped_unet():
    """On a demo case in the shipped UNet's preprocessing, logits and labels are MONAI's."""
    from harness.data.preprocessing import LoadedCase, preprocess
    from harness.demo import DEMO_MODELS_DIR
    from harness.models.reference import load_reference_model

    spec, model = load_reference_model(DEMO_MODELS_DIR / "unet")
    image, _, affine = make_phantom(0, 20)
    loaded = LoadedCase(
        "phantom_020",
        sliding_window.MetaTensor(torch.from_numpy(image[None].astype(np.float32)), affine=affine),
        None,
        (1.0, 1.0, 1.0),
    )
    volume = preprocess(loaded, spec.preprocessing)
    window = spec.sliding_window
    ours, monai = predict_logits(model, volume, window), _monai_logits(model, volume, window)
    assert torch.allclose(ours, monai, rtol=0, atol=1e-5)
    assert torch.equal(predict_labels(model, volume, window).long(), monai.max(dim=0).indices)

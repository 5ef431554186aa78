"""Sliding-window inference: covers the volume, deterministic, batch size does not matter."""

import pytest
import torch
from monai.networks.nets import UNet

from harness.inference.sliding_window import SlidingWindowSpec, predict_probabilities


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

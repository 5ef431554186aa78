"""SmoothQuant: the factors, folds read from the autograd graph, FP equivalence, configs,
the gain on an outlier channel, and checkpoints with explicit input scales."""

import pytest
import torch
from monai.networks.nets import UNETR, UNet
from torch import nn

from harness.artifacts.checkpoint.describe import describe_checkpoint
from harness.artifacts.checkpoint.load import load_checkpoint
from harness.artifacts.checkpoint.save import save_checkpoint
from reference_methods.methods import rtn, smoothquant
from reference_methods.methods.smoothquant import (
    SmoothQuantConfig,
    activation_channel_absmax,
    smooth,
    smoothing_factors,
    sole_producers,
    weight_channel_absmax,
)
from reference_methods.simulator.scheme import QuantConfig, quantized_layers, target_layers

W8A8 = QuantConfig(8, 8, "per-tensor")


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _Graph(nn.Module):
    """Every fold case: a LayerNorm feeding a linear and a residual add (no fold), an add feeding
    a linear (no fold), a linear feeding a linear (fold), a LayerNorm followed by an in-place ReLU
    (no fold), a GroupNorm feeding a conv (fold), a conv feeding a conv and the output (no
    fold)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 12)
        self.fc3 = nn.Linear(12, 8)
        self.norm2 = nn.LayerNorm(8)
        self.act = nn.ReLU(inplace=True)
        self.fc4 = nn.Linear(8, 4)
        self.conv1 = nn.Conv3d(4, 8, 3, padding=1)
        self.group = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv3d(8, 4, 1)
        self.conv3 = nn.Conv3d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = x.flatten(2).mT  # (B, voxels, 4) -> through the linears
        h = self.norm(nn.functional.pad(tokens, (0, 4)))
        y = self.fc3(self.fc2(self.fc1(h) + h))
        z = self.fc4(self.act(self.norm2(y)))
        v = self.conv2(self.group(self.conv1(x + z.mT.reshape(x.shape))))
        return self.conv3(v), v


def _explicit_scales(model: nn.Module, scales: dict[str, torch.Tensor]) -> None:
    """Divide each named layer's input by its scale, as the quantized layer will."""
    for name, s in scales.items():
        layer = model.get_submodule(name)
        shape = (-1,) if isinstance(layer, nn.Linear) else (-1, 1, 1, 1)
        layer.register_forward_pre_hook(
            lambda _m, args, s=s, shape=shape: (args[0] / s.reshape(shape),)
        )


def test_factors_follow_the_formula_and_default_to_one_on_dead_channels():
    a = torch.tensor([4.0, 9.0, 0.0, 1.0])
    w = torch.tensor([1.0, 4.0, 2.0, 0.0])
    torch.testing.assert_close(smoothing_factors(a, w, 0.5), torch.tensor([2.0, 1.5, 1.0, 1.0]))
    torch.testing.assert_close(smoothing_factors(a, w, 1.0), torch.tensor([4.0, 9.0, 1.0, 1.0]))
    torch.testing.assert_close(smoothing_factors(a, w, 0.0), torch.tensor([1.0, 0.25, 1.0, 1.0]))


def test_weight_absmax_per_input_channel_of_every_layer_kind():
    grouped = nn.Conv3d(4, 6, 1, groups=2)
    rows = grouped.weight.detach().abs().reshape(2, 3, 2)  # (group, out in group, in in group)
    torch.testing.assert_close(weight_channel_absmax(grouped), rows.amax(1).flatten())
    transposed = nn.ConvTranspose3d(3, 5, 2)
    expected = transposed.weight.detach().abs().flatten(1).amax(1)
    torch.testing.assert_close(weight_channel_absmax(transposed), expected)
    linear = nn.Linear(3, 2)
    torch.testing.assert_close(weight_channel_absmax(linear), linear.weight.detach().abs().amax(0))


def test_folds_only_into_a_sole_untouched_producer():
    torch.manual_seed(0)
    model = _Graph().eval()
    layers = target_layers(model, W8A8)
    producers = sole_producers(model, layers, torch.randn(1, 4, 2, 2, 2))
    assert producers == {"fc3": "fc2", "conv2": "group"}


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8, 1.0])
def test_smoothing_alone_keeps_the_fp_function(alpha):
    torch.manual_seed(1)
    model = _Graph().eval()
    calibration = [torch.randn(2, 4, 3, 3, 3, generator=_seeded(2))]
    smoothing = smooth(model, list(target_layers(model, W8A8)), calibration, alpha)
    assert set(smoothing.folded) == {"fc3", "conv2"}
    assert set(smoothing.input_scales) == {"fc1", "fc2", "fc4", "conv1", "conv3"}
    _explicit_scales(smoothing.model, smoothing.input_scales)
    x = torch.randn(2, 4, 3, 3, 3, generator=_seeded(3))
    with torch.no_grad():
        for got, expected in zip(smoothing.model(x), model(x), strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_smoothing_keeps_the_fp_function_of_a_unetr():
    torch.manual_seed(2)
    model = UNETR(
        in_channels=1,
        out_channels=2,
        img_size=(16, 16, 16),
        feature_size=4,
        hidden_size=32,
        mlp_dim=64,
        num_heads=2,
    ).eval()
    calibration = [torch.randn(1, 1, 16, 16, 16, generator=_seeded(4))]
    smoothing = smooth(model, list(target_layers(model, W8A8)), calibration)
    assert smoothing.folded["vit.blocks.0.attn.qkv"] == "vit.blocks.0.norm1"
    assert smoothing.folded["vit.blocks.1.mlp.linear1"] == "vit.blocks.1.norm2"
    _explicit_scales(smoothing.model, smoothing.input_scales)
    x = torch.randn(1, 1, 16, 16, 16, generator=_seeded(5))
    with torch.no_grad():
        torch.testing.assert_close(smoothing.model(x), model(x), atol=1e-5, rtol=1e-5)


def test_half_strength_balances_input_and_weight_ranges():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 4))
    calibration = [torch.randn(32, 6) * torch.tensor([1.0, 50.0, 1.0, 0.1, 3.0, 1.0])]
    smoothing = smooth(model, ["0"], calibration, 0.5)
    layer = smoothing.model[0]
    scaled = activation_channel_absmax(model, {"0": model[0]}, calibration)["0"]
    inputs = scaled / smoothing.input_scales["0"]
    torch.testing.assert_close(inputs, weight_channel_absmax(layer))


def test_an_outlier_channel_costs_less_with_smoothing():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(16, 8))
    spread = torch.ones(16)
    spread[3] = 30.0
    calibration = [torch.randn(128, 16, generator=_seeded(6)) * spread]
    x = torch.randn(64, 16, generator=_seeded(7)) * spread
    w8a8 = QuantConfig(8, 8, "per-channel")  # per-channel weights, per-token activations
    with torch.no_grad():
        reference = model(x)
        smoothed = smoothquant.apply(model, SmoothQuantConfig(w8a8), calibration)(x)
        plain = rtn.apply(model, w8a8, calibration)(x)
    assert (smoothed - reference).pow(2).sum() < 0.2 * (plain - reference).pow(2).sum()


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_alpha_outside_zero_one_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha must be a number in \\[0, 1\\]"):
        SmoothQuantConfig(W8A8, alpha)


def test_weight_only_schemes_and_empty_calibration_are_refused():
    with pytest.raises(ValueError, match="the scheme must quantize activations"):
        SmoothQuantConfig(QuantConfig(4, None, "per-channel"))
    with pytest.raises(ValueError, match="needs at least one calibration batch"):
        smoothquant.apply(nn.Sequential(nn.Linear(2, 2)), SmoothQuantConfig(W8A8), [])
    with pytest.raises(TypeError, match="scheme must be a QuantConfig"):
        SmoothQuantConfig("w8a8-per-tensor")


def test_smoothquant_checkpoint_with_input_scales_round_trips_bit_exactly(tmp_path):
    torch.manual_seed(0)
    model = UNet(
        spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)
    ).eval()
    calibration = [torch.randn(1, 1, 16, 16, 16, generator=_seeded(8))]
    quantized = smoothquant.apply(model, SmoothQuantConfig(W8A8), calibration)
    layers = quantized_layers(quantized)
    assert all(layer.spec.input_scale for layer in layers.values())  # PReLU producers: none fold
    save_checkpoint(quantized, tmp_path)
    loaded = load_checkpoint(tmp_path, model)
    x = torch.randn(1, 1, 16, 16, 16, generator=_seeded(9))
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))
    summary = describe_checkpoint(tmp_path)
    expected = sum(4 * layer.input_scale.numel() for layer in layers.values())
    assert summary["size_breakdown_bytes"]["input_scales"] == expected
    assert all(entry["input_scale"] for entry in summary["layers"].values())

"""RTN: per-tensor / per-channel / group-wise symmetric weights, scheme names, checkpoints."""

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from harness.artifacts.checkpoint.describe import describe_checkpoint
from harness.artifacts.checkpoint.load import load_checkpoint
from harness.artifacts.checkpoint.save import save_checkpoint
from reference_methods.methods import rtn
from reference_methods.simulator.granularity import WeightGranularity
from reference_methods.simulator.quantized_layers import (
    LayerSpec,
    QuantConv3d,
    QuantConvTranspose3d,
)
from reference_methods.simulator.quantizer import qmax
from reference_methods.simulator.scheme import QuantConfig, quantize, quantized_layers
from reference_methods.simulator.weight_format import to_rows

GW = WeightGranularity.GROUP_WISE


def _unet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return UNet(
        spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)
    ).eval()


def _volume(seed: int) -> torch.Tensor:
    return torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_group_wise_scales_are_the_absmax_of_each_run_of_inputs():
    conv = nn.Conv3d(2, 3, 3)
    quantized = QuantConv3d.from_float(conv, LayerSpec("conv3d", 4, GW, weight_group_size=9))
    rows = to_rows(conv.weight.detach(), 0).reshape(3, 6, 9)
    assert quantized.weight_scale.shape == (3, 6)
    torch.testing.assert_close(quantized.weight_scale, rows.abs().amax(-1) / qmax(4))
    codes = to_rows(quantized.weight_codes, 0).reshape(3, 6, 9)
    assert (codes.abs().amax(-1) == qmax(4)).all()  # each group's peak maps to the full code


def test_conv_transpose_groups_run_along_its_axis_one_output_channels():
    layer = nn.ConvTranspose3d(4, 2, 2, stride=2)
    quantized = QuantConvTranspose3d.from_float(
        layer, LayerSpec("conv_transpose3d", 8, GW, weight_group_size=8)
    )
    rows = to_rows(layer.weight.detach(), 1).reshape(2, 4, 8)  # (C_out, C_in*k^3 / 8, 8)
    torch.testing.assert_close(quantized.weight_scale, rows.abs().amax(-1) / qmax(8))
    x = torch.randn(1, 4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), layer(x), rtol=0.02, atol=0.01)


def test_one_group_per_output_channel_is_per_channel_rtn():
    conv = nn.Conv3d(3, 4, 3)
    grouped = QuantConv3d.from_float(conv, LayerSpec("conv3d", 4, GW, weight_group_size=27 * 3))
    per_channel = QuantConv3d.from_float(conv, LayerSpec("conv3d", 4, "per-channel"))
    assert torch.equal(grouped.weight_codes, per_channel.weight_codes)
    assert torch.equal(grouped.dequantized_weight(), per_channel.dequantized_weight())


def test_apply_is_the_simulated_scheme():
    model, calibration = _unet(), [_volume(1)]
    config = rtn.RTNConfig.from_scheme("w4a8-per-channel")
    x = _volume(2)
    with torch.no_grad():
        assert torch.equal(
            rtn.apply(model, config, calibration)(x), quantize(model, config, calibration)(x)
        )


@pytest.mark.parametrize(
    ("scheme", "group_size"),
    [("w4a16-per-channel-g9", 9), ("w2a8-adaptive-g27-dynamic", 27), ("w8a8-per-tensor", None)],
)
def test_scheme_names_carry_the_group_size(scheme, group_size):
    config = QuantConfig.from_scheme(scheme)
    assert config.weight_group_size == group_size
    assert config.name == scheme


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        ("w4a16-per-channel-g0", "weight_group_size must be an integer >= 1, got 0"),
        ("w4a16-per-channel-g", "malformed scheme"),
        ("w4a16-per-channel-dynamic-g8", "malformed scheme"),
        ("w9a16-per-channel-g8", "weight_bits must be an integer from 2 to 8"),
    ],
)
def test_bad_group_sizes_and_bits_are_refused(scheme, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig.from_scheme(scheme)


def test_group_size_that_does_not_divide_a_layer_names_the_layer():
    with pytest.raises(
        ValueError, match="layer 'model.0.conv': weight_group_size 4 does not divide"
    ):
        rtn.apply(_unet(), QuantConfig.from_scheme("w4a16-per-channel-g4"))


def test_methods_own_layouts_are_not_round_to_nearest():
    spec = LayerSpec("conv3d", 4, "permuted", weight_groups=2, weight_zero_point=True)
    with pytest.raises(ValueError, match="round-to-nearest makes symmetric"):
        QuantConv3d.from_float(nn.Conv3d(1, 2, 1), spec)


def test_group_wise_with_static_activations_round_trips_bit_exactly(tmp_path):
    quantized = rtn.apply(_unet(), QuantConfig.from_scheme("w4a8-per-channel-g9"), [_volume(1)])
    assert all(layer.act_scale is not None for layer in quantized_layers(quantized).values())
    save_checkpoint(quantized, tmp_path)
    loaded = load_checkpoint(tmp_path, _unet(5))
    x = _volume(3)
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))
    summary = describe_checkpoint(tmp_path)
    assert (summary["weight_bits"], summary["weight_granularities"]) == (4, ["group-wise"])
    assert summary["layers"]["model.0.conv"]["weight_group_size"] == 9
    assert summary["size_breakdown_bytes"]["weight_scales"] == 4 * sum(
        layer.weight_scale.numel() for layer in quantized_layers(quantized).values()
    )

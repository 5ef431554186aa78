"""Granularity rules, quantized layers, QuantConfig and quantize() on tiny modules and a UNet."""

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from reference_methods.simulator.granularity import (
    ActivationGranularity,
    Granularity,
    WeightGranularity,
    scale_rule,
)
from reference_methods.simulator.layer_extras import LayerExtras
from reference_methods.simulator.quantized_layers import (
    LayerSpec,
    QuantConv3d,
    QuantConvTranspose3d,
    QuantLinear,
)
from reference_methods.simulator.quantizer import dynamic_fake_quantize, qmax
from reference_methods.simulator.scheme import QuantConfig, quantize, quantized_layers

PT, PC = WeightGranularity.PER_TENSOR, WeightGranularity.PER_CHANNEL
A_PT, A_PC = ActivationGranularity.PER_TENSOR, ActivationGranularity.PER_CHANNEL
A_TOKEN, A_VOXEL = ActivationGranularity.PER_TOKEN, ActivationGranularity.PER_VOXEL


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tiny_unet() -> nn.Module:
    torch.manual_seed(0)
    return UNet(
        spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)
    ).eval()


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# --- rule table -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "granularity", "weight", "activation"),
    [
        (nn.Conv3d(4, 8, 3), Granularity.PER_TENSOR, PT, A_PT),
        (nn.Conv3d(4, 8, 3), Granularity.PER_CHANNEL, PC, A_PC),
        (nn.Conv3d(4, 8, 3), Granularity.ADAPTIVE, PC, A_PC),
        (nn.Conv3d(4, 8, 1), Granularity.PER_CHANNEL, PC, A_PC),
        (nn.Conv3d(4, 8, 1), Granularity.ADAPTIVE, PC, A_VOXEL),
        (nn.Conv3d(4, 4, 3, groups=4), Granularity.PER_TENSOR, PC, A_PC),
        (nn.Conv3d(4, 4, 1, groups=2), Granularity.ADAPTIVE, PC, A_PC),
        (nn.ConvTranspose3d(4, 2, 2, stride=2), Granularity.PER_TENSOR, PT, A_PT),
        (nn.ConvTranspose3d(4, 2, 2, stride=2), Granularity.ADAPTIVE, PC, A_PC),
        (nn.ConvTranspose3d(4, 2, 1), Granularity.ADAPTIVE, PC, A_VOXEL),
        (nn.Linear(8, 4), Granularity.PER_TENSOR, PT, A_PT),
        (nn.Linear(8, 4), Granularity.PER_CHANNEL, PC, A_TOKEN),
        (nn.Linear(8, 4), Granularity.ADAPTIVE, PC, A_TOKEN),
    ],
)
def test_rule_table_assigns_weight_and_activation_granularity(
    layer, granularity, weight, activation
):
    rule = scale_rule(layer, granularity)
    assert (rule.weight, rule.activation) == (weight, activation)


def test_rule_table_accepts_scheme_strings_and_rejects_other_layers():
    assert scale_rule(nn.Linear(2, 2), "per-channel").activation is A_TOKEN
    with pytest.raises(TypeError, match="no quantization rule for Conv2d"):
        scale_rule(nn.Conv2d(2, 2, 3), Granularity.PER_TENSOR)


# --- layers ----------------------------------------------------------------------------------


def test_conv_weight_scales_are_per_output_channel_or_one():
    conv = nn.Conv3d(3, 5, 3, padding=1)
    per_channel = QuantConv3d.from_float(conv, LayerSpec("conv3d", 4, PC))
    per_tensor = QuantConv3d.from_float(conv, LayerSpec("conv3d", 4, PT))
    assert per_channel.weight_codes.shape == conv.weight.shape
    assert per_channel.weight_codes.dtype == torch.int8
    assert per_channel.weight_scale.shape == (5, 1, 1, 1, 1)
    assert per_tensor.weight_scale.shape == (1, 1, 1, 1, 1)
    peaks = per_channel.weight_codes.abs().amax(dim=(1, 2, 3, 4))
    assert peaks.tolist() == [qmax(4)] * 5


def test_conv_transpose_weight_scale_runs_along_its_output_channel_axis_one():
    layer = nn.ConvTranspose3d(2, 3, 2, stride=2)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(2, 3, 2, 2, 2, generator=_seeded()) + 0.5)
        layer.weight.mul_(torch.tensor([1.0, 100.0, 0.01]).view(1, 3, 1, 1, 1))
    quantized = QuantConvTranspose3d.from_float(layer, LayerSpec("conv_transpose3d", 8, PC))
    assert quantized.weight_scale.shape == (1, 3, 1, 1, 1)
    peaks = quantized.weight_codes.abs().amax(dim=(0, 2, 3, 4))
    assert peaks.tolist() == [qmax(8)] * 3
    x = torch.randn(1, 2, 3, 3, 3, generator=_seeded(1))
    with torch.no_grad():
        expected, got = layer(x), quantized(x)
    for channel in range(3):  # the 0.01-scaled channel survives only with its own scale
        assert _relative_error(got[:, channel], expected[:, channel]) < 0.02


def test_grouped_conv_transpose_is_refused():
    with pytest.raises(ValueError, match="grouped ConvTranspose3d"):
        QuantConvTranspose3d(
            nn.ConvTranspose3d(4, 4, 2, groups=2), LayerSpec("conv_transpose3d", 8, PC)
        )


def test_forward_is_the_float_op_on_dequantized_codes_and_fake_quantized_input():
    conv = nn.Conv3d(2, 3, 3, stride=2, padding=1, dilation=1)
    spec = LayerSpec("conv3d", 4, PC, 4, A_PT, "dynamic")
    quantized = QuantConv3d.from_float(conv, spec)
    x = torch.randn(2, 2, 6, 6, 6, generator=_seeded())
    weight = quantized.weight_codes.float() * quantized.weight_scale
    expected = F.conv3d(dynamic_fake_quantize(x, (), 4), weight, conv.bias, 2, 1)
    assert torch.equal(quantized(x), expected)


def test_weight_only_layer_leaves_activations_untouched():
    conv = nn.Conv3d(2, 3, 3, padding=1)
    quantized = QuantConv3d.from_float(conv, LayerSpec("conv3d", 2, PC))
    x = torch.randn(1, 2, 4, 4, 4, generator=_seeded()) * 1000
    weight = quantized.weight_codes.float() * quantized.weight_scale
    assert quantized.act_scale is None
    assert torch.equal(quantized(x), F.conv3d(x, weight, conv.bias, padding=1))


def test_per_voxel_scales_keep_small_voxels_that_per_tensor_scales_erase():
    conv = nn.Conv3d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1, 1))
    x = torch.ones(1, 2, 1, 1, 2)
    x[..., 0] = 1000.0
    x[..., 1] = 0.001
    per_voxel = QuantConv3d.from_float(conv, LayerSpec("conv3d", 8, PC, 4, A_VOXEL, "dynamic"))
    per_tensor = QuantConv3d.from_float(conv, LayerSpec("conv3d", 8, PC, 4, A_PT, "dynamic"))
    torch.testing.assert_close(per_voxel(x), x, rtol=1e-5, atol=0)
    assert torch.equal(per_tensor(x)[..., 1], torch.zeros(1, 2, 1, 1))


def test_per_token_scales_are_one_per_row_of_a_linear_input():
    linear = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(4))
    x = torch.tensor([[[1.0, -2.0, 4.0, 7.0], [0.001, 0.002, -0.004, 0.007]]])  # (B=1, T=2, C=4)
    per_token = QuantLinear.from_float(linear, LayerSpec("linear", 8, PC, 4, A_TOKEN, "dynamic"))
    per_tensor = QuantLinear.from_float(linear, LayerSpec("linear", 8, PC, 4, A_PT, "dynamic"))
    assert per_token.act_scale is None
    torch.testing.assert_close(per_token(x), x, rtol=1e-5, atol=0)
    assert torch.equal(per_tensor(x)[0, 1], torch.zeros(4))


def test_uncalibrated_static_layer_refuses_to_run():
    conv = QuantConv3d.from_float(nn.Conv3d(1, 1, 1), LayerSpec("conv3d", 8, PC, 8, A_PT, "static"))
    assert conv.needs_calibration
    with pytest.raises(RuntimeError, match="uncalibrated static activation scale"):
        conv(torch.ones(1, 1, 2, 2, 2))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"kind": "conv2d", "weight_bits": 8, "weight_granularity": "per-tensor"},
            "unknown layer kind",
        ),
        (
            {"kind": "linear", "weight_bits": 8, "weight_granularity": "per-row"},
            "unknown WeightGranularity",
        ),
        (
            {
                "kind": "linear",
                "weight_bits": 8,
                "weight_granularity": "per-tensor",
                "activation_bits": 8,
                "activation_granularity": "per-voxel",
                "activation_scale": "dynamic",
            },
            "per-voxel activation scales do not apply to linear",
        ),
        (
            {
                "kind": "conv3d",
                "weight_bits": 8,
                "weight_granularity": "per-tensor",
                "activation_bits": 8,
                "activation_granularity": "per-voxel",
                "activation_scale": "static",
            },
            "per-voxel activation scales are always dynamic",
        ),
        (
            {
                "kind": "conv3d",
                "weight_bits": 8,
                "weight_granularity": "per-tensor",
                "activation_granularity": "per-tensor",
            },
            "weight-only layer",
        ),
        (
            {"kind": "conv3d", "weight_bits": 8, "weight_granularity": "per-tensor", "x": 1},
            "unknown keys",
        ),
    ],
)
def test_layer_spec_rejects_inconsistent_entries(entry, message):
    with pytest.raises(ValueError, match=message):
        LayerSpec.from_dict(entry)


# --- QuantConfig -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "weight_bits", "activation_bits", "granularity", "scales"),
    [
        ("w8a8-per-tensor", 8, 8, Granularity.PER_TENSOR, "static"),
        ("w4a4-per-channel", 4, 4, Granularity.PER_CHANNEL, "static"),
        ("w4a4-adaptive", 4, 4, Granularity.ADAPTIVE, "static"),
        ("w4a16-per-channel", 4, None, Granularity.PER_CHANNEL, "static"),
        ("w2a16-per-tensor", 2, None, Granularity.PER_TENSOR, "static"),
        ("w8a8-per-channel-dynamic", 8, 8, Granularity.PER_CHANNEL, "dynamic"),
        ("w8a8-per-tensor-asym-o8", 8, 8, Granularity.PER_TENSOR, "static"),
    ],
)
def test_scheme_names_parse_and_round_trip(
    scheme, weight_bits, activation_bits, granularity, scales
):
    config = QuantConfig.from_scheme(scheme)
    assert (config.weight_bits, config.activation_bits) == (weight_bits, activation_bits)
    assert (config.granularity, config.activation_scales) == (granularity, scales)
    assert config.name == scheme


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        ("w9a8-per-tensor", "weight_bits must be an integer from 2 to 8"),
        ("w4a1-per-channel", "activation_bits must be an integer from 2 to 8"),
        ("w4a32-per-channel", "activation_bits must be an integer from 2 to 8"),
        ("w4a4-per-voxel", "malformed scheme"),
        ("W4A4-per-tensor", "malformed scheme"),
        ("w4-per-tensor", "malformed scheme"),
        ("w4a16-per-tensor-dynamic", "weight-only quantization has no activation scales"),
        ("w8a16-per-tensor-o8", "output requantization needs static activation scales"),
        ("w8a8-per-tensor-dynamic-o8", "output requantization needs static activation scales"),
    ],
)
def test_malformed_schemes_are_rejected(scheme, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig.from_scheme(scheme)


def test_config_validates_granularity_and_accepts_its_string_value():
    assert QuantConfig(4, 4, "adaptive").granularity is Granularity.ADAPTIVE
    with pytest.raises(ValueError, match="unknown granularity 'per-row'"):
        QuantConfig(4, 4, "per-row")


# --- quantize() ------------------------------------------------------------------------------


def test_static_scales_are_absmax_over_all_calibration_batches():
    model = nn.Sequential(nn.Conv3d(2, 3, 3, padding=1))
    first = torch.zeros(1, 2, 2, 2, 2)
    first[0, 0, 0, 0, 0], first[0, 1, 1, 1, 1] = -2.0, 1.0
    second = torch.zeros(1, 2, 2, 2, 2)
    second[0, 0, 1, 0, 0], second[0, 1, 0, 1, 0] = 1.0, 5.0
    per_channel = quantize(model, QuantConfig(8, 8, Granularity.PER_CHANNEL), [first, second])
    per_tensor = quantize(model, QuantConfig(8, 8, Granularity.PER_TENSOR), iter([first, second]))
    act_scale = per_channel[0].act_scale
    assert act_scale.shape == (2, 1, 1, 1)
    torch.testing.assert_close(act_scale.flatten(), torch.tensor([2.0, 5.0]) / 127)
    torch.testing.assert_close(per_tensor[0].act_scale, torch.tensor([5.0]) / 127)


def test_depthwise_conv_stays_per_channel_under_per_tensor():
    model = nn.Sequential(nn.Conv3d(3, 3, 3, padding=1, groups=3), nn.Conv3d(3, 2, 1))
    quantized = quantize(
        model, QuantConfig(4, 8, Granularity.PER_TENSOR), [torch.randn(1, 3, 4, 4, 4)]
    )
    depthwise, pointwise = quantized[0], quantized[1]
    assert depthwise.weight_scale.shape == (3, 1, 1, 1, 1)
    assert depthwise.act_scale.shape == (3, 1, 1, 1)
    assert depthwise.description["activation_granularity"] == "per-channel"
    assert pointwise.weight_scale.shape == (1, 1, 1, 1, 1)
    assert pointwise.act_scale.shape == (1,)


def test_adaptive_uses_dynamic_per_voxel_scales_only_on_pointwise_convs():
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.Conv3d(4, 2, 1), nn.Linear(4, 4))
    quantized = quantize(
        model, QuantConfig(4, 4, Granularity.ADAPTIVE), [torch.randn(1, 2, 4, 4, 4)]
    )
    descriptions = {name: layer.description for name, layer in quantized_layers(quantized).items()}
    assert descriptions["0"]["activation_granularity"] == "per-channel"
    assert descriptions["0"]["activation_scale"] == "static"
    assert descriptions["1"]["activation_granularity"] == "per-voxel"
    assert descriptions["1"]["activation_scale"] == "dynamic"
    assert descriptions["2"]["activation_granularity"] == "per-token"
    assert quantized[1].act_scale is None and quantized[2].act_scale is None


def test_dynamic_configs_need_no_calibration_data():
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2))
    quantized = quantize(model, QuantConfig.from_scheme("w8a8-per-tensor-dynamic"))
    assert quantized(torch.randn(3, 1, 3, 3, 3)).shape == (3, 2)


def test_static_config_without_calibration_batches_is_rejected():
    with pytest.raises(ValueError, match="at least one calibration batch"):
        quantize(nn.Sequential(nn.Linear(2, 2)), QuantConfig(8, 8, Granularity.PER_TENSOR), [])


def test_a_static_layer_no_calibration_batch_reaches_is_named():
    class PartlyUsed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(2, 2)
            self.unused = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    config = QuantConfig(8, 8, Granularity.PER_TENSOR)
    with pytest.raises(RuntimeError, match="layer 'unused': no calibration batch reached"):
        quantize(PartlyUsed(), config, [torch.randn(1, 2)])
    quantized = quantize(
        PartlyUsed(), QuantConfig(8, 8, "per-tensor", skip=("unused",)), [torch.randn(1, 2)]
    )
    assert type(quantized.unused) is nn.Linear


def test_skip_keeps_named_modules_and_their_children_in_float():
    model = _tiny_unet()
    config = QuantConfig(
        8, 8, Granularity.PER_CHANNEL, skip=("model.0.conv", "model.1.submodule.1")
    )
    quantized = quantize(model, config, [torch.randn(1, 1, 16, 16, 16)])
    names = set(quantized_layers(quantized))
    assert type(quantized.get_submodule("model.0.conv")) is nn.Conv3d
    assert type(quantized.get_submodule("model.1.submodule.1.submodule.conv")) is nn.Conv3d
    assert names == {"model.1.submodule.0.conv", "model.1.submodule.2.conv", "model.2.conv"}
    with pytest.raises(ValueError, match="skip names not found in the model: model.9"):
        quantize(model, QuantConfig(8, 8, Granularity.PER_CHANNEL, skip=("model.9",)), [])


def test_quantize_does_not_mutate_the_input_model():
    model = _tiny_unet()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    model.train()
    quantize(model, QuantConfig(4, 4, Granularity.ADAPTIVE), [torch.randn(1, 1, 16, 16, 16)])
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert not quantized_layers(model)
    assert model.training


def test_w8a8_is_close_to_fp32_and_w2_is_much_further_on_a_monai_unet():
    model = _tiny_unet()
    x = torch.randn(1, 1, 16, 16, 16, generator=_seeded(1))
    calibration = [x]
    with torch.no_grad():
        reference = model(x)
        w8a8 = quantize(model, QuantConfig.from_scheme("w8a8-per-tensor"), calibration)(x)
        w2 = quantize(model, QuantConfig.from_scheme("w2a16-per-channel"), calibration)(x)
    assert _relative_error(w8a8, reference) < 0.05
    assert _relative_error(w2, reference) > 5 * _relative_error(w8a8, reference)


def test_quantized_inference_is_deterministic():
    model = _tiny_unet()
    x = torch.randn(1, 1, 16, 16, 16, generator=_seeded(2))
    config = QuantConfig.from_scheme("w4a4-adaptive")
    first = quantize(model, config, [x])
    second = quantize(model, config, [x])
    with torch.no_grad():
        assert torch.equal(first(x), second(x))
        assert torch.equal(first(x), first(x))


# --- method extras ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extras", "message"),
    [
        ({"input_scale": torch.ones(2, 2)}, "input_scale must be a float vector"),
        ({"input_scale": torch.tensor([1.0, 0.0])}, "input_scale must be finite and positive"),
        ({"lowrank": (torch.ones(3, 2), torch.ones(3, 4))}, "needs U \\(m, r\\) and V \\(r, n\\)"),
        ({"lowrank": (torch.ones(3, 1), torch.full((1, 4), torch.nan))}, "non-finite values"),
        ({"input_rotation": "random"}, "unknown input_rotation 'random'"),
    ],
)
def test_invalid_extras_are_refused(extras, message):
    with pytest.raises(ValueError, match=message):
        LayerExtras(**extras)


def test_extras_must_fit_their_layer():
    model = nn.Sequential(nn.Linear(4, 3), nn.Conv3d(3, 2, 3))
    w8a8 = QuantConfig(8, 8, "per-channel")
    with pytest.raises(ValueError, match="extras for layers that are not quantized: \\['2'\\]"):
        quantize(model, w8a8, extras={"2": LayerExtras(input_rotation="hadamard")})
    with pytest.raises(ValueError, match="layer '0': input_scale of shape \\(3,\\) for 4 input"):
        quantize(model, w8a8, extras={"0": LayerExtras(input_scale=torch.ones(3))})
    with pytest.raises(ValueError, match="layer '0': low-rank factors \\(3, 1\\) and \\(1, 5\\)"):
        quantize(
            model, w8a8, extras={"0": LayerExtras(lowrank=(torch.ones(3, 1), torch.ones(1, 5)))}
        )
    with pytest.raises(ValueError, match="layer '1': an input rotation applies to linear and ung"):
        quantize(model, w8a8, extras={"1": LayerExtras(input_rotation="hadamard")})
    with pytest.raises(ValueError, match="applies to linear and 1x1x1 conv3d layers only"):
        LayerSpec("conv_transpose3d", 8, PC, input_rotation="hadamard")


def test_input_scale_divides_each_input_channel_before_quantizing():
    conv = nn.Conv3d(2, 3, 1)
    scale = torch.tensor([2.0, 0.5])
    quantized = quantize(
        nn.Sequential(conv),
        QuantConfig(8, 8, "per-channel", activation_scales="dynamic"),
        extras={"0": LayerExtras(input_scale=scale)},
    )[0]
    x = torch.randn(1, 2, 3, 3, 3, generator=_seeded(1))
    scaled = x / scale.reshape(-1, 1, 1, 1)
    expected = F.conv3d(
        dynamic_fake_quantize(scaled, (1,), 8), quantized.dequantized_weight(), quantized.bias
    )
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), expected)
    assert "input scale" in repr(quantized)


def test_output_requantization_snaps_each_layer_output_to_its_calibrated_grid():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1))
    calibration = [torch.randn(2, 1, 6, 6, 6) for _ in range(2)]
    config = QuantConfig.from_scheme("w8a8-per-tensor-o8")
    quantized = quantize(model, config, calibration)
    first = quantized[0]
    assert first.spec.output_bits == 8 and first.description["output_bits"] == 8
    plain = quantize(model, QuantConfig.from_scheme("w8a8-per-tensor"), calibration)[0]
    with torch.no_grad():
        largest = max(float(plain(batch).abs().max()) for batch in calibration)  # FP inputs
        first.start_calibration()
        for batch in calibration:
            first(batch)
        first.finish_calibration()
        assert float(first.output_scale) == pytest.approx(largest / 127, rel=0.02)
        codes = first(calibration[0]) / first.output_scale
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert float(codes.round().abs().max()) <= 127
    assert "output requantized to 8 bits" in repr(first)

"""Quantized checkpoint format: bit-exact round trips, verified precision, and every refusal."""

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNETR, UNet
from safetensors.torch import load_file, save_file
from torch import nn

from harness.artifacts.checkpoint.describe import describe_checkpoint
from harness.artifacts.checkpoint.load import load_checkpoint
from harness.artifacts.checkpoint.save import save_checkpoint
from harness.artifacts.checkpoint.storage import (
    FORMAT,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    read_checkpoint,
)
from harness.errors import CheckpointError
from reference_methods.methods import permutation_comq
from reference_methods.methods.comq import COMQConfig
from reference_methods.methods.permutation_comq import PermutationCOMQConfig
from reference_methods.simulator.layer_extras import LayerExtras
from reference_methods.simulator.quantized_layers import LayerSpec, QuantConv3d
from reference_methods.simulator.scheme import QuantConfig, quantize, quantized_layers

FIRST = "model.0.conv"  # UNet's first Conv3d (1 -> 4 channels, 3x3x3)
UP = "model.2.conv"  # UNet's last ConvTranspose3d (8 -> 3 channels)


def _unet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return UNet(
        spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)
    ).eval()


def _unetr(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return UNETR(
        in_channels=1,
        out_channels=2,
        img_size=(16, 16, 16),
        feature_size=4,
        hidden_size=32,
        mlp_dim=64,
        num_heads=2,
    ).eval()


def _volume(seed: int) -> torch.Tensor:
    return torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def unet_checkpoint(tmp_path_factory) -> Path:
    """A W4A4 per-channel UNet checkpoint (static per-channel activation scales)."""
    quantized = quantize(_unet(0), QuantConfig.from_scheme("w4a4-per-channel"), [_volume(1)])
    return save_checkpoint(quantized, tmp_path_factory.mktemp("ckpt") / "unet")


@pytest.fixture
def ckpt(unet_checkpoint, tmp_path) -> Path:
    """A private copy of the UNet checkpoint that a test may damage."""
    return Path(shutil.copytree(unet_checkpoint, tmp_path / "ckpt"))


def _edit_manifest(ckpt: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((ckpt / MANIFEST_NAME).read_text())
    edit(manifest)
    (ckpt / MANIFEST_NAME).write_text(json.dumps(manifest))


def _plain(ckpt: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors decoded (packed integer buffers unpacked), as version 1 stores
    them; written back without packing metadata they are a valid unpacked version-2 file."""
    return dict(read_checkpoint(ckpt).tensors)


def _edit_tensors(ckpt: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = _plain(ckpt)
    edit(tensors)
    save_file(tensors, ckpt / WEIGHTS_NAME)


def _refusal(ckpt: Path) -> str:
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(ckpt, _unet(3))
    return str(error.value)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme", ["w8a8-per-tensor", "w4a4-adaptive", "w4a16-per-channel", "w2a8-per-channel-dynamic"]
)
def test_unet_round_trip_reproduces_predictions_bit_exactly(scheme, tmp_path):
    quantized = quantize(_unet(0), QuantConfig.from_scheme(scheme), [_volume(1), _volume(2)])
    save_checkpoint(quantized, tmp_path)
    loaded = load_checkpoint(tmp_path, _unet(5))  # other FP32 weights: the checkpoint has all state
    x = _volume(3)
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))


@pytest.mark.slow
def test_unetr_round_trip_with_linear_and_pointwise_layers_is_bit_exact(tmp_path):
    quantized = quantize(_unetr(0), QuantConfig.from_scheme("w4a4-adaptive"), [_volume(1)])
    save_checkpoint(quantized, tmp_path)
    loaded = load_checkpoint(tmp_path, _unetr(5))
    kinds = {
        layer.description["activation_granularity"] for layer in quantized_layers(loaded).values()
    }
    assert {"per-token", "per-voxel", "per-channel"} <= kinds
    x = _volume(3)
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))


def test_files_hold_packed_codes_scales_and_a_manifest_per_layer(unet_checkpoint):
    manifest = json.loads((unet_checkpoint / MANIFEST_NAME).read_text())
    stored = load_file(unet_checkpoint / WEIGHTS_NAME)
    tensors = _plain(unet_checkpoint)
    assert (manifest["format"], manifest["version"], manifest["reference"]) == (FORMAT, 2, {})
    packed = stored[f"{FIRST}.weight_codes"]  # 4 x 1 x 3 x 3 x 3 codes at 4 bits
    assert (packed.dtype, tuple(packed.shape)) == (torch.uint8, (54,))
    assert manifest["layers"][FIRST] == {
        "kind": "conv3d",
        "weight_bits": 4,
        "weight_granularity": "per-channel",
        "activation_bits": 4,
        "activation_granularity": "per-channel",
        "activation_scale": "static",
    }
    assert manifest["layers"][UP]["kind"] == "conv_transpose3d"
    assert tensors[f"{FIRST}.weight_codes"].dtype == torch.int8
    assert tensors[f"{FIRST}.weight_scale"].shape == (4, 1, 1, 1, 1)
    assert tensors[f"{UP}.weight_scale"].shape == (1, 3, 1, 1, 1)
    assert tensors[f"{FIRST}.act_scale"].shape == (1, 1, 1, 1)
    assert f"{FIRST}.weight" not in tensors
    assert "model.0.adn.A.weight" in tensors


def test_reference_info_is_stored_in_the_manifest(tmp_path):
    quantized = quantize(_unet(0), QuantConfig.from_scheme("w8a16-per-tensor"))
    save_checkpoint(quantized, tmp_path, reference={"weights_sha256": "abc"})
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["reference"] == {
        "weights_sha256": "abc"
    }


def test_saving_a_float_model_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="the model has no quantized layers"):
        save_checkpoint(_unet(0), tmp_path)


def test_saving_an_uncalibrated_model_is_refused(tmp_path):
    spec = LayerSpec("conv3d", 8, "per-tensor", 8, "per-tensor", "static")
    model = nn.Sequential(QuantConv3d.from_float(nn.Conv3d(1, 1, 1), spec))
    with pytest.raises(CheckpointError, match="layer '0' has an uncalibrated static activation"):
        save_checkpoint(model, tmp_path)


def test_saving_an_unserializable_reference_is_refused(tmp_path):
    quantized = quantize(_unet(0), QuantConfig.from_scheme("w8a16-per-tensor"))
    with pytest.raises(CheckpointError, match="reference is not JSON-serializable"):
        save_checkpoint(quantized, tmp_path, reference={"when": object()})


def test_describe_reports_the_precision_the_tensors_hold(unet_checkpoint):
    summary = describe_checkpoint(unet_checkpoint)
    assert summary["num_quantized_layers"] == 5
    assert (summary["weight_bits"], summary["activation_bits"]) == (4, 4)
    assert summary["weight_bits_by_kind"] == {"conv3d": [4], "conv_transpose3d": [4]}
    assert summary["weight_granularities"] == ["per-channel"]
    assert summary["activation_granularities"] == ["per-channel", "per-tensor"]
    assert summary["activation_scales"] == ["static"]
    assert summary["layers"][FIRST]["activation_granularity"] == "per-tensor"  # 1 input channel
    assert summary["layers"][UP]["activation_granularity"] == "per-channel"


def test_describe_does_not_trust_declared_weight_bits(tmp_path):
    quantized = quantize(_unet(0), QuantConfig.from_scheme("w8a16-per-channel"))
    save_checkpoint(quantized, tmp_path)
    _edit_manifest(tmp_path, lambda m: m["layers"][FIRST].update(weight_bits=4))
    summary = describe_checkpoint(tmp_path)
    assert summary["layers"][FIRST]["weight_bits"] == 8
    assert (summary["weight_bits"], summary["activation_bits"]) == (8, None)


# --- refusals --------------------------------------------------------------------------------


def test_missing_manifest_is_refused(ckpt):
    (ckpt / MANIFEST_NAME).unlink()
    assert _refusal(ckpt) == "checkpoint has no manifest.json"


def test_missing_weights_are_refused(ckpt):
    (ckpt / WEIGHTS_NAME).unlink()
    assert _refusal(ckpt) == "checkpoint has no weights.safetensors"


def test_corrupt_manifest_is_refused(ckpt):
    (ckpt / MANIFEST_NAME).write_text("{not json")
    assert _refusal(ckpt).startswith("manifest.json is not valid JSON")


def test_truncated_weights_are_refused(ckpt):
    data = (ckpt / WEIGHTS_NAME).read_bytes()
    (ckpt / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    assert _refusal(ckpt).startswith("weights.safetensors is unreadable or corrupt")
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        describe_checkpoint(ckpt)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format="pickle"), "unknown checkpoint format 'pickle'"),
        (lambda m: m.update(version=3), "unsupported checkpoint version 3"),
        (lambda m: m.update(version=True), "unsupported checkpoint version True"),
        (lambda m: m.update(layers={}), "manifest declares no quantized layers"),
    ],
)
def test_unknown_format_or_version_is_refused(ckpt, edit, message):
    _edit_manifest(ckpt, edit)
    assert message in _refusal(ckpt)


def test_layer_missing_from_the_architecture_is_refused(ckpt):
    _edit_manifest(ckpt, lambda m: m["layers"].update({"model.9.conv": m["layers"][FIRST]}))
    assert _refusal(ckpt) == (
        "layer 'model.9.conv' in the manifest does not exist in the reference architecture"
    )


def test_kind_mismatch_is_refused(ckpt):
    linear = {"kind": "linear", "activation_granularity": "per-tensor"}
    _edit_manifest(ckpt, lambda m: m["layers"][FIRST].update(linear))
    message = _refusal(ckpt)
    assert "layer 'model.0.conv' is declared linear" in message
    assert "has Conv3d there" in message


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("weight_bits", 9, "weight_bits must be an integer from 2 to 8, got 9"),
        ("weight_bits", 1, "weight_bits must be an integer from 2 to 8, got 1"),
        ("activation_bits", 16, "activation_bits must be an integer from 2 to 8, got 16"),
        ("weight_granularity", "per-row", "unknown WeightGranularity 'per-row'"),
    ],
)
def test_bits_or_granularity_out_of_range_are_refused(ckpt, field, value, message):
    _edit_manifest(ckpt, lambda m: m["layers"][FIRST].update({field: value}))
    assert _refusal(ckpt).startswith(f"layer '{FIRST}': {message}")


def test_codes_beyond_the_declared_bits_are_refused(ckpt):
    def plant_code_nine(tensors):
        tensors[f"{FIRST}.weight_codes"][0, 0, 0, 0, 0] = 9

    _edit_tensors(ckpt, plant_code_nine)
    assert _refusal(ckpt) == (
        f"layer '{FIRST}' declares 4-bit weights but holds codes up to 9 in magnitude "
        "(needs 5 bits)"
    )


def test_minus_two_to_bits_minus_one_is_outside_the_symmetric_range(ckpt):
    _edit_manifest(ckpt, lambda m: m["layers"][FIRST].update(weight_bits=8))

    def plant_minus_128(tensors):
        tensors[f"{FIRST}.weight_codes"][0, 0, 0, 0, 0] = -128

    _edit_tensors(ckpt, plant_minus_128)
    assert "holds codes up to 128 in magnitude (needs 9 bits)" in _refusal(ckpt)


def test_float_codes_are_refused(ckpt):
    def to_float(tensors):
        tensors[f"{FIRST}.weight_codes"] = tensors[f"{FIRST}.weight_codes"].float()

    _edit_tensors(ckpt, to_float)
    assert _refusal(ckpt) == f"layer '{FIRST}': weight_codes must be integers, got torch.float32"


def test_wider_integer_codes_within_range_are_accepted(ckpt, unet_checkpoint):
    def widen(tensors):
        tensors[f"{FIRST}.weight_codes"] = tensors[f"{FIRST}.weight_codes"].to(torch.int32)

    _edit_tensors(ckpt, widen)
    x = _volume(3)
    with torch.no_grad():
        assert torch.equal(
            load_checkpoint(ckpt, _unet(3))(x), load_checkpoint(unet_checkpoint, _unet(4))(x)
        )


@pytest.mark.parametrize(
    ("key", "shape", "message"),
    [
        (f"{FIRST}.weight_codes", (4, 1, 3, 3, 1), "weight_codes has shape (4, 1, 3, 3, 1)"),
        (f"{FIRST}.weight_scale", (1, 1, 1, 1, 1), "weight_scale has shape (1, 1, 1, 1, 1)"),
        (f"{UP}.weight_scale", (3, 1, 1, 1, 1), "weight_scale has shape (3, 1, 1, 1, 1)"),
        (f"{UP}.act_scale", (1,), "act_scale has shape (1,) but the layer needs (8, 1, 1, 1)"),
    ],
)
def test_code_and_scale_shapes_must_fit_the_layer(ckpt, key, shape, message):
    def reshape(tensors):
        tensors[key] = torch.ones(shape, dtype=tensors[key].dtype)

    _edit_tensors(ckpt, reshape)
    layer = key.rpartition(".")[0]
    assert _refusal(ckpt).startswith(f"layer '{layer}': {message}")


def test_missing_tensor_is_refused(ckpt):
    _edit_tensors(ckpt, lambda tensors: tensors.pop(f"{UP}.act_scale"))
    assert _refusal(ckpt) == f"missing tensors: {UP}.act_scale"


def test_unexpected_tensor_is_refused(ckpt):
    _edit_tensors(ckpt, lambda tensors: tensors.update({f"{FIRST}.weight": torch.zeros(4)}))
    assert _refusal(ckpt) == f"unexpected tensors: {FIRST}.weight"


@pytest.mark.parametrize(
    ("buffer", "value", "problem"),
    [
        ("weight_scale", float("nan"), "non-finite"),
        ("weight_scale", float("inf"), "non-finite"),
        ("weight_scale", 0.0, "non-positive"),
        ("act_scale", -1.0, "non-positive"),
    ],
)
def test_non_finite_or_non_positive_scales_are_refused(ckpt, buffer, value, problem):
    def spoil(tensors):
        tensors[f"{UP}.{buffer}"].view(-1)[0] = value

    _edit_tensors(ckpt, spoil)
    assert _refusal(ckpt) == f"layer '{UP}': {buffer} has {problem} values"


@pytest.mark.parametrize(("value", "problem"), [(1e300, "non-finite"), (1e-320, "non-positive")])
def test_float64_scales_are_judged_as_the_float32_they_are_computed_in(ckpt, value, problem):
    def spoil(tensors):
        scale = tensors[f"{UP}.weight_scale"].to(torch.float64)
        scale.view(-1)[0] = value
        tensors[f"{UP}.weight_scale"] = scale

    _edit_tensors(ckpt, spoil)
    assert _refusal(ckpt) == f"layer '{UP}': weight_scale has {problem} values"


def test_static_scales_declared_dynamic_are_refused(ckpt):
    def as_dynamic(manifest):
        manifest["layers"][UP].update(activation_scale="dynamic")

    _edit_manifest(ckpt, as_dynamic)
    assert _refusal(ckpt) == f"unexpected tensors: {UP}.act_scale"
    with pytest.raises(CheckpointError, match="declares dynamic activation scales but holds"):
        describe_checkpoint(ckpt)


# --- general weight layouts: group-wise, affine (zero-points), permuted (group ids) -------------


@pytest.fixture(scope="module")
def permuted_checkpoint(tmp_path_factory) -> Path:
    """A W4 weight-only Permutation-COMQ UNet: affine codes, zero-points, group ids (G = C_out)."""
    config = PermutationCOMQConfig(
        COMQConfig(QuantConfig.from_scheme("w4a16-per-channel")), scope="layer"
    )
    quantized = permutation_comq.apply(_unet(0), config, [_volume(1)])
    return save_checkpoint(quantized, tmp_path_factory.mktemp("ckpt") / "permuted")


@pytest.fixture
def permuted(permuted_checkpoint, tmp_path) -> Path:
    return Path(shutil.copytree(permuted_checkpoint, tmp_path / "permuted"))


def test_permuted_checkpoint_files_hold_zero_points_and_group_ids(permuted_checkpoint):
    manifest = json.loads((permuted_checkpoint / MANIFEST_NAME).read_text())
    tensors = _plain(permuted_checkpoint)
    assert manifest["layers"][FIRST] == {
        "kind": "conv3d",
        "weight_bits": 4,
        "weight_granularity": "permuted",
        "weight_groups": 4,
        "weight_zero_point": True,
        "activation_bits": None,
        "activation_granularity": None,
        "activation_scale": None,
    }
    assert tensors[f"{FIRST}.weight_codes"].min() >= 0  # affine codes, decoded
    assert tensors[f"{FIRST}.weight_scale"].shape == (4,)
    assert not tensors[f"{FIRST}.weight_zero_point"].dtype.is_floating_point
    assert tensors[f"{FIRST}.weight_group_ids"].shape == (4, 1, 3, 3, 3)
    assert tensors[f"{UP}.weight_group_ids"].shape == (8, 3, 3, 3, 3)  # ConvTranspose3d
    stored = load_file(permuted_checkpoint / WEIGHTS_NAME)
    assert stored[f"{FIRST}.weight_codes"].shape == (108 * 4 // 8,)  # 4 bits per code
    assert stored[f"{FIRST}.weight_group_ids"].shape == (108 * 2 // 8,)  # G = 4: 2 bits per id
    assert stored[f"{FIRST}.weight_scale"].dtype == torch.float32


def test_describe_reads_affine_bits_from_the_codes(permuted):
    _edit_manifest(permuted, lambda m: m["layers"][FIRST].update(weight_bits=8))
    codes = _plain(permuted)[f"{FIRST}.weight_codes"]
    summary = describe_checkpoint(permuted)
    assert int(codes.max()).bit_length() == summary["layers"][FIRST]["weight_bits"] == 4
    assert summary["weight_granularities"] == ["permuted"]
    assert summary["layers"][FIRST]["weight_groups"] == 4


def test_size_counts_packed_codes_scales_zero_points_and_group_ids(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 3, 3), nn.ReLU(), nn.Conv3d(3, 2, 1, bias=False))
    config = PermutationCOMQConfig(COMQConfig(QuantConfig(4, None, "per-channel")), scope="layer")
    quantized = permutation_comq.apply(model, config, [torch.randn(1, 2, 5, 5, 5)])
    save_checkpoint(quantized, tmp_path)
    summary = describe_checkpoint(tmp_path)
    zero_bits = [  # the fewest bits spanning [min, max], stored as offsets from min
        max(1, int(layer.weight_zero_point.max() - layer.weight_zero_point.min()).bit_length())
        for layer in (quantized[0], quantized[2])
    ]
    tensor_bytes = sum(
        t.numel() * t.element_size() for t in load_file(tmp_path / WEIGHTS_NAME).values()
    )
    file_bytes = sum((tmp_path / name).stat().st_size for name in (MANIFEST_NAME, WEIGHTS_NAME))
    assert summary["size_breakdown_bytes"] == {
        "weight_codes": 54 * 3 // 2 + 3,  # 4 bits each
        "weight_scales": (3 + 2) * 4,
        "weight_zero_points": math.ceil(3 * zero_bits[0] / 8) + math.ceil(2 * zero_bits[1] / 8),
        "weight_group_ids": math.ceil(162 * 2 / 8) + math.ceil(6 * 1 / 8),  # ceil(log2 G) bits
        "input_scales": 0,
        "lowrank_branch": 0,
        "other": 3 * 4,  # the first conv's bias
        "container": file_bytes - tensor_bytes,  # safetensors header and manifest
    }
    assert summary["size_bytes"] == sum(summary["size_breakdown_bytes"].values()) == file_bytes
    assert summary["layers"]["0"]["size_bytes"] == 81 + 12 + 41 + 12 + math.ceil(
        3 * zero_bits[0] / 8
    )


def test_loaded_permuted_model_reproduces_predictions_bit_exactly(permuted_checkpoint):
    reference = _unet(0)
    config = PermutationCOMQConfig(
        COMQConfig(QuantConfig.from_scheme("w4a16-per-channel")), scope="layer"
    )
    quantized = permutation_comq.apply(reference, config, [_volume(1)])
    x = _volume(3)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(permuted_checkpoint, _unet(7))(x), quantized(x))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "weight_group_ids",
            4,
            "weight_group_ids must lie in [0, 4) for its 4 declared groups, found 4",
        ),
        (
            "weight_group_ids",
            -1,
            "weight_group_ids must lie in [0, 4) for its 4 declared groups, found -1",
        ),
        ("weight_zero_point", 2**40, "weight_zero_point does not fit in int32"),
        ("weight_codes", -1, "affine weight_codes must be non-negative, found -1"),
    ],
)
def test_out_of_range_group_ids_zero_points_and_codes_are_refused(permuted, key, value, message):
    def plant(tensors):
        tensors[f"{FIRST}.{key}"] = tensors[f"{FIRST}.{key}"].to(torch.int64)
        tensors[f"{FIRST}.{key}"].view(-1)[0] = value

    _edit_tensors(permuted, plant)
    assert _refusal(permuted) == f"layer '{FIRST}': {message}"


def test_affine_codes_beyond_the_declared_bits_are_refused(permuted):
    _edit_manifest(permuted, lambda m: m["layers"][FIRST].update(weight_bits=3))
    assert _refusal(permuted) == (
        f"layer '{FIRST}' declares 3-bit affine weights but holds codes up to 15 (needs 4 bits)"
    )


@pytest.mark.parametrize("key", ["weight_group_ids", "weight_zero_point"])
def test_float_group_ids_and_zero_points_are_refused(permuted, key):
    def to_float(tensors):
        tensors[f"{FIRST}.{key}"] = tensors[f"{FIRST}.{key}"].float()

    _edit_tensors(permuted, to_float)
    assert _refusal(permuted) == f"layer '{FIRST}': {key} must be integers, got torch.float32"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda layer: layer.update(weight_groups=5),
            f"layer '{FIRST}': weight_scale has shape (4,) but the layer needs (5,)",
        ),
        (
            lambda layer: layer.update(weight_granularity="per-channel", weight_groups=None),
            f"unexpected tensors: {FIRST}.weight_group_ids",
        ),
        (
            lambda layer: layer.pop("weight_zero_point"),
            f"unexpected tensors: {FIRST}.weight_zero_point",
        ),
        (
            lambda layer: layer.update(weight_granularity="permuted-per-channel"),
            f"layer '{FIRST}': weight_scale has shape (4,) but the layer needs (4, 4)",
        ),
    ],
)
def test_layouts_that_do_not_fit_the_tensors_are_refused(permuted, edit, message):
    _edit_manifest(permuted, lambda m: edit(m["layers"][FIRST]))
    assert _refusal(permuted) == message


def test_missing_group_ids_or_zero_points_are_refused(permuted):
    _edit_tensors(permuted, lambda tensors: tensors.pop(f"{FIRST}.weight_group_ids"))
    assert _refusal(permuted) == f"missing tensors: {FIRST}.weight_group_ids"
    with pytest.raises(CheckpointError, match="declares permuted weights but holds no"):
        describe_checkpoint(permuted)


def test_describe_refuses_scales_that_do_not_fit_the_codes(permuted):
    _edit_tensors(permuted, lambda t: t.update({f"{FIRST}.weight_scale": torch.ones(3)}))
    with pytest.raises(CheckpointError, match=f"layer '{FIRST}': weight_scale has shape \\(3,\\)"):
        describe_checkpoint(permuted)


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"weight_group_size": 4}, "weight_group_size 4 does not divide the 27 weights"),
        ({"weight_group_size": 0}, "group-wise weights need weight_group_size >= 1, got 0"),
        ({"weight_group_size": None}, "group-wise weights need weight_group_size >= 1"),
        ({"weight_groups": 2}, "weight_groups does not apply to group-wise weights"),
        ({"weight_zero_point": "yes"}, "weight_zero_point must be true or false, got 'yes'"),
    ],
)
def test_bad_group_wise_declarations_are_refused(tmp_path, update, message):
    quantized = quantize(_unet(0), QuantConfig.from_scheme("w4a16-per-channel-g9"))
    save_checkpoint(quantized, tmp_path)
    _edit_manifest(tmp_path, lambda m: m["layers"][FIRST].update(update))
    assert _refusal(tmp_path).startswith(f"layer '{FIRST}': {message}")


# --- method extras: explicit input scale, low-rank branch, input rotation ----------------------


def _extras_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))


def _extras_quantized() -> tuple[nn.Module, torch.Generator]:
    """W8A8 linears: '0' with an input scale and a rank-2 branch, '4' rotated, '2' plain; and the
    generator, ready for test inputs."""
    generator = torch.Generator().manual_seed(0)
    u, v = torch.randn(6, 2, generator=generator), torch.randn(2, 8, generator=generator)
    extras = {
        "0": LayerExtras(input_scale=torch.rand(8, generator=generator) + 0.5, lowrank=(u, v)),
        "4": LayerExtras(input_rotation="hadamard"),
    }
    calibration = [torch.randn(16, 8, generator=generator)]
    config = QuantConfig(8, 8, "per-tensor")
    return quantize(_extras_model(0), config, calibration, extras=extras), generator


@pytest.fixture(scope="module")
def extras_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(_extras_quantized()[0], tmp_path_factory.mktemp("ckpt") / "extras")


@pytest.fixture
def extras(extras_checkpoint, tmp_path) -> Path:
    return Path(shutil.copytree(extras_checkpoint, tmp_path / "extras"))


def _extras_refusal(ckpt: Path) -> str:
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(ckpt, _extras_model(1))
    return str(error.value)


def test_extras_round_trip_bit_exactly_and_are_declared(extras_checkpoint):
    quantized, generator = _extras_quantized()
    loaded = load_checkpoint(extras_checkpoint, _extras_model(5))
    x = torch.randn(4, 8, generator=generator)
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))
    layers = json.loads((extras_checkpoint / MANIFEST_NAME).read_text())["layers"]
    assert (layers["0"]["input_scale"], layers["0"]["lowrank_rank"]) == (True, 2)
    assert layers["4"]["input_rotation"] == "hadamard"
    assert layers["2"].keys() == {
        "kind",
        "weight_bits",
        "weight_granularity",
        "activation_bits",
        "activation_granularity",
        "activation_scale",
    }


def test_size_counts_input_scales_and_low_rank_branches(extras_checkpoint):
    summary = describe_checkpoint(extras_checkpoint)
    breakdown = summary["size_breakdown_bytes"]
    assert breakdown["input_scales"] == 8 * 4
    assert breakdown["lowrank_branch"] == (6 * 2 + 2 * 8) * 4
    assert summary["size_bytes"] == sum(breakdown.values())
    first = summary["layers"]["0"]
    assert (first["input_scale"], first["lowrank_rank"]) == (True, 2)
    assert first["size_bytes"] == 48 + 4 + 6 * 4 + 4 + 8 * 4 + (6 * 2 + 2 * 8) * 4
    assert summary["layers"]["4"]["input_rotation"] == "hadamard"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m, t: m["layers"]["0"].pop("input_scale"),
            "layer '0' does not declare an explicit input scale but holds input_scale",
        ),
        (
            lambda m, t: t.pop("0.input_scale"),
            "layer '0' declares an explicit input scale but holds no input_scale",
        ),
        (
            lambda m, t: t.pop("0.lowrank_v"),
            "layer '0' declares a low-rank branch but holds no lowrank_v",
        ),
        (
            lambda m, t: m["layers"]["2"].update(lowrank_rank=2),
            "layer '2' declares a low-rank branch but holds no lowrank_u",
        ),
        (
            lambda m, t: m["layers"]["0"].update(lowrank_rank=3),
            "layer '0' declares a rank-3 branch of its 6x8 weight, \\(m, r\\) and \\(r, n\\), but "
            "holds lowrank_u \\(6, 2\\) and lowrank_v \\(2, 8\\)",
        ),
    ],
)
def test_inconsistent_extras_are_refused_naming_the_layer(extras, edit, message):
    manifest = json.loads((extras / MANIFEST_NAME).read_text())
    tensors = _plain(extras)
    edit(manifest, tensors)
    (extras / MANIFEST_NAME).write_text(json.dumps(manifest))
    save_file(tensors, extras / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(extras, _extras_model(1))
    with pytest.raises(CheckpointError, match=message):
        describe_checkpoint(extras)


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"input_scale": "yes"}, "input_scale must be true or false, got 'yes'"),
        ({"lowrank_rank": 0}, "lowrank_rank must be an integer >= 1, got 0"),
        ({"input_rotation": "givens"}, "unknown input_rotation 'givens'"),
    ],
)
def test_bad_extras_declarations_are_refused(extras, update, message):
    _edit_manifest(extras, lambda m: m["layers"]["0"].update(update))
    assert _extras_refusal(extras).startswith(f"layer '0': {message}")


def test_rank_beyond_the_weight_and_rotation_of_an_unsupported_width_are_refused(extras):
    def widen(manifest, tensors, rank):
        manifest["layers"]["0"]["lowrank_rank"] = rank
        tensors["0.lowrank_u"] = torch.ones(6, rank)
        tensors["0.lowrank_v"] = torch.ones(rank, 8)

    manifest = json.loads((extras / MANIFEST_NAME).read_text())
    tensors = _plain(extras)
    widen(manifest, tensors, 7)
    manifest["layers"]["2"]["input_rotation"] = "hadamard"
    (extras / MANIFEST_NAME).write_text(json.dumps(manifest))
    save_file(tensors, extras / WEIGHTS_NAME)
    assert _extras_refusal(extras) == (
        "layer '0': low-rank branch of rank 7 exceeds min(m, n) = 6 of the 6x8 weight"
    )
    widen(manifest, tensors, 2)
    (extras / MANIFEST_NAME).write_text(json.dumps(manifest))
    save_file(tensors, extras / WEIGHTS_NAME)
    assert _extras_refusal(extras).startswith("layer '2': unsupported Hadamard size 6")


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("0.input_scale", torch.zeros(8), "has non-positive values"),
        ("0.input_scale", torch.full((8,), float("inf")), "has non-finite values"),
        ("0.lowrank_u", torch.full((6, 2), float("nan")), "has non-finite values"),
        ("0.lowrank_v", torch.ones(2, 8, dtype=torch.int32), "has dtype torch.int32"),
    ],
)
def test_bad_extras_values_are_refused(extras, key, value, problem):
    _edit_tensors(extras, lambda t: t.update({key: value}))
    buffer = key.split(".")[1]
    assert _extras_refusal(extras).startswith(f"layer '0': {buffer} {problem}")


def test_a_model_with_requantized_outputs_is_not_saved_as_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv3d(2, 2, 1))
    quantized = quantize(
        model, QuantConfig.from_scheme("w8a8-per-tensor-o8"), [torch.randn(1, 1, 4, 4, 4)]
    )
    with pytest.raises(CheckpointError, match="requantizes its output.*INT8 Q/DQ export"):
        save_checkpoint(quantized, tmp_path / "ckpt")

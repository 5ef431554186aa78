"""Hadamard matrices and rotation: FP equivalence, outlier flattening, layer choice, checkpoints."""

import json

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from harness.artifacts.checkpoint.describe import describe_checkpoint
from harness.artifacts.checkpoint.load import load_checkpoint
from harness.artifacts.checkpoint.save import save_checkpoint
from harness.artifacts.checkpoint.storage import MANIFEST_NAME
from harness.errors import CheckpointError
from reference_methods.methods import rotation, rtn
from reference_methods.methods.rotation import RotationConfig, rotate_weights, rotated_layers
from reference_methods.simulator.hadamard import hadamard_matrix
from reference_methods.simulator.layer_extras import rotate
from reference_methods.simulator.scheme import QuantConfig
from reference_methods.statistics.activations import excess_kurtosis

W8A4 = QuantConfig(8, 4, "per-channel")


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unet() -> nn.Module:
    """A small UNet whose residual units hold one 1x1x1 conv, 8 channels wide."""
    torch.manual_seed(0)
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=3,
        channels=(4, 8, 16),
        strides=(2, 2),
        num_res_units=1,
    ).eval()


class _Mixed(nn.Module):
    """A 3x3x3 conv, a rotatable 1x1x1 conv (8 channels), a rotatable linear (width 12) and a
    linear of width 6 that no Hadamard matrix fits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv3d(2, 8, 3, padding=1)
        self.point = nn.Conv3d(8, 12, 1)
        self.fc = nn.Linear(12, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.point(torch.relu(self.stem(x)))
        return self.head(torch.relu(self.fc(h.flatten(2).mT)))


@pytest.mark.parametrize("size", [1, 2, 4, 8, 12, 20, 24, 40, 96, 192])
def test_hadamard_matrices_are_orthonormal_with_equal_magnitudes(size):
    matrix = hadamard_matrix(size)
    torch.testing.assert_close(matrix @ matrix.T, torch.eye(size, dtype=torch.float64))
    torch.testing.assert_close(matrix.abs(), torch.full_like(matrix, size**-0.5))


@pytest.mark.parametrize("size", [0, 3, 6, 10, 28, 36])
def test_other_hadamard_sizes_are_refused(size):
    with pytest.raises(ValueError, match=f"unsupported Hadamard size {size}"):
        hadamard_matrix(size)


def test_rotation_alone_keeps_the_fp_function():
    torch.manual_seed(0)
    model = _Mixed().eval()
    assert rotated_layers(model, RotationConfig(W8A4)) == ["fc"]  # point: per-channel scales
    names = rotated_layers(model, RotationConfig(QuantConfig(8, 4, "per-tensor")))
    assert names == ["point", "fc"]
    rotated = rotate_weights(model, names)
    for name in names:
        layer = rotated.get_submodule(name)
        axis = -1 if isinstance(layer, nn.Linear) else -4
        matrix = hadamard_matrix(layer.weight.shape[1]).float()
        layer.register_forward_pre_hook(
            lambda _m, args, matrix=matrix, axis=axis: (rotate(args[0], matrix, axis),)
        )
    x = torch.randn(2, 2, 4, 4, 4, generator=_seeded(1))
    with torch.no_grad():
        torch.testing.assert_close(rotated(x), model(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(rotated.point.weight, model.point.weight)


def test_quantized_layer_rotates_its_input_before_quantizing_it():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 4))
    quantized = rotation.apply(
        model, RotationConfig(QuantConfig(8, 4, "per-tensor")), [torch.randn(8, 16)]
    )
    layer = quantized[0]
    assert layer.spec.input_rotation == "hadamard"
    x = torch.randn(3, 16, generator=_seeded(2))
    rotated = x @ hadamard_matrix(16).float().T
    x_hat = torch.round(rotated / layer.act_scale).clamp(-7, 7) * layer.act_scale
    with torch.no_grad():
        torch.testing.assert_close(
            layer(x), F.linear(x_hat, layer.dequantized_weight(), layer.bias)
        )


def test_rotation_flattens_an_outlier_channel_and_cuts_the_error():
    generator = _seeded(3)
    x = torch.randn(256, 64, generator=generator)
    x[:, 5] *= 40.0  # one outlier channel
    matrix = hadamard_matrix(64).float()
    before = float(excess_kurtosis(x, dim=1).mean())
    after = float(excess_kurtosis(rotate(x, matrix, -1), dim=1).mean())
    assert before > 30 and after < 3
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(64, 32))
    with torch.no_grad():
        reference = model(x)
        rotated = rotation.apply(model, RotationConfig(W8A4))(x)
        plain = rtn.apply(model, W8A4)(x)
    rotated_error = float((rotated - reference).pow(2).sum())
    assert rotated_error < 0.2 * float((plain - reference).pow(2).sum())


def test_named_layers_that_cannot_be_rotated_are_refused():
    model = _Mixed()
    with pytest.raises(ValueError, match="layer 'stem': a Conv3d is not a Linear or an ungrouped"):
        rotated_layers(model, RotationConfig(W8A4, layers=("stem",)))
    with pytest.raises(ValueError, match="layer 'head': unsupported Hadamard size 6"):
        rotation.apply(model, RotationConfig(W8A4, layers=("fc", "head")), [])
    with pytest.raises(ValueError, match="layer 'nope' is not a quantized layer"):
        rotated_layers(model, RotationConfig(W8A4, layers=("nope",)))
    assert rotated_layers(model, RotationConfig(W8A4, layers=["fc"])) == ["fc"]
    with pytest.raises(ValueError, match="no layer can be rotated"):
        rotated_layers(nn.Sequential(nn.Linear(6, 2)), RotationConfig(W8A4))


def test_rotation_checkpoint_round_trips_bit_exactly_with_a_flag_only(tmp_path):
    model = _unet()
    calibration = [torch.randn(1, 1, 16, 16, 16, generator=_seeded(5))]
    quantized = rotation.apply(model, RotationConfig(QuantConfig(4, 4, "per-tensor")), calibration)
    save_checkpoint(quantized, tmp_path)
    loaded = load_checkpoint(tmp_path, model)
    x = torch.randn(1, 1, 16, 16, 16, generator=_seeded(6))
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    flagged = [n for n, e in manifest["layers"].items() if e.get("input_rotation") == "hadamard"]
    assert flagged == ["model.1.submodule.1.submodule.residual"]  # the one 1x1x1 conv, 8 wide
    plain = save_checkpoint(
        rtn.apply(model, QuantConfig(4, 4, "per-tensor"), calibration), tmp_path / "rtn"
    )

    def tensor_bytes(ckpt):  # the rotation is a manifest flag: it stores no tensor
        summary = describe_checkpoint(ckpt)
        return summary["size_bytes"] - summary["size_breakdown_bytes"]["container"]

    assert tensor_bytes(tmp_path) == tensor_bytes(plain)


@pytest.mark.parametrize(
    ("layer", "value", "message"),
    [
        (
            "model.0.conv.unit0.conv",
            "hadamard",
            "applies to linear and ungrouped 1x1x1 conv3d layers only",
        ),
        ("model.1.submodule.1.submodule.residual", "givens", "unknown input_rotation 'givens'"),
    ],
)
def test_loader_refuses_rotations_that_do_not_fit(tmp_path, layer, value, message):
    model = _unet()
    save_checkpoint(
        rotation.apply(model, RotationConfig(QuantConfig(4, None, "per-channel"))), tmp_path
    )
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    manifest["layers"][layer]["input_rotation"] = value
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=f"layer '{layer}'.*{message}"):
        load_checkpoint(tmp_path, model)

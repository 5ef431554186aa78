"""SVD low-rank branch: the split, the layer's function, its errors, configs and checkpoints."""

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from harness.artifacts.checkpoint.describe import describe_checkpoint
from harness.artifacts.checkpoint.load import load_checkpoint
from harness.artifacts.checkpoint.save import save_checkpoint
from reference_methods.methods import rtn, svd
from reference_methods.methods.svd import SVDConfig, low_rank_split
from reference_methods.simulator.scheme import QuantConfig, quantized_layers
from reference_methods.simulator.weight_format import to_rows
from reference_methods.statistics.reconstruction import reconstruction_errors

W2A16 = QuantConfig(2, None, "per-channel")


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_split_is_the_best_rank_r_approximation_plus_its_residual():
    weight = torch.randn(6, 10, generator=_seeded(0))
    left, right, residual = low_rank_split(weight, 2)
    assert left.shape == (6, 2) and right.shape == (2, 10)
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    best = (u[:, :2] * s[:2]) @ vh[:2]
    torch.testing.assert_close((left @ right).double(), best, atol=1e-5, rtol=1e-5)
    assert torch.equal(residual, weight - left @ right)
    spectral = torch.linalg.matrix_norm(residual.double(), ord=2)
    assert float(spectral) == pytest.approx(float(s[2]), rel=1e-5)  # Eckart-Young: sigma_3


def test_full_rank_leaves_a_residual_of_rounding_noise():
    weight = torch.randn(4, 7, generator=_seeded(1))
    _, _, residual = low_rank_split(weight, 4)
    assert float(residual.abs().max()) < 1e-5


@pytest.mark.parametrize("rank", [0, -1, 1.5, True])
def test_invalid_ranks_are_refused(rank):
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        SVDConfig(W2A16, rank)
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        low_rank_split(torch.ones(3, 3), rank)


def test_rank_above_the_width_is_refused_naming_the_layer():
    with pytest.raises(ValueError, match="rank 7 exceeds min\\(m, n\\) = 6 of the 6x9 weight"):
        low_rank_split(torch.ones(6, 9), 7)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="layer '2': rank 4 exceeds min\\(m, n\\) = 3"):
        svd.apply(model, SVDConfig(W2A16, 4))
    with pytest.raises(TypeError, match="scheme must be a QuantConfig"):
        SVDConfig("w4a16-per-channel", 2)


def test_layer_adds_the_fp_branch_on_the_unquantized_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8))
    calibration = [torch.randn(16, 12)]
    quantized = svd.apply(model, SVDConfig(QuantConfig(4, 4, "per-tensor"), 3), calibration)
    layer = quantized[0]
    assert layer.spec.lowrank_rank == 3 and layer.lowrank_u.shape == (8, 3)
    x = torch.randn(5, 12, generator=_seeded(2))
    x_hat = torch.round(x / layer.act_scale).clamp(-7, 7) * layer.act_scale
    expected = F.linear(x_hat, layer.dequantized_weight(), layer.bias) + F.linear(
        x, layer.lowrank_u @ layer.lowrank_v
    )
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected)


def test_full_rank_keeps_the_fp_function_of_every_layer_kind():
    torch.manual_seed(1)
    model = nn.Sequential(  # min(m, n) = 3 everywhere
        nn.Conv3d(2, 3, 3, padding=1),
        nn.Conv3d(3, 3, 3, padding="same", groups=3),
        nn.ConvTranspose3d(3, 3, 2, stride=2),
        nn.Conv3d(3, 3, 1),
    ).eval()
    quantized = svd.apply(model, SVDConfig(QuantConfig(2, None, "per-channel"), 3))
    x = torch.randn(1, 2, 4, 4, 4, generator=_seeded(3))
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), model(x), atol=1e-4, rtol=1e-4)


def test_a_dominant_low_rank_part_is_kept_and_the_error_falls_below_rtns():
    generator = _seeded(4)
    weight = 3.0 * torch.randn(16, 2, generator=generator) @ torch.randn(2, 24, generator=generator)
    weight += 0.05 * torch.randn(16, 24, generator=generator)
    model = nn.Sequential(nn.Linear(24, 16, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(weight)
    x = torch.randn(64, 24, generator=generator)
    errors = {}
    for name, quantized in (
        ("rtn", rtn.apply(model, W2A16)),
        ("svd", svd.apply(model, SVDConfig(W2A16, 2))),
    ):
        with torch.no_grad():
            errors[name] = float((quantized(x) - model(x)).pow(2).sum())
    assert errors["svd"] < 0.01 * errors["rtn"]


def test_svd_checkpoint_round_trips_bit_exactly_and_counts_the_branch(tmp_path):
    torch.manual_seed(0)
    model = UNet(
        spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)
    ).eval()
    calibration = [torch.randn(1, 1, 16, 16, 16, generator=_seeded(5))]
    quantized = svd.apply(model, SVDConfig(QuantConfig(4, 8, "per-channel"), 2), calibration)
    save_checkpoint(quantized, tmp_path)
    loaded = load_checkpoint(tmp_path, model)
    x = torch.randn(1, 1, 16, 16, 16, generator=_seeded(6))
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))
    summary = describe_checkpoint(tmp_path)
    layers = quantized_layers(quantized)
    branch = sum(
        4 * (layer.lowrank_u.numel() + layer.lowrank_v.numel()) for layer in layers.values()
    )
    assert summary["size_breakdown_bytes"]["lowrank_branch"] == branch
    assert summary["size_bytes"] == sum(summary["size_breakdown_bytes"].values())
    assert {entry["lowrank_rank"] for entry in summary["layers"].values()} == {2}
    first = summary["layers"]["model.0.conv"]
    rows = to_rows(model.model[0].conv.weight.detach(), 0)
    assert first["size_bytes"] >= 4 * 2 * sum(rows.shape)


def test_reconstruction_errors_refuse_layers_with_extras():
    model = nn.Sequential(nn.Linear(4, 3))
    quantized = svd.apply(model, SVDConfig(W2A16, 1))
    with pytest.raises(ValueError, match="layers with method extras have no plain weight error"):
        reconstruction_errors(quantized, model, [torch.randn(2, 4)])

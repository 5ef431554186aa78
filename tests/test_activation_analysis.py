"""Activation analysis: excess kurtosis against scipy, streamed moments, outlier map, CLI."""

import json
import math

import pytest
import torch
from monai.networks.nets import UNETR
from scipy import stats
from torch import nn

from harness.cli import main
from reference_methods.statistics.activations import (
    ChannelMoments,
    analyse_activations,
    excess_kurtosis,
)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_excess_kurtosis_matches_scipy_fisher_biased():
    g = _generator(0)
    data = torch.stack(
        [
            torch.randn(5000, generator=g),
            torch.rand(5000, generator=g),  # uniform: −1.2
            -torch.rand(5000, generator=g).log(),  # exponential: 6
            torch.randn(5000, generator=g) ** 3,
        ],
        dim=1,
    ).double()
    expected = stats.kurtosis(data.numpy(), axis=0, fisher=True, bias=True)
    torch.testing.assert_close(excess_kurtosis(data, dim=0), torch.from_numpy(expected))


def test_gaussian_has_excess_kurtosis_near_zero_and_a_constant_is_nan():
    gaussian = torch.randn(200_000, generator=_generator(1))
    assert abs(excess_kurtosis(gaussian).item()) < 0.05  # standard error √(24/n) ≈ 0.011
    assert math.isnan(excess_kurtosis(torch.full((10,), 3.0)).item())


def test_streamed_moments_equal_scipy_on_the_concatenated_batches():
    g = _generator(2)
    # Far-from-zero means and mixed scales test the shifted power sums' conditioning.
    batches = [
        torch.randn(3000, 3, generator=g) * torch.tensor([1.0, 0.01, 50.0])
        + torch.tensor([1000.0, -5.0, 0.0])
        for _ in range(4)
    ]
    moments = ChannelMoments()
    for batch in batches:
        moments.update(batch)
    data = torch.cat(batches).double()
    expected = stats.kurtosis(data.numpy(), axis=0, fisher=True, bias=True)
    torch.testing.assert_close(moments.kurtosis(), torch.from_numpy(expected), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(moments.absmax, data.abs().amax(dim=0))
    assert moments.count == 12_000
    with pytest.raises(ValueError, match="got 2 channels, expected 3"):
        moments.update(torch.zeros(5, 2))
    with pytest.raises(RuntimeError, match="no activation"):
        ChannelMoments().kurtosis()


def test_a_planted_outlier_channel_of_a_conv_input_is_detected():
    model = nn.Sequential(nn.Conv3d(8, 4, 1), nn.ReLU(), nn.Conv3d(4, 2, 3)).eval()
    g = _generator(3)
    gain = torch.ones(1, 8, 1, 1, 1)
    gain[0, 5] = 40.0
    batches = [torch.randn(2, 8, 6, 6, 6, generator=g) * gain for _ in range(3)]
    first, second = analyse_activations(model, batches)
    assert (first.name, first.kind, second.kind) == ("0", "conv 1×1×1", "conv 3×3×3")
    assert len(first.channel_absmax) == 8 and first.values_per_channel == 3 * 2 * 6**3
    ratios = first.outlier_ratios
    assert max(range(8), key=ratios.__getitem__) == 5
    assert ratios[5] > 20 and all(r < 2 for i, r in enumerate(ratios) if i != 5)
    assert first.outlier_fraction() == 1 / 8 and first.max_outlier_ratio == ratios[5]
    assert first.across_channel_kurtosis > 3  # one channel far out: heavy across-channel tail
    # Gaussian inputs: every channel is Gaussian inside, so within-channel kurtosis is ≈ 0.
    assert abs(first.within_channel_kurtosis) < 0.2
    assert not model[0]._forward_pre_hooks and not model[2]._forward_pre_hooks


def test_a_planted_outlier_feature_of_a_linear_input_is_detected_over_tokens():
    model = nn.Sequential(nn.Linear(6, 6)).eval()
    x = torch.randn(2, 50, 6, generator=_generator(4))
    x[..., 2] *= 30.0
    (layer,) = analyse_activations(model, [x])
    assert layer.kind == "linear" and layer.values_per_channel == 100
    assert [r > 7 for r in layer.outlier_ratios] == [i == 2 for i in range(6)]


def test_constant_and_dead_channels_are_left_out_of_averages_and_medians():
    model = nn.Sequential(nn.Conv3d(4, 1, 1)).eval()
    x = torch.randn(1, 4, 5, 5, 5, generator=_generator(5))
    x[:, 0] = 0.0  # dead channel
    x[:, 1] = 2.0  # constant channel
    (layer,) = analyse_activations(model, [x])
    live = x[0, 2:].reshape(2, -1).T.double()
    expected = stats.kurtosis(live.numpy(), axis=0, fisher=True, bias=True).mean()
    assert layer.within_channel_kurtosis == pytest.approx(expected, rel=1e-9)
    absmax = torch.tensor(layer.channel_absmax)
    assert absmax[0] == 0.0 and layer.outlier_ratios[0] == 0.0
    median = torch.quantile(absmax[1:].double(), 0.5).item()
    assert layer.outlier_ratios[1] == pytest.approx(2.0 / median)


def test_every_quantizable_unetr_layer_is_reported_with_its_input_width():
    torch.manual_seed(0)
    model = UNETR(
        in_channels=1,
        out_channels=2,
        img_size=(32, 32, 32),
        feature_size=4,
        hidden_size=24,
        mlp_dim=48,
        num_heads=2,
    ).eval()
    layers = analyse_activations(model, [torch.randn(1, 1, 32, 32, 32, generator=_generator(6))])
    modules = dict(model.named_modules())
    assert len(layers) == 81
    for layer in layers:
        module = modules[layer.name]
        width = module.in_features if layer.kind == "linear" else module.in_channels
        assert len(layer.channel_absmax) == width
    assert math.isnan(layers[0].across_channel_kurtosis)  # the 1-channel image input


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no quantizable layer"):
        analyse_activations(nn.Sequential(nn.ReLU()), [torch.zeros(1)])
    with pytest.raises(ValueError, match="at least one batch"):
        analyse_activations(nn.Sequential(nn.Linear(2, 2)), [])


def test_cli_writes_json_and_html(tiny_track, tmp_path, capsys):
    dataset, model = tiny_track
    out = tmp_path / "act"
    args = ["--dataset", str(dataset), "--model", str(model), "--out", str(out)]
    assert main(["activations", "--quiet", *args, "--top", "3"]) == 0
    printed = capsys.readouterr().out
    assert "κ within" in printed and "max a/med" in printed
    report = json.loads((out / "activations.json").read_text())
    assert report["outlier_threshold"] == 7.0 and report["calibration_batches"] >= 1
    assert len(report["layers"]) == 6  # every quantizable layer of the tiny UNet
    first = report["layers"][0]
    assert first["channels"] == 1 and first["across_channel_kurtosis"] is None
    assert all(len(layer["outlier_ratios"]) == layer["channels"] for layer in report["layers"])
    html = (out / "activations.html").read_text()
    assert html.rstrip().endswith("</html>") and "Plotly.newPlot" in html
    assert "heatmap" in html and "within channel" in html

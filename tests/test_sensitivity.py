"""Layer sensitivity by incremental dequantization: grouping, keep-in-FP semantics, ranking, CLI."""

import json

import pytest
import torch
from monai.networks.nets import UNETR, UNet
from torch import nn

from harness.cli import main
from reference_methods.simulator.quantized_layers import QuantLayer, layer_kind
from reference_methods.simulator.scheme import QuantConfig, quantize, quantized_layers
from reference_methods.statistics.sensitivity import (
    LayerGroup,
    incremental_dequantization,
    keep_float,
    keep_most_sensitive,
    kind_label,
    layer_groups,
)

W4A4 = QuantConfig.from_scheme("w4a4-per-tensor")


def _unet() -> nn.Module:
    torch.manual_seed(0)
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=(4, 8),
        strides=(2,),
        num_res_units=1,
    ).eval()


def _unetr() -> nn.Module:
    torch.manual_seed(0)
    return UNETR(
        in_channels=1,
        out_channels=2,
        img_size=(32, 32, 32),
        feature_size=4,
        hidden_size=24,
        mlp_dim=48,
        num_heads=2,
    ).eval()


def _float_layers(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if layer_kind(m) is not None}


def _calibration(shape: tuple[int, ...]) -> list[torch.Tensor]:
    return [torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(1))]


def test_unet_groups_by_kernel_size_and_cover_every_layer_once():
    model = _unet()
    groups = layer_groups(model, "kind")
    assert [g.name for g in groups] == ["conv 3×3×3", "conv 1×1×1", "transposed conv"]
    assert all(g.kind == g.name for g in groups)
    layers = [name for g in groups for name in g.layers]
    assert sorted(layers) == sorted(_float_layers(model))
    quantizable = [m for m in model.modules() if layer_kind(m) is not None]
    assert sum(g.parameters for g in groups) == sum(
        p.numel() for m in quantizable for p in m.parameters()
    )


def test_unetr_groups_linear_patch_embedding_pointwise_and_transposed_convs():
    groups = {g.name: g for g in layer_groups(_unetr(), "kind")}
    assert set(groups) == {
        "conv 16×16×16",
        "linear",
        "conv 3×3×3",
        "conv 1×1×1",
        "transposed conv",
    }
    assert groups["conv 16×16×16"].layers == ("vit.patch_embedding.patch_embeddings",)
    assert len(groups["linear"].layers) == 48  # 12 blocks × (qkv, out_proj, 2 MLP)


def test_kinds_are_keyed_by_kernel_size_and_singles_follow_module_order():
    model = nn.Sequential(
        nn.Conv3d(1, 2, (1, 3, 3)), nn.Conv3d(2, 2, 3), nn.Conv3d(2, 2, (1, 3, 3)), nn.Flatten()
    )
    assert [(g.name, g.layers) for g in layer_groups(model, "kind")] == [
        ("conv 1×3×3", ("0", "2")),
        ("conv 3×3×3", ("1",)),
    ]
    singles = layer_groups(model, "layer")
    assert [(g.name, g.kind, g.layers) for g in singles] == [
        ("0", "conv 1×3×3", ("0",)),
        ("1", "conv 3×3×3", ("1",)),
        ("2", "conv 1×3×3", ("2",)),
    ]
    assert singles[1].parameters == 2 * 2 * 27 + 2
    assert kind_label(nn.Linear(2, 2)) == "linear"
    with pytest.raises(TypeError, match="not a quantizable layer"):
        kind_label(nn.Conv2d(1, 1, 3))


def test_bad_grouping_requests_are_refused():
    with pytest.raises(ValueError, match="'kind' or 'layer'"):
        layer_groups(_unet(), "block")
    with pytest.raises(ValueError, match="no quantizable layer"):
        layer_groups(nn.Sequential(nn.ReLU()), "kind")


def test_keeping_a_group_in_float_leaves_exactly_it_unquantized():
    model = _unetr()
    linear = next(g for g in layer_groups(model, "kind") if g.name == "linear")
    kept = keep_float(model, W4A4, linear.layers, _calibration((32, 32, 32)))
    modules = dict(kept.named_modules())
    for name in linear.layers:
        assert type(modules[name]) is nn.Linear
        assert torch.equal(modules[name].weight, dict(model.named_modules())[name].weight)
    assert set(quantized_layers(kept)) == _float_layers(model) - set(linear.layers)
    assert all(isinstance(modules[n], QuantLayer) for n in quantized_layers(kept))


def test_keeping_every_layer_in_float_recovers_the_fp32_score_exactly():
    model = _unet()
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2))

    def score(m: nn.Module) -> float:
        with torch.no_grad():
            return -float((m(x) - model(x)).abs().sum())

    everything = LayerGroup("all", "all", tuple(sorted(_float_layers(model))), 0)
    analysis = incremental_dequantization(model, W4A4, [everything], score, _calibration((16,) * 3))
    assert analysis.float_score == 0.0
    assert analysis.quantized_score < 0.0
    assert analysis.ranked[0].score == analysis.float_score
    assert analysis.ranked[0].recovered == -analysis.quantized_score
    assert analysis.gap_fraction(analysis.ranked[0].recovered) == 1.0


def test_groups_are_ranked_by_the_score_they_recover():
    model = _unet()
    singles = layer_groups(model, "layer")
    assert len(singles) == 6
    # Injected score: each layer kept in floating point is worth a known amount.
    worth = {g.layers[0]: float(i * 5 % 6) for i, g in enumerate(singles)}

    def score(m: nn.Module) -> float:
        return sum(worth[name] for name, layer in m.named_modules() if layer_kind(layer))

    calibration = _calibration((16,) * 3)
    analysis = incremental_dequantization(model, W4A4, singles, score, calibration)
    assert analysis.quantized_score == 0.0
    assert analysis.float_score == sum(worth.values())
    expected = sorted(worth, key=worth.get, reverse=True)
    assert [r.group.name for r in analysis.ranked] == expected
    assert [r.recovered for r in analysis.ranked] == [worth[n] for n in expected]
    top = keep_most_sensitive(model, analysis, [1, 2, 3], score, calibration)
    assert [t.layers for t in top] == [tuple(expected[:k]) for k in (1, 2, 3)]
    assert [t.score for t in top] == [sum(worth[n] for n in expected[:k]) for k in (1, 2, 3)]
    with pytest.raises(ValueError, match=r"k must be from 1 to 6, got \[0, 7\]"):
        keep_most_sensitive(model, analysis, [0, 7], score, calibration)


def test_a_config_skip_stays_skipped_while_groups_are_analysed():
    model = _unet()
    config = QuantConfig(4, 4, "per-tensor", skip=("model.2",))
    kept = keep_float(model, config, ["model.0.residual"], _calibration((16,) * 3))
    quantized = set(quantized_layers(kept))
    assert "model.0.residual" not in quantized
    assert not any(name.startswith("model.2.") for name in quantized)
    assert quantized == set(quantized_layers(quantize(model, config, _calibration((16,) * 3)))) - {
        "model.0.residual"
    }


def test_cli_writes_the_ranked_table_json_and_html(tiny_track, tmp_path, capsys):
    dataset, model = tiny_track
    out = tmp_path / "sens"
    code = main(
        [
            "sensitivity",
            "--quiet",
            "--dataset",
            str(dataset),
            "--model",
            str(model),
            "--scheme",
            "w4a4-per-tensor",
            "--by",
            "kind",
            "--cases",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "DSC recovered" in printed and "k=1:" in printed and "k=3:" in printed
    report = json.loads((out / "sensitivity.json").read_text())
    assert report["scheme"] == "w4a4-per-tensor" and report["by"] == "kind"
    assert len(report["track"]["test_cases"]) == 1
    assert [g["rank"] for g in report["groups"]] == [1, 2, 3]
    assert {g["group"] for g in report["groups"]} == {
        "conv 3×3×3",
        "conv 1×1×1",
        "transposed conv",
    }
    recovered = [g["dsc_recovered"] for g in report["groups"]]
    assert recovered == sorted(recovered, reverse=True)
    for g in report["groups"]:
        assert g["dsc_recovered"] == pytest.approx(g["dsc_kept_fp"] - report["quantized_dsc"])
    assert [k["k"] for k in report["keep_top_k"]] == [1, 2, 3]
    # Keeping all three kinds in floating point is the FP32 model.
    assert report["keep_top_k"][-1]["dsc"] == report["fp32_dsc"]
    html = (out / "sensitivity.html").read_text()
    assert html.rstrip().endswith("</html>") and "Plotly.newPlot" in html
    assert "DSC recovered" in html


def test_cli_refuses_a_bad_case_count(tiny_track, tmp_path, capsys):
    dataset, model = tiny_track
    args = ["--dataset", str(dataset), "--model", str(model), "--out", str(tmp_path)]
    assert main(["sensitivity", "--quiet", *args, "--cases", "0"]) == 2
    assert "--cases must be at least 1" in capsys.readouterr().err

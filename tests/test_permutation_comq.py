"""Permutation-COMQ: magnitude groups, per-group grids, the COMQ invariant, configs, checkpoints,
and the reconstruction-error ordering RTN >= COMQ >= Permutation-COMQ on a small model."""

import itertools
import math

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from harness.artifacts.checkpoint.describe import describe_checkpoint
from harness.artifacts.checkpoint.load import load_checkpoint
from harness.artifacts.checkpoint.save import save_checkpoint
from reference_methods.methods import comq, rtn
from reference_methods.methods import permutation_comq as pcomq
from reference_methods.methods.comq import COMQConfig
from reference_methods.methods.permutation_comq import PermutationCOMQConfig, magnitude_groups
from reference_methods.simulator.scheme import QuantConfig, quantized_layers
from reference_methods.simulator.weight_format import to_rows
from reference_methods.statistics.reconstruction import reconstruction_errors

W4A16 = QuantConfig(4, None, "per-channel")


def _problem(rows: int = 6, columns: int = 18, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(50, columns, generator=generator, dtype=torch.float64)
    weight = (
        torch.randn(rows, columns, generator=generator) * torch.linspace(0.1, 2.0, rows)[:, None]
    )
    return weight, (inputs.T @ inputs)[None]


def _unet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return UNet(
        spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)
    ).eval()


def _volume(seed: int) -> torch.Tensor:
    return torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(seed))


# --- grouping --------------------------------------------------------------------------------


def test_layer_scope_cuts_the_magnitude_ranking_into_m_groups_of_n_weights():
    weight, _ = _problem()
    ids = magnitude_groups(weight, groups=6, sort_key="abs")
    assert torch.bincount(ids.flatten()).tolist() == [18] * 6
    magnitudes = weight.abs()
    for group in range(5):
        assert magnitudes[ids == group].max() <= magnitudes[ids == group + 1].min()
    assert ids.flatten()[weight.abs().flatten().argmax()] == 5


def test_signed_key_is_the_default_and_ranks_the_values_themselves():
    weight, _ = _problem()
    ids = magnitude_groups(weight, groups=3)
    assert torch.equal(ids, magnitude_groups(weight, groups=3, sort_key="signed"))
    assert weight[ids == 0].max() <= weight[ids == 1].min() <= weight[ids == 2].min()


def test_channel_scope_makes_groups_inside_each_output_channel():
    weight, _ = _problem()
    ids = magnitude_groups(weight, groups=3, sort_key="abs", scope="channel")
    for row, row_ids in zip(weight, ids, strict=True):
        assert torch.bincount(row_ids).tolist() == [6, 6, 6]
        assert row.abs()[row_ids == 0].max() <= row.abs()[row_ids == 1].min()


def test_each_weight_lies_on_its_own_groups_grid():
    weight, gram = _problem(seed=1)
    quantized = pcomq.permutation_comq(weight, gram, 3, shrink=0.9)
    ids = magnitude_groups(weight, 6)
    assert torch.equal(quantized.group_ids.long(), ids)
    assert quantized.scale.shape == quantized.zero_point.shape == (6,)
    for group in range(6):
        members = weight[ids == group]
        delta = (members.max() - members.min()) / 7
        assert float(quantized.scale[group]) == pytest.approx(0.9 * float(delta), rel=1e-6)
        assert int(quantized.zero_point[group]) == round(float(members.min() / delta))
    assert int(quantized.codes.max()) <= 7


def test_channel_scope_with_one_group_is_exactly_comq():
    weight, gram = _problem(seed=2)
    for options in ({}, {"sweeps": 3, "update_scale": True, "shrink": 0.95}):
        reference = comq.comq(weight, gram, 3, **options)
        permuted = pcomq.permutation_comq(weight, gram, 3, groups=1, scope="channel", **options)
        assert permuted.granularity.value == "permuted-per-channel"
        assert torch.equal(permuted.codes, reference.codes)
        assert torch.equal(permuted.scale, reference.scale)
        assert torch.equal(permuted.zero_point, reference.zero_point)
        assert torch.equal(permuted.dequantize(), reference.dequantize())


def test_one_layer_group_is_a_per_layer_scale():
    weight, gram = _problem(seed=3)
    quantized = pcomq.permutation_comq(weight, gram, 4, groups=1)
    assert quantized.scale.shape == (1,)
    assert float(quantized.scale[0]) == pytest.approx(float(weight.max() - weight.min()) / 15)


def test_scale_updates_never_increase_the_error():
    weight, gram = _problem(seed=4)
    errors = []
    for sweeps in range(1, 5):
        quantized = pcomq.permutation_comq(weight, gram, 2, sweeps=sweeps, update_scale=True)
        difference = (weight - quantized.dequantize()).double()
        errors.append(float(torch.trace(difference @ gram[0] @ difference.T)))
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(errors))


# --- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"groups": 0}, "groups must be an integer >= 1, got 0"),
        ({"groups": -2}, "groups must be an integer >= 1"),
        ({"sort_key": "square"}, "unknown sort key 'square' \\(expected one of: abs, signed\\)"),
        (
            {"scope": "tensor"},
            "unknown scope 'tensor' \\(expected one of: column, layer, channel\\)",
        ),
        ({"scope": "channel"}, "scope 'channel' needs groups"),
    ],
)
def test_invalid_grouping_is_refused(options, message):
    with pytest.raises(ValueError, match=message):
        PermutationCOMQConfig(COMQConfig(W4A16), **options)
    weight, gram = _problem()
    with pytest.raises(ValueError, match=message):
        pcomq.permutation_comq(weight, gram, 4, **options)


def test_invalid_comq_options_are_refused():
    with pytest.raises(ValueError, match="shrink \\(lambda\\) must be a number > 0"):
        PermutationCOMQConfig(COMQConfig(W4A16, shrink=-0.5))
    with pytest.raises(ValueError, match="weight_bits must be an integer from 2 to 8"):
        pcomq.permutation_comq(*_problem(), bits=9)


def test_more_groups_than_weights_names_the_layer():
    config = PermutationCOMQConfig(COMQConfig(W4A16), groups=28, scope="channel")
    with pytest.raises(ValueError, match="layer 'model.0.conv': 28 groups per output channel"):
        pcomq.apply(_unet(), config, [_volume(1)])


# --- models and checkpoints ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "granularity", "groups"),
    [
        ({"scope": "layer"}, "permuted", None),
        ({"groups": 4, "scope": "channel"}, "permuted-per-channel", 4),
    ],
)
def test_permuted_model_saves_loads_and_counts_its_group_ids(
    tmp_path, options, granularity, groups
):
    scheme = QuantConfig(4, 8, "per-channel")
    quantized = pcomq.apply(
        _unet(), PermutationCOMQConfig(COMQConfig(scheme), **options), [_volume(1)]
    )
    save_checkpoint(quantized, tmp_path)
    loaded = load_checkpoint(tmp_path, _unet(5))
    x = _volume(2)
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))
    summary = describe_checkpoint(tmp_path)
    assert summary["weight_granularities"] == [granularity]
    assert summary["weight_bits"] == 4
    id_bytes = 0
    for name, layer in quantized_layers(quantized).items():
        count = groups or layer.weight_scale.numel()  # layer scope: G = C_out
        assert summary["layers"][name]["weight_groups"] == count
        id_bytes += math.ceil(layer.weight_codes.numel() * math.ceil(math.log2(count)) / 8)
    assert summary["size_breakdown_bytes"]["weight_group_ids"] == id_bytes


def test_errors_order_rtn_above_comq_above_permutation_comq_on_a_small_model():
    model, calibration = _unet(), [_volume(1), _volume(2)]
    for bits in (4, 2):
        scheme = QuantConfig(bits, None, "per-channel")
        errors = {
            "rtn": reconstruction_errors(rtn.apply(model, scheme), model, calibration),
            "comq": reconstruction_errors(
                comq.apply(model, COMQConfig(scheme), calibration), model, calibration
            ),
            "pcomq": reconstruction_errors(
                pcomq.apply(
                    model, PermutationCOMQConfig(COMQConfig(scheme), scope="layer"), calibration
                ),
                model,
                calibration,
            ),
        }
        assert all(errors["comq"][name] <= errors["rtn"][name] for name in errors["rtn"])
        assert sum(errors["pcomq"].values()) <= sum(errors["comq"].values())


def test_column_scope_shares_one_column_reordering_and_costs_a_column_index_per_layer(tmp_path):
    scheme = QuantConfig(2, None, "per-channel")
    config = PermutationCOMQConfig(COMQConfig(scheme), groups=3)
    assert config.scope == "column"  # the default, and the baseline's
    quantized = pcomq.apply(_unet(), config, [_volume(1)])
    save_checkpoint(quantized, tmp_path)
    summary = describe_checkpoint(tmp_path)
    id_bytes = 0
    for name, layer in quantized_layers(quantized).items():
        entry = summary["layers"][name]
        assert entry["weight_group_ids_shared"] == "columns"
        ids = to_rows(layer.weight_group_ids, layer.weight_channel_axis)
        assert torch.equal(ids, ids[:1].expand_as(ids))  # one reordering for every row
        id_bytes += math.ceil(ids.shape[1] * 2 / 8)  # ceil(log2 3) = 2 bits per column
    assert summary["size_breakdown_bytes"]["weight_group_ids"] == id_bytes
    parts = ("weight_codes", "weight_scales", "weight_zero_points", "weight_group_ids")
    stored = 8 * sum(summary["size_breakdown_bytes"][part] for part in parts)
    assert summary["bits_per_weight"] == pytest.approx(stored / summary["quantized_weights"])


def test_column_scope_defaults_to_one_group_per_128_inputs():
    weight = torch.randn(4, 300)
    assert pcomq.default_groups(weight, "column") == 2
    assert pcomq.default_groups(torch.randn(4, 100), "column") == 1
    groups = pcomq.column_groups(weight, 2)
    magnitude = weight.abs().amax(dim=0)
    assert magnitude[groups[0] == 0].max() <= magnitude[groups[0] == 1].min()

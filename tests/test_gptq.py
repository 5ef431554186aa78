"""GPTQ against the textbook OBS loop, its invariants and grids, configs, and checkpoints."""

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from harness.artifacts.checkpoint.describe import describe_checkpoint
from harness.artifacts.checkpoint.load import load_checkpoint
from harness.artifacts.checkpoint.save import save_checkpoint
from reference_methods.methods import gptq
from reference_methods.methods.gptq import GPTQConfig
from reference_methods.simulator.granularity import WeightGranularity
from reference_methods.simulator.quantizer import qmax, quantize_groups
from reference_methods.simulator.scheme import QuantConfig, quantize, quantized_layers
from reference_methods.statistics.reconstruction import layer_reconstruction_error

PC, PT, GW = (
    WeightGranularity.PER_CHANNEL,
    WeightGranularity.PER_TENSOR,
    WeightGranularity.GROUP_WISE,
)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _problem(rows: int = 6, columns: int = 16, samples: int = 200, seed: int = 0):
    """Correlated inputs X (one dead column), weight W and Gram H = X^T X (1, n, n)."""
    generator = _seeded(seed)
    mix = torch.randn(columns, columns, generator=generator, dtype=torch.float64)
    inputs = torch.randn(samples, columns, generator=generator, dtype=torch.float64) @ mix
    inputs[:, 5] = 0.0
    weight = torch.randn(rows, columns, generator=generator)
    return weight, (inputs.T @ inputs)[None]


def _obs_reference(weight, gram, bits, damp=0.01, act_order=False):
    """Per-channel GPTQ as OBS: quantize column j, spread its error with the inverse of H over the
    remaining columns, then remove j from that inverse by Gaussian elimination (no Cholesky)."""
    h = gram[0].clone()
    diagonal = h.diagonal()
    diagonal[diagonal <= 0] = 1.0
    diagonal += damp * float(diagonal.mean())
    order = torch.argsort(diagonal, descending=True, stable=True) if act_order else None
    w = weight.to(torch.float64).clone()
    scale = (w.abs().amax(1) / qmax(bits)).float().double()
    inverse = torch.linalg.inv(h)
    codes = torch.zeros(w.shape, dtype=torch.int64)
    for j in order.tolist() if act_order else range(w.shape[1]):
        code = torch.clamp(torch.round(w[:, j] / scale), -qmax(bits), qmax(bits))
        codes[:, j] = code.long()
        error = (w[:, j] - code * scale) / inverse[j, j]
        w -= error[:, None] * inverse[j][None]
        w[:, j] = code * scale
        inverse = inverse - inverse[:, j : j + 1] @ inverse[j : j + 1] / inverse[j, j]
    return codes


def _rtn_error(weight, gram, bits):
    codes, scale = quantize_groups(weight, bits, weight.shape[1])
    return layer_reconstruction_error(gram, weight, codes * scale)


# --- the algorithm ---------------------------------------------------------------------------


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits", [2, 4])
def test_equals_the_obs_loop_with_an_explicit_inverse(bits, act_order):
    weight, gram = _problem()
    expected = _obs_reference(weight, gram, bits, act_order=act_order)
    got = gptq.gptq(weight, gram, bits, act_order=act_order)
    assert torch.equal(got.codes.long(), expected)


@pytest.mark.parametrize(("granularity", "group_size"), [(PC, None), (PT, None), (GW, 4)])
@pytest.mark.parametrize("act_order", [False, True])
def test_lazy_blocks_do_not_change_the_result(granularity, group_size, act_order):
    weight, gram = _problem(seed=1)
    results = [
        gptq.gptq(weight, gram, 3, granularity, group_size, block, act_order=act_order)
        for block in (1, 5, 16, 128)
    ]
    for other in results[1:]:
        assert torch.equal(other.codes, results[0].codes)
        assert torch.equal(other.scale, results[0].scale)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_error_is_at_most_rtns_on_a_small_layer(bits, act_order):
    weight, gram = _problem(rows=8, columns=24, seed=2)
    error = layer_reconstruction_error(
        gram, weight, gptq.gptq(weight, gram, bits, act_order=act_order).dequantize()
    )
    assert error <= _rtn_error(weight, gram, bits)


def test_uncorrelated_inputs_give_exactly_rtn():
    weight, _ = _problem(seed=3)
    gram = torch.diag(torch.rand(16, generator=_seeded(4), dtype=torch.float64) + 0.5)[None]
    codes, scale = quantize_groups(weight, 4, 16)
    for act_order in (False, True):
        got = gptq.gptq(weight, gram, 4, act_order=act_order)
        assert torch.equal(got.codes, codes) and torch.equal(got.scale, scale)


def test_a_layer_no_input_reached_is_rtn():
    weight, _ = _problem(seed=5)
    got = gptq.gptq(weight, torch.zeros(1, 16, 16, dtype=torch.float64), 3)
    codes, scale = quantize_groups(weight, 3, 16)
    assert torch.equal(got.codes, codes) and torch.equal(got.scale, scale)


def test_grids_are_the_symmetric_ones_of_the_weight_rule():
    weight, gram = _problem(seed=6)
    per_channel = gptq.gptq(weight, gram, 4)
    assert per_channel.codes.dtype == torch.int8 and per_channel.zero_point is None
    torch.testing.assert_close(per_channel.scale, weight.abs().amax(1, keepdim=True) / 7)
    per_tensor = gptq.gptq(weight, gram, 4, PT)
    assert per_tensor.scale.shape == (1, 1)
    torch.testing.assert_close(per_tensor.scale, weight.abs().amax().reshape(1, 1) / 7)
    grouped = gptq.gptq(weight, gram, 4, GW, 4)
    assert grouped.scale.shape == (6, 4) and grouped.group_size == 4
    assert int(grouped.codes.abs().max()) <= 7
    first = weight[:, :4].abs().amax(1) / 7  # the first run is fixed before any update
    torch.testing.assert_close(grouped.scale[:, 0], first)


def test_rows_of_a_grouped_conv_use_their_own_conv_groups_gram():
    weight, gram = _problem(rows=4, seed=7)
    _, other = _problem(rows=4, seed=8)
    together = gptq.gptq(weight, torch.cat([gram, other]), 3, act_order=True)
    for group, g in enumerate((gram, other)):
        part = slice(2 * group, 2 * group + 2)
        alone = gptq.gptq(weight[part], g, 3, act_order=True)
        assert torch.equal(together.codes[part], alone.codes)


# --- configs and models ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"damp": 0.0}, "damp must be a number > 0, got 0.0"),
        ({"damp": -0.1}, "damp must be a number > 0"),
        ({"damp": float("nan")}, "damp must be a number > 0"),
        ({"damp": float("inf")}, "damp must be finite"),
        ({"block_size": 0}, "block_size must be an integer >= 1, got 0"),
        ({"block_size": 2.0}, "block_size must be an integer >= 1"),
    ],
)
def test_invalid_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        GPTQConfig(QuantConfig(4, None, "per-channel"), **options)
    weight, gram = _problem()
    with pytest.raises(ValueError, match=message):
        gptq.gptq(weight, gram, 4, **options)


@pytest.mark.parametrize("bits", [1, 9])
def test_bits_out_of_range_are_refused(bits):
    weight, gram = _problem()
    with pytest.raises(ValueError, match="weight_bits must be an integer from 2 to 8"):
        gptq.gptq(weight, gram, bits)


def test_layouts_gptq_cannot_make_are_refused():
    weight, gram = _problem()
    with pytest.raises(ValueError, match="does not divide the 16 weights"):
        gptq.gptq(weight, gram, 4, GW, 5)
    with pytest.raises(ValueError, match="GPTQ makes no permuted weights"):
        gptq.gptq(weight, gram, 4, WeightGranularity.PERMUTED)
    with pytest.raises(TypeError, match="scheme must be a QuantConfig"):
        GPTQConfig("w4a16-per-channel")


def test_a_group_size_that_does_not_fit_names_the_layer():
    model = nn.Sequential(nn.Linear(6, 4))
    scheme = QuantConfig.from_scheme("w4a16-per-channel-g4")
    with pytest.raises(ValueError, match="layer '0': weight_group_size 4 does not divide"):
        gptq.apply(model, GPTQConfig(scheme), [torch.randn(3, 6)])


def test_apply_follows_the_rule_table_and_beats_rtn_on_a_small_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 8)).eval()
    calibration = [torch.randn(64, 12) @ torch.randn(12, 12)]
    scheme = QuantConfig(3, None, "per-tensor")
    quantized = gptq.apply(model, GPTQConfig(scheme, act_order=True), calibration)
    assert all(layer.weight_scale.numel() == 1 for layer in quantized_layers(quantized).values())
    rtn = quantize(model, scheme)
    with torch.no_grad():
        reference = model(calibration[0])
        gptq_error = (quantized(calibration[0]) - reference).pow(2).sum()
        rtn_error = (rtn(calibration[0]) - reference).pow(2).sum()
    assert gptq_error < rtn_error


def test_gptq_model_with_group_wise_weights_and_static_activations_round_trips(tmp_path):
    torch.manual_seed(0)
    model = UNet(
        spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)
    ).eval()
    calibration = [torch.randn(1, 1, 16, 16, 16, generator=_seeded(1))]
    scheme = QuantConfig(4, 8, "per-channel", weight_group_size=3)
    quantized = gptq.apply(model, GPTQConfig(scheme, block_size=32, act_order=True), calibration)
    save_checkpoint(quantized, tmp_path)
    loaded = load_checkpoint(tmp_path, model)
    x = torch.randn(1, 1, 16, 16, 16, generator=_seeded(2))
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))
    summary = describe_checkpoint(tmp_path)
    assert (summary["weight_bits"], summary["activation_bits"]) == (4, 8)
    assert summary["weight_granularities"] == ["group-wise"]


def test_sequential_fits_later_layers_on_the_partially_quantized_inputs():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    calibration = [torch.randn(40, 6)]
    w2 = QuantConfig(2, None, "per-channel")
    default = gptq.apply(model, GPTQConfig(w2), calibration)
    sequential = gptq.apply(model, GPTQConfig(w2, sequential=True), calibration)
    assert torch.equal(default[0].weight_codes, sequential[0].weight_codes)
    with torch.no_grad():
        hidden = model[1](sequential[0](calibration[0]))
    expected = gptq.gptq(model[2].weight.detach(), (hidden.T @ hidden).double()[None], 2)
    assert torch.equal(sequential[2].weight_codes, expected.codes)


@pytest.mark.parametrize("size", [1, 7, 300])
def test_the_inverse_factor_is_the_cholesky_factor_of_the_inverse(size):
    # one Cholesky of H reversed gives the factor GPTQ used to take from chol(inv(chol(H)))
    generator = torch.Generator().manual_seed(size)
    x = torch.randn(2 * size, size, generator=generator, dtype=torch.float64)
    hessian = x.T @ x + 0.01 * torch.eye(size, dtype=torch.float64)
    upper = gptq.inverse_cholesky_upper(hessian)
    expected = torch.linalg.cholesky(
        torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True
    )
    assert torch.equal(upper, upper.triu()) and bool((upper.diagonal() > 0).all())
    torch.testing.assert_close(upper, expected, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(upper.T @ upper @ hessian, torch.eye(size, dtype=torch.float64))

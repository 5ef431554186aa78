"""COMQ in Gram form against the definition, its invariants, the input Grams it rests on, the
reconstruction error, configs, and checkpoints of COMQ-quantized models."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from harness.artifacts.checkpoint.describe import describe_checkpoint
from harness.artifacts.checkpoint.load import load_checkpoint
from harness.artifacts.checkpoint.save import save_checkpoint
from reference_methods.methods import comq
from reference_methods.methods.comq import COMQConfig, comq_codes, group_grid
from reference_methods.simulator.scheme import QuantConfig, quantized_layers
from reference_methods.simulator.weight_format import to_rows
from reference_methods.statistics import gram
from reference_methods.statistics.gram import collect_grams, gram_shape, input_columns
from reference_methods.statistics.reconstruction import (
    layer_reconstruction_error,
    reconstruction_errors,
)

W4A16 = QuantConfig(4, None, "per-channel")


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _problem(rows: int = 5, columns: int = 12, samples: int = 40, seed: int = 0):
    """A tiny layer problem: explicit inputs X (one dead column), weight W, Gram H."""
    generator = _seeded(seed)
    inputs = torch.randn(samples, columns, generator=generator, dtype=torch.float64)
    inputs[:, 3] = 0.0
    weight = torch.randn(rows, columns, generator=generator)
    return inputs, weight, (inputs.T @ inputs)[None]


def _naive_comq(inputs, weight, bits, sweeps, shrink=1.0, update_scale=False):
    """COMQ straight from its definition: explicit X, one row and one coordinate at a time."""
    levels = 2**bits - 1
    scale = (weight.amax(1) - weight.amin(1)) / levels  # float32, as stored
    zero = torch.round(weight.amin(1) / scale)
    scale = shrink * scale
    x, w = inputs, weight.to(torch.float64)
    rows, columns = w.shape
    norms = (x * x).sum(0)
    order = torch.argsort(w.abs() * norms.sqrt(), dim=1, descending=True, stable=True)
    q, codes = w.clone(), torch.zeros(rows, columns, dtype=torch.int64)
    trajectory = []
    for _ in range(sweeps):
        for i in range(rows):
            s, z = scale[i].double(), zero[i].double()
            for j in order[i].tolist():
                others = torch.arange(columns) != j
                if norms[j] > 0:
                    coupling = (x[:, j] @ x[:, others]) @ (w[i, others] - q[i, others])
                    target = w[i, j] + coupling / norms[j]
                else:
                    target = w[i, j]
                k = torch.clamp(torch.round(target / s - z), 0, levels)
                q[i, j], codes[i, j] = s * (z + k), int(k)
        if update_scale:
            for i in range(rows):
                xc, xw = x @ (zero[i].double() + codes[i]), x @ w[i]
                scale[i] = ((xc @ xw) / (xc @ xc)).float()
                q[i] = scale[i].double() * (zero[i].double() + codes[i])
        trajectory.append(codes.clone())
    return trajectory


# --- the algorithm ---------------------------------------------------------------------------


@pytest.mark.parametrize("update_scale", [False, True])
@pytest.mark.parametrize("bits", [2, 4])
def test_gram_form_equals_the_definition_sweep_by_sweep(bits, update_scale):
    inputs, weight, gram = _problem()
    expected = _naive_comq(inputs, weight, bits, sweeps=3, update_scale=update_scale)
    for sweeps in (1, 2, 3):
        got = comq.comq(weight, gram, bits, sweeps=sweeps, update_scale=update_scale)
        assert torch.equal(got.codes.long(), expected[sweeps - 1])


def test_weights_lie_on_each_channels_grid():
    _, weight, gram = _problem(seed=1)
    bits, shrink = 3, 0.8
    quantized = comq.comq(weight, gram, bits, shrink=shrink)
    delta = (weight.amax(1) - weight.amin(1)) / 7
    torch.testing.assert_close(quantized.scale.flatten(), shrink * delta)
    assert torch.equal(quantized.zero_point.flatten(), torch.round(weight.amin(1) / delta).int())
    assert quantized.codes.dtype == torch.uint8 and int(quantized.codes.max()) <= 7
    assert quantized.granularity.value == "per-channel"


def test_dead_inputs_take_the_grid_point_nearest_the_weight():
    _, weight, gram = _problem(seed=2)
    quantized = comq.comq(weight, gram, 4)
    scale, zero = quantized.scale.flatten(), quantized.zero_point.flatten()
    nearest = torch.clamp(torch.round(weight[:, 3] / scale - zero), 0, 15)
    assert torch.equal(quantized.codes[:, 3].long(), nearest.long())


def test_inputs_below_the_float32_resolution_of_h_count_as_dead():
    inputs, weight, _ = _problem(seed=2)
    inputs[:, 5] = 1e-5 * inputs[:, 6]  # energy 1e-10 of its neighbour's: noise in a float32 H
    quantized = comq.comq(weight, (inputs.T @ inputs)[None], 4)
    scale, zero = quantized.scale.flatten(), quantized.zero_point.flatten()
    for column in (3, 5):
        nearest = torch.clamp(torch.round(weight[:, column] / scale - zero), 0, 15)
        assert torch.equal(quantized.codes[:, column].long(), nearest.long())


@pytest.mark.parametrize("update_scale", [False, True])
def test_error_never_increases_over_sweeps(update_scale):
    _, weight, gram = _problem(rows=6, columns=20, samples=15, seed=3)
    errors = [
        layer_reconstruction_error(
            gram, weight, comq.comq(weight, gram, 2, sweeps, update_scale=update_scale).dequantize()
        )
        for sweeps in range(1, 6)
    ]
    assert all(later <= earlier * (1 + 1e-12) for earlier, later in itertools.pairwise(errors))


def test_scale_update_is_the_least_squares_fit_with_codes_fixed():
    inputs, weight, gram = _problem(seed=4)
    fixed = comq.comq(weight, gram, 3)
    offsets = (fixed.codes.long() + fixed.zero_point).double()
    refit = comq.refit_scales(weight, gram, offsets, torch.zeros_like(offsets).long(), fixed.scale)
    xc, xw = inputs @ offsets.T, inputs @ weight.double().T
    torch.testing.assert_close(refit.flatten(), ((xc * xw).sum(0) / (xc * xc).sum(0)).float())


def test_rows_of_a_grouped_conv_use_their_own_conv_groups_gram():
    inputs, weight, _ = _problem(rows=4, columns=6, samples=30, seed=5)
    other = torch.randn(30, 6, generator=_seeded(6), dtype=torch.float64)
    grams = torch.stack([inputs.T @ inputs, other.T @ other])
    together = comq.comq(weight, grams, 3, sweeps=2)
    for group in range(2):
        alone = comq.comq(weight[2 * group : 2 * group + 2], grams[group : group + 1], 3, 2)
        assert torch.equal(together.codes[2 * group : 2 * group + 2], alone.codes)


def test_shared_grid_tables_match_per_row_minima_and_maxima():
    weight = torch.tensor([[0.5, -1.0, 2.0], [3.0, 3.0, 3.0], [0.0, 0.0, 0.0]])
    scale, zero = group_grid(weight, torch.zeros(3, 3, dtype=torch.long), 1, True, 2)
    assert scale[0, 0] == pytest.approx(1.0) and zero[0, 0] == -1
    assert float(scale[1, 0] * (zero[1, 0])) == pytest.approx(3.0, rel=1e-3)  # constant row
    assert (scale[2, 0], zero[2, 0]) == (1.0, 0)  # all-zero row
    codes, _ = comq_codes(weight, torch.eye(3)[None], scale, zero, torch.zeros(3, 3).long(), 2)
    assert codes[2].tolist() == [0, 0, 0]


# --- input Grams -----------------------------------------------------------------------------


def _explicit_columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """X (rows, conv groups, n) via one-hot kernels: an unfold independent of ``gram``."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, 1, layer.in_features)
    channels, kernel = x.shape[1], layer.kernel_size
    taps = kernel[0] * kernel[1] * kernel[2]
    if isinstance(layer, nn.Conv3d):
        one_hot = torch.eye(taps).reshape(taps, 1, *kernel).repeat(channels, 1, 1, 1, 1)
        out = F.conv3d(
            x, one_hot, None, layer.stride, layer.padding, layer.dilation, groups=channels
        )
        groups = layer.groups
    else:
        one_hot = torch.zeros(channels, channels * taps, *kernel)
        for c in range(channels):
            one_hot[c, c * taps : (c + 1) * taps] = torch.eye(taps).reshape(taps, *kernel)
        out = F.conv_transpose3d(
            x, one_hot, None, layer.stride, layer.padding, layer.output_padding, 1, layer.dilation
        )
        groups = 1
    return out.permute(0, 2, 3, 4, 1).reshape(-1, groups, channels * taps // groups)


LAYERS = [
    (nn.Conv3d(3, 4, 3, padding=1), (2, 3, 5, 6, 4)),
    (
        nn.Conv3d(4, 6, (3, 2, 1), stride=(2, 1, 2), padding=(1, 0, 1), dilation=(1, 2, 1)),
        (2, 4, 7, 6, 5),
    ),
    (nn.Conv3d(4, 6, 3, padding="same", dilation=2, groups=2), (1, 4, 7, 6, 5)),
    (nn.ConvTranspose3d(3, 5, 3, stride=2, padding=1, output_padding=1), (2, 3, 4, 3, 5)),
    (
        nn.ConvTranspose3d(3, 2, (2, 3, 3), stride=(2, 1, 3), padding=(0, 2, 1), dilation=2),
        (1, 3, 4, 3, 5),
    ),
    (nn.Conv3d(2, 3, 3, dilation=2), (1, 2, 7, 8, 5)),  # boundary planes of both ends overlap
    (nn.Conv3d(2, 3, (2, 3, 1), padding="same"), (1, 2, 5, 4, 3)),  # uneven padding
    (nn.Conv3d(3, 2, 1), (2, 3, 3, 2, 4)),
    (nn.ConvTranspose3d(2, 3, 2, padding=2), (1, 2, 6, 5, 6)),  # its equivalent conv crops
    (nn.Linear(5, 7), (2, 3, 5)),
    (nn.Conv3d(2, 3, 3, padding=4, dilation=4), (1, 2, 12, 11, 10)),  # segments 4 thick
    (nn.Conv3d(2, 2, (3, 3, 1), padding=(8, 5, 0), dilation=(8, 5, 1)), (2, 2, 19, 13, 3)),
    (nn.ConvTranspose3d(2, 3, 3, stride=2, padding=1, dilation=3), (1, 2, 5, 4, 6)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize(("layer", "shape"), LAYERS)
def test_layer_output_is_columns_times_weight_rows(layer, shape):
    x = torch.randn(shape, generator=_seeded(7))
    columns = torch.cat(list(input_columns(layer, x, max_values=300)))
    axis = 1 if isinstance(layer, nn.ConvTranspose3d) else 0
    rows = to_rows(layer.weight.detach(), axis)
    groups = columns.shape[1]
    per_group = rows.reshape(groups, len(rows) // groups, -1)
    out = torch.einsum("ngk,gok->ngo", columns, per_group).reshape(len(columns), -1)
    with torch.no_grad():
        expected = (layer(x).movedim(1, -1) if x.ndim == 5 else layer(x)) - layer.bias
    torch.testing.assert_close(out, expected.reshape(len(columns), -1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("layer", "shape"), LAYERS)
def test_accumulated_gram_equals_the_explicit_unfold(layer, shape):
    x = torch.randn(shape, generator=_seeded(8))
    gram = collect_grams(nn.Sequential(layer), {"0": layer}, [x])["0"]
    explicit = _explicit_columns(layer, x).double().transpose(0, 1)
    assert gram.shape == gram_shape(layer)
    torch.testing.assert_close(gram, explicit.mT @ explicit, rtol=1e-5, atol=1e-4)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("shifted", [True, False], ids=["shifted-products", "unfold"])
@pytest.mark.parametrize(("layer", "shape"), LAYERS)
def test_both_gram_algorithms_equal_the_explicit_unfold(layer, shape, shifted, monkeypatch):
    monkeypatch.setattr(gram, "shifted_products_preferred", lambda *args: shifted)
    x = torch.randn(shape, generator=_seeded(9))
    got = gram.input_gram(layer, x)
    explicit = _explicit_columns(layer, x).double().transpose(0, 1)
    torch.testing.assert_close(got, explicit.mT @ explicit, rtol=1e-5, atol=1e-4)


TRANSPOSED = [  # (stride, kernel, padding, output padding, dilation) per axis; input size
    ((2, 2, 2), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), (5, 4, 6)),  # MONAI UNet's up-conv
    ((2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0), (1, 1, 1), (3, 5, 4)),  # kernel = stride
    ((3, 2, 1), (2, 5, 3), (0, 2, 1), (2, 1, 0), (1, 1, 1), (4, 3, 5)),  # kernel < stride
    ((2, 3, 2), (4, 3, 5), (3, 1, 1), (0, 2, 1), (2, 3, 1), (3, 4, 2)),  # dilation shares stride
    ((4, 2, 3), (3, 4, 2), (2, 0, 1), (3, 1, 2), (3, 1, 2), (2, 3, 3)),
    ((1, 1, 2), (3, 1, 3), (2, 0, 0), (0, 0, 1), (1, 1, 1), (4, 2, 3)),  # padding crops
]


@pytest.mark.parametrize("shifted", [True, False], ids=["shifted-products", "unfold"])
@pytest.mark.parametrize("geometry", TRANSPOSED)
def test_transposed_gram_equals_the_zero_stuffed_gram(geometry, shifted, monkeypatch):
    # the phase-by-phase Gram skips the stuffed zeros; X from the zero-stuffed equivalent conv
    # (``input_columns``) and from one-hot kernels (``_explicit_columns``) gives the same H
    stride, kernel, padding, output_padding, dilation, size = geometry
    layer = nn.ConvTranspose3d(3, 2, kernel, stride, padding, output_padding, 1, True, dilation)
    x = torch.randn(2, 3, *size, generator=_seeded(11))
    monkeypatch.setattr(gram, "shifted_products_preferred", lambda *args: shifted)
    got = gram.input_gram(layer, x)
    stuffed = torch.cat(list(input_columns(layer, x))).double().transpose(0, 1)
    explicit = _explicit_columns(layer, x).double().transpose(0, 1)
    torch.testing.assert_close(got, stuffed.mT @ stuffed, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got, explicit.mT @ explicit, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dilation", [1, 2, 4, 8, 16])
def test_shifted_products_regions_do_not_multiply_with_the_dilation(dilation):
    # a boundary segment per box edge, however thick: at most (1 + 2 (k - 1))^3 regions
    shape, kernel = (1, 16, 64, 64, 64), (3, 3, 3)
    plan = gram._box_plan(shape[2:], kernel, [(dilation, dilation)] * 3, (dilation,) * 3)
    regions = 1
    for choices in plan.boundary:
        regions *= len(choices)
    assert regions <= (1 + 2 * 2) ** 3


def test_the_cost_model_takes_shifted_products_at_small_and_unfold_at_large_dilations():
    shape, kernel = (1, 16, 64, 64, 64), (3, 3, 3)

    def preferred(d: int) -> bool:
        return gram.shifted_products_preferred(shape, kernel, [(d, d)] * 3, (d, d, d))

    assert preferred(1) and preferred(4)
    assert not preferred(16)
    # what grows with the dilation is the shifted products' boundary rows, not the unfold
    costs = [gram.shifted_products_cost(shape, kernel, [(d, d)] * 3, (d,) * 3) for d in (1, 16)]
    unfold = [gram.unfold_cost(shape, kernel, [(d, d)] * 3, (d,) * 3) for d in (1, 16)]
    assert costs[1] > 2 * costs[0] and unfold[0] == unfold[1]


def test_gram_over_batches_equals_the_gram_of_all_data_at_once():
    conv = nn.Conv3d(2, 3, 3, padding=1)
    model = nn.Sequential(conv)
    first, second = torch.randn(2, 2, 5, 5, 5), torch.randn(1, 2, 5, 5, 5)
    batched = collect_grams(model, {"0": conv}, [first, second])["0"]
    at_once = collect_grams(model, {"0": conv}, [torch.cat([first, second])])["0"]
    torch.testing.assert_close(batched, at_once, rtol=1e-6, atol=1e-4)


def test_columns_come_in_bounded_chunks():
    conv = nn.Conv3d(4, 2, 3, padding=1)
    chunks = list(input_columns(conv, torch.randn(1, 4, 16, 8, 8), max_values=8 * 8 * 108))
    assert len(chunks) == 16
    assert max(chunk.numel() for chunk in chunks) == 8 * 8 * 108


def test_a_layer_no_batch_reaches_is_named():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no calibration batch reached layer"):
        collect_grams(model, {"0": model[0], "x": nn.Linear(2, 2)}, [torch.randn(3, 2)])


# --- reconstruction error --------------------------------------------------------------------


def test_reconstruction_error_is_the_output_error_on_the_fp32_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))
    calibration = [torch.randn(1, 2, 5, 5, 5)]
    quantized = comq.apply(model, COMQConfig(QuantConfig(2, None, "per-channel")), calibration)
    errors = reconstruction_errors(quantized, model, calibration)
    with torch.no_grad():
        hidden = model[1](model[0](calibration[0]))
        for name, x in (("0", calibration[0]), ("2", hidden)):
            float_layer, layer = model.get_submodule(name), quantized.get_submodule(name)
            bias = float_layer.bias.reshape(-1, 1, 1, 1)
            expected = F.conv3d(x, layer.dequantized_weight(), padding=float_layer.padding)
            difference = float_layer(x) - bias - expected
            assert errors[name] == pytest.approx(float((difference.double() ** 2).sum()), 1e-4)


# --- configs and models ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"shrink": 0.0}, "shrink \\(lambda\\) must be a number > 0, got 0.0"),
        ({"shrink": -1.0}, "shrink \\(lambda\\) must be a number > 0"),
        ({"shrink": float("nan")}, "shrink \\(lambda\\) must be a number > 0"),
        ({"shrink": float("inf")}, "shrink \\(lambda\\) must be finite"),
        ({"sweeps": 0}, "sweeps must be an integer >= 1, got 0"),
        ({"sweeps": 1.5}, "sweeps must be an integer >= 1"),
    ],
)
def test_invalid_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        COMQConfig(W4A16, **options)
    _, weight, gram = _problem()
    with pytest.raises(ValueError, match=message):
        comq.comq(weight, gram, 4, **options)


@pytest.mark.parametrize("bits", [1, 9])
def test_bits_out_of_range_are_refused(bits):
    with pytest.raises(ValueError, match="weight_bits must be an integer from 2 to 8"):
        comq.comq(torch.ones(2, 2), torch.eye(2)[None], bits)


def test_schemes_with_a_group_size_are_refused():
    with pytest.raises(ValueError, match="COMQ grids are per output channel"):
        COMQConfig(QuantConfig.from_scheme("w4a16-per-channel-g9"))
    with pytest.raises(TypeError, match="scheme must be a QuantConfig"):
        COMQConfig("w4a16-per-channel")


def test_no_calibration_batch_is_refused():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="needs at least one calibration batch"):
        comq.apply(model, COMQConfig(W4A16), [])


def test_sequential_fits_each_layer_on_the_partially_quantized_models_inputs():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    calibration = [torch.randn(20, 6), torch.randn(10, 6)]
    w2a16 = QuantConfig(2, None, "per-channel")
    default = comq.apply(model, COMQConfig(w2a16), calibration)
    sequential = comq.apply(model, COMQConfig(w2a16, sequential=True), calibration)
    assert torch.equal(default[0].weight_codes, sequential[0].weight_codes)
    hidden = [model[1](sequential[0](batch)) for batch in calibration]
    gram = collect_grams(nn.Sequential(model[2]), {"0": model[2]}, hidden)["0"]
    expected = comq.comq(model[2].weight.detach(), gram, 2)
    assert torch.equal(sequential[2].weight_codes, expected.codes)
    assert not torch.equal(default[2].weight_codes, sequential[2].weight_codes)


def test_comq_model_with_static_activations_saves_and_loads_bit_exactly(tmp_path):
    torch.manual_seed(0)
    model = UNet(
        spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)
    ).eval()
    calibration = [torch.randn(1, 1, 16, 16, 16, generator=_seeded(1))]
    quantized = comq.apply(model, COMQConfig(QuantConfig(4, 8, "per-channel")), calibration)
    assert all(layer.spec.weight_zero_point for layer in quantized_layers(quantized).values())
    save_checkpoint(quantized, tmp_path)
    loaded = load_checkpoint(tmp_path, model)
    x = torch.randn(1, 1, 16, 16, 16, generator=_seeded(2))
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))
    summary = describe_checkpoint(tmp_path)
    assert (summary["weight_bits"], summary["activation_bits"]) == (4, 8)
    assert summary["weight_granularities"] == ["per-channel"]
    assert all(entry["weight_zero_point"] for entry in summary["layers"].values())

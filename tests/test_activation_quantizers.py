"""Activation quantizers: the symmetric grid (the study's), the asymmetric zero-point grid (ONNX
QuantizeLinear / DequantizeLinear with uint8), and max / percentile / MSE calibration, through the
simulator, the checkpoint format, the Q/DQ ONNX export and the verifier."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from harness.artifacts.checkpoint.describe import describe_checkpoint
from harness.artifacts.checkpoint.load import load_checkpoint
from harness.artifacts.checkpoint.save import save_checkpoint
from harness.artifacts.checkpoint.storage import MANIFEST_NAME, WEIGHTS_NAME
from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.artifacts.onnx.verify import OnnxInterface, PrecisionLimits, verify_onnx
from harness.backends.onnxruntime import relative_difference
from harness.errors import CheckpointError
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec
from reference_methods.simulator.calibration import (
    HISTOGRAM_BINS,
    ActivationCalibration,
    RangeObserver,
)
from reference_methods.simulator.quantizer import (
    asymmetric_scale_zero_point,
    dynamic_fake_quantize_asymmetric,
    fake_quantize,
    fake_quantize_asymmetric,
    symmetric_scale,
)
from reference_methods.simulator.scheme import QuantConfig, quantize


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the grids ---------------------------------------------------------------------------------


def _onnx_qdq(x: np.ndarray, scale: float, zero: int) -> np.ndarray:
    """ONNX Runtime's QuantizeLinear → DequantizeLinear (uint8) of x: the reference."""
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [
            numpy_helper.from_array(np.array(scale, np.float32), "s"),
            numpy_helper.from_array(np.array(zero, np.uint8), "z"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("shift", [0.0, -0.3, 2.0])  # ReLU-like, ELU-like, all positive
def test_asymmetric_grid_equals_onnx_quantize_dequantize_linear(shift):
    x = torch.randn(4096, generator=_seeded(0)).relu() + shift
    x[:7] = torch.tensor([0.0, -1e3, 1e3, 0.5, -0.5, 1e-9, float(x.max())])  # saturation, ties
    scale, zero = asymmetric_scale_zero_point(x[7:].min(), x[7:].max(), 8)
    ours = fake_quantize_asymmetric(x, scale, zero, 8)
    reference = _onnx_qdq(x.numpy(), float(scale), int(zero))
    np.testing.assert_array_equal(ours.numpy(), reference)
    assert ours[0] == 0.0  # zero stays exact: the range always holds it


def test_asymmetric_grid_spends_every_level_on_a_one_signed_input_where_symmetric_spends_half():
    x = torch.randn(1 << 16, generator=_seeded(1)).relu()  # a ReLU output: never negative
    symmetric = fake_quantize(x, symmetric_scale(x.abs().max(), 4), 4)
    asymmetric = dynamic_fake_quantize_asymmetric(x, (), 4)
    assert len(symmetric.unique()) == 8 and len(asymmetric.unique()) == 16
    error = {
        name: float((q - x).pow(2).mean()) for name, q in [("sym", symmetric), ("asym", asymmetric)]
    }
    assert error["asym"] < 0.3 * error["sym"]


def test_a_negative_plateau_survives_the_asymmetric_4_bit_grid_and_rounds_to_0_on_the_symmetric():
    # GELU outputs: a plateau at its minimum (-0.17) and a few large positive values
    pre = torch.cat([torch.full((990,), -0.75), torch.linspace(0.0, 3.0, 10)])
    x = F.gelu(pre)
    symmetric = fake_quantize(x, symmetric_scale(x.abs().max(), 4), 4)
    asymmetric = dynamic_fake_quantize_asymmetric(x, (), 4)
    assert torch.all(symmetric[:990] == 0)
    assert torch.all(asymmetric[:990] < 0)
    assert float((asymmetric[:990] - x[:990]).abs().max()) < 0.5 * float(x[:990].abs().max())


# --- calibration ---------------------------------------------------------------------------------


def _calibrated(observer: RangeObserver, batches: list[torch.Tensor], bits: int = 8):
    for batch in batches:
        observer.observe(batch)
    if observer.needs_histogram:
        observer.start_histogram()
        for batch in batches:
            observer.observe(batch)
    return observer.range(bits)


def test_max_calibration_is_the_observed_extremes():
    batches = [torch.randn(2, 3, 4, 4, 4, generator=_seeded(s)) for s in range(3)]
    data = torch.cat(batches)
    low, high = _calibrated(RangeObserver(symmetric=False, channel_axis=-4), batches)
    torch.testing.assert_close(low, data.transpose(0, 1).reshape(3, -1).min(1).values)
    torch.testing.assert_close(high, data.transpose(0, 1).reshape(3, -1).max(1).values)
    _, absmax = _calibrated(RangeObserver(symmetric=True, channel_axis=None), batches)
    torch.testing.assert_close(absmax, data.abs().max().reshape(1))


@pytest.mark.parametrize("symmetric", [True, False])
def test_percentile_calibration_equals_numpy_percentiles_within_a_histogram_bin(symmetric):
    batches = [torch.randn(1, 1, 16, 16, 16, generator=_seeded(s)) * 2 + 0.5 for s in range(4)]
    batches[0][0, 0, 0, 0, 0] = 400.0  # an outlier that max calibration would follow
    observer = RangeObserver(
        symmetric=symmetric, channel_axis=None, calibration="percentile", percentile=99.9
    )
    low, high = _calibrated(observer, batches)
    values = torch.cat([b.reshape(-1) for b in batches]).numpy()
    if symmetric:
        expected_low, expected_high = (
            -np.percentile(np.abs(values), 99.9),
            np.percentile(np.abs(values), 99.9),
        )
        width = float(np.abs(values).max()) / HISTOGRAM_BINS
    else:
        expected_low, expected_high = np.percentile(values, [0.1, 99.9])
        width = float(values.max() - values.min()) / HISTOGRAM_BINS
    assert float(high) == pytest.approx(expected_high, abs=width)
    assert float(low) == pytest.approx(expected_low, abs=width)
    assert float(high) < 20.0  # the outlier is clipped


@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_calibration_clips_outliers_and_beats_max_on_the_calibration_data(symmetric):
    x = torch.randn(1, 1, 32, 32, 32, generator=_seeded(5))
    x[0, 0, :2, 0, 0] = torch.tensor([60.0, -45.0])
    bits = 4
    mse = _calibrated(
        RangeObserver(symmetric=symmetric, channel_axis=None, calibration="mse"), [x], bits
    )
    full = _calibrated(RangeObserver(symmetric=symmetric, channel_axis=None), [x], bits)
    assert float(mse[1]) < 0.5 * float(full[1])

    def error(low: torch.Tensor, high: torch.Tensor) -> float:
        if symmetric:
            q = fake_quantize(x, symmetric_scale(high, bits), bits)
        else:
            q = fake_quantize_asymmetric(x, *asymmetric_scale_zero_point(low, high, bits), bits)
        return float((q - x).pow(2).mean())

    assert error(*mse) < error(*full)


def test_schemes_name_the_activation_grid_and_calibration_and_round_trip():
    for name in ("w8a8-per-tensor", "w8a8-per-tensor-asym", "w4a4-per-channel-asym-mse",
                 "w8a8-adaptive-p99.9", "w4a4-per-channel-g32-asym-p99.99",
                 "w8a8-per-tensor-asym-dynamic"):  # fmt: skip
        config = QuantConfig.from_scheme(name)
        assert config.name == name
    config = QuantConfig.from_scheme("w4a4-per-channel-asym-p99.9")
    assert config.activation_quantizer == "asymmetric"
    assert config.activation_calibration is ActivationCalibration.PERCENTILE
    assert config.activation_percentile == 99.9
    default = QuantConfig.from_scheme("w4a4-per-channel")
    assert (default.activation_quantizer, default.activation_calibration) == ("symmetric", "max")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"activation_bits": None, "activation_quantizer": "asymmetric"},
            "no activation quantizer",
        ),
        ({"activation_quantizer": "unsigned"}, "activation_quantizer must be one of"),
        ({"activation_calibration": "entropy"}, "unknown activation_calibration 'entropy'"),
        ({"activation_scales": "dynamic", "activation_calibration": "mse"}, "static activation"),
        ({"activation_calibration": "percentile", "activation_percentile": 30}, r"\(50, 100\]"),
    ],
)
def test_bad_activation_quantizer_settings_are_refused(kwargs, message):
    settings = {"weight_bits": 8, "activation_bits": 8, "granularity": "per-tensor"} | kwargs
    with pytest.raises(ValueError, match=message):
        QuantConfig(**settings)


# --- the simulator ----------------------------------------------------------------------------


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 1), nn.ELU(), nn.Conv3d(4, 2, 3)
    ).eval()


def test_static_asymmetric_layers_quantize_their_input_on_the_calibrated_zero_point_grid():
    model = _model()
    batches = [torch.randn(1, 2, 6, 6, 6, generator=_seeded(s)) for s in range(2)]
    quantized = quantize(model, QuantConfig.from_scheme("w8a8-per-channel-asym"), batches)
    layer = quantized[2]  # reads a ReLU output
    assert layer.spec.activation_zero_point and layer.act_zero_point.shape == (4, 1, 1, 1)
    assert torch.all(layer.act_zero_point == 0)  # a ReLU output has no negative range
    with torch.no_grad():
        hidden = model[1](model[0](batches[0]))
        expected = F.conv3d(
            fake_quantize_asymmetric(hidden, layer.act_scale, layer.act_zero_point, 8),
            layer.dequantized_weight(),
            layer.bias,
        )
        got = layer(hidden)
    torch.testing.assert_close(got, expected)
    zeros = quantized[4].act_zero_point  # ELU outputs: two-signed channels sit between the ends
    assert bool(((zeros > 0) & (zeros < 255)).any())
    assert "a8 asymmetric per-channel static" in repr(layer)


def test_dynamic_asymmetric_per_voxel_scales_come_from_each_input():
    model = _model()
    batches = [torch.randn(1, 2, 6, 6, 6, generator=_seeded(4))]
    quantized = quantize(model, QuantConfig.from_scheme("w8a8-adaptive-asym"), batches)
    pointwise = quantized[2]
    assert pointwise.act_scale is None and pointwise.spec.activation_zero_point
    x = torch.randn(1, 4, 3, 3, 3, generator=_seeded(3))
    with torch.no_grad():
        expected = F.conv3d(
            dynamic_fake_quantize_asymmetric(x, (0, 2, 3, 4), 8),
            pointwise.dequantized_weight(),
            pointwise.bias,
        )
        torch.testing.assert_close(pointwise(x), expected)


# --- checkpoint, export, verifier on the tiny track ----------------------------------------------


@pytest.fixture(scope="module")
def track(tiny_track) -> LoadedTrack:
    dataset, model_dir = tiny_track
    return LoadedTrack.open(TrackSpec(model_dir=model_dir, dataset_dir=dataset))


def test_checkpoint_round_trips_asymmetric_activations_bit_exactly(track, tmp_path):
    config = QuantConfig.from_scheme("w4a4-per-channel-asym-mse")
    model = quantize(track.model, config, track.calibration)
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    manifest = json.loads((ckpt / MANIFEST_NAME).read_text())
    assert all(entry["activation_zero_point"] for entry in manifest["layers"].values())
    loaded = load_checkpoint(ckpt, track.model)
    batch = track.calibration[0]
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    described = describe_checkpoint(ckpt)
    assert described["activation_quantizers"] == ["asymmetric"]
    assert described["activation_bits"] == 4
    symmetric = save_checkpoint(
        quantize(track.model, QuantConfig.from_scheme("w4a4-per-channel"), track.calibration),
        tmp_path / "sym",
    )
    assert describe_checkpoint(symmetric)["activation_quantizers"] == ["symmetric"]


def _rewrite(ckpt, tmp_path, change) -> object:
    from safetensors.torch import save_file

    from harness.artifacts.checkpoint.storage import read_checkpoint

    out = tmp_path / "bad"
    out.mkdir(exist_ok=True)
    manifest = json.loads((ckpt / MANIFEST_NAME).read_text())
    tensors = dict(read_checkpoint(ckpt).tensors)  # decoded: written back unpacked
    change(manifest, tensors)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    save_file(tensors, out / WEIGHTS_NAME)
    return out


def test_checkpoints_with_a_missing_or_out_of_range_activation_zero_point_are_refused(
    track, tmp_path
):
    model = quantize(
        track.model, QuantConfig.from_scheme("w4a4-per-tensor-asym"), track.calibration
    )
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    name = next(iter(json.loads((ckpt / MANIFEST_NAME).read_text())["layers"]))

    def too_large(manifest, tensors):
        tensors[f"{name}.act_zero_point"] = torch.full_like(tensors[f"{name}.act_zero_point"], 16)

    def undeclared(manifest, tensors):
        del manifest["layers"][name]["activation_zero_point"]

    def missing(manifest, tensors):
        del tensors[f"{name}.act_zero_point"]

    for change, message in [
        (too_large, r"act_zero_point must lie in \[0, 15\] for its 4-bit asymmetric"),
        (undeclared, "does not declare static asymmetric activations but holds act_zero_point"),
        (missing, "declares static asymmetric activations but holds no act_zero_point"),
    ]:
        bad = _rewrite(ckpt, tmp_path, change)
        with pytest.raises(CheckpointError, match=message):
            describe_checkpoint(bad)
        with pytest.raises(CheckpointError):
            load_checkpoint(bad, track.model)


def test_onnx_export_carries_the_asymmetric_zero_points_and_the_verifier_reports_them(
    track, tmp_path
):
    model = int8_model(track.model, track.calibration, activation_quantizer="asymmetric")
    path = export_qdq(model, track.model_spec, track.calibration, tmp_path / "asym.onnx")
    graph = onnx.load(str(path)).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for name, layer in model.named_modules():
        if getattr(layer, "act_zero_point", None) is not None:
            zero = initializers[f"{name}.input_zero_point"]
            assert zero.dtype == np.uint8 and int(zero) == int(layer.act_zero_point.reshape(()))
    assert any(int(initializers[k]) != 128 for k in initializers if k.endswith("input_zero_point"))
    # the first conv reads the image, scaled to [0, 1]: its grid starts at zero
    assert int(initializers["model.0.conv.unit0.conv.input_zero_point"]) == 0
    report = verify_onnx(path, OnnxInterface.for_model(track.model_spec), PrecisionLimits(8, 8))
    assert report["activation_quantizers"] == ["asymmetric"]
    assert report["activation_bits"] == 8
    symmetric = export_qdq(
        int8_model(track.model, track.calibration),
        track.model_spec,
        track.calibration,
        tmp_path / "sym.onnx",
    )
    interface = OnnxInterface.for_model(track.model_spec)
    assert verify_onnx(symmetric, interface, PrecisionLimits(8, 8))["activation_quantizers"] == [
        "symmetric"
    ]
    # ONNX Runtime runs the asymmetric graph as the simulator does, up to the output requantizer
    assert relative_difference(model, path, track.calibration[0]) < 0.05


def test_tracks_that_quantize_activations_get_an_rtn_baseline_with_asymmetric_activations(
    tmp_path,
):
    from harness.entry.baseline import baselines_for

    def schemes(**limits) -> list[str]:
        spec = TrackSpec(model_dir=tmp_path, dataset_dir=tmp_path, **limits)
        return [b.scheme for b in baselines_for(spec) if b.method == "rtn"]

    assert schemes(weight_bits=8, activation_bits=8) == [
        "w8a8-per-tensor", "w8a8-per-channel", "w8a8-adaptive", "w8a8-per-tensor-asym",
        "w8a8-per-tensor-p99.99", "w8a8-per-tensor-mse",  # the activation-calibration rows
    ]  # fmt: skip
    assert "w4a4-per-tensor-asym" in schemes(weight_bits=4, activation_bits=4)
    assert not any(s.endswith("-asym") for s in schemes(weight_bits=4))  # weight-only
    assert not any(
        s.endswith("-asym")
        for s in schemes(weight_bits=4, activation_bits=4, granularities=("per-channel",))
    )

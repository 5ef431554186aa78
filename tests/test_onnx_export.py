"""ONNX export: the FP32 graph equals PyTorch within the stated tolerance; the Q/DQ graph carries
the simulated model's own integer codes, scales and quantizers (none else: an extra one is
reported), and ORT runs its requantized convolutions as QLinearConv."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from harness.artifacts.onnx.agreement import (
    SIMULATION_TOLERANCE,
    check_simulation_agreement,
    simulation_agreement,
)
from harness.artifacts.onnx.export import (
    FP32_TOLERANCE,
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    ExportError,
    export_fp32,
)
from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.placement import ORT_PLACEMENT
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.artifacts.onnx.qdq_graph import insert_qdq, sorted_graph
from harness.artifacts.onnx.verify import OnnxInterface, measure_onnx
from harness.backends.onnxruntime import kernel_report, relative_difference
from harness.onnxruntime_session import OrtNetwork, create_session
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec
from reference_methods.simulator.scheme import QuantConfig, quantize, quantized_layers


@pytest.fixture(scope="module")
def track(tiny_track) -> LoadedTrack:
    dataset, model_dir = tiny_track
    return LoadedTrack.open(TrackSpec(model_dir=model_dir, dataset_dir=dataset))


@pytest.fixture(scope="module")
def fp32_onnx(track, tmp_path_factory):
    return export_fp32(track.model, track.model_spec, tmp_path_factory.mktemp("x") / "fp32.onnx")


@pytest.fixture(scope="module")
def quantized(track):
    return int8_model(track.model, track.calibration)


@pytest.fixture(scope="module")
def int8_onnx(track, quantized, tmp_path_factory):
    out = tmp_path_factory.mktemp("x") / "int8.onnx"
    return export_qdq(quantized, track.model_spec, track.calibration, out)


def test_fp32_export_is_checked_opset_18_with_the_tracks_roi_and_a_dynamic_batch(fp32_onnx, track):
    model = onnx.load(str(fp32_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == OPSET >= 17
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == INPUT_NAME and model.graph.output[0].name == OUTPUT_NAME
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [1, *track.model_spec.sliding_window.roi_size]


def test_fp32_export_equals_pytorch_within_tolerance(fp32_onnx, track):
    torch.manual_seed(3)
    batch = torch.rand(3, 1, *track.model_spec.sliding_window.roi_size)  # any batch size
    assert relative_difference(track.model, fp32_onnx, batch) <= FP32_TOLERANCE
    assert relative_difference(track.model, fp32_onnx, track.calibration[0]) <= FP32_TOLERANCE


def test_qdq_export_carries_the_checkpoints_codes_and_scales(int8_onnx, quantized):
    model = onnx.load(str(int8_onnx))
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, layer in quantized_layers(quantized).items():
        codes = initializers[f"{name}.weight_quantized"]
        assert codes.dtype == np.int8
        np.testing.assert_array_equal(codes, layer.weight_codes.numpy())
        np.testing.assert_array_equal(
            initializers[f"{name}.weight_scale"], layer.weight_scale.numpy().reshape(-1)
        )
        assert initializers[f"{name}.input_scale"] == pytest.approx(float(layer.act_scale))
    assert not any(t.data_type == onnx.TensorProto.FLOAT and t.name.endswith(".weight")
                   for t in model.graph.initializer)  # fmt: skip


def test_qdq_export_computes_the_simulation(int8_onnx, quantized, track):
    batch = track.calibration[0]
    assert simulation_agreement(quantized, int8_onnx, batch).agrees
    with torch.no_grad():
        simulated = quantized(batch)
    ort_out = OrtNetwork(create_session(int8_onnx))(batch)
    relative = (ort_out - simulated).abs().mean() / simulated.abs().mean()
    assert relative <= SIMULATION_TOLERANCE
    agreement = (ort_out.argmax(1) == simulated.argmax(1)).float().mean()
    assert agreement > 0.99


def test_an_output_qdq_added_by_hand_is_reported_as_diverging(track, tmp_path):
    model = int8_model(track.model, track.calibration, requantize_outputs=False)
    path = export_qdq(model, track.model_spec, track.calibration, tmp_path / "plain.onnx")
    proto = onnx.load(str(path))
    first = next(n for n in proto.graph.node if n.op_type == "Conv")
    insert_qdq(proto.graph, first, None, "by_hand.output", 0.05, ORT_PLACEMENT)
    onnx.save(sorted_graph(proto), tmp_path / "by_hand.onnx")
    with pytest.raises(ExportError, match=r"tensor '.*' \(made by Conv node .*\) is quantized "
                       r"by 'by_hand.output_quantize', a quantizer the simulated model does "
                       r"not have"):  # fmt: skip
        check_simulation_agreement(model, tmp_path / "by_hand.onnx", track.calibration[0])
    other = int8_model(track.model, track.calibration)  # requantized outputs: not this file
    agreement = simulation_agreement(other, path, track.calibration[0])
    assert (
        "simulated quantizer" in agreement.first_divergence
        and "missing" in agreement.first_divergence
    )


def _kernels(path, spec):
    return kernel_report(measure_onnx(path, OnnxInterface.for_model(spec)))


def test_onnxruntime_fuses_every_requantized_conv_into_qlinearconv(int8_onnx, track):
    report = _kernels(int8_onnx, track.model_spec)
    convs = sum(1 for layer in report["layers"] if layer["op"] == "Conv")
    assert report["integer_ops"].get("QLinearConv") == convs > 0
    assert all(layer["integer"] for layer in report["layers"] if layer["op"] == "Conv")
    assert 0 < report["int8_mac_fraction"] < 1  # ConvTranspose stays float in ORT 1.32
    assert "ConvTranspose" in report["float_weighted_ops"]


def test_fp32_graph_has_no_integer_kernels(fp32_onnx, track):
    report = _kernels(fp32_onnx, track.model_spec)
    assert report["integer_ops"] == {} and report["int8_mac_fraction"] == 0.0


def test_export_refuses_what_onnx_qdq_cannot_express(track, tmp_path):
    per_channel_acts = quantize(track.model, QuantConfig(8, 8, "per-channel"), track.calibration)
    with pytest.raises(ExportError, match=r"layer '.*' has 8-bit per-channel static activations"):
        export_qdq(per_channel_acts, track.model_spec, track.calibration, tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="no quantized layers"):
        export_qdq(track.model, track.model_spec, track.calibration, tmp_path / "y.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_hybrid_linear_layers_export_as_transposed_int8_codes_and_run_as_qlinearmatmul(tmp_path):
    from harness.models.reference import ModelSpec
    from tests.conftest import TINY_UNET_SPEC

    data = TINY_UNET_SPEC | {
        "name": "tiny-unetr",
        "architecture": "UNETR",
        "kwargs": {
            "in_channels": 1,
            "out_channels": 6,
            "img_size": [16, 16, 16],
            "feature_size": 4,
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_heads": 2,
            "proj_type": "conv",
        },
    }
    spec = ModelSpec.from_dict(data)
    torch.manual_seed(0)
    model = spec.build().eval()
    calibration = [torch.rand(2, 1, 16, 16, 16)]
    quantized = int8_model(model, calibration)
    path = export_qdq(quantized, spec, calibration, tmp_path / "unetr.onnx")
    graph = onnx.load(str(path)).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    linear = "vit.blocks.0.mlp.linear1"
    codes = quantized.get_submodule(linear).weight_codes.numpy()
    np.testing.assert_array_equal(initializers[f"{linear}.weight_quantized"], codes.T)
    report = _kernels(path, spec)
    assert report["integer_ops"].get("QLinearMatMul") == 12 * 4  # blocks x (qkv, proj, 2 mlp)
    assert relative_difference(quantized, path, calibration[0]) < 0.1

"""Q/DQ placements: ONNX Runtime's stores activation codes as uint8 with zero-point 128 and
requantizes each layer's output (its integer kernels need it; the INT8 scheme for it models it);
OpenVINO's stores the same codes as int8 with zero-point 0 (uint8 with zero-point 0 after a
ReLU) and quantizes layer inputs only. Neither quantizes a tensor the simulation does not.
Storage alone does not change the integers: the two forms give the same outputs."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.placement import (
    OPENVINO_PLACEMENT,
    ORT_PLACEMENT,
    QdqPlacement,
)
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.errors import HarnessError
from harness.models.reference import ModelSpec
from harness.onnxruntime_session import create_session
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec
from reference_methods.simulator.scheme import quantized_layers

TINY_SEGRESNET = {
    "version": 1,
    "name": "tiny-segresnet",
    "architecture": "SegResNet",
    "kwargs": {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "init_filters": 8,
        "blocks_down": [1, 1],
        "blocks_up": [1],
    },
    "labels": {"0": "background", "1": "a", "2": "b"},
    "preprocessing": {
        "orientation": "RAS",
        "spacing": [12.0, 12.0, 16.0],
        "intensity_window": [-200.0, 600.0],
    },
    "sliding_window": {"roi_size": [16, 16, 16], "overlap": 0.0, "sw_batch_size": 1},
}


@pytest.fixture(scope="module")
def track(tiny_track) -> LoadedTrack:
    dataset, model_dir = tiny_track
    return LoadedTrack.open(TrackSpec(model_dir=model_dir, dataset_dir=dataset))


def _activation_quantizers(path) -> list[tuple[str, np.ndarray, str]]:
    """(producer op of the quantized tensor, zero-point, quantizer name) per activation
    QuantizeLinear."""
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    found = []
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers:
            source = producer.get(node.input[0])
            found.append((source.op_type if source else "input", initializers[node.input[2]],
                          node.name))  # fmt: skip
    return found


def _export(model, spec, calibration, path, placement):
    model = int8_model(model, calibration, requantize_outputs=placement.requantize_outputs)
    return export_qdq(model, spec, calibration, path, placement=placement)


def test_ort_placement_stores_uint8_with_zero_point_128(track, tmp_path):
    path = _export(track.model, track.model_spec, track.calibration, tmp_path / "o.onnx",
                   ORT_PLACEMENT)  # fmt: skip
    zero_points = [zp for _, zp, _ in _activation_quantizers(path)]
    assert zero_points and all(zp.dtype == np.uint8 and zp == 128 for zp in zero_points)


def test_openvino_placement_quantizes_layer_inputs_only(track, tmp_path):
    path = _export(track.model, track.model_spec, track.calibration, tmp_path / "v.onnx",
                   OPENVINO_PLACEMENT)  # fmt: skip
    quantizers = _activation_quantizers(path)
    assert all(zp.dtype == np.int8 and zp == 0 for _, zp, _ in quantizers)  # PReLU: signed
    layers = quantized_layers(int8_model(track.model, track.calibration))
    assert sorted(name for _, _, name in quantizers) == sorted(
        f"{n}.input_quantize" for n in layers
    )
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert metadata["medquant.placement"] == OPENVINO_PLACEMENT.name
    assert metadata["medquant.output_bits"] == "none"


def test_ort_placement_requantizes_every_layer_output_as_the_simulation_does(track, tmp_path):
    path = _export(track.model, track.model_spec, track.calibration, tmp_path / "o.onnx",
                   ORT_PLACEMENT)  # fmt: skip
    names = sorted(name for _, _, name in _activation_quantizers(path))
    layers = quantized_layers(int8_model(track.model, track.calibration))
    assert all(layer.output_scale is not None for layer in layers.values())
    expected = [f"{n}.{end}_quantize" for n in layers for end in ("input", "output")]
    assert names == sorted(expected)


def test_storage_alone_leaves_the_integers_and_the_outputs_unchanged(track, tmp_path):
    signed = QdqPlacement("signed-only", "int8", requantize_outputs=True)
    args = (track.model, track.model_spec, track.calibration)
    unsigned_path = _export(*args, tmp_path / "u.onnx", ORT_PLACEMENT)
    signed_path = _export(*args, tmp_path / "s.onnx", signed)
    batch = track.calibration[0].numpy()
    outputs = [
        create_session(p).run(None, {"image": batch})[0] for p in (unsigned_path, signed_path)
    ]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=0, atol=1e-5)


def test_inputs_after_a_relu_are_stored_unsigned_for_openvino(tmp_path):
    spec = ModelSpec.from_dict(TINY_SEGRESNET)
    torch.manual_seed(0)
    model = spec.build().eval()
    calibration = [torch.rand(1, 1, 16, 16, 16) for _ in range(2)]
    path = _export(model, spec, calibration, tmp_path / "seg.onnx", OPENVINO_PLACEMENT)
    quantizers = _activation_quantizers(path)
    after_relu = [zp for op, zp, _ in quantizers if op == "Relu"]
    others = [zp for op, zp, _ in quantizers if op != "Relu"]
    assert after_relu and all(zp.dtype == np.uint8 and zp == 0 for zp in after_relu)
    assert others and all(zp.dtype == np.int8 and zp == 0 for zp in others)


def test_an_unknown_storage_type_is_refused():
    with pytest.raises(HarnessError, match="activation dtype"):
        QdqPlacement("bad", "int16", False)

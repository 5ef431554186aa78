"""The deployed INT8 file scores what the simulator predicts: for every shipped demo model and
INT8 scheme (per-tensor / per-channel weights, symmetric / asymmetric activations), the Q/DQ
export's mean DSC on the demo test split, run by ONNX Runtime, is the simulated model's within
half a DSC point; an export with an output quantizer the simulation lacks is refused."""

import onnx
import pytest
import torch

from harness.artifacts.onnx.agreement import check_simulation_agreement
from harness.artifacts.onnx.export import ExportError
from harness.artifacts.onnx.graph import WEIGHTED_OPS
from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.placement import OPENVINO_PLACEMENT, ORT_PLACEMENT
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.artifacts.onnx.qdq_graph import insert_qdq, sorted_graph
from harness.demo import shipped_models
from harness.onnxruntime_session import OrtNetwork, create_session
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec
from reference_methods.simulator.scheme import quantized_layers

DSC_POINTS = 0.005  # half a DSC point
DEMO_MODELS = ("unet", "segresnet", "unetr")
SCHEMES = [
    ("per-tensor", "symmetric"),
    ("per-tensor", "asymmetric"),
    ("per-channel", "symmetric"),
    ("per-channel", "asymmetric"),
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_tracks(demo_dataset) -> dict[str, LoadedTrack]:
    models = shipped_models()
    return {
        name: LoadedTrack.open(
            TrackSpec(model_dir=models[name], dataset_dir=demo_dataset, backend="onnxruntime-cpu")
        )
        for name in DEMO_MODELS
    }


def _mean_dsc(run) -> float:
    return sum(case.mean_dsc for case in run.cases) / len(run.cases)


@pytest.mark.parametrize("name", DEMO_MODELS)
@pytest.mark.parametrize(("weights", "activations"), SCHEMES)
def test_the_exported_int8_file_scores_the_simulated_dsc(
    demo_tracks, name, weights, activations, tmp_path
):
    track = demo_tracks[name]
    model = int8_model(
        track.model,
        track.calibration,
        activation_quantizer=activations,
        weight_granularity=weights,
        requantize_outputs=ORT_PLACEMENT.requantize_outputs,
    )
    path = export_qdq(model, track.model_spec, track.calibration, tmp_path / "int8.onnx")
    simulated = _mean_dsc(track.run(model, progress=False, desc="simulated"))
    exported = _mean_dsc(track.run(OrtNetwork(create_session(path)), False, "exported"))
    assert abs(exported - simulated) <= DSC_POINTS, (simulated, exported)


def _output_maxima(model, calibration) -> dict[str, float]:
    maxima, hooks = {}, []
    for name, layer in quantized_layers(model).items():

        def record(_module, _inputs, output, name=name) -> None:
            maxima[name] = max(maxima.get(name, 0.0), float(output.abs().max()))

        hooks.append(layer.register_forward_hook(record))
    with torch.no_grad():
        for batch in calibration:
            model(batch)
    for hook in hooks:
        hook.remove()
    return maxima


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_an_export_with_output_qdq_added_by_hand_is_reported_as_diverging(
    demo_tracks, name, tmp_path
):
    """The earlier export's extra quantizers (each layer's output at max|y| / 127), written by
    hand into an export of the scheme that does not requantize outputs (OpenVINO's placement)."""
    track = demo_tracks[name]
    model = int8_model(track.model, track.calibration, requantize_outputs=False)
    path = export_qdq(
        model,
        track.model_spec,
        track.calibration,
        tmp_path / "v.onnx",
        placement=OPENVINO_PLACEMENT,
    )
    proto = onnx.load(str(path))
    for layer, largest in _output_maxima(model, track.calibration).items():
        compute = next(
            node
            for node in proto.graph.node
            if node.op_type in WEIGHTED_OPS and f"{layer}.input_dequantized" in node.input
        )
        insert_qdq(proto.graph, compute, None, f"{layer}.by_hand", largest / 127, ORT_PLACEMENT)
    onnx.save(sorted_graph(proto), tmp_path / "by_hand.onnx")
    with pytest.raises(ExportError, match=r"is quantized by '.*\.by_hand_quantize', a quantizer "
                       r"the simulated model does not have"):  # fmt: skip
        check_simulation_agreement(model, tmp_path / "by_hand.onnx", track.calibration[0])

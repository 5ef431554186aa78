"""The ONNX verifier: malformed or dishonest files are rejected with a specific message naming the
offending node or tensor; honest files (harness export, ORT quantize_static, ModelOpt) pass."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.artifacts.onnx.verify import (
    OnnxInterface,
    OnnxVerificationError,
    PrecisionLimits,
    verify_onnx,
)
from harness.errors import SubmissionError
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec
from reference_methods.simulator.scheme import QuantConfig, quantize

W8A8 = PrecisionLimits(weight_bits=8, activation_bits=8)


@pytest.fixture(scope="module")
def track(tiny_track) -> LoadedTrack:
    dataset, model_dir = tiny_track
    return LoadedTrack.open(TrackSpec(model_dir=model_dir, dataset_dir=dataset))


@pytest.fixture(scope="module")
def interface(track) -> OnnxInterface:
    return OnnxInterface.for_model(track.model_spec)


@pytest.fixture(scope="module")
def int8_onnx(track, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "int8.onnx"
    return export_qdq(
        int8_model(track.model, track.calibration), track.model_spec, track.calibration, out
    )


def _node(model: onnx.ModelProto, predicate: Callable[[onnx.NodeProto], bool]) -> onnx.NodeProto:
    return next(n for n in model.graph.node if predicate(n))


def _first_conv(model: onnx.ModelProto) -> onnx.NodeProto:
    return _node(model, lambda n: n.op_type == "Conv")


def _initializer(model: onnx.ModelProto, name: str) -> TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _weight_dq(model: onnx.ModelProto, conv: onnx.NodeProto) -> onnx.NodeProto:
    return _node(model, lambda n: n.op_type == "DequantizeLinear" and conv.input[1] in n.output)


def _truncated(data: bytes, model: onnx.ModelProto) -> bytes:
    return data[: len(data) // 2]


def _external_data(data: bytes, model: onnx.ModelProto) -> bytes:
    tensor = _initializer(model, _weight_dq(model, _first_conv(model)).input[0])
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../etc/weights.bin")
    return model.SerializeToString()


def _custom_domain(data: bytes, model: onnx.ModelProto) -> bytes:
    node = _node(model, lambda n: n.op_type == "PRelu")
    node.domain, node.op_type = "evil.ops", "RunShell"
    model.opset_import.add(domain="evil.ops", version=1)
    return model.SerializeToString()


def _disallowed_op(data: bytes, model: onnx.ModelProto) -> bytes:
    _node(model, lambda n: n.op_type == "PRelu").op_type = "RandomNormalLike"
    return model.SerializeToString()


def _control_flow(data: bytes, model: onnx.ModelProto) -> bytes:
    branch = helper.make_graph([], "branch", [], [])
    node = _node(model, lambda n: n.op_type == "PRelu")
    node.op_type = "If"
    node.attribute.append(helper.make_attribute("then_branch", branch))
    return model.SerializeToString()


def _local_function(data: bytes, model: onnx.ModelProto) -> bytes:
    model.functions.append(
        helper.make_function("evil.ops", "Hidden", ["x"], ["y"], [], [helper.make_opsetid("", 18)])
    )
    return model.SerializeToString()


def _float_weights(data: bytes, model: onnx.ModelProto) -> bytes:
    """The biggest conv's weight as a float initializer, while the metadata still says 8-bit."""
    conv = _node(model, lambda n: n.op_type == "Conv" and "model.2" in n.input[1])
    dq = _weight_dq(model, conv)
    codes = numpy_helper.to_array(_initializer(model, dq.input[0])).astype(np.float32)
    scale = numpy_helper.to_array(_initializer(model, dq.input[1])).reshape(-1, 1, 1, 1, 1)
    model.graph.node.remove(dq)
    model.graph.initializer.append(numpy_helper.from_array(codes * scale, conv.input[1]))
    return model.SerializeToString()


def _claims_int4(data: bytes, model: onnx.ModelProto) -> bytes:
    for prop in model.metadata_props:
        if prop.key == "medquant.weight_bits":
            prop.value = "4"
    return model.SerializeToString()


def _input_renamed(data: bytes, model: onnx.ModelProto) -> bytes:
    model.graph.input[0].name = "volume"
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == "image":
                node.input[i] = "volume"
    return model.SerializeToString()


def _input_reshaped(data: bytes, model: onnx.ModelProto) -> bytes:
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 32
    return model.SerializeToString()


def _input_float16(data: bytes, model: onnx.ModelProto) -> bytes:
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    return model.SerializeToString()


def _absurd_dims(data: bytes, model: onnx.ModelProto) -> bytes:
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 10**12
    return model.SerializeToString()


def _initializer_lies(data: bytes, model: onnx.ModelProto) -> bytes:
    tensor = _initializer(model, _weight_dq(model, _first_conv(model)).input[0])
    tensor.dims[0] = tensor.dims[0] * 1000
    return model.SerializeToString()


def _cycle(data: bytes, model: onnx.ModelProto) -> bytes:
    first = _first_conv(model)
    last = model.graph.node[-1]
    first.input[0] = last.output[0]
    return model.SerializeToString()


def _undefined_input(data: bytes, model: onnx.ModelProto) -> bytes:
    _node(model, lambda n: n.op_type == "PRelu").input[0] = "ghost"
    return model.SerializeToString()


def _missing_scale(data: bytes, model: onnx.ModelProto) -> bytes:
    dq = _weight_dq(model, _first_conv(model))
    del dq.input[1:]
    return model.SerializeToString()


def _zero_scale(data: bytes, model: onnx.ModelProto) -> bytes:
    tensor = _initializer(model, _weight_dq(model, _first_conv(model)).input[1])
    values = numpy_helper.to_array(tensor).copy()
    values[0] = 0.0
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return model.SerializeToString()


def _float64_scale(value: float):
    """A weight DequantizeLinear's scale stored as float64 ``value``."""

    def spoil(data: bytes, model: onnx.ModelProto) -> bytes:
        tensor = _initializer(model, _weight_dq(model, _first_conv(model)).input[1])
        values = numpy_helper.to_array(tensor).astype(np.float64)
        values.reshape(-1)[0] = value
        tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
        return model.SerializeToString()

    return spoil


def _computed_weight(data: bytes, model: onnx.ModelProto) -> bytes:
    conv = _first_conv(model)
    doubled = conv.input[1] + "_doubled"
    model.graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    model.graph.node.append(helper.make_node("Mul", [conv.input[1], "two"], [doubled], "scaler"))
    conv.input[1] = doubled
    return _topological(model).SerializeToString()


def _float_activations(data: bytes, model: onnx.ModelProto) -> bytes:
    """The first conv reads the raw image: its input Q/DQ pair is bypassed."""
    _first_conv(model).input[0] = "image"
    return model.SerializeToString()


def _topological(model: onnx.ModelProto) -> onnx.ModelProto:
    nodes = list(model.graph.node)
    ready = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    ordered = []
    while nodes:
        node = next(n for n in nodes if all(i in ready for i in n.input if i))
        ordered.append(node)
        ready.update(node.output)
        nodes.remove(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model


# (case id, file mutation, limits, fragments the message must contain)
REJECTED = [
    ("truncated-protobuf", _truncated, W8A8, ["cannot be parsed", "truncated"]),
    ("external-data", _external_data, W8A8, ["external data file '../../etc/weights.bin'"]),
    ("custom-op-domain", _custom_domain, W8A8, ["custom op evil.ops::RunShell", "node '"]),
    ("disallowed-op", _disallowed_op, W8A8, ["'RandomNormalLike'", "not on the allowed list"]),
    ("control-flow", _control_flow, W8A8, ["(If) holds a subgraph"]),
    ("local-function", _local_function, W8A8, ["model-local function 'Hidden'"]),
    (
        "float-weights-claiming-int8",
        _float_weights,
        W8A8,
        ["weight 'model.2.", "is a float initializer", "at most 8-bit"],
    ),
    (
        "int8-weights-claiming-int4",
        _claims_int4,
        W8A8,
        ["claims 4-bit weights", "carries 8-bit"],
    ),
    (
        "int8-weights-on-w4-track",
        lambda data, model: data,
        PrecisionLimits(weight_bits=4, activation_bits=8),
        ["carries 8-bit codes (int8 in [", "at most 4-bit weights", "Conv node '"],
    ),
    (
        "int8-activations-on-a4-track",
        lambda data, model: data,
        PrecisionLimits(weight_bits=8, activation_bits=4),
        ["QuantizeLinear node '", "quantizes activations to 8 bits (uint8)", "at most 4"],
    ),
    ("wrong-input-name", _input_renamed, W8A8, ["input is named 'volume'", "'image'"]),
    (
        "wrong-input-shape",
        _input_reshaped,
        W8A8,
        ["input 'image' has shape ['batch', 1, 32, 16, 16]", "['N', 1, 16, 16, 16]"],
    ),
    ("wrong-input-type", _input_float16, W8A8, ["input 'image' is float16"]),
    ("absurd-declared-dims", _absurd_dims, W8A8, ["declares dimension 1000000000000 at axis 3"]),
    ("initializer-size-lie", _initializer_lies, W8A8, ["but stores", "bytes"]),
    ("graph-cycle", _cycle, W8A8, ["cycle through node '"]),
    ("undefined-tensor", _undefined_input, W8A8, ["reads tensor 'ghost'"]),
    ("missing-dq-scale", _missing_scale, W8A8, ["DequantizeLinear node '", "no scale input"]),
    ("zero-scale", _zero_scale, W8A8, ["holds zero, negative or non-finite"]),
    # a float64 scale (1e300 is inf in the float32 engines compute in, as 1e-320 is 0: the same
    # refusal) is not a type DequantizeLinear takes
    ("float64-scale-1e300", _float64_scale(1e300), W8A8, ["has unsupported type: tensor(double)"]),
    ("computed-weight", _computed_weight, W8A8, ["produced by Mul node 'scaler'"]),
    ("float-activations-on-a8", _float_activations, W8A8, ["input 'image' is not quantized"]),
    (
        "over-size-limit",
        lambda data, model: data,
        PrecisionLimits(8, 8, max_bytes=10_000),
        ["the limit is 0.0 MiB"],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "limits", "fragments"),
    [case[1:] for case in REJECTED],
    ids=[case[0] for case in REJECTED],
)
def test_verifier_rejects_malformed_or_dishonest_files(
    int8_onnx, interface, tmp_path, mutate, limits, fragments
):
    data = int8_onnx.read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(mutate(data, onnx.load_from_string(data)))
    with pytest.raises(SubmissionError) as error:  # unsafe, malformed or over the limits
        verify_onnx(bad, interface, limits)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_every_rejection_message_is_distinct(int8_onnx, interface, tmp_path):
    data = int8_onnx.read_bytes()
    messages = set()
    for case_id, mutate, limits, _ in REJECTED:
        bad = tmp_path / f"{case_id}.onnx"
        bad.write_bytes(mutate(data, onnx.load_from_string(data)))
        with pytest.raises(SubmissionError) as error:
            verify_onnx(bad, interface, limits)
        messages.add(str(error.value))
    assert len(messages) == len(REJECTED) >= 12


def test_harness_int8_export_verifies_as_w8a8_per_channel(int8_onnx, interface):
    report = verify_onnx(int8_onnx, interface, W8A8)
    assert report["weight_bits"] == 8
    assert report["activation_bits"] == 8
    assert report["granularity"] == "per-channel"
    assert report["quantized_mac_fraction"] == 1.0
    assert report["float_weight_layers"] == []
    assert set(report["ops"]) == {"Conv", "ConvTranspose"}
    assert report["size_bytes"] == int8_onnx.stat().st_size


def test_int8_storage_of_4bit_codes_counts_as_4_bits(track, interface, tmp_path):
    w4 = quantize(
        track.model,
        QuantConfig(weight_bits=4, activation_bits=8, granularity="per-tensor"),
        track.calibration,
    )
    path = export_qdq(w4, track.model_spec, track.calibration, tmp_path / "w4a8.onnx")
    report = verify_onnx(path, interface, PrecisionLimits(weight_bits=4, activation_bits=8))
    assert report["weight_bits"] == 4
    assert report["granularity"] == "per-tensor"
    assert all(layer["weight_dtype"] == "int8" for layer in report["layers"])
    # bits per weight count what is stored: a byte per int8 code, plus the float32 scale and
    # the int8 zero-point of each per-tensor layer
    stored = sum(layer["weights"] * 8 + 32 + 8 for layer in report["layers"])
    assert report["bits_per_weight"] == pytest.approx(stored / report["quantized_weights"])


def test_fp32_graph_passes_only_without_a_weight_limit(track, interface, tmp_path):
    from harness.artifacts.onnx.export import export_fp32

    path = export_fp32(track.model, track.model_spec, tmp_path / "fp32.onnx")
    report = verify_onnx(path, interface, PrecisionLimits())
    assert report["weight_bits"] == 32 and report["weight_quantized_mac_fraction"] == 0.0
    with pytest.raises(SubmissionError, match="float weights cover 100.0% of the weighted"):
        verify_onnx(path, interface, PrecisionLimits(8, None, max_float_mac_fraction=0.5))


def test_ort_quantize_static_upload_is_accepted(track, interface, tmp_path):
    from harness.artifacts.onnx.export import export_fp32

    fp32 = export_fp32(track.model, track.model_spec, tmp_path / "fp32.onnx")
    peer = _ort_static_qdq(track, fp32, tmp_path / "ort_qdq.onnx")
    report = verify_onnx(peer, interface, W8A8)
    assert report["weight_bits"] == 8 and report["activation_bits"] == 8
    assert report["granularity"] == "per-channel"
    assert report["quantized_mac_fraction"] == 1.0


def _ort_static_qdq(track, fp32: Path, out: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    batches = iter([b.numpy() for b in track.calibration])

    class Reader(CalibrationDataReader):
        def get_next(self):
            batch = next(batches, None)
            return None if batch is None else {"image": batch}

    quantize_static(
        str(fp32),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def test_ort_quantize_static_after_its_recommended_pre_processing_is_accepted(
    track, interface, tmp_path
):
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from harness.artifacts.onnx.export import export_fp32

    fp32 = export_fp32(track.model, track.model_spec, tmp_path / "fp32.onnx")
    pre = tmp_path / "pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    peer = _ort_static_qdq(track, pre, tmp_path / "ort_qdq.onnx")
    model = onnx.load(str(peer))
    declared = {entry.domain for entry in model.opset_import}
    used = {node.domain for node in model.graph.node}
    assert "ai.onnx.ml" in declared and used <= {"", "ai.onnx", "com.microsoft"}
    report = verify_onnx(peer, interface, W8A8)
    assert report["weight_bits"] == 8 and report["activation_bits"] == 8
    assert report["quantized_mac_fraction"] == 1.0


def test_a_node_in_an_undeclared_or_foreign_domain_is_still_refused(int8_onnx, interface, tmp_path):
    model = onnx.load(str(int8_onnx))
    model.opset_import.add(domain="ai.onnx.ml", version=5)  # declared and unused: fine
    _node(model, lambda n: n.op_type == "PRelu").domain = "ai.onnx.ml"  # now a node uses it
    bad = tmp_path / "ml.onnx"
    bad.write_bytes(model.SerializeToString())
    with pytest.raises(OnnxVerificationError, match="custom op ai.onnx.ml::PRelu"):
        verify_onnx(bad, interface, W8A8)


def test_fp32_graph_passes_a_32_bit_track_and_float16_limits_refuse_it(track, interface, tmp_path):
    from harness.artifacts.onnx.export import export_fp32
    from harness.artifacts.precision import check_precision

    path = export_fp32(track.model, track.model_spec, tmp_path / "fp32.onnx")
    report = verify_onnx(path, interface, PrecisionLimits(weight_bits=32, activation_bits=32))
    assert report["weight_bits"] == 32 and report["float_weight_layers"]
    check_precision(report, weight_bits=32, activation_bits=32)
    with pytest.raises(SubmissionError, match="is a float initializer.*at most 16-bit"):
        verify_onnx(path, interface, PrecisionLimits(weight_bits=16, activation_bits=16))


def test_int8_weights_on_a_32_bit_activation_track_may_read_float_activations(
    int8_onnx, interface, tmp_path
):
    data = int8_onnx.read_bytes()
    bypassed = tmp_path / "bypassed.onnx"
    bypassed.write_bytes(_float_activations(data, onnx.load_from_string(data)))
    report = verify_onnx(bypassed, interface, PrecisionLimits(weight_bits=8, activation_bits=32))
    assert report["weight_bits"] == 8


def _weights_quantized_at_run_time(data: bytes, model: onnx.ModelProto) -> bytes:
    """Every weight as ModelOpt stores it: a float initializer through QuantizeLinear, then
    DequantizeLinear with the same scale (the codes are recomputed at run time)."""
    for conv in [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]:
        dq = _weight_dq(model, conv)
        codes_init = _initializer(model, dq.input[0])
        codes = numpy_helper.to_array(codes_init).astype(np.float32)
        scale = numpy_helper.to_array(_initializer(model, dq.input[1]))
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        shape = [1] * codes.ndim
        shape[axis] = scale.size
        name = dq.input[0] + "_float"
        model.graph.initializer.append(numpy_helper.from_array(codes * scale.reshape(shape), name))
        quantized = dq.input[0] + "_runtime"
        model.graph.node.append(
            helper.make_node(
                "QuantizeLinear", [name, dq.input[1], dq.input[2]], [quantized], axis=axis
            )
        )
        model.graph.initializer.remove(codes_init)
        dq.input[0] = quantized
    return _topological(model).SerializeToString()


def test_weights_stored_as_float_and_quantized_at_run_time_are_reported_as_such(
    int8_onnx, interface, tmp_path
):
    honest = verify_onnx(int8_onnx, interface, W8A8)
    data = int8_onnx.read_bytes()
    runtime = tmp_path / "runtime.onnx"
    runtime.write_bytes(_weights_quantized_at_run_time(data, onnx.load_from_string(data)))
    report = verify_onnx(runtime, interface, W8A8)
    assert report["weight_bits"] == 8  # the codes the graph computes, against the weight limit
    stored = {layer["weight_storage"] for layer in report["layers"]}
    assert stored == {"float, quantized at run time"}  # ONNX names float32 "float"
    assert report["run_time_quantized_weight_layers"] == [
        layer["node"] for layer in report["layers"]
    ]
    assert {layer["weight_storage"] for layer in honest["layers"]} == {"int8"}
    assert honest["run_time_quantized_weight_layers"] == []
    # stored float32 counts in bits per weight: 32 + the scales, against 8 + the scales
    assert report["bits_per_weight"] == pytest.approx(honest["bits_per_weight"] + 24)

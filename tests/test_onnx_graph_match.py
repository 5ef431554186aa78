"""An ONNX upload must be the reference export node for node once its Q/DQ pairs are removed:
files that add float compute, ignore the network's output, compute a weight from the image or
build a tensor from data-dependent sizes are refused naming their first foreign node, on an open
track as on a closed one; the harness's own INT8 export, ONNX Runtime's ``quantize_static`` file
(Relu-free tiny UNet) and the FP32 export itself match. Each hostile file is the harness's INT8
export of the tiny test UNet with nodes appended, made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from harness.artifacts.onnx.graph import GraphIndex, infer_shapes
from harness.artifacts.onnx.graph_match import ForeignNode, check_graph_match
from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.artifacts.onnx.verify import OnnxVerificationError, verify_for_track, verify_onnx
from harness.errors import SubmissionError
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

BIG_ELEMENTS = 100_000_000
"""The Tile attack's run-time tensor: 100M elements per sample, as reported in issue 24."""


@pytest.fixture(scope="module", params=["closed", "open"])
def track(tiny_track, request) -> LoadedTrack:
    dataset, model_dir = tiny_track
    spec = TrackSpec(
        model_dir=model_dir,
        dataset_dir=dataset,
        backend="onnxruntime-cpu",
        weight_bits=8,
        activation_bits=8,
        division=request.param,
    )
    return LoadedTrack.open(spec)


@pytest.fixture(scope="module")
def int8_onnx(track, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("graph_match") / "int8.onnx"
    model = int8_model(track.torch_model("test"), track.calibration)
    return export_qdq(model, track.model_spec, track.calibration, out)


def _appended(path: Path, nodes: list, initializers: list, out: Path) -> Path:
    """The file at ``path`` with ``nodes`` appended: the old output is renamed ``logits_orig``
    and the last appended node writes the graph output."""
    model = onnx.load(str(path))
    graph = model.graph
    output = graph.output[0].name
    for node in graph.node:
        for position, name in enumerate(node.output):
            if name == output:
                node.output[position] = "logits_orig"
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    onnx.save(model, str(out))
    return out


def _constant(name: str, value) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _einsum_added(classes: int) -> tuple[list, list]:
    weight = np.eye(classes, dtype=np.float32) * 0.5
    nodes = [
        helper.make_node(
            "Einsum", ["logits_orig", "mix"], ["mixed"], "attack_einsum", equation="nc...,ck->nk..."
        ),
        helper.make_node("Add", ["logits_orig", "mixed"], ["logits"], "attack_add"),
    ]
    return nodes, [_constant("mix", weight)]


def _laundered_matmul(roi: int) -> tuple[list, list]:
    """A float MatMul whose weight is W + 0·ReduceMin(image): computed, so not 'weighted'."""
    nodes = [
        helper.make_node("ReduceMin", ["image"], ["low"], "attack_reducemin", keepdims=0),
        helper.make_node("Mul", ["low", "zero"], ["nothing"], "attack_times_zero"),
        helper.make_node("Add", ["w", "nothing"], ["laundered"], "attack_launder"),
        helper.make_node("MatMul", ["logits_orig", "laundered"], ["logits"], "attack_matmul"),
    ]
    weight = np.eye(roi, dtype=np.float32)[::-1].copy()
    return nodes, [_constant("zero", np.float32(0)), _constant("w", weight)]


def _constant_output(shape: list[int]) -> tuple[list, list]:
    """logits = 0 · logits_orig + const: the network's output ignored."""
    nodes = [
        helper.make_node("Mul", ["logits_orig", "zero"], ["nothing"], "attack_times_zero"),
        helper.make_node("Add", ["nothing", "fixed"], ["logits"], "attack_constant"),
    ]
    fixed = np.zeros([1, *shape], np.float32)
    fixed[:, 1] = 10.0
    return nodes, [_constant("zero", np.float32(0)), _constant("fixed", fixed)]


def _gather_nd_added() -> tuple[list, list]:
    """A GatherND at index 2**31 (past the data), reduced, × 0 and added to the logits."""
    nodes = [
        helper.make_node("GatherND", ["logits_orig", "far"], ["picked"], "attack_gathernd"),
        helper.make_node("ReduceSum", ["picked"], ["summed"], "attack_sum", keepdims=1),
        helper.make_node("Mul", ["summed", "zero"], ["nothing"], "attack_times_zero"),
        helper.make_node("Add", ["logits_orig", "nothing"], ["logits"], "attack_add"),
    ]
    far = np.array([[2**31]], dtype=np.int64)
    return nodes, [_constant("far", far), _constant("zero", np.float32(0))]


def _data_dependent_tile(shape: list[int]) -> tuple[list, list]:
    """Tile with repeats computed from the image, then a run-time Reshape: ~100M elements."""
    per_sample = int(np.prod(shape))
    repeats = BIG_ELEMENTS // per_sample
    nodes = [
        helper.make_node("ReduceMax", ["image"], ["high"], "attack_reducemax", keepdims=0),
        helper.make_node("Mul", ["high", "fzero"], ["nothing"], "attack_times_zero"),
        helper.make_node("Add", ["nothing", "count"], ["counted"], "attack_count"),
        helper.make_node("Cast", ["counted"], ["whole"], "attack_cast", to=TensorProto.INT64),
        helper.make_node("Reshape", ["whole", "one"], ["times"], "attack_times"),
        helper.make_node("Concat", ["ones", "times"], ["repeats"], "attack_repeats", axis=0),
        helper.make_node("Tile", ["logits_orig", "repeats"], ["tiled"], "attack_tile"),
        helper.make_node("Reshape", ["tiled", "split"], ["stacked"], "attack_reshape"),
        helper.make_node("ReduceMean", ["stacked", "axis"], ["logits"], "attack_mean", keepdims=0),
    ]
    return nodes, [
        _constant("fzero", np.float32(0)),
        _constant("count", np.float32(repeats)),
        _constant("one", np.array([1], np.int64)),
        _constant("ones", np.ones(len(shape), np.int64)),
        _constant("split", np.array([0, *shape, -1], np.int64)),
        _constant("axis", np.array([-1], np.int64)),
    ]


def _attack(name: str, track: LoadedTrack) -> tuple[list, list]:
    shape = list(track.checks().interface.output_shape)
    return {
        "einsum": lambda: _einsum_added(shape[0]),
        "laundered-matmul": lambda: _laundered_matmul(shape[-1]),
        "constant-output": lambda: _constant_output(shape),
        "gather-nd": _gather_nd_added,
        "data-dependent-tile": lambda: _data_dependent_tile(shape),
    }[name]()


FIRST_FOREIGN = {
    "einsum": "attack_einsum",
    "laundered-matmul": "attack_reducemin",
    "constant-output": "attack_times_zero",
    "gather-nd": "attack_gathernd",
    "data-dependent-tile": "attack_reducemax",
}


@pytest.mark.parametrize("attack", list(FIRST_FOREIGN))
def test_a_graph_with_foreign_nodes_is_refused_naming_the_first(attack, track, int8_onnx, tmp_path):
    nodes, initializers = _attack(attack, track)
    path = _appended(int8_onnx, nodes, initializers, tmp_path / f"{attack}.onnx")
    with pytest.raises(ForeignNode, match=rf"node '{FIRST_FOREIGN[attack]}' \("):
        verify_for_track(path, track.checks())


def test_the_harness_export_and_the_fp32_graph_match_the_reference(track, int8_onnx):
    verified = verify_for_track(int8_onnx, track.checks())
    assert verified.precision["reference_network"] == "matched"
    reference = track.checks().reference_graph
    check_graph_match(GraphIndex(reference, infer_shapes(reference)), reference)


def test_an_output_read_from_inside_the_network_is_refused_naming_its_producer(track, int8_onnx):
    """Every node matches, but the output is an earlier Conv's: a network cut short."""
    model = onnx.load(str(int8_onnx))
    earlier = next(n for n in model.graph.node if n.op_type == "Conv")
    model.graph.output[0].name = earlier.output[0]
    index = GraphIndex(model, infer_shapes(model))
    with pytest.raises(ForeignNode, match=rf"comes from node '{earlier.name}' \(Conv\)"):
        check_graph_match(index, track.checks().reference_graph)


def test_a_changed_attribute_is_a_foreign_node(track, int8_onnx):
    """Attributes are compared: a Concat along another axis is not the reference's."""
    model = onnx.load(str(int8_onnx))
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    for attribute in concat.attribute:
        if attribute.name == "axis":
            attribute.i = 1 - attribute.i if attribute.i in (0, 1) else 0
    index = GraphIndex(model, infer_shapes(model))
    with pytest.raises(ForeignNode, match=rf"node '{concat.name}' \(Concat\)"):
        check_graph_match(index, track.checks().reference_graph)


@pytest.mark.parametrize("declared", [False, True])
def test_a_data_dependent_size_is_refused_before_it_runs_without_a_reference(
    declared, track, int8_onnx, tmp_path
):
    """The run-time size check on its own (``verify_onnx`` has no reference graph): the Tile's
    repeats come from the image, so its size is unknown before it runs -- also when the file
    declares a small shape for it in ``value_info``."""
    nodes, initializers = _attack("data-dependent-tile", track)
    path = _appended(int8_onnx, nodes, initializers, tmp_path / "tile.onnx")
    if declared:
        model = onnx.load(str(path))
        shape = ["N", *track.checks().interface.output_shape]
        model.graph.value_info.append(helper.make_tensor_value_info("tiled", 1, shape))
        onnx.save(model, str(path))
    with pytest.raises(OnnxVerificationError, match=r"tensor 'tiled' \(output of node 'attack_ti"):
        verify_onnx(path, track.checks().interface, track.checks().limits)


OVER_LIMIT_BYTES = 2 << 30
"""The tensor the over-limit graph allocates: 2 GiB, past the 1 GiB the test's child may add."""
CHILD_HEADROOM_BYTES = 1 << 30


def _over_limit_graph(path: Path) -> Path:
    """A graph that Expands a 1-element input to ``OVER_LIMIT_BYTES`` of float32 and reduces it
    (a stand-in for any run-time tensor beyond the evaluation's memory bound)."""
    elements = OVER_LIMIT_BYTES // 4
    shape = np.array([1, 1, elements // 2**20, 1024, 1024], np.int64)
    graph = helper.make_graph(
        [
            helper.make_node("Expand", ["image", "shape"], ["big"], "expand"),
            helper.make_node("ReduceMean", ["big", "axes"], ["logits"], "reduce", keepdims=1),
        ],
        "over_limit",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 1, 1, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 1, 1, 1])],
        [_constant("shape", shape), _constant("axes", np.array([2, 3, 4], np.int64))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def _limited(run):
    """``run`` in an isolated child whose address space may grow by ``CHILD_HEADROOM_BYTES``
    (as a worker's evaluation runs under ``MEDQUANT_EVALUATION_MEMORY_MB``)."""
    import resource

    from harness.entry.isolation import run_isolated

    def work(_stage) -> dict:
        status = Path("/proc/self/status").read_text()
        mapped = int(status.split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mapped + CHILD_HEADROOM_BYTES, -1))
        run()
        return {}

    return run_isolated(work, engine="test")


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_a_run_time_tensor_past_the_memory_bound_is_a_rejection_naming_the_bound(engine, tmp_path):
    """The engines allocate at run time under the evaluation's address-space bound: a tensor
    past it ends as the artifact's fault (``SubmissionError``) naming the bound, not as a
    crash, a kill or an internal error."""
    path = _over_limit_graph(tmp_path / "over.onnx")
    image = torch.ones(1, 1, 1, 1, 1)

    def run() -> None:
        if engine == "onnxruntime":
            from harness.onnxruntime_session import OrtNetwork, create_session

            OrtNetwork(create_session(path))(image)
        else:
            from harness.backends.openvino import OpenVinoNetwork

            OpenVinoNetwork(path)(image)

    with pytest.raises(SubmissionError, match=r"ran out of memory .* memory limit of \d+ MiB"):
        _limited(run)


def test_a_dequantizer_with_other_parameters_than_its_quantizer_is_a_foreign_node(track, int8_onnx):
    """Q and DQ with different scales multiply the activation by their ratio: not a Q/DQ pair
    that may be stripped, but a computation the reference does not make."""
    model = onnx.load(str(int8_onnx))
    index = GraphIndex(model)
    dequantize = next(
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and index.producer.get(n.input[0]) is not None
        and index.producer[n.input[0]].op_type == "QuantizeLinear"
    )
    scale = index.array(index.follow(dequantize.input[1])[0]) * np.float32(4.0)
    model.graph.initializer.append(_constant("rescaled", scale))
    dequantize.input[1] = "rescaled"
    shaped = GraphIndex(model, infer_shapes(model))
    with pytest.raises(ForeignNode, match=rf"node '{dequantize.name}' \(DequantizeLinear\)"):
        check_graph_match(shaped, track.checks().reference_graph)

"""Import an FP32 ONNX graph as a reference model, for networks no registry builds.

The source is a folder holding ``model.onnx`` and ``reference.json`` (or a ``.onnx`` file with
``reference.json`` beside it). The graph has one float input (N, C, D, H, W) and one float output
(N, K, D, H, W), every weight inside the file and no quantization. ``reference.json`` says what a
graph cannot: ``labels`` (class id → name, one per output channel), ``preprocessing`` and
``sliding_window`` as in ``model.json``, and optionally ``name``; a missing ``roi_size`` is the
graph's static input shape.

The imported ``model.onnx`` is the graph with its input and output renamed to the harness's
``image`` and ``logits``, a dynamic batch and the roi as its spatial shape; nothing else changes,
so a quantized form of the source graph (ORT, NNCF) verifies as the track's network.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from harness.data.preprocessing import PreprocessSpec
from harness.errors import ModelImportError
from harness.inference.sliding_window import SlidingWindowSpec
from harness.models.interface import INPUT_NAME, ONNX_FILE, OUTPUT_NAME
from harness.models.onnx_graph import HYBRID_OPS, ONNX_ARCHITECTURE
from harness.models.reference import SPEC_FILE, ModelSpec

REFERENCE_FILE = "reference.json"
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
    }
)
"""Ops that mark a graph as already quantized: a reference must be the FP32 network."""
MIN_OPSET = 13
"""Per-channel QuantizeLinear/DequantizeLinear (their ``axis``), which every INT8 form of the
reference needs, exist from opset 13."""
BATCH_DIM = "N"


def graph_paths(source: str | Path) -> tuple[Path, Path]:
    """(the graph, its ``reference.json``) of a source folder or ``.onnx`` file."""
    source = Path(source)
    graph = source / ONNX_FILE if source.is_dir() else source
    return graph, graph.with_name(REFERENCE_FILE)


def import_onnx(source: str | Path, out_dir: str | Path, *, name: str | None = None) -> ModelSpec:
    """Write the reference-model folder ``out_dir`` (``model.json`` + ``model.onnx``) for the
    FP32 graph in ``source`` and return its spec."""
    graph_path, reference_path = graph_paths(source)
    for path, what in ((graph_path, "the ONNX graph"), (reference_path, "its reference.json")):
        if not path.is_file():
            raise ModelImportError(f"missing {what}: {path}")
    described = _read_reference(reference_path)
    model = _load_graph(graph_path)
    graph = model.graph
    graph_input, graph_output = _single(graph, "input"), _single(graph, "output")
    in_dims, out_dims = _dims(graph_input, "input"), _dims(graph_output, "output")
    channels = in_dims[1]
    if not isinstance(channels, int) or channels < 1:
        raise ModelImportError(
            f"the graph's input channels (dimension 1 of {in_dims}) must be a fixed number"
        )
    window = _window(described, in_dims)
    roi = window["roi_size"]
    labels = _labels(described)
    names = {"input": graph_input.name, "output": graph_output.name}
    _rename(graph, names["input"], INPUT_NAME)
    _rename(graph, names["output"], OUTPUT_NAME)
    _set_shape(graph_input, [BATCH_DIM, channels, *roi])
    classes = out_dims[1] if isinstance(out_dims[1], int) and out_dims[1] > 0 else None
    classes = _run_once(model, channels, roi, classes)
    if classes != len(labels):
        raise ModelImportError(
            f"the graph outputs {classes} channels; reference.json names {len(labels)} labels"
        )
    _set_shape(graph_output, [BATCH_DIM, classes, *roi])
    ops = {node.op_type for node in graph.node}
    try:
        spec = ModelSpec(
            name=name or str(described.get("name") or graph_path.parent.name),
            architecture=ONNX_ARCHITECTURE,
            kwargs={
                "in_channels": channels,
                "out_channels": classes,
                "family": "hybrid" if ops & HYBRID_OPS else "cnn",
            },
            labels=labels,
            preprocessing=PreprocessSpec.from_dict(described.get("preprocessing") or {}),
            sliding_window=SlidingWindowSpec.from_dict(window),
            source={
                "importer": "onnx",
                "file": graph_path.name,
                "sha256": hashlib.sha256(graph_path.read_bytes()).hexdigest(),
                "producer": f"{model.producer_name} {model.producer_version}".strip(),
                "opset": _opset(model),
            }
            | names,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ModelImportError(f"{reference_path}: {err}") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ModelImportError(f"the renamed graph fails onnx.checker: {err}") from None
    onnx.save_model(model, out_dir / ONNX_FILE)
    (out_dir / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    return spec


def _window(described: dict, in_dims: list) -> dict:
    """``reference.json``'s sliding window, its ``roi_size`` defaulting to the graph's fixed
    spatial input shape and agreeing with it where that is fixed."""
    window = dict(described.get("sliding_window") or {})
    static_roi = [d for d in in_dims[2:] if isinstance(d, int) and d > 0]
    if "roi_size" not in window:
        if len(static_roi) != 3:
            raise ModelImportError(
                f"the graph's input {in_dims} has no fixed spatial shape: give "
                "sliding_window.roi_size in reference.json"
            )
        window["roi_size"] = static_roi
    roi = window["roi_size"]
    if not (
        isinstance(roi, list) and len(roi) == 3 and all(isinstance(r, int) and r > 0 for r in roi)
    ):
        raise ModelImportError(f"sliding_window.roi_size must be 3 positive integers, not {roi!r}")
    for axis, (dim, size) in enumerate(zip(in_dims[2:], roi, strict=True), start=2):
        if isinstance(dim, int) and dim > 0 and dim != size:
            raise ModelImportError(
                f"the graph's input dimension {axis} is fixed at {dim}; roi_size says {size}"
            )
    return window


def _read_reference(path: Path) -> dict:
    try:
        described = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelImportError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(described, dict):
        raise ModelImportError(f"{path} must hold a JSON object")
    return described


def _labels(described: dict) -> dict[int, str]:
    labels = described.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelImportError("reference.json needs labels: {class id: name}, one per output")
    try:
        parsed = {int(k): str(v) for k, v in labels.items()}
    except ValueError as err:
        raise ModelImportError(f"reference.json labels need integer ids: {err}") from None
    if sorted(parsed) != list(range(len(parsed))):
        raise ModelImportError(
            f"reference.json labels must be numbered 0..{len(parsed) - 1}, got {sorted(parsed)}"
        )
    return parsed


def _load_graph(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends: not a graph
        raise ModelImportError(f"{path} is not a readable ONNX file: {err}") from None
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            raise ModelImportError(
                f"initializer {tensor.name!r} keeps its data in an external file; save the "
                "graph with every weight inside it"
            )
    quantized = sorted({n.op_type for n in model.graph.node} & QUANTIZED_OPS)
    if quantized:
        raise ModelImportError(
            f"the graph is already quantized ({', '.join(quantized)}): a reference model is the "
            "FP32 network"
        )
    if _opset(model) < MIN_OPSET:
        raise ModelImportError(
            f"the graph's opset is {_opset(model)}; export it at opset {MIN_OPSET} or later"
        )
    return model


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _single(graph: onnx.GraphProto, role: str) -> onnx.ValueInfoProto:
    """The graph's one (non-initializer) input or one output, a float tensor (the graph's own
    entry: changing it changes the graph)."""
    initializers = {t.name for t in graph.initializer}
    values = [
        v for v in (graph.input if role == "input" else graph.output) if v.name not in initializers
    ]
    if len(values) != 1:
        names = [v.name for v in values]
        raise ModelImportError(f"the graph has {len(values)} {role}s {names}; it needs exactly one")
    if values[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ModelImportError(f"the graph's {role} {values[0].name!r} is not float32")
    return values[0]


def _dims(value: onnx.ValueInfoProto, role: str) -> list[int | str]:
    dims = [
        d.dim_value if d.HasField("dim_value") else d.dim_param
        for d in value.type.tensor_type.shape.dim
    ]
    if len(dims) != 5:
        raise ModelImportError(
            f"the graph's {role} {value.name!r} has shape {dims}; a 3D segmentation network's is "
            "(N, C, D, H, W)"
        )
    return dims


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` everywhere in the graph."""
    if old == new:
        return
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    taken |= {v.name for v in (*graph.input, *graph.value_info)}
    if new in taken:
        raise ModelImportError(f"the graph already has a tensor named {new!r}")
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def _set_shape(value: onnx.ValueInfoProto, dims: list[int | str]) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for size in dims:
        dim = shape.dim.add()
        if isinstance(size, str):
            dim.dim_param = size
        else:
            dim.dim_value = size


def _run_once(model: onnx.ModelProto, channels: int, roi: list[int], classes: int | None) -> int:
    """Run the graph on one zero patch with ONNX Runtime: it must load, and map (1, C, *roi) to
    (1, K, *roi); returns K."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        (output,) = session.run(None, {INPUT_NAME: np.zeros((1, channels, *roi), np.float32)})
    except Exception as err:  # ORT's own load and run errors on this graph
        raise ModelImportError(f"the graph does not run on a {roi} patch: {err}") from None
    if output.ndim != 5 or list(output.shape[2:]) != roi or output.shape[0] != 1:
        raise ModelImportError(
            f"the graph maps a (1, {channels}, {', '.join(map(str, roi))}) patch to "
            f"{list(output.shape)}; a segmentation network returns (1, K, *roi)"
        )
    if classes is not None and output.shape[1] != classes:
        raise ModelImportError(
            f"the graph declares {classes} output channels and returns {output.shape[1]}"
        )
    return int(output.shape[1])

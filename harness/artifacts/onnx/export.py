"""Export to ONNX: the FP32 reference network (written once per process and weights), and what
every harness export shares: the torch exporter call, metadata and the checked save.

The graph takes ``image`` (N, C, *roi) and returns ``logits`` (N, K, *roi) with a dynamic batch
dimension N, opset ``OPSET``. A harness-quantized network becomes Q/DQ ONNX in
``harness.artifacts.onnx.qdq_export``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx
import torch
from torch import nn

from harness.errors import HarnessError
from harness.models.interface import INPUT_NAME, METADATA_PREFIX, OPSET, OUTPUT_NAME
from harness.models.reference import ModelSpec

FP32_TOLERANCE = 5e-3  # max |ONNX Runtime − PyTorch| / max |PyTorch| on FP32 logits


class ExportError(HarnessError):
    """A network or quantized checkpoint that cannot be written as (Q/DQ) ONNX."""


def export_fp32(model: nn.Module, spec: ModelSpec, path: str | Path) -> Path:
    """Write ``model`` as ONNX (input = the track's roi, dynamic batch) and check it."""
    proto = torch_export(model, spec)
    set_metadata(proto, {"source": "harness export-onnx", "precision": "fp32"})
    return save_checked(proto, path)


_REFERENCE_EXPORTS: dict[tuple[str, str], Path] = {}
_REFERENCE_FOLDER: tempfile.TemporaryDirectory | None = None


def reference_onnx(
    model: nn.Module, spec: ModelSpec, model_dir: str | Path, weights_digest: str
) -> Path:
    """``export_fp32`` of a track's reference network, written once per process and weights
    (``model_dir`` and ``weights_digest``, the digest of its weights the caller already holds)
    into a temporary folder removed at exit: what an ONNX upload is matched against, the FP32 row
    of an ONNX board, and what a backend times an entry against. An ONNX reference's graph is its
    own file."""
    global _REFERENCE_FOLDER
    if not spec.has_torch_network:
        return Path(model_dir) / spec.weights_file
    key = (str(Path(model_dir).resolve()), weights_digest)
    if key not in _REFERENCE_EXPORTS or not _REFERENCE_EXPORTS[key].is_file():
        if _REFERENCE_FOLDER is None:
            _REFERENCE_FOLDER = tempfile.TemporaryDirectory(prefix="medquant-fp32-")
        path = Path(_REFERENCE_FOLDER.name) / f"fp32-{len(_REFERENCE_EXPORTS)}.onnx"
        _REFERENCE_EXPORTS[key] = export_fp32(model, spec, path)
    return _REFERENCE_EXPORTS[key]


# The exporter logs every initializer it deduplicates and every constant it does not fold (INFO),
# and every torchvision op it cannot register (WARNING; torchvision is not a dependency): hundreds
# of lines per export in a worker's log.
_NOISY_EXPORTER_LOGGERS = {
    "onnx_ir": logging.WARNING,
    "onnxscript": logging.WARNING,
    "torch.onnx._internal.exporter._registration": logging.ERROR,
}


def torch_export(model: nn.Module, spec: ModelSpec) -> onnx.ModelProto:
    """``model`` through torch's dynamo ONNX exporter at the track's roi with a dynamic batch,
    without the exporter's per-node metadata."""
    example = torch.zeros((2, spec.in_channels, *spec.sliding_window.roi_size))
    for name, level in _NOISY_EXPORTER_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    try:
        program = torch.onnx.export(
            model.eval(),
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    except Exception as error:  # the exporter raises many unrelated types
        raise ExportError(f"torch.onnx.export failed for {spec.architecture}: {error}") from error
    return _strip_exporter_metadata(program.model_proto)


def _strip_exporter_metadata(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node stack traces and source names (about 0.1 MB for a UNet)."""
    graph = proto.graph
    for item in (*graph.node, *graph.initializer, *graph.value_info, *graph.input, *graph.output):
        del item.metadata_props[:]
        item.doc_string = ""
    return proto


def save_checked(proto: onnx.ModelProto, path: str | Path) -> Path:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(f"exported graph fails onnx.checker: {error}") from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, path)
    return path


def set_metadata(proto: onnx.ModelProto, values: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in values.items():
        proto.metadata_props.add(key=METADATA_PREFIX + key, value=value)

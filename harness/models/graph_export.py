"""Write a reference model as an FP32 ONNX source (``model.onnx`` + ``reference.json``): how the
demo ships one of its models in the form a maintainer brings for a network no registry builds, so
that importing it (``harness.models.importers.onnx_file``) is exercised end to end."""

from __future__ import annotations

import json
from pathlib import Path

from harness.artifacts.onnx.export import export_fp32
from harness.models.importers.onnx_file import REFERENCE_FILE
from harness.models.onnx_graph import GRAPH_FILE
from harness.models.reference import load_reference_model


def write_onnx_source(model_dir: str | Path, out: str | Path) -> Path:
    """The ONNX source folder ``out`` for the torch reference model in ``model_dir``: its FP32
    export and what the graph does not say (name, labels, preprocessing, sliding window)."""
    spec, network = load_reference_model(model_dir)
    out = Path(out)
    export_fp32(network, spec, out / GRAPH_FILE)
    reference = {
        "name": f"{spec.name} (ONNX graph)",
        "labels": {str(k): v for k, v in sorted(spec.labels.items())},
        "preprocessing": spec.preprocessing.to_dict(),
        "sliding_window": spec.sliding_window.to_dict(),
    }
    (out / REFERENCE_FILE).write_text(json.dumps(reference, indent=2) + "\n")
    return out

"""A reference model that is an FP32 ONNX graph, for networks no registry builds: ``model.json``
with architecture ``ONNX`` beside ``model.onnx`` (imported by ``harness.models.importers.onnx``).

Its spec's kwargs are read from the graph at import: ``in_channels``, ``out_channels`` and the
``family`` (``hybrid`` when the graph has attention, a MatMul or Softmax, else ``cnn``). There is
no torch network to build: the reference runs on ONNX Runtime, tracks of it are evaluated on ONNX
backends, and its baselines quantize the graph itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.errors import ModelSpecError

ONNX_ARCHITECTURE = "ONNX"
HYBRID_OPS = frozenset({"MatMul", "Softmax", "Attention", "MultiHeadAttention"})
"""Ops whose presence marks a graph as a hybrid CNN + transformer (attention is a MatMul and a
Softmax in ONNX; a CNN has neither)."""


def graph_in_channels(kwargs: Mapping[str, Any]) -> int:
    return int(kwargs["in_channels"])


def graph_out_channels(kwargs: Mapping[str, Any]) -> int:
    return int(kwargs["out_channels"])


def no_torch_network(**kwargs: Any) -> None:
    """An ONNX reference has no torch network (what needs one is refused with its reason)."""
    raise ModelSpecError(
        "an ONNX reference model has no torch network: it runs on ONNX Runtime, and its tracks "
        "are evaluated on ONNX backends"
    )

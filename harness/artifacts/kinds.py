"""The kinds of artifact a submission can be, and the files each consists of (an upload, or what a
quantizer container writes to ``/output``)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.artifacts.checkpoint import FORMAT as CHECKPOINT_FORMAT
from harness.artifacts.checkpoint import MANIFEST_NAME, WEIGHTS_NAME
from harness.artifacts.checkpoint import VERSION as CHECKPOINT_VERSION

ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class ArtifactKind:
    """``name`` as in ``Submission.kind``; ``label`` and ``plural`` how messages name it;
    ``files`` the exact file set of the artifact folder; ``output`` the ``track.json``
    description a quantizer container reads."""

    name: str
    label: str
    plural: str
    description: str
    files: frozenset[str]
    output: dict


CHECKPOINT = ArtifactKind(
    "checkpoint",
    "Checkpoint",
    "quantized checkpoints",
    "a quantized checkpoint",
    frozenset({MANIFEST_NAME, WEIGHTS_NAME}),
    {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION},
)
ONNX = ArtifactKind(
    "onnx",
    "ONNX",
    "ONNX files",
    "ONNX with Q/DQ nodes",
    frozenset({ONNX_FILE}),
    {"format": "onnx-qdq"},
)
ARTIFACT_KINDS = {kind.name: kind for kind in (CHECKPOINT, ONNX)}

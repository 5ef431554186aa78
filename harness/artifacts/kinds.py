"""The kinds of artifact a submission can be, and the files each consists of (an upload, or what a
quantizer container writes to ``/output``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from harness.artifacts.checkpoint.storage import FORMAT as CHECKPOINT_FORMAT
from harness.artifacts.checkpoint.storage import MANIFEST_NAME, WEIGHTS_NAME
from harness.artifacts.checkpoint.storage import VERSION as CHECKPOINT_VERSION
from harness.models.interface import ONNX_FILE

DIGEST_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class ArtifactKind:
    """``name`` as in ``Submission.kind``; ``label`` and ``plural`` how messages name it;
    ``files`` the exact file set of the artifact folder; ``weights`` the file holding its
    weights (its digest identifies duplicates); ``output`` the ``track.json`` description a
    quantizer container reads."""

    name: str
    label: str
    plural: str
    description: str
    files: frozenset[str]
    weights: str
    output: dict

    def digest(self, artifact: Path) -> str:
        """sha256 of the artifact's weights (``artifact``: its folder, or the file itself)."""
        path = artifact / self.weights if artifact.is_dir() else artifact
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(DIGEST_BLOCK_BYTES), b""):
                digest.update(block)
        return digest.hexdigest()


CHECKPOINT = ArtifactKind(
    "checkpoint",
    "Checkpoint",
    "quantized checkpoints",
    "a quantized checkpoint",
    frozenset({MANIFEST_NAME, WEIGHTS_NAME}),
    WEIGHTS_NAME,
    {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION},
)
ONNX = ArtifactKind(
    "onnx",
    "ONNX",
    "ONNX files",
    "ONNX with Q/DQ nodes",
    frozenset({ONNX_FILE}),
    ONNX_FILE,
    {"format": "onnx-qdq"},
)
ARTIFACT_KINDS = {kind.name: kind for kind in (CHECKPOINT, ONNX)}

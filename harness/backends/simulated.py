"""The ``simulated`` backend: a quantized checkpoint applied to the track's reference architecture
(so it is that network by construction) and run by the exact integer simulator in PyTorch (any
bits, any granularity); on a closed track its weights must be post-training quantized from FP32.
Its timings are of the simulation, not of a deployment, so it reports no efficiency."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.artifacts.kinds import CHECKPOINT
from harness.backends.base import Backend, OpenedArtifact

if TYPE_CHECKING:
    from torch import nn

    from harness.models.reference import ModelSpec
    from harness.track.spec import TrackSpec


class SimulatedBackend(Backend):
    name = "simulated"
    label = "simulated integer (PyTorch)"
    artifact_kinds = (CHECKPOINT,)
    measures_latency = False

    def open(
        self, artifact: Path, *, spec: TrackSpec, model_spec: ModelSpec, reference: nn.Module
    ) -> OpenedArtifact:
        from harness.artifacts.checkpoint.describe import describe_checkpoint
        from harness.artifacts.checkpoint.load import load_checkpoint
        from harness.artifacts.post_training import check_post_training

        network = load_checkpoint(artifact, reference)
        precision = describe_checkpoint(artifact)
        if spec.division == "closed":
            check_post_training(network, reference)
        return OpenedArtifact(network, precision | {"division": spec.division})


BACKEND = SimulatedBackend()

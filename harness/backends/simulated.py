"""The ``simulated`` backend: a quantized checkpoint applied to the track's reference architecture
(so it is that network by construction) and run by the exact integer simulator in PyTorch (any
bits, any granularity); on a closed track its weights must be post-training quantized from FP32.
Its timings are of the simulation, not of a deployment, so it reports no efficiency."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.artifacts.checks import TrackChecks, VerifiedArtifact
from harness.artifacts.kinds import CHECKPOINT
from harness.backends.base import Backend

if TYPE_CHECKING:
    from torch import nn


class SimulatedBackend(Backend):
    name = "simulated"
    label = "simulated integer (PyTorch)"
    artifact_kinds = (CHECKPOINT,)
    measures_latency = False

    def verify(self, artifact: Path, checks: TrackChecks) -> VerifiedArtifact:
        """The checkpoint read and hashed once: its tensors checked and applied to the reference
        network (which is then that network by construction), its precision described, and on a
        closed track its weights checked to be post-training quantized from FP32. The network
        built is kept on the verified artifact for ``load``."""
        from harness.artifacts.checkpoint.describe import describe_checkpoint
        from harness.artifacts.checkpoint.load import load_checkpoint
        from harness.artifacts.checkpoint.storage import read_checkpoint
        from harness.artifacts.post_training import check_post_training

        files = read_checkpoint(artifact)
        network = load_checkpoint(files, checks.reference_network)
        precision = describe_checkpoint(files) | {"division": checks.division}
        if checks.closed:
            check_post_training(network, checks.reference_network)
        digest = files.weights_sha256
        return VerifiedArtifact("checkpoint", Path(artifact), digest, precision, network=network)

    def load(self, verified: VerifiedArtifact, checks: TrackChecks) -> nn.Module:
        return verified.network


BACKEND = SimulatedBackend()

"""The backend protocol: how a track's artifacts are opened into a network the sliding-window
inferer runs, and how their efficiency is measured, on one execution engine.

A backend receives narrow arguments (``TrackChecks``: what the track asks of an artifact; the
artifact path), never a loaded track or a track spec, so it can be used and tested on its own.
``Backend.open`` is a template: it checks that the engine is available, verifies the artifact once
(``verify``), checks its precision against the track (the one precision check) and hands the
``VerifiedArtifact`` to the engine (``load``); what is measured later (efficiency, kernel reports)
reuses it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from harness.artifacts.checks import TrackChecks, VerifiedArtifact
from harness.artifacts.onnx.placement import ORT_PLACEMENT, QdqPlacement
from harness.artifacts.precision import check_for_track
from harness.errors import BackendUnavailable, HarnessError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from harness.artifacts.kinds import ArtifactKind
    from harness.inference.latency import LatencyProtocol
    from harness.inference.sliding_window import SlidingWindowSpec


@dataclass(frozen=True)
class OpenedArtifact:
    """An artifact ready to run: ``network`` maps a (B, C, *roi) patch batch to logits;
    ``precision`` is what its verifier read from it (bits, granularity, size); ``verified`` the
    verification it came from (None for the FP32 reference and a named scheme, which are no
    uploaded file)."""

    network: nn.Module
    precision: dict
    verified: VerifiedArtifact | None = None

    @classmethod
    def of(cls, network: nn.Module, verified: VerifiedArtifact) -> OpenedArtifact:
        return cls(network, verified.precision, verified)


@dataclass(frozen=True)
class EnginePtq:
    """An engine vendor's PTQ tool offered as a baseline: its scheme name (recorded with the
    result), method name, and the label and description the board shows."""

    scheme: str
    method: str
    label: str
    description: str


class Backend(ABC):
    """One execution engine. ``name`` is the track setting; ``label`` what the site shows;
    ``artifact_kinds`` what a submission uploads (the first is what a quantizer container must
    write); ``queue`` the Celery queue of the workers that can run it; ``measures_latency``
    whether its timings are of a deployment (a simulator's are not); ``qdq_placements`` how the
    harness's standard INT8 export may write Q/DQ for this engine, in order of preference (the
    form it fuses best first; the baseline takes the first the engine runs faithfully);
    ``profiles_layers`` whether ``slower_integer_layers`` measures anything; ``engine_ptq`` the
    engine vendor's own PTQ tool as a baseline, ``EnginePtq`` (or None), run by
    ``engine_quantize``."""

    name: ClassVar[str]
    label: ClassVar[str]
    artifact_kinds: ClassVar[tuple[ArtifactKind, ...]]
    queue: ClassVar[str] = "cpu"
    measures_latency: ClassVar[bool] = True
    qdq_placements: ClassVar[tuple[QdqPlacement, ...]] = (ORT_PLACEMENT,)
    profiles_layers: ClassVar[bool] = False
    engine_ptq: ClassVar[EnginePtq | None] = None

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run on this machine (checked for real), or None."""
        return None

    def require_available(self) -> None:
        reason = self.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(reason)

    def scores(self, kind: str) -> bool:
        return any(k.name == kind for k in self.artifact_kinds)

    def open(self, artifact: Path, checks: TrackChecks) -> OpenedArtifact:
        """Verify ``artifact`` (once), check its precision against the track and open it on this
        engine;
        ``BackendUnavailable`` when the engine cannot run here, ``SubmissionError`` when the
        artifact is at fault."""
        self.require_available()
        verified = self.verify(artifact, checks)
        check_for_track(verified.precision, checks)
        return OpenedArtifact.of(self.load(verified, checks), verified)

    def open_trusted(self, artifact: Path, checks: TrackChecks) -> nn.Module:
        """A file the harness wrote itself (a candidate export) on this engine, unverified: what
        is finally scored is opened (and verified) by ``open``."""
        self.require_available()
        return self.load(VerifiedArtifact(self.artifact_kinds[0].name, artifact, "", {}), checks)

    def verify(self, artifact: Path, checks: TrackChecks) -> VerifiedArtifact:
        """Read, check and measure ``artifact`` (default: an ONNX file, by the ONNX verifier)."""
        from harness.artifacts.onnx.verify import verify_for_track

        return verify_for_track(artifact, checks)

    @abstractmethod
    def load(self, verified: VerifiedArtifact, checks: TrackChecks) -> nn.Module:
        """The verified artifact as a network on this engine: (B, C, *roi) → logits."""

    def measure_efficiency(
        self,
        opened: OpenedArtifact,
        *,
        volume: torch.Tensor,
        window: SlidingWindowSpec,
        fp32: Path | None = None,
        protocol: LatencyProtocol | None = None,
    ) -> dict | None:
        """Latency, size and memory of ``opened`` (its verified file: ``opened.verified``) on one
        preprocessed test ``volume``; None where
        the backend measures nothing. ``fp32`` is the reference network exported as FP32 ONNX:
        a backend that runs ONNX opens it on its own engine, with the same settings, and times it
        interleaved with the entry under ``protocol`` (the result's ``latency_protocol``)."""
        return None

    def slower_integer_layers(
        self, fp32: Path, int8: Path, batch: torch.Tensor, *, threads: int
    ) -> dict[str, dict[str, float]]:
        """Weighted layers of the Q/DQ graph ``int8`` that this engine runs slower than the same
        layer of ``fp32`` on ``batch``, profiled per layer: ``{weight initializer name of the FP32
        graph: {"integer_ms", "float_ms"}}``. Empty where the backend does not profile layers."""
        return {}

    def engine_quantize(self, fp32: Path, calibration: list[torch.Tensor], out: Path) -> Path:
        """Quantize the FP32 ONNX file ``fp32`` with ``engine_ptq`` on the unlabeled
        ``calibration`` patch batches into a Q/DQ ONNX file at ``out``."""
        raise HarnessError(f"backend {self.name} offers no engine PTQ tool")

"""The backend protocol: how a track's artifacts are opened into a network the sliding-window
inferer runs, and how their efficiency is measured, on one execution engine.

A backend receives narrow arguments (the track spec, the reference model's spec and network, the
artifact path), never a loaded track, so it can be used and tested on its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from harness.errors import BackendUnavailable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from harness.artifacts.kinds import ArtifactKind
    from harness.inference.sliding_window import SlidingWindowSpec
    from harness.models.reference import ModelSpec
    from harness.track.spec import TrackSpec


@dataclass(frozen=True)
class OpenedArtifact:
    """An artifact ready to run: ``network`` maps a (B, C, *roi) patch batch to logits;
    ``precision`` is what its verifier read from it (bits, granularity, size)."""

    network: nn.Module
    precision: dict


class Backend(ABC):
    """One execution engine. ``name`` is the track setting; ``label`` what the site shows;
    ``artifact_kinds`` what a submission uploads (the first is what a quantizer container must
    write); ``queue`` the Celery queue of the workers that can run it; ``measures_latency``
    whether its timings are of a deployment (a simulator's are not)."""

    name: ClassVar[str]
    label: ClassVar[str]
    artifact_kinds: ClassVar[tuple[ArtifactKind, ...]]
    queue: ClassVar[str] = "cpu"
    measures_latency: ClassVar[bool] = True

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run on this machine (checked for real), or None."""
        return None

    def require_available(self) -> None:
        reason = self.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(reason)

    def scores(self, kind: str) -> bool:
        return any(k.name == kind for k in self.artifact_kinds)

    @abstractmethod
    def open(
        self, artifact: Path, *, spec: TrackSpec, model_spec: ModelSpec, reference: nn.Module
    ) -> OpenedArtifact:
        """Verify ``artifact`` against the track and open it; ``SubmissionError`` when it is at
        fault."""

    def measure_efficiency(
        self,
        opened: OpenedArtifact,
        artifact: Path,
        *,
        volume: torch.Tensor,
        window: SlidingWindowSpec,
    ) -> dict | None:
        """Latency, size and memory of ``opened`` on one preprocessed test ``volume``; None where
        the backend measures nothing."""
        return None

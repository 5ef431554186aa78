"""What every entry point returns (an upload, a baseline, a quantizer container)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.containers.sandbox import ContainerOutcome
    from harness.scoring.evaluation import EvaluationRun


@dataclass(frozen=True)
class Evaluated:
    """An evaluation: its result document, the run it summarises, the artifact it scored (kept
    for download and reproduction; None for the FP32 reference on the simulator, which is the
    reference model itself) and, for a quantizer container, the run that produced it. ``run`` is
    None where the evaluation ran in a child process (a quantizer container's output): only its
    result document crosses back."""

    result: dict
    run: EvaluationRun | None
    artifact: Path | None
    container: ContainerOutcome | None = None

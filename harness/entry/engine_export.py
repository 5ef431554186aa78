"""The harness's Q/DQ export for a track's engine: a quantized network written in the first of the
backend's placements (``Backend.qdq_placements``, the form its engine fuses best first) that the
engine runs faithfully — logits within ``ENGINE_DEVIATION`` of ONNX Runtime's on the same file
over the calibration patches; the closest one if none is. What the standard INT8 baseline and
``harness export-onnx`` write, so a researcher's export of a scheme is the site's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from harness.artifacts.onnx.placement import QdqPlacement
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.entry.engine_agreement import ENGINE_DEVIATION, engine_deviation
from harness.track.loaded import LoadedTrack

ModelForPlacement = Callable[[QdqPlacement], nn.Module]
"""The harness-quantized network to export in a placement (the INT8 scheme differs per placement:
whether outputs are requantized; a checkpoint is the same network in every one)."""


def export_for_engine(
    track: LoadedTrack,
    model_for: ModelForPlacement,
    path: Path,
    placements: Sequence[QdqPlacement] | None = None,
) -> tuple[nn.Module, dict]:
    """Write ``model_for(placement)`` as Q/DQ ONNX at ``path`` in the first of ``placements``
    (default: the track's backend's) that its engine runs within ``ENGINE_DEVIATION`` of ONNX
    Runtime (the closest if none does; a single placement is taken without running the engine).
    Returns the network written and the export record: ``placement`` (its name) and, where
    placements were compared, ``engine_deviation`` per placement tried."""
    placements = tuple(placements or track.backend.qdq_placements)
    if len(placements) == 1:
        model = model_for(placements[0])
        _export(track, model, path, placements[0])
        return model, {"placement": placements[0].name}
    candidates: dict[str, tuple[Path, nn.Module]] = {}
    deviation: dict[str, float] = {}
    for placement in placements:
        candidate = path.with_name(f"{path.stem}.{placement.name}.onnx")
        model = model_for(placement)
        _export(track, model, candidate, placement)
        candidates[placement.name] = candidate, model
        deviation[placement.name] = _engine_deviation(track, candidate)
        if deviation[placement.name] <= ENGINE_DEVIATION:
            break
    faithful = [name for name, value in deviation.items() if value <= ENGINE_DEVIATION]
    chosen = faithful[0] if faithful else min(deviation, key=deviation.get)
    chosen_path, model = candidates.pop(chosen)
    chosen_path.replace(path)
    for other, _ in candidates.values():
        other.unlink()
    return model, {"placement": chosen, "engine_deviation": deviation}


def _export(track: LoadedTrack, model: nn.Module, path: Path, placement: QdqPlacement) -> Path:
    """``model`` exported in ``placement`` and checked against its simulation."""
    return export_qdq(model, track.model_spec, track.calibration, path, placement=placement)


def _engine_deviation(track: LoadedTrack, path: Path) -> float:
    """``engine_deviation`` of the track's backend on the Q/DQ file at ``path`` over the
    calibration patches."""
    network = track.backend.open_trusted(path, track.checks())
    return engine_deviation(network, path, track.calibration, track.spec.latency_threads)

"""The read-only ``/input`` folder a quantizer container gets (protocol: ``containers/README.md``).

    model.json             architecture, preprocessing and sliding-window spec (as in the track)
    model.safetensors      FP32 weights (absent for an ONNX reference, whose graph is model.onnx)
    model.onnx             FP32 ONNX export (``harness.artifacts.onnx.export``: input image,
                           output logits), or an ONNX reference's own graph
    calibration/<id>.safetensors   one preprocessed, unlabeled volume each: tensor "image" (C,D,H,W)
    track.json             what the output must satisfy: bits, granularities, the output format
                           (a quantized checkpoint on simulated tracks, Q/DQ ONNX on the real
                           backends), case ids

Only the track's calibration cases are read, never with their labels; test cases never appear.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from harness.artifacts.kinds import CHECKPOINT, ONNX, ArtifactKind
from harness.backends import get_backend
from harness.data.dataset import Case
from harness.data.preprocessing import preprocess, read_case
from harness.errors import SubmissionError
from harness.models.interface import ONNX_FILE, SPEC_FILE, WEIGHTS_FILE
from harness.track.loaded import LoadedTrack
from reference_methods.simulator.granularity import Granularity, WeightGranularity

PROTOCOL_VERSION = 1
TRACK_FILE = "track.json"
CALIBRATION_DIR = "calibration"
OUTPUT_CHECKPOINT_FILES = CHECKPOINT.files
(OUTPUT_ONNX_FILE,) = ONNX.files
CALIBRATION_TENSOR = "image"


def build_container_input(
    track: LoadedTrack, dest: str | Path, cases: Sequence[Case] | None = None
) -> Path:
    """Write the ``/input`` folder of ``track`` into ``dest`` (created; must not exist yet), with
    ``cases`` as its calibration cases (default: the track's; a resampled set may hold a
    case more than once, each copy its own file ``<id>~<n>``)."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    weights = [WEIGHTS_FILE] if track.model_spec.has_torch_network else []  # a graph: model.onnx
    for name in (SPEC_FILE, *weights):
        shutil.copyfile(track.spec.model_dir / name, dest / name)
    calibration = dest / CALIBRATION_DIR
    calibration.mkdir()
    cases = tuple(track.calibration_cases if cases is None else cases)
    names = calibration_names(cases)
    for case, name in zip(cases, names, strict=True):
        image = preprocess(read_case(case, with_label=False), track.model_spec.preprocessing)
        tensor = torch.as_tensor(image).detach().to(torch.float32).contiguous().clone()
        save_file({CALIBRATION_TENSOR: tensor}, calibration / f"{name}.safetensors")
    shutil.copyfile(track.fp32_onnx, dest / ONNX_FILE)
    description = track_description(track) | {"calibration_cases": names}
    (dest / TRACK_FILE).write_text(json.dumps(description, indent=2) + "\n")
    return dest


def calibration_names(cases: Sequence[Case]) -> list[str]:
    """A file name per calibration case: its id, and ``<id>~<n>`` for its n-th repeat."""
    seen: Counter[str] = Counter()
    names = []
    for case in cases:
        seen[case.case_id] += 1
        count = seen[case.case_id]
        names.append(case.case_id if count == 1 else f"{case.case_id}~{count}")
    return names


def output_kind(backend: str) -> ArtifactKind:
    """What a quantizer container must write on a ``backend`` track: the first artifact kind the
    backend scores."""
    return get_backend(backend).artifact_kinds[0]


def output_artifact(output: Path, backend: str) -> tuple[ArtifactKind, Path]:
    """What ``/output`` holds: exactly the files of the artifact kind the track's backend scores
    (a quantized checkpoint folder on ``simulated``, a Q/DQ ``model.onnx`` on the real backends),
    as that kind and the artifact's path."""
    kind = output_kind(backend)
    files = {p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()}
    if files == kind.files:
        return kind, output if kind.name == "checkpoint" else output / OUTPUT_ONNX_FILE
    missing, extra = sorted(kind.files - files), sorted(files - kind.files)
    found = "; ".join(
        part
        for part in (
            f"missing {', '.join(missing)}" if missing else "",
            f"unexpected {', '.join(extra[:5])}" if extra else "",
        )
        if part
    )
    raise SubmissionError(
        f"on a {backend!r} track /output must hold exactly {', '.join(sorted(kind.files))} "
        f"({kind.description}): {found}"
    )


def track_description(track: LoadedTrack) -> dict:
    """``track.json``: the limits the harness checks the output against, and what is in /input."""
    spec = track.spec
    return {
        "protocol_version": PROTOCOL_VERSION,
        "model": track.model_spec.name,
        "architecture": track.model_spec.architecture,
        "weights_sha256": track.weights_sha256,
        "backend": spec.backend,
        "max_weight_bits": spec.weight_bits,
        "max_activation_bits": spec.activation_bits,
        "granularities": list(spec.granularities) or [g.value for g in Granularity],
        "weight_granularities": [g.value for g in WeightGranularity],
        "output": output_kind(spec.backend).output
        | {"files": sorted(output_kind(spec.backend).files)},
        "calibration_cases": [case.case_id for case in track.calibration_cases],
        "files": {
            "model_spec": SPEC_FILE,
            "weights": WEIGHTS_FILE if track.model_spec.has_torch_network else None,
            "onnx": ONNX_FILE,
            "calibration": f"{CALIBRATION_DIR}/<case>.safetensors:{CALIBRATION_TENSOR}",
        },
    }

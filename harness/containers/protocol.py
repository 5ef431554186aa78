"""The read-only ``/input`` folder a quantizer container gets (protocol: ``containers/README.md``).

    model.json             architecture, preprocessing and sliding-window spec (as in the track)
    model.safetensors      FP32 weights
    model.onnx             FP32 ONNX export (``harness.artifacts.onnx.export``: input image, output logits)
    calibration/<id>.safetensors   one preprocessed, unlabeled volume each: tensor "image" (C,D,H,W)
    track.json             what the output must satisfy: bits, granularities, the output format
                           (a quantized checkpoint on simulated tracks, Q/DQ ONNX on the real
                           backends), case ids

Only the track's calibration cases are read, never with their labels; test cases never appear.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from harness.artifacts.checkpoint import FORMAT as CHECKPOINT_FORMAT
from harness.artifacts.checkpoint import MANIFEST_NAME
from harness.artifacts.checkpoint import VERSION as CHECKPOINT_VERSION
from harness.artifacts.checkpoint import WEIGHTS_NAME as CHECKPOINT_WEIGHTS
from harness.artifacts.onnx.export import export_fp32
from harness.data.preprocessing import preprocess, read_case
from harness.models.reference import SPEC_FILE, WEIGHTS_FILE, weights_sha256
from harness.submission import LoadedTrack
from reference_methods.simulator.granularity import Granularity, WeightGranularity

PROTOCOL_VERSION = 1
TRACK_FILE = "track.json"
CALIBRATION_DIR = "calibration"
ONNX_FILE = "model.onnx"
OUTPUT_CHECKPOINT_FILES = frozenset({MANIFEST_NAME, CHECKPOINT_WEIGHTS})
OUTPUT_ONNX_FILE = "model.onnx"
CALIBRATION_TENSOR = "image"


def build_container_input(track: LoadedTrack, dest: str | Path) -> Path:
    """Write the ``/input`` folder of ``track`` into ``dest`` (created; must not exist yet)."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    for name in (SPEC_FILE, WEIGHTS_FILE):
        shutil.copyfile(track.spec.model_dir / name, dest / name)
    calibration = dest / CALIBRATION_DIR
    calibration.mkdir()
    for case in track.calibration_cases:
        image = preprocess(read_case(case, with_label=False), track.model_spec.preprocessing)
        tensor = torch.as_tensor(image).detach().to(torch.float32).contiguous().clone()
        save_file({CALIBRATION_TENSOR: tensor}, calibration / f"{case.case_id}.safetensors")
    export_fp32(track.model, track.model_spec, dest / ONNX_FILE)
    (dest / TRACK_FILE).write_text(json.dumps(track_description(track), indent=2) + "\n")
    return dest


def track_description(track: LoadedTrack) -> dict:
    """``track.json``: the limits the harness checks the output against, and what is in /input."""
    spec = track.spec
    return {
        "protocol_version": PROTOCOL_VERSION,
        "model": track.model_spec.name,
        "architecture": track.model_spec.architecture,
        "weights_sha256": weights_sha256(spec.model_dir),
        "backend": spec.backend,
        "max_weight_bits": spec.weight_bits,
        "max_activation_bits": spec.activation_bits,
        "granularities": [g.value for g in Granularity],
        "weight_granularities": [g.value for g in WeightGranularity],
        "output": (
            {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "files": sorted(OUTPUT_CHECKPOINT_FILES),
            }
            if spec.backend == "simulated"
            else {"format": "onnx-qdq", "files": [OUTPUT_ONNX_FILE]}
        ),
        "calibration_cases": [case.case_id for case in track.calibration_cases],
        "files": {
            "model_spec": SPEC_FILE,
            "weights": WEIGHTS_FILE,
            "onnx": ONNX_FILE,
            "calibration": f"{CALIBRATION_DIR}/<case>.safetensors:{CALIBRATION_TENSOR}",
        },
    }

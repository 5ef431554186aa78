"""Wall seconds of one upload's evaluation on a worker whose track is already loaded (FP32 run,
export and calibration cached by a first evaluation): an INT8 ONNX on the demo UNet's ONNX
Runtime W8A8 track and an RTN W8A8 checkpoint on its simulated track, each timed ``--runs`` times.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/upload_evaluation.py --demo demo --runs 5

To compare two trees (before/after a change), run this file with each tree first on
``PYTHONPATH``, alternating, and keep the load average beside each figure (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from harness.artifacts.checkpoint.save import save_checkpoint
from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.entry.upload import Submission, evaluate_submission
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec
from reference_methods.methods import quantize_with
from reference_methods.simulator.scheme import QuantConfig


def timed(track: LoadedTrack, submission: Submission, runs: int) -> list[dict[str, float]]:
    """Per run: wall seconds, and the same minus the efficiency stage (the paired latency
    protocol, whose length follows the machine's noise, not the harness's work)."""
    evaluate_submission(track, submission)  # warm: FP32 run, export, calibration cached
    figures = []
    for _ in range(runs):
        start = time.perf_counter()
        result = evaluate_submission(track, submission).result
        wall = time.perf_counter() - start
        efficiency = result["timings"].get("efficiency", 0.0)
        figures.append({"wall": wall, "without_latency": wall - efficiency})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("demo"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    args = parser.parse_args()
    model, dataset = args.demo / "models" / "unet", args.demo / "dataset"
    ort = LoadedTrack.open(
        TrackSpec(model, dataset, backend="onnxruntime-cpu", weight_bits=8, activation_bits=8)
    )
    simulated = LoadedTrack.open(TrackSpec(model, dataset, weight_bits=8, activation_bits=8))
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_qdq(
            int8_model(ort.model, ort.calibration), ort.model_spec, ort.calibration,
            Path(tmp) / "model.onnx",
        )  # fmt: skip
        config = QuantConfig.from_scheme("w8a8-per-channel")
        rtn = quantize_with("rtn", simulated.model, config, simulated.calibration)
        checkpoint = save_checkpoint(rtn, Path(tmp) / "checkpoint")
        figures = {
            "onnx": timed(ort, Submission("onnx", onnx=onnx_path), args.runs),
            "checkpoint": timed(
                simulated, Submission("checkpoint", checkpoint=checkpoint), args.runs
            ),
        }
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps(figures | {"load": load}))
        return
    for kind, runs in figures.items():
        wall = statistics.median(r["wall"] for r in runs)
        rest = statistics.median(r["without_latency"] for r in runs)
        print(
            f"{kind:<11} median {wall:6.2f} s, without the latency protocol {rest:6.2f} s  "
            f"load {load:.1f}"
        )


if __name__ == "__main__":
    main()

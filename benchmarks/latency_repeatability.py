"""How repeatable the latency protocol's "x faster" is: one entry re-evaluated N times, as a
maintainer's re-evaluation would (a fresh track load, FP32 reference and compiled networks each
time), through the harness entry point ``evaluate_submission``.

The entry is a demo track's baseline computed once (``--baseline``, default the standard INT8
export) or a given ``--onnx`` file. Printed per evaluation: the speed-up's median and 95%
interval and both medians; then the spread, (max - min) / median of the N speed-ups (target
≤ 10%).

    python benchmarks/latency_repeatability.py [--demo DIR] [--model segresnet]
        [--backend openvino-cpu] [--baseline int8-qdq | --onnx FILE] [--times 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from harness.demo import write_demo
from harness.entry.baseline import baselines_for, compute_baseline
from harness.entry.upload import Submission, evaluate_submission
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

SPREAD_TARGET = 0.10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="demo", help="demo bundle (written if missing)")
    parser.add_argument("--model", default="segresnet")
    parser.add_argument("--backend", default="openvino-cpu")
    parser.add_argument("--baseline", default="int8-qdq", help="scheme of the track's baseline")
    parser.add_argument("--onnx", help="evaluate this file instead of a baseline")
    parser.add_argument("--times", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo = Path(args.demo)
    if not (demo / "dataset" / "dataset.json").is_file():
        write_demo(demo)
    spec = TrackSpec(
        model_dir=demo / "models" / args.model,
        dataset_dir=demo / "dataset",
        backend=args.backend,
        weight_bits=8,
        activation_bits=8,
        latency_threads=args.threads,
    )
    if args.onnx:
        artifact = Path(args.onnx)
    else:
        (baseline,) = [b for b in baselines_for(spec) if b.scheme == args.baseline]
        workdir = Path(tempfile.mkdtemp(prefix="repeatability_"))
        track = LoadedTrack.open(spec)
        artifact = compute_baseline(
            track, method=baseline.method, scheme=baseline.scheme, workdir=workdir
        ).artifact
    print(f"{args.model} on {args.backend}, {artifact.name}, {args.threads} thread(s)")
    speedups = []
    for attempt in range(1, args.times + 1):
        track = LoadedTrack.open(spec)
        result = evaluate_submission(track, Submission("onnx", onnx=artifact)).result
        protocol = result["efficiency"]["latency_protocol"]
        speedup = protocol["speedup"]
        speedups.append(speedup["median"])
        print(
            f"  evaluation {attempt}: {speedup['median']:.3f}x faster "
            f"[{speedup['ci95'][0]:.3f}, {speedup['ci95'][1]:.3f}]  entry "
            f"{protocol['entry']['median_ms']:.1f} ms (IQR {protocol['entry']['iqr_ms']:.1f}), "
            f"FP32 {protocol['fp32']['median_ms']:.1f} ms (IQR {protocol['fp32']['iqr_ms']:.1f}), "
            f"{protocol['pairs']} pairs {protocol['unit'].replace('_', ' ')}"
        )
    values = np.array(speedups)
    spread = (values.max() - values.min()) / np.median(values)
    print(
        f"x faster over {args.times} evaluations: median {np.median(values):.3f}, min "
        f"{values.min():.3f}, max {values.max():.3f}; spread {spread:.1%} of the median "
        f"(target ≤ {SPREAD_TARGET:.0%}: {'ok' if spread <= SPREAD_TARGET else 'MISSED'})"
    )


if __name__ == "__main__":
    main()

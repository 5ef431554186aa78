"""Seconds the latency protocol takes per real-backend baseline, before (a fixed number of pairs,
the track's maximum) and after (stopping once the speed-up interval is ``PROTOCOL_CI_WIDTH`` of
the speed-up wide), interleaved in one process, with the pairs taken and the interval's relative
width reached.

Per backend (default ONNX Runtime and OpenVINO) the demo model's baselines are produced once:
the standard INT8 Q/DQ export and, where the backend has one, its engine PTQ tool. Each is opened
as an upload and measured by the backend's ``measure_efficiency`` under both protocols, in
alternating order, ``--repeat`` times; the protocol's own seconds are timed around
``LatencyProtocol.measure``. "Before" is the protocol with a stopping width no real timings reach
(``NEVER``): it takes its maximum of pairs, as the protocol did before it could stop early.

    python benchmarks/latency_protocol_time.py [--demo DIR] [--model segresnet]
        [--backends onnxruntime-cpu,openvino-cpu] [--repeat 2] [--threads 1] [--no-engine-ptq]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from harness.demo import write_demo
from harness.entry.baseline import _int8_export
from harness.entry.upload import Submission, open_submission
from harness.inference.latency import PROTOCOL_CI_WIDTH, LatencyProtocol
from harness.scoring.evaluation import StageTimer
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

NEVER = 1e-12  # a relative interval width real timings never reach: always the maximum of pairs


class TimedProtocol(LatencyProtocol):
    """The protocol, recording the wall seconds of each ``measure`` in ``SECONDS``."""

    def measure(self, fp32, entry) -> dict:
        start = time.perf_counter()
        report = super().measure(fp32, entry)
        SECONDS.append(time.perf_counter() - start)
        return report


SECONDS: list[float] = []


def baselines(track: LoadedTrack, workdir: Path, engine_ptq: bool) -> dict[str, Path]:
    """The backend's baseline artifacts: the standard INT8 export and (with ``engine_ptq``) the
    engine PTQ tool's."""
    path, _ = _int8_export(track, workdir / f"{track.spec.backend}-int8.onnx")
    found = {"INT8 Q/DQ export": path}
    ptq = track.backend.engine_ptq
    if engine_ptq and ptq is not None:
        out = workdir / f"{track.spec.backend}-engine.onnx"
        found[ptq.label] = track.backend.engine_quantize(track.fp32_onnx, track.calibration, out)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--demo", help="demo folder from `harness demo` (made in a temp dir if absent)"
    )
    parser.add_argument("--model", default="segresnet")
    parser.add_argument("--backends", default="onnxruntime-cpu,openvino-cpu")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--engine-ptq",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the backend's engine PTQ baseline",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(args.demo) if args.demo else Path(tmp) / "demo"
        if not (demo / "dataset" / "dataset.json").is_file():
            write_demo(demo)
        print(f"load average {os.getloadavg()}, {os.cpu_count()} cores, {args.threads} thread(s)")
        for backend in args.backends.split(","):
            spec = TrackSpec(
                model_dir=demo / "models" / args.model,
                dataset_dir=demo / "dataset",
                backend=backend,
                weight_bits=8,
                activation_bits=8,
                latency_threads=args.threads,
            )
            track = LoadedTrack.open(spec)
            after = TimedProtocol(threads=args.threads, pairs=spec.latency_pairs)
            before = replace(after, ci_width=NEVER)
            for label, artifact in baselines(track, Path(tmp), args.engine_ptq).items():
                opened = open_submission(track, Submission("onnx", onnx=artifact), StageTimer())
                for round_ in range(args.repeat):
                    order = (("before", before), ("after", after))
                    for name, protocol in order if round_ % 2 == 0 else order[::-1]:
                        report = track.backend.measure_efficiency(
                            opened,
                            volume=track.latency_volume,
                            window=track.model_spec.sliding_window,
                            fp32=track.fp32_onnx,
                            protocol=protocol,
                        )["latency_protocol"]
                        speedup = report["speedup"]
                        print(
                            f"{args.model} {backend:<16} {label:<22} {name:<6} "
                            f"protocol {SECONDS[-1]:7.1f} s  {report['pairs']:>2} pairs  "
                            f"{speedup['median']:.3f}x [{speedup['ci95'][0]:.3f}, "
                            f"{speedup['ci95'][1]:.3f}]  width {report['ci_width']:.1%} "
                            f"(target {PROTOCOL_CI_WIDTH:.0%})  load {os.getloadavg()[0]:.2f}",
                            flush=True,
                        )


if __name__ == "__main__":
    main()

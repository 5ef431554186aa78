"""Harness overhead: time in model inference vs everything else, on the demo test set.

Two paths are measured side by side in one run, after one warm-up case:
- ``checkpoint``: what the leaderboard does for an uploaded quantized checkpoint — load and check
  it, then read, preprocess, infer, restore and score every test case;
- ``scheme``: the harness quantizing the FP32 model itself — read the calibration cases,
  calibrate and quantize, then the same evaluation.
Two overheads are printed, both as a fraction of the time spent in ``inference``:
- wall-clock (the target): wall time of the whole submission (track load, checkpoint load or
  quantization, the pipelined evaluation) minus inference time — what a submitter waits for
  beyond the network itself;
- busy: the sum of every other stage's own time, as if nothing overlapped (I/O, preprocessing,
  postprocessing and metrics run on background threads while the network runs, see
  ``harness/scoring/evaluation.py``; their busy time includes slow-down from sharing the CPU).
Torch runs with ``--threads`` intra-op threads (default 1, leaving this 2-core machine's second
core to the pipeline's background threads).

``--cases N`` scores only the first N test cases (the CI smoke run, ``tests/test_benchmarks.py``,
takes 1: it checks that the benchmark runs, not its figures).

    python benchmarks/harness_overhead.py [--demo DIR] [--model NAME] [--scheme SCHEME]
        [--cases N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from harness.artifacts.checkpoint.save import save_checkpoint
from harness.demo import write_demo
from harness.entry.upload import Submission, open_submission
from harness.scoring.evaluation import StageTimer, evaluate_cases
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec
from reference_methods.simulator.scheme import QuantConfig, quantize

TARGET = 0.15


def measure(
    spec: TrackSpec, submission: Submission, cases: int | None
) -> tuple[dict[str, float], float]:
    """Busy seconds per stage and wall seconds of one submission on a freshly opened track, scored
    on its first ``cases`` test cases (all when None; the FP32 reference run is not included)."""
    start = time.perf_counter()
    track = LoadedTrack.open(spec)
    timer = StageTimer()
    opened = open_submission(track, submission, timer)
    run = evaluate_cases(
        opened.network,
        track.model_spec,
        track.test_cases[:cases],
        track.dataset.labels,
        spec.nsd_tolerance_mm,
        nsd_definition=spec.nsd_definition,
        label_lut=track.label_lut,
    )
    wall = time.perf_counter() - start
    return dict(track.timer.seconds) | dict(timer.seconds) | dict(run.timer.seconds), wall


def report(name: str, seconds: dict[str, float], wall: float) -> float:
    inference = seconds["inference"]
    other = {k: v for k, v in seconds.items() if k != "inference"}
    busy = sum(other.values()) / inference
    overhead = (wall - inference) / inference
    print(f"\n[{name}]")
    print(f"  {'inference':<18} {inference:8.3f} s")
    for stage, value in sorted(other.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<18} {value:8.3f} s busy ({value / inference:6.1%} of inference)")
    print(f"  {'wall clock':<18} {wall:8.3f} s")
    print(f"  busy overhead / inference        = {busy:6.1%}  (if nothing overlapped)")
    verdict = "OK" if overhead <= TARGET else "OVER TARGET"
    print(
        f"  wall-clock overhead / inference  = {overhead:6.1%}  (target ≤ {TARGET:.0%}: {verdict})"
    )
    return overhead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--demo", help="demo folder from `harness demo` (made in a temp dir if absent)"
    )
    parser.add_argument("--model", default="segresnet", help="shipped demo model")
    parser.add_argument("--scheme", default="w8a8-per-channel")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--cases", type=int, help="score only the first N test cases (default: all)"
    )
    args = parser.parse_args()
    if args.cases is not None and args.cases < 1:
        parser.error(f"--cases must be at least 1, got {args.cases}")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(args.demo) if args.demo else Path(tmp) / "demo"
        if not (demo / "dataset" / "dataset.json").is_file():
            write_demo(demo)
        spec = TrackSpec(model_dir=demo / "models" / args.model, dataset_dir=demo / "dataset")
        track = LoadedTrack.open(spec)
        ckpt = Path(tmp) / "ckpt"
        quantized = quantize(track.model, QuantConfig.from_scheme(args.scheme), track.calibration)
        save_checkpoint(quantized, ckpt)

        evaluate_cases(quantized, track.model_spec, track.test_cases[:1], track.dataset.labels, 2.0)

        n = len(track.test_cases[: args.cases])
        print(
            f"model {track.model_spec.name} ({track.model_spec.architecture}), scheme {args.scheme}"
        )
        print(f"{n} test cases, {len(track.calibration_cases)} calibration cases")
        print(f"torch intra-op threads: {torch.get_num_threads()}, CPU cores: {os.cpu_count()}")
        a = report(
            "checkpoint submission",
            *measure(spec, Submission("checkpoint", checkpoint=ckpt), args.cases),
        )
        b = report(
            "scheme quantized by the harness",
            *measure(spec, Submission("scheme", scheme=args.scheme), args.cases),
        )
        print(f"\nside by side: checkpoint overhead {a:.1%}, scheme overhead {b:.1%} of inference")


if __name__ == "__main__":
    main()

"""Arguments shared by the commands that work on a track (dataset × reference model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.backends import backend_names
from harness.inference.latency import (
    MIN_PAIRS,
    PROTOCOL_BURST,
    PROTOCOL_CI_WIDTH,
    PROTOCOL_PAIRS,
)
from harness.scoring.definitions import DEFAULT_NSD_DEFINITION, NsdDefinition
from harness.track.spec import DEFAULT_ACCURACY_GATE, DIVISIONS


def add_track_args(p: argparse.ArgumentParser, out_help: str = "result JSON path") -> None:
    p.add_argument("--dataset", required=True, help="dataset folder (MSD or nnU-Net v2 layout)")
    p.add_argument("--model", required=True, help="reference model folder (model.json + weights)")
    p.add_argument("--test-split", default="test", help="split of splits.json to score on")
    p.add_argument("--calibration-split", default="calibration", help="unlabeled calibration split")
    p.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm")
    p.add_argument(
        "--nsd-definition",
        choices=[d.value for d in NsdDefinition],
        default=DEFAULT_NSD_DEFINITION.value,
        help="NSD surfaces: subvoxel (area-weighted surfels, the publication's and DeepMind "
        "surface-distance's) or voxel (edge-voxel counts, MONAI's default)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help=out_help)


def add_backend_args(p: argparse.ArgumentParser) -> None:
    """The track's backend (choices from the backend registry), its precision limits and the
    rest of its settings: budget, division, float-MAC allowance, granularities, accuracy gate and
    latency protocol."""
    p.add_argument("--backend", choices=backend_names(), default="simulated")
    p.add_argument("--weight-bits", type=int, help="track limit on weight bits")
    p.add_argument("--activation-bits", type=int, help="track limit on activation bits")
    p.add_argument(
        "--max-float-mac-fraction",
        type=float,
        default=0.0,
        help="share of weighted-op MACs an ONNX file may keep with float weights",
    )
    p.add_argument(
        "--bits-per-weight-budget",
        type=float,
        help="most effective bits per weight an artifact may store (default: weight bits + "
        "0.5); e.g. 16.1 for ModelOpt's fp16-stored weights",
    )
    p.add_argument(
        "--division",
        choices=DIVISIONS,
        default=DIVISIONS[0],
        help="closed: post-training quantization only (weights within reach of FP32); "
        "open: any weights",
    )
    p.add_argument(
        "--granularities",
        dest="track_granularities",  # `harness study` has a --granularities of its own
        type=granularity_list,
        default=(),
        help="comma-separated granularity labels an entry may have (default: any), e.g. "
        "per-channel,per-tensor",
    )
    p.add_argument(
        "--accuracy-gate",
        type=float,
        default=DEFAULT_ACCURACY_GATE,
        help=f"an entry passes when its mean DSC is at least this fraction of FP32's "
        f"(default {DEFAULT_ACCURACY_GATE})",
    )
    p.add_argument(
        "--latency-threads",
        type=int,
        default=1,
        help="intra-op threads a real backend runs the entry and the FP32 reference on",
    )
    p.add_argument(
        "--latency-pairs",
        type=int,
        default=PROTOCOL_PAIRS,
        help=f"interleaved FP32/entry pairs of the latency protocol at most (at least "
        f"{MIN_PAIRS}; default {PROTOCOL_PAIRS}; it stops sooner once the speed-up interval is "
        f"{PROTOCOL_CI_WIDTH:.0%}% of the speed-up wide): fewer time a large network sooner, "
        "for a wider interval",
    )
    p.add_argument(
        "--latency-burst",
        type=int,
        default=PROTOCOL_BURST,
        help=f"calls per side in each pair (default {PROTOCOL_BURST})",
    )


def open_track(args: argparse.Namespace):
    """The LoadedTrack the arguments describe."""
    from harness.track.loaded import LoadedTrack
    from harness.track.spec import TrackSpec

    spec = TrackSpec(
        model_dir=Path(args.model),
        dataset_dir=Path(args.dataset),
        test_split=args.test_split,
        calibration_split=args.calibration_split,
        nsd_tolerance_mm=args.nsd_tolerance,
        nsd_definition=args.nsd_definition,
        seed=args.seed,
        backend=getattr(args, "backend", "simulated"),
        weight_bits=getattr(args, "weight_bits", None),
        activation_bits=getattr(args, "activation_bits", None),
        max_float_mac_fraction=getattr(args, "max_float_mac_fraction", 0.0),
        bits_per_weight_budget=getattr(args, "bits_per_weight_budget", None),
        division=getattr(args, "division", DIVISIONS[0]),
        granularities=getattr(args, "track_granularities", ()),
        accuracy_gate=getattr(args, "accuracy_gate", DEFAULT_ACCURACY_GATE),
        latency_threads=getattr(args, "latency_threads", 1),
        latency_pairs=getattr(args, "latency_pairs", PROTOCOL_PAIRS),
        latency_burst=getattr(args, "latency_burst", PROTOCOL_BURST),
    )
    return LoadedTrack.open(spec)


def granularity_list(text: str) -> tuple[str, ...]:
    """``per-channel,per-tensor`` → ("per-channel", "per-tensor"); an empty list is refused."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected NAME[,NAME...], got {text!r}")
    return names

"""``harness evaluate`` and ``harness export-onnx``: score a submission on a track; write the FP32
reference or a quantized model as (Q/DQ) ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from harness.backends import backend_names
from harness.cli.common import add_backend_args, add_track_args, open_track
from harness.cli.graph import refuse_graph_reference
from harness.errors import HarnessError

if TYPE_CHECKING:
    from torch import nn

    from harness.artifacts.onnx.placement import QdqPlacement

EXPORT_PLACEMENTS = ("ort", "openvino")
"""``--placement`` choices: the keys of ``harness.artifacts.onnx.placement.PLACEMENT_CHOICES``,
spelled out here because ``harness --help`` builds this parser without importing numpy."""
DEFAULT_EXPORT_BACKEND = "onnxruntime-cpu"
"""The backend whose placement ``export-onnx`` writes when none is named: ONNX Runtime, the
reference executor of Q/DQ semantics (its placement is ``ort``)."""


def cmd_evaluate(args: argparse.Namespace) -> None:
    from harness.entry.summary import result_lines
    from harness.entry.upload import Submission, evaluate_submission
    from harness.scoring.result import write_result
    from harness.track import run_cache

    if sum(bool(x) for x in (args.scheme, args.checkpoint, args.onnx)) > 1:
        raise HarnessError("give one of --scheme, --checkpoint or --onnx")
    if args.onnx:
        submission = Submission("onnx", onnx=Path(args.onnx))
    elif args.scheme:
        submission = Submission("scheme", scheme=args.scheme)
    elif args.checkpoint:
        submission = Submission("checkpoint", checkpoint=Path(args.checkpoint))
    else:
        submission = Submission("fp32")
    track = open_track(args)
    if args.context_check:
        _print_context_check(track.context_check)
    with run_cache.caching_in(run_cache.user_cache_dir()):  # the FP32 run of earlier calls
        result = evaluate_submission(track, submission, progress=not args.quiet).result
    write_result(result, args.out)
    print("\n".join(result_lines(result, submission.label, args.out)))


def _print_context_check(check: dict) -> None:
    agreement, fraction = check["whole_volume_agreement"], check["full_context_fraction"]
    measured = (
        "not measured (volume too large or a size the network refuses)"
        if agreement is None
        else f"sliding-window vs whole-volume mean DSC {agreement:.3f}"
    )
    share = "" if fraction is None else f"; {fraction:.1%} of each patch with full context"
    print(f"context check on {check['case']}: {measured}{share}")
    if check["warning"]:
        print(f"warning: {check['warning']}")


def cmd_export_onnx(args: argparse.Namespace) -> None:
    from harness.artifacts.checkpoint.load import load_checkpoint
    from harness.artifacts.onnx.agreement import SIMULATION_TOLERANCE, simulation_agreement
    from harness.artifacts.onnx.export import FP32_TOLERANCE, export_fp32
    from harness.artifacts.onnx.int8_scheme import int8_model
    from harness.artifacts.onnx.placement import PLACEMENT_CHOICES
    from harness.backends.onnxruntime import relative_difference
    from harness.entry.engine_export import export_for_engine

    if args.checkpoint and args.int8:
        raise HarnessError("give --checkpoint or --int8, not both")
    refuse_graph_reference(args, "export-onnx" + (" --int8" if args.int8 else ""))
    if args.placement and not (args.checkpoint or args.int8):
        raise HarnessError("--placement places Q/DQ nodes: give it with --int8 or --checkpoint")
    track = open_track(args)
    reference = track.torch_model("export-onnx")
    if args.checkpoint or args.int8:
        calibration = track.calibration
        checkpoint = load_checkpoint(Path(args.checkpoint), reference) if args.checkpoint else None

        def model_for(placement: QdqPlacement) -> nn.Module:
            if checkpoint is not None:
                return checkpoint
            return int8_model(
                reference, calibration, requantize_outputs=placement.requantize_outputs
            )

        placements = (PLACEMENT_CHOICES[args.placement],) if args.placement else None
        model, export = export_for_engine(track, model_for, Path(args.out), placements)
        agreement = simulation_agreement(model, Path(args.out), calibration[0])
        print(
            f"Q/DQ ONNX → {args.out} in {_placement_line(track.backend.name, export)}: the "
            f"simulated model's quantizers exactly; on a calibration batch mean |ORT − simulated| "
            f"/ mean |simulated| {agreement.relative:.3g} (tolerance {SIMULATION_TOLERANCE}), "
            f"max / max {agreement.largest:.3g}"
        )
        return
    path = export_fp32(reference, track.model_spec, args.out)
    difference = relative_difference(reference, path, track.calibration[0])
    if difference > FP32_TOLERANCE:
        raise HarnessError(
            f"the exported graph differs from PyTorch by {difference:.3g} of the logit range "
            f"(> {FP32_TOLERANCE})"
        )
    print(
        f"FP32 ONNX → {path}; max |ORT − PyTorch| / max |PyTorch| {difference:.2g} "
        f"(tolerance {FP32_TOLERANCE})"
    )


def _placement_line(backend: str, export: dict) -> str:
    """``placement P`` and, where placements were compared on ``backend``'s engine, each one's
    deviation from ONNX Runtime."""
    line = f"placement {export['placement']}"
    deviation = export.get("engine_deviation")
    if deviation:
        measured = ", ".join(f"{name} {value:.3f}" for name, value in deviation.items())
        line += f" ({backend} vs ONNX Runtime, mean |Δ logit| / mean |logit|: {measured})"
    return line


def register(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="score FP32, a simulated scheme, a quantized checkpoint or an ONNX file",
    )
    add_track_args(p)
    p.add_argument(
        "--scheme",
        help="e.g. w8a8-per-tensor, w4a4-per-channel, w4a16-adaptive; -asym for asymmetric "
        "activations, -mse or -p<percentile> for their calibration (w8a8-per-tensor-asym-mse)",
    )
    p.add_argument("--checkpoint", help="quantized checkpoint folder (manifest + safetensors)")
    p.add_argument("--onnx", help="ONNX file with Q/DQ nodes (on an ONNX backend)")
    add_backend_args(p)
    p.add_argument(
        "--context-check",
        action="store_true",
        help="first compare the sliding-window prediction of a calibration case with the "
        "whole-volume one (a warning in the result when they disagree)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "export-onnx",
        parents=[common],
        help="FP32 reference → ONNX; or an INT8 / quantized checkpoint → Q/DQ ONNX",
    )
    add_track_args(p, out_help="ONNX file to write")
    p.add_argument("--checkpoint", help="export this quantized checkpoint as Q/DQ ONNX")
    p.add_argument(
        "--int8",
        action="store_true",
        help="export per-channel INT8 weights + static per-tensor INT8 activations (outputs "
        "requantized where the placement's engine needs it, as ONNX Runtime's integer kernels "
        "do) as Q/DQ ONNX",
    )
    p.add_argument(
        "--backend",
        choices=backend_names(),
        default=DEFAULT_EXPORT_BACKEND,
        help="the track's backend: the Q/DQ file is written in its engine's own placement, the "
        "first of its placements the engine runs as ONNX Runtime does (as the site's own INT8 "
        f"baseline is; default {DEFAULT_EXPORT_BACKEND})",
    )
    p.add_argument(
        "--placement",
        choices=EXPORT_PLACEMENTS,
        help="write this engine's Q/DQ placement whatever the backend: ort = uint8 activations "
        "with zero-point 128 and requantized outputs (ONNX Runtime's QLinearConv); openvino = "
        "int8 activations with zero-point 0 on layer inputs only, as NNCF places them",
    )
    p.set_defaults(func=cmd_export_onnx)

"""``harness study``, ``harness sensitivity`` and ``harness activations``: MedQuanBench-style
tables, layer sensitivity by incremental dequantization, activation outlier reports."""

from __future__ import annotations

import argparse

from harness.cli.common import add_track_args, open_track


def cmd_study(args: argparse.Namespace) -> None:
    from harness.analysis.study import format_table, run_study, study_schemes
    from harness.cli.progress import quantization_bars
    from harness.scoring.result import write_result

    track = open_track(args)
    schemes = study_schemes(
        args.precisions.split(","),
        args.granularities.split(","),
        args.activation_quantizers.split(","),
        args.activation_calibrations.split(","),
    )
    methods = args.methods.split(",") if args.methods else ()
    with quantization_bars(not args.quiet):
        study = run_study(
            track,
            schemes,
            progress=not args.quiet,
            methods=methods,
            calibration_resamples=args.calibration_resamples,
        )
    write_result(study, args.out)
    title = f"{track.model_spec.name} ({track.model_spec.architecture}) on {track.dataset.name}"
    print(format_table(study["rows"], title=title))
    print(f"→ {args.out}")


def cmd_sensitivity(args: argparse.Namespace) -> None:
    from harness.analysis.sensitivity import (
        format_sensitivity,
        run_sensitivity,
        write_sensitivity,
    )

    track = open_track(args)
    report = run_sensitivity(
        track, args.scheme, by=args.by, cases=args.cases, top_k=args.top_k, progress=not args.quiet
    )
    json_path, html_path = write_sensitivity(report, args.out)
    print(format_sensitivity(report))
    print(f"→ {json_path}, {html_path} ({report['seconds']:.0f} s)")


def cmd_activations(args: argparse.Namespace) -> None:
    from harness.analysis.activations import (
        activation_report,
        format_activations,
        write_activation_report,
    )

    track = open_track(args)
    report = activation_report(track, threshold=args.threshold)
    json_path, html_path = write_activation_report(report, args.out, top=args.top)
    print(format_activations(report, top=args.top))
    print(f"→ {json_path}, {html_path}")


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def register(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "study", parents=[common], help="FP32 + W8A8/W4A4 × granularities, as a table and JSON"
    )
    add_track_args(p)
    p.add_argument("--precisions", default="w8a8,w4a4")
    p.add_argument("--granularities", default="per-tensor,per-channel,adaptive")
    p.add_argument(
        "--activation-quantizers",
        default="symmetric",
        help="comma-separated activation grids per scheme: symmetric (the study's) and/or "
        "asymmetric (zero-point), e.g. symmetric,asymmetric for both side by side",
    )
    p.add_argument(
        "--activation-calibrations",
        default="max",
        help="comma-separated calibrations of static activation scales per scheme: max (the "
        "study's), percentile (at 99.99) and/or mse, e.g. max,percentile,mse for all three",
    )
    p.add_argument(
        "--calibration-resamples",
        type=_non_negative,
        default=0,
        metavar="K",
        help="re-run every quantized row on K calibration sets resampled (with replacement) from "
        "the track's calibration pool; the rows show the spread of mean DSC as ± calibration",
    )
    p.add_argument(
        "--methods",
        help="comma-separated reference methods (e.g. rtn,gptq,comq,permutation-comq): rows "
        "method × scheme, each quantized, saved as a checkpoint and evaluated as one",
    )
    p.set_defaults(func=cmd_study)

    p = sub.add_parser(
        "sensitivity",
        parents=[common],
        help="layer sensitivity by incremental dequantization: ranked DSC recovered per group",
    )
    add_track_args(p, out_help="folder for sensitivity.json and sensitivity.html")
    p.add_argument("--scheme", default="w4a4-per-tensor", help="fully quantized starting point")
    p.add_argument(
        "--by", choices=("kind", "layer"), default="kind", help="group layers by kind or singly"
    )
    p.add_argument("--cases", type=int, help="score on the first N test cases only (faster)")
    p.add_argument(
        "--top-k", type=int, default=3, help="also score the top 1..K groups kept in FP together"
    )
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser(
        "activations",
        parents=[common],
        help="within/across-channel kurtosis and outlier map of every layer's input",
    )
    add_track_args(p, out_help="folder for activations.json and activations.html")
    p.add_argument(
        "--threshold", type=float, default=7.0, help="outlier: channel absmax > T × median"
    )
    p.add_argument("--top", type=int, default=8, help="outlier layers in the table and heatmap")
    p.set_defaults(func=cmd_activations)

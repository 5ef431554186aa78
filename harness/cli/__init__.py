"""``harness`` command line: demo data, training, reference PTQ methods, evaluation,
MedQuanBench-style studies, layer sensitivity and activation analysis."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.errors import HarnessError


def _track(args: argparse.Namespace):
    from harness.submission import LoadedTrack
    from harness.track.spec import TrackSpec

    spec = TrackSpec(
        model_dir=Path(args.model),
        dataset_dir=Path(args.dataset),
        test_split=args.test_split,
        calibration_split=args.calibration_split,
        nsd_tolerance_mm=args.nsd_tolerance,
        seed=args.seed,
        backend=getattr(args, "backend", "simulated"),
        weight_bits=getattr(args, "weight_bits", None),
        activation_bits=getattr(args, "activation_bits", None),
        max_float_mac_fraction=getattr(args, "max_float_mac_fraction", 0.0),
    )
    return LoadedTrack.open(spec)


def cmd_demo(args: argparse.Namespace) -> None:
    from harness.data.demo import write_demo

    start = time.perf_counter()
    paths = write_demo(Path(args.out), progress=not args.quiet)
    for name, path in paths.items():
        print(f"{name:<10} {path}")
    print(f"demo written in {time.perf_counter() - start:.1f} s")


def cmd_make_phantoms(args: argparse.Namespace) -> None:
    from harness.data.demo import make_phantoms

    out = make_phantoms(Path(args.out), args.cases, args.seed, progress=not args.quiet)
    print(f"wrote {args.cases} phantom cases to {out}")


def cmd_train(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from harness.data.dataset import load_dataset
    from harness.models.reference import read_spec, save_reference_model
    from harness.models.training import TrainConfig, load_training_volumes, train

    spec = read_spec(args.spec)
    dataset = load_dataset(args.dataset)
    config = TrainConfig.from_overrides(
        spec.training,
        iterations=args.iterations,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
    )
    cases = dataset.split(args.split)
    volumes = load_training_volumes(cases, dataset.labels, spec.preprocessing)
    start = time.perf_counter()
    model = train(spec, volumes, config, progress=not args.quiet)
    record = config.to_dict() | {
        "dataset": dataset.name,
        "split": args.split,
        "cases": len(cases),
        "seconds": round(time.perf_counter() - start, 1),
    }
    save_reference_model(model, replace(spec, training=record), args.out)
    print(f"saved {spec.name} to {args.out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from harness.scoring.result import write_result
    from harness.submission import Submission, evaluate_submission

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
    track = _track(args)
    result, _ = evaluate_submission(track, submission, progress=not args.quiet)
    write_result(result, args.out)
    s = result["summary"]
    print(
        f"{submission.label}: mean DSC {s['mean_dsc']:.4f} (↓{s['dsc_drop_pct']:.2f}%), "
        f"mean NSD {s['mean_nsd']:.4f} (↓{s['nsd_drop_pct']:.2f}%), "
        f"95% CI [{s['dsc_ci95'][0]:.4f}, {s['dsc_ci95'][1]:.4f}] → {args.out}"
    )
    if "efficiency" in result:
        e = result["efficiency"]
        patch, volume = e["latency_ms"]["per_patch"], e["latency_ms"].get("per_volume")
        kernels = e.get("kernels", {})
        print(
            f"{e['backend']}: {e['size_mb']:.2f} MB, per patch {patch['median_ms']:.1f} ms "
            f"(p95 {patch['p95_ms']:.1f})"
            + (f", per volume {volume['median_ms']:.0f} ms" if volume else "")
            + (
                f", {kernels['int8_mac_fraction']:.0%} of conv/linear MACs in integer kernels"
                if kernels
                else ""
            )
        )


def cmd_export_onnx(args: argparse.Namespace) -> None:
    from harness.artifacts.checkpoint import load_checkpoint
    from harness.artifacts.onnx.export import (
        FP32_TOLERANCE,
        export_fp32,
        export_qdq,
        int8_model,
        relative_difference,
    )

    if args.checkpoint and args.int8:
        raise HarnessError("give --checkpoint or --int8, not both")
    track = _track(args)
    if args.checkpoint or args.int8:
        calibration = track.calibration
        if args.checkpoint:
            model = load_checkpoint(Path(args.checkpoint), track.model)
        else:
            model = int8_model(track.model, calibration)
        path = export_qdq(model, track.model_spec, calibration, args.out)
        difference = relative_difference(model, path, calibration[0])
        print(
            f"Q/DQ ONNX → {path}; max |ORT − simulated| / max |simulated| on a calibration "
            f"batch {difference:.3g}"
        )
        return
    path = export_fp32(track.model, track.model_spec, args.out)
    difference = relative_difference(track.model, path, track.calibration[0])
    if difference > FP32_TOLERANCE:
        raise HarnessError(
            f"the exported graph differs from PyTorch by {difference:.3g} of the logit range "
            f"(> {FP32_TOLERANCE})"
        )
    print(
        f"FP32 ONNX → {path}; max |ORT − PyTorch| / max |PyTorch| {difference:.2g} "
        f"(tolerance {FP32_TOLERANCE})"
    )


# method options of `harness quantize`: (flag, keyword, type or "flag", help)
_METHOD_OPTIONS: tuple[tuple[str, str, object, str], ...] = (
    ("--sweeps", "sweeps", int, "COMQ sweeps K"),
    ("--shrink", "shrink", float, "COMQ grid shrink factor lambda > 0"),
    ("--update-scale", "update_scale", "flag", "COMQ closed-form scale update after each sweep"),
    ("--sequential", "sequential", "flag", "fit on the partially quantized model's inputs"),
    ("--groups", "groups", int, "Permutation-COMQ magnitude groups G"),
    ("--sort-key", "sort_key", str, "Permutation-COMQ sort key: signed (default) or abs"),
    ("--scope", "scope", str, "Permutation-COMQ scope: layer or channel"),
    ("--block-size", "block_size", int, "GPTQ columns per lazy batch"),
    ("--damp", "damp", float, "GPTQ dampening, a fraction of mean(diag H)"),
    ("--act-order", "act_order", "flag", "GPTQ: quantize inputs by decreasing energy"),
    ("--alpha", "alpha", float, "SmoothQuant migration strength in [0, 1] (default 0.5)"),
    ("--rank", "rank", int, "SVD: rank of the floating-point low-rank branch"),
)


def cmd_quantize(args: argparse.Namespace) -> None:
    from harness.artifacts.checkpoint import save_checkpoint
    from harness.models.reference import weights_sha256
    from reference_methods.methods import method_config, quantize_with
    from reference_methods.simulator.scheme import QuantConfig

    scheme = QuantConfig(
        weight_bits=args.wbits,
        activation_bits=args.abits,
        granularity=args.granularity,
        activation_scales=args.activation_scales,
        weight_group_size=args.group_size,
        skip=tuple(args.skip.split(",")) if args.skip else (),
    )
    options = {
        key: getattr(args, key)
        for _, key, _, _ in _METHOD_OPTIONS
        if getattr(args, key) is not None
    }
    method_config(args.method, scheme, options)  # refuse bad options before reading any data
    track = _track(args)
    start = time.perf_counter()
    model = quantize_with(args.method, track.model, scheme, track.calibration, options)
    seconds = time.perf_counter() - start
    reference = {
        "model": track.model_spec.name,
        "weights_sha256": weights_sha256(track.spec.model_dir),
        "method": args.method,
        "scheme": scheme.name,
        "options": options,
        "calibration_cases": [c.case_id for c in track.calibration_cases],
    }
    save_checkpoint(model, Path(args.out), reference)
    print(f"{args.method} {scheme.name} in {seconds:.1f} s → {args.out}")


def cmd_study(args: argparse.Namespace) -> None:
    from harness.analysis.study import format_table, run_study, study_schemes
    from harness.scoring.result import write_result

    track = _track(args)
    schemes = study_schemes(args.precisions.split(","), args.granularities.split(","))
    methods = args.methods.split(",") if args.methods else ()
    study = run_study(track, schemes, progress=not args.quiet, methods=methods)
    write_result(study, args.out)
    title = f"{track.model_spec.name} ({track.model_spec.architecture}) on {track.dataset.name}"
    print(format_table(study["rows"], title=title))
    print(f"→ {args.out}")


def cmd_sensitivity(args: argparse.Namespace) -> None:
    from harness.analysis.sensitivity import format_sensitivity, run_sensitivity, write_sensitivity

    track = _track(args)
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

    track = _track(args)
    report = activation_report(track, threshold=args.threshold)
    json_path, html_path = write_activation_report(report, args.out, top=args.top)
    print(format_activations(report, top=args.top))
    print(f"→ {json_path}, {html_path}")


def cmd_submit(args: argparse.Namespace) -> None:
    import os

    from harness.client import submit, wait

    token = args.token or os.environ.get("MEDQUANT_TOKEN")
    if not token:
        raise HarnessError("an API token is needed: --token or MEDQUANT_TOKEN")
    created = submit(
        args.url, token, args.track, args.method, Path(args.artifact), args.description
    )
    print(f"submission {created['id']} {created['status']} on {created['track']}")
    if args.wait:
        final = wait(args.url, token, created["id"], args.timeout)
        detail = (
            final["error"] or f"mean DSC {final['mean_dsc']:.4f}, mean NSD {final['mean_nsd']:.4f}"
        )
        print(f"submission {final['id']} {final['status']}: {detail}")
        if final["status"] != "done":
            raise HarnessError(f"submission {final['id']} {final['status']}")


def _add_track_args(p: argparse.ArgumentParser, out_help: str = "result JSON path") -> None:
    p.add_argument("--dataset", required=True, help="dataset folder (MSD or nnU-Net v2 layout)")
    p.add_argument("--model", required=True, help="reference model folder (model.json + weights)")
    p.add_argument("--test-split", default="test", help="split of splits.json to score on")
    p.add_argument("--calibration-split", default="calibration", help="unlabeled calibration split")
    p.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help=out_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "demo", parents=[common], help="write the phantom dataset and the shipped demo models"
    )
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "make-phantoms",
        parents=[common],
        help="write a synthetic abdominal CT dataset (MSD layout)",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--cases", type=int, default=28)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_phantoms)

    p = sub.add_parser(
        "train", parents=[common], help="train a reference model from a model.json spec"
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--spec", required=True, help="model.json (or a folder holding one)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--split", default="train")
    p.add_argument("--iterations", type=int, help="default: the spec's training record, else 1200")
    p.add_argument("--batch-size", type=int, help="default: the spec's training record, else 2")
    p.add_argument("--lr", type=float, help="default: the spec's training record, else 2e-3")
    p.add_argument("--seed", type=int, help="default: the spec's training record, else 0")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "quantize",
        parents=[common],
        help="quantize the reference model with a reference PTQ method → quantized checkpoint",
    )
    _add_track_args(p, out_help="quantized checkpoint folder to write")
    p.add_argument(
        "--method",
        required=True,
        help="rtn, gptq, comq, permutation-comq, smoothquant, svd or rotation",
    )
    p.add_argument("--wbits", type=int, required=True, help="weight bits (2..8)")
    p.add_argument("--abits", type=int, help="activation bits (2..8); omit for weight-only")
    p.add_argument(
        "--granularity",
        default="per-channel",
        help="per-tensor, per-channel or adaptive (the scheme's rule table)",
    )
    p.add_argument(
        "--activation-scales",
        choices=("static", "dynamic"),
        default="static",
        help="per-tensor / per-channel activation scales: calibrated or computed at run time",
    )
    p.add_argument("--group-size", type=int, help="group-wise weights: inputs per scale")
    p.add_argument("--skip", help="comma-separated module names kept in floating point")
    for flag, key, kind, text in _METHOD_OPTIONS:
        if kind == "flag":
            p.add_argument(flag, dest=key, action="store_true", default=None, help=text)
        else:
            p.add_argument(flag, dest=key, type=kind, help=text)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="score FP32, a simulated scheme or a quantized checkpoint",
    )
    _add_track_args(p)
    p.add_argument("--scheme", help="e.g. w8a8-per-tensor, w4a4-per-channel, w4a16-adaptive")
    p.add_argument("--checkpoint", help="quantized checkpoint folder (manifest + safetensors)")
    p.add_argument("--onnx", help="ONNX file with Q/DQ nodes (onnxruntime-cpu / tensorrt tracks)")
    p.add_argument(
        "--backend", choices=("simulated", "onnxruntime-cpu", "tensorrt"), default="simulated"
    )
    p.add_argument("--weight-bits", type=int, help="track limit on weight bits")
    p.add_argument("--activation-bits", type=int, help="track limit on activation bits")
    p.add_argument(
        "--max-float-mac-fraction",
        type=float,
        default=0.0,
        help="share of weighted-op MACs an ONNX file may keep with float weights",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "export-onnx",
        parents=[common],
        help="FP32 reference → ONNX; or an INT8 / quantized checkpoint → Q/DQ ONNX",
    )
    _add_track_args(p, out_help="ONNX file to write")
    p.add_argument("--checkpoint", help="export this quantized checkpoint as Q/DQ ONNX")
    p.add_argument(
        "--int8",
        action="store_true",
        help="export per-channel INT8 weights + static per-tensor INT8 activations as Q/DQ ONNX",
    )
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser(
        "study", parents=[common], help="FP32 + W8A8/W4A4 × granularities, as a table and JSON"
    )
    _add_track_args(p)
    p.add_argument("--precisions", default="w8a8,w4a4")
    p.add_argument("--granularities", default="per-tensor,per-channel,adaptive")
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
    _add_track_args(p, out_help="folder for sensitivity.json and sensitivity.html")
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
    _add_track_args(p, out_help="folder for activations.json and activations.html")
    p.add_argument(
        "--threshold", type=float, default=7.0, help="outlier: channel absmax > T × median"
    )
    p.add_argument("--top", type=int, default=8, help="outlier layers in the table and heatmap")
    p.set_defaults(func=cmd_activations)

    p = sub.add_parser(
        "submit", help="submit a quantized checkpoint or ONNX file to a leaderboard site (REST API)"
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="site address")
    p.add_argument("--token", help="personal API token (default: $MEDQUANT_TOKEN)")
    p.add_argument("--track", required=True, help="track slug")
    p.add_argument("--method", required=True, help="method name shown on the leaderboard")
    p.add_argument("--description", default="")
    p.add_argument(
        "--checkpoint",
        dest="artifact",
        required=True,
        help="checkpoint folder (manifest.json + weights.safetensors), checkpoint .zip or .onnx",
    )
    p.add_argument("--wait", action="store_true", help="poll until the evaluation finishes")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait at most")
    p.set_defaults(func=cmd_submit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (HarnessError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

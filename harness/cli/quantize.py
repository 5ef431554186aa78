"""``harness quantize``: a reference PTQ method → quantized checkpoint. Its method options, their
help and the list of methods come from the method registry (``reference_methods.methods``), read
by the parser from a copy as data (``METHOD_OPTIONS_PATH``) so that it starts without torch."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path

from harness.cli.common import add_track_args, open_track
from harness.cli.graph import refuse_graph_reference


def cmd_quantize(args: argparse.Namespace) -> None:
    from harness.artifacts.checkpoint.save import save_checkpoint
    from harness.cli.progress import quantization_bars
    from reference_methods.methods import all_options, method_config, quantize_with
    from reference_methods.simulator.scheme import QuantConfig

    scheme = QuantConfig(
        weight_bits=args.wbits,
        activation_bits=args.abits,
        granularity=args.granularity,
        activation_scales=args.activation_scales,
        weight_group_size=args.group_size,
        skip=tuple(args.skip.split(",")) if args.skip else (),
        activation_quantizer=args.activation_quantizer,
        activation_calibration=args.activation_calibration,
        **(
            {}
            if args.activation_percentile is None
            else {"activation_percentile": args.activation_percentile}
        ),
    )
    options = {
        name: getattr(args, name) for name in all_options() if getattr(args, name, None) is not None
    }
    method_config(args.method, scheme, options)  # refuse bad options before reading any data
    refuse_graph_reference(args, "quantize")
    track = open_track(args)
    start = time.perf_counter()
    with quantization_bars(not args.quiet):
        network = track.torch_model(args.method)
        model = quantize_with(args.method, network, scheme, track.calibration, options)
    seconds = time.perf_counter() - start
    reference = {
        "model": track.model_spec.name,
        "weights_sha256": track.weights_sha256,
        "method": args.method,
        "scheme": scheme.name,
        "options": options,
        "calibration_cases": [c.case_id for c in track.calibration_cases],
    }
    save_checkpoint(model, Path(args.out), reference)
    print(f"{args.method} {scheme.name} in {seconds:.1f} s → {args.out}")


SCHEME_FLAGS = (
    ("activation_scales", "--activation-scales"),
    ("activation_quantizer", "--activation-quantizer"),
    ("activation_calibration", "--activation-calibration"),
    ("activation_percentile", "--activation-percentile"),
    ("weight_group_size", "--group-size"),
)
"""Scheme settings beyond bits and granularity, and their flags (written when not the default)."""


def quantize_command(
    method: str,
    scheme: str,
    options: Mapping | None = None,
    *,
    dataset: str = "DATASET",
    model: str = "MODEL",
    out: str = "CKPT",
) -> list[str]:
    """The ``harness quantize`` command line (as argv) that quantizes like ``method`` under
    ``scheme`` with ``options``: what a baseline ran, to be re-run offline on the track's
    calibration bundle (``dataset``) and FP32 model folder (``model``)."""
    from reference_methods.simulator.scheme import QuantConfig

    config = QuantConfig.from_scheme(scheme)
    default = QuantConfig(config.weight_bits, config.activation_bits, config.granularity)
    argv = ["harness", "quantize", "--dataset", dataset, "--model", model, "--method", method,
            "--wbits", str(config.weight_bits)]  # fmt: skip
    if config.activation_bits is not None:
        argv += ["--abits", str(config.activation_bits)]
    argv += ["--granularity", str(config.granularity)]
    for field, flag in SCHEME_FLAGS:
        if getattr(config, field) != getattr(default, field):
            argv += [flag, str(getattr(config, field))]
    if config.skip:
        argv += ["--skip", ",".join(config.skip)]
    for name, value in sorted((options or {}).items()):
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        else:
            argv += [flag, ",".join(value) if isinstance(value, list | tuple) else str(value)]
    return [*argv, "--out", out]


METHOD_OPTIONS_PATH = Path(__file__).with_name("method_options.json")
"""The registry's method options as data (``method_option_table``), so that the parser, ``harness
quantize --help`` included, starts without importing the methods and torch; a test checks it
against the registry (regenerate: ``python -m harness.cli.quantize``)."""
_PARSERS = {
    "int": int,
    "float": float,
    "str": str,
    "list": lambda text: tuple(part for part in text.split(",") if part),
}
"""Command-line text → value per option kind (as ``MethodOption.parse``)."""


def method_option_table() -> dict:
    """Every registered method and option (kind, default, help, choices, owners), from the method
    registry: imports the methods, and torch."""
    from reference_methods.methods import METHODS, all_options, methods_with

    return {
        "methods": list(METHODS),
        "options": {
            name: {
                "kind": option.kind.__name__,
                "required": option.required,
                "default": None if option.required else option.default,
                "help": option.help,
                "choices": list(option.choices) if option.choices else None,
                "owners": list(methods_with(name)),
            }
            for name, option in all_options().items()
        },
    }


def add_method_options(p: argparse.ArgumentParser) -> None:
    """One flag per registered method option (``--block-size`` for ``block_size``), typed and
    documented from ``METHOD_OPTIONS_PATH``; unset flags are not passed to the method."""
    table = json.loads(METHOD_OPTIONS_PATH.read_text())
    p.add_argument("--method", required=True, help=f"one of: {', '.join(table['methods'])}")
    for name, option in table["options"].items():
        flag = "--" + name.replace("_", "-")
        text = f"{', '.join(option['owners'])}: {option['help']}"
        if option["choices"]:
            text += f" ({' or '.join(option['choices'])})"
        kind, default = option["kind"], option["default"]
        if not option["required"] and default is not None and kind != "bool":
            text += f" (default {default})"
        if kind == "bool":
            p.add_argument(flag, dest=name, action="store_true", default=None, help=text)
        else:
            p.add_argument(flag, dest=name, type=_PARSERS[kind], help=text)


def register(sub, common: argparse.ArgumentParser) -> None:
    """The ``quantize`` command, its scheme flags and every method's option flags."""
    p = sub.add_parser(
        "quantize",
        parents=[common],
        help="quantize the reference model with a reference PTQ method → quantized checkpoint",
    )
    add_track_args(p, out_help="quantized checkpoint folder to write")
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
    p.add_argument(
        "--activation-quantizer",
        choices=("symmetric", "asymmetric"),
        default="symmetric",
        help="activation grid: signed symmetric (the study's) or unsigned with a zero-point",
    )
    p.add_argument(
        "--activation-calibration",
        choices=("max", "percentile", "mse"),
        default="max",
        help="how static activation scales are chosen from the calibration patches",
    )
    p.add_argument(
        "--activation-percentile",
        type=float,
        help="percentile calibration: the percentile of |x| (or of x, both tails) kept "
        "(default 99.99)",
    )
    p.add_argument("--group-size", type=int, help="group-wise weights: inputs per scale")
    p.add_argument("--skip", help="comma-separated module names kept in floating point")
    add_method_options(p)
    p.set_defaults(func=cmd_quantize)


if __name__ == "__main__":
    METHOD_OPTIONS_PATH.write_text(json.dumps(method_option_table(), indent=2) + "\n")

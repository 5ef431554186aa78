"""Per-layer reconstruction error of RTN, COMQ and Permutation-COMQ on the shipped demo models.

For every shipped demo model with trained weights and every bit width (weight-only), each
quantized layer's error ||X W^T - X Q^T||_F^2 = tr((W - Q) H (W - Q)^T) on the FP32 model's inputs
over the demo track's calibration patches, for
- RTN per-channel (symmetric absmax, same bits),
- COMQ (K = 1, lambda = 1, fixed scale),
- Permutation-COMQ (scope layer, G = C_out groups) with its default signed sort key (P-COMQ)
  and with the |W| sort key (P-COMQ|W|, shown for comparison),
with issue 3's checks: COMQ <= RTN on every layer, summed Permutation-COMQ <= summed COMQ (for the
default key; the |W| key's verdict is printed too). Each
layer's Gram comes from one FP32 pass per model and serves all methods and bit widths -- exactly
what the methods' ``apply`` uses in its default (FP32-input) mode.

    python benchmarks/reconstruction_error.py [--demo DIR] [--models unet,...] [--bits 4,2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from harness.demo import shipped_models, write_demo
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec
from reference_methods.methods import rtn
from reference_methods.methods.comq import comq
from reference_methods.methods.permutation_comq import permutation_comq
from reference_methods.simulator.quantized_layers import QUANT_LAYER_TYPES, layer_kind
from reference_methods.simulator.scheme import QuantConfig, quantized_layers, target_layers
from reference_methods.simulator.weight_format import to_rows
from reference_methods.statistics.gram import collect_grams
from reference_methods.statistics.reconstruction import layer_reconstruction_error

METHODS = ("RTN", "COMQ", "P-COMQ", "P-COMQ|W|")


def layer_errors(track: LoadedTrack, bits_list: list[int]) -> dict[int, dict[str, dict]]:
    """{bits: {layer: {"shape": (m, n), method: error}}} for the track's FP32 model."""
    model = track.model.eval()
    layers = target_layers(model, QuantConfig(8, None, "per-channel"))
    grams = collect_grams(model, layers, track.calibration)
    table: dict[int, dict[str, dict]] = {}
    for bits in bits_list:
        rtn_layers = quantized_layers(rtn.apply(model, QuantConfig(bits, None, "per-channel")))
        table[bits] = {}
        for name, layer in layers.items():
            axis = QUANT_LAYER_TYPES[layer_kind(layer)].weight_channel_axis
            weight, gram = to_rows(layer.weight.detach(), axis), grams[name]
            quantized = {
                "RTN": rtn_layers[name].quantized_weight(),
                "COMQ": comq(weight, gram, bits),
                "P-COMQ": permutation_comq(weight, gram, bits, sort_key="signed"),
                "P-COMQ|W|": permutation_comq(weight, gram, bits, sort_key="abs"),
            }
            row = {"shape": tuple(weight.shape)}
            for method, result in quantized.items():
                row[method] = layer_reconstruction_error(gram, weight, result.dequantize())
            table[bits][name] = row
    return table


def report(model_name: str, bits: int, rows: dict[str, dict]) -> bool:
    """Print one model's per-layer table at ``bits``; True when both checks hold."""
    width = max(len(name) for name in rows)
    print(f"\n[{model_name}] W{bits}A16 weight-only, error tr((W-Q)H(W-Q)^T) per layer")
    header = f"{'layer':<{width}} {'m x n':>11} " + " ".join(f"{m:>11}" for m in METHODS)
    print(header + "  COMQ<=RTN")
    print("-" * (len(header) + 11))
    for name, row in rows.items():
        shape = f"{row['shape'][0]}x{row['shape'][1]}"
        errors = " ".join(f"{row[m]:11.4g}" for m in METHODS)
        print(
            f"{name:<{width}} {shape:>11} {errors}  {'yes' if row['COMQ'] <= row['RTN'] else 'NO'}"
        )
    totals = {m: sum(row[m] for row in rows.values()) for m in METHODS}
    print(f"{'sum':<{width}} {'':>11} " + " ".join(f"{totals[m]:11.4g}" for m in METHODS))
    per_layer = all(row["COMQ"] <= row["RTN"] for row in rows.values())
    summed = totals["P-COMQ"] <= totals["COMQ"]
    summed_abs = totals["P-COMQ|W|"] <= totals["COMQ"]
    print(
        f"COMQ <= RTN on every layer: {'OK' if per_layer else 'NO'}; "
        f"summed P-COMQ <= COMQ: {'OK' if summed else 'NO'} "
        f"(P-COMQ / COMQ = {totals['P-COMQ'] / totals['COMQ']:.3f}, "
        f"COMQ / RTN = {totals['COMQ'] / totals['RTN']:.3f}); "
        f"|W| key: {'OK' if summed_abs else 'NO'} "
        f"(P-COMQ|W| / COMQ = {totals['P-COMQ|W|'] / totals['COMQ']:.3f})"
    )
    return per_layer and summed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--demo", help="demo folder from `harness demo` (made in a temp dir if absent)"
    )
    parser.add_argument("--models", help="comma-separated shipped demo models (default: all)")
    parser.add_argument("--bits", default="4,2", help="comma-separated weight bits")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models.split(",") if args.models else list(shipped_models())
    bits_list = [int(b) for b in args.bits.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(args.demo) if args.demo else Path(tmp) / "demo"
        if not (demo / "dataset" / "dataset.json").is_file():
            write_demo(demo)
        verdicts = {}
        for name in names:
            spec = TrackSpec(model_dir=demo / "models" / name, dataset_dir=demo / "dataset")
            track = LoadedTrack.open(spec)
            for bits, rows in layer_errors(track, bits_list).items():
                verdicts[(name, bits)] = report(name, bits, rows)
    print(
        "\nsummary: "
        + ", ".join(
            f"{name} W{bits}: {'OK' if ok else 'NO'}" for (name, bits), ok in verdicts.items()
        )
    )


if __name__ == "__main__":
    main()

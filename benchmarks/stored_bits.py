"""Bits per weight as reported against the bytes a checkpoint really stores.

For each method and weight width, ``harness quantize`` writes a checkpoint of the demo UNet on the
demo dataset; the table gives the bits per weight ``describe_checkpoint`` reports (what boards show
and the budget check uses), the same figure recomputed here straight from the weights file -- the
bytes of the quantized layers' weight tensors (codes, scales, zero-points, group ids, input scales,
low-rank factors) x 8 / their number of weights --, the checkpoint's file bytes and × smaller
against the FP32 weights file.

    python -m harness.cli demo --out /tmp/demo
    python benchmarks/stored_bits.py --demo /tmp/demo [--out /tmp/stored_bits]

Measured (format version 2, demo UNet and demo dataset, default options, 7 Dec 2026; FP32
weights file 2,417,340 B):

| method | W | reported bits/weight | stored bytes x 8 / weights | file bytes | × smaller |
|---|---|---|---|---|---|
| gptq | 2 | 2.0312 | 2.0312 | 166,174 | 14.55 |
| gptq | 4 | 4.0312 | 4.0312 | 316,873 | 7.63 |
| comq | 2 | 2.0322 | 2.0322 | 169,775 | 14.24 |
| comq | 4 | 4.0335 | 4.0335 | 320,580 | 7.54 |
| permutation-comq column | 2 | 2.3454 | 2.3454 | 197,193 | 12.26 |
| permutation-comq column | 4 | 4.3596 | 4.3596 | 348,951 | 6.93 |
| permutation-comq layer | 2 | 7.9037 | 7.9037 | 615,435 | 3.93 |
| permutation-comq layer | 4 | 9.9058 | 9.9058 | 766,305 | 3.15 |

Permutation-COMQ ``column`` at W2 fits the default 2.5 budget; scope ``layer`` stores a group id
per weight (ceil(log2 m) bits) and does not. The column W2 checkpoint rewritten in the
version-1 layout (int8 codes, int32 zero-points and a group id per weight) takes 3,066,250 B,
40.48 bits per quantized weight, 79% of them group ids: 1.27x larger than FP32.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

from harness.artifacts.checkpoint.describe import SIZE_PARTS, describe_checkpoint
from harness.artifacts.checkpoint.packing import PACKED_METADATA
from harness.artifacts.checkpoint.storage import MANIFEST_NAME, WEIGHTS_NAME
from harness.cli import main
from harness.models.reference import WEIGHTS_FILE

RUNS = (
    ("gptq", ()),
    ("comq", ()),
    ("permutation-comq", ("--scope", "column")),
    ("permutation-comq", ("--scope", "layer")),
)
WIDTHS = (2, 4)


def stored_weight_bits(ckpt: Path) -> float:
    """8 x bytes stored for the quantized layers' weight tensors / their number of weights."""
    manifest = json.loads((ckpt / MANIFEST_NAME).read_text())
    stored = load_file(ckpt / WEIGHTS_NAME)
    with safe_open(ckpt / WEIGHTS_NAME, "pt") as handle:
        packed = json.loads((handle.metadata() or {}).get(PACKED_METADATA, "{}"))
    tensors = [t for part in SIZE_PARTS.values() for t in part]
    total = weights = 0
    for layer in manifest["layers"]:
        for name in tensors:
            tensor = stored.get(f"{layer}.{name}")
            total += 0 if tensor is None else tensor.numel() * tensor.element_size()
        codes = f"{layer}.weight_codes"
        weights += math.prod(packed[codes]["shape"]) if codes in packed else stored[codes].numel()
    return 8 * total / weights


def main_table(demo: Path, out: Path) -> list[dict]:
    model = demo / "models" / "unet"
    fp32_bytes = (model / WEIGHTS_FILE).stat().st_size
    rows = []
    for method, extra in RUNS:
        for bits in WIDTHS:
            ckpt = out / f"{method}{''.join(extra[1:])}-w{bits}"
            argv = ["quantize", "--quiet", "--method", method, "--wbits", str(bits), *extra]
            argv += ["--dataset", str(demo / "dataset"), "--model", str(model), "--out", str(ckpt)]
            if main(argv) != 0:
                raise SystemExit(f"harness quantize failed: {argv}")
            summary = describe_checkpoint(ckpt)
            rows.append(
                {
                    "method": method + (f" {extra[1]}" if extra else ""),
                    "bits": bits,
                    "reported_bpw": summary["bits_per_weight"],
                    "stored_bpw": stored_weight_bits(ckpt),
                    "file_bytes": summary["size_bytes"],
                    "x_smaller": fp32_bytes / summary["size_bytes"],
                }
            )
    print(f"FP32 weights file: {fp32_bytes:,} B")
    header = "| method | W | reported bits/weight | stored bytes x 8 / weights | file bytes |"
    print(header + " × smaller |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['method']} | {row['bits']} | {row['reported_bpw']:.4f} | "
            f"{row['stored_bpw']:.4f} | {row['file_bytes']:,} | {row['x_smaller']:.2f} |"
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", type=Path, required=True, help="folder `harness demo` wrote")
    parser.add_argument("--out", type=Path, default=Path("/tmp/stored_bits"))
    args = parser.parse_args()
    main_table(args.demo, args.out)

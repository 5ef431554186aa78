"""Mean DSC, NSD and effective bits per weight of RTN / GPTQ / COMQ / Permutation-COMQ (its
in-budget column scope and its per-weight layer scope) on the shipped demo models.

For every shipped demo model with trained weights, each method quantizes the FP32 model at each
weight-only precision (per-channel weights; default W4A16 and W2A16) on the demo track's
calibration patches with its default options, the result is saved as a quantized checkpoint and
evaluated as one on the demo test split -- exactly ``harness study --methods ...`` -- and the
means are printed side by side with the bits per weight read from each checkpoint, one row per
method, FP32 first. A method may carry options: ``permutation-comq[scope=layer]``.

    python benchmarks/method_table.py [--demo DIR] [--models unet,...] [--precisions w4a16,w2a16]
                                      [--methods rtn,gptq,comq,permutation-comq] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from harness.analysis.study import run_study
from harness.demo import shipped_models, write_demo
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

METHODS = ("rtn", "gptq", "comq", "permutation-comq", "permutation-comq[scope=layer]")
PRECISIONS = ("w4a16", "w2a16")
GRANULARITY = "per-channel"


def method_table(model_name: str, rows: list[dict], precisions: list[str]) -> str:
    """One model's table: Method | <precision> DSC NSD | ..., FP32 in every precision column."""
    fp32 = rows[0]
    by_method: dict[str, dict[str, dict]] = {}
    for row in rows[1:]:
        by_method.setdefault(row["method"], {})[row["scheme"]] = row
    width = max(len("Method"), *(len(m) for m in by_method))
    header = f"{'Method':<{width}}" + "".join(f" | {p.upper():^21}" for p in precisions)
    sub = f"{'':<{width}}" + "".join(f" | {'DSC':>7} {'NSD':>7} {'bpw':>5}" for _ in precisions)
    lines = [f"[{model_name}] mean over test cases, {GRANULARITY} weights", header, sub]
    lines.append("-" * len(sub))
    cells = "".join(
        f" | {fp32['mean_dsc']:7.4f} {fp32['mean_nsd']:7.4f} {32:5.2f}" for _ in precisions
    )
    lines.append(f"{'FP32':<{width}}{cells}")
    for method, schemes in by_method.items():
        cells = ""
        for precision in precisions:
            row = schemes[f"{precision}-{GRANULARITY}"]
            cells += (
                f" | {row['mean_dsc']:7.4f} {row['mean_nsd']:7.4f} {row['bits_per_weight']:5.2f}"
            )
        lines.append(f"{method:<{width}}{cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--demo", help="demo folder from `harness demo` (made in a temp dir if absent)"
    )
    parser.add_argument("--models", help="comma-separated shipped demo models (default: all)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", help="also write every model's study rows to this JSON file")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    available = shipped_models()
    names = args.models.split(",") if args.models else list(available)
    precisions = args.precisions.split(",")
    methods = args.methods.split(",")
    schemes = [f"{p}-{GRANULARITY}" for p in precisions]

    tables, studies = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(args.demo) if args.demo else Path(tmp) / "demo"
        if not (demo / "dataset" / "dataset.json").is_file():
            write_demo(demo)
        for name in names:
            model_dir = demo / "models" / name
            if name not in available or not (model_dir / "model.safetensors").is_file():
                print(f"[{name}] skipped: no trained weights shipped")
                continue
            start = time.perf_counter()
            track = LoadedTrack.open(TrackSpec(model_dir=model_dir, dataset_dir=demo / "dataset"))
            study = run_study(track, schemes, methods=methods)
            studies[name] = study["rows"]
            tables.append(method_table(name, study["rows"], precisions))
            print(tables[-1] + f"\n({time.perf_counter() - start:.0f} s)\n", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(studies, indent=2) + "\n")


if __name__ == "__main__":
    main()

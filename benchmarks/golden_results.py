"""Golden results: the scores a refactoring must leave bit-identical, written as one JSON file.

For each shipped demo model (UNet, SegResNet, UNETR) the default study (FP32, W8A8 and W4A4 under
per-tensor, per-channel and adaptive) plus GPTQ W4A16 per-channel as a checkpoint; and a SegResNet
W8A8 board on ONNX Runtime and on OpenVINO (FP32 row and every baseline). Each row keeps its
per-case, per-class DSC and NSD and its verified precision (bits, granularity, bits per weight);
timings and latencies are left out (they are measurements, not scores).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/golden_results.py --demo demo --out before.json
    ... (change the code) ...
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/golden_results.py --demo demo --out after.json
    cmp before.json after.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from harness.analysis.study import run_study, study_schemes
from harness.entry.baseline import baselines_for, compute_baseline, compute_reference
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

DEMO_MODELS = ("unet", "segresnet", "unetr")
BOARD_BACKENDS = ("onnxruntime-cpu", "openvino-cpu")
PRECISION_KEYS = ("weight_bits", "activation_bits", "granularity", "bits_per_weight")


def scores(result: dict) -> dict:
    """What must not change: the row's identity, its per-case scores and its verified precision."""
    precision = result["submission"]["precision"]
    return {
        "scheme": result["submission"]["scheme"],
        "method": result["submission"].get("method"),
        "cases": result["cases"],
        "summary": {k: result["summary"][k] for k in ("mean_dsc", "mean_nsd", "dsc_drop_pct")},
        "precision": {k: precision.get(k) for k in PRECISION_KEYS},
    }


def study(demo: Path, model: str) -> list[dict]:
    spec = TrackSpec(model_dir=demo / "models" / model, dataset_dir=demo / "dataset")
    track = LoadedTrack.open(spec)
    rows = [scores(r) for r in run_study(track, study_schemes())["results"]]
    with tempfile.TemporaryDirectory() as tmp:
        gptq = compute_baseline(track, method="gptq", scheme="w4a16-per-channel", workdir=tmp)
    return [*rows, scores(gptq.result)]


def board(demo: Path, backend: str) -> list[dict]:
    spec = TrackSpec(
        model_dir=demo / "models" / "segresnet",
        dataset_dir=demo / "dataset",
        backend=backend,
        weight_bits=8,
        activation_bits=8,
    )
    track = LoadedTrack.open(spec)
    rows = [scores(compute_reference(track).result)]
    for baseline in baselines_for(spec):
        with tempfile.TemporaryDirectory() as tmp:
            result = compute_baseline(
                track, method=baseline.method, scheme=baseline.scheme, workdir=Path(tmp)
            ).result
        rows.append(scores(result))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("demo"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", choices=("study", "boards"), default=None)
    args = parser.parse_args()
    golden: dict = {}
    if args.only in (None, "study"):
        golden["study"] = {model: study(args.demo, model) for model in DEMO_MODELS}
    if args.only in (None, "boards"):
        golden["boards"] = {backend: board(args.demo, backend) for backend in BOARD_BACKENDS}
    args.out.write_text(json.dumps(golden, indent=1, sort_keys=True))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

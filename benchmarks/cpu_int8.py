"""Real INT8 on the CPU, side by side in one run: ONNX Runtime and OpenVINO, FP32 and the INT8
baselines the project ships, for the demo UNet and SegResNet, at the roi and at 2x the roi per
axis.

The INT8 models are the tracks' own baselines, computed by the harness entry point
(``compute_baseline``: quantize, verify as an upload, evaluate): on the ``onnxruntime-cpu`` track
the standard INT8 export in ONNX Runtime's placement and its profiled variant (layers ORT runs
slower in integer kept float, within a 30% float-MAC allowance); on the ``openvino-cpu`` track the
standard INT8 export in OpenVINO's placement and NNCF's PTQ. Their mean DSC over the test cases
is printed with the drop relative to FP32 (target ≤ 1%).

Latency is per patch (batch 1), every network of one runtime and size timed in interleaved rounds
so all see the same machine load: median and IQR in ms, and each INT8 model's speed-up over FP32
on the same runtime as the latency protocol computes it (fastest FP32 call over fastest INT8
call, median and 95% interval of its bootstrap over rounds).
OpenVINO runs with inference precision pinned to f32 (its bf16 default would change "FP32"), ORT
with full graph optimisation; both with ``--threads`` threads. At 2x the roi the same files run on
the larger patch (their input shape is enlarged; the weights and scales are the roi's).

Targets (``--models unet,segresnet``): SegResNet's best OpenVINO INT8 ≥ 2.5x OpenVINO FP32 and
≥ 4x ONNX Runtime FP32 at the roi; UNet's ≥ 1.2x; the standard INT8 export within 20% of NNCF's
latency (the same estimator, NNCF in place of FP32). The last line is
``openvino int8 speed-up: segresnet <x>x, unet <y>x`` (the best OpenVINO INT8 baseline over
OpenVINO FP32 at the roi).

    python benchmarks/cpu_int8.py [--demo DIR] [--rounds 15] [--rounds-large 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

from harness.backends.openvino import compile_config, read_onnx, runtime_report
from harness.demo import write_demo
from harness.entry.baseline import INT8_QDQ, INT8_QDQ_PROFILED, compute_baseline
from harness.inference.latency import speedup_interval, spread_stats
from harness.onnxruntime_session import create_session
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

ORT_FLOAT_MAC_ALLOWANCE = 0.3
"""The demo ONNX Runtime track's allowance (seed_demo): room for the profiled float layers."""
SCALES = (1, 2)
"""Patch sizes: the roi, and twice the roi per axis."""
TARGETS = {
    ("segresnet", "openvino fp32"): 2.5,
    ("segresnet", "onnxruntime fp32"): 4.0,
    ("unet", "openvino fp32"): 1.2,
}
"""Best OpenVINO INT8 speed-up at the roi over the named FP32, per model."""
DSC_DROP_TARGET_PCT = 1.0
EXPORT_VS_NNCF_TARGET = 1.2
"""The standard INT8 export's latency over NNCF's (fastest over fastest), at most."""
ORT_VARIANTS = {"int8": INT8_QDQ, "int8 profiled": INT8_QDQ_PROFILED}
OV_VARIANTS = {"int8": INT8_QDQ, "nncf": "nncf-int8"}


def enlarged(path: Path, factor: int, out: Path) -> Path:
    """A copy of the ONNX file whose input and output spatial dimensions are ``factor`` x."""
    model = onnx.load(str(path))
    del model.graph.value_info[:]
    for value in (*model.graph.input, *model.graph.output):
        for dim in value.type.tensor_type.shape.dim[2:]:
            dim.dim_value *= factor
    onnx.save(model, str(out))
    return out


def ort_call(path: Path, threads: int, patch: np.ndarray) -> Callable[[], object]:
    session = create_session(path, threads)
    (graph_input,) = session.get_inputs()
    return lambda: session.run(None, {graph_input.name: patch})


def openvino_call(path: Path, threads: int, patch: np.ndarray):
    import openvino as ov

    model = read_onnx(path)
    (graph_input,) = model.inputs
    model.reshape({graph_input.get_any_name(): list(patch.shape)})
    compiled = ov.Core().compile_model(model, "CPU", compile_config(threads))
    request = compiled.create_infer_request()
    return (lambda: request.infer({0: patch})), compiled


def interleaved(calls: dict[str, Callable[[], object]], rounds: int, warmup: int = 2):
    """Seconds of each call per round, all calls alternating within every round (the order
    reversed every other round)."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def baselines(demo: Path, model: str, workdir: Path) -> dict:
    """The FP32 file (both runtimes run the same one) and each runtime's INT8 baselines (result
    document and artifact), by name; the FP32 mean DSC and the roi."""
    from harness.artifacts.onnx.export import export_fp32

    found: dict = {}
    for backend, variants, allowance in (
        ("onnxruntime", ORT_VARIANTS, ORT_FLOAT_MAC_ALLOWANCE),
        ("openvino", OV_VARIANTS, 0.0),
    ):
        spec = TrackSpec(
            model_dir=demo / "models" / model,
            dataset_dir=demo / "dataset",
            backend=f"{backend}-cpu",
            weight_bits=8,
            activation_bits=8,
            max_float_mac_fraction=allowance,
        )
        track = LoadedTrack.open(spec)
        method = {INT8_QDQ: "rtn", INT8_QDQ_PROFILED: "rtn", "nncf-int8": "nncf"}
        for name, scheme in variants.items():
            where = workdir / f"{model}-{backend}-{name.replace(' ', '-')}"
            done = compute_baseline(track, method=method[scheme], scheme=scheme, workdir=where)
            found[f"{backend} {name}"] = done
    fp32 = export_fp32(track.model, track.model_spec, workdir / f"{model}-fp32.onnx")
    found["onnxruntime fp32"] = found["openvino fp32"] = fp32
    found["fp32_dsc"] = float(np.mean([case.mean_dsc for case in track.fp32_run.cases]))
    found["roi"] = track.model_spec.sliding_window.roi_size
    found["model"] = model
    return found


def time_model(found: dict, factor: int, rounds: int, threads: int, workdir: Path) -> dict:
    """Interleaved per-patch timings of every network of both runtimes at ``factor`` x the roi."""
    roi = [r * factor for r in found["roi"]]
    patch = np.random.default_rng(0).random((1, 1, *roi), dtype=np.float32)
    timings, reports = {}, {}
    for runtime, names in (
        ("onnxruntime", ["fp32", *ORT_VARIANTS]),
        ("openvino", ["fp32", *OV_VARIANTS]),
    ):
        calls = {}
        for name in names:
            key = f"{runtime} {name}"
            path = found[key] if name == "fp32" else found[key].artifact
            if factor != 1:
                stem = key.replace(" ", "-")
                path = enlarged(path, factor, workdir / f"{found['model']}-{stem}-x{factor}.onnx")
            if runtime == "onnxruntime":
                calls[key] = ort_call(path, threads, patch)
            else:
                calls[key], compiled = openvino_call(path, threads, patch)
                reports[key] = runtime_report(compiled)
        timings |= interleaved(calls, rounds)
    return {"roi": roi, "seconds": timings, "openvino_kernels": reports}


def speedup(fp32: list[float], entry: list[float]) -> dict:
    """The latency protocol's speed-up (fastest over fastest, bootstrap over rounds) of
    interleaved rounds of one call each."""
    return speedup_interval([[t] for t in fp32], [[t] for t in entry])


def summarise(model: str, found: dict, timed: dict) -> tuple[list[str], dict]:
    seconds = timed["seconds"]
    rows, figures = [], {}
    for key, values in seconds.items():
        runtime, name = key.split(" ", 1)
        stats = spread_stats(values)
        reference = seconds[f"{runtime} fp32"]
        same = speedup(reference, values) if name != "fp32" else None
        ort = speedup(seconds["onnxruntime fp32"], values) if name != "fp32" else None
        if name == "fp32":
            size, dsc, drop = Path(found[key]).stat().st_size, found["fp32_dsc"], 0.0
        else:
            result = found[key].result
            size = found[key].artifact.stat().st_size
            dsc, drop = result["summary"]["mean_dsc"], result["summary"]["dsc_drop_pct"]
        int8 = timed["openvino_kernels"].get(key, {}).get("int8_mac_fraction")
        if int8 is None and name != "fp32":  # ONNX Runtime: its optimised graph, as evaluated
            int8 = found[key].result["efficiency"]["kernels"]["int8_mac_fraction"]
        figures[key] = {
            "latency_ms": stats,
            "speedup_vs_same_fp32": same,
            "speedup_vs_onnxruntime_fp32": ort,
            "size_bytes": size,
            "mean_dsc": dsc,
            "dsc_drop_pct": drop,
            "int8_mac_fraction": int8,
        }
        speed = "" if same is None else (
            f"{same['median']:5.2f}x [{same['ci95'][0]:.2f}, {same['ci95'][1]:.2f}]"
            + (f"  {ort['median']:5.2f}x vs ORT FP32" if runtime == "openvino" else "")
        )  # fmt: skip
        rows.append(
            f"  {key:<26}{stats['median_ms']:9.1f} ms  IQR {stats['iqr_ms']:7.1f}   "
            f"{size / 1e6:6.3f} MB   DSC {dsc:.4f} ({drop:+.2f}%)"
            + ("" if int8 is None else f"   INT8 MACs {int8:4.0%}")
            + (f"   {speed}" if speed else "")
        )
    return rows, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="demo", help="demo bundle (written if missing)")
    parser.add_argument("--models", default="unet,segresnet")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds at the roi")
    parser.add_argument("--rounds-large", type=int, default=5, help="rounds at 2x the roi")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo = Path(args.demo)
    if not (demo / "dataset" / "dataset.json").is_file():
        write_demo(demo)
    workdir = Path(tempfile.mkdtemp(prefix="cpu_int8_"))
    models = args.models.split(",")
    best: dict[str, float] = {}
    verdicts: list[str] = []
    report: dict = {"threads": args.threads}
    for model in models:
        found = baselines(demo, model, workdir)
        report[model] = {}
        for factor in SCALES:
            rounds = args.rounds if factor == 1 else args.rounds_large
            timed = time_model(found, factor, rounds, args.threads, workdir)
            rows, figures = summarise(model, found, timed)
            report[model][f"x{factor}"] = figures
            shape = "x".join(str(r) for r in timed["roi"])
            print(f"{model} {shape} ({'roi' if factor == 1 else '2x roi'}), {rounds} rounds, "
                  f"{args.threads} thread(s), per patch:")  # fmt: skip
            print("\n".join(rows))
            if factor != 1:
                continue
            ov = {k: v for k, v in figures.items() if k.startswith("openvino ") and "fp32" not in k}
            top = max(ov, key=lambda k: ov[k]["speedup_vs_same_fp32"]["median"])
            best[model] = ov[top]["speedup_vs_same_fp32"]["median"]
            checks = {
                "openvino fp32": best[model],
                "onnxruntime fp32": ov[top]["speedup_vs_onnxruntime_fp32"]["median"],
            }
            for (target_model, against), target in TARGETS.items():
                if target_model == model:
                    value = checks[against]
                    verdicts.append(
                        f"{model}: best OpenVINO INT8 ({top}) {value:.2f}x over {against} "
                        f"(target ≥ {target}: {'ok' if value >= target else 'MISSED'})"
                    )
            ratio = speedup(timed["seconds"]["openvino int8"], timed["seconds"]["openvino nncf"])[
                "median"
            ]
            verdicts.append(
                f"{model}: standard INT8 export at {ratio:.2f}x NNCF's latency (target ≤ "
                f"{EXPORT_VS_NNCF_TARGET}: {'ok' if ratio <= EXPORT_VS_NNCF_TARGET else 'MISSED'})"
            )
            drops = {k: v["dsc_drop_pct"] for k, v in figures.items() if "fp32" not in k}
            worst = max(drops, key=drops.get)
            ok = drops[worst] <= DSC_DROP_TARGET_PCT
            verdicts.append(
                f"{model}: largest DSC drop {drops[worst]:+.2f}% ({worst}; target ≤ "
                f"{DSC_DROP_TARGET_PCT}%: {'ok' if ok else 'MISSED'})"
            )
    print("\n".join(verdicts))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(
        "openvino int8 speed-up: "
        + ", ".join(f"{m} {best[m]:.2f}×" for m in sorted(best, key=lambda m: m != "segresnet"))
    )


if __name__ == "__main__":
    main()

"""Real INT8 on ONNX Runtime CPU vs FP32, side by side in one run, on the demo UNet.

Both graphs come from the harness exporter (FP32: the reference network; INT8: per-channel 8-bit
weights, static per-tensor 8-bit activations, Q/DQ so ORT fuses QLinearConv). Printed: serialized
sizes and their ratio (target INT8 ≤ 0.30× FP32), mean DSC of both through ORT on the test split
(target: INT8 within 1% relative of FP32), latency per patch batch (sw_batch_size real calibration
patches) and per volume (sliding window over the first test case) — warm-up, then rounds that time
FP32 and INT8 alternately so both see the same machine load — with median, p95 and the
INT8/FP32 ratio; the fraction of conv MACs ORT ran in integer kernels; and, to explain the ratio,
ORT's own per-op profile (time per op type per batch). A third graph, ``int8-thin-fp``, keeps the
thin convolutions (fewer than ``THIN`` input or output channels: the 1-channel input convs and the
6-class output convs) in float: ORT's 3D QLinearConv is several times slower than its float Conv
there, which is what makes the all-INT8 graph slower on this small UNet.

Sessions use ``--threads`` intra-op threads (default 1: fair on a shared 2-core machine, and the
leaderboard's CPU latency protocol).

    python benchmarks/ort_int8.py [--demo DIR] [--model unet] [--runs 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from harness.artifacts.onnx.export import export_fp32
from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.artifacts.onnx.verify import OnnxInterface, PrecisionLimits, measure_onnx, verify_onnx
from harness.backends.onnxruntime import kernel_report
from harness.data.preprocessing import preprocess, read_case
from harness.demo import write_demo
from harness.inference.latency import latency_stats
from harness.inference.sliding_window import predict_labels
from harness.models.interface import INPUT_NAME
from harness.onnxruntime_session import OrtNetwork, create_session
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

SIZE_TARGET = 0.30
THIN = 8
DSC_TARGET_PCT = 1.0


def interleaved_times(
    calls: dict[str, Callable[[], object]], warmup: int, runs: int
) -> dict[str, list[float]]:
    """Seconds of each call per round, the calls alternating within every round."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    seconds: dict[str, list[float]] = defaultdict(list)
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def op_profile(
    path: Path, batch: np.ndarray, threads: int, runs: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean milliseconds per run spent in each op type and in each source node (ORT's fused node
    names reduced to the exported node's name), from ORT's profiler."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.qdqisint8allowed", "1")
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, {INPUT_NAME: batch})  # warm-up, excluded below
        for _ in range(runs):
            session.run(None, {INPUT_NAME: batch})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    per_node: dict[str, float] = defaultdict(float)
    node_events = [
        e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    ]
    count = len(node_events) // (runs + 1)
    for event in node_events[count:]:  # drop the warm-up run
        ms = event["dur"] / 1000 / runs
        per_op[event["args"]["op_name"]] += ms
        node = event["name"].removesuffix("_kernel_time").split("_token_")[0]
        per_node[f"{node} ({event['args']['op_name']})"] += ms
    return (
        dict(sorted(per_op.items(), key=lambda kv: -kv[1])),
        dict(sorted(per_node.items(), key=lambda kv: -kv[1])),
    )


def weight_shapes(path: Path) -> dict[str, list[int]]:
    """Weight shape of each Conv/ConvTranspose node of an FP32 graph, by node name."""
    model = onnx.load(str(path))
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    return {
        n.name: dims.get(n.input[1], [])
        for n in model.graph.node
        if n.op_type in ("Conv", "ConvTranspose")
    }


def mean_dsc(track: LoadedTrack, network: torch.nn.Module, name: str) -> float:
    run = track.run(network, False, name)
    return float(np.mean([c.mean_dsc for c in run.cases]))


def fmt(stats: dict) -> str:
    return f"median {stats['median_ms']:8.1f} ms   p95 {stats['p95_ms']:8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="demo", help="demo bundle (written if missing)")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo = Path(args.demo)
    if not (demo / "dataset" / "dataset.json").is_file():
        write_demo(demo)
    spec = TrackSpec(
        model_dir=demo / "models" / args.model,
        dataset_dir=demo / "dataset",
        backend="onnxruntime-cpu",
        weight_bits=8,
        activation_bits=8,
    )
    track = LoadedTrack.open(spec)
    model_spec = track.model_spec
    work = Path(tempfile.mkdtemp(prefix="ort_int8_"))
    fp32_path = export_fp32(track.model, model_spec, work / "fp32.onnx")
    int8_path = export_qdq(
        int8_model(track.model, track.calibration),
        model_spec,
        track.calibration,
        work / "int8.onnx",
    )
    thin = tuple(
        name
        for name, m in track.model.named_modules()
        if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))
        and min(m.in_channels, m.out_channels) < THIN
    )
    mixed_path = export_qdq(
        int8_model(track.model, track.calibration, skip=thin),
        model_spec,
        track.calibration,
        work / "int8_thin_fp.onnx",
    )
    precision = verify_onnx(int8_path, OnnxInterface.for_model(model_spec), PrecisionLimits(8, 8))
    paths = {"fp32": fp32_path, "int8": int8_path, "int8-thin-fp": mixed_path}
    networks = {
        name: OrtNetwork(create_session(path, args.threads)) for name, path in paths.items()
    }
    sizes = {name: path.stat().st_size for name, path in paths.items()}
    dsc = {name: mean_dsc(track, network, name) for name, network in networks.items()}
    dsc_drop_pct = (dsc["fp32"] - dsc["int8"]) / dsc["fp32"] * 100

    window = model_spec.sliding_window
    batch = torch.cat(track.calibration)[: window.sw_batch_size]
    case = track.test_cases[0]
    volume = preprocess(read_case(case, track.dataset.labels), model_spec.preprocessing)
    with torch.no_grad():
        batch_seconds = interleaved_times(
            {name: (lambda n=n: n(batch)) for name, n in networks.items()}, args.warmup, args.runs
        )
        volume_seconds = interleaved_times(
            {name: (lambda n=n: predict_labels(n, volume, window)) for name, n in networks.items()},
            args.warmup,
            args.runs,
        )
    latency = {
        name: {
            "per_batch": latency_stats(batch_seconds[name]),
            "per_patch": latency_stats([t / len(batch) for t in batch_seconds[name]]),
            "per_volume": latency_stats(volume_seconds[name]),
        }
        for name in networks
    }
    interface = OnnxInterface.for_model(model_spec)
    kernels = kernel_report(measure_onnx(int8_path, interface), args.threads)
    shapes = weight_shapes(fp32_path)
    mixed_kernels = kernel_report(measure_onnx(mixed_path, interface), args.threads)
    profiles = {
        name: op_profile(path, batch.numpy(), args.threads, max(3, args.runs // 4))
        for name, path in paths.items()
    }

    print(
        f"ONNX Runtime {ort.__version__} CPU, {args.threads} intra-op thread(s); demo {args.model}"
    )
    print(f"patch batch {tuple(batch.shape)}, volume {tuple(volume.shape)} ({case.case_id})")
    print(f"{'':12}{'size':>12}{'mean DSC':>11}   per patch batch{'':21}per volume")
    for name in networks:
        print(
            f"{name:<12}{sizes[name] / 1e6:9.3f} MB{dsc[name]:11.4f}   "
            f"{fmt(latency[name]['per_batch'])}   {fmt(latency[name]['per_volume'])}"
        )
    size_ratio = sizes["int8"] / sizes["fp32"]
    batch_ratio = (
        latency["int8"]["per_batch"]["median_ms"] / latency["fp32"]["per_batch"]["median_ms"]
    )
    volume_ratio = (
        latency["int8"]["per_volume"]["median_ms"] / latency["fp32"]["per_volume"]["median_ms"]
    )
    verdict = "ok" if size_ratio <= SIZE_TARGET else "MISSED"
    print(f"size INT8/FP32 {size_ratio:.3f} (target ≤ {SIZE_TARGET}: {verdict})")
    print(
        f"mean DSC drop {dsc_drop_pct:+.3f}% (target within {DSC_TARGET_PCT}%: "
        f"{'ok' if abs(dsc_drop_pct) <= DSC_TARGET_PCT else 'MISSED'})"
    )
    print(
        f"latency INT8/FP32 (median): per batch {batch_ratio:.2f}×, per volume {volume_ratio:.2f}×"
    )
    print(
        f"conv MACs in integer kernels: {kernels['int8_mac_fraction']:.1%} "
        f"(integer ops {kernels['integer_ops']}; float weighted ops "
        f"{kernels['float_weighted_ops']}; {kernels['layout_transposes']} layout Transposes)"
    )
    mixed_ratio = (
        latency["int8-thin-fp"]["per_batch"]["median_ms"]
        / latency["fp32"]["per_batch"]["median_ms"]
    )
    print(
        f"int8-thin-fp ({len(thin)} thin layers in float): per batch {mixed_ratio:.2f}× FP32, "
        f"{mixed_kernels['int8_mac_fraction']:.1%} of conv MACs in integer kernels"
    )
    print("ORT profile, ms per patch batch by op type:")
    for name, (profile, _) in profiles.items():
        top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(profile.items())[:8])
        print(f"  {name}: total {sum(profile.values()):.1f} — {top}")
    float_nodes = {key.split(" (")[0]: ms for key, ms in profiles["fp32"][1].items()}
    print("slowest INT8 nodes vs the same FP32 node (ms per patch batch; weight shape):")
    for key, ms in list(profiles["int8"][1].items())[:5]:
        node = key.split(" (")[0]
        shape = shapes.get(node, "?")
        print(f"  {key:<40} {ms:7.1f}   fp32 {float_nodes.get(node, float('nan')):7.1f}   {shape}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "threads": args.threads,
                    "sizes_bytes": sizes,
                    "size_ratio": size_ratio,
                    "mean_dsc": dsc,
                    "dsc_drop_pct": dsc_drop_pct,
                    "latency_ms": latency,
                    "latency_ratio": {"per_batch": batch_ratio, "per_volume": volume_ratio},
                    "kernels": kernels,
                    "int8_thin_fp": {"float_layers": thin, "kernels": mixed_kernels},
                    "verified_precision": precision,
                    "op_profile_ms": {name: op for name, (op, _) in profiles.items()},
                    "node_profile_ms": {name: node for name, (_, node) in profiles.items()},
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()

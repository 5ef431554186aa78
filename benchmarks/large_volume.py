"""Full-size volumes: peak memory and seconds per stage of one clinical-size case, before and after
streaming sliding-window inference.

One 512×512×200 phantom at 0.8×0.8×2.5 mm with 14 classes (``harness.data.phantoms``, size
``clinical``) is evaluated at its own resolution (no resampling, as a network trained at that
spacing would see it) by the shipped demo UNet architecture with 14 output channels, trained for
only ``TRAIN_ITERATIONS`` steps on the case itself: the measurement is of memory and time, not of
accuracy. (Random weights would do for inference, but their label map is speckle, every voxel on
a class surface, which would measure NSD on surfaces no segmentation has.) Two precisions, FP32
and the W8A8 scheme quantized by the simulator and loaded as the simulated backend loads a
checkpoint, and two evaluation paths:

- ``before``: what the harness did before streaming, reproduced by calling the library: MONAI's
  ``SlidingWindowInferer`` accumulates float32 logits of every class over the whole volume,
  ``max(dim=0).indices`` gives an int64 label map, the original image is held until scoring;
- ``after``: the harness's ``evaluate_cases`` (slab-streamed logits, uint8 labels, the original
  image dropped once preprocessed).

Each (path, precision) runs in its own subprocess, so its peak RSS (``ru_maxrss``) is its own; the
table shows the seconds of each stage and the peak RSS side by side, and checks that both paths
give the same DSC and NSD. Generating the phantom, the network and the W8A8 checkpoint runs once in
another subprocess and is cached under ``--work``.

    .venv/bin/python benchmarks/large_volume.py [--coarsen N] [--threads T] [--work DIR]

``--coarsen N`` draws the same field of view on an N× coarser grid (N³ fewer voxels), for
development; the default 1 is the clinical grid.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

NSD_TOLERANCE_MM = 2.0
SCHEME = "w8a8-per-channel"
PHANTOM_SEED = 0
NETWORK_SEED = 0
#: Training steps of the network on the case: enough for organ-shaped regions in its label map.
TRAIN_ITERATIONS = 150
#: Patch batches of the case that calibrate the W8A8 activation ranges: the network is random,
#: so calibration quality does not matter here, and a few batches keep it out of the way.
CALIBRATION_BATCHES = 4
#: The issue's target for the peak RSS of one case (the float32 logits alone would be 2.9 GB).
TARGET_PEAK_RSS_GB = 4.0
STAGES = ("io", "preprocess", "inference", "postprocess", "metrics")
PATHS = ("before", "after")
PRECISIONS = ("fp32", "w8a8")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clinical_unet_spec(name: str):
    """The shipped demo UNet's spec with one output per class of the clinical phantom, run on
    each case's own grid (no resampling), untrained."""
    from harness.data import phantoms
    from harness.demo import DEMO_MODELS_DIR
    from harness.models.reference import ModelSpec, read_spec

    data = read_spec(DEMO_MODELS_DIR / "unet").to_dict()
    data["name"] = name
    data["kwargs"]["out_channels"] = len(phantoms.CLINICAL_LABELS)
    data["labels"] = {str(k): v for k, v in phantoms.CLINICAL_LABELS.items()}
    data["preprocessing"]["spacing"] = None  # inferred on the case's own grid
    data["training"] = {}
    return ModelSpec.from_dict(data)


def prepare(work: Path, coarsen: int) -> None:
    """Write the clinical phantom (one case), the briefly trained 14-class network and its W8A8
    checkpoint under ``work``."""
    from harness.artifacts.checkpoint.save import save_checkpoint
    from harness.data import phantoms
    from harness.data.dataset import load_dataset
    from harness.data.preprocessing import preprocess, read_case
    from harness.inference.sliding_window import patch_batches
    from harness.models.reference import save_reference_model
    from harness.models.training import TrainConfig, load_training_volumes, train
    from reference_methods.simulator.scheme import QuantConfig, quantize

    if coarsen > 1:
        shape, spacing = phantoms.CLINICAL_SHAPE, phantoms.CLINICAL_SPACING_MM
        phantoms.CLINICAL_SHAPE = tuple(n // coarsen for n in shape)
        phantoms.CLINICAL_SPACING_MM = tuple(s * coarsen for s in spacing)
    dataset_dir = work / "dataset"
    if not (dataset_dir / "dataset.json").is_file():
        phantoms.write_phantom_dataset(dataset_dir, cases=1, seed=PHANTOM_SEED, size="clinical")
    spec = clinical_unet_spec("large-volume-unet-random")
    dataset = load_dataset(dataset_dir)
    case = dataset.cases[0]
    volumes = load_training_volumes((case,), dataset.labels, spec.preprocessing)
    config = TrainConfig(iterations=TRAIN_ITERATIONS, seed=NETWORK_SEED)
    model = train(spec, volumes, config, progress=False)
    del volumes
    save_reference_model(model, spec, work / "fp32")

    image = preprocess(read_case(case, with_label=False), spec.preprocessing)
    batches = []
    for _, batch in patch_batches(image, spec.sliding_window):
        batches.append(batch.clone())
        if len(batches) == CALIBRATION_BATCHES:
            break
    quantized = quantize(model, QuantConfig.from_scheme(SCHEME), batches)
    save_checkpoint(quantized, work / "w8a8")


def measure(work: Path, path: str, precision: str, threads: int) -> dict:
    """Evaluate the case by ``path`` at ``precision``: seconds per stage, peak RSS, metrics."""
    import nibabel as nib
    import torch
    from monai.inferers import SlidingWindowInferer

    from harness.artifacts.checkpoint.load import load_checkpoint
    from harness.data.dataset import load_dataset
    from harness.data.preprocessing import preprocess, read_case, restore_to_original
    from harness.models.reference import load_reference_model
    from harness.scoring.evaluation import StageTimer, evaluate_cases
    from harness.scoring.metrics import dice_per_class, nsd_per_class

    torch.set_num_threads(threads)
    spec, network = load_reference_model(work / "fp32")
    if precision == "w8a8":  # what the simulated backend opens
        network = load_checkpoint(work / "w8a8", network)
    dataset = load_dataset(work / "dataset")
    case, classes = dataset.cases[0], dataset.foreground_classes
    ready_mb = _peak_rss_mb()
    start = time.perf_counter()
    if path == "after":
        run = evaluate_cases(network, spec, (case,), dataset.labels, NSD_TOLERANCE_MM)
        seconds, dsc, nsd = run.cases[0].seconds, run.cases[0].dsc, run.cases[0].nsd
    else:
        window = spec.sliding_window
        inferer = SlidingWindowInferer(
            roi_size=window.roi_size,
            sw_batch_size=window.sw_batch_size,
            overlap=window.overlap,
            mode=window.mode,
            cache_roi_weight_map=True,
        )
        timer = StageTimer()
        with timer.stage("io"):
            loaded = read_case(case, dataset.labels)
        with timer.stage("preprocess"):
            image = preprocess(loaded, spec.preprocessing)
        with timer.stage("inference"), torch.no_grad():
            logits = torch.as_tensor(inferer(image.as_tensor()[None].float(), network))[0]
            prediction = logits.max(dim=0).indices
            del logits
        with timer.stage("postprocess"):
            restored = restore_to_original(prediction, image, loaded.image)
        with timer.stage("metrics"):
            dsc = dice_per_class(restored, loaded.label, classes)
            nsd = nsd_per_class(restored, loaded.label, classes, loaded.spacing, NSD_TOLERANCE_MM)
        seconds = dict(timer.seconds)
    return {
        "path": path,
        "precision": precision,
        "shape": list(nib.load(str(case.images[0])).shape[:3]),
        "classes": len(dataset.labels),
        "seconds": seconds,
        "wall": time.perf_counter() - start,
        "ready_rss_mb": ready_mb,
        "peak_rss_mb": _peak_rss_mb(),
        "dsc": {str(k): v for k, v in dsc.items()},
        "nsd": {str(k): v for k, v in nsd.items()},
    }


def cpu_description() -> tuple[str, list[str]]:
    """The CPU's model name and which of ``CPU_FLAGS`` it has (from /proc/cpuinfo)."""
    model, flags = "unknown", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    return model, [f for f in CPU_FLAGS if f in flags]


def report(rows: dict[tuple[str, str], dict]) -> None:
    """Print the side-by-side table and the before/after agreement of the metrics."""
    header = f"{'stage':<22}" + "".join(f"{p + ' ' + q:>16}" for q in PRECISIONS for p in PATHS)
    print(header)
    print("-" * len(header))
    cells = [(p, q) for q in PRECISIONS for p in PATHS]
    for stage in STAGES:
        line = "".join(f"{rows[c]['seconds'].get(stage, 0.0):>14.2f} s" for c in cells)
        print(f"{stage + ' seconds':<22}{line}")
    print(f"{'case wall seconds':<22}" + "".join(f"{rows[c]['wall']:>14.2f} s" for c in cells))
    print(
        f"{'RSS before the case':<22}"
        + "".join(f"{rows[c]['ready_rss_mb'] / 1024:>13.2f} GB" for c in cells)
    )
    print(
        f"{'peak RSS':<22}" + "".join(f"{rows[c]['peak_rss_mb'] / 1024:>13.2f} GB" for c in cells)
    )
    for precision in PRECISIONS:
        before, after = rows["before", precision], rows["after", precision]
        same = before["dsc"] == after["dsc"] and before["nsd"] == after["nsd"]
        peak = after["peak_rss_mb"] / 1024
        verdict = "meets" if peak <= TARGET_PEAK_RSS_GB else "misses"
        print(
            f"{precision}: DSC and NSD per class {'identical' if same else 'DIFFER'} before/after; "
            f"peak RSS {before['peak_rss_mb'] / 1024:.2f} → {peak:.2f} GB "
            f"({verdict} the ≤ {TARGET_PEAK_RSS_GB:.0f} GB target)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coarsen", type=int, default=1, help="N× coarser grid (development)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--work", type=Path, help="cache folder for the phantom and networks")
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=2, metavar=("PATH", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.coarsen < 1:
        parser.error("--coarsen must be at least 1")
    work = args.work or Path(f"/tmp/medquant-large-volume-x{args.coarsen}")
    if args.prepare:
        prepare(work, args.coarsen)
        return
    if args.measure:
        print(json.dumps(measure(work, *args.measure, args.threads)))
        return

    script = [sys.executable, __file__, "--coarsen", str(args.coarsen), "--work", str(work)]
    if not (work / "w8a8").is_dir():
        print(f"preparing the phantom, the network and its {SCHEME} checkpoint in {work} ...")
        started = time.perf_counter()
        subprocess.run([*script, "--prepare"], check=True)
        print(f"  prepared in {time.perf_counter() - started:.0f} s")
    model, flags = cpu_description()
    print(f"CPU: {model}; flags: {', '.join(flags) or 'none of ' + ', '.join(CPU_FLAGS)}")
    print(f"torch intra-op threads: {args.threads}")
    rows: dict[tuple[str, str], dict] = {}
    for precision in PRECISIONS:
        for path in PATHS:
            command = [*script, "--threads", str(args.threads), "--measure", path, precision]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            rows[path, precision] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  {path} {precision}: {rows[path, precision]['wall']:.0f} s", flush=True)
    shape, classes = rows["after", "fp32"]["shape"], rows["after", "fp32"]["classes"]
    print(
        f"\none case {'×'.join(map(str, shape))} voxels, {classes} classes, inferred on its own "
        f"grid by the {classes}-class demo UNet trained for {TRAIN_ITERATIONS} steps on the case "
        "(memory and time only, not accuracy); "
        f"W8A8 = {SCHEME} on the simulated backend\n"
    )
    report(rows)


if __name__ == "__main__":
    main()

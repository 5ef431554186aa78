"""The demo bundle: phantom dataset with fixed splits plus the shipped trained reference models."""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.data.dataset import write_splits
from harness.data.phantoms import PhantomSize, write_phantom_dataset

DEMO_MODELS_DIR = Path(__file__).parents[1] / "models" / "demo_models"
#: Shipped model folders in the layouts maintainers bring (nnU-Net v2), imported by the demo.
DEMO_SOURCES_DIR = Path(__file__).parents[1] / "models" / "demo_sources"
#: The shipped MONAI model the demo repackages as a MONAI bundle.
DEMO_BUNDLE_MODEL = "unet"
#: The shipped model the demo repackages as an FP32 ONNX source (imported as an ONNX graph).
DEMO_GRAPH_MODEL = "segresnet"
DEMO_SEED = 0
DEMO_CASES = 28
DEMO_SPLITS = {"train": range(0, 16), "calibration": range(16, 20), "test": range(20, 28)}


def phantom_splits(cases: int) -> dict[str, list[str]]:
    """Train / calibration / test case ids: the demo's fixed split, else about 55/15/30%."""
    if cases == DEMO_CASES:
        ranges = DEMO_SPLITS
    else:
        n_test, n_cal = max(1, round(cases * 0.3)), max(1, round(cases * 0.15))
        n_train = cases - n_test - n_cal
        ranges = {
            "train": range(0, n_train),
            "calibration": range(n_train, n_train + n_cal),
            "test": range(n_train + n_cal, cases),
        }
    return {name: [f"phantom_{i:03d}" for i in r] for name, r in ranges.items()}


def make_phantoms(
    out: Path, cases: int, seed: int, progress: bool = False, size: PhantomSize = "demo"
) -> Path:
    """Write a phantom dataset of ``size`` in MSD layout with its ``splits.json``."""
    if cases < 3:
        raise ValueError("need at least 3 cases (train, calibration and test)")
    write_phantom_dataset(out, cases=cases, seed=seed, progress=progress, size=size)
    write_splits(out, phantom_splits(cases))
    return out


def shipped_models() -> dict[str, Path]:
    """Shipped demo model folders that hold trained weights, by short name."""
    return {
        d.name: d
        for d in sorted(DEMO_MODELS_DIR.iterdir())
        if (d / "model.json").is_file() and (d / "model.safetensors").is_file()
    }


def write_demo(out: Path, progress: bool = False) -> dict[str, Path]:
    """Write ``out/dataset`` (phantoms, fixed seed and splits), ``out/models/<name>`` (reference
    folders) and ``out/sources/<name>`` (an nnU-Net v2 folder, a MONAI bundle and an FP32 ONNX
    graph, for ``harness import-model``)."""
    make_phantoms(out / "dataset", DEMO_CASES, DEMO_SEED, progress)
    models = {}
    for name, src in shipped_models().items():
        dst = out / "models" / name
        dst.mkdir(parents=True, exist_ok=True)
        for f in ("model.json", "model.safetensors"):
            shutil.copy2(src / f, dst / f)
        models[name] = dst
    return {"dataset": out / "dataset", **models, **write_demo_sources(out / "sources")}


def write_demo_sources(out: Path) -> dict[str, Path]:
    """The shipped nnU-Net v2 folder(s), the MONAI bundle of ``DEMO_BUNDLE_MODEL`` and the ONNX
    source of ``DEMO_GRAPH_MODEL``."""
    from harness.models.bundle_export import write_monai_bundle
    from harness.models.graph_export import write_onnx_source

    sources = {}
    for src in sorted(p for p in DEMO_SOURCES_DIR.iterdir() if (p / "plans.json").is_file()):
        shutil.copytree(src, out / src.name, dirs_exist_ok=True)
        sources[src.name] = out / src.name
    name = f"monai_bundle_{DEMO_BUNDLE_MODEL}"
    sources[name] = write_monai_bundle(DEMO_MODELS_DIR / DEMO_BUNDLE_MODEL, out / name)
    name = f"onnx_graph_{DEMO_GRAPH_MODEL}"
    sources[name] = write_onnx_source(DEMO_MODELS_DIR / DEMO_GRAPH_MODEL, out / name)
    return sources

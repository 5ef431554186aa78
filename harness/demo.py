"""The demo bundle: the phantom dataset with its fixed splits, the shipped trained reference
models, and the same models in the layouts maintainers bring (an nnU-Net v2 folder, a MONAI bundle,
an FP32 ONNX graph), so that every importer is exercised end to end.

Depends on: ``harness.data``, ``harness.models``, ``harness.artifacts`` (the FP32 ONNX export).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from harness.artifacts.onnx.export import export_fp32
from harness.data.demo import DEMO_CASES, DEMO_SEED, make_phantoms
from harness.models.bundle_export import write_monai_bundle
from harness.models.importers.onnx_file import REFERENCE_FILE
from harness.models.interface import ONNX_FILE
from harness.models.reference import load_reference_model

DEMO_MODELS_DIR = Path(__file__).parent / "models" / "demo_models"
#: Shipped model folders in the layouts maintainers bring (nnU-Net v2), imported by the demo.
DEMO_SOURCES_DIR = Path(__file__).parent / "models" / "demo_sources"
#: The shipped MONAI model the demo repackages as a MONAI bundle.
DEMO_BUNDLE_MODEL = "unet"
#: The shipped model the demo repackages as an FP32 ONNX source (imported as an ONNX graph).
DEMO_GRAPH_MODEL = "segresnet"


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
    sources = {}
    for src in sorted(p for p in DEMO_SOURCES_DIR.iterdir() if (p / "plans.json").is_file()):
        shutil.copytree(src, out / src.name, dirs_exist_ok=True)
        sources[src.name] = out / src.name
    name = f"monai_bundle_{DEMO_BUNDLE_MODEL}"
    sources[name] = write_monai_bundle(DEMO_MODELS_DIR / DEMO_BUNDLE_MODEL, out / name)
    name = f"onnx_graph_{DEMO_GRAPH_MODEL}"
    sources[name] = write_onnx_source(DEMO_MODELS_DIR / DEMO_GRAPH_MODEL, out / name)
    return sources


def write_onnx_source(model_dir: str | Path, out: str | Path) -> Path:
    """The ONNX source folder ``out`` for the torch reference model in ``model_dir``: its FP32
    export and what the graph does not say (name, labels, preprocessing, sliding window)."""
    spec, network = load_reference_model(model_dir)
    out = Path(out)
    export_fp32(network, spec, out / ONNX_FILE)
    reference = {
        "name": f"{spec.name} (ONNX graph)",
        "labels": {str(k): v for k, v in sorted(spec.labels.items())},
        "preprocessing": spec.preprocessing.to_dict(),
        "sliding_window": spec.sliding_window.to_dict(),
    }
    (out / REFERENCE_FILE).write_text(json.dumps(reference, indent=2) + "\n")
    return out

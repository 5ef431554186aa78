"""Write a reference model as a MONAI bundle (``configs/metadata.json``, ``configs/inference.json``,
``models/model.pt``): how the demo ships one of its MONAI models in the form a maintainer brings,
so that importing it (``harness.models.importers.monai_bundle``) is exercised end to end."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.models.reference import load_reference_model

#: Bundle format version written (MONAI's bundle metadata schema field).
BUNDLE_VERSION = "0.1.0"


def write_monai_bundle(model_dir: str | Path, out: str | Path) -> Path:
    """The bundle folder ``out`` for the reference model in ``model_dir`` (a MONAI network)."""
    spec, network = load_reference_model(model_dir)
    out = Path(out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    pre = spec.preprocessing
    transforms: list[dict] = [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
    ]
    if pre.orientation is not None:
        transforms.append({"_target_": "Orientationd", "keys": "image", "axcodes": pre.orientation})
    if pre.spacing is not None:
        transforms.append(
            {
                "_target_": "Spacingd",
                "keys": "image",
                "pixdim": list(pre.spacing),
                "mode": "bilinear",
            }  # fmt: skip
        )
    if pre.normalisation != "window":
        raise ValueError(
            f"only window normalisation is written to a bundle, not {pre.normalisation}"
        )
    low, high = pre.intensity_window
    transforms.append(
        {
            "_target_": "ScaleIntensityRanged",
            "keys": "image",
            "a_min": low,
            "a_max": high,
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        }  # fmt: skip
    )
    window = spec.sliding_window
    inference = {
        "network_def": {"_target_": spec.architecture, **spec.kwargs},
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(window.roi_size),
            "sw_batch_size": window.sw_batch_size,
            "overlap": window.overlap,
            "mode": window.mode,
        },
    }
    metadata = {
        "name": f"{spec.name} (MONAI bundle)",
        "version": BUNDLE_VERSION,
        "description": f"The demo {spec.architecture} repackaged as a MONAI bundle.",
        "network_data_format": {
            "inputs": {
                "image": {
                    "num_channels": spec.in_channels,
                    "spatial_shape": list(window.roi_size),
                }  # fmt: skip
            },
            "outputs": {
                "pred": {
                    "num_channels": len(spec.labels),
                    "channel_def": {str(k): v for k, v in sorted(spec.labels.items())},
                }
            },
        },
    }
    (out / "configs" / "inference.json").write_text(json.dumps(inference, indent=2) + "\n")
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    torch.save(network.state_dict(), out / "models" / "model.pt")
    return out

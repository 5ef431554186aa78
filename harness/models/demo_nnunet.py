"""The shipped demo nnU-Net v2 trained-model folder: a small PlainConvUNet trained here on the
phantoms, written in nnU-Net v2's own layout so the demo imports it the way a maintainer imports
a real one (``harness import-model``).

Made by ``make demo-nnunet`` (``python -m harness.models.demo_nnunet --dataset demo/dataset --out
harness/models/demo_sources/nnunet_phantom``): the plans below (SimpleITK axis order, so the
import's axis permutation is exercised; CTNormalization with the training cases' foreground
statistics computed as nnU-Net does), the network imported untrained to get its harness-frame
spec, trained with ``harness.models.training``, and its weights written back in nnU-Net's frame
as ``fold_0/checkpoint_final.pth`` (``network_weights``, ``trainer_name``, ``init_args``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.data.dataset import load_dataset
from harness.data.preprocessing import read_case
from harness.models.importers.nnunet import network_axes, to_harness_frame
from harness.models.importers.torch_files import load_into
from harness.models.nnunet import DEFAULT_3D_LAYERS, build_nnunet_as_trained, inference_form
from harness.models.training import TrainConfig, load_training_volumes, train

CONFIGURATION = "3d_fullres"
TRAINER = "harness.models.training (DiceCE, AdamW, cosine)"
#: Network-order (z, y, x under SimpleITK) settings of the phantom configuration: 5.5 mm slices,
#: so the first stage convolves in-plane only, as nnU-Net plans anisotropic CT.
ARCH_KWARGS = {
    "n_stages": 4,
    "features_per_stage": [8, 16, 32, 64],
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [2, 2, 2, 2],
    "n_conv_per_stage_decoder": [2, 2, 2],
} | DEFAULT_3D_LAYERS
PATCH_SIZE = [32, 64, 64]
SPACING = [5.5, 3.0, 3.0]
TRAINING = TrainConfig(iterations=1200, batch_size=2, learning_rate=2e-3, class_balanced=True)


def foreground_statistics(dataset_dir: Path, split: str = "train") -> dict[str, float]:
    """nnU-Net's foreground intensity properties (mean, std, 0.5/99.5 percentiles of the image
    under every labelled voxel) over the cases of ``split``."""
    dataset = load_dataset(dataset_dir)
    values = []
    for case in dataset.split(split):
        loaded = read_case(case, dataset.labels)
        values.append(loaded.image[0].numpy()[loaded.label > 0])
    voxels = np.concatenate(values).astype(np.float64)
    return {
        "mean": float(voxels.mean()),
        "std": float(voxels.std()),
        "min": float(voxels.min()),
        "max": float(voxels.max()),
        "median": float(np.median(voxels)),
        "percentile_00_5": float(np.percentile(voxels, 0.5)),
        "percentile_99_5": float(np.percentile(voxels, 99.5)),
    }


def write_plans(out: Path, dataset_dir: Path) -> None:
    """``dataset.json`` and ``plans.json`` of the phantom model."""
    dataset = load_dataset(dataset_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = {name: value for value, name in sorted(dataset.labels.items())}
    (out / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": labels,
                "file_ending": ".nii.gz",
                "numTraining": len(dataset.split("train")),
            },
            indent=2,
        )
        + "\n"  # fmt: skip
    )
    plans = {
        "dataset_name": "Dataset900_AbdomenPhantom",
        "plans_name": "nnUNetPlans",
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            CONFIGURATION: {
                "patch_size": PATCH_SIZE,
                "spacing": SPACING,
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "architecture": {
                    "network_class_name": (
                        "dynamic_network_architectures.architectures.unet.PlainConvUNet"
                    ),
                    "arch_kwargs": ARCH_KWARGS,
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
            }
        },
        "foreground_intensity_properties_per_channel": {"0": foreground_statistics(dataset_dir)},
    }
    (out / "plans.json").write_text(json.dumps(plans, indent=2) + "\n")


def write_checkpoint(out: Path, state: dict[str, torch.Tensor], record: dict) -> None:
    """``fold_0/checkpoint_final.pth`` in nnU-Net's layout (weights in the network's frame)."""
    (out / "fold_0").mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "network_weights": state,
            "trainer_name": TRAINER,
            "current_epoch": record["iterations"],
            "init_args": {"configuration": CONFIGURATION, "fold": 0},
            "training": record,
            "inference_allowed_mirroring_axes": (0, 1, 2),
        },
        out / "fold_0" / "checkpoint_final.pth",
    )


def make(
    dataset_dir: Path, out: Path, training: TrainConfig = TRAINING, progress: bool = True
) -> Path:
    """Train the phantom PlainConvUNet and write its nnU-Net v2 folder to ``out``."""
    from harness.models.importers.nnunet import import_nnunet

    write_plans(out, dataset_dir)
    plans = json.loads((out / "plans.json").read_text())
    dataset = load_dataset(dataset_dir)
    network_kwargs = {"network_class_name": plans["configurations"][CONFIGURATION]["architecture"]
                      ["network_class_name"], "arch_kwargs": ARCH_KWARGS, "input_channels": 1,
                      "num_classes": len(dataset.labels)}  # fmt: skip
    torch.manual_seed(training.seed)
    write_checkpoint(out, build_nnunet_as_trained(**network_kwargs).state_dict(), {"iterations": 0})
    with tempfile.TemporaryDirectory() as scratch:
        spec = import_nnunet(out, Path(scratch) / "model")
    volumes = load_training_volumes(dataset.split("train"), dataset.labels, spec.preprocessing)
    start = time.perf_counter()
    trained = train(spec, volumes, training, progress=progress)
    record = training.to_dict() | {
        "dataset": dataset.name,
        "split": "train",
        "cases": len(volumes),
        "seconds": round(time.perf_counter() - start, 1),
    }
    as_trained = build_nnunet_as_trained(**network_kwargs)
    checkpoint_tensors = as_trained.state_dict(keep_vars=True)  # nnU-Net's names, shared tensors
    state = _to_network_frame(trained.state_dict(), network_axes(plans))
    load_into(inference_form(as_trained), state, "trained weights")
    write_checkpoint(out, {k: v.detach().clone() for k, v in checkpoint_tensors.items()}, record)
    return out


def _to_network_frame(state: dict[str, torch.Tensor], axes: tuple[int, ...]) -> dict:
    """The inverse of ``to_harness_frame``: kernels permuted from the harness's axis order back to
    the network's."""
    inverse = tuple(axes.index(a) for a in range(3))
    return to_harness_frame(state, inverse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="the demo phantom dataset folder")
    parser.add_argument("--out", required=True, help="nnU-Net v2 folder to write")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    make(Path(args.dataset), out, progress=not args.quiet)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

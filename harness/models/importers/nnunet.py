"""Import an nnU-Net v2 trained-model folder as a reference model.

Read: ``dataset.json`` (labels, channels), ``plans.json`` (one configuration: network, patch size,
spacing, normalisation; the image reader; the axis transpose; the foreground intensity
statistics) and ``fold_<k>/checkpoint_final.pth`` (``network_weights``, read weights-only).

Axes. nnU-Net's network sees the stored voxel array in its reader's axis order (SimpleITK:
z, y, x, the reverse of nibabel's), then transposed by ``transpose_forward``; the harness works in
nibabel's order. Network axis j therefore reads harness axis q[j] = base[transpose_forward[j]].
Rather than transposing every input, the network is written in the harness's frame: a convolution
over permuted axes is the convolution with its kernel axes permuted, so kernel sizes, strides,
patch size, spacing and every 3D kernel tensor are permuted once here (exact: same arithmetic).

Preprocessing maps onto the harness's spec: ``CTNormalization`` → clip to the foreground's 0.5 /
99.5 percentiles, subtract its mean, divide by its std (``dataset_zscore``); ``ZScoreNormalization``
→ per-volume z-score; ``RescaleTo01Normalization`` → min–max; resampling to the configuration's
spacing (the harness's MONAI resampling, not nnU-Net's spline; the difference is the only one
from nnU-Net's own preprocessing). Inference: sliding window over the patch size with nnU-Net's
tile step 0.5 and Gaussian weighting, without test-time mirroring.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from harness.data.preprocessing import PreprocessSpec
from harness.errors import ModelImportError, ModelSpecError
from harness.inference.sliding_window import SlidingWindowSpec
from harness.models.importers.torch_files import load_checkpoint, load_into, tensor_dict
from harness.models.nnunet import (
    DEFAULT_3D_LAYERS,
    build_nnunet_as_trained,
    inference_form,
    resolve_network_class,
    short_class_name,
)
from harness.models.reference import ModelSpec, save_reference_model

DEFAULT_CONFIGURATION = "3d_fullres"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
#: nnU-Net's sliding-window step (half a patch), as an overlap fraction.
NNUNET_TILE_OVERLAP = 0.5
#: Patches per forward pass: nnU-Net predicts one tile at a time; two keep memory modest.
NNUNET_SW_BATCH_SIZE = 2
#: Array-axis order of each reader relative to nibabel's (SimpleITK arrays are z, y, x).
READER_AXES: dict[str, tuple[int, int, int]] = {
    "SimpleITKIO": (2, 1, 0),
    "NibabelIO": (0, 1, 2),
    "NibabelIOWithReorient": (0, 1, 2),
}
#: Readers that reorient to RAS before the array is taken (the others keep the stored axes).
REORIENTING_READERS = {"NibabelIOWithReorient": "RAS"}
#: nnU-Net normalisation schemes → the harness's normalisation.
NORMALISATIONS = {
    "CTNormalization": "dataset_zscore",
    "ZScoreNormalization": "zscore",
    "RescaleTo01Normalization": "minmax",
    "NoNormalization": "none",
}
#: nnU-Net's CTNormalization divides by max(std, 1e-8).
CT_STD_FLOOR = 1e-8


def import_nnunet(
    folder: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    configuration: str | None = None,
    fold: str = "0",
    checkpoint: str | None = None,
) -> ModelSpec:
    """Write the reference-model folder ``out_dir`` for the nnU-Net v2 model in ``folder``."""
    folder = Path(folder)
    configuration = configuration or DEFAULT_CONFIGURATION
    dataset = _read_json(folder / "dataset.json")
    plans = _read_json(folder / "plans.json")
    config = configuration_of(plans, configuration)
    labels = labels_of(dataset)
    channels = channels_of(dataset)
    axes = network_axes(plans)
    network_class, arch_kwargs = architecture_of(config, configuration)
    kwargs = {
        "network_class_name": network_class,
        "arch_kwargs": arch_kwargs,
        "input_channels": len(channels),
        "num_classes": len(labels),
    }
    path = folder / f"fold_{fold}" / (checkpoint or DEFAULT_CHECKPOINT)
    state, trainer = read_checkpoint(path)
    try:
        network = build_nnunet_as_trained(**kwargs)
    except ModelSpecError as err:
        raise ModelImportError(f"plans.json: {err}") from None
    except (TypeError, ValueError, AssertionError) as err:
        raise ModelImportError(
            f"plans.json configuration {configuration!r} does not build a "
            f"{short_class_name(network_class)}: {err}"
        ) from None
    load_into(network, state, f"{path.parent.name}/{path.name}")
    inference_form(network)

    spec = ModelSpec(
        name=name
        or f"{plans.get('dataset_name', dataset.get('name', folder.name))} "
        f"{configuration} fold {fold}",
        architecture="nnUNet",
        kwargs=kwargs | {"arch_kwargs": permute_arch_kwargs(arch_kwargs, axes)},
        labels=labels,
        preprocessing=preprocessing_of(plans, config, channels, axes),
        sliding_window=SlidingWindowSpec(
            roi_size=_to_harness(config["patch_size"], axes, "patch_size"),
            overlap=NNUNET_TILE_OVERLAP,
            mode="gaussian",
            sw_batch_size=NNUNET_SW_BATCH_SIZE,
        ),
        source={
            "importer": "nnunet-v2",
            "folder": folder.name,
            "configuration": configuration,
            "fold": fold,
            "checkpoint": path.name,
            "checkpoint_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "trainer": trainer,
            "network_class": short_class_name(network_class),
            "network_axes": list(axes),
        },
    )
    harness_network = spec.build()
    load_into(harness_network, to_harness_frame(network.state_dict(), axes), "permuted weights")
    save_reference_model(harness_network, spec, out_dir)
    return spec


def configuration_of(plans: Mapping[str, Any], configuration: str) -> dict[str, Any]:
    """The configuration's settings, with those it ``inherits_from`` underneath."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, Mapping) or not configurations:
        raise ModelImportError("plans.json has no configurations")
    chain: list[Mapping[str, Any]] = []
    current = configuration
    while current is not None:
        if current not in configurations:
            raise ModelImportError(
                f"plans.json has no configuration {current!r} "
                f"(it has: {', '.join(sorted(configurations))})"
            )
        if any(current is c for c in chain) or len(chain) > len(configurations):
            raise ModelImportError(f"plans.json configuration {configuration!r} inherits in a loop")
        chain.append(configurations[current])
        current = configurations[current].get("inherits_from")
    merged: dict[str, Any] = {}
    for entry in reversed(chain):
        merged |= dict(entry)
    for key in ("patch_size", "spacing"):
        if key not in merged:
            raise ModelImportError(f"plans.json configuration {configuration!r} lacks {key!r}")
    if len(merged["patch_size"]) != 3:
        raise ModelImportError(
            f"configuration {configuration!r} is {len(merged['patch_size'])}D (patch size "
            f"{merged['patch_size']}); the harness evaluates 3D networks"
        )
    return merged


def labels_of(dataset: Mapping[str, Any]) -> dict[int, str]:
    """Class id → name from ``dataset.json`` (nnU-Net writes name → id; ``ignore`` is not a
    predicted class). Region-based labels (lists of ids) are not supported."""
    raw = dataset.get("labels")
    if not isinstance(raw, Mapping) or not raw:
        raise ModelImportError("dataset.json has no labels")
    labels: dict[int, str] = {}
    for label_name, value in raw.items():
        if label_name == "ignore":
            continue
        if isinstance(value, list | tuple):
            raise ModelImportError(
                f"dataset.json label {label_name!r} is a region {value}: region-based nnU-Net "
                "models are not supported (their outputs are sigmoids per region, not classes)"
            )
        labels[int(value)] = str(label_name)
    if sorted(labels) != list(range(len(labels))):
        raise ModelImportError(
            f"dataset.json labels must be the consecutive ids 0..{len(labels) - 1}, got "
            f"{sorted(labels)}"
        )
    return labels


def channels_of(dataset: Mapping[str, Any]) -> list[str]:
    """Input channel names, in order (``channel_names``, or the older ``modality``)."""
    raw = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(raw, Mapping) or not raw:
        raise ModelImportError("dataset.json has no channel_names")
    return [str(raw[k]) for k in sorted(raw, key=int)]


def network_axes(plans: Mapping[str, Any]) -> tuple[int, int, int]:
    """q: network axis j reads the harness's (nibabel's) axis q[j]."""
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in READER_AXES:
        raise ModelImportError(
            f"plans.json image_reader_writer {reader!r} is not supported "
            f"(supported: {', '.join(READER_AXES)})"
        )
    transpose = plans.get("transpose_forward", [0, 1, 2])
    if sorted(transpose) != [0, 1, 2]:
        raise ModelImportError(f"plans.json transpose_forward {transpose} is not a permutation")
    base = READER_AXES[reader]
    return tuple(base[t] for t in transpose)


def architecture_of(config: Mapping[str, Any], configuration: str) -> tuple[str, dict[str, Any]]:
    """(network class name, its arch_kwargs with import strings) from a configuration: the
    ``architecture`` entry of nnU-Net ≥ 2.4 plans, or the older flat ``UNet_*`` keys."""
    if "architecture" in config:
        arch = config["architecture"]
        name, kwargs = arch.get("network_class_name"), arch.get("arch_kwargs")
        if not isinstance(name, str) or not isinstance(kwargs, Mapping):
            raise ModelImportError(
                f"configuration {configuration!r} architecture lacks network_class_name or "
                "arch_kwargs"
            )
    else:
        name, kwargs = _legacy_architecture(config, configuration)
    try:
        resolve_network_class(name)
    except ModelSpecError as err:
        raise ModelImportError(str(err)) from None
    return name, dict(kwargs)


def _legacy_architecture(
    config: Mapping[str, Any], configuration: str
) -> tuple[str, dict[str, Any]]:
    """nnU-Net v2 < 2.4 plans: PlainConvUNet settings as flat keys (nnU-Net's defaults for the
    layer types, which those plans did not record)."""
    try:
        kernels = config["conv_kernel_sizes"]
        n_stages = len(kernels)
        return config.get("UNet_class_name", "PlainConvUNet"), {
            "n_stages": n_stages,
            "features_per_stage": [
                min(config["UNet_base_num_features"] * 2**i, config["unet_max_num_features"])
                for i in range(n_stages)
            ],
            "kernel_sizes": kernels,
            "strides": config["pool_op_kernel_sizes"],
            "n_conv_per_stage": config["n_conv_per_stage_encoder"],
            "n_conv_per_stage_decoder": config["n_conv_per_stage_decoder"],
        } | DEFAULT_3D_LAYERS
    except KeyError as err:
        raise ModelImportError(
            f"configuration {configuration!r} has neither an architecture entry nor the key "
            f"{err} of older plans"
        ) from None


def preprocessing_of(
    plans: Mapping[str, Any],
    config: Mapping[str, Any],
    channels: Sequence[str],
    axes: tuple[int, int, int],
) -> PreprocessSpec:
    """The harness's preprocessing equivalent to the configuration's (see the module doc)."""
    schemes = list(config.get("normalization_schemes", ["ZScoreNormalization"] * len(channels)))
    if len(set(schemes)) != 1:
        raise ModelImportError(
            f"channels use different normalisation schemes {schemes}; the harness applies one "
            "to all channels"
        )
    scheme = schemes[0]
    if scheme not in NORMALISATIONS:
        raise ModelImportError(
            f"normalisation scheme {scheme!r} is not supported (supported: "
            f"{', '.join(NORMALISATIONS)})"
        )
    if any(config.get("use_mask_for_norm", [])):
        raise ModelImportError(
            "use_mask_for_norm is set: normalising within the nonzero mask is not supported"
        )
    fields: dict[str, Any] = {}
    if scheme == "CTNormalization":
        if len(channels) != 1:
            raise ModelImportError("CTNormalization of more than one channel is not supported")
        try:
            stats = plans["foreground_intensity_properties_per_channel"]["0"]
            fields = {
                "intensity_window": (
                    float(stats["percentile_00_5"]),
                    float(stats["percentile_99_5"]),
                ),
                "intensity_mean": float(stats["mean"]),
                "intensity_std": max(float(stats["std"]), CT_STD_FLOOR),
            }
        except (KeyError, TypeError) as err:
            raise ModelImportError(
                f"plans.json foreground_intensity_properties_per_channel lacks {err} for "
                "CTNormalization"
            ) from None
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    return PreprocessSpec(
        orientation=REORIENTING_READERS.get(reader),
        spacing=tuple(float(s) for s in _to_harness(config["spacing"], axes, "spacing")),
        normalisation=NORMALISATIONS[scheme],
        **fields,
    )


def permute_arch_kwargs(
    arch_kwargs: Mapping[str, Any], axes: tuple[int, int, int]
) -> dict[str, Any]:
    """``arch_kwargs`` with per-axis kernel sizes and strides in the harness's axis order."""
    permuted = dict(arch_kwargs)
    for key in ("kernel_sizes", "strides"):
        value = arch_kwargs.get(key)
        if isinstance(value, list | tuple):
            permuted[key] = [
                _to_harness(stage, axes, key) if isinstance(stage, list | tuple) else stage
                for stage in value
            ]
    return permuted


def to_harness_frame(
    state: Mapping[str, torch.Tensor], axes: tuple[int, int, int]
) -> dict[str, torch.Tensor]:
    """Network weights with every 3D kernel's spatial axes permuted to the harness's order."""
    inverse = _inverse(axes)
    dims = (0, 1, *(2 + p for p in inverse))
    return {k: v.permute(dims).contiguous() if v.ndim == 5 else v for k, v in state.items()}


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The ``network_weights`` state dict of an nnU-Net checkpoint and its trainer's name."""
    data = load_checkpoint(path)
    if not isinstance(data, Mapping) or "network_weights" not in data:
        raise ModelImportError(f"{path.name} has no network_weights (not an nnU-Net checkpoint)")
    state = tensor_dict(data["network_weights"], f"{path.name} network_weights")
    return state, str(data.get("trainer_name", ""))


def _to_harness(values: Sequence, axes: tuple[int, int, int], what: str) -> tuple:
    """Per-axis ``values`` given in network order, in the harness's order."""
    if len(values) != 3:
        raise ModelImportError(f"{what} {list(values)} must have three entries")
    return tuple(values[p] for p in _inverse(axes))


def _inverse(axes: tuple[int, int, int]) -> tuple[int, int, int]:
    """p with axes[p[a]] = a: the network axis that reads harness axis a."""
    return tuple(axes.index(a) for a in range(3))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelImportError(f"missing {path.name} in {path.parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelImportError(f"{path.name} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ModelImportError(f"{path.name} must hold a JSON object")
    return data

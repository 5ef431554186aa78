"""Import a MONAI bundle as a reference model.

Read: ``configs/metadata.json`` (output channel names), ``configs/inference.json`` (or
``.yaml``: ``network_def``, the ``preprocessing`` transforms, the ``inferer``) and
``models/model.pt`` (a state dict, read weights-only).

A bundle config is a program: ``$`` strings are Python expressions and ``_target_`` names any
importable callable. Here the ``network_def`` subtree is checked before MONAI's config parser
instantiates it: every ``_target_`` must be a class in ``monai.networks``, ``@`` references are
replaced by the (checked) values they point to, and ``$`` expressions, ``%`` macros and the
``_requires_`` / ``_mode_`` keys are refused. Preprocessing and sliding-window settings are read
as data from the transforms the harness's spec can express (Orientationd, Spacingd,
ScaleIntensityRanged to [0, 1], NormalizeIntensityd, ScaleIntensityd,
ScaleIntensityRangePercentilesd to [0, 1]); loading, channel and type transforms are the harness's
own reading; any other transform is reported in the spec's ``source`` as not applied.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.config_item import ComponentLocator

from harness.data.preprocessing import PreprocessSpec
from harness.errors import ModelImportError
from harness.inference.sliding_window import SlidingWindowSpec
from harness.models.importers.torch_files import load_checkpoint, load_into, tensor_dict
from harness.models.networks import ARCHITECTURES
from harness.models.reference import ModelSpec, save_reference_model

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
WEIGHTS = "models/model.pt"
ALLOWED_PACKAGE = "monai.networks"
#: Config keys with a meaning to MONAI's parser beyond data.
REFUSED_KEYS = ("_requires_", "_mode_", "_disabled_")
#: Transforms that only load, type or reshape what the harness reads itself.
READING_TRANSFORMS = {
    "LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst", "EnsureTyped",
    "EnsureType", "CastToTyped", "CastToType", "ToTensord", "ToTensor", "AddChanneld",
}  # fmt: skip
#: MONAI's SlidingWindowInferer defaults, used where the bundle's inferer leaves them out.
INFERER_DEFAULTS = {"overlap": 0.25, "mode": "constant", "sw_batch_size": 1}


def import_monai_bundle(
    folder: str | Path, out_dir: str | Path, *, name: str | None = None
) -> ModelSpec:
    """Write the reference-model folder ``out_dir`` for the MONAI bundle in ``folder``."""
    folder = Path(folder)
    metadata = _read_config(folder / "configs" / "metadata.json")
    config_path = next(
        (folder / "configs" / n for n in CONFIG_NAMES if (folder / "configs" / n).is_file()), None
    )
    if config_path is None:
        raise ModelImportError(f"missing configs/inference.json in {folder}")
    config = _read_config(config_path)
    if not isinstance(config.get("network_def"), Mapping):
        raise ModelImportError(f"{config_path.name} has no network_def")
    network_def = resolve(config["network_def"], config, "network_def")
    check_components(network_def, "network_def")
    architecture, kwargs = architecture_of(network_def)
    network = ConfigParser({"network_def": network_def}).get_parsed_content("network_def")

    weights = folder / WEIGHTS
    loaded = load_checkpoint(weights)
    if (
        isinstance(loaded, Mapping)
        and len(loaded) == 1
        and isinstance(next(iter(loaded.values())), Mapping)
    ):
        loaded = next(iter(loaded.values()))  # {"model": state_dict}
    load_into(network, tensor_dict(loaded, WEIGHTS), WEIGHTS)

    preprocessing, ignored = preprocessing_of(config)
    spec = ModelSpec(
        name=name or str(metadata.get("name") or folder.name),
        architecture=architecture,
        kwargs=kwargs,
        labels=labels_of(metadata, ARCHITECTURES[architecture].out_channels(kwargs)),
        preprocessing=preprocessing,
        sliding_window=sliding_window_of(config, metadata),
        source={
            "importer": "monai-bundle",
            "folder": folder.name,
            "version": str(metadata.get("version", "")),
            "network": network_def["_target_"],
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "transforms_not_applied": ignored,
        },
    )
    harness_network = spec.build()
    load_into(harness_network, network.state_dict(), "bundle weights")
    save_reference_model(harness_network, spec, out_dir)
    return spec


def resolve(value: Any, config: Mapping[str, Any], where: str, chain: tuple[str, ...] = ()) -> Any:
    """``value`` with ``@id`` references replaced by the referenced values, refusing code."""
    if isinstance(value, str):
        if value.startswith("$"):
            raise ModelImportError(f"{where} = {value!r}: expressions ($…) are code, not accepted")
        if value.startswith("%"):
            raise ModelImportError(f"{where} = {value!r}: macros (%…) are not accepted")
        if value.startswith("@"):
            ref = value[1:]
            if ref in chain:
                raise ModelImportError(f"{where}: references form a cycle ({' → '.join(chain)})")
            return resolve(_lookup(config, ref, where), config, ref, (*chain, ref))
        return value
    if isinstance(value, Mapping):
        for key in REFUSED_KEYS:
            if key in value:
                raise ModelImportError(f"{where}: the key {key} is not accepted")
        return {k: resolve(v, config, f"{where}::{k}", chain) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, config, f"{where}::{i}", chain) for i, v in enumerate(value)]
    return value


def architecture_of(network_def: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(registered architecture, kwargs) of a checked ``network_def``: the harness's name for its
    class, whose constructor takes the kwargs as plain values."""
    target = network_def["_target_"]
    kwargs = {k: v for k, v in network_def.items() if not k.startswith("_")}
    nested = [k for k, v in kwargs.items() if "_target_" in json.dumps(v)]
    if nested:
        raise ModelImportError(
            f"network_def arguments {nested} are components (_target_): only plain values are "
            "supported as network arguments"
        )
    cls = _locate(target)
    for arch in ARCHITECTURES.values():
        if arch.build is cls:
            return arch.name, kwargs
    raise ModelImportError(
        f"network_def _target_ {target!r} is in monai.networks but not one of the architectures "
        f"the harness quantizes ({', '.join(sorted(ARCHITECTURES))})"
    )


def labels_of(metadata: Mapping[str, Any], out_channels: int | None) -> dict[int, str]:
    """Class names from ``network_data_format.outputs.pred.channel_def`` (else ``class_<k>``)."""
    outputs = (metadata.get("network_data_format") or {}).get("outputs") or {}
    channel_def = (outputs.get("pred") or next(iter(outputs.values()), {}) or {}).get("channel_def")
    if channel_def:
        labels = {int(k): str(v) for k, v in channel_def.items()}
    elif out_channels:
        labels = {k: "background" if k == 0 else f"class_{k}" for k in range(out_channels)}
    else:
        raise ModelImportError(
            "metadata.json has no output channel_def and the network no out_channels"
        )
    if out_channels is not None and sorted(labels) != list(range(out_channels)):
        raise ModelImportError(
            f"metadata.json channel_def names classes {sorted(labels)}, the network has "
            f"{out_channels} output channels"
        )
    return labels


def preprocessing_of(config: Mapping[str, Any]) -> tuple[PreprocessSpec, list[str]]:
    """The harness's preprocessing from the bundle's ``preprocessing`` transforms, and the names
    of the transforms it does not apply."""
    raw = config.get("preprocessing", {})
    transforms = raw.get("transforms", []) if isinstance(raw, Mapping) else raw
    fields: dict[str, Any] = {"orientation": None, "normalisation": "none"}
    ignored: list[str] = []
    for index, transform in enumerate(transforms):
        where = f"preprocessing::transforms::{index}"
        if not isinstance(transform, Mapping) or "_target_" not in transform:
            raise ModelImportError(f"{where} is not a transform with a _target_")
        kind = str(transform["_target_"]).rsplit(".", 1)[-1]
        args = {
            k: resolve(v, config, f"{where}::{k}")
            for k, v in transform.items()
            if not k.startswith("_") and k not in ("keys", "allow_missing_keys")
        }
        if kind in READING_TRANSFORMS:
            continue
        if kind == "Orientationd":
            fields["orientation"] = str(args.get("axcodes", "RAS"))
        elif kind == "Spacingd":
            fields["spacing"] = tuple(float(s) for s in args["pixdim"])
        elif kind == "ScaleIntensityRanged" and _to_unit(args):
            window = (float(args["a_min"]), float(args["a_max"]))
            fields |= {"normalisation": "window", "intensity_window": window}
        elif kind == "ScaleIntensityRangePercentilesd" and _to_unit(args):
            percentiles = (float(args["lower"]), float(args["upper"]))
            fields |= {"normalisation": "percentile", "intensity_percentiles": percentiles}
        elif kind == "NormalizeIntensityd" and not args.get("nonzero", False):
            fields["normalisation"] = "zscore"
        elif kind == "ScaleIntensityd" and (args.get("minv", 0.0), args.get("maxv", 1.0)) == (
            0.0,
            1.0,
        ):
            fields["normalisation"] = "minmax"
        else:
            ignored.append(kind)
    try:
        return PreprocessSpec(**fields), ignored
    except ValueError as err:
        raise ModelImportError(f"bundle preprocessing: {err}") from None


def sliding_window_of(config: Mapping[str, Any], metadata: Mapping[str, Any]) -> SlidingWindowSpec:
    """Sliding-window settings from the bundle's ``inferer`` (its patch size, else the network's
    input ``spatial_shape`` in the metadata)."""
    inferer = config.get("inferer") or {}
    inferer = resolve(inferer, config, "inferer") if isinstance(inferer, Mapping) else {}
    roi = inferer.get("roi_size")
    if roi is None:
        inputs = (metadata.get("network_data_format") or {}).get("inputs") or {}
        roi = (inputs.get("image") or {}).get("spatial_shape")
    if roi is None:
        raise ModelImportError("the bundle names no roi_size (inferer) or input spatial_shape")
    settings = INFERER_DEFAULTS | {k: inferer[k] for k in INFERER_DEFAULTS if k in inferer}
    try:
        return SlidingWindowSpec(
            roi_size=tuple(int(r) for r in roi),
            overlap=float(settings["overlap"]),
            mode=str(settings["mode"]),
            sw_batch_size=int(settings["sw_batch_size"]),
        )
    except (TypeError, ValueError) as err:
        raise ModelImportError(f"bundle inferer: {err}") from None


def _to_unit(args: Mapping[str, Any]) -> bool:
    """Whether a range scaling maps to [0, 1] with clipping (the harness's window)."""
    return (args.get("b_min"), args.get("b_max"), args.get("clip")) == (0.0, 1.0, True)


def check_components(value: Any, where: str) -> None:
    """Every ``_target_`` in ``value`` must name a class in ``monai.networks``."""
    if isinstance(value, Mapping):
        if "_target_" in value:
            target = value["_target_"]
            if not isinstance(target, str):
                raise ModelImportError(f"{where}::_target_ must be a class name, got {target!r}")
            _locate(target, where)
        for key, item in value.items():
            check_components(item, f"{where}::{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_components(item, f"{where}::{index}")


def _locate(target: str, where: str = "network_def") -> type:
    """The class a ``_target_`` names, which must live in ``monai.networks``."""
    if "." in target:
        module_name, _, attr = target.rpartition(".")
        modules = [module_name]
    else:
        found = _locator().get_component_module_name(target)
        modules = found if isinstance(found, list) else [found] if found else []
        attr = target
    outside = [
        m for m in modules if not (m == ALLOWED_PACKAGE or m.startswith(ALLOWED_PACKAGE + "."))
    ]
    if not modules or outside:
        raise ModelImportError(
            f"{where}::_target_ {target!r} is not a class in monai.networks"
            + (f" (it is in {', '.join(outside)})" if outside else "")
        )
    try:
        return getattr(importlib.import_module(modules[0]), attr)
    except (ImportError, AttributeError):
        raise ModelImportError(f"{where}::_target_ {target!r} does not exist") from None


@functools.cache
def _locator() -> ComponentLocator:
    """One locator per process: it indexes every MONAI module the first time it is asked."""
    return ComponentLocator()


def _lookup(config: Mapping[str, Any], ref: str, where: str) -> Any:
    node: Any = config
    for part in ref.replace("#", "::").split("::"):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ModelImportError(f"{where}: reference @{ref} names nothing in the config")
    return node


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelImportError(f"missing configs/{path.name} in {path.parent.parent}")
    try:
        data = ConfigParser.load_config_file(path)
    except Exception as err:  # json and yaml parsers raise their own types
        raise ModelImportError(f"configs/{path.name} is not valid JSON/YAML: {err}") from None
    if not isinstance(data, dict):
        raise ModelImportError(f"configs/{path.name} must hold an object")
    return data

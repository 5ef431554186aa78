"""A reference model on disk: ``model.json`` (architecture, preprocessing, sliding window, labels)
plus FP32 weights in ``model.safetensors``, or, for an ONNX reference
(``harness.models.onnx_graph``), the FP32 graph in ``model.onnx``. Never pickled."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from harness.data.preprocessing import PreprocessSpec
from harness.errors import ModelSpecError
from harness.inference.context import context_fraction_warning
from harness.inference.sliding_window import SlidingWindowSpec
from harness.models.interface import ONNX_FILE, SPEC_FILE, WEIGHTS_FILE
from harness.models.networks import ARCHITECTURES, Family, build_network

SPEC_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild and run a reference segmentation network; ``training`` records
    how it was trained here, ``source`` what it was imported from (``harness.models.importers``)."""

    name: str
    architecture: str
    kwargs: dict
    labels: dict[int, str]
    preprocessing: PreprocessSpec
    sliding_window: SlidingWindowSpec
    training: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    weights_key_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_key_map(self.weights_key_map)
        arch = ARCHITECTURES.get(self.architecture)
        if arch is None:
            raise ModelSpecError(
                f"unknown architecture {self.architecture!r}; "
                f"known: {', '.join(sorted(ARCHITECTURES))}"
            )
        if (
            arch.needs_img_size
            and tuple(self.kwargs.get("img_size", ())) != self.sliding_window.roi_size
        ):
            raise ModelSpecError(
                f"{self.architecture} img_size {self.kwargs.get('img_size')} must equal the "
                f"sliding-window roi_size {list(self.sliding_window.roi_size)}"
            )
        if arch.family is None and self.kwargs.get("family") not in get_args(Family):
            raise ModelSpecError(
                f"{self.architecture} kwargs need a family ({' or '.join(get_args(Family))}), "
                f"not {self.kwargs.get('family')!r}"
            )
        try:
            out_channels = arch.out_channels(self.kwargs)
        except (KeyError, TypeError, ValueError) as err:
            raise ModelSpecError(f"{self.architecture} kwargs lack the channels: {err}") from None
        if out_channels != len(self.labels):
            raise ModelSpecError(
                f"out_channels {out_channels} must equal the number of labels ({len(self.labels)})"
            )

    @property
    def family(self) -> Family:
        return ARCHITECTURES[self.architecture].family or self.kwargs["family"]

    @property
    def has_torch_network(self) -> bool:
        """False for an ONNX reference, whose network exists only as its graph."""
        return ARCHITECTURES[self.architecture].torch_network

    @property
    def weights_file(self) -> str:
        """The file in the model folder holding the FP32 weights."""
        return WEIGHTS_FILE if self.has_torch_network else ONNX_FILE

    @property
    def receptive_field(self) -> tuple[int, ...] | None:
        """Voxels along each axis one output voxel sees, where the architecture knows it."""
        compute = ARCHITECTURES[self.architecture].receptive_field
        if compute is None:
            return None
        try:
            return compute(self.kwargs)
        except ValueError as err:
            raise ModelSpecError(f"invalid {self.architecture} spec: {err}") from None

    def warnings(self) -> list[str]:
        """What a result on this model should warn about: too small a share of each
        sliding-window patch with the network's whole receptive field inside it, where the
        architecture states its field (``harness.inference.context``)."""
        warning = context_fraction_warning(self.receptive_field, self.sliding_window.roi_size)
        return [] if warning is None else [warning]

    @property
    def in_channels(self) -> int:
        return ARCHITECTURES[self.architecture].in_channels(self.kwargs)

    def build(self) -> nn.Module:
        return build_network(self.architecture, self.kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        if data.get("version", SPEC_VERSION) != SPEC_VERSION:
            raise ModelSpecError(f"model spec version {data.get('version')} is not supported")
        try:
            return cls(
                name=str(data["name"]),
                architecture=str(data["architecture"]),
                kwargs=dict(data["kwargs"]),
                labels={int(k): str(v) for k, v in data["labels"].items()},
                preprocessing=PreprocessSpec.from_dict(data.get("preprocessing", {})),
                sliding_window=SlidingWindowSpec.from_dict(data["sliding_window"]),
                training=dict(data.get("training", {})),
                source=dict(data.get("source", {})),
                weights_key_map=dict(data.get("weights_key_map", {})),
            )
        except KeyError as err:
            raise ModelSpecError(f"model spec lacks the field {err}") from None
        except (TypeError, ValueError) as err:
            raise ModelSpecError(f"invalid model spec: {err}") from None

    def to_dict(self) -> dict:
        return (
            {
                "version": SPEC_VERSION,
                "name": self.name,
                "architecture": self.architecture,
                "family": self.family,
                "kwargs": self.kwargs,
                "labels": {str(k): v for k, v in sorted(self.labels.items())},
                "preprocessing": self.preprocessing.to_dict(),
                "sliding_window": self.sliding_window.to_dict(),
                "training": self.training,
            }
            | ({"source": self.source} if self.source else {})
            | ({"weights_key_map": self.weights_key_map} if self.weights_key_map else {})
        )


def read_spec(path: str | Path) -> ModelSpec:
    """Read a ``model.json`` (or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelSpecError(f"missing model spec {path}") from None
    except json.JSONDecodeError as err:
        raise ModelSpecError(f"{path} is not valid JSON: {err}") from None
    return ModelSpec.from_dict(data)


def save_reference_model(model: nn.Module, spec: ModelSpec, out_dir: str | Path) -> Path:
    """Write ``model.json`` and ``model.safetensors`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"architecture": spec.architecture})
    (out_dir / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    return out_dir


def load_reference_model(model_dir: str | Path) -> tuple[ModelSpec, nn.Module]:
    """Rebuild the network from its spec and load its FP32 weights (strictly, no missing keys);
    an ONNX reference has no torch network to rebuild (``ModelSpecError``: its graph is opened by
    ``harness.backends.onnxruntime.graph_reference``)."""
    model_dir = Path(model_dir)
    spec = read_spec(model_dir)
    return spec, load_network(spec, model_dir)


def load_network(spec: ModelSpec, model_dir: str | Path) -> nn.Module:
    """The torch network of ``spec`` with the FP32 weights of ``model_dir`` (strictly)."""
    model = spec.build()
    weights = Path(model_dir) / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except FileNotFoundError:
        raise ModelSpecError(f"missing weights {weights}") from None
    except (SafetensorError, OSError) as err:
        raise ModelSpecError(f"{weights} is not a readable safetensors file: {err}") from None
    state = renamed_keys(state, spec.weights_key_map)
    own = model.state_dict()
    reshaped = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    result = model.load_state_dict({k: v for k, v in state.items() if k not in reshaped}, False)
    missing = [k for k in result.missing_keys if k not in reshaped]
    if missing or result.unexpected_keys or reshaped:
        explain = ARCHITECTURES[spec.architecture].explain_weights
        detail = (
            f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}, other shapes "
            f"{reshaped[:5]}"
            if explain is None
            else explain(spec.kwargs, missing, result.unexpected_keys, reshaped)
        )
        raise ModelSpecError(f"{weights} does not fit {spec.architecture}: {detail}")
    return model.eval()


def renamed_keys(state: dict, key_map: dict[str, str]) -> dict:
    """``state`` with each key's longest prefix found in ``key_map`` replaced by its value (a
    weights file's ``model.3.weight`` → ``layers.3.weight`` with ``{"model.": "layers."}``);
    ModelSpecError when two keys end up the same."""
    if not key_map:
        return state
    prefixes = sorted(key_map, key=len, reverse=True)
    renamed: dict = {}
    source: dict[str, str] = {}
    for key, value in state.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        new = key if prefix is None else key_map[prefix] + key[len(prefix) :]
        if new in renamed:
            raise ModelSpecError(
                f"weights_key_map renames both {source[new]!r} and {key!r} to {new!r}"
            )
        renamed[new], source[new] = value, key
    return renamed


def _check_key_map(key_map: dict) -> None:
    if not isinstance(key_map, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in key_map.items()
    ):
        raise ModelSpecError(
            "weights_key_map must map non-empty key prefixes of the weights file to the "
            f"network's prefixes (strings), got {key_map!r}"
        )


def weights_sha256(model_dir: str | Path) -> str:
    """SHA-256 of the FP32 weights file (an ONNX reference's graph), recorded in results and
    quantized checkpoints."""
    model_dir = Path(model_dir)
    return hashlib.sha256((model_dir / read_spec(model_dir).weights_file).read_bytes()).hexdigest()

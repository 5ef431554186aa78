"""A plain sequential 3D network described by a JSON layer list (the ``Sequential`` architecture).

``model.json`` kwargs: ``{"in_channels": C, "layers": [...]}``, each layer an object with a
``type``:

* ``conv``: ``out_channels``, ``kernel_size`` (odd int or three odd ints), ``dilation`` (int or
  three ints, default 1), ``bias`` (default true); stride 1, zero padding d (k - 1) / 2, so the
  output keeps the input's size (a segmentation network's logits cover its patch).
* ``activation``: ``name`` one of ``ACTIVATIONS``, with ``negative_slope`` (leaky_relu) or
  ``alpha`` (elu) where it applies.
* ``norm``: ``name`` ``batch`` (BatchNorm3d), ``instance`` (InstanceNorm3d, affine) or ``group``
  (GroupNorm, ``num_groups``), over the channels of the previous conv.
* ``dropout``: ``p`` in [0, 1) (a no-op in evaluation).

The last conv's ``out_channels`` are the logits (one per label). The receptive field along each
axis is 1 + Σ d (k - 1) over the convs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

SPATIAL_DIMS = 3
ACTIVATIONS: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "relu": lambda p: nn.ReLU(),
    "leaky_relu": lambda p: nn.LeakyReLU(float(p.get("negative_slope", 0.01))),
    "elu": lambda p: nn.ELU(float(p.get("alpha", 1.0))),
    "gelu": lambda p: nn.GELU(),
    "prelu": lambda p: nn.PReLU(),
    "silu": lambda p: nn.SiLU(),
    "tanh": lambda p: nn.Tanh(),
    "sigmoid": lambda p: nn.Sigmoid(),
}
NORMS: dict[str, Callable[[int, Mapping[str, Any]], nn.Module]] = {
    "batch": lambda c, p: nn.BatchNorm3d(c),
    "instance": lambda c, p: nn.InstanceNorm3d(c, affine=True),
    "group": lambda c, p: nn.GroupNorm(int(p["num_groups"]), c),
}
# keys each layer type takes besides "type" (anything else is refused, not silently ignored)
_KEYS = {
    "conv": {"out_channels", "kernel_size", "dilation", "bias"},
    "activation": {"name", "negative_slope", "alpha"},
    "norm": {"name", "num_groups"},
    "dropout": {"p"},
}


class SequentialNet(nn.Module):
    """The layers in order (``layers.<i>``); input (B, C, D, H, W) → logits of the same size."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build_sequential(in_channels: int = 1, layers: Sequence[Mapping[str, Any]] = ()) -> nn.Module:
    """The network of a layer list (see module docstring); ValueError naming the bad layer."""
    channels = _positive_int(in_channels, "in_channels")
    if not layers:
        raise ValueError("a Sequential network needs a non-empty 'layers' list")
    modules: list[nn.Module] = []
    for i, layer in enumerate(layers):
        where = f"layers[{i}]"
        kind = _layer_type(layer, where)
        if kind == "conv":
            out = _positive_int(layer.get("out_channels"), f"{where}.out_channels")
            kernel = _triple(layer.get("kernel_size", 3), f"{where}.kernel_size")
            dilation = _triple(layer.get("dilation", 1), f"{where}.dilation")
            if any(k % 2 == 0 for k in kernel):
                raise ValueError(
                    f"{where}.kernel_size must be odd (same-size output), got {kernel}"
                )
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel, strict=True))
            bias = layer.get("bias", True)
            if not isinstance(bias, bool):
                raise ValueError(f"{where}.bias must be true or false, got {bias!r}")
            modules.append(nn.Conv3d(channels, out, kernel, 1, padding, dilation, bias=bias))
            channels = out
        elif kind == "activation":
            modules.append(_named(ACTIVATIONS, layer, where)(layer))
        elif kind == "norm":
            try:
                modules.append(_named(NORMS, layer, where)(channels, layer))
            except (KeyError, ValueError) as error:
                raise ValueError(f"{where}: {error}") from None
        else:
            p = layer.get("p", 0.5)
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p < 1.0:
                raise ValueError(f"{where}.p must be a probability in [0, 1), got {p!r}")
            modules.append(nn.Dropout(float(p)))
    if not any(isinstance(m, nn.Conv3d) for m in modules):
        raise ValueError("a Sequential network needs at least one conv layer")
    return SequentialNet(modules)


def sequential_out_channels(kwargs: Mapping[str, Any]) -> int | None:
    """``out_channels`` of the last conv of the layer list (None without one)."""
    convs = [layer for layer in kwargs.get("layers", ()) if _is_conv(layer)]
    return convs[-1].get("out_channels") if convs else None


def sequential_receptive_field(kwargs: Mapping[str, Any]) -> tuple[int, ...]:
    """Voxels along each axis an output voxel sees: 1 + Σ d (k - 1) over the convs."""
    field = [1] * SPATIAL_DIMS
    for i, layer in enumerate(kwargs.get("layers", ())):
        if _is_conv(layer):
            kernel = _triple(layer.get("kernel_size", 3), f"layers[{i}].kernel_size")
            dilation = _triple(layer.get("dilation", 1), f"layers[{i}].dilation")
            for axis in range(SPATIAL_DIMS):
                field[axis] += dilation[axis] * (kernel[axis] - 1)
    return tuple(field)


def _is_conv(layer: Any) -> bool:
    return isinstance(layer, Mapping) and layer.get("type") == "conv"


def _layer_type(layer: Any, where: str) -> str:
    if not isinstance(layer, Mapping):
        raise ValueError(f"{where} must be an object with a 'type', got {layer!r}")
    kind = layer.get("type")
    if kind not in _KEYS:
        raise ValueError(
            f"{where}: unknown layer type {kind!r} (expected one of: {', '.join(_KEYS)})"
        )
    unknown = sorted(set(layer) - _KEYS[kind] - {"type"})
    if unknown:
        raise ValueError(f"{where}: a {kind} layer takes no {', '.join(unknown)}")
    return kind


def _named(table: Mapping[str, Any], layer: Mapping[str, Any], where: str) -> Any:
    name = layer.get("name")
    if name not in table:
        raise ValueError(
            f"{where}: unknown {layer['type']} {name!r} (expected one of: {', '.join(table)})"
        )
    return table[name]


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def _triple(value: Any, what: str) -> tuple[int, int, int]:
    values = [value] * SPATIAL_DIMS if isinstance(value, int) else value
    if not isinstance(values, Sequence) or len(values) != SPATIAL_DIMS:
        raise ValueError(f"{what} must be an integer or {SPATIAL_DIMS} integers, got {value!r}")
    return tuple(_positive_int(v, what) for v in values)


def explain_sequential_weights(
    kwargs: Mapping[str, Any],
    missing: Sequence[str],
    unexpected: Sequence[str],
    reshaped: Sequence[str] = (),
) -> str:
    """Name, by layer entry, what the weights file holds that no entry takes (``unexpected``
    keys, and ``reshaped`` ones of another shape than the entry's) and what it lacks
    (``missing`` keys of the network); with the likely cause when the
    file's numbering is offset from the list's (``layers.<i>`` counts every entry,
    parameterless activations, norms without affine and dropouts included)."""
    layers = list(kwargs.get("layers", ()))
    foreign = [key for key in unexpected if _layer_index(key) is None]
    notes = []
    if foreign:
        notes.append(
            f"{len(foreign)} of the file's keys are not layers.<i> keys (first {foreign[0]!r}): "
            "a weights_key_map in model.json renames their prefix"
        )
    for index, names in _by_layer(unexpected).items():
        if index >= len(layers):
            notes.append(
                f"the file's layers.{index}.{names} is beyond the list's {len(layers)} entries"
            )
        else:
            kind = layers[index].get("type")
            notes.append(
                f"the file's layers.{index}.{names} falls on layers[{index}], a "
                f"{layers[index].get('name', kind)} {kind}"
            )
    for index, names in _by_layer(reshaped).items():
        kind = layers[index].get("type")
        notes.append(
            f"the file's layers.{index}.{names} has another shape than layers[{index}] ({kind}) "
            "takes"
        )
    for index, names in _by_layer(missing).items():
        kind = layers[index].get("type") if index < len(layers) else "?"
        notes.append(f"layers[{index}] ({kind}) has no {names} in the file")
    text = "; ".join(notes[:6]) + ("; …" if len(notes) > 6 else "")
    offset = _by_layer(unexpected) or _by_layer(reshaped)
    if not foreign and offset and (_by_layer(missing) or _by_layer(reshaped)):
        text += (
            ". layers.<i> counts every entry, activations, norms and dropouts included: an entry "
            "the file's network had (an activation between the convs, say) may be missing from "
            "the list"
        )
    return text


def _by_layer(keys: Sequence[str]) -> dict[int, str]:
    """``layers.<i>.<name>`` keys as {i: "name1/name2"} (names sorted) in layer order."""
    grouped: dict[int, list[str]] = {}
    for key in keys:
        index = _layer_index(key)
        if index is not None:
            grouped.setdefault(index, []).append(key.split(".", 2)[2])
    return {i: "/".join(sorted(grouped[i])) for i in sorted(grouped)}


def _layer_index(key: str) -> int | None:
    parts = key.split(".")
    if len(parts) >= 3 and parts[0] == "layers" and parts[1].isdigit():
        return int(parts[1])
    return None

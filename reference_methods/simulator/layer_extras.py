"""Extra state of a quantized layer beyond its quantized weight, from methods that transform a layer
before quantizing it. With x the layer's input, channel axis c (conv: -4, linear: -1):

| extra                     | stored                        | forward                             |
|---------------------------|-------------------------------|-------------------------------------|
| input scale (SmoothQuant) | ``input_scale`` (C_in,) > 0   | x <- x / s_j on input channel j     |
| rotation (Hadamard)       | the flag ``input_rotation``   | x <- x R^T along c, R = H / sqrt(C) |
| low-rank branch (SVD)     | ``lowrank_u`` (m, r) and      | y <- y + layer(x; weight U V, no    |
|                           | ``lowrank_v`` (r, n), float32 | bias) in floating point             |

in that order: the input is scaled, then rotated; the activation quantizer and the quantized weight
act on the result, and the low-rank branch takes the same transformed input unquantized. U V is in
the rows view of the weight (``weight_format``). R is rebuilt from the input width
(``hadamard``), so the rotation costs no storage.
"""

from dataclasses import dataclass
from typing import Any

import torch

ROTATIONS: tuple[str, ...] = ("hadamard",)
FOLDED_INPUT_SCALES = "folded_input_scales"
"""Attribute of a quantized model, {consumer layer: (producer module, s)}, set by a method that
folds a layer's input scale s into the module producing its input (SmoothQuant: the producer's
output channel j divided by s_j, the layer's weight multiplied by it). Inference needs nothing of
it; it declares the transform so that a verifier can check the weights against FP32."""


def check_rotation(rotation: Any) -> None:
    """ValueError unless ``rotation`` is None or a known rotation name."""
    if rotation is not None and rotation not in ROTATIONS:
        raise ValueError(
            f"unknown input_rotation {rotation!r} (expected one of: {', '.join(ROTATIONS)})"
        )


def rotate(x: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """x R^T along ``axis``: each vector of x along that axis multiplied by R."""
    return (x.movedim(axis, -1) @ matrix.T).movedim(-1, axis)


@dataclass(frozen=True, eq=False)
class LayerExtras:
    """A method's extras for one layer; shapes and values are checked on construction."""

    input_scale: torch.Tensor | None = None
    input_rotation: str | None = None
    lowrank: tuple[torch.Tensor, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        scale = self.input_scale
        if scale is not None:
            if scale.ndim != 1 or not scale.dtype.is_floating_point:
                raise ValueError(f"input_scale must be a float vector, got {tuple(scale.shape)}")
            if not (torch.isfinite(scale).all() and (scale > 0).all()):
                raise ValueError("input_scale must be finite and positive")
        check_rotation(self.input_rotation)
        if self.lowrank is not None:
            u, v = self.lowrank
            if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[0]:
                raise ValueError(
                    f"a low-rank branch needs U (m, r) and V (r, n), got {tuple(u.shape)} and "
                    f"{tuple(v.shape)}"
                )
            if not (torch.isfinite(u).all() and torch.isfinite(v).all()):
                raise ValueError("the low-rank branch has non-finite values")

    @property
    def layout(self) -> dict[str, Any]:
        """The ``LayerSpec`` fields these extras need."""
        return {
            "input_scale": self.input_scale is not None,
            "input_rotation": self.input_rotation,
            "lowrank_rank": None if self.lowrank is None else self.lowrank[0].shape[1],
        }

"""Hadamard rotation: quantize Linear and 1x1x1 Conv3d layers in a rotated input basis.

For a layer mixing C input channels with the (m, C) rows view W and an orthonormal Hadamard
matrix R = H / sqrt(C) (R^T R = I, see ``hadamard``),

    y = x W^T = (x R^T)(W R^T)^T,

so the layer keeps its function with the rotated weight W' = W R^T and the rotated input
x' = x R^T (per token, or per voxel along the channel axis of a 1x1x1 conv). W' is quantized with
the scheme (round-to-nearest, its weight rule); at run time the quantized layer rotates its input
before the activation quantizer (``layer_extras``: the manifest flag ``input_rotation``, no stored
matrix). Each x'_k = sum_j R_kj x_j with |R_kj| = 1/sqrt(C) mixes every channel equally, so one
outlier channel's energy spreads over all C of them: the heavy tail across channels that a
per-tensor or per-token scale must cover flattens (lower kurtosis), and the same holds for the
weight's rows.

Layers: by default every target layer that can be rotated -- a Linear or an ungrouped 1x1x1 Conv3d
whose input width is 2^k, 12 * 2^k or 20 * 2^k -- unless the scheme gives it one activation scale
per input channel: mixing the channels would undo what separate channel scales buy (demo UNETR,
W4A4, 4 test cases: rotating its 1x1x1 convs costs 0.03 DSC per-channel, gains 0.04 per-tensor).
The others get plain round-to-nearest. Naming ``layers`` rotates exactly those and refuses any
that cannot be rotated.
"""

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from reference_methods.methods.registry import register_method
from reference_methods.simulator.granularity import ActivationGranularity
from reference_methods.simulator.hadamard import hadamard_base, hadamard_matrix
from reference_methods.simulator.layer_extras import LayerExtras
from reference_methods.simulator.scheme import QuantConfig, layer_spec, quantize, target_layers


def rotation_problem(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot be rotated, or None when it can."""
    if type(layer) is nn.Linear:
        width = layer.in_features
    elif type(layer) is nn.Conv3d and tuple(layer.kernel_size) == (1, 1, 1) and layer.groups == 1:
        width = layer.in_channels
    else:
        return f"a {type(layer).__name__} is not a Linear or an ungrouped 1x1x1 Conv3d"
    if hadamard_base(width) is None:
        return f"unsupported Hadamard size {width} (supported: 2^k, 12 * 2^k and 20 * 2^k)"
    return None


@dataclass(frozen=True)
class RotationConfig:
    """Hadamard rotation under ``scheme`` (bits, weight rule, activation quantizer, float
    layers); ``layers`` None rotates every target layer that can be rotated and has no
    per-channel activation scales, else exactly the named ones."""

    scheme: QuantConfig
    layers: tuple[str, ...] | None = field(
        default=None, metadata={"help": "comma-separated layers to rotate (default: all that can)"}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, QuantConfig):
            raise TypeError(f"scheme must be a QuantConfig, got {type(self.scheme).__name__}")
        if self.layers is not None:
            if isinstance(self.layers, str) or not all(isinstance(n, str) for n in self.layers):
                raise ValueError(f"layers must be a sequence of layer names, got {self.layers!r}")
            object.__setattr__(self, "layers", tuple(self.layers))


def rotated_layers(model: nn.Module, config: RotationConfig) -> list[str]:
    """Names of the layers ``apply`` rotates; ValueError naming a requested layer that is not a
    target of the scheme or cannot be rotated, or when no layer can be rotated at all."""
    targets = target_layers(model, config.scheme)
    if config.layers is None:
        names = [
            name
            for name, layer in targets.items()
            if rotation_problem(layer) is None
            and layer_spec(layer, config.scheme).activation_granularity
            is not ActivationGranularity.PER_CHANNEL
        ]
        if not names:
            raise ValueError(
                "no layer can be rotated: rotation needs a Linear or an ungrouped 1x1x1 Conv3d "
                "whose input width is 2^k, 12 * 2^k or 20 * 2^k, without per-channel activation "
                "scales"
            )
        return names
    for name in config.layers:
        if name not in targets:
            raise ValueError(f"layer {name!r} is not a quantized layer of the scheme")
        problem = rotation_problem(targets[name])
        if problem is not None:
            raise ValueError(f"layer {name!r}: {problem}")
    return list(config.layers)


def rotate_weights(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """Deep copy of ``model`` in eval mode whose named layers hold W' = W R^T: the original function
    once each of those layers also rotates its input, x' = x R^T (as the quantized layer does)."""
    rotated = copy.deepcopy(model).eval()
    layers = dict(rotated.named_modules())
    for name in names:
        weight = layers[name].weight
        rows = weight.detach().reshape(len(weight), -1).to(torch.float64)
        rotation = hadamard_matrix(rows.shape[1])
        with torch.no_grad():
            weight.copy_((rows @ rotation.T).reshape(weight.shape))
    return rotated


@register_method(
    "rotation",
    config=RotationConfig,
    label="Hadamard rotation",
    summary="inputs rotated by a Hadamard matrix before quantization",
)
def apply(
    model: nn.Module, config: RotationConfig, calibration: Iterable[torch.Tensor] = ()
) -> nn.Module:
    """Quantized deep copy of ``model`` with the rotated layers quantized in the rotated basis;
    static activation scales (of the rotated inputs) come from ``calibration``."""
    names = rotated_layers(model, config)
    extras = {name: LayerExtras(input_rotation="hadamard") for name in names}
    return quantize(rotate_weights(model, names), config.scheme, calibration, extras=extras)

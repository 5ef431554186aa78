"""SVD low-rank branch: keep the top singular directions of each weight in floating point and
quantize only the residual.

With W the (m, n) rows view of a layer's weight and W = U S V^T its SVD (singular values in
decreasing order), rank r <= min(m, n) splits it into

    L = U_r S_r V_r^T = A B,  A = U_r S_r (m, r),  B = V_r^T (r, n)   (float32, kept in FP)
    R = W - A B                                                      (quantized with the scheme)

and the layer computes y = layer(x_hat; R_hat) + layer(x; A B, no bias): the branch takes the
unquantized input. L is the best rank-r approximation of W (Eckart-Young), so R has the smallest
possible spectral norm, sigma_{r+1}; its range, and so its quantization step, shrinks when a few
directions dominate W. The residual gets round-to-nearest with the scheme's weight rule; A and B
are stored in the checkpoint (``lowrank_u``, ``lowrank_v``) and count 32 bits per value in the
model's size.
"""

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from reference_methods.methods.registry import register_method
from reference_methods.simulator.layer_extras import LayerExtras
from reference_methods.simulator.quantized_layers import QUANT_LAYER_TYPES, layer_kind
from reference_methods.simulator.scheme import QuantConfig, quantize, target_layers
from reference_methods.simulator.weight_format import from_rows, to_rows


def check_rank(rank: int) -> None:
    """ValueError unless ``rank`` is an integer >= 1."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")


def low_rank_split(
    weight: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A, B, R) for an (m, n) weight: A = U_r S_r (m, r) and B = V_r^T (r, n) in float32 from a
    float64 SVD, and the residual R = W - A B computed in float32 from those very factors."""
    check_rank(rank)
    rows, columns = weight.shape
    if rank > min(rows, columns):
        raise ValueError(
            f"rank {rank} exceeds min(m, n) = {min(rows, columns)} of the {rows}x{columns} weight"
        )
    u, s, vh = torch.linalg.svd(weight.to(torch.float64), full_matrices=False)
    left = (u[:, :rank] * s[:rank]).to(torch.float32)
    right = vh[:rank].to(torch.float32)
    return left, right, weight.to(torch.float32) - left @ right


@dataclass(frozen=True)
class SVDConfig:
    """A rank-``rank`` floating-point branch on every target layer of ``scheme``, whose bits,
    weight rule, activation quantizer and float layers quantize the residual."""

    scheme: QuantConfig
    rank: int = field(metadata={"help": "rank of the floating-point low-rank branch"})

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, QuantConfig):
            raise TypeError(f"scheme must be a QuantConfig, got {type(self.scheme).__name__}")
        check_rank(self.rank)


@register_method(
    "svd",
    config=SVDConfig,
    label="SVD",
    summary="floating-point low-rank branch, residual quantized",
)
def apply(
    model: nn.Module, config: SVDConfig, calibration: Iterable[torch.Tensor] = ()
) -> nn.Module:
    """Quantized deep copy of ``model``: each target layer's residual quantized, its low-rank
    branch kept; static activation scales come from ``calibration``."""
    residuals = copy.deepcopy(model).eval()
    extras = {}
    for name, layer in target_layers(residuals, config.scheme).items():
        axis = QUANT_LAYER_TYPES[layer_kind(layer)].weight_channel_axis
        try:
            left, right, residual = low_rank_split(
                to_rows(layer.weight.detach(), axis), config.rank
            )
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from error
        with torch.no_grad():
            layer.weight.copy_(from_rows(residual, layer.weight.shape, axis))
        extras[name] = LayerExtras(lowrank=(left, right))
    return quantize(residuals, config.scheme, calibration, extras=extras)

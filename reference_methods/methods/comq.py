"""COMQ (Zhang et al. 2024): backprop-free coordinate descent for layer-wise weight quantization.

Per layer, with W the (m, n) rows view of the weight and H = X^T X the Gram of its inputs (see
``gram``), minimise ||X W^T - X Q^T||_F^2 = tr((W - Q) H (W - Q)^T) over Q on the affine grid of
each output channel i:

    Q_ij in {lambda * delta_i * (s_i + k) : k = 0 .. 2^b - 1},
    delta_i = (max W_i - min W_i) / (2^b - 1),  s_i = round(min W_i / delta_i).

Start from Q = W; visit each row's coordinates in decreasing |W_ij| * ||X_:,j|| = |W_ij| sqrt(H_jj);
each step sets Q_ij to the grid point nearest to the exact minimiser along that coordinate,

    W_ij + sum_{k != j} H_jk (W_ik - Q_ik) / H_jj  =  Q_ij + R_ij / H_jj,   R = (W - Q) H,

or to the one nearest W_ij for a dead input (H_jj = 0, or below 1e-6 of the largest H_jj, which H
accumulated from float32 products cannot tell from 0). K sweeps; optionally, after each sweep, the
least-squares scales with the codes fixed (delta_i = <X c_i, X w_i> / ||X c_i||^2 = c_i H w_i^T /
c_i H c_i^T with c_i = s_i + k_i, which leaves lambda behind). Every step and every scale update
never increases the error, so it is non-increasing from one sweep to the next.

Gram form, batched over output channels: at step t every row takes its own t-th coordinate j_i, and
R stays exact through R_i <- R_i - (Q_ij_new - Q_ij_old) H_j,: -- O(m n) per step and O(m n^2) per
sweep whatever the number N of calibration rows, which only enter through H.

The grid machinery is shared with Permutation-COMQ: a grid is a table of scales and zero-points,
(m, G) with G groups inside each output channel or (1, G) with G groups over the whole layer, and a
group id per weight; COMQ is one group per output channel.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from reference_methods.methods.layerwise import SEQUENTIAL_HELP, quantize_layerwise
from reference_methods.methods.registry import register_method
from reference_methods.simulator.granularity import WeightGranularity
from reference_methods.simulator.quantizer import affine_max_code, check_bits
from reference_methods.simulator.scheme import QuantConfig
from reference_methods.simulator.weight_format import QuantizedWeight

# A group whose range is below 2^-12 of its magnitude is widened to that, so |zero-point| stays
# below 2^12 * (2^b - 1) < 2^24 and code + zero is exact in float32.
_MIN_RELATIVE_SPAN = 2.0**-12
# Inputs (and scale groups) with energy below this fraction of the largest count as dead.
_DEAD = 1e-6


def check_options(bits: int, sweeps: int, shrink: float) -> None:
    """ValueError unless 2 <= bits <= 8, sweeps >= 1 and the shrink factor lambda > 0."""
    check_bits(bits, "weight_bits")
    if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 1:
        raise ValueError(f"sweeps must be an integer >= 1, got {sweeps!r}")
    if isinstance(shrink, bool) or not isinstance(shrink, int | float) or not shrink > 0:
        raise ValueError(f"shrink (lambda) must be a number > 0, got {shrink!r}")
    if not math.isfinite(shrink):
        raise ValueError(f"shrink (lambda) must be finite, got {shrink!r}")


def group_grid(
    weight: torch.Tensor,
    group_ids: torch.Tensor,
    groups: int,
    per_channel: bool,
    bits: int,
    shrink: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each group's COMQ grid over [min, max] of its weights: delta = (max - min) / (2^b - 1),
    zero = round(min / delta), scale = lambda * delta. Tables (m, G) float32 / int64 when
    ``per_channel`` (group ids within each row), else (1, G). An all-zero or empty group gets
    delta = 1, zero = 0."""
    weight = weight.to(torch.float32)
    rows = len(weight)
    tables = rows if per_channel else 1
    index = group_ids.long()
    if per_channel:
        index = index + torch.arange(rows)[:, None] * groups
    low = weight.new_zeros(tables * groups)
    low = low.scatter_reduce(0, index.flatten(), weight.flatten(), "amin", include_self=False)
    high = weight.new_zeros(tables * groups)
    high = high.scatter_reduce(0, index.flatten(), weight.flatten(), "amax", include_self=False)
    span = torch.maximum(high - low, _MIN_RELATIVE_SPAN * torch.maximum(low.abs(), high.abs()))
    delta = span / affine_max_code(bits)
    delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    zero = torch.round(low / delta).to(torch.int64)
    return (shrink * delta).reshape(tables, groups), zero.reshape(tables, groups)


def comq_codes(
    weight: torch.Tensor,
    gram: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group_ids: torch.Tensor,
    bits: int,
    sweeps: int = 1,
    update_scale: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """COMQ sweeps in Gram form on the grid Q_ij = scale[., g_ij] * (zero[., g_ij] + k_ij).

    ``weight`` (m, n); ``gram`` (conv groups, n, n), row i using conv group i // (m / groups);
    ``scale`` / ``zero`` tables (m or 1, G); ``group_ids`` (m, n) in [0, G). Returns the codes k
    (m, n) int64 in [0, 2^b - 1] and the (refitted) float32 scale table.
    """
    weights = weight.to(torch.float64)
    rows, columns = weights.shape
    conv_groups = len(gram)
    conv_group = torch.arange(rows) // (rows // conv_groups)
    gram_rows = gram.to(torch.float64).reshape(conv_groups * columns, columns)
    diagonal = gram.diagonal(dim1=1, dim2=2).to(torch.float64)[conv_group].clamp(min=0)
    live = diagonal > _DEAD * diagonal.amax(dim=1, keepdim=True)
    order = torch.argsort(weights.abs() * diagonal.sqrt(), dim=1, descending=True, stable=True)
    gram_offset = (conv_group * columns)[:, None]
    group_ids = group_ids.long()
    offset = _per_weight(zero, group_ids).to(torch.float64)
    in_order = {
        "weight": weights.gather(1, order),
        "diagonal": diagonal.gather(1, order),
        "live": live.gather(1, order),
        "offset": offset.gather(1, order),
    }
    levels = affine_max_code(bits)
    quantized = weights.clone()
    codes = torch.zeros(rows, columns, dtype=torch.int64)
    residual = torch.zeros(rows, columns, dtype=torch.float64)  # (W - Q) H
    for _ in range(sweeps):
        step = _per_weight(scale, group_ids).to(torch.float64).gather(1, order)
        for t in range(columns):
            column = order[:, t : t + 1]
            h = in_order["diagonal"][:, t : t + 1]
            old = quantized.gather(1, column)
            target = torch.where(
                in_order["live"][:, t : t + 1],
                old + residual.gather(1, column) / h,
                in_order["weight"][:, t : t + 1],
            )
            s, z = step[:, t : t + 1], in_order["offset"][:, t : t + 1]
            k = torch.clamp(torch.round(target / s - z), 0, levels)
            new = s * (z + k)
            gram_row = gram_rows.index_select(0, (gram_offset + column).flatten())
            residual.addcmul_(gram_row, new - old, value=-1.0)
            quantized.scatter_(1, column, new)
            codes.scatter_(1, column, k.to(torch.int64))
        if update_scale:
            scale = refit_scales(weights, gram, offset + codes, group_ids, scale)
            quantized = _per_weight(scale, group_ids).to(torch.float64) * (offset + codes)
            residual = _times_gram(weights - quantized, gram)
    return codes, scale


def refit_scales(
    weight: torch.Tensor,
    gram: torch.Tensor,
    offsets: torch.Tensor,
    group_ids: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Least-squares scales with the codes fixed: the scale table minimising
    sum_i ||X (w_i - q_i)||^2 with q_ij = scale[., g_ij] * offsets_ij (offsets = code + zero).

    Normal equations per table row: A_gh = sum_i c_ig H c_ih^T, b_g = sum_i c_ig H w_i^T, where c_ig
    is row i's offsets on its group-g weights (O(m G n) memory). Dead groups (A_gg below 1e-6 of
    the largest) keep their scale; a table row whose solution is not all finite and positive keeps
    all its old scales.
    """
    rows, columns = weight.shape
    tables, groups = scale.shape
    per_group = torch.zeros(rows, groups, columns, dtype=torch.float64)
    per_group.scatter_(1, group_ids.long()[:, None, :], offsets.to(torch.float64)[:, None, :])
    projected = _times_gram(per_group.reshape(rows, groups * columns), gram, groups)
    projected = projected.reshape(rows, groups, columns)  # c_ig H
    normal = projected @ per_group.mT  # (m, G, G)
    target = (projected @ weight.to(torch.float64)[:, :, None]).squeeze(-1)  # (m, G)
    if tables == 1:
        normal, target = normal.sum(0, keepdim=True), target.sum(0, keepdim=True)
    old = scale.to(torch.float64)
    energy = normal.diagonal(dim1=1, dim2=2)
    inactive = energy <= _DEAD * energy.amax(dim=1, keepdim=True)
    decoupled = inactive[:, :, None] | inactive[:, None, :]
    normal = torch.where(decoupled, 0.0, normal) + torch.diag_embed(inactive.to(torch.float64))
    target = torch.where(inactive, old, target)
    solution = torch.linalg.lstsq(normal, target[:, :, None], driver="gelsd").solution.squeeze(-1)
    valid = (torch.isfinite(solution) & (solution > 0)).all(dim=1, keepdim=True)
    return torch.where(valid, solution, old).to(torch.float32)


def comq(
    weight: torch.Tensor,
    gram: torch.Tensor,
    bits: int,
    sweeps: int = 1,
    shrink: float = 1.0,
    update_scale: bool = False,
) -> QuantizedWeight:
    """COMQ of an (m, n) weight whose inputs have Gram ``gram`` (conv groups, n, n): a per-channel
    affine quantized weight (uint8 codes in [0, 2^b - 1], int32 zero-points)."""
    check_options(bits, sweeps, shrink)
    group_ids = torch.zeros(weight.shape, dtype=torch.int64)
    scale, zero = group_grid(weight, group_ids, 1, True, bits, shrink)
    codes, scale = comq_codes(weight, gram, scale, zero, group_ids, bits, sweeps, update_scale)
    return QuantizedWeight(
        WeightGranularity.PER_CHANNEL, codes.to(torch.uint8), scale, zero.to(torch.int32)
    )


@dataclass(frozen=True)
class COMQConfig:
    """COMQ with the bits, activation quantizer and float layers of ``scheme``.

    The weights are per-channel affine whatever the scheme's weight rule (so the scheme may not set
    a group size); ``sweeps`` K, ``shrink`` lambda, ``update_scale`` the closed-form scale update
    after each sweep; ``sequential`` collects each layer's inputs from the partially quantized model
    instead of the FP32 one (see ``layerwise``).
    """

    scheme: QuantConfig
    sweeps: int = field(default=1, metadata={"help": "coordinate-descent sweeps K"})
    shrink: float = field(default=1.0, metadata={"help": "grid shrink factor lambda > 0"})
    update_scale: bool = field(
        default=False, metadata={"help": "closed-form scale update after each sweep"}
    )
    sequential: bool = field(default=False, metadata={"help": SEQUENTIAL_HELP})

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, QuantConfig):
            raise TypeError(f"scheme must be a QuantConfig, got {type(self.scheme).__name__}")
        if self.scheme.weight_group_size is not None:
            raise ValueError(
                "COMQ grids are per output channel: the scheme may not set a group size"
            )
        check_options(self.scheme.weight_bits, self.sweeps, self.shrink)


@register_method(
    "comq",
    config=COMQConfig,
    label="COMQ",
    summary="backprop-free coordinate descent on the layer Gram",
)
def apply(model: nn.Module, config: COMQConfig, calibration: Iterable[torch.Tensor]) -> nn.Module:
    """COMQ-quantized deep copy of ``model``, fitted on the calibration batches."""
    return quantize_layerwise(
        model,
        config.scheme,
        calibration,
        lambda weight, gram, _spec: comq(
            weight,
            gram,
            config.scheme.weight_bits,
            config.sweeps,
            config.shrink,
            config.update_scale,
        ),
        config.sequential,
    )


def _per_weight(table: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """table[r(i), g_ij] per weight, r(i) = i for an (m, G) table and 0 for a (1, G) one."""
    return table.expand(len(group_ids), -1).gather(1, group_ids)


def _times_gram(values: torch.Tensor, gram: torch.Tensor, repeats: int = 1) -> torch.Tensor:
    """Each row's ``repeats`` consecutive n-blocks times its conv group's H, in float64."""
    rows = len(values)
    conv_groups, columns, _ = gram.shape
    blocks = values.to(torch.float64).reshape(conv_groups, rows // conv_groups, repeats, columns)
    return (blocks @ gram.to(torch.float64)[:, None]).reshape(rows, -1)

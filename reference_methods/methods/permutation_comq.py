"""Permutation-COMQ: COMQ whose scale groups are weights of similar magnitude, not output channels.

Scope ``column`` (the default, and the leaderboard baseline): one shared reordering of the layer's
input columns. Columns are ranked by their largest magnitude max_i |W_ij| and the ranking is cut
into G equal runs; every output channel then has its own grid per run, (m, G) scales like
group-wise quantization, and the permutation costs one column index, n * ceil(log2 G) bits per
layer (as GPTQ's act-order group index), not a bit per weight. G defaults to n // 128 (at least
1), the scale count of group-wise g128, which fits a bits-per-weight budget of the weight bits
+ 0.5. The sort key does not apply to this scope.

Weight-aware permutation per weight (scopes ``layer`` and ``channel``, for studies: they store a
group id per weight, ceil(log2 G) bits each): rank the weights of a layer by a sort key (W itself by
default, or |W|) and cut the ranking into G equal groups. Scope ``layer``: with m output channels of
n weights, weight (i, j) goes to group floor(rank(key_ij) * G / (m n)) over the whole layer --
floor(rank / n) for the default G = m, as many scales as per-channel; G = 1 is a single per-layer
scale. Scope ``channel``: G groups inside each output channel, floor(rank_i(key_ij) * G / n) by the
rank within row i. Each group gets its own COMQ grid (delta_g = (max - min) / (2^b - 1) over its
weights, zero s_g = round(min / delta_g), scale lambda * delta_g); then COMQ runs in the original
layout -- same greedy order, same Gram-form steps -- projecting each weight onto its own group's
grid.

The group ids are part of the quantized weight (granularity ``permuted`` or
``permuted-per-channel``; scope ``column`` writes ids equal in every row, which the checkpoint
format counts as one column index). Scopes ``channel`` and ``column`` with G = 1 are exactly
COMQ.

Why ``signed`` is the default: a group cut from the |W| ranking holds both signs of one magnitude
band, so its range [min, max] is symmetric about 0 and its 2^b-point grid with an integer zero
point cannot be centred -- at 2 bits the points sit at -4/3, -2/3, 0, 2/3 of the band's top (or
mirrored), wasting a level and cutting one side by half a step. A group cut from the signed ranking
is one contiguous value interval, which its grid covers tightly. On the shipped demo models
(``benchmarks/reconstruction_error.py``) the signed key gives 7-20x lower summed layer error than
COMQ at W4 and W2; the abs key is 2-4x lower at W4 but higher than COMQ at W2 on the demo UNet.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from reference_methods.methods.comq import COMQConfig, check_options, comq_codes, group_grid
from reference_methods.methods.layerwise import quantize_layerwise
from reference_methods.methods.registry import register_method
from reference_methods.simulator.granularity import WeightGranularity
from reference_methods.simulator.weight_format import QuantizedWeight

SortKey = Literal["abs", "signed"]
Scope = Literal["column", "layer", "channel"]
SORT_KEYS: tuple[str, ...] = ("abs", "signed")
SCOPES: tuple[str, ...] = ("column", "layer", "channel")
COLUMN_GROUP_INPUTS = 128
"""Scope ``column`` defaults to one group per 128 inputs: float32 scales and small zero-points
then add about (32 + 4) / 128 = 0.28 bits per weight, within a budget of weight bits + 0.5."""


def column_groups(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Group id (m, n) int64, equal in every row: the columns ranked by max_i |W_ij| (ties keep
    their index order) and the ranking cut into ``groups`` equal runs."""
    rows, columns = weight.shape
    if groups > columns:
        raise ValueError(f"{groups} column groups for a layer of only {columns} inputs")
    order = torch.argsort(weight.abs().amax(dim=0), stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(columns)
    return (rank * groups // columns).expand(rows, -1).contiguous()


def default_groups(weight: torch.Tensor, scope: Scope) -> int:
    """G when none is given: m for scope ``layer``, n // 128 (at least 1) for ``column``."""
    if scope == "column":
        return max(1, weight.shape[1] // COLUMN_GROUP_INPUTS)
    if scope == "channel":
        raise ValueError("scope 'channel' needs groups: the magnitude groups per channel")
    return len(weight)


def magnitude_groups(
    weight: torch.Tensor, groups: int, sort_key: SortKey = "signed", scope: Scope = "layer"
) -> torch.Tensor:
    """Group id (m, n) int64 of every weight: its rank by the sort key cut into ``groups`` equal
    runs, over the whole layer or within its output channel (ties keep their index order)."""
    _check_grouping(groups, sort_key, scope)
    rows, columns = weight.shape
    key = weight.abs() if sort_key == "abs" else weight
    if scope == "layer":
        if groups > rows * columns:
            raise ValueError(f"{groups} groups for a layer of only {rows * columns} weights")
        order = torch.argsort(key.flatten(), stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(rows * columns)
        return (rank * groups // (rows * columns)).reshape(rows, columns)
    if groups > columns:
        raise ValueError(f"{groups} groups per output channel of only {columns} weights")
    order = torch.argsort(key, dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(columns).expand(rows, -1))
    return rank * groups // columns


def permutation_comq(
    weight: torch.Tensor,
    gram: torch.Tensor,
    bits: int,
    groups: int | None = None,
    sort_key: SortKey = "signed",
    scope: Scope = "layer",
    sweeps: int = 1,
    shrink: float = 1.0,
    update_scale: bool = False,
) -> QuantizedWeight:
    """Permutation-COMQ of an (m, n) weight whose inputs have Gram ``gram`` (conv groups, n, n).

    ``groups`` G defaults to m for scope ``layer`` and n // 128 for ``column``; scope ``channel``
    needs it. Returns affine ``permuted`` (scales (G,)) or ``permuted-per-channel`` (scales
    (m, G)) weights.
    """
    check_options(bits, sweeps, shrink)
    if groups is None:
        groups = default_groups(weight, scope)
    if scope == "column":
        group_ids = column_groups(weight, groups)
    else:
        group_ids = magnitude_groups(weight, groups, sort_key, scope)
    per_channel = scope in ("channel", "column")
    scale, zero = group_grid(weight, group_ids, groups, per_channel, bits, shrink)
    codes, scale = comq_codes(weight, gram, scale, zero, group_ids, bits, sweeps, update_scale)
    if per_channel:
        granularity = WeightGranularity.PERMUTED_PER_CHANNEL
    else:
        granularity, scale, zero = WeightGranularity.PERMUTED, scale[0], zero[0]
    return QuantizedWeight(
        granularity,
        codes.to(torch.uint8),
        scale,
        zero.to(torch.int32),
        group_ids.to(torch.int32),
    )


@dataclass(frozen=True)
class PermutationCOMQConfig:
    """COMQ options (scheme, sweeps, lambda, scale update, sequential) plus the grouping: G groups
    (None: n // 128 for scope ``column``, m for ``layer``; needed for ``channel``), sort key
    ``signed`` (default) or ``abs`` (scopes ``layer`` and ``channel``), scope ``column``
    (default), ``layer`` or ``channel``."""

    comq: COMQConfig
    groups: int | None = field(
        default=None,
        metadata={"help": "magnitude groups G (default: inputs / 128 for column, m for layer)"},
    )
    sort_key: SortKey = field(default="signed", metadata={"help": "sort key of the grouping"})
    scope: Scope = field(
        default="column",
        metadata={"help": "one shared column reordering, or a group id per weight (layer/channel)"},
    )

    def __post_init__(self) -> None:
        if not isinstance(self.comq, COMQConfig):
            raise TypeError(f"comq must be a COMQConfig, got {type(self.comq).__name__}")
        if self.groups is None and self.scope == "channel":
            raise ValueError("scope 'channel' needs groups: the magnitude groups per channel")
        _check_grouping(1 if self.groups is None else self.groups, self.sort_key, self.scope)


@register_method(
    "permutation-comq",
    config=PermutationCOMQConfig,
    label="Permutation-COMQ",
    summary="COMQ with scale groups of similar-magnitude input columns",
    weight_layout="column-permuted",
)
def apply(
    model: nn.Module, config: PermutationCOMQConfig, calibration: Iterable[torch.Tensor]
) -> nn.Module:
    """Permutation-COMQ-quantized deep copy of ``model``, fitted on the calibration batches."""
    options = config.comq
    return quantize_layerwise(
        model,
        options.scheme,
        calibration,
        lambda weight, gram, _spec: permutation_comq(
            weight,
            gram,
            options.scheme.weight_bits,
            config.groups,
            config.sort_key,
            config.scope,
            options.sweeps,
            options.shrink,
            options.update_scale,
        ),
        options.sequential,
    )


def _check_grouping(groups: int, sort_key: str, scope: str) -> None:
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be an integer >= 1, got {groups!r}")
    if sort_key not in SORT_KEYS:
        raise ValueError(f"unknown sort key {sort_key!r} (expected one of: {', '.join(SORT_KEYS)})")
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r} (expected one of: {', '.join(SCOPES)})")

"""A quantized weight in the rows view: w_hat[i, j] = scale[g(i, j)] * (code[i, j] + zero[g(i, j)]).

Rows view: a layer's weight with its output-channel axis first and the other axes flattened in
order, an (m, n) matrix: Conv3d (C_out, C_in/groups * kd*kh*kw), ConvTranspose3d (C_out,
C_in * kd*kh*kw) from its axis-1 output channels, Linear (out, in). Row i is output channel i.

| granularity          | group g(i, j) of weight (i, j) | scale / zero-point shape |
|----------------------|--------------------------------|--------------------------|
| per-tensor           | one group                      | (1, 1)                   |
| per-channel          | i                              | (m, 1)                   |
| group-wise           | (i, j // group_size)           | (m, n / group_size)      |
| permuted             | group_ids[i, j]                | (G,)                     |
| permuted-per-channel | (i, group_ids[i, j])           | (m, G)                   |

Symmetric weights have no zero-point (zero = 0) and signed codes; affine weights have an integer
zero-point per group and unsigned codes in [0, 2^b - 1]. Codes plus an integer zero-point are exact
in int32 and in float32, so w_hat is one float32 product per weight: a save/load round trip and
every re-computation give the same bits.
"""

from dataclasses import dataclass
from typing import Any

import torch

from reference_methods.simulator.granularity import WeightGranularity


def to_rows(weight: torch.Tensor, channel_axis: int) -> torch.Tensor:
    """The (m, n) rows view of ``weight`` whose output channels run along ``channel_axis``."""
    return weight.movedim(channel_axis, 0).reshape(weight.shape[channel_axis], -1)


def from_rows(rows: torch.Tensor, shape: torch.Size, channel_axis: int) -> torch.Tensor:
    """Inverse of ``to_rows``: the rows laid back out as a weight of ``shape``."""
    moved = (
        shape[channel_axis],
        *(size for axis, size in enumerate(shape) if axis != channel_axis),
    )
    return rows.reshape(moved).movedim(0, channel_axis)


def scale_shape(
    granularity: WeightGranularity,
    rows: int,
    columns: int,
    group_size: int | None = None,
    groups: int | None = None,
) -> tuple[int, ...]:
    """Shape of the per-group scales (and zero-points) of an (m, n) weight, as in the table."""
    match WeightGranularity(granularity):
        case WeightGranularity.PER_TENSOR:
            return (1, 1)
        case WeightGranularity.PER_CHANNEL:
            return (rows, 1)
        case WeightGranularity.GROUP_WISE:
            if group_size is None or group_size < 1 or columns % group_size:
                raise ValueError(
                    f"weight_group_size {group_size} does not divide the {columns} weights of "
                    "each output channel"
                )
            return (rows, columns // group_size)
        case WeightGranularity.PERMUTED:
            return (groups,)
        case WeightGranularity.PERMUTED_PER_CHANNEL:
            return (rows, groups)


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """Codes (m, n), per-group float32 scales, optional integer zero-points and group ids.

    ``group_ids`` (m, n) in [0, G) is given exactly for the permuted layouts; ``group_size`` exactly
    for group-wise. Shapes are checked on construction (ValueError).
    """

    granularity: WeightGranularity
    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None = None
    group_ids: torch.Tensor | None = None
    group_size: int | None = None

    def __post_init__(self) -> None:
        granularity = WeightGranularity(self.granularity)
        object.__setattr__(self, "granularity", granularity)
        if self.codes.ndim != 2 or self.codes.dtype.is_floating_point:
            raise ValueError(
                f"codes must be an integer (m, n) matrix, got {self.codes.dtype} "
                f"{tuple(self.codes.shape)}"
            )
        rows, columns = self.codes.shape
        if (self.group_ids is not None) != granularity.has_group_ids:
            need = "need" if granularity.has_group_ids else "take no"
            raise ValueError(f"{granularity.value} weights {need} group ids")
        if (self.group_size is not None) != (granularity is WeightGranularity.GROUP_WISE):
            raise ValueError(
                f"a group size goes with group-wise weights only, not {granularity.value}"
            )
        if self.group_ids is not None and self.group_ids.shape != self.codes.shape:
            raise ValueError(
                f"group ids of shape {tuple(self.group_ids.shape)} for codes of shape "
                f"{tuple(self.codes.shape)}"
            )
        groups = self.scale.shape[-1] if granularity.has_group_ids else None
        expected = scale_shape(granularity, rows, columns, self.group_size, groups)
        if tuple(self.scale.shape) != expected:
            raise ValueError(
                f"{granularity.value} scales of an {rows}x{columns} weight need shape "
                f"{expected}, got {tuple(self.scale.shape)}"
            )
        if self.zero_point is not None and self.zero_point.shape != self.scale.shape:
            raise ValueError(
                f"zero-points of shape {tuple(self.zero_point.shape)} for scales of "
                f"shape {tuple(self.scale.shape)}"
            )

    @property
    def groups(self) -> int | None:
        """G, the number of group ids, for the permuted layouts; None otherwise."""
        return self.scale.shape[-1] if self.granularity.has_group_ids else None

    @property
    def layout(self) -> dict[str, Any]:
        """The ``LayerSpec`` weight fields this weight needs."""
        return {
            "weight_granularity": self.granularity,
            "weight_group_size": self.group_size,
            "weight_groups": self.groups,
            "weight_zero_point": self.zero_point is not None,
        }

    def per_weight(self, values: torch.Tensor) -> torch.Tensor:
        """One value per weight, (m, n), from per-group ``values`` shaped like ``scale``."""
        match self.granularity:
            case WeightGranularity.GROUP_WISE:
                return values.repeat_interleave(self.group_size, dim=1)
            case WeightGranularity.PERMUTED:
                return values[self.group_ids.long()]
            case WeightGranularity.PERMUTED_PER_CHANNEL:
                return values.gather(1, self.group_ids.long())
            case _:
                return values.expand(self.codes.shape)

    def offsets(self) -> torch.Tensor:
        """code + zero-point per weight as int32 (the codes themselves when symmetric)."""
        codes = self.codes.to(torch.int32)
        return codes if self.zero_point is None else codes + self.per_weight(self.zero_point)

    def dequantize(self) -> torch.Tensor:
        """w_hat = scale * (code + zero) in float32, (m, n)."""
        return self.offsets().to(torch.float32) * self.per_weight(self.scale)

"""GPTQ (Frantar et al. 2023): column-by-column weight quantization with second-order error
feedback.

Per layer, with W the (m, n) rows view of the weight and H = X^T X the Gram of its inputs (see
``gram``), GPTQ minimises ||X W^T - X Q^T||_F^2 = tr((W - Q) H (W - Q)^T) greedily, one input
column at a time (the Optimal Brain Surgeon update, shared by all output rows):

    H <- H + damp * mean(diag H) * I             (dead inputs, H_jj = 0, first get H_jj = 1)
    U = chol(H^-1)^T   (upper triangular: H^-1 = U^T U; from one Cholesky of H reversed)
    for j = 1 .. n:    q_j = quant(w_j)           (column j of the current W)
                       e_j = (w_j - q_j) / U_jj
                       w_k <- w_k - e_j U_jk      for every later column k > j,

which spreads each column's rounding error over the columns not yet quantized, weighted by the
inverse Hessian restricted to them. Lazy batches: inside a block of ``block_size`` columns the
updates touch only the block; the later columns receive them all at once at the block's end,
W[:, later] -= E_block U[block, later] -- the same result, in fewer passes over W.

Act-order visits the columns by decreasing H_jj (the inputs with the most energy first); the codes
are put back in the original column order afterwards.

Grids are the symmetric ones of the scheme's weight rule (``weight_format``):
q = s * clamp(round(w / s), -(2^(b-1) - 1), 2^(b-1) - 1) with s = max|w| / (2^(b-1) - 1) over
- per-tensor: the whole weight, fixed up front;
- per-channel: each row, fixed at its first column (before any update: the RTN scale);
- group-wise: each run of ``group_size`` consecutive input columns of a row, fixed when the first
  column of the run is reached, from the run's weights updated so far (the pending in-block
  updates included), as in the reference implementation.
A grouped conv runs GPTQ on each conv group's rows with that group's H.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.linalg import lapack
from torch import nn

from reference_methods.methods.layerwise import SEQUENTIAL_HELP, quantize_layerwise
from reference_methods.methods.registry import register_method
from reference_methods.simulator.granularity import WeightGranularity
from reference_methods.simulator.quantized_layers import LayerSpec
from reference_methods.simulator.quantizer import absmax, check_bits, qmax, symmetric_scale
from reference_methods.simulator.scheme import QuantConfig
from reference_methods.simulator.weight_format import QuantizedWeight, scale_shape

DEFAULT_BLOCK_SIZE = 128
DEFAULT_DAMP = 0.01


def check_options(bits: int, block_size: int, damp: float) -> None:
    """ValueError unless 2 <= bits <= 8, block_size >= 1 and 0 < damp < inf."""
    check_bits(bits, "weight_bits")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    if isinstance(damp, bool) or not isinstance(damp, int | float) or not damp > 0:
        raise ValueError(f"damp must be a number > 0, got {damp!r}")
    if not math.isfinite(damp):
        raise ValueError(f"damp must be finite, got {damp!r}")


def gptq(
    weight: torch.Tensor,
    gram: torch.Tensor,
    bits: int,
    granularity: WeightGranularity = WeightGranularity.PER_CHANNEL,
    group_size: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    damp: float = DEFAULT_DAMP,
    act_order: bool = False,
) -> QuantizedWeight:
    """GPTQ of an (m, n) weight whose inputs have Gram ``gram`` (conv groups, n, n), row i using
    conv group i // (m / groups): symmetric int8 codes with per-tensor, per-channel or group-wise
    float32 scales (``group_size`` exactly for group-wise)."""
    check_options(bits, block_size, damp)
    granularity = WeightGranularity(granularity)
    if granularity.has_group_ids:
        raise ValueError(f"GPTQ makes no {granularity.value} weights")
    rows, columns = weight.shape
    scale_shape(granularity, rows, columns, group_size)  # refuses a group size that does not fit
    if granularity is WeightGranularity.GROUP_WISE:
        column_group = torch.arange(columns) // group_size
    else:
        column_group = torch.zeros(columns, dtype=torch.int64)
    fixed = None
    if granularity is WeightGranularity.PER_TENSOR:
        fixed = symmetric_scale(absmax(weight), bits)
    conv_groups = len(gram)
    per_group = rows // conv_groups
    codes, scales = [], []
    for group in range(conv_groups):
        part = slice(group * per_group, (group + 1) * per_group)
        group_codes, group_scale = _gptq_rows(
            weight[part], gram[group], bits, column_group, fixed, block_size, damp, act_order
        )
        codes.append(group_codes)
        scales.append(group_scale)
    scale = fixed.reshape(1, 1) if fixed is not None else torch.cat(scales)
    return QuantizedWeight(granularity, torch.cat(codes), scale, group_size=group_size)


def inverse_cholesky_upper(hessian: torch.Tensor) -> torch.Tensor:
    """U, upper triangular with a positive diagonal, with H^-1 = U^T U (the Cholesky factor of
    H^-1) of a symmetric positive definite H, from one Cholesky factorization and one triangular
    inverse (LAPACK's potrf and trtri, 2 n^3 / 3 multiply-adds) instead of a
    Cholesky, an inverse and a second Cholesky (4 n^3 / 3), in the same precision: with J the
    reversal permutation, J H J = L L^T gives H^-1 = (J L^-1 J)^T (J L^-1 J), and J L^-1 J is
    upper triangular with a positive diagonal, hence that factor. Raises
    ``torch.linalg.LinAlgError`` where H is not positive definite."""
    lower = np.asfortranarray(torch.linalg.cholesky(hessian.flip(0, 1)).numpy())
    (trtri,) = lapack.get_lapack_funcs(("trtri",), (lower,))
    inverse, info = trtri(lower, lower=1, overwrite_c=1)  # in place, column-major
    if info != 0:  # a zero on L's diagonal: cannot follow a successful Cholesky
        raise torch.linalg.LinAlgError(f"trtri: L[{info - 1}, {info - 1}] is zero")
    return torch.from_numpy(inverse).flip(0, 1).contiguous()


def _gptq_rows(
    weight: torch.Tensor,
    gram: torch.Tensor,
    bits: int,
    column_group: torch.Tensor,
    fixed: torch.Tensor | None,
    block_size: int,
    damp: float,
    act_order: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ of rows sharing one Gram (n, n): codes (rows, n) int8 and their scale table (rows, G),
    G = number of column groups (the table is unused when the scale is ``fixed``)."""
    rows, columns = weight.shape
    hessian = gram.to(torch.float64).clone()
    diagonal = hessian.diagonal()
    diagonal[diagonal <= 0] = 1.0  # dead inputs: decoupled, quantized to nearest
    diagonal += damp * float(diagonal.mean())
    order = (
        torch.argsort(diagonal, descending=True, stable=True)
        if act_order
        else torch.arange(columns)
    )
    hessian = hessian[order][:, order]
    try:
        upper = inverse_cholesky_upper(hessian)
    except torch.linalg.LinAlgError as error:
        raise ValueError(
            f"the damped Gram is not positive definite (damp {damp}): raise damp"
        ) from error
    current = weight.to(torch.float64)[:, order].clone()
    group = column_group[order]
    groups = int(column_group.max()) + 1
    members = [torch.nonzero(group == g).flatten() for g in range(groups)]
    limit = qmax(bits)
    scale = torch.ones(rows, groups, dtype=torch.float32)
    known = torch.zeros(groups, dtype=torch.bool)
    if fixed is not None:
        scale[:] = fixed
        known[:] = True
    codes = torch.zeros(rows, columns, dtype=torch.int64)
    for start in range(0, columns, block_size):
        stop = min(start + block_size, columns)
        block = current[:, start:stop].clone()
        errors = torch.zeros(rows, stop - start, dtype=torch.float64)
        for t in range(stop - start):
            column = start + t
            g = int(group[column])
            if not known[g]:  # the run's current weights: block start minus pending updates
                others = members[g]
                values = current[:, others] - errors[:, :t] @ upper[start:column, others]
                scale[:, g] = symmetric_scale(absmax(values, keep=(0,)), bits).flatten()
                known[g] = True
            step = scale[:, g].to(torch.float64)
            code = torch.clamp(torch.round(block[:, t] / step), -limit, limit)
            codes[:, column] = code.to(torch.int64)
            error = (block[:, t] - code * step) / upper[column, column]
            block[:, t:] -= error[:, None] * upper[column, start + t : stop][None]
            errors[:, t] = error
        current[:, stop:] -= errors @ upper[start:stop, stop:]
    restored = torch.empty_like(codes)
    restored[:, order] = codes
    return restored.to(torch.int8), scale


@dataclass(frozen=True)
class GPTQConfig:
    """GPTQ with the bits, weight rule (per-tensor / per-channel / group size), activation
    quantizer and float layers of ``scheme``; ``block_size`` columns per lazy batch, ``damp`` the
    relative dampening of H, ``act_order`` visits inputs by decreasing energy, ``sequential``
    collects each layer's inputs from the partially quantized model (see ``layerwise``)."""

    scheme: QuantConfig
    block_size: int = field(default=DEFAULT_BLOCK_SIZE, metadata={"help": "columns per lazy batch"})
    damp: float = field(
        default=DEFAULT_DAMP, metadata={"help": "dampening, a fraction of mean(diag H)"}
    )
    act_order: bool = field(
        default=False, metadata={"help": "quantize inputs by decreasing energy"}
    )
    sequential: bool = field(default=False, metadata={"help": SEQUENTIAL_HELP})

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, QuantConfig):
            raise TypeError(f"scheme must be a QuantConfig, got {type(self.scheme).__name__}")
        check_options(self.scheme.weight_bits, self.block_size, self.damp)


@register_method(
    "gptq", config=GPTQConfig, label="GPTQ", summary="Hessian-based error compensation"
)
def apply(model: nn.Module, config: GPTQConfig, calibration: Iterable[torch.Tensor]) -> nn.Module:
    """GPTQ-quantized deep copy of ``model``, fitted on the calibration batches."""

    def solve(weight: torch.Tensor, gram: torch.Tensor, spec: LayerSpec) -> QuantizedWeight:
        return gptq(
            weight,
            gram,
            spec.weight_bits,
            spec.weight_granularity,
            spec.weight_group_size,
            config.block_size,
            config.damp,
            config.act_order,
        )

    return quantize_layerwise(model, config.scheme, calibration, solve, config.sequential)

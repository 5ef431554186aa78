"""Input Gram matrices H = X^T X of quantizable layers, accumulated over calibration batches.

X has one row per output position and one column per weight of an output channel, in the order of
the weight's rows view (``weight_format.to_rows``), so that the layer's output less bias is
X @ W_rows^T and ||X W^T - X Q^T||_F^2 = tr((W - Q) H (W - Q)^T):
- Linear: one row per token (the input flattened to (-1, in_features)).
- Conv3d: one row per output voxel of each sample, its C_in/groups * kd*kh*kw receptive field under
  the layer's stride, padding and dilation; a grouped conv has one Gram per conv group.
- ConvTranspose3d: the equivalent direct convolution (input zero-stuffed by the stride, padded by
  dilation*(k-1) - padding at the start and that + output_padding at the end, stride 1, flipped
  kernel), its columns put back in the transposed weight's (c_in, kd, kh, kw) order.
The Gram of a ConvTranspose3d is computed without those stuffed zeros: per axis, output voxel o
takes only the taps a with a d = (o + p) mod s (a phase), and on one phase's outputs the layer is
a stride-1 conv of x itself with those taps; H is block-diagonal over the phases (a row of X is
zero off its phase's taps), each block the Gram of such a conv (``_transposed_gram``): every
output voxel is still one row, but with about k^3 / s^3 of the columns (stride 2, kernel 3: 8
phases of 1 to 8 taps instead of 27), so the products shrink about s^6-fold.
Rows come in slabs of the first output axis, at most ``max_values`` numbers at a time, so the full
N x n matrix of a 3D conv is never materialised. Each chunk's product is float32 over the upper
block triangle only; H sums the chunks in float64 and is mirrored at the end.

Stride-1 ungrouped convs (and every phase of a ConvTranspose3d) can skip the
receptive fields altogether. Block (a, b) of H, for kernel taps a and b, is the box sum
    H_ab = sum_{q in B(a)} x(q) x(q + d*e)^T,  e = b - a,  B(a) = d*a + [0, O)  (O: output size)
over the padded input x. With F_e(R) = sum_{q in R} x(q) x(q + d*e)^T and each box B(a) written by
inclusion-exclusion from the whole padded volume minus its boundary slabs (bars, blocks) outside
B(a), H needs F_e only for about half the (2k - 1)^3 shifts e (63 for k = 3, as H_ba = H_ab^T)
over the volume -- one C x C GEMM per shift on shifted views of one channels-last copy of the
input -- and over the boundary regions: about 63 C^2 = n^2 / 12 multiply-adds per input voxel for
k = 3, instead of n^2 / 2 per output voxel. The boundary coordinates of an axis (t < d (k - 1) or
t >= O) are cut into segments at the box edges d a and d a + O, each inside or outside every box
as a whole, so the regions number at most (1 + 2 (k - 1))^3 whatever the dilation; but their rows
grow with it (segments d (k - 1) thick), and rows of regions that fix axis 1 or 2 are gathered
before their products. ``input_gram`` therefore takes the shifted products only where its cost
model (``shifted_products_cost`` against ``unfold_cost``) expects them to be faster: at small
dilations, not at large ones (benchmarks/gram_dilation.py).
"""

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_methods.simulator.quantized_layers import QUANT_LAYER_TYPES, layer_kind
from reference_methods.statistics.input_hooks import observe_layer_inputs

MAX_VALUES = 1 << 22  # numbers per column chunk (16 MiB of float32)
_BLOCK = 256  # columns per block of the block-triangular product


def gram_shape(layer: nn.Module) -> tuple[int, int, int]:
    """(conv groups, n, n) of the Gram of ``layer``'s inputs; n = weights per output channel."""
    kind = layer_kind(layer)
    if kind is None:
        raise TypeError(f"{type(layer).__name__} is not a quantizable layer")
    weight = layer.weight
    columns = weight.numel() // weight.shape[QUANT_LAYER_TYPES[kind].weight_channel_axis]
    groups = layer.groups if kind == "conv3d" else 1
    return groups, columns, columns


def input_columns(
    layer: nn.Module, x: torch.Tensor, max_values: int = MAX_VALUES
) -> Iterator[torch.Tensor]:
    """Chunks (rows, conv groups, n) of the rows of X for input ``x``, in float32."""
    x = x.detach().to(torch.float32)
    match layer_kind(layer):
        case "linear":
            tokens = x.reshape(-1, 1, layer.in_features)
            step = max(1, max_values // layer.in_features)
            for start in range(0, len(tokens), step):
                yield tokens[start : start + step]
        case "conv3d":
            yield from _conv_columns(
                x if x.ndim == 5 else x[None],
                layer.kernel_size,
                layer.stride,
                _padding_pairs(layer),
                layer.dilation,
                layer.groups,
                max_values,
            )
        case "conv_transpose3d":
            stuffed, padding = _equivalent_conv_input(layer, x if x.ndim == 5 else x[None])
            flipped = _flipped_taps(x.shape[-4], layer.kernel_size)
            for columns in _conv_columns(
                stuffed, layer.kernel_size, (1, 1, 1), padding, layer.dilation, 1, max_values
            ):
                yield columns[:, :, flipped]
        case _:
            raise TypeError(f"{type(layer).__name__} is not a quantizable layer")


def input_gram(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """H (conv groups, n, n) in float64 of ``layer``'s inputs over the batch ``x``: for stride-1
    ungrouped convs and each phase of a transposed conv from shifted channel products or from
    receptive fields, whichever ``shifted_products_preferred`` expects to be faster; else from
    receptive fields (``input_columns``). All give the same H up to float32 rounding of the
    products (a transposed conv's equals the Gram of its zero-stuffed ``input_columns``)."""
    x = x.detach().to(torch.float32)
    kind = layer_kind(layer)
    if kind == "conv_transpose3d":
        return _transposed_gram(layer, x if x.ndim == 5 else x[None])[None]
    if kind == "conv3d" and layer.groups == 1 and tuple(layer.stride) == (1, 1, 1):
        batch = x if x.ndim == 5 else x[None]
        return _stride_one_gram(batch, layer.kernel_size, _padding_pairs(layer), layer.dilation)[
            None
        ]
    accumulator = GramAccumulator(*gram_shape(layer)[:2])
    for columns in input_columns(layer, x):
        accumulator.add(columns)
    return accumulator.gram()


def shifted_products_preferred(
    shape: tuple[int, ...],
    kernel: tuple[int, ...],
    padding: list[tuple[int, int]],
    dilation: tuple[int, ...],
) -> bool:
    """Whether the shifted-products Gram of a stride-1 conv over an input of ``shape`` (B, C, *S)
    is expected to take no longer than the unfold Gram (``shifted_products_cost`` against
    ``unfold_cost``, both in multiply-adds of the unfold's GEMM)."""
    return shifted_products_cost(shape, kernel, padding, dilation) <= unfold_cost(
        shape, kernel, padding, dilation
    )


SHIFTED_MAC_COST = 1.1
"""A multiply-add of the shifted-products Gram's thin C x C products, in multiply-adds of the
unfold's fat n x n GEMM (fit, single-threaded, C = 8..64, dilation 1..16, 32³-64³ crops, on the
2-core AMD EPYC dev box; benchmarks/gram_dilation.py measures both)."""
SHIFTED_ROW_COST = 9.0
"""Per channel of each row of those products: reading the two C-wide rows of a thin product,
which at C = 8-16 costs as much as the C multiply-adds themselves (same fit)."""
GATHERED_ROW_COST = 80.0
"""Per channel of each row gathered from a strided box (regions fixing axis 1 or 2) before its
product: the copy of the shifted operand, per shift (same fit)."""


def shifted_products_cost(
    shape: tuple[int, ...],
    kernel: tuple[int, ...],
    padding: list[tuple[int, int]],
    dilation: tuple[int, ...],
) -> float:
    """Expected time of the shifted-products Gram, in unfold multiply-adds: per shift e (half of
    the (2k - 1)^3) and per row of every inclusion-exclusion region, C (SHIFTED_MAC_COST C +
    SHIFTED_ROW_COST) plus C GATHERED_ROW_COST for a gathered row. The regions' rows grow with
    the dilation (boundary segments d (k - 1) thick) but their number does not."""
    batch, channels = shape[0], shape[1]
    plan = _box_plan(tuple(shape[2:]), kernel, padding, dilation)
    contiguous, gathered = plan.rows()
    shifts = (math.prod(2 * k - 1 for k in kernel) + 1) // 2
    per_row = channels * (SHIFTED_MAC_COST * channels + SHIFTED_ROW_COST)
    return (
        batch
        * shifts
        * (per_row * (contiguous + gathered) + channels * GATHERED_ROW_COST * gathered)
    )


def unfold_cost(
    shape: tuple[int, ...],
    kernel: tuple[int, ...],
    padding: list[tuple[int, int]],
    dilation: tuple[int, ...],
) -> float:
    """Multiply-adds of the unfold Gram: per output voxel, the block-triangular X^T X of its
    n = C k^3 receptive field (``GramAccumulator``: blocks of ``_BLOCK`` columns times the
    columns from the block on)."""
    plan = _box_plan(tuple(shape[2:]), kernel, padding, dilation)
    columns = shape[1] * math.prod(kernel)
    per_row = sum(min(_BLOCK, columns - low) * (columns - low) for low in range(0, columns, _BLOCK))
    return shape[0] * math.prod(plan.outputs) * per_row


class GramAccumulator:
    """Running sum of X^T X over column chunks (rows, conv groups, n)."""

    def __init__(self, groups: int, columns: int) -> None:
        self._upper = torch.zeros(groups, columns, columns, dtype=torch.float64)

    def add(self, columns: torch.Tensor) -> None:
        """Add the chunk's X^T X (float32 products on the upper block triangle)."""
        chunk = columns.to(torch.float32).transpose(0, 1)  # (groups, rows, n)
        width = chunk.shape[-1]
        for low in range(0, width, _BLOCK):
            high = low + _BLOCK
            self._upper[:, low:high, low:] += chunk[:, :, low:high].mT @ chunk[:, :, low:]

    def gram(self) -> torch.Tensor:
        """H (conv groups, n, n) in float64, symmetric."""
        gram = self._upper.clone()
        width = gram.shape[-1]
        for low in range(0, width, _BLOCK):
            high = low + _BLOCK
            gram[:, high:, low:high] = gram[:, low:high, high:].mT
        return gram


def collect_grams(
    model: nn.Module, layers: Mapping[str, nn.Module], calibration: Iterable[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """H of each named layer's inputs over one pass of ``model`` (as it is: put it in eval mode)
    over the calibration batches, under no_grad; refuses layers no batch reached."""
    grams = {
        name: torch.zeros(gram_shape(layer), dtype=torch.float64) for name, layer in layers.items()
    }

    def accumulate(name: str, layer: nn.Module, x: torch.Tensor) -> None:
        grams[name] += input_gram(layer, x)

    observe_layer_inputs(model, layers, calibration, accumulate)
    return grams


def _padding_pairs(layer: nn.Module) -> list[tuple[int, int]]:
    """(before, after) zero padding per spatial axis, resolving 'same' / 'valid'."""
    if layer.padding == "valid":
        return [(0, 0)] * 3
    if layer.padding == "same":
        total = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size, strict=True)]
        return [(t // 2, t - t // 2) for t in total]
    return [(p, p) for p in layer.padding]


def _conv_columns(
    x: torch.Tensor,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: list[tuple[int, int]],
    dilation: tuple[int, ...],
    groups: int,
    max_values: int,
) -> Iterator[torch.Tensor]:
    """Receptive fields (c, kd, kh, kw) of every output voxel, slab by slab of output depth."""
    flat_padding = [side for pair in reversed(padding) for side in pair]
    padded = F.pad(x, flat_padding)  # negative padding crops
    spans = [d * (k - 1) + 1 for d, k in zip(dilation, kernel, strict=True)]
    channels = x.shape[1]
    columns = channels * kernel[0] * kernel[1] * kernel[2]
    for sample in padded:
        fields = sample.unfold(1, spans[0], stride[0]).unfold(2, spans[1], stride[1])
        fields = fields.unfold(3, spans[2], stride[2])
        fields = fields[..., :: dilation[0], :: dilation[1], :: dilation[2]]  # (C, O0, O1, O2, k³)
        plane = fields.shape[2] * fields.shape[3] * columns
        step = max(1, max_values // plane)
        for start in range(0, fields.shape[1], step):
            slab = fields[:, start : start + step].permute(1, 2, 3, 0, 4, 5, 6)
            yield slab.reshape(-1, groups, columns // groups)


def _equivalent_conv_input(
    layer: nn.ConvTranspose3d, x: torch.Tensor
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Input and (before, after) padding of the stride-1 conv, flipped kernel, that equals
    ``layer``: x zero-stuffed by the stride, padded by d*(k - 1) - p (+ output_padding after)."""
    stuffed_shape = [(size - 1) * s + 1 for size, s in zip(x.shape[2:], layer.stride, strict=True)]
    stuffed = x.new_zeros(*x.shape[:2], *stuffed_shape)
    stuffed[:, :, :: layer.stride[0], :: layer.stride[1], :: layer.stride[2]] = x
    padding = []
    for k, d, p, extra in zip(
        layer.kernel_size, layer.dilation, layer.padding, layer.output_padding, strict=True
    ):
        before = d * (k - 1) - p
        padding.append((before, before + extra))
    return stuffed, padding


def _stride_one_gram(
    x: torch.Tensor,
    kernel: tuple[int, ...],
    padding: list[tuple[int, int]],
    dilation: tuple[int, ...],
) -> torch.Tensor:
    """H (n, n) in float64 of a stride-1 ungrouped conv over the batch ``x`` (B, C, *S): shifted
    channel products or receptive fields, whichever ``shifted_products_preferred`` expects to be
    faster."""
    if shifted_products_preferred(x.shape, kernel, padding, dilation):
        return _shifted_products_gram(x, kernel, padding, dilation)
    accumulator = GramAccumulator(1, x.shape[1] * math.prod(kernel))
    for columns in _conv_columns(x, kernel, (1, 1, 1), padding, dilation, 1, MAX_VALUES):
        accumulator.add(columns)
    return accumulator.gram()[0]


@dataclass(frozen=True)
class _Phase:
    """One axis of one output phase of a transposed conv: the output voxels o with
    (o + p) mod s = r, which only the taps a with a d mod s = r reach. On them the layer is a
    stride-1 conv of the input x itself (no zero-stuffing) with ``kernel`` = len(``taps``) taps
    ``dilation`` d / gcd(d, s) apart and (before, after) ``padding``; sub-kernel tap m is the
    layer's tap ``taps[m]``."""

    taps: tuple[int, ...]
    padding: tuple[int, int]
    dilation: int


def _axis_phases(
    size: int, stride: int, kernel: int, dilation: int, padding: int, output_padding: int
) -> list[_Phase]:
    """The phases of one axis of a transposed conv over ``size`` input voxels that some output
    voxel and some tap reach. Output o takes tap a from input i = (o + p - a d) / s where that is
    an integer in [0, size); with o + p = r + s t and the residue's taps a_0 + m s / g
    (g = gcd(d, s)), i = t - q_0 - m d / g, q_0 = (a_0 d - r) / s: a conv over x with the taps
    in reverse order, one output per t."""
    outputs = (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1
    step = dilation // math.gcd(dilation, stride)
    phases = []
    for residue in range(stride):
        taps = [a for a in range(kernel) if a * dilation % stride == residue]
        first = -((residue - padding) // stride)  # t of the first output, ceil((p - r) / s)
        last = (outputs - 1 + padding - residue) // stride
        if not taps or last < first:
            continue
        shift = (taps[0] * dilation - residue) // stride + step * (len(taps) - 1)  # q_0 + ...
        before = shift - first  # input i = t - shift + m' d / g for reversed tap m'
        after = last - shift + step * (len(taps) - 1) + 1 - size
        phases.append(_Phase(tuple(reversed(taps)), (before, after), step))
    return phases


def _transposed_gram(layer: nn.ConvTranspose3d, x: torch.Tensor) -> torch.Tensor:
    """H (n, n) in float64 of an ungrouped ConvTranspose3d over the batch ``x`` (B, C, *S),
    without the products with the zeros a stuffed input would hold: a row of X is non-zero only
    on the taps of its output voxel's phase (per axis, ``_axis_phases``), so H is block-diagonal
    over the phases, each block the Gram of a stride-1 conv of x (``_stride_one_gram``) put at its
    taps' columns (c, a0, a1, a2) of the transposed weight's rows view."""
    channels, kernel = x.shape[1], layer.kernel_size
    per_axis = [
        _axis_phases(size, *geometry)
        for size, *geometry in zip(
            x.shape[2:],
            layer.stride,
            kernel,
            layer.dilation,
            layer.padding,
            layer.output_padding,
            strict=True,
        )
    ]
    gram = torch.zeros(
        channels * math.prod(kernel), channels * math.prod(kernel), dtype=torch.float64
    )
    for phase in itertools.product(*per_axis):
        block = _stride_one_gram(
            x,
            tuple(len(p.taps) for p in phase),
            [p.padding for p in phase],
            tuple(p.dilation for p in phase),
        )
        taps = torch.tensor(list(itertools.product(*(p.taps for p in phase))))
        flat_taps = (taps[:, 0] * kernel[1] + taps[:, 1]) * kernel[2] + taps[:, 2]
        columns = (torch.arange(channels)[:, None] * math.prod(kernel) + flat_taps).reshape(-1)
        gram[columns[:, None], columns[None, :]] = block
    return gram


def _flipped_taps(channels: int, kernel: tuple[int, ...]) -> torch.Tensor:
    """Column permutation (c, a) -> (c, k - 1 - a) between a conv and its flipped kernel."""
    taps = torch.arange(channels * kernel[0] * kernel[1] * kernel[2])
    return taps.reshape(channels, *kernel).flip(1, 2, 3).reshape(-1)


def _shifted_products_gram(
    x: torch.Tensor,
    kernel: tuple[int, ...],
    padding: list[tuple[int, int]],
    dilation: tuple[int, ...],
) -> torch.Tensor:
    """H (n, n) of a stride-1 ungrouped conv from box sums of shifted channel products."""
    flat_padding = [side for pair in reversed(padding) for side in pair]
    padded = F.pad(x, flat_padding)  # (B, C, L0, L1, L2); negative padding crops
    channels = padded.shape[1]
    plan = _box_plan(tuple(x.shape[2:]), kernel, padding, dilation)
    extent, reach, outputs, data = plan.extent, plan.reach, plan.outputs, plan.data
    margin = reach[0] + 1  # planes of zeros before and after, so every shifted view stays inside
    volume = F.pad(padded, (0, 0, 0, 0, margin, margin)).permute(0, 2, 3, 4, 1)
    flat = volume.reshape(len(x), -1, channels)  # channels last, one row per voxel
    shifts = [  # kernel-tap differences e = b - a, half of them: H_ba = H_ab^T
        e for e in itertools.product(*(range(1 - k, k) for k in kernel)) if e >= (0, 0, 0)
    ]
    offsets = [  # the flat-row offset of each shift d * e
        (dilation[0] * e[0] * extent[1] + dilation[1] * e[1]) * extent[2] + dilation[2] * e[2]
        for e in shifts
    ]
    taps = list(itertools.product(*(range(k) for k in kernel)))
    tap_index = {tap: i for i, tap in enumerate(taps)}
    partners = []  # per tap a: the shifts e with b = a + e a tap too, and those b
    for a in taps:
        pairs = [
            (shift, tap_index[b])
            for shift, e in enumerate(shifts)
            if (b := tuple(ai + ei for ai, ei in zip(a, e, strict=True))) in tap_index
        ]
        partners.append(torch.tensor(pairs).T)
    blocks = torch.zeros(len(taps), len(taps), channels, channels, dtype=torch.float64)
    for region in itertools.product(*plan.boundary):
        products = _region_products(flat, region, data, extent, margin, offsets)
        sign = (-1) ** sum(t is not None for t in region)
        for a, (shift, b) in zip(taps, partners, strict=True):
            if all(
                t is None or not d * ai <= t.start < d * ai + o
                for t, d, ai, o in zip(region, dilation, a, outputs, strict=True)
            ):  # the region lies outside B(a): it enters H_ab with its inclusion-exclusion sign
                blocks[tap_index[a]].index_add_(0, b, products[shift], alpha=sign)
    upper = torch.tensor([[tuple(map(int.__sub__, b, a)) >= (0, 0, 0) for b in taps] for a in taps])
    blocks = torch.where(upper[:, :, None, None], blocks, blocks.permute(1, 0, 3, 2))
    return blocks.permute(2, 0, 3, 1).reshape(channels * len(taps), channels * len(taps))


@dataclass(frozen=True)
class _BoxPlan:
    """The geometry of the shifted-products Gram of a stride-1 conv on one input size: padded
    ``extent`` L, ``reach`` M = d (k - 1), ``outputs`` O = L - M, the ``data`` range of padded
    coordinates that can hold non-zero input, and per axis the ``boundary`` choices of the
    inclusion-exclusion regions: whole (None) or one boundary segment."""

    extent: tuple[int, ...]
    reach: list[int]
    outputs: list[int]
    data: list[range]
    boundary: list[list[range | None]]

    def rows(self) -> tuple[int, int]:
        """(rows read in whole planes, rows gathered from strided boxes) over all regions, for
        one sample and one shift."""
        contiguous = gathered = 0
        for region in itertools.product(*self.boundary):
            rows = math.prod(len(r) for r in _region_box(region, self.data, self.extent))
            if region[1] is None and region[2] is None:
                contiguous += rows
            else:
                gathered += rows
        return contiguous, gathered


def _box_plan(
    size: tuple[int, ...],
    kernel: tuple[int, ...],
    padding: list[tuple[int, int]],
    dilation: tuple[int, ...],
) -> _BoxPlan:
    extent = tuple(n + a + b for n, (a, b) in zip(size, padding, strict=True))
    reach = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]  # M = d (k - 1)
    outputs = [length - m for length, m in zip(extent, reach, strict=True)]  # O
    data = [  # padded coordinates that can hold non-zero input
        range(max(before, 0), length - max(after, 0))
        for (before, after), length in zip(padding, extent, strict=True)
    ]
    boundary = [  # per axis: whole (None) or a segment of coordinates outside some box B(a)
        [None, *_boundary_segments(m, o, rows, d, k)]
        for m, o, rows, d, k in zip(reach, outputs, data, dilation, kernel, strict=True)
    ]
    return _BoxPlan(extent, reach, outputs, data, boundary)


def _boundary_segments(reach: int, outputs: int, rows: range, dilation: int, kernel: int) -> list:
    """The coordinates of one axis that hold data and lie outside some box B(a) = d a + [0, O),
    t < M or t >= O, cut into runs of consecutive coordinates that no box edge d a or d a + O
    splits: inside or outside each box as a whole, so one product per run serves them all."""
    edges = {dilation * a for a in range(kernel)} | {dilation * a + outputs for a in range(kernel)}
    coordinates = [t for t in sorted({*range(reach), *range(outputs, rows.stop)}) if t in rows]
    segments: list[range] = []
    for t in coordinates:
        if segments and segments[-1].stop == t and t not in edges:
            segments[-1] = range(segments[-1].start, t + 1)
        else:
            segments.append(range(t, t + 1))
    return segments


def _region_box(
    region: tuple[range | None, ...], data: list[range], extent: tuple[int, ...]
) -> list[range]:
    """The coordinates region R covers per axis: its segment, else the data range, or the whole
    of axes 1 and 2 when neither is fixed (rows of whole planes are contiguous)."""
    if region[1] is None and region[2] is None:
        return [region[0] or data[0], range(extent[1]), range(extent[2])]
    return [segment or rows for segment, rows in zip(region, data, strict=True)]


def _region_products(
    flat: torch.Tensor,
    region: tuple[range | None, ...],
    data: list[range],
    extent: tuple[int, ...],
    margin: int,
    offsets: list[int],
) -> torch.Tensor:
    """F_e(R) (shifts, C, C) in float64: sum over the voxels q of region R (a segment of fixed
    coordinates on some axes, the data range of the first axis and the whole of the others
    elsewhere: padding voxels are zero) of x(q) x(q + offset_e)^T, summed over the batch."""
    channels = flat.shape[-1]
    products = torch.zeros(len(offsets), channels, channels, dtype=torch.float64)
    box = _region_box(region, data, extent)
    if region[1] is None and region[2] is None:  # whole planes: contiguous rows
        start = (margin + box[0].start) * extent[1] * extent[2]
        stop = (margin + box[0].stop) * extent[1] * extent[2]
        for sample in flat:
            left = sample[start:stop].T
            for shift, offset in enumerate(offsets):
                products[shift] += left @ sample[start + offset : stop + offset]
        return products
    stride_sample, stride_row, stride_channel = flat.stride()
    plane = len(box[1]) * len(box[2])
    step = max(1, MAX_VALUES // (plane * channels))  # planes of the box per chunk
    for low in range(box[0].start, box[0].stop, step):
        depth = min(step, box[0].stop - low)
        size = (len(flat), depth, len(box[1]), len(box[2]), channels)
        strides = (stride_sample, extent[1] * extent[2] * stride_row, extent[2] * stride_row,
                   stride_row, stride_channel)  # fmt: skip
        first = ((margin + low) * extent[1] + box[1].start) * extent[2] + box[2].start

        def rows(offset: int, size=size, strides=strides, first=first) -> torch.Tensor:
            view = flat.as_strided(size, strides, (first + offset) * stride_row)
            return view.reshape(len(flat), -1, channels)  # (B, rows of the box, C): a copy

        left = rows(0).mT
        for shift, offset in enumerate(offsets):
            products[shift] += (left @ rows(offset)).sum(0)
    return products

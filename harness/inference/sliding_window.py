"""Sliding-window inference over a whole volume, streamed slab by slab in bounded memory.

Patches, their order, their batches, padding and blending are those of MONAI's
``sliding_window_inference`` (non-buffered, as ``SlidingWindowInferer`` runs it): the volume is
zero-padded symmetrically to at least the roi along each axis; patch starts come from
``monai.data.utils.dense_patch_slices`` with interval ``int(roi · (1 − overlap))`` (the roi itself
where the padded axis equals it); the network's logits f_p of every patch p are weighted by the
importance map w (``monai.data.utils.compute_importance_map``, Gaussian or constant) and

    logits(v) = Σ_p w_p(v) · f_p(v) / Σ_p w_p(v),

then the padding is cropped off.

Streaming: patches are visited in order of their start along one *stream axis* a. Once the first
patch starting at s along a is reached, no later patch touches the planes before s, so those are
final: they are divided, handed on as a slab (argmax to a label slab, see ``predict_labels``) and
dropped. The accumulator therefore spans roi_a planes along a, K · roi_a · ∏_{b≠a} n_b floats
for K classes, instead of the whole K · ∏ n_b volume. The stream axis is the one minimising that
buffer (smallest roi_a / n_a, the first axis on ties). Along axis 0 the visiting order, the
batches and every float operation are MONAI's, so logits are bit-identical to
``SlidingWindowInferer``; along another axis only the order of each voxel's sum differs (float
rounding, ~1e-7 relative).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import cache
from typing import Literal

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.data.utils import compute_importance_map, dense_patch_slices
from torch import nn

#: Standard deviation of the Gaussian blending window as a fraction of the roi (MONAI's default,
#: which ``SlidingWindowInferer`` used here before streaming).
GAUSSIAN_SIGMA_SCALE = 0.125

Patch = tuple[slice, slice, slice]


@dataclass(frozen=True)
class SlidingWindowSpec:
    """Patch size (the network's input size), overlap fraction, blending mode, patches per batch."""

    roi_size: tuple[int, int, int]
    overlap: float = 0.25
    mode: Literal["gaussian", "constant"] = "gaussian"
    sw_batch_size: int = 4

    def __post_init__(self) -> None:
        if len(self.roi_size) != 3 or any(int(r) <= 0 for r in self.roi_size):
            raise ValueError(f"roi_size must be three positive integers, got {self.roi_size}")
        object.__setattr__(self, "roi_size", tuple(int(r) for r in self.roi_size))
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size < 1:
            raise ValueError("sw_batch_size must be ≥ 1")

    @classmethod
    def from_dict(cls, data: dict) -> SlidingWindowSpec:
        return cls(
            roi_size=tuple(int(r) for r in data["roi_size"]),
            overlap=float(data.get("overlap", 0.25)),
            mode=data.get("mode", "gaussian"),
            sw_batch_size=int(data.get("sw_batch_size", 4)),
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PatchGrid:
    """Where the patches of one volume lie: per-axis (before, after) zero padding, the padded
    size, the stream axis and the patches (slices into the padded volume) in visiting order."""

    padding: tuple[tuple[int, int], ...]
    padded: tuple[int, ...]
    axis: int
    patches: tuple[Patch, ...]

    @classmethod
    def of(cls, shape: tuple[int, ...], spec: SlidingWindowSpec) -> PatchGrid:
        """The grid MONAI's inferer uses on a volume of ``shape`` voxels, with the stream axis
        minimising the accumulator and the patches stably ordered by their start along it."""
        roi = spec.roi_size
        shortfall = [max(r - n, 0) for n, r in zip(shape, roi, strict=True)]
        padding = tuple((d // 2, d - d // 2) for d in shortfall)  # MONAI: half before
        padded = tuple(max(n, r) for n, r in zip(shape, roi, strict=True))
        # MONAI's scan interval (monai.inferers.utils._get_scan_interval)
        interval = tuple(
            r if r == n else max(int(r * (1 - spec.overlap)), 1)
            for n, r in zip(padded, roi, strict=True)
        )
        total = math.prod(padded)
        axis = min(range(3), key=lambda a: roi[a] * (total // padded[a]))  # first on ties
        slices = dense_patch_slices(padded, roi, interval)
        order = sorted(range(len(slices)), key=lambda i: slices[i][axis].start)  # stable
        return cls(padding, padded, axis, tuple(tuple(slices[i]) for i in order))

    def buffer_shape(self, roi: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial shape of the accumulator: roi planes along the stream axis, all of the rest."""
        shape = list(self.padded)
        shape[self.axis] = roi[self.axis]
        return tuple(shape)


@cache
def importance_map(spec: SlidingWindowSpec) -> torch.Tensor:
    """Blending weights (1, 1, *roi), float32, as MONAI computes them (Gaussian ones clamped
    away from zero); computed once per spec."""
    return compute_importance_map(
        spec.roi_size, mode=spec.mode, sigma_scale=GAUSSIAN_SIGMA_SCALE, device="cpu"
    )[None, None]


def _padded_volume(image: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """The volume (1, C, *padded) as a plain float tensor: MONAI's MetaTensor bookkeeping is
    dropped before the patch loop, not paid per patch."""
    plain = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    volume = plain[None].float()
    if any(before or after for before, after in grid.padding):
        flat = [p for pair in reversed(grid.padding) for p in pair]  # F.pad: last axis first
        volume = F.pad(volume, flat, mode="constant", value=0.0)
    return volume


def patch_batches(
    image: torch.Tensor, spec: SlidingWindowSpec, grid: PatchGrid | None = None
) -> Iterator[tuple[tuple[Patch, ...], torch.Tensor]]:
    """The patch batches (B, C, *roi) cut from a preprocessed volume (C, x, y, z) in visiting
    order, with their slices into the padded volume: ``sw_batch_size`` consecutive patches at a
    time (a batch of one is a view, as in MONAI)."""
    grid = grid or PatchGrid.of(tuple(image.shape[1:]), spec)
    volume = _padded_volume(image, grid)
    size = spec.sw_batch_size
    for first in range(0, len(grid.patches), size):
        chunk = grid.patches[first : first + size]
        windows = [volume[(slice(None), slice(None), *patch)] for patch in chunk]
        yield chunk, (torch.cat(windows) if size > 1 else windows[0])


@torch.no_grad()
def stream_logits(
    model: nn.Module, image: torch.Tensor, spec: SlidingWindowSpec
) -> Iterator[tuple[int, int, int, torch.Tensor]]:
    """Blended logits of one preprocessed volume (C, x, y, z), slab by slab along the stream
    axis: ``(axis, start, stop, logits)`` with ``logits`` (K, ...) covering planes
    [start, stop) of ``axis`` of the unpadded volume and all of the other axes. Slabs are
    consecutive and cover the volume; each is final when yielded (see the module docstring)."""
    model.eval()
    grid = PatchGrid.of(tuple(image.shape[1:]), spec)
    axis, roi = grid.axis, spec.roi_size
    weight = importance_map(spec)
    before = grid.padding[axis][0]
    stop_all = before + image.shape[1 + axis]
    crop = [slice(b, b + n) for (b, _), n in zip(grid.padding, image.shape[1:], strict=True)]
    count = torch.zeros((1, 1, *grid.buffer_shape(roi)))
    acc: torch.Tensor | None = None
    low = 0  # padded coordinate of the accumulator's first plane along the stream axis

    def finish(stop: int) -> Iterator[tuple[int, int, int, torch.Tensor]]:
        """Divide planes [low, stop) and yield their unpadded part."""
        first, last = max(low, before), min(stop, stop_all)
        if last <= first:
            return
        region = list(crop)
        region[axis] = slice(first - low, last - low)
        logits = acc[(slice(None), *region)] / count[(0, slice(None), *region)]
        yield axis, first - before, last - before, logits

    def shift(by: int) -> None:
        """Drop the first ``by`` planes of the buffers and zero as many at their end."""
        for buffer, lead in ((acc, 1), (count, 2)):
            kept = buffer.narrow(lead + axis, by, roi[axis] - by).clone()
            buffer.narrow(lead + axis, 0, roi[axis] - by).copy_(kept)
            buffer.narrow(lead + axis, roi[axis] - by, by).zero_()

    for patches, windows in patch_batches(image, spec, grid):
        outputs = torch.as_tensor(model(windows))
        if tuple(outputs.shape[2:]) != roi:
            raise ValueError(f"network output {tuple(outputs.shape)} does not match roi {roi}")
        outputs = outputs.float() * weight
        if acc is None:
            acc = torch.zeros((outputs.shape[1], *grid.buffer_shape(roi)))
        for patch, output in zip(patches, outputs, strict=True):
            start = patch[axis].start
            if start > low:
                yield from finish(start)
                shift(min(start - low, roi[axis]))
                low = start
            local = list(patch)
            local[axis] = slice(start - low, start - low + roi[axis])
            acc[(slice(None), *local)] += output
            count[(slice(None), slice(None), *local)] += weight
    yield from finish(grid.padded[axis])


def predict_logits(model: nn.Module, image: torch.Tensor, spec: SlidingWindowSpec) -> torch.Tensor:
    """Blended class logits (K, x, y, z) of one preprocessed volume (C, x, y, z), float32.

    This materialises all K logit volumes (4 K bytes a voxel); evaluation uses
    ``predict_labels``, which never does."""
    logits: torch.Tensor | None = None
    for axis, start, stop, slab in stream_logits(model, image, spec):
        if logits is None:
            logits = torch.empty((slab.shape[0], *image.shape[1:]))
        logits.narrow(1 + axis, start, stop - start).copy_(slab)
    return logits


def predict_probabilities(
    model: nn.Module, image: torch.Tensor, spec: SlidingWindowSpec
) -> torch.Tensor:
    """Softmax class probabilities (K, x, y, z) for one preprocessed volume (C, x, y, z)."""
    return torch.softmax(predict_logits(model, image, spec), dim=0)


def label_dtype(classes: int) -> torch.dtype:
    """The smallest integer dtype that holds class ids 0..classes-1: uint8, else int16."""
    if classes <= 1 << 8:
        return torch.uint8
    if classes <= 1 << 15:
        return torch.int16
    raise ValueError(f"{classes} classes do not fit an int16 label map")


def predict_labels(model: nn.Module, image: torch.Tensor, spec: SlidingWindowSpec) -> torch.Tensor:
    """Label map (x, y, z), ``label_dtype(K)``: per voxel the argmax over classes of the blended
    logits, first index on ties (softmax is monotonic, so this is the argmax of the
    probabilities without computing them). Taken slab by slab as ``stream_logits`` finalises
    them, so peak memory is the slab accumulator plus one byte (uint8) a voxel.
    ``max(dim).indices`` is the same argmax, ~5x faster than ``argmax(dim=0)`` on CPU."""
    labels: torch.Tensor | None = None
    for axis, start, stop, slab in stream_logits(model, image, spec):
        if labels is None:
            labels = torch.empty(tuple(image.shape[1:]), dtype=label_dtype(slab.shape[0]))
        labels.narrow(axis, start, stop - start).copy_(slab.max(dim=0).indices)
    return labels

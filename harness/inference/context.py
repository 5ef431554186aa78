"""Does sliding-window inference give each voxel the context the network was built for?

A patch's logits near its border depend on the zero padding of every convolution, not on the
volume around the patch. Two measures:

- ``full_context_fraction``: the share of a patch's voxels whose receptive field (F voxels along
  each axis, centred) lies inside the patch, Π_i max(0, r_i − F_i + 1) / r_i for roi r. Known
  without data where the architecture states its receptive field (``Sequential``). A 10-layer
  dilated MeshNet (F = 93) at roi 128 has 2% of each patch with full context: its
  sliding-window prediction then agreed with its whole-volume prediction at DSC 0.215.
- ``whole_volume_agreement``: the mean DSC, over the foreground classes either predicts, of
  the sliding-window prediction of one case against the network's prediction on the whole
  volume at once (every voxel with its full context): measured, for any architecture that
  accepts the volume's size, where the volume is at most ``MAX_WHOLE_VOLUME_VOXELS``
  (``whole_volume_labels`` here, the DSC in ``harness.scoring.context``).

Below ``MIN_FULL_CONTEXT_FRACTION`` or ``MIN_WHOLE_VOLUME_AGREEMENT`` a track and its results
carry a warning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

MIN_FULL_CONTEXT_FRACTION = 0.2
"""Least share of a patch's voxels with their whole receptive field inside the patch (the
MeshNet above, at 2%, lost most of its agreement; a field of 7 at roi 16 leaves 24%)."""
MIN_WHOLE_VOLUME_AGREEMENT = 0.9
"""Least mean DSC between a case's sliding-window and whole-volume predictions."""
MAX_WHOLE_VOLUME_VOXELS = 2**24
"""Largest volume (voxels, 256³) predicted at once for the measured check."""
SIZE_MULTIPLE = 32
"""A network that refuses the volume's own size is given it zero-padded to this multiple (the
downsampling of a 5-level U-Net), its prediction cropped back."""


def full_context_fraction(receptive_field: Sequence[int], roi: Sequence[int]) -> float:
    """Π_i max(0, r_i − F_i + 1) / r_i: the share of an roi patch's voxels whose centred
    receptive field of F voxels lies inside the patch."""
    return math.prod(max(0, r - f + 1) / r for f, r in zip(receptive_field, roi, strict=True))


def context_fraction_warning(
    receptive_field: Sequence[int] | None, roi: Sequence[int]
) -> str | None:
    """The warning when ``full_context_fraction`` is below ``MIN_FULL_CONTEXT_FRACTION``."""
    if receptive_field is None:
        return None
    fraction = full_context_fraction(receptive_field, roi)
    if fraction >= MIN_FULL_CONTEXT_FRACTION:
        return None
    return (
        f"only {fraction:.1%} of each sliding-window patch (roi {list(roi)}) has the network's "
        f"whole receptive field {list(receptive_field)} inside the patch (at least "
        f"{MIN_FULL_CONTEXT_FRACTION:.0%} expected): the rest is predicted from zero padding "
        "instead of the volume around it; use a larger roi"
    )


@torch.no_grad()
def whole_volume_labels(model: nn.Module, image: torch.Tensor) -> torch.Tensor | None:
    """The network's label map of ``image`` (C, x, y, z) predicted at once (every voxel with its
    full context); None where the volume is over ``MAX_WHOLE_VOLUME_VOXELS`` or the network
    takes neither its size nor the size padded to ``SIZE_MULTIPLE``."""
    if math.prod(image.shape[1:]) > MAX_WHOLE_VOLUME_VOXELS:
        return None
    model.eval()
    shape = image.shape[1:]
    padded_shape = [math.ceil(s / SIZE_MULTIPLE) * SIZE_MULTIPLE for s in shape]
    for size in (list(shape), padded_shape):
        volume = image.new_zeros((image.shape[0], *size))
        volume[:, : shape[0], : shape[1], : shape[2]] = image
        try:
            logits = model(volume[None].float())[0]
        except (RuntimeError, ValueError):  # a size the network does not take
            continue
        if tuple(logits.shape[1:]) == tuple(size):
            return logits[:, : shape[0], : shape[1], : shape[2]].max(dim=0).indices
    return None


def agreement_warning(agreement: float | None) -> str | None:
    """The warning when the measured ``harness.scoring.context.whole_volume_agreement`` is below
    ``MIN_WHOLE_VOLUME_AGREEMENT``."""
    if agreement is None or agreement >= MIN_WHOLE_VOLUME_AGREEMENT:
        return None
    return (
        f"the sliding-window prediction of a calibration case agrees with the whole-volume "
        f"prediction at mean DSC {agreement:.3f} only (at least {MIN_WHOLE_VOLUME_AGREEMENT} "
        "expected): patches lack the context the network needs; use a larger roi"
    )

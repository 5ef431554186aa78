"""The measured context check: a case's sliding-window prediction against the network's
whole-volume one (``harness.inference.context``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from harness.inference.context import whole_volume_labels
from harness.inference.sliding_window import SlidingWindowSpec, predict_labels
from harness.scoring.metrics import dice_per_class, mean_over_classes


@torch.no_grad()
def whole_volume_agreement(
    model: nn.Module, image: torch.Tensor, window: SlidingWindowSpec, classes: Sequence[int]
) -> float | None:
    """Mean DSC, over those of ``classes`` either predicts, of the sliding-window prediction of
    ``image`` (C, x, y, z) against the whole-volume prediction (1.0 when neither predicts any);
    None where there is no whole-volume prediction (``whole_volume_labels``)."""
    whole = whole_volume_labels(model, image)
    if whole is None:
        return None
    windowed = predict_labels(model, image, window).numpy()
    whole = whole.numpy()
    present = [c for c in classes if (whole == c).any() or (windowed == c).any()]
    if not present:
        return 1.0
    return mean_over_classes(dice_per_class(windowed, whole, present))

"""Calibration data: the exact roi patches sliding-window inference feeds the network."""

from __future__ import annotations

import torch

from harness.data.dataset import Case
from harness.data.preprocessing import preprocess, read_case
from harness.inference.sliding_window import patch_batches
from harness.models.reference import ModelSpec


def volume_patches(image: torch.Tensor, spec: ModelSpec) -> list[torch.Tensor]:
    """Patch batches (B, C, *roi) of one preprocessed volume, as sliding-window inference cuts
    them (copies, not views into the volume)."""
    return [batch.clone() for _, batch in patch_batches(image, spec.sliding_window)]


def calibration_batches(cases: tuple[Case, ...], spec: ModelSpec) -> list[torch.Tensor]:
    """Unlabeled calibration cases → preprocessed → patch batches; labels are never read."""
    batches: list[torch.Tensor] = []
    for case in cases:
        loaded = read_case(case, with_label=False)
        batches.extend(volume_patches(preprocess(loaded, spec.preprocessing), spec))
    return batches

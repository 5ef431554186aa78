"""Calibration data: the exact roi patches sliding-window inference feeds the network."""

from __future__ import annotations

import torch

from harness.data.dataset import Case
from harness.data.preprocessing import preprocess, read_case
from harness.models.reference import ModelSpec


def volume_patches(image: torch.Tensor, spec: ModelSpec) -> list[torch.Tensor]:
    """Patch batches (B, C, *roi) of one preprocessed volume, as the inferer would cut them."""
    batches: list[torch.Tensor] = []
    out_channels = len(spec.labels)

    def collect(batch: torch.Tensor) -> torch.Tensor:
        batches.append(torch.as_tensor(batch).clone())
        return torch.zeros((batch.shape[0], out_channels, *batch.shape[2:]))

    spec.sliding_window.inferer()(torch.as_tensor(image)[None].float(), collect)
    return batches


def calibration_batches(cases: tuple[Case, ...], spec: ModelSpec) -> list[torch.Tensor]:
    """Unlabeled calibration cases → preprocessed → patch batches; labels are never read."""
    batches: list[torch.Tensor] = []
    for case in cases:
        loaded = read_case(case, with_label=False)
        batches.extend(volume_patches(preprocess(loaded, spec.preprocessing), spec))
    return batches

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


CALIBRATION_THREADS = 1
"""Intra-op threads calibration patches are prepared on: a z-score's mean and standard deviation
are torch reductions whose rounding depends on the thread count, and these patches determine
stored checkpoints (the methods run at the same one thread,
``reference_methods.simulator.threads``)."""


def calibration_batches(cases: tuple[Case, ...], spec: ModelSpec) -> list[torch.Tensor]:
    """Unlabeled calibration cases → preprocessed → patch batches; labels are never read.
    Prepared on ``CALIBRATION_THREADS`` whatever the machine's thread count."""
    batches: list[torch.Tensor] = []
    before = torch.get_num_threads()
    torch.set_num_threads(CALIBRATION_THREADS)
    try:
        for case in cases:
            loaded = read_case(case, with_label=False)
            batches.extend(volume_patches(preprocess(loaded, spec.preprocessing), spec))
    finally:
        torch.set_num_threads(before)
    return batches

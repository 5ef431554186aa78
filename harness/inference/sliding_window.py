"""Sliding-window inference over a whole volume with MONAI's inferer (batched, deterministic)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from typing import Literal

import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from torch import nn


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

    def inferer(self) -> SlidingWindowInferer:
        """MONAI's inferer for this spec, shared so its blending weight map is computed once."""
        return _inferer(self)


@cache
def _inferer(spec: SlidingWindowSpec) -> SlidingWindowInferer:
    return SlidingWindowInferer(
        roi_size=spec.roi_size,
        sw_batch_size=spec.sw_batch_size,
        overlap=spec.overlap,
        mode=spec.mode,
        cache_roi_weight_map=True,
    )


@torch.no_grad()
def predict_logits(model: nn.Module, image: torch.Tensor, spec: SlidingWindowSpec) -> torch.Tensor:
    """Blended class logits (K, x, y, z) for one preprocessed volume (C, x, y, z), as a plain
    tensor: MONAI's MetaTensor bookkeeping is dropped before the patch loop, not paid per patch."""
    model.eval()
    plain = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    logits = spec.inferer()(plain[None].float(), model)
    logits = logits.as_tensor() if isinstance(logits, MetaTensor) else torch.as_tensor(logits)
    return logits[0].float()


def predict_probabilities(
    model: nn.Module, image: torch.Tensor, spec: SlidingWindowSpec
) -> torch.Tensor:
    """Softmax class probabilities (K, x, y, z) for one preprocessed volume (C, x, y, z)."""
    return torch.softmax(predict_logits(model, image, spec), dim=0)


def predict_labels(model: nn.Module, image: torch.Tensor, spec: SlidingWindowSpec) -> torch.Tensor:
    """Label map (x, y, z): argmax over classes of the blended logits (softmax is monotonic, so
    this is the argmax of the probabilities without computing them; first index on ties).
    ``max(dim).indices`` is the same argmax, ~5x faster than ``argmax(dim=0)`` on CPU."""
    return predict_logits(model, image, spec).max(dim=0).indices

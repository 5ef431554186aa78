"""Supervised training of a reference model on a dataset split (deterministic, CPU-friendly)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn
from tqdm import tqdm

from harness.data.dataset import Case
from harness.data.preprocessing import PreprocessSpec, preprocess, read_case
from harness.models.reference import ModelSpec


@dataclass(frozen=True)
class TrainConfig:
    """Patch-based training: ``iterations`` steps of ``batch_size`` random roi-sized patches,
    a fraction of them centred on a foreground voxel; AdamW with cosine decay; DiceCE loss.

    ``class_balanced`` picks the foreground voxel as nnU-Net's oversampling does: first a class
    present in the volume, uniformly, then a voxel of it, so a small structure (the aorta of the
    phantoms) is centred as often as a large one instead of in proportion to its volume."""

    iterations: int = 1200
    batch_size: int = 2
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    foreground_fraction: float = 0.7
    class_balanced: bool = False
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_overrides(cls, recorded: dict, **overrides: float | int | None) -> TrainConfig:
        """A spec's recorded training settings (how shipped weights were made), then overrides
        that are not None, then the defaults: so retraining a shipped spec reproduces it."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in recorded.items() if k in names}
        values |= {k: v for k, v in overrides.items() if v is not None}
        return cls(**values)


def load_training_volumes(
    cases: tuple[Case, ...], labels: dict[int, str], preprocessing: PreprocessSpec
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Preprocessed (image, label) pairs in the network's grid."""
    pairs = []
    for case in cases:
        image, label = preprocess(read_case(case, labels), preprocessing, with_label=True)
        pairs.append((image.as_tensor(), label.as_tensor()))
    return pairs


def sample_patch(
    image: torch.Tensor,
    label: torch.Tensor,
    roi: tuple[int, int, int],
    rng: np.random.Generator,
    foreground: bool,
    class_balanced: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A roi-sized crop (zero-padded where the volume is smaller), optionally around foreground
    (a voxel of a uniformly drawn present class when ``class_balanced``)."""
    pad = [max(0, r - s) for r, s in zip(roi, label.shape, strict=True)]
    if any(pad):
        widths = [(p // 2, p - p // 2) for p in pad]
        flat = [w for pair in reversed(widths) for w in pair]
        image = torch.nn.functional.pad(image, flat)
        label = torch.nn.functional.pad(label, flat)
    shape = label.shape
    if foreground and bool((label > 0).any()):
        target = label > 0
        if class_balanced:
            present = torch.unique(label[target])
            target = label == present[rng.integers(len(present))]
        fg = torch.nonzero(target)
        centre = fg[rng.integers(len(fg))].tolist()
        start = [min(max(c - r // 2, 0), s - r) for c, r, s in zip(centre, roi, shape, strict=True)]
    else:
        start = [int(rng.integers(0, s - r + 1)) for r, s in zip(roi, shape, strict=True)]
    sl = tuple(slice(b, b + r) for b, r in zip(start, roi, strict=True))
    return image[(slice(None), *sl)], label[sl]


def train(
    spec: ModelSpec,
    volumes: list[tuple[torch.Tensor, torch.Tensor]],
    config: TrainConfig,
    progress: bool = True,
) -> nn.Module:
    """Train ``spec``'s network from scratch on preprocessed volumes; returns it in eval mode."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = spec.build()
    model.train()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.iterations)
    roi = spec.sliding_window.roi_size
    bar = tqdm(range(config.iterations), desc=f"train {spec.name}", disable=not progress)
    for _ in bar:
        patches = [
            sample_patch(
                *volumes[rng.integers(len(volumes))],
                roi,
                rng,
                foreground=rng.random() < config.foreground_fraction,
                class_balanced=config.class_balanced,
            )
            for _ in range(config.batch_size)
        ]
        x = torch.stack([p[0] for p in patches])
        y = torch.stack([p[1] for p in patches])[:, None]
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model

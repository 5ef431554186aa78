"""Registry of MONAI segmentation architectures buildable from a JSON spec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from monai.networks import nets
from torch import nn

from harness.errors import ModelSpecError

Family = Literal["cnn", "hybrid"]


@dataclass(frozen=True)
class Architecture:
    """A network constructor and its family (CNN, or hybrid CNN + transformer)."""

    name: str
    family: Family
    build: Callable[..., nn.Module]
    needs_img_size: bool = False


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("UNet", "cnn", nets.UNet),
        Architecture("SegResNet", "cnn", nets.SegResNet),
        Architecture("DynUNet", "cnn", nets.DynUNet),
        Architecture("UNETR", "hybrid", nets.UNETR, needs_img_size=True),
        Architecture("SwinUNETR", "hybrid", nets.SwinUNETR),
    )
}


def build_network(architecture: str, kwargs: dict) -> nn.Module:
    """Instantiate a registered architecture; bad names or arguments raise ModelSpecError."""
    arch = ARCHITECTURES.get(architecture)
    if arch is None:
        raise ModelSpecError(
            f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    try:
        return arch.build(**kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise ModelSpecError(f"cannot build {architecture} from {kwargs}: {err}") from None

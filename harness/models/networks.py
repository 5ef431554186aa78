"""Registry of segmentation architectures buildable from a JSON spec: MONAI networks, nnU-Net v2
networks (``harness.models.nnunet``), a plain ``Sequential`` layer list
(``harness.models.sequential``), and an FP32 ONNX graph (``harness.models.onnx_graph``), which
has no torch network."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from monai.networks import nets
from torch import nn

from harness.errors import ModelSpecError
from harness.models.nnunet import build_nnunet, nnunet_in_channels, nnunet_out_channels
from harness.models.onnx_graph import (
    ONNX_ARCHITECTURE,
    graph_in_channels,
    graph_out_channels,
    no_torch_network,
)
from harness.models.sequential import (
    build_sequential,
    explain_sequential_weights,
    sequential_out_channels,
    sequential_receptive_field,
)

Family = Literal["cnn", "hybrid"]


def kwarg_out_channels(kwargs: Mapping[str, Any]) -> int | None:
    """The logits' channels of a network whose constructor takes ``out_channels``."""
    return kwargs.get("out_channels")


def kwarg_in_channels(kwargs: Mapping[str, Any]) -> int:
    """The input channels of a network whose constructor takes ``in_channels`` (default 1)."""
    return int(kwargs.get("in_channels", 1))


@dataclass(frozen=True)
class Architecture:
    """A network constructor and its family (CNN, or hybrid CNN + transformer; None: read from
    the kwargs' ``family``, for a graph whose family was read at import).

    ``out_channels`` and ``in_channels`` read the number of logits and input channels from the
    kwargs; ``receptive_field``, where known, the voxels along each axis one output voxel sees
    (None: not computed); ``torch_network`` whether ``build`` gives a torch network;
    ``explain_weights``, where given, what a weights file's missing, unexpected and reshaped
    keys mean for the layers of the kwargs (named by layer, for the error that refuses the file).
    """

    name: str
    family: Family | None
    build: Callable[..., nn.Module]
    needs_img_size: bool = False
    out_channels: Callable[[Mapping[str, Any]], int | None] = kwarg_out_channels
    in_channels: Callable[[Mapping[str, Any]], int] = kwarg_in_channels
    receptive_field: Callable[[Mapping[str, Any]], tuple[int, ...]] | None = None
    torch_network: bool = True
    explain_weights: Callable[[Mapping[str, Any], list[str], list[str], list[str]], str] | None = (
        None
    )


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("UNet", "cnn", nets.UNet),
        Architecture("SegResNet", "cnn", nets.SegResNet),
        Architecture("DynUNet", "cnn", nets.DynUNet),
        Architecture("UNETR", "hybrid", nets.UNETR, needs_img_size=True),
        Architecture("SwinUNETR", "hybrid", nets.SwinUNETR),
        Architecture(
            "nnUNet",
            "cnn",
            build_nnunet,
            out_channels=nnunet_out_channels,
            in_channels=nnunet_in_channels,
        ),
        Architecture(
            "Sequential",
            "cnn",
            build_sequential,
            out_channels=sequential_out_channels,
            receptive_field=sequential_receptive_field,
            explain_weights=explain_sequential_weights,
        ),
        Architecture(
            ONNX_ARCHITECTURE,
            None,
            no_torch_network,
            out_channels=graph_out_channels,
            in_channels=graph_in_channels,
            torch_network=False,
        ),
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
        keys = ", ".join(sorted(kwargs))
        raise ModelSpecError(f"cannot build {architecture} (kwargs {keys}): {err}") from None

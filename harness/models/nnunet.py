"""nnU-Net v2 networks built with ``dynamic-network-architectures`` (the package nnU-Net uses) from
the ``architecture`` entry of an nnU-Net plans file, with only allow-listed classes.

A plans file names the network class and the torch classes of its layers as import strings
(``"torch.nn.modules.conv.Conv3d"``); nnU-Net imports whatever they name. Here each string must be
one of ``NETWORK_CLASSES`` or ``LAYER_CLASSES``: nothing else is imported or executed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from harness.errors import ModelSpecError

#: The nnU-Net v2 network classes this harness builds, by the name plans files give them.
NETWORK_CLASSES: dict[str, type[nn.Module]] = {
    f"dynamic_network_architectures.architectures.unet.{cls.__name__}": cls
    for cls in (PlainConvUNet, ResidualEncoderUNet)
}
#: Layer classes a plans file may name for ``conv_op``, ``norm_op``, ``dropout_op``, ``nonlin``,
#: under the import paths nnU-Net writes (``torch.nn.modules.<module>.<Class>``) or ``torch.nn``.
LAYER_CLASSES: dict[str, type[nn.Module]] = {
    name: cls
    for cls in (
        nn.Conv2d,
        nn.Conv3d,
        nn.InstanceNorm2d,
        nn.InstanceNorm3d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.GroupNorm,
        nn.Dropout,
        nn.Dropout2d,
        nn.Dropout3d,
        nn.LeakyReLU,
        nn.ReLU,
        nn.PReLU,
        nn.GELU,
        nn.ELU,
    )  # fmt: skip
    for name in (f"{cls.__module__}.{cls.__name__}", f"torch.nn.{cls.__name__}")
}
#: Keys of ``arch_kwargs`` that hold import strings (nnU-Net's ``_kw_requires_import``).
CLASS_KWARGS = ("conv_op", "norm_op", "dropout_op", "nonlin")


def short_class_name(network_class_name: str) -> str:
    """``PlainConvUNet`` for ``dynamic_network_architectures.architectures.unet.PlainConvUNet``."""
    return network_class_name.rsplit(".", 1)[-1]


def resolve_network_class(name: str) -> type[nn.Module]:
    """The allow-listed network class a plans file names (full import path or class name)."""
    for full, cls in NETWORK_CLASSES.items():
        if name in (full, cls.__name__):
            return cls
    raise ModelSpecError(
        f"network class {name!r} is not one this harness builds from nnU-Net plans "
        f"(known: {', '.join(sorted(NETWORK_CLASSES))})"
    )


def resolve_arch_kwargs(arch_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``arch_kwargs`` with its import strings replaced by the allow-listed torch classes."""
    resolved = dict(arch_kwargs)
    for key in CLASS_KWARGS:
        name = resolved.get(key)
        if name is None:
            continue
        if name not in LAYER_CLASSES:
            raise ModelSpecError(
                f"arch_kwargs {key} = {name!r} is not an allow-listed layer class (known: "
                f"{', '.join(sorted({cls.__name__ for cls in LAYER_CLASSES.values()}))})"
            )
        resolved[key] = LAYER_CLASSES[name]
    return resolved


def build_nnunet(
    *,
    network_class_name: str,
    arch_kwargs: Mapping[str, Any],
    input_channels: int,
    num_classes: int,
) -> nn.Module:
    """The network nnU-Net builds for inference (``deep_supervision=False``: one full-resolution
    output, the logits of ``num_classes`` classes)."""
    cls = resolve_network_class(network_class_name)
    kwargs = resolve_arch_kwargs(arch_kwargs)
    kwargs.pop("deep_supervision", None)
    return cls(
        input_channels=input_channels, num_classes=num_classes, deep_supervision=False, **kwargs
    )


def nnunet_out_channels(kwargs: Mapping[str, Any]) -> int | None:
    return kwargs.get("num_classes")


def nnunet_in_channels(kwargs: Mapping[str, Any]) -> int:
    return int(kwargs["input_channels"])

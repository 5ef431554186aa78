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
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.building_blocks.unet_residual_decoder import UNetResDecoder
from torch import nn

from harness.errors import ModelSpecError

#: The nnU-Net v2 network classes this harness builds, by the name plans files give them.
NETWORK_CLASSES: dict[str, type[nn.Module]] = {
    f"dynamic_network_architectures.architectures.unet.{cls.__name__}": cls
    for cls in (PlainConvUNet, ResidualEncoderUNet)
}
#: The 3D layer settings nnU-Net v2's planner writes into ``arch_kwargs`` (and implied by the plans
#: of nnU-Net < 2.4, which did not record them): biased Conv3d, affine InstanceNorm3d, no dropout,
#: in-place LeakyReLU.
DEFAULT_3D_LAYERS: dict[str, Any] = {
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
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


#: Attributes of a ConvDropoutNormReLU that alias entries of its ``all_modules`` (what runs).
_BLOCK_ALIASES = ("conv", "dropout", "norm", "nonlin")


def build_nnunet_as_trained(
    *,
    network_class_name: str,
    arch_kwargs: Mapping[str, Any],
    input_channels: int,
    num_classes: int,
) -> nn.Module:
    """The network exactly as nnU-Net builds it, whose state dict is a checkpoint's
    ``network_weights`` (every layer under all its names, every deep-supervision head)."""
    cls = resolve_network_class(network_class_name)
    kwargs = resolve_arch_kwargs(arch_kwargs)
    kwargs.pop("deep_supervision", None)
    return cls(
        input_channels=input_channels, num_classes=num_classes, deep_supervision=False, **kwargs
    )


def inference_form(network: nn.Module) -> nn.Module:
    """``network`` (in place) with one name per layer and only the layers inference runs.

    dynamic-network-architectures registers each conv block's layers twice (``conv`` and
    ``all_modules.0``, which ``forward`` runs) and gives the decoder a second reference to the
    encoder; without deep supervision only the last segmentation head runs. Quantization
    replaces and calibrates layers by name, so aliases are unregistered (kept as plain
    attributes) and the decoder keeps its final head only (``seg_layers[-1]`` is still the one
    ``forward`` calls). Outputs are unchanged.
    """
    for module in network.modules():
        if isinstance(module, ConvDropoutNormReLU):
            for name in _BLOCK_ALIASES:
                if name in module._modules:
                    object.__setattr__(module, name, module._modules.pop(name))
        elif isinstance(module, UNetDecoder | UNetResDecoder):
            if "encoder" in module._modules:
                object.__setattr__(module, "encoder", module._modules.pop("encoder"))
            module.seg_layers = nn.ModuleList([module.seg_layers[-1]])
    return network


def build_nnunet(**kwargs: Any) -> nn.Module:
    """The nnU-Net v2 network the harness evaluates and quantizes: ``inference_form`` of the
    one nnU-Net builds (``deep_supervision=False``, the logits of ``num_classes`` classes)."""
    return inference_form(build_nnunet_as_trained(**kwargs))


def nnunet_out_channels(kwargs: Mapping[str, Any]) -> int | None:
    return kwargs.get("num_classes")


def nnunet_in_channels(kwargs: Mapping[str, Any]) -> int:
    return int(kwargs["input_channels"])

"""Registry of the reference PTQ methods by name: each builds its config from a scheme (bits,
granularity, group size, activation quantizer) plus its own options, and applies it.

    quantize_with("gptq", model, QuantConfig.from_scheme("w4a16-per-channel"), calibration,
                  damp=0.01, act_order=True)

Options a method does not take are refused by name, so a front end (the CLI) can pass through
whatever the user set without knowing the methods.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reference_methods.methods import comq, gptq, permutation_comq, rotation, rtn, smoothquant, svd
from reference_methods.simulator.scheme import QuantConfig

_COMQ_OPTIONS = ("sweeps", "shrink", "update_scale", "sequential")


@dataclass(frozen=True)
class Method:
    """A method's option names, its config builder (scheme, options) -> config, its apply, and
    the options it cannot do without."""

    options: tuple[str, ...]
    build: Callable[[QuantConfig, dict[str, Any]], Any]
    apply: Callable[[nn.Module, Any, Iterable[torch.Tensor]], nn.Module]
    required: tuple[str, ...] = ()


def _permutation_comq_config(
    scheme: QuantConfig, options: dict[str, Any]
) -> permutation_comq.PermutationCOMQConfig:
    shared = {key: options.pop(key) for key in _COMQ_OPTIONS if key in options}
    return permutation_comq.PermutationCOMQConfig(comq.COMQConfig(scheme, **shared), **options)


METHODS: dict[str, Method] = {
    "rtn": Method((), lambda scheme, _options: scheme, rtn.apply),
    "gptq": Method(
        ("block_size", "damp", "act_order", "sequential"),
        lambda scheme, options: gptq.GPTQConfig(scheme, **options),
        gptq.apply,
    ),
    "comq": Method(
        _COMQ_OPTIONS, lambda scheme, options: comq.COMQConfig(scheme, **options), comq.apply
    ),
    "permutation-comq": Method(
        (*_COMQ_OPTIONS, "groups", "sort_key", "scope"),
        _permutation_comq_config,
        permutation_comq.apply,
    ),
    "smoothquant": Method(
        ("alpha",),
        lambda scheme, options: smoothquant.SmoothQuantConfig(scheme, **options),
        smoothquant.apply,
    ),
    "svd": Method(
        ("rank",),
        lambda scheme, options: svd.SVDConfig(scheme, **options),
        svd.apply,
        required=("rank",),
    ),
    "rotation": Method(
        (), lambda scheme, _options: rotation.RotationConfig(scheme), rotation.apply
    ),
}


def method_config(name: str, scheme: QuantConfig, options: Mapping[str, Any] | None = None) -> Any:
    """The config of method ``name`` for ``scheme`` and ``options``; ValueError for an unknown
    method, an option it does not take or a required option missing."""
    method = _method(name)
    options = dict(options or {})
    foreign = sorted(options.keys() - set(method.options))
    if foreign:
        takes = ", ".join(method.options) or "none"
        raise ValueError(
            f"method {name!r} takes no option(s) {', '.join(foreign)} (its options: {takes})"
        )
    missing = [key for key in method.required if key not in options]
    if missing:
        raise ValueError(f"method {name!r} needs the option(s) {', '.join(missing)}")
    return method.build(scheme, options)


def quantize_with(
    name: str,
    model: nn.Module,
    scheme: QuantConfig,
    calibration: Iterable[torch.Tensor],
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Quantized deep copy of ``model`` by method ``name`` under ``scheme`` with ``options``."""
    config = method_config(name, scheme, options)
    return _method(name).apply(model, config, list(calibration))


def _method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (expected one of: {', '.join(METHODS)})")
    return METHODS[name]

"""Reference PTQ methods, one module each, registered by name (see ``registry``):

    quantize_with("gptq", model, QuantConfig.from_scheme("w4a16-per-channel"), calibration,
                  {"damp": 0.01, "act_order": True})

A new method is one module in this package: a config dataclass and an ``apply`` function under
``@register_method``; every module here is imported below, so nothing else needs editing. Options
a method does not take are refused by name, so a front end (the CLI) can pass through whatever
the user set without knowing the methods.

Depends on: ``reference_methods.statistics`` and ``reference_methods.simulator``.
"""

import importlib
import pkgutil

from reference_methods.methods.registry import (
    METHODS,
    Method,
    MethodOption,
    all_options,
    describe,
    method_config,
    method_options,
    methods_with,
    parse_method,
    quantize_with,
    register_method,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "METHODS",
    "Method",
    "MethodOption",
    "all_options",
    "describe",
    "method_config",
    "method_options",
    "methods_with",
    "parse_method",
    "quantize_with",
    "register_method",
]

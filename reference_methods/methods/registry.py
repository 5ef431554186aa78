"""The method registry: a PTQ method is a config dataclass (a field ``scheme: QuantConfig``, or a
nested method config that has one; its other fields the method's options, each with a ``help`` in
the field's metadata) and an ``apply(model, config, calibration)`` function registered by
``@register_method``.

Everything a front end needs derives from that: option names, types, defaults, help text and
whether they are required (``method_options``), the config (``method_config``), a one-line
description with the defaults (``describe``). A config field that is itself a method config (as
Permutation-COMQ's ``comq``) contributes its options, flattened.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, Literal

import torch
from torch import nn

from reference_methods.simulator.scheme import QuantConfig
from reference_methods.simulator.threads import reproducible_threads

Apply = Callable[[nn.Module, Any, Iterable[torch.Tensor]], nn.Module]


@dataclass(frozen=True)
class MethodOption:
    """One option: ``kind`` is ``int``, ``float``, ``str`` (with ``choices`` when a Literal),
    ``bool`` (a flag) or ``list`` (comma-separated names); ``default`` is MISSING when required."""

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def parse(self, text: str) -> Any:
        """The option's value from command-line text."""
        if self.kind is list:
            return tuple(part for part in text.split(",") if part)
        return self.kind(text)


@dataclass(frozen=True)
class Method:
    """A registered method: ``config`` is its dataclass (``QuantConfig`` itself for a method
    whose only setting is the scheme), ``apply`` quantizes a deep copy of a model;
    ``weight_layout`` names the layout of its weights with default options when it is not the
    scheme's rule table (e.g. ``column-permuted``)."""

    name: str
    label: str
    summary: str
    config: type
    apply: Apply
    weight_layout: str | None = None

    @property
    def options(self) -> tuple[MethodOption, ...]:
        return _options(self.config)


METHODS: dict[str, Method] = {}


def register_method(
    name: str, *, config: type, label: str, summary: str, weight_layout: str | None = None
) -> Callable[[Apply], Apply]:
    """Decorator registering ``apply`` as method ``name`` with its ``config`` dataclass; ``label``
    is its display name, ``summary`` a few words on what it does, ``weight_layout`` see
    ``Method``."""

    def decorator(apply: Apply) -> Apply:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        method = Method(name, label, summary, config, apply, weight_layout)
        method.options  # noqa: B018 -- an option type the registry cannot read fails at import
        METHODS[name] = method
        return apply

    return decorator


def method_options(name: str) -> tuple[MethodOption, ...]:
    return _method(name).options


def all_options() -> dict[str, MethodOption]:
    """Every method's options by name (an option several methods share appears once); a name
    two methods define differently is a registry error."""
    found: dict[str, MethodOption] = {}
    for method in METHODS.values():
        for option in method.options:
            seen = found.setdefault(option.name, option)
            if (seen.kind, seen.choices) != (option.kind, option.choices):
                raise TypeError(f"option {option.name!r} has two different types")
    return found


def methods_with(option: str) -> list[str]:
    """Labels of the methods that take ``option``."""
    return [m.label for m in METHODS.values() if any(o.name == option for o in m.options)]


def parse_method(text: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name[option=value,...]`` (e.g. ``permutation-comq[scope=layer]``) → the
    method name and its options, typed by the method's config; ValueError naming what is wrong."""
    name, _, rest = text.partition("[")
    if not rest:
        return _method(name).name, {}
    if not rest.endswith("]"):
        raise ValueError(f"method {text!r}: options go in brackets, e.g. {name}[key=value]")
    known = {o.name: o for o in _method(name).options}
    options: dict[str, Any] = {}
    for item in filter(None, rest[:-1].split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            takes = ", ".join(known) or "none"
            raise ValueError(
                f"method {text!r}: {item!r} is not option=value (its options: {takes})"
            )
        option = known[key]
        options[key] = (
            value.lower() in ("1", "true", "yes") if option.kind is bool else option.parse(value)
        )
    return name, options


def describe(name: str) -> str:
    """``Label (summary; option = default, …)``: what a baseline run with defaults is."""
    method = _method(name)
    defaults = ", ".join(
        f"{o.name} = {o.default}" for o in method.options if not o.required and o.kind is not list
    )
    return f"{method.label} ({method.summary}" + (f"; {defaults})" if defaults else ")")


def method_config(name: str, scheme: QuantConfig, options: Mapping[str, Any] | None = None) -> Any:
    """The config of method ``name`` for ``scheme`` and ``options``; ValueError for an unknown
    method, an option it does not take or a required option missing."""
    method = _method(name)
    options = dict(options or {})
    takes = [o.name for o in method.options]
    foreign = sorted(options.keys() - set(takes))
    if foreign:
        raise ValueError(
            f"method {name!r} takes no option(s) {', '.join(foreign)} "
            f"(its options: {', '.join(takes) or 'none'})"
        )
    missing = [o.name for o in method.options if o.required and o.name not in options]
    if missing:
        raise ValueError(f"method {name!r} needs the option(s) {', '.join(missing)}")
    return _build(method.config, scheme, options)


def quantize_with(
    name: str,
    model: nn.Module,
    scheme: QuantConfig,
    calibration: Iterable[torch.Tensor],
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Quantized deep copy of ``model`` by method ``name`` under ``scheme`` with ``options``,
    computed at ``REPRODUCIBLE_THREADS`` so that the codes do not depend on the machine."""
    config = method_config(name, scheme, options)
    with reproducible_threads():
        return _method(name).apply(model, config, list(calibration))


def _method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (expected one of: {', '.join(METHODS)})")
    return METHODS[name]


def _config_fields(config: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type) of a method config, without its ``scheme``."""
    if config is QuantConfig:
        return []
    hints = typing.get_type_hints(config)
    return [(f, hints[f.name]) for f in dataclasses.fields(config) if f.name != "scheme"]


def _options(config: type) -> tuple[MethodOption, ...]:
    options: list[MethodOption] = []
    for field, hint in _config_fields(config):
        if dataclasses.is_dataclass(hint):
            options.extend(_options(hint))
            continue
        kind, choices = _kind(hint, f"{config.__name__}.{field.name}")
        default = field.default
        if default is MISSING and field.default_factory is not MISSING:
            default = field.default_factory()
        options.append(
            MethodOption(field.name, kind, default, field.metadata.get("help", ""), choices)
        )
    return tuple(options)


def _kind(hint: Any, where: str) -> tuple[type, tuple[str, ...] | None]:
    """The option kind of a field type: X | None counts as X."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if len(args) != 1:
            raise TypeError(f"{where}: unsupported option type {hint}")
        hint, args = args[0], list(typing.get_args(args[0]))
    if typing.get_origin(hint) is Literal:
        return str, tuple(args)
    if typing.get_origin(hint) is tuple and args and args[0] is str:
        return list, None
    if hint in (bool, int, float, str):
        return hint, None
    raise TypeError(f"{where}: unsupported option type {hint}")


def _build(config: type, scheme: QuantConfig, options: dict[str, Any]) -> Any:
    if config is QuantConfig:
        return scheme
    has_scheme = any(f.name == "scheme" for f in dataclasses.fields(config))
    values: dict[str, Any] = {"scheme": scheme} if has_scheme else {}
    for field, hint in _config_fields(config):
        if dataclasses.is_dataclass(hint):
            values[field.name] = _build(hint, scheme, options)
        elif field.name in options:
            values[field.name] = options[field.name]
    return config(**values)

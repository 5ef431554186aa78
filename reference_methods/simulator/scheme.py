"""Simulated post-training quantization: a QuantConfig applied to a model by ``quantize()``.

Every nn.Conv3d, nn.ConvTranspose3d and nn.Linear (exact types) not in ``config.skip`` becomes its
quantized twin, with round-to-nearest absmax weights (RTN) unless a method hands in its own
quantized weights, and with the extras a method hands in (input scale, rotation, low-rank branch;
see ``layer_extras``); static activation scales are calibrated on the given batches (max,
percentile or MSE; see ``calibration``), on the symmetric grid or the asymmetric zero-point one.
Attention matmuls, norms, softmax and everything else stay in floating point.
"""

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from reference_methods.simulator.calibration import (
    DEFAULT_PERCENTILE,
    ActivationCalibration,
    check_percentile,
)
from reference_methods.simulator.granularity import Granularity, WeightGranularity, scale_rule
from reference_methods.simulator.layer_extras import LayerExtras
from reference_methods.simulator.progress import report
from reference_methods.simulator.quantized_layers import (
    QUANT_LAYER_TYPES,
    LayerSpec,
    QuantLayer,
    layer_kind,
)
from reference_methods.simulator.quantizer import check_bits
from reference_methods.simulator.threads import reproducible_threads
from reference_methods.simulator.weight_format import QuantizedWeight

_SCHEME = re.compile(
    r"w(\d+)a(\d+)-(per-tensor|per-channel|adaptive)(-g\d+)?(-asym)?(-mse|-p\d+(?:\.\d+)?)?"
    r"(-dynamic)?(-o\d+)?"
)
_WEIGHT_ONLY_BITS = 16
QUANTIZE_STAGE = "quantize layers"
CALIBRATE_STAGE = "calibrate activations"
ActivationQuantizer = Literal["symmetric", "asymmetric"]
ACTIVATION_QUANTIZERS: tuple[str, ...] = ("symmetric", "asymmetric")


@dataclass(frozen=True)
class QuantConfig:
    """A quantization method: bits, granularity scheme, static/dynamic scales, float layers.

    ``activation_bits=None`` is weight-only (A16). ``activation_scales`` applies to per-tensor and
    per-channel activations; per-token and per-voxel scales are always dynamic. ``skip`` holds
    qualified module names (as in ``named_modules()``) kept in floating point, with everything
    below them. ``weight_group_size`` makes every layer's weights group-wise (one scale per run of
    that many consecutive input weights of an output channel) instead of the rule table's.
    ``activation_quantizer`` is the activation grid: ``symmetric`` (signed, the study's
    definition) or ``asymmetric`` (unsigned with a zero-point, as deployment toolkits offer);
    ``activation_calibration`` how static scales are chosen (``max``, ``percentile`` at
    ``activation_percentile``, or ``mse``; dynamic scales are always the input's own range).
    ``output_bits`` requantizes every quantized layer's output as an integer kernel does (static
    per-tensor symmetric scale, max calibration; see ``LayerSpec``); None (the study's schemes)
    leaves outputs in floating point.
    """

    weight_bits: int
    activation_bits: int | None
    granularity: Granularity
    activation_scales: Literal["static", "dynamic"] = "static"
    skip: tuple[str, ...] = ()
    weight_group_size: int | None = None
    activation_quantizer: ActivationQuantizer = "symmetric"
    activation_calibration: ActivationCalibration = ActivationCalibration.MAX
    activation_percentile: float = DEFAULT_PERCENTILE
    output_bits: int | None = None

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "weight_bits")
        if self.activation_bits is not None:
            check_bits(self.activation_bits, "activation_bits")
        try:
            object.__setattr__(self, "granularity", Granularity(self.granularity))
        except ValueError:
            allowed = ", ".join(g.value for g in Granularity)
            raise ValueError(
                f"unknown granularity {self.granularity!r} (expected one of: {allowed})"
            ) from None
        if self.activation_scales not in ("static", "dynamic"):
            raise ValueError(
                f"activation_scales must be 'static' or 'dynamic', got {self.activation_scales!r}"
            )
        if self.activation_bits is None and self.activation_scales != "static":
            raise ValueError("weight-only quantization has no activation scales to make dynamic")
        if isinstance(self.skip, str) or not all(isinstance(name, str) for name in self.skip):
            raise ValueError(f"skip must be a sequence of module names, got {self.skip!r}")
        object.__setattr__(self, "skip", tuple(self.skip))
        size = self.weight_group_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"weight_group_size must be an integer >= 1, got {size!r}")
        if self.activation_quantizer not in ACTIVATION_QUANTIZERS:
            raise ValueError(
                f"activation_quantizer must be one of {', '.join(ACTIVATION_QUANTIZERS)}, got "
                f"{self.activation_quantizer!r}"
            )
        try:
            calibration = ActivationCalibration(self.activation_calibration)
        except ValueError:
            allowed = ", ".join(c.value for c in ActivationCalibration)
            raise ValueError(
                f"unknown activation_calibration {self.activation_calibration!r} "
                f"(expected one of: {allowed})"
            ) from None
        object.__setattr__(self, "activation_calibration", calibration)
        check_percentile(self.activation_percentile)
        object.__setattr__(self, "activation_percentile", float(self.activation_percentile))
        weight_only = self.activation_bits is None
        if weight_only and self.activation_quantizer != "symmetric":
            raise ValueError("weight-only quantization has no activation quantizer")
        if calibration is not ActivationCalibration.MAX and (
            weight_only or self.activation_scales == "dynamic"
        ):
            raise ValueError(
                f"{calibration.value} calibration applies to static activation scales; dynamic "
                "scales are each input's own range"
            )
        if self.output_bits is not None:
            check_bits(self.output_bits, "output_bits")
            if weight_only or self.activation_scales != "static":
                raise ValueError("output requantization needs static activation scales")

    @classmethod
    def from_scheme(cls, scheme: str) -> "QuantConfig":
        """Parse ``w<W>a<A>-<granularity>[-g<group size>][-asym][-mse|-p<percentile>]
        [-dynamic][-o<output bits>]``, e.g. "w4a4-adaptive", "w8a8-per-tensor-asym-p99.99" or
        "w4a16-per-channel-g32"; a16 = weight-only, ``-asym`` asymmetric activations, ``-mse`` /
        ``-p<percentile>`` the calibration of static scales (default max), ``-o8`` outputs
        requantized to 8 bits."""
        match = _SCHEME.fullmatch(scheme) if isinstance(scheme, str) else None
        if match is None:
            raise ValueError(
                f"malformed scheme {scheme!r}: expected w<bits>a<bits>-"
                "<per-tensor|per-channel|adaptive>[-g<group size>][-asym][-mse|-p<percentile>]"
                "[-dynamic][-o<output bits>], e.g. 'w4a4-per-channel' or 'w8a8-per-tensor-asym'"
            )
        weight_bits, activation_bits, granularity, group, asym, calibration, dynamic, output = (
            match.groups()
        )
        activation = int(activation_bits)
        rule = {}
        if calibration == "-mse":
            rule = {"activation_calibration": ActivationCalibration.MSE}
        elif calibration is not None:
            rule = {
                "activation_calibration": ActivationCalibration.PERCENTILE,
                "activation_percentile": float(calibration[2:]),
            }
        return cls(
            weight_bits=int(weight_bits),
            activation_bits=None if activation == _WEIGHT_ONLY_BITS else activation,
            granularity=Granularity(granularity),
            activation_scales="dynamic" if dynamic else "static",
            weight_group_size=None if group is None else int(group[2:]),
            activation_quantizer="asymmetric" if asym else "symmetric",
            output_bits=None if output is None else int(output[2:]),
            **rule,
        )

    @property
    def name(self) -> str:
        """Scheme name, the inverse of ``from_scheme`` (``skip`` is not part of it)."""
        activation = _WEIGHT_ONLY_BITS if self.activation_bits is None else self.activation_bits
        group = "" if self.weight_group_size is None else f"-g{self.weight_group_size}"
        grid = "-asym" if self.activation_quantizer == "asymmetric" else ""
        calibration = {
            ActivationCalibration.MAX: "",
            ActivationCalibration.MSE: "-mse",
            ActivationCalibration.PERCENTILE: f"-p{self.activation_percentile:g}",
        }[self.activation_calibration]
        suffix = "-dynamic" if self.activation_scales == "dynamic" else ""
        if self.output_bits is not None:
            suffix += f"-o{self.output_bits}"
        return (
            f"w{self.weight_bits}a{activation}-{self.granularity.value}{group}{grid}"
            f"{calibration}{suffix}"
        )


def layer_spec(layer: nn.Module, config: QuantConfig) -> LayerSpec:
    """The LayerSpec the reference rule table gives ``layer`` under ``config``."""
    kind = layer_kind(layer)
    if kind is None:
        raise TypeError(f"{type(layer).__name__} is not a quantizable layer")
    rule = scale_rule(layer, config.granularity)
    weight = {"weight_granularity": rule.weight}
    if config.weight_group_size is not None:
        weight = {
            "weight_granularity": WeightGranularity.GROUP_WISE,
            "weight_group_size": config.weight_group_size,
        }
    if config.activation_bits is None:
        return LayerSpec(kind, config.weight_bits, **weight)
    dynamic = rule.activation.always_dynamic or config.activation_scales == "dynamic"
    return LayerSpec(
        kind,
        config.weight_bits,
        activation_bits=config.activation_bits,
        activation_granularity=rule.activation,
        activation_scale="dynamic" if dynamic else "static",
        activation_zero_point=config.activation_quantizer == "asymmetric",
        output_bits=config.output_bits,
        **weight,
    )


def quantized_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """Quantized layers of ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLayer)}


def target_layers(model: nn.Module, config: QuantConfig) -> dict[str, nn.Module]:
    """The float layers ``quantize(model, config)`` replaces, by qualified name, in module order."""
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    modules = dict(model.named_modules())
    unknown = [name for name in config.skip if name not in modules]
    if unknown:
        raise ValueError(f"skip names not found in the model: {', '.join(unknown)}")
    targets = {}
    for name, layer in modules.items():
        if layer_kind(layer) is None or _skipped(name, config.skip):
            continue
        if not name:
            raise ValueError("the model is a single layer: wrap it in a container module")
        targets[name] = layer
    return targets


def quantize(
    model: nn.Module,
    config: QuantConfig,
    calibration: Iterable[torch.Tensor] = (),
    weights: Mapping[str, QuantizedWeight] | None = None,
    extras: Mapping[str, LayerExtras] | None = None,
) -> nn.Module:
    """Quantized deep copy of ``model`` in eval mode; ``model`` itself is left untouched.

    ``calibration`` yields model inputs (e.g. (B, 1, D, H, W) patches); it is iterated under
    ``torch.no_grad()`` only when some layer has static activation scales: once for max
    calibration, twice for percentile and MSE (range, then histogram).
    ``weights`` holds a method's quantized weights (rows view) by layer name: those layers keep
    their layout and codes, with the config's bits and activation rule; all others get RTN.
    ``extras`` holds a method's extras by layer name, for the layer's weight as it is in ``model``
    (a transformed weight: smoothed, rotated, a low-rank residual).
    """
    weights, extras = dict(weights or {}), dict(extras or {})
    quantized = copy.deepcopy(model).eval()
    targets = target_layers(quantized, config)
    for what, named in (("quantized weights", weights), ("extras", extras)):
        unknown = sorted(named.keys() - targets.keys())
        if unknown:
            raise ValueError(f"{what} for layers that are not quantized: {unknown}")
    for done, (name, layer) in enumerate(targets.items(), 1):
        cls = QUANT_LAYER_TYPES[layer_kind(layer)]
        spec = layer_spec(layer, config)
        try:
            if name in extras:
                spec = spec.for_extras(extras[name])
            if name in weights:
                module = cls.from_quantized(layer, spec, weights[name])
            else:
                module = cls.from_float(layer, spec)
            if name in extras:
                module.load_extras(extras[name])
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from error
        quantized.set_submodule(name, module)
        report(QUANTIZE_STAGE, name, done, len(targets))
    with reproducible_threads():  # the stored activation scales may not depend on the machine
        _calibrate(quantized, calibration, config)
    return quantized


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in skip)


def _calibrate(model: nn.Module, calibration: Iterable[torch.Tensor], config: QuantConfig) -> None:
    """Record the input range at every static layer over all batches (and, for percentile and
    MSE, a histogram over it in a second pass), then set its act_scale (and zero-point)."""
    layers = quantized_layers(model)
    if not any(layer.needs_calibration for layer in layers.values()):
        return
    for layer in layers.values():
        layer.start_calibration(config.activation_calibration, config.activation_percentile)
    needs_histogram = any(layer.needs_histogram for layer in layers.values())
    if needs_histogram and not isinstance(calibration, Sequence):
        calibration = list(calibration)  # read twice
    batches = 0
    with torch.no_grad():
        total = len(calibration) if isinstance(calibration, Sequence) else 0
        for batch in calibration:
            model(batch)
            batches += 1
            report(CALIBRATE_STAGE, f"batch {batches}", batches, total)
        if batches == 0:
            raise ValueError("static activation scales need at least one calibration batch")
        if needs_histogram:
            for name, layer in layers.items():
                try:
                    layer.start_histogram()
                except RuntimeError as error:
                    raise RuntimeError(f"layer {name!r}: {error}") from error
            for batch in calibration:
                model(batch)
    for name, layer in layers.items():
        try:
            layer.finish_calibration()
        except RuntimeError as error:
            raise RuntimeError(f"layer {name!r}: {error}") from error

"""Layer sensitivity by incremental dequantization (MedQuanBench).

Start from the fully quantized model Q(M; c) under a QuantConfig c, with score S_q = score(Q(M; c)).
For each group G of quantizable layers (all layers of one kind, or one single layer), keep G in
floating point, S_G = score(Q(M; c + skip G)), and rank the groups by the score they recover,
R_G = S_G − S_q (higher = more sensitive). The fraction of the quantization gap a group closes is
R_G / (S_fp − S_q) with S_fp = score(M). The scoring function is injected (model → float, higher
is better), so this module does no I/O.

Layer kinds (``kind_label``): convolutions by kernel size ("conv 3×3×3", "conv 1×1×1",
"conv 1×3×3", …), all transposed convolutions ("transposed conv") and all linear layers ("linear").
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from reference_methods.simulator.quantized_layers import layer_kind
from reference_methods.simulator.scheme import QuantConfig, quantize

Score = Callable[[nn.Module], float]
GroupBy = Literal["kind", "layer"]


@dataclass(frozen=True)
class LayerGroup:
    """Quantizable layers kept in floating point together: qualified names, kind, #parameters."""

    name: str
    kind: str
    layers: tuple[str, ...]
    parameters: int


@dataclass(frozen=True)
class GroupSensitivity:
    """Score with ``group`` kept in floating point and the score it recovers, S_G − S_q."""

    group: LayerGroup
    score: float
    recovered: float


@dataclass(frozen=True)
class SensitivityAnalysis:
    """S_fp, S_q and the groups ranked by recovered score (most sensitive first)."""

    config: QuantConfig
    float_score: float
    quantized_score: float
    ranked: tuple[GroupSensitivity, ...]

    def gap_fraction(self, recovered: float) -> float | None:
        """recovered / (S_fp − S_q); None when quantization costs nothing (S_fp ≤ S_q)."""
        gap = self.float_score - self.quantized_score
        return recovered / gap if gap > 0 else None


@dataclass(frozen=True)
class KeepFloat:
    """Score with the k most sensitive groups kept in floating point together."""

    k: int
    groups: tuple[LayerGroup, ...]
    layers: tuple[str, ...]
    score: float


def kind_label(layer: nn.Module) -> str:
    """Kind of a quantizable layer: "conv k×k×k" (by kernel size), "transposed conv", "linear"."""
    match layer_kind(layer):
        case "conv3d":
            return "conv " + "×".join(str(k) for k in layer.kernel_size)
        case "conv_transpose3d":
            return "transposed conv"
        case "linear":
            return "linear"
        case _:
            raise TypeError(f"{type(layer).__name__} is not a quantizable layer")


def layer_groups(model: nn.Module, by: GroupBy = "kind") -> list[LayerGroup]:
    """Quantizable layers of ``model`` grouped by kind, or one group per layer, in module order."""
    if by not in ("kind", "layer"):
        raise ValueError(f"group by 'kind' or 'layer', got {by!r}")
    layers = [(name, m) for name, m in model.named_modules() if layer_kind(m) is not None]
    if not layers:
        raise ValueError("the model has no quantizable layer (Conv3d, ConvTranspose3d, Linear)")
    if by == "layer":
        return [LayerGroup(name, kind_label(m), (name,), _parameters([m])) for name, m in layers]
    kinds: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, m in layers:
        kinds.setdefault(kind_label(m), []).append((name, m))
    return [
        LayerGroup(
            kind, kind, tuple(name for name, _ in members), _parameters(m for _, m in members)
        )
        for kind, members in kinds.items()
    ]


def _parameters(layers: Iterable[nn.Module]) -> int:
    return sum(p.numel() for layer in layers for p in layer.parameters())


def keep_float(
    model: nn.Module,
    config: QuantConfig,
    layers: Sequence[str],
    calibration: Sequence[torch.Tensor] = (),
) -> nn.Module:
    """Q(M; c + skip ``layers``): ``model`` quantized under ``config`` with ``layers`` in float."""
    skip = tuple(dict.fromkeys((*config.skip, *layers)))
    return quantize(model, replace(config, skip=skip), calibration)


def incremental_dequantization(
    model: nn.Module,
    config: QuantConfig,
    groups: Sequence[LayerGroup],
    score: Score,
    calibration: Sequence[torch.Tensor] = (),
) -> SensitivityAnalysis:
    """Score M, Q(M; c) and Q(M; c + skip G) for every group G; rank by S_G − S_q, stable.

    ``calibration`` is re-iterated for every quantized model, so it must be a sequence. Each
    quantized model is scored, then dropped before the next one is built.
    """
    if not groups:
        raise ValueError("no layer group to analyse")
    float_score = float(score(model))
    quantized_score = float(score(quantize(model, config, calibration)))
    results = []
    for group in groups:
        kept = float(score(keep_float(model, config, group.layers, calibration)))
        results.append(GroupSensitivity(group, kept, kept - quantized_score))
    ranked = sorted(results, key=lambda r: r.recovered, reverse=True)
    return SensitivityAnalysis(config, float_score, quantized_score, tuple(ranked))


def keep_most_sensitive(
    model: nn.Module,
    analysis: SensitivityAnalysis,
    ks: Sequence[int],
    score: Score,
    calibration: Sequence[torch.Tensor] = (),
) -> list[KeepFloat]:
    """For each k in ``ks``: score with the top-k ranked groups of ``analysis`` kept in float."""
    bad = [k for k in ks if not 1 <= k <= len(analysis.ranked)]
    if bad:
        raise ValueError(f"k must be from 1 to {len(analysis.ranked)}, got {bad}")
    results = []
    for k in ks:
        groups = tuple(r.group for r in analysis.ranked[:k])
        layers = tuple(name for group in groups for name in group.layers)
        value = float(score(keep_float(model, analysis.config, layers, calibration)))
        results.append(KeepFloat(k, groups, layers, value))
    return results

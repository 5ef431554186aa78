"""What a track asks of an artifact, in the narrow form verifiers and backends receive
(``TrackChecks``: no ``TrackSpec``, no loaded track), and what verification hands on
(``VerifiedArtifact``: the file parsed, hashed and measured once, reused by the backend that runs
it, the efficiency measurement and the result)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness.models.interface import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    import onnx
    from torch import nn

    from harness.artifacts.onnx.graph import GraphIndex
    from harness.models.reference import ModelSpec

DEFAULT_MAX_BYTES = 512 * 2**20
"""Largest artifact file verified (the site's upload limit is the same by default)."""


@dataclass(frozen=True)
class OnnxInterface:
    """The input and output a track's ONNX must have: (N, C, *roi) → (N, K, *roi), float32."""

    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...]

    @classmethod
    def for_model(cls, spec: ModelSpec) -> OnnxInterface:
        roi = spec.sliding_window.roi_size
        return cls(INPUT_NAME, (spec.in_channels, *roi), OUTPUT_NAME, (len(spec.labels), *roi))


@dataclass(frozen=True)
class PrecisionLimits:
    """The most a submission may use: weight / activation bits (None: no limit), bytes, and the
    fraction of weighted-op MACs that may keep float weights (and float inputs) under a weight
    limit, e.g. an output head left in floating point by the quantizer."""

    weight_bits: int | None = None
    activation_bits: int | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    max_float_mac_fraction: float = 0.0


@dataclass(frozen=True)
class TrackChecks:
    """Everything an artifact is checked against on one track: its precision limits, allowed
    granularities and bits-per-weight budget (None: none), division (``closed``: post-training
    only), the ONNX interface, the reference network (a checkpoint is applied to it) and, on ONNX
    backends, the reference's FP32 graph (parsed once per track; an upload must match it node for
    node). ``threads`` and ``sw_batch_size`` are how engines open the artifact."""

    limits: PrecisionLimits
    granularities: tuple[str, ...]
    bits_per_weight_budget: float | None
    division: str
    interface: OnnxInterface
    reference_network: nn.Module
    reference_graph: onnx.ModelProto | None
    threads: int
    sw_batch_size: int

    @property
    def closed(self) -> bool:
        return self.division == "closed"


@dataclass(frozen=True)
class VerifiedArtifact:
    """An artifact that passed verification: its ``kind`` (``checkpoint`` or ``onnx``), ``path``,
    the SHA-256 of its weights, the precision report read from it, and what verifying built so
    nothing downstream reads or hashes the file again: for ONNX the parsed, shape-inferred graph
    (``graph``), for a checkpoint the reference network it was applied to (``network``)."""

    kind: str
    path: Path
    sha256: str
    precision: dict
    graph: GraphIndex | None = field(default=None, repr=False)
    network: nn.Module | None = field(default=None, repr=False)

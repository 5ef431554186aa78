"""TrackSpec: the plain, versioned description of a track that the harness evaluates against."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.backends import backend_names
from harness.errors import HarnessError
from harness.inference.latency import (
    MIN_PAIRS,
    PROTOCOL_BURST,
    PROTOCOL_PAIRS,
    LatencyProtocol,
)
from harness.scoring.definitions import DEFAULT_NSD_DEFINITION, NsdDefinition
from harness.scoring.splits import DEFAULT_PUBLIC_FRACTION

if TYPE_CHECKING:  # the command line's parsers read this module: no backend (numpy) at start-up
    from harness.backends import Backend

TRACK_SPEC_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
"""Version 3 lacked ``public_fraction`` (half the test cases public). Version 2 lacked
``label_map`` (none: the model's labels must be the dataset's), ``latency_pairs`` and
``latency_burst`` (the protocol's defaults). Version 1 lacked ``granularities``,
``accuracy_gate``, ``time_limit_s``, ``bits_per_weight_budget``, ``division``,
``nsd_definition`` and ``latency_threads`` (defaults apply; a spec without ``nsd_definition`` is
scored by the publication's subvoxel NSD)."""
DEFAULT_ACCURACY_GATE = 0.99
"""MLPerf-style: an entry passes when its mean DSC is at least 99% of the FP32 mean DSC."""
DEFAULT_BUDGET_MARGIN_BITS = 0.5
"""Default bits-per-weight budget: the weight bits + 0.5, which admits per-channel and group-wise
scales (float32 per 128 weights adds 0.25) but not a group id per weight."""
DIVISIONS = ("closed", "open")
"""``closed``: post-training quantization only (weights within the quantizer's reach of FP32, as
MLPerf's closed division); ``open``: any weights, still the track's reference network."""


WEIGHT_ONLY_ACTIVATION_BITS = 16
"""How a precision label writes float activations: ``w4a16`` (the scheme grammar's, see
``reference_methods.simulator.scheme``)."""


def precision_prefix(weight_bits: int, activation_bits: int | None) -> str:
    """The precision part of a scheme name and track slug: ``w4a4``; weight-only is ``a16``."""
    return f"w{weight_bits}a{activation_bits or WEIGHT_ONLY_ACTIVATION_BITS}"


@dataclass(frozen=True)
class TrackSpec:
    """Reference model folder × dataset folder (+ its named splits) × precision × backend.

    ``weight_bits``/``activation_bits`` are the most a submission may use (None: no limit /
    weight-only); ``granularities`` the granularity labels it may have (empty: any);
    ``nsd_tolerance_mm`` is the NSD tolerance in millimetres and ``nsd_definition`` what a surface
    is (``subvoxel``: area-weighted surfels, the publication's; ``voxel``: edge-voxel counts,
    MONAI's default; see ``harness.scoring.metrics``); ``accuracy_gate`` the fraction of
    the FP32 mean DSC an entry must reach to pass; ``max_float_mac_fraction`` is the share of an
    ONNX submission's weighted-op MACs that may keep float weights (e.g. an output head a
    quantizer leaves in floating point); ``time_limit_s`` the evaluation's limit and
    ``quantizer_timeout_s`` the wall-clock limit of a quantizer container run;
    ``bits_per_weight_budget`` the most effective bits per weight an artifact may store (None: the
    weight bits + 0.5); ``division`` ``closed`` (PTQ only) or ``open``; ``latency_threads`` the
    intra-op threads a real backend runs the entry and the FP32 reference on, for accuracy and
    for the latency protocol alike; ``latency_pairs`` and ``latency_burst`` the protocol's
    interleaved pairs and calls per side and pair (``harness.inference.latency``: fewer pairs
    time a large-patch network in minutes, for a wider interval); ``label_map`` (model label
    name, dataset label name) pairs by which predictions are relabelled when the two name their
    organs differently (see ``harness.track.labels``; empty: they must agree as they are);
    ``public_fraction`` the share of the test cases in the public split, ranked and shown per case
    during the phase (``harness.scoring.splits``; 1: no private split).
    """

    model_dir: Path
    dataset_dir: Path
    test_split: str = "test"
    calibration_split: str = "calibration"
    backend: str = "simulated"
    weight_bits: int | None = None
    activation_bits: int | None = None
    granularities: tuple[str, ...] = ()
    nsd_tolerance_mm: float = 2.0
    nsd_definition: str = DEFAULT_NSD_DEFINITION.value
    accuracy_gate: float = DEFAULT_ACCURACY_GATE
    seed: int = 0
    max_float_mac_fraction: float = 0.0
    time_limit_s: float = 1800.0
    quantizer_timeout_s: float = 3600.0
    bits_per_weight_budget: float | None = None
    division: str = "closed"
    latency_threads: int = 1
    latency_pairs: int = PROTOCOL_PAIRS
    latency_burst: int = PROTOCOL_BURST
    label_map: tuple[tuple[str, str], ...] = ()
    public_fraction: float = DEFAULT_PUBLIC_FRACTION

    def __post_init__(self) -> None:
        pairs = self.label_map.items() if isinstance(self.label_map, dict) else self.label_map
        pairs = tuple(tuple(pair) for pair in pairs)
        if not all(len(p) == 2 and all(isinstance(n, str) and n for n in p) for p in pairs):
            raise HarnessError("label_map must pair model label names with dataset label names")
        object.__setattr__(self, "label_map", pairs)
        if self.backend not in backend_names():
            known = ", ".join(backend_names())
            raise HarnessError(f"unknown backend {self.backend!r} (expected one of: {known})")
        object.__setattr__(self, "granularities", tuple(self.granularities))
        if not 0.0 <= self.max_float_mac_fraction <= 1.0:
            raise HarnessError("max_float_mac_fraction must lie in [0, 1]")
        if not 0.0 < self.accuracy_gate <= 1.0:
            raise HarnessError("accuracy_gate must be a fraction in (0, 1]")
        if not 0.0 < self.public_fraction <= 1.0:
            raise HarnessError("public_fraction must be a fraction in (0, 1]")
        if self.nsd_tolerance_mm <= 0:
            raise HarnessError("nsd_tolerance_mm must be positive")
        if self.nsd_definition not in tuple(NsdDefinition):
            known = ", ".join(d.value for d in NsdDefinition)
            raise HarnessError(
                f"unknown nsd_definition {self.nsd_definition!r} (expected one of: {known})"
            )
        object.__setattr__(self, "nsd_definition", NsdDefinition(self.nsd_definition).value)
        if self.time_limit_s <= 0:
            raise HarnessError("time_limit_s must be positive")
        if self.quantizer_timeout_s <= 0:
            raise HarnessError("quantizer_timeout_s must be positive")
        if self.bits_per_weight_budget is not None and self.bits_per_weight_budget <= 0:
            raise HarnessError("bits_per_weight_budget must be positive")
        if self.division not in DIVISIONS:
            raise HarnessError(f"division must be one of {', '.join(DIVISIONS)}")
        if self.latency_threads < 1:
            raise HarnessError("latency_threads must be at least 1")
        if self.latency_pairs < MIN_PAIRS or self.latency_burst < 1:
            raise HarnessError(
                f"the latency protocol needs at least {MIN_PAIRS} pairs of at least one call per "
                f"side, got {self.latency_pairs} pairs of {self.latency_burst}"
            )

    @property
    def latency_protocol(self) -> LatencyProtocol:
        """The paired latency protocol a real backend times entries under on this track."""
        return LatencyProtocol(
            threads=self.latency_threads, pairs=self.latency_pairs, burst=self.latency_burst
        )

    @property
    def budget(self) -> float | None:
        """The bits-per-weight budget in force (None: no weight limit, no budget)."""
        if self.bits_per_weight_budget is not None:
            return self.bits_per_weight_budget
        if self.weight_bits is None:
            return None
        return self.weight_bits + DEFAULT_BUDGET_MARGIN_BITS

    def to_dict(self) -> dict:
        data = asdict(self) | {"version": TRACK_SPEC_VERSION}
        return data | {
            "model_dir": str(self.model_dir),
            "dataset_dir": str(self.dataset_dir),
            "granularities": list(self.granularities),
            "label_map": dict(self.label_map),
        }

    @classmethod
    def from_json(cls, path: str | Path) -> TrackSpec:
        data = json.loads(Path(path).read_text())
        if data.pop("version", TRACK_SPEC_VERSION) not in READABLE_VERSIONS:
            raise HarnessError("unsupported track spec version")
        return cls(
            **data
            | {"model_dir": Path(data["model_dir"]), "dataset_dir": Path(data["dataset_dir"])}
        )


def graph_backend_refusal(backend: Backend) -> str | None:
    """Why a track of an ONNX-graph reference cannot run on ``backend`` (None: it can)."""
    if backend.scores("onnx"):
        return None
    return (
        f"an ONNX-graph reference model is evaluated on ONNX backends, not {backend.name} (the "
        "simulator quantizes torch networks)"
    )

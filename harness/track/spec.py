"""TrackSpec: the plain, versioned description of a track that the harness evaluates against."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

from harness.errors import HarnessError

TRACK_SPEC_VERSION = 1
Backend = Literal["simulated", "onnxruntime-cpu", "tensorrt"]


@dataclass(frozen=True)
class TrackSpec:
    """Reference model folder × dataset folder (+ its named splits) × precision × backend.

    ``weight_bits``/``activation_bits`` are the most a submission may use (None: no limit /
    weight-only); ``nsd_tolerance_mm`` is the NSD tolerance in millimetres;
    ``quantizer_timeout_s`` is the wall-clock limit of a quantizer container run;
    ``max_float_mac_fraction`` is the share of an ONNX submission's weighted-op MACs that may keep
    float weights (e.g. an output head a quantizer leaves in floating point).
    """

    model_dir: Path
    dataset_dir: Path
    test_split: str = "test"
    calibration_split: str = "calibration"
    backend: Backend = "simulated"
    weight_bits: int | None = None
    activation_bits: int | None = None
    nsd_tolerance_mm: float = 2.0
    seed: int = 0
    max_float_mac_fraction: float = 0.0
    quantizer_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.backend not in get_args(Backend):
            known = ", ".join(get_args(Backend))
            raise HarnessError(f"unknown backend {self.backend!r} (expected one of: {known})")
        if not 0.0 <= self.max_float_mac_fraction <= 1.0:
            raise HarnessError("max_float_mac_fraction must lie in [0, 1]")
        if self.nsd_tolerance_mm <= 0:
            raise HarnessError("nsd_tolerance_mm must be positive")
        if self.quantizer_timeout_s <= 0:
            raise HarnessError("quantizer_timeout_s must be positive")

    def to_dict(self) -> dict:
        data = asdict(self) | {"version": TRACK_SPEC_VERSION}
        return data | {"model_dir": str(self.model_dir), "dataset_dir": str(self.dataset_dir)}

    @classmethod
    def from_json(cls, path: str | Path) -> TrackSpec:
        data = json.loads(Path(path).read_text())
        if data.pop("version", TRACK_SPEC_VERSION) != TRACK_SPEC_VERSION:
            raise HarnessError("unsupported track spec version")
        return cls(
            **data
            | {"model_dir": Path(data["model_dir"]), "dataset_dir": Path(data["dataset_dir"])}
        )

"""An upload is read, parsed, hashed and verified once per evaluation, and the FP32 reference is
exported and hashed once per track: counted calls during one ``evaluate_submission``."""

from __future__ import annotations

import hashlib
import types
from collections import Counter
from pathlib import Path

import onnx
import pytest

from harness.artifacts.onnx import export, safety
from harness.artifacts.onnx.export import export_qdq, int8_model
from harness.entry.upload import Submission, evaluate_submission
from harness.track import loaded
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec


class Calls(Counter):
    """Calls counted by name."""

    def wrap(self, monkeypatch, owner, name: str, key: str | None = None) -> None:
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            self[key or name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


@pytest.fixture
def calls(monkeypatch, upload) -> Calls:
    """Counts of: the upload parsed (by the verifier, or by ``onnx.load`` of its path anywhere),
    its bytes hashed, the FP32 reference exported, and the FP32 weights hashed. The process-wide
    cache of FP32 exports is emptied first, so the track must export once."""
    counted = Calls()
    counted.wrap(monkeypatch, safety, "_parse", "upload parsed")
    for name in ("load", "load_model"):
        original = getattr(onnx, name)

        def load(path, *args, _original=original, **kwargs):
            if Path(str(path)).resolve() == upload.resolve():
                counted["upload parsed"] += 1
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(onnx, name, load)

    def sha256(data=b"", *args, **kwargs):
        if len(data) == upload.stat().st_size:
            counted["upload hashed"] += 1
        return hashlib.sha256(data, *args, **kwargs)

    monkeypatch.setattr(safety, "hashlib", types.SimpleNamespace(sha256=sha256))
    counted.wrap(monkeypatch, export, "export_fp32", "fp32 reference exported")
    counted.wrap(monkeypatch, loaded, "weights_sha256", "fp32 weights hashed")
    monkeypatch.setattr(export, "_REFERENCE_EXPORTS", {})
    return counted


@pytest.fixture
def ort_spec(tiny_track) -> TrackSpec:
    dataset, model = tiny_track
    return TrackSpec(
        model_dir=model,
        dataset_dir=dataset,
        backend="onnxruntime-cpu",
        weight_bits=8,
        activation_bits=8,
    )


@pytest.fixture
def upload(tmp_path, ort_spec) -> Path:
    """The harness's standard INT8 export of the tiny track's model, as a participant uploads it."""
    track = LoadedTrack.open(ort_spec)
    model = int8_model(track.model, track.calibration)
    return export_qdq(model, track.model_spec, track.calibration, tmp_path / "model.onnx")


def test_an_onnx_upload_is_parsed_hashed_and_matched_against_one_fp32_export_once(
    ort_spec, upload, calls
):
    track = LoadedTrack.open(ort_spec)
    result = evaluate_submission(track, Submission("onnx", onnx=upload)).result
    assert result["submission"]["precision"]["reference_network"] == "matched"
    assert result["efficiency"]["kernels"]["macs_per_sample"] > 0  # the kernel report ran
    assert dict(calls) == {
        "upload parsed": 1,
        "upload hashed": 1,
        "fp32 reference exported": 1,
        "fp32 weights hashed": 1,
    }

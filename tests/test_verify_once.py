"""An upload is read, parsed, hashed and verified once per evaluation, and the FP32 reference is
exported and hashed once per track: counted calls during one ``evaluate_submission``."""

from __future__ import annotations

import hashlib
import types
from collections import Counter
from pathlib import Path

import onnx
import pytest

from harness.artifacts.checkpoint import storage
from harness.artifacts.checkpoint.save import save_checkpoint
from harness.artifacts.onnx import export, safety
from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.entry.upload import Submission, evaluate_submission
from harness.track import loaded
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec
from reference_methods.methods import quantize_with
from reference_methods.simulator.scheme import QuantConfig


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
    counted.wrap(monkeypatch, safety, "parse_model", "upload parsed")
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


@pytest.fixture
def checkpoint(tmp_path, tiny_track) -> tuple[TrackSpec, Path]:
    """A simulated W8A8 track of the tiny model and an RTN checkpoint of it."""
    dataset, model = tiny_track
    spec = TrackSpec(model_dir=model, dataset_dir=dataset, weight_bits=8, activation_bits=8)
    track = LoadedTrack.open(spec)
    rtn = quantize_with("rtn", track.model, QuantConfig(8, 8, "per-channel"), track.calibration)
    return spec, save_checkpoint(rtn, tmp_path / "checkpoint")


def test_a_checkpoint_upload_is_read_and_hashed_once_and_needs_no_fp32_export(
    monkeypatch, checkpoint
):
    spec, path = checkpoint
    calls = Calls()
    calls.wrap(monkeypatch, storage, "_read_tensors", "upload read")
    sha256 = hashlib.sha256

    def counted_sha256(data=b"", *args, **kwargs):
        calls["upload hashed"] += 1
        return sha256(data, *args, **kwargs)

    monkeypatch.setattr(storage, "hashlib", types.SimpleNamespace(sha256=counted_sha256))
    calls.wrap(monkeypatch, export, "export_fp32", "fp32 reference exported")
    calls.wrap(monkeypatch, loaded, "weights_sha256", "fp32 weights hashed")
    track = LoadedTrack.open(spec)
    result = evaluate_submission(track, Submission("checkpoint", checkpoint=path)).result
    assert result["submission"]["precision"]["artifact_sha256"]
    # the simulator scores the checkpoint itself: no FP32 ONNX export is needed on its tracks
    assert dict(calls) == {"upload read": 1, "upload hashed": 1, "fp32 weights hashed": 1}

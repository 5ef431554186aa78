"""What the board shows means what its label says: effective bits per weight read from the
artifact and held to the track's budget, the track's own network, post-training quantization only
on a closed track. Each rejection asserts its specific message."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from leaderboard_fixtures import site_storage
from rest_framework.test import APIClient

from harness.artifacts.checkpoint.describe import describe_checkpoint
from harness.artifacts.checkpoint.save import save_checkpoint
from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.artifacts.post_training import REACH_STEPS, reach_in_steps
from harness.cli import main
from harness.demo import write_demo
from harness.entry.upload import Submission, evaluate_submission
from harness.errors import SubmissionError
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec
from reference_methods.methods import quantize_with
from reference_methods.simulator.scheme import QuantConfig

__all__ = ["site_storage"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    write_demo(root, progress=False)
    return root


@pytest.fixture(scope="module")
def tiny(tiny_track) -> LoadedTrack:
    dataset, model = tiny_track
    return LoadedTrack.open(TrackSpec(model_dir=model, dataset_dir=dataset, weight_bits=8))


def _on(track: LoadedTrack, **changes) -> LoadedTrack:
    """The same loaded track under other settings."""
    return LoadedTrack(replace(track.spec, **changes), track.dataset, track.model_spec, track.model)


def _checkpoint(model, path: Path) -> Path:
    return save_checkpoint(model, path)


def _fine_tuned(model: torch.nn.Module, steps: int = 20) -> torch.nn.Module:
    """``model`` trained a few Adam steps on a random target: every parameter moves."""
    tuned = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(tuned.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 16, 16, 16, generator=generator)
    target = torch.randint(0, 6, (2, 16, 16, 16), generator=generator)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(tuned(x), target).backward()
        optimizer.step()
    return tuned.eval()


# --- effective bits per weight and the budget ----------------------------------------------------


def test_bits_per_weight_count_every_stored_part_of_the_quantized_weights(tiny, tmp_path):
    model = quantize_with("rtn", tiny.model, QuantConfig.from_scheme("w4a16-per-channel"), [])
    summary = describe_checkpoint(_checkpoint(model, tmp_path))
    parts = summary["size_breakdown_bytes"]
    stored = 8 * (parts["weight_codes"] + parts["weight_scales"] + parts["weight_zero_points"])
    assert summary["bits_per_weight"] == pytest.approx(stored / summary["quantized_weights"])
    assert 4 < summary["bits_per_weight"] < 4.5  # 4-bit codes + one float32 scale per channel


def test_per_weight_group_ids_exceed_the_budget_and_are_rejected_with_both_numbers(tiny, tmp_path):
    scheme = QuantConfig.from_scheme("w2a16-per-channel")
    track = _on(tiny, weight_bits=2)
    options = {"scope": "layer", "groups": 4}
    per_weight = quantize_with("permutation-comq", tiny.model, scheme, track.calibration, options)
    ckpt = _checkpoint(per_weight, tmp_path / "layer")
    bpw = describe_checkpoint(ckpt)["bits_per_weight"]
    with pytest.raises(SubmissionError) as raised:
        evaluate_submission(track, Submission("checkpoint", checkpoint=ckpt))
    message = str(raised.value)
    assert f"stores {bpw:.2f} effective bits per weight" in message
    assert "this track's budget is 2.50 bits per weight" in message

    column = quantize_with("permutation-comq", tiny.model, scheme, track.calibration)
    result = evaluate_submission(
        track, Submission("checkpoint", checkpoint=_checkpoint(column, tmp_path / "column"))
    ).result
    assert result["submission"]["precision"]["bits_per_weight"] <= 2.5


def test_a_raised_budget_admits_what_the_default_refuses(tiny, tmp_path):
    scheme = QuantConfig.from_scheme("w2a16-per-channel")
    options = {"scope": "layer", "groups": 4}
    model = quantize_with("permutation-comq", tiny.model, scheme, tiny.calibration, options)
    ckpt = _checkpoint(model, tmp_path)
    track = _on(tiny, weight_bits=2, bits_per_weight_budget=8.0)
    result = evaluate_submission(track, Submission("checkpoint", checkpoint=ckpt)).result
    assert result["submission"]["precision"]["bits_per_weight"] > 2.5


def test_onnx_bits_per_weight_count_codes_scales_and_zero_points(tiny, tmp_path):
    track = _on(tiny, backend="onnxruntime-cpu", activation_bits=8)
    model = int8_model(track.model, track.calibration)
    path = export_qdq(model, track.model_spec, track.calibration, tmp_path / "int8.onnx")
    result = evaluate_submission(track, Submission("onnx", onnx=path)).result
    precision = result["submission"]["precision"]
    layers = [layer for layer in precision["layers"] if layer["weight_granularity"] != "none"]
    assert precision["bits_per_weight"] == pytest.approx(
        sum(layer["stored_bits"] for layer in layers) / sum(layer["weights"] for layer in layers)
    )
    assert (
        8 < precision["bits_per_weight"] < 8.5
    )  # int8 codes + float32 scale, int8 zero per channel
    assert precision["reference_network"] == "matched"


# --- the track's own network -------------------------------------------------------------------


def test_demo_unet_int8_onnx_on_the_unetr_track_is_not_the_reference_network(
    demo, tmp_path, capsys
):
    common = ["--dataset", str(demo / "dataset"), "--quiet"]
    unet_onnx = tmp_path / "unet_int8.onnx"
    export = ["export-onnx", *common, "--model", str(demo / "models/unet"), "--int8"]
    assert main([*export, "--out", str(unet_onnx)]) == 0
    capsys.readouterr()
    evaluate = ["evaluate", *common, "--model", str(demo / "models/unetr")]
    args = ["--backend", "onnxruntime-cpu", "--onnx", str(unet_onnx), "--weight-bits", "8"]
    assert (
        main([*evaluate, *args, "--activation-bits", "8", "--out", str(tmp_path / "r.json")]) == 2
    )
    error = capsys.readouterr().err
    assert "the network is not the track's reference" in error
    assert not (tmp_path / "r.json").exists()


@pytest.mark.django_db
def test_demo_unet_int8_onnx_submitted_by_the_api_to_the_unetr_track_is_rejected(
    demo, tmp_path, site_storage, django_user_model
):
    from leaderboard.accounts.models import ApiToken
    from leaderboard.submissions import pipeline
    from leaderboard.submissions.models import Evaluation, Status, Submission
    from leaderboard.tracks.seeding import create_track, import_dataset, import_model

    dataset = import_dataset(demo / "dataset", slug="phantom")
    unetr = import_model(demo / "models/unetr")
    track = create_track(
        dataset, unetr, weight_bits=8, activation_bits=8, backend="onnxruntime-cpu"
    )
    unet = LoadedTrack.open(TrackSpec(model_dir=demo / "models/unet", dataset_dir=demo / "dataset"))
    int8 = export_qdq(
        int8_model(unet.model, unet.calibration),
        unet.model_spec,
        unet.calibration,
        tmp_path / "unet_int8.onnx",
    )
    user = django_user_model.objects.create_user("mallory", password="pw-mallory-1")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(user, 'test')[1]}")
    data = {
        "track": track.slug,
        "kind": "onnx",
        "method": "UNet as UNETR",
        "artifact": SimpleUploadedFile("model.onnx", int8.read_bytes()),
    }
    response = client.post("/api/v1/submissions/", data, format="multipart")
    assert response.status_code == 201, response.json()

    assert pipeline.run(response.json()["id"]) == Status.REJECTED

    submission = Submission.objects.get(pk=response.json()["id"])
    assert "the network is not the track's reference" in submission.error
    assert not Evaluation.objects.filter(submission=submission).exists()
    status = client.get(f"/api/v1/submissions/{submission.pk}/").json()
    assert status["status"] == "rejected" and "not the track's reference" in status["error"]


def test_an_onnx_file_with_other_layer_shapes_names_the_first_differing_layer(tiny, tmp_path):
    from harness.models.reference import ModelSpec

    data = _spec_dict(tiny)
    spec = ModelSpec.from_dict(data | {"kwargs": data["kwargs"] | {"channels": [4, 12]}})
    other = spec.build().eval()
    calibration = tiny.calibration
    path = export_qdq(int8_model(other, calibration), spec, calibration, tmp_path / "o.onnx")
    track = _on(tiny, backend="onnxruntime-cpu", activation_bits=8)
    with pytest.raises(
        SubmissionError, match=r"weighted layer \d+ \(node '.*', depth \d+\) is Conv"
    ):
        evaluate_submission(track, Submission("onnx", onnx=path))


def _spec_dict(track: LoadedTrack) -> dict:
    import json

    return json.loads((Path(track.spec.model_dir) / "model.json").read_text())


# --- post-training only ------------------------------------------------------------------------


def test_every_reference_method_stays_within_the_quantizers_reach(tiny, tmp_path):
    for method, scheme, options in [
        ("rtn", "w4a4-per-channel", {}),
        ("gptq", "w2a16-per-channel", {}),
        ("comq", "w2a16-per-channel", {}),
        ("permutation-comq", "w4a16-per-channel", {}),
        ("smoothquant", "w8a8-per-tensor", {}),
        ("rotation", "w4a4-per-tensor", {}),
        ("svd", "w4a16-per-channel", {"rank": 1}),
    ]:
        config = QuantConfig.from_scheme(scheme)
        model = quantize_with(method, tiny.model, config, tiny.calibration, options)
        ckpt = _checkpoint(model, tmp_path / method)
        bits = config.weight_bits
        track = _on(tiny, weight_bits=bits, bits_per_weight_budget=64.0)
        result = evaluate_submission(track, Submission("checkpoint", checkpoint=ckpt)).result
        assert result["submission"]["precision"]["division"] == "closed", method
        loaded = track.backend.open(ckpt, track.checks()).network
        assert max(reach_in_steps(loaded, track.model).values()) < REACH_STEPS / 2, method


def test_a_fine_tuned_checkpoint_is_rejected_on_a_closed_track_and_accepted_on_an_open_one(
    tiny, tmp_path
):
    tuned = quantize_with(
        "rtn",
        _fine_tuned(tiny.model),
        QuantConfig.from_scheme("w8a8-per-channel"),
        tiny.calibration,
    )
    ckpt = _checkpoint(tuned, tmp_path)
    with pytest.raises(
        SubmissionError, match=r"quantization steps \(RMS\) from the FP32 reference"
    ):
        evaluate_submission(tiny, Submission("checkpoint", checkpoint=ckpt))
    result = evaluate_submission(
        _on(tiny, division="open"), Submission("checkpoint", checkpoint=ckpt)
    ).result
    assert result["submission"]["precision"]["division"] == "open"


def test_a_changed_bias_is_rejected_on_a_closed_track_naming_the_parameter(tiny, tmp_path):
    model = quantize_with(
        "rtn", tiny.model, QuantConfig.from_scheme("w8a8-per-channel"), tiny.calibration
    )
    name, bias = next((k, v) for k, v in model.state_dict().items() if k.endswith(".bias"))
    with torch.no_grad():
        bias.add_(0.05)
    ckpt = _checkpoint(model, tmp_path)
    with pytest.raises(SubmissionError, match=rf"parameter '{name}' differs from the FP32"):
        evaluate_submission(tiny, Submission("checkpoint", checkpoint=ckpt))


def test_a_fine_tuned_onnx_is_rejected_on_a_closed_track_and_accepted_on_an_open_one(
    tiny, tmp_path
):
    track = _on(tiny, backend="onnxruntime-cpu", activation_bits=8)
    tuned = _fine_tuned(track.model)
    path = export_qdq(
        int8_model(tuned, track.calibration),
        track.model_spec,
        track.calibration,
        tmp_path / "t.onnx",
    )
    with pytest.raises(SubmissionError, match=r"quantization steps \(RMS\) from the FP32"):
        evaluate_submission(track, Submission("onnx", onnx=path))
    result = evaluate_submission(_on(track, division="open"), Submission("onnx", onnx=path)).result
    assert result["submission"]["precision"]["division"] == "open"

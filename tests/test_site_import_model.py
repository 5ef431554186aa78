"""The site takes real model folders through the harness's importer: ``manage.py import_model``
registers an nnU-Net v2 folder or a MONAI bundle, and the demo seed creates the imported models'
tracks through it, whose FP32 row and baselines the worker computes."""

from __future__ import annotations

import pytest
import torch
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse
from leaderboard_fixtures import site_storage
from test_import_nnunet import write_folder

from harness.demo import write_demo
from harness.errors import HarnessError
from leaderboard.submissions import pipeline
from leaderboard.submissions.models import Kind, Status, Submission
from leaderboard.tracks.models import ReferenceModel, Track

__all__ = ["site_storage"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    write_demo(root, progress=False)
    return root


def test_import_model_command_registers_an_nnunet_folder(db, tmp_path):
    folder = write_folder(tmp_path / "Dataset042_Phantom")
    call_command("import_model", str(folder), "--slug", "phantom-nnunet",
                 "--out", str(tmp_path / "model"))  # fmt: skip
    model = ReferenceModel.objects.get(slug="phantom-nnunet")
    assert (model.architecture, model.family) == ("nnUNet", "cnn")
    assert set(model.files()) == {"model.json", "model.safetensors"}


def test_import_model_command_reports_what_is_wrong_with_the_folder(db, tmp_path):
    folder = write_folder(tmp_path / "nnunet")
    (folder / "fold_0" / "checkpoint_final.pth").unlink()
    with pytest.raises(CommandError, match="missing checkpoint .*checkpoint_final.pth"):
        call_command("import_model", str(folder), "--out", str(tmp_path / "model"))
    assert not ReferenceModel.objects.exists()


def test_demo_seed_imports_the_nnunet_folder_and_bundle_and_their_boards_fill(
    db, demo, site_storage, client
):
    assert {p.name for p in (demo / "sources").iterdir()} == {
        "nnunet_phantom",
        "monai_bundle_unet",
        "onnx_graph_segresnet",
    }
    call_command("seed_demo", "--demo", str(demo))

    imported = {m.architecture: m for m in ReferenceModel.objects.filter(
        directory__startswith=str(demo / "imported"))}  # fmt: skip
    assert set(imported) == {"nnUNet", "UNet", "ONNX"}
    graph = imported.pop("ONNX")
    for model in imported.values():
        tracks = Track.objects.filter(reference_model=model)
        assert sorted((t.weight_bits, t.activation_bits) for t in tracks) == [(4, 4), (8, 8)]
    graph_tracks = Track.objects.filter(reference_model=graph)
    assert {(t.backend, t.weight_bits, t.activation_bits) for t in graph_tracks} == {
        ("onnxruntime-cpu", 8, 8), ("openvino-cpu", 8, 8)}  # fmt: skip
    ort = graph_tracks.get(backend="onnxruntime-cpu")
    rows = [Submission.objects.get(track=ort, kind=Kind.FP32),
            Submission.objects.get(track=ort, scheme="int8-qdq")]  # fmt: skip
    for row in rows:
        assert pipeline.run(row.pk) == Status.DONE
        row.refresh_from_db()
    assert rows[0].evaluation.mean_dsc > 0.5  # the shipped SegResNet's graph, trained
    assert abs(rows[1].evaluation.mean_dsc - rows[0].evaluation.mean_dsc) < 0.05

    track = Track.objects.get(reference_model=imported["nnUNet"], weight_bits=8)
    fp32 = Submission.objects.get(track=track, kind=Kind.FP32)
    rtn = Submission.objects.get(track=track, reference_method="rtn", scheme="w8a8-per-channel")
    for submission in (fp32, rtn):
        assert pipeline.run(submission.pk) == Status.DONE
    fp32.refresh_from_db(), rtn.refresh_from_db()
    assert fp32.evaluation.mean_dsc > 0.5  # the shipped nnU-Net is trained, not random
    assert abs(rtn.evaluation.mean_dsc - fp32.evaluation.mean_dsc) < 0.05

    page = client.get(reverse("track", args=[track.slug])).content.decode()
    assert f"{fp32.evaluation.mean_dsc:.4f}" in page and f"{rtn.evaluation.mean_dsc:.4f}" in page


def test_an_imported_onnx_graph_gets_onnx_backend_tracks_whose_rows_compute(
    db, tmp_path, site_storage, client
):
    from test_import_onnx import GatedNet, write_source

    from harness.data.demo import make_phantoms
    from leaderboard.tracks.seeding import create_track, import_dataset, queue_track_rows

    torch.manual_seed(3)
    source = write_source(tmp_path / "gated", GatedNet())
    call_command("import_model", str(source), "--slug", "gated", "--out", str(tmp_path / "model"))
    model = ReferenceModel.objects.get(slug="gated")
    assert (model.architecture, model.family) == ("ONNX", "cnn")
    assert set(model.files()) == {"model.json", "model.onnx"}
    dataset = import_dataset(make_phantoms(tmp_path / "dataset", cases=4, seed=1))

    with pytest.raises(HarnessError, match="evaluated on ONNX backends, not simulated"):
        create_track(dataset, model, weight_bits=8, activation_bits=8)
    assert not Track.objects.exists()
    track = create_track(dataset, model, weight_bits=8, activation_bits=8,
                         backend="onnxruntime-cpu")  # fmt: skip
    track.backend = "simulated"
    with pytest.raises(ValidationError, match="evaluated on ONNX backends"):
        track.full_clean()
    track.refresh_from_db()

    rows = queue_track_rows(track)
    assert [(r.kind, r.scheme) for r in rows] == [(Kind.FP32, "fp32"), (Kind.SCHEME, "int8-qdq")]
    for row in rows:
        assert pipeline.run(row.pk) == Status.DONE
        row.refresh_from_db()
    fp32, int8 = (row.evaluation for row in rows)
    assert int8.weight_bits == 8 and fp32.weight_bits == 32
    page = client.get(reverse("track", args=[track.slug])).content.decode()
    assert f"{fp32.mean_dsc:.4f}" in page and f"{int8.mean_dsc:.4f}" in page

"""Reproduction: a track's calibration bundle is a ready MSD dataset folder without labels or
test cases; a baseline's page gives the ``harness quantize`` command and harness version that
made it, and re-running that command offline on the downloaded bundle and FP32 model gives the
artifact digest the baseline was scored with (RTN, GPTQ, COMQ); baseline artifacts download."""

import hashlib
import html
import io
import json
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from django.urls import reverse
from leaderboard_fixtures import site_storage, tiny_tracks

from harness import __version__
from harness.data.dataset import load_dataset
from leaderboard.submissions import pipeline
from leaderboard.submissions.models import Submission
from leaderboard.tracks.seeding import queue_baselines

__all__ = ["site_storage", "tiny_tracks"]
HARNESS = Path(sys.executable).with_name("harness")


def test_calibration_bundle_is_an_msd_folder_of_the_calibration_images_only(client, tiny_tracks):
    track = tiny_tracks["w4a4"]
    response = client.get(reverse("calibration-bundle", args=[track.slug]))
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    data = b"".join(response.streaming_content)
    archive = zipfile.ZipFile(io.BytesIO(data))
    dataset = load_dataset(track.dataset.path)
    calibration = [c.case_id for c in dataset.split("calibration")]
    folder = f"{track.slug}-calibration"
    assert sorted(archive.namelist()) == sorted(
        [f"{folder}/dataset.json", f"{folder}/splits.json"]
        + [f"{folder}/imagesTr/{c}.nii.gz" for c in calibration]
    )
    meta = json.loads(archive.read(f"{folder}/dataset.json"))
    assert all("label" not in entry for entry in meta["training"])
    assert json.loads(archive.read(f"{folder}/splits.json")) == {
        "train": [], "calibration": calibration, "test": []
    }  # fmt: skip
    for case in dataset.split("calibration"):
        assert (
            archive.read(f"{folder}/imagesTr/{case.case_id}.nii.gz") == case.images[0].read_bytes()
        )
    again = b"".join(client.get(reverse("calibration-bundle", args=[track.slug])).streaming_content)
    assert again == data  # deterministic


@pytest.mark.parametrize("method", ["rtn", "gptq", "comq"])
def test_rerunning_a_baselines_command_offline_gives_its_artifact_digest(
    client, tiny_tracks, tmp_path, method
):
    track = tiny_tracks["w4a4"]
    queue_baselines(track)
    baseline = Submission.objects.get(track=track, reference_method=method,
                                      scheme="w4a4-per-channel")  # fmt: skip
    pipeline.run(baseline.pk)
    baseline.refresh_from_db()
    digest = baseline.evaluation.artifact_digest
    page = client.get(reverse("submission", args=[baseline.pk])).content.decode()
    start = page.index('<pre id="quantize-command">') + len('<pre id="quantize-command">')
    command = html.unescape(page[start : page.index("</pre>", start)])
    assert f"harness {__version__} made it" in page and digest in page
    assert f"--method {method}" in command

    # offline: only what the site hands out
    bundle = client.get(reverse("calibration-bundle", args=[track.slug]))
    zipfile.ZipFile(io.BytesIO(b"".join(bundle.streaming_content))).extractall(tmp_path)
    (tmp_path / "model").mkdir()
    for name in ("model.json", "model.safetensors"):
        response = client.get(reverse("model-file", args=[track.slug, name]))
        (tmp_path / "model" / name).write_bytes(b"".join(response.streaming_content))
    argv = shlex.split(command)
    assert argv[0] == "harness"
    # as printed: at the machine's default thread count, not the one the worker ran at
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    done = subprocess.run([str(HARNESS), *argv[1:]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    weights = (tmp_path / "checkpoint" / "weights.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == digest

    artifact = client.get(reverse("baseline-artifact", args=[baseline.pk]))
    stored = zipfile.ZipFile(io.BytesIO(b"".join(artifact.streaming_content)))
    assert hashlib.sha256(stored.read("weights.safetensors")).hexdigest() == digest

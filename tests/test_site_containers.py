"""Quantizer containers through the site on a real Docker engine: an uploaded ``docker save``
tarball is pinned, run sandboxed, and its output verified and scored like an upload, stage by
stage; a hostile one ends ``rejected`` with its specific message for the submitter; no container
or volume is left; container workers clear their orphans when they start."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from container_images.images import example_quantizer_image, script_image
from container_images.python_base import python_base_image
from django.core.exceptions import ValidationError
from django.core.files.base import File
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from leaderboard_fixtures import site_storage, tiny_tracks
from leaderboard_services import ROOT, wait_for
from rest_framework.test import APIClient
from test_container_images import registry

from harness.containers.sandbox import LABEL, WORKER_LABEL
from leaderboard.submissions import pipeline
from leaderboard.submissions.curation import reevaluate
from leaderboard.submissions.intake import accept, accepted_kinds
from leaderboard.submissions.models import FINISHED, Evaluation, Kind, Status
from leaderboard.submissions.tasks import evaluate, queue_for, time_limit_s

__all__ = ["registry", "site_storage", "tiny_tracks"]
pytestmark = [pytest.mark.slow, pytest.mark.docker]
LIMITS = {"cpus": 1.0, "memory_bytes": 2 << 30}


@pytest.fixture(scope="module")
def helper_image(docker_client) -> str:
    return python_base_image(docker_client)


@pytest.fixture(scope="module")
def images(docker_client) -> dict[str, str]:
    """Image IDs of the example quantizer and of quantizers that try to reach the network or
    sleep past their time limit."""
    return {
        "example": example_quantizer_image(docker_client),
        "network": script_image(docker_client, "network"),
        "sleeper": script_image(docker_client, "sleeper"),
    }


@pytest.fixture(scope="module")
def tarballs(docker_client, images, tmp_path_factory) -> Iterator[dict[str, Path]]:
    """``docker save`` tarballs of ``images``, as a participant makes them; removed after the
    module (the example's is over a gigabyte)."""
    root = tmp_path_factory.mktemp("tarballs")
    paths = {}
    for name, image_id in images.items():
        paths[name] = root / f"{name}.tar"
        with paths[name].open("wb") as out:
            for chunk in docker_client.images.get(image_id).save(named=True):
                out.write(chunk)
    yield paths
    shutil.rmtree(root)


@pytest.fixture
def container_site(settings, tiny_tracks, helper_image):
    """Container workers enabled, with the offline helper image and limits this machine has."""
    settings.MEDQUANT_CONTAINERS = True
    settings.MEDQUANT_CONTAINER_HELPER_IMAGE = helper_image
    settings.MEDQUANT_CONTAINER_LIMITS = LIMITS
    return tiny_tracks


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture(autouse=True)
def nothing_left_behind(request):
    """After every test using Docker: no harness-labelled container or volume remains."""
    yield
    if "docker_client" not in request.fixturenames:
        return
    client = request.getfixturevalue("docker_client")
    left = client.containers.list(all=True, filters={"label": LABEL})
    assert [(c.name, c.status, c.labels) for c in left] == []
    assert client.volumes.list(filters={"label": LABEL}) == []


def submit_tarball(user, track, path: Path, method: str):
    with path.open("rb") as handle:
        return accept(
            user,
            track=track,
            kind=Kind.CONTAINER,
            method=method,
            archive=File(handle, name="quantizer.tar"),
        )


def test_container_submission_goes_through_every_stage_to_a_ranked_evaluation(
    docker_client, container_site, images, tarballs, alice, client
):
    track = container_site["w8a8"]
    submission = submit_tarball(alice, track, tarballs["example"], "RTN in a container")
    assert queue_for(submission) == "containers"
    assert time_limit_s(submission) == track.time_limit_s + track.quantizer_timeout_s

    assert pipeline.run(submission.pk, worker="test-worker") == Status.DONE

    submission.refresh_from_db()
    stamps = [submission.created_at, submission.validating_at, submission.running_at]
    stamps += [submission.scoring_at, submission.finished_at]
    assert all(stamps) and stamps == sorted(stamps)
    image_id = images["example"]
    assert submission.image_digest == image_id
    assert submission.error == ""
    assert "rtn w8a8-per-channel" in submission.container_log
    assert f"quantizer image pinned: {image_id} (archive)" in submission.log
    assert "quantizer container succeeded" in submission.log
    evaluation = Evaluation.objects.get(submission=submission)
    assert evaluation.rank_all == 1
    assert (evaluation.weight_bits, evaluation.activation_bits) == (8, 8)
    assert evaluation.granularity == "per-channel"
    result = evaluation.result
    assert result["submission"]["kind"] == "checkpoint"
    assert result["submission"]["container"]["image"] == image_id
    assert result["submission"]["container"]["source"] == "archive"
    assert result["timings"]["container"] == result["submission"]["container"]["seconds"] > 0

    client.force_login(alice)
    page = client.get(reverse("submission", args=[submission.pk])).content.decode()
    assert f'<code id="image-digest">{image_id}</code>' in page
    assert 'id="container-log"' in page and "rtn w8a8-per-channel" in page
    body = APIClient().get(f"/api/v1/submissions/{submission.pk}/").json()
    assert (body["status"], body["image_digest"], body["kind"]) == ("done", image_id, "container")
    board = APIClient().get(f"/api/v1/tracks/{track.slug}/leaderboard/").json()
    assert board["results"][0]["submission"] == submission.pk


def test_a_container_is_run_again_on_resampled_calibration_sets_for_its_spread(
    docker_client, container_site, tarballs, alice, tmp_path
):
    from harness.data.demo import make_phantoms
    from leaderboard.tracks.seeding import create_track, import_dataset

    pool = import_dataset(make_phantoms(tmp_path / "pool", cases=14, seed=3), slug="pool")
    model = container_site["w8a8"].reference_model
    track = create_track(pool, model, weight_bits=8, activation_bits=8,
                         bits_per_weight_budget=9.0, calibration_resamples=2)  # fmt: skip
    submission = submit_tarball(alice, track, tarballs["example"], "RTN in a container")
    assert pipeline.run(submission.pk, worker="test-worker") == Status.DONE

    evaluation = Evaluation.objects.get(submission=submission)
    spread = evaluation.result["summary"]["calibration"]
    pool_ids = {case for case in evaluation.result["track"]["calibration_cases"]}
    assert len(pool_ids) == 2 and spread["resamples"] == 2 and spread["failed"] == 0
    assert len(spread["mean_dsc"]) == 2 and spread["sd"] is not None
    assert evaluation.calibration_sd == spread["sd"]
    resampled = [tuple(sorted(ids)) for ids in spread["calibration_cases"]]
    assert len(set(resampled)) == 2 and all(set(ids) <= pool_ids for ids in resampled)


def test_hostile_container_is_rejected_with_its_specific_message_for_the_submitter(
    docker_client, container_site, tarballs, alice, client
):
    track = container_site["w8a8"]
    submission = submit_tarball(alice, track, tarballs["network"], "phones home")

    assert evaluate.run(submission_id=submission.pk) == Status.REJECTED

    submission.refresh_from_db()
    assert submission.status == Status.REJECTED
    assert submission.error.startswith("the quantizer exited with status 1: ")
    assert "Network is unreachable" in submission.error
    assert "Traceback" in submission.container_log
    assert submission.image_digest.startswith("sha256:")
    assert submission.running_at is not None and submission.scoring_at is None
    assert not Evaluation.objects.filter(submission=submission).exists()
    client.force_login(alice)
    page = client.get(reverse("submission", args=[submission.pk])).content.decode()
    assert "Network is unreachable" in page and 'id="container-log"' in page
    assert client.get(reverse("submission-status", args=[submission.pk])).json()["error"] == (
        submission.error
    )


def test_quantizer_past_the_tracks_time_limit_is_stopped_and_rejected(
    docker_client, container_site, tarballs, alice
):
    track = container_site["w8a8"]
    track.quantizer_timeout_s = 3
    track.save()
    submission = submit_tarball(alice, track, tarballs["sleeper"], "sleeps")

    assert evaluate.run(submission_id=submission.pk) == Status.REJECTED

    submission.refresh_from_db()
    assert submission.error == (
        "the quantizer did not finish within the time limit of 3 s and was stopped"
    )
    assert "quantizer container timed_out after " in submission.log


def test_an_archive_docker_cannot_use_is_rejected_on_the_worker(
    docker_client, container_site, alice, tmp_path
):
    """Passes the upload check (a tar with a manifest.json) but names layers it lacks."""
    path = tmp_path / "q.tar"
    with tarfile.open(path, "w") as tar:
        manifest = tmp_path / "manifest.json"
        manifest.write_text('[{"Config": "c.json", "Layers": ["l/layer.tar"]}]')
        tar.add(manifest, "manifest.json")
    submission = submit_tarball(alice, container_site["w8a8"], path, "broken")

    assert pipeline.run(submission.pk) == Status.REJECTED

    submission.refresh_from_db()
    assert submission.error == "image archive manifest.json names 'c.json', which is not in it"
    assert submission.image_digest == "" and submission.running_at is None


def _push_tiny_image(client, repository: str, content: bytes) -> str:
    """Push a one-file image (no command) as ``repository:v1``; return its image ID."""
    rootfs = io.BytesIO()
    with tarfile.open(fileobj=rootfs, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    client.api.import_image_from_data(rootfs.getvalue(), repository=repository, tag="v1")
    client.images.push(repository, "v1")
    return client.images.get(f"{repository}:v1").id


def test_registry_image_is_pinned_by_digest_and_re_evaluated_by_that_digest(
    docker_client, container_site, registry, settings, alice
):
    settings.MEDQUANT_CONTAINER_REGISTRY = registry
    repository = f"{registry}/team/quantizer"
    first = _push_tiny_image(docker_client, repository, uuid.uuid4().bytes)
    submission = accept(
        alice, track=container_site["w8a8"], kind="container", method="q", image=f"{repository}:v1"
    )
    try:
        assert pipeline.run(submission.pk) == Status.REJECTED
        submission.refresh_from_db()
        assert submission.error.startswith("the quantizer image could not be started: ")
        digest = submission.image_digest
        assert docker_client.images.get(f"{repository}@{digest}").id == first
        assert f"quantizer image pinned: {digest} (registry)" in submission.log

        _push_tiny_image(docker_client, repository, uuid.uuid4().bytes)  # v1 moves on
        reevaluate([submission])
        assert pipeline.run(submission.pk) == Status.REJECTED
        submission.refresh_from_db()
        assert submission.image_digest == digest
        assert f"quantizer image pinned: {digest} (registry)" in submission.log
    finally:
        for image in docker_client.images.list(name=repository):
            docker_client.images.remove(image.id, force=True)


def test_container_kind_is_offered_only_where_container_workers_run(settings, tiny_tracks, client):
    track = tiny_tracks["w8a8"]
    settings.MEDQUANT_CONTAINERS = False
    assert Kind.CONTAINER not in accepted_kinds(track)
    assert (
        'id="container-format"'
        not in client.get(reverse("track", args=[track.slug])).content.decode()
    )
    settings.MEDQUANT_CONTAINERS = True
    assert accepted_kinds(track) == (Kind.CHECKPOINT, Kind.CONTAINER)
    page = client.get(reverse("track", args=[track.slug])).content.decode()
    assert 'id="container-format"' in page and f"for at most {track.quantizer_timeout_s} s" in page


@pytest.mark.parametrize(
    ("upload", "image", "field", "message"),
    [
        (None, "", "artifact", "upload the quantizer image as a tarball"),
        (("q.tar", b""), "", "artifact", "The submitted file is empty."),
        (("q.tar.gz", b"\x1f\x8b" + b"\0" * 600), "", "artifact", "not an uncompressed tar"),
        (("q.tar", b"\0" * 1024), "", "artifact", "has no manifest.json"),
        (None, "registry.example.org/q:v1", "image", "no container registry is configured"),
    ],
)
def test_api_refuses_a_bad_container_upload_with_a_field_error(
    settings, tiny_tracks, alice, upload, image, field, message
):
    settings.MEDQUANT_CONTAINERS = True
    api = APIClient()
    api.force_login(alice)  # a real session: bodies are judged before DRF authenticates
    data = {"track": tiny_tracks["w8a8"].slug, "kind": "container", "method": "q", "image": image}
    if upload:
        data["artifact"] = SimpleUploadedFile(*upload)
    response = api.post("/api/v1/submissions/", data, format="multipart")
    assert response.status_code == 400
    assert message in response.json()["error"]["fields"][field][0]


def test_api_refuses_an_image_tarball_over_the_size_limit(settings, tiny_tracks, alice):
    settings.MEDQUANT_CONTAINERS = True
    settings.MEDQUANT_MAX_IMAGE_BYTES = 1 << 20
    api = APIClient()
    api.force_login(alice)  # a real session: bodies are judged before DRF authenticates
    data = {"track": tiny_tracks["w8a8"].slug, "kind": "container", "method": "q",
            "artifact": SimpleUploadedFile("q.tar", b"\0" * (2 << 20))}  # fmt: skip
    response = api.post("/api/v1/submissions/", data, format="multipart")
    assert response.json()["error"]["fields"]["artifact"] == [
        "the image archive is 2.0 MB; the limit is 1 MB"
    ]


def test_registry_reference_is_accepted_only_from_the_configured_registry(
    settings, tiny_tracks, alice
):
    settings.MEDQUANT_CONTAINERS = True
    settings.MEDQUANT_CONTAINER_REGISTRY = "registry.example.org"
    track = tiny_tracks["w8a8"]
    with pytest.raises(ValidationError, match="must be on registry.example.org"):
        accept(alice, track=track, kind="container", method="q", image="docker.io/evil/q:v1")
    submission = accept(
        alice, track=track, kind="container", method="q", image="registry.example.org/a/q:v1"
    )
    assert (submission.image_reference, submission.artifact.name) == (
        "registry.example.org/a/q:v1",
        "",
    )


def test_submit_form_shows_the_container_field_error(settings, tiny_tracks, alice, client):
    settings.MEDQUANT_CONTAINERS = True
    client.force_login(alice)
    page = client.post(
        reverse("submit"),
        {"track": tiny_tracks["w8a8"].slug, "kind": "container", "method": "q",
         "artifact": SimpleUploadedFile("q.tar", b"not a tar at all")},
    ).content.decode()  # fmt: skip
    assert "not an uncompressed tar file" in page


def _start_worker(env: dict[str, str], queue: str, name: str, log: Path) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "celery"), "-A", "leaderboard", "worker", "-Q",
               queue, "-n", name, "-c", "1", "--without-gossip", "--without-mingle",
               "--loglevel", "INFO"]  # fmt: skip
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def test_a_container_worker_removes_its_orphans_when_it_starts(
    docker_client, helper_image, tmp_path
):
    def orphan(worker: str):
        labels = {LABEL: "quantizer", WORKER_LABEL: worker}
        docker_client.volumes.create(labels=labels)
        docker_client.containers.create(helper_image, ["true"], labels=labels)

    def left(worker: str) -> int:
        filters = {"label": [LABEL, f"{WORKER_LABEL}={worker}"]}
        return len(docker_client.containers.list(all=True, filters=filters)) + len(
            docker_client.volumes.list(filters=filters)
        )

    orphan("containers@test"), orphan("cpu@test")
    env = os.environ | {"MEDQUANT_VAR_DIR": str(tmp_path), "OMP_NUM_THREADS": "1",
                        "MEDQUANT_CONTAINERS": "1"}  # fmt: skip
    env.pop("CELERY_BROKER_URL", None)
    workers = [
        _start_worker(env, "containers", "containers@test", tmp_path / "containers.log"),
        _start_worker(env, "cpu", "cpu@test", tmp_path / "cpu.log"),
    ]
    try:
        for log in ("containers.log", "cpu.log"):
            wait_for(lambda log=log: "ready." in (tmp_path / log).read_text(), log, 120)
        wait_for(lambda: left("containers@test") == 0, "orphan removal", 30)
        assert (
            "removed 2 orphaned quantizer container(s)/volume(s)"
            in (tmp_path / "containers.log").read_text()
        )
        assert left("cpu@test") == 2  # a cpu worker leaves Docker alone
    finally:
        for worker in workers:
            _stop(worker)
        filters = {"label": [LABEL, f"{WORKER_LABEL}=cpu@test"]}
        for container in docker_client.containers.list(all=True, filters=filters):
            container.remove(force=True)
        for volume in docker_client.volumes.list(filters=filters):
            volume.remove(force=True)


def test_a_container_worker_without_docker_logs_it_and_keeps_serving(tmp_path):
    env = os.environ | {"MEDQUANT_VAR_DIR": str(tmp_path), "OMP_NUM_THREADS": "1",
                        "MEDQUANT_CONTAINERS": "1",
                        "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}  # fmt: skip
    env.pop("CELERY_BROKER_URL", None)
    log = tmp_path / "worker.log"
    worker = _start_worker(env, "containers", "nodocker@test", log)
    try:
        wait_for(lambda: "could not remove orphaned quantizer containers" in log.read_text(),
                 "the worker's error line", 120)  # fmt: skip
        time.sleep(1)
        assert worker.poll() is None, log.read_text()
        assert "ready." in log.read_text()
    finally:
        _stop(worker)


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


SUBMIT = """
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.files.base import File
from leaderboard.submissions.intake import accept
from leaderboard.tracks.models import Track
user = get_user_model().objects.create_user("alice")
for method, path in [("honest", "{honest}"), ("phones home", "{hostile}")]:
    with open(path, "rb") as handle:
        archive = File(handle, name="quantizer.tar")
        accept(user, track=Track.objects.get(), kind="container", method=method, archive=archive)
"""
STATUS = """
import json
from leaderboard.submissions.models import Evaluation, Submission
ranks = dict(Evaluation.objects.values_list("submission_id", "rank_all"))
rows = Submission.objects.filter(kind="container").order_by("pk").values(
    "pk", "status", "error", "image_digest")
print(json.dumps([row | {"rank": ranks.get(row["pk"])} for row in rows]))
"""


def test_a_real_celery_worker_on_the_containers_queue_scores_and_rejects_containers(
    docker_client, helper_image, images, tarballs, tiny_track, tmp_path
):
    dataset_dir, model_dir = tiny_track
    env = os.environ | {
        "MEDQUANT_VAR_DIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "MEDQUANT_CONTAINERS": "1",
        "MEDQUANT_CONTAINER_HELPER_IMAGE": helper_image,
        "MEDQUANT_CONTAINER_CPUS": "1",
        "MEDQUANT_CONTAINER_MEMORY_MB": "2048",
    }
    for key in ("DATABASE_URL", "CELERY_BROKER_URL", "MEDQUANT_CACHE_URL"):
        env.pop(key, None)
    model = shutil.copytree(model_dir, tmp_path / "model")
    _manage(env, "migrate", "--noinput")
    _manage(env, "import_dataset", str(dataset_dir), "--slug", "tiny")
    _manage(env, "create_track", "--dataset", "tiny", "--model", str(model), "--wbits", "8",
            "--abits", "8")  # fmt: skip
    # both are queued first: SQLite lets the worker and a submitting process lock each other out
    submit = SUBMIT.format(honest=tarballs["example"], hostile=tarballs["network"])
    _manage(env, "shell", "-v", "0", "-c", submit)
    worker = _start_worker(env, "containers", "containers@live", tmp_path / "worker.log")
    try:
        rows: list[dict] = []

        def finished() -> bool:
            rows[:] = json.loads(_manage(env, "shell", "-v", "0", "-c", STATUS))
            return len(rows) == 2 and all(row["status"] in FINISHED for row in rows)

        wait_for(finished, "the container worker", 300)
    finally:
        _stop(worker)
    honest, hostile = rows
    assert (honest["status"], honest["error"], honest["rank"]) == ("done", "", 1), honest
    image_id = images["example"]
    assert honest["image_digest"] == image_id
    assert hostile["status"] == "rejected"
    assert "exited with status 1" in hostile["error"]
    assert "Network is unreachable" in hostile["error"]

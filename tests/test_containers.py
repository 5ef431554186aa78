"""Quantizer containers on a real Docker engine: the example quantizer yields a scored submission,
and hostile containers are each contained with a specific error while the runner keeps serving
and leaves no container or volume behind."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch
from container_images.images import build_image, example_quantizer_image, script_image
from container_images.python_base import python_base_image
from machine import budget
from safetensors.torch import load_file

from harness.artifacts.checkpoint.save import save_checkpoint
from harness.artifacts.checkpoint.storage import WEIGHTS_NAME
from harness.containers.images import PinnedImage
from harness.containers.protocol import build_container_input, output_artifact
from harness.containers.sandbox import (
    LABEL,
    WORKER_LABEL,
    ContainerLimits,
    remove_orphans,
    run_quantizer_container,
)
from harness.entry.container import QuantizerRejected, evaluate_quantizer_container
from harness.entry.upload import Submission, evaluate_submission
from harness.errors import HarnessError
from harness.scoring.result import SCHEMA_PATH
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec
from reference_methods.methods import quantize_with
from reference_methods.simulator.scheme import QuantConfig

pytestmark = [pytest.mark.slow, pytest.mark.docker]

LIMITS = ContainerLimits(
    timeout_s=round(budget(20)),
    memory_bytes=256 << 20,
    cpus=1.0,
    pids=64,
    output_bytes=8 << 20,
    tmp_bytes=16 << 20,
    log_bytes=16 << 10,
)
QUANTIZER_LIMITS = ContainerLimits(timeout_s=120, memory_bytes=2 << 30, cpus=1.0)


@pytest.fixture(scope="module")
def track(tiny_track) -> LoadedTrack:
    dataset, model_dir = tiny_track
    spec = TrackSpec(model_dir=model_dir, dataset_dir=dataset, weight_bits=8, seed=0)
    return LoadedTrack.open(spec)


@pytest.fixture(scope="module")
def input_dir(track, tmp_path_factory) -> Path:
    return build_container_input(track, tmp_path_factory.mktemp("container") / "input")


@pytest.fixture(scope="module")
def helper_image(docker_client) -> str:
    """The trusted image holding output volumes; first clears what an interrupted earlier run
    left behind, as a worker does when it starts."""
    remove_orphans(docker_client)
    return python_base_image(docker_client)


@pytest.fixture(autouse=True)
def nothing_left_behind(request):
    """After every test: no harness-labelled container or volume remains on the engine."""
    yield
    if "docker_client" not in request.fixturenames:
        return
    client = request.getfixturevalue("docker_client")
    left = client.containers.list(all=True, filters={"label": LABEL})
    assert [(c.name, c.status, c.labels) for c in left] == []
    assert client.volumes.list(filters={"label": LABEL}) == []


def pinned(image_id: str) -> PinnedImage:
    return PinnedImage(image_id, image_id, "archive")


def run(client, image_id, track, input_dir, helper_image, tmp_path, limits=LIMITS, name="run"):
    return run_quantizer_container(
        image=pinned(image_id),
        track=track,
        workdir=tmp_path / name,
        helper_image=helper_image,
        limits=limits,
        client=client,
        input_dir=input_dir,
    )


def test_example_quantizer_container_yields_a_scored_submission(
    docker_client, track, input_dir, helper_image, tmp_path
):
    image = example_quantizer_image(docker_client)
    evaluation = evaluate_quantizer_container(
        image=pinned(image),
        track=track,
        workdir=tmp_path / "run",
        helper_image=helper_image,
        limits=QUANTIZER_LIMITS,
        client=docker_client,
        input_dir=input_dir,
    )
    result = evaluation.result
    jsonschema.validate(result, json.loads(Path(SCHEMA_PATH).read_text()))
    assert result["submission"]["container"]["image"] == image
    assert result["submission"]["precision"]["weight_bits"] == 8
    assert result["submission"]["precision"]["activation_bits"] is None
    assert "rtn w8a16-per-channel" in evaluation.container.logs

    # the same method run here on the same /input gives the same checkpoint and the same scores
    calibration = track.calibration
    host = quantize_with("rtn", track.model, QuantConfig(8, None, "per-channel"), calibration)
    host_dir = save_checkpoint(host, tmp_path / "host")
    container = load_file(evaluation.container.output_dir / WEIGHTS_NAME)
    expected = load_file(host_dir / WEIGHTS_NAME)
    assert container.keys() == expected.keys()
    assert all(torch.equal(container[k], expected[k]) for k in expected)
    host_result = evaluate_submission(track, Submission("checkpoint", checkpoint=host_dir)).result
    assert result["cases"] == host_result["cases"]


def test_example_quantizer_writes_scored_qdq_onnx_on_an_onnxruntime_track(
    docker_client, tiny_track, helper_image, tmp_path
):
    dataset, model_dir = tiny_track
    spec = TrackSpec(
        model_dir=model_dir,
        dataset_dir=dataset,
        backend="onnxruntime-cpu",
        weight_bits=8,
        activation_bits=8,
    )
    evaluation = evaluate_quantizer_container(
        image=pinned(example_quantizer_image(docker_client)),
        track=LoadedTrack.open(spec),
        workdir=tmp_path / "run",
        helper_image=helper_image,
        limits=QUANTIZER_LIMITS,
        client=docker_client,
    )
    assert "int8 Q/DQ ONNX" in evaluation.container.logs
    result = evaluation.result
    jsonschema.validate(result, json.loads(Path(SCHEMA_PATH).read_text()))
    assert result["submission"]["kind"] == "onnx"
    precision = result["submission"]["precision"]
    assert (precision["weight_bits"], precision["activation_bits"]) == (8, 8)
    assert result["track"]["backend"] == "onnxruntime-cpu"


def test_sandbox_seen_from_inside(docker_client, track, input_dir, helper_image, tmp_path):
    outcome = run(
        docker_client,
        script_image(docker_client, "probe"),
        track,
        input_dir,
        helper_image,
        tmp_path,
    )
    assert outcome.ok, outcome.error
    probe = json.loads((outcome.output_dir / "probe.json").read_text())
    assert (probe["uid"], probe["gid"]) == (1000, 1000)
    assert int(probe["cap_eff"], 16) == 0
    assert probe["no_new_privs"] == "1"
    assert probe["interfaces"] == ["lo"]
    assert probe["writable"] == {
        "/": False,
        "/tmp": True,
        "/input": False,
        "/output": True,
        "/opt": False,
    }
    assert "ro" in probe["mounts"]["/"]["options"]
    assert "ro" in probe["mounts"]["/input"]["options"]
    assert probe["tmp_size"] == LIMITS.tmp_bytes
    assert LIMITS.output_bytes < probe["output_size"] <= LIMITS.output_bytes + (2 << 20)
    calibration = [f"calibration/{c.case_id}.safetensors" for c in track.calibration_cases]
    assert probe["input"] == sorted(
        ["calibration", *calibration, "model.json", "model.onnx", "model.safetensors", "track.json"]
    )
    limits = probe["cgroup"]
    assert int(limits["memory"]) == LIMITS.memory_bytes
    assert limits["swap"] == "0" or int(limits["memory_and_swap"]) == LIMITS.memory_bytes
    assert int(limits["pids"]) == LIMITS.pids
    quota, period = (limits["cpu_max"] or f"{limits['cpu_quota']} {limits['cpu_period']}").split()
    assert int(quota) / int(period) == LIMITS.cpus
    test_ids = [c.case_id for c in track.test_cases]
    assert not any(case in name for case in test_ids for name in probe["input"])


HOSTILE = {
    "network": ("failed", "Network is unreachable", {}),
    "write_outside": ("failed", "Read-only file system", {}),
    "fork_bomb": ("process_limit", "limit of 64 processes", {"timeout_s": round(budget(6))}),
    "memory_hog": ("out_of_memory", "memory limit of 256 MiB", {}),
    "sleeper": ("timed_out", "time limit of 3 s", {"timeout_s": 3}),
    "huge_output": ("output_too_large", "more than the 8 MiB allowed in /output", {}),
    "exit_nonzero": ("failed", "exited with status 3: calibration diverged", {}),
    "symlink_output": ("invalid_output", "'weights.safetensors' is not a regular file", {}),
}


@pytest.mark.parametrize("script", sorted(HOSTILE))
def test_hostile_container_is_contained_with_a_specific_error(
    docker_client, track, input_dir, helper_image, tmp_path, script
):
    status, message, overrides = HOSTILE[script]
    limits = ContainerLimits(**LIMITS.__dict__ | overrides)
    outcome = run(
        docker_client,
        script_image(docker_client, script),
        track,
        input_dir,
        helper_image,
        tmp_path,
        limits,
    )
    assert outcome.status == status, outcome
    assert message in outcome.error
    assert outcome.output_dir is None
    assert outcome.seconds < limits.timeout_s + budget(5)
    _still_serving(docker_client, track, input_dir, helper_image, tmp_path)


def test_a_declared_volume_is_a_size_capped_tmpfs_not_host_disk(
    docker_client, track, input_dir, helper_image, tmp_path
):
    """``VOLUME /scratch`` would give the quantizer an anonymous volume on the host's disk: the
    sandbox puts a tmpfs capped at ``tmp_bytes`` there instead, and no volume is left behind."""
    limits = ContainerLimits(**LIMITS.__dict__ | {"tmp_bytes": 16 << 20})
    image = script_image(docker_client, "fill_volume", instructions=("VOLUME /scratch",))
    before = {v.name for v in docker_client.volumes.list()}
    outcome = run(docker_client, image, track, input_dir, helper_image, tmp_path, limits)
    assert outcome.status == "failed" and "exited with status 3" in outcome.error, outcome
    assert "No space left on device" in outcome.logs
    written = int(outcome.logs.split("wrote ")[1].split()[0])
    assert 0 < written <= limits.tmp_bytes
    assert {v.name for v in docker_client.volumes.list()} == before
    _still_serving(docker_client, track, input_dir, helper_image, tmp_path)


def test_reading_test_labels_finds_nothing(docker_client, track, input_dir, helper_image, tmp_path):
    case = track.test_cases[0]
    image = script_image(docker_client, "read_labels", str(case.label), case.case_id)
    outcome = run(docker_client, image, track, input_dir, helper_image, tmp_path)
    assert outcome.status == "failed", outcome
    assert "FileNotFoundError" in outcome.error and str(case.label) in outcome.error
    assert "found []" in outcome.logs
    _still_serving(docker_client, track, input_dir, helper_image, tmp_path)


def test_malformed_artifact_is_rejected_like_an_upload(
    docker_client, track, input_dir, helper_image, tmp_path
):
    with pytest.raises(QuantizerRejected) as rejected:
        evaluate_quantizer_container(
            image=pinned(script_image(docker_client, "malformed")),
            track=track,
            workdir=tmp_path / "run",
            helper_image=helper_image,
            limits=LIMITS,
            client=docker_client,
            input_dir=input_dir,
        )
    assert rejected.value.outcome.ok
    message = str(rejected.value)
    assert message.startswith("the quantizer's output was rejected: ")
    assert "unknown checkpoint format 'my-own-format'" in message
    _still_serving(docker_client, track, input_dir, helper_image, tmp_path)


def test_logs_are_size_capped(docker_client, track, input_dir, helper_image, tmp_path):
    image = script_image(docker_client, "chatty")
    outcome = run(docker_client, image, track, input_dir, helper_image, tmp_path)
    assert outcome.status == "no_output"
    assert outcome.logs_truncated
    assert len(outcome.logs.encode()) < LIMITS.log_bytes + 100
    assert outcome.logs.rstrip().endswith("last line")


def test_orphans_of_this_worker_are_removed_at_worker_start(docker_client, helper_image):
    def orphan(worker: str):
        labels = {LABEL: "quantizer", WORKER_LABEL: worker}
        volume = docker_client.volumes.create(labels=labels)
        docker_client.containers.create(helper_image, ["true"], labels=labels)
        return volume

    orphan("worker-a")
    orphan("worker-b")
    assert remove_orphans(docker_client, worker="worker-a") == 2
    left = docker_client.containers.list(all=True, filters={"label": LABEL})
    assert [c.labels[WORKER_LABEL] for c in left] == ["worker-b"]
    assert remove_orphans(docker_client, worker="worker-b") == 2


def test_gpu_device_request_only_on_gpu_workers_without_a_gpu_present():
    from harness.containers.sandbox import _device_requests

    assert _device_requests(gpu=False) is None
    (request,) = _device_requests(gpu=True)
    assert request.count == -1 and request.capabilities == [["gpu"]]


def test_track_sets_the_wall_clock_limit(tiny_track):
    dataset, model_dir = tiny_track
    spec = TrackSpec(model_dir=model_dir, dataset_dir=dataset, quantizer_timeout_s=42)
    assert ContainerLimits.for_track(spec).timeout_s == 42


def _still_serving(client, track, input_dir, helper_image, tmp_path) -> None:
    outcome = run(
        client,
        script_image(client, "minimal"),
        track,
        input_dir,
        helper_image,
        tmp_path,
        name="after",
    )
    assert outcome.ok, outcome
    assert (outcome.output_dir / "done.txt").read_text() == "ok\n"


@pytest.mark.parametrize(
    ("entrypoint", "parts"),
    [
        ([], ("the quantizer image could not be started: ", "no command specified")),
        (
            ["/no/such/binary"],
            ("exited with status 127: ", "exec /no/such/binary failed: No such file or directory"),
        ),
    ],
)
def test_image_that_cannot_start_gets_a_specific_error(
    docker_client, track, input_dir, helper_image, tmp_path, entrypoint, parts
):
    image = build_image(docker_client, "cannot-start", {"README": b"x\n"}, entrypoint)
    outcome = run(docker_client, image, track, input_dir, helper_image, tmp_path)
    assert outcome.status == "failed", outcome
    assert all(part.lower() in outcome.error.lower() for part in parts), outcome.error
    _still_serving(docker_client, track, input_dir, helper_image, tmp_path)


def test_track_json_names_limits_and_calibration_cases_only(track, input_dir):
    described = json.loads((input_dir / "track.json").read_text())
    assert (described["max_weight_bits"], described["max_activation_bits"]) == (8, None)
    assert described["calibration_cases"] == [c.case_id for c in track.calibration_cases]
    assert described["output"]["files"] == ["manifest.json", "weights.safetensors"]
    text = (input_dir / "track.json").read_text()
    assert not any(case.case_id in text for case in track.test_cases)


@pytest.mark.parametrize(
    ("backend", "files", "message"),
    [
        ("simulated", ["manifest.json"], "missing weights.safetensors"),
        ("simulated", ["model.onnx"], "missing manifest.json, weights.safetensors; unexpected"),
        ("simulated", ["manifest.json", "weights.safetensors", "x.log"], "unexpected x.log"),
        ("onnxruntime-cpu", ["manifest.json", "weights.safetensors"], "missing model.onnx"),
    ],
)
def test_output_must_be_exactly_the_tracks_artifact(tmp_path, backend, files, message):
    for name in files:
        (tmp_path / name).write_text("x")
    with pytest.raises(HarnessError, match=message):
        output_artifact(tmp_path, backend)

"""A submission's test cases scored in chunks (on several workers) give the serial run's result,
case for case; the FP32 reference run is computed once per track and read from the shared cache;
on the live site a fanned-out submission survives a case task's worker killed mid-group."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from leaderboard_fixtures import tiny_checkpoints
from leaderboard_services import live_site, sign_up_and_create_token, submit

from harness.data.dataset import load_dataset, write_splits
from harness.entry.fan_out import case_chunks, score_cases, score_untrusted_cases
from harness.entry.upload import Submission, evaluate_submission, evaluate_untrusted
from harness.scoring.evaluation import EvaluationRun
from harness.track import run_cache
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

__all__ = ["tiny_checkpoints"]
TEST_CASES = 3


@pytest.fixture(scope="module")
def three_case_dataset(tiny_track, tmp_path_factory) -> Path:
    """The tiny phantoms with three test cases (and one calibration case): enough to chunk."""
    dataset_dir, _ = tiny_track
    copy = shutil.copytree(dataset_dir, tmp_path_factory.mktemp("fan_out") / "dataset")
    ids = [case.case_id for case in load_dataset(copy).cases]
    write_splits(copy, {"train": [], "calibration": ids[-1:], "test": ids[:TEST_CASES]})
    return copy


@pytest.fixture
def track(three_case_dataset, tiny_track, tmp_path, monkeypatch) -> LoadedTrack:
    monkeypatch.setenv(run_cache.CACHE_DIR_VARIABLE, str(tmp_path / "cache"))
    spec = TrackSpec(tiny_track[1], three_case_dataset, weight_bits=8, activation_bits=8)
    return LoadedTrack.open(spec)


def test_chunks_cut_the_cases_in_order():
    assert case_chunks(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    with pytest.raises(ValueError, match="at least one case"):
        case_chunks(["a"], 0)


def _per_case(result: dict) -> list:
    return [(c["case_id"], c["dsc"], c["nsd"], c.get("hd95")) for c in result["cases"]]


def test_chunked_cases_assemble_into_the_serial_result_case_for_case(track, tiny_checkpoints):
    upload = Submission("checkpoint", checkpoint=tiny_checkpoints["w8a8"])
    serial = evaluate_submission(track, upload).result
    ids = [case.case_id for case in track.test_cases]
    scored = [
        m for chunk in reversed(case_chunks(ids, 1)) for m in score_cases(track, upload, chunk)
    ]
    assembled = evaluate_submission(track, upload, cases=scored).result
    assert [c["case_id"] for c in assembled["cases"]] == ids  # the track's order, not the chunks'
    assert _per_case(assembled) == _per_case(serial)  # bit-identical floats
    assert assembled["summary"] == serial["summary"]
    assert assembled["per_class"] == serial["per_class"]
    assert assembled["splits"] == serial["splits"]


def test_an_uploads_chunks_are_scored_in_a_child_and_match_the_serial_run(track, tiny_checkpoints):
    upload = Submission("checkpoint", checkpoint=tiny_checkpoints["w8a8"])
    serial = evaluate_untrusted(track, upload)
    ids = [case.case_id for case in track.test_cases]
    scored = score_untrusted_cases(track, upload, ids[:2]) + score_untrusted_cases(
        track, upload, ids[2:]
    )
    assembled = evaluate_untrusted(track, upload, cases=scored)
    assert _per_case(assembled) == _per_case(serial)


def test_a_case_missing_or_scored_twice_is_not_assembled(track, tiny_checkpoints):
    upload = Submission("checkpoint", checkpoint=tiny_checkpoints["w8a8"])
    ids = [case.case_id for case in track.test_cases]
    scored = score_cases(track, upload, ids[:2])
    with pytest.raises(ValueError, match="1 case\\(s\\) unscored"):
        evaluate_submission(track, upload, cases=scored)
    with pytest.raises(ValueError, match="scored twice"):
        evaluate_submission(track, upload, cases=scored + scored[:1])


def test_the_fp32_run_is_computed_once_and_read_by_the_next_worker(track, three_case_dataset):
    first = track.fp32_run
    cached = list((Path(os.environ[run_cache.CACHE_DIR_VARIABLE]) / "fp32-runs").glob("*.json"))
    assert len(cached) == 1
    other = LoadedTrack.open(track.spec)  # another worker on the same storage
    again = other.fp32_run
    assert "fp32_reference" not in other.timer.seconds  # read, not run
    assert [c.to_json() for c in again.cases] == [c.to_json() for c in first.cases]
    changed = LoadedTrack.open(
        TrackSpec(track.spec.model_dir, three_case_dataset, nsd_tolerance_mm=3.0)
    )
    assert changed.fp32_run_key != track.fp32_run_key  # other scoring settings: another run


def test_an_unreadable_cached_run_is_computed_again(track):
    key = track.fp32_run_key
    path = Path(os.environ[run_cache.CACHE_DIR_VARIABLE]) / "fp32-runs" / f"{key}.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    run = track.fp32_run
    assert "fp32_reference" in track.timer.seconds
    assert EvaluationRun.from_json(json.loads(path.read_text())).cases[0].dsc == run.cases[0].dsc


def _children(pid: int) -> list[int]:
    """The live children of ``pid`` (a zombie, exited but not yet reaped, is not counted)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(child) for child in found.stdout.split() if _running(int(child))]


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _kill_a_busy_pool_process(worker_pid: int, timeout_s: float = 120) -> int:
    """SIGKILL the pool process that is scoring a chunk (it has forked the child that runs the
    upload); its pid. An idle pool process is left alone: killed while it holds the pool's
    shared task-queue lock, it would deadlock its siblings (billiard), which is not the fault
    under test."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in _children(worker_pid):
            if _children(pid):
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.02)
    raise TimeoutError("no pool process was seen scoring a chunk")


STORED_CASES = """
import json
from django.db.models import Count
from leaderboard.submissions.models import CaseScore, Evaluation
rows = CaseScore.objects.filter(submission_id={0}).values_list("case_id").annotate(n=Count("id"))
result = Evaluation.objects.get(submission_id={0}).result
print(json.dumps({{"rows": sorted(rows), "result": result}}))
"""


@pytest.mark.slow
def test_a_case_tasks_worker_killed_mid_group_and_the_submission_still_ends_done_once(
    three_case_dataset, tiny_track, tiny_checkpoints, tmp_path
):
    """Live site on the production stack (real Celery worker with two pool processes, Redis,
    PostgreSQL): an upload on a track of one case per task; while its chunks run, the pool
    process scoring one is SIGKILLed. The lost chunk is redelivered (acks late, rejected on
    worker lost),
    the submission ends ``done``, and every case is stored and reported exactly once."""
    var = tmp_path / "var"
    with live_site(
        three_case_dataset,
        tiny_track[1],
        var,
        "redis+postgres",
        quota=5,
        worker_concurrency=2,
        track_options=("--cases-per-task", "1"),
    ) as site:
        _, token = sign_up_and_create_token(site, "fanout")
        response = submit(site, token, tiny_checkpoints["w8a8"], "rtn-fan-out")
        assert response.status_code == 201, response.text
        submission_id = response.json()["id"]
        url = f"{site.url}/api/v1/submissions/{submission_id}/"
        headers = {"Authorization": f"Token {token}"}
        deadline = time.monotonic() + 120
        while requests.get(url, headers=headers).json()["status"] != "running":
            assert time.monotonic() < deadline, "never reached running"
            time.sleep(0.05)
        killed = _kill_a_busy_pool_process(site.procs[0].pid)
        deadline = time.monotonic() + 300
        while (body := requests.get(url, headers=headers).json())["status"] in (
            "queued",
            "validating",
            "running",
            "scoring",
        ):
            assert time.monotonic() < deadline, f"still {body['status']}"
            time.sleep(0.5)
        assert body["status"] == "done", body
        lost = f"pid:{killed} exited with 'signal 9 (SIGKILL)'"
        deadline = time.monotonic() + 60  # the worker logs the loss when its pool loop sees it
        while lost not in (var / "worker.log").read_text():
            assert time.monotonic() < deadline, f"the worker never logged {lost!r}"
            time.sleep(0.5)
        output = site.manage("shell", "-c", STORED_CASES.format(submission_id))
        stored = json.loads(output.strip().splitlines()[-1])
        rows = [tuple(row) for row in stored["rows"]]
        result = stored["result"]
        assert sorted(rows) == [(case_id, 1) for case_id in sorted(result["track"]["test_cases"])]
        assert len(rows) == TEST_CASES
        case_ids = [case["case_id"] for case in result["cases"]]
        assert case_ids == result["track"]["test_cases"]  # each once, in the track's order

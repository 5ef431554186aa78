"""Stored results do not depend on the machine's thread count: the methods and the simulator's
calibration run at ``REPRODUCIBLE_THREADS``, calibration patches are prepared at one thread, and
``harness quantize`` gives the same checkpoint bytes with 1 and with 2 OpenMP threads."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.data.dataset import load_dataset
from harness.models.calibration import calibration_batches
from harness.models.reference import load_reference_model
from reference_methods.methods import quantize_with
from reference_methods.simulator.scheme import QuantConfig, quantize
from reference_methods.simulator.threads import REPRODUCIBLE_THREADS

ROOT = Path(__file__).resolve().parents[1]
METHOD_ARGS = {
    "gptq": ["--wbits", "4"],
    "comq": ["--wbits", "4"],
    "permutation-comq": ["--wbits", "2"],
    "smoothquant": ["--wbits", "8", "--abits", "8"],
}


def _threads_seen(model: torch.nn.Module) -> list[int]:
    """Record torch's intra-op thread count at every forward call of ``model`` (and of the
    copies the methods quantize, which keep the hook)."""
    seen: list[int] = []
    model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    return seen


@pytest.mark.parametrize("method", ["gptq", "smoothquant"])
def test_methods_calibrate_at_the_reproducible_thread_count_whatever_the_caller_set(
    tiny_track, method
):
    dataset_dir, model_dir = tiny_track
    spec, model = load_reference_model(model_dir)
    calibration = calibration_batches(load_dataset(dataset_dir).split("calibration"), spec)
    seen = _threads_seen(model)
    before = torch.get_num_threads()
    torch.set_num_threads(REPRODUCIBLE_THREADS + 1)
    try:
        scheme = QuantConfig.from_scheme("w8a8-per-channel")
        quantize_with(method, model, scheme, calibration)
        assert torch.get_num_threads() == REPRODUCIBLE_THREADS + 1  # restored afterwards
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {REPRODUCIBLE_THREADS}


def test_the_simulators_activation_calibration_runs_at_the_reproducible_thread_count(tiny_track):
    dataset_dir, model_dir = tiny_track
    spec, model = load_reference_model(model_dir)
    calibration = calibration_batches(load_dataset(dataset_dir).split("calibration"), spec)
    seen = _threads_seen(model)
    before = torch.get_num_threads()
    torch.set_num_threads(REPRODUCIBLE_THREADS + 1)
    try:
        quantize(model, QuantConfig.from_scheme("w8a8-per-channel"), calibration)
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {REPRODUCIBLE_THREADS}  # static scales: calibrated


@pytest.mark.slow
@pytest.mark.multicore
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPU cores to run 2 threads")
@pytest.mark.parametrize("method", sorted(METHOD_ARGS))
def test_harness_quantize_gives_one_digest_at_one_and_two_threads(tiny_track, tmp_path, method):
    dataset_dir, model_dir = tiny_track
    digests = set()
    for threads in ("1", "2"):
        out = tmp_path / f"threads-{threads}"
        env = os.environ | {"OMP_NUM_THREADS": threads, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "harness.cli", "quantize", "--quiet", "--method", method]
        argv += [*METHOD_ARGS[method], "--dataset", str(dataset_dir), "--model", str(model_dir)]
        done = subprocess.run(
            [*argv, "--out", str(out)], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr
        digests.add(hashlib.sha256((out / "weights.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1

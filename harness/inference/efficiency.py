"""What a real backend measures on a network it runs: latency per patch, per patch batch and per
volume under the sliding-window inferer, the paired latency protocol against the FP32 reference
on the same engine, and the process's peak memory. The backend adds what only it knows (its
name, kernels, engine settings, serialized size)."""

from __future__ import annotations

import resource

import numpy as np
import torch
from torch import nn

from harness.errors import HarnessError
from harness.inference.latency import LatencyProtocol, latency_stats, time_calls, torch_threads
from harness.inference.sliding_window import SlidingWindowSpec, patch_batches, predict_labels

DEFAULT_WARMUP = 1
DEFAULT_RUNS = 5
"""Unpaired timings (per patch, per batch, per volume of the entry alone): warm-up and runs."""


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (getrusage, Linux KiB units)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def first_patch_batch(volume: torch.Tensor, window: SlidingWindowSpec) -> torch.Tensor:
    """The first batch of patches sliding-window inference cuts from ``volume`` (C, x, y, z)."""
    return next(patch_batches(volume, window))[1].clone()


def measure_network(
    network: nn.Module,
    volume: torch.Tensor,
    window: SlidingWindowSpec,
    *,
    fp32: nn.Module | None = None,
    protocol: LatencyProtocol | None = None,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
) -> dict:
    """Latency of ``network`` per patch batch (the inferer's first batch of ``volume``), per patch
    (batch latency / batch size) and per volume (sliding window over ``volume``): warm-up, then
    ``runs`` timed runs, median and p95; throughput; peak RSS. With ``fp32`` (the reference on the
    same engine) and ``protocol``, also ``latency_protocol``: both timed interleaved in this
    process, per volume or per patch batch as the protocol says."""
    if runs < 1 or warmup < 0:
        raise HarnessError("latency needs runs >= 1 and warmup >= 0")
    threads = protocol.threads if protocol is not None else torch.get_num_threads()
    batch = first_patch_batch(volume, window)
    with torch.no_grad(), torch_threads(threads):
        batch_times = time_calls(lambda: network(batch), warmup, runs)
        volume_times = time_calls(lambda: predict_labels(network, volume, window), warmup, runs)
    report = {
        "latency_ms": {
            "per_patch": latency_stats([t / len(batch) for t in batch_times]),
            "per_batch": latency_stats(batch_times) | {"batch_size": len(batch)},
            "per_volume": latency_stats(volume_times)
            | {"volume_shape": [int(d) for d in volume.shape]},
        },
        "throughput_patches_per_s": len(batch) / float(np.median(batch_times)),
    }
    if fp32 is not None and protocol is not None:
        if protocol.unit == "per_volume":
            calls = (
                lambda: predict_labels(fp32, volume, window),
                lambda: predict_labels(network, volume, window),
            )
        else:
            calls = (lambda: fp32(batch), lambda: network(batch))
        with torch.no_grad():
            report["latency_protocol"] = protocol.measure(*calls)
    return report | {"peak_rss_mb": peak_rss_mb()}

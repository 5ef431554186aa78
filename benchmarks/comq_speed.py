"""COMQ speed: the Gram-form COMQ of ``reference_methods.methods.comq`` against a plain
implementation of the published algorithm, on the same layer and calibration data, side by side in
one run.

Layer: Conv3d 64 -> 64, kernel 3, padding 1 (C_out = 64, C_in * k^3 = 1728); calibration: ReLU'd
random activations (B, 64, 40, 40, 32), whose output voxels are the rows of X (>= 100,000). Both
run K = 1 sweep with the fixed per-channel grid of ``comq.group_grid``, timed end to end from the
layer and the calibration tensors:

- BASELINE, plain per-coordinate COMQ as published: X built explicitly (N x 1728); residual
  U = X (W - Q)^T kept for all output channels and updated column by column -- at step t every
  output channel i takes its own t-th greedy coordinate j_i, its target is
  Q_ij + <X_:,j, U_i> / ||X_:,j||^2, and U_i += X_:,j (Q_ij_old - Q_ij_new): O(N m) per step.
- Gram form (``reference_methods``): H = X^T X from the conv input (``gram.input_gram``: shifted
  channel products, X never materialised), then the batched sweep on H: O(m n) per step.

Both errors are tr((W - Q) H (W - Q)^T) with the same H; the check is equal error within 1e-5
relative and a >= 10x speed-up. Both run with the same thread count, 1 by default: on a machine
whose cores are shared with other jobs, multi-threaded timings of either are dominated by OpenMP
threads waiting for a busy core. Each is timed ``--repeat`` times, alternating, and the fastest
run counts (the usual estimate when other processes add noise).

    python benchmarks/comq_speed.py [--rows 102400] [--bits 4] [--threads 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from reference_methods.methods.comq import comq, group_grid
from reference_methods.simulator.weight_format import to_rows
from reference_methods.statistics.gram import input_columns, input_gram
from reference_methods.statistics.reconstruction import layer_reconstruction_error

CHANNELS = 64
VOLUME = (40, 40, 32)  # 51,200 output voxels per sample
TOLERANCE = 1e-5
TARGET_SPEEDUP = 10.0


def plain_comq_baseline(
    columns: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> torch.Tensor:
    """BASELINE (not used by the library): one COMQ sweep in the published form, explicit X
    (N, n), residual U = X (W - Q)^T updated column by column. Returns the codes (m, n)."""
    inputs = columns.T.contiguous()  # (n, N): X's columns, one per row
    norms = (inputs * inputs).sum(1)
    rows, width = weight.shape
    order = torch.argsort(weight.abs() * norms.sqrt(), dim=1, descending=True, stable=True)
    quantized = weight.clone()
    codes = torch.zeros(rows, width, dtype=torch.int64)
    residual = torch.zeros(rows, inputs.shape[1])  # U^T: row i is X (w_i - q_i)^T
    channel = torch.arange(rows)
    for t in range(width):
        column = order[:, t]
        x = inputs[column]  # (m, N): each output channel's own input column
        old = quantized[channel, column]
        norm = norms[column]
        target = torch.where(norm > 0, old + (x * residual).sum(1) / norm, weight[channel, column])
        k = torch.clamp(torch.round(target / scale - zero), 0, 2**bits - 1)
        new = scale * (zero + k)
        residual.add_(x * (old - new)[:, None])
        quantized[channel, column] = new
        codes[channel, column] = k.to(torch.int64)
    return codes


def timed(run: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def gram_form(layer: nn.Conv3d, calibration: torch.Tensor, bits: int):
    """The library path: H from the conv input, then one batched sweep on H."""
    weight = to_rows(layer.weight.detach(), 0)
    gram = input_gram(layer, calibration)
    return gram, comq(weight, gram, bits)


def baseline(layer: nn.Conv3d, calibration: torch.Tensor, bits: int) -> torch.Tensor:
    """The baseline path: explicit X, the same grid, one published-form sweep; returns Q."""
    weight = to_rows(layer.weight.detach(), 0)
    columns = torch.cat([chunk[:, 0] for chunk in input_columns(layer, calibration)])
    scale, zero = group_grid(weight, torch.zeros_like(weight, dtype=torch.int64), 1, True, bits)
    codes = plain_comq_baseline(columns, weight, scale[:, 0], zero[:, 0].float(), bits)
    return scale * (zero + codes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=102_400, help="calibration rows N (>= 1e5)")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    layer = nn.Conv3d(CHANNELS, CHANNELS, 3, padding=1)
    per_sample = VOLUME[0] * VOLUME[1] * VOLUME[2]
    samples = -(-args.rows // per_sample)
    calibration = torch.randn(samples, CHANNELS, *VOLUME).relu()
    weight = to_rows(layer.weight.detach(), 0)
    rows = samples * per_sample
    print(
        f"Conv3d {CHANNELS}->{CHANNELS} k=3: W {tuple(weight.shape)}, N = {rows:,} calibration "
        f"rows, W{args.bits}, K = 1, fixed scale, {args.threads} thread(s)"
    )

    gram_seconds, baseline_seconds = [], []
    for _ in range(args.repeat):
        seconds, (gram, result) = timed(lambda: gram_form(layer, calibration, args.bits))
        gram_seconds.append(seconds)
        seconds, plain_q = timed(lambda: baseline(layer, calibration, args.bits))
        baseline_seconds.append(seconds)
    fast, plain = min(gram_seconds), min(baseline_seconds)

    errors = {
        "baseline": layer_reconstruction_error(gram, weight, plain_q),
        "gram": layer_reconstruction_error(gram, weight, result.dequantize()),
    }
    difference = abs(errors["gram"] - errors["baseline"]) / errors["baseline"]
    speedup = plain / fast
    changed = int((plain_q != result.dequantize()).sum())

    def runs(seconds: list[float]) -> str:
        return f"fastest of: {', '.join(f'{t:.2f}' for t in seconds)}"

    print(f"{'':34} {'seconds':>9} {'error tr((W-Q)H(W-Q)^T)':>26}")
    print(
        f"{'BASELINE plain published COMQ':34} {plain:9.2f} {errors['baseline']:26.6e}"
        f"   ({runs(baseline_seconds)})"
    )
    print(
        f"{'Gram-form COMQ (reference_methods)':34} {fast:9.2f} {errors['gram']:26.6e}"
        f"   ({runs(gram_seconds)})"
    )
    verdict = "OK" if speedup >= TARGET_SPEEDUP else "BELOW TARGET"
    print(f"speed-up {speedup:.1f}x (target >= {TARGET_SPEEDUP:.0f}x: {verdict})")
    verdict = "OK" if difference <= TOLERANCE else "ABOVE TOLERANCE"
    print(
        f"relative error difference {difference:.2e} (target <= {TOLERANCE:.0e}: {verdict}); "
        f"{changed} of {weight.numel():,} weights differ"
    )


if __name__ == "__main__":
    main()

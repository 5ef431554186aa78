"""Gram statistics of dilated convolutions: seconds per layer of the shifted-products Gram, the
unfold Gram and the library's choice between them (``gram.input_gram``), side by side in one run,
at dilations 1, 4, 8 and 16.

Layer: Conv3d C -> C (C = 16 by default), kernel 3, padding d (same size), dilation d; input: ReLU'd
random activations (B, C, 64, 64, 64), a 64³ crop per sample. The three are timed from the layer
and the input tensor:

- shifted products: box sums of shifted channel products (``gram._shifted_products_gram``);
- unfold: receptive fields, X^T X accumulated block-triangularly (``input_columns`` +
  ``GramAccumulator``);
- choice: ``input_gram``, which takes the one ``gram.shifted_products_preferred`` expects to be
  faster (its cost model: ``shifted_products_cost`` against ``unfold_cost``).

The check: at every dilation the choice takes at most ``TOLERANCE`` (20%) longer than the faster
of the two, and all three give the same H (relative difference <= 1e-5). All run with the same
thread count, 1 by default (on a machine whose cores are shared, multi-threaded timings are
dominated by threads waiting for a busy core); each is timed ``--repeat`` times, interleaved, and
the fastest run counts.

    python benchmarks/gram_dilation.py [--channels 16] [--size 64] [--batch 1] [--threads 1]
        [--repeat 5] [--dilations 1,4,8,16]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from reference_methods.statistics import gram

TOLERANCE = 0.20  # the choice may be at most 20% slower than the faster algorithm
AGREEMENT = 1e-5  # max |H_a - H_b| / max |H| between the algorithms (float32 products)


def shifted(layer: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    padding = gram._padding_pairs(layer)
    return gram._shifted_products_gram(x, layer.kernel_size, padding, layer.dilation)[None]


def unfold(layer: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    accumulator = gram.GramAccumulator(*gram.gram_shape(layer)[:2])
    for columns in gram.input_columns(layer, x):
        accumulator.add(columns)
    return accumulator.gram()


def choice(layer: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    return gram.input_gram(layer, x)


def timed(run: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="crop edge in voxels")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dilations", default="1,4,8,16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c, size = args.channels, args.size
    x = torch.randn(args.batch, c, size, size, size).relu()
    print(
        f"Conv3d {c}->{c} k=3, same padding, input {tuple(x.shape)}, {args.threads} thread(s), "
        f"fastest of {args.repeat}"
    )
    header = f"{'dilation':>8} {'shifted s':>10} {'unfold s':>9} {'choice s':>9} {'chose':>8}"
    print(header + f" {'choice / faster':>16} {'max rel. diff':>14}")
    failures = []
    for d in (int(v) for v in args.dilations.split(",")):
        layer = nn.Conv3d(c, c, 3, padding=d, dilation=d)
        seconds: dict[str, list[float]] = {"shifted": [], "unfold": [], "choice": []}
        results: dict[str, torch.Tensor] = {}
        for _ in range(args.repeat):
            for name, run in (("shifted", shifted), ("unfold", unfold), ("choice", choice)):
                elapsed, results[name] = timed(lambda run=run, layer=layer: run(layer, x))
                seconds[name].append(elapsed)
        best = {name: min(times) for name, times in seconds.items()}
        ratio = best["choice"] / min(best["shifted"], best["unfold"])
        scale = results["unfold"].abs().max()
        diff = max(float((results[n] - results["unfold"]).abs().max() / scale) for n in results)
        padding = gram._padding_pairs(layer)
        preferred = gram.shifted_products_preferred(x.shape, (3, 3, 3), padding, (d,) * 3)
        picked = "shifted" if preferred else "unfold"
        print(
            f"{d:>8} {best['shifted']:>10.2f} {best['unfold']:>9.2f} {best['choice']:>9.2f} "
            f"{picked:>8} {ratio:>16.2f} {diff:>14.1e}",
            flush=True,
        )
        if ratio > 1 + TOLERANCE or diff > AGREEMENT:
            failures.append(d)
    verdict = "OK" if not failures else f"FAILED at dilation(s) {failures}"
    print(
        f"choice within {TOLERANCE:.0%} of the faster algorithm and H equal to "
        f"{AGREEMENT:.0e}: {verdict}"
    )


if __name__ == "__main__":
    main()

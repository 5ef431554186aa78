"""One fixed intra-op thread count for every computation whose result is stored.

Why: CPU kernels split their reductions by the number of threads -- a float32 GEMM (the Gram
X^T X of calibration inputs, K = millions of rows) cuts its K axis into per-thread partial sums,
torch's sum / mean reductions chunk by thread, oneDNN picks its convolution blocking by thread
count -- so the same calibration gives Gram matrices, activation statistics and hence codes that
differ in their last bits, and a few codes that flip, with the machine's thread count (GPTQ on
the demo UNet: 9 of 65 tensors and 212 int8 codes differed between 1 thread and the default).
A checkpoint is a stored artifact whose digest a reproduction command must reproduce, so
calibration and quantization run at ``REPRODUCIBLE_THREADS`` whatever the machine offers;
inference and timing, whose results are not stored bit for bit, keep the machine's threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

REPRODUCIBLE_THREADS = 1
"""The one thread count at which stored results are computed: 1, since every machine has it and
its reduction order is the plain sequential one (the stored baselines were computed so)."""


@contextmanager
def reproducible_threads() -> Iterator[None]:
    """Run the block with torch's intra-op threads at ``REPRODUCIBLE_THREADS``, then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(REPRODUCIBLE_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)

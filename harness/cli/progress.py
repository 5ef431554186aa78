"""Progress bars (tqdm, on stderr) for the quantization loops of ``reference_methods``: one bar
per stage (fitting layers, quantizing layers, calibrating activations), each counting its
layers or batches and naming the current one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def quantization_bars(enabled: bool = True) -> Iterator[None]:
    """Show the quantization progress inside the block as bars (nothing when not ``enabled``)."""
    from reference_methods.simulator.progress import reporting

    if not enabled:
        yield
        return
    bars: dict[str, tqdm] = {}

    def on_step(stage: str, item: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None or bar.n >= done:  # a new run of this stage
            if bar is not None:
                bar.close()
            bar = bars[stage] = tqdm(total=total or None, desc=stage, unit="step", leave=False)
        bar.update(done - bar.n)
        bar.set_postfix_str(item, refresh=False)

    try:
        with reporting(on_step):
            yield
    finally:
        for bar in bars.values():
            bar.close()

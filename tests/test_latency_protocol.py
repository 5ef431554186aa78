"""The latency protocol: FP32 and the entry timed alternately in pairs (bursts of calls per side,
the starting side alternating) after warm-up; each side's latency is the median of its per-pair
fastest calls and the speed-up is exactly FP32's latency over the entry's, its interval a
bootstrap over pairs that contains it, holds the true ratio and narrows with more pairs; a
disturbed call does not move it; the protocol stops once the interval is narrow enough (after an
even number of at least MIN_PAIRS pairs, at most the maximum); spread statistics are quartiles
in milliseconds."""

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.inference import latency
from harness.inference.latency import (
    MIN_PAIRS,
    PROTOCOL_CI_WIDTH,
    LatencyProtocol,
    interleaved_pairs,
    relative_width,
    speedup_interval,
    spread_stats,
)


def test_pairs_interleave_after_warmup_with_alternating_order():
    calls = []
    fp32, entry = interleaved_pairs(
        lambda: calls.append("F"), lambda: calls.append("E"), warmup=2, pairs=12, burst=3
    )
    assert calls[:4] == ["F", "E", "F", "E"]  # warm-up, untimed
    timed = calls[4:]
    assert len(timed) == 72 and len(fp32) == len(entry) == 12
    assert all(len(pair) == 3 for pair in (*fp32, *entry))
    pairs = ["".join(timed[i : i + 6]) for i in range(0, 72, 6)]
    assert pairs[0::2] == ["FEFEFE"] * 6 and pairs[1::2] == ["EFEFEF"] * 6
    assert min(min(pair) for pair in (*fp32, *entry)) >= 0


def test_fewer_than_the_minimum_pairs_are_refused():
    with pytest.raises(HarnessError, match=f"at least {MIN_PAIRS} pairs"):
        interleaved_pairs(lambda: None, lambda: None, warmup=0, pairs=MIN_PAIRS - 1)
    with pytest.raises(HarnessError, match="at least"):
        LatencyProtocol(pairs=MIN_PAIRS - 1)
    with pytest.raises(HarnessError, match="thread"):
        LatencyProtocol(threads=0)
    with pytest.raises(HarnessError, match="unit"):
        LatencyProtocol(unit="per_case")
    with pytest.raises(HarnessError, match="one call"):
        LatencyProtocol(burst=0)
    with pytest.raises(HarnessError, match="width to stop at"):
        LatencyProtocol(ci_width=0.0)


def test_the_speedup_compares_the_fastest_calls_and_ignores_disturbed_ones():
    protocol = LatencyProtocol(pairs=MIN_PAIRS, burst=2)
    fp32 = [[0.30, 0.20]] * MIN_PAIRS  # one call of each pair disturbed
    entry = [[0.10, 0.25]] * MIN_PAIRS
    report = protocol.summary(fp32, entry)
    assert report["speedup"] == {"median": pytest.approx(2.0), "ci95": [pytest.approx(2.0)] * 2}
    assert report["entry"]["median_ms"] == pytest.approx(100.0)  # of the pairs' fastest calls
    assert report["fp32"]["median_ms"] == pytest.approx(200.0)


@pytest.mark.parametrize("seed", range(40))
def test_the_speedup_is_the_ratio_of_the_latencies_and_its_interval_contains_it(seed):
    rng = np.random.default_rng(seed)
    pairs = int(rng.integers(MIN_PAIRS, 40))
    load = rng.uniform(1.0, 1.6, (pairs, 3)) * rng.pareto(3.0, (pairs, 3)).clip(0, 2) ** 0.2
    fp32 = 0.30 * load * rng.lognormal(0, 0.05, (pairs, 3))
    entry = 0.30 / rng.uniform(0.6, 3.0) * load * rng.lognormal(0, 0.05, (pairs, 3))
    report = LatencyProtocol(pairs=pairs).summary(fp32.tolist(), entry.tolist())
    point = report["speedup"]["median"]
    assert point == pytest.approx(report["fp32"]["median_ms"] / report["entry"]["median_ms"])
    low, high = report["speedup"]["ci95"]
    assert low <= point <= high and low < high


def test_a_constant_ratio_gives_that_speedup_and_a_degenerate_interval():
    fp32 = [[t] for t in [0.2, 0.4, 0.3, 0.25] * 3]
    entry = [[t / 2.5 for t in pair] for pair in fp32]
    speedup = speedup_interval(fp32, entry)
    assert speedup["median"] == pytest.approx(2.5)
    assert speedup["ci95"] == [pytest.approx(2.5), pytest.approx(2.5)]


def test_a_slower_entry_reads_below_one():
    fp32 = [[0.1]] * 12
    entry = [[0.1 * 1.6 + 0.001 * i] for i in range(12)]
    speedup = speedup_interval(fp32, entry)
    assert speedup["median"] < 1 and speedup["ci95"][1] < 1


def test_the_interval_holds_the_true_ratio_and_narrows_with_more_pairs():
    rng = np.random.default_rng(7)
    true_ratio = 1.8

    def pairs(n):
        load = rng.uniform(1.0, 1.6, (n, 3))  # contention, shared by both sides of a call pair
        fp32 = 0.30 * load * rng.lognormal(0, 0.03, (n, 3))
        entry = 0.30 / true_ratio * load * rng.lognormal(0, 0.03, (n, 3))
        return fp32.tolist(), entry.tolist()

    few, many = speedup_interval(*pairs(12)), speedup_interval(*pairs(200))
    for speedup in (few, many):
        low, high = speedup["ci95"]
        assert low <= true_ratio <= high and low <= speedup["median"] <= high
    assert many["ci95"][1] - many["ci95"][0] < few["ci95"][1] - few["ci95"][0]


def test_the_interval_is_reproducible_for_the_same_timings():
    rng = np.random.default_rng(1)
    fp32, entry = rng.uniform(0.2, 0.3, (15, 3)).tolist(), rng.uniform(0.1, 0.2, (15, 3)).tolist()
    assert speedup_interval(fp32, entry) == speedup_interval(fp32, entry)


def test_unequal_or_nonpositive_timings_are_refused():
    with pytest.raises(HarnessError, match="equally many"):
        speedup_interval([[0.1], [0.2]], [[0.1]])
    with pytest.raises(HarnessError, match="positive"):
        speedup_interval([[0.1], [0.0]], [[0.1], [0.1]])


def test_spread_is_quartiles_in_milliseconds():
    stats = spread_stats([0.001 * i for i in range(1, 102)])  # 1 .. 101 ms
    assert stats == {
        "median_ms": pytest.approx(51.0),
        "iqr_ms": pytest.approx(50.0),
        "p25_ms": pytest.approx(26.0),
        "p75_ms": pytest.approx(76.0),
    }


def test_measure_reports_the_result_document_shape():
    protocol = LatencyProtocol(
        threads=1, warmup=1, pairs=MIN_PAIRS, burst=2, unit="per_patch_batch"
    )
    report = protocol.measure(lambda: sum(range(20000)), lambda: sum(range(2000)))
    assert set(report) == {
        "threads",
        "warmup",
        "pairs",
        "max_pairs",
        "entry",
        "fp32",
        "speedup",
        "ci_width",
        "target_ci_width",
        "unit",
    }
    assert (report["threads"], report["warmup"], report["pairs"]) == (1, 1, MIN_PAIRS)
    assert (report["max_pairs"], report["target_ci_width"]) == (MIN_PAIRS, PROTOCOL_CI_WIDTH)
    assert report["ci_width"] == pytest.approx(relative_width(report["speedup"]))
    assert report["unit"] == "per_patch_batch"
    for side in ("entry", "fp32"):
        assert set(report[side]) == {"median_ms", "iqr_ms", "p25_ms", "p75_ms"}
        assert report[side]["p25_ms"] <= report[side]["median_ms"] <= report[side]["p75_ms"]
    low, high = report["speedup"]["ci95"]
    assert low <= report["speedup"]["median"] <= high
    assert report["speedup"]["median"] > 1  # the "entry" does a tenth of the work


class _Clock:
    """A clock the timed calls advance by the durations they are given (the protocol reads it
    through ``time.perf_counter``), so the stopping rule sees exactly these timings."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def call(self, durations) -> object:
        durations = iter(durations)

        def run() -> None:
            self.now += next(durations)

        return run


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(latency, "time", clock)
    return clock


def _stream(rng, seconds: float, noise: float):
    while True:
        yield seconds * rng.lognormal(0, noise)


def test_a_quiet_machine_stops_at_the_minimum_pairs(clock):
    fp32 = clock.call(iter(lambda: 0.2, None))
    entry = clock.call(iter(lambda: 0.1, None))
    report = LatencyProtocol(warmup=1, pairs=40).measure(fp32, entry)
    assert report["pairs"] == MIN_PAIRS and report["max_pairs"] == 40
    assert report["ci_width"] == pytest.approx(0.0, abs=1e-9)
    assert report["speedup"]["median"] == pytest.approx(2.0)


def test_a_noisy_machine_takes_the_maximum_pairs(clock):
    rng = np.random.default_rng(3)
    fp32, entry = clock.call(_stream(rng, 0.2, 0.5)), clock.call(_stream(rng, 0.1, 0.5))
    report = LatencyProtocol(warmup=1, pairs=16, burst=1).measure(fp32, entry)
    assert report["pairs"] == 16 and report["ci_width"] > PROTOCOL_CI_WIDTH


def test_the_protocol_stops_at_the_first_even_pair_count_whose_interval_is_narrow_enough(clock):
    rng = np.random.default_rng(5)
    fp32_s, entry_s = 0.2 * rng.lognormal(0, 0.03, 60), 0.1 * rng.lognormal(0, 0.03, 60)
    protocol = LatencyProtocol(warmup=0, pairs=60, burst=1, ci_width=0.04)
    report = protocol.measure(clock.call(fp32_s), clock.call(entry_s))
    taken = report["pairs"]
    assert MIN_PAIRS < taken < 60 and taken % 2 == 0
    assert report["ci_width"] <= 0.04
    # no earlier even count of the same timings was narrow enough
    for n in range(MIN_PAIRS, taken, 2):
        speedup = speedup_interval([[t] for t in fp32_s[:n]], [[t] for t in entry_s[:n]])
        assert relative_width(speedup) > 0.04

"""Challenge-style ranking analysis (harness.scoring.rank_analysis): bootstrap rank intervals,
P(best), Kendall's τ stability and the tie-with-leader mark; rank then aggregate vs mean then
rank."""

import numpy as np
import pytest

from harness.scoring.rank_analysis import (
    RankingRule,
    aggregate_scores,
    competition_ranks,
    rank_uncertainty,
)

CASES = 8


NOISE = np.array([0.004, -0.003, 0.002, -0.004, 0.003, -0.002, 0.001, -0.0005])
"""Per-case differences of a noise-level pair: ±0.004, mean +0.0000625."""


def noisy_pair(seed: int = 0) -> np.ndarray:
    """Two entries whose per-case DSC differ by noise only (the same cases, ±0.004 apart)."""
    base = np.random.default_rng(seed).uniform(0.7, 0.9, CASES)
    return np.stack([base + NOISE, base])


def test_entries_differing_by_noise_are_both_tied_within_noise_with_overlapping_intervals():
    result = rank_uncertainty([(noisy_pair(), True)], RankingRule.MEAN_THEN_RANK, seed=0)
    (low_a, high_a), (low_b, high_b) = result.interval
    assert low_a <= high_b and low_b <= high_a  # the intervals overlap
    assert result.interval == [(1, 2), (1, 2)]
    assert result.tied_with_leader == [True, True]
    assert min(result.p_best) > 0.05 and max(result.p_best) < 0.95
    assert result.kendall_tau_median is not None and result.samples == 1000


def test_a_clear_winner_is_best_in_at_least_95_percent_of_resamples_and_not_tied():
    pair = noisy_pair()
    values = np.vstack([pair, pair[0] + 0.08])  # a third entry far ahead on every case
    result = rank_uncertainty([(values, True)], RankingRule.MEAN_THEN_RANK, seed=0)
    assert result.ranks[2] == 1
    assert result.p_best[2] >= 0.95
    assert result.interval[2] == (1, 1)
    assert result.tied_with_leader == [False, False, False]


def test_lower_is_better_metrics_rank_the_smallest_first():
    hd95 = np.array([[2.0, 3.0, 2.5, 2.0], [9.0, 8.0, 7.5, 9.5]])
    result = rank_uncertainty([(hd95, False)], RankingRule.MEAN_THEN_RANK, seed=1)
    assert result.ranks == [1, 2] and result.p_best == [1.0, 0.0]
    assert result.kendall_tau_median == 1.0


def test_the_analysis_is_reproducible_for_a_seed():
    values = [(noisy_pair(3), True)]
    assert rank_uncertainty(values, "mean-then-rank", 5) == rank_uncertainty(
        values, "mean-then-rank", 5
    )


def constructed_cases() -> list[tuple[np.ndarray, bool]]:
    """A wins three of four cases narrowly and loses the fourth badly; B is steady."""
    dsc = np.array([[0.90, 0.90, 0.90, 0.10], [0.85, 0.85, 0.85, 0.80]])
    return [(dsc, True)]


def test_rank_then_aggregate_orders_differently_from_mean_then_rank_on_constructed_cases():
    cases = constructed_cases()
    means, lower = aggregate_scores(cases, RankingRule.MEAN_THEN_RANK)
    assert competition_ranks(means, lower).tolist() == [2, 1]  # B's mean 0.84 > A's 0.70
    mean_ranks, lower = aggregate_scores(cases, RankingRule.RANK_THEN_AGGREGATE)
    assert mean_ranks.tolist() == pytest.approx([1.25, 1.75]) and lower
    assert competition_ranks(mean_ranks, lower).tolist() == [1, 2]
    result = rank_uncertainty(cases, RankingRule.RANK_THEN_AGGREGATE, seed=0)
    assert result.ranks == [1, 2]


def test_rank_then_aggregate_averages_ranks_over_every_metric():
    dsc = np.array([[0.9, 0.9], [0.8, 0.8]])
    hd95 = np.array([[9.0, 9.0], [1.0, 1.0]])  # lower is better: B wins both
    scores, _ = aggregate_scores([(dsc, True), (hd95, False)], RankingRule.RANK_THEN_AGGREGATE)
    assert scores.tolist() == [1.5, 1.5]


@pytest.mark.parametrize("n", [2, 7, 40])
def test_kendall_tau_b_equals_scipys_with_ties(n):
    from scipy.stats import kendalltau

    from harness.scoring.rank_analysis import kendall_tau_b

    rng = np.random.default_rng(n)
    reference = rng.integers(1, n, size=n)  # ties on purpose
    rankings = rng.integers(1, n, size=(25, n))
    rankings[0] = 3  # all tied: undefined, as scipy says
    ours = kendall_tau_b(reference.astype(float), rankings)
    theirs = np.array([kendalltau(reference, row).statistic for row in rankings])
    assert np.allclose(ours, theirs, equal_nan=True, atol=1e-12)

"""Challenge-style ranking analysis over per-case scores (challengeR, Wiesenfarth et al. 2021;
the rank-then-aggregate rule of FLARE and the Medical Segmentation Decathlon).

Input: ``values[e, k]``, the per-case score of entry e on test case k (for one metric), and
whether higher is better.

* ``mean-then-rank`` (aggregate, then rank): score_e = mean_k values[e, k]; ranked by score.
* ``rank-then-aggregate``: per case, every entry is ranked on each metric (1 = best, ties share
  the mean of the ranks they span); score_e = the mean of its ranks over cases and metrics; the
  lower score ranks first. Every case weighs the same whatever its difficulty: an entry that
  loses a hard case by a wide margin loses one rank there, not the margin.

Ranks from scores are competition ranks (1, 1, 3). Rank uncertainty: ``BOOTSTRAP_RANK_SAMPLES``
resamples of the test cases with replacement (the same resampled cases for every entry; a
``numpy`` generator seeded with the track's seed, so a board always shows the same figures); each
resample is ranked by the rule. Per entry: the 95% rank interval (the 2.5th and 97.5th
percentiles of its bootstrap ranks, as integer ranks) and P(best), the share of resamples in
which it ranks first. The ranking's stability: the median over resamples of Kendall's τ (τ-b,
``scipy.stats.kendalltau``) between the ranking on all cases and the resample's. An entry is
*tied within noise* with the leader when its interval reaches the leader's (its lower bound is at
most the leader's upper bound); the leader is marked too when any other entry is.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from scipy.stats import kendalltau, rankdata

BOOTSTRAP_RANK_SAMPLES = 1000
"""Resamples of the test cases (challengeR's default)."""
RANK_INTERVAL = (2.5, 97.5)
"""Percentiles of the bootstrap ranks bounding the 95% rank interval."""


_CHUNK_VALUES = 1 << 22
"""Values gathered at a time when scoring resamples or comparing pairs (32 MiB of float64)."""
_PAIRWISE_MAX = 200
"""Most entries whose Kendall's τ is computed by comparing all pairs of many resamples at once
(measured: 0.9 s for 1000 resamples of 150 entries, where scipy per resample takes 2.6 s)."""


class RankingRule(StrEnum):
    """How per-case scores become one ranking."""

    MEAN_THEN_RANK = "mean-then-rank"
    RANK_THEN_AGGREGATE = "rank-then-aggregate"


@dataclass(frozen=True)
class RankUncertainty:
    """Bootstrap rank analysis of entries (in the order given)."""

    ranks: list[int]
    interval: list[tuple[int, int]]
    p_best: list[float]
    tied_with_leader: list[bool]
    kendall_tau_median: float | None
    samples: int
    cases: int


def competition_ranks(scores: np.ndarray, lower_is_better: bool) -> np.ndarray:
    """Competition ranks (1, 1, 3) of ``scores`` along the last axis."""
    keyed = scores if lower_is_better else -scores
    return rankdata(keyed, method="min", axis=-1).astype(np.int64)


def per_case_ranks(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Rank of each entry on each case (axis 0 = entries), ties sharing their mean rank."""
    keyed = -values if higher_is_better else values
    return rankdata(keyed, method="average", axis=0)


def aggregate_scores(
    metrics: list[tuple[np.ndarray, bool]], rule: RankingRule | str
) -> tuple[np.ndarray, bool]:
    """Each entry's aggregate over ``metrics`` — (values[entries, cases], higher is better)
    pairs; mean-then-rank uses the first only — and whether a lower aggregate ranks first."""
    rule = RankingRule(rule)
    if rule is RankingRule.MEAN_THEN_RANK:
        values, higher = metrics[0]
        return np.asarray(values, dtype=np.float64).mean(axis=1), not higher
    ranks = [per_case_ranks(np.asarray(v, dtype=np.float64), h) for v, h in metrics]
    return np.concatenate(ranks, axis=1).mean(axis=1), True


def kendall_tau_b(reference: np.ndarray, rankings: np.ndarray) -> np.ndarray:
    """Kendall's τ-b between ``reference`` (n values) and each row of ``rankings`` (k × n), as
    ``scipy.stats.kendalltau`` computes it (NaN where either side is all ties):
    τ_b = Σ_{i<j} s_ij t_ij / sqrt(Σ s_ij² · Σ t_ij²), s_ij = sign(x_i − x_j), t_ij likewise.
    Up to ``_PAIRWISE_MAX`` entries the pairs are compared for many rows at once (scipy's
    per-call overhead, milliseconds, would dominate a board's thousand resamples); beyond, scipy
    is called per row."""
    n = len(reference)
    if n > _PAIRWISE_MAX:
        return np.array([kendalltau(reference, row).statistic for row in rankings], dtype=float)
    upper = np.triu_indices(n, 1)
    s = np.sign(reference[:, None] - reference[None, :])[upper].astype(np.float64)
    out = np.empty(len(rankings))
    step = max(1, _CHUNK_VALUES // max(1, n * n))
    for start in range(0, len(rankings), step):
        rows = rankings[start : start + step].astype(np.float64)
        t = np.sign(rows[:, :, None] - rows[:, None, :])[:, upper[0], upper[1]]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + len(rows)] = (t @ s) / np.sqrt((s @ s) * (t * t).sum(axis=1))
    return out


def rank_uncertainty(
    metrics: list[tuple[np.ndarray, bool]],
    rule: RankingRule | str,
    seed: int,
    samples: int = BOOTSTRAP_RANK_SAMPLES,
) -> RankUncertainty:
    """Bootstrap rank analysis (see the module docstring) of the entries whose per-case
    ``metrics`` are given (each values[entries, cases], cases in the same order for all)."""
    rule = RankingRule(rule)
    arrays = [(np.asarray(v, dtype=np.float64), h) for v, h in metrics]
    n_entries, n_cases = arrays[0][0].shape
    if n_entries == 0 or n_cases == 0:
        raise ValueError("rank analysis needs at least one entry and one case")
    if rule is RankingRule.RANK_THEN_AGGREGATE:  # a case's ranks do not change when resampled
        columns = [np.concatenate([per_case_ranks(v, h) for v, h in arrays], axis=1)]
        lower, per_metric = True, len(arrays)
    else:
        columns, lower, per_metric = [arrays[0][0]], not arrays[0][1], 1
    table = columns[0]
    observed = competition_ranks(table.mean(axis=1), lower)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_cases, size=(samples, n_cases))
    # the columns of each resampled case: every metric's column of that case
    offsets = (np.arange(per_metric) * n_cases)[None, :, None]
    chosen = (picks[:, None, :] + offsets).reshape(samples, -1)
    scores = np.empty((samples, n_entries))
    step = max(1, _CHUNK_VALUES // (n_entries * chosen.shape[1]))  # bounds the gathered block
    for start in range(0, samples, step):
        block = chosen[start : start + step]
        scores[start : start + len(block)] = table[:, block].mean(axis=2).T
    boot = competition_ranks(scores, lower)
    low = np.percentile(boot, RANK_INTERVAL[0], axis=0, method="lower").astype(int)
    high = np.percentile(boot, RANK_INTERVAL[1], axis=0, method="higher").astype(int)
    leader = int(np.argmin(observed))
    tied = [bool(low[e] <= high[leader]) and e != leader for e in range(n_entries)]
    tied[leader] = any(tied)
    tau = None
    if n_entries > 1:
        taus = kendall_tau_b(observed, boot)
        finite = taus[np.isfinite(taus)]
        tau = float(np.median(finite)) if finite.size else None
    return RankUncertainty(
        ranks=observed.tolist(),
        interval=list(zip(low.tolist(), high.tolist(), strict=True)),
        p_best=(boot == 1).mean(axis=0).tolist(),
        tied_with_leader=tied,
        kendall_tau_median=tau,
        samples=samples,
        cases=n_cases,
    )

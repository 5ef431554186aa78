"""The public and private splits of a track's test cases (as grand-challenge and Codabench phases
have them): during the phase entries are ranked, and shown per case, on the public split only; the
private split is scored alongside, shown to maintainers only, and becomes the final ranking when
the phase ends. Its per-case results and case ids are never shown to participants.

The split is a pure function of the test case ids, the track's public fraction and its seed, so
every evaluation of a track splits alike and anyone holding the ids can check it."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

PUBLIC = "public"
PRIVATE = "private"
SPLITS = (PUBLIC, PRIVATE)
DEFAULT_PUBLIC_FRACTION = 0.5
"""Half the test cases ranked during the phase: enough to rank on, while the other half keeps
the final ranking out of reach of tuning to the public scores."""


def split_cases(case_ids: Sequence[str], public_fraction: float, seed: int) -> dict[str, list[str]]:
    """``{"public": [...], "private": [...]}``: the ⌈fraction · n⌉ cases first in the order of
    sha256(f"{seed}:{case_id}") form the public split, the rest the private one; each split keeps
    the cases' own order. A fraction of 1 (or a single case) leaves the private split empty."""
    if not 0.0 < public_fraction <= 1.0:
        raise ValueError(f"public_fraction must lie in (0, 1], got {public_fraction}")
    ranked = sorted(case_ids, key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest())
    public = set(ranked[: max(1, math.ceil(public_fraction * len(ranked)))])
    return {
        PUBLIC: [c for c in case_ids if c in public],
        PRIVATE: [c for c in case_ids if c not in public],
    }
